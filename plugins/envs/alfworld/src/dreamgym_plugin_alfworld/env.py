"""The real ALFWorld adapter behind DreamGym's ``Env`` contract.

ALFWorld's text engine is TextWorld's PDDL environment over a game file, with ALFWorld's
demangler turning ALFRED ids into names ("apple 1"), as ALFWorld's own ``AlfredTWEnv``
builds it. The state is the TextWorld domains' abstract state (``dreamgym_plugin_textworld``)::

    Observation: You arrive at countertop 1. On the countertop 1, you see a apple 1.
    Inventory: nothing
    Score: 0.00
    Actions (9): go to cabinet 1 / to fridge 1; take apple 1 from countertop 1; examine countertop 1; ...

ALFWorld's engine reports no inventory, so it is read from the game's facts (what the agent
``holds``). Its meta command ``help`` is left out of the actions, so, like any action outside
the list (the TextWorld domains' rule), it is answered but flagged ``valid=False``.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

from dreamgym_core.contracts import checked_action
from dreamgym_core.errors import ConfigError, DreamGymError
from dreamgym_core.records import Observation, StepResult, Task
from dreamgym_plugin_textworld.env import listed_form
from dreamgym_plugin_textworld.state import render_state

__all__ = ["AlfWorldEnv", "EngineError", "NOTHING_HAPPENS", "checked_game", "intro_parts", "held_items"]

# The engine's answer to an action it cannot carry out (the state does not change).
NOTHING_HAPPENS = "Nothing happens."
_BANNER = re.compile(r"^-= Welcome to TextWorld, ALFRED! =-\s*", re.MULTILINE)
_TASK = re.compile(r"\s*Your task is to: (.*?)\.?\s*$", re.DOTALL)
_META_COMMANDS = frozenset({"help"})


class EngineError(DreamGymError):
    """ALFWorld's text engine failed to load or step a game, or was used out of order."""


# Every PddlEnv makes its own temporary copy of fast_downward's planner library (34 MB) and
# loads it; ctypes never unloads it, so the deleted copy holds its disk space until the
# process exits, and an engine per game would fill /tmp in long runs. Engines are
# therefore reused: an env loads each new game into its engine, and a closed env returns
# its engine here for the next env to take. One engine serves one env at a time, because the
# planner library keeps one game's state.
_IDLE_ENGINES: dict[bool, list[Any]] = {False: [], True: []}
_IDLE_LOCK = threading.Lock()


def _take_engine(gold_path: bool) -> Any:
    with _IDLE_LOCK:
        if _IDLE_ENGINES[gold_path]:
            return _IDLE_ENGINES[gold_path].pop()
    import textworld
    from alfworld.agents.environment.alfred_tw_env import AlfredDemangler
    from textworld.envs import PddlEnv

    infos = textworld.EnvInfos(won=True, admissible_commands=True, facts=True, policy_commands=gold_path)
    return AlfredDemangler(PddlEnv(infos))


def _return_engine(engine: Any, gold_path: bool) -> None:
    with _IDLE_LOCK:
        _IDLE_ENGINES[gold_path].append(engine)


def intro_parts(feedback: str) -> tuple[str, str]:
    """A game's opening text split into (room description, task sentence): ALFWorld writes
    the banner, "You are in the middle of a room. ...", then "Your task is to: ..."."""
    text = _BANNER.sub("", feedback).strip()
    match = _TASK.search(text)
    if match is None:
        return text, ""
    return text[: match.start()].strip(), match.group(1).strip()


def checked_game(task: Task) -> str:
    """``task.payload["game"]``, or a one-line :class:`ConfigError` naming the task and the field
    unless it is a non-empty str (the game file's path in the data folder): a missing one was a
    bare KeyError, an int a TypeError from the path join, and an empty one loaded the folder itself."""
    game = task.payload.get("game")
    if not isinstance(game, str) or not game:
        shown = repr(game) if "game" in task.payload else "missing"
        raise ConfigError(
            f"alfworld: task {task.id!r}: payload['game'] is {shown}; an ALFWorld game is a str, the path of its "
            "game.tw-pddl in env.config.data_path (a task's own: AlfWorldDomain.tasks(split))"
        )
    return game


def held_items(facts: Any) -> list[str]:
    """Names of the objects the agent holds, from the game's facts (``holds(agent, obj)``)."""
    return sorted(f.arguments[1].name for f in facts or () if f.name.lower() == "holds" and len(f.arguments) == 2)


class AlfWorldEnv:
    """Real ALFWorld episodes in the abstract state.

    Reward is the paper's outcome reward: 1.0 on the step that completes the task, else 0.
    The episode ends on success or after ``max_steps`` steps (a failure; ALFWorld has no
    other way to lose). An action the engine cannot carry out is answered "Nothing happens."
    and flagged ``valid=False``; so is one outside the state's action list (``help``), though
    the engine answers it, as in the TextWorld domains. With ``gold_path``, the PDDL planner's
    plan from the current state is kept after every reset and step (:meth:`gold_actions`), for
    expert data.
    Loading a game takes about 0.15 s; resetting the same game again about 0.04 s.
    """

    def __init__(self, *, root: Path, max_steps: int, max_observation_chars: int, max_action_chars: int, gold_path: bool = False) -> None:
        self.root = Path(root)
        self.max_steps = max_steps
        self.max_observation_chars = max_observation_chars
        self.max_action_chars = max_action_chars
        self.gold_path = gold_path
        self._engine: Any = None
        self._game: Path | None = None
        self._state: Any = None
        self._steps = 0
        self._done = True

    def _load(self, game: Path) -> Any:
        """The engine with ``game`` loaded (the same game is not loaded twice in a row)."""
        if self._engine is not None and self._game == game:
            return self._engine
        if self._engine is None:
            self._engine = _take_engine(self.gold_path)
        self._game, self._done = None, True  # a failed load leaves no game or episode behind
        try:
            self._engine.load(str(game))
        except Exception as exc:  # a missing, corrupt or unsolvable game file
            raise EngineError(f"alfworld {game}: the engine could not load the game: {type(exc).__name__}: {exc}") from exc
        self._game = game
        return self._engine

    @staticmethod
    def _actions(state: Any) -> list[str]:
        return [a for a in state["admissible_commands"] if a not in _META_COMMANDS]

    def _observe(self, feedback: str, state: Any) -> Observation:
        actions = self._actions(state)
        held = held_items(state.get("facts"))
        inventory = f"You are carrying: {', '.join(held)}." if held else "nothing"
        text = render_state(
            feedback, inventory, actions, 1.0 if state["won"] else 0.0,
            max_observation_chars=self.max_observation_chars, max_action_chars=self.max_action_chars,
        )
        return Observation(text=text, admissible_actions=actions)

    def reset(self, *, task: Task, seed: int | None = None) -> Observation:
        """Start ``task``'s game (its payload's ``game``, relative to the data folder, checked by
        :func:`checked_game`); ALFWorld's games are deterministic, so ``seed`` is not used."""
        # Whatever fails below, the previous episode must not stay playable.
        self._state, self._steps, self._done = None, 0, True
        game = self.root / checked_game(task)  # before the engine: a bad payload needs none
        engine = self._load(game)
        try:
            state = engine.reset()
        except Exception as exc:
            raise EngineError(f"alfworld {task.id}: reset failed: {type(exc).__name__}: {exc}") from exc
        if state["won"]:  # its first step, whatever it is, would be rewarded as the success
            raise EngineError(f"alfworld {task.id}: the task is already done at reset ({game}): its goal holds in the initial state")
        self._state, self._done = state, False
        room, _ = intro_parts(self._state["feedback"])
        return self._observe(room, self._state)

    def step(self, *, action: str) -> StepResult:
        checked_action(action, "alfworld env")  # before the engine, whose failure ends the episode
        if self._done:
            raise EngineError("alfworld env: step() needs reset() first (the episode is over or not started)")
        # A listed action in another case or spacing is sent as listed, as the TextWorld domains
        # do: the engine carried out "go to countertop 1" but answered "Go To CounterTop 1" with
        # "Nothing happens.", so one command's outcome hung on how the model capitalised it.
        form = listed_form(action, self._actions(self._state))
        try:
            state, _, _ = self._engine.step(form if form is not None else action)
        except Exception as exc:
            self._done = True
            raise EngineError(f"alfworld {self._game}: step {action!r} failed: {type(exc).__name__}: {exc}") from exc
        self._state, self._steps = state, self._steps + 1
        success = bool(state["won"])
        truncated = not success and self._steps >= self.max_steps
        self._done = success or truncated
        feedback = state["feedback"].strip()
        return StepResult(
            observation=self._observe(feedback, state),
            reward=1.0 if success else 0.0,
            done=self._done,
            success=success,
            valid=form is not None and feedback != NOTHING_HAPPENS,
            info={"truncated": truncated, "steps": self._steps},
        )

    def gold_actions(self) -> list[str]:
        """The planner's plan from the current state (empty unless ``gold_path``)."""
        return list(self._state.get("policy_commands") or []) if self._state is not None else []

    def close(self) -> None:
        """Ends the episode and hands the engine to the next env (see ``_IDLE_ENGINES``)."""
        if self._engine is not None:
            engine, self._engine, self._game, self._state = self._engine, None, None, None
            _return_engine(engine, self.gold_path)
        self._done = True
