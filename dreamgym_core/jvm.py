"""Simulators that run in a JVM behind py4j (TextWorldExpress, ScienceWorld), guarded.

py4j puts no time limit on a call: one to a stopped or deadlocked JVM waits forever. A call
to a JVM that died logs pages of tracebacks (some on the root logger) before it raises, and
the client keeps trying the dead port on every later call. :class:`JvmGuard` owns one such
simulator's Python wrapper and makes each call a short, bounded affair:

- a watchdog kills the JVM when a call (or the JVM's start) outlives ``call_timeout_s``;
- a call that finds the JVM dead, or that it kills, drops the wrapper: the call fails with
  one line naming the plugin, and the next call starts a new JVM;
- what py4j logs during a call that fails so is held back (to DEBUG); nothing else is.

Proxies of Java objects need care too. A py4j proxy whose method was called sits in a
reference cycle, so Python frees it at some later collection, from whatever thread runs it,
and py4j then messages its JVM: with no time limit, so a stopped JVM blocks that thread for
good. Code that gets a proxy back releases it before its call ends (``gateway.detach``;
:func:`list_items` for Java lists), and the guard collects what the wrapper's constructor
left behind right after the start.

py4j is imported only once a guard is used.
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from . import stopping
from .errors import DreamGymError

__all__ = ["JvmGuard", "MAX_CALL_TIMEOUT_S", "quiet_del", "list_items"]

# The largest call_timeout_s a guard takes: a day, far past any call of a live simulator (seconds
# at most), so only a hung one reaches it. Far larger limits cannot be waited for at all: the
# start's wait fails ("timestamp out of range for platform time_t") past threading.TIMEOUT_MAX
# (about 292 years), and the env configs' call_timeout_s fields name this bound.
MAX_CALL_TIMEOUT_S = 86400.0

# How long a killed JVM may take to be reaped before the wrapper is dropped anyway (its py4j
# process thread still reaps it later).
_REAP_S = 10.0

_log = logging.getLogger(__name__)


class _Watchdog:
    """Kills a JVM when a call to it outlives ``limit_s``, so the blocked call fails.

    One thread per JVM. Arming and disarming take a lock (microseconds): a timer thread
    per call would cost about as much as a step. The thread sleeps while no call runs
    and wakes about once per ``limit_s`` while calls follow one another.
    """

    def __init__(self, process: Any, limit_s: float, name: str) -> None:
        self.process = process
        self.limit_s = limit_s
        self._lock = threading.Condition()
        self._deadline: float | None = None  # while a call runs
        self._idle = False  # the thread waits for a call (no deadline to sleep to)
        self._fired = self._stopped = False
        self._thread = threading.Thread(target=self._run, name=f"{name}-watchdog-{process.pid}", daemon=True)
        self._thread.start()

    def arm(self) -> None:
        with self._lock:
            self._deadline = time.monotonic() + self.limit_s
            if self._idle:
                self._lock.notify()

    def disarm(self) -> bool:
        """End the watch of a call: whether its limit passed (then the JVM was killed)."""
        with self._lock:
            self._deadline = None
            return self._fired

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            self._lock.notify()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        with self._lock:
            while not self._stopped:
                if self._deadline is None:
                    self._idle = True
                    self._lock.wait()
                    self._idle = False
                elif (left := self._deadline - time.monotonic()) > 0:
                    self._lock.wait(min(left, threading.TIMEOUT_MAX))
                else:
                    self._fired, self._deadline = True, None
                    try:
                        self.process.kill()  # SIGKILL: a stopped or deadlocked JVM dies too
                    except OSError:  # it has exited already
                        pass


class _HeldPy4JLogs(logging.Filter):
    """Holds back what py4j logs on a thread during a guarded call, until the call ends.

    py4j logs tracebacks (some on the root logger) for a connection that breaks, and for
    each connection it then fails to open, before it raises. A call that fails with the
    guard's error says what happened in one line, so those records go to this module's
    logger at DEBUG; so do those of any call once Ctrl-C or SIGTERM has asked the command to
    stop: the terminal's Ctrl-C reaches the JVMs in its process group too, and the run's
    closing calls (detaching games, shutting gateways) meet JVMs on their way out, which py4j
    logs and does not raise. A call that ends any other way lets them through as py4j logged
    them. Records of other threads, of other libraries, and outside calls pass.
    """

    LOGGERS = ("root", "py4j.java_gateway", "py4j.clientserver")

    def __init__(self) -> None:
        super().__init__()
        self._held: dict[int, list[logging.LogRecord]] = {}
        self._py4j_dir = ""

    def install(self) -> None:
        if self._py4j_dir:
            return
        import py4j

        for name in self.LOGGERS:
            logging.getLogger(name).addFilter(self)
        self._py4j_dir = os.path.dirname(py4j.__file__) + os.sep

    def filter(self, record: logging.LogRecord) -> bool:
        held = self._held.get(record.thread) if self._held else None
        if held is None or not self._py4j_dir or not record.pathname.startswith(self._py4j_dir):
            return True
        held.append(record)
        return False

    @contextmanager
    def hold(self, error: type[BaseException] | tuple[type[BaseException], ...]) -> Iterator[None]:
        thread = threading.get_ident()
        if thread in self._held:  # a call inside a call: the outer one decides
            yield
            return
        records = self._held[thread] = []
        failed = False
        try:
            yield
        except error:
            failed = True
            raise
        finally:
            del self._held[thread]
            quiet = failed or stopping.requested() is not None
            for record in records:
                if quiet:
                    _log.debug("py4j logged, before an engine error or in a stop: %s", record.getMessage(), exc_info=record.exc_info)
                else:
                    logging.getLogger(record.name).handle(record)


_PY4J_LOGS = _HeldPy4JLogs()


def _java_process(wrapper: Any) -> Any:
    """The JVM's ``subprocess.Popen`` (the wrappers start it through py4j), or None."""
    return getattr(getattr(wrapper, "_gateway", None), "java_process", None)


def quiet_del(wrapper_class: type) -> type:
    """``wrapper_class`` whose ``__del__`` closes only a wrapper whose JVM still runs. The
    stock ones close their gateway there: one that never started raises (no ``_gateway``),
    and one whose JVM was killed logs failed connections; Python prints either after the
    run's own one-line error, at whatever later moment the wrapper is collected."""

    class Wrapper(wrapper_class):  # type: ignore[misc, valid-type]
        def __del__(self) -> None:
            process = _java_process(self)
            if process is not None and process.poll() is None:
                super().__del__()

    Wrapper.__name__ = Wrapper.__qualname__ = wrapper_class.__name__
    return Wrapper


def _disconnect(wrapper: Any) -> bool:
    """Mark ``wrapper``'s py4j client disconnected and close its connections; False where the
    wrapper does not have py4j's layout. A client marked so stops sending the JVM deletes for
    the Java objects Python collects later (at exit, say), each of which would otherwise log a
    failed connection once the JVM is gone."""
    gateway = getattr(wrapper, "_gateway", None)
    if getattr(gateway, "_gateway_client", None) is None:
        return False
    _cut_off(gateway)
    return True


def _cut_off(gateway: Any) -> None:
    """Mark a py4j gateway's client disconnected (see :func:`_disconnect`) and close its connections."""
    gateway._gateway_client.is_connected = False
    gateway._gateway_client.close()


def _abandon(wrapper: Any) -> None:
    """Close py4j's side of a wrapper whose JVM was killed, without a shutdown request
    (nothing would answer it)."""
    if not _disconnect(wrapper):  # not the py4j layout this was written for
        wrapper.close()
        return
    wrapper._gateway.shutdown_callback_server()


def _half_built_gateways(exc: BaseException) -> list[Any]:
    """The py4j gateways that the frames of ``exc``'s traceback hold: those a wrapper's
    constructor made before it failed (its ``self``, or py4j's gateway being built). Instance
    dicts are read, not attributes: an attribute of a Java proxy would be a call to its JVM."""
    from py4j.java_gateway import JavaGateway

    found: list[Any] = []
    tb = exc.__traceback__
    while tb is not None:
        for value in tb.tb_frame.f_locals.values():
            gateway = value if isinstance(value, JavaGateway) else getattr(value, "__dict__", {}).get("_gateway")
            if isinstance(gateway, JavaGateway) and all(gateway is not g for g in found):
                found.append(gateway)
        tb = tb.tb_next
    return found


def _close_half_built(exc: BaseException) -> None:
    """Close py4j's side of each gateway a failed start made, and kill its JVM. Nothing owns
    them: their clients, still marked connected, would message the dead JVM for each Java
    object Python frees later (at exit, say), and their callback servers would keep listening."""
    for gateway in _half_built_gateways(exc):
        _cut_off(gateway)
        gateway.shutdown_callback_server()
        process = getattr(gateway, "java_process", None)
        if process is not None:
            process.kill()
            try:
                process.wait(timeout=_REAP_S)
            except subprocess.TimeoutExpired:  # its py4j process thread reaps it later
                pass


def list_items(wrapper: Any, java_list: Any) -> list[Any]:
    """The items of a Java list (a py4j proxy), the proxy released at once (see :class:`JvmGuard`).
    Read by index: iterating would proxy a Java iterator too."""
    try:
        return [java_list.get(i) for i in range(java_list.size())]
    finally:
        wrapper._gateway.detach(java_list)


def _child_pids() -> set[int]:
    """Processes whose parent is this one (read from /proc; empty where there is none)."""
    me, found = os.getpid(), set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):  # it exited meanwhile
            continue
        if int(fields[1]) == me:
            found.add(int(stat.parent.name))
    return found


def _kill_and_reap(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):  # gone, or reaped by its Popen already
        pass


# One JVM starts at a time in a process: a start that times out kills the child processes
# that appeared during it, which must not include another guard's JVM starting meanwhile.
_START_LOCK = threading.Lock()
# How long a start given up is waited for, and how often its new children are swept meanwhile.
_STOP_START_S = 5.0
_STOP_START_SWEEP_S = 0.1


def _stop_start(ended: threading.Event, children_before: set[int]) -> None:
    """Kill the JVM a start thread is bringing up (the child that appeared since it began),
    and let the thread end. Swept until the thread ends (5 s at most) and once after: a start
    given up before it had forked its JVM forked it after a single sweep, and that JVM outlived
    the command."""
    deadline = time.monotonic() + _STOP_START_S
    while True:
        for pid in _child_pids() - children_before:
            _kill_and_reap(pid)
        if ended.wait(_STOP_START_SWEEP_S) or time.monotonic() >= deadline:
            break
    for pid in _child_pids() - children_before:  # forked as the thread ended
        _kill_and_reap(pid)


def _start_within(start: Callable[[], Any], limit_s: float, name: str) -> Any:
    """``start()``'s wrapper, or its exception. One not up within ``limit_s`` (0: no limit)
    raises TimeoutError once killed: py4j hands over the JVM's process only once it is up,
    so the one to kill is the child that appeared meanwhile."""
    with _START_LOCK:
        outcome: dict[str, Any] = {}
        children_before = _child_pids()
        # Waited on instead of Thread.join: a join interrupted by Ctrl-C marks a thread that is
        # still running as stopped (CPython 3.11's bpo-45274 handling), so a second join, or
        # is_alive, would no longer wait for it.
        ended = threading.Event()

        def run() -> None:
            try:
                with _PY4J_LOGS.hold(Exception):  # a failed start is one line; so is one killed at the limit
                    try:
                        outcome["wrapper"] = start()
                    except Exception as exc:  # the JVM may have died mid-constructor (Ctrl-C reaches it too)
                        _close_half_built(exc)
                        raise
            except Exception as exc:  # noqa: BLE001 - py4j fails with bare ValueErrors, OSErrors, ...
                outcome["error"] = exc
            finally:
                ended.set()

        threading.Thread(target=run, name=f"{name}-start", daemon=True).start()
        try:
            up = ended.wait(limit_s if limit_s > 0 else None)
        except BaseException:  # Ctrl-C or SIGTERM meanwhile: no guard would own the JVM it starts
            _stop_start(ended, children_before)
            if "wrapper" in outcome:  # it was up: its client would message the killed JVM at exit
                _abandon(outcome["wrapper"])
            raise
        if not up:
            _stop_start(ended, children_before)
            if outcome.get("wrapper") is not None:  # up just after the limit, its JVM now killed: as for Ctrl-C above
                _abandon(outcome["wrapper"])
            raise TimeoutError
    if "error" in outcome:
        raise outcome["error"]
    return outcome["wrapper"]


def _interrupt_behind(exc: BaseException | None, *, before: BaseException | None = None) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt ``exc`` is, or was raised while handling, if any, short of
    ``before`` (what was being handled already when the call began)."""
    while exc is not None and exc is not before:
        if isinstance(exc, KeyboardInterrupt):
            return exc
        exc = exc.__context__
    return None


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


class JvmGuard:
    """One simulator's py4j wrapper, started lazily, whose calls are bounded and whose
    death is survived (see the module docstring).

    Args:
        start: Builds the wrapper (this starts its JVM), e.g. ``lambda: ScienceWorldEnv("")``.
        name: Short name for threads (``<name>-watchdog-<pid>``).
        label: How error messages begin, naming the plugin (``"env 'twx'"``).
        simulator: The simulator's name in messages (``"TextWorldExpress"``).
        error: The error raised; a subclass of DreamGymError.
        call_timeout_s: Limit of the JVM's start and of each call, in seconds, at most
            :data:`MAX_CALL_TIMEOUT_S`; 0 turns it off.
        on_drop: Called when the wrapper is dropped (the caller forgets its episode).

    ``wrapper`` is the started wrapper, or None.
    """

    def __init__(
        self,
        *,
        start: Callable[[], Any],
        name: str,
        label: str,
        simulator: str,
        error: type[DreamGymError],
        call_timeout_s: float,
        on_drop: Callable[[], None] | None = None,
    ) -> None:
        if not 0 <= call_timeout_s <= MAX_CALL_TIMEOUT_S:  # NaN too: it would never fire
            raise ValueError(
                f"{label}: call_timeout_s is {call_timeout_s:g}; it takes 0 (no limit) to {MAX_CALL_TIMEOUT_S:g} s (a day)"
            )
        self.start, self.name, self.label, self.simulator = start, name, label, simulator
        self.error = error
        self.call_timeout_s = call_timeout_s
        self.on_drop = on_drop
        self.wrapper: Any = None
        self.watchdog: _Watchdog | None = None

    @property
    def _jvm(self) -> str:
        return f"the {self.simulator} engine (JVM)"

    def _started(self, what: str) -> Any:
        if self.wrapper is None:
            # py4j starts the `java` on PATH; without one it fails with a bare FileNotFoundError
            if shutil.which("java") is None:
                raise self.error(
                    f"{self.label}: {what}: no `java` on PATH: {self.simulator} needs a Java runtime"
                    " (Debian: apt install openjdk-17-jre-headless)"
                )
            try:
                self.wrapper = _start_within(self.start, self.call_timeout_s, self.name)
            except TimeoutError:
                raise self.error(
                    f"{self.label}: {what}: {self._jvm} did not start within {self.call_timeout_s:g} s"
                    " (call_timeout_s) and was stopped"
                ) from None
            except Exception as exc:
                cause = _first_line(exc)
                if isinstance(exc, ValueError) and "invalid literal for int()" in cause:  # py4j read no port
                    cause = "java exited before it was up; `java -version` shows the runtime it found"
                raise self.error(f"{self.label}: {what}: {self._jvm} did not start ({cause})") from exc
            # The wrappers' constructors leave proxies in reference cycles (the callback client
            # and its address); collected later, each would message the JVM from whatever thread
            # runs the collection, with no time limit. Collected now, the JVM is up to answer.
            gc.collect()
            process = _java_process(self.wrapper)
            if self.call_timeout_s > 0 and process is not None:
                self.watchdog = _Watchdog(process, self.call_timeout_s, self.name)
        return self.wrapper

    @contextmanager
    def call(self, what: str) -> Iterator[Any]:
        """The started wrapper for one call (``what`` names it in messages).

        A JVM known to have exited is not called at all (py4j would log pages of retries);
        one that dies during the call surfaces as a py4j network error, and one that hangs
        is killed by the watchdog after ``call_timeout_s``. Each drops the wrapper and
        raises ``error`` in one line. A Java exception the simulator answers with
        (``Py4JJavaError``) passes through, as does any other error of the caller's.
        """
        from py4j.protocol import Py4JError, Py4JJavaError

        # A call in a stop's cleanup (closing engines while Ctrl-C unwinds the run) starts with
        # that interrupt being handled, and whatever the call raises is chained to it: an
        # interrupt there is not this call's.
        in_flight = sys.exc_info()[1]
        _PY4J_LOGS.install()
        with _PY4J_LOGS.hold((self.error, KeyboardInterrupt)):
            wrapper = self._started(what)
            process = _java_process(wrapper)
            if process is not None and process.poll() is not None:
                self.drop()
                raise self.error(f"{self.label}: {what}: {self._jvm} has exited (code {process.returncode})")
            watchdog = self.watchdog
            if watchdog is not None:
                watchdog.arm()
            try:
                yield wrapper
            except BaseException as exc:  # KeyboardInterrupt too: the watch must end
                interrupt = _interrupt_behind(exc, before=in_flight)
                if interrupt is not None and interrupt is not exc:
                    # Ctrl-C (or SIGTERM, raised as one) mid-call: py4j's handler of it fails in turn
                    # (its GatewayConnection has no shutdown_socket), and the caller would take that
                    # AttributeError for the engine's failure and go on playing.
                    if watchdog is not None:
                        watchdog.disarm()
                    raise interrupt from None
                if watchdog is not None and watchdog.disarm():
                    self.drop()
                    raise self.error(self._timed_out(what)) from exc
                if isinstance(exc, Py4JJavaError):
                    raise  # the simulator answered with an error of its own
                if isinstance(exc, (Py4JError, ConnectionError)):  # py4j lets a broken pipe through, rarely
                    self.drop()
                    raise self.error(f"{self.label}: {what}: {self._jvm} stopped answering ({_first_line(exc)})") from exc
                raise
            if watchdog is not None and watchdog.disarm():  # the answer came as the limit passed
                self.drop()
                raise self.error(self._timed_out(what))

    def _timed_out(self, what: str) -> str:
        return (
            f"{self.label}: {what}: {self._jvm} did not answer within {self.call_timeout_s:g} s"
            " (call_timeout_s) and was stopped"
        )

    def drop(self) -> None:
        """Forget a failed wrapper: its JVM is killed and reaped, and nothing more is sent to it."""
        wrapper, self.wrapper = self.wrapper, None
        watchdog, self.watchdog = self.watchdog, None
        if watchdog is not None:
            watchdog.stop()
        if self.on_drop is not None:
            self.on_drop()
        if wrapper is None:
            return
        process = _java_process(wrapper)
        if process is not None:
            process.kill()
            try:
                process.wait(timeout=_REAP_S)
            except subprocess.TimeoutExpired:
                _log.warning("%s: the killed JVM (pid %s) has not exited after %s s", self.label, process.pid, _REAP_S)
        _abandon(wrapper)

    def close(self) -> None:
        """Shut the JVM down and wait for it to exit (a healthy one takes about 0.1 s). One that
        has exited is dropped, and one that does not act on the shutdown within the time limit
        (a stopped JVM) is killed."""
        if self.wrapper is None:
            return
        try:
            with self.call("close") as wrapper:
                wrapper.close()
        except self.error:  # dropped: its JVM was dead or has been killed
            return
        # A JVM on its way out already (the terminal's Ctrl-C reached it too) refuses the
        # shutdown request, and py4j's client, still marked connected, would message it later.
        _disconnect(wrapper)
        watchdog, self.watchdog = self.watchdog, None
        if watchdog is not None:
            watchdog.stop()
        self.wrapper = None
        process = _java_process(wrapper)
        if process is None:
            return
        try:
            process.wait(timeout=min(self.call_timeout_s, _REAP_S) if self.call_timeout_s > 0 else _REAP_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=_REAP_S)
