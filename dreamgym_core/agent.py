"""The agent prompt of the paper and a tolerant parser of the agent's output.

Prompt: role, task, step count, recent history, current observation, admissible
actions. Output: ``<think>...</think><action>...</action>``. Real and synthetic
episodes use the same prompt, so a policy cannot tell them apart.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Sequence

from .records import HistoryStep, Observation, Task

__all__ = ["ACTION_STOP", "build_agent_prompt", "parse_agent_output", "render_response", "unreadable_character"]

# Generation stops after the closing action tag: nothing after it is used.
ACTION_STOP = "</action>"

_ACTION = re.compile(r"<action>\s*(.*?)\s*(?:</action>|$)", re.IGNORECASE | re.DOTALL)
# A closed reasoning block, looked past first: one that mentions the tag ("I answer in an <action>
# tag") started the action there.
_THINK = re.compile(r"<think>.*?</think>", re.IGNORECASE | re.DOTALL)
# What a reasoning block leaves unopened (a chat template wrote its <think>): the text up to the
# last such closing tag is reasoning too.
_UNOPENED_THINK = re.compile(r"^.*</think>", re.IGNORECASE | re.DOTALL)
# Inside the reasoning only a closed action counts: an unclosed mention ("I answer in an <action>
# tag.</think>") ran to the end of the text and was parsed as the action.
_CLOSED_ACTION = re.compile(r"<action>\s*(.*?)\s*</action>", re.IGNORECASE | re.DOTALL)


def build_agent_prompt(
    *,
    task: Task,
    observation: Observation,
    history: Sequence[HistoryStep],
    step: int,
    max_steps: int,
    history_window: int = 4,
) -> str:
    """The policy's prompt for one step (``history`` holds earlier steps, oldest first)."""
    recent = list(history)[-history_window:] if history_window else []
    lines = [
        "You are an agent acting in a text environment. Reach the goal in as few steps as possible.",
        f"Task: {task.instruction}",
        f"Step {step + 1} of at most {max_steps}.",
    ]
    if recent:
        lines.append("Recent history:")
        first = len(history) - len(recent)
        lines += [f"[{first + i + 1}] action: {h.action}" for i, h in enumerate(recent)]
    lines.append(f"Current observation:\n{observation.text}")
    if observation.admissible_actions:
        lines.append("Admissible actions: " + " | ".join(observation.admissible_actions))
    lines.append("Think in <think></think>, then give exactly one action in <action></action>.")
    return "\n".join(lines) + "\n"


def parse_agent_output(text: str, admissible: Sequence[str] = ()) -> tuple[str, bool]:
    """``(action, parsed)``: the first ``<action>`` after the reasoning (else the first closed
    one within it). Tolerant: a missing closing tag after the reasoning is accepted (generation
    stops at it); a reasoning block opened by the chat template (a lone ``</think>``) is looked
    past as a closed one; with no tag, a reply that is exactly one
    admissible action is accepted. Otherwise ``("", False)``."""
    answer = _UNOPENED_THINK.sub("", _THINK.sub("", text))
    match = _ACTION.search(answer) or _CLOSED_ACTION.search(text)
    if match:
        action = " ".join(match.group(1).split())
        return (action, True) if action else ("", False)
    bare = " ".join(text.strip().split())
    if bare and bare in admissible:
        return bare, True
    return "", False


def render_response(action: str, thought: str = "") -> str:
    """The canonical response text for ``action`` (used for expert demos in SFT)."""
    return f"<think>{thought}</think><action>{action}</action>"


def unreadable_character(action: str) -> str | None:
    """The first character of ``action`` no engine is sent, described, or None: control
    characters other than whitespace, and lone surrogates (not valid Unicode).

    A NUL crashed TextWorld's interpreter with the whole process; a lone surrogate cannot be sent
    to a JVM simulator at all (TextWorldExpress; ScienceWorld's py4j connection broke, and the
    episode ended as an engine error). Environments answer such an action as an invalid step."""
    if action.isprintable():
        return None
    for char in action:
        category = unicodedata.category(char)
        if category == "Cs":
            return f"lone surrogate U+{ord(char):04X}"
        if category == "Cc" and not char.isspace():
            return f"control character U+{ord(char):04X}"
    return None
