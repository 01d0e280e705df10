"""``dreamgym backend-config PIPELINE --backend verl``: what a backend trainer will run.

A backend algorithm (one whose factory has ``runs_own_loop``) may expose
``backend`` (its name) and ``backend_config(resolved) -> dict``; this command prints
that view, e.g. the Hydra overrides the verl plugin passes to ``verl.trainer.main_ppo``.
The core names no plugin: it asks the pipeline's algo component.
"""

from __future__ import annotations

import json
from typing import Any

import click

from ..config import ResolvedPipeline
from ..errors import ConfigError
from ..plugins import Plugins

__all__ = ["backend_view", "command"]


def backend_view(resolved: ResolvedPipeline, plugins: Plugins, backend: str) -> dict[str, Any]:
    """The backend's view of ``resolved``; a clear error when its algo is not that backend's."""
    name = resolved.pipeline.algo.name
    factory = plugins.component("algo", name).factory
    if getattr(factory, "backend", None) != backend or not hasattr(factory, "backend_config"):
        raise ConfigError(f"{resolved.source}: algo.name {name!r} does not run on backend {backend!r}")
    return factory.backend_config(resolved)


@click.command("backend-config")
@click.argument("pipeline", type=click.Path())
@click.option("--backend", default="verl", show_default=True, help="Backend whose config to show.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a field.")
def command(pipeline: str, backend: str, overrides: tuple[str, ...]) -> None:
    """Print the config a backend trainer derives from PIPELINE (verl: Hydra overrides)."""
    from ..cli import _load

    resolved, plugins = _load(pipeline, overrides)
    click.echo(json.dumps(backend_view(resolved, plugins, backend), indent=2))
