"""Fixes from review: a repeated success is trained on its own example, and ``ok`` is the
documented format exactly (see docs/experience-format.md)."""

from __future__ import annotations

import msgspec
import pytest

from dreamgym_core.experience import parse_output, requests_for, successes_repeated, training_examples
from dreamgym_core.records import Transition
from test_experience_doubles import ListBuffer

GOOD = (
    "<think>The door is unlocked.</think>\n<state>You are in the hall.</state>\n"
    "<valid>true</valid> <done>false</done> <success>false</success> <reward>0</reward>"
)


def _episode(ep: str, n: int, task: str = "t") -> list[Transition]:
    return [
        Transition(task_id=task, episode_id=ep, step=i, state=f"room {ep}{i}", action=f"go {i}",
                   next_state=f"room {ep}{i + 1}", reward=float(i == n - 1), done=i == n - 1, success=i == n - 1,
                   reasoning=f"moving {i}", source="offline", instruction="collect the coin")
        for i in range(n)
    ]  # fmt: skip


def _shown(data: list[Transition], repeats: int) -> list:
    """``data``'s examples, each success's ``repeats`` times, in ``successes_repeated``'s order."""
    return [e for t, e in zip(data, _examples(data, data)) for _ in range(repeats if t.success else 1)]


def _examples(transitions: list[Transition], stored: list[Transition]) -> list:
    """The examples of ``transitions``, demos from a buffer of ``stored`` (the offline data, each once)."""
    return training_examples(transitions, ListBuffer(stored), history_window=4, k=2)


@pytest.mark.parametrize("repeats", [2, 4])
def test_a_repeated_success_trains_on_its_unrepeated_example(repeats) -> None:
    """A copy of the win in its own history showed the state and action it answers, as no
    inference prompt does, and pushed the real steps out of the window."""
    data = _episode("a", 5) + _episode("b", 2) + _episode("c", 3, task="u")
    repeated = successes_repeated(data, repeats)
    assert _examples(repeated, data) == _shown(data, repeats)  # repeats change only the count
    win = _examples(data, data)[4][0][0]
    assert "History:" in win and win.count("room a4 -> go 4") == 0  # its own state/action is never history
    requests = requests_for(repeated, ListBuffer(data), history_window=4, k=2)
    once = requests_for(data, ListBuffer(data), history_window=4, k=2)
    assert requests == [r for t, r in zip(data, once) for _ in range(repeats if t.success else 1)]


def test_repeats_leave_the_other_steps_of_the_episode_alone() -> None:
    """A success before the episode's last step (a step marked won that the episode went on
    from) is repeated too; the steps after it must still see the real steps before them."""
    data = _episode("a", 5)
    data[1] = msgspec.structs.replace(data[1], success=True, reward=1.0, done=True)
    repeated = successes_repeated(data, 3)
    assert len(repeated) == len(data) + 2 + 2
    assert _examples(repeated, data) == _shown(data, 3)
    later = _examples(repeated, data)[-2][0][0]  # step 3: history is steps 0, 1, 2, each once
    assert [later.count(f"room a{i} -> go {i}") for i in range(3)] == [1, 1, 1]


def test_a_repeated_example_is_a_copy() -> None:
    data = _episode("a", 2)
    examples = _examples(successes_repeated(data, 2), data)
    assert examples[1] == examples[2] and examples[1] is not examples[2]


# --- parser: ok is the format exactly ----------------------------------------------

STRAY = {
    "two states": GOOD.replace("</state>\n", "</state>\n<state>B</state>\n"),
    "two thinks": GOOD.replace("</think>", "</think><think>other</think>"),
    "text between the tags": GOOD.replace("</state>\n", "</state>\nHELLO WORLD\n"),
    "text before the reasoning": "Sure! " + GOOD,
    "text after the reward": GOOD + " and more",
    "a state before the reasoning": "<state>B</state>" + GOOD,
}


@pytest.mark.parametrize("name", STRAY)
def test_an_answer_with_stray_blocks_or_text_is_repaired_not_ok(name) -> None:
    """It is read as before (the first blocks); only its status says it was not the format."""
    exact, stray = parse_output(GOOD), parse_output(STRAY[name])
    assert exact.parse_status == "ok" and stray.parse_status == "repaired"
    assert msgspec.structs.replace(stray, parse_status="ok", raw=GOOD) == exact


@pytest.mark.parametrize(
    "text",
    [
        GOOD,
        GOOD.removesuffix("</reward>"),  # generation stops on </reward>: documented as ok
        "  " + GOOD.replace("\n", "\n\n") + "\n",  # whitespace between the blocks is no stray text
        GOOD.replace("<think>The door is unlocked.</think>", "<think>it said <state>x</state> <done>true</done></think>"),
        GOOD.replace("You are in the hall.", "A hall. <think> quoted </think>"),
    ],
)
def test_the_exact_format_with_quotes_or_whitespace_is_still_ok(text) -> None:
    assert parse_output(text).parse_status == "ok"
