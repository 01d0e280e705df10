"""The table of benchmarks/early_experience/results.md from the run directories run.sh wrote:
held-out success of each seed's warm start, plain and after implicit world modelling."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

HERE = Path(__file__).parent
ARMS = ("imitation", "world-model")


def first_row(run: Path) -> dict:
    return json.loads((run / "metrics.jsonl").read_text().splitlines()[0])


def main() -> None:
    seeds = sorted({p.name for arm in ARMS for p in (HERE / "runs" / arm).glob("seed*") if (p / "report.md").exists()})
    seeds = [s for s in seeds if all((HERE / "runs" / arm / s / "report.md").exists() for arm in ARMS)]
    lines = [
        "| seed | imitation | world model, then imitation | difference | branch transitions | world-model loss (last epoch) |",
        "|---|---|---|---|---|---|",
    ]
    diffs, plains, worlds = [], [], []
    for seed in sorted(seeds, key=lambda s: int(s[4:])):
        plain, world = (first_row(HERE / "runs" / arm / seed) for arm in ARMS)
        a, b = 100 * plain["eval_before/success_rate"], 100 * world["eval_before/success_rate"]
        diffs.append(b - a)
        plains.append(a)
        worlds.append(b)
        branches = len((HERE / "runs" / "world-model" / seed / "branches.jsonl").read_text().splitlines())
        lines.append(
            f"| {seed[4:]} | {a:.1f} | {b:.1f} | {b - a:+.1f} | {branches} | "
            f"{world['world_model/sft_loss']:.3f} |"
        )
    if diffs:
        spread = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
        lines.append(
            f"| mean of {len(diffs)} | {statistics.mean(plains):.1f} | {statistics.mean(worlds):.1f} | "
            f"{statistics.mean(diffs):+.1f} (sd {spread:.1f}) | | |"
        )
    table = "\n".join(lines) + "\n"
    (HERE / "table.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
