"""One writer per buffer directory.

Two buffers writing one directory each number their records from what they loaded, so
their record ids collide: the next open keeps one record of each id and drops the other,
and an eviction logged by one retires the other's record of that id. Nothing in the
segment files can tell this happened, so writes are claimed instead: the first write of
a buffer takes an exclusive ``flock`` on ``writer.lock`` in its directory (the kernel
drops it when the process dies, so a crash leaves no stale lock) and holds it until
``close()``. Reading needs no claim: ``dreamgym buffer info`` on a directory a run is
writing still works, and sees the records flushed so far.

A claim is refused, before anything of the write changes, when another process holds
it, when another open buffer of this process holds it, or when the segment files are
not what the buffer loaded (someone wrote since it opened: its ids would collide).
"""

from __future__ import annotations

import fcntl
import os
import threading
import weakref
from pathlib import Path
from typing import Any

from dreamgym_core.errors import DataError

from .segments import segment_files

__all__ = ["LOCK_FILE", "WriterLock", "segments_state"]

LOCK_FILE = "writer.lock"

# Claims this process holds: resolved directory -> (lock file descriptor, owning buffer).
# flock conflicts between two descriptors of one process too, so a second buffer of the
# same directory would wait on its own process; it is told apart here instead. An entry
# leaves with its claim: on close(), or when its buffer is collected without one.
_HELD: dict[str, tuple[int, weakref.ref]] = {}
_HELD_GUARD = threading.RLock()  # reentrant: a collection inside claim() runs a finalizer that takes it


def segments_state(directory: Path) -> tuple[tuple[str, int], ...]:
    """Name and size of each segment file: what a write by anyone else would change."""
    state = []
    for path in segment_files(directory):
        try:
            state.append((path.name, path.stat().st_size))
        except FileNotFoundError:  # removed since listed: a change like any other
            state.append((path.name, -1))
    return tuple(state)


class WriterLock:
    """The write claim of one buffer on its directory (see the module docstring)."""

    def __init__(self, directory: Path, owner: Any) -> None:
        self.directory = directory
        self._key = str(directory.resolve())
        self._owner = weakref.ref(owner)
        self._loaded = segments_state(directory)
        self._finalizer: weakref.finalize | None = None  # closes the lock file: set while the claim is held

    def claim(self) -> None:
        """Hold the directory's write claim (a no-op once held).

        Raises:
            DataError: another process or another open buffer of this process writes this
                directory, or the segment files changed since this buffer loaded them.
        """
        if self.held:
            return
        with _HELD_GUARD:
            held = _HELD.get(self._key)
            if held is not None:
                other = held[1]()
                if other is not None and not getattr(other, "_closed", True):
                    raise DataError(
                        f"{self.directory}: another open replay buffer of this process writes this directory; "
                        "close it first (their record ids would collide)"
                    )
                _forget(self._key, held[0])  # its owner is gone: never reuse its descriptor (the file may be another now)
            fd = self._lock_file()
            if segments_state(self.directory) != self._loaded:
                os.close(fd)  # releases the lock taken just now
                raise DataError(
                    f"{self.directory}: the segment files changed since this replay buffer was opened (another "
                    "writer added records); open it again to write, so record ids do not collide"
                )
            _HELD[self._key] = (fd, self._owner)
            # a buffer dropped without close() gives its claim back when it is collected
            self._finalizer = weakref.finalize(self._owner(), _release, self._key, fd)

    def _lock_file(self) -> int:
        path = self.directory / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            raise DataError(f"{path}: cannot open the buffer's writer lock: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            who = f"process {pid}" if pid else "another process"
            raise DataError(
                f"{self.directory}: {who} is writing this replay buffer; a buffer directory takes one writer "
                "at a time (let it finish, or give this run its own run_dir)"
            ) from None
        except OSError as exc:
            os.close(fd)
            raise DataError(f"{path}: cannot lock the buffer for writing: {exc.strerror or exc}") from None
        # who holds it, for the message another writer gets (best effort: the lock is what counts)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass
        return fd

    @property
    def held(self) -> bool:
        """Whether this buffer holds the claim (its finalizer has not run)."""
        return self._finalizer is not None and self._finalizer.alive

    def release(self) -> None:
        """Give the claim back (``close()``); the next writer may take it."""
        if self._finalizer is not None:
            self._finalizer()  # runs once: a later collection of the buffer does nothing


def _release(key: str, fd: int) -> None:
    with _HELD_GUARD:
        _forget(key, fd)


def _forget(key: str, fd: int) -> None:
    """Drop the claim ``key`` held with ``fd`` (the guard held): closing it releases the flock."""
    held = _HELD.get(key)
    if held is not None and held[0] == fd:
        _HELD.pop(key)
        os.close(fd)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
