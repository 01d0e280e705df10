"""dreamgym_core.jvm without a JVM: the start's time limit, the watchdog, and dropping.

The plugins that use the guard (textworld's twx engine, scienceworld) test it on their real
JVMs: hung, stopped and killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from dreamgym_core.errors import DreamGymError
from dreamgym_core.jvm import JvmGuard, _start_within, _Watchdog

_LINUX = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the started process in /proc")


class SimError(DreamGymError):
    pass


def _gone(pid: int) -> bool:
    """Whether ``pid`` no longer exists (killed and reaped: a zombie still answers signal 0)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@_LINUX
def test_a_start_that_times_out_kills_only_its_own_jvm() -> None:
    """A start not up within its limit kills (and reaps) the JVM it started, and spares the
    child processes this process had before it began: another guard's JVM, up already."""
    other = subprocess.Popen(["sleep", "600"])  # another guard's JVM: a child before the start
    hung_jvms: list[subprocess.Popen] = []

    def hung():  # a JVM that never comes up
        hung_jvms.append(subprocess.Popen(["sleep", "600"]))
        time.sleep(2)

    try:
        with pytest.raises(TimeoutError):
            _start_within(hung, 0.5, "test")
        assert len(hung_jvms) == 1, "the hung start never started its JVM"
        pid = hung_jvms[0].pid
        deadline = time.monotonic() + 10.0
        while not _gone(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _gone(pid), "the timed-out start's JVM was left running"
        assert other.poll() is None and not _gone(other.pid), "the other guard's JVM was killed by the start's timeout"
    finally:
        for process in [*hung_jvms, other]:
            process.kill()  # a no-op on one already reaped (Popen polls before signalling)
            process.wait()


@_LINUX
def test_a_jvm_forked_after_the_start_was_given_up_is_killed_too() -> None:
    """The start timed out before its thread had forked the JVM (py4j's launch was slow): the one
    sweep found no child, and the JVM forked a moment later outlived the command."""
    late_jvms: list[subprocess.Popen] = []

    def slow_launch():  # forks its JVM after the 0.2 s limit, then waits for it to come up
        time.sleep(0.6)
        late_jvms.append(subprocess.Popen(["sleep", "600"]))
        late_jvms[0].wait()  # killed: a real start then fails
        raise OSError("the JVM exited")

    try:
        with pytest.raises(TimeoutError):
            _start_within(slow_launch, 0.2, "test")
        assert len(late_jvms) == 1, "the start never forked its JVM"
        assert _gone(late_jvms[0].pid), "the JVM forked after the limit was left running"
    finally:
        for process in late_jvms:
            process.kill()
            process.wait()


def test_ctrl_c_during_a_start_waits_for_the_start_thread_to_end() -> None:
    """An interrupted Thread.join marks a thread that is still running as stopped (CPython 3.11),
    so a later join returns at once: the start must be waited for another way."""
    finished = threading.Event()

    def slow():  # a start whose JVM was killed fails; killing ends a real one within moments
        time.sleep(1.5)
        finished.set()
        raise OSError("the JVM exited")

    ctrl_c = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    ctrl_c.start()
    with pytest.raises(KeyboardInterrupt):
        _start_within(slow, 30.0, "test")
    ctrl_c.join()
    assert finished.is_set(), "the start thread was still running when the interrupt was raised"


def test_a_wrapper_up_just_after_the_limit_is_abandoned_with_its_killed_jvm() -> None:
    """Its py4j client stayed 'connected' to the killed JVM and its callback server listening;
    the Ctrl-C path closed them. A stand-in wrapper with py4j's layout records what is closed."""
    closed: list[str] = []

    class Client:
        is_connected = True

        def close(self) -> None:
            closed.append("client")

    class Gateway:
        java_process = None

        def __init__(self) -> None:
            self._gateway_client = Client()

        def shutdown_callback_server(self) -> None:
            closed.append("callback server")

    class LateWrapper:
        def __init__(self) -> None:
            time.sleep(0.6)  # comes up after the 0.2 s limit, before the start is given up
            self._gateway = Gateway()

        def close(self) -> None:
            closed.append("wrapper")

    with pytest.raises(TimeoutError):
        _start_within(LateWrapper, 0.2, "test")
    assert "callback server" in closed


def test_the_watchdog_kills_only_a_call_that_outlives_its_limit() -> None:
    process = subprocess.Popen(["sleep", "600"])
    watchdog = _Watchdog(process, 0.5, "test")
    try:
        watchdog.arm()
        assert not watchdog.disarm()  # answered in time
        watchdog.arm()
        process.wait(timeout=10)  # killed at the limit
        assert watchdog.disarm()
    finally:
        watchdog.stop()
        process.kill()
        process.wait()


def test_a_start_that_fails_is_one_line_naming_the_plugin(monkeypatch, tmp_path) -> None:
    pytest.importorskip("py4j")
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    (tmp_path / "java").write_text("#!/bin/sh\n")  # `java` found; the start itself fails
    (tmp_path / "java").chmod(0o755)

    def start():
        raise OSError("no room\nsecond line")

    guard = JvmGuard(start=start, name="sim", label="env 'sim'", simulator="Sim", error=SimError, call_timeout_s=5)
    with pytest.raises(SimError, match=r"^env 'sim': reset: the Sim engine \(JVM\) did not start \(no room\)$"):
        with guard.call("reset"):
            pass
    assert guard.wrapper is None


def test_a_wrapper_without_a_jvm_process_is_dropped_on_a_broken_call(monkeypatch, tmp_path) -> None:
    Py4JNetworkError = pytest.importorskip("py4j.protocol").Py4JNetworkError

    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    (tmp_path / "java").write_text("#!/bin/sh\n")
    (tmp_path / "java").chmod(0o755)
    closed, dropped = [], []

    class Wrapper:
        def close(self) -> None:
            closed.append(True)

    guard = JvmGuard(
        start=Wrapper, name="sim", label="env 'sim'", simulator="Sim", error=SimError, call_timeout_s=5,
        on_drop=lambda: dropped.append(True),
    )  # fmt: skip
    with pytest.raises(SimError, match=r"^env 'sim': step: the Sim engine \(JVM\) stopped answering \(gone\)$"):
        with guard.call("step"):
            raise Py4JNetworkError("gone")
    assert guard.wrapper is None and closed == [True] and dropped == [True]
    with guard.call("reset") as wrapper:  # the next call starts another
        assert isinstance(wrapper, Wrapper)
    with pytest.raises(ValueError):  # the caller's own errors pass, and keep the wrapper
        with guard.call("step"):
            raise ValueError("bad action")
    assert guard.wrapper is wrapper
    guard.close()
    assert guard.wrapper is None and closed == [True, True]


@pytest.fixture
def guard(monkeypatch, tmp_path) -> JvmGuard:
    """A guard whose wrapper is a plain object: no JVM, a `java` on PATH only to be found."""
    pytest.importorskip("py4j")
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    (tmp_path / "java").write_text("#!/bin/sh\n")
    (tmp_path / "java").chmod(0o755)

    class Wrapper:
        def close(self) -> None:
            pass

    return JvmGuard(start=Wrapper, name="sim", label="env 'sim'", simulator="Sim", error=SimError, call_timeout_s=5)


def test_an_interrupt_during_a_call_stays_an_interrupt(guard: JvmGuard) -> None:
    """py4j handles a KeyboardInterrupt during a call by closing the connection, with a method
    its GatewayConnection lacks: the AttributeError that replaces the interrupt would pass for
    the engine's failure, and a run would take Ctrl-C for a failed episode and play on."""
    interrupt = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt) as raised:
        with guard.call("step"):
            try:
                raise interrupt
            except KeyboardInterrupt:  # what py4j's GatewayClient.send_command does
                raise AttributeError("'GatewayConnection' object has no attribute 'shutdown_socket'")
    assert raised.value is interrupt
    guard.close()


def test_a_call_in_a_stops_cleanup_that_meets_a_dead_jvm_is_the_engines_error(guard: JvmGuard) -> None:
    """A run that Ctrl-C unwinds closes its engines, and their calls meet JVMs the same Ctrl-C
    killed. Such a call's broken pipe is chained to the interrupt in flight, which is not this
    call's: taken for one, it was raised again without dropping the wrapper, which ended the
    rest of the cleanup (the other engines stayed open) and left py4j's client of the dead JVM
    marked connected, to message it at exit."""
    with guard.call("reset"):
        pass
    raised: list[BaseException] = []
    try:
        raise KeyboardInterrupt  # the stop the run is unwinding for
    except KeyboardInterrupt:
        try:
            with guard.call("close"):
                raise BrokenPipeError(32, "Broken pipe")
        except BaseException as exc:  # noqa: BLE001 - the interrupt too, to fail the test rather than stop pytest
            raised.append(exc)
    assert isinstance(raised[0], SimError), repr(raised[0])
    assert str(raised[0]) == "env 'sim': close: the Sim engine (JVM) stopped answering ([Errno 32] Broken pipe)"
    assert guard.wrapper is None  # dropped
    guard.close()
