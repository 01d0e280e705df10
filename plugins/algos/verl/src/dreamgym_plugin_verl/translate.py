"""From a resolved DreamGym pipeline to verl's Hydra overrides for ``verl.trainer.main_ppo``.

The translation is a pure function of the resolved config, so ``dreamgym config
show --backend verl`` can print it and golden files can pin it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from dreamgym_core.config import ResolvedPipeline
from dreamgym_core.errors import ConfigError

from .config import AGENT_LOOP_NAME, VerlConfig

__all__ = ["ESTIMATORS", "WARMSTART_DIR", "translate", "hydra_value", "run_files", "model_path", "start_weights"]

# verl's advantage estimator for each component this plugin registers.
ESTIMATORS: dict[str, str] = {"verl-grpo": "grpo", "verl-ppo": "gae"}

_BARE = re.compile(r"^[A-Za-z0-9_./:+\-]+$")

# Run-directory folder of the warm-started policy, verl's starting weights (warmstart.py).
WARMSTART_DIR = "policy_init"


def hydra_value(value: Any) -> str:
    """One value in Hydra override syntax (booleans capitalised, lists bracketed, odd strings quoted)."""
    if isinstance(value, bool):
        return "True" if value else "False"
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, float):
        return repr(value)
    text = str(value)
    if isinstance(value, int) or _BARE.match(text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def run_files(run_dir: str | Path) -> dict[str, Path]:
    """Files the verl backend writes into the run directory before launching verl."""
    base = Path(run_dir) / "verl"
    return {
        "dir": base,
        "train": base / "train_tasks.jsonl",
        "val": base / "val_tasks.jsonl",
        "agent_loop": base / "agent_loop.yaml",
        "metrics": base / "verl_metrics.jsonl",
        "tensorboard": Path(run_dir) / "tensorboard",
        "checkpoints": Path(run_dir) / "checkpoints",
    }


def model_path(resolved: ResolvedPipeline, cfg: VerlConfig) -> str:
    """The policy weights: the algo's ``model_path`` or else the policy component's ``path``."""
    if cfg.model_path:
        return cfg.model_path
    policy_cfg = resolved.components.get("policy")
    path = getattr(policy_cfg, "path", None) or resolved.pipeline.policy.config.get("path")
    if not path:
        raise ConfigError(
            f"{resolved.source}: algo.config.model_path is empty and policy {resolved.pipeline.policy.name!r} "
            "has no `path`; set algo.config.model_path to a model directory"
        )
    return str(path)


def start_weights(resolved: ResolvedPipeline, cfg: VerlConfig, run_dir: str) -> str:
    """Where verl's actor (and critic) start: the policy warm-started on the driver from
    :func:`model_path` (``run_dir/policy_init``, warmstart.py) when ``loop.warmstart_epochs``
    > 0, else :func:`model_path` itself."""
    loop, base = resolved.pipeline.loop, model_path(resolved, cfg)
    if not loop.warmstart_epochs:
        return base
    if loop.warmstart_select_episodes:
        raise ConfigError(
            f"{resolved.source}: loop.warmstart_select_episodes is a local-loop option; "
            "the verl backend's warm start keeps its last epoch"
        )
    return str(Path(run_dir) / WARMSTART_DIR)


def _estimator(resolved: ResolvedPipeline) -> str:
    name = resolved.pipeline.algo.name
    if name not in ESTIMATORS:
        raise ConfigError(f"{resolved.source}: algo.name {name!r} is not a verl algorithm ({', '.join(ESTIMATORS)})")
    return ESTIMATORS[name]


def _sections(resolved: ResolvedPipeline, cfg: VerlConfig, run_dir: str) -> dict[str, Any]:
    """Override keys and values, grouped the way verl's config tree is."""
    loop, estimator = resolved.pipeline.loop, _estimator(resolved)
    files = run_files(run_dir)
    tasks = loop.tasks_per_iteration
    mini = cfg.ppo_mini_batch_size or tasks
    if mini > tasks or tasks % mini:
        raise ConfigError(
            f"{resolved.source}: algo.config.ppo_mini_batch_size={mini} must divide loop.tasks_per_iteration={tasks}"
        )
    if resolved.pipeline.eval.valid_every or resolved.pipeline.eval.keep != "last":
        # verl validates on its val files (eval.split) at trainer.test_freq and keeps its own checkpoints.
        raise ConfigError(
            f"{resolved.source}: eval.valid_every and eval.keep='best-valid' are local-loop options; "
            "the verl backend does not play validation games between steps"
        )
    if loop.unanswered_episodes != "penalise":
        # verl's trainer advantages every rollout of a batch; the agent loop cannot withdraw one.
        raise ConfigError(
            f"{resolved.source}: loop.unanswered_episodes={loop.unanswered_episodes!r} is a local-loop option; "
            "the verl backend penalises unanswered episodes"
        )
    if loop.real_envs_at_once:
        # verl's agent-loop workers open an env per request, as many as the rollout batch holds.
        raise ConfigError(
            f"{resolved.source}: loop.real_envs_at_once={loop.real_envs_at_once} is a local-loop option; "
            "the verl backend opens an env per rollout of its batch"
        )
    if loop.action_choice != "generate":
        # The agent loop plays the tokens verl's rollout servers generate; it scores no listed actions.
        raise ConfigError(
            f"{resolved.source}: loop.action_choice={loop.action_choice!r} is a local-loop option; "
            "the verl backend's policy generates its answers"
        )
    # verl's validation plays the eval.split tasks in the real environment and nothing else.
    if resolved.pipeline.eval.fidelity_episodes:
        raise ConfigError(
            f"{resolved.source}: eval.fidelity_episodes={resolved.pipeline.eval.fidelity_episodes} is a local-loop option; "
            "the verl backend does not score the experience model's fidelity"
        )
    if resolved.pipeline.eval.synthetic_agreement:
        raise ConfigError(
            f"{resolved.source}: eval.synthetic_agreement is a local-loop option; "
            "the verl backend does not replay the evaluated tasks in the synthetic environment"
        )
    if not loop.iterations:
        # verl's trainer cannot run zero steps (its dataset would be empty) and evaluates only around steps.
        raise ConfigError(
            f"{resolved.source}: loop.iterations=0 (warm start only) runs no verl step; "
            "run a warm-start-only pipeline with the local plugin's 'grpo' or 'ppo'"
        )
    model = start_weights(resolved, cfg, run_dir)
    temperature = resolved.pipeline.eval.temperature
    evaluate = resolved.pipeline.eval.episodes > 0
    out: dict[str, Any] = {
        "algorithm.adv_estimator": estimator,
        "algorithm.gamma": cfg.gamma,
        "algorithm.lam": cfg.lam,
        "algorithm.norm_adv_by_std_in_grpo": cfg.norm_adv_by_std_in_grpo,
        "algorithm.use_kl_in_reward": False,
        "data.train_files": str(files["train"]),
        "data.val_files": str(files["val"]),
        "data.custom_cls.path": "pkg://dreamgym_plugin_verl.dataset",
        "data.custom_cls.name": "DreamGymTaskDataset",
        "data.train_batch_size": tasks,
        "data.max_prompt_length": cfg.max_prompt_length,
        "data.max_response_length": cfg.max_response_length,
        "data.shuffle": False,  # the curriculum orders tasks
        "data.dataloader_num_workers": 0,  # the dataset talks to the curriculum actor
        "data.seed": resolved.pipeline.seed,
        "actor_rollout_ref.model.path": model,
        "actor_rollout_ref.actor.optim.lr": cfg.actor_lr,
        "actor_rollout_ref.actor.ppo_mini_batch_size": mini,
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": cfg.micro_batch_size_per_gpu,
        "actor_rollout_ref.actor.use_kl_loss": cfg.kl_loss_coef > 0,
        "actor_rollout_ref.actor.kl_loss_coef": cfg.kl_loss_coef,
        "actor_rollout_ref.actor.kl_loss_type": cfg.kl_loss_type,
        "actor_rollout_ref.actor.entropy_coeff": cfg.entropy_coeff,
        "actor_rollout_ref.actor.fsdp_config.param_offload": cfg.param_offload,
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu": cfg.micro_batch_size_per_gpu,
        "actor_rollout_ref.rollout.name": cfg.rollout_engine,
        "actor_rollout_ref.rollout.mode": "async",
        "actor_rollout_ref.rollout.n": loop.group_size,
        "actor_rollout_ref.rollout.temperature": loop.sampling_temperature,
        "actor_rollout_ref.rollout.val_kwargs.temperature": temperature,
        "actor_rollout_ref.rollout.val_kwargs.do_sample": temperature > 0,
        "actor_rollout_ref.rollout.tensor_model_parallel_size": cfg.tensor_parallel_size,
        "actor_rollout_ref.rollout.gpu_memory_utilization": cfg.gpu_memory_utilization,
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu": cfg.micro_batch_size_per_gpu,
        "actor_rollout_ref.rollout.multi_turn.enable": True,
        "actor_rollout_ref.rollout.multi_turn.max_assistant_turns": loop.max_steps,
        "actor_rollout_ref.rollout.multi_turn.max_user_turns": loop.max_steps,
        "actor_rollout_ref.rollout.agent.default_agent_loop": AGENT_LOOP_NAME,
        "actor_rollout_ref.rollout.agent.agent_loop_config_path": str(files["agent_loop"]),
        "actor_rollout_ref.rollout.agent.num_workers": cfg.agent_workers,
    }
    if estimator == "gae":
        out |= {
            "critic.enable": True,
            "critic.optim.lr": cfg.critic_lr,
            "critic.model.path": model,
            "critic.ppo_micro_batch_size_per_gpu": cfg.micro_batch_size_per_gpu,
        }
    out |= {
        "trainer.total_training_steps": loop.iterations,
        "trainer.total_epochs": loop.iterations,  # an upper bound; total_training_steps wins
        "trainer.nnodes": cfg.nnodes,
        "trainer.n_gpus_per_node": cfg.n_gpus_per_node,
        "trainer.project_name": "dreamgym",
        "trainer.experiment_name": cfg.experiment_name or Path(run_dir).name,
        "trainer.default_local_dir": str(files["checkpoints"]),
        "trainer.logger": ["console", "file", "tensorboard"],
        "trainer.save_freq": loop.checkpoint_every,
        # verl keeps every checkpoint when these are null, as loop.keep_checkpoints 0 does.
        "trainer.max_actor_ckpt_to_keep": loop.keep_checkpoints or None,
        "trainer.max_critic_ckpt_to_keep": loop.keep_checkpoints or None,
        "trainer.resume_mode": "auto",
        # Evaluate before training (if asked) and after the last step, as the local loop does.
        "trainer.val_before_train": evaluate and resolved.pipeline.eval.before_training,
        "trainer.test_freq": loop.iterations if evaluate else -1,
        "trainer.device": "cuda",
    }
    return out


def translate(resolved: ResolvedPipeline, *, run_dir: str | None = None) -> list[str]:
    """verl Hydra overrides for ``resolved`` (``run_dir`` defaults to the pipeline's).

    The Ray cluster address is a new key in verl's ``ray_kwargs.ray_init`` and is
    therefore added with ``+``. ``extra_overrides`` come last and win.
    """
    cfg = resolved.components.get("algo")
    if not isinstance(cfg, VerlConfig):
        raise ConfigError(f"{resolved.source}: algo {resolved.pipeline.algo.name!r} is not configured by the verl plugin")
    run_dir = run_dir or resolved.pipeline.run_dir
    overrides = [f"{key}={hydra_value(value)}" for key, value in _sections(resolved, cfg, run_dir).items()]
    if cfg.ray_address:
        overrides.append(f"+ray_kwargs.ray_init.address={hydra_value(cfg.ray_address)}")
    return overrides + list(cfg.extra_overrides)
