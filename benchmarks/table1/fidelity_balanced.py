"""Table 1's experience models scored again, with balanced accuracy beside agreement.

    python benchmarks/table1/fidelity_balanced.py coin:0 mapreader:0 coin:1 ...   # GAME:SEED, one JSON line each

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
        first = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
        fidelity = {k: v for k, v in first.items() if k.startswith("fidelity/")}
        print(json.dumps({"game": game, "seed": int(seed), "seconds": round(time.time() - start), "run_dir": str(run_dir), **fidelity}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
