"""Render results*.json of run.py as the markdown table in results.md.

    python benchmarks/buffer/report.py benchmarks/buffer/results.json benchmarks/buffer/results-1m.json
"""

from __future__ import annotations

import json
import sys


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"  # "-": measured before the metric existed


def rows(name: str, section: dict, k: int) -> list[str]:
    exact = section["exact"]
    out = [
        f"| {name} | {section['items']:,} | exact | - | {exact['p50_ms']:.2f} | {exact['p99_ms']:.2f} | 1.000 | 1.000 | - |"
    ]
    for search_k, r in section["annoy"].items():
        out.append(
            f"| {name} | {section['items']:,} | annoy | {int(search_k):,} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
            f"| {r[f'recall@{k}']:.3f} | {_share(r.get('same_list_as_exact'))} "
            f"| {r['speedup_p50']:.1f}x / {r['speedup_p99']:.1f}x |"
        )
    return out


def main() -> None:
    lines = [
        f"| phi | items | backend | search_k | p50 ms | p99 ms | recall@k | same list as exact | speedup p50 / p99 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for path in sys.argv[1:]:
        report = json.load(open(path))
        k = report["k"]
        for section in report.get("hashing", []):
            lines += rows(report["hashing_encoder"]["id"], section, k)
        if "minilm" in report:
            lines += rows(report["minilm_encoder"]["id"], report["minilm"], k)
        notes.append(
            f"- `{path}`: `{report['command']}`; ingest on disk "
            f"{report['ingest_on_disk']['per_s']:,.0f} transitions/s ({report['ingest_on_disk']['transitions']:,}, "
            f"precomputed embeddings); annoy build "
            + ", ".join(f"{s['annoy_build_s']:.0f} s at {s['items']:,}" for s in report.get("hashing", []))
        )
    print("\n".join(lines + [""] + notes))


if __name__ == "__main__":
    main()
