"""From a resolved DreamGym pipeline to verl's Hydra overrides for ``verl.trainer.main_ppo``.

The translation is a pure function of the resolved config, so ``dreamgym config
show --backend verl`` can print it and golden files can pin it.
"""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from pathlib import Path
from typing import Any

from dreamgym_core.config import ResolvedPipeline, s2r_synthetic_iterations
from dreamgym_core.errors import ConfigError
from dreamgym_core.imports import root_logging_kept

from .config import AGENT_LOOP_NAME, VerlConfig

__all__ = [
    "ESTIMATORS", "WARMSTART_DIR", "translate", "hydra_value", "run_files", "model_path", "start_weights", "check_with_verl",
]

# verl's advantage estimator for each component this plugin registers.
ESTIMATORS: dict[str, str] = {"verl-grpo": "grpo", "verl-ppo": "gae"}

# Strings Hydra reads back as the same string when written bare: identifiers other than the
# words its grammar (and YAML) turn into booleans, null or special floats. Everything else
# (paths, numbers, '1e3', '${...}') is quoted.
_BARE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TYPED_WORDS = {"true", "false", "null", "none", "yes", "no", "on", "off", "inf", "nan"}

# Run-directory folder of the warm-started policy, verl's starting weights (warmstart.py).
WARMSTART_DIR = "policy_init"


def hydra_value(value: Any) -> str:
    """One value in Hydra override syntax (booleans capitalised, lists bracketed); a string is
    quoted unless it is a plain identifier, so Hydra reads back exactly that string ('null',
    '1e3', '2024' or '${...}' in a run directory's name stay strings)."""
    if isinstance(value, bool):
        return "True" if value else "False"
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        return str(value)
    text = str(value)
    if _BARE.match(text) and text.lower() not in _TYPED_WORDS:
        return text
    return _quoted(text)


def _quoted(text: str) -> str:
    """``text`` as a single-quoted Hydra string. Inside quotes Hydra treats a backslash as an
    escape only before a quote, before ``${`` or at the end (where it would escape the closing
    quote): those runs of backslashes are doubled; quotes and ``${`` (an interpolation, even
    quoted) are escaped."""
    text = re.sub(r"(\\+)(?='|\$\{|$)", lambda m: m.group(1) * 2, text)
    return "'" + text.replace("'", "\\'").replace("${", "\\${") + "'"


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
    _check_real_budget(resolved)
    gpus = cfg.n_gpus_per_node * cfg.nnodes
    if gpus % cfg.tensor_parallel_size:
        # verl splits the GPUs into rollout replicas of tensor_parallel_size GPUs each.
        raise ConfigError(
            f"{resolved.source}: algo.config.tensor_parallel_size={cfg.tensor_parallel_size} must divide the "
            f"GPU count, algo.config.n_gpus_per_node x nnodes = {gpus}"
        )
    model = start_weights(resolved, cfg, run_dir)
    seed = resolved.pipeline.seed
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
        "data.seed": seed,
        "actor_rollout_ref.model.path": model,
        "actor_rollout_ref.actor.optim.lr": cfg.actor_lr,
        # verl seeds its mini-batch shuffling, FSDP workers and rollout sampling with 42 unless told.
        "actor_rollout_ref.actor.data_loader_seed": seed,
        "actor_rollout_ref.actor.fsdp_config.seed": seed,
        "actor_rollout_ref.ref.fsdp_config.seed": seed,
        "actor_rollout_ref.rollout.seed": seed,
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
            "critic.data_loader_seed": seed,
            "critic.fsdp.seed": seed,
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


def _check_real_budget(resolved: ResolvedPipeline) -> None:
    """s2r: verl runs every real step with the whole batch; the local loop stops playing real
    groups at ``loop.real_budget``. A budget that could cap the real phase is refused."""
    loop = resolved.pipeline.loop
    if loop.mode != "s2r":
        return
    real_steps = loop.iterations - s2r_synthetic_iterations(loop.iterations, loop.s2r_synthetic_share)
    most = real_steps * loop.tasks_per_iteration * loop.group_size * loop.max_steps
    if loop.real_budget < most:
        raise ConfigError(
            f"{resolved.source}: loop.real_budget={loop.real_budget} can cap the real phase, which the verl backend "
            f"plays in full ({real_steps} real steps x {loop.tasks_per_iteration} tasks x {loop.group_size} episodes "
            f"x {loop.max_steps} steps = {most} transitions at most); raise loop.real_budget to {most} "
            "or run the pipeline with the local plugin's 'grpo' or 'ppo'"
        )


# verl settings that break what the agent loop and the curriculum rely on: verl's synchronous V1
# trainer draws a step's rows, plays each row's group_size sessions, trains, then draws the next
# step. Each entry: the value that keeps it so, and why another one does not.
_SYNC_SETTINGS: dict[str, tuple[Any, str]] = {
    "trainer.use_v1": (
        True, "verl's V0 trainer plays a group's sessions with one reset seed, so every episode of a group is the same game",
    ),
    "trainer.v1.trainer_mode": ("sync", "the verl backend needs verl's synchronous trainer (one step drawn, played and trained at a time)"),
    "trainer.v1.sampler.sync_refill_failed_groups": (
        False, "refilled groups draw extra rows within a step, which the curriculum's batches do not hold",
    ),
    "algorithm.filter_groups.enable": (
        False, "group filtering (DAPO) draws extra rows within a step, which the curriculum's batches do not hold",
    ),
}


def _override_parts(override: str) -> tuple[str, str]:
    """(key, value) of a Hydra ``key=value`` override, without its ``+``/``++``/``~`` prefix."""
    key, _, value = override.partition("=")
    return key.strip().lstrip("+~"), value.strip()


def _plain(text: str) -> Any:
    """An override's value as Hydra reads a simple scalar: booleans, or the unquoted string."""
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    lowered = text.lower()
    return True if lowered == "true" else False if lowered == "false" else text


def _check_extra_overrides(resolved: ResolvedPipeline, overrides: list[str]) -> None:
    for override in overrides:
        key, value = _override_parts(override)
        if key in _SYNC_SETTINGS and _plain(value) != _SYNC_SETTINGS[key][0]:
            raise ConfigError(
                f"{resolved.source}: algo.config.extra_overrides {override!r} is refused: {_SYNC_SETTINGS[key][1]}"
            )


# What the translated config's verl keys come from, to name in an error verl raises.
_SOURCES: tuple[tuple[str, str], ...] = (
    ("real_train_batch_size", "loop.tasks_per_iteration x loop.group_size, algo.config.n_gpus_per_node x algo.config.nnodes"),
    ("mini_batch", "algo.config.ppo_mini_batch_size, loop.tasks_per_iteration, loop.group_size, algo.config.n_gpus_per_node x algo.config.nnodes"),
    ("micro_batch", "algo.config.micro_batch_size_per_gpu"),
    ("train_batch_size", "loop.tasks_per_iteration"),
    ("temperature", "loop.sampling_temperature, eval.temperature"),
    ("tensor_model_parallel", "algo.config.tensor_parallel_size"),
)


def _named_settings(message: str) -> str:
    named = [setting for word, setting in _SOURCES if word in message]
    return named[0] if named else "algo.config.* and loop.*"


def check_with_verl(resolved: ResolvedPipeline, overrides: list[str]) -> None:
    """Compose verl's ``ppo_trainer`` config with ``overrides`` and run verl's ``validate_config``
    on it, as the run does before training (trainer.py, ``_run_main_ppo``), so a pipeline verl
    would refuse after the offline data, the experience model and the warm start is refused
    when it is translated, in one line. The policy's weights are not read (they may not exist
    yet: the warm start writes them). Without verl installed there is nothing to check: no verl
    step could run either."""
    try:
        with root_logging_kept():
            from hydra import compose, initialize_config_module
            from hydra.errors import HydraException
            from omegaconf import OmegaConf, open_dict
            from omegaconf.errors import OmegaConfBaseException
            from verl.trainer.ppo.utils import need_critic, need_reference_policy
            from verl.utils.config import validate_config
    except ImportError:
        return
    source = resolved.source
    extra = list(resolved.components["algo"].extra_overrides)
    try:
        with initialize_config_module(config_module="verl.trainer.config", version_base=None):
            config = compose(config_name="ppo_trainer", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        message = _first_line(exc)
        culprit = _unparsable(extra) or next(
            (o for o in extra if _override_parts(o)[0] and _override_parts(o)[0] in message), None
        )
        where = f"algo.config.extra_overrides {culprit!r}" if culprit else "the translated overrides"
        raise ConfigError(f"{source}: verl's config refuses {where}: {message}") from None
    for key, (wanted, why) in _SYNC_SETTINGS.items():
        if OmegaConf.select(config, key, default=wanted) != wanted:
            raise ConfigError(f"{source}: algo.config.extra_overrides set {key}; it is refused: {why}")
    gpus = config.trainer.n_gpus_per_node * config.trainer.nnodes
    tp = config.actor_rollout_ref.rollout.tensor_model_parallel_size
    if gpus % tp:
        raise ConfigError(
            f"{source}: verl's rollout tensor_model_parallel_size={tp} must divide the GPU count, "
            f"n_gpus_per_node x nnodes = {gpus} (algo.config.tensor_parallel_size, n_gpus_per_node, nnodes)"
        )
    with open_dict(config):
        # validate_config builds the critic's model config, which reads the weights' config.json;
        # the batch-size checks do not need it.
        config.critic.model = None
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Disabled critic as algorithm.adv_estimator != gae"
            validate_config(config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    except Exception as exc:  # verl raises AssertionError, ValueError and Hydra's errors alike
        message = _first_line(exc)
        raise ConfigError(
            f"{source}: verl's validate_config refuses the translated config: {message} "
            f"(set by {_named_settings(message)} or algo.config.extra_overrides)"
        ) from None


def _unparsable(overrides: list[str]) -> str | None:
    """The first of ``overrides`` that Hydra's override grammar cannot read."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    for override in overrides:
        try:
            parser.parse_overrides([override])
        except HydraException:
            return override
    return None


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def translate(resolved: ResolvedPipeline, *, run_dir: str | None = None, check: bool = True) -> list[str]:
    """verl Hydra overrides for ``resolved`` (``run_dir`` defaults to the pipeline's).

    The Ray cluster address is a new key in verl's ``ray_kwargs.ray_init`` and is
    therefore added with ``+``. ``extra_overrides`` come last and win. ``check`` (default):
    verl's own config checks run on the result (:func:`check_with_verl`).
    """
    cfg = resolved.components.get("algo")
    if not isinstance(cfg, VerlConfig):
        raise ConfigError(f"{resolved.source}: algo {resolved.pipeline.algo.name!r} is not configured by the verl plugin")
    run_dir = run_dir or resolved.pipeline.run_dir
    overrides = [f"{key}={hydra_value(value)}" for key, value in _sections(resolved, cfg, run_dir).items()]
    if cfg.ray_address:
        overrides.append(f"+ray_kwargs.ray_init.address={hydra_value(cfg.ray_address)}")
    _check_extra_overrides(resolved, cfg.extra_overrides)
    overrides += list(cfg.extra_overrides)
    if check:
        check_with_verl(resolved, overrides)
    return overrides
