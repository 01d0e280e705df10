"""VerlTrainer.run on CPU up to verl's trainer: Ray actors, offline seeding, run-dir files,
verl's dataset hook, and metrics conversion.

verl's PPO trainer itself needs CUDA, so two things are replaced here, and only here:
the CUDA check, and ``_run_main_ppo`` by ``stand_in_main_ppo``, which does what verl's
driver and agent-loop workers do with DreamGym's pieces (compose the config, build the
dataset through ``data.custom_cls``, read a step's rows, report outcomes, add episodes
to the shared buffer, log metrics with verl's FileLogger).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import yaml


from dreamgym_core.config import load_pipeline, resolve
from dreamgym_core.loop import run_pipeline
from dreamgym_core.plugins import Plugins
from dreamgym_core.records import Task, TaskOutcome
from dreamgym_core.testing import LifecycleRecorder, make_transitions
from dreamgym_plugin_verl import trainer as trainer_mod
from dreamgym_plugin_verl.buffer_actor import RemoteBuffer
from dreamgym_plugin_verl.curriculum import RemoteCurriculum

for name in ("dreamgym_plugin_textworld", "dreamgym_plugin_hf", "dreamgym_plugin_exact", "dreamgym_plugin_encoders", "dreamgym_plugin_uniform"):
    pytest.importorskip(name)
ray = pytest.importorskip("ray")
seen: dict = {}


def stand_in_main_ppo(overrides: list[str]) -> None:
    """Stand-in for verl's trainer (see the module docstring)."""
    from hydra import compose, initialize_config_module
    from verl.trainer.ppo.utils import create_rl_dataset

    with initialize_config_module(config_module="verl.trainer.config", version_base=None):
        config = compose(config_name="ppo_trainer", overrides=overrides)
    dataset = create_rl_dataset(config.data.train_files, config.data, None, None)
    rows = [dataset[i] for i in range(config.data.train_batch_size)]
    seen["rows"] = rows
    runtime = yaml.safe_load(open(config.actor_rollout_ref.rollout.agent.agent_loop_config_path))[0]["runtime"]
    spec = json.load(open(os.path.join(runtime, "verl", "runtime.json")))
    buffer = RemoteBuffer.connect(spec["buffer_actor"])
    seen["seeded"] = len(buffer)
    buffer.add(transitions=make_transitions(3, source="real", prefix="episode"))
    seen["after_add"] = len(buffer)
    curriculum = RemoteCurriculum.connect(spec["curriculum_actor"])
    for row in rows:
        task = Task(**json.loads(row["task"]))
        for reward in (1.0, 0.0):  # one GRPO group of 2 per task
            curriculum.report(TaskOutcome(task=task, rewards=[reward]))
    seen["curriculum"] = curriculum.metrics()
    # verl's Tracking (FileLogger, TensorBoard) lives in the TaskRunner, a Ray actor
    # (verl/trainer/main_ppo.py TaskRunnerV1.run; trainer_base.py fit), not in the driver.
    seen["worker_tensorboard_dir"], seen["followed_live"] = ray.get(log_in_a_ray_worker.remote(runtime))


def validation(success: float) -> dict[str, float]:
    """What verl's V1 trainer logs for a validation of DreamGym's agent loop on coin
    (trainer_base.py ``_val_metrics_update``: val-core for the reward, val-aux for extra info)."""
    return {
        "val-core/dreamgym/twx/reward/mean@1": success - 0.1, "val-aux/dreamgym/twx/success/mean@1": success,
        "val-aux/dreamgym/twx/episode_steps/mean@1": 3.0, "val-aux/num_turns/mean": 6.0,
    }


@ray.remote
def log_in_a_ray_worker(run_dir: str) -> tuple[str | None, bool]:
    from verl.utils.tracking import FileLogger

    log = FileLogger("dreamgym", "cpu")
    log.log(validation(0.5), 0)
    log.log({"actor/pg_loss": 0.1, "critic/score/mean": 0.5, "timing_s/step": 2.0}, 1)
    # The run directory shows step 0 while verl still trains (the driver follows verl's file).
    followed_live = _wait_for_row(Path(run_dir) / "metrics.jsonl", step=0)
    log.log({"actor/pg_loss": 0.2, "critic/score/mean": 0.75, "timing_s/step": 2.0} | validation(1.0), 2)
    log.finish()
    return os.environ.get("TENSORBOARD_DIR"), followed_live


def _wait_for_row(path: Path, *, step: int, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and any(json.loads(line)["step"] == step for line in path.read_text().splitlines()):
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow
def test_run_until_verl_trainer(tmp_path, monkeypatch):
    monkeypatch.setattr(trainer_mod, "require_cuda", lambda: None)
    monkeypatch.setattr(trainer_mod, "_run_main_ppo", stand_in_main_ppo)
    monkeypatch.setattr(trainer_mod, "POLL_SECONDS", 0.05)
    monkeypatch.delenv("VERL_FILE_LOGGER_PATH", raising=False)
    monkeypatch.delenv("TENSORBOARD_DIR", raising=False)
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({
        "plugins": ["textworld", "hf", "exact", "encoders", "uniform", "verl"],
        "env": {"name": "twx", "config": {"game": "coin", "train_seeds": 4, "test_seeds": 2}},
        "policy": {"name": "hf-tiny"}, "encoder": {"name": "hashing"}, "buffer": {"name": "exact"},
        "curriculum": {"name": "uniform"}, "algo": {"name": "verl-grpo", "config": {"model_path": "/models/m"}},
        "loop": {"mode": "real", "iterations": 2, "tasks_per_iteration": 2, "group_size": 2, "max_steps": 4, "warmstart_epochs": 0},
        "data": {"expert_episodes": 2, "noisy_episodes": 0, "random_episodes": 2},
        "eval": {"episodes": 2}, "run_dir": str(tmp_path / "run"),
    }))
    pipeline = load_pipeline(path)
    plugins = Plugins.for_names(pipeline.plugins)
    spy = LifecycleRecorder()
    plugins.pm.register(spy, name="spy")
    try:
        summary = run_pipeline(resolve(pipeline, plugins, where=str(path)), plugins)
    finally:
        ray.shutdown()
    run = tmp_path / "run"
    assert summary["losses/policy_loss"] == pytest.approx(0.2) and summary["run_dir"] == str(run.resolve())
    assert summary["eval/success_rate"] == 1.0 and summary["eval/episodes"] == 2.0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [-1, 0, 1, 2] and rows[1]["charts/episodic_return"] == 0.5
    assert rows[0]["eval_before/success_rate"] == 0.5 and rows[3]["eval/success_rate"] == 1.0
    assert seen["followed_live"]
    assert spy.calls == ["configure", "run_started", "after_iteration:0", "after_iteration:1", "run_finished"]
    assert spy.iteration_metrics[1]["losses/policy_loss"] == pytest.approx(0.2) and spy.final_metrics["eval/success_rate"] == 1.0
    report = (run / "report.md").read_text()
    assert "| after warm start (SFT) | 0.500 |" in report and "| after RL | 1.000 |" in report
    assert "offline transitions" in report and "real transitions" not in report  # verl does not count them
    assert (run / "return_vs_iteration.png").read_bytes().startswith(b"\x89PNG")
    assert (run / "config.json").exists() and (run / "offline.jsonl").exists()
    assert (run / "verl" / "overrides.txt").read_text().startswith("algorithm.adv_estimator=grpo")
    assert seen["seeded"] > 0 and seen["after_add"] == seen["seeded"] + 3
    assert len(seen["rows"]) == 2 and all(r["phase"] == "real" for r in seen["rows"])
    assert seen["curriculum"]["curriculum/observed_tasks"] == 2.0
    assert seen["worker_tensorboard_dir"] == str(run.resolve() / "tensorboard")


def _fingerprint(model: object) -> float:
    """Sum of absolute parameter values: tells trained weights from freshly initialised ones."""
    return float(sum(p.detach().abs().sum() for p in model.parameters()))


@ray.remote
def experience_model_in_a_worker(run_dir: str) -> float:
    """What an agent-loop worker builds for a synthetic episode (runtime.load_runtime)."""
    from dreamgym_plugin_verl.runtime import load_runtime

    env = load_runtime(run_dir).make_env("synthetic")
    return _fingerprint(env.model.backend.model)


def stand_in_main_ppo_dreamgym(overrides: list[str]) -> None:
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="verl.trainer.config", version_base=None):
        config = compose(config_name="ppo_trainer", overrides=overrides)
    runtime = yaml.safe_load(open(config.actor_rollout_ref.rollout.agent.agent_loop_config_path))[0]["runtime"]
    seen["worker_model"] = ray.get(experience_model_in_a_worker.remote(runtime))
    actor = Path(config.actor_rollout_ref.model.path)
    seen.setdefault("actor_weights", []).append((actor, (actor / "done").exists(), (actor / "model.safetensors").stat().st_mtime_ns))
    spec = json.load(open(os.path.join(runtime, "verl", "runtime.json")))
    seen.setdefault("buffer_sizes", []).append(len(RemoteBuffer.connect(spec["buffer_actor"])))


@pytest.mark.slow
def test_a_dreamgym_run_trains_the_experience_model_its_workers_play(tmp_path, monkeypatch, capsys, chat_model):
    """verl's path runs the local loop's data, joint-SFT and warm-start stages on the driver:
    explore episodes are collected too, every worker's synthetic environment answers with the
    trained weights (it used to build an untrained model from the config), and verl's actor
    starts from the warm-started policy (it used to start from the weights as given)."""
    from dreamgym_core import checkpoint

    monkeypatch.setattr(trainer_mod, "require_cuda", lambda: None)
    monkeypatch.setattr(trainer_mod, "_run_main_ppo", stand_in_main_ppo_dreamgym)
    monkeypatch.delenv("VERL_FILE_LOGGER_PATH", raising=False)
    monkeypatch.delenv("TENSORBOARD_DIR", raising=False)
    tiny = {"hidden_size": 32, "layers": 1, "heads": 2, "intermediate_size": 64, "vocab_size": 300}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({
        "plugins": ["textworld", "hf", "exact", "encoders", "uniform", "verl"],
        "env": {"name": "twx", "config": {"game": "coin", "train_seeds": 4, "test_seeds": 2}},
        "policy": {"name": "hf", "config": {"path": str(chat_model)}}, "experience_model": {"name": "hf-tiny", "config": tiny},
        "encoder": {"name": "hashing"}, "buffer": {"name": "exact", "config": {"dedup": "none"}}, "curriculum": {"name": "uniform"},
        "algo": {"name": "verl-grpo"},
        "loop": {"mode": "dreamgym", "iterations": 1, "tasks_per_iteration": 2, "group_size": 2, "max_steps": 4},
        "data": {"expert_episodes": 2, "noisy_episodes": 0, "random_episodes": 1, "explore_episodes": 1},
        "experience": {"epochs": 1}, "eval": {"episodes": 2}, "run_dir": str(tmp_path / "run"),
    }))
    pipeline = load_pipeline(path)
    plugins = Plugins.for_names(pipeline.plugins)
    seen.pop("buffer_sizes", None), seen.pop("actor_weights", None)
    for resume in (False, True):  # started again with --resume: the same data, model and buffer (not seeded twice)
        try:
            run_pipeline(resolve(pipeline, plugins, where=str(path)), plugins, resume=resume)
        finally:
            ray.shutdown()
    run = tmp_path / "run"
    offline = checkpoint.read_trajectories(run / "offline.jsonl")
    assert len(offline) == 4  # expert 2, random 1, explore 1
    assert seen["buffer_sizes"] == [sum(len(t.transitions) for t in offline)] * 2
    assert (run / "experience_model" / "done").exists() and (run / "offline_annotated.jsonl").exists()
    trained, fresh = (plugins.build("model", "hf-tiny", resolve(pipeline, plugins, where=str(path)).components["experience_model"]) for _ in range(2))
    trained.reload(path=str(run / "experience_model"))
    assert seen["worker_model"] == pytest.approx(_fingerprint(trained.model))
    assert seen["worker_model"] != pytest.approx(_fingerprint(fresh.model))
    # both starts hand verl the one warm start, trained once
    (first, done, stamp), again = seen["actor_weights"]
    assert first == (run / "policy_init").resolve() and done and again == (first, done, stamp)
    err = capsys.readouterr().err
    assert "training the experience model (joint SFT)" in err
    assert "warm-starting the policy on the driver (SFT on 2 expert episodes" in err and "reusing the warm-started policy" in err
