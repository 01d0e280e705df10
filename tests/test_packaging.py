"""Packaging of the core and of every built-in plugin, as ``pip install`` meets it."""

from __future__ import annotations

import re
import tomllib

import pytest

from conftest import ROOT

PYPROJECTS = [ROOT / "pyproject.toml", *sorted(ROOT.glob("plugins/*/*/pyproject.toml"))]


def _toml(path):
    return tomllib.loads(path.read_text())


@pytest.mark.parametrize("path", PYPROJECTS, ids=lambda p: "core" if p.parent == ROOT else p.parent.name)
def test_build_backend_accepts_the_license_expression(path):
    # An SPDX string in project.license (PEP 639) is rejected by setuptools before 77:
    # a build with an older setuptools (--no-build-isolation, a pinned build env) fails.
    meta = _toml(path)
    if not isinstance(meta["project"].get("license"), str):
        return
    (requirement,) = [r for r in meta["build-system"]["requires"] if r.startswith("setuptools")]
    minimum = re.fullmatch(r"setuptools>=(\d+)(\.\d+)*", requirement)
    assert minimum and int(minimum.group(1)) >= 77, f"{path}: {requirement!r} cannot build license = {meta['project']['license']!r}"


def _pinned(requirement: str) -> tuple[str, str] | None:
    """(name, version) of an exact ``name==version`` requirement, else None."""
    match = re.fullmatch(r"\s*([A-Za-z0-9._-]+)\s*==\s*([^\s;,]+)\s*", requirement)
    return (match.group(1), match.group(2)) if match else None


@pytest.mark.parametrize("path", PYPROJECTS, ids=lambda p: "core" if p.parent == ROOT else p.parent.name)
def test_requires_python_fits_the_pinned_dependencies(path):
    # A dependency pinned to one release can only be installed on the Pythons that release
    # allows; the distribution must not claim more, or pip on another Python fails on the pin
    # (verl 0.9.1 requires Python <3.13) instead of naming the distribution.
    from importlib.metadata import PackageNotFoundError, metadata

    from packaging.specifiers import SpecifierSet

    project = _toml(path)["project"]
    ours = SpecifierSet(project["requires-python"])
    checked = 0
    for name, version in filter(None, map(_pinned, project.get("dependencies", []))):
        try:
            installed = metadata(name)
        except PackageNotFoundError:
            continue
        if installed["Version"] != version or not installed["Requires-Python"]:
            continue
        theirs = SpecifierSet(installed["Requires-Python"])
        for minor in range(8, 30):
            python = f"3.{minor}"
            assert python not in ours or python in theirs, (
                f"{path}: requires-python {ours} allows Python {python}, but {name}=={version} requires {theirs}"
            )
        checked += 1
    if any(map(_pinned, project.get("dependencies", []))) and not checked:
        pytest.skip("the pinned dependencies are not installed here")


def test_dreamgym_core_is_marked_typed_and_the_marker_is_packaged():
    # PEP 561: without py.typed, a type checker ignores the annotations of an installed dreamgym_core
    assert (ROOT / "dreamgym_core" / "py.typed").is_file()
    assert "py.typed" in _toml(ROOT / "pyproject.toml")["tool"]["setuptools"]["package-data"]["dreamgym_core"]


def _constraints() -> dict[str, list[str]]:
    """constraints.txt as {canonical name: [version, ...]} (one per Python fork)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins: dict[str, list[str]] = {}
    for number, line in enumerate((ROOT / "constraints.txt").read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        requirement = Requirement(line)
        (spec,) = requirement.specifier  # one exact version per line
        assert spec.operator == "==", f"constraints.txt:{number}: {line!r} is not an exact pin"
        pins.setdefault(canonicalize_name(requirement.name), []).append(spec.version)
    return pins


def test_every_requirement_is_pinned_in_constraints():
    # scripts/setup.sh installs with constraints.txt, so a fresh clone gets the versions the tests
    # passed with; a requirement added without running scripts/lock.sh would be resolved anew.
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = _constraints()
    ours = {canonicalize_name(_toml(path)["project"]["name"]) for path in PYPROJECTS}
    missing = set()
    for path in PYPROJECTS:
        project = _toml(path)["project"]
        extras = project.get("optional-dependencies", {}).values()
        for line in [*project.get("dependencies", []), *(r for extra in extras for r in extra)]:
            name = canonicalize_name(Requirement(line).name)
            if name not in ours and name != "torch" and name not in pins:
                missing.add(f"{name} ({path.relative_to(ROOT)})")
    assert not missing, f"not in constraints.txt (run scripts/lock.sh): {sorted(missing)}"


def test_constraints_leave_torch_to_setup_and_were_resolved_against_its_pin():
    # setup.sh installs torch itself (pip picks the CPU build here); lock.sh resolves the other
    # packages against that same version, so the two pins must move together.
    assert "torch" not in _constraints()
    setup = re.search(r'"torch==([^"]+)"', (ROOT / "scripts" / "setup.sh").read_text())
    lock = re.search(r'"torch==([^"]+)"', (ROOT / "scripts" / "lock.sh").read_text())
    assert setup and lock and setup.group(1) == lock.group(1)
