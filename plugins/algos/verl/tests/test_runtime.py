"""An agent-loop worker's runtime built from a prepared run directory, driving a real
environment (TextWorldExpress through the textworld plugin) in the agent loop.

The generation server is a stand-in (vLLM/SGLang need GPUs): it always answers with
the first admissible action it finds in the prompt.
"""

from __future__ import annotations

import asyncio
import re
import types

import msgspec
import pytest
from verl.experimental.agent_loop.agent_loop import DictConfigWrap
from verl.utils.dataset.rl_dataset import RLHFDataset
from verl.workers.rollout.replica import TokenOutput

from dreamgym_core.config import load_pipeline, resolve
from dreamgym_core.loop import prepare_run_dir
from dreamgym_core.plugins import Plugins
from dreamgym_plugin_verl.agent_loop import RUNTIMES, DreamGymAgentLoop
from dreamgym_plugin_verl.runtime import load_runtime
from dreamgym_plugin_verl.trainer import prepare_files
from dreamgym_plugin_verl.translate import translate

pytest.importorskip("dreamgym_plugin_textworld")
pytest.importorskip("dreamgym_plugin_hf")


class FirstAdmissibleServer:
    """Stand-in server: replies with the last prompt's first admissible action (or 'look around')."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.calls = 0

    async def generate(self, *, request_id, prompt_ids, sampling_params, **_):
        self.calls += 1
        prompt = self.tokenizer.decode(prompt_ids)
        listed = re.findall(r"Admissible actions: ([^\n<]*)", prompt)
        action = listed[-1].split(" | ")[0] if listed else "look around"
        ids = self.tokenizer.encode(f"<think>try</think><action>{action}</action><|im_end|>", add_special_tokens=False)
        return TokenOutput(token_ids=ids, log_probs=None)


@pytest.fixture
def run_dir(tmp_path):
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        "plugins: [textworld, hf, verl]\n"
        "env: {name: twx, config: {game: coin, train_seeds: 4, test_seeds: 2}}\n"
        "policy: {name: hf-tiny}\n"
        "algo: {name: verl-grpo, config: {model_path: /models/m, invalid_action_penalty: 0.2}}\n"
        f"loop: {{mode: real, max_steps: 3, tasks_per_iteration: 2}}\nrun_dir: {tmp_path / 'run'}\n"
    )
    pipeline = load_pipeline(path)
    plugins = Plugins.for_names(pipeline.plugins)
    resolved = resolve(pipeline, plugins, where=str(path))
    root = prepare_run_dir(resolved, resume=False)
    domain = plugins.build("env", "twx", resolved.components["env"])
    prepare_files(resolved, root, train=domain.tasks(split="train"), val=domain.tasks(split="test"), actors={})
    return resolved, root, domain


def test_runtime_from_run_dir_plays_a_real_env(run_dir, compose, chat_tokenizer):
    resolved, root, domain = run_dir
    runtime = load_runtime(str(root))
    assert runtime.max_steps == 3 and runtime.invalid_action_penalty == 0.2 and runtime.store is None
    RUNTIMES[str(root)] = runtime
    cfg = compose(translate(resolved, run_dir=str(root)))
    server = FirstAdmissibleServer(chat_tokenizer)
    task = domain.tasks(split="train")[0]

    async def main():
        loop = DreamGymAgentLoop(
            trainer_config=DictConfigWrap(cfg), server_manager=server, tokenizer=chat_tokenizer, processor=None,
            dataset_cls=RLHFDataset, data_config=DictConfigWrap(cfg.data), runtime=str(root),
        )
        return await loop.run({}, task=msgspec.json.encode(task).decode(), phase="real", seed=0, raw_prompt=[])

    try:
        out = asyncio.run(main())
    finally:
        RUNTIMES.pop(str(root), None)
    info = out.extra_fields["reward_extra_info"]
    assert 1 <= server.calls <= 3 and info["episode_steps"] == server.calls
    assert info["unparsed_actions"] == 0.0 and info["env_errors"] == 0.0
    assert out.response_mask[0] == 1 and out.response_mask[-1] == 1
    assert (0 in out.response_mask) == (server.calls > 1)
    assert task.instruction in chat_tokenizer.decode(out.prompt_ids)


def test_the_synthetic_env_takes_every_loop_setting_the_local_loop_does(run_dir, monkeypatch):
    # verl's synthetic env used to drop reject_unlisted_at and state_variation.
    from dreamgym_core.synthetic import synthetic_config_of
    from dreamgym_plugin_verl import runtime

    resolved, _, domain = run_dir
    loop = msgspec.structs.replace(
        resolved.pipeline.loop, reject_unlisted_actions=True, reject_unlisted_at="start", state_variation=0.5
    )
    resolved = msgspec.structs.replace(resolved, pipeline=msgspec.structs.replace(resolved.pipeline, loop=loop))
    model = types.SimpleNamespace(predict=lambda **kw: [])  # an experience model's shape; it is not called here
    monkeypatch.setattr(runtime, "_experience_model", lambda *args: model)
    env = runtime.synthetic_env_factory(resolved, None, domain, None, run_dir="unused")()
    assert env.config == synthetic_config_of(resolved.pipeline)
    assert (env.config.reject_unlisted_at, env.config.state_variation) == ("start", 0.5)


@pytest.mark.slow
def test_dreamgym_runtime_plays_the_synthetic_env(tmp_path, compose, chat_tokenizer):
    """mode dreamgym: the runtime builds the core's SyntheticEnv over the pipeline's experience
    model (here the hf plugin's tiny random model: its answers rarely parse, which the
    synthetic environment turns into a failed transition, as in the local loop)."""
    pytest.importorskip("dreamgym_plugin_exact")
    pytest.importorskip("dreamgym_plugin_encoders")
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        "plugins: [textworld, hf, exact, encoders, verl]\n"
        "env: {name: twx, config: {game: coin, train_seeds: 2, test_seeds: 1}}\n"
        "policy: {name: hf-tiny}\n"
        "experience_model: {name: hf-tiny, config: {hidden_size: 64, layers: 1, heads: 2, intermediate_size: 128, vocab_size: 300}}\n"
        "encoder: {name: hashing}\nbuffer: {name: exact}\n"
        "algo: {name: verl-grpo, config: {model_path: /models/m}}\n"
        f"loop: {{mode: dreamgym, max_steps: 2, tasks_per_iteration: 2}}\nrun_dir: {tmp_path / 'run'}\n"
    )
    pipeline = load_pipeline(path)
    plugins = Plugins.for_names(pipeline.plugins)
    resolved = resolve(pipeline, plugins, where=str(path))
    root = prepare_run_dir(resolved, resume=False)
    domain = plugins.build("env", "twx", resolved.components["env"])
    prepare_files(resolved, root, train=domain.tasks(split="train"), val=domain.tasks(split="test"), actors={})
    RUNTIMES[str(root)] = runtime = load_runtime(str(root))
    assert runtime.model_id.startswith("hf-tiny")
    cfg = compose(translate(resolved, run_dir=str(root)))
    task = domain.tasks(split="train")[0]

    async def main():
        loop = DreamGymAgentLoop(
            trainer_config=DictConfigWrap(cfg), server_manager=FirstAdmissibleServer(chat_tokenizer),
            tokenizer=chat_tokenizer, processor=None, dataset_cls=RLHFDataset, data_config=DictConfigWrap(cfg.data),
            runtime=str(root),
        )
        return await loop.run({}, task=msgspec.json.encode(task).decode(), phase="synthetic", seed=0, raw_prompt=[])

    try:
        out = asyncio.run(main())
    finally:
        RUNTIMES.pop(str(root), None)
    info = out.extra_fields["reward_extra_info"]
    assert info["env_errors"] == 0.0 and 1.0 <= info["episode_steps"] <= 2.0
    assert out.response_mask[-1] == 1 and out.reward_score <= 1.0
