"""The synthetic environment: Env contract, failure rules, buffer growth, batching, Gymnasium."""

from __future__ import annotations

import re

import pytest

from dreamgym_core.experience import ExperienceModelConfig, LMExperienceModel, render_output
from dreamgym_core.contracts import WrongReturn
from dreamgym_core.protocols import Env
from dreamgym_core.records import ExperienceResult, Observation, StepResult, Task
from dreamgym_core.rollout import rollout
from dreamgym_core.synthetic import (
    SyntheticEnv, SyntheticEnvConfig, SyntheticEnvError, initial_state, step_many, storable, synthetic_config_of,
)
from dreamgym_core.testing import check_env, make_transitions
from test_experience_doubles import ListBuffer, ScriptedLM

TASK = Task(id="coin-1", instruction="Take the coin.", domain="toy", payload={"initial_state": "You are in room 0."})


def answer(next_state: str, *, valid=True, done=False, success=False) -> str:
    return render_output(ExperienceResult(reasoning="because", next_state=next_state, reward=float(done and success),
                                          done=done, success=success, valid=valid))  # fmt: skip


def walker(prompt: str) -> str:
    """A deterministic stand-in world: 'go' moves one room on, 'take coin' wins in room 2, else invalid."""
    room = int(re.findall(r"State: You are in room (\d+)", prompt)[-1])
    action = re.findall(r"Action: (.*)", prompt)[-1]
    if action == "go":
        return answer(f"You are in room {room + 1}.")
    if action == "take coin":
        return answer("You took the coin.", done=True, success=room == 2)
    return answer("Nothing happens.", valid=False)


def make_env(buffer=None, **config) -> tuple[SyntheticEnv, ScriptedLM]:
    lm = ScriptedLM(answer=walker)
    model = LMExperienceModel(lm, ExperienceModelConfig(max_retries=0))
    return SyntheticEnv(model, buffer, None, SyntheticEnvConfig(**{"add_to_buffer": True, "seeded_episodes": False, **config})), lm


def test_is_an_env_and_passes_the_conformance_kit() -> None:
    env, _ = make_env(ListBuffer(make_transitions(8)))
    assert isinstance(env, Env)
    check_env(env, TASK, actions=3)


def test_episode_reaches_success_with_outcome_reward() -> None:
    buffer = ListBuffer()
    env, lm = make_env(buffer, top_k=2, history_window=1)
    assert env.reset(task=TASK, seed=3).text == "You are in room 0."
    rewards = [env.step(action="go").reward, env.step(action="go").reward]
    last = env.step(action="take coin")
    assert rewards == [0.0, 0.0] and last.done and last.success and last.reward == 1.0
    assert len(buffer) == 3
    stored = buffer.items
    assert [t.step for t in stored] == [0, 1, 2] and {t.source for t in stored} == {"synthetic"}
    assert stored[2].state == "You are in room 2." and stored[2].model_id == "scripted-lm"
    assert stored[0].reasoning == "because" and stored[0].instruction == TASK.instruction
    # step 3's prompt: history window 1, and no demos: the buffer holds only this episode's own steps
    prompt = lm.calls[2]["prompts"][0]
    assert prompt.count(" -> ") == 1 and "Similar transitions" not in prompt
    with pytest.raises(SyntheticEnvError, match="after the episode"):
        env.step(action="go")


def test_retrieval_never_shows_the_episodes_own_steps_and_still_gives_k_demos() -> None:
    # training's demos leave out a transition's own episode (experience._demos): the standalone
    # env, which adds each step at once, must not show the episode its own steps either
    buffer = ListBuffer(make_transitions(2))
    env, _ = make_env(buffer, top_k=2, history_window=0)
    requests = []
    predict = env.model.predict
    env.model.predict = lambda **kw: (requests.extend(kw["requests"]), predict(**kw))[1]
    for seed in (1, 2):
        env.reset(task=TASK, seed=seed)
        for action in ("go", "go", "take coin"):
            assert env.step(action=action).info["retrieved"] == 2
    assert len(buffer) == 8 and len(requests) == 6
    first, second = {t.episode_id for t in buffer.items[2:5]}, {t.episode_id for t in buffer.items[5:]}
    assert len(first) == len(second) == 1 and first != second
    for request in requests[:3]:
        assert len(request.demos) == 2 and not {d.episode_id for d in request.demos} & first
    for request in requests[3:]:
        assert len(request.demos) == 2 and not {d.episode_id for d in request.demos} & second
    # an episode that has ended is experience like any other
    assert any(d.episode_id in first for r in requests[4:] for d in r.demos)


def test_same_world_demos_come_from_the_episodes_own_world() -> None:
    """Rooms read alike in every world; with demos: same-world-first the step is shown the
    stored step of its own world (a variation ``~syn`` plays its seed world), not the nearest."""
    from dreamgym_core.records import Transition

    stored = [
        Transition(task_id=f"w{i}", episode_id=f"e{i}", step=0, state="You are in room 0.", action="go",
                   next_state=f"You are in room {i}.", reward=0.0, done=False, source="offline")
        for i in (1, 2, 3)
    ]  # fmt: skip
    domain = type("Domain", (), {"world_of": staticmethod(lambda task_id: task_id.removesuffix("~syn"))})()
    task = Task(id="w3~syn", instruction="Take the coin.", domain="toy", payload={"initial_state": "You are in room 0."})
    shown = {}
    for demos in ("nearest", "same-world-first"):
        env = SyntheticEnv(
            LMExperienceModel(ScriptedLM(answer=walker), ExperienceModelConfig(max_retries=0)), ListBuffer(stored), domain,
            SyntheticEnvConfig(top_k=1, history_window=0, demos=demos, seeded_episodes=False),  # predict patched below
        )
        requests = []
        predict = env.model.predict
        env.model.predict = lambda **kw: (requests.extend(kw["requests"]), predict(**kw))[1]
        env.reset(task=task, seed=0)
        env.step(action="go")
        shown[demos] = [d.task_id for d in requests[0].demos]
    assert shown == {"nearest": ["w1"], "same-world-first": ["w3"]}


def test_invalid_action_is_a_failure_state_with_zero_reward() -> None:
    env, _ = make_env()
    env.reset(task=TASK)
    result = env.step(action="dance")
    assert result.done and not result.success and result.reward == 0.0 and not result.valid
    assert result.info["invalid_actions"] == 1


def test_unparsable_output_ends_the_episode_and_is_counted() -> None:
    lm = ScriptedLM(answer=lambda p: "I refuse to follow the format")
    env = SyntheticEnv(LMExperienceModel(lm, ExperienceModelConfig(max_retries=1)), ListBuffer())
    env.reset(task=TASK)
    buffer = env.buffer
    result = env.step(action="go")
    assert result.done and not result.success and result.reward == 0.0
    assert result.info["parse_status"] == "failed" and result.info["parse_failures"] == 1
    assert env.model.metrics()["experience/retries"] == 1
    # a model error is not experience: it never reaches the buffer retrieval reads
    assert len(buffer) == 0


def test_rollout_marks_model_failures_so_the_loop_does_not_store_them() -> None:
    from dreamgym_core.rollout import rollout

    answers = iter([answer("You are in room 1."), "garbage", "garbage"])
    lm = ScriptedLM(answer=lambda p: next(answers))
    config = SyntheticEnvConfig(add_to_buffer=False)
    env = SyntheticEnv(LMExperienceModel(lm, ExperienceModelConfig(max_retries=1)), ListBuffer(), None, config)
    trajectories, stats = rollout(
        tasks=[TASK], envs=[env], act=lambda prompts: ["<action>go</action>"] * len(prompts), max_steps=4,
        history_window=1, seeds=[0], source="synthetic", tag="t", step_many=step_many, model_id="m",
    )
    steps = trajectories[0].transitions
    assert [t.model_failed for t in steps] == [False, True] and stats.parse_failures == 1
    assert storable(steps) == steps[:1]
    assert storable(steps, synthetic=False) == []  # loop.store_synthetic: false keeps every synthetic step out
    # the experience model's failure is counted once, as such, not also as the policy's invalid action
    # (the env's own counters keep them apart too: info["invalid_actions"] stays 0)
    assert stats.invalid_actions == 0 and stats.metrics("synthetic")["errors/synthetic_invalid_actions"] == 0.0


def test_max_steps_truncates() -> None:
    buffer = ListBuffer([])
    env, _ = make_env(buffer, max_steps=2)
    env.reset(task=TASK)
    first, second = env.step(action="go"), env.step(action="go")
    assert not first.done and second.done and not second.success and second.info["truncated"]
    assert [t.truncated for t in buffer.items[-2:]] == [False, True]  # stored as a cap ending, not the game's


def test_initial_state_rule() -> None:
    class Domain:
        def initial_observation(self, task):
            return Observation(text="from the domain", admissible_actions=["go"])

    assert initial_state(TASK, Domain()).text == "from the domain"
    assert initial_state(TASK, object()).text == "You are in room 0."
    with pytest.raises(SyntheticEnvError, match="coin-2.*initial_state"):
        initial_state(Task(id="coin-2", instruction="x", domain="toy"), None)
    with pytest.raises(SyntheticEnvError, match="before reset"):
        make_env()[0].step(action="go")


def test_a_start_state_of_the_wrong_type_names_the_env() -> None:
    # A str here failed later in the agent's prompt, on .text, with a traceback.
    class Domain:
        name = "toy"

        def initial_observation(self, task):
            return "You are in room 0."

    with pytest.raises(WrongReturn, match=r"env 'toy': initial_observation\('coin-1'\) returned str, expected an Observation"):
        initial_state(TASK, Domain())


def test_a_start_state_of_the_wrong_type_fails_the_rollout_not_each_episode() -> None:
    """Each synthetic reset was scored as an environment error: every episode lost, the run went on."""
    class Domain:
        name = "toy"

        def initial_observation(self, task):
            return "You are in room 0."

    envs = [SyntheticEnv(LMExperienceModel(ScriptedLM([])), None, Domain(), SyntheticEnvConfig(seeded_episodes=False)) for _ in range(3)]
    with pytest.raises(WrongReturn, match="initial_observation"):
        rollout(
            tasks=[TASK] * 3, envs=envs, act=lambda prompts: ["<action>go east</action>"] * len(prompts), max_steps=2,
            history_window=1, seeds=[0, 1, 2], source="synthetic", tag="t", step_many=step_many,
        )


def test_an_experience_answer_of_the_wrong_kind_fails_the_rollout_even_for_one_episode() -> None:
    """A None next_state for one episode's action was that episode's environment error; the run
    failed only when every live episode hit it."""
    class SometimesNone:
        model_id = "m"

        def predict(self, *, requests):
            return [
                ExperienceResult(reasoning="", next_state=None if r.action == "bad" else "room 1", reward=0.0, done=False, success=False)
                for r in requests
            ]

    actions = ["go", "bad", "go"]
    envs = [SyntheticEnv(SometimesNone(), None, None, SyntheticEnvConfig(seeded_episodes=False)) for _ in actions]
    with pytest.raises(WrongReturn, match=r"predict\(\) returned next_state NoneType"):
        rollout(
            tasks=[TASK] * 3, envs=envs, act=lambda prompts: [f"<action>{a}</action>" for a in actions[: len(prompts)]],
            max_steps=1, history_window=1, seeds=[0, 1, 2], source="synthetic", tag="t", step_many=step_many,
        )


def test_admissible_actions_reach_the_prompt() -> None:
    class Domain:
        def initial_observation(self, task):
            return Observation(text="You are in room 0.", admissible_actions=["go", "take coin"])

    env, lm = make_env()
    env.domain = Domain()
    env.reset(task=TASK)
    env.step(action="go")
    assert "Admissible actions: go, take coin" in lm.calls[0]["prompts"][0]


class ListingDomain:
    """A domain whose states list ``go`` and ``take coin`` (any state mentioning a room)."""

    def initial_observation(self, task):
        return Observation(text="You are in room 0.", admissible_actions=["go", "take coin"])

    def admissible_in(self, state):
        return ["go", "take coin"] if "room" in state else []


def test_generated_states_offer_the_actions_the_domain_reads_in_them() -> None:
    """Synthetic steps after the first show an action list too, as real steps do."""

    env, lm = make_env()
    env.domain = ListingDomain()
    env.reset(task=TASK)
    result = env.step(action="go")
    assert result.observation.admissible_actions == ["go", "take coin"]
    env.step(action="go")
    assert "Admissible actions: go, take coin" in lm.calls[1]["prompts"][0]
    without = make_env()[0]
    without.reset(task=TASK)
    assert without.step(action="go").observation.admissible_actions == []


class VaryingDomain(ListingDomain):
    """Marks every state it varies with the episode key and the strength."""

    def vary_state(self, state, actions, *, key, strength):
        assert actions == ["go", "take coin"]
        return f"{state} Seen in {key} at {strength}."


def test_state_variation_shows_the_policy_and_the_model_the_domains_varied_states() -> None:
    buffer = ListBuffer()
    lm = ScriptedLM(answer=walker)
    model = LMExperienceModel(lm, ExperienceModelConfig(max_retries=0))
    env = SyntheticEnv(model, buffer, VaryingDomain(), SyntheticEnvConfig(state_variation=0.5, top_k=0, add_to_buffer=True))
    start = env.reset(task=TASK, seed=7)
    assert start.text == "You are in room 0. Seen in coin-1/7 at 0.5."  # keyed by task and seed
    assert start.admissible_actions == ["go", "take coin"]
    step = env.step(action="go")
    assert step.observation.text == "You are in room 1. Seen in coin-1/7 at 0.5."
    assert "State: You are in room 0. Seen in" in lm.calls[0]["prompts"][0]  # the model continues the varied world
    stored = buffer.items[0]
    assert stored.state == start.text and stored.next_state == step.observation.text
    # off (the default): states as generated, and a domain without vary_state is fine
    plain = SyntheticEnv(model, None, ListingDomain(), SyntheticEnvConfig())
    assert plain.reset(task=TASK, seed=7).text == "You are in room 0."


def test_a_replayed_episode_sees_the_same_state_variation() -> None:
    # the variation was keyed by the episode id, which counts resets: the second reset of one
    # task and seed saw other states, though the same task, seed and actions replay an episode
    model = LMExperienceModel(ScriptedLM(answer=walker), ExperienceModelConfig(max_retries=0))
    env = SyntheticEnv(model, None, VaryingDomain(), SyntheticEnvConfig(state_variation=0.5, top_k=0))
    assert env.reset(task=TASK, seed=7).text == env.reset(task=TASK, seed=7).text
    unseeded = [env.reset(task=TASK).text, env.reset(task=TASK).text]  # no seed: not a replay
    assert unseeded[0] != unseeded[1]


def test_envs_sharing_a_buffer_give_their_episodes_ids_of_their_own() -> None:
    # a per-env counter alone named both envs' first episode of a task alike, and the buffer
    # then held step 0 of one "episode" twice (it could not be regrouped into episodes)
    from dreamgym_core.checkpoint import trajectories_from_transitions

    buffer = ListBuffer()
    model = LMExperienceModel(ScriptedLM(answer=walker), ExperienceModelConfig(max_retries=0))
    envs = [SyntheticEnv(model, buffer, ListingDomain(), SyntheticEnvConfig(top_k=0, add_to_buffer=True)) for _ in range(2)]
    for env in envs:
        env.reset(task=TASK)
        env.step(action="go")
    assert len({t.episode_id for t in buffer.items}) == 2
    assert len(trajectories_from_transitions(buffer.items, [TASK])) == 2


def test_a_reset_that_fails_leaves_the_last_episode_as_it_was() -> None:
    # the task and episode id changed before the start state was known: a failed reset left an
    # env whose next step mixed the new task with the old episode's state and history
    class NoStart(ListingDomain):
        def initial_observation(self, task):
            if task.id != TASK.id:
                raise ValueError(f"no start state for {task.id}")
            return super().initial_observation(task)

    model = LMExperienceModel(ScriptedLM(answer=walker), ExperienceModelConfig(max_retries=0))
    env = SyntheticEnv(model, None, NoStart(), SyntheticEnvConfig(top_k=0))
    env.reset(task=TASK)
    env.step(action="go")
    before = (env._task, env._episode_id, env._obs, list(env._history))
    with pytest.raises(ValueError, match="no start state"):
        env.reset(task=Task(id="other", instruction="do B", domain="toy"))
    assert (env._task, env._episode_id, env._obs, list(env._history)) == before


def test_state_variation_needs_a_domain_that_can_vary_states() -> None:
    model = LMExperienceModel(ScriptedLM(answer=walker), ExperienceModelConfig(max_retries=0))
    with pytest.raises(SyntheticEnvError, match="state_variation=0.3 needs a domain with vary_state"):
        SyntheticEnv(model, None, ListingDomain(), SyntheticEnvConfig(state_variation=0.3))


class CheckingDomain(ListingDomain):
    """Rules out an answer to 'look' that is not the state it was asked in, and corrects it to that state."""

    def __init__(self):
        self.judged = []

    def implausible(self, *, state, action, next_state):
        self.judged.append((state.text, action, next_state.text, list(next_state.admissible_actions)))
        return "a look changes nothing" if action == "look" and next_state.text != state.text else ""

    def correct(self, *, state, action, answer):
        return ExperienceResult(reasoning="a look changes nothing", next_state=state.text, reward=0.0, done=False, success=False)


def looker(prompt: str) -> str:
    """walker, but a 'look' in room 0 answers a room whose coin can be taken (a phantom)."""
    action = re.findall(r"Action: (.*)", prompt)[-1]
    return answer("You are in room 2.") if action == "look" else walker(prompt)


def test_check_transitions_fails_an_answer_the_domain_rules_out_as_the_models_failure() -> None:
    buffer = ListBuffer()
    lm = ScriptedLM(answer=looker)
    model = LMExperienceModel(lm, ExperienceModelConfig(max_retries=0))
    domain = CheckingDomain()
    env = SyntheticEnv(model, buffer, domain, SyntheticEnvConfig(check_transitions=True, top_k=0, add_to_buffer=True))
    env.reset(task=TASK)
    moved = env.step(action="go")
    assert not moved.done and moved.info["implausible"] == "" and not moved.info["model_failed"]
    assert domain.judged[0] == ("You are in room 0.", "go", "You are in room 1.", ["go", "take coin"])
    env.reset(task=TASK)
    ruled_out = env.step(action="look")
    assert ruled_out.done and not ruled_out.success and ruled_out.reward == 0.0
    assert ruled_out.observation.text == "You are in room 0."  # nothing changed: the answer is not shown
    assert ruled_out.info["implausible"] == "a look changes nothing" and ruled_out.info["model_failed"]
    assert ruled_out.info["implausible_answers"] == 1 and ruled_out.info["parse_failures"] == 0
    assert ruled_out.info["invalid_actions"] == 0  # not the policy's invalid step
    assert len(buffer) == 1 and buffer.items[0].action == "go"  # the ruled-out answer is not stored
    # off (the default): the same answer is played, and the domain is not asked
    off = SyntheticEnv(model, None, domain, SyntheticEnvConfig(top_k=0))
    off.reset(task=TASK)
    judged = len(domain.judged)
    assert off.step(action="look").observation.text == "You are in room 2." and len(domain.judged) == judged


def test_implausible_answers_correct_plays_and_stores_the_domains_answer_instead() -> None:
    buffer = ListBuffer()
    lm = ScriptedLM(answer=looker)
    model = LMExperienceModel(lm, ExperienceModelConfig(max_retries=0))
    config = SyntheticEnvConfig(check_transitions=True, implausible_answers="correct", top_k=0, add_to_buffer=True)
    env = SyntheticEnv(model, buffer, CheckingDomain(), config)
    env.reset(task=TASK)
    looked = env.step(action="look")  # the model answered room 2, where the coin can be taken
    assert not looked.done and looked.valid and looked.reward == 0.0
    assert looked.observation.text == "You are in room 0." and looked.observation.admissible_actions == ["go", "take coin"]
    assert looked.info["implausible"] == "a look changes nothing" and not looked.info["model_failed"]
    assert looked.info["implausible_answers"] == 1 and looked.info["parse_failures"] == 0
    assert not env.step(action="take coin").success  # still in room 0: the phantom win is gone
    stored = buffer.items[0]
    assert (stored.action, stored.next_state, stored.reasoning, stored.model_failed) == ("look", "You are in room 0.", "a look changes nothing", False)


def test_check_transitions_needs_a_domain_that_can_judge_and_a_str_verdict() -> None:
    model = LMExperienceModel(ScriptedLM(answer=walker), ExperienceModelConfig(max_retries=0))
    with pytest.raises(SyntheticEnvError, match="check_transitions needs a domain with implausible"):
        SyntheticEnv(model, None, ListingDomain(), SyntheticEnvConfig(check_transitions=True))

    class JudgesOnly(ListingDomain):
        def implausible(self, *, state, action, next_state):
            return "never"

    with pytest.raises(SyntheticEnvError, match="implausible_answers='correct' needs a domain with correct"):
        SyntheticEnv(model, None, JudgesOnly(), SyntheticEnvConfig(check_transitions=True, implausible_answers="correct"))

    class CorrectsWithText(JudgesOnly):
        def correct(self, *, state, action, answer):
            return state.text

    env = SyntheticEnv(model, None, CorrectsWithText(), SyntheticEnvConfig(check_transitions=True, implausible_answers="correct", top_k=0))
    env.reset(task=TASK)
    with pytest.raises(WrongReturn, match="correct\\(...\\) returned str, expected an ExperienceResult"):
        env.step(action="go")

    class Sloppy(ListingDomain):
        def implausible(self, *, state, action, next_state):
            return None

    env = SyntheticEnv(model, None, Sloppy(), SyntheticEnvConfig(check_transitions=True, top_k=0))
    env.reset(task=TASK)
    with pytest.raises(WrongReturn, match="implausible\\(...\\) returned NoneType, expected a str"):
        env.step(action="go")


def test_rollout_counts_implausible_answers_apart_and_marks_them_model_failed() -> None:
    from dreamgym_core.rollout import rollout, unanswered

    lm = ScriptedLM(answer=looker)
    config = SyntheticEnvConfig(check_transitions=True, top_k=0)
    env = SyntheticEnv(LMExperienceModel(lm, ExperienceModelConfig(max_retries=0)), None, CheckingDomain(), config)
    trajectories, stats = rollout(
        tasks=[TASK], envs=[env], act=lambda prompts: ["<action>look</action>"] * len(prompts), max_steps=3,
        history_window=1, seeds=[0], source="synthetic", tag="t", step_many=step_many,
    )
    assert stats.implausible_answers == 1 and stats.parse_failures == 0 and stats.invalid_actions == 0
    assert stats.metrics("rollout")["errors/rollout_implausible_answers"] == 1.0
    (last,) = trajectories[0].transitions
    assert last.model_failed and not last.success
    assert unanswered(trajectories[0])  # handled by loop.unanswered_episodes, as an unparsable answer


def test_reject_unlisted_fails_an_action_the_state_does_not_offer_without_a_model_call() -> None:
    buffer = ListBuffer(make_transitions(4))
    env, lm = make_env(buffer, reject_unlisted=True, top_k=1)
    env.domain = ListingDomain()
    env.reset(task=TASK)
    first = env.step(action="go")
    assert first.valid and not first.done and len(lm.calls) == 1
    refused = env.step(action="dance")
    assert len(lm.calls) == 1 and buffer.retrieve_calls == 1  # neither the model nor retrieval asked
    assert refused.done and not refused.valid and not refused.success and refused.reward == 0.0
    assert refused.observation.text == "You are in room 1." and refused.info["invalid_actions"] == 1
    assert buffer.items[-1].action == "dance" and not buffer.items[-1].valid and not buffer.items[-1].model_failed
    # off (the default), or a state without a known action list: the model decides
    for env in (make_env()[0], make_env(reject_unlisted=True)[0]):
        env.reset(task=TASK)
        assert not env.step(action="dance").valid
    off, off_lm = make_env()
    off.domain = ListingDomain()
    off.reset(task=TASK)
    off.step(action="dance")
    assert len(off_lm.calls) == 1


def test_reject_unlisted_reads_an_action_as_the_listing_envs_do_whatever_its_case_and_spacing() -> None:
    # The real TextWorld and ALFWorld envs carry out "Take  coin" as their listed "take coin"; the
    # synthetic env refused it as unlisted without asking the model, stricter than the real env.
    from dreamgym_core.rollout import unlisted

    buffer = ListBuffer(make_transitions(4))
    env, lm = make_env(buffer, reject_unlisted=True, top_k=1)
    env.domain = ListingDomain()
    env.reset(task=TASK)
    env.step(action="Take  coin")
    assert len(lm.calls) == 1 and buffer.retrieve_calls == 1  # the model was asked, as for a listed action
    assert unlisted("take the coin", ["take coin"]) and not unlisted("TAKE COIN", ["take coin"])
    assert not unlisted("anything", [])  # no list: nothing is unlisted


def test_reject_unlisted_at_start_trusts_only_the_start_states_list() -> None:
    env, lm = make_env(reject_unlisted=True, reject_unlisted_at="start")
    env.domain = ListingDomain()
    env.reset(task=TASK)
    assert not env.step(action="dance").valid and len(lm.calls) == 0  # the start's (real) list refuses it
    env.reset(task=TASK)
    env.step(action="go")
    assert not env.step(action="dance").valid and len(lm.calls) == 2  # a generated list: the model decides


def test_reject_unlisted_in_a_batch_asks_the_model_only_for_listed_actions() -> None:
    lm = ScriptedLM(answer=walker)
    model = LMExperienceModel(lm, ExperienceModelConfig(max_retries=0))
    envs = [SyntheticEnv(model, None, ListingDomain(), SyntheticEnvConfig(reject_unlisted=True)) for _ in range(3)]
    for env in envs:
        env.reset(task=TASK)
    results = step_many(envs, ["go", "fly", "take coin"])
    assert len(lm.calls) == 1 and len(lm.calls[0]["prompts"]) == 2
    assert [r.valid for r in results] == [True, False, True]
    assert [r.observation.text for r in results] == ["You are in room 1.", "You are in room 0.", "You took the coin."]


class RealEnvDouble:
    """A stand-in real adapter: step_many must call its own step()."""

    def __init__(self) -> None:
        self.actions: list[str] = []

    def reset(self, *, task, seed=None):
        return Observation(text="real")

    def step(self, *, action):
        self.actions.append(action)
        return StepResult(observation=Observation(text="real next"), reward=0.0, done=False)

    def close(self) -> None:
        pass


def test_step_many_batches_one_model_call_and_one_retrieval() -> None:
    buffer = ListBuffer(make_transitions(6))
    lm = ScriptedLM(answer=walker)
    model = LMExperienceModel(lm, ExperienceModelConfig(max_retries=0))
    envs = [SyntheticEnv(model, buffer, None, SyntheticEnvConfig(top_k=2, add_to_buffer=True)) for _ in range(4)]
    real = RealEnvDouble()
    for env in envs:
        env.reset(task=TASK)
    results = step_many([envs[0], real, envs[1], envs[2], envs[3]], ["go", "look", "dance", "go", "take coin"])
    assert len(lm.calls) == 1 and len(lm.calls[0]["prompts"]) == 4
    assert buffer.retrieve_calls == 1 and len(buffer) == 6 + 4
    assert real.actions == ["look"] and results[1].observation.text == "real next"
    assert [r.observation.text for r in results] == [
        "You are in room 1.", "real next", "Nothing happens.", "You are in room 1.", "You took the coin."
    ]
    assert [r.done for r in results] == [False, False, True, False, True]
    assert [r.info.get("retrieved") for r in results] == [2, None, 2, 2, 2]
    # stepping one by one gives the same results as the batch
    solo = [SyntheticEnv(model, None) for _ in range(2)]
    for env in solo:
        env.reset(task=TASK)
    assert solo[0].step(action="go").observation == results[0].observation
    with pytest.raises(SyntheticEnvError, match="2 envs and 1 actions"):
        step_many(solo, ["go"])


def test_gymnasium_wrapper() -> None:
    gymnasium = pytest.importorskip("gymnasium")
    from dreamgym_core.synthetic import DreamGymGymEnv

    env, _ = make_env()
    gym_env = DreamGymGymEnv(env, tasks=[TASK])
    assert isinstance(gym_env, gymnasium.Env)
    assert isinstance(gym_env.observation_space, gymnasium.spaces.Text)
    obs, info = gym_env.reset(seed=0)
    assert obs == "You are in room 0." and info["task_id"] == "coin-1"
    assert gym_env.action_space.contains("go") and gym_env.observation_space.contains(obs)
    # text is any characters, not ASCII only; the bounds still hold
    assert gym_env.observation_space.contains("Température: 20°C") and gym_env.action_space.contains("ouvrir la fenêtre")
    assert not gym_env.action_space.contains("") and not gym_env.observation_space.contains(b"room")
    assert not gym_env.observation_space.contains("x" * 8193)
    assert gym_env.action_space.sample().isascii()
    obs, reward, terminated, truncated, info = gym_env.step("go")
    assert (obs, reward, terminated, truncated) == ("You are in room 1.", 0.0, False, False)
    gym_env.step("go")
    obs, reward, terminated, truncated, info = gym_env.step("take coin")
    assert reward == 1.0 and terminated and not truncated and info["success"]
    gym_env.close()


def test_gymnasium_wrapper_reports_truncation() -> None:
    pytest.importorskip("gymnasium")
    from dreamgym_core.synthetic import DreamGymGymEnv

    env, _ = make_env(max_steps=1)
    gym_env = DreamGymGymEnv(env)
    gym_env.reset(options={"task": TASK})
    _, _, terminated, truncated, _ = gym_env.step("go")
    assert truncated and not terminated
    with pytest.raises(SyntheticEnvError, match="options"):
        DreamGymGymEnv(make_env()[0]).reset()


def test_a_language_model_backend_given_as_the_model_is_refused_with_what_to_do() -> None:
    # It was accepted, and the first step failed: AttributeError: ... has no attribute 'predict'.
    with pytest.raises(SyntheticEnvError, match=r"got ScriptedLM: it is a language model backend; wrap it as .*LMExperienceModel\(backend\)"):
        SyntheticEnv(ScriptedLM(answer=walker), None)
    with pytest.raises(SyntheticEnvError, match=r"needs an experience model \(with predict\), got NoneType$"):
        SyntheticEnv(None, None)


class SeededLM(ScriptedLM):
    """A sampling model: the room it answers is drawn from the call's seed."""

    def generate(self, *, prompts, max_new_tokens, temperature=1.0, stop=(), seed=None) -> list[str]:
        self.calls.append({"seed": seed})
        return [answer(f"You are in room {seed % 1000}.") for _ in prompts]


def test_gymnasium_wrapper_replays_a_seeded_episode_of_a_sampling_model() -> None:
    # The model seeded each call from its call count, so reset(seed=s) and the same actions
    # played another draw each time: seeds did not reproduce synthetic episodes.
    pytest.importorskip("gymnasium")
    from gymnasium.utils.env_checker import check_env as check_gym_env

    from dreamgym_core.synthetic import DreamGymGymEnv

    model = LMExperienceModel(SeededLM(), ExperienceModelConfig(max_retries=0))
    env = SyntheticEnv(model, None, None, SyntheticEnvConfig(max_steps=8))
    gym_env = DreamGymGymEnv(env, tasks=[TASK])

    def episode(**reset):
        obs = [gym_env.reset(**reset)[0]]
        return obs + [gym_env.step(action)[0] for action in ("go", "go", "look")]

    first = episode(seed=7)
    assert episode(seed=7) == first and len(set(first[1:])) == 3
    assert episode(seed=8) != first
    follow = [episode(seed=3)[1:], episode()[1:], episode()[1:]]  # the resets after a seeded one, too
    assert [episode(seed=3)[1:], episode()[1:], episode()[1:]] == follow and follow[1] != follow[2]
    gym_env.close()
    assert env.model is model
    # Gymnasium's own checker steps a seeded reset twice with one action and compares
    check_gym_env(DreamGymGymEnv(SyntheticEnv(model, None, None, SyntheticEnvConfig(max_steps=8)), tasks=[TASK]), skip_render_check=True)


@pytest.mark.parametrize("action", [None, 3, b"go", ["go"]])
def test_gymnasium_wrapper_refuses_an_action_that_is_not_text_in_one_line(action) -> None:
    pytest.importorskip("gymnasium")
    from dreamgym_core.synthetic import DreamGymGymEnv

    gym_env = DreamGymGymEnv(make_env()[0], tasks=[TASK])
    gym_env.reset(seed=0)
    with pytest.raises(SyntheticEnvError, match=f"an action is a str .*got {type(action).__name__}"):
        gym_env.step(action)
    assert gym_env.step("go")[0] == "You are in room 1."  # the episode goes on
    with pytest.raises(SyntheticEnvError, match="options\\['task'\\] must be a Task, got str"):
        gym_env.reset(options={"task": "coin-1"})


@pytest.mark.parametrize("reject_unlisted, accepted", [(False, 1), (True, 0)])
def test_rollout_counts_unlisted_actions_and_those_the_synthetic_env_accepted(reject_unlisted, accepted) -> None:
    """A lenient experience model accepts an action the state does not offer; the counter shows it."""
    from dreamgym_core.rollout import rollout

    lm = ScriptedLM(answer=lambda p: answer("You are in room 1."))  # accepts anything
    config = SyntheticEnvConfig(add_to_buffer=False, reject_unlisted=reject_unlisted)
    env = SyntheticEnv(LMExperienceModel(lm, ExperienceModelConfig(max_retries=0)), None, ListingDomain(), config)
    plays = iter(["<action>fly</action>", "<action>go</action>"])
    trajectories, stats = rollout(
        tasks=[TASK], envs=[env], act=lambda prompts: [next(plays)] * len(prompts), max_steps=2,
        history_window=1, seeds=[0], source="synthetic", tag="t", step_many=step_many,
    )
    assert stats.unlisted_actions == 1 and stats.unlisted_accepted == accepted
    metrics = stats.metrics("rollout")
    assert metrics["rollout/unlisted_actions"] == 1.0 and metrics["rollout/unlisted_accepted"] == float(accepted)
    assert [t.action for t in trajectories[0].transitions] == (["fly", "go"] if accepted else ["fly"])


def test_report_says_how_many_unlisted_actions_the_synthetic_env_accepted() -> None:
    from dreamgym_core.report import _unlisted_lines

    history = [
        {"step": -1, "rollout/unlisted_actions": 9.0},  # before RL: not counted
        {"step": 0, "charts/synthetic_phase": 1.0, "rollout/unlisted_actions": 3.0, "rollout/unlisted_accepted": 3.0},
        {"step": 1, "charts/synthetic_phase": 0.0, "rollout/unlisted_actions": 5.0, "rollout/unlisted_accepted": 0.0},
        {"step": 2, "charts/synthetic_phase": 1.0, "rollout/unlisted_actions": 1.0, "rollout/unlisted_accepted": 0.0},
    ]
    text = " ".join(_unlisted_lines(history))
    assert "took 4 actions" in text and "accepted 3 of them (75%)" in text
    assert _unlisted_lines([{"step": 0, "charts/synthetic_phase": 1.0, "rollout/unlisted_actions": 0.0}]) == []


def test_a_seeded_reset_replays_a_sampling_models_episode_without_the_gym_wrapper() -> None:
    # reset(seed=s) only named the episode: a sampling model drew from its own call count, so the
    # env failed the kit's own replay check (same task and seed, same observations).
    model = LMExperienceModel(SeededLM(), ExperienceModelConfig(max_retries=0))
    env = SyntheticEnv(model, None, None, SyntheticEnvConfig(max_steps=8))
    check_env(env, TASK, actions=3)

    def episode(seed):
        env.reset(task=TASK, seed=seed)
        return [env.step(action="go").observation.text for _ in range(3)]

    assert episode(5) == episode(5) and episode(5) != episode(6)
    assert len(set(episode(5))) == 3  # a draw per step, not one per episode
    unseeded = [episode(None), episode(None)]  # the model given, on its own count: new draws each time
    assert unseeded[0] != unseeded[1]
    env.close()
    assert env.model is model


def test_trainers_share_the_given_model_so_a_lockstep_step_is_one_call() -> None:
    from pathlib import Path

    from dreamgym_core.config import load_resolved

    pipeline = load_resolved(Path(__file__).parents[1] / "examples" / "default.yaml")[0].pipeline
    config = synthetic_config_of(pipeline)  # as the loop and verl build theirs
    assert not config.seeded_episodes and not config.add_to_buffer
    assert synthetic_config_of(pipeline, seeded_episodes=True).seeded_episodes  # as the README's Gym snippet plays one env
    lm = SeededLM()
    model = LMExperienceModel(lm, ExperienceModelConfig(max_retries=0))
    envs = [SyntheticEnv(model, None, None, config) for _ in range(3)]
    for seed, env in enumerate(envs):
        env.reset(task=TASK, seed=seed)
    step_many(envs, ["go"] * 3)
    assert len(lm.calls) == 1


def test_by_default_playing_leaves_the_buffer_as_it_was() -> None:
    # add_to_buffer was on by default: opening a finished run's buffer to play in it wrote the
    # episode's steps into that run's buffer files.
    buffer = ListBuffer(make_transitions(4))
    env = SyntheticEnv(LMExperienceModel(ScriptedLM(answer=walker), ExperienceModelConfig(max_retries=0)), buffer)
    env.reset(task=TASK, seed=0)
    for action in ("go", "go", "take coin"):
        env.step(action=action)
    assert len(buffer) == 4


def test_wrong_types_are_refused_in_one_line_before_anything_changes() -> None:
    env, lm = make_env()
    env.reset(task=TASK, seed=0)
    with pytest.raises(SyntheticEnvError, match="^SyntheticEnv.reset: task must be a Task, got str$"):
        env.reset(task="coin-1")
    with pytest.raises(SyntheticEnvError, match="^SyntheticEnv.step: an action is a str, got int$"):
        env.step(action=3)
    assert not lm.calls and env.step(action="go").observation.text == "You are in room 1."  # the episode goes on


def test_gymnasium_wrapper_refuses_an_action_longer_than_its_action_space() -> None:
    # It was played: the prompt was then cut from its start, losing the task, with only a warning.
    pytest.importorskip("gymnasium")
    from dreamgym_core.synthetic import DreamGymGymEnv

    gym_env = DreamGymGymEnv(make_env()[0], tasks=[TASK], max_length=16)
    gym_env.reset(seed=0)
    with pytest.raises(SyntheticEnvError, match=r"an action of 17 characters is longer than action_space's max_length \(16\)"):
        gym_env.step("go" + "o" * 15)
    assert gym_env.step("g" + "o" * 15)[0] == "Nothing happens."  # 16 characters: played (and refused by the game)


def test_a_request_one_episode_alone_cannot_get_answered_fails_that_episode_only() -> None:
    # The rollout stops a run whose experience model answers no episode at all; an error that
    # only one request meets (a server refusing an over-long prompt) must fail its own episode,
    # also when it is the only episode still playing.
    from dreamgym_core.contracts import ComponentError
    from dreamgym_core.rollout import rollout

    class PicksyLM(ScriptedLM):
        def generate(self, *, prompts, **kwargs):
            if any("refused" in p for p in prompts):
                raise RuntimeError("HTTP 400: prompt too long")
            return super().generate(prompts=prompts, **kwargs)

    model = LMExperienceModel(PicksyLM(answer=walker), ExperienceModelConfig(max_retries=0))
    config = SyntheticEnvConfig(seeded_episodes=False)
    refused = Task(id="refused", instruction="find the coin", domain="test", payload={"initial_state": "refused room"})

    def play(tasks):
        envs = [SyntheticEnv(model, None, None, config) for _ in tasks]
        return rollout(tasks=tasks, envs=envs, act=lambda prompts: ["<action>go</action>"] * len(prompts), max_steps=2,
                       history_window=1, seeds=list(range(len(tasks))), source="synthetic", tag="t", step_many=step_many)

    for tasks in ([refused], [TASK, refused]):
        trajectories, stats = play(tasks)
        assert stats.env_errors == 1 and trajectories[-1].transitions[-1].next_state == "[environment error: ComponentError]"
    with pytest.raises(ComponentError, match="HTTP 400"):  # several episodes, none answered: the run's failure
        play([refused, refused])


def test_a_domain_failing_on_one_generated_state_fails_that_env_alone_and_steps_no_env_twice() -> None:
    # step_many raised after the envs before it had moved; the rollout then stepped every env
    # again one by one, so those episodes jumped two steps.
    from dreamgym_core.rollout import rollout

    class FailsOnce(ListingDomain):
        calls = 0

        def admissible_in(self, state):
            FailsOnce.calls += 1
            if FailsOnce.calls == 2:
                raise ValueError("unreadable state")
            return super().admissible_in(state)

    lm = ScriptedLM(answer=walker)
    model = LMExperienceModel(lm, ExperienceModelConfig(max_retries=0))
    envs = [SyntheticEnv(model, None, FailsOnce(), SyntheticEnvConfig(seeded_episodes=False)) for _ in range(3)]
    trajectories, stats = rollout(
        tasks=[TASK] * 3, envs=envs, act=lambda prompts: ["<action>go</action>"] * len(prompts), max_steps=1,
        history_window=1, seeds=[0, 1, 2], source="synthetic", tag="t", step_many=step_many,
    )
    assert stats.env_errors == 1 and len(lm.calls) == 1  # one batched call, no second round
    assert [t.transitions[-1].next_state for t in trajectories] == [
        "You are in room 1.", "[environment error: ValueError]", "You are in room 1."
    ]
    assert [len(env._history) for env in envs] == [1, 0, 1]  # each env moved once, the failed one not at all
    with pytest.raises(ValueError, match="unreadable state"):  # step() of one env raises what its slot holds
        FailsOnce.calls = 1
        env = SyntheticEnv(model, None, FailsOnce(), SyntheticEnvConfig(seeded_episodes=False))
        env.reset(task=TASK)
        env.step(action="go")


class _SteppedRealEnv:
    """A real env that counts its steps."""

    def __init__(self) -> None:
        self.steps = 0

    def reset(self, *, task, seed=None) -> Observation:
        return Observation(text="s0")

    def step(self, *, action) -> StepResult:
        self.steps += 1
        return StepResult(observation=Observation(text=f"s{self.steps}"), reward=0.0, done=False)

    def close(self) -> None:
        pass


class _DownModel:
    def predict(self, *, requests):
        raise RuntimeError("server down")


def test_step_many_raises_before_a_real_env_moves_when_the_model_call_fails() -> None:
    # Real envs were stepped first; the rollout, told nothing moved, stepped them again.
    real = _SteppedRealEnv()
    synthetic = SyntheticEnv(_DownModel(), None, None, SyntheticEnvConfig(seeded_episodes=False))
    trajectories, _ = rollout(
        tasks=[TASK, TASK], envs=[real, synthetic], act=lambda prompts: ["<action>go</action>"] * len(prompts),
        max_steps=1, history_window=0, seeds=[0, 1], source="real", tag="x", step_many=step_many,
    )
    assert real.steps == 1 and len(trajectories[0].transitions) == 1


def test_the_rollout_stores_the_experience_models_reasoning() -> None:
    # step_transition read info["reasoning"], which SyntheticEnv never set: stored steps had none
    lm = ScriptedLM(answer=walker)  # every answer reasons "because"
    model = LMExperienceModel(lm, ExperienceModelConfig(max_retries=0))
    env = SyntheticEnv(model, None, None, SyntheticEnvConfig(top_k=0, seeded_episodes=False))
    trajectories, _ = rollout(
        tasks=[TASK], envs=[env], act=lambda prompts: ["<action>go</action>"] * len(prompts),
        max_steps=1, history_window=0, seeds=[0], source="synthetic", tag="t", step_many=step_many,
    )
    assert trajectories[0].transitions[0].reasoning == "because"


def test_an_unlisted_action_whose_answer_is_ruled_out_is_not_counted_as_accepted() -> None:
    lm = ScriptedLM(answer=looker)
    model = LMExperienceModel(lm, ExperienceModelConfig(max_retries=0))
    env = SyntheticEnv(model, None, CheckingDomain(), SyntheticEnvConfig(check_transitions=True, top_k=0, seeded_episodes=False))
    _, stats = rollout(
        tasks=[TASK], envs=[env], act=lambda prompts: ["<action>look</action>"] * len(prompts),
        max_steps=2, history_window=0, seeds=[0], source="synthetic", tag="t", step_many=step_many,
    )
    assert stats.implausible_answers == 1 and stats.unlisted_actions == 1
    assert stats.unlisted_accepted == 0  # the answer ended the episode as the model's failure


def test_a_buffer_or_model_that_breaks_its_contract_is_named_in_one_line() -> None:
    # a short retrieval left the steps past its end without demos; a dict answer failed as an
    # AttributeError, a None next state only later, far from the model
    from dreamgym_core.contracts import ComponentError

    class ShortBuffer(ListBuffer):
        def retrieve(self, *, queries, k):
            return super().retrieve(queries=queries, k=k)[:1]

    lm = ScriptedLM(answer=walker)
    model = LMExperienceModel(lm, ExperienceModelConfig(max_retries=0))
    envs = [SyntheticEnv(model, ShortBuffer(make_transitions(6)), None, SyntheticEnvConfig(top_k=2)) for _ in range(1)]
    envs += [SyntheticEnv(model, envs[0].buffer, None, SyntheticEnvConfig(top_k=2)) for _ in range(2)]
    for env in envs:
        env.reset(task=TASK)
    with pytest.raises(ComponentError, match=r"buffer ShortBuffer: retrieve\(\) returned 1 lists for 3 queries"):
        step_many(envs, ["go", "go", "go"])

    class DictModel:
        model_id = "dicts"

        def predict(self, *, requests):
            return [{"next_state": "room 1"} for _ in requests]

    class NoStateModel(DictModel):
        def predict(self, *, requests):
            return [ExperienceResult(reasoning="", next_state=None, reward=0.0, done=False, success=False) for _ in requests]

    for bad, what in ((DictModel(), "dict"), (NoStateModel(), "next_state NoneType")):
        env = SyntheticEnv(bad, None)
        env.reset(task=TASK)
        with pytest.raises(ComponentError, match=rf"experience model '{bad.model_id}': predict\(\) returned {what} at position 0"):
            env.step(action="go")

