"""DreamGym domain on ALFWorld (``alfworld``): household tasks on ALFWorld's own text engine.

Entry point ``alfworld`` in group ``dreamgym``. ALFWorld's games are data (``alfworld-download``);
:mod:`.scenes` writes small games in the same format. See the README.
"""

from __future__ import annotations

from dreamgym_core import ComponentSpec, hookimpl

from .config import TASK_TYPES, AlfWorldConfig
from .domain import AlfWorldDomain, find_games
from .env import AlfWorldEnv, EngineError
from .scenes import PickAndPlace, write_game

__all__ = ["AlfWorldDomain", "AlfWorldEnv", "AlfWorldConfig", "EngineError", "PickAndPlace", "write_game", "find_games", "TASK_TYPES"]


@hookimpl
def dreamgym_register_envs() -> list[ComponentSpec]:
    return [
        ComponentSpec(
            name="alfworld",
            factory=AlfWorldDomain,
            config_type=AlfWorldConfig,
            description="ALFWorld household tasks (pick and place, clean, heat, cool, examine in light) on its text engine.",
        )
    ]
