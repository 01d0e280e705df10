"""DreamGym domains on TextWorldExpress (``twx``) and TextWorld tw-make games (``tw``).

Entry point ``textworld`` in group ``dreamgym``. See the README for the abstract
state format, the task splits, the data policies and task variation.
"""

from __future__ import annotations

from dreamgym_core import ComponentSpec, hookimpl

from .config import TwConfig, TwxConfig
from .domain import TextWorldDomain
from .env import TextWorldEnv
from .state import parse_state, render_state

__all__ = ["TextWorldDomain", "TextWorldEnv", "TwxConfig", "TwConfig", "render_state", "parse_state"]


def make_twx(config: TwxConfig) -> TextWorldDomain:
    """The TextWorldExpress domain."""
    return TextWorldDomain(config, engine="twx")


def make_tw(config: TwConfig) -> TextWorldDomain:
    """The TextWorld (tw-make) domain."""
    return TextWorldDomain(config, engine="tw")


@hookimpl
def dreamgym_register_envs() -> list[ComponentSpec]:
    return [
        ComponentSpec(
            name="twx",
            factory=make_twx,
            config_type=TwxConfig,
            description="TextWorldExpress games (coin, twc, cookingworld, mapreader, ...) on the real engine.",
        ),
        ComponentSpec(
            name="tw",
            factory=make_tw,
            config_type=TwConfig,
            description="TextWorld tw-make games (coin_collector, treasure_hunter, cooking, custom), generated offline.",
        ),
    ]
