"""The real-environment adapter: an engine behind the DreamGym ``Env`` contract."""

from __future__ import annotations

from typing import Any, Protocol

from dreamgym_core.agent import unreadable_character  # re-exported: the rule every engine plugin applies
from dreamgym_core.contracts import checked_action
from dreamgym_core.errors import DreamGymError
from dreamgym_core.records import Observation, StepResult, Task

from .engines import RawState
from .state import normalize_action, refusal_text, render_state

__all__ = ["Engine", "TextWorldEnv", "outcome_reward", "is_admissible", "listed_form", "unreadable_character", "EpisodeOver"]


class EpisodeOver(DreamGymError):
    """``step`` was called before ``reset`` or after the episode ended."""


class Engine(Protocol):
    def load(self, payload: dict[str, Any]) -> None: ...
    def reset(self) -> RawState: ...
    def step(self, action: str) -> RawState: ...
    def refusal(self, action: str) -> str | None: ...  # why an unlisted action is not sent, or None
    def expert_action(self) -> str | None: ...
    def close(self) -> None: ...


def is_admissible(action: str, admissible: list[str]) -> bool:
    """Whether ``action`` is one of ``admissible``, ignoring case and spacing."""
    return listed_form(action, admissible) is not None


def listed_form(action: str, admissible: list[str]) -> str | None:
    """The listed action ``action`` names, ignoring case and spacing (``Move  East`` ->
    ``move east``), or None. TextWorldExpress only understands the listed text itself: sent
    ``LOOK AROUND`` it answers "Unknown action" and nothing happens."""
    if action in admissible:
        return action
    key = normalize_action(action)
    return next((a for a in admissible if normalize_action(a) == key), None)


def outcome_reward(*, success: bool, done: bool) -> float:
    """The paper's reward: 1.0 on the final step of a successful episode, else 0.0."""
    return 1.0 if success and done else 0.0


class TextWorldEnv:
    """Real TextWorld / TextWorldExpress episodes in the abstract text state.

    An action outside the admissible list still goes to the engine (which answers it
    in its own words) and the transition is flagged ``valid=False``. An action holding
    a control character or a lone surrogate (see :func:`unreadable_character`) is not
    sent: the state stays, the observation says why, and the step counts as invalid. So is an
    unlisted action the engine refuses (TextWorld's interpreter commands: ``restart``, ``save``).
    The episode ends
    on a win, a loss, or after ``max_steps`` steps (a failure). ``info`` keeps the
    engine's progress score and its change.
    """

    def __init__(
        self, engine: Engine, *, max_steps: int, max_observation_chars: int, max_action_chars: int,
    ) -> None:
        self.pool: Any = None  # see from_pool
        self.engine: Any = engine
        self.max_steps = max_steps
        self._chars = {"max_observation_chars": max_observation_chars, "max_action_chars": max_action_chars}
        self._admissible: list[str] = []
        self._raw: RawState | None = None
        self._score = 0.0
        self._steps = 0
        self._done = True

    @classmethod
    def from_pool(cls, pool: Any, **limits: int) -> TextWorldEnv:
        """An env whose engine comes from ``pool`` (:class:`.engines.EnginePool`) and goes back
        there on close, so the next env reuses the running engine (``limits``: as ``__init__``)."""
        env = cls(pool.take(), **limits)
        env.pool = pool
        return env

    def observe(self, raw: RawState) -> Observation:
        """Map an engine state to the abstract state (see :func:`.state.render_state`)."""
        text = render_state(raw.text, raw.inventory, raw.admissible, raw.score, **self._chars)
        return Observation(text=text, admissible_actions=raw.admissible)

    def reset(self, *, task: Task, seed: int | None = None) -> Observation:
        """Start ``task``'s game. The game's seed is the payload's; ``seed`` is not used."""
        if self.engine is None:  # closed, its engine handed back to the pool
            self.engine = self.pool.take()
        self._done = True  # a load or reset that fails leaves no episode to step in
        self.engine.load(task.payload)
        raw = self._raw = self.engine.reset()
        self._admissible = raw.admissible
        self._score, self._steps, self._done = raw.score, 0, False
        return self.observe(raw)

    def step(self, *, action: str) -> StepResult:
        checked_action(action, "textworld env")
        if self._done:
            raise EpisodeOver("textworld env: step() needs reset() first (the episode is over or not started)")
        listed = listed_form(action, self._admissible)
        refusal = self._refusal(action, listed is not None)
        if refusal is None:
            valid = listed is not None
            # the listed text, so that an admissible action in another case or spacing is carried out
            raw = self._raw = self.engine.step(listed or action)
        else:
            assert self._raw is not None  # set by reset(), which step() needs first
            valid = False
            raw = self._raw._replace(text=refusal)
        self._steps += 1
        truncated = not (raw.won or raw.lost) and self._steps >= self.max_steps
        done = raw.won or raw.lost or truncated
        info = {
            "score": raw.score,
            "score_delta": raw.score - self._score,
            "won": raw.won,
            "lost": raw.lost,
            "truncated": truncated,
            "steps": self._steps,
        }
        self._admissible = raw.admissible
        self._score, self._done = raw.score, done
        return StepResult(
            observation=self.observe(raw),
            reward=outcome_reward(success=raw.won, done=done),
            done=done,
            success=raw.won,
            valid=valid,
            info=info,
        )

    def _refusal(self, action: str, listed: bool) -> str | None:
        """Why ``action`` is not sent to the engine, or None: an unreadable character always,
        the engine's own refusal only of an unlisted action."""
        unreadable = unreadable_character(action)
        if unreadable is not None:
            return refusal_text(f"the game cannot read this action (it holds the {unreadable}).")
        return None if listed else self.engine.refusal(action)

    def expert_action(self) -> str | None:
        """The engine's expert move from here (gold path / planner), or None."""
        if self.engine is None:
            raise EpisodeOver("textworld env: expert_action() needs reset() first (the env is closed)")
        return self.engine.expert_action()

    def close(self) -> None:
        """Stop the engine, or hand it back to the pool, and end the episode: a later ``step``
        raises :class:`EpisodeOver` instead of starting another engine. ``reset`` starts a new
        episode (and engine)."""
        self._done = True
        if self.pool is None:
            self.engine.close()
        elif self.engine is not None:
            engine, self.engine = self.engine, None
            self.pool.give(engine)
