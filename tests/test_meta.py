"""Meta-tests keeping hooks, docs and tests in step."""

from __future__ import annotations

import ast
import importlib
import re

import pytest

from conftest import ROOT
from dreamgym_core import hookspecs
from dreamgym_core.hookdocs import hook_names, render, signature


def test_hooks_are_documented():
    docs = (ROOT / "docs" / "hooks.md").read_text()
    for name in hook_names():
        assert f"## `{signature(name)}`" in docs, f"docs/hooks.md lacks {name}; regenerate it"
        assert getattr(hookspecs, name).__doc__, f"{name} has no docstring"
    assert docs == render(), "docs/hooks.md is stale: python -m dreamgym_core.hookdocs > docs/hooks.md"


def test_hooks_have_tests():
    sources = "\n".join(path.read_text() for path in (ROOT / "tests").glob("test_*.py"))
    for name in hook_names():
        assert re.search(rf"\btest_hook_{name}\b", sources), f"no test_hook_{name}"


def test_every_spec_is_in_all():
    specs = [n for n in dir(hookspecs) if n.startswith("dreamgym_") and callable(getattr(hookspecs, n))]
    assert sorted(specs) == sorted(hook_names())


def _python_blocks() -> list[tuple[str, str]]:
    """Every ```python block of the README and docs/, with the file it is in."""
    blocks = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for block in re.findall(r"```python\n(.*?)```", path.read_text(), re.DOTALL):
            blocks.append((path.name, block))
    return blocks


@pytest.mark.parametrize("where, block", _python_blocks(), ids=[f"{name}-{i}" for i, (name, _) in enumerate(_python_blocks())])
def test_the_names_python_examples_import_exist(where, block):
    # A reader copies these into a script: each must parse and import what it names.
    tree = ast.parse(block)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0].startswith("dreamgym"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), f"{where}: {node.module} has no {alias.name}"
