"""Fixes from the verl plugin's review: each test failed on the code before its fix.

A: verl's config checks run when the pipeline is translated; B: a failed row's partial group;
C: the pipeline's seed reaches verl's seeds; D: verl's V0 trainer is refused; E: a real budget
verl would ignore is refused; F: strings reach verl's config as written; G: the agent loop's
counters as the local rollout's; H: verl settings that break one synchronous step are refused.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

import msgspec
import pytest
from verl.experimental.agent_loop.agent_loop import DictConfigWrap
from verl.utils.dataset.rl_dataset import RLHFDataset
from verl.workers.rollout.replica import TokenOutput

from dreamgym_core.errors import ConfigError
from dreamgym_core.records import Observation, StepResult, Task, TaskOutcome
from dreamgym_plugin_verl.agent_loop import RUNTIMES, DreamGymAgentLoop, EpisodeRuntime
from dreamgym_plugin_verl.curriculum import CurriculumActor, OutcomeGroups
from dreamgym_plugin_verl.trainer import VerlTrainer
from dreamgym_plugin_verl.translate import translate


TASK = Task(id="t1", instruction="go north twice", domain="test")
SAMPLING = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0, "logprobs": True}


def act(action: str) -> str:
    return f"<think>ok</think><action>{action}</action>"


class CorridorEnv:
    """Success after two 'go north' (as test_agent_loop.py's)."""

    def __init__(self) -> None:
        self.pos = 0

    def reset(self, *, task: Task, seed: int | None = None) -> Observation:
        self.pos = 0
        return Observation(text="room 0", admissible_actions=["go north", "wait"])

    def step(self, *, action: str) -> StepResult:
        self.pos += action == "go north"
        done = self.pos >= 2
        obs = Observation(text=f"room {self.pos}", admissible_actions=["go north", "wait"])
        return StepResult(observation=obs, reward=1.0 if done else 0.0, done=done, success=done)

    def close(self) -> None:
        pass


class ScriptedServer:
    """Stand-in for verl's LLM server client: fixed replies, one a turn (as test_agent_loop.py's)."""

    def __init__(self, tokenizer: Any, replies: list[str]) -> None:
        self.replies = [tokenizer.encode(r + "<|im_end|>", add_special_tokens=False) for r in replies]
        self.turns = 0

    async def generate(self, *, request_id: str, prompt_ids: list[int], sampling_params: dict[str, Any], **_: Any) -> TokenOutput:
        ids = self.replies[min(self.turns, len(self.replies) - 1)][: sampling_params["max_tokens"]]
        self.turns += 1
        return TokenOutput(token_ids=ids, log_probs=[-0.5] * len(ids), extra_fields={})


def pipeline(algo: dict | None = None, loop: dict | None = None, **extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "plugins": [], "env": {"name": "e"}, "policy": {"name": "p"},
        "algo": {"name": "verl-grpo", "config": {"model_path": "/models/x", **(algo or {})}},
        "loop": {"mode": "real", "warmstart_epochs": 0, **(loop or {})},
    }
    return data | extra


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


# --- A: verl's validate_config when the pipeline is translated ------------------------------


def test_a_batch_verl_cannot_split_over_the_gpus_is_refused_when_translated(resolve_dict):
    # verl's AssertionError came in _run_main_ppo, after the offline data, SFT and warm start
    resolved = resolve_dict(pipeline({"n_gpus_per_node": 4}, {"tasks_per_iteration": 2, "group_size": 1}))
    with pytest.raises(ConfigError) as exc:
        translate(resolved)
    message = one_line(exc)
    assert message.startswith("pipeline.yaml: verl's validate_config refuses the translated config: real_train_batch_size (2)")
    assert "loop.tasks_per_iteration x loop.group_size" in message and "algo.config.n_gpus_per_node" in message
    with pytest.raises(ConfigError, match="real_train_batch_size"):  # `dreamgym backend-config` shows it too
        VerlTrainer.backend_config(resolved)


def test_a_typo_in_extra_overrides_is_a_one_line_config_error(resolve_dict):
    resolved = resolve_dict(pipeline({"extra_overrides": ["actor_rollout_ref.actor.optim.lrr=1e-5"]}))
    with pytest.raises(ConfigError) as exc:
        translate(resolved)
    assert one_line(exc).startswith(
        "pipeline.yaml: verl's config refuses algo.config.extra_overrides 'actor_rollout_ref.actor.optim.lrr=1e-5': "
        "Could not override 'actor_rollout_ref.actor.optim.lrr'"
    )
    resolved = resolve_dict(pipeline({"extra_overrides": ["trainer.val_before_train=[a"]}))
    with pytest.raises(ConfigError, match=r"extra_overrides 'trainer.val_before_train=\[a'"):
        translate(resolved)


@pytest.mark.parametrize(
    ("algo", "message"),
    [
        ({"tensor_parallel_size": 2}, r"^pipeline.yaml: algo.config.tensor_parallel_size=2 must divide the GPU count"),
        ({"tensor_parallel_size": 3, "n_gpus_per_node": 4}, r"tensor_parallel_size=3 must divide the GPU count, [^\n]+ = 4$"),
        ({"extra_overrides": ["actor_rollout_ref.rollout.tensor_model_parallel_size=2"]}, r"tensor_model_parallel_size=2 must divide"),
    ],
)
def test_tensor_parallelism_must_divide_the_gpus(resolve_dict, algo, message):
    with pytest.raises(ConfigError, match=message):
        translate(resolve_dict(pipeline(algo, {"tasks_per_iteration": 4, "group_size": 4})))


def test_the_check_reads_no_weights_and_is_skipped_without_verl(resolve_dict, monkeypatch):
    # PPO's critic model config reads config.json; the weights may not exist yet (the warm start writes them)
    translate(resolve_dict(pipeline() | {"algo": {"name": "verl-ppo", "config": {"model_path": "/nowhere"}}}))
    bad = resolve_dict(pipeline({"n_gpus_per_node": 4}, {"tasks_per_iteration": 2, "group_size": 1}))
    monkeypatch.setitem(sys.modules, "verl.utils.config", None)  # import verl.utils.config raises ImportError
    assert translate(bad)


# --- B: a failed row's partial group ---------------------------------------------------------


class _Recorder:
    def __init__(self) -> None:
        self.observed: list[TaskOutcome] = []

    def next_tasks(self, *, n: int) -> list[Task]:
        return [TASK] * n

    def observe(self, *, outcomes: list[TaskOutcome]) -> None:
        self.observed += list(outcomes)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def _record(actor: CurriculumActor, reward: float, group: str = "") -> None:
    actor.record(msgspec.msgpack.encode(TaskOutcome(task=TASK, rewards=[reward])), group)


def test_a_failed_rows_partial_group_is_dropped_when_the_next_step_is_drawn(caplog):
    # reviewer's t6: a session of step k failed; step k+1's first episodes completed the old group
    actor = CurriculumActor(_Recorder, group_size=4)
    actor.next_tasks(1)
    for reward in (1.0, 1.0, 1.0):  # the 4th session raised: verl drops the row
        _record(actor, reward, "uid-a")
    with caplog.at_level(logging.WARNING, logger="dreamgym_plugin_verl.curriculum"):
        actor.next_tasks(1)
    assert "1 incomplete group" in caplog.text
    for reward in (0.0, 0.0, 0.0, 0.0):
        _record(actor, reward, "uid-b")
    actor.next_tasks(1)
    assert [o.rewards for o in actor.curriculum.observed] == [[0.0, 0.0, 0.0, 0.0]]
    assert actor.groups.pending == {}


def test_sessions_are_grouped_by_their_row_and_a_checkpoint_keeps_the_keys():
    # one task drawn twice in a step: two rows, two groups, whatever order the sessions finish in
    actor = CurriculumActor(_Recorder, group_size=2)
    actor.next_tasks(2)
    _record(actor, 1.0, "r1")
    _record(actor, 0.0, "r2")
    restored = CurriculumActor(_Recorder, group_size=2)
    restored.load_state_dict(actor.state_dict())
    assert set(restored.groups.pending) == {"r1", "r2"}
    _record(restored, 1.0, "r1")
    _record(restored, 0.0, "r2")
    restored.next_tasks(2)
    assert sorted(o.rewards for o in restored.curriculum.observed) == [[0.0, 0.0], [1.0, 1.0]]
    # without a key (older checkpoints, the plain API) outcomes still group by task
    groups = OutcomeGroups(group_size=2)
    assert groups.add(TaskOutcome(task=TASK, rewards=[1.0])) == []
    assert groups.add(TaskOutcome(task=TASK, rewards=[0.0]))[0].rewards == [1.0, 0.0]


class _ClosingFails(CorridorEnv):
    def close(self) -> None:
        raise OSError("the browser is gone")


class _DoneTruncated(CorridorEnv):
    """Ends every step as the env's own step cap does (done, info['truncated'])."""

    def step(self, *, action: str) -> StepResult:
        return StepResult(observation=Observation(text="cut"), reward=0.0, done=True, info={"truncated": True})


class _LenientFailedModel(CorridorEnv):
    """Accepts an unlisted action with an answer the domain ruled out as the model's failure."""

    def step(self, *, action: str) -> StepResult:
        return StepResult(observation=Observation(text="?"), reward=0.0, done=True, valid=True, info={"model_failed": True})


@pytest.fixture
def play(resolve_dict, compose, chat_tokenizer, tmp_path):
    """One episode of TASK with scripted replies and the env ``make_env`` builds; returns
    (output, reported outcomes with their group keys)."""

    def run(make_env: Any, replies: list[str], **kwargs: Any) -> tuple[Any, list[tuple[TaskOutcome, str]]]:
        resolved = resolve_dict(pipeline({"max_response_length": 1024}, {"max_steps": 4}, run_dir=str(tmp_path / "run")))
        cfg = compose(translate(resolved))
        reported: list[tuple[TaskOutcome, str]] = []
        RUNTIMES["review"] = EpisodeRuntime(
            make_env=make_env, max_steps=4, report=lambda outcome, group="": reported.append((outcome, group)),
        )
        server = ScriptedServer(chat_tokenizer, replies)

        async def main() -> Any:
            loop = DreamGymAgentLoop(
                trainer_config=DictConfigWrap(cfg), server_manager=server, tokenizer=chat_tokenizer,
                processor=None, dataset_cls=RLHFDataset, data_config=DictConfigWrap(cfg.data), runtime="review",
            )
            row = {"task": msgspec.json.encode(TASK).decode(), "phase": "real", "seed": 3, "raw_prompt": [], **kwargs}
            return await loop.run(dict(SAMPLING), **row)

        try:
            return asyncio.run(main()), reported
        finally:
            RUNTIMES.pop("review", None)

    return run


def test_an_env_that_cannot_be_made_fails_its_episode_not_verls_row(play):
    def make_env(phase: str) -> Any:
        raise RuntimeError("no simulator left")

    out, reported = play(make_env, [act("go north")], uid="row-1")
    info = out.extra_fields["reward_extra_info"]
    assert info["env_errors"] == 1.0 and out.reward_score == 0.0
    assert [(o.rewards, group) for o, group in reported] == [([0.0], "row-1")]


def test_an_env_that_fails_to_close_is_logged_and_the_episode_kept(play, caplog):
    with caplog.at_level(logging.WARNING, logger="dreamgym_plugin_verl.agent_loop"):
        out, reported = play(lambda phase: _ClosingFails(), [act("go north"), act("go north")], uid="row-2")
    assert out.reward_score == 1.0 and out.extra_fields["reward_extra_info"]["success"] == 1.0
    assert "env close failed" in caplog.text and "the browser is gone" in caplog.text
    assert [(o.rewards, group) for o, group in reported] == [([1.0], "row-2")]


# --- G: counters as the local rollout counts them ---------------------------------------------


def test_a_step_the_env_cuts_counts_as_truncated(play):
    out, _ = play(lambda phase: _DoneTruncated(), [act("go north")])
    assert out.extra_fields["reward_extra_info"]["truncated"] == 1.0


def test_an_unlisted_action_answered_by_a_failed_model_is_not_accepted(play):
    out, _ = play(lambda phase: _LenientFailedModel(), [act("fly")])
    info = out.extra_fields["reward_extra_info"]
    assert info["unlisted_actions"] == 1.0 and info["unlisted_accepted"] == 0.0 and info["model_parse_failures"] == 1.0


# --- C: the pipeline's seed ---------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 123])
def test_the_pipeline_seed_reaches_verls_seeds(resolve_dict, compose, seed):
    data = pipeline(seed=seed) | {"algo": {"name": "verl-ppo", "config": {"model_path": "/m"}}}
    cfg = compose(translate(resolve_dict(data)))
    actor = cfg.actor_rollout_ref.actor
    assert cfg.actor_rollout_ref.rollout.seed == seed
    assert actor.data_loader_seed == seed and actor.fsdp_config.seed == seed
    assert cfg.actor_rollout_ref.ref.fsdp_config.seed == seed
    assert cfg.critic.data_loader_seed == seed and cfg.critic.fsdp.seed == seed


# --- D and H: verl settings the agent loop and curriculum cannot follow ------------------------


@pytest.mark.parametrize(
    "override",
    [
        "trainer.use_v1=False", "trainer.use_v1=false", "++trainer.use_v1=False",
        "trainer.v1.trainer_mode=colocate_async", "trainer.v1.trainer_mode='separate_async'",
        "trainer.v1.sampler.sync_refill_failed_groups=True", "algorithm.filter_groups.enable=true",
    ],
)
def test_settings_that_break_one_synchronous_step_are_refused(resolve_dict, override):
    with pytest.raises(ConfigError) as exc:
        translate(resolve_dict(pipeline({"extra_overrides": [override]})))
    assert one_line(exc).startswith(f"pipeline.yaml: algo.config.extra_overrides {override!r} is refused: ")
    # the synchronous defaults said again are fine
    translate(resolve_dict(pipeline({"extra_overrides": ["trainer.use_v1=True", "trainer.v1.trainer_mode=sync"]})))


def test_the_composed_config_is_checked_for_them_too(resolve_dict):
    from dreamgym_plugin_verl.translate import check_with_verl

    resolved = resolve_dict(pipeline())
    overrides = translate(resolved) + ["trainer.v1.trainer_mode=colocate_async"]
    with pytest.raises(ConfigError, match=r"^pipeline.yaml: algo.config.extra_overrides set trainer.v1.trainer_mode; it is refused"):
        check_with_verl(resolved, overrides)


# --- E: loop.real_budget ------------------------------------------------------------------------


def test_a_real_budget_that_could_cap_the_real_phase_is_refused(resolve_dict):
    synthetic = {"experience_model": {"name": "m"}, "encoder": {"name": "c"}, "buffer": {"name": "b"}}
    loop = {"mode": "s2r", "iterations": 4, "tasks_per_iteration": 2, "group_size": 2, "max_steps": 5}
    # one real step (ceil(4 x 0.75) = 3 synthetic) x 2 tasks x 2 episodes x 5 steps = 20 transitions at most
    with pytest.raises(ConfigError) as exc:
        translate(resolve_dict(pipeline(loop=loop | {"real_budget": 19}, **synthetic)))
    assert one_line(exc).startswith("pipeline.yaml: loop.real_budget=19 can cap the real phase")
    assert "raise loop.real_budget to 20" in str(exc.value)
    assert translate(resolve_dict(pipeline(loop=loop | {"real_budget": 20}, **synthetic)))


# --- F: strings as written ----------------------------------------------------------------------

NAMES = ["null", "NULL", "true", "True", "2024", "1e3", "nan", "inf", "a'b", "it's", "my run", "a,b", "x=y",
         "a\\b", "a\\", "x\\${y}", "${oc.env:HOME}", "a\\'b", "plain_name"]


@pytest.mark.parametrize("name", NAMES)
def test_strings_reach_verls_config_as_written(resolve_dict, compose, name, tmp_path):
    run_dir = f"{tmp_path}/runs/{name}"
    data = pipeline({"model_path": f"/models/{name}"}, run_dir=run_dir)
    cfg = compose(translate(resolve_dict(data)))
    assert cfg.trainer.experiment_name == name
    assert cfg.actor_rollout_ref.model.path == f"/models/{name}"
    assert cfg.data.train_files == f"{run_dir}/verl/train_tasks.jsonl"
