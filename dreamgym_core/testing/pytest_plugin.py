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


@pytest.fixture
def tiny_pipeline(tmp_path: Any) -> dict[str, Any]:
    """A minimal pipeline mapping (real mode) on tiny components, as a YAML-ready dict."""
    return {
        "plugins": ["textworld", "hf", "local"],
        "env": {"name": "twx", "config": {"game": "coin", "train_seeds": 4, "test_seeds": 2}},
        "policy": {"name": "hf-tiny", "config": {}},
        "algo": {"name": "grpo", "config": {}},
        "loop": {"mode": "real", "iterations": 1, "tasks_per_iteration": 2, "group_size": 2, "max_steps": 4},
        "eval": {"episodes": 2, "before_training": False},
        "run_dir": str(tmp_path / "run"),
    }
