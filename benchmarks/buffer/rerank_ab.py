"""A/B on one annoy index: the re-ranked search (631566f) against the one before it.

Both searches query the very same index with the same 200 held-out queries, in
interleaved passes (old, new; three times), so the latency ratio is measured in one run.
"Same list" is the share of queries whose result list equals the exact buffer's.

    OPENBLAS_NUM_THREADS=1 python benchmarks/buffer/rerank_ab.py --data /tmp/dgbench/part0.jsonl \
        --out benchmarks/buffer/results-rerank-ab.json
"""

from __future__ import annotations

import argparse
import json
import platform

import msgspec
import numpy as np
from run import Precomputed, encode, latencies, load

from dreamgym_plugin_annoy import AnnoyBuffer, AnnoyConfig
from dreamgym_plugin_encoders import HashingEncoder
from dreamgym_plugin_exact import ExactBuffer, ExactConfig, embedding_text, topk_cosine


class PreviousAnnoy(AnnoyBuffer):
    """The search before 631566f: annoy's own distances and order, no re-ranking."""

    def _search(self, space, q, k, n, mask):
        built = self._built
        rest = np.concatenate([built.holes[mask[built.holes]], built.upto + np.flatnonzero(mask[built.upto : n])])
        exact = topk_cosine(q, space.data[rest], k) if len(rest) else None
        hits = []
        for i, vector in enumerate(q):
            rows, scores = self._previous_hits(built, vector, k, mask)
            if exact is not None:
                rows, scores = np.concatenate([rows, rest[exact[0][i]]]), np.concatenate([scores, exact[1][i]])
            hits.append((rows, scores))
        return hits

    def _previous_hits(self, built, vector, k, mask):
        total = len(built.item_rows)
        ask = min(total, k + 8)
        while True:
            items, distances = built.annoy.get_nns_by_vector(vector, ask, search_k=self.config.search_k,
                                                             include_distances=True)
            rows = built.item_rows[np.asarray(items, dtype=np.int64)]
            keep = (rows >= 0) & mask[np.maximum(rows, 0)]
            if keep.sum() >= min(k, total) or ask >= total:
                scores = 1.0 - np.square(np.asarray(distances, dtype=np.float32)) / 2.0  # angular -> cosine
                return rows[keep][:k], scores[keep][:k]
            ask = min(total, ask * 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", required=True)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--search-k", type=int, nargs="+", default=[5_000, 20_000, 50_000])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    pool = load(args.data, args.items + args.queries)
    queries_t, items = pool[-args.queries :], pool[: -args.queries]
    queries = [(t.state, t.action) for t in queries_t]
    hashing = HashingEncoder()
    vectors, qvec = encode(hashing, items), encode(hashing, queries_t)
    encoder = Precomputed(hashing, [embedding_text(s, a) for s, a in queries], qvec)
    exact = ExactBuffer(ExactConfig(), encoder=encoder)
    exact.add(transitions=items, embeddings=vectors)
    _, want = latencies(exact, queries, 4)
    config = AnnoyConfig(n_trees=50, build_jobs=1, min_rows=0)
    new, old = AnnoyBuffer(config, encoder=encoder), PreviousAnnoy(config, encoder=encoder)
    for buffer in (new, old):
        buffer.add(transitions=items, embeddings=vectors)
        buffer.seal()
    new.rebuild(block=True)
    old.wait_index()
    old._built = new._built  # the very same index for both searches
    report = {"command": "OPENBLAS_NUM_THREADS=1 python benchmarks/buffer/rerank_ab.py --data " + " ".join(args.data)
              + f" --out {args.out}", "machine": platform.platform(), "items": len(items), "queries": len(queries),
              "k": 4, "n_trees": 50, "search_k": {}}
    for search_k in args.search_k:
        p50 = {"previous": [], "reranked": []}
        for buffer in (new, old):
            buffer.config = msgspec.structs.replace(config, search_k=search_k)
        row = report["search_k"][str(search_k)] = {}
        for _ in range(3):
            for name, buffer in (("previous", old), ("reranked", new)):
                lat, results = latencies(buffer, queries, 4)
                p50[name].append(lat["p50_ms"])
                # each search is deterministic, so every pass gives the same lists
                row[f"same_list_{name}"] = sum(a == e for a, e in zip(results, want)) / len(want)
        row |= {f"p50_ms_{name}": float(np.median(v)) for name, v in p50.items()}
        row["p50_ratio_reranked_over_previous"] = row["p50_ms_reranked"] / row["p50_ms_previous"]
        print(search_k, row, flush=True)
    with open(args.out, "w") as fh:
        json.dump(report, fh, indent=2)


if __name__ == "__main__":
    main()
