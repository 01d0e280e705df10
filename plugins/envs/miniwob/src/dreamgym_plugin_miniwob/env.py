"""The real MiniWoB++ adapter behind DreamGym's ``Env`` contract, and its abstract state.

The abstract state lists the page's elements in document order, one a line, each with the
ref the agent's actions name::

    [4] button "no"
    [5] input_text value="" (focused)
    [6] label "91YPF"
    [7] input_checkbox unchecked
    [8] select value="Helli" options: "Theodora", "Helli", "Corrine"
    [10] option "Alice" (selected)

Texts and values are quoted with backslash escapes for ``\\``, ``"`` and line breaks
(``value="a\\nb"``), so that each element stays one line. A drop-down select shows its chosen
option's text and its options' (they are not elements of the page); a list box's options are
elements, the chosen ones marked.

Actions are ``click [N]`` (the element's click handler; a text field takes the focus, an
option is chosen) and ``type [N] TEXT`` (click N, then type TEXT as key events; typed into a
select, it chooses the option whose text starts with TEXT). An action that does not parse,
names an element the state does not list, or types a lone surrogate changes nothing and is
flagged ``valid=False``.
"""

from __future__ import annotations

import re
from typing import Sequence

from dreamgym_core.contracts import checked_action
from dreamgym_core.errors import DreamGymError
from dreamgym_core.records import Observation, StepResult, Task

from .config import DEFAULT_CALL_TIMEOUT_S, DEFAULT_START_TIMEOUT_S
from .page import BrowserError, Element, Page

__all__ = ["MiniWoBEnv", "ACTION_SYNTAX", "parse_action", "quote", "render_state", "shown"]

ACTION_SYNTAX = "click [N] (click element N), type [N] TEXT (click element N, then type TEXT)"
_ACTION = re.compile(r"^\s*(click|type)\s*\[?\s*(\d+)\s*\]?\s*(.*?)\s*$", re.IGNORECASE | re.DOTALL)


def parse_action(action: str) -> tuple[str, int, str] | None:
    """``'type [5] "Myron"'`` -> ``('type', 5, 'Myron')``; None when it is not an action.

    One pair of quotes around TEXT is taken off; ``click`` takes no text. TEXT is typed as it
    stands: the state's escapes (:func:`quote`) are not undone, since an agent's backslash is a key."""
    match = _ACTION.match(action)
    if match is None:
        return None
    verb, ref, text = match.group(1).lower(), int(match.group(2)), match.group(3)
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1]
    if (verb == "click") == bool(text):  # click takes no text; type needs some
        return None
    return verb, ref, text


# A typed value can hold anything: a line break would continue the element on a line of its
# own (which can read as another element), a quote would end the quoted text early. Backslash
# escapes keep each element on one line (any break str.splitlines knows) and the quoting
# unambiguous; text and values without these characters render as they are.
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r"}
_ESCAPED = re.compile(r'[\\"\n\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]')


def quote(text: str) -> str:
    """``text`` in double quotes as the state shows it: ``\\``, ``"``, line breaks escaped."""
    return '"' + _ESCAPED.sub(lambda m: _ESCAPES.get(m[0]) or m[0].encode("unicode_escape").decode(), text) + '"'


def _describe(e: Element) -> str:
    parts = [f"[{e.ref}] {e.tag}"]
    if e.text:
        parts.append(quote(e.text))
    if isinstance(e.value, bool):
        parts.append("checked" if e.value else "unchecked")
    elif e.value is not None:
        parts.append(f"value={quote(e.value)}")
    if e.options:
        parts.append("options: " + ", ".join(quote(o) for o in e.options))
    if e.selected:
        parts.append("(selected)")
    if e.focused:
        parts.append("(focused)")
    return " ".join(parts)


def shown(elements: Sequence[Element], *, max_elements: int) -> list[Element]:
    """The elements the state lists: those that show text or take input, at most ``max_elements``."""
    return [e for e in elements if e.listed][:max_elements]


def render_state(elements: Sequence[Element], *, max_elements: int) -> str:
    """The abstract state (module docstring): elements that show text or take input, at most
    ``max_elements`` of them; layout-only containers are left out."""
    hidden = sum(e.listed for e in elements) - max_elements
    lines = [_describe(e) for e in shown(elements, max_elements=max_elements)]
    if hidden > 0:
        lines.append(f"... {hidden} more elements")
    return "\n".join(lines) or "(empty page)"


def _has_lone_surrogate(text: str) -> bool:
    """Half of a UTF-16 pair is no character: ChromeDriver refuses the key, and the call
    that fails with it takes the browser down (the page is closed, the episode lost)."""
    return any("\ud800" <= char <= "\udfff" for char in text)


class MiniWoBEnv:
    """Real MiniWoB++ episodes in the abstract state.

    A task's payload names the page and the seed of its problem; one browser plays every task,
    opening a task's page when the task changes. Reward is the paper's outcome
    reward: 1.0 on the step that ends the episode with a positive MiniWoB reward (the page's
    own check), else 0; ``info`` keeps the page's raw reward in [-1, 1]. The episode also ends,
    as a failure, after ``max_steps`` steps. Chromium starts on the first reset (about 0.5 s);
    ``close`` stops it.
    """

    def __init__(
        self, *, max_steps: int, max_elements: int, chromium: str = "", chromedriver: str = "",
        call_timeout_s: float = DEFAULT_CALL_TIMEOUT_S, start_timeout_s: float = DEFAULT_START_TIMEOUT_S,
    ) -> None:  # fmt: skip
        self.page = Page(
            chromium=chromium, chromedriver=chromedriver, call_timeout_s=call_timeout_s, start_timeout_s=start_timeout_s
        )
        self.max_steps = max_steps
        self.max_elements = max_elements
        self._elements: list[Element] = []
        self._steps = 0
        self._done = True

    def _observe(self) -> Observation:
        self._elements = self.page.elements()
        return Observation(text=render_state(self._elements, max_elements=self.max_elements), admissible_actions=[])

    def reset(self, *, task: Task, seed: int | None = None) -> Observation:
        """Start the problem ``task.payload['seed']`` generates on page ``task.payload['task']``;
        ``seed`` is not used."""
        # done until the first state is read: a browser failure on the way closes the page
        self._done = True
        self.page.start(task.payload["task"], task.payload["seed"])
        self._steps = 0
        observation = self._observe()
        self._done = False
        return observation

    def step(self, *, action: str) -> StepResult:
        checked_action(action, "miniwob env")
        if self._done:
            raise DreamGymError("miniwob env: step() needs reset() first (the episode is over or not started)")
        parsed = parse_action(action)
        # only what the state lists is the agent's to name: a layout container or an element past
        # max_elements changes nothing the agent can see, so acting on it is no valid move
        sendable = parsed is not None and parsed[1] in {e.ref for e in self.shown()} and not _has_lone_surrogate(parsed[2])
        try:
            valid = sendable and self.page.click(parsed[1])
            if valid and parsed[0] == "type":
                self.page.type_text(parsed[2])
            over, raw_reward = self.page.outcome()
            observation = self._observe()
        except BrowserError:
            # the page is gone with the browser: a next step would start a blank one ("core is not
            # defined"), so the episode is over and the next call must be a reset
            self._done = True
            raise
        self._steps += 1
        success = over and raw_reward > 0
        truncated = not over and self._steps >= self.max_steps
        self._done = over or truncated
        return StepResult(
            observation=observation,
            reward=1.0 if success else 0.0,
            done=self._done,
            success=success,
            valid=valid,
            info={"raw_reward": raw_reward, "truncated": truncated, "steps": self._steps},
        )

    def elements(self) -> list[Element]:
        """The elements of the current state (what ``render_state`` listed, and the rest)."""
        return list(self._elements)

    def shown(self) -> list[Element]:
        """The elements the current state lists, the only ones an action may name."""
        return shown(self._elements, max_elements=self.max_elements)

    def close(self) -> None:
        self.page.close()
        self._done = True
