"""Cells of one protocol against another, on the (game, row, seed) cells both have.

    python benchmarks/table1/compare_protocols.py 4 5 [--games coin] [--seeds 0 1 2 3 4]

Per row: the cells compared, how many give the same held-out success, and the mean of both. When a
protocol changes only random draws (5 against 4: the experience model's synthetic steps), the rows
that do not draw from the changed source should repeat exactly, and the others show how far one
draw moves a cell.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as table1  # noqa: E402


def compare(old: int, new: int, games: list[str], seeds: list[int]) -> list[str]:
    lines = [f"| game | row | cells | same success | protocol {old} | protocol {new} | per seed ({old} -> {new}) |",
             "|---|---|---|---|---|---|---|"]
    for game in games:
        for row in table1.ROWS:
            pairs = [(s, a, b) for s in seeds
                     if (a := table1.current(game, row, s, old)) and (b := table1.current(game, row, s, new))]
            if not pairs:
                continue
            same = sum(a["success"] == b["success"] for _, a, b in pairs)
            mean = lambda cells: 100 * statistics.mean(c["success"] for c in cells)  # noqa: E731
            per_seed = ", ".join(f"{s}: {100 * a['success']:.1f} -> {100 * b['success']:.1f}" for s, a, b in pairs)
            lines.append(f"| {game} | {row} | {len(pairs)} | {same} | {mean([a for _, a, _ in pairs]):.1f} | "
                         f"{mean([b for _, _, b in pairs]):.1f} | {per_seed} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old", type=int)
    parser.add_argument("new", type=int)
    parser.add_argument("--games", nargs="+", default=sorted(table1.GAMES), choices=sorted(table1.GAMES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    args = parser.parse_args()
    print("\n".join(compare(args.old, args.new, args.games, args.seeds)))


if __name__ == "__main__":
    main()
