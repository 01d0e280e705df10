"""The DreamGym agent loop against verl's agent-loop interface.

The generation server is a stand-in (``ScriptedServer``): verl's real servers are
vLLM/SGLang on GPUs. It returns fixed token ids per turn and records the prompt ids it
was given. ``CorridorEnv`` is a small deterministic Env written for these tests. Token
merging, the chat template and the config are verl's and transformers' own code.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from verl.experimental.agent_loop.agent_loop import DictConfigWrap, _agent_loop_registry
from verl.utils.dataset.rl_dataset import RLHFDataset
from verl.workers.rollout.replica import TokenOutput

import msgspec

from dreamgym_core.records import Observation, StepResult, Task, TaskOutcome, Transition
from dreamgym_plugin_verl.agent_loop import RUNTIMES, DreamGymAgentLoop, EpisodeRuntime, episode_reward
from dreamgym_plugin_verl.config import AGENT_LOOP_NAME
from dreamgym_plugin_verl.translate import translate

TASK = Task(id="t1", instruction="go north twice", domain="test")


class CorridorEnv:
    """Success after two 'go north'; 'jump' is invalid; anything else changes nothing."""

    def __init__(self) -> None:
        self.pos = 0
        self.closed = 0
        self.seed: int | None = None

    def reset(self, *, task: Task, seed: int | None = None) -> Observation:
        self.seed = seed
        if task.payload.get("broken"):
            raise RuntimeError("engine crashed")
        self.pos = 0
        return Observation(text="room 0", admissible_actions=["go north", "wait"])

    def step(self, *, action: str) -> StepResult:
        if action == "jump":
            return StepResult(observation=Observation(text=f"room {self.pos}"), reward=0.0, done=False, valid=False)
        if action == "wait" and self.pos == 1:  # as the synthetic env answers an unparsable model output
            return StepResult(observation=Observation(text="?"), reward=0.0, done=True, valid=False, info={"parse_status": "failed"})
        if action == "look":  # as the synthetic env answers an implausible one it corrects (state kept)
            return StepResult(observation=Observation(text=f"room {self.pos}", admissible_actions=["go north", "wait"]), reward=0.0,
                              done=False, info={"implausible": "the list changed"})
        if action == "inventory":  # ... and one it fails (loop.implausible_answers: fail)
            return StepResult(observation=Observation(text="?"), reward=0.0, done=True, valid=False,
                              info={"implausible": "the score changed", "model_failed": True})
        if action == "go north":
            self.pos += 1
        done = self.pos >= 2
        obs = Observation(text=f"room {self.pos}", admissible_actions=["go north", "wait"])
        return StepResult(observation=obs, reward=1.0 if done else 0.0, done=done, success=done)

    def close(self) -> None:
        self.closed += 1


class ScriptedServer:
    """Stand-in for verl's LLM server client: fixed replies, records every request."""

    def __init__(self, tokenizer: Any, replies: list[str], *, moe_layers: int = 0) -> None:
        self.replies = [tokenizer.encode(r + "<|im_end|>", add_special_tokens=False) for r in replies]
        self.requests: list[dict[str, Any]] = []
        self.moe_layers = moe_layers  # > 0: route as an MoE policy's server does, one expert per layer

    async def generate(self, *, request_id: str, prompt_ids: list[int], sampling_params: dict[str, Any], **_: Any) -> TokenOutput:
        # a real server stops at max_tokens (the loop's turn_max_tokens or what is left of the budget)
        ids = self.replies[min(len(self.requests), len(self.replies) - 1)][: sampling_params["max_tokens"]]
        # verl's LLMServerClient.generate stamps the weights version that served the turn
        # (verl/workers/rollout/llm_server.py:160-162); here it advances by one per turn.
        version = 3 + len(self.requests)
        self.requests.append({"prompt_ids": list(prompt_ids), "sampling_params": dict(sampling_params)})
        extra = {"global_steps": version, "min_global_steps": version, "max_global_steps": version}
        return TokenOutput(token_ids=ids, log_probs=[-0.5] * len(ids), extra_fields=extra, routed_experts=self._routing(len(prompt_ids) + len(ids)))

    def _routing(self, length: int) -> Any:
        """vLLM's routing rows for a request: one per token of prompt + generation, shape
        (tokens, layers, top-k); here token i goes to expert i % 97 + turn (1, 2, ...) in every layer,
        so a test can tell which turn's rows and which positions reached verl."""
        if not self.moe_layers:
            return None
        import numpy as np

        experts = np.arange(length) % 97 + len(self.requests)
        return np.repeat(experts[:, None, None], self.moe_layers, axis=1).astype(np.int32)


# What verl's AgentLoopWorker passes (agent_loop.py:590-596; calculate_log_probs defaults to True).
SAMPLING = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0, "logprobs": True}


def act(action: str) -> str:
    return f"<think>ok</think><action>{action}</action>"


@pytest.fixture
def episode(resolve_dict, compose, chat_tokenizer, tmp_path):
    """Runs one episode with scripted replies; returns (output, server, runtime record)."""

    def run(
        replies: list[str], *, max_steps: int = 5, response_length: int = 2048, task: Task = TASK, kwargs: dict | None = None,
        moe_layers: int = 0, turn_max_tokens: int = 256,
    ) -> tuple[Any, ScriptedServer, dict]:
        resolved = resolve_dict({
            "plugins": [], "env": {"name": "e"}, "policy": {"name": "p"},
            "algo": {"name": "verl-grpo", "config": {"model_path": "/models/x", "max_response_length": response_length}},
            "loop": {"mode": "real", "max_steps": max_steps}, "run_dir": str(tmp_path / "run"),
        })
        cfg = compose(translate(resolved))
        record: dict[str, Any] = {"stored": [], "reported": [], "envs": [], "publish_on_event_loop": []}

        def on_event_loop() -> bool:
            try:
                asyncio.get_running_loop()
                return True
            except RuntimeError:
                return False

        def store(transitions: list[Transition]) -> None:
            record["publish_on_event_loop"].append(on_event_loop())
            record["stored"].extend(transitions)

        def report(outcome: TaskOutcome, group: str = "") -> None:
            record["publish_on_event_loop"].append(on_event_loop())
            record["reported"].append(outcome)
            record.setdefault("groups", []).append(group)

        def make_env(phase: str) -> CorridorEnv:
            record["envs"].append((phase, CorridorEnv()))
            return record["envs"][-1][1]

        RUNTIMES["test"] = EpisodeRuntime(
            make_env=make_env, max_steps=max_steps, invalid_action_penalty=0.1,
            store=store, report=report, turn_max_tokens=turn_max_tokens,
        )
        server = ScriptedServer(chat_tokenizer, replies, moe_layers=moe_layers)

        async def main() -> Any:
            loop = DreamGymAgentLoop(
                trainer_config=DictConfigWrap(cfg), server_manager=server, tokenizer=chat_tokenizer,
                processor=None, dataset_cls=RLHFDataset, data_config=DictConfigWrap(cfg.data), runtime="test",
            )
            encoded = msgspec.json.encode(task).decode()
            row = {"task": encoded, "phase": "real", "seed": 3, "raw_prompt": [], **(kwargs or {})}
            return await loop.run(dict(SAMPLING), **row)

        return asyncio.run(main()), server, record

    yield run
    RUNTIMES.pop("test", None)


def segments(mask: list[int]) -> list[tuple[int, int, int]]:
    """(value, start, end) runs of a 0/1 mask."""
    runs, start = [], 0
    for i in range(1, len(mask) + 1):
        if i == len(mask) or mask[i] != mask[start]:
            runs.append((mask[start], start, i))
            start = i
    return runs


def test_turns_are_joined_as_the_chat_template_joins_them(episode, chat_tokenizer):
    # The test model's type names no verl builder, as SmolLM2's ('llama') does not: verl's
    # generic builder put the environment's turn right after <|im_end|>, without the newline
    # of the chat template the warm start trained on.
    out, _, _ = episode([act("go north"), act("go north")])
    text = chat_tokenizer.decode(out.prompt_ids + out.response_ids)
    assert "<|im_end|><|im_start|>" not in text
    assert text.count("<|im_end|>\n<|im_start|>user") == 1  # the environment turn after the first reply


def test_a_turn_cut_by_turn_max_tokens_is_closed_as_the_chat_template_closes_it(episode, chat_tokenizer):
    # A reply cut after its action parses plays on. The environment's turn used to follow the cut
    # text directly ('...</action> and then<|im_start|>user'), a context unlike the chat template
    # and the warm start: later turns were played and trained on it.
    keep = len(chat_tokenizer.encode(act("wait"), add_special_tokens=False)) + 3
    out, server, _ = episode([act("wait") + " and then some more words"], max_steps=3, turn_max_tokens=keep)
    runs = segments(out.response_mask)
    assert [r[0] for r in runs] == [1, 0, 1, 0, 1]
    for value, start, end in runs:
        if value:  # the policy's tokens, verbatim: cut, without an end of turn
            assert out.response_ids[start:end] == server.replies[0][:keep]
        else:  # the template's end of turn, then the environment's turn; neither is the policy's
            assert chat_tokenizer.decode(out.response_ids[start:end]).startswith("<|im_end|>\n<|im_start|>user\n")
            assert out.response_logprobs[start:end] == [0.0] * (end - start)
    text = chat_tokenizer.decode(out.prompt_ids + out.response_ids)
    assert text.count("<|im_start|>") == text.count("<|im_end|>\n<|im_start|>") + 1  # every turn after the first closed
    assert out.extra_fields["reward_extra_info"]["episode_steps"] == 3.0


def test_the_end_of_turn_is_the_chat_templates(chat_tokenizer):
    from dreamgym_plugin_verl.agent_loop import _end_of_turn

    # ChatML's <|im_end|>, without the newline the Continuous Token builder puts after it
    assert _end_of_turn(chat_tokenizer, {}) == [chat_tokenizer.convert_tokens_to_ids("<|im_end|>")]

    class NoTemplate:
        eos_token_id = 7

        def apply_chat_template(self, *args: Any, **kwargs: Any) -> str:
            raise ValueError("no chat template")

    assert _end_of_turn(NoTemplate(), {}) == [7]  # a turn the policy ends itself ends with EOS


def test_registered_with_verl():
    assert _agent_loop_registry[AGENT_LOOP_NAME]["_target_"].endswith("agent_loop.DreamGymAgentLoop")


def test_success_masks_tokens_and_places_reward(episode, chat_tokenizer):
    out, server, record = episode([act("go north"), act("go north")])
    first, second = server.replies[0], server.replies[1]
    runs = segments(out.response_mask)
    # policy turn (1), environment turn (0), policy turn (1); the response ends on the policy.
    assert [r[0] for r in runs] == [1, 0, 1]
    assert out.response_ids[runs[0][1] : runs[0][2]] == first
    assert out.response_ids[runs[2][1] : runs[2][2]] == second
    env_text = chat_tokenizer.decode(out.response_ids[runs[1][1] : runs[1][2]])
    assert "room 1" in env_text and "Step 2 of at most 5" in env_text
    # token-in/token-out: each request carries the whole stream so far, verbatim.
    assert server.requests[0]["prompt_ids"] == out.prompt_ids
    assert server.requests[1]["prompt_ids"] == out.prompt_ids + out.response_ids[: runs[1][2]]
    assert "room 0" in chat_tokenizer.decode(out.prompt_ids)
    assert out.reward_score == 1.0
    scores = out.as_dict()["rm_scores"]
    assert scores[-1].item() == 1.0 and scores[:-1].abs().sum().item() == 0.0
    assert out.response_mask[-1] == 1
    assert out.response_logprobs == [0.0 if m == 0 else -0.5 for m in out.response_mask]
    info = out.extra_fields["reward_extra_info"]
    assert info["success"] == 1.0 and info["episode_steps"] == 2.0 and info["truncated"] == 0.0
    # the episode went to the shared buffer and curriculum; the env was closed.
    assert [t.action for t in record["stored"]] == ["go north", "go north"]
    assert all(isinstance(t, Transition) and t.source == "real" for t in record["stored"])
    assert record["reported"] == [TaskOutcome(task=TASK, rewards=[1.0])]
    assert record["envs"][0][0] == "real" and record["envs"][0][1].closed == 1


def test_stops_at_max_steps(episode):
    out, server, _ = episode([act("wait")], max_steps=3)
    assert len(server.requests) == 3
    assert [r[0] for r in segments(out.response_mask)] == [1, 0, 1, 0, 1]
    assert out.reward_score == 0.0
    assert out.extra_fields["reward_extra_info"]["truncated"] == 1.0


def test_invalid_actions_counted_and_penalised(episode):
    out, _, record = episode([act("jump"), act("go north"), act("jump"), act("go north")])
    info = out.extra_fields["reward_extra_info"]
    assert info["invalid_actions"] == 2.0 and info["success"] == 1.0
    assert out.reward_score == pytest.approx(episode_reward([0, 0, 0, 1], 2, 0.1)) == pytest.approx(0.8)
    assert [t.valid for t in record["stored"]] == [False, True, False, True]


@pytest.mark.parametrize(
    ("replies", "score"),
    [
        ([act("jump"), act("go north"), act("go north")], 0.9),  # a success with one refused action
        ([act("jump"), act("wait")], -0.1),  # a failure with one (max_steps 2)
        (["no tags"], -0.1),  # unparsable: ends at once
    ],
)
def test_the_curriculum_gets_the_outcome_reward_not_the_penalised_score(episode, replies, score):
    """verl trains on the penalised reward; the curriculum observes, as in the local loop,
    the outcome reward (Trajectory.outcome_reward: the environment's rewards summed), whose
    variance over a group is reward-entropy's task value."""
    out, _, record = episode(replies, max_steps=3 if score > 0 else 2)
    assert out.reward_score == pytest.approx(score)
    success = out.extra_fields["reward_extra_info"]["success"]
    assert record["reported"] == [TaskOutcome(task=TASK, rewards=[success])]
    assert record["reported"][0].rewards == [sum(t.reward for t in record["stored"])]


def test_each_session_of_a_row_resets_with_its_own_seed(episode, tmp_path):
    """verl's V1 worker plays a row rollout.n times with the same kwargs plus ``session_id``
    (agent_loop_tq.py _run_prompt); the local loop gives each episode of a group its own seed,
    which loop.state_variation varies the synthetic world by. Validation rows keep theirs."""
    from dreamgym_plugin_verl.dataset import DreamGymTaskDataset, write_tasks

    seeds = []
    for session in range(4):
        _, _, record = episode([act("go north")], kwargs={"seed": 7, "session_id": session})
        seeds.append(record["envs"][0][1].seed)
    # row seed * rollout.n (loop.group_size, 4 by default) + session: the row's block of the run's seeds
    assert seeds == [28, 29, 30, 31]
    write_tasks(tmp_path / "val.jsonl", [TASK])
    val_row = DreamGymTaskDataset(data_files=str(tmp_path / "val.jsonl"))[0]
    val_row.pop("agent_name")
    _, _, record = episode([act("go north")], kwargs={**val_row, "session_id": 0})
    assert record["envs"][0][1].seed == val_row["seed"]  # val_kwargs.n = 1


def test_an_experience_model_failure_is_not_the_policys_invalid_action(episode):
    out, _, record = episode([act("go north"), act("wait")])
    info = out.extra_fields["reward_extra_info"]
    assert info["invalid_actions"] == 0.0 and out.reward_score == 0.0  # no penalty: not the policy's fault
    assert [t.model_failed for t in record["stored"]] == [False, True]


def test_experience_model_failures_are_counted_as_the_local_rollout_counts_them(episode):
    # a corrected implausible answer plays on; a failed one ends the episode, uncharged to the policy
    out, _, record = episode([act("look"), act("go north"), act("inventory")])
    info = out.extra_fields["reward_extra_info"]
    assert info["implausible_answers"] == 2.0 and info["model_parse_failures"] == 0.0
    assert info["invalid_actions"] == 0.0 and info["episode_steps"] == 3.0
    assert [t.model_failed for t in record["stored"]] == [False, False, True]
    out, _, _ = episode([act("go north"), act("wait")])
    info = out.extra_fields["reward_extra_info"]
    assert info["model_parse_failures"] == 1.0 and info["implausible_answers"] == 0.0


def test_unparsable_output_ends_episode(episode):
    out, server, record = episode(["I will not use tags"])
    assert len(server.requests) == 1
    assert set(out.response_mask) == {1}
    assert out.extra_fields["reward_extra_info"]["unparsed_actions"] == 1.0
    assert out.reward_score == pytest.approx(-0.1)
    assert record["stored"] == []


def test_reset_failure_fails_only_this_episode(episode):
    broken = Task(id="t2", instruction="x", domain="test", payload={"broken": True})
    out, server, record = episode([act("go north")], task=broken, kwargs={"global_steps": 7})
    assert server.requests == [] and out.reward_score == 0.0
    # verl's V1 worker calls as_dict() on every output (verl/trainer/ppo/v1/agent_loop_tq.py:189),
    # which puts the reward on the last response token (agent_loop.py:146-147): the response
    # needs one token, and it carries no loss.
    assert len(out.response_ids) == 1 and out.response_mask == [0] and out.response_logprobs == [0.0]
    assert out.as_dict()["rm_scores"].tolist() == [0.0]
    # the servers play training step 7 with the weights pushed at the end of step 6
    assert out.extra_fields["min_global_steps"] == 6 == out.extra_fields["max_global_steps"]
    assert out.extra_fields["reward_extra_info"]["env_errors"] == 1.0
    assert record["envs"][0][1].closed == 1 and record["reported"] == [TaskOutcome(task=broken, rewards=[0.0])]


def test_response_budget_caps_turns(episode):
    out, server, _ = episode([act("wait")], max_steps=50, response_length=64)
    assert len(out.response_ids) <= 64 and len(server.requests) < 50
    assert all(r["sampling_params"]["max_tokens"] <= 64 for r in server.requests)
    assert out.extra_fields["reward_extra_info"]["truncated"] == 1.0


def verl_batch(out: Any, compose, tokenizer) -> Any:
    """verl's own padding and batching (AgentLoopWorker._agent_loop_postprocess/_postprocess)
    of one output of this loop."""
    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker
    from verl.utils.config import omega_conf_to_dataclass

    cfg = compose(["data.max_prompt_length=256", "data.max_response_length=512", "actor_rollout_ref.rollout.name=vllm"])
    worker = object.__new__(AgentLoopWorker)  # only the attributes these two methods read
    worker.rollout_config = omega_conf_to_dataclass(cfg.actor_rollout_ref.rollout)
    worker.tokenizer, worker.processor = tokenizer, None
    worker.reward_loop_worker_handles, worker.distillation_enabled = None, False
    worker.mm_processor_kwargs = {}
    internal = asyncio.run(worker._agent_loop_postprocess(out, False, raw_prompt=[]))
    return worker._postprocess([internal], input_non_tensor_batch=None, validate=False)


def test_verl_postprocess_puts_reward_on_last_policy_token(episode, compose, chat_tokenizer):
    """verl's own padding and batching (AgentLoopWorker._agent_loop_postprocess/_postprocess)
    on this loop's output: rm_scores sits on the last token whose response_mask is 1."""
    out, _, _ = episode([act("jump"), act("go north"), act("go north")])
    batch = verl_batch(out, compose, chat_tokenizer)
    mask, scores = batch.batch["response_mask"][0], batch.batch["rm_scores"][0]
    last_policy = int(mask.nonzero().max())
    assert scores[last_policy].item() == pytest.approx(0.9)
    assert scores.abs().sum().item() == pytest.approx(0.9)
    assert int(mask.sum()) == sum(out.response_mask)


def test_an_moe_policys_routed_experts_reach_verls_batch(episode, compose, chat_tokenizer):
    """Router replay trains an MoE policy on the experts its rollout routed each token to. As
    verl's tool agent, the loop keeps the last turn's routing rows (they cover every earlier
    turn); verl's postprocess places them by position, so each token of the padded batch must
    carry the expert the last turn routed it to, and padding none."""
    import numpy as np

    out, server, _ = episode([act("jump"), act("go north"), act("go north")], moe_layers=2)
    assert len(server.requests) == 3
    total = len(out.prompt_ids) + len(out.response_ids)
    expected = np.arange(total) % 97 + 3  # the third turn's rows
    assert out.routed_experts.shape == (total, 2, 1)
    assert (out.routed_experts[:, 1, 0] == expected).all()

    batch = verl_batch(out, compose, chat_tokenizer)
    routed, attention = batch.batch["routed_experts"][0], batch.batch["attention_mask"][0].bool()
    assert routed[attention][:, 0, 0].tolist() == expected.tolist()
    assert not routed[~attention].any()


def test_a_dense_policy_passes_no_routed_experts(episode):
    out, _, _ = episode([act("go north"), act("go north")])
    assert out.routed_experts is None


def test_unlisted_actions_counted_with_those_the_env_accepted(episode):
    # "dance" is not offered and the corridor lets it pass; "jump" is not offered and refused.
    out, _, _ = episode([act("dance"), act("jump"), act("go north"), act("go north")])
    info = out.extra_fields["reward_extra_info"]
    assert info["unlisted_actions"] == 2.0 and info["unlisted_accepted"] == 1.0 and info["success"] == 1.0


def test_server_weight_versions_reach_verl_v1_tags(episode):
    """verl's V1 worker tags every output with extra_fields' min/max_global_steps
    (verl/trainer/ppo/v1/agent_loop_tq.py:214-218) and the trainer reads the tags with
    np.array(..., dtype=int) (trainer_base.py:1897-1898), so the loop must pass on the
    versions its turns were generated with: first turn's min, last turn's max."""
    import numpy as np

    out, server, _ = episode([act("go north"), act("go north")])
    assert len(server.requests) == 2
    assert out.extra_fields["min_global_steps"] == 3 and out.extra_fields["max_global_steps"] == 4
    tags = [{"min_global_steps": out.extra_fields.get("min_global_steps"), "max_global_steps": out.extra_fields.get("max_global_steps")}]
    assert np.array([t["min_global_steps"] for t in tags], dtype=int).tolist() == [3]


def test_validation_episodes_stay_out_of_the_buffer_and_curriculum(episode, tmp_path):
    """verl plays the val files (eval.split tasks) through the same agent loop. As in the local
    loop's evaluation, those episodes must not reach the shared buffer (the experience model
    would retrieve held-out games) nor the curriculum; training rows still publish."""
    from dreamgym_plugin_verl.curriculum import TaskFeed
    from dreamgym_plugin_verl.dataset import DreamGymTaskDataset, write_tasks

    write_tasks(tmp_path / "val.jsonl", [TASK])
    val_row = DreamGymTaskDataset(data_files=str(tmp_path / "val.jsonl"))[0]
    val_row.pop("agent_name")  # verl's worker consumes it (AgentLoopWorker._run_agent_loop)
    out, _, record = episode([act("go north"), act("go north")], kwargs=val_row)
    assert out.extra_fields["reward_extra_info"]["success"] == 1.0
    assert record["stored"] == [] and record["reported"] == []

    feed = TaskFeed(lambda n, step: [TASK] * n, batch_size=1, iterations=1, phase=lambda step: "real")
    train_row = feed.row(0)
    train_row.pop("agent_name")
    _, _, record = episode([act("go north"), act("go north")], kwargs=train_row)
    assert len(record["stored"]) == 2 and record["reported"] == [TaskOutcome(task=TASK, rewards=[1.0])]


def test_publishing_runs_off_the_event_loop(episode):
    """store/report are blocking Ray calls to the shared actors (RemoteBuffer.add encodes the
    episode in the buffer actor). verl runs every episode of a worker as a coroutine on one
    event loop (AgentLoopWorker.generate_sequences, asyncio.gather), so a blocking call there
    stalls all the worker's other episodes; like env calls, they must run in an executor."""
    _, _, record = episode([act("go north"), act("go north")])
    assert record["publish_on_event_loop"] == [False, False]


@pytest.mark.parametrize(
    ("replies", "max_steps", "turns"),
    [
        ([act("go north"), act("go north")], 5, 4),  # user, assistant, user, assistant (done)
        ([act("wait")], 3, 6),  # three policy turns, two environment turns in between
        (["no tags"], 5, 2),  # the first answer does not parse
    ],
)
def test_num_turns_counts_the_turns_in_the_output(episode, replies, max_steps, turns):
    """AgentLoopOutput.num_turns: 'Number of chat turns, including user, assistant, tool'
    (verl/experimental/agent_loop/agent_loop.py:105-106; ToolAgentLoop: user + assistant + 1).
    The environment turn after the last policy turn is not in the output."""
    out, _, _ = episode(replies, max_steps=max_steps)
    assert out.num_turns == turns == len(segments(out.response_mask)) + 1
