"""The hand-off to verl's default (V1) trainer, on CPU: DreamGym dataset rows go through verl's
own collate function and AgentLoopWorkerTQ (per-sample kwargs, rollout.n sessions, the agent
loop built from the agent-loop YAML that prepare_files writes, output post-processing into
TransferQueue), and the stored samples are read back the way verl's V1 trainer reads them.

Only the generation server is a stand-in (vLLM/SGLang need GPUs); TransferQueue runs on a
local Ray. Slow: Ray and TransferQueue start in about 15 s.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from dreamgym_core.records import Task
from dreamgym_plugin_verl.agent_loop import RUNTIMES, EpisodeRuntime
from dreamgym_plugin_verl.curriculum import TaskFeed
from dreamgym_plugin_verl.dataset import DreamGymTaskDataset, write_tasks
from dreamgym_plugin_verl.translate import translate

from .test_agent_loop import TASK, CorridorEnv, ScriptedServer, act

ray = pytest.importorskip("ray")
tq = pytest.importorskip("transfer_queue")
BROKEN = Task(id="t2", instruction="x", domain="test", payload={"broken": True})


@pytest.fixture
def transfer_queue():
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    tq.init()
    yield tq
    tq.close()
    ray.shutdown()


def worker_for(cfg, server, tokenizer):
    """verl's AgentLoopWorkerTQ without its Ray actor and __init__ (which loads the model config):
    the attributes __init__ sets, and the agent-loop YAML registered as __init__ does."""
    from omegaconf import OmegaConf
    from verl.experimental.agent_loop.agent_loop import _agent_loop_registry
    from verl.trainer.ppo.v1.agent_loop_tq import AgentLoopWorkerTQ
    from verl.utils.dataset.rl_dataset import get_dataset_class

    worker = object.__new__(AgentLoopWorkerTQ.__ray_metadata__.modified_class.__mro__[1])
    worker.config, worker.llm_client, worker.teacher_client = cfg, server, None
    worker.reward_loop_worker_handles, worker.distillation_enabled = None, False
    worker.dataset_cls = get_dataset_class(cfg.data)
    worker.tokenizer, worker.processor, worker.hf_model_type = tokenizer, None, None
    worker.mm_processor_kwargs, worker.tools, worker.background_tasks = {}, [], set()
    for entry in OmegaConf.load(cfg.actor_rollout_ref.rollout.agent.agent_loop_config_path):
        _agent_loop_registry[entry.name] = entry
    return worker


def batch_of(rows: list[dict], global_steps: int, *, validate: bool = False):
    """What the V1 trainer hands to the agent-loop manager (trainer_base.py _fetch_one_gen_batch,
    _next_train_batch; _validate adds validate=True)."""
    import uuid

    from verl.utils import tensordict_utils as tu
    from verl.utils.dataset.rl_dataset import collate_fn

    batch_dict = collate_fn(rows)
    batch_dict["uid"] = np.array([str(uuid.uuid4()) for _ in range(len(batch_dict["raw_prompt"]))], dtype=object)
    batch = tu.get_tensordict(batch_dict)
    tu.assign_non_tensor_data(batch, "global_steps", global_steps)
    if validate:
        tu.assign_non_tensor_data(batch, "validate", True)
    return batch


@pytest.mark.slow
def test_v1_worker_stores_what_the_v1_trainer_reads(transfer_queue, resolve_dict, compose, chat_tokenizer, tmp_path):
    run_dir = tmp_path / "run"
    resolved = resolve_dict({
        "plugins": [], "env": {"name": "e"}, "policy": {"name": "p"},
        "algo": {"name": "verl-grpo", "config": {"model_path": "/models/x", "max_response_length": 1024}},
        "loop": {"mode": "real", "max_steps": 4, "group_size": 2, "tasks_per_iteration": 2}, "run_dir": str(run_dir),
    })
    from dreamgym_plugin_verl.trainer import prepare_files

    prepare_files(resolved, run_dir, train=[TASK, BROKEN], val=[TASK], actors={})
    cfg = compose(translate(resolved))
    stored, reported, envs = [], [], []

    def make_env(phase: str) -> CorridorEnv:
        envs.append(CorridorEnv())
        return envs[-1]

    groups: list[str] = []

    def report(outcome, group: str = "") -> None:
        reported.append(outcome)
        groups.append(group)

    RUNTIMES[str(run_dir)] = EpisodeRuntime(make_env=make_env, max_steps=4, store=stored.extend, report=report)
    server = ScriptedServer(chat_tokenizer, [act("go north")])  # shared by the sessions: one reply
    worker = worker_for(cfg, server, chat_tokenizer)
    feed = TaskFeed(lambda n, step: [TASK, BROKEN], batch_size=2, iterations=1, phase=lambda step: "real")
    write_tasks(tmp_path / "val.jsonl", [TASK])
    val_rows = [DreamGymTaskDataset(data_files=str(tmp_path / "val.jsonl"))[0]]

    async def play(batch) -> None:
        await worker.generate_sequences(batch)
        await asyncio.gather(*list(worker.background_tasks))

    try:
        asyncio.run(play(batch_of([feed.row(0), feed.row(1)], global_steps=5)))
        asyncio.run(play(batch_of(val_rows, global_steps=5, validate=True)))
    finally:
        RUNTIMES.pop(str(run_dir), None)

    # every prompt group finished (a failed session marks the whole group "failure")
    train = tq.kv_list(partition_id="train")["train"]
    assert sorted(t["status"] for t in train.values() if "prompt_len" not in t) == ["finished", "finished"]
    samples = {k: t for k, t in train.items() if "prompt_len" in t}
    assert len(samples) == 4  # 2 tasks x rollout.n=2
    # tags as the V1 trainer reads them (trainer_base.py _compute_metrics)
    assert np.array([t["min_global_steps"] for t in samples.values()], dtype=int).min() >= 3
    assert np.array([t["max_global_steps"] for t in samples.values()], dtype=int).min() >= 3

    keys = sorted(samples)
    data = tq.kv_batch_get(keys=keys, partition_id="train", select_fields=["rm_scores", "response_mask", "rollout_log_probs", "num_turns", "extra_fields"])
    extra = data.pop("extra_fields").tolist()  # as _validate reads it
    turns = np.array(data.pop("num_turns").tolist())  # as _compute_metrics reads it
    for i in range(len(keys)):
        mask, scores = data["response_mask"][i], data["rm_scores"][i]
        assert scores.shape == mask.shape == data["rollout_log_probs"][i].shape
        if extra[i]["task_id"] == TASK.id:  # go north twice: success on the last policy token
            assert scores[-1].item() == 1.0 and scores.sum().item() == 1.0 and mask[-1].item() == 1 and turns[i] == 4
        else:  # reset failure: one masked token, reward 0
            assert scores.tolist() == [0.0] and mask.tolist() == [0]
    assert len(stored) == 2 * 2 and len(reported) == 4  # training episodes only
    # each row's sessions report under verl's uid of the row: one curriculum group per row
    assert sorted(groups.count(g) for g in set(groups)) == [2, 2] and all(groups)
    # the rollout.n sessions of a row reset with seeds of their own (loop.state_variation)
    assert len({env.seed for env in envs[:4]}) == 4  # the training play's, before validation

    val = tq.kv_list(partition_id="val")["val"]
    val_samples = [t for t in val.values() if "prompt_len" in t]
    assert len(val_samples) == cfg.actor_rollout_ref.rollout.val_kwargs.n
    assert len(stored) == 4 and len(reported) == 4  # validation published nothing
