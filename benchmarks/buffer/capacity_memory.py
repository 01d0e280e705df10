"""Memory of a replay buffer held at its capacity, as records keep coming.

A buffer with ``capacity`` evicts its oldest synthetic records once full. The rows it holds in
memory (record list, embedding matrix, key maps) must stay bounded too, or a long run grows by
every record it ever stored. This adds ``--batches`` batches of ``--batch`` new transitions
(about 1 KB of text each, hashing encoder) to an on-disk ``exact`` buffer of ``--capacity``
records and samples, after every ``--every`` batches, the rows held in memory and the process's
resident memory. The verdict is a ratio within this one run: resident memory at the end over
resident memory at the first sample after the buffer filled.

    python benchmarks/buffer/capacity_memory.py --out benchmarks/buffer/results-capacity-memory.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import tempfile
from pathlib import Path

from dreamgym_core.records import Transition
from dreamgym_plugin_encoders import HashingConfig, HashingEncoder
from dreamgym_plugin_exact import ExactBuffer, ExactConfig


def resident_mib() -> float:
    """Resident memory of this process (Linux /proc), in MiB."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def transition(i: int) -> Transition:
    return Transition(
        task_id=f"t{i % 50}", episode_id=f"e{i}", step=0, state=f"state {i} " + "x" * 500, action=f"go {i}",
        next_state=f"next {i} " + "y" * 500, reward=0.0, done=False, success=False, valid=True, source="synthetic",
    )


def run(capacity: int, batch: int, batches: int, every: int) -> list[dict[str, float]]:
    samples = []
    with tempfile.TemporaryDirectory() as tmp:
        buffer = ExactBuffer(ExactConfig(capacity=capacity), encoder=HashingEncoder(HashingConfig()), path=tmp)
        added = 0
        for b in range(1, batches + 1):
            buffer.add(transitions=[transition(added + j) for j in range(batch)])
            added += batch
            if b % every == 0 or b == 1:
                buffer.flush()
                gc.collect()
                samples.append({"added": added, "live": len(buffer), "rows_in_memory": len(buffer._records), "rss_mib": round(resident_mib(), 1)})
                print(samples[-1], flush=True)
        buffer.close()
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--capacity", type=int, default=200)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    samples = run(args.capacity, args.batch, args.batches, args.every)
    full = next(s for s in samples if s["added"] >= 2 * args.capacity)
    result = {
        "command": "python benchmarks/buffer/capacity_memory.py " + " ".join(
            f"--{k} {v}" for k, v in (("capacity", args.capacity), ("batch", args.batch), ("batches", args.batches), ("every", args.every))
        ) + f" --out {args.out}",
        "machine": {"python": platform.python_version(), "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count()},
        "samples": samples,
        "max_rows_in_memory": max(s["rows_in_memory"] for s in samples),
        "rss_end_over_rss_full": round(samples[-1]["rss_mib"] / full["rss_mib"], 3),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"max rows in memory {result['max_rows_in_memory']} for capacity {args.capacity}; "
          f"resident memory end / first full sample = {result['rss_end_over_rss_full']}")


if __name__ == "__main__":
    main()
