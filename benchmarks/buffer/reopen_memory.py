"""Peak memory of reopening a replay buffer whose history is much longer than its capacity.

A long run at a fixed ``capacity`` writes every record it ever stored to its segment files
and evicts most of them. Reopening it (``--resume``, ``dreamgym buffer stats``) should cost
about what the live records cost, not what the history cost. This writes two on-disk
``exact`` buffers with the same ``--capacity`` live records (about 1 KB of text each, hashing
encoder): one that got only those, one that got ``--history`` records and evicted the rest.
Each is then opened in a fresh process, which reports its peak resident memory and its open
time. The verdict is a ratio within this one run: the peak of the long-history open over the
peak of the short one. ``--baseline-src`` opens both buffers a second time with another
checkout's ``dreamgym_plugin_exact`` first on the path (say a git worktree of an older commit),
in the same run.

    git worktree add /tmp/old <commit>
    python benchmarks/buffer/reopen_memory.py --history 200000 --baseline-src /tmp/old/plugins/buffers/exact/src \
        --out benchmarks/buffer/results-reopen-memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from dreamgym_core.records import Transition
from dreamgym_plugin_encoders import HashingConfig, HashingEncoder
from dreamgym_plugin_exact import ExactBuffer, ExactConfig

# Run in a fresh process: opens the buffer and prints its peak memory (MiB) and open time (s).
_OPEN = """
import json, resource, sys, time
from dreamgym_plugin_encoders import HashingConfig, HashingEncoder
from dreamgym_plugin_exact import ExactBuffer, ExactConfig
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
buffer = ExactBuffer(ExactConfig(capacity=int(sys.argv[2])), encoder=HashingEncoder(HashingConfig()), path=sys.argv[1])
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"live": len(buffer), "open_s": round(seconds, 2), "peak_mib": round(peak / 1024, 1),
                  "peak_minus_imports_mib": round((peak - before) / 1024, 1)}))
"""


def transition(i: int) -> Transition:
    return Transition(
        task_id=f"t{i % 50}", episode_id=f"e{i}", step=0, state=f"state {i} " + "x" * 500, action=f"go {i}",
        next_state=f"next {i} " + "y" * 500, reward=0.0, done=False, success=False, valid=True, source="synthetic",
    )


def write(path: Path, capacity: int, records: int, batch: int = 1000) -> None:
    with ExactBuffer(ExactConfig(capacity=capacity), encoder=HashingEncoder(HashingConfig()), path=path) as buffer:
        for start in range(0, records, batch):
            buffer.add(transitions=[transition(i) for i in range(start, min(records, start + batch))])


def reopen(path: Path, capacity: int, src: Path | None = None) -> dict[str, float]:
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(src), env.get("PYTHONPATH", "")) if p)
    out = subprocess.run([sys.executable, "-c", _OPEN, str(path), str(capacity)], check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout)


def opened(short: Path, long: Path, capacity: int, src: Path | None = None) -> dict[str, object]:
    both = {"short": reopen(short, capacity, src), "long": reopen(long, capacity, src)}
    return {**both, "long_over_short_peak": round(both["long"]["peak_mib"] / both["short"]["peak_mib"], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--capacity", type=int, default=2000)
    parser.add_argument("--history", type=int, default=100_000)
    parser.add_argument("--baseline-src", type=Path, help="another dreamgym_plugin_exact source folder to open them with too")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        short, long = Path(tmp, "short"), Path(tmp, "long")
        write(short, args.capacity, args.capacity)
        write(long, args.capacity, args.history)
        disk = {name: sum(f.stat().st_size for f in p.iterdir()) // 2**20 for name, p in (("short", short), ("long", long))}
        result = {"this_checkout": opened(short, long, args.capacity)}
        if args.baseline_src:
            result["baseline"] = {"src": str(args.baseline_src), **opened(short, long, args.capacity, args.baseline_src)}
    baseline = f" --baseline-src {args.baseline_src}" if args.baseline_src else ""
    result = {
        "command": f"python benchmarks/buffer/reopen_memory.py --capacity {args.capacity} --history {args.history}{baseline} --out {args.out}",
        "machine": {"python": platform.python_version(), "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count()},
        "segment_mib": disk,
        **result,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
