"""Test helpers for simulators in other processes: stop one, bound a call that may hang, and
Ctrl-C a whole run as a terminal does.

pytest-timeout is not a dependency, so a test whose call blocks must bound it itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

__all__ = ["stop_process", "bounded", "py4j_noise", "ctrl_c_run", "Interrupted", "sigint_as_in_a_terminal", "group_members", "STOP_LINE", "PROGRESS"]

STOP_LINE = "Error: interrupted by SIGINT; what the run stored is kept: continue it with --resume"
PROGRESS = "[dreamgym "  # how every progress line of a run begins


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


class Interrupted(NamedTuple):
    status: int  # the run's exit status
    lines: list[str]  # its stderr from the marker's progress line on
    left: list[str]  # 'pid command' of each process of its group still alive after it exited

    def said(self) -> list[str]:
        """What the run printed on stderr from the marker on, progress lines aside."""
        return [line for line in self.lines if not line.startswith(PROGRESS)]

    def assert_stopped_in_one_line(self) -> None:
        """The README's promise for Ctrl-C, checked: exit 130 within the marker's stage, the stop
        line and nothing else besides progress, and no process of the group left."""
        assert self.status == 130, "\n".join(self.lines[-40:])
        assert self.lines[1:2] == [STOP_LINE], "the Ctrl-C should land in that stage:\n" + "\n".join(self.lines[:3])
        said = self.said()
        assert said == [STOP_LINE], f"{len(said)} lines besides progress:\n" + "\n".join(said[:60])
        assert self.left == [], self.left


def ctrl_c_run(args: Sequence[str], marker: str, delay_s: float, stdout: Path, *, lands: str = "anywhere",
               limit_s: float = 600, settle_s: float = 10) -> Interrupted:
    """Run ``dreamgym *args`` as a shell runs a foreground job, in a process group of its own,
    and press Ctrl-C ``delay_s`` after the progress line that contains ``marker``: SIGINT goes
    to the whole group, so simulators the run started (JVMs, a browser) get it at once, as they
    do in a terminal. Linux only (reads /proc).

    Where the Ctrl-C lands is a race between the run and its simulators; ``lands`` picks it:

    - ``"anywhere"``: as it comes;
    - ``"in_a_call"``: the simulators are held (SIGSTOP) until the run waits on one of them,
      so the Ctrl-C meets the run inside a simulator call;
    - ``"after_the_simulators"``: the run is held until its simulators have exited on the
      Ctrl-C, so every call of its cleanup meets a dead simulator (a loaded machine gets there).

    The run's stdout goes to ``stdout``. Processes of the group still alive ``settle_s`` after
    the run exited are reported in ``left`` and then killed, so that nothing outlives the test."""
    press = _PRESSES[lands]
    with stdout.open("w") as out:
        run = subprocess.Popen(
            [sys.executable, "-m", "dreamgym_core.cli", *args], stdout=out, stderr=subprocess.PIPE, text=True,
            preexec_fn=_as_a_foreground_job,
        )
    hung = threading.Event()

    def kill_hung_group() -> None:  # a hung run, or a process that keeps its stderr, fails, not hangs
        hung.set()
        os.killpg(run.pid, signal.SIGKILL)

    timers = [threading.Timer(limit_s, kill_hung_group)]
    timers[0].start()
    try:
        lines: list[str] = []
        start = None
        for line in run.stderr:  # type: ignore[union-attr]
            lines.append(line.rstrip("\n"))
            if start is None and line.startswith(PROGRESS) and marker in line:
                start = len(lines) - 1
                timers.append(threading.Timer(delay_s, press, (run.pid, settle_s)))
                timers[-1].start()
        status = run.wait()
    finally:
        for timer in timers:
            timer.cancel()
    if hung.is_set():
        raise AssertionError(f"the run's process group was still running after {limit_s} s:\n" + "\n".join(lines[-30:]))
    if start is None:
        raise AssertionError(f"the run never printed {marker!r}:\n" + "\n".join(lines[-30:]))
    deadline = time.monotonic() + settle_s  # a JVM that got the Ctrl-C takes a moment to exit
    while (left := group_members(run.pid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for member in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(member.split()[0]), signal.SIGKILL)
    return Interrupted(status, lines[start:], left)


def _simulators(run: int) -> list[int]:
    """The other live processes of the group that ``run`` leads (its pid is the group's id)."""
    return [int(m.split()[0]) for m in group_members(run) if not m.startswith(f"{run} ")]


def _press_anywhere(run: int, settle_s: float) -> None:
    os.killpg(run, signal.SIGINT)


def _press_in_a_call(run: int, settle_s: float) -> None:
    held = _simulators(run)
    for pid in held:
        os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(0.5)  # the run's next simulator call now waits for an answer
        os.killpg(run, signal.SIGINT)
    finally:
        for pid in held:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def _press_after_the_simulators(run: int, settle_s: float) -> None:
    os.kill(run, signal.SIGSTOP)
    try:
        os.killpg(run, signal.SIGINT)
        deadline = time.monotonic() + settle_s
        while _simulators(run) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        os.kill(run, signal.SIGCONT)


_PRESSES = {"anywhere": _press_anywhere, "in_a_call": _press_in_a_call, "after_the_simulators": _press_after_the_simulators}


def _as_a_foreground_job() -> None:
    """``preexec_fn`` of :func:`ctrl_c_run`'s run: a process group of its own, whose id is the
    run's pid (Popen's ``process_group=0``, which Python 3.10 lacks), and the default Ctrl-C."""
    os.setpgid(0, 0)
    sigint_as_in_a_terminal()


def sigint_as_in_a_terminal() -> None:
    """A child's Ctrl-C back to the system default (use as ``preexec_fn``): a suite started in
    the background (``pytest &``) passes on an ignored SIGINT, which the CLI rightly leaves
    ignored, and its interrupt tests would then test nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def group_members(pgid: int) -> list[str]:
    """'pid command' of each live process (zombies aside) in process group ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # it ended while we looked
            continue
        # the command sits in parentheses and may hold spaces; the fields after it are plain
        command, fields = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(f"{entry.name} {command}")
    return members
