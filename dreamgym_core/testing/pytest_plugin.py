"""pytest fixtures for plugin authors (registered under the ``pytest11`` entry point)."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import pluggy
import pytest

from ..plugins import Plugins, get_plugin_manager


@pytest.fixture
def dreamgym_pm() -> pluggy.PluginManager:
    """A fresh plugin manager with the hookspecs and essential plugins, no entry points."""
    return get_plugin_manager([])


@pytest.fixture
def register_plugin(dreamgym_pm: pluggy.PluginManager) -> Iterator[Callable[[Any, str], Plugins]]:
    """Register an in-test object with ``@hookimpl`` methods; unregistered afterwards."""
    registered: list[Any] = []

    def register(plugin: Any, name: str = "inline") -> Plugins:
        dreamgym_pm.register(plugin, name=name)
        dreamgym_pm.check_pending()
        registered.append(plugin)
        return Plugins(dreamgym_pm)

    try:
        yield register
    finally:
        for plugin in registered:
            if dreamgym_pm.is_registered(plugin):
                dreamgym_pm.unregister(plugin)


# The smallest hf-tiny model (hf's TinyConfig bounds: vocab_size >= 300, max_positions >= 1024).
_TINY_MODEL = {"hidden_size": 32, "layers": 1, "heads": 2, "intermediate_size": 64, "vocab_size": 300, "max_positions": 1024, "max_length": 512}


@pytest.fixture
def tiny_pipeline(tmp_path: Any) -> dict[str, Any]:
    """A minimal pipeline mapping (real mode) on tiny components, as a YAML-ready dict: a run of it
    (``run_pipeline(*load_resolved(tiny_pipeline))``) takes seconds, mostly the engine starting."""
    return {
        "plugins": ["textworld", "hf", "local"],
        "env": {"name": "twx", "config": {"game": "coin", "train_seeds": 4, "valid_seeds": 0, "test_seeds": 2, "max_steps": 6}},
        "policy": {"name": "hf-tiny", "config": dict(_TINY_MODEL)},
        "algo": {"name": "grpo", "config": {"max_new_tokens": 16}},
        "data": {"expert_episodes": 4, "noisy_episodes": 0, "random_episodes": 0},
        "loop": {"mode": "real", "iterations": 1, "tasks_per_iteration": 2, "group_size": 2, "max_steps": 4},
        "eval": {"episodes": 2, "before_training": False},
        "run_dir": str(tmp_path / "run"),
    }
