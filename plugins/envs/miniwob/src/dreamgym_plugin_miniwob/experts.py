"""Scripted experts: the actions that solve a task's problem, read off its utterance and page.

MiniWoB++ ships no gold paths, so the offline demos of a task come from these plans. Each
expert takes the utterance and the first state's elements and returns the whole plan; the
data of a task without one can only come from the ``random`` policy.
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

from dreamgym_core.errors import DataError

from .page import Element

__all__ = ["EXPERTS", "NoPlan", "plan"]

Expert = Callable[[str, Sequence[Element]], list[str]]


class NoPlan(DataError):
    """The expert could not read the problem (an utterance or page it does not know): a
    one-line error naming the task and the utterance, like any other bad data."""


def _quoted(utterance: str) -> list[str]:
    return re.findall(r'"([^"]*)"', utterance)


def _first(elements: Sequence[Element], *, tag: str | None = None, text: str | None = None, prefix: str = "") -> Element:
    for e in elements:
        if (tag is None or e.tag == tag) and (text is None or e.text == text) and e.tag.startswith(prefix):
            return e
    raise NoPlan(f"no element with tag={tag or prefix or '*'} text={text!r}")


def _text_fields(elements: Sequence[Element]) -> list[Element]:
    return [e for e in elements if e.takes_text]


def _click(e: Element) -> str:
    return f"click [{e.ref}]"


def _type(e: Element, text: str) -> str:
    return f'type [{e.ref}] "{text}"'


def _submit(elements: Sequence[Element], label: str = "Submit") -> str:
    return _click(_first(elements, tag="button", text=label))


def _labels(utterance: str) -> list[str]:
    """``'Select A, B and click Submit.'`` -> ``['A', 'B']`` (``'Select nothing ...'`` -> [])."""
    match = re.match(r"Select (.*) and click Submit\.", utterance)
    if match is None:
        raise NoPlan("not of the form 'Select ... and click Submit.'")  # plan() names the utterance
    words = match.group(1)
    return [] if words == "nothing" else [w.strip() for w in words.split(",")]


def _ordinal(utterance: str) -> int:
    match = re.search(r"(\d+)(?:st|nd|rd|th)", utterance)
    if match is None:
        raise NoPlan("no ordinal")  # plan() names the utterance
    return int(match.group(1)) - 1


def _enter_text_2(u: str, els: Sequence[Element]) -> list[str]:
    word = _quoted(u)[0]
    return [_type(_text_fields(els)[0], word.lower() if "lower case" in u else word.upper()), _submit(els)]


EXPERTS: dict[str, Expert] = {
    "click-test": lambda u, els: [_click(_first(els, tag="button"))],
    "click-test-2": lambda u, els: [_click(_first(els, tag="button", text=u.split("button ")[-1].rstrip(".")))],
    "click-button": lambda u, els: [_click(_first(els, tag="button", text=_quoted(u)[0]))],
    "click-link": lambda u, els: [_click(_first(els, tag="span", text=_quoted(u)[0]))],
    "click-dialog": lambda u, els: [_click(_first(els, tag="button", text="Close"))],
    "click-tab": lambda u, els: [_click(_first(els, tag="a", text=re.search(r"Tab #\d+", u).group(0)))],
    "click-option": lambda u, els: [*(_click(_first(els, tag="label", text=w)) for w in _labels(u)), _submit(els)],
    "click-checkboxes": lambda u, els: [*(_click(_first(els, tag="label", text=w)) for w in _labels(u)), _submit(els)],
    "focus-text": lambda u, els: [_click(_text_fields(els)[0])],
    "focus-text-2": lambda u, els: [_click(_text_fields(els)[_ordinal(u)])],
    "enter-text": lambda u, els: [_type(_text_fields(els)[0], _quoted(u)[0]), _submit(els)],
    "enter-text-2": _enter_text_2,
    "enter-password": lambda u, els: [*(_type(f, _quoted(u)[0]) for f in _text_fields(els)[:2]), _submit(els)],
    "login-user": lambda u, els: [
        _type(_text_fields(els)[0], _quoted(u)[0]), _type(_text_fields(els)[1], _quoted(u)[1]), _submit(els, "Login")
    ],
}


def plan(task: str, utterance: str, elements: Sequence[Element]) -> list[str]:
    """The expert's actions for this problem; ``NoPlan`` when it cannot read it."""
    try:
        return EXPERTS[task](utterance, elements)
    # a quote, field or tab the utterance should have had, or what _first, _labels or _ordinal
    # did not find (their NoPlan names neither the task nor the utterance)
    except (IndexError, AttributeError, NoPlan) as exc:
        raise NoPlan(f"{task}: cannot read {utterance!r}: {exc}") from exc
