"""The real ScienceWorld adapter behind DreamGym's ``Env`` contract, and its abstract state.

The abstract state is the simulator's answer to the last action (the room description after
a reset), the inventory and the task score, one part per line::

    <observation>
    Inventory: an orange
    Score: 58

ScienceWorld offers hundreds of valid action strings in a room (212 in a small one), too
many for a prompt, so states list no actions: the task instruction carries the action
templates instead (``SciWorldConfig.describe_actions``).
"""

from __future__ import annotations

import re
from typing import Any

from dreamgym_core.errors import DreamGymError
from dreamgym_core.records import Observation, StepResult, Task

__all__ = ["SciWorldEnv", "EngineError", "render_state", "inventory_items", "UNKNOWN_ACTION", "is_ambiguous"]

# The simulator's answer to an action its parser does not know (the step then changes nothing).
UNKNOWN_ACTION = "No known action matches that input."
_AMBIGUOUS = "Ambiguous request"
# The simulator's own step cap sits above any episode's, so DreamGym's max_steps ends episodes.
_ENGINE_STEP_LIMIT = 10_000


class EngineError(DreamGymError):
    """The ScienceWorld simulator (a JVM behind py4j) failed or was used out of order."""


def inventory_items(inventory: str) -> str:
    """``'In your inventory, you see:\\n\\tan orange\\n'`` -> ``'an orange'`` (``'nothing'`` when empty)."""
    items = [line.strip() for line in inventory.splitlines()[1:] if line.strip()]
    return ", ".join(items) or "nothing"


def render_state(observation: str, inventory: str, score: float, *, max_observation_chars: int) -> str:
    """The abstract state text (see the module docstring); tabs and blank lines are tidied."""
    lines = [re.sub(r"[ \t]+", " ", line).strip() for line in observation.strip().splitlines()]
    text = "\n".join(line for line in lines if line)
    if len(text) > max_observation_chars:
        text = text[: max_observation_chars - 3].rstrip() + "..."
    return f"{text}\nInventory: {inventory_items(inventory)}\nScore: {score:g}"


def is_ambiguous(observation: str) -> bool:
    return observation.startswith(_AMBIGUOUS)


class SciWorldEnv:
    """Real ScienceWorld episodes in the abstract state.

    Reward is the paper's outcome reward: 1.0 on the final step of a completed task, else 0;
    ``info`` keeps the simulator's 0-100 score and its change. The episode ends when the
    task is completed (score 100, a success) or failed (the simulator's score -100, e.g.
    focusing on the wrong object), or after ``max_steps`` steps (a failure). An action the
    simulator does not know is sent, answered with its "No known action" message, and the
    transition is flagged ``valid=False``. An ambiguous action (several objects match) is
    resolved to the simulator's first reading, as its own examples do.
    The JVM starts on the first reset (about 2 s); ``close`` stops it.
    """

    def __init__(self, *, max_steps: int, max_observation_chars: int, gold_path: bool = False) -> None:
        self.max_steps = max_steps
        self.max_observation_chars = max_observation_chars
        self.gold_path = gold_path
        self._engine: Any = None
        self._gold: list[str] = []
        self._score = 0.0
        self._steps = 0
        self._done = True

    def _started(self) -> Any:
        if self._engine is None:
            from scienceworld import ScienceWorldEnv

            try:
                self._engine = ScienceWorldEnv("", envStepLimit=_ENGINE_STEP_LIMIT)
            except Exception as exc:  # no Java, a JVM that cannot start
                raise EngineError(f"scienceworld: the simulator did not start: {type(exc).__name__}: {exc}") from exc
        return self._engine

    def _observe(self, observation: str, info: dict[str, Any]) -> Observation:
        text = render_state(observation, info.get("inv", ""), float(info["score"]), max_observation_chars=self.max_observation_chars)
        return Observation(text=text, admissible_actions=[])

    def reset(self, *, task: Task, seed: int | None = None) -> Observation:
        """Start ``task``'s variation. The variation is the payload's; ``seed`` is not used."""
        engine = self._started()
        payload = task.payload
        try:
            engine.load(payload["task"], payload["variation"], payload["simplifications"], generateGoldPath=self.gold_path)
            observation, info = engine.reset()
            self._gold = list(engine.get_gold_action_sequence()) if self.gold_path else []
        except Exception as exc:
            raise EngineError(f"scienceworld {task.id}: reset failed: {type(exc).__name__}: {exc}") from exc
        self._score, self._steps, self._done = float(info["score"]), 0, False
        return self._observe(observation, info)

    def step(self, *, action: str) -> StepResult:
        if self._done:
            raise EngineError("scienceworld env: step() needs reset() first (the episode is over or not started)")
        engine = self._engine
        try:
            observation, _, completed, info = engine.step(action)
            if is_ambiguous(observation):
                observation, _, completed, info = engine.step("0")
        except Exception as exc:
            raise EngineError(f"scienceworld: step {action!r} failed: {type(exc).__name__}: {exc}") from exc
        score = float(info["score"])
        self._steps += 1
        success = bool(completed) and score >= 100
        failed = (bool(completed) and not success) or score < 0
        truncated = not (success or failed) and self._steps >= self.max_steps
        done = success or failed or truncated
        result_info = {"score": score, "score_delta": score - self._score, "truncated": truncated, "steps": self._steps}
        self._score, self._done = score, done
        return StepResult(
            observation=self._observe(observation, info),
            reward=1.0 if success else 0.0,
            done=done,
            success=success,
            valid=observation.strip() != UNKNOWN_ACTION,
            info=result_info,
        )

    def gold_actions(self) -> list[str]:
        """The simulator's gold path from the last reset (empty unless ``gold_path``)."""
        return list(self._gold)

    def valid_actions(self) -> list[str]:
        """Every action string the simulator accepts in the current state (hundreds)."""
        try:
            return [a for a in self._engine.get_valid_action_object_combinations() if a != "reset task"]
        except Exception as exc:
            raise EngineError(f"scienceworld: listing valid actions failed: {type(exc).__name__}: {exc}") from exc

    def action_templates(self) -> list[str]:
        """The simulator's action templates ("open OBJ", "move OBJ to OBJ", ...) but "reset task"."""
        return [a for a in self._started().get_possible_actions() if a != "reset task"]

    def close(self) -> None:
        if self._engine is not None:
            engine, self._engine = self._engine, None
            try:
                engine.close()
            except Exception:  # closing a JVM that already died: nothing left to release
                pass
        self._done = True
