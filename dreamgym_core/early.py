"""Early Experience (METHOD.md section 5): the agent's alternatives at expert states, run in
the real environment, as warm-start data that needs no reward.

At each state of a successful offline episode (the demos the warm start imitates), up to K
actions other than the demo's are drawn from those the state offered, and each is run in a
real environment replayed to that state (reset, then the demo's earlier actions). The next
states they reach are *branch* transitions. Implicit world modelling then trains the policy
itself to write the next observation of each branch from its prompt and action, before
imitation (the warm start). Self-reflection instead puts, in the demo's ``<think>``, a reflection on what the demo's
action and the branches' led to: a teacher model's, as in the paper, or a rule-based one
that states the observed outcomes and claims no more, so that imitation teaches the
consequences with the action.

Replaying assumes a deterministic environment: a replay that does not reach the recorded
state is not branched and is counted (``diverged``), never silently used.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from .agent import build_agent_prompt, render_response
from .experience import Segments, call_seed, stream_seed
from .protocols import Env
from .records import BRANCH_TAG, HistoryStep, Observation, Task, Trajectory, Transition, branch_episode_id, branch_parent
from .rollout import step_transition

__all__ = [
    "BRANCH_TAG", "collect_branches", "world_model_segments", "world_model_examples", "outcome", "reflection",
    "reflection_prompt", "parse_reflection", "TeacherReflector", "reflections", "write_reflections", "StateKey",
    "demo_state_key",
]

def _replay(env: Env, demo: Trajectory, step: int) -> Observation | None:
    """The environment reset and moved by the demo's first ``step`` actions; None when it
    does not reach the state the demo recorded there."""
    observation = env.reset(task=demo.task)
    for t in demo.transitions[:step]:
        observation = env.step(action=t.action).observation
    return observation if observation.text == demo.transitions[step].state else None


def collect_branches(make_env: Callable[[], Env], demos: Sequence[Trajectory], *, k: int, seed: int) -> tuple[list[Transition], int]:
    """Up to ``k`` branch transitions at each state of each successful episode in ``demos``
    (``source="offline"``; ``step`` is the state's index in its episode), and the number of
    states whose replay diverged (not branched)."""
    rng = random.Random(seed)
    out: list[Transition] = []
    diverged = 0
    env = make_env()
    try:
        for demo in (d for d in demos if d.success):
            for step, t in enumerate(demo.transitions):
                others = [a for a in t.admissible_actions if a != t.action]
                for j, action in enumerate(rng.sample(others, min(k, len(others)))):
                    observation = _replay(env, demo, step)
                    if observation is None:
                        diverged += 1
                        break
                    result = env.step(action=action)
                    episode = branch_episode_id(t.episode_id, step, j)
                    out.append(step_transition(demo.task, episode, step, observation, action, result, source="offline", model_id=""))
    finally:
        env.close()
    return out, diverged


def world_model_segments(prompt: str, action: str, next_state: str) -> Segments:
    """One implicit-world-model example: the agent prompt and the policy's response for
    ``action`` (not trained), then the observation that followed (trained)."""
    return [(prompt + render_response(action) + "\nNext observation:\n", False), (next_state, True)]


def world_model_examples(
    branches: Sequence[Transition], demos: Sequence[Trajectory], *, max_steps: int, history_window: int
) -> list[Segments]:
    """The branches as SFT examples, each prompt as the policy saw that state in its demo
    (task, recent history, offered actions). Branches past ``max_steps`` are left out, as
    the demos are: the policy never meets that step."""
    # by task too: offline data may give two tasks' episodes one id
    by_episode = {(d.task.id, d.transitions[0].episode_id): d for d in demos if d.transitions}
    examples = []
    for b in branches:
        demo = by_episode[(b.task_id, branch_parent(b.episode_id))]
        if b.step >= max_steps:
            continue
        history = [HistoryStep(state=t.state, action=t.action) for t in demo.transitions[: b.step]]
        observation = Observation(text=b.state, admissible_actions=list(b.admissible_actions))
        prompt = build_agent_prompt(
            task=demo.task, observation=observation, history=history, step=b.step, max_steps=max_steps, history_window=history_window
        )
        examples.append(world_model_segments(prompt, b.action, b.next_state))
    return examples


def outcome(step: Transition, *, limit: int = 60) -> str:
    """What one action led to, in a few words: refused, won, lost, or the first sentence of
    the next observation (cut to ``limit`` characters). A step the step cap ended (truncated)
    did not end the game: its next observation is what it led to."""
    if not step.valid:
        return "not possible here"
    if step.game_over:
        return "completes the task" if step.success else "ends the episode without success"
    first = step.next_state.strip().split("\n")[0].split(". ")[0].strip().rstrip(".")
    return first if len(first) <= limit else first[: limit - 3].rstrip() + "..."


def reflection(demo_step: Transition, branches: Sequence[Transition]) -> str:
    """What the demo's action and the branches' led to at one state, from the observed next
    states (rule-based: it states outcomes and claims no more; a teacher model would also
    argue why the demo's choice is the better one)."""
    others = "; ".join(f"'{b.action}' {outcome(b)}" for b in branches)
    return f"'{demo_step.action}' {outcome(demo_step)}. Others: {others}."


# A demo state: (task id, episode id, the state's index in its episode). Offline data may give
# two tasks' episodes one id, and its recorded steps need not run 0, 1, 2 (a branch is numbered
# by the index, as :func:`collect_branches` finds it).
StateKey = tuple[str, str, int]
ReflectionItems = dict[StateKey, tuple[Task, Transition, list[Transition]]]


def demo_state_key(demo: Trajectory, index: int) -> StateKey:
    """The key of the ``index``-th state of ``demo`` (reflections are looked up by it)."""
    return demo.task.id, demo.transitions[index].episode_id, index


def _reflection_items(branches: Sequence[Transition], demos: Sequence[Trajectory]) -> ReflectionItems:
    """(task, demo step, its branches) for each demo state that has branches."""
    grouped: dict[StateKey, list[Transition]] = {}
    for b in branches:
        grouped.setdefault((b.task_id, branch_parent(b.episode_id), b.step), []).append(b)
    steps = {demo_state_key(d, i): (d.task, t) for d in demos for i, t in enumerate(d.transitions)}
    return {key: (*steps[key], group) for key, group in grouped.items() if key in steps}


def reflection_prompt(task: Task, demo_step: Transition, branches: Sequence[Transition]) -> str:
    """What a teacher model reads to write one reflection: the task, the state, and what the
    demo's action and each branch led to."""
    lines = [
        "An agent acts in a text environment. Explain its choice.",
        f"Task: {task.instruction}",
        f"State:\n{demo_step.state}",
        f"The agent chose '{demo_step.action}', which led to:\n{demo_step.next_state}",
    ]
    lines += [f"The alternative '{b.action}' would have led to:\n{b.next_state}" for b in branches]
    lines.append(
        "In at most three sentences, say why the chosen action is better than the alternatives, from what each "
        "led to. Write only the explanation."
    )
    return "\n".join(lines) + "\n"


def parse_reflection(text: str, *, max_chars: int = 600) -> str | None:
    """A teacher's reflection on one line, or None when it is empty, too long, or holds a tag
    that would end the response's ``<think>`` early."""
    flat = " ".join(text.split())
    if not flat or len(flat) > max_chars or "<" in flat:
        return None
    return flat


class TeacherReflector:
    """Reflections written by a teacher model (METHOD.md section 5), one prompt per demo state;
    an answer that stays unusable after ``max_retries`` re-generations falls back to the
    rule-based :func:`reflection` and is counted in ``counters["fallback"]``. The first answer
    is greedy; re-generations sample at ``retry_temperature`` (as the experience model's do):
    a greedy retry would repeat the failure."""

    def __init__(
        self, backend: Any, *, max_new_tokens: int = 160, max_retries: int = 1, retry_temperature: float = 0.7, seed: int = 0
    ) -> None:
        self.backend = backend
        self.max_new_tokens = max_new_tokens
        self.max_retries = max_retries
        self.retry_temperature = retry_temperature
        self.seed = seed
        self.counters = {"teacher": 0, "fallback": 0}

    def reflect(self, items: ReflectionItems) -> dict[StateKey, str]:
        written: dict[StateKey, str] = {}
        pending = list(items)
        for attempt in range(self.max_retries + 1):
            if not pending:
                break
            texts = self.backend.generate(
                prompts=[reflection_prompt(*items[key]) for key in pending], max_new_tokens=self.max_new_tokens,
                temperature=self.retry_temperature if attempt else 0.0, stop=[],
                seed=call_seed(stream_seed(self.seed, "reflect"), attempt),
            )
            for key, text in zip(pending, texts):
                if (parsed := parse_reflection(text)) is not None:
                    written[key] = parsed
            pending = [key for key in pending if key not in written]
        self.counters["teacher"] += len(written)
        self.counters["fallback"] += len(pending)
        return written | {key: reflection(items[key][1], items[key][2]) for key in pending}


def reflections(
    branches: Sequence[Transition], demos: Sequence[Trajectory], *, teacher: TeacherReflector | None = None
) -> dict[StateKey, str]:
    """A reflection for each demo state (:func:`demo_state_key`) that has branches: the
    teacher's when one is given, else the rule-based :func:`reflection`."""
    items = _reflection_items(branches, demos)
    if teacher is not None:
        return teacher.reflect(items)
    return {key: reflection(step, group) for key, (_, step, group) in items.items()}


def write_reflections(
    mode: str, branches: Sequence[Transition], demos: Sequence[Trajectory], *,
    build_teacher: Callable[[], Any], seed: int, say: Callable[[str], None],
) -> dict[StateKey, str] | None:
    """The demos' self-reflections for ``loop.self_reflection`` = ``mode`` (None when "off");
    ``build_teacher()`` builds the teacher's backend for "teacher"."""
    if mode == "off":
        return None
    teacher = TeacherReflector(build_teacher(), seed=seed) if mode == "teacher" else None
    written = reflections(branches, demos, teacher=teacher)
    if teacher is not None:
        say(f"self-reflections: {teacher.counters['teacher']} by the teacher, {teacher.counters['fallback']} by rule (unusable answers)")
    return written
