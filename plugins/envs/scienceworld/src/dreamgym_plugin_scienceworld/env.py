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

from dreamgym_core.agent import unreadable_character  # re-exported: the rule every engine plugin applies
from dreamgym_core.contracts import checked_action
from dreamgym_core.errors import ConfigError, DreamGymError
from dreamgym_core.jvm import JvmGuard, list_items, quiet_del
from dreamgym_core.records import Observation, StepResult, Task

from .config import DEFAULT_CALL_TIMEOUT_S

__all__ = [
    "SciWorldEnv", "EngineError", "render_state", "sorted_listings", "inventory_items", "UNKNOWN_ACTION", "is_ambiguous",
    "is_reset_task", "unreadable_character",
]

# The simulator's answer to an action its parser does not know (the step then changes nothing).
UNKNOWN_ACTION = "No known action matches that input."
_AMBIGUOUS = "Ambiguous request"
# Words the simulator's parser skips wherever they stand ("reset the task" is "reset task").
_ARTICLES = frozenset({"the", "a", "an"})
# The simulator's own step cap sits above any episode's, so DreamGym's max_steps ends episodes.
_ENGINE_STEP_LIMIT = 10_000
# The simulator takes a variation as a Java int; it answers one past the task's last itself.
_MAX_VARIATION = 2**31 - 1


class EngineError(DreamGymError):
    """The ScienceWorld simulator (a JVM behind py4j) died, hung, refused a task, or was used out of order."""


def inventory_items(inventory: str) -> str:
    """``'In your inventory, you see:\\n\\tan orange\\n'`` -> ``'an orange'`` (``'nothing'`` when empty),
    the items in alphabetical order (see :func:`sorted_listings`)."""
    items = sorted(line.strip() for line in inventory.splitlines()[1:] if line.strip())
    return ", ".join(items) or "nothing"


def sorted_listings(text: str) -> list[str]:
    """``text``'s lines, each run of tab-indented ones (the objects a room or container lists)
    in alphabetical order. ScienceWorld keeps a container's objects in a hash set, so it lists
    the same objects in another order after another history of loads in its JVM: without the
    sort, one variation's state would read differently in the JVM that collected the offline
    data and in the one that evaluates, and the experience model would learn that noise."""
    lines: list[str] = []
    listing: list[str] = []
    for line in text.splitlines():
        if line.startswith("\t"):
            listing.append(line)
            continue
        lines += sorted(listing) + [line]
        listing = []
    return lines + sorted(listing)


def render_state(observation: str, inventory: str, score: float, *, max_observation_chars: int) -> str:
    """The abstract state text (see the module docstring); listed objects are sorted
    (:func:`sorted_listings`), tabs and blank lines tidied."""
    lines = [re.sub(r"[ \t]+", " ", line).strip() for line in sorted_listings(observation.strip())]
    text = "\n".join(line for line in lines if line)
    if len(text) > max_observation_chars:
        keep = max_observation_chars - 3  # the "..." mark counts in the budget: below 4 there is no room for it
        text = text[:keep].rstrip() + "..." if keep > 0 else text[:max_observation_chars]
    return f"{text}\nInventory: {inventory_items(inventory)}\nScore: {score:g}"


def checked_variation(task: Task) -> int:
    """``task.payload["variation"]``, or a one-line :class:`ConfigError` naming the task and the
    field unless it is an int from 0 to 2**31 - 1: the simulator answered a negative one with a
    raw Java ArrayIndexOutOfBoundsException, and a str or a larger int as a JVM that stopped
    answering (and was killed)."""
    variation = task.payload.get("variation")
    if type(variation) is not int or not 0 <= variation <= _MAX_VARIATION:
        raise ConfigError(
            f"scienceworld: task {task.id!r}: payload['variation'] is {variation!r}; a ScienceWorld variation is an "
            f"int from 0 to {_MAX_VARIATION} (a task's own: SciWorldDomain.variations(split))"
        )
    return variation


def checked_payload(task: Task) -> tuple[str, int, str]:
    """``task.payload``'s (task name, variation, simplifications), or a one-line
    :class:`ConfigError` naming the task and the field, before the simulator is touched: a
    missing field was a bare KeyError; a name or simplifications that is not a str failed the
    simulator call, read as a JVM that stopped answering (a healthy one killed), or, None, a
    17-line Java error. The name must be one of ScienceWorld's tasks (its package lists them);
    simplification labels are the simulator's to check (an unknown one: a one-line EngineError)."""
    from scienceworld.constants import ID2TASK  # a json the package reads; no JVM

    payload = task.payload
    for field in ("task", "simplifications"):
        value = payload.get(field)
        if not isinstance(value, str) or (field == "task" and value not in ID2TASK.values()):
            shown = repr(value) if field in payload else "missing"
            want = "the name of a ScienceWorld task (e.g. 'boil')" if field == "task" else "a str ('easy', '' or a comma list)"
            raise ConfigError(
                f"scienceworld: task {task.id!r}: payload[{field!r}] is {shown}; it must be {want} "
                "(a task's own: SciWorldDomain.tasks(split))"
            )
    return payload["task"], checked_variation(task), payload["simplifications"]


def is_reset_task(action: str) -> bool:
    """Whether the simulator reads ``action`` as "reset task": case and articles do not count to it."""
    return [word for word in action.lower().split() if word not in _ARTICLES] == ["reset", "task"]


def is_ambiguous(observation: str) -> bool:
    return observation.startswith(_AMBIGUOUS)


def first_reading(observation: str) -> str:
    """The number to answer an ambiguity with: the reading whose text sorts first. The simulator
    lists the readings in an order that depends on what its JVM ran before, so "0" made the same
    state and action reach different next states in the collecting and the evaluating JVM."""
    readings = re.findall(r"^(\d+):\s*(.+?)\s*$", observation, re.MULTILINE)
    return min(readings, key=lambda reading: (reading[1], int(reading[0])))[0] if readings else "0"


def _start() -> Any:
    """A started ScienceWorld wrapper (its JVM up, about 2 s)."""
    from scienceworld import ScienceWorldEnv

    return quiet_del(ScienceWorldEnv)("", envStepLimit=_ENGINE_STEP_LIMIT)


class SciWorldEnv:
    """Real ScienceWorld episodes in the abstract state.

    Reward is the paper's outcome reward: 1.0 on the final step of a completed task, else 0;
    ``info`` keeps the simulator's 0-100 score and its change. The episode ends when the
    task is completed (score 100, a success) or failed (the simulator's score -100, e.g.
    focusing on the wrong object), or after ``max_steps`` steps (a failure). An action the
    simulator does not know is sent, answered with its "No known action" message, and the
    transition is flagged ``valid=False``. An ambiguous action (several objects match) is
    resolved to the reading whose text sorts first (:func:`first_reading`). An action holding a
    control character or a lone surrogate (:func:`unreadable_character`) is not sent: it is an
    invalid step, the state as it was.

    The JVM starts on the first call (about 2 s); ``close`` stops it. Each call to it is
    bounded by ``call_timeout_s`` (0: no limit): a JVM that does not answer in time is
    killed, and one that died is dropped; the call fails with a one-line
    :class:`EngineError`, the episode is over, and the next call starts a new JVM.
    """

    def __init__(
        self, *, max_steps: int, max_observation_chars: int, gold_path: bool = False,
        call_timeout_s: float = DEFAULT_CALL_TIMEOUT_S,
    ) -> None:  # fmt: skip
        self.max_steps = max_steps
        self.max_observation_chars = max_observation_chars
        self.gold_path = gold_path
        self.call_timeout_s = call_timeout_s
        self._jvm = JvmGuard(
            start=_start, name="sciworld", label="scienceworld", simulator="ScienceWorld", error=EngineError,
            call_timeout_s=call_timeout_s, on_drop=self._end_episode,
        )  # fmt: skip
        self._gold: list[str] = []
        self._score = 0.0
        self._steps = 0
        self._inventory = ""  # the inventory the simulator last gave (a refused step shows it)
        self._done = True

    @property
    def _engine(self) -> Any:
        """The started ScienceWorld wrapper, or None (for tests and debugging)."""
        return self._jvm.wrapper

    def _end_episode(self) -> None:
        self._done = True

    # --- what the domain asks of the simulator (each one bounded call) ---------------

    def task_names(self) -> list[str]:
        with self._jvm.call("list tasks") as engine:
            return list_items(engine, engine.server.getTaskNames())

    def simplifications(self) -> list[str]:
        """The simplification names the simulator knows (``easy`` names a set of them)."""
        with self._jvm.call("list simplifications") as engine:
            return str(engine.server.getPossibleSimplifications()).split(", ")

    def split_variations(self, task: str, simplifications: str) -> dict[str, list[int]]:
        """``task``'s variations in ScienceWorld's own train, dev and test splits."""
        with self._jvm.call(f"list the variations of {task}") as engine:
            server = engine.server
            self._load(server, task, 0, simplifications, gold_path=False)
            return {
                "train": list_items(engine, server.getVariationsTrain()),
                "dev": list_items(engine, server.getVariationsDev()),
                "test": list_items(engine, server.getVariationsTest()),
            }

    def task_description(self, task: str, variation: int, simplifications: str) -> str:
        """The simulator's description of one variation (loading it ends an episode under way)."""
        with self._jvm.call(f"describe {task} variation {variation}") as engine:
            self._load(engine.server, task, variation, simplifications, gold_path=False)
            return str(engine.server.getTaskDescription())

    def action_templates(self) -> list[str]:
        """The simulator's action templates ("open OBJ", "move OBJ to OBJ", ...) but "reset task"."""
        with self._jvm.call("list action templates") as engine:
            return [a for a in list_items(engine, engine.server.getPossibleActions()) if not is_reset_task(a)]

    # --- episodes ------------------------------------------------------------------

    def _load(self, server: Any, task: str, variation: int, simplifications: str, *, gold_path: bool) -> None:
        """Load a variation (this ends an episode under way). The server itself, not the
        wrapper's load: that one lists the task names on every load, a Java list whose proxy
        only the garbage collector would release; the domain checks the names once."""
        self._done = True
        answer = str(server.load(task, variation, simplifications, gold_path))
        if answer.startswith("ERROR"):  # an unknown task or variation
            raise EngineError(f"scienceworld: {task} variation {variation}: {answer}")

    @staticmethod
    def _send(server: Any, action: str) -> tuple[str, float, bool, str]:
        """One simulator step: (its answer, the 0-100 score, completed, inventory). The
        wrapper's step() also lists every valid action, costing about 70 ms a step."""
        observation = str(server.step(action))
        score = float(round(100 * server.getScore()))
        return observation, score, bool(server.getCompleted()), str(server.freeActionInventory())

    def _observe(self, observation: str, inventory: str, score: float) -> Observation:
        text = render_state(observation, inventory, score, max_observation_chars=self.max_observation_chars)
        return Observation(text=text, admissible_actions=[])

    def reset(self, *, task: Task, seed: int | None = None, gold_path: bool | None = None) -> Observation:
        """Start ``task``'s variation. The variation is the payload's; ``seed`` is not used.
        ``gold_path`` overrides the env's own setting for this episode (None: keep it)."""
        name, variation, simplifications = checked_payload(task)  # before the call: a bad payload needs no JVM
        gold = self.gold_path if gold_path is None else gold_path
        with self._jvm.call(f"reset {task.id}") as engine:
            server = engine.server
            self._load(server, name, variation, simplifications, gold_path=gold)
            server.reset()
            observation, score, _, inventory = self._send(server, "look around")  # as the wrapper's reset does
            self._gold = list_items(engine, server.getGoldActionSequence()) if gold else []
        if observation.startswith("ERROR"):  # e.g. an unknown simplification
            raise EngineError(f"scienceworld: reset {task.id}: {observation.strip()}")
        self._score, self._steps, self._done = score, 0, False
        self._inventory = inventory
        return self._observe(observation, inventory, score)

    def step(self, *, action: str) -> StepResult:
        checked_action(action, "scienceworld env")  # py4j finds no step(Integer): read as a JVM that stopped answering
        if self._done:
            raise EngineError("scienceworld env: step() needs reset() first (the episode is over or not started)")
        if is_reset_task(action):
            # not an action of the task (left out of every action list): sent, it wiped the
            # episode's progress mid-episode and counted as a valid step, in any spelling the
            # parser reads as it ("Reset The Task", "the reset task")
            return self._refused(f"'{action}' is not an action of the task")
        unreadable = unreadable_character(action)
        if unreadable is not None:  # not echoed: the state text must stay valid Unicode
            return self._refused(f"the simulator cannot read this action (it holds the {unreadable}); it was not sent")
        with self._jvm.call(f"step {action!r}") as engine:
            observation, score, completed, inventory = self._send(engine.server, action)
            if is_ambiguous(observation):
                observation, score, completed, inventory = self._send(engine.server, first_reading(observation))
        self._steps += 1
        self._inventory = inventory
        success = completed and score >= 100
        failed = (completed and not success) or score < 0
        truncated = not (success or failed) and self._steps >= self.max_steps
        done = success or failed or truncated
        result_info = {"score": score, "score_delta": score - self._score, "truncated": truncated, "steps": self._steps}
        self._score, self._done = score, done
        return StepResult(
            observation=self._observe(observation, inventory, score),
            reward=1.0 if success else 0.0,
            done=done,
            success=success,
            valid=observation.strip() != UNKNOWN_ACTION,
            info=result_info,
        )

    def _refused(self, why: str) -> StepResult:
        """A step the simulator is not sent: invalid, the state as it was, a step counted."""
        self._steps += 1
        truncated = self._steps >= self.max_steps
        self._done = truncated
        # nothing is sent: in the simulator even a look lets time pass
        observation = f"{UNKNOWN_ACTION} ({why})"
        return StepResult(
            observation=self._observe(observation, self._inventory, self._score),
            reward=0.0, done=truncated, success=False, valid=False,
            info={"score": self._score, "score_delta": 0.0, "truncated": truncated, "steps": self._steps},
        )

    def gold_actions(self) -> list[str]:
        """The simulator's gold path from the last reset (empty unless ``gold_path``)."""
        return list(self._gold)

    def valid_actions(self) -> list[str]:
        """Every action string the simulator accepts in the current state (hundreds)."""
        with self._jvm.call("list valid actions") as engine:
            return [a for a in list_items(engine, engine.server.getValidActionObjectCombinations()) if not is_reset_task(a)]

    def close(self) -> None:
        self._jvm.close()
        self._done = True
