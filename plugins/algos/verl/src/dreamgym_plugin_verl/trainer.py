"""The ``verl-grpo`` / ``verl-ppo`` components: run a pipeline on verl's PPO trainer.

The core loop sees ``runs_own_loop`` and hands the whole run to :meth:`VerlTrainer.run`:
prepare the run directory (task files, the curriculum feed spec, the agent-loop
config), start the shared buffer and curriculum actors in the Ray cluster, seed the
buffer with offline real transitions, run ``verl.trainer.main_ppo`` with the
translated overrides, and write verl's metrics into the run directory's
``metrics.jsonl`` under DreamGym's metric names.
"""

from __future__ import annotations

import json
import math
import os
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from dreamgym_core.config import ResolvedPipeline
from dreamgym_core.errors import DreamGymError
from dreamgym_core.plugins import Plugins

from .config import AGENT_LOOP_NAME, VerlConfig
from .dataset import feed_spec_path, write_tasks
from .translate import run_files, translate

__all__ = ["VerlTrainer", "require_cuda", "map_verl_metrics", "prepare_files", "ray_init_kwargs", "METRIC_NAMES"]

# verl metric -> DreamGym metric (the local trainer's names); every verl metric is also kept under verl/.
METRIC_NAMES: dict[str, str] = {
    "actor/pg_loss": "losses/policy_loss",
    "actor/ppo_kl": "losses/approx_kl",
    "actor/kl_loss": "losses/kl_loss",
    "actor/entropy": "losses/entropy",
    "actor/pg_clipfrac": "losses/clipfrac",
    "critic/vf_loss": "losses/value_loss",
    "critic/score/mean": "charts/episodic_return",
    "critic/advantages/mean": "charts/advantage_mean",
    "response_length/mean": "rollout/response_tokens",
    "perf/throughput": "perf/tokens_per_second",
    "timing_s/step": "perf/iteration_seconds",
}


def require_cuda() -> None:
    """verl's FSDP workers and rollout servers need CUDA; fail in one line without it."""
    import torch

    if not torch.cuda.is_available():
        raise DreamGymError(
            "verl's trainer needs CUDA GPUs and none is visible here; "
            "on CPU use the local plugin's 'grpo' or 'ppo' with the same pipeline"
        )


def map_verl_metrics(data: dict[str, Any]) -> dict[str, float]:
    """One verl step's metrics under DreamGym names (plus every scalar under ``verl/``)."""
    out: dict[str, float] = {}
    for key, value in data.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"verl/{key}"] = float(value)
            if key in METRIC_NAMES:
                out[METRIC_NAMES[key]] = float(value)
    return out


def prepare_files(resolved: ResolvedPipeline, run_dir: Path, *, train: list, val: list, actors: dict[str, str]) -> dict[str, Path]:
    """Task files, the curriculum feed spec, the agent-loop config and the runtime spec."""
    files = run_files(run_dir)
    loop = resolved.pipeline.loop
    write_tasks(files["train"], train)
    write_tasks(files["val"], val)
    feed = {
        "batch_size": loop.tasks_per_iteration,
        "iterations": loop.iterations,
        "mode": loop.mode,
        "s2r_synthetic_share": loop.s2r_synthetic_share,
        "seed": resolved.pipeline.seed,
        "curriculum_actor": actors.get("curriculum_actor", ""),
    }
    feed_spec_path(files["train"]).write_text(json.dumps(feed, indent=2))
    agent_loops = [{"name": AGENT_LOOP_NAME, "_target_": "dreamgym_plugin_verl.agent_loop.DreamGymAgentLoop", "runtime": str(run_dir)}]
    files["agent_loop"].write_text(yaml.safe_dump(agent_loops, sort_keys=False))
    (files["dir"] / "runtime.json").write_text(json.dumps(actors, indent=2))
    return files


class VerlTrainer:
    """Runs a whole pipeline on verl (see the module docstring). Needs CUDA."""

    runs_own_loop = True
    backend = "verl"

    @staticmethod
    def backend_config(resolved: ResolvedPipeline) -> dict[str, Any]:
        """What ``dreamgym backend-config --backend verl`` prints: the verl command and overrides."""
        overrides = translate(resolved)
        return {"backend": "verl", "entry_point": "verl.trainer.main_ppo", "overrides": overrides}

    def __init__(self, config: VerlConfig, *, policy: Any = None, seed: int = 0, **_: Any) -> None:
        self.config = config
        self.seed = seed

    def run(self, *, resolved: ResolvedPipeline, plugins: Plugins, run_dir: str) -> dict[str, Any]:
        """The whole run; ``run_dir`` already holds ``config.json`` (written by the core)."""
        require_cuda()
        import ray

        root = Path(run_dir).resolve()
        cfg = resolved.pipeline
        overrides = translate(resolved, run_dir=str(root))
        files = run_files(root)
        # verl's loggers run in its TaskRunner actor: the paths reach it through Ray's runtime env.
        log_env = {"VERL_FILE_LOGGER_PATH": str(files["metrics"]), "TENSORBOARD_DIR": str(files["tensorboard"])}
        os.environ.update(log_env)
        ray.init(**ray_init_kwargs(_compose(overrides), env_vars=log_env))
        actors, clients = _start_actors(resolved, plugins, root)
        domain = plugins.build("env", cfg.env.name, resolved.components["env"])
        val = domain.tasks(split=cfg.eval.split)[: max(cfg.eval.episodes, 1)]
        files = prepare_files(resolved, root, train=domain.tasks(split="train"), val=val, actors=actors)
        (files["dir"] / "overrides.txt").write_text("\n".join(overrides) + "\n")
        try:
            _run_main_ppo(overrides)
        finally:
            for client in clients:
                client.close()
        return _write_metrics(files["metrics"], root / "metrics.jsonl") | {"run_dir": str(root)}


def _start_actors(resolved: ResolvedPipeline, plugins: Plugins, root: Path) -> tuple[dict[str, str], list[Any]]:
    """The shared buffer (seeded with offline real data) and curriculum actors.

    Returns their names and clients; the caller keeps the clients for the whole run
    (Ray ends an actor once no handle to it is left).
    """
    from .buffer_actor import RemoteBuffer
    from .curriculum import RemoteCurriculum
    from .runtime import build_buffer, build_curriculum

    cfg, tag = resolved.pipeline, root.name
    actors: dict[str, str] = {}
    clients: list[Any] = []
    if cfg.buffer is not None:
        actors["buffer_actor"] = f"buffer-{tag}"
        buffer = RemoteBuffer.start(partial(build_buffer, str(root)), name=actors["buffer_actor"])
        buffer.add(transitions=_offline_transitions(resolved, plugins, root))
        buffer.flush()
        clients.append(buffer)
    if cfg.curriculum is not None:
        actors["curriculum_actor"] = f"curriculum-{tag}"
        clients.append(
            RemoteCurriculum.start(
                partial(build_curriculum, str(root)), group_size=cfg.loop.group_size, name=actors["curriculum_actor"]
            )
        )
    return actors, clients


def _offline_transitions(resolved: ResolvedPipeline, plugins: Plugins, root: Path) -> list:
    """Offline real transitions that seed the shared buffer (same sources as the local loop)."""
    from dreamgym_core import checkpoint

    data, cfg = resolved.pipeline.data, resolved.pipeline
    if data.path:
        return checkpoint.read_transitions(Path(data.path))
    domain = plugins.build("env", cfg.env.name, resolved.components["env"])
    tasks = domain.tasks(split="train")
    trajectories = []
    for policy, episodes in (("expert", data.expert_episodes), ("noisy", data.noisy_episodes), ("random", data.random_episodes)):
        if episodes:
            trajectories += domain.collect(tasks=tasks, policy=policy, episodes=episodes, seed=cfg.seed)
    checkpoint.write_trajectories(root / "offline.jsonl", trajectories)
    return [t for traj in trajectories for t in traj.transitions]


def _compose(overrides: list[str]) -> Any:
    """verl's ppo_trainer config with ``overrides`` (what ``verl.trainer.main_ppo`` gets from Hydra)."""
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="verl.trainer.config", version_base=None):
        return compose(config_name="ppo_trainer", overrides=overrides)


def ray_init_kwargs(config: Any, *, env_vars: dict[str, str]) -> dict[str, Any]:
    """``ray.init`` arguments as verl's ``run_ppo`` builds them, plus DreamGym's env vars and namespace.

    DreamGym starts Ray itself (its shared actors must exist before verl's workers), so
    ``run_ppo`` then skips its own ``ray.init`` (verl/trainer/main_ppo.py, run_ppo): verl's
    runtime env, ``ray_kwargs.ray_init`` and these variables must be given here. Ray workers
    do not see variables the driver sets after ``ray.init``.
    """
    from omegaconf import OmegaConf
    from verl.trainer.constants_ppo import get_ppo_ray_runtime_env

    from .buffer_actor import NAMESPACE

    # As run_ppo does before its ray.init: determinism and rl_insight reach workers through env vars.
    rollout, reward_rollout = config.actor_rollout_ref.rollout, config.reward.reward_model.rollout
    if rollout.full_determinism or (config.reward.reward_model.enable and reward_rollout.full_determinism):
        os.environ |= {"VERL_FULL_DETERMINISM": "1", "VLLM_BATCH_INVARIANT": "1", "PYTHONHASHSEED": str(rollout.seed)}
    loggers = config.trainer.get("logger", [])
    if "rl_insight" in ([loggers] if isinstance(loggers, str) else loggers or []):
        os.environ["VERL_RL_INSIGHT_ENABLE"] = "1"
    ray_init = config.ray_kwargs.get("ray_init", {})
    runtime_env = OmegaConf.merge(get_ppo_ray_runtime_env(config), ray_init.get("runtime_env", {}), {"env_vars": env_vars})
    kwargs = OmegaConf.to_container(OmegaConf.create({**ray_init, "runtime_env": runtime_env}))
    return kwargs | {"namespace": NAMESPACE, "ignore_reinit_error": True}


def _task_runner(config: Any) -> Any:
    """The TaskRunner ``verl.trainer.main_ppo.main`` picks: V1 unless ``trainer.use_v1=False``."""
    if config.trainer.use_v1:
        from verl.trainer.main_ppo import TaskRunnerV1

        return TaskRunnerV1
    from verl.trainer.main_ppo_v0 import TaskRunner

    return TaskRunner


def _run_main_ppo(overrides: list[str]) -> None:
    """``python -m verl.trainer.main_ppo OVERRIDES`` in this process (Ray already initialised)."""
    from verl.trainer.main_ppo import run_ppo
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    config = _compose(overrides)
    validate_config(config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    run_ppo(config, task_runner_class=_task_runner(config))


def _write_metrics(verl_file: Path, out_file: Path) -> dict[str, float]:
    """verl's JSONL metrics as DreamGym rows in ``metrics.jsonl``; returns the last row."""
    last: dict[str, float] = {}
    if not verl_file.exists():
        return last
    with out_file.open("a") as out:
        for line in verl_file.read_text().splitlines():
            row = json.loads(line)
            last = map_verl_metrics(row.get("data", {}))
            clean = {k: (v if math.isfinite(v) else None) for k, v in last.items()}
            out.write(json.dumps({"step": int(row.get("step", 0)) - 1, **clean}) + "\n")
    return last
