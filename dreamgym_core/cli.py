"""The ``dreamgym`` command line. Thin: every command calls into the core's modules."""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

import click
import msgspec

from . import stopping
from .errors import DreamGymError

__all__ = ["main", "cli"]


class _Group(click.Group):
    """Turns a DreamGymError into one line and a non-zero exit; --traceback shows it. After a
    stop, any failure is the stop's: one line and the signal's exit status."""

    def invoke(self, ctx: click.Context) -> Any:
        with stopping.handled(), warnings.catch_warnings():
            warnings.showwarning = _one_line_warning
            try:
                return super().invoke(ctx)
            except DreamGymError as exc:
                if stopping.requested() is not None:  # what the stop broke (an engine it killed), not a failure
                    _interrupted(ctx, stopping.requested())
                if ctx.obj and ctx.obj.get("traceback") or os.environ.get("DREAMGYM_DEBUG") == "1":
                    traceback.print_exc()
                # one line whatever the message quotes (a YAML reader's or pluggy's own lines)
                click.echo(f"Error: {' '.join(str(exc).split())}", err=True)
                ctx.exit(exc.exit_code)
            except KeyboardInterrupt as exc:
                _interrupted(ctx, exc.signum if isinstance(exc, stopping.Stopped) else signal.SIGINT)
            except click.exceptions.Exit:  # the status a command chose, stopped or not
                raise
            except Exception:
                # cleanup after a stop (a simulator the same signal killed, failing in close())
                # raises in place of the Stopped: the stop is what happened, not a failure
                if stopping.requested() is None:
                    raise
                _interrupted(ctx, stopping.requested())


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None, line: str | None = None) -> None:
    """A warning as one line on stderr ("warning: ..."), as errors are, not Python's two lines
    naming the source file and line that raised it."""
    kind = "" if category is UserWarning else f" ({category.__name__})"
    click.echo(f"warning{kind}: {' '.join(str(message).split())}", err=True)


def _interrupted(ctx: click.Context, signum: int) -> None:
    """Ctrl-C or SIGTERM during a command: one line and the shell's status for that signal (130,
    143), not click's bare "Aborted!" and status 1, which reads as a failure."""
    hint = "; what the run stored is kept: continue it with --resume" if ctx.invoked_subcommand == "run" else ""
    click.echo(f"Error: interrupted by {stopping.name(signum)}{hint}", err=True)
    ctx.exit(128 + signum)


@click.group(cls=_Group)
@click.option("--traceback", "show_traceback", is_flag=True, help="Show the full error chain.")
@click.version_option(package_name="dreamgym")
@click.pass_context
def cli(ctx: click.Context, show_traceback: bool) -> None:
    """DreamGym: RL for LLM agents on synthetic experience."""
    ctx.ensure_object(dict)["traceback"] = show_traceback


def _overrides(option: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a field.")(option)


def _load(path: str, overrides: tuple[str, ...]) -> Any:
    from .config import load_resolved

    return load_resolved(path, overrides)


@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
@click.option("--loaded", "pipeline", metavar="PIPELINE", help="Also load this pipeline's plugins and list components.")
def plugins_cmd(as_json: bool, pipeline: str | None) -> None:
    """List installed plugins (read from metadata, nothing imported)."""
    from .plugins import installed_plugins

    rows = [p.as_dict() for p in sorted(installed_plugins().values(), key=lambda p: p.name)]
    if pipeline:
        _, plugins = _load(pipeline, ())
        provided: dict[str, list[str]] = {}
        for kind, specs in plugins.all_components().items():
            for spec in specs.values():
                provided.setdefault(spec.plugin, []).append(f"{kind}:{spec.name}")
        for row in rows:
            row["components"] = provided.get(row["name"], [])  # type: ignore[assignment]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        extra = f"  [{', '.join(row['components'])}]" if "components" in row else ""
        if "clashes" in row:
            extra += f"  (also registered by {', '.join(row['clashes'])}: refused in pipelines)"
        click.echo(f"{row['name']:<14} {row['distribution']:<34} {row['version']}{extra}")


@cli.command("check")
@click.argument("plugin")
@click.pass_context
def check_cmd(ctx: click.Context, plugin: str) -> None:
    """Run the conformance kit on every component PLUGIN registers; exit 1 if any fails, 5 if
    every one was skipped (nothing checked)."""
    from .conformance import NOTHING_CHECKED, check_plugin

    failed = skipped_all = False
    for line in check_plugin(plugin):
        failed = failed or line.startswith("FAIL ")
        skipped_all = line.startswith(NOTHING_CHECKED)
        click.echo(line)
    if failed:
        ctx.exit(1)
    if skipped_all:  # a CI step that checks a plugin must not read "checked nothing" as a pass
        ctx.exit(5)  # pytest's code for "no tests collected"


@cli.group("config")
def config_group() -> None:
    """Inspect pipeline configuration."""


@config_group.command("show")
@click.argument("pipeline", type=click.Path())
@_overrides
@click.option("--backend", default="native", show_default=True, help="Also show what a backend trainer (verl) derives.")
def config_show(pipeline: str, overrides: tuple[str, ...], backend: str) -> None:
    """Print the resolved config of PIPELINE with every default filled in."""
    from .config import config_hash

    resolved, plugins = _load(pipeline, overrides)
    data = resolved.to_builtins()
    shown: dict[str, Any] = {"config": data, "sha256": config_hash(data)}
    if backend != "native":
        from .commands.backend_config import backend_view

        shown[backend] = backend_view(resolved, plugins, backend)
    click.echo(json.dumps(shown, indent=2))


@config_group.command("schema")
@click.argument("pipeline", type=click.Path(), required=False)
def config_schema(pipeline: str | None) -> None:
    """JSON schema of the pipeline file; with PIPELINE, also its components' configs."""
    from .config import PipelineConfig

    schema: dict[str, Any] = {"pipeline": msgspec.json.schema(PipelineConfig)}
    if pipeline:
        resolved, _ = _load(pipeline, ())
        schema["components"] = {f: msgspec.json.schema(type(c)) for f, c in resolved.components.items()}
    click.echo(json.dumps(schema, indent=2))


@cli.command("run")
@click.argument("pipeline", type=click.Path())
@_overrides
@click.option("--resume", is_flag=True, help="Continue from the run directory's last checkpoint.")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines on stderr (warnings and errors still show).")
def run_cmd(pipeline: str, overrides: tuple[str, ...], resume: bool, quiet: bool) -> None:
    """Run PIPELINE end to end and write its run directory."""
    from .loop import run_pipeline

    resolved, plugins = _load(pipeline, overrides)
    # A scheduler's stop or `kill` ends a run as Ctrl-C does (stopping.handled), through its cleanup
    # (buffer, loggers, the env's browser or JVM, which would otherwise outlive it), with status 143.
    summary = run_pipeline(resolved, plugins, resume=resume, progress=not quiet)
    click.echo(json.dumps(summary, indent=2))


def _named_split(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """An empty --split read as "not given" and played the default split without a word."""
    if value is not None and not value.strip():
        raise click.BadParameter("an empty split name (drop --split for the pipeline's eval.split)")
    return value


def _played_run(command: Callable[..., Any]) -> Callable[..., Any]:
    """PIPELINE, --set, --split and --episodes: what the commands that play a run's policy share."""
    for decorator in reversed((
        click.argument("pipeline", type=click.Path()),
        _overrides,
        click.option("--split", default=None, callback=_named_split, help="Task split (default: the pipeline's eval.split)."),
        click.option("--episodes", type=click.IntRange(min=1), default=None, help="Episodes (default: eval.episodes)."),
    )):
        command = decorator(command)
    return command


@cli.command("eval")
@_played_run
@click.option(
    "--trajectories", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="Also write the episodes played (prompts, raw outputs, transitions) to this JSONL file.",
)
@click.option(
    "--checkpoint", "at_checkpoint", type=click.IntRange(min=0), default=None,
    help="Evaluate the policy of this iteration's checkpoint instead (0: the warm start).",
)
def eval_cmd(pipeline: str, overrides: tuple[str, ...], split: str | None, episodes: int | None, trajectories: Path | None,
             at_checkpoint: int | None) -> None:
    """Evaluate the policy of PIPELINE's run directory (last checkpoint, or the one eval.keep kept) on real held-out tasks."""
    from .checkpoint import check_output_file
    from .config import refuse_inside_run_dir
    from .loop import evaluate_run

    if trajectories is not None:  # before minutes of play
        trajectories = check_output_file(trajectories, "--trajectories", inputs={"PIPELINE": pipeline})
    resolved, plugins = _load(pipeline, overrides)
    if trajectories is not None:
        refuse_inside_run_dir(trajectories, "--trajectories", resolved.pipeline)
    result = evaluate_run(resolved, plugins, split=split, episodes=episodes, trajectories=trajectories, at_checkpoint=at_checkpoint)
    click.echo(json.dumps(result, indent=2))


@cli.command("curve")
@_played_run
@click.option(
    "--checkpoint", "iterations", type=click.IntRange(min=0), multiple=True,
    help="A checkpoint to evaluate (0: the warm start); repeat it for several. Default: every checkpoint the run holds.",
)
@click.option(
    "--plot", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="Also draw the curve, with each point's 95% interval, as a PNG here.",
)
def curve_cmd(pipeline: str, overrides: tuple[str, ...], split: str | None, episodes: int | None,
              iterations: tuple[int, ...], plot: Path | None) -> None:
    """Held-out success of each checkpoint of PIPELINE's run directory: the run's learning curve on real tasks."""
    from .loop import evaluate_checkpoints
    from .report import plot_heldout_curve

    from .checkpoint import check_output_file
    from .config import refuse_inside_run_dir

    if plot is not None:  # before minutes of play
        plot = check_output_file(plot, "--plot", inputs={"PIPELINE": pipeline})
    resolved, plugins = _load(pipeline, overrides)
    if plot is not None:
        refuse_inside_run_dir(plot, "--plot", resolved.pipeline)
    rows = evaluate_checkpoints(resolved, plugins, iterations or None, split=split, episodes=episodes)
    split = split or resolved.pipeline.eval.split
    # The rows first: a plot that fails must not lose minutes of play.
    click.echo(json.dumps({"run_dir": resolved.pipeline.run_dir, "split": split, "curve": rows}, indent=2))
    if plot is not None:
        plot_heldout_curve(rows, plot, split=split)


def _register() -> None:
    from .commands import register_commands

    register_commands(cli)


_register()


def main() -> None:
    cli(prog_name="dreamgym")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
