"""Run one Table 1 row's RL from a donor run directory (offline data, warm start and experience model
built before RL) with the code of the checkout it is started in, and print its summary's key values.

    python benchmarks/table1/same_cell.py ROW SEED DONOR_DIR OUT_DIR [GAME]

GAME is one of run.py's games (default coin-3).

Started from two checkouts (one a `git worktree` of an older commit, its packages put first with
PYTHONPATH), on one donor, it tells whether a code change moves a cell: the run directories'
metrics.jsonl can then be compared value by value.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path.cwd() / "benchmarks" / "table1"))
import run  # noqa: E402  (the checkout's own run.py)

KEYS = ["eval/success_rate", "eval/synthetic_success_rate", "eval/synthetic_agreement", "counters/synthetic_transitions"]


def main() -> None:
    row, seed, donor, out = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]).resolve()
    game = sys.argv[5] if len(sys.argv) > 5 else "coin-3"
    if not out.exists():
        run.copy_parts(donor, out, model=True)
    summary = run._dreamgym_run(run.overrides(game, row, seed, out), out, {})
    print(json.dumps({k: summary.get(k) for k in KEYS}))


if __name__ == "__main__":
    main()
