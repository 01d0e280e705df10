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
