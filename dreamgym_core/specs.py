"""Typed specs that registration hooks return."""

from __future__ import annotations

from typing import Any, Callable, Literal

import msgspec

__all__ = ["ComponentKind", "ComponentSpec", "KINDS"]

ComponentKind = Literal["env", "model", "encoder", "buffer", "curriculum", "algo", "logger"]
KINDS: tuple[ComponentKind, ...] = ("env", "model", "encoder", "buffer", "curriculum", "algo", "logger")


class ComponentSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One component a plugin provides.

    ``factory`` is called as ``factory(config, **context)`` where ``config`` is an
    instance of ``config_type`` and ``context`` holds the collaborators that kind
    needs (documented on each registration hook).
    """

    name: str
    factory: Callable[..., Any]
    config_type: type
    description: str
    # Filled in by the registry: the entry-point name of the providing plugin.
    plugin: str = ""
