"""The agent's output parser (dreamgym_core.agent.parse_agent_output): what a policy's text
turns into as an action, and when it is a parse failure."""

from __future__ import annotations

import pytest

from dreamgym_core.agent import parse_agent_output, render_response

LISTED = ["go north", "take coin"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (render_response("go north", thought="the coin is north"), ("go north", True)),
        ("<think>x</think><action>go north", ("go north", True)),  # generation stops at </action>
        ("<ACTION>\n  take   coin \n</Action>", ("take coin", True)),
        ("<action>take coin</action> then <action>go north</action>", ("take coin", True)),  # the first one
        ("go north", ("go north", True)),  # no tag: exactly one listed action
        ("go west", ("", False)),
        ("<action>  </action>", ("", False)),
        ("<think>no action yet</think>", ("", False)),
    ],
)
def test_the_first_closed_action_is_taken(text, expected) -> None:
    assert parse_agent_output(text, LISTED) == expected


@pytest.mark.parametrize(
    "text",
    [
        "<think>I must answer in an <action> tag.</think><action>go north</action>",
        "<think>I must answer in an <action> tag.</think><action>go north",
        "<think><action><action></think><action> go north </action>",
    ],
)
def test_a_tag_the_reasoning_mentions_does_not_start_the_action(text) -> None:
    """The action ran from the mention to the real closing tag ('tag.</think><action>go north'),
    counted as parsed: the environment got junk and the parse-failure count missed it. The
    reasoning block is looked past; outside one, the first tag still starts the action."""
    assert parse_agent_output(text, LISTED) == ("go north", True)


def test_an_action_only_inside_the_reasoning_is_still_found() -> None:
    assert parse_agent_output("<think><action>take coin</action></think>", LISTED) == ("take coin", True)


@pytest.mark.parametrize(
    "text",
    [
        "<think>I must answer in an <action> tag.</think>",
        "<think>I must answer in an <action> tag.</think> I am not sure yet.",
        "I must answer in an <action> tag.</think>",  # the template opened the reasoning
    ],
)
def test_an_unclosed_tag_the_reasoning_mentions_is_no_action(text) -> None:
    """With no action after the reasoning, the old fallback read the mention to the end of the text
    ('tag.</think>', parsed): the environment got junk, counted as its invalid action, not as the
    policy's parse failure."""
    assert parse_agent_output(text, LISTED) == ("", False)


def test_a_reasoning_block_the_chat_template_opened_is_looked_past() -> None:
    """Only '</think>' in the output: the action ran from the mention ('tag.</think><action>go north')."""
    assert parse_agent_output("I must answer in an <action> tag.</think><action>go north", LISTED) == ("go north", True)
