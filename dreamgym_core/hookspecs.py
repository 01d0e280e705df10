"""Hook specifications: everything a DreamGym plugin can implement.

Plugins write ``from dreamgym_core import hookimpl`` and decorate functions whose
names match the specs below. Registration hooks return lists of
:class:`~dreamgym_core.specs.ComponentSpec`; lifecycle hooks observe a run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from .config import PipelineConfig
    from .specs import ComponentSpec

__all__ = [
    "NAME",
    "hookspec",
    "hookimpl",
    "dreamgym_register_envs",
    "dreamgym_register_models",
    "dreamgym_register_encoders",
    "dreamgym_register_buffers",
    "dreamgym_register_curricula",
    "dreamgym_register_algos",
    "dreamgym_register_loggers",
    "dreamgym_configure",
    "dreamgym_run_started",
    "dreamgym_before_iteration",
    "dreamgym_after_iteration",
    "dreamgym_run_finished",
]

NAME = "dreamgym"
hookspec = pluggy.HookspecMarker(NAME)
hookimpl = pluggy.HookimplMarker(NAME)


# --- registration hooks ---------------------------------------------------------


@hookspec
def dreamgym_register_envs() -> list[ComponentSpec]:
    """Return the domains (real environments and their knowledge) this plugin provides.

    Called once per run, after the plugins named in the pipeline file are loaded
    and before any component is constructed.

    Returns:
        Specs whose ``name`` is unique across all loaded plugins. ``factory(config)``
        returns a :class:`~dreamgym_core.protocols.Domain`.

    Notes for plugin authors:
        Run ``dreamgym_core.testing.check_domain(domain)`` in your tests (``dreamgym check
        <plugin>`` does the same): it checks the splits, ``collect``, ``annotate`` and the
        optional members, and ``check_env(domain.make_env(), task)`` on a train task.
    """


@hookspec
def dreamgym_register_models() -> list[ComponentSpec]:
    """Return the model backends this plugin provides (for policies and M_exp).

    Called once per run, after plugin loading.

    Returns:
        Specs whose ``factory(config)`` returns a
        :class:`~dreamgym_core.protocols.LanguageModel`.

    Notes for plugin authors:
        Backends with local weights should also satisfy ``TrainableLanguageModel``.
        Run ``dreamgym_core.testing.check_language_model`` on a built backend in your tests.
    """


@hookspec
def dreamgym_register_encoders() -> list[ComponentSpec]:
    """Return the text encoders (phi) this plugin provides.

    Called once per run, after plugin loading.

    Returns:
        Specs whose ``factory(config)`` returns an
        :class:`~dreamgym_core.protocols.Encoder`.

    Notes for plugin authors:
        ``id`` must change whenever the embedding function changes; buffers backfill on it.
    """


@hookspec
def dreamgym_register_buffers() -> list[ComponentSpec]:
    """Return the replay buffers this plugin provides.

    Called once per run, after plugin loading.

    Returns:
        Specs whose ``factory(config, encoder=..., path=...)`` returns a
        :class:`~dreamgym_core.protocols.ReplayBuffer`; ``path`` is a directory the
        buffer owns and keeps its records in: a run passes ``RUN/buffer`` and
        ``--resume`` opens it again, expecting what was stored there. None asks for an
        in-memory buffer (``dreamgym eval-model``).

    Notes for plugin authors:
        Run ``dreamgym_core.testing.check_buffer`` and ``check_buffer_reopens`` on your buffer.
    """


@hookspec
def dreamgym_register_curricula() -> list[ComponentSpec]:
    """Return the task curricula this plugin provides.

    Called once per run, after plugin loading.

    Returns:
        Specs whose ``factory(config, tasks=..., task_generator=..., encoder=..., seed=...,
        domain=...)`` returns a :class:`~dreamgym_core.protocols.Curriculum`. ``tasks`` are the
        env's ``train`` seed tasks; ``encoder`` is the pipeline's (or None). ``task_generator``
        is the experience model (M_task shares its weights) or None; ``domain`` is the env's
        domain (its optional ``propose_variations`` writes variations without a model), or None:
        ``dreamgym check`` builds curricula with none, on stand-in tasks. Accept
        ``**kwargs`` so that context added later does not break the factory.

    Notes for plugin authors:
        Run ``dreamgym_core.testing.check_curriculum`` on your curriculum.
    """


@hookspec
def dreamgym_register_algos() -> list[ComponentSpec]:
    """Return the RL and baseline trainers this plugin provides.

    Called once per run, after plugin loading.

    Returns:
        Specs whose ``factory(config, policy=..., seed=...)`` returns an
        :class:`~dreamgym_core.protocols.Algorithm`; ``policy`` is the built policy
        model backend. The core fine-tunes that same object after the factory returns (the
        warm start's ``sft``) and may replace its weights in place (``reload``, on ``--resume``
        and to restore a kept policy), so an algorithm reads the policy's weights when it acts,
        updates and saves, not once when it is built.

    Notes for plugin authors:
        Run ``dreamgym_core.testing.check_algorithm`` on your algorithm.
    """


@hookspec
def dreamgym_register_loggers() -> list[ComponentSpec]:
    """Return the metric sinks this plugin provides.

    Called once per run, after plugin loading.

    Returns:
        Specs whose ``factory(config, run_dir=...)`` returns a
        :class:`~dreamgym_core.protocols.MetricSink`.
    """


# --- run lifecycle hooks ---------------------------------------------------------


@hookspec(historic=True)
def dreamgym_configure(config: PipelineConfig) -> None:
    """Receive the resolved pipeline config before the run builds components.

    Called once per run; historic, so plugins registered later still receive it.

    Args:
        config
    """


@hookspec
def dreamgym_run_started(run_dir: str, config: PipelineConfig) -> None:
    """Observe the start of a run, after components are built.

    Args:
        run_dir
        config
    """


@hookspec
def dreamgym_before_iteration(iteration: int, state: dict[str, Any]) -> None:
    """Observe the start of a training iteration.

    Not called on a backend that runs its own loop (verl starts each step inside its
    trainer actor); ``dreamgym_after_iteration`` is.

    Args:
        iteration: zero-based iteration index.
        state: read-only view of the run's counters (real transitions used, ...).
    """


@hookspec
def dreamgym_after_iteration(iteration: int, metrics: dict[str, float]) -> None:
    """Observe the metrics of a finished training iteration.

    On the verl backend, called as verl logs each step (read from its metrics file).

    Args:
        iteration
        metrics: namespaced scalars (``losses/...``, ``charts/...``).
    """


@hookspec
def dreamgym_run_finished(run_dir: str, metrics: dict[str, float]) -> None:
    """Observe the end of a run (also called when the run fails).

    Args:
        run_dir
        metrics: the final metrics, including evaluation when it ran.
    """
