"""The plugin manager, built per run from the pipeline's plugin list.

Nothing is loaded at import time. Only the entry points a pipeline names are
imported, so one broken plugin never stops another pipeline (or the CLI) from
working.
"""

from __future__ import annotations

import os
import re
import sys
from importlib import metadata
from typing import Any, Iterable, Sequence

import pluggy

from . import hookspecs
from .contracts import ComponentError, missing_members
from .errors import (
    ComponentNotFound, DreamGymError, DuplicateComponentError, PluginBlocked, PluginLoadError, PluginNameClash, PluginNotFound,
    UnknownHookError,
)
from .specs import KINDS, ComponentKind, ComponentSpec

__all__ = [
    "GROUP",
    "ESSENTIAL_PLUGINS",
    "InstalledPlugin",
    "installed_plugins",
    "get_plugin_manager",
    "Plugins",
]

GROUP = "dreamgym"
# Internal hook implementations that every run has (metric sinks). The only ones
# registered by import; envs, models, algorithms... always come through entry points.
ESSENTIAL_PLUGINS: tuple[str, ...] = ("dreamgym_core.loggers",)

_REGISTER_HOOK: dict[ComponentKind, str] = {
    "env": "dreamgym_register_envs",
    "model": "dreamgym_register_models",
    "encoder": "dreamgym_register_encoders",
    "buffer": "dreamgym_register_buffers",
    "curriculum": "dreamgym_register_curricula",
    "algo": "dreamgym_register_algos",
    "logger": "dreamgym_register_loggers",
}


class InstalledPlugin:
    """An entry point in group ``dreamgym``, read from metadata without importing it."""

    def __init__(self, entry_point: metadata.EntryPoint) -> None:
        self.entry_point = entry_point
        self.name = entry_point.name
        dist = entry_point.dist
        self.distribution = dist.metadata["Name"] if dist is not None else "unknown"
        self.version = dist.version if dist is not None else "unknown"
        self.module = entry_point.value
        # Other distributions that register the same entry-point name (see installed_plugins).
        self.clashes: list[str] = []

    def as_dict(self) -> dict[str, Any]:
        row: dict[str, Any] = {"name": self.name, "distribution": self.distribution, "version": self.version, "module": self.module}
        if self.clashes:
            row["clashes"] = list(self.clashes)
        return row


def installed_plugins() -> dict[str, InstalledPlugin]:
    """Every installed plugin by entry-point name. A name that another distribution also
    registers keeps the first and lists the others in ``clashes``: loading it is then refused,
    since which one a run would get depends on the order of sys.path. (One distribution seen
    twice, as an editable install on two path entries can be, is no clash.)"""
    found: dict[str, InstalledPlugin] = {}
    for ep in metadata.entry_points(group=GROUP):
        plugin = InstalledPlugin(ep)
        first = found.setdefault(ep.name, plugin)
        if plugin.distribution != first.distribution and plugin.distribution not in first.clashes:
            first.clashes.append(plugin.distribution)
    return found


def _blocked() -> set[str]:
    return {name.strip() for name in os.environ.get("DREAMGYM_BLOCK_PLUGINS", "").split(",") if name.strip()}


def load_plugin(plugin: InstalledPlugin) -> Any:
    """Import one plugin's module, naming entry point and distribution on failure."""
    try:
        return plugin.entry_point.load()
    except Exception as exc:  # any import-time failure is the plugin's, reported as such
        raise PluginLoadError(plugin.name, plugin.distribution, exc) from exc


def get_plugin_manager(names: Sequence[str], where: str = "") -> pluggy.PluginManager:
    """A fresh manager with the hookspecs, the essential plugins and the named plugins."""
    pm = pluggy.PluginManager(hookspecs.NAME)
    pm.add_hookspecs(hookspecs)
    for name in _blocked():
        pm.set_blocked(name)
    for module_name in ESSENTIAL_PLUGINS:
        __import__(module_name)
        pm.register(sys.modules[module_name], name=module_name)
    installed = installed_plugins()
    for name in names:
        if pm.is_blocked(name):
            raise PluginBlocked(name, where=where)
        if name not in installed:
            raise PluginNotFound(name, installed, where=where)
        if pm.get_plugin(name) is not None:
            continue
        if installed[name].clashes:
            raise PluginNameClash(name, [installed[name].distribution, *installed[name].clashes], where=where)
        plugin = load_plugin(installed[name])
        if pm.get_name(plugin) is not None:  # pluggy refuses one object under two names
            raise DreamGymError(
                f"plugin {name!r}: its entry point loads the object plugin {pm.get_name(plugin)!r} already registered "
                f"({installed[name].distribution}); point it at an object of its own"
            )
        try:
            pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:  # a hook implementation that does not match its spec
            raise DreamGymError(f"plugin {name!r}: {exc}") from exc
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:  # a hook implementation no spec names
        named = re.search(r"unknown hook '([^']+)'", str(exc))
        plugin = pm.get_name(exc.plugin) or repr(exc.plugin)
        if named is None:
            raise DreamGymError(f"plugin {plugin!r}: {exc}") from exc
        hooks = [name for name in dir(hookspecs) if name.startswith("dreamgym_")]
        raise UnknownHookError(plugin, named.group(1), hooks) from exc
    if os.environ.get("DREAMGYM_TRACE_HOOKS") == "1":
        pm.trace.root.setwriter(lambda msg: print(msg, end="", file=sys.stderr))
        pm.enable_tracing()
    return pm


def _registered(impl: Any, hook_name: str) -> list[Any]:
    """What one plugin's registration hook returns, as a list; its failure names the plugin."""
    try:
        specs = impl.function()
    except Exception as exc:  # plugin code: any failure is the plugin's, and says which
        raise DreamGymError(f"plugin {impl.plugin_name!r}: {hook_name} failed: {type(exc).__name__}: {exc}") from exc
    if specs is None:
        return []
    if not isinstance(specs, (list, tuple)):
        raise DreamGymError(f"plugin {impl.plugin_name!r}: {hook_name} returned {type(specs).__name__}, expected a list of ComponentSpec")
    return list(specs)


class Plugins:
    """Typed facade over the manager: collect specs, detect duplicates, build components."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        self.hook = pm.hook
        self._specs: dict[ComponentKind, dict[str, ComponentSpec]] = {}

    @classmethod
    def for_names(cls, names: Iterable[str], where: str = "") -> Plugins:
        return cls(get_plugin_manager(list(names), where=where))

    def components(self, kind: ComponentKind) -> dict[str, ComponentSpec]:
        """Every spec of ``kind`` by name; a name registered twice raises naming both plugins."""
        if kind not in _REGISTER_HOOK:
            raise DreamGymError(f"unknown component kind {kind!r}; the kinds are {', '.join(_REGISTER_HOOK)}")
        if kind not in self._specs:
            hook = getattr(self.pm.hook, _REGISTER_HOOK[kind])
            found: dict[str, ComponentSpec] = {}
            # Call each implementation on its own so every spec knows its plugin.
            for impl in hook.get_hookimpls():  # registration order
                for spec in _registered(impl, _REGISTER_HOOK[kind]):
                    if not isinstance(spec, ComponentSpec):
                        raise DreamGymError(
                            f"plugin {impl.plugin_name!r}: {_REGISTER_HOOK[kind]} returned "
                            f"{type(spec).__name__}, expected ComponentSpec"
                        )
                    if spec.name in found:
                        raise DuplicateComponentError(kind, spec.name, found[spec.name].plugin, impl.plugin_name)
                    found[spec.name] = ComponentSpec(
                        name=spec.name,
                        factory=spec.factory,
                        config_type=spec.config_type,
                        description=spec.description,
                        plugin=impl.plugin_name,
                    )
            self._specs[kind] = found
        return self._specs[kind]

    def all_components(self) -> dict[ComponentKind, dict[str, ComponentSpec]]:
        return {kind: self.components(kind) for kind in KINDS}

    def component(self, kind: ComponentKind, name: str, where: str = "") -> ComponentSpec:
        specs = self.components(kind)
        if name not in specs:
            raise ComponentNotFound(kind, name, specs, where=where)
        return specs[name]

    def build(self, kind: ComponentKind, name: str, config: Any, **context: Any) -> Any:
        """Construct a component from its typed config and collaborators.

        A failure inside the plugin's factory (a missing system dependency, a bug) becomes one
        line naming the component and its plugin; errors DreamGym raises on purpose pass as they are.
        """
        spec = self.component(kind, name)
        try:
            component = spec.factory(config, **context)
        except DreamGymError:
            raise
        except Exception as exc:  # plugin code: any failure is the plugin's, and says which
            detail = " ".join(str(exc).split())  # one line, however the plugin formatted it
            raise DreamGymError(
                f"{kind} {name!r} (plugin {spec.plugin!r}) failed to build: {type(exc).__name__}: {detail}"
            ) from exc
        self._check_built(kind, spec, component)
        return component

    def who(self, kind: ComponentKind, name: str, role: str = "") -> str:
        """How errors name a component: ``algo 'grpo' (plugin 'local')``; ``role`` says what a
        model is there for (``policy``, ``experience_model``) in place of its kind."""
        return f"{role or kind} {name!r} (plugin {self.component(kind, name).plugin!r})"

    def _check_built(self, kind: ComponentKind, spec: ComponentSpec, component: Any) -> None:
        """The factory's product has what the core calls on it (else the first call, minutes into
        a run, failed as a traceback in core code; a None experience model quietly turned off)."""
        who = f"{kind} {spec.name!r} (plugin {spec.plugin!r})"
        if component is None:
            raise ComponentError(f"{who}: its factory returned None")
        if getattr(spec.factory, "runs_own_loop", False):  # a trainer that runs the whole pipeline itself
            return
        missing = missing_members(kind, component)
        if missing:
            raise ComponentError(
                f"{who}: {type(component).__name__} has no {', '.join(missing)} (dreamgym check {spec.plugin} runs the conformance kit)"
            )
