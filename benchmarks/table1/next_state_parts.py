"""Which parts of its next states an experience model gets right, by kind of action.

Reads the JSONL that ``dreamgym eval-model --predictions FILE`` writes (every answer beside its
held-out real step) and prints a markdown table: for each kind of action (the action's first
word: move, read, take, put, look, ...; "unlisted" for actions off the state's list), the steps,
how often the whole next state matches, and how often each of its lines does. TextWorldExpress
states are lines ``Observation: ...``, ``Inventory: ...``, ``Score: ...`` and
``Actions (N): ...``; a line is right when the model wrote it word for word (whitespace and case
aside, as the fidelity metrics compare). A weaker test of the observation: the room it puts the
agent in (``You are in the <room>.``), where the real one names a room. Outcome agreement is
counted too, and the real engine's refusals the model also refused (an unparsable answer refused
nothing). A last line counts the valid moves whose state says what lies that way ("To the East
you see the chamber."), where the room can be read off the prompt, and how often the model names it.

    python benchmarks/table1/next_state_parts.py PREDICTIONS.jsonl [MORE.jsonl ...]
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable

from dreamgym_core.fidelity import normalise
from dreamgym_plugin_textworld.annotate import exit_sentence

#: The lines of a TextWorldExpress state, by the word they start with.
PARTS = ("Observation", "Inventory", "Score", "Actions")
_ROOM = re.compile(r"you are in the ([^.]+)\.", re.IGNORECASE)


def room(state: str) -> str | None:
    """The room a TextWorldExpress observation puts the agent in, lower case (None: names none)."""
    found = _ROOM.search(state)
    return found.group(1).lower() if found else None


def state_lines(state: str) -> dict[str, str]:
    """The state's lines by part (``Actions (7): ...`` is the part ``Actions``), normalised."""
    lines: dict[str, str] = {}
    for line in state.splitlines():
        head = line.split(":", 1)[0].split(" (", 1)[0].strip()
        if head in PARTS and head not in lines:
            lines[head] = normalise(line)
    return lines


def action_kind(answer: dict) -> str:
    """``unlisted`` for an action off the state's list, else the action's first word."""
    if not answer["listed"]:
        return "unlisted"
    words = answer["action"].split()
    return words[0] if words else "(empty)"


def tally(answers: Iterable[dict]) -> dict[str, Counter]:
    """Per kind of action (and ``all``): steps, whole-state and per-line matches, outcome
    agreement, refusals and refusals matched (pure: tests import it)."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for a in answers:
        real, model = state_lines(a["real_next_state"]), state_lines(a["model_next_state"])
        for kind in (action_kind(a), "all"):
            c = counts[kind]
            c["steps"] += 1
            c["exact"] += a["next_state_exact"]
            c["outcome"] += a["real_outcome"] == a["model_outcome"]
            c["refused"] += not a["real_valid"]
            c["refused_matched"] += not a["real_valid"] and a["model_valid"] is False  # None: no answer, no refusal
            if room(a["real_next_state"]) is not None:
                c["room_n"] += 1
                c["room_right"] += room(a["real_next_state"]) == room(a["model_next_state"])
                if a["real_valid"] and exit_sentence(a["state"], a["action"]):
                    c["way_shown"] += 1
                    c["way_shown_room_right"] += room(a["real_next_state"]) == room(a["model_next_state"])
            for part in PARTS:
                if part in real:
                    c[f"{part}_n"] += 1
                    c[f"{part}_right"] += real[part] == model.get(part)
    return counts


def share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "-"


def table(counts: dict[str, Counter]) -> list[str]:
    lines = [
        "| action | steps | whole state right | " + " | ".join(f"`{p}` line right" for p in PARTS)
        + " | room right | outcome agrees | engine refused | model refused too |",
        "|---|---|---|" + "---|" * len(PARTS) + "---|---|---|---|",
    ]
    order = sorted((k for k in counts if k != "all"), key=lambda k: -counts[k]["steps"]) + ["all"]
    for kind in order:
        c = counts[kind]
        parts = " | ".join(share(c[f"{p}_right"], c[f"{p}_n"]) for p in PARTS)
        lines.append(
            f"| {kind} | {c['steps']} | {share(c['exact'], c['steps'])} | {parts} | {share(c['room_right'], c['room_n'])} "
            f"| {share(c['outcome'], c['steps'])} "
            f"| {c['refused']} | {share(c['refused_matched'], c['refused'])} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("predictions", nargs="+", type=Path)
    args = parser.parse_args()
    for path in args.predictions:
        answers = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        print(f"{path} ({len(answers)} steps)\n")
        counts = tally(answers)
        print("\n".join(table(counts)) + "\n")
        c = counts["all"]
        print(f"valid moves whose state says what lies that way: {c['way_shown']}; room right on "
              f"{c['way_shown_room_right']} ({share(c['way_shown_room_right'], c['way_shown'])})\n")


if __name__ == "__main__":
    main()
