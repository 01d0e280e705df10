"""The table of benchmarks/branch_data/results.md from the run directories run.sh wrote: per
seed, Table 1's GRPO DreamGym pipeline with and without branch transitions in the experience
model's data (experience.branches), from the same offline data and warm start.

Columns: the experience model's success agreement on held-out real transitions (expert and
random play on test games); the synthetic replay of the warm-started policy's test games (its
success there, and the share of games whose outcome agrees with real play: fidelity on the
policy's own play); held-out real success after RL. The cached protocol-8 cell of the seed
(run on another CPU) is shown beside the plain arm.

Usage: python benchmarks/branch_data/summarize.py [GAME] (default coin; writes table-GAME.md)"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "table1"))
import run as table1  # noqa: E402

ARMS = ("plain", "branches")


def measured(run_dir: Path) -> dict:
    """What Table 1's cells record of a run (table1.measured), plus its branch count: the
    summary's counters/branch_transitions (summary.json and metrics.jsonl are committed; the
    run's branches.jsonl is not), else the lines of branches.jsonl, else None (shown as "-")."""
    summary = json.loads((run_dir / "summary.json").read_text())
    cell = table1.measured(summary, table1._before_rl_metrics(run_dir))
    count = summary.get("counters/branch_transitions")
    if count is None and (run_dir / "branches.jsonl").exists():
        count = len((run_dir / "branches.jsonl").read_text().splitlines())
    cell["branch_transitions"] = None if count is None else int(count)
    return cell


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)


def _finished_seeds(runs: Path) -> list[int]:
    names = {p.name for p in (runs / ARMS[1]).glob("seed*") if (p / "summary.json").exists()}
    return sorted(int(n[4:]) for n in names if (runs / ARMS[0] / n / "summary.json").exists())


def _interval(diffs: list[float]) -> str:
    text = f"{100 * statistics.mean(diffs):+.1f}"
    if ci := table1.paired_interval(diffs):
        text += f" [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]"
    return text


def table(game: str) -> str:
    lines = [
        "| seed | warm start | branch transitions | success agreement (plain / branches) | warm start replayed: synthetic success "
        "(plain / branches) | replay agrees with real play | held out after RL (plain / branches) | cached p8 cell |",
        "|---|---|---|---|---|---|---|---|",
    ]
    runs = HERE / "runs" / game
    seeds = _finished_seeds(runs)
    cells = {seed: [measured(runs / arm / f"seed{seed}") for arm in ARMS] for seed in seeds}
    for seed, (plain, branches) in cells.items():
        if plain["warmstart_success"] != branches["warmstart_success"]:
            raise SystemExit(f"seed {seed}: the arms' warm starts differ ({plain['warmstart_success']} vs "
                             f"{branches['warmstart_success']}); they are not paired")
        cached = table1.current(game, "GRPO DreamGym", seed)
        lines.append(
            f"| {seed} | {_pct(plain['warmstart_success'])} | {_count(branches['branch_transitions'])} | "
            f"{_pct(plain['fidelity'].get('fidelity/success_agreement'))} / {_pct(branches['fidelity'].get('fidelity/success_agreement'))} | "
            f"{_pct(plain['warmstart_synthetic_success'])} / {_pct(branches['warmstart_synthetic_success'])} | "
            f"{_pct(plain['warmstart_synthetic_agreement'])} / {_pct(branches['warmstart_synthetic_agreement'])} | "
            f"{_pct(plain['success'])} / {_pct(branches['success'])} | "
            f"{_pct(cached['success']) if cached else '-'} |"
        )
    if len(seeds) > 1:
        keys = {
            "replay agrees with real play": "warmstart_synthetic_agreement",
            "warm start's synthetic success": "warmstart_synthetic_success",
            "held out after RL": "success",
        }
        lines.append("")
        lines.append(f"Mean paired difference, branches minus plain, over {len(seeds)} seeds (95% CI):")
        lines.append("")
        for name, key in keys.items():
            diffs = [b[key] - a[key] for a, b in cells.values()]
            means = " / ".join(f"{100 * statistics.mean(c[i][key] for c in cells.values()):.1f}" for i in range(2))
            lines.append(f"- {name}: {means} (plain / branches), difference {_interval(diffs)}")
    return "\n".join(lines) + "\n"


def main() -> None:
    game = sys.argv[1] if len(sys.argv) > 1 else "coin"
    if game not in table1.GAMES:
        raise SystemExit(f"summarize.py: {game!r} is not a game of benchmarks/table1/run.py's GAMES")
    text = table(game)
    (HERE / f"table-{game}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
