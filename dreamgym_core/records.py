"""Records that cross component boundaries.

Every record is a frozen msgspec Struct of plain types, so it encodes to JSON or
msgpack without pickle and decodes with validation. Tensors never live here: they
stay inside an algorithm's private batch.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

__all__ = [
    "Origin",
    "Source",
    "ParseStatus",
    "Task",
    "Observation",
    "StepResult",
    "Transition",
    "Trajectory",
    "HistoryStep",
    "ExperienceRequest",
    "ExperienceResult",
    "PolicyDecision",
    "TaskOutcome",
    "BRANCH_TAG",
    "VARIATION_SUFFIX",
    "branch_episode_id",
    "branch_parent",
]

Origin = Literal["seed", "synthetic"]
Source = Literal["offline", "real", "synthetic"]
ParseStatus = Literal["ok", "repaired", "failed"]

# Early Experience's branch transitions (dreamgym_core.early) name their episode after the
# demo they branch from: the demo's episode id + BRANCH_TAG + "<step>.<alternative>". A
# branch's history is then its demo's steps before it, wherever branches are read.
BRANCH_TAG = "/branch"

# A task variation's id, by the built-in domains' convention: the id of the seed task of the same
# world + VARIATION_SUFFIX, with a number after it when several variations share one world (the
# reward-entropy curriculum's copies of a task with a new instruction). The curriculum keeps the two
# apart; ``loop.demos: same-world-first`` shows a variation its world's stored steps
# (``dreamgym_core.experience.world_namer``).
VARIATION_SUFFIX = "~syn"


def branch_episode_id(demo_episode_id: str, step: int, alternative: int) -> str:
    """The episode id of the ``alternative``-th branch at ``step`` of a demo."""
    return f"{demo_episode_id}{BRANCH_TAG}{step}.{alternative}"


def branch_parent(episode_id: str) -> str | None:
    """The demo episode a branch transition's ``episode_id`` branches from; None for any other."""
    parent, tag, _ = episode_id.rpartition(BRANCH_TAG)
    return parent if tag else None


class Record(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of every record: immutable, keyword-only, strict on decode."""


class Task(Record):
    """One task instruction and what its domain needs to reset a real environment."""

    id: str
    instruction: str
    domain: str
    split: str = "train"
    origin: Origin = "seed"
    parent_id: str | None = None
    # Domain-specific reset data (game name, seed, parameters). Plain JSON types only.
    payload: dict[str, Any] = {}


class Observation(Record):
    """An abstract text state as the policy and the experience model see it."""

    text: str
    admissible_actions: list[str] = []


class StepResult(Record):
    """What ``Env.step`` returns.

    ``reward`` follows the paper: 1.0 only on the final step of a successful episode.
    ``info`` carries domain extras (for instance the engine's intermediate score). The core
    reads ``info["truncated"]``: a real env whose own step cap ends an episode (``done`` while
    the game goes on) sets it True, so that the stored transition is marked ``truncated`` and
    the experience model does not learn that ending as the game's.
    """

    observation: Observation
    reward: float
    done: bool
    success: bool = False
    valid: bool = True
    info: dict[str, Any] = {}


class Transition(Record):
    """One (s, a, s', r) step, real or synthetic, as stored in the replay buffer."""

    task_id: str
    episode_id: str
    step: int
    state: str
    action: str
    next_state: str
    reward: float
    done: bool
    success: bool = False
    valid: bool = True
    reasoning: str = ""
    source: Source = "real"
    model_id: str = ""
    instruction: str = ""
    # The step's outcome is an error note, not experience: the experience model's answer
    # could not be parsed, the policy's output held no action, or the environment raised.
    # The step still counts in the episode (a failure, reward 0, and the policy's update
    # sees it) but is never stored in the replay buffer, where retrieval would feed it back.
    model_failed: bool = False
    # The actions the environment offered in ``state`` (empty when unknown). Kept so that
    # prompts rebuilt from stored transitions (SFT demos, experience-model training) show
    # the same list the agent and the experience model see at run time.
    admissible_actions: list[str] = []
    # The episode ended here only because the environment's step cap was reached (``done``
    # is True, the game itself goes on). The experience model is not trained or scored on
    # such an ending: its prompt has no step count to foresee it, and the synthetic
    # environment applies its own cap.
    truncated: bool = False

    @property
    def game_over(self) -> bool:
        """Whether the game itself ended at this step (``done`` and not cut by a step cap)."""
        return self.done and not self.truncated


class Trajectory(Record):
    """One episode: the task and its transitions in order."""

    task: Task
    transitions: list[Transition]
    # The policy's prompt and raw output for each transition (same order); what RL trains on.
    decisions: list[PolicyDecision] = []
    # The data policy that played an offline episode (expert, noisy, random, explore), set when
    # the run collects it; empty for other episodes and offline files that do not say.
    data_policy: str = ""

    @property
    def success(self) -> bool:
        return bool(self.transitions) and self.transitions[-1].success

    @property
    def outcome_reward(self) -> float:
        return sum(t.reward for t in self.transitions)


class HistoryStep(Record):
    """One earlier (state, action) pair of the current episode."""

    state: str
    action: str


class ExperienceRequest(Record):
    """Everything the experience model conditions on for one step (paper Eq. 4)."""

    instruction: str
    history: list[HistoryStep]
    state: str
    action: str
    admissible_actions: list[str] = []
    demos: list[Transition] = []


class ExperienceResult(Record):
    """The experience model's answer for one step, after parsing."""

    reasoning: str
    next_state: str
    reward: float
    done: bool
    success: bool
    valid: bool = True
    parse_status: ParseStatus = "ok"
    raw: str = ""


class PolicyDecision(Record):
    """The policy's output for one step: raw text and the parsed action."""

    text: str
    action: str
    parsed: bool
    prompt: str = ""
    # loop.action_choice=listed: the answers ``text`` was picked from, as the policy scored them
    # (an update may train the choice among them); empty when the policy generated ``text``.
    candidates: list[str] = []


class TaskOutcome(Record):
    """The group of outcome rewards one task got in one iteration."""

    task: Task
    rewards: list[float]
