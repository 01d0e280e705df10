"""The software a run ran on: Python, the core, the loaded plugins and what they require.

Written to ``versions.json`` in the run directory at every start, so a result can be traced to
the engine and library versions that produced it (a TextWorldExpress or transformers upgrade can
change a run as much as a config change).
"""

from __future__ import annotations

import json
import logging
import platform
import re
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

from .checkpoint import atomic_write
from .plugins import installed_plugins

__all__ = ["VERSIONS_FILE", "software_versions", "record_versions", "changed_packages"]

log = logging.getLogger(__name__)

VERSIONS_FILE = "versions.json"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _runtime_requirements(distribution: str) -> list[str]:
    """Names of what ``distribution`` requires to run (its extras, such as test tools, left out)."""
    names = []
    for requirement in metadata.requires(distribution) or []:
        spec, _, marker = requirement.partition(";")
        if "extra" in marker:
            continue
        match = _NAME.match(spec.strip())
        if match:
            names.append(match.group(0))
    return names


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def software_versions(plugin_names: Iterable[str]) -> dict[str, Any]:
    """Python and platform, and the version of the core, of each named plugin's distribution and
    of every package these require directly (sorted by canonical name; absent ones left out)."""
    installed = installed_plugins()
    distributions = ["dreamgym"] + [installed[n].distribution for n in plugin_names if n in installed]
    wanted = set()
    for distribution in distributions:
        if _version(distribution) is None:
            continue
        wanted.add(_canonical(distribution))
        wanted.update(_canonical(name) for name in _runtime_requirements(distribution))
    packages = {name: version for name in sorted(wanted) if (version := _version(name)) is not None}
    return {"python": platform.python_version(), "platform": platform.platform(), "packages": packages}


def changed_packages(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``name old -> new`` for Python and every package whose version differs between two records."""
    before = {"python": old.get("python"), **old.get("packages", {})}
    after = {"python": new.get("python"), **new.get("packages", {})}
    return [
        f"{name} {before.get(name) or 'absent'} -> {after.get(name) or 'absent'}"
        for name in sorted(set(before) | set(after))
        if before.get(name) != after.get(name)
    ]


def record_versions(run_dir: Path, plugin_names: Iterable[str]) -> dict[str, Any]:
    """Write ``versions.json``. A run resumed under other versions says which changed, and
    keeps the record it replaces as ``versions.<n>.json`` (n = 1 for the first start), so the
    versions each part of the run ran under stay known."""
    current = software_versions(plugin_names)
    path = run_dir / VERSIONS_FILE
    if not path.exists():
        stored = None
    else:
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError):
            stored = None
        if not _is_record(stored):
            # damaged: which versions the earlier part ran under is unknown, so its bytes are kept as they are
            kept = _keep_earlier(run_dir, path)
            log.warning("%s: %s is not a readable versions record; kept as %s", run_dir, VERSIONS_FILE, kept.name)
        elif changed := changed_packages(stored, current):
            kept = _keep_earlier(run_dir, path)
            log.warning("%s: this run continues under other versions: %s (the earlier record is kept in %s)",
                        run_dir, "; ".join(changed), kept.name)
    atomic_write(path, (json.dumps(current, indent=2, sort_keys=True) + "\n").encode())
    return current


def _is_record(stored: Any) -> bool:
    """Whether ``stored`` has the shape :func:`software_versions` writes (its keys may be missing)."""
    if not isinstance(stored, dict):
        return False
    packages = stored.get("packages", {})
    return (
        isinstance(packages, dict)
        and all(isinstance(v, str) for v in packages.values())
        and isinstance(stored.get("python", ""), (str, type(None)))
    )


def _keep_earlier(run_dir: Path, path: Path) -> Path:
    # after the highest number kept: counting the files reused a number when one was missing
    numbers = [int(m.group(1)) for p in run_dir.glob("versions.*.json") if (m := re.fullmatch(r"versions\.(\d+)\.json", p.name))]
    kept = run_dir / f"versions.{1 + max(numbers, default=0)}.json"
    atomic_write(kept, path.read_bytes())
    return kept
