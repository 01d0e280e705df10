"""``dreamgym buffer info|import|export|query``: inspect and fill a replay buffer.

The buffer comes from a pipeline file (its ``buffer`` and ``encoder`` components,
stored under ``<run_dir>/buffer``) or from ``--path/--backend/--encoder``.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Callable, Iterator

import click
import msgspec

from ..checkpoint import is_stream_path, same_file
from ..config import is_run_directory, refuse_inside_a_run
from ..errors import ConfigError, DataError

__all__ = ["command"]

_IMPORT_BATCH = 4096  # transitions per add() of an import, as the buffers' own import_jsonl adds them


def _options(fn: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--pipeline", type=click.Path(), help="Pipeline file naming the buffer and encoder."),
        click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a pipeline field."),
        click.option("--path", type=click.Path(file_okay=False), help="Buffer directory (default: <run_dir>/buffer)."),
        click.option("--backend", default="exact", show_default=True, help="Buffer component (without --pipeline)."),
        click.option("--encoder", default="hashing", show_default=True, help="Encoder component (without --pipeline)."),
        click.option("--plugin", "extra_plugins", multiple=True, help="Extra plugin to load (without --pipeline)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _check_option_sources(pipeline: str | None, overrides: tuple[str, ...], extra_plugins: tuple[str, ...]) -> None:
    """Options that the chosen source (a pipeline, or --path with components) would ignore are an error:
    --set without --pipeline, and --backend, --encoder or --plugin beside it, once exited 0 unread."""
    ctx = click.get_current_context(silent=True)
    given = {
        name for name in ("backend", "encoder")
        if ctx is not None and ctx.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT)
    }
    if pipeline and (given or extra_plugins):
        options = ", ".join(f"--{name}" for name in sorted(given) + (["plugin"] if extra_plugins else []))
        raise click.UsageError(f"{options} choose the buffer without --pipeline; with --pipeline, the pipeline's buffer and encoder are used")
    if overrides and not pipeline:
        raise click.UsageError("--set overrides a pipeline field: give --pipeline too")


@contextmanager
def _open_buffer(
    pipeline: str | None, overrides: tuple[str, ...], path: str | None, backend: str, encoder: str,
    extra_plugins: tuple[str, ...], *, read_only: bool = False, strict: bool | None = None, refused: str = "",
    adds: bool = False,
) -> Iterator[Any]:
    """Build encoder and buffer from the pipeline (or options), close the buffer after use.

    ``read_only``: the buffer must exist already (a mistyped path, or a directory of other
    files, is an error, not a new empty buffer), and opening it with another encoder does not
    start re-embedding it.
    ``strict``: the buffer's own ``strict`` setting (refuse a corrupt segment, or skip its
    corrupt frames), for a buffer that has one; None leaves it as configured. ``refused`` is
    added to the error of a buffer that fails to open strictly. ``adds``: records will be added,
    which the buffer of an unfinished run refuses (:func:`_refuse_unfinished_run`), and one that
    another encoder built (:func:`_refuse_another_encoder`)."""
    from ..config import convert_config, load_pipeline
    from ..plugins import Plugins

    _check_option_sources(pipeline, overrides, extra_plugins)
    if pipeline:
        cfg = load_pipeline(pipeline, overrides)
        if cfg.buffer is None or cfg.encoder is None:
            raise ConfigError(f"{pipeline}: needs 'buffer' and 'encoder' components for buffer commands")
        plugins = Plugins.for_names(cfg.plugins, where=f"{pipeline}: plugins")
        typed = {}  # only the two components these commands need are resolved
        for field, kind, ref in (("encoder", "encoder", cfg.encoder), ("buffer", "buffer", cfg.buffer)):
            spec = plugins.component(kind, ref.name, where=f"{pipeline}: {field}.name")
            typed[field] = convert_config(ref.config, spec.config_type, pipeline, f"$.{field}.config")
        enc = plugins.build("encoder", cfg.encoder.name, typed["encoder"])
        where, name, buffer_cfg = f"{cfg.run_dir}/buffer", cfg.buffer.name, typed["buffer"]
    else:
        if not path:
            raise click.UsageError("give --pipeline or --path")
        plugins = _plugins_of_path(backend, extra_plugins)
        spec = plugins.component("encoder", encoder, where="--encoder")
        enc = spec.factory(convert_config({}, spec.config_type, "--encoder", "$"))
        buffer_spec = plugins.component("buffer", backend, where="--backend")
        where, name, buffer_cfg = path, backend, convert_config({}, buffer_spec.config_type, "--backend", "$")
    home = Path(path or where)
    if is_run_directory(home):
        # a run directory: read as a buffer it holds no records, which would pass for an empty
        # buffer; written as one, its records went where the run never reads them
        raise DataError(f"{home}: a run directory, not a replay buffer; its buffer is {home / 'buffer'}")
    if adds:
        _refuse_unfinished_run(home)
    if read_only:
        if not home.is_dir():
            raise DataError(f"{home}: no replay buffer there (the directory does not exist)")
        _refuse_no_buffer(home)
    # an import too: a buffer that another encoder built is refused below, before its stored
    # records are re-embedded (by a thread, with the encoder named here)
    if (read_only or adds) and "backfill_background" in getattr(buffer_cfg, "__struct_fields__", ()):
        buffer_cfg = msgspec.structs.replace(buffer_cfg, backfill_background=False)
    strictly = "strict" in getattr(buffer_cfg, "__struct_fields__", ())
    if strict is not None and strictly:
        buffer_cfg = msgspec.structs.replace(buffer_cfg, strict=strict)
    try:
        buffer = plugins.build("buffer", name, buffer_cfg, encoder=enc, path=path or where)
    except DataError as exc:
        if not (refused and strictly and buffer_cfg.strict):
            raise
        raise DataError(f"{exc}; {refused}") from exc
    try:
        try:
            if adds:
                _refuse_another_encoder(buffer, f"the encoder of {pipeline}" if pipeline else f"--encoder {encoder}")
            yield buffer
        except BaseException:
            with suppress(OSError, DataError):  # the error under way names what failed; close's (the same full disk) would replace it
                buffer.close()
            raise
        buffer.close()  # writes what is pending: it can fail as a write does
    except OSError as exc:  # a full disk, say: one line naming the buffer, not two tracebacks
        raise DataError(f"{path or where}: cannot write the replay buffer: {exc.strerror or exc}") from exc


def _plugins_of_path(backend: str, extra_plugins: tuple[str, ...]) -> Any:
    """The plugins that --path's --backend and --encoder come from. Without --plugin, --backend is
    loaded as the plugin of its name too (exact and annoy name their buffer as themselves). With
    --plugin, the buffer may be a component of a plugin named otherwise (plugin 'mybufs', buffer
    'ring'), which loading 'ring' as a plugin refused: --backend is then loaded as a plugin only
    where one of that name is installed, and looked up as a component either way."""
    from ..plugins import Plugins, installed_plugins

    names = ["encoders", *extra_plugins]
    if not extra_plugins or backend in installed_plugins():
        names.insert(0, backend)
    return Plugins.for_names(dict.fromkeys(names), where="--backend/--plugin")


@click.group("buffer")
def command() -> None:
    """Inspect and fill replay buffers."""


def _refuse_unfinished_run(home: Path) -> None:
    """Records added to the buffer of an unfinished run of the local loop are lost: its
    ``--resume`` rolls the buffer back to the last checkpoint's position (``it-N``) and stores
    that, so an import it reported (exit 0) was gone after the next resume, without a word under
    ``-q``. A run with no such checkpoint yet, or one that runs its own loop (verl: its
    checkpoints are its own and its resume keeps the buffer), is left alone."""
    from ..loop import SUMMARY_FILE

    # the parent of the absolute path: that of "." (--path . inside RUN/buffer) is "." again,
    # which is no run; of the resolved one too, for a RUN/buffer reached through a link
    for run in dict.fromkeys((Path(os.path.abspath(home)).parent, home.resolve().parent)):
        checkpoints = run / "checkpoints"
        rolls_back = checkpoints.is_dir() and any(p.name.startswith("it-") for p in checkpoints.iterdir())
        if (run / "config.json").is_file() and rolls_back and not (run / SUMMARY_FILE).exists():
            named = home.parent if home.parent.resolve() == run.resolve() else run  # as given, where that names it
            raise DataError(
                f"{home}: the buffer of an unfinished run ({named} has no {SUMMARY_FILE}); its --resume rolls the buffer "
                "back to the last checkpoint and would drop what is added now: import before the run starts, once it "
                "has finished, or into another buffer"
            )


# What the exact and annoy buffers write in their directory before anything else: segment
# files (segments.py) and, when the first write is claimed, the claim's lock (writer_lock.py)
_BUFFER_FILES = ("seg-*.dgs", "writer.lock")


def _refuse_no_buffer(home: Path) -> None:
    """A directory read as a buffer must hold one: any other read as an empty buffer (query printed
    nothing, export wrote an empty file, exit 0). An empty directory is read as one: it is what a
    buffer created and never added to leaves (its open makes the directory, its first add the files)."""
    if any(next(home.glob(pattern), None) for pattern in _BUFFER_FILES) or next(home.iterdir(), None) is None:
        return
    raise DataError(f"{home}: no replay buffer there (no segment files seg-*.dgs, and the directory is not empty)")


def _refuse_another_encoder(buffer: Any, named: str) -> None:
    """An import into a buffer whose stored records another encoder embedded is refused, before
    anything is added: the new records went in with ``named`` (--encoder's default, hashing, when
    left out), a background backfill re-embedded the stored ones with it, and the encoder that
    built the buffer then found part of it unsearchable (exit 0, no word)."""
    done, total = getattr(buffer, "backfill_progress", (0, 0))
    if done == total:
        return
    stored = [space for space, count in buffer.stats()["spaces"].items() if space != buffer.encoder.id and count]
    raise DataError(
        f"{buffer.path}: {total - done} of {total} stored transitions are embedded by encoder "
        f"{', '.join(stored) or '(none)'}, not {buffer.encoder.id!r} ({named}); import with the encoder that built "
        "the buffer (--encoder, or the run's --pipeline), or re-embed it first with 'dreamgym buffer info --backfill'; "
        "nothing imported"
    )


@command.command("info")
@_options
@click.option("--backfill", is_flag=True, help="Finish a pending encoder backfill before reporting.")
def info(backfill: bool, **kw: Any) -> None:
    """Records by source, encoders, segments, problems and backfill progress (JSON)."""
    with _open_buffer(**kw, read_only=True) as buffer:
        if backfill:
            buffer.start_backfill()
            while not buffer.wait_backfill(timeout=2.0):
                done, total = buffer.backfill_progress
                click.echo(f"backfill {done}/{total}", err=True)
            _check_backfill(buffer)
        click.echo(json.dumps(buffer.stats(), indent=2))


def _check_backfill(buffer: Any) -> None:
    """A backfill whose thread died (a failed write, say) is an error: its progress counts the
    rows embedded in memory, so it read as done when their embeddings were not all stored."""
    stopped = [p for p in getattr(buffer, "problems", []) if p.startswith("backfill stopped")]
    if stopped:
        raise DataError(f"{buffer.path}: {stopped[-1]}; the backfill is not finished, run it again once that is fixed")


@command.command("import")
@_options
@click.argument("files", nargs=-1, required=True, type=click.Path())
def import_cmd(files: tuple[str, ...], **kw: Any) -> None:
    """Add Transition records from JSONL FILES (duplicates are skipped).

    Every file is read whole before the buffer opens: one unreadable file or bad line stores
    nothing of any file, so the import can be run again once it is fixed."""
    from ..checkpoint import read_transitions

    # each file read once: a pipe or process substitution (/dev/stdin, <(...)) is empty the second time
    records = []
    for file in files:
        transitions = read_transitions(Path(file))
        failed = next((i for i, t in enumerate(transitions, 1) if t.model_failed), None)
        if failed is not None:  # a buffer refuses these while importing, after the files before it were stored
            raise DataError(
                f"{file}: record {failed} is model_failed (an experience model's failed answer), which a replay buffer "
                "does not store; nothing imported"
            )
        records.append((file, transitions))
    with _open_buffer(**kw, adds=True) as buffer:
        for file, transitions in records:
            added = sum(buffer.add(transitions=transitions[i : i + _IMPORT_BATCH]) for i in range(0, len(transitions), _IMPORT_BATCH))
            buffer.flush()
            click.echo(f"{file}: read {len(transitions)}, added {added}, buffer now {len(buffer)}")


@command.command("export")
@_options
@click.option(
    "--partial", is_flag=True,
    help="Export what can be read of a buffer with corrupt segments (their frames are skipped, with a warning).",
)
@click.argument("file", type=click.Path(dir_okay=False))
def export_cmd(file: str, partial: bool, **kw: Any) -> None:
    """Write every stored transition to FILE as JSONL.

    A buffer with a corrupt segment is refused, and nothing is written: an export missing the
    records of skipped frames (all of them, when every frame is corrupt) would pass for the
    whole buffer. --partial exports the rest (as a run's --resume reads it)."""
    if not Path(file).resolve().parent.is_dir():  # checked before the buffer opens
        raise ConfigError(f"{file}: directory {Path(file).parent} does not exist")
    if kw.get("pipeline") and not is_stream_path(file) and same_file(Path(file), Path(kw["pipeline"])):
        raise ConfigError(f"{file}: is the --pipeline file, which the export would overwrite; export elsewhere")
    # into a run directory (the buffer's own, as --pipeline names it, or any other): RUN/offline.jsonl is the
    # name an export takes by habit, and the training data a resume reads back
    refuse_inside_a_run(file, advice="export elsewhere")
    refused = "nothing exported ('--partial' exports the records that can be read)"
    with _open_buffer(**kw, read_only=True, strict=not partial, refused=refused) as buffer:
        home = Path(getattr(buffer, "path", None) or kw["path"]).resolve()
        if Path(file).resolve().is_relative_to(home):  # it would replace (or pose as) a segment
            raise ConfigError(f"{file}: inside the buffer directory {home}; export to a file outside it")
        # beside the records, not among them, when they go to stdout
        click.echo(f"{file}: wrote {buffer.export_jsonl(file)} transitions", err=is_stream_path(file))
        for problem in getattr(buffer, "problems", []):  # dropped as a crash leaves them, yet not in FILE
            if "torn frame" in problem:
                click.echo(f"warning: {home}/{problem}", err=True)


@command.command("query")
@_options
@click.option("--state", required=True, help="Current state text.")
@click.option("--action", "action_text", required=True, help="Action text.")
@click.option("-k", "k", default=4, show_default=True, type=click.IntRange(min=1), help="Neighbours.")
def query(state: str, action_text: str, k: int, **kw: Any) -> None:
    """Top-k stored transitions for (STATE, ACTION), one JSON record per line."""
    with _open_buffer(**kw, read_only=True) as buffer:
        missing = getattr(buffer, "unsearchable", 0)
        if missing:
            stored = ", ".join(buffer.stats()["spaces"]) if hasattr(buffer, "stats") else "another encoder"
            raise DataError(
                f"{buffer.path}: {missing} of {len(buffer)} stored transitions have no embedding from encoder "
                f"{buffer.encoder.id!r} (stored: {stored}); query with the encoder that built the buffer "
                "(--encoder, or the run's --pipeline), or re-embed them with 'dreamgym buffer info --backfill'"
            )
        for transition in buffer.retrieve(queries=[(state, action_text)], k=k)[0]:
            click.echo(msgspec.json.encode(transition).decode())
