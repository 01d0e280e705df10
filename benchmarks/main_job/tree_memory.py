"""Wall time and peak memory of a command together with every process it starts.

``/usr/bin/time -v`` reports the largest single process ("maximum resident set size"), so the
TextWorldExpress JVMs a run keeps beside its Python process were left out of the main job's
memory. This samples the resident memory of the whole process tree every ``--every`` seconds:

    .venv/bin/python benchmarks/main_job/tree_memory.py -- bash scripts/run-default.sh

and prints one JSON line: wall seconds, exit status, and the peaks (GB) of the tree's sum, of the
largest process and of the JVMs' sum, with the most JVMs seen at once. A sampled peak can miss a
spike shorter than the interval. The sums add each process's resident set size, so pages that
several processes share (shared libraries, copy-on-write pages after a fork) count once per process:
a sum can exceed the memory the tree actually occupied.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import psutil


def tree_sample(root: psutil.Process) -> tuple[int, int, int, int]:
    """(sum of RSS, largest RSS, JVMs' RSS sum, JVM count) over ``root`` and its descendants."""
    total = largest = java = jvms = 0
    for process in [root, *root.children(recursive=True)]:
        try:
            rss = process.memory_info().rss
            is_java = process.name() == "java"
        except psutil.Error:  # ended between listing and reading
            continue
        total, largest = total + rss, max(largest, rss)
        if is_java:
            java, jvms = java + rss, jvms + 1
    return total, largest, java, jvms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--every", type=float, default=0.2, help="Seconds between samples.")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="The command, after --.")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given (after --)")
    start = time.monotonic()
    child = subprocess.Popen(command)
    root = psutil.Process(child.pid)
    peaks = [0, 0, 0, 0]
    while child.poll() is None:
        try:
            sample = tree_sample(root)
        except psutil.NoSuchProcess:
            break
        peaks = [max(p, s) for p, s in zip(peaks, sample)]
        time.sleep(args.every)
    status = child.wait()
    gb = 1e9
    print(json.dumps({
        "command": " ".join(command), "wall_s": round(time.monotonic() - start, 1), "exit": status,
        "peak_tree_gb": round(peaks[0] / gb, 2), "peak_largest_process_gb": round(peaks[1] / gb, 2),
        "peak_jvms_gb": round(peaks[2] / gb, 2), "most_jvms_at_once": peaks[3],
    }))  # fmt: skip
    sys.exit(status)


if __name__ == "__main__":
    main()
