"""Thin adapters over the two real engines, with one shape of output.

Each engine loads a game from a task payload, resets, steps, and knows the expert's
next action. Nothing here renders text for models: that is :mod:`.state`.
"""

from __future__ import annotations

import re
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import msgspec

from dreamgym_core.errors import ConfigError, DreamGymError
from dreamgym_core.jvm import JvmGuard, list_items, quiet_del

from .config import DEFAULT_CALL_TIMEOUT_S
from .games import TWX_FOLD_SEEDS, tw_game_path, twx_params_string
from .state import compact_inventory, echo, refusal_text

__all__ = ["RawState", "TwxEngine", "TwxJvm", "TwxJvms", "TwEngine", "EnginePool", "EngineError"]


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


def _start_twx() -> Any:
    """A started TextWorldExpress wrapper (its JVM up)."""
    from textworld_express import TextWorldExpressEnv

    # The plugin enforces its own step cap; the engine's is set out of the way.
    return quiet_del(TextWorldExpressEnv)(envStepLimit=10**9)


class TwxJvm:
    """One TextWorldExpress JVM that several engines play their games in.

    Each engine has its own ``PythonInterface`` in the JVM, and a game lives in its interface,
    so games that share a JVM do not meet (an engine's game depends on its payload only). The
    JVM starts on the first call of one of its engines and stops when the last one closes.
    It is one process, though: when it dies or hangs (and is killed), every game in it ends,
    each engine's next call fails with :class:`EngineError`, and the next load starts a new JVM.
    """

    def __init__(self, *, call_timeout_s: float = DEFAULT_CALL_TIMEOUT_S) -> None:
        self.guard = JvmGuard(
            start=_start_twx, name="twx", label="env 'twx'", simulator="TextWorldExpress", error=EngineError,
            call_timeout_s=call_timeout_s, on_drop=self._dropped,
        )  # fmt: skip
        self.generation = 0  # counts the JVMs dropped: an engine's interface belongs to one of them
        self.holders = 0  # engines that have called it and not closed since

    def _dropped(self) -> None:
        self.generation += 1

    def hold(self) -> None:
        self.holders += 1

    def release(self) -> None:
        self.holders -= 1
        if self.holders == 0:
            self.guard.close()
            self.generation += 1  # no interface outlives its JVM


class TwxJvms:
    """A domain's TextWorldExpress JVMs: each new engine gets a seat in the newest JVM until
    ``games_per_jvm`` engines sit there, then a new JVM. One JVM holds about 80 MB; an
    evaluation of 32 games in 32 JVMs held 2.6 GB."""

    def __init__(self, *, games_per_jvm: int, call_timeout_s: float = DEFAULT_CALL_TIMEOUT_S, expert_path: str = "first") -> None:
        self.games_per_jvm, self.call_timeout_s, self.expert_path = games_per_jvm, call_timeout_s, expert_path
        self._newest: TwxJvm | None = None
        self._seated = 0  # engines made for the newest JVM

    def engine(self) -> TwxEngine:
        if self._newest is None or self._seated >= self.games_per_jvm:
            self._newest, self._seated = TwxJvm(call_timeout_s=self.call_timeout_s), 0
        self._seated += 1
        return TwxEngine(jvm=self._newest, expert_path=self.expert_path)


class TwxEngine:
    """TextWorldExpress through its Java interface, in a JVM of its own or one it shares
    (:class:`TwxJvm`), started lazily.

    If the JVM dies, the call that finds out raises :class:`EngineError` and the game is
    lost: the next ``load`` starts a new JVM. A call to a started JVM that does not answer
    within ``call_timeout_s`` (a hung or stopped JVM) is the same failure: a watchdog kills
    the JVM, which ends the call. ``call_timeout_s=0`` turns the limit off. Starting the JVM
    has the same limit, and a JVM that fails to start is an :class:`EngineError` too.
    """

    def __init__(
        self, *, call_timeout_s: float = DEFAULT_CALL_TIMEOUT_S, jvm: TwxJvm | None = None, expert_path: str = "first"
    ) -> None:
        if expert_path not in ("first", "shortest"):
            raise ValueError(f"expert_path={expert_path!r}: first or shortest")
        self.expert_path = expert_path  # coin's and twc's random-walk gold agents: the first walk that wins, or the shortest
        self.host = jvm if jvm is not None else TwxJvm(call_timeout_s=call_timeout_s)
        self.call_timeout_s = self.host.guard.call_timeout_s
        self._server: Any = None  # this engine's PythonInterface in the host's JVM
        self._generation = -1  # the host's JVM that ``_server`` lives in
        self._holding = False
        self._loaded: tuple[str, str] | None = None
        self._game: tuple[str, str, str, int] | None = None
        self._gold: list[str] | None = None
        self._taken: list[str] = []
        self._objective = ""

    @property
    def _jvm(self) -> JvmGuard:
        return self.host.guard

    def _forget(self) -> None:
        """The JVM was dropped: its game is gone with it."""
        self._loaded = self._game = self._server = None

    def _forget_if_dropped(self) -> None:
        """Forget the game if its JVM was dropped since this engine's last call (maybe in
        another engine's call)."""
        if self._server is not None and self._generation != self.host.generation:
            self._forget()

    @contextmanager
    def _call(self, what: str) -> Iterator[Any]:
        """The running JVM's wrapper for one call (see :meth:`JvmGuard.call`), with this engine's
        interface in ``self._server``: a dead or hung JVM raises EngineError and is dropped, and
        with it the game of every engine in it."""
        self._forget_if_dropped()
        if self._game is None and what != "load":
            raise EngineError(f"env 'twx': {what}: no game loaded (after an engine stops, reset first)")
        if not self._holding:
            self.host.hold()
            self._holding = True
        with self._jvm.call(what) as wrapper:
            if self._server is None:
                self._server = wrapper._gateway.jvm.textworldexpress.runtime.PythonInterface()
                self._generation = self.host.generation
            yield wrapper

    def load(self, payload: dict[str, Any]) -> None:
        game, params = payload["game"], twx_params_string(payload.get("params", {}))
        for name, value in sorted(payload.get("params", {}).items()):
            if not _INT32[0] <= value <= _INT32[1]:  # the engine leaves the game unloaded, silently
                raise ConfigError(f"env 'twx': game {game!r} parameter {name}={value} is out of range (at most {_INT32[1]})")
        fold = TWX_FOLD_SEEDS[payload.get("split", "train")][0]
        self._forget_if_dropped()
        if self._loaded != (game, params):
            self._loaded = None  # a rejected load leaves the engine with no game at all
            with self._call("load"):
                refused = self._server.load(game, params)
            if refused:
                raise ConfigError(f"env 'twx': game {game!r} params {params!r}: {str(refused).strip()}")
            self._loaded = (game, params)
        self._game = (game, params, fold, int(payload["seed"]))

    def reset(self) -> RawState:
        from py4j.protocol import Py4JJavaError

        with self._call("reset"):
            assert self._game is not None  # checked by _call
            game, params, fold, seed = self._game
            try:
                # a path the seeded walk replaces is not asked for
                infos = msgspec.json.decode(self._server.generateNewGameJSON(seed, fold, game not in _RANDOM_WALK_GOLD_AGENTS))
                infos["taskDescription"] = self._server.getTaskDescription()
            except Py4JJavaError as exc:  # the generator rejects this combination of params and seed
                message = str(exc.java_exception.getMessage()).strip()
                raise ConfigError(f"env 'twx': game {game!r} params {params!r} seed {seed}: {message}") from exc
            except msgspec.DecodeError as exc:  # twc with no items to put away scores 0/0, written NaN
                raise ConfigError(
                    f"env 'twx': game {game!r} params {params!r} seed {seed}: the engine's state is not valid JSON ({exc})"
                ) from exc
        if str(infos["observation"]).startswith(_NOT_LOADED):
            raise ConfigError(f"env 'twx': game {game!r} params {params!r}: the engine did not load the game")
        self._gold, self._taken, self._objective = None, [], infos["taskDescription"]
        return self._state(infos)

    def refusal(self, action: str) -> str | None:
        """Why ``action`` is not sent: never (the engine answers anything with a game state)."""
        return None

    def step(self, action: str) -> RawState:
        # One engine call per step. The wrapper's step() makes a second JVM round trip on
        # every step to re-fetch the task description, which never changes in an episode.
        with self._call("step"):
            infos = msgspec.json.decode(self._server.stepJSON(action))
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
            return list_items(env, self._server.getGoldActionSequence())
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
            rng, generator = held(jvm.scala.util.Random(seed)), held(self._server.gameGenerator())
            shortest: list[str] = []
            for _ in range(_GOLD_WALKS):
                walker = held(getattr(jvm.textworldexpress.goldagent, agent)(held(generator.mkGame(seed, fold))))
                walk = held(walker.mkGoldPath(rng))
                if walk._1:  # a scala Tuple2 (reached the goal, the actions)
                    path = list(held(walk._2))
                    if self.expert_path == "first":
                        return path
                    if not shortest or len(path) < len(shortest):
                        shortest = path
            return shortest  # [] is upstream's answer too: the expert has no move, and collection plays at random
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
        """Release this engine's interface, and stop the JVM if no other engine holds it. A
        later ``load`` starts again."""
        self._forget_if_dropped()
        if self._server is not None:  # the JVM runs on for its other engines: free the game now
            try:
                with self._jvm.call("close") as wrapper:
                    wrapper._gateway.detach(self._server)
            except EngineError:  # dropped: the interface went with its JVM
                pass
        self._forget()
        if self._holding:
            self._holding = False
            self.host.release()


class EnginePool:
    """A domain's idle engines, which its next envs take before starting new ones.

    Starting a TextWorldExpress JVM, with the garbage collection after it, takes 0.5-1 s, and
    every closed env used to stop its JVM: an evaluation of 32 games started 32 JVMs, and the
    next evaluation 32 more. A closed env now hands its engine back here; the next env loads
    its own game into it (a game depends on its payload's seed, not on what the engine played
    before). An engine whose JVM died is handed back too and starts a new one when next used.
    :meth:`close` (the domain's) stops the idle engines; one handed back after it is stopped.
    """

    def __init__(self, make: Any) -> None:
        self._make = make
        self._idle: list[Any] = []
        self._closed = False
        self._lock = threading.Lock()

    def take(self) -> Any:
        with self._lock:
            if self._idle:
                return self._idle.pop()
            self._closed = False  # a domain used again after close() pools again
        return self._make()

    def give(self, engine: Any) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append(engine)
                return
        engine.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle, self._closed = self._idle, [], True
        for engine in idle:
            engine.close()


# Inform 7's out-of-world commands, by first word: they act on the interpreter, not the game.
# restart/restore/undo change the game behind the env's back (after "restart" and "yes" the env
# still shows the old state), quit ends it, save and script write files into the working
# directory, verbose/brief/notify change how later answers read, again/oops replay a command
# that was never checked. The others take no turn and show nothing the state does not.
_INTERPRETER_COMMANDS = frozenset({
    "quit", "q", "restart", "restore", "save", "undo", "script", "transcript", "verify", "version",
    "verbose", "long", "brief", "normal", "superbrief", "short", "notify", "score", "pronouns", "nouns",
    "again", "g", "oops", "o",
})  # fmt: skip
# A compiled .z8 game reads only a word's first 9 letters: "transcripts" is "transcript".
_WORD_LETTERS = 9
_LONG_COMMANDS = frozenset(c[:_WORD_LETTERS] for c in _INTERPRETER_COMMANDS if len(c) >= _WORD_LETTERS)
# The interpreter takes several commands per line, separated by these ("look. restart").
_COMMAND_BREAK = re.compile(r"[.,]|\bthen\b")
# What the interpreter prints after an answer: its prompt, then the status line, the room's
# name and score/moves ("> -= Cellar =-0/2"). A reset's state (the room description) has
# neither, and the move counter would make one state read differently at every turn.
_PROMPT_AND_STATUS = re.compile(r"\s*>[ \t]*(?:-= [^\n]* =-[ \t]*-?\d+/\d+)?\s*\Z")


def interpreter_command(action: str) -> str | None:
    """The first of ``action``'s commands that is an interpreter command (``restart``), or None."""
    for command in _COMMAND_BREAK.split(action.lower()):
        word = (command.split() or [""])[0]
        if word in _INTERPRETER_COMMANDS or (len(word) >= _WORD_LETTERS and word[:_WORD_LETTERS] in _LONG_COMMANDS):
            return word
    return None


def command_count(action: str) -> int:
    """How many commands the interpreter reads in ``action`` (``go west. take coin``: 2).

    A line break also ends a command, but :meth:`TwEngine.step` sends actions single-spaced.
    """
    return sum(1 for command in _COMMAND_BREAK.split(action.lower()) if command.strip())


def strip_prompt(feedback: str) -> str:
    """``feedback`` without the interpreter's trailing prompt and status line."""
    return _PROMPT_AND_STATUS.sub("", feedback)


def carried_inventory(state: Any) -> str | None:
    """The inventory as the game writes it ("You are carrying: a key and a coin."), from the
    tracked facts (``in(x, I)``) of TextWorld's ``state``, or None when it has none.

    Items carried in the previous inventory (``state["inventory"]``) keep their order there;
    the others come first, as the game lists the latest taken first. Unlike the game's list,
    it leaves out a container's tagline ("(closed)") and contents.
    """
    facts, progression = state.get("_facts"), state.get("_game_progression")
    infos = getattr(getattr(progression, "game", None), "infos", None)
    if facts is None or infos is None:
        return None
    items = []
    for fact in facts:
        if fact.name != "in" or len(fact.arguments) != 2 or fact.arguments[1].name != "I":
            continue
        entity = fact.arguments[0].name
        info = infos.get(entity)
        name = getattr(info, "name", None) or entity
        article = getattr(info, "indefinite", None) or ("an" if name[:1].lower() in "aeiou" else "a")
        items.append(f"{article} {name}")
    if not items:
        return "You are carrying nothing."
    before = compact_inventory(state.get("inventory") or "").split(", ")
    items = sorted(set(items) - set(before)) + [item for item in before if item in items]
    listed = items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"
    return f"You are carrying: {listed}."


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
        state = self._env.reset()
        return self._state(state, text=state["description"] or "")

    def refusal(self, action: str) -> str | None:
        """Why ``action`` is not sent to the interpreter (a backslash, an interpreter command, see
        :data:`_INTERPRETER_COMMANDS`, or several commands), or None."""
        # dumb-frotz reads a line starting with a backslash as its own command ("\\help"), and
        # with stdin at its end it loops forever; no game command holds one.
        if "\\" in action:
            return refusal_text("this action holds a backslash, which no game command does.")
        command = interpreter_command(action)
        if command is not None:
            return refusal_text(f"{echo(command)} is a command to the interpreter, not to the game.")
        # "go west. go north. take coin" would play several turns in one step: past the step
        # cap, and a win from an unlisted action.
        commands = command_count(action)
        if commands > 1:
            return refusal_text(
                f"this action holds {commands} commands (the interpreter splits an action at '.', ',' "
                f"and 'then'), and a step sends one."
            )
        return None

    def step(self, action: str) -> RawState:
        # The interpreter reads a line break inside an action as the end of a command and
        # keeps the rest for the next step; single-spaced text is one command (the text
        # admissibility is checked on, and what the agent's parser returns anyway).
        state, _, _ = self._env.step(" ".join(action.split()))
        # A lost game prints no inventory, and TextWorld carries the previous turn's over.
        inventory = carried_inventory(state) if state["lost"] else None
        return self._state(state, text=strip_prompt(state["feedback"] or ""), inventory=inventory)

    def expert_action(self) -> str | None:
        """The first command of the engine's plan from the current state (re-plans)."""
        plan = self._last["policy_commands"] if self._last is not None else None
        return plan[0] if plan else None

    def _state(self, state: Any, text: str, inventory: str | None = None) -> RawState:
        self._last = state
        max_score = state["max_score"] or 1
        return RawState(
            text=text,
            inventory=(state["inventory"] or "") if inventory is None else inventory,
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
