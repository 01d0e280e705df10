"""The ``verl-grpo`` / ``verl-ppo`` components: run a pipeline on verl's PPO trainer.

The core loop sees ``runs_own_loop`` and hands the whole run to :meth:`VerlTrainer.run`:
prepare the run directory (task files, the curriculum feed spec, the agent-loop
config), start the shared buffer and curriculum actors in the Ray cluster, seed the
buffer with offline real transitions, train the experience model and warm-start the
policy on the driver (as the local loop's stages), run ``verl.trainer.main_ppo`` with the
translated overrides while verl's metrics go into the run directory's ``metrics.jsonl``
under DreamGym's metric names as verl logs them, and write report.md and summary.json when
it ends (the core writes summary.json for the local loop only; a finished run holds one, so
``--resume`` does not run it again).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from dreamgym_core import report, stages
from dreamgym_core.checkpoint import atomic_write
from dreamgym_core.config import ResolvedPipeline
from dreamgym_core.errors import ConfigError, DreamGymError
from dreamgym_core.imports import root_logging_kept
from dreamgym_core.loop import SUMMARY_FILE
from dreamgym_core.plugins import Plugins

from .config import AGENT_LOOP_NAME, VerlConfig
from .dataset import feed_spec_path, write_tasks
from .metrics import METRIC_NAMES, MetricRows, MetricsFollower, map_verl_metrics, rewind_rows
from .translate import run_files, translate
from .warmstart import warm_start

__all__ = [
    "VerlTrainer", "require_cuda", "map_verl_metrics", "prepare_files", "offline_env", "ray_init_kwargs", "start_ray", "run_alongside",
    "METRIC_NAMES", "actor_name", "held_out_tasks", "check_splits", "resumed_step", "verl_env",
]

log = logging.getLogger(__name__)


def require_cuda() -> None:
    """verl's FSDP workers and rollout servers need CUDA; fail in one line without it."""
    import torch

    if not torch.cuda.is_available():
        raise DreamGymError(
            "verl's trainer needs CUDA GPUs and none is visible here; "
            "on CPU use the local plugin's 'grpo' or 'ppo' with the same pipeline"
        )


def prepare_files(
    resolved: ResolvedPipeline, run_dir: Path, *, train: list, val: list, actors: dict[str, str], real_as_seed: bool = False,
) -> dict[str, Path]:
    """Task files, the curriculum feed spec, the agent-loop config and the runtime spec
    (``real_as_seed``: the domain has no make_variation, so a real step plays a curriculum-written
    task as its seed task)."""
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
        "real_as_seed": real_as_seed,
    }
    atomic_write(feed_spec_path(files["train"]), json.dumps(feed, indent=2).encode())
    agent_loops = [{"name": AGENT_LOOP_NAME, "_target_": "dreamgym_plugin_verl.agent_loop.DreamGymAgentLoop", "runtime": str(run_dir)}]
    atomic_write(files["agent_loop"], yaml.safe_dump(agent_loops, sort_keys=False).encode())
    atomic_write(files["dir"] / "runtime.json", json.dumps(actors, indent=2).encode())
    return files


def actor_name(kind: str, run_dir: str | Path) -> str:
    """The Ray name of a run's shared ``kind`` actor ("buffer", "curriculum").

    Actors are looked up by name in one namespace and reused if they exist (a resumed run
    finds its own), so the name must tell runs apart: two run directories with the same
    folder name (``/home/a/runs/grpo``, ``/home/b/runs/grpo``) on one cluster would otherwise
    share a buffer and a curriculum. The folder name stays in it for people reading Ray's lists.
    """
    root = Path(run_dir).resolve()
    digest = hashlib.sha256(str(root).encode()).hexdigest()[:12]
    return f"{kind}-{root.name}-{digest}"


def held_out_tasks(tasks: list, episodes: int, temperature: float) -> list:
    """The ``eval.split`` tasks verl validates on, one episode per row (``val_kwargs.n`` 1), as
    the local loop's evaluation chooses them (:func:`dreamgym_core.stages.evaluation_tasks`).
    ``episodes`` 0 (no evaluation) keeps one task: verl reads its val file anyway."""
    if not tasks:
        return []
    if episodes < 1:
        return tasks[:1]
    chosen = stages.evaluation_tasks(tasks, episodes, temperature)
    if len(chosen) < episodes:
        log.warning("eval: %d episodes requested on %d tasks with greedy play; using %d", episodes, len(tasks), len(chosen))
    return chosen


def check_splits(resolved: ResolvedPipeline, domain: Any, *, who: str) -> None:
    """The local loop's split checks (:func:`dreamgym_core.stages.check_splits`) on the splits
    verl plays: train, which must have tasks, and ``eval.split`` for its val file, which verl
    reads even with ``eval.episodes`` 0. Run before any stage, so a misspelt eval.split fails in
    one line here, not as a Ray error after minutes of data and training; and a trained task is
    never scored as held out. ``who`` names the env component (``Plugins.who``)."""
    cfg = resolved.pipeline
    train = domain.tasks(split="train")
    if not train:
        raise ConfigError(f"{resolved.source}: RL trains on the 'train' split, and env {cfg.env.name!r} has no tasks in it")
    played = stages.played_splits(cfg)
    played.setdefault(cfg.eval.split, "eval.split")
    stages.check_splits(resolved, domain, train, played, who=who)


def resumed_step(checkpoints: Path) -> int:
    """The global step of the checkpoint verl's ``resume_mode: auto`` goes on from, 0 for none.

    As verl's ``find_latest_ckpt_path`` (verl/utils/checkpoint/checkpoint_manager.py) finds it,
    whose prints would go to stdout, where the CLI prints the run's summary: the tracker file's
    step, if its ``global_step_<n>`` folder exists."""
    tracker = checkpoints / "latest_checkpointed_iteration.txt"
    try:
        step = int(tracker.read_text().strip())
    except (OSError, ValueError):  # none yet; an unreadable one makes verl start afresh too (it raises)
        return 0
    return step if (checkpoints / f"global_step_{step}").is_dir() else 0


def _write_overrides(directory: Path, overrides: list[str]) -> Path:
    """The verl overrides the run starts with, one a line, in ``directory/overrides.txt``."""
    path = directory / "overrides.txt"
    atomic_write(path, ("\n".join(overrides) + "\n").encode())
    return path


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

    def run(self, *, resolved: ResolvedPipeline, plugins: Plugins, run_dir: str, progress: bool = True) -> dict[str, Any]:
        """The whole run; ``run_dir`` already holds ``config.json`` (written by the core);
        ``progress=False`` (``dreamgym run --quiet``): no progress lines on stderr.

        Lifecycle hooks as in the local loop, except ``dreamgym_before_iteration``: verl's
        trainer starts each step inside its own actor. ``dreamgym_after_iteration`` fires
        as verl logs each step.
        """
        require_cuda()
        root = Path(run_dir).resolve()
        cfg = resolved.pipeline
        hook = plugins.hook
        hook.dreamgym_configure.call_historic(kwargs={"config": cfg})
        overrides = translate(resolved, run_dir=str(root))
        files = run_files(root)
        domain = plugins.build("env", cfg.env.name, resolved.components["env"])
        try:  # before Ray, the stages and verl: a bad split fails in one line, not minutes later in a Ray actor
            check_splits(resolved, domain, who=plugins.who("env", cfg.env.name))
            # A resumed run: the rows of verl's checkpoint stay, those of later steps are logged again.
            history = rewind_rows(root / "metrics.jsonl", resumed_from=resumed_step(files["checkpoints"]), iterations=cfg.loop.iterations)
        except BaseException:
            if hasattr(domain, "close"):
                domain.close()
            raise
        with _environ_kept(VERL_SETS):
            summary = self._run(resolved, plugins, root, files, overrides, domain=domain, history=history, progress=progress)
        atomic_write(root / SUMMARY_FILE, (json.dumps(summary, indent=2) + "\n").encode())  # as run_pipeline's for the local loop
        return summary

    def _run(
        self, resolved: ResolvedPipeline, plugins: Plugins, root: Path, files: dict[str, Path], overrides: list[str], *,
        domain: Any, history: list[dict[str, Any]], progress: bool,
    ) -> dict[str, Any]:
        cfg, hook = resolved.pipeline, plugins.hook
        # verl's loggers run in its TaskRunner actor: the paths reach it through Ray's runtime env
        # (not this process's environment, which outlives the run).
        log_env = {"VERL_FILE_LOGGER_PATH": str(files["metrics"]), "TENSORBOARD_DIR": str(files["tensorboard"])}
        start_ray(ray_init_kwargs(_compose(overrides), env_vars=log_env, offline=offline_env(resolved)))
        lines = _Progress(cfg.loop.iterations, shown=progress)
        actors, clients, counters = _start_actors(resolved, plugins, root, domain=domain, say=lines.say)
        val = held_out_tasks(domain.tasks(split=cfg.eval.split), cfg.eval.episodes, cfg.eval.temperature)
        files = prepare_files(
            resolved, root, train=domain.tasks(split="train"), val=val, actors=actors, real_as_seed=not hasattr(domain, "make_variation"),
        )
        if hasattr(domain, "close"):  # its probe env (a simulator) played the offline data; workers build their own
            domain.close()
        _write_overrides(files["dir"], overrides)
        files["metrics"].unlink(missing_ok=True)  # an earlier run's lines are not this run's steps
        follower = MetricsFollower(
            files["metrics"], root / "metrics.jsonl", convert=MetricRows(iterations=cfg.loop.iterations, eval_tasks=len(val)),
            on_row=lambda row: _after_row(hook, lines, row), history=history,
        )
        hook.dreamgym_run_started(run_dir=str(root), config=cfg)
        final: dict[str, Any] = {}
        try:
            run_alongside(lambda: _run_main_ppo(overrides), tick=follower.poll)
            # The whole run's rows, those before a resume included; by step, so that the evaluation
            # after RL is last even after a resumed run's validation of its last checkpoint.
            rows = sorted(follower.rows, key=lambda row: row["step"])
            final = _summary(rows, cfg.loop.iterations) | {f"counters/{k}": v for k, v in counters.items()}
            lines.say(f"report: {report.write(root, cfg, rows, counters=counters)}")
        finally:
            hook.dreamgym_run_finished(run_dir=str(root), metrics=final)
            for client in clients:
                client.close()
        return {"run_dir": str(root)} | final


class _Progress:
    """One line on stderr per verl step, as the local loop prints (stdout keeps the JSON summary)."""

    def __init__(self, iterations: int, *, shown: bool = True) -> None:
        self.iterations = iterations
        self.shown = shown
        self.started = time.perf_counter()

    def say(self, message: str) -> None:
        if self.shown:
            print(f"[dreamgym {time.perf_counter() - self.started:7.1f}s] {message}", file=sys.stderr, flush=True)

    def row(self, row: dict[str, Any]) -> None:
        shown = [(k, v) for k, v in row.items() if k.endswith(("/success_rate", "episodic_return", "policy_loss")) and v is not None]
        values = ", ".join(f"{k} {v:.3f}" for k, v in shown)
        step = row["step"]
        where = "before RL" if step < 0 else "after RL" if step >= self.iterations else f"iteration {step + 1}/{self.iterations}"
        self.say(f"verl {where}: {values}")


def _after_row(hook: Any, progress: _Progress, row: dict[str, Any]) -> None:
    progress.row(row)
    if 0 <= row["step"] < progress.iterations and "perf/iteration_seconds" in row:  # a training step's row
        hook.dreamgym_after_iteration(iteration=row["step"], metrics={k: v for k, v in row.items() if k != "step"})


def _summary(rows: list[dict[str, Any]], iterations: int) -> dict[str, Any]:
    """The last training step's metrics and the evaluation after RL (the run's summary); a
    resumed run's validation of its checkpoint (a row of that step, no training) is no step."""
    last_step = [r for r in rows if r["step"] == iterations - 1 and "perf/iteration_seconds" in r][-1:]
    evaluated = [r for r in rows if r["step"] >= iterations][-1:]
    merged: dict[str, Any] = {}
    for row in last_step + evaluated:
        merged |= {k: v for k, v in row.items() if k != "step"}
    return merged


# How often the driver reads verl's metrics file while verl trains.
POLL_SECONDS = 2.0


def run_alongside(work: Callable[[], None], *, tick: Callable[[], Any], every: float | None = None) -> None:
    """Run ``work`` on a thread and ``tick`` on this one every ``every`` seconds and once at
    the end; ``work``'s exception is raised here. Hooks that ``tick`` fires run on the
    caller's thread, as in the local loop."""
    failure: list[BaseException] = []

    def target() -> None:
        try:
            work()
        except BaseException as exc:  # re-raised on the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=target, name="verl-main-ppo", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(POLL_SECONDS if every is None else every)
        if thread.is_alive():
            tick()
    # Once at the end, also when ``work`` was done before the first look: it then never ticked,
    # and a run's last rows (all of a short one's) were never copied to metrics.jsonl.
    tick()
    if failure:
        raise failure[0]


def _start_actors(
    resolved: ResolvedPipeline, plugins: Plugins, root: Path, *, domain: Any, say: Callable[[str], None]
) -> tuple[dict[str, str], list[Any], dict[str, float]]:
    """The offline data, the shared buffer seeded with it, the trained experience model, the
    warm-started policy and the curriculum actor, in the local loop's order (the curriculum's
    task writer is the trained model).

    Returns the actors' names, their clients and the run's counters; the caller keeps the
    clients for the whole run (Ray ends an actor once no handle to it is left).
    """
    from .buffer_actor import RemoteBuffer
    from .curriculum import RemoteCurriculum
    from .runtime import build_buffer, build_curriculum

    cfg = resolved.pipeline
    actors: dict[str, str] = {}
    clients: list[Any] = []
    say("collecting offline real data")
    offline = stages.collect_offline(domain, domain.tasks(split="train"), cfg.data, seed=cfg.seed, run_dir=root)
    offline_count = sum(len(traj.transitions) for traj in offline)
    say(f"{len(offline)} episodes, {offline_count} transitions")
    branches = stages.collect_branch_data(domain, offline, cfg.data, seed=cfg.seed, run_dir=root, say=say)
    transitions = stages.experience_data(offline, branches, cfg)
    buffer = None
    if cfg.buffer is not None:
        actors["buffer_actor"] = actor_name("buffer", root)
        buffer = RemoteBuffer.start(partial(build_buffer, str(root)), name=actors["buffer_actor"])
        clients.append(buffer)
        if len(buffer):  # a resumed run's stored buffer holds them already, first
            say(f"the replay buffer already holds {len(buffer)} transitions")
        else:
            buffer.add(transitions=transitions)
            buffer.flush()
    _train_experience_model(resolved, plugins, root, transitions, domain=domain, buffer=buffer, say=say)
    if cfg.loop.warmstart_epochs:
        warm_start(resolved, plugins, offline, run_dir=root, say=say, branches=branches)
        _release_gpu_memory()
    if cfg.curriculum is not None:
        actors["curriculum_actor"] = actor_name("curriculum", root)
        clients.append(
            RemoteCurriculum.start(
                partial(build_curriculum, str(root)), group_size=cfg.loop.group_size, name=actors["curriculum_actor"]
            )
        )
    counters = {"offline_transitions": float(offline_count)}
    if branches:
        counters["branch_transitions"] = float(len(branches))
    return actors, clients, counters


def _train_experience_model(
    resolved: ResolvedPipeline, plugins: Plugins, root: Path, transitions: list, *, domain: Any, buffer: Any, say: Callable[[str], None],
) -> None:
    """Joint SFT of the experience model on the driver, as the local loop's stage; the agent-loop
    workers and the curriculum actor then load ``root/experience_model`` (see runtime.py)."""
    from dreamgym_core.experience import LMExperienceModel, model_config_of

    cfg = resolved.pipeline
    if cfg.experience_model is None or cfg.experience.skip:
        return
    backend = plugins.build("model", cfg.experience_model.name, resolved.components["experience_model"])
    model = LMExperienceModel(backend, model_config_of(cfg), domain=domain)
    say("training the experience model (joint SFT)")
    metrics = stages.train_experience_model(
        model, backend, transitions, buffer=buffer, pipeline=cfg, run_dir=root, say=say,
        who=plugins.who("model", cfg.experience_model.name, role="experience_model"),
        annotate=partial(
            stages.annotate_offline, domain=domain, pipeline=cfg, source=resolved.source,
            build_teacher=lambda: plugins.build("model", cfg.experience.teacher.name, resolved.components.get("experience.teacher")),
        ),
    )
    loss = metrics.get("experience/sft_loss")
    say(f"experience model in {root / stages.EXPERIENCE_DIR}" + (f" (last epoch's loss {loss:.3f})" if loss is not None else ""))
    del model, backend
    _release_gpu_memory()  # verl's workers place themselves on the GPUs next


def _release_gpu_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _compose(overrides: list[str]) -> Any:
    """verl's ppo_trainer config with ``overrides`` (what ``verl.trainer.main_ppo`` gets from Hydra)."""
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="verl.trainer.config", version_base=None):
        return compose(config_name="ppo_trainer", overrides=overrides)


def offline_env(resolved: ResolvedPipeline) -> dict[str, str]:
    """Variables that keep verl's workers off the network unless the pipeline asks for it.

    The workers load the policy with transformers and serve it with vLLM (or SGLang), which
    would fetch a hub id from the Hugging Face hub, send the hub its telemetry and vLLM its
    usage statistics. Downloads stay allowed where the policy allows them (the hf policy's
    ``allow_download``); a variable already set in this environment is left to it (Ray's
    workers inherit it), and the pipeline's own ``ray_kwargs.ray_init.runtime_env`` wins.
    """
    env = {"VLLM_NO_USAGE_STATS": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    if not getattr(resolved.components.get("policy"), "allow_download", False):
        env["HF_HUB_OFFLINE"] = "1"
    return {name: value for name, value in env.items() if name not in os.environ}


# Variables verl's run_ppo sets in this process's environment before its ray.init (main_ppo.py):
# restored when the run ends, so that they do not outlive it (a later run in this process, tests).
VERL_SETS = ("VERL_FULL_DETERMINISM", "VLLM_BATCH_INVARIANT", "PYTHONHASHSEED", "VERL_RL_INSIGHT_ENABLE")


@contextmanager
def _environ_kept(names: tuple[str, ...]) -> Iterator[None]:
    """``names`` in ``os.environ`` as they were before (set, changed or removed inside)."""
    before = {name: os.environ.get(name) for name in names}
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def verl_env(config: Any) -> dict[str, str]:
    """The variables verl's ``run_ppo`` sets before its ray.init for determinism and rl_insight
    (verl/trainer/main_ppo.py), which its ``get_ppo_ray_runtime_env`` then forwards to the workers."""
    env: dict[str, str] = {}
    rollout, reward_rollout = config.actor_rollout_ref.rollout, config.reward.reward_model.rollout
    if rollout.full_determinism or (config.reward.reward_model.enable and reward_rollout.full_determinism):
        env |= {"VERL_FULL_DETERMINISM": "1", "VLLM_BATCH_INVARIANT": "1", "PYTHONHASHSEED": str(rollout.seed)}
    loggers = config.trainer.get("logger", [])
    if "rl_insight" in ([loggers] if isinstance(loggers, str) else loggers or []):
        env["VERL_RL_INSIGHT_ENABLE"] = "1"
    return env


def ray_init_kwargs(config: Any, *, env_vars: dict[str, str], offline: dict[str, str] | None = None) -> dict[str, Any]:
    """``ray.init`` arguments as verl's ``run_ppo`` builds them, plus DreamGym's env vars and namespace.

    DreamGym starts Ray itself (its shared actors must exist before verl's workers), so
    ``run_ppo`` then skips its own ``ray.init`` (verl/trainer/main_ppo.py, run_ppo): verl's
    runtime env, ``ray_kwargs.ray_init`` and these variables must be given here. Ray workers
    do not see variables the driver sets after ``ray.init``. ``offline`` (:func:`offline_env`)
    comes before the pipeline's runtime env, so that one can still set those variables.
    verl's own determinism and rl_insight variables (:func:`verl_env`) go into the runtime env
    too, where its run_ppo puts them into this process's environment for good.
    """
    from omegaconf import OmegaConf

    with root_logging_kept():
        from verl.trainer.constants_ppo import get_ppo_ray_runtime_env

    from .buffer_actor import NAMESPACE

    # As run_ppo does before its ray.init, but through the runtime env: determinism and rl_insight
    # reach the workers, after get_ppo_ray_runtime_env's forwarding of this process's values.
    ray_init = config.ray_kwargs.get("ray_init", {})
    runtime_env = OmegaConf.merge(
        get_ppo_ray_runtime_env(config), {"env_vars": verl_env(config) | (offline or {})}, ray_init.get("runtime_env", {}),
        {"env_vars": env_vars},
    )
    kwargs = OmegaConf.to_container(OmegaConf.create({**ray_init, "runtime_env": runtime_env}))
    return kwargs | {"namespace": NAMESPACE, "ignore_reinit_error": True}


def start_ray(kwargs: dict[str, Any]) -> None:
    """``ray.init(**kwargs)``; without a cluster address (``algo.config.ray_address`` or
    ``RAY_ADDRESS``) it starts a Ray of its own that listens on loopback only.

    Ray resolves a local node to the machine's reachable IP, so its GCS, raylet, workers and
    dashboard would listen on every interface, and ``_node_ip_address="127.0.0.1"`` is turned
    back into that IP (``services.resolve_ip_for_localhost``). What Ray does on macOS and
    Windows, where a node is local only, keeps every port on 127.0.0.1: the node's address
    comes from ``ray_constants.ENABLE_RAY_CLUSTER``, which this process alone reads, once,
    while ``ray.init`` starts the node. ``address="local"`` keeps ``ray.init`` from joining a
    cluster that ``ray start`` left running here instead (the config promises a Ray of its own).
    """
    import ray

    if kwargs.get("address") or os.environ.get("RAY_ADDRESS"):
        ray.init(**kwargs)
        return
    from ray._private import ray_constants

    shared = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(**(kwargs | {"address": "local"}))
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = shared


def _task_runner(config: Any) -> Any:
    """The TaskRunner ``verl.trainer.main_ppo.main`` picks: V1 unless ``trainer.use_v1=False``."""
    with root_logging_kept():
        if config.trainer.use_v1:
            from verl.trainer.main_ppo import TaskRunnerV1

            return TaskRunnerV1
        from verl.trainer.main_ppo_v0 import TaskRunner

    return TaskRunner


def _run_main_ppo(overrides: list[str]) -> None:
    """``python -m verl.trainer.main_ppo OVERRIDES`` in this process (Ray already initialised)."""
    with root_logging_kept():
        from verl.trainer.main_ppo import run_ppo
        from verl.trainer.ppo.utils import need_critic, need_reference_policy
        from verl.utils.config import validate_config

    config = _compose(overrides)
    validate_config(config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    run_ppo(config, task_runner_class=_task_runner(config))
