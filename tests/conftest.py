"""Shared helpers for core tests: build real plugin packages in a temp dir and run the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dreamgym_core.testing.processes import sigint_as_in_a_terminal

ROOT = Path(__file__).resolve().parents[1]


def build_plugin_package(tmp: Path, dist: str, module: str, source: str, entry_points: dict[str, str], deps: tuple[str, ...] = ()) -> Path:
    """Write a one-module setuptools project and pip-install it into ``tmp/site`` (offline)."""
    project = tmp / dist
    (project / module).mkdir(parents=True)
    (project / module / "__init__.py").write_text(textwrap.dedent(source))
    eps = "\n".join(f'{name} = "{target}"' for name, target in entry_points.items())
    (project / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""
            [build-system]
            requires = ["setuptools>=68"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "{dist}"
            version = "1.2.3"
            dependencies = {list(deps)!r}

            [project.entry-points.dreamgym]
            """
        ).lstrip()
        + eps
        + "\n"
    )
    site = tmp / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--no-build-isolation", "--target", str(site), str(project)],
        check=True,
        capture_output=True,
    )
    return site


# The README's main job cut to about a minute (tests/test_end_to_end.py, tests/test_ctrl_c.py).
REDUCED = [
    "env.config.train_seeds=6", "env.config.test_seeds=4",
    "data.expert_episodes=6", "data.noisy_episodes=2", "data.random_episodes=2", "data.explore_episodes=2",
    "loop.reject_unlisted_actions=true",
    "experience.epochs=1", "loop.warmstart_epochs=1", "loop.warmstart_select_episodes=2", "env.config.valid_seeds=2",
    "loop.iterations=2",
    "loop.tasks_per_iteration=2", "loop.group_size=2", "loop.max_steps=3", "eval.episodes=4",
    # One torch thread, not the main job's two: the suite shares the cores with whatever runs beside
    # it, and two threads beside one busy core ran these tests 2.2x slower (1371 s against 625 s).
    "policy.config.cpu_threads=1", "experience_model.config.cpu_threads=1",
]


def reduced_args(run_dir: Path, *extra: str) -> list[str]:
    """``dreamgym run`` arguments for the reduced main job in ``run_dir``, with ``extra`` overrides."""
    args = ["run", str(ROOT / "examples" / "default.yaml"), "--set", f"run_dir={run_dir}"]
    for item in [*REDUCED, *extra]:
        args += ["--set", item]
    return args


def open_run_buffer(run_dir: Path):
    """A run's replay buffer as the default pipeline stores it (exact, hashing encoder)."""
    encoders, exact = pytest.importorskip("dreamgym_plugin_encoders"), pytest.importorskip("dreamgym_plugin_exact")
    return exact.ExactBuffer(encoder=encoders.HashingEncoder(encoders.HashingConfig()), path=run_dir / "buffer")


def stored_transitions(run_dir: Path) -> list[bytes]:
    """The run's replay buffer, in insertion order, as JSON."""
    import msgspec

    with open_run_buffer(run_dir) as buffer:
        return [msgspec.json.encode(t) for t in buffer]


def run_cli(*args: str, site: Path | None = None, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``dreamgym`` in a subprocess, with an extra site directory on the path."""
    full_env = dict(os.environ)
    if site is not None:
        full_env["PYTHONPATH"] = os.pathsep.join([str(site), full_env.get("PYTHONPATH", "")])
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "dreamgym_core.cli", *args], capture_output=True, text=True, env=full_env, cwd=cwd,
        preexec_fn=sigint_as_in_a_terminal,
    )


def run_cli_in_process(*args: str) -> subprocess.CompletedProcess:
    """Run ``dreamgym`` in this process, as a notebook or a script calling the CLI would.

    For tests that run several real pipelines: a subprocess imports torch and transformers
    again each time (about 10 s on these CPUs), and a run must not depend on what ran before
    it in its process anyway. Tests of exit by signal, of installed third-party plugins and of
    the process's own streams use ``run_cli``. torch's thread count, which a run sets, is put
    back afterwards so the run leaves later tests as it found them."""
    import torch
    from click.testing import CliRunner

    from dreamgym_core.cli import cli

    threads = torch.get_num_threads()
    try:
        result = CliRunner().invoke(cli, list(args), prog_name="dreamgym")
    finally:
        torch.set_num_threads(threads)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return subprocess.CompletedProcess(["dreamgym", *args], result.exit_code, result.stdout, result.stderr)


@pytest.fixture
def cli_runner():
    return run_cli


@pytest.fixture
def checked_plugin(register_plugin, monkeypatch):
    """Register an in-test plugin object as the only one ``dreamgym check`` loads by name."""
    from dreamgym_core import conformance

    def register(plugin, name):
        plugins = register_plugin(plugin, name)
        monkeypatch.setattr(conformance.Plugins, "for_names", classmethod(lambda cls, names, where="": plugins))
        return plugins

    return register
