"""Table 1 rows on one seed, every one built on this machine from one fresh warm start.

    python benchmarks/table1/paired_here.py mapreader 0 "GRPO DreamGym + wins shown 4x" \\
        --out benchmarks/table1/results/success-repeats/mapreader.jsonl

For a seed whose cached cells cannot be paired with a run here: the warm start of the from-scratch
policy is chaotic in float rounding, and a rebuild on another CPU (even one held to AVX2) can miss the
cached one (``run.rebuilt_before_rl`` then stops). This runs the seed's default row, GRPO DreamGym,
first (its offline data, warm start and experience model), then each row named, from copies of those
parts as ``run.share_from`` copies them for a cell, in ``runs/here/<game>/<row>/seed<N>``, with the
kernels held to AVX2 on an AVX-512 CPU (``run.HELD_TO_AVX2``), as the table's cells ran. One JSON line per row goes to ``--out`` (``run.measured``
values, with the row, seed, machine, commit and wall time); rows already there are not run again.
The committed table's cells are never read or written.

    python benchmarks/table1/paired_here.py --report benchmarks/table1/results/success-repeats/mapreader.jsonl

prints a markdown table of such a file: per seed and row, held-out success after RL, the warm start's,
its synthetic replay's, and the experience model's success agreement and balanced accuracy on held-out
real transitions; then each row's mean, its mean gain over the warm start, and its paired difference to
the default row.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as table1  # noqa: E402

DONOR = "GRPO DreamGym"


def run_dir_here(game: str, row: str, seed: int) -> Path:
    return table1.RUNS / "here" / game / table1.slug(row) / f"seed{seed}"


def done_rows(out: Path, game: str, seed: int) -> set[str]:
    if not out.exists():
        return set()
    lines = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    return {line["row"] for line in lines if line["game"] == game and line["seed"] == seed}


def run_row(game: str, row: str, seed: int) -> dict:
    run_dir = run_dir_here(game, row, seed)
    if row != DONOR and not run_dir.exists():
        donor = run_dir_here(game, DONOR, seed)
        shares = row in table1.SHARES_MODEL
        table1.copy_parts(donor, run_dir, model=shares)
    started, commit = time.time(), table1.git_commit()
    env = table1.HELD_TO_AVX2 if table1.cpu_simd() == "avx512" else {}
    summary = table1._dreamgym_run(table1.overrides(game, row, seed, run_dir), run_dir, env)
    return {
        "game": game, "row": row, "seed": seed, "wall_seconds": round(time.time() - started, 1), "commit": commit,
        "machine": table1.machine(held=bool(env)), "base_sha256": table1.base_sha256(), "protocol": table1.PROTOCOL,
        **table1.measured(summary, table1._before_rl_metrics(run_dir)),
    }


def report(path: Path) -> str:
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
    out = [
        "| game | seed | row | success | warm start | warm start, synthetic replay | success agreement | balanced |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in sorted(lines, key=lambda c: (c["game"], c["seed"], c["row"] != DONOR, c["row"])):
        f = c["fidelity"]
        out.append(
            f"| {c['game']} | {c['seed']} | {c['row']} | {pct(c['success'])} | {pct(c['warmstart_success'])} | "
            f"{pct(c['warmstart_synthetic_success'])} | {pct(f.get('fidelity/success_agreement'))} | "
            f"{f.get('fidelity/success_balanced_accuracy', float('nan')):.3f} |"
        )
    donor = {(c["game"], c["seed"]): c for c in lines if c["row"] == DONOR}
    out.append("")
    for row in sorted({c["row"] for c in lines}, key=lambda r: (r != DONOR, r)):
        cells = [c for c in lines if c["row"] == row and (c["game"], c["seed"]) in donor]
        mean = sum(c["success"] for c in cells) / len(cells)
        diffs = [c["success"] - donor[c["game"], c["seed"]]["success"] for c in cells]
        gains = [c["success"] - c["warmstart_success"] for c in cells]
        out.append(
            f"- {row}: {pct(mean)} over {len(cells)} seeds; against its warm start (SFT) {100 * sum(gains) / len(gains):+.1f}; "
            f"paired against {DONOR} {100 * sum(diffs) / len(diffs):+.1f} (per seed {', '.join(f'{100 * d:+.1f}' for d in diffs)})"
        )
    return "\n".join(out)


def main() -> None:
    if sys.argv[1:2] == ["--report"]:
        print(report(Path(sys.argv[2])))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("game", choices=sorted(table1.GAMES))
    parser.add_argument("seed", type=int)
    parser.add_argument("rows", nargs="+", choices=[row for row in table1.ROWS if row != DONOR])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for row in [DONOR, *args.rows]:
        if row in done_rows(args.out, args.game, args.seed):
            continue
        print(f"{args.game} | {row} | seed {args.seed}: running here", flush=True)
        line = run_row(args.game, row, args.seed)
        with args.out.open("a") as out:
            out.write(json.dumps(line) + "\n")
        print(json.dumps({k: line[k] for k in ("row", "success", "warmstart_success", "warmstart_synthetic_success")}), flush=True)


if __name__ == "__main__":
    main()
