"""The synthetic environment's step rules: success and the cap, resets that fail, states that do not
change, a domain's variation, the env's own refusals, and the demos' pool."""

from __future__ import annotations

import pytest

from dreamgym_core.contracts import WrongReturn
from dreamgym_core.experience import SAME_WORLD_POOL, ExperienceModelConfig, LMExperienceModel, _demos, world_namer
from dreamgym_core.records import ExperienceResult, Task, Transition
from dreamgym_core.rollout import rollout, unanswered
from dreamgym_core.synthetic import SyntheticEnv, SyntheticEnvConfig, step_many
from test_experience_doubles import ListBuffer, ScriptedLM
from test_synthetic import TASK, CheckingDomain, ListingDomain, VaryingDomain, looker, walker


def lm_model(answer=walker) -> tuple[LMExperienceModel, ScriptedLM]:
    lm = ScriptedLM(answer=answer)
    return LMExperienceModel(lm, ExperienceModelConfig(max_retries=0)), lm


def recording(env: SyntheticEnv) -> list:
    """The requests ``env``'s model is asked, as they come."""
    requests: list = []
    predict = env.model.predict
    env.model.predict = lambda **kw: (requests.extend(kw["requests"]), predict(**kw))[1]
    return requests


class SucceedingModel:
    """A Python experience model that answers success on a step it does not mark done."""

    model_id = "succeeds"

    def predict(self, *, requests):
        return [ExperienceResult(reasoning="r", next_state="You are in room 1.", reward=1.0, done=False, success=True) for _ in requests]


def test_a_models_success_ends_the_step_with_reward_one() -> None:
    # success passed on without done reached the step cap as a win with reward 0: the episode
    # counted as a success while its GRPO reward said it failed
    env = SyntheticEnv(SucceedingModel(), None, None, SyntheticEnvConfig(top_k=0, max_steps=2))
    env.reset(task=TASK)
    won = env.step(action="go")
    assert won.done and won.success and won.reward == 1.0 and not won.info["truncated"]
    (trajectory,), stats = rollout(
        tasks=[TASK], envs=[env], act=lambda prompts: ["<action>go</action>"] * len(prompts), max_steps=2,
        history_window=1, seeds=[0], source="synthetic", tag="t", step_many=step_many,
    )
    assert stats.successes == 1 and sum(t.reward for t in trajectory.transitions) == 1.0


class FailsToVaryOther(ListingDomain):
    def vary_state(self, state, actions, *, key, strength):
        if key.startswith("other/"):
            raise ValueError("cannot vary this world")
        return state


def test_a_reset_whose_variation_fails_leaves_the_last_episode_as_it_was() -> None:
    model, lm = lm_model()
    env = SyntheticEnv(model, None, FailsToVaryOther(), SyntheticEnvConfig(top_k=0, state_variation=0.5))
    env.reset(task=TASK, seed=1)
    env.step(action="go")
    before = (env._task, env._episode, env._episode_id, env._variation_key, env.model, env._obs, list(env._history), env._done)
    other = Task(id="other", instruction="Do something else.", domain="toy", payload={"initial_state": "You are in room 5."})
    with pytest.raises(ValueError, match="cannot vary this world"):
        env.reset(task=other, seed=2)
    assert (env._task, env._episode, env._episode_id, env._variation_key, env.model, env._obs, list(env._history), env._done) == before
    env.step(action="go")  # the last episode goes on under its own task
    assert "Task: Take the coin." in lm.calls[-1]["prompts"][0]


class VaryingChecker(CheckingDomain, VaryingDomain):
    """Varies every state it is given (not idempotently), and rules out a 'look' that changes the state."""


@pytest.mark.parametrize(
    "action, config",
    [
        ("dance", {"reject_unlisted": True}),  # the env refuses it
        ("look", {"check_transitions": True}),  # the domain rules the answer out
        ("look", {"check_transitions": True, "implausible_answers": "correct"}),  # the domain answers the state as it was shown
    ],
)
def test_a_step_that_changes_nothing_shows_the_state_as_it_was_not_varied_again(action, config) -> None:
    buffer = ListBuffer()
    model, _ = lm_model(looker)
    env = SyntheticEnv(model, buffer, VaryingChecker(), SyntheticEnvConfig(top_k=0, state_variation=0.5, add_to_buffer=True, **config))
    start = env.reset(task=TASK, seed=7)
    step = env.step(action=action)
    assert step.observation.text == start.text == "You are in room 0. Seen in coin-1/7 at 0.5."
    assert step.observation.admissible_actions == start.admissible_actions
    for stored in buffer.items:  # what is stored (not a model failure) shows no change either
        assert stored.state == stored.next_state == start.text


class VariesToNone(ListingDomain):
    def __init__(self, bad_in: str) -> None:
        self.bad_in = bad_in

    def vary_state(self, state, actions, *, key, strength):
        return None if self.bad_in in state else state


def test_a_variation_that_is_not_text_names_the_domain_not_the_model() -> None:
    model, lm = lm_model()
    env = SyntheticEnv(model, None, VariesToNone("room 0"), SyntheticEnvConfig(top_k=0, state_variation=0.5))
    with pytest.raises(WrongReturn, match=r"env domain VariesToNone: vary_state\(state, ...\) returned NoneType, expected a str"):
        env.reset(task=TASK, seed=1)
    env = SyntheticEnv(model, None, VariesToNone("room 1"), SyntheticEnvConfig(top_k=0, state_variation=0.5))
    env.reset(task=TASK, seed=1)
    with pytest.raises(WrongReturn, match=r"env domain VariesToNone: vary_state\(state, ...\) returned NoneType"):
        env.step(action="go")  # a generated state's variation
    assert len(lm.calls) == 1


class MoveChecker(ListingDomain):
    """Rules out a move that leaves the state as it was."""

    def __init__(self) -> None:
        self.judged = 0

    def implausible(self, *, state, action, next_state):
        self.judged += 1
        return "a move that changes nothing" if action.startswith("go") and next_state.text == state.text else ""


def test_an_action_the_env_refuses_itself_is_the_policys_invalid_step_not_judged() -> None:
    model, lm = lm_model()
    domain = MoveChecker()
    env = SyntheticEnv(model, None, domain, SyntheticEnvConfig(top_k=0, reject_unlisted=True, check_transitions=True))
    (trajectory,), stats = rollout(
        tasks=[TASK], envs=[env], act=lambda prompts: ["<action>go west</action>"] * len(prompts), max_steps=3,
        history_window=1, seeds=[0], source="synthetic", tag="t", step_many=step_many,
    )
    (refused,) = trajectory.transitions
    assert len(lm.calls) == 0 and domain.judged == 0
    assert not refused.valid and not refused.model_failed and "not among the actions" in refused.reasoning
    assert stats.invalid_actions == 1 and stats.implausible_answers == 0
    assert not unanswered(trajectory)  # the policy's step, charged to it, not dropped as the model's


def ranked(task_id: str, i: int) -> Transition:
    return Transition(task_id=task_id, episode_id=f"e{i}", step=0, state=f"s{i}", action="go", next_state=f"n{i}",
                      reward=0.0, done=False, success=False, valid=True, source="offline")  # fmt: skip


class RankedBuffer:
    """A fixed ranking: the pool's worth of another world's steps, then one of the episode's own world;
    what is added ranks last."""

    def __init__(self) -> None:
        self.base = [ranked("far/1", i) for i in range(SAME_WORLD_POOL)] + [ranked(TASK.id, SAME_WORLD_POOL)]
        self.added: list[Transition] = []

    def retrieve(self, *, queries, k):
        return [(self.base + self.added)[:k] for _ in queries]

    def add(self, *, transitions):
        self.added.extend(transitions)
        return len(transitions)


def test_same_world_demos_come_from_the_pool_only_as_in_training() -> None:
    buffer = RankedBuffer()
    model, _ = lm_model()
    env = SyntheticEnv(model, buffer, None, SyntheticEnvConfig(top_k=1, demos="same-world-first", add_to_buffer=True))
    requests = recording(env)
    env.reset(task=TASK)
    env.step(action="go")
    env.step(action="go")  # one stored step of its own: the fetch reaches the same-world step past the pool
    assert [d.state for r in requests for d in r.demos] == ["s0", "s0"]
    trained = _demos([buffer.added[1]], buffer, 1, world_of=world_namer(None))[0]
    assert requests[1].demos == trained
