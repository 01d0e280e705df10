"""Run checkpoints and record files, written so that a kill at any moment is safe.

A checkpoint is written into a temporary directory and renamed into place; the
``latest`` pointer is replaced atomically afterwards. A half-written checkpoint is
never the one ``--resume`` loads. A kill between the two leaves the new checkpoint whole
but unnamed: ``--resume`` takes the one ``latest`` still names, the one before, and plays
the iterations since again (up to ``loop.checkpoint_every``; the result is the same); only
before the first pointer, with no ``latest`` at all, does it find the new one.
"""

from __future__ import annotations

import os
import random
import re
import secrets
import shutil
import stat
from collections import Counter
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any, Iterator, Literal, Sequence

import msgspec
import numpy as np

from .contracts import checked_saved
from .errors import ConfigError, DataError, DreamGymError
from .records import Task, Trajectory, Transition

if TYPE_CHECKING:
    from .loop import Runner

__all__ = [
    "save",
    "atomic_write",
    "open_new",
    "open_append",
    "new_directory",
    "plain_file_modes",
    "stage_done",
    "load_latest",
    "load",
    "checkpoint_name",
    "checkpoint_iterations",
    "rng_kept",
    "write_trajectories",
    "read_trajectories",
    "read_transitions",
    "write_transitions",
    "write_records",
    "trajectories_from_transitions",
]


class _State(msgspec.Struct, kw_only=True):
    iteration: Annotated[int, msgspec.Meta(ge=0)]
    counters: dict[str, float]
    history: list[dict[str, Any]]
    curriculum: dict[str, Any] | None
    experience_model: dict[str, Any] | None
    python_rng: list[Any]
    numpy_rng: dict[str, Any]
    torch_rng: list[int]
    # The replay buffer's position when the checkpoint was taken (None: a buffer that
    # cannot roll back, or a checkpoint from before positions were recorded).
    buffer_position: Annotated[int, msgspec.Meta(ge=0)] | None = None
    # Validation scores by iteration (eval.valid_every; None when off), typed so that a damaged
    # score is refused with the rest of the file, before anything is restored or rolled back.
    # UNSET: a checkpoint from before the scores were kept (restored as none recorded).
    selection: dict[Literal["scores"], dict[int, float]] | None | msgspec.UnsetType = msgspec.UNSET


def open_new(path: Path, mode: str = "wb") -> IO[Any]:
    """``path`` created anew for writing (a temporary file, renamed into place afterwards).

    Whatever is there already (left by a killed write) is removed first, and the file is
    created exclusively: a symbolic link planted at the name, in a run directory others can
    write to, is never written through (that would overwrite the file it points at), and
    one planted again between the removal and the creation makes the write fail instead."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
    return os.fdopen(fd, mode)


def is_stream_path(path: str | Path) -> bool:
    """Whether ``path`` names a device, a pipe or socket, or a process's open file (``/dev/stdout``,
    ``/proc/self/fd/1``): written in place, never replaced through a ``.tmp`` sibling (that
    replaced the ``/dev/stdout`` link itself, as root, when stdout went to a file). Decided by
    what the path is, not where: a regular file under /dev/shm (tmpfs) is a file, replaced whole
    (it was written in place, and a failed write destroyed the file that was there)."""
    return _leads_through_an_open_file(path) or _is_stream_file(path)


# A process's open files: /proc/self/fd/N (/dev/fd is a link to /proc/self/fd), /proc/PID/task/TID/fd/N
_FD_DIRECTORY = re.compile(r"/proc/[^/]+(?:/task/[^/]+)?/fd")


def _leads_through_an_open_file(path: str | Path) -> bool:
    """Whether ``path``, or a link on its way, is an entry of a process's fd directory. Its type
    does not tell: /dev/stdout leads to /proc/self/fd/1, which leads to whatever stdout was sent
    to, a regular file too, where a ``.tmp`` sibling would be made beside the link."""
    current = os.path.abspath(path)
    for _ in range(40):  # as many links as the kernel follows
        if _FD_DIRECTORY.fullmatch(os.path.realpath(os.path.dirname(current))):
            return True
        try:
            target = os.readlink(current)
        except OSError:  # not a link, or nothing there: the way ends at a file
            return False
        current = os.path.join(os.path.dirname(current), target)
    return False


def _is_stream_file(path: str | Path) -> bool:
    """Whether ``path`` is a device (``/dev/null``, a terminal), a FIFO or a socket."""
    try:
        mode = os.stat(path).st_mode
    except OSError:  # nothing there yet (or out of reach): a file to create
        return False
    return stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def output_file(path: Path) -> Path:
    """The file a command writes for an output path the user named: a symbolic link is followed
    to the file it names. The write replaces a file whole (a ``.tmp`` sibling renamed into place),
    and renaming onto the link replaced the link, leaving the file it named as it was."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def check_output_file(path: Path, option: str, *, inputs: dict[str, str | Path | None] | None = None) -> Path:
    """Before a command's work (minutes of play or generation): ``path`` can be written as its
    write will write it (a ``.tmp`` sibling renamed into place), and is none of the command's
    ``inputs`` (option -> path), which the write would replace. A ConfigError naming ``option``.
    Returns the file to write (:func:`output_file`)."""
    if is_stream_path(path):
        raise ConfigError(f"{option} {path}: a device or stream; {option} writes a file (replaced whole when it is done)")
    path = output_file(path)
    for source, given in (inputs or {}).items():
        if given is not None and same_file(path, Path(given)):
            raise ConfigError(f"{option} {path}: is the {source} file, which it would overwrite; write elsewhere")
    if path.is_dir():
        raise ConfigError(f"{option} {path}: is a directory, not a file")
    if not path.parent.is_dir():
        raise ConfigError(f"{option} {path}: its directory {path.parent} does not exist")
    probe = path.with_name(path.name + ".tmp")
    try:
        open_new(probe).close()
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"{option} {path}: cannot write {probe.name} there ({exc.strerror or exc})") from exc
    return path


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (the same path, or links to one file)."""
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def open_append(path: Path, mode: str = "a") -> IO[Any]:
    """``path`` opened to append to (created if missing), never through a symbolic link: one
    planted in a run directory others can write to would have the run append to the file it
    points at. Such a link is a DataError naming it."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
    except OSError as exc:
        if path.is_symlink():
            raise DataError(f"{path}: a symbolic link; the run appends only to a file of its own there (remove the link)") from exc
        raise
    return os.fdopen(fd, mode)


@contextmanager
def replacing(path: Path) -> Iterator[IO[bytes]]:
    """A file to write ``path``'s new content to: a ``.tmp`` sibling, synced and renamed over
    ``path`` when the block ends, so a kill leaves the old file or the new one, whole. A write
    that fails (a full disk) removes the sibling and is a DataError naming ``path``; it was a
    traceback that left a half-written ``.tmp`` behind. The old file stays as it was."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open_new(tmp) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise DataError(f"{path}: cannot write: {exc.strerror or exc}; the file there before is kept") from exc
        raise


def sync_tree(root: Path) -> None:
    """Every file and directory under ``root`` (and ``root``) flushed to disk. A checkpoint's
    weights are written by the trainer's own save (torch, safetensors), which syncs nothing:
    after a power cut ``latest`` could name a checkpoint of empty files while prune had removed
    the one before."""
    for path in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):  # files before their directories
        if path.is_file() and not path.is_symlink():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        elif path.is_dir() and not path.is_symlink():
            sync_directory(path)
    sync_directory(root)


def sync_directory(path: Path) -> None:
    """``path``'s entries (names made, renamed or removed in it) flushed to disk."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a kill leaves the old or the new file, whole."""
    with replacing(path) as f:
        f.write(data)


def new_directory(parent: Path, *, prefix: str) -> Path:
    """A directory of a fresh name in ``parent``, made as a plain mkdir makes one (mode 0o777
    less the umask). ``tempfile.mkdtemp`` makes it 0o700, a mode a saved model, renamed into
    place, would keep, unlike every other file of the run directory."""
    while True:
        path = parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path


def plain_file_modes(directory: Path, names: Sequence[str] | None = None) -> None:
    """Each file in ``directory`` (one a plain mkdir or :func:`new_directory` made), or each
    of its files ``names`` names, gets the mode a plain open gives, the directory's without
    the execute bits: safetensors writes its weights 0o600."""
    mode = stat.S_IMODE(directory.stat().st_mode) & 0o666
    for path in directory.rglob("*") if names is None else (directory / name for name in names):
        if path.is_file() and not path.is_symlink():
            path.chmod(mode)


STAGE_METRICS = "metrics.json"


def stage_done(directory: Path) -> bool:
    """Whether ``directory`` holds a finished stage: its ``done`` marker (written last) is a
    file of its own. A symbolic link planted at the name, in a run directory others can
    write to, is not one: followed, a link to any file would make an unfinished stage count
    as finished and be loaded."""
    marker = directory / "done"
    return not marker.is_symlink() and marker.is_file()


def write_stage_metrics(directory: Path, metrics: dict[str, float]) -> None:
    """A finished stage's training metrics, beside its weights: a run that reuses the stage
    (``--resume``, or a warm start copied in) reports them instead of nothing."""
    atomic_write(directory / STAGE_METRICS, msgspec.json.encode(metrics))


def read_stage_metrics(directory: Path) -> dict[str, float]:
    """What :func:`write_stage_metrics` kept; empty for a stage saved before the file existed."""
    path = directory / STAGE_METRICS
    if not path.exists():
        return {}
    try:
        return msgspec.json.decode(path.read_bytes(), type=dict[str, float])
    except (OSError, msgspec.DecodeError) as exc:
        raise DataError(f"{path}: unreadable stage metrics ({exc}); delete the file to report the stage without them") from exc


def _rng_state() -> tuple[list[Any], dict[str, Any], list[int]]:
    import torch

    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return (
        [version, list(internal), gauss],
        {"kind": kind, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        torch.get_rng_state().tolist(),
    )


def _restore_rng(python_rng: list[Any], numpy_rng: dict[str, Any], torch_rng: list[int]) -> None:
    import torch

    version, internal, gauss = python_rng
    random.setstate((version, tuple(internal), gauss))
    n = numpy_rng
    np.random.set_state((n["kind"], np.array(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(torch.tensor(torch_rng, dtype=torch.uint8))


def _check_rng(state: _State, path: Path) -> None:
    """A clear error for random-generator state that valid JSON can still get wrong."""
    saved = _rng_state()
    try:
        _check_rng_ranges(state.python_rng, state.numpy_rng, state.torch_rng)
        _restore_rng(state.python_rng, state.numpy_rng, state.torch_rng)
    except (TypeError, ValueError, KeyError, IndexError, RuntimeError, OverflowError) as exc:
        raise DataError(f"{path}: unusable random-generator state: {exc}") from exc
    finally:
        _restore_rng(*saved)


def _check_rng_ranges(python_rng: list[Any], numpy_rng: dict[str, Any], torch_rng: list[int]) -> None:
    """ValueError for values the generators would take without a word: torch wraps a byte of
    -1 to 255, Python keeps the low 32 bits of a word and any cached gauss, and numpy takes
    any position, reading past its key array from one beyond 624."""
    _, internal, gauss = python_rng
    if not _all_in_range(internal[:-1], 2**32):  # the last entry, the position, setstate checks
        raise ValueError("Python's generator words must be integers in [0, 2**32)")
    if gauss is not None and not isinstance(gauss, float):
        raise ValueError(f"Python's cached gauss must be null or a number, not {gauss!r}")
    if not _all_in_range(numpy_rng["keys"], 2**32):
        raise ValueError("numpy's keys must be integers in [0, 2**32)")
    if not _all_in_range([numpy_rng["pos"]], 625):
        raise ValueError(f"numpy's position must be an integer in [0, 624], not {numpy_rng['pos']!r}")
    if not _all_in_range(torch_rng, 256):
        raise ValueError("torch's state must be bytes, integers in [0, 255]")


def _all_in_range(values: Any, end: int) -> bool:
    return all(type(v) is int and 0 <= v < end for v in values)


@contextmanager
def rng_kept() -> Iterator[None]:
    """Run a measurement without moving the global RNGs, so that training draws what it
    would have drawn without it (validation plays between RL iterations)."""
    saved = _rng_state()
    try:
        yield
    finally:
        _restore_rng(*saved)


def save(runner: Runner, iteration: int) -> Path:
    """Write checkpoint ``it-<iteration>`` (policy, algorithm, curriculum, counters, RNG)."""
    root = runner.run_dir / "checkpoints"
    root.mkdir(exist_ok=True)
    final = root / checkpoint_name(iteration)
    tmp = root / f".{checkpoint_name(iteration)}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    with unwritten_removed(tmp, final):
        _write_checkpoint(runner, iteration, tmp)
        sync_tree(tmp)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    sync_directory(root)
    atomic_write(root / "latest", final.name.encode())
    sync_directory(root)  # the pointer's rename, before prune deletes the checkpoint it named
    prune(root, keep=runner.cfg.loop.keep_checkpoints)
    if runner.selection is not None:
        runner.selection.prune()
    return final


@contextmanager
def unwritten_removed(tmp: Path, final: Path, what: str = "checkpoint", kept: str = "the run's earlier checkpoints") -> Iterator[None]:
    """A checkpoint (or the ``what`` written like one) that cannot be written whole (a full disk:
    the trainer's torch or safetensors save raised its own error, a traceback) is removed and is
    one DataError naming it; ``kept`` (earlier checkpoints, the ``latest`` pointer) stays as it was."""
    try:
        yield
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, DreamGymError) or not isinstance(exc, Exception):  # a stop, or already one line
            raise
        raise DataError(f"{final}: {what} not written ({type(exc).__name__}: {exc}); {kept} are kept") from exc


def _write_checkpoint(runner: Runner, iteration: int, tmp: Path) -> None:
    runner.algo.save(path=str(tmp / "algo"))
    checked_saved(tmp / "algo", runner.who("algo"), "save(path=...)")
    python_rng, numpy_rng, torch_rng = _rng_state()
    state = _State(
        iteration=iteration,
        counters=dict(runner.counters),
        history=runner.history,
        curriculum=runner.curriculum.state_dict() if runner.curriculum is not None else None,
        experience_model=runner.experience_model.state_dict() if runner.experience_model is not None else None,
        python_rng=python_rng,
        numpy_rng=numpy_rng,
        torch_rng=torch_rng,
        buffer_position=_buffer_position(runner.buffer),
        selection=runner.selection.state_dict() if runner.selection is not None else None,
    )
    atomic_write(tmp / "state.json", msgspec.json.encode(state))


# Suffix of a pruned checkpoint's name while it is deleted (no checkpoint name matches it).
_DELETING = ".deleting"


def prune(root: Path, *, keep: int) -> None:
    """Delete all but the ``keep`` newest checkpoints under ``root`` (0 keeps every one).

    Runs after ``latest`` points at the new one, so a crash here leaves a resumable run. Each
    old checkpoint is renamed out of the ``it-*`` names before it is deleted: a kill part way
    through a delete left a half-deleted ``it-<n>`` that ``dreamgym curve`` then failed on, and
    after a run's last checkpoint no later prune removed it. What such a kill leaves is
    removed here, at the next checkpoint."""
    for leftover in root.glob(f".*{_DELETING}"):
        shutil.rmtree(leftover, ignore_errors=True)
    if keep <= 0:
        return
    for old in _checkpoints(root)[:-keep]:
        doomed = root / f".{old.name}{_DELETING}"
        os.replace(old, doomed)
        shutil.rmtree(doomed)


def checkpoint_name(iteration: int) -> str:
    """The directory name of the checkpoint taken after ``iteration`` iterations."""
    return f"it-{iteration:05d}"


def checkpoint_iterations(root: Path) -> list[int]:
    """The iterations of the checkpoints under ``root``, oldest first."""
    return [int(p.name[3:]) for p in _checkpoints(root)]


def _checkpoints(root: Path) -> list[Path]:
    """The ``it-<n>`` checkpoints under ``root``, oldest first: by number, since past
    it-99999 the names no longer sort as the iterations do."""
    numbered = [(int(m.group(1)), p) for p in root.glob("it-*") if (m := re.fullmatch(r"it-(\d+)", p.name))]
    return [p for _, p in sorted(numbered)]


def _buffer_position(buffer: Any) -> int | None:
    return buffer.position if buffer is not None and hasattr(buffer, "rollback") else None


def _rollback_buffer(runner: Runner, state: _State) -> None:
    """Forget what the buffer stored after the checkpoint: iterations that never reached
    one are played again, and must not retrieve their own earlier transitions."""
    buffer = runner.buffer
    if buffer is None:
        return
    if state.buffer_position is None or not hasattr(buffer, "rollback"):
        runner._say(
            "the replay buffer cannot roll back to the checkpoint; transitions stored after it stay, "
            "so the resumed run may retrieve differently from an uninterrupted one"
        )
        return
    if buffer.position < state.buffer_position:
        raise DataError(
            f"{runner.run_dir / 'buffer'}: the replay buffer ends at position {buffer.position}, before the "
            f"checkpoint's {state.buffer_position}: records the run stored were lost (deleted or corrupt segments)"
        )
    dropped = buffer.rollback(to=state.buffer_position)
    if dropped:
        runner._say(f"replay buffer rolled back to the checkpoint: {dropped} transitions stored after it forgotten")


def load_latest(runner: Runner, *, roll_back_buffer: bool = True) -> int | None:
    """Restore the newest complete checkpoint; returns the iteration to continue from, or
    None when the run has none yet (killed before its first: the stages before RL run again,
    reusing what they stored).

    ``roll_back_buffer=False`` leaves the replay buffer as it is on disk: for reading a
    checkpoint (``dreamgym eval``, possibly while the run goes on), not for resuming it."""
    root = runner.run_dir / "checkpoints"
    pointer = root / "latest"
    written = sorted(p.name for p in root.glob("it-*")) if root.is_dir() else []
    if not pointer.exists():
        if not written:
            return None
        # Every it-<n> is whole (renamed into place once its state is written), so a missing
        # pointer beside one is a run stopped between the rename and the pointer's write (of
        # its first checkpoint: later ones replace a pointer already there), or one deleted.
        name = _newest_readable(root)
        if name is None:
            # Not one reads; starting over would overwrite them and the run's metrics: never guess.
            raise DataError(f"{pointer}: missing, but {root} holds {', '.join(written)}; restore the pointer (one line naming the checkpoint)")
        skipped = [p.name for p in _checkpoints(root) if int(p.name[3:]) > int(name[3:])]
        runner._say(
            f"{pointer}: missing; continuing from {name}, the newest checkpoint that reads"
            + (f" (unreadable: {', '.join(skipped)})" if skipped else "")
        )
        iteration = load(runner, name, roll_back_buffer=roll_back_buffer)
        if roll_back_buffer:  # resuming: the run's own pointer, written as save writes it (a reader writes nothing)
            atomic_write(pointer, name.encode())
        return iteration
    try:
        name = pointer.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        name = f"unreadable ({exc})"
    if not re.fullmatch(r"it-\d+", name) or not (root / name).is_dir():
        raise DataError(
            f"{pointer}: names {name!r}, not a checkpoint of {root} (it holds {', '.join(written) or 'none'}); "
            "restore the pointer (one line naming the checkpoint)"
        )
    return load(runner, name, roll_back_buffer=roll_back_buffer)


def _newest_readable(root: Path) -> str | None:
    """The newest checkpoint under ``root`` whose state.json reads and holds its own iteration."""
    for ckpt in reversed(_checkpoints(root)):
        try:
            state = msgspec.json.decode((ckpt / "state.json").read_bytes(), type=_State)
        except (OSError, msgspec.DecodeError):
            continue
        if state.iteration == int(ckpt.name[3:]):
            return ckpt.name
    return None


@contextmanager
def _restoring(path: Path, what: str) -> Iterator[None]:
    """A plugin's failure to read its own saved state, as one line naming the file."""
    try:
        yield
    except DataError as exc:  # a plugin's own one-line error, which may not name the file
        if str(path) in str(exc):
            raise
        raise DataError(f"{path}: cannot restore {what}: {exc}") from exc
    except DreamGymError:
        raise
    except Exception as exc:  # plugin code: whatever it raises on a damaged file
        raise DataError(f"{path}: cannot restore {what}: {type(exc).__name__}: {exc}") from exc


def read_state(ckpt: Path) -> _State:
    """A checkpoint's state.json, decoded; one DataError naming the file when it does not read."""
    try:
        return msgspec.json.decode((ckpt / "state.json").read_bytes(), type=_State)
    except (OSError, msgspec.DecodeError) as exc:
        raise DataError(f"{ckpt / 'state.json'}: unreadable checkpoint state: {exc}") from exc


def load(runner: Runner, name: str, *, roll_back_buffer: bool = True) -> int:
    """Restore checkpoint ``name`` (``it-00003``); returns its iteration."""
    ckpt = runner.run_dir / "checkpoints" / name
    state = read_state(ckpt)
    _check_rng(state, ckpt / "state.json")  # before anything is restored or rolled back
    if re.fullmatch(r"it-\d{5,}", name) and int(name[3:]) != state.iteration:
        raise DataError(f"{ckpt / 'state.json'}: holds iteration {state.iteration} in the checkpoint of iteration {int(name[3:])}; the checkpoint is damaged")
    if any(not isinstance(row.get("step"), int) for row in state.history):
        raise DataError(f"{ckpt / 'state.json'}: a history row has no integer 'step'; the checkpoint is damaged")
    # null is what a run without the component saves; where this run has it, the checkpoint is damaged
    # (skipping the restore would resume from the component's initial state without a word)
    for field, component in (("curriculum", runner.curriculum), ("experience_model", runner.experience_model), ("selection", runner.selection)):
        if component is not None and getattr(state, field) is None:
            raise DataError(f"{ckpt / 'state.json'}: {field!r} is null, but this run has that component; the checkpoint is damaged")
    if runner.experience_model is not None:
        from .stages import EXPERIENCE_DIR, reload_trained  # stages writes through this module

        if not reload_trained(runner.exp_backend, runner.run_dir) and not runner.cfg.experience.skip:
            # RL would go on in an untrained model's world and the run would look resumed
            raise DataError(
                f"{runner.run_dir / EXPERIENCE_DIR}: the trained experience model is missing (no 'done' marker), "
                f"and checkpoint {name} was trained with it; restore that directory or start the run again"
            )
    runner._reload_policy(required_by=name)
    with _restoring(ckpt / "algo", "the algorithm's state"):
        runner.algo.load(path=str(ckpt / "algo"))
    with _restoring(ckpt / "state.json", "the curriculum's state"):
        if runner.curriculum is not None and state.curriculum is not None:  # checked above: None only without one
            runner.curriculum.load_state_dict(state.curriculum)
    with _restoring(ckpt / "state.json", "the experience model's state"):
        if runner.experience_model is not None and state.experience_model is not None:
            runner.experience_model.load_state_dict(state.experience_model)
    if roll_back_buffer:
        _rollback_buffer(runner, state)
    runner.counters.update(state.counters)
    runner.history = list(state.history)
    if runner.selection is not None:
        runner.selection.load_state_dict(state.selection or {})  # {}: UNSET, a checkpoint from before scores were kept
    _restore_rng(state.python_rng, state.numpy_rng, state.torch_rng)
    return state.iteration


# --- record files (JSON lines) ---------------------------------------------------------


def write_records(path: Path, records: Sequence[Any]) -> None:
    """Structs as JSON lines, replacing ``path`` whole (a kill leaves the old file)."""
    encoder = msgspec.json.Encoder()
    with replacing(path) as f:
        for record in records:
            f.write(encoder.encode(record) + b"\n")


def _read_lines(path: Path, kind: type) -> list[Any]:
    decoder = msgspec.json.Decoder(kind)
    out = []
    try:
        with open(path, "rb") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    try:
                        out.append(decoder.decode(line))
                    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
                        raise DataError(f"{path}:{number}: not a valid {kind.__name__} record: {exc}") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    return out


def write_trajectories(path: Path, trajectories: Sequence[Trajectory]) -> None:
    write_records(path, trajectories)


def read_trajectories(path: Path) -> list[Trajectory]:
    return _read_lines(path, Trajectory)


def write_transitions(path: Path, transitions: Sequence[Transition]) -> None:
    write_records(path, transitions)


def read_transitions(path: Path) -> list[Transition]:
    return _read_lines(path, Transition)


def episodes_of(transitions: Sequence[Transition]) -> dict[tuple[str, str], list[Transition]]:
    """Transitions by (task id, episode id), in the order read.

    Raises:
        DataError: an episode holds a step twice (a file appended to itself, say): its second
            copy would be given the first in its history, and counted twice.
    """
    episodes: dict[tuple[str, str], list[Transition]] = {}
    for t in transitions:
        episodes.setdefault((t.task_id, t.episode_id), []).append(t)
    for (task_id, episode_id), steps in episodes.items():
        repeated = sorted(step for step, n in Counter(t.step for t in steps).items() if n > 1)
        if repeated:
            raise DataError(f"episode {episode_id!r} of task {task_id!r} holds step {repeated[0]} more than once")
    return episodes


def trajectories_from_transitions(transitions: Sequence[Transition], tasks: Sequence[Task]) -> list[Trajectory]:
    """Regroup stored transitions into episodes (by task and episode id, in step order).

    Raises:
        DataError: an episode holds a step twice (a file appended to itself, say), whose
            second copy would be trained with the first in its history.
    """
    by_task = {t.id: t for t in tasks}
    episodes = episodes_of(transitions)
    out = []
    for steps in episodes.values():
        steps.sort(key=lambda t: t.step)
        first = steps[0]
        task = by_task.get(first.task_id) or Task(id=first.task_id, instruction=first.instruction, domain="offline")
        out.append(Trajectory(task=task, transitions=steps))
    return out
