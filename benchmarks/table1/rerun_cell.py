"""Run one cached Table 1 cell again from scratch and compare it with the cache.

    python benchmarks/table1/rerun_cell.py coin "GRPO DreamGym" 1 [--run-dir DIR]

The cell's pipeline runs in its own directory (default ``runs/rerun/<game>/<row>/seed<N>``),
never touching the cached cell; it prints the measured and the cached values side by side
and exits 1 when any differs. Metrics that the code records now but did not when the cell
ran are listed, not compared. Same code, CPU and thread count should give identical cells;
the warm start of the from-scratch policy is chaotic in float rounding, so another CPU may
not (diagnosis.md, "Same code, same seed, another machine").
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as table1  # noqa: E402


def compare(got: dict, cached: dict) -> tuple[dict, list[str]]:
    """(differences as key -> [measured, cached], metrics the cached cell lacks)."""
    diffs = {k: [got[k], cached.get(k)] for k in got if k != "fidelity" and got[k] != cached.get(k)}
    old = cached.get("fidelity", {})
    diffs |= {k: [v, old[k]] for k, v in got["fidelity"].items() if k in old and v != old[k]}
    diffs |= {k: [None, v] for k, v in old.items() if k not in got["fidelity"]}
    return diffs, sorted(set(got["fidelity"]) - set(old))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("game", choices=sorted(table1.GAMES))
    parser.add_argument("row", choices=list(table1.ROWS))
    parser.add_argument("seed", type=int)
    parser.add_argument("--run-dir", type=Path)
    args = parser.parse_args()
    cached = table1.current(args.game, args.row, args.seed)
    if cached is None:
        raise SystemExit(f"{args.game} | {args.row} | seed {args.seed}: no cached cell of the current base pipeline and protocol")
    if args.row != "GRPO DreamGym":
        raise SystemExit("only donor rows (GRPO DreamGym) run from scratch; other rows reuse the donor's warm start")
    # Absolute: the run itself starts in the repository root, wherever this script was started.
    run_dir = args.run_dir.resolve() if args.run_dir else table1.RUNS / "rerun" / args.game / table1.slug(args.row) / f"seed{args.seed}"
    started, commit = time.time(), table1.git_commit()  # the code the run starts with
    env = table1.kernel_env(args.game, args.seed)  # rounds as the cached cell's machine did
    summary = table1._dreamgym_run(table1.overrides(args.game, args.row, args.seed, run_dir), run_dir, env)
    got = table1.measured(summary, table1._before_rl_metrics(run_dir))
    diffs, new = compare(got, cached)
    print(json.dumps({
        "cell": f"{args.game} | {args.row} | seed {args.seed}", "cached_commit": cached.get("commit"),
        "cached_machine": cached.get("machine"), "machine": table1.machine(held=bool(env)), "commit": commit,
        "wall_seconds": round(time.time() - started, 1), "identical": not diffs, "differences": diffs,
        "not_compared (new metrics)": new, "measured": got,
    }, indent=1))
    sys.exit(1 if diffs else 0)


if __name__ == "__main__":
    main()
