"""Rule-based reasoning traces from ground truth, for runs without a teacher LLM.

The trace says whether the action was admissible, what changed between s and s'
(game response, inventory, available actions), how the score moved, and why the
reward is what it is. It reads only the rendered states, so it works on any
transition in the abstract state format. With ``grounded_moves`` a move's trace first
quotes what the state says lies that way (:func:`exit_sentence`), so the model writes the
destination after reading it off the state instead of recalling it.
"""

from __future__ import annotations

import re

from dreamgym_core.records import Transition

from .state import _COMPASS, _SENTENCE_END, NOT_SENT, REFUSED, clean_text, parse_state

__all__ = ["annotate_transition", "exit_sentence"]


def _score(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


# TextWorldExpress's answer to a take with the inventory full: the action is listed, but nothing
# happens ("Your inventory currently has 2 items, and is full.  You can't pick up another item.").
_INVENTORY_FULL = re.compile(r"^Your inventory currently has \d+ items?, and is full\.")


def _refused(t: Transition, after: dict[str, str]) -> bool:
    """Whether the env refused ``t.action`` (see ``TextWorldEnv._refusal``): the game never saw it.
    A transition keeps no step info, so the refusals' shared opening (:data:`.state.REFUSED`) is
    the mark; a budget cuts an observation's end, and cut under the mark's length leaves a part
    of it. Refusals written before the mark end :data:`.state.NOT_SENT` instead."""
    if t.valid:
        return False
    observation = after["observation"]
    if observation.startswith(REFUSED) or observation.endswith(NOT_SENT):
        return True
    kept = observation.removesuffix("...")
    return kept != observation and len(kept) > 3 and REFUSED.startswith(kept)


def _validity(t: Transition, refused: bool, after: dict[str, str]) -> str:
    if t.valid and _INVENTORY_FULL.match(after["observation"]):
        return f"'{t.action}' is one of the admissible actions, but the game refuses it: the inventory is full."
    if t.valid:
        return f"'{t.action}' is one of the admissible actions, so the game carries it out."
    if refused:
        return f"'{t.action}' is not an admissible action here, and it was not sent to the game, so nothing happens."
    return f"'{t.action}' is not an admissible action here; the game answers it in its own words."


def _changes(before: dict[str, str], after: dict[str, str], refused: bool) -> list[str]:
    # Only the response's first sentence: the next state itself carries the rest, and a
    # short trace is what a small experience model can learn to write.
    said = after["observation"]
    if refused and said.startswith(REFUSED):  # the reason, after the mark the first line already says
        said = said[len(REFUSED):].strip()
        said = said[:1].upper() + said[1:]
    first = clean_text(said, 160).split(". ")[0].rstrip(".")
    lines = [f"{'The environment says why' if refused else 'The game responds'}: {first}."]
    if before["inventory"] != after["inventory"]:
        lines.append(f"The inventory changes from {before['inventory'] or 'nothing'} to {after['inventory'] or 'nothing'}.")
    else:
        lines.append(f"The inventory stays {after['inventory'] or 'nothing'}.")
    if before["actions"] != after["actions"]:
        lines.append(f"The available actions change ({before['n_actions'] or '?'} before, {after['n_actions'] or '?'} now).")
    old, new = _score(before["score"]), _score(after["score"])
    if old is not None and new is not None and new != old:
        direction = "rises" if new > old else "falls"
        lines.append(f"The score {direction} from {old:.2f} to {new:.2f}, so the action {'advanced' if new > old else 'set back'} the task.")
    elif new is not None:
        lines.append(f"The score stays at {new:.2f}.")
    return lines


def _outcome(t: Transition) -> str:
    # ``game_over``, not ``done``: an ending by the step cap is no ending of the game, and the
    # experience model is trained to answer done=false there (its prompt has no step count).
    if t.game_over and t.success:
        return "This completes the task: the episode ends in success with reward 1."
    if t.game_over:
        return "The game ends without success, reward 0."
    return "The task is not complete yet, so the episode continues with reward 0."


def exit_sentence(state: str, action: str) -> str | None:
    """The sentence of ``state``'s observation about the direction ``action`` moves in
    ("To the East you see the chamber." for ``move east``); None for an action that is not a
    move (``move``/``go`` and a compass word) or a state that says nothing about that way."""
    words = action.lower().split()
    if len(words) != 2 or words[0] not in ("move", "go") or words[1] not in _COMPASS:
        return None
    sentences = _SENTENCE_END.split(parse_state(state)["observation"])
    return next((s for s in sentences if re.search(rf"\b{words[1]}\b", s, re.IGNORECASE)), None)


def _grounding(t: Transition) -> list[str]:
    seen = exit_sentence(t.state, t.action) if t.valid else None
    return [f"The state says of that way: {seen}"] if seen else []


def annotate_transition(t: Transition, *, grounded_moves: bool = False) -> str:
    """A short reasoning trace explaining why ``t.action`` in ``t.state`` led to ``t.next_state``
    (with ``grounded_moves``, a move's quotes first what the state says lies that way)."""
    before, after = parse_state(t.state), parse_state(t.next_state)
    refused = _refused(t, after)
    grounding = _grounding(t) if grounded_moves else []
    return " ".join([_validity(t, refused, after), *grounding, *_changes(before, after, refused), _outcome(t)])
