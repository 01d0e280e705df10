"""benchmarks/table1/fidelity_decoding.py: the staged decoding the diagnosis measured.

A scripted backend answers each stage by the prompt's last tag, so the test checks that the
tags are written for the model, that what it writes past a tag is cut, and that an
unreadable flag still fails the answer."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from dreamgym_core.experience import ExperienceModelConfig
from dreamgym_core.records import ExperienceRequest
from test_experience_doubles import ScriptedLM

TABLE1 = Path(__file__).resolve().parents[1] / "benchmarks" / "table1"


@pytest.fixture(scope="module")
def decoding():
    sys.path.insert(0, str(TABLE1))  # the script imports run.py beside it
    spec = importlib.util.spec_from_file_location("fidelity_decoding", TABLE1 / "fidelity_decoding.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def _stages(done_word: str):
    def answer(prompt: str) -> str:
        if prompt.endswith("<state>"):
            return "room two</valid> tag soup"
        if prompt.endswith("<valid>"):
            return "true"
        if prompt.endswith("<done>"):
            return done_word
        if prompt.endswith("<success>"):
            return "true</success>"
        return "<think>the door opens<state>never read"
    return answer


def _request() -> ExperienceRequest:
    return ExperienceRequest(instruction="win", history=[], state="room one", action="go", admissible_actions=["go"], demos=[])


def test_staged_answers_are_cut_at_tags_and_tagged_for_the_model(decoding) -> None:
    lm = ScriptedLM(answer=_stages("true"))
    model = decoding.StagedExperienceModel(lm, ExperienceModelConfig(max_retries=0, max_new_tokens=64))
    [result] = model.predict(requests=[_request()])
    assert (result.parse_status, result.reasoning, result.next_state) == ("ok", "the door opens", "room two")
    assert result.done and result.success and result.reward == 1.0
    assert [call["stop"] for call in lm.calls] == [["</think>"], ["</state>"], ["</valid>"], ["</done>"], ["</success>"]]
    assert lm.calls[1]["prompts"][0].endswith("<think>the door opens</think>\n<state>")


def test_an_unreadable_staged_flag_fails_and_is_retried(decoding) -> None:
    lm = ScriptedLM(answer=_stages("perhaps"))
    model = decoding.StagedExperienceModel(lm, ExperienceModelConfig(max_retries=1, max_new_tokens=64))
    [result] = model.predict(requests=[_request()])
    assert result.parse_status == "failed" and not result.success and result.reward == 0.0
    assert model.counters["retries"] == 1 and len(lm.calls) == 10
    assert decoding.first_flag("false</done>") is False and decoding.first_flag("") is None
