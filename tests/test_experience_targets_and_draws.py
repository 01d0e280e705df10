"""Task variations read whole, a transition's outcome written as the format defines it (training
target and demo alike), and the experience model's draw in seeded synthetic episodes."""

from __future__ import annotations

import pytest

from dreamgym_core.experience import (
    ExperienceModelConfig, LMExperienceModel, build_prompt, call_seed, parse_output, stream_seed, training_examples,
)
from dreamgym_core.records import ExperienceRequest, Task, Transition
from dreamgym_core.synthetic import SyntheticEnv, SyntheticEnvConfig

# --- vary_tasks: no stop at the first newline ---------------------------------------


class CuttingLM:
    """A backend double that cuts each answer before its first stop string with the real backends'
    own function. A double, because the real backends need a model (hf) or a server (openai); and
    one that applies ``stop``, because ScriptedLM ignores it, which hid the bug: every test passed
    while the real backends returned "" or a preamble line for these answers."""

    model_id = "cutting-lm"

    def __init__(self, cut, answers) -> None:
        self.cut, self.answers, self.calls = cut, list(answers), []

    def generate(self, *, prompts, max_new_tokens, temperature=1.0, stop=(), seed=None) -> list[str]:
        self.calls.append({"stop": list(stop), "max_new_tokens": max_new_tokens})
        return [self.cut(text, list(stop)) for text in self.answers[: len(prompts)]]


@pytest.mark.parametrize("module", ["dreamgym_plugin_openai.backend", "dreamgym_plugin_hf.text"])
def test_vary_tasks_reads_a_variation_after_a_leading_newline_or_a_preamble_line(module) -> None:
    # stop=["\n"]: the first answer came back "" and the second "Sure! Here is one:", which
    # parse_variation rightly refuses, so only the third was kept.
    cut = pytest.importorskip(module).cut_at_stop
    answers = ['\n New task: "Find two coins."', "Sure! Here is one:\nFind the red key", "Find the blue key"]
    lm = CuttingLM(cut, answers)
    task = Task(id="t", instruction="Find the coin", domain="d")
    assert LMExperienceModel(lm).vary_tasks(task=task, n=3) == ["Find two coins.", "Find the red key", "Find the blue key"]
    # what bounds an answer now: the task budget (and the model's EOS), not a newline
    assert lm.calls == [{"stop": [], "max_new_tokens": ExperienceModelConfig().task_max_new_tokens}]


# --- one outcome for a training target and a demo ------------------------------------


def _step(**fields) -> Transition:
    base = dict(task_id="t", episode_id="e", step=0, state="In the kitchen.", action="go east",
                next_state="In the hall.", reward=0.0, done=False, success=False, valid=True, reasoning="r", source="offline")
    return Transition(**(base | fields))  # type: ignore[arg-type]


def _target(t: Transition) -> str:
    return "".join(text for text, _ in training_examples([t], None, history_window=0, k=0)[0][1:])


def _demo(t: Transition) -> str:
    prompt = build_prompt(ExperienceRequest(instruction="x", history=[], state="s", action="a", demos=[t]))
    return prompt.split("Similar transitions:\n", 1)[1].split("\n\n", 1)[0]


def test_a_win_by_an_unlisted_action_is_trained_and_shown_as_the_format_defines_it() -> None:
    # TextWorld and ALFWorld store an unlisted action the engine carried out as valid=false, and it can
    # win (success=true, reward 1). The target said success=true reward=0 (it parsed only "repaired":
    # the model was trained on text that never parses ok); the demo said valid=false ... reward=1.
    won = _step(action="get coin", next_state="You win", reward=1.0, done=True, success=True, valid=False)
    flags = "<valid>false</valid> <done>true</done> <success>false</success> <reward>0</reward>"
    assert _target(won).endswith(flags)
    parsed = parse_output(_target(won))
    assert (parsed.parse_status, parsed.valid, parsed.done, parsed.success, parsed.reward) == ("ok", False, True, False, 0.0)
    assert _demo(won).endswith("valid=false done=true success=false reward=0")


@pytest.mark.parametrize(
    "fields, flags, outcome",
    [
        ({}, "<valid>true</valid> <done>false</done> <success>false</success> <reward>0</reward>",
         "valid=true done=false success=false reward=0"),
        ({"reward": 1.0, "done": True, "success": True},
         "<valid>true</valid> <done>true</done> <success>true</success> <reward>1</reward>",
         "valid=true done=true success=true reward=1"),
        ({"done": True}, "<valid>true</valid> <done>true</done> <success>false</success> <reward>0</reward>",
         "valid=true done=true success=false reward=0"),
        ({"done": True, "truncated": True}, "<valid>true</valid> <done>false</done> <success>false</success> <reward>0</reward>",
         "valid=true done=false success=false reward=0"),
        ({"valid": False, "next_state": "In the kitchen."},
         "<valid>false</valid> <done>false</done> <success>false</success> <reward>0</reward>",
         "valid=false done=false success=false reward=0"),
    ],
)
def test_ordinary_transitions_targets_and_demos_are_byte_for_byte_as_before(fields, flags, outcome) -> None:
    # Models trained before, and the committed results, saw exactly these texts.
    t = _step(**fields)
    assert _target(t) == f"<think>r</think>\n<state>{t.next_state}</state>\n{flags}"
    assert _demo(t) == f"- state: In the kitchen.\n  action: go east\n  next: {t.next_state}\n  {outcome}"
    assert parse_output(_target(t)).parse_status == "ok"


# --- a draw of a seeded synthetic episode ----------------------------------------------

GOOD = "<think>r</think><state>S2</state><valid>true</valid> <done>false</done> <success>false</success> <reward>0"


class SeedLM:
    model_id = "seed-lm"

    def __init__(self) -> None:
        self.seeds: list[int] = []

    def generate(self, *, prompts, max_new_tokens, temperature=1.0, stop=(), seed=None) -> list[str]:
        self.seeds.append(seed)
        return [GOOD] * len(prompts)


def _first_seed(draw: int, seed: int) -> int:
    lm = SeedLM()
    env = SyntheticEnv(LMExperienceModel(lm, ExperienceModelConfig(draw=draw)), config=SyntheticEnvConfig())
    env.reset(task=Task(id="t", instruction="i", domain="d", payload={"initial_state": "S1"}), seed=seed)
    env.step(action="a")
    return lm.seeds[0]


def test_each_draw_plays_its_own_seeded_episodes_and_draw_0_its_old_ones() -> None:
    # stream() resets the draw to 0 and the episode's stream was named by its seed only, so draws 1
    # and 2 replayed draw 0's episode: loop.experience_draw changed nothing in a seeded episode.
    draws = {draw: _first_seed(draw, 7) for draw in (0, 1, 2)}
    assert len(set(draws.values())) == 3
    assert draws[0] == call_seed(stream_seed(0, "episode/7"), 1)  # draw 0's stream is the one it always was
    assert _first_seed(1, 7) == draws[1] and _first_seed(1, 8) != draws[1]  # a draw's episodes still replay by seed
