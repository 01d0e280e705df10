"""The state mapper: engine output to the abstract text state, and back.

One format for real and synthetic episodes (the experience model writes it too)::

    Observation: <what the game just said, whitespace collapsed, cut to a budget (exits and map kept)>
    Inventory: <carried items, comma separated, or "nothing"; a full one ends "(full: capacity n)">
    Score: <engine progress in [0, 1], two decimals>
    Actions (<n>): <verb> <objects, / separated>; <verb> ...

The full admissible list travels in ``Observation.admissible_actions``; the text only
carries a compact summary (grouped by verb, cut to a character budget) because the
models that read it have ~512-token contexts. :func:`parse_state` inverts the format
for the rule-based annotator.
"""

from __future__ import annotations

import random
import re
from functools import lru_cache
from typing import Iterator, Sequence

__all__ = [
    "render_state",
    "parse_state",
    "compact_actions",
    "expand_actions",
    "compact_inventory",
    "clean_text",
    "fit_observation",
    "normalize_action",
    "drop_scenery",
    "NOT_SENT",
    "REFUSED",
    "refusal_text",
    "echo",
]

# How the observation of a step the env refused opens: the action never reached the game. A
# budget cuts an observation's end, so the mark is its opening (refusals before it ended
# NOT_SENT, which the annotator still reads).
REFUSED = "Not sent:"
NOT_SENT = "it was not sent."
# How much of an action a refusal quotes: the rest of a long one would crowd out why.
ECHO_CHARS = 40


def refusal_text(reason: str) -> str:
    """The observation of a step the env refused: :data:`REFUSED`, then ``reason``."""
    return f"{REFUSED} {reason}"


def echo(text: str, limit: int = ECHO_CHARS) -> str:
    """``text`` quoted, cut to ``limit`` characters ("'transcriptsss...'")."""
    return repr(text if len(text) <= limit else text[:limit] + "...")

_LINE = re.compile(r"^(Observation|Inventory|Score|Actions(?: \((\d+)\))?): ?(.*)$")
# Headers the engines put before the item list ("Inventory (maximum capacity is 2 items):",
# "You are carrying:"), and their ways of saying "empty".
_INVENTORY_HEADER = re.compile(r"^(inventory[^:]*:|you are carrying:?)\s*", re.IGNORECASE)
_EMPTY = re.compile(r"^(your inventory is currently empty|nothing)\.?$", re.IGNORECASE)
# TextWorldExpress's header when the inventory is limited (limitInventorySize, on by default):
# no game of it has a drop verb, so a full inventory is for good (coin: two distractors taken, and
# the coin can no longer be). The state says so: "Inventory: a chopping board, a toaster (full: capacity 2)".
_CAPACITY = re.compile(r"maximum capacity is (\d+) items?", re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=[.!?]) (?=[A-Z])")
_WORD = re.compile(r"[a-z]+")
# Words of an action that name no object: verbs come off separately, these join objects.
_LINKS = frozenset({"a", "an", "the", "in", "into", "on", "to", "from", "with", "at", "around"})
# A sentence with a compass word describes an exit: kept whatever the action list says, since a
# generated state's list can miss the exit its own text describes.
_COMPASS = frozenset({"north", "south", "east", "west"})


def clean_text(text: str, limit: int) -> str:
    """Collapse whitespace; cut to ``limit`` characters on a word boundary with an ellipsis."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[: max(limit - 3, 0)].rsplit(" ", 1)[0]
    return cut + "..."


# An observation's sentences, and mapreader's map header ("The map reads:") on its own.
_PIECE = re.compile(r"(?<=[.!?:]) (?=[A-Z])")
# A line of mapreader's map: "The parlor connects to the canteen, street, side yard and library."
_MAP_LINE = re.compile(r"The (?P<room>.+?) connects to the (?P<rooms>.+)\.")
_MAP_LIST = re.compile(r", (?:and )?| and ")


def _is_key(sentence: str) -> bool:
    """Whether ``sentence`` is one a cut keeps whole: an exit (a compass word) or a map line."""
    return bool(_COMPASS & set(_WORD.findall(sentence.lower()))) or _MAP_LINE.fullmatch(sentence) is not None


def _smaller_maps(pieces: list[tuple[str, bool]]) -> Iterator[list[tuple[str, bool]]]:
    """``pieces`` (each with whether a cut keeps it) with their map lines written shorter: each
    room's neighbours ("parlor: canteen, street."), then each connection once ("canteen - parlor;
    ..."). Nothing while there is no map."""
    lines = {i: m for i, (p, _) in enumerate(pieces) if (m := _MAP_LINE.fullmatch(p)) is not None}
    if not lines:
        return
    first = min(lines)
    before = [p for i, p in enumerate(pieces) if i < first and i not in lines]
    after = [p for i, p in enumerate(pieces) if i > first and i not in lines]
    neighbours = [(m["room"], _MAP_LIST.split(m["rooms"])) for m in lines.values()]
    yield before + [(f"{room}: {', '.join(near)}.", True) for room, near in neighbours] + after
    edges = dict.fromkeys(" - ".join(sorted((room, other))) for room, near in neighbours for other in near)
    yield before + [("; ".join(edges) + ".", True)] + after


def _joined(pieces: list[tuple[str, bool]], chosen: set[int]) -> str:
    """The chosen ``pieces`` in order, each run of left-out ones written "..."."""
    out: list[str] = []
    for i, (piece, _) in enumerate(pieces):
        if i in chosen:
            out.append(piece)
        elif not out or out[-1] != "...":
            out.append("...")
    return " ".join(out)


def fit_observation(text: str, limit: int, actions: Sequence[str] = ()) -> str:
    """``text`` with whitespace collapsed, cut to ``limit`` characters where it is longer.

    A text within the budget is :func:`clean_text`'s. A longer one that has exits or a map, or
    sentences naming what an action of ``actions`` acts on, keeps its first sentence (the room,
    or "The map reads:"), its exits ("To the North you see the pantry.") and its map lines whole,
    then, in order, the sentences naming an object of ``actions`` ("There is also a coin.") and
    the others (furniture) that still fit; each run of sentences left out is written "...". A map
    that does not fit is written shorter (:func:`_smaller_maps`). Where even the kept sentences
    exceed the budget, or the text has no such sentences, it is cut as :func:`clean_text` cuts.
    """
    flat = " ".join(text.split())
    if len(flat) <= limit:
        return flat
    named = {w for a in actions for w in _WORD.findall(a.lower().partition(" ")[2])} - _LINKS
    pieces = [(p, i == 0 or _is_key(p)) for i, p in enumerate(_PIECE.split(flat))]
    if not any(key or named & set(_WORD.findall(p.lower())) for p, key in pieces[1:]):
        return clean_text(flat, limit)
    for candidate in (pieces, *_smaller_maps(pieces)):
        chosen = {i for i, (_, key) in enumerate(candidate) if key}
        if len(_joined(candidate, chosen)) > limit:
            continue
        rest = [i for i in range(len(candidate)) if i not in chosen]
        naming = [i for i in rest if named & set(_WORD.findall(candidate[i][0].lower()))]
        for i in naming + [i for i in rest if i not in naming]:
            if len(_joined(candidate, chosen | {i})) <= limit:
                chosen.add(i)
        return _joined(candidate, chosen)
    return clean_text(flat, limit)


@lru_cache(maxsize=256)
def compact_inventory(raw: str) -> str:
    """Engine inventory text to "a, b, c" or "nothing".

    TextWorldExpress writes a header line then one item per line; TextWorld writes
    "You are carrying: a, b and c." on one line. An inventory holding the maximum its header
    states ("Inventory (maximum capacity is 2 items):") ends "(full: capacity 2)".
    """
    lines = [line.strip() for line in raw.strip().splitlines() if line.strip()]
    if lines and _INVENTORY_HEADER.fullmatch(lines[0]):
        items = lines[1:]
    else:
        body = _INVENTORY_HEADER.sub("", " ".join(lines)).strip().rstrip(".")
        items = [item.strip() for item in re.split(r", | and ", body)]
    items = [item.rstrip(".") for item in items if item and not _EMPTY.search(item)]
    capacity = _CAPACITY.search(lines[0]) if lines else None
    if capacity is not None and items and len(items) >= int(capacity.group(1)):
        return f"{', '.join(items)} (full: capacity {capacity.group(1)})"
    return ", ".join(items) or "nothing"


def normalize_action(action: str) -> str:
    """Lower-case, single-spaced action text; the key admissibility is checked on."""
    return " ".join(action.split()).lower()


def compact_actions(actions: Sequence[str], limit: int) -> str:
    """Group actions by verb ("take apple / knife; open fridge"), cut to ``limit`` chars."""
    return _compact_actions(tuple(actions), limit)


@lru_cache(maxsize=256)  # consecutive states often offer the same actions
def _compact_actions(actions: tuple[str, ...], limit: int) -> str:
    groups: dict[str, list[str]] = {}
    for action in actions:
        verb, _, rest = action.partition(" ")
        objects = groups.setdefault(verb, [])
        if rest:
            objects.append(rest)
    parts = [f"{verb} {' / '.join(objs)}" if objs else verb for verb, objs in groups.items()]
    out, used = [], 0
    for i, part in enumerate(parts):
        if used + len(part) + 2 > limit and out:
            out.append(f"(+{len(parts) - i} more verbs)")
            break
        out.append(part)
        used += len(part) + 2
    return "; ".join(out)


def render_state(
    observation: str,
    inventory: str,
    admissible: Sequence[str],
    score: float,
    *,
    max_observation_chars: int = 600,
    max_action_chars: int = 300,
) -> str:
    """The abstract text state (format in the module docstring)."""
    return (
        f"Observation: {fit_observation(observation, max_observation_chars, admissible)}\n"
        f"Inventory: {compact_inventory(inventory)}\n"
        f"Score: {score:.2f}\n"
        f"Actions ({len(admissible)}): {compact_actions(admissible, max_action_chars)}"
    )


def expand_actions(compact: str) -> list[str]:
    """The inverse of :func:`compact_actions` ("take apple / knife; look" -> take apple,
    take knife, look); a "(+n more verbs)" tail is dropped, its actions are unknown."""
    actions = []
    for part in compact.split("; "):
        part = part.strip()
        if not part or (part.startswith("(+") and part.endswith(")")):
            continue
        verb, _, rest = part.partition(" ")
        actions += [f"{verb} {obj.strip()}" for obj in rest.split(" / ") if obj.strip()] if rest else [verb]
    return actions


def parse_state(text: str) -> dict[str, str]:
    """Fields of a rendered state (missing ones are ""); tolerant of model-written text."""
    fields = dict.fromkeys(("observation", "inventory", "score", "actions", "n_actions"), "")
    for line in text.splitlines():
        match = _LINE.match(line.strip())
        if match:
            key = match.group(1).split(" ")[0].lower()
            fields[key] = match.group(3).strip()
            if match.group(2):
                fields["n_actions"] = match.group(2)
    return fields


def drop_scenery(state: str, actions: Sequence[str], *, key: str, drop: float) -> str:
    """``state`` with each scenery sentence of its Observation line dropped with probability ``drop``.

    Only room descriptions ("You are in the kitchen. ...") vary: other text, such as what the
    map reads, is information. Scenery is a sentence after the first (the location) that names
    no exit and nothing an action of ``actions`` acts on: furniture the agent can only look at.
    What matters to the task (an exit "To the North", the coin, a box) always stays. The draw
    for a sentence depends only on ``key`` and the sentence, so one key shows a room the same
    way each time. Any other state comes back unchanged.
    """
    lines = state.split("\n")
    for i, line in enumerate(lines):
        if line.startswith("Observation: You are in "):
            named = {w for a in actions for w in _WORD.findall(a.lower().partition(" ")[2])} - _LINKS | _COMPASS
            first, *rest = _SENTENCE_END.split(line[len("Observation: "):])
            kept = [s for s in rest if named & set(_WORD.findall(s.lower())) or random.Random(f"{key}/{s}").random() >= drop]
            lines[i] = "Observation: " + " ".join([first, *kept])
            break
    return "\n".join(lines)
