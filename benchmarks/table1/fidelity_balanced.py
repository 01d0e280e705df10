"""Table 1's experience models scored again, with balanced accuracy beside agreement.

    python benchmarks/table1/fidelity_balanced.py coin:0 mapreader:0 coin:1 ...   # GAME:SEED, one JSON line each
    python benchmarks/table1/fidelity_balanced.py --table results/fidelity-balanced/fidelity.jsonl  # markdown

The table's fidelity target is reward/success agreement >= 90% on held-out real transitions. Where
most held-out steps are plain moves, a model that never says "won" agrees that often too, so the
line also carries ``fidelity/*_balanced_accuracy`` (any constant answer scores 0.5). Each seed's
GRPO DreamGym cell is rebuilt up to RL (``run.rebuilt_before_rl``: its offline data, experience
model and warm start, in ``runs/<base>/<game>/before-rl/``), which stops unless it reproduces the
cached cell's warm-start success and success agreement, so the scores are the cached cell's model's.
Progress lines of a rebuild go to stdout too; the JSON lines start with ``{``.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as table1  # noqa: E402


def main(specs: list[str]) -> None:
    for spec in specs:
        game, seed = spec.split(":")
        start = time.time()
        try:
            run_dir = table1.rebuilt_before_rl(game, "GRPO DreamGym", int(seed))
        except SystemExit as exc:  # not the cached cell's model: say so, score nothing
            print(f"{game} seed {seed}: {exc}", flush=True)
            continue
        first = table1._before_rl_metrics(run_dir)
        fidelity = {k: v for k, v in first.items() if k.startswith("fidelity/")}
        print(json.dumps({"game": game, "seed": int(seed), "seconds": round(time.time() - start), "run_dir": str(run_dir), **fidelity}), flush=True)


COLUMNS = ("reward_majority_baseline", "reward_agreement", "reward_balanced_accuracy", "success_agreement", "success_balanced_accuracy")


def table(jsonl: Path) -> str:
    """The markdown table of a file of those lines (percent), a mean row per game, and the
    fidelity values that differ from the cached cell's (the rebuild reproduced the rest)."""
    rows = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    lines = ["| game | seed | held-out steps | " + " | ".join(c.replace("_", " ") for c in COLUMNS) + " |", "|---" * (3 + len(COLUMNS)) + "|"]
    differences = []
    for game in dict.fromkeys(r["game"] for r in rows):
        of_game = sorted((r for r in rows if r["game"] == game), key=lambda r: r["seed"])
        for r in of_game:
            cells = [f"{100 * r[f'fidelity/{c}']:.1f}" if f"fidelity/{c}" in r else "-" for c in COLUMNS]
            lines.append(f"| {game} | {r['seed']} | {r['fidelity/n']:.0f} | " + " | ".join(cells) + " |")
            cached = table1.current(game, "GRPO DreamGym", r["seed"])["fidelity"]
            differences += [f"{game} {r['seed']}: {k} {r[k]:.4f} (cached {v:.4f})" for k, v in sorted(cached.items()) if r.get(k) != v]
        # balanced accuracy is absent where one label never occurs: a mean of the seeds that have it
        means = [statistics.mean(r[f"fidelity/{c}"] for r in of_game if f"fidelity/{c}" in r) for c in COLUMNS]
        lines.append(f"| {game} | mean of {len(of_game)} | | " + " | ".join(f"**{100 * m:.1f}**" for m in means) + " |")
    return "\n".join(lines + ["", "Values that differ from the cached cell's: " + ("; ".join(differences) or "none")])


if __name__ == "__main__":
    if sys.argv[1:2] == ["--table"]:
        print(table(Path(sys.argv[2])))
    else:
        main(sys.argv[1:])
