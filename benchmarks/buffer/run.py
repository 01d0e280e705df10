"""Replay-buffer benchmark on real TextWorldExpress transitions.

Measures, for the ``exact`` and ``annoy`` buffers:
- ingest rate with precomputed embeddings (encoding excluded), on disk;
- single-query ``retrieve`` latency p50/p99 (snapshot, search, merge; the query's
  embedding is precomputed, so encoder speed is excluded) at 100k and 1M stored transitions, both backends in the same run;
- annoy recall@k against exact, counting ties (an annoy hit whose exact score
  reaches the k-th exact score is a hit), and the share of queries whose annoy result
  list equals exact's (same rows, same order: ties go to the earliest row in both).
A small section repeats the recall/latency check on all-MiniLM-L6-v2 embeddings.

    python benchmarks/buffer/collect.py --count 520000 --seed-offset 0 --out /tmp/dgbench/part0.jsonl
    python benchmarks/buffer/collect.py --count 520000 --seed-offset 1000000 --out /tmp/dgbench/part1.jsonl
    python benchmarks/buffer/run.py --data /tmp/dgbench/part0.jsonl /tmp/dgbench/part1.jsonl
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import tempfile
import time
from pathlib import Path

import msgspec
import numpy as np

from dreamgym_core.records import Transition
from dreamgym_plugin_annoy import AnnoyBuffer, AnnoyConfig
from dreamgym_plugin_encoders import HashingEncoder, MiniLMConfig, MiniLMEncoder
from dreamgym_plugin_exact import ExactBuffer, ExactConfig, content_key, embedding_text

HERE = Path(__file__).parent


def load(paths: list[str], limit: int) -> list[Transition]:
    """Distinct transitions (by buffer content key) from JSONL files, in file order."""
    decoder = msgspec.json.Decoder(Transition)
    out, seen = [], set()
    for path in paths:
        with open(path, "rb") as fh:
            for line in fh:
                t = decoder.decode(line)
                key = content_key(t)
                if key not in seen:
                    seen.add(key)
                    out.append(t)
                    if len(out) >= limit:
                        return out
    return out


def encode(encoder, transitions: list[Transition], batch: int = 8192) -> np.ndarray:
    texts = [embedding_text(t.state, t.action) for t in transitions]
    return np.concatenate([encoder.encode(texts=texts[i : i + batch]) for i in range(0, len(texts), batch)])


class Precomputed:
    """Wraps an encoder: texts encoded beforehand come from a table (query encoding excluded)."""

    def __init__(self, encoder, texts: list[str], vectors: np.ndarray) -> None:
        self.id, self.dim, self._encoder = encoder.id, encoder.dim, encoder
        self._table = dict(zip(texts, vectors))

    def encode(self, *, texts):
        if all(t in self._table for t in texts):
            return np.stack([self._table[t] for t in texts])
        return self._encoder.encode(texts=texts)


def ingest(buffer, items, vectors, batch: int = 1000) -> float:
    """Transitions per second through add() with precomputed embeddings, plus final flush."""
    start = time.perf_counter()
    for i in range(0, len(items), batch):
        buffer.add(transitions=items[i : i + batch], embeddings=vectors[i : i + batch])
    buffer.flush()
    return len(items) / (time.perf_counter() - start)


def latencies(buffer, queries, k: int) -> tuple[dict, list[list[Transition]]]:
    times, results = [], []
    for q in queries:
        start = time.perf_counter()
        results.append(buffer.retrieve(queries=[q], k=k)[0])
        times.append(time.perf_counter() - start)
    ms = np.array(times) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean())}, results


def recall(approx, exact, qvec, item_vec, index_of, k: int) -> float:
    """Tie-aware recall@k of ``approx`` against ``exact`` result lists."""
    hits = 0
    for i, (a, e) in enumerate(zip(approx, exact)):
        kth = min(float(item_vec[index_of[id(t)]] @ qvec[i]) for t in e)
        hits += sum(float(item_vec[index_of[id(t)]] @ qvec[i]) >= kth - 1e-5 for t in a[:k])
    return hits / (k * len(exact))


def compare(items, vectors, queries, qvec, encoder, k, annoy_cfg, search_ks) -> dict:
    """Exact vs annoy (in memory) on one item set: latency, recall per search_k, build time."""
    index_of = {id(t): i for i, t in enumerate(items)}
    encoder = Precomputed(encoder, [embedding_text(s, a) for s, a in queries], qvec)
    exact = ExactBuffer(ExactConfig(), encoder=encoder)
    exact.add(transitions=items, embeddings=vectors)
    annoy = AnnoyBuffer(annoy_cfg, encoder=encoder)
    annoy.add(transitions=items, embeddings=vectors)
    annoy.seal()  # index every row; nothing is left to the exact tail
    annoy.wait_index()  # a build the seal started: the timed build runs alone (builds run one at a time)
    start = time.perf_counter()
    annoy.rebuild(block=True)
    build_s = time.perf_counter() - start
    exact_lat, exact_res = latencies(exact, queries, k)
    batch_start = time.perf_counter()
    exact.retrieve(queries=queries[:64], k=k)
    out = {
        "items": len(items),
        "exact": exact_lat | {"batched_64_ms_per_query": (time.perf_counter() - batch_start) * 1000 / 64},
        "annoy_build_s": build_s,
        "annoy": {},
    }
    for search_k in search_ks:
        annoy.config = msgspec.structs.replace(annoy_cfg, search_k=search_k)
        lat, res = latencies(annoy, queries, k)
        rec = recall(res, exact_res, qvec, vectors, index_of, k)
        out["annoy"][str(search_k)] = lat | {
            f"recall@{k}": rec,
            "same_list_as_exact": sum(a == e for a, e in zip(res, exact_res)) / len(res),
            "speedup_p50": exact_lat["p50_ms"] / lat["p50_ms"],
            "speedup_p99": exact_lat["p99_ms"] / lat["p99_ms"],
        }
        print(len(items), search_k, out["annoy"][str(search_k)], flush=True)
    exact.close()
    annoy.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", required=True)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--n-trees", type=int, default=50)
    parser.add_argument("--search-k", type=int, nargs="+", default=[5_000, 10_000, 20_000, 50_000])
    parser.add_argument("--minilm-items", type=int, default=5_000)
    parser.add_argument("--out", default=str(HERE / "results.json"))
    args = parser.parse_args()
    report: dict = {"command": "python benchmarks/buffer/run.py " + " ".join(
        f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in vars(args).items() if k != "out"), "machine": platform.platform(), "k": args.k}

    pool = load(args.data, max(args.sizes) + args.queries)
    if len(pool) < max(args.sizes) + args.queries:
        raise SystemExit(f"only {len(pool)} distinct transitions in --data; collect more")
    queries_t, items = pool[-args.queries :], pool[: -args.queries]
    queries = [(t.state, t.action) for t in queries_t]
    report["data"] = {
        "source": "TextWorldExpress (twc, cookingworld, coin, mapreader, sorting), random valid actions, "
        "distinct transitions; queries are held-out transitions' (state, action)",
        "items": len(items), "queries": len(queries),
    }
    hashing = HashingEncoder()
    start = time.perf_counter()
    vectors = encode(hashing, items)
    qvec = encode(hashing, queries_t)
    gc.freeze()  # millions of long-lived records: keep the cyclic GC from pausing timed queries
    report["hashing_encoder"] = {"id": hashing.id, "texts_per_s": len(items) / (time.perf_counter() - start)}
    print("encoded", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        n = min(100_000, len(items))
        disk = ExactBuffer(ExactConfig(), encoder=hashing, path=tmp)
        report["ingest_on_disk"] = {"transitions": n, "per_s": ingest(disk, items[:n], vectors[:n])}
        disk.close()
    print("ingest", report["ingest_on_disk"], flush=True)

    annoy_cfg = AnnoyConfig(n_trees=args.n_trees, build_jobs=-1, min_rows=0)
    report["hashing"] = [
        compare(items[:size], vectors[:size], queries, qvec, hashing, args.k, annoy_cfg, args.search_k)
        for size in args.sizes
    ]
    Path(args.out).write_text(json.dumps(report, indent=2))

    if not args.minilm_items:
        return
    minilm = MiniLMEncoder(MiniLMConfig(max_length=128))
    sub = items[: args.minilm_items]
    start = time.perf_counter()
    mvec = encode(minilm, sub, batch=256)
    report["minilm_encoder"] = {"id": minilm.id, "texts_per_s": len(sub) / (time.perf_counter() - start)}
    mq = encode(minilm, queries_t, batch=256)
    report["minilm"] = compare(sub, mvec, queries, mq, minilm, args.k, annoy_cfg, args.search_k)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print("done", flush=True)


if __name__ == "__main__":
    main()
