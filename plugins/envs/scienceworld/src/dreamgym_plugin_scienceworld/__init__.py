"""DreamGym domain on ScienceWorld (``sciworld``): 30 elementary-science tasks on the real simulator.

Entry point ``scienceworld`` in group ``dreamgym``. See the README for the abstract state,
the splits (ScienceWorld's own train/dev/test variations), the data policies and task variation.
"""

from __future__ import annotations

from dreamgym_core import ComponentSpec, hookimpl

from .config import SciWorldConfig
from .domain import SciWorldDomain
from .env import SciWorldEnv, render_state

__all__ = ["SciWorldDomain", "SciWorldEnv", "SciWorldConfig", "render_state"]


@hookimpl
def dreamgym_register_envs() -> list[ComponentSpec]:
    return [
        ComponentSpec(
            name="sciworld",
            factory=SciWorldDomain,
            config_type=SciWorldConfig,
            description="ScienceWorld tasks (find-living-thing, boil, test-conductivity, ...) on the real simulator.",
        )
    ]
