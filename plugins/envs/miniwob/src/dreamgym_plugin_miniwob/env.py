"""The real MiniWoB++ adapter behind DreamGym's ``Env`` contract, and its abstract state.

The abstract state lists the page's elements in document order, one a line, each with the
ref the agent's actions name::

    [4] button "no"
    [5] input_text value="" (focused)
    [6] label "91YPF"
    [7] input_checkbox unchecked
    [8] select value="Helli" options: "Theodora", "Helli", "Corrine"
    [10] option "Alice" (selected)
    [16] span class="star"
    [21] div class="color" background=aqua/cyan
    [25] circle id="(2,2)" class="plot-point" background=blue

Texts and values are quoted with backslash escapes for ``\\``, ``"`` and line breaks
(``value="a\\nb"``), so that each element stays one line. A drop-down select shows its chosen
option's text and its options' (they are not elements of the page); a list box's options are
elements, the chosen ones marked. An element with no text that takes no input is listed when it
is a leaf that something tells apart (:attr:`.page.Element.marked`: an icon, a colour box, an SVG
shape), shown by its id, classes and painted colour (a CSS name where the colour has one).

Actions are ``click [N]`` (the element's click handler; a text field takes the focus, an
option is chosen) and ``type [N] TEXT`` (click N, then type TEXT as key events; typed into a
select, it chooses the option whose text starts with TEXT; N must take text and hold the focus
once clicked, else nothing is typed and the action is invalid). An action that does not parse
(a ref of more than 16 digits included), names an element the state does not list, types more
than :data:`MAX_TEXT` characters, or types a lone surrogate, a private-use character or a control
character other than ``\\n`` (:func:`unsendable_character`) changes nothing and is flagged
``valid=False``, with the reason in ``info["invalid"]``.
"""

from __future__ import annotations

import difflib
import re
from typing import Any, Sequence

from dreamgym_core.contracts import checked_action
from dreamgym_core.errors import ConfigError, DreamGymError
from dreamgym_core.records import Observation, StepResult, Task

from .config import DEFAULT_CALL_TIMEOUT_S, DEFAULT_START_TIMEOUT_S
from .page import BrowserError, Element, Page, task_names

__all__ = [
    "MiniWoBEnv", "ACTION_SYNTAX", "MAX_SEED", "MAX_TEXT", "checked_payload", "color_name", "full_reward", "parse_action",
    "quote", "render_state", "shown", "unsendable_character",
]

ACTION_SYNTAX = "click [N] (click element N), type [N] TEXT (click element N, then type TEXT)"
# A ref is at most 16 digits: int() of more than 4300 raises ValueError (CPython's limit on
# int-string conversion), and no page has 10**16 elements; a longer one is no action.
_ACTION = re.compile(r"^\s*(click|type)\s*\[?\s*(\d{1,16})(?!\d)\s*\]?\s*(.*?)\s*$", re.IGNORECASE | re.DOTALL)


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


# The longest text a ``type`` action may type. Keys go one by one (about 2 ms each on 2 busy
# cores), and a text of 5000 characters passed call_timeout_s, which killed the browser and lost
# the episode; 500 takes about 1 s. The longest text a task asks for is copy-paste's paragraph
# (at most 9 words, under 130 characters; the quoted words of every task's utterance are shorter).
MAX_TEXT = 500


# A typed value can hold anything: a line break would continue the element on a line of its
# own (which can read as another element), a quote would end the quoted text early. Backslash
# escapes keep each element on one line (any break str.splitlines knows) and the quoting
# unambiguous; text and values without these characters render as they are.
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r"}
_ESCAPED = re.compile(r'[\\"\n\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]')


def quote(text: str) -> str:
    """``text`` in double quotes as the state shows it: ``\\``, ``"``, line breaks escaped."""
    return '"' + _ESCAPED.sub(lambda m: _ESCAPES.get(m[0]) or m[0].encode("unicode_escape").decode(), text) + '"'


# The CSS names of the colours the package's pages draw in (ui_utils.COLORS, shapes.COLORS,
# click-color's): click-color asks for "cyan" and click-shape for "aqua", one colour, so a
# colour with two names shows both. Any other colour shows as the browser computed it.
_COLOR_NAMES = {
    (0, 0, 0): "black", (255, 255, 255): "white", (255, 0, 0): "red", (0, 255, 0): "lime", (0, 0, 255): "blue",
    (255, 255, 0): "yellow", (0, 255, 255): "aqua/cyan", (255, 0, 255): "fuchsia/magenta", (192, 192, 192): "silver",
    (128, 128, 128): "gray/grey", (128, 0, 0): "maroon", (128, 128, 0): "olive", (0, 128, 0): "green",
    (128, 0, 128): "purple", (0, 128, 128): "teal", (0, 0, 128): "navy", (255, 165, 0): "orange",
    (255, 192, 203): "pink", (255, 215, 0): "gold",
}
_RGB = re.compile(r"rgb\((\d+), (\d+), (\d+)\)")


def color_name(css: str) -> str:
    """``'rgb(0, 255, 255)'`` -> ``'aqua/cyan'``; a colour with no name as it is."""
    match = _RGB.fullmatch(css)
    return _COLOR_NAMES.get(tuple(int(v) for v in match.groups()), css) if match else css


def _marks(e: Element) -> list[str]:
    """What tells a marked leaf apart (:attr:`Element.marked`), as the state shows it."""
    parts = [f"id={quote(e.id)}"] if e.id else []
    if e.classes:
        parts.append(f"class={quote(e.classes)}")
    if e.background:
        parts.append(f"background={color_name(e.background)}")
    return parts


def _describe(e: Element) -> str:
    parts = [f"[{e.ref}] {e.tag}"]
    if e.text:
        parts.append(quote(e.text))
    elif not e.interactive:  # listed as a marked leaf; a line that was listed before reads as it did
        parts.extend(_marks(e))
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
    """The elements the state lists (:attr:`Element.listed`: those that show text, take input,
    or are marked leaves), at most ``max_elements``."""
    return [e for e in elements if e.listed][:max_elements]


def render_state(elements: Sequence[Element], *, max_elements: int) -> str:
    """The abstract state (module docstring): elements that show text, take input or are marked
    leaves, at most ``max_elements`` of them; layout-only containers are left out."""
    hidden = sum(e.listed for e in elements) - max_elements
    lines = [_describe(e) for e in shown(elements, max_elements=max_elements)]
    if hidden > 0:
        lines.append(f"... {hidden} more elements")
    return "\n".join(lines) or "(empty page)"


# A page seed reaches the page's script as a JavaScript number, which holds integers exactly up
# to 2**53 - 1 only: a larger seed would be rounded, and two seeds would show one problem.
MAX_SEED = 2**53 - 1
# MiniWoB's own success is a raw reward of exactly 1.0 (miniwob.reward.get_binary_reward); a page
# pays less for a partial or wrong answer (click-checkboxes-large 1/11 for a Submit with nothing
# checked when 6 of its 11 boxes are to stay unchecked; find-greatest 0.1 for a wrong card). The
# raw reward is a JavaScript double, and a page that added up a full score in fractions could land
# a rounding error below 1.0; a partial score is at least some 1/N below it, N the items of a page
# (at most hundreds), so 1e-9 tells the two apart.
_FULL_REWARD_TOLERANCE = 1e-9


def full_reward(raw_reward: float) -> bool:
    """Whether the page's raw reward is MiniWoB's success, 1.0 (to within rounding, see above)."""
    return raw_reward >= 1.0 - _FULL_REWARD_TOLERANCE


def checked_payload(task: Task) -> tuple[str, int]:
    """``task``'s page and page seed (``payload["task"]``, ``payload["seed"]``), or a one-line
    :class:`ConfigError` naming the task and the field, raised before any browser starts: the page
    must be one of :func:`.page.task_names`, the seed an int from 0 to :data:`MAX_SEED` (a str
    failed only in the started browser's script, and a float was cut to an int without a word)."""
    payload: dict[str, Any] = task.payload
    name = payload.get("task")
    if not isinstance(name, str) or name not in task_names():
        close = difflib.get_close_matches(name, task_names(), n=1) if isinstance(name, str) else []
        hint = f"; did you mean {close[0]!r}?" if close else f" ({len(task_names())} tasks, e.g. 'click-button')"
        raise ConfigError(
            f"miniwob: task {task.id!r}: payload['task'] is {_shown(payload, 'task')}; it names a MiniWoB++ "
            f"task page{hint}"
        )
    seed = payload.get("seed")
    if type(seed) is not int or not 0 <= seed <= MAX_SEED:
        raise ConfigError(
            f"miniwob: task {task.id!r}: payload['seed'] is {_shown(payload, 'seed')}; a MiniWoB++ page seed is "
            f"an int from 0 to {MAX_SEED} (2**53 - 1, the largest integer JavaScript holds exactly)"
        )
    return name, seed


def _shown(payload: dict[str, Any], field: str) -> str:
    return repr(payload[field]) if field in payload else "missing"


def unsendable_character(text: str) -> str | None:
    """The first character of ``text`` that typing must not send to ChromeDriver, described;
    None when there is none.

    A lone surrogate (half of a UTF-16 pair) is no character: ChromeDriver refuses the key, and
    the call that fails with it takes the browser down (the page is closed, the episode lost).
    WebDriver reads a private-use character (U+E000-U+F8FF) as a key, not as text: U+E003 is
    Backspace, U+E004 Tab, U+E007 Enter, others the arrows. Typed, one action deleted text and
    went on typing into another element. A control character (U+0000-U+001F, U+007F) is a key
    or nothing: Tab moves the focus and types the rest into the next field, Backspace deletes,
    NUL, U+0001 and DEL are dropped without a word. The line break ``\\n`` is kept (Enter, a new
    line in a textarea); ``\\r`` is refused with the rest, since a textarea drops it."""
    for char in text:
        if _is_control(char):
            key = _CONTROL_KEYS.get(char, "a key or nothing")
            return f"control character U+{ord(char):04X} (typed as {key}, not as text; of the controls only \\n is)"
        if "\ud800" <= char <= "\udfff":
            return f"lone surrogate U+{ord(char):04X} (half of a UTF-16 pair; ChromeDriver refuses it)"
        if "\ue000" <= char <= "\uf8ff":
            key = _webdriver_keys().get(char)
            sent = f"the key {key}" if key else "a key"
            return f"private-use character U+{ord(char):04X} (WebDriver would send it as {sent}, not as text)"
    return None


# The keys that control characters are typed as, where the key does something on a page.
_CONTROL_KEYS = {"\t": "the key Tab", "\b": "the key Backspace", "\x1b": "the key Escape"}


def _is_control(char: str) -> bool:
    """A C0 control or DEL, except the line break ``\\n`` (Enter)."""
    return (char <= "\x1f" or char == "\x7f") and char != "\n"


def _webdriver_keys() -> dict[str, str]:
    """WebDriver's key characters and their names (``'\\ue003'`` -> ``'BACKSPACE'``)."""
    from selenium.webdriver.common.keys import Keys

    names: dict[str, str] = {}
    for name, char in vars(Keys).items():
        if isinstance(char, str) and len(char) == 1 and not name.startswith("_"):
            names.setdefault(char, name)
    return names


# Why a ``type`` action typed nothing (the page's answers, :data:`.page._TYPE_INTO`).
_NOT_TYPED = {
    "no text": "element [{ref}] takes no text (type names a text field, a select or an editable element)",
    "no focus": "element [{ref}] took no focus when clicked (disabled or moved away), so nothing was typed",
}


class MiniWoBEnv:
    """Real MiniWoB++ episodes in the abstract state.

    A task's payload names the page and the seed of its problem; one browser plays every task,
    opening the task's page afresh at every reset. Reward is the paper's outcome reward: 1.0 on
    the step that ends the episode with MiniWoB's success, a raw reward of 1.0 (the page's own
    check; :func:`full_reward`), else 0; ``info`` keeps the page's raw reward in [-1, 1], which
    is below 1.0 for a partial answer. The episode also ends, as a failure, after ``max_steps``
    steps. Chromium starts on the first reset (about 0.5 s); ``close`` stops it.
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
        """Start the problem ``task.payload['seed']`` generates on page ``task.payload['task']``
        (checked first, :func:`checked_payload`); ``seed`` is not used."""
        # done until the first state is read: a browser failure on the way closes the page
        self._done = True
        name, page_seed = checked_payload(task)
        self.page.start(name, page_seed)
        self._steps = 0
        observation = self._observe()
        self._done = False
        return observation

    def step(self, *, action: str) -> StepResult:
        checked_action(action, "miniwob env")
        if self._done:
            raise DreamGymError("miniwob env: step() needs reset() first (the episode is over or not started)")
        parsed = parse_action(action)
        refused = self._refused(parsed)
        try:
            if refused is None:
                refused = self._act(*parsed)  # returns once the page has settled (Page.settle)
            valid = refused is None
            over, raw_reward = self.page.outcome()
            observation = self._observe()
        except BrowserError:
            # the page is gone with the browser: a next step would start a blank one ("core is not
            # defined"), so the episode is over and the next call must be a reset
            self._done = True
            raise
        self._steps += 1
        success = over and full_reward(raw_reward)
        truncated = not over and self._steps >= self.max_steps
        self._done = over or truncated
        info: dict[str, Any] = {"raw_reward": raw_reward, "truncated": truncated, "steps": self._steps}
        if refused is not None:
            info["invalid"] = refused
        return StepResult(
            observation=observation,
            reward=1.0 if success else 0.0,
            done=self._done,
            success=success,
            valid=valid,
            info=info,
        )

    def _act(self, verb: str, ref: int, text: str) -> str | None:
        """Send the action to the page; why it was not done, or None when it was."""
        if verb == "click":
            return None if self.page.click(ref) else f"the page has no element [{ref}]"
        answer = self.page.focus_to_type(ref)
        if answer == "typed":
            self.page.type_text(text)
            return None
        # typing into an element that does not hold the focus sends the keys to another one
        return _NOT_TYPED.get(answer, "the page has no element [{ref}]").format(ref=ref)

    def _refused(self, parsed: tuple[str, int, str] | None) -> str | None:
        """Why ``parsed`` goes to no browser, or None when it may be sent."""
        if parsed is None:
            return f"not an action ({ACTION_SYNTAX})"
        # only what the state lists is the agent's to name: a layout container or an element past
        # max_elements changes nothing the agent can see, so acting on it is no valid move
        if parsed[1] not in {e.ref for e in self.shown()}:
            return f"element [{parsed[1]}] is not listed in the state"
        if len(parsed[2]) > MAX_TEXT:
            return f"text of {len(parsed[2])} characters (at most {MAX_TEXT} are typed; no task needs more)"
        return unsendable_character(parsed[2])

    def elements(self) -> list[Element]:
        """The elements of the current state (what ``render_state`` listed, and the rest)."""
        return list(self._elements)

    def shown(self) -> list[Element]:
        """The elements the current state lists, the only ones an action may name."""
        return shown(self._elements, max_elements=self.max_elements)

    def close(self) -> None:
        self.page.close()
        self._done = True
