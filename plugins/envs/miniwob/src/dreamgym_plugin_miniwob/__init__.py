"""DreamGym domain on MiniWoB++ (``miniwob``): web tasks in a real headless Chromium.

Entry point ``miniwob`` in group ``dreamgym``. See the README for the abstract state (the
page's elements), the actions, the splits (page seeds) and the data policies.
"""

from __future__ import annotations

from dreamgym_core import ComponentSpec, hookimpl

from .config import MiniWoBConfig
from .domain import MiniWoBDomain
from .env import MiniWoBEnv, parse_action, render_state
from .page import BrowserError

__all__ = ["MiniWoBDomain", "MiniWoBEnv", "MiniWoBConfig", "BrowserError", "parse_action", "render_state"]


@hookimpl
def dreamgym_register_envs() -> list[ComponentSpec]:
    return [
        ComponentSpec(
            name="miniwob",
            factory=MiniWoBDomain,
            config_type=MiniWoBConfig,
            description="MiniWoB++ web tasks (click-button, enter-text, login-user, ...) in a real headless Chromium.",
        )
    ]
