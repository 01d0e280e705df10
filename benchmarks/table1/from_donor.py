"""Run a Table 1 donor cell's pipeline again from a donor's parts, with extra overrides.

    python benchmarks/table1/from_donor.py GAME SEED DONOR_DIR OUT_DIR [--new-model] [KEY=VALUE ...]

DONOR_DIR holds a finished run of the seed's GRPO DreamGym row, or its pipeline up to RL
(``loop.iterations=0``): its ``offline.jsonl``, ``policy_init/`` and ``experience_model/`` are
copied into OUT_DIR, so only RL and what the overrides change differ from the cached cell.
``--new-model`` leaves the experience model behind, for overrides that change how it is
trained: the run trains it again on the donor's offline data.
Without overrides the run repeats the cell. Prints one JSON line: held-out success, per RL
iteration the rollout success and GRPO's share of groups with all-zero advantages, and what
a cell records (``run.measured``: fidelity, the synthetic replay).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as table1  # noqa: E402


def main() -> None:
    if len(sys.argv) < 5:
        raise SystemExit(__doc__)
    game, seed, extra = sys.argv[1], int(sys.argv[2]), sys.argv[5:]
    # Absolute: the run itself starts in the repository root, wherever this script was started.
    donor, out = Path(sys.argv[3]).resolve(), Path(sys.argv[4]).resolve()
    new_model = "--new-model" in extra
    extra = [item for item in extra if item != "--new-model"]
    if not out.exists():  # else a rerun resumes
        table1.copy_parts(donor, out, model=not new_model)
    started = time.time()
    summary = table1._dreamgym_run([*table1.overrides(game, "GRPO DreamGym", seed, out), *extra], out, table1.kernel_env(game, seed))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    iterations = [r for r in rows if "rollout/success_rate" in r]
    print(json.dumps({
        "game": game, "seed": seed, "overrides": extra, "success": summary.get("eval/success_rate"),
        "warmstart_success": rows[0].get("eval_before/success_rate"),
        "rollout_success": [round(r["rollout/success_rate"], 3) for r in iterations],
        "zero_signal_groups": [r.get("charts/zero_signal_groups") for r in iterations],
        "wall_seconds": round(time.time() - started, 1),
        "measured": table1.measured(summary, rows[0]),
    }))


if __name__ == "__main__":
    main()
