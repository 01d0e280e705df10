"""Does the experience model play the curriculum's variation worlds as faithfully as the seed worlds?

    python benchmarks/table1/variation_fidelity.py --game coin-3 --seeds 0 1 2 3 \\
        --out benchmarks/table1/results/coin-3-variation-fidelity.md

The corrected listed rows of coin-3 do better without the curriculum (results/coin-3-corrected-ablations.md).
The curriculum's variations (``generator: domain``) are other train-fold worlds, whose real transitions
the replay buffer does not hold, while every seed task's world is in the offline data. This script asks
whether the synthetic environment is less faithful on those worlds.

For each seed it takes the run directory of the corrected listed row (GRPO DreamGym + corrected
transitions (listed actions)), reads the variation worlds its curriculum had added by the end of RL
(last checkpoint), rolls the replay buffer back to the start of RL (checkpoint 0; in a copy, the cached
run directory is left as it is), and plays the warm-started policy (which every row of the seed starts
RL from) greedily, one episode per task, on two task sets, once in the real game and once in the
synthetic environment with the same rollout seeds:

- seed tasks: the 32 train tasks, whose worlds the offline data covers;
- variations: the variation worlds of that run;
- test: the 32 held-out games, replayed as the run's own warm-start replay (``eval_before``); the script
  stops unless this reproduces the cell's cached numbers exactly.

Agreement is the share of episodes whose synthetic outcome equals the real one; optimistic episodes are
won in the synthetic environment and lost in the real game. Each seed's numbers are cached in
``results/variation-fidelity/`` so the report can be rebuilt without the run directories.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as table1  # noqa: E402

from dreamgym_core import checkpoint  # noqa: E402
from dreamgym_core.cli import _load  # noqa: E402
from dreamgym_core.loop import Runner  # noqa: E402
from dreamgym_core.records import Task  # noqa: E402

ROW = table1.CORRECTED + table1.LISTED
OUT = table1.HERE / "results" / "variation-fidelity"
# What playing from checkpoint 0 needs of a run directory (the other checkpoints are not copied).
PARTS = ("config.json", "config.sha256", "offline.jsonl", "buffer", "policy_init", "experience_model")


def outcomes(runner: Runner, tasks: list[Task], tag: str) -> list[tuple[bool, bool]]:
    """(real success, synthetic success) of one greedy episode per task, same rollout seeds in both."""
    seeds = [10_000 + i for i in range(len(tasks))]
    real, _ = runner.play(tasks, "real", temperature=0.0, seeds=seeds, tag=tag, evaluation=True, stream=f"{tag}/real")
    model = runner.experience_model.stream(f"replay/{tag}")
    synthetic, _ = runner.play(
        tasks, "synthetic", temperature=0.0, seeds=seeds, tag=tag, experience_model=model, evaluation=True, stream=f"{tag}/synthetic"
    )
    return [(bool(r.success), bool(s.success)) for r, s in zip(real, synthetic, strict=True)]


def score_seed(game: str, seed: int) -> dict:
    source, cell = table1.run_dir_of(game, ROW, seed), table1.current(game, ROW, seed)
    if cell is None or not (source / "checkpoints" / "latest").exists():
        raise SystemExit(f"{game} | {ROW} | seed {seed}: no cached cell or no run directory {source}")
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        run_dir.mkdir()
        for part in PARTS:
            copy = shutil.copytree if (source / part).is_dir() else shutil.copy
            copy(source / part, run_dir / part)
        names = sorted(p.name for p in (source / "checkpoints").glob("it-*"))
        for name in (names[0], names[-1]):
            shutil.copytree(source / "checkpoints" / name, run_dir / "checkpoints" / name)
        resolved, plugins = _load(str(table1.BASE), tuple(table1.overrides(game, ROW, seed, run_dir)))
        runner = Runner(resolved, plugins, run_dir, progress=False)
        try:
            checkpoint.load(runner, names[-1], roll_back_buffer=False)
            variations = list(runner.curriculum.synthetic)
            checkpoint.load(runner, names[0], roll_back_buffer=True)  # the buffer RL started from
            played = {"seed tasks": outcomes(runner, runner.train_tasks, "vf-seed"), "variations": outcomes(runner, variations, "vf-variations")}
            # Tagged as the run's own replay before RL, so it must give the cell's numbers exactly:
            # a check that this plays what the run played.
            played["test"] = outcomes(runner, runner.domain.tasks(split="test"), "eval_before")
        finally:
            runner.close()
    check_test(played["test"], cell, source)
    return {
        "game": game, "seed": seed, "row": ROW, "variation_worlds": [t.payload.get("seed") for t in variations],
        "played": {name: [list(pair) for pair in pairs] for name, pairs in played.items()},
    }


def check_test(pairs: list[tuple[bool, bool]], cell: dict, run_dir: Path) -> None:
    """The replay of the test games must reproduce the cell's warm-start replay, else this is not the run's setup."""
    played = summarise(pairs)
    mine = tuple(played[key] / 100 for key in ("real", "synthetic", "agreement"))
    cached = (cell["warmstart_success"], cell["warmstart_synthetic_success"], cell["warmstart_synthetic_agreement"])
    if any(abs(a - b) > 1e-9 for a, b in zip(mine, cached, strict=True)):
        raise SystemExit(f"{run_dir}: the test replay gives (real, synthetic, agreement) {mine}, the cell {cached}")


def seed_scores(game: str, seed: int) -> dict:
    path = OUT / f"{game}--seed{seed}.json"
    if path.exists():
        return json.loads(path.read_text())
    scores = score_seed(game, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(scores, indent=1) + "\n")
    return scores


def summarise(pairs) -> dict[str, float]:
    """Percent real success, synthetic success, agreement and optimistic episodes of (real, synthetic) pairs."""
    n = len(pairs)
    return {
        "episodes": n,
        "real": 100 * sum(r for r, _ in pairs) / n,
        "synthetic": 100 * sum(s for _, s in pairs) / n,
        "agreement": 100 * sum(r == s for r, s in pairs) / n,
        "optimistic": 100 * sum(s and not r for r, s in pairs) / n,
    }


def report(cells: list[dict], command: str) -> str:
    lines = [
        "# The experience model on the curriculum's variation worlds", "",
        f"Produced by `{command}`.", "",
        "The warm-started policy of each seed plays greedily, one episode per task, in the real game and in the "
        "synthetic environment (the buffer as RL started). Variations: the worlds the corrected listed row's "
        "curriculum added by the end of RL. Test: the 32 held-out games (the cell's own warm-start replay, reproduced).", "",
        "| seed | set | episodes | real success | synthetic success | agreement | optimistic |", "|---|---|---|---|---|---|---|",
    ]
    pooled: dict[str, list[list[bool]]] = {}
    for c in cells:
        for name, pairs in c["played"].items():
            pooled.setdefault(name, []).extend(pairs)
            s = summarise(pairs)
            lines.append(f"| {c['seed']} | {name} | {s['episodes']} | {s['real']:.1f} | {s['synthetic']:.1f} | "
                         f"{s['agreement']:.1f} | {s['optimistic']:.1f} |")
    lines += ["", "Pooled over seeds (episodes):", "",
              "| set | episodes | real success | synthetic success | agreement | optimistic |", "|---|---|---|---|---|---|"]
    for name, pairs in pooled.items():
        s = summarise(pairs)
        lines.append(f"| {name} | {s['episodes']} | {s['real']:.1f} | {s['synthetic']:.1f} | {s['agreement']:.1f} | {s['optimistic']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--game", required=True, choices=sorted(table1.GAMES))
    parser.add_argument("--seeds", nargs="+", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    cells = [seed_scores(args.game, seed) for seed in args.seeds]
    command = "python benchmarks/table1/variation_fidelity.py " + " ".join(sys.argv[1:])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report(cells, command))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
