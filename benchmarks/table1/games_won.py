"""Which held-out games each policy wins, and which way it moves.

Reads episode files written by ``dreamgym eval RUN/config.json --split test --trajectories FILE``
(one policy each, the same test games) and prints, in markdown: per policy its wins and how
often it played each ``move <direction>``; then per game which policies won it. Policies that
win the same games and only ever move one way have learnt a fixed walk, not to read the exits.

    python benchmarks/table1/games_won.py LABEL=FILE [LABEL=FILE ...]
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import msgspec

from dreamgym_core.records import Trajectory


def read_episodes(path: Path) -> dict[str, Trajectory]:
    """Task id -> the episode played on it."""
    episodes = [msgspec.json.decode(line, type=Trajectory) for line in path.read_bytes().splitlines() if line.strip()]
    return {t.task.id: t for t in episodes}


def moves(episode: Trajectory) -> Counter:
    return Counter(t.action for t in episode.transitions if t.action.startswith("move "))


def seed_of(task_id: str) -> str:
    return task_id.rsplit("/", 1)[-1]


def table(policies: dict[str, dict[str, Trajectory]]) -> str:
    labels = list(policies)
    games = sorted(set.intersection(*(set(p) for p in policies.values())), key=lambda g: (len(g), g))
    lines = ["| policy | games won | moves played |", "|---|---|---|"]
    for label in labels:
        played = sum((moves(policies[label][g]) for g in games), Counter())
        shown = ", ".join(f"{m} {n}" for m, n in sorted(played.items())) or "none"
        lines.append(f"| {label} | {sum(policies[label][g].success for g in games)} of {len(games)} | {shown} |")
    lines += ["", f"| game | {' | '.join(labels)} |", "|---|" + "---|" * len(labels)]
    for game in games:
        lines.append(f"| {seed_of(game)} | " + " | ".join("won" if policies[lab][game].success else "-" for lab in labels) + " |")
    by_all = sum(all(policies[lab][g].success for lab in labels) for g in games)
    by_none = sum(not any(policies[lab][g].success for lab in labels) for g in games)
    lines += ["", f"Won by every policy: {by_all}; by none: {by_none}; by some: {len(games) - by_all - by_none}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", help="LABEL=FILE: a policy's label and its episode file")
    args = parser.parse_args()
    policies = {}
    for item in args.files:
        label, sep, file = item.partition("=")
        if not sep:
            parser.error(f"{item!r}: expected LABEL=FILE")
        policies[label] = read_episodes(Path(file))
    print(table(policies), end="")


if __name__ == "__main__":
    main()
