"""Test helpers for simulators in other processes: stop one, and bound a call that may hang.

pytest-timeout is not a dependency, so a test whose call blocks must bound it itself.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

__all__ = ["stop_process", "bounded", "py4j_noise"]


def stop_process(pid: int, wait_s: float = 10.0) -> None:
    """SIGSTOP ``pid`` and wait until every thread of it has stopped: a thread the kernel has
    not stopped yet could still answer the next call. Linux only (reads /proc)."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        states = []
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                states.append(Path(f"/proc/{pid}/task/{task}/stat").read_text().rsplit(")", 1)[1].split()[0])
            except FileNotFoundError:  # a thread that ended
                pass
        if states and all(state in "Tt" for state in states):
            return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} did not stop")


def bounded(call: Callable[[], Any], *, limit_s: float, unblock: Callable[[], None]) -> tuple[Any, float]:
    """``call()``'s result or exception, and its duration. Past ``limit_s`` it calls
    ``unblock()`` and fails the test instead of hanging the suite."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    start = time.monotonic()
    thread.start()
    thread.join(limit_s)
    elapsed = time.monotonic() - start
    if thread.is_alive():
        unblock()
        thread.join(10)
        raise AssertionError(f"the call was still blocked after {limit_s} s")
    return outcome[0], elapsed


def py4j_noise(records: list[logging.LogRecord]) -> list[str]:
    """What py4j logged (some of it on the root logger) that a default setup would print:
    a simulator's failed call should say what happened in its own one-line error instead."""
    return [
        f"{r.name}: {r.getMessage()}" for r in records
        if r.levelno >= logging.WARNING and (r.name.startswith("py4j") or "py4j" in r.pathname)
    ]  # fmt: skip
