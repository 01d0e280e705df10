"""Render docs/hooks.md from the hookspecs' signatures and docstrings (the only source)."""

from __future__ import annotations

import inspect

from . import hookspecs


def hook_names() -> list[str]:
    return [name for name in hookspecs.__all__ if name.startswith("dreamgym_")]


def signature(name: str) -> str:
    fn = getattr(hookspecs, name)
    return f"{name}{inspect.signature(fn)}"


def render() -> str:
    lines = [
        "# Hook reference",
        "",
        "Generated from `dreamgym_core/hookspecs.py` by `python -m dreamgym_core.hookdocs > docs/hooks.md`.",
        "Plugins implement these with `from dreamgym_core import hookimpl`.",
        "",
    ]
    for name in hook_names():
        doc = inspect.cleandoc(getattr(hookspecs, name).__doc__ or "")
        lines += [f"## `{signature(name)}`", "", doc, ""]
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    print(render(), end="")
