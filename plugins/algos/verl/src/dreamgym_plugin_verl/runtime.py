"""Build an agent-loop worker's :class:`EpisodeRuntime` from the run directory.

The trainer writes ``config.json`` (the resolved pipeline) and ``verl/runtime.json``
(the names of the shared buffer and curriculum actors). Each worker process loads
the same plugins, builds the domain (real environments) and the experience model
(for DreamGym's synthetic environment: a local backend with the weights the driver
trained into ``<run_dir>/experience_model``, or the ``openai`` backend pointed at a
vLLM/SGLang server), and connects to the shared actors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec

from dreamgym_core.config import PipelineConfig, resolve
from dreamgym_core.errors import ConfigError, DreamGymError
from dreamgym_core.plugins import Plugins
from dreamgym_core.stages import reload_trained
from dreamgym_core.synthetic import storable

from .agent_loop import EpisodeRuntime
from .buffer_actor import RemoteBuffer
from .curriculum import RemoteCurriculum

__all__ = ["load_runtime", "runtime_spec_path", "synthetic_env_factory", "build_buffer", "build_curriculum", "task_stream"]


def runtime_spec_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / "verl" / "runtime.json"


def _load(run_dir: str | Path) -> tuple[Any, Plugins]:
    """The resolved pipeline of a prepared run directory, with its plugins loaded."""
    config_path = Path(run_dir) / "config.json"
    try:
        data = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{run_dir}: not a prepared run directory ({exc})") from exc
    pipeline = msgspec.convert(data, type=PipelineConfig)
    plugins = Plugins.for_names(pipeline.plugins, where=f"{config_path}: plugins")
    return resolve(pipeline, plugins, where=str(config_path)), plugins


def _experience_model(resolved: Any, plugins: Plugins, domain: Any, run_dir: str | Path) -> Any:
    """The pipeline's experience model (M_exp, also M_task), or None without one.

    Configured by the same function as the local loop's, so both backends prompt, parse and
    draw alike; with the weights the driver's joint SFT saved in ``run_dir``, when it trained one.
    """
    from dreamgym_core.experience import LMExperienceModel, model_config_of

    cfg = resolved.pipeline
    if cfg.experience_model is None:
        return None
    backend = plugins.build("model", cfg.experience_model.name, resolved.components["experience_model"])
    if not cfg.experience.skip:
        reload_trained(backend, Path(run_dir))
    return LMExperienceModel(backend, model_config_of(cfg), domain=domain)


def _encoder(resolved: Any, plugins: Plugins) -> Any:
    ref = resolved.pipeline.encoder
    return plugins.build("encoder", ref.name, resolved.components["encoder"]) if ref else None


def build_buffer(run_dir: str) -> Any:
    """The pipeline's buffer, stored under ``<run_dir>/buffer`` (runs inside the buffer actor)."""
    resolved, plugins = _load(run_dir)
    ref = resolved.pipeline.buffer
    return plugins.build(
        "buffer", ref.name, resolved.components["buffer"], encoder=_encoder(resolved, plugins), path=str(Path(run_dir) / "buffer")
    )


# The seed stream of M_task in the curriculum actor (LMExperienceModel.stream).
TASK_STREAM = "task-generator"


def task_stream(draw: int) -> str:
    """The name of M_task's stream under ``loop.experience_draw`` ``draw``: its own stream, as
    the workers' M_exp (the same weights and seed) counts its calls from 1 too, and call k of
    both drew with the same noise. Another draw is another stream, as in the local loop, where
    M_task is the experience model itself and a draw changes its variations too."""
    return TASK_STREAM if draw == 0 else f"{TASK_STREAM}/draw/{draw}"


def build_curriculum(run_dir: str) -> Any:
    """The pipeline's curriculum over the train tasks (runs inside the curriculum actor), its
    M_task on a seed stream of its own (:func:`task_stream`)."""
    resolved, plugins = _load(run_dir)
    cfg = resolved.pipeline
    domain = plugins.build("env", cfg.env.name, resolved.components["env"])
    model = _experience_model(resolved, plugins, domain, run_dir)
    generator = model.stream(task_stream(cfg.loop.experience_draw)) if model is not None else None
    return plugins.build(
        "curriculum", cfg.curriculum.name, resolved.components["curriculum"],
        tasks=domain.tasks(split="train"), task_generator=generator,
        encoder=_encoder(resolved, plugins), seed=cfg.seed, domain=domain,
    )


def synthetic_env_factory(resolved: Any, plugins: Plugins, domain: Any, buffer: Any, *, run_dir: str | Path) -> Any:
    """A no-argument factory of DreamGym synthetic environments (experience model + shared buffer).

    Transitions reach the buffer once per finished episode (the agent loop's ``store``),
    not per step, as in the local loop's store stage.
    """
    from dreamgym_core.synthetic import SyntheticEnv, synthetic_config_of

    model = _experience_model(resolved, plugins, domain, run_dir)
    config = synthetic_config_of(resolved.pipeline)

    def make() -> Any:
        return SyntheticEnv(model, buffer, domain, config)

    make.model_id = getattr(model, "model_id", "")  # type: ignore[attr-defined]
    return make


def load_runtime(run_dir: str) -> EpisodeRuntime:
    """The runtime of run ``run_dir`` (called once per agent-loop worker process)."""
    resolved, plugins = _load(run_dir)
    pipeline = resolved.pipeline
    try:
        spec = json.loads(runtime_spec_path(run_dir).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{run_dir}: not a prepared verl run directory ({exc})") from exc
    domain = plugins.build("env", pipeline.env.name, resolved.components["env"])
    buffer = RemoteBuffer.connect(spec["buffer_actor"]) if spec.get("buffer_actor") else None
    curriculum = RemoteCurriculum.connect(spec["curriculum_actor"]) if spec.get("curriculum_actor") else None
    synthetic = (
        synthetic_env_factory(resolved, plugins, domain, buffer, run_dir=run_dir) if pipeline.loop.mode in ("dreamgym", "s2r") else None
    )

    def make_env(phase: str) -> Any:
        if phase == "real":
            return domain.make_env()
        if synthetic is None:
            raise DreamGymError(f"loop.mode={pipeline.loop.mode!r} has no synthetic environment")
        return synthetic()

    algo = resolved.components["algo"]
    return EpisodeRuntime(
        make_env=make_env,
        max_steps=pipeline.loop.max_steps,
        history_window=pipeline.loop.history_window,
        invalid_action_penalty=algo.invalid_action_penalty,
        turn_max_tokens=algo.turn_max_tokens,
        model_id=getattr(synthetic, "model_id", ""),
        store=(
            (lambda transitions: buffer.add(transitions=storable(transitions, synthetic=pipeline.loop.store_synthetic)))
            if buffer is not None else None
        ),
        report=curriculum.report if curriculum is not None else None,
    )
