"""Speed of the main job's tiny model on 1 and 2 CPU threads, alone and beside one busy process,
with OpenMP's default wait policy, with ``OMP_WAIT_POLICY=passive`` and with a shorter spin
(libgomp's ``GOMP_SPINCOUNT=10000``; its default is 300000).

    python benchmarks/cpu_threads/run.py  # writes benchmarks/cpu_threads/results.json

Each case runs in a fresh process, because OpenMP reads these variables once, when torch loads
it. The "busy" cases start one pure-Python spin loop first: a stand-in for any other
single-threaded job on the machine. Run it on an otherwise idle machine; the ratios within one
run are the result, not the seconds (benchmarks/cpu_threads/README.md).

Why it matters: with OpenMP's default policy a thread that reaches a barrier spins before it
sleeps. Beside a busy process one of the two threads is often descheduled, so the other spins
for nothing at every parallel region, and the tiny model's many small ops make that the cost.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MAIN_JOB = HERE.parents[1] / "examples" / "default.yaml"  # its policy's hf-tiny sizes are the ones timed
WAITS = {"default": {}, "passive": {"OMP_WAIT_POLICY": "passive"}, "spin-10000": {"GOMP_SPINCOUNT": "10000"}}
CASES = [  # (threads, OpenMP wait settings, busy neighbour)
    (threads, wait, busy)
    for busy in (False, True)
    for threads, wait in ((1, "default"), (2, "default"), (2, "passive"), (2, "spin-10000"))
]
REPEATS = 5


def one_case(threads: int) -> dict:
    """Time batched sampling and SFT of the tiny model on prompts of about the experience model's
    length (several hundred tokens), the median of REPEATS."""
    import torch
    import yaml

    from dreamgym_plugin_hf import TinyConfig, build_tiny

    torch.set_num_threads(threads)
    sizes = yaml.safe_load(MAIN_JOB.read_text())["policy"]["config"]
    rooms, items = ["kitchen", "pantry", "garden", "bedroom"], ["apple", "key", "coin", "book"]
    lines = [f"Room: {r}. Items: {i}, lamp. Action: take {i}. Result: you take the {i}." for r in rooms for i in items]
    prompts = [" ".join(lines[i:] + lines[:i]) * 2 for i in range(16)]
    backend = build_tiny(TinyConfig(**{**sizes, "cpu_threads": threads}))
    backend.prepare(corpus=lines * 20)
    examples = [[(p, False), (f" take {items[i % 4]}", True)] for i, p in enumerate(prompts * 2)]
    generate, sft = [], []
    for repeat in range(REPEATS):
        started = time.perf_counter()
        backend.generate(prompts=prompts, max_new_tokens=32, temperature=1.0, seed=repeat)
        generate.append(time.perf_counter() - started)
        started = time.perf_counter()
        backend.sft(examples=examples, epochs=1, lr=1e-3, batch_size=16)
        sft.append(time.perf_counter() - started)
    return {
        "prompt_tokens": len(backend.prompt_ids(prompts[0])),
        "generate_16x32_s": round(sorted(generate)[REPEATS // 2], 3),
        "sft_32_examples_s": round(sorted(sft)[REPEATS // 2], 3),
    }


def run_case(threads: int, wait: str, busy: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(WAITS[wait])
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        out = subprocess.run([sys.executable, __file__, str(threads)], env=env, capture_output=True, text=True, check=True)
    finally:
        if spinner:
            spinner.kill()
            spinner.wait()
    timings = json.loads(out.stdout.strip().splitlines()[-1])
    return {"threads": threads, "openmp_wait": wait, "busy_neighbour": busy, **timings}


def ratios(results: list[dict], key: str) -> dict:
    """Each case's time over the 1-thread time in the same condition (alone or busy)."""
    one = {r["busy_neighbour"]: r[key] for r in results if r["threads"] == 1}
    return {
        f"{'busy' if r['busy_neighbour'] else 'alone'}: {r['threads']} threads, {r['openmp_wait']}": round(r[key] / one[r["busy_neighbour"]], 2)
        for r in results if r["threads"] > 1
    }


def main() -> None:
    if len(sys.argv) == 2:
        print(json.dumps(one_case(int(sys.argv[1]))))
        return
    results = []
    for case in CASES:
        results.append(run_case(*case))
        print(json.dumps(results[-1]), flush=True)
    summary = {
        "command": "python benchmarks/cpu_threads/run.py",
        "cpu_count": os.cpu_count(),
        "results": results,
        "generate_time_over_1_thread": ratios(results, "generate_16x32_s"),
        "sft_time_over_1_thread": ratios(results, "sft_32_examples_s"),
    }
    (HERE / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
