"""Command groups beyond the basics, one module each, added to the CLI here."""

from __future__ import annotations

import importlib

import click

# Modules under dreamgym_core.commands that define ``command`` (a click command or group).
COMMAND_MODULES: tuple[str, ...] = ("buffer", "collect", "eval_model", "backend_config")


def register_commands(cli: click.Group) -> None:
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"{__name__}.{name}")
        cli.add_command(module.command)
