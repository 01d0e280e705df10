"""The tables of benchmarks/early_experience/results.md from the run directories run.sh wrote:
held-out success of each seed's warm start, plain and with Early Experience. It reads each run's
metrics.jsonl and report.md, which are committed; the branch count is the last metrics row's
counters/branch_transitions (the run's branches.jsonl, not committed, only where that is missing).

Usage: python benchmarks/early_experience/summarize.py world-model|reflection"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).parent
# experiment: the plain arm's folder, the Early Experience arm's folder, its title, its loss metric
EXPERIMENTS = {
    "world-model": ("imitation", "world-model", "world model, then imitation", "world_model/sft_loss"),
    "reflection": ("reflection/imitation", "reflection/self-reflection", "self-reflection", "warmstart/sft_loss"),
}


def first_row(run: Path) -> dict:
    return json.loads((run / "metrics.jsonl").read_text().splitlines()[0])


def branch_transitions(run: Path) -> str:
    """The run's branch transitions: its counters, else its branches.jsonl's lines, else "-"."""
    count = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1]).get("counters/branch_transitions")
    if count is None and (run / "branches.jsonl").exists():
        count = len((run / "branches.jsonl").read_text().splitlines())
    return "-" if count is None else str(int(count))


def table(experiment: str) -> str:
    plain_dir, early_dir, title, loss = EXPERIMENTS[experiment]
    arms = (HERE / "runs" / plain_dir, HERE / "runs" / early_dir)
    seeds = sorted(
        {p.name for p in arms[1].glob("seed*") if p.is_dir() and all((arm / p.name / "report.md").exists() for arm in arms)},
        key=lambda name: int(name[4:]),
    )
    lines = [
        f"| seed | imitation | {title} | difference | branch transitions | {loss} (last epoch) |",
        "|---|---|---|---|---|---|",
    ]
    plains, earlies = [], []
    for seed in seeds:
        plain, early = (first_row(arm / seed) for arm in arms)
        a, b = 100 * plain["eval_before/success_rate"], 100 * early["eval_before/success_rate"]
        plains.append(a)
        earlies.append(b)
        branches = branch_transitions(arms[1] / seed)
        lines.append(f"| {seed[4:]} | {a:.1f} | {b:.1f} | {b - a:+.1f} | {branches} | {early[loss]:.3f} |")
    diffs = [b - a for a, b in zip(plains, earlies)]
    if diffs:
        spread = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
        lines.append(
            f"| mean of {len(diffs)} | {statistics.mean(plains):.1f} | {statistics.mean(earlies):.1f} | "
            f"{statistics.mean(diffs):+.1f} (sd {spread:.1f}) | | |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    experiment = sys.argv[1] if len(sys.argv) > 1 else "world-model"
    text = table(experiment)
    (HERE / f"table-{experiment}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
