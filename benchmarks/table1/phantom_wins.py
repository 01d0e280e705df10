"""How many of RL's synthetic wins the real coin game could not have given.

Reads replay-buffer exports (``dreamgym buffer export --path RUN/buffer FILE``), keeps RL's
synthetic episodes (``source="synthetic"``, episode ids ``it<iteration>-<n>``) and counts, per run,
the episodes the experience model ended as won and, of those, the *phantom* wins: no ``move`` in the
episode, and a start state (the real reset's) whose action list lacks the winning action. In
TextWorldExpress coin the coin is never hidden (no container opens), so a room's list offers
``take coin`` exactly where the coin lies, and without moving the agent stays in its start room:
the real game cannot be won that way. The rule is coin's; another game needs its own.

    python benchmarks/table1/phantom_wins.py LABEL=FILE [LABEL=FILE ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import msgspec

from dreamgym_core.records import Transition

__all__ = ["rl_episodes", "phantom", "counts", "main"]


def rl_episodes(path: Path) -> list[list[Transition]]:
    """RL's synthetic episodes in a buffer export, each as its transitions in step order."""
    episodes: dict[str, list[Transition]] = {}
    for line in path.read_bytes().splitlines():
        if line.strip():
            t = msgspec.json.decode(line, type=Transition)
            if t.source == "synthetic" and t.episode_id.startswith("it"):
                episodes.setdefault(t.episode_id, []).append(t)
    return [sorted(steps, key=lambda t: t.step) for steps in episodes.values()]


def phantom(episode: list[Transition]) -> bool:
    """A win without a move whose winning action the start state did not list."""
    start, last = episode[0], episode[-1]
    return (
        last.success and start.step == 0 and last.action not in start.admissible_actions
        and not any(t.action.startswith("move ") for t in episode)
    )


def counts(episodes: list[list[Transition]]) -> tuple[int, int, int]:
    """(episodes, won, phantom wins)."""
    won = [e for e in episodes if e[-1].success]
    return len(episodes), len(won), sum(phantom(e) for e in won)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("exports", nargs="+", metavar="LABEL=FILE")
    args = parser.parse_args()
    print("| run | synthetic RL episodes | won | phantom wins (share of wins) |")
    print("|---|---|---|---|")
    for item in args.exports:
        label, _, file = item.partition("=")
        n, won, fake = counts(rl_episodes(Path(file)))
        print(f"| {label} | {n} | {won} | {fake} ({fake / max(won, 1):.0%}) |")


if __name__ == "__main__":
    main()
