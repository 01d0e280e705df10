"""What a typed text may hold and where it goes.

The pure tests need nothing; the browser test needs Chromium and ChromeDriver and skips without them.
"""

from __future__ import annotations

import pytest

from dreamgym_core.records import Task
from dreamgym_plugin_miniwob import BrowserError
from dreamgym_plugin_miniwob.env import MiniWoBEnv, unsendable_character
from dreamgym_plugin_miniwob.page import find_browser

try:
    find_browser()
    NO_BROWSER = ""
except BrowserError as exc:
    NO_BROWSER = str(exc)
browser = pytest.mark.skipif(bool(NO_BROWSER), reason=NO_BROWSER)

LOGIN_USER = Task(id="miniwob/login-user/0", instruction="", domain="miniwob", payload={"task": "login-user", "seed": 0})


@pytest.mark.parametrize(("text", "code"), [
    ("karrie\tAU", "U+0009"), ("karriex\b", "U+0008"), ("a\x00b", "U+0000"), ("a\x01b", "U+0001"),
    ("a\x7fb", "U+007F"), ("a\rb", "U+000D"), ("a\x1bb", "U+001B"), ("a\x1fb", "U+001F"),
])  # fmt: skip
def test_a_control_character_is_refused_naming_it(text, code):
    """Tab typed into one field and went on in the next; Backspace deleted; NUL, U+0001, DEL and
    a carriage return were dropped: each counted as a valid step."""
    reason = unsendable_character(text)
    assert reason is not None and reason.startswith(f"control character {code} (") and "\n" not in reason


def test_tab_and_backspace_are_named_as_the_keys_they_are_typed_as():
    assert "the key Tab" in unsendable_character("a\tb")
    assert "the key Backspace" in unsendable_character("a\bb")


@pytest.mark.parametrize("text", ["line one\nline two", "é中文😀", "a\u200bb", "a\u0301", " spaced ", "\x80\xa0"])
def test_a_line_break_and_printable_text_are_typed(text):
    assert unsendable_character(text) is None


@browser
def test_typing_into_an_element_that_takes_no_text_types_nothing_and_is_invalid():
    """A label, a button, takes no focus (or no text): the keys went to the field focused before,
    and the step counted as valid."""
    env = MiniWoBEnv(max_steps=8, max_elements=40)
    try:
        first = env.reset(task=LOGIN_USER)
        assert first.text.splitlines()[:2] == ["[6] label \"Username\"", "[7] input_text value=\"\""]
        typed = env.step(action='type [10] "AU"')  # the password field, which then holds the focus
        assert typed.valid and '[10] input_password value="AU" (focused)' in typed.observation.text
        for ref in (6, 11):  # the "Username" label, the Login button
            result = env.step(action=f'type [{ref}] "karrie"')
            assert not result.valid and not result.done, ref
            assert result.info["invalid"].startswith(f"element [{ref}] takes no text ("), ref
            assert result.observation.text == typed.observation.text, ref  # nothing typed, nothing clicked
        into_field = env.step(action='type [7] "karrie"')
        assert into_field.valid and '[7] input_text value="karrie" (focused)' in into_field.observation.text
        assert "invalid" not in into_field.info
    finally:
        env.close()
