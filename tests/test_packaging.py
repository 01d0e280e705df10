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
