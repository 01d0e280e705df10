"""The one error hierarchy. The CLI turns any DreamGymError into a one-line message."""

from __future__ import annotations

import difflib
import re
from importlib import metadata
from typing import Iterable

__all__ = [
    "DreamGymError",
    "PluginNotFound",
    "PluginBlocked",
    "PluginNameClash",
    "PluginLoadError",
    "DuplicateComponentError",
    "ComponentNotFound",
    "ConfigError",
    "ConformanceError",
    "DataError",
    "DataUnavailable",
]


class DreamGymError(Exception):
    """Base of every error DreamGym raises on purpose. ``exit_code`` is the CLI's."""

    exit_code = 1


def _suggest(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


class PluginNotFound(DreamGymError):
    """A pipeline names a plugin that no installed distribution provides."""

    exit_code = 2

    def __init__(self, name: str, installed: Iterable[str], where: str = "") -> None:
        installed = sorted(installed)
        prefix = f"{where}: " if where else ""
        super().__init__(
            f"{prefix}plugin {name!r} is not installed (installed: {', '.join(installed) or 'none'})."
            + (_no_entry_point(name) or _suggest(name, installed))
        )


def _no_entry_point(name: str) -> str:
    """A hint when the plugin's distribution is installed but declares no entry point, the one
    thing discovery reads (else an empty string)."""
    dist = f"dreamgym-plugin-{name}"
    try:
        metadata.distribution(dist)
    except metadata.PackageNotFoundError:
        return ""
    # The lookup normalises the name (reward_entropy finds dreamgym-plugin-reward-entropy): a
    # distribution found so may declare its entry point under another spelling.
    declared = [
        ep for ep in metadata.entry_points(group="dreamgym")
        if ep.dist is not None and _normalised(ep.dist.name) == _normalised(dist)
    ]
    names = sorted({ep.name for ep in declared})  # a set: one distribution may be seen on two path entries
    if names:
        listed = ", ".join(map(repr, names))
        return f" Distribution {declared[0].dist.name!r} is installed; its entry point{'s are' if len(names) > 1 else ' is'} {listed}."
    return (f" Distribution {dist!r} is installed but declares no entry point {name!r} in the 'dreamgym' group "
            f"([project.entry-points.dreamgym] {name} = \"<module>\" in its pyproject.toml).")


def _normalised(distribution: str) -> str:
    """A distribution name as packaging compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", distribution).lower()


class PluginBlocked(PluginNotFound):
    """A pipeline names an installed plugin that ``DREAMGYM_BLOCK_PLUGINS`` blocks."""

    def __init__(self, name: str, where: str = "") -> None:
        prefix = f"{where}: " if where else ""
        DreamGymError.__init__(self, f"{prefix}plugin {name!r} is blocked by DREAMGYM_BLOCK_PLUGINS; unset it there to use it")


class PluginNameClash(DreamGymError):
    """A pipeline names a plugin that two installed distributions register."""

    def __init__(self, name: str, distributions: Iterable[str], where: str = "") -> None:
        prefix = f"{where}: " if where else ""
        super().__init__(f"{prefix}plugin {name!r} is registered by {' and '.join(distributions)}; uninstall all but one")


class ComponentNotFound(DreamGymError):
    """A pipeline names a component that no loaded plugin registers."""

    exit_code = 2

    def __init__(self, kind: str, name: str, available: Iterable[str], where: str = "", hint: str = "") -> None:
        available = sorted(available)
        prefix = f"{where}: " if where else ""
        super().__init__(
            f"{prefix}no {kind} named {name!r} (available: {', '.join(available) or 'none'})."
            + _suggest(name, available)
            + (f" {hint}" if hint else "")
        )


class PluginLoadError(DreamGymError):
    """A plugin's entry point failed to import."""

    exit_code = 2

    def __init__(self, entry_point: str, distribution: str, cause: BaseException) -> None:
        super().__init__(
            f"plugin {entry_point!r} (distribution {distribution}) failed to load: "
            f"{type(cause).__name__}: {cause}"
        )


class UnknownHookError(DreamGymError):
    """A plugin implements a hook no specification names (a misspelt hook)."""

    exit_code = 2

    def __init__(self, plugin: str, hook: str, hooks: Iterable[str]) -> None:
        super().__init__(f"plugin {plugin!r}: unknown hook {hook!r}.{_suggest(hook, hooks)} (the hooks: docs/hooks.md)")


class DuplicateComponentError(DreamGymError):
    """Two plugins register a component of one kind under one name."""

    exit_code = 2

    def __init__(self, kind: str, name: str, first: str, second: str) -> None:
        super().__init__(f"duplicate {kind} name {name!r}: registered by plugin {first!r} and by plugin {second!r}")


class ConfigError(DreamGymError):
    """A pipeline file or a config value is malformed; the message names file and path."""

    exit_code = 2


class DataUnavailable(ConfigError):
    """Data a component reads from its default place (none configured) is not on this machine:
    missing here, not broken (the conformance kit skips an env whose default data it is). A
    ConfigError, so a run stops on it as before."""


class ConformanceError(DreamGymError):
    """A component breaks its contract; see docs/conformance.md."""


class DataError(DreamGymError):
    """Stored data (buffer segment, checkpoint, dataset file) is missing or corrupt."""


class ModelUnavailable(DataError):
    """A model named by hub id that is not in the local cache, with downloads off: missing
    here, not broken (the conformance kit skips a component whose default model it is)."""
