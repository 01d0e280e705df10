"""The ScienceWorld domain: seed tasks from the task's variation splits, real envs, offline
collection (gold path, noisy, random), annotation and task variation."""

from __future__ import annotations

import difflib
import logging
import random
import re
from typing import Any, Sequence

from dreamgym_core.errors import ConfigError
from dreamgym_core.records import VARIATION_SUFFIX, Observation, Task, Trajectory, Transition
from dreamgym_core.rollout import play_offline

from .config import SciWorldConfig
from .env import SciWorldEnv

log = logging.getLogger(__name__)

__all__ = ["SciWorldDomain", "POLICIES", "annotate_transition"]

POLICIES = ("expert", "noisy", "random")
# ScienceWorld's own splits of a task's variations; DreamGym's "valid" split is its "dev".
_SPLITS = {"train": "train", "valid": "dev", "test": "test"}
_VARIATION = re.compile(r"variation\s*[=:]\s*(\d+)")


class SciWorldDomain:
    """One ScienceWorld task; each split's seed tasks are the first variations of its split."""

    name = "sciworld"

    def __init__(self, config: SciWorldConfig) -> None:
        self.config = config
        self._probe: SciWorldEnv | None = None
        self._variations: dict[str, list[int]] = {}
        self._tasks: dict[str, list[Task]] = {}
        self._warned_long: set[str] = set()  # tasks whose expert episode hit max_steps, warned once each
        try:
            self._check(config, self._probe_env())
        except BaseException:
            self.close()  # its JVM is up
            raise

    @staticmethod
    def _check(config: SciWorldConfig, probe: SciWorldEnv) -> None:
        names = probe.task_names()
        if config.task not in names:
            close = difflib.get_close_matches(config.task, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f" (tasks: {', '.join(names)})"
            raise ConfigError(f"env.config.task: unknown ScienceWorld task {config.task!r}{hint}")
        # The env loads through the simulator's server, which takes an unknown simplification
        # silently and answers every later step with an error: so the names are checked here.
        known = ["easy", *probe.simplifications()]
        for name in filter(None, config.simplifications.split(",")):
            if name not in known:
                raise ConfigError(
                    f"env.config.simplifications: unknown ScienceWorld simplification {name!r} (known: {', '.join(known)})"
                )
        if "noElectricalAction" in config.simplifications and ("power-component" in config.task or "conductivity" in config.task):
            raise ConfigError(f"env.config.simplifications: task {config.task!r} needs electrical actions; drop noElectricalAction")

    # --- tasks -------------------------------------------------------------------

    def variations(self, split: str) -> list[int]:
        """Every variation ScienceWorld puts in ``split`` (train, valid = its dev, test)."""
        if split not in _SPLITS:
            raise ConfigError(f"unknown split {split!r} (splits: {', '.join(_SPLITS)})")
        if not self._variations:  # one load gives the task's three splits
            splits = self._probe_env().split_variations(self.config.task, self.config.simplifications)
            self._variations = {name: splits[theirs] for name, theirs in _SPLITS.items()}
        return list(self._variations[split])

    def tasks(self, *, split: str) -> list[Task]:
        """Seed tasks of ``split``: its first ``<split>_variations`` variations."""
        if split not in self._tasks:
            variations = self.variations(split)  # checks the split name
            n = {"train": self.config.train_variations, "valid": self.config.valid_variations, "test": self.config.test_variations}[split]
            if len(variations) < n:
                # warned, not raised: the default sizes are more than 11 of the 30 tasks' splits hold
                log.warning(
                    "sciworld %s: env.config.%s_variations=%d, but ScienceWorld's %s split has only %d variations; using them all",
                    self.config.task, split, n, _SPLITS[split], len(variations),
                )  # fmt: skip
            self._tasks[split] = [self._task(split, v) for v in variations[:n]]
        return list(self._tasks[split])

    def _task(self, split: str, variation: int, parent: Task | None = None) -> Task:
        payload = {"task": self.config.task, "variation": variation, "simplifications": self.config.simplifications, "split": split}
        probe = self._probe_env()
        instruction = " ".join(probe.task_description(self.config.task, variation, self.config.simplifications).split())
        if self.config.describe_actions:
            instruction += " Actions: " + ", ".join(probe.action_templates()) + "."
        origin = "synthetic" if parent else "seed"
        return Task(
            id=f"sciworld/{self.config.task}/{variation}" + (VARIATION_SUFFIX if parent else ""),
            instruction=instruction,
            domain=self.name,
            split=split,
            origin=origin,
            parent_id=parent.id if parent else None,
            payload=payload,
        )

    # --- real environments -------------------------------------------------------

    def make_env(self, *, gold_path: bool = False) -> SciWorldEnv:
        """A fresh real environment (its JVM starts on the first reset)."""
        c = self.config
        return SciWorldEnv(
            max_steps=c.max_steps, max_observation_chars=c.max_observation_chars, gold_path=gold_path, call_timeout_s=c.call_timeout_s
        )

    def _probe_env(self) -> SciWorldEnv:
        """The domain's own env: tasks and initial observations (gold paths on, as collection's env).
        A JVM of its that dies or hangs costs the call that finds out; the next starts another."""
        if self._probe is None:
            self._probe = self.make_env(gold_path=True)
        return self._probe

    def initial_observation(self, task: Task) -> Observation:
        """The task's real initial state (a reset, no steps), for the synthetic environment.
        Without the gold path: every synthetic episode starts here, and computing it made the
        reset about 4 times slower (boil) for a path nobody reads."""
        return self._probe_env().reset(task=task, gold_path=False)

    # --- offline data ------------------------------------------------------------

    def collect(self, *, tasks: Sequence[Task], policy: str, episodes: int, seed: int) -> list[Trajectory]:
        """Play ``episodes`` real episodes (tasks in turn) with ``policy``.

        expert: the simulator's gold path; noisy: the gold path with each step replaced, with
        probability ``noise``, by a uniform valid action (the gold path resumes after it: most
        detours, such as looking at things, leave it valid); random: uniform valid actions.
        """
        if policy not in POLICIES:
            raise ConfigError(f"unknown data policy {policy!r} (available: {', '.join(POLICIES)})")
        if not tasks:
            raise ConfigError("env 'sciworld': collect() needs at least one task")
        rng = random.Random(seed)
        # A JVM of its own, closed at the end: the simulator lists valid actions (and orders a gold
        # path's choices) by what its JVM ran before, so in the probe's JVM a second collect with the
        # same seed played other episodes. A fresh one makes the episodes a function of the arguments,
        # for the JVM's start and cold first load per call (5-7 s on a loaded 2-core machine).
        env = self.make_env(gold_path=True)
        try:
            return [
                self._play(env, tasks[i % len(tasks)], policy, rng, f"{tasks[i % len(tasks)].id}/{policy}/s{seed}/e{i}")
                for i in range(episodes)
            ]
        finally:
            env.close()

    def _play(self, env: SciWorldEnv, task: Task, policy: str, rng: random.Random, episode_id: str) -> Trajectory:
        gold: list[str] | None = None  # the gold path, read after the reset

        def next_action(obs: Observation) -> str:
            nonlocal gold
            if gold is None:
                gold = env.gold_actions()
            detour = policy == "random" or not gold or (policy == "noisy" and rng.random() < self.config.noise)
            # sorted: the simulator's listing order can differ between two fresh JVMs (a fresh-clone
            # run saw one collect's second episode draw other actions), the set of actions does not
            return rng.choice(sorted(env.valid_actions())) if detour else gold.pop(0)

        trajectory = play_offline(env, task, episode_id, next_action)
        if policy == "expert" and trajectory.transitions[-1].truncated:
            self._warn_unfinished(task)
        return trajectory

    def _warn_unfinished(self, task: Task) -> None:
        """An expert episode the step cap ended is stored as a failure. Judged by how the episode
        ended, not by the gold path's length: gold paths list steps after the task is complete
        (grow-plant: 63 steps, done at 29)."""
        if task.id in self._warned_long:
            return
        self._warned_long.add(task.id)
        log.warning(
            "sciworld %s: the expert episode reached max_steps=%d before the gold path completed the task; "
            "it is stored as a failure (raise env.config.max_steps)", task.id, self.config.max_steps,
        )  # fmt: skip

    def annotate(self, *, transition: Transition) -> str:
        """A rule-based reasoning trace from ground truth (see :func:`annotate_transition`)."""
        return annotate_transition(transition)

    # --- task variation ----------------------------------------------------------

    def _variation_pool(self, parent: Task) -> list[int]:
        """The variations a variation of ``parent`` may be: the task's train variations that are not
        seed tasks (those past ``train_variations``), less the parent's own. A seed's variation has
        the seed's payload, which the curriculum rejects as a world it has: on boil (14 train
        variations, all seeds at the default 32) every proposal was wasted."""
        seeds = set(self.variations("train")[: self.config.train_variations])  # the seed tasks' (see tasks)
        return [v for v in self.variations("train") if v not in seeds and v != parent.payload.get("variation")]

    def describe_variation(self, task: Task) -> str:
        """Tells the task generator what a variation of ``task`` may change, and how to write it."""
        pool = self._variation_pool(task)
        if not pool:
            return (
                f"This is the ScienceWorld task {self.config.task}; a variation is a train variation of it that is not a "
                "seed task, and there is none (the seed tasks hold every train variation): no variation can be made."
            )
        return (
            f"This is the ScienceWorld task {self.config.task}; each variation changes its objects, substances or rooms. "
            f"Write variation=K with K one of its {len(pool)} other train variations that are not seed tasks: {_spans(pool)}."
        )

    def propose_variations(self, parent: Task, *, n: int, rng: Any) -> list[str]:
        """Up to ``n`` texts ``make_variation`` accepts: train variations of the task that are not seed
        tasks (the rule-based M_task; ``rng`` is a numpy Generator). None when the seed tasks hold
        every train variation."""
        pool = self._variation_pool(parent)
        if not pool or n <= 0:
            return []
        return [f"variation={pool[i]}" for i in rng.choice(len(pool), size=min(n, len(pool)), replace=False)]

    def make_variation(self, parent: Task, text: str) -> Task | None:
        """A synthetic train Task from ``variation=K``, or None unless K is a train variation that is
        no seed task and not the parent's (see describe_variation)."""
        match = _VARIATION.search(text)
        if match is None or int(match.group(1)) not in self._variation_pool(parent):
            return None
        return self._task("train", int(match.group(1)), parent=parent)

    def close(self) -> None:
        if self._probe is not None:
            self._probe.close()
            self._probe = None


def _spans(numbers: list[int]) -> str:
    """Sorted ints as runs: [3, 4, 5, 9] -> '3-5, 9'."""
    runs: list[list[int]] = []
    for k in sorted(numbers):
        if runs and k == runs[-1][1] + 1:
            runs[-1][1] = k
        else:
            runs.append([k, k])
    return ", ".join(f"{a}-{b}" if b > a else f"{a}" for a, b in runs)


def _first_sentence(text: str) -> str:
    first = text.splitlines()[0] if text.strip() else ""
    return first.split(". ")[0].rstrip(".")


def _score(state: str) -> float | None:
    match = re.search(r"^Score: (-?[\d.]+)$", state, re.MULTILINE)
    return float(match.group(1)) if match else None


def annotate_transition(t: Transition) -> str:
    """A short reasoning trace explaining why ``t.action`` in ``t.state`` led to ``t.next_state``:
    whether the simulator understood it, its answer, how the score moved, and the outcome."""
    lines = []
    if not t.valid:
        lines.append(f"'{t.action}' is not an action the simulator knows, so nothing changes.")
    else:
        lines.append(f"The simulator carries out '{t.action}' and answers: {_first_sentence(t.next_state)}.")
    old, new = _score(t.state), _score(t.next_state)
    if old is not None and new is not None and new != old:
        lines.append(f"The score {'rises' if new > old else 'falls'} from {old:g} to {new:g}.")
    elif new is not None:
        lines.append(f"The score stays at {new:g}.")
    # game_over, not done: a step-cap ending is not the simulator's, and the target there is done=false.
    if t.game_over and t.success:
        lines.append("This completes the task: the episode ends in success with reward 1.")
    elif t.game_over:
        lines.append("The episode ends without success (the task failed), reward 0.")
    else:
        lines.append("The task is not complete yet, so the episode continues with reward 0.")
    return " ".join(lines)
