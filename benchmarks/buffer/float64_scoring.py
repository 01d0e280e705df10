"""Exact top-k with float64 scoring (54fe7ef) against the float32 scoring before it, in one process.

The float32 search is read from the commit before (``git show a85a847:...search.py > FILE``,
passed as --old), so both run on the same vectors, interleaved, and the ratio is what counts on
a shared machine. Vectors are random unit rows (latency depends on n, d and the rows near each
query's k-th score, which the new search rescores in float64).

    OPENBLAS_NUM_THREADS=1 python benchmarks/buffer/float64_scoring.py --old /tmp/bufold/search_f32.py \
        --out benchmarks/buffer/results-float64-scoring.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import time

import numpy as np

from dreamgym_plugin_exact import search as new


def _load(path: str):
    spec = importlib.util.spec_from_file_location("search_float32", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--old", required=True, help="the float32 search.py of the commit before")
    parser.add_argument("--rows", type=int, nargs="+", default=[65_536, 262_144])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    old = _load(args.old)
    rng = np.random.default_rng(0)
    rows = []
    for n in args.rows:
        matrix = rng.standard_normal((n, args.dim)).astype(np.float32)
        matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
        for m in (1, 64):
            queries = matrix[:m] + rng.standard_normal((m, args.dim)).astype(np.float32) * 0.1
            queries /= np.linalg.norm(queries, axis=1, keepdims=True)
            timed = {}
            for _ in range(2):  # interleaved twice: a burst of load hits both
                for name, module in (("float32", old), ("float64", new)):
                    timed.setdefault(name, []).append(_ms(lambda: module.topk_cosine(queries, matrix, args.k), args.repeats))
            f32, f64 = (min(timed[name]) for name in ("float32", "float64"))
            rows.append({"rows": n, "dim": args.dim, "queries": m, "float32_ms": round(f32, 2), "float64_ms": round(f64, 2), "ratio": round(f64 / f32, 2)})
            print(rows[-1], flush=True)
    with open(args.out, "w") as f:
        json.dump({"command": "OPENBLAS_NUM_THREADS=1 python benchmarks/buffer/float64_scoring.py --old /tmp/bufold/search_f32.py "
                   f"--out {args.out}", "k": args.k, "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
