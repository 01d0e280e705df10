"""The MiniWoB++ domain: seed tasks from page seeds, real browser envs, offline collection
(scripted expert, noisy, random), annotation and task variation."""

from __future__ import annotations

import difflib
import random
import re
from typing import Any, Sequence

from dreamgym_core.errors import ConfigError
from dreamgym_core.records import VARIATION_SUFFIX, Observation, Task, Trajectory, Transition
from dreamgym_core.rollout import play_offline

from .config import SPLIT_SIZE, MiniWoBConfig
from .env import ACTION_SYNTAX, MiniWoBEnv, parse_action, quote
from .experts import EXPERTS, plan
from .page import Element, task_names

__all__ = ["MiniWoBDomain", "POLICIES", "SPLIT_SEED_BASE", "annotate_transition", "random_action"]

POLICIES = ("expert", "noisy", "random")
# Page seeds of each split: disjoint ranges (the config caps each count at SPLIT_SIZE). Seeds are
# not problems: a task with few problems (click-test has one) repeats train problems in test (README).
SPLIT_SEED_BASE = {"train": 0, "valid": SPLIT_SIZE, "test": 2 * SPLIT_SIZE}
# At most 16 digits (MAX_SEED has 16): int() of more than 4300 raises ValueError (CPython's limit
# on int-string conversion), so a longer number is no seed and the variation is turned down.
_SEED = re.compile(r"seed\s*[=:]\s*(\d{1,16})(?!\d)")


def random_action(utterance: str, elements: Sequence[Element], rng: random.Random) -> str:
    """A uniform action on the page: click a listed element, or type a word of the utterance
    (or a made-up one) into a text field."""
    shown = [e for e in elements if e.listed]
    fields = [e for e in shown if e.takes_text]
    if fields and rng.random() < len(fields) / len(shown):
        words = re.findall(r'"([^"]+)"', utterance) or ["hello"]
        return f'type [{rng.choice(fields).ref}] "{rng.choice(words)}"'
    return f"click [{rng.choice(shown).ref}]" if shown else "click [1]"


class MiniWoBDomain:
    """MiniWoB++ tasks; each split's seed tasks are problems their pages generate from seeds."""

    name = "miniwob"

    def __init__(self, config: MiniWoBConfig) -> None:
        names = task_names()
        for i, task in enumerate(config.tasks):
            if task not in names:
                close = difflib.get_close_matches(task, names, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f" ({len(names)} tasks, e.g. {', '.join(sorted(EXPERTS))})"
                raise ConfigError(f"env.config.tasks[{i}]: unknown MiniWoB++ task {task!r}{hint}")
        if len(set(config.tasks)) < len(config.tasks):
            raise ConfigError(f"env.config.tasks: a task is named twice in {config.tasks}")
        self.config = config
        self._probe: MiniWoBEnv | None = None
        self._tasks: dict[str, list[Task]] = {}

    # --- tasks -------------------------------------------------------------------

    def seeds(self, split: str) -> list[int]:
        if split not in SPLIT_SEED_BASE:
            raise ConfigError(f"unknown split {split!r} (splits: {', '.join(SPLIT_SEED_BASE)})")
        n = {"train": self.config.train_seeds, "valid": self.config.valid_seeds, "test": self.config.test_seeds}[split]
        return [SPLIT_SEED_BASE[split] + i for i in range(n)]

    def tasks(self, *, split: str) -> list[Task]:
        """Seed tasks of ``split``: the problems of its page seeds, each instruction the page's
        utterance. Tasks are interleaved (seed 0 of every task, then seed 1, ...), so that the
        first N episodes of a collection cover every task."""
        if split not in self._tasks:
            self._tasks[split] = [self._task(split, name, seed) for seed in self.seeds(split) for name in self.config.tasks]
        return list(self._tasks[split])

    def _task(self, split: str, name: str, seed: int, parent: Task | None = None) -> Task:
        page = self._probe_env().page
        page.start(name, seed)
        instruction = " ".join(page.utterance().split())
        if self.config.describe_actions:
            instruction += f" Actions: {ACTION_SYNTAX}."
        return Task(
            id=f"miniwob/{name}/{seed}" + (VARIATION_SUFFIX if parent else ""),
            instruction=instruction,
            domain=self.name,
            split=split,
            origin="synthetic" if parent else "seed",
            parent_id=parent.id if parent else None,
            payload={"task": name, "seed": seed, "split": split},
        )

    # --- real environments -------------------------------------------------------

    def make_env(self) -> MiniWoBEnv:
        """A fresh real environment (its Chromium starts on the first reset)."""
        c = self.config
        return MiniWoBEnv(
            max_steps=c.max_steps, max_elements=c.max_elements, chromium=c.chromium, chromedriver=c.chromedriver,
            call_timeout_s=c.call_timeout_s, start_timeout_s=c.start_timeout_s,
        )  # fmt: skip

    def _probe_env(self) -> MiniWoBEnv:
        if self._probe is None:
            self._probe = self.make_env()
        return self._probe

    def initial_observation(self, task: Task) -> Observation:
        """The task's real initial state (a reset, no steps), for the synthetic environment."""
        return self._probe_env().reset(task=task)

    # --- offline data ------------------------------------------------------------

    def collect(self, *, tasks: Sequence[Task], policy: str, episodes: int, seed: int) -> list[Trajectory]:
        """Play ``episodes`` real episodes (tasks in turn) with ``policy``.

        expert: the task's scripted plan (:mod:`.experts`); noisy: the plan with each step
        replaced, with probability ``noise``, by a random action (the plan resumes after it);
        random: uniform actions (:func:`random_action`)."""
        if policy not in POLICIES:
            raise ConfigError(f"unknown data policy {policy!r} (available: {', '.join(POLICIES)})")
        without = [t for t in self.config.tasks if t not in EXPERTS]
        if policy != "random" and without:
            raise ConfigError(
                f"env.config.tasks: MiniWoB++ task {without[0]!r} has no scripted expert for policy {policy!r} "
                f"(tasks with one: {', '.join(sorted(EXPERTS))}); collect it with policy 'random'"
            )
        if not tasks:
            raise ConfigError("env 'miniwob': collect() needs at least one task")
        rng = random.Random(seed)
        env = self._probe_env()
        return [
            self._play(env, tasks[i % len(tasks)], policy, rng, f"{tasks[i % len(tasks)].id}/{policy}/s{seed}/e{i}")
            for i in range(episodes)
        ]

    def _play(self, env: MiniWoBEnv, task: Task, policy: str, rng: random.Random, episode_id: str) -> Trajectory:
        problem: dict[str, Any] = {}  # the utterance and the expert's plan, read after the reset

        def next_action(obs: Observation) -> str:
            if not problem:
                problem["utterance"] = utterance = env.page.utterance()
                problem["plan"] = [] if policy == "random" else plan(task.payload["task"], utterance, env.elements())
            steps = problem["plan"]
            detour = policy == "random" or not steps or (policy == "noisy" and rng.random() < self.config.noise)
            return random_action(problem["utterance"], env.shown(), rng) if detour else steps.pop(0)

        return play_offline(env, task, episode_id, next_action)

    def annotate(self, *, transition: Transition) -> str:
        """A rule-based reasoning trace from ground truth (see :func:`annotate_transition`)."""
        return annotate_transition(transition)

    # --- task variation ----------------------------------------------------------

    def describe_variation(self, task: Task) -> str:
        """Tells the task generator what a variation of ``task`` may change, and how to write it."""
        first, last = self._variation_seeds()
        return (
            f"This is the MiniWoB++ task {task.payload['task']}; each page seed generates another problem "
            f"(other words, labels and layout). Write seed=K with K a train seed that no seed task uses, "
            f"{first}-{last} (now {task.payload['seed']})."
        )

    def _variation_seeds(self) -> tuple[int, int]:
        """The first and last seed a variation may use: the train seeds after the seed tasks'
        (a seed task's own seed would copy that task as a synthetic one)."""
        return self.config.train_seeds, SPLIT_SEED_BASE["valid"] - 1

    def propose_variations(self, parent: Task, *, n: int, rng: Any) -> list[str]:
        """``n`` variation texts ``make_variation`` accepts: problems from train seeds that are
        not seed tasks (the rule-based M_task; ``rng`` is a numpy Generator). The train seed
        range is the whole of [0, 100000): the seed tasks are only its first ``train_seeds``."""
        first, last = self._variation_seeds()
        count = last + 1 - first
        return [f"seed={first + int(i)}" for i in rng.choice(count, size=min(n, count), replace=False)]

    def make_variation(self, parent: Task, text: str) -> Task | None:
        """A synthetic train Task from ``seed=K``, or None when K is the parent's seed, a seed
        task's, or not a train seed."""
        match = _SEED.search(text)
        if match is None:
            return None
        seed = int(match.group(1))
        first, last = self._variation_seeds()
        if seed == parent.payload["seed"] or not first <= seed <= last:
            return None
        return self._task("train", parent.payload["task"], seed, parent=parent)

    def close(self) -> None:
        if self._probe is not None:
            self._probe.close()
            self._probe = None


def _line_of(state: str, ref: int) -> str | None:
    for line in state.splitlines():
        if line.startswith(f"[{ref}] "):
            return line
    return None


def annotate_transition(t: Transition) -> str:
    """A short reasoning trace explaining why ``t.action`` in ``t.state`` led to ``t.next_state``:
    which element it acted on, what changed on the page, and the outcome."""
    parsed = parse_action(t.action)
    lines = []
    if not t.valid or parsed is None:
        lines.append(f"'{t.action}' is not a click or type on an element of this page, so nothing changes.")
    else:
        verb, ref, text = parsed
        target = _line_of(t.state, ref) or f"[{ref}]"
        typing = f" and typing {quote(text)}" if verb == "type" else ""  # quoted as the state quotes values
        lines.append(f"Clicking {target}{typing} acts on the page.")
        before = set(t.state.splitlines())
        changed = [line for line in t.next_state.splitlines() if line not in before]
        if changed:
            lines.append("The page now shows: " + "; ".join(changed[:3]) + ".")
        else:
            lines.append("The elements on the page stay as they were.")
    # game_over, not done: a step-cap ending is not the page's, and the target there is done=false.
    if t.game_over and t.success:
        lines.append("This completes the task: the page scores the episode a success, reward 1.")
    elif t.game_over:
        lines.append("The episode ends without success (the page scored it a failure), reward 0.")
    else:
        lines.append("The task is not complete yet, so the episode continues with reward 0.")
    return " ".join(lines)
