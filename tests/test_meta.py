"""Meta-tests keeping hooks, docs and tests in step."""

from __future__ import annotations

import re

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
