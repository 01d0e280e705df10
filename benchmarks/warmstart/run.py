"""How the SFT warm start of the default policy moves from epoch to epoch, and whether
validation success picks a good epoch.

For each (game, seed) of benchmarks/table1, it collects the same offline data as the table's
runs, warm-starts the policy for ``--epochs`` epochs and, after every epoch, plays the
validation games and the held-out test games greedily. Test success is recorded only to
judge the selection; the pipeline itself (``loop.warmstart_select_episodes``) never sees it.

    python benchmarks/warmstart/run.py --games coin mapreader --seeds 0 1 2 3 4 --epochs 20
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE.parent / "table1"))

from run import GAMES  # noqa: E402  (benchmarks/table1/run.py: the table's games)

from dreamgym_core.config import load_pipeline, resolve  # noqa: E402
from dreamgym_core.loop import Runner, demo_examples  # noqa: E402
from dreamgym_core.plugins import Plugins  # noqa: E402

VALID, TEST = 16, 32


def curve(game: str, seed: int, *, epochs: int, lr: float, extra: list[str]) -> dict:
    run_dir = HERE / "runs" / game / f"seed{seed}-e{epochs}-lr{lr:g}"
    overrides = [
        *GAMES[game], "env.config.distinct_worlds=false", "loop.iterations=0", "experience.skip=true", f"env.config.valid_seeds={VALID}",
        f"loop.warmstart_lr={lr}", f"seed={seed}", f"run_dir={run_dir}", *extra,
    ]
    pipeline = load_pipeline(str(ROOT / "examples" / "default.yaml"), tuple(overrides))
    plugins = Plugins.for_names(pipeline.plugins, where="benchmarks/warmstart")
    run_dir.mkdir(parents=True, exist_ok=True)
    runner = Runner(resolve(pipeline, plugins, where="default.yaml"), plugins, run_dir, progress=False)
    offline = runner._collect_offline()
    rows: list[dict] = []

    def after_epoch(epoch: int, loss: float) -> None:
        valid = runner.evaluate(prefix="v", split="valid", episodes=VALID)["v/success_rate"]
        test = runner.evaluate(prefix="t", split="test", episodes=TEST)["t/success_rate"]
        rows.append({"epoch": epoch, "loss": round(loss, 6), "valid": valid, "test": test})
        print(f"{game} seed {seed} epoch {epoch}: loss {loss:.4f} valid {valid:.3f} test {test:.3f}", flush=True)

    runner._warmstart_policy(offline, epochs=0)  # fits the tokenizer, as the pipeline does
    started = time.perf_counter()
    runner.policy.sft(
        examples=[[(p, False), (r, True)] for p, r in demo_examples(
            offline, max_steps=runner.cfg.loop.max_steps, history_window=runner.cfg.loop.history_window)],
        epochs=epochs, lr=lr, batch_size=runner.cfg.experience.batch_size, on_epoch=after_epoch,
    )
    return {"game": game, "seed": seed, "lr": lr, "epochs": epochs, "extra": extra,
            "seconds": round(time.perf_counter() - started, 1), "curve": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--games", nargs="+", default=["coin"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=2.0e-3)
    parser.add_argument("--set", dest="extra", action="append", default=[], help="more pipeline overrides")
    args = parser.parse_args()
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    for game in args.games:
        for seed in args.seeds:
            result = curve(game, seed, epochs=args.epochs, lr=args.lr, extra=args.extra)
            tag = "--" + hashlib.sha256("\n".join(args.extra).encode()).hexdigest()[:8] if args.extra else ""
            name = f"{game}--seed{seed}--e{args.epochs}--lr{args.lr:g}{tag}.json"
            (out / name).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
