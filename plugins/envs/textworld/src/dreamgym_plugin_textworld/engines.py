"""Thin adapters over the two real engines, with one shape of output.

Each engine loads a game from a task payload, resets, steps, and knows the expert's
next action. Nothing here renders text for models: that is :mod:`.state`.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import msgspec

from dreamgym_core.errors import ConfigError, DreamGymError

from .config import DEFAULT_CALL_TIMEOUT_S
from .games import TWX_FOLD_SEEDS, tw_game_path, twx_params_string

__all__ = ["RawState", "TwxEngine", "TwEngine", "EngineError"]


class RawState(NamedTuple):
    """One engine state in engine terms. ``score`` is progress in [0, 1]."""

    text: str
    inventory: str
    admissible: list[str]
    score: float
    won: bool
    lost: bool
    objective: str


class EngineError(DreamGymError):
    """A game engine stopped answering (its process died or its connection broke)."""


# TextWorldExpress reads game parameters as 32-bit integers.
_INT32 = (-(1 << 31), (1 << 31) - 1)
_NOT_LOADED = "ERROR: Game generator is not initialized"
# TextWorldExpress 1.1's gold agents for these games walk the map at random, with a generator
# it seeds from the clock (`new Random()` in their mkGameWithGoldPath), so one game's expert
# path, and every demo built on it, changes from one JVM launch to the next. For them the
# engine runs the same gold agent with a generator seeded by the game's seed, as cookingworld's
# generator already is. Upstream walks this many times before it gives up on a path.
_RANDOM_WALK_GOLD_AGENTS = {"coin": "CoinGoldAgent", "twc": "TWCGoldAgent"}
_GOLD_WALKS = 50
# How long a killed JVM may take to be reaped before the engine is dropped anyway (its
# py4j process thread still reaps it later).
_REAP_S = 10.0

_log = logging.getLogger(__name__)


class _Watchdog:
    """Kills a JVM when a call to it outlives ``limit_s``, so the blocked call fails.

    One thread per JVM. Arming and disarming take a lock (microseconds): a timer thread
    per call would cost about as much as a step. The thread sleeps while no call runs
    and wakes about once per ``limit_s`` while calls follow one another.
    """

    def __init__(self, process: Any, limit_s: float) -> None:
        self.process = process
        self.limit_s = limit_s
        self._lock = threading.Condition()
        self._deadline: float | None = None  # while a call runs
        self._idle = False  # the thread waits for a call (no deadline to sleep to)
        self._fired = self._stopped = False
        self._thread = threading.Thread(target=self._run, name=f"twx-watchdog-{process.pid}", daemon=True)
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
    """Holds back what py4j logs on a thread during an engine call, until the call ends.

    py4j logs tracebacks (some on the root logger) for a connection that breaks, and for
    each connection it then fails to open, before it raises. A call that becomes an
    :class:`EngineError` says what happened in one line, so those records go to this
    module's logger at DEBUG; a call that ends any other way lets them through as py4j
    logged them. Records of other threads, of other libraries, and outside calls pass.
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
    def hold(self) -> Iterator[None]:
        thread = threading.get_ident()
        if thread in self._held:  # a call inside a call: the outer one decides
            yield
            return
        records = self._held[thread] = []
        engine_error = False
        try:
            yield
        except EngineError:
            engine_error = True
            raise
        finally:
            del self._held[thread]
            for record in records:
                if engine_error:
                    _log.debug("py4j logged, before an EngineError: %s", record.getMessage(), exc_info=record.exc_info)
                else:
                    logging.getLogger(record.name).handle(record)


_PY4J_LOGS = _HeldPy4JLogs()


def _java_process(env: Any) -> Any:
    """The JVM's ``subprocess.Popen`` (TextWorldExpress starts it through py4j), or None."""
    return getattr(getattr(env, "_gateway", None), "java_process", None)


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


def _quiet_when_unstarted(engine_class: type) -> type:
    """``engine_class`` whose ``__del__`` skips an engine that never started: the stock one
    raises (no ``_gateway``), and Python prints that after the run's own one-line error."""

    class Engine(engine_class):  # type: ignore[misc, valid-type]
        def __del__(self) -> None:
            if hasattr(self, "_gateway"):
                super().__del__()

    return Engine


# One engine starts at a time in a process: a start that times out kills the child processes
# that appeared during it, which must not include another engine's JVM starting meanwhile.
_START_LOCK = threading.Lock()


def _start_engine(factory: Any, what: str, limit_s: float) -> Any:
    """A started engine (``factory`` is TextWorldExpressEnv). A JVM that fails to start is an
    EngineError; one not up within ``limit_s`` (0: no limit) is killed first. py4j hands over
    the JVM's process only once it is up, so the one to kill is the child that appeared meanwhile."""
    with _START_LOCK:
        return _start_alone(factory, what, limit_s)


def _start_alone(factory: Any, what: str, limit_s: float) -> Any:
    outcome: dict[str, Any] = {}
    children_before = _child_pids()

    def start() -> None:
        try:
            # The plugin enforces its own step cap; the engine's is set out of the way.
            outcome["env"] = factory(envStepLimit=10**9)
        except Exception as exc:  # noqa: BLE001 - py4j fails with bare ValueErrors, OSErrors, ...
            outcome["error"] = exc

    thread = threading.Thread(target=start, name="twx-start", daemon=True)
    thread.start()
    thread.join(limit_s if limit_s > 0 else None)
    if thread.is_alive():
        for pid in _child_pids() - children_before:
            _kill_and_reap(pid)
        thread.join(5.0)
        raise EngineError(
            f"env 'twx': {what}: the TextWorldExpress engine (JVM) did not start within {limit_s:g} s"
            " (call_timeout_s) and was stopped"
        )
    if "error" in outcome:
        exc = outcome["error"]
        cause = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, ValueError) and "invalid literal for int()" in cause:  # py4j read no port
            cause = "java exited before it was up; `java -version` shows the runtime it found"
        raise EngineError(f"env 'twx': {what}: the TextWorldExpress engine (JVM) did not start ({cause})") from exc
    return outcome["env"]


class TwxEngine:
    """TextWorldExpress through its Python API (one JVM per engine, started lazily).

    If the JVM dies, the call that finds out raises :class:`EngineError` and the
    engine is dropped: the episode is lost, and the next ``load`` starts a new JVM.
    A call to a started JVM that does not answer within ``call_timeout_s`` (a hung or
    stopped JVM) is the same failure: a watchdog kills the JVM, which ends the call.
    ``call_timeout_s=0`` turns the limit off. Starting the JVM has the same limit, and a JVM
    that fails to start is an :class:`EngineError` too.
    """

    def __init__(self, *, call_timeout_s: float = DEFAULT_CALL_TIMEOUT_S) -> None:
        self.call_timeout_s = call_timeout_s
        self._env: Any = None
        self._watchdog: _Watchdog | None = None
        self._loaded: tuple[str, str] | None = None
        self._game: tuple[str, str, str, int] | None = None
        self._gold: list[str] | None = None
        self._taken: list[str] = []
        self._objective = ""

    def _server(self, what: str) -> Any:
        if self._env is None:
            from textworld_express import TextWorldExpressEnv

            # py4j starts the `java` on PATH; without one it fails with a bare FileNotFoundError
            if shutil.which("java") is None:
                raise EngineError(
                    f"env 'twx': {what}: no `java` on PATH: TextWorldExpress needs a Java runtime"
                    " (Debian: apt install openjdk-17-jre-headless)"
                )
            self._env = _start_engine(_quiet_when_unstarted(TextWorldExpressEnv), what, self.call_timeout_s)
            process = _java_process(self._env)
            if self.call_timeout_s > 0 and process is not None:
                self._watchdog = _Watchdog(process, self.call_timeout_s)
        return self._env

    @contextmanager
    def _call(self, what: str) -> Iterator[Any]:
        """The running engine for one call; a dead or hung one raises EngineError and is dropped.

        A JVM known to have exited is not called at all (py4j would log pages of
        retries); one that dies during the call surfaces as a py4j network error, and
        one that hangs is killed by the watchdog after ``call_timeout_s``. What py4j
        logs on the way is held back (see :class:`_HeldPy4JLogs`).
        """
        from py4j.protocol import Py4JError, Py4JJavaError

        if self._game is None and what != "load":
            raise EngineError(f"env 'twx': {what}: no game loaded (after an engine stops, reset first)")
        _PY4J_LOGS.install()
        with _PY4J_LOGS.hold():
            env = self._server(what)
            process = _java_process(env)
            if process is not None and process.poll() is not None:
                self._drop()
                raise EngineError(
                    f"env 'twx': {what}: the TextWorldExpress engine (JVM) has exited (code {process.returncode})"
                )
            watchdog = self._watchdog
            if watchdog is not None:
                watchdog.arm()
            try:
                yield env
            except BaseException as exc:  # KeyboardInterrupt too: the watch must end
                if watchdog is not None and watchdog.disarm():
                    self._drop()
                    raise EngineError(self._timed_out(what)) from exc
                if isinstance(exc, Py4JJavaError):
                    raise  # the engine answered with an error of its own
                if isinstance(exc, (Py4JError, ConnectionError)):  # py4j lets a broken pipe through, rarely
                    self._drop()
                    cause = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    raise EngineError(
                        f"env 'twx': {what}: the TextWorldExpress engine (JVM) stopped answering ({cause})"
                    ) from exc
                raise
            if watchdog is not None and watchdog.disarm():  # the answer came as the limit passed
                self._drop()
                raise EngineError(self._timed_out(what))

    def _timed_out(self, what: str) -> str:
        return (
            f"env 'twx': {what}: the TextWorldExpress engine (JVM) did not answer within"
            f" {self.call_timeout_s:g} s (call_timeout_s) and was stopped"
        )

    def _drop(self) -> None:
        """Forget a failed engine: its JVM is killed and reaped, and nothing more is sent to it."""
        env, self._env = self._env, None
        self._loaded = self._game = None
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None:
            watchdog.stop()
        if env is None:
            return
        process = _java_process(env)
        if process is not None:
            process.kill()
            try:
                process.wait(timeout=_REAP_S)
            except subprocess.TimeoutExpired:
                _log.warning("env 'twx': the killed JVM (pid %s) has not exited after %s s", process.pid, _REAP_S)
        # Close py4j's side without a shutdown request (nothing would answer it). Marked
        # disconnected, the client also stops sending the JVM deletes for its Java objects
        # as Python collects them, each of which would log a failed connection.
        gateway = getattr(env, "_gateway", None)
        client = getattr(gateway, "_gateway_client", None)
        if client is None:  # not the py4j layout this was written for
            env.close()
            return
        client.is_connected = False
        client.close()
        gateway.shutdown_callback_server()

    def load(self, payload: dict[str, Any]) -> None:
        game, params = payload["game"], twx_params_string(payload.get("params", {}))
        for name, value in sorted(payload.get("params", {}).items()):
            if not _INT32[0] <= value <= _INT32[1]:  # the engine leaves the game unloaded, silently
                raise ConfigError(f"env 'twx': game {game!r} parameter {name}={value} is out of range (at most {_INT32[1]})")
        fold = TWX_FOLD_SEEDS[payload.get("split", "train")][0]
        if self._loaded != (game, params):
            self._loaded = None  # a rejected load leaves the engine with no game at all
            with self._call("load") as env:
                try:
                    env.load(game, params)
                except ValueError as exc:
                    raise ConfigError(f"env 'twx': game {game!r} params {params!r}: {str(exc).strip()}") from exc
            self._loaded = (game, params)
        self._game = (game, params, fold, int(payload["seed"]))

    def reset(self) -> RawState:
        from py4j.protocol import Py4JJavaError

        with self._call("reset") as env:
            assert self._game is not None  # checked by _call
            game, params, fold, seed = self._game
            try:
                # a path the seeded walk replaces is not asked for
                _, infos = env.reset(seed=seed, gameFold=fold, generateGoldPath=game not in _RANDOM_WALK_GOLD_AGENTS)
            except Py4JJavaError as exc:  # the generator rejects this combination of params and seed
                message = str(exc.java_exception.getMessage()).strip()
                raise ConfigError(f"env 'twx': game {game!r} params {params!r} seed {seed}: {message}") from exc
        if str(infos["observation"]).startswith(_NOT_LOADED):
            raise ConfigError(f"env 'twx': game {game!r} params {params!r}: the engine did not load the game")
        self._gold, self._taken, self._objective = None, [], infos["taskDescription"]
        return self._state(infos)

    def step(self, action: str) -> RawState:
        # One engine call per step. The wrapper's step() makes a second JVM round trip on
        # every step to re-fetch the task description, which never changes in an episode.
        with self._call("step") as env:
            infos = msgspec.json.decode(env.server.stepJSON(action))
        self._taken.append(action)
        infos["taskDescription"] = self._objective
        return self._state(infos)

    def expert_action(self) -> str | None:
        """The next action of the gold path, played in order (it does not re-plan).

        The gold path is fetched on first use in an episode (fetching costs one
        engine call per action, which random play should not pay).
        """
        if self._gold is None:
            with self._call("expert_action") as env:
                self._gold = self._gold_path(env)
        position = 0
        for action in self._taken:
            if position < len(self._gold) and action == self._gold[position]:
                position += 1
        return self._gold[position] if position < len(self._gold) else None

    def _gold_path(self, env: Any) -> list[str]:
        assert self._game is not None  # checked by _call
        game, _, fold, seed = self._game
        agent = _RANDOM_WALK_GOLD_AGENTS.get(game)
        if agent is None:
            return list(env.getGoldActionSequence())  # a python list (py4j converts it)
        # Every Java object proxied here is released before the call ends. A py4j proxy whose
        # method was called sits in a reference cycle, so Python frees it at some later
        # collection, from whatever thread runs it, and py4j then messages its JVM. If that
        # JVM has been stopped by then, the message blocks that thread with no time limit.
        proxies: list[Any] = []

        def held(proxy: Any) -> Any:
            proxies.append(proxy)
            return proxy

        try:
            # The gold agent plays a fresh copy of this seed's game, as upstream's does.
            jvm = env._gateway.jvm
            rng, generator = held(jvm.scala.util.Random(seed)), held(env.server.gameGenerator())
            for _ in range(_GOLD_WALKS):
                walker = held(getattr(jvm.textworldexpress.goldagent, agent)(held(generator.mkGame(seed, fold))))
                walk = held(walker.mkGoldPath(rng))
                if walk._1:  # a scala Tuple2 (reached the goal, the actions)
                    return list(held(walk._2))
            return []  # upstream's answer too: the expert has no move, and collection plays at random
        finally:
            for proxy in proxies:
                env._gateway.detach(proxy)

    @staticmethod
    def _state(infos: dict[str, Any]) -> RawState:
        return RawState(
            text=infos["observation"],
            inventory=infos["inventory"],
            admissible=sorted(infos["validActions"]),
            score=max(0.0, min(1.0, float(infos["score"]))),
            won=bool(infos["tasksuccess"]),
            lost=bool(infos["taskfailure"]),
            objective=infos["taskDescription"],
        )

    def close(self) -> None:
        if self._env is None:
            return
        process = _java_process(self._env)
        if process is not None and process.poll() is not None:
            self._drop()  # its JVM has exited: nothing would answer a shutdown request
            return
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None:
            watchdog.stop()
        self._env.close()
        self._env = None
        self._loaded = None


class TwEngine:
    """TextWorld (Inform 7 / z-machine) games through ``textworld.start``."""

    def __init__(self, cache_dir: str) -> None:
        self.cache_dir = cache_dir
        self._env: Any = None
        self._path: Path | None = None
        self._last: Any = None

    def load(self, payload: dict[str, Any]) -> None:
        path = tw_game_path(self.cache_dir, payload["game"], payload["params"], payload["split"], int(payload["seed"]))
        if path != self._path:
            self.close()
            import textworld

            infos = textworld.EnvInfos(
                admissible_commands=True, policy_commands=True, inventory=True, description=True,
                objective=True, score=True, max_score=True, won=True, lost=True,
            )  # fmt: skip
            with warnings.catch_warnings():
                # jericho cannot detect score changes in generated games; TextWorld's own infos do.
                warnings.filterwarnings("ignore", message=".*is not fully supported.*")
                self._env = textworld.start(str(path), request_infos=infos)
            self._path = path

    def reset(self) -> RawState:
        assert self._env is not None, "load() a game first"
        # The reset feedback holds the banner and the objective; the room description is the state.
        return self._state(self._env.reset(), text_key="description")

    def step(self, action: str) -> RawState:
        # The interpreter reads a line break inside an action as the end of a command and
        # keeps the rest for the next step; single-spaced text is one command (the text
        # admissibility is checked on, and what the agent's parser returns anyway).
        state, _, _ = self._env.step(" ".join(action.split()))
        return self._state(state, text_key="feedback")

    def expert_action(self) -> str | None:
        """The first command of the engine's plan from the current state (re-plans)."""
        plan = self._last["policy_commands"] if self._last is not None else None
        return plan[0] if plan else None

    def _state(self, state: Any, text_key: str) -> RawState:
        self._last = state
        max_score = state["max_score"] or 1
        return RawState(
            text=state[text_key] or "",
            inventory=state["inventory"] or "",
            admissible=sorted(state["admissible_commands"] or []),
            score=max(0.0, min(1.0, state["score"] / max_score)),
            won=bool(state["won"]),
            lost=bool(state["lost"]),
            objective=state["objective"] or "",
        )

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None
            self._path = None
            self._last = None
