"""The TextWorld domains: seed tasks, real envs, offline collection, annotation, variation."""

from __future__ import annotations

import hashlib
import logging
import random
import re
from typing import Any, Sequence

from dreamgym_core.errors import ConfigError
from dreamgym_core.records import VARIATION_SUFFIX, ExperienceResult, Observation, Task, Trajectory, Transition
from dreamgym_core.rollout import play_offline

from .annotate import annotate_transition
from .config import DEFAULT_CALL_TIMEOUT_S, TwConfig, TwxConfig
from .engines import EnginePool, RawState, TwEngine, TwxJvms
from .env import TextWorldEnv, is_admissible
from .games import (
    SPLITS,
    TW_GAMES,
    TWX_FLAGS,
    TWX_GAMES,
    check_game,
    check_split,
    default_cache_dir,
    describe_allowed,
    seed_split,
    split_range,
    split_seeds,
    tw_params,
)
from .policies import EXPERT_POLICIES, check_policy, choose_action
from .state import drop_scenery, expand_actions, normalize_action, parse_state

__all__ = ["TextWorldDomain", "parse_variation", "task_id"]

log = logging.getLogger(__name__)

_PAIR = re.compile(r"([A-Za-z_]+)\s*[=:]\s*(-?\d+)")
# Actions that change nothing in any of these games: the state after one carries the same
# inventory, score and action list as the state before (the plugin's tests check it on random
# real play of the four TextWorldExpress games and three TextWorld ones). An experience model
# that answers one with a new item to take invents a win the real game cannot give.
NO_OP_ACTIONS = frozenset({"look around", "inventory", "look"})
_UNCHANGED_BY_NO_OPS = ("inventory", "score", "actions")


def task_id(payload: dict[str, Any], origin: str = "seed") -> str:
    """A stable id from what defines the game: engine, game, params and seed."""
    slug = ",".join(f"{k}={v}" for k, v in sorted(payload["params"].items())) or "default"
    suffix = VARIATION_SUFFIX if origin == "synthetic" else ""
    return f"{payload['engine']}/{payload['game']}/{slug}/{payload['seed']}{suffix}"


# TextWorldExpress describes a room's objects in the order they were put there, each sentence
# opened by a lead-in that depends only on its position ("In one part of the room you see", "There
# is also", ...), and lists a container's or surface's contents in that order too. One world can so
# read in several orders (twc's test seeds 20013 and 20022: "... a newspaper. There is also a vase."
# and "... a vase. There is also a newspaper."): the key of a world sorts them.
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_LEAD_IN = re.compile(
    r"^(?:In one part of the room you see|In another part of the room you see|There is also|You also see)\s+", re.IGNORECASE
)
_CONTENTS = re.compile(r"^(?P<head>.*?\bthat (?:has|contains) )(?P<items>.+?)(?P<tail> on it)?\.$")
_LIST_BREAK = re.compile(r",(?: and)? | and ")


def _unordered_sentence(sentence: str) -> str:
    """``sentence`` without its lead-in, the contents it lists sorted."""
    sentence = _LEAD_IN.sub("", sentence)
    match = _CONTENTS.match(sentence)
    if match is None:
        return sentence
    items = sorted(item.strip() for item in _LIST_BREAK.split(match["items"]))
    return f"{match['head']}{', '.join(items)}{match['tail'] or ''}."


def world_text(raw: RawState) -> str:
    """What identifies a reset's world, in no particular order: the instruction, the sentences of
    the initial text (lead-ins stripped, contents sorted) and the lines of the inventory, sorted, and
    the actions (the engines list them sorted)."""
    sentences = sorted(_unordered_sentence(s) for s in _SENTENCE.split(" ".join(raw.text.split())) if s)
    inventory = sorted(" ".join(line.split()) for line in raw.inventory.splitlines() if line.strip())
    return "\x00".join((raw.objective, "\x01".join(sentences), "\x01".join(inventory), *sorted(raw.admissible)))


def world_digest(raw: RawState) -> str:
    """A digest of the instruction and the initial state (text, inventory, actions) of a reset,
    blind to the order the engine lists them in (:func:`world_text`)."""
    return hashlib.sha256(world_text(raw).encode()).hexdigest()[:16]


def parse_variation(text: str, allowed: Sequence[str]) -> dict[str, int]:
    """``key=value`` (or ``key: value``) integer pairs of ``text`` whose key is in ``allowed``."""
    return {key: int(value) for key, value in _PAIR.findall(text) if key in allowed}


def check_flags(params: dict[str, int]) -> None:
    """Raise a one-line ConfigError for a TextWorldExpress on/off flag that is not 0 or 1: the
    engine plays any other value as one of them (includeDoors=7 as 0), under another task id."""
    for name, value in sorted(params.items()):
        if name in TWX_FLAGS and value not in (0, 1):
            raise ConfigError(f"env.config.params.{name}: {value} is not an on/off flag value (0 or 1)")


class TextWorldDomain:
    """One game family on one engine: ``twx`` (TextWorldExpress) or ``tw`` (TextWorld)."""

    def __init__(self, config: TwxConfig | TwConfig, *, engine: str) -> None:
        self.name = engine
        self.config = config
        if engine == "twx":
            check_game("twx", config.game, TWX_GAMES)
            check_flags(config.params)
            self.params = dict(config.params)
        else:
            self.params = tw_params(config.game, config.params)
            self.cache_dir = getattr(config, "cache_dir", "") or default_cache_dir()
        self._tasks: dict[str, list[Task]] = {}
        self._worlds: dict[str, str] = {}  # task id -> world_key
        self._probe: TextWorldEnv | None = None
        jvms = TwxJvms(
            games_per_jvm=getattr(config, "games_per_jvm", 1),
            call_timeout_s=getattr(config, "call_timeout_s", DEFAULT_CALL_TIMEOUT_S),
            expert_path=getattr(config, "expert_path", "first"),
        )
        self._twx_engines = EnginePool(jvms.engine)

    # --- tasks -------------------------------------------------------------------

    def payload(self, split: str, seed: int, params: dict[str, int] | None = None) -> dict[str, Any]:
        """What a reset needs: engine, game, params, split (fold) and seed."""
        params = self.params if params is None else params
        return {"engine": self.name, "game": self.config.game, "params": params, "split": split, "seed": seed}

    def tasks(self, *, split: str) -> list[Task]:
        """Seed tasks of ``split``; each split draws seeds from its own disjoint range (with
        ``distinct_worlds``, only those whose world is new: :meth:`_distinct_tasks`)."""
        check_split(split)
        if split not in self._tasks:
            n = {"train": self.config.train_seeds, "valid": self.config.valid_seeds, "test": self.config.test_seeds}[split]
            if getattr(self.config, "distinct_worlds", False):
                self._tasks[split] = self._distinct_tasks(split, n)
            else:
                self._tasks[split] = [self._task(self.payload(split, seed)) for seed in split_seeds(self.name, split, n)]
        return list(self._tasks[split])

    def _distinct_tasks(self, split: str, n: int) -> list[Task]:
        """The first ``n`` seeds of ``split`` whose worlds are new to it and to the splits
        before it (train, then valid, then test): held-out play on worlds the policy trained on,
        or one world counted as several, would overstate what it learned."""
        if n == 0:
            return []
        taken = {self.world_key(t) for before in SPLITS[: SPLITS.index(split)] for t in self.tasks(split=before)}
        picked: list[Task] = []
        for seed in split_range(self.name, split):
            task = self._task(self.payload(split, seed))
            world = self.world_key(task)
            if world not in taken:
                taken.add(world)
                picked.append(task)
                if len(picked) == n:
                    return picked
        new = "distinct worlds" if split == "train" else "distinct worlds that no task of " + " or ".join(SPLITS[: SPLITS.index(split)]) + " has"
        raise ConfigError(
            f"env {self.name!r}: {self.config.game} {self.params}: the {split} seeds hold {len(picked)} {new}, and "
            f"env.config.{split}_seeds asks for {n} (distinct_worlds); ask for fewer, or for params that make more worlds"
        )

    def world_key(self, task: Task) -> str:
        """What identifies ``task``'s world: a digest of its instruction and initial state. Different
        seeds of a small game often generate the same world."""
        key = self._worlds.get(task.id)
        if key is None:
            key = self._worlds[task.id] = world_digest(self._reset_raw(task.payload))
        return key

    def _task(self, payload: dict[str, Any], parent: Task | None = None) -> Task:
        raw = self._reset_raw(payload)
        origin = "synthetic" if parent else "seed"
        tid = task_id(payload, origin)
        self._worlds[tid] = world_digest(raw)
        return Task(
            id=tid,
            instruction=" ".join(raw.objective.split()),
            domain=self.name,
            split=payload["split"],
            origin=origin,
            parent_id=parent.id if parent else None,
            payload=payload,
        )

    # --- real environments -------------------------------------------------------

    def make_env(self) -> TextWorldEnv:
        """A fresh real environment (TextWorldExpress starts its JVM on first reset)."""
        limits = {
            "max_steps": self.config.max_steps,
            "max_observation_chars": self.config.max_observation_chars,
            "max_action_chars": self.config.max_action_chars,
        }
        if self.name == "twx":  # JVMs are slow to start: a closed env's engine serves the next env
            return TextWorldEnv.from_pool(self._twx_engines, **limits)
        return TextWorldEnv(TwEngine(self.cache_dir), **limits)

    def _probe_env(self) -> TextWorldEnv:
        if self._probe is None:
            self._probe = self.make_env()
        return self._probe

    def _reset_raw(self, payload: dict[str, Any]) -> RawState:
        engine = self._probe_env().engine
        engine.load(payload)
        return engine.reset()

    def initial_observation(self, task: Task) -> Observation:
        """The task's real initial state (a reset, no steps), for the synthetic environment."""
        return self._probe_env().reset(task=task)

    def admissible_in(self, state: str) -> list[str]:
        """The actions listed in a state text (real or generated): its "Actions" line expanded."""
        return expand_actions(parse_state(state)["actions"])

    def implausible(self, *, state: Observation, action: str, next_state: Observation) -> str:
        """Why ``next_state`` cannot follow ``action`` in ``state`` ("" when it can): after an
        action that changes nothing (:data:`NO_OP_ACTIONS`), a changed inventory, score or action
        list. Other answers are left to the experience model: the world they depend on is unseen."""
        if normalize_action(action) not in NO_OP_ACTIONS:
            return ""
        before, after = parse_state(state.text), parse_state(next_state.text)
        changed = [part for part in _UNCHANGED_BY_NO_OPS if before[part] != after[part]]
        if not changed:
            return ""
        return f"'{action}' changes nothing in the game, but the answer changed the {' and '.join(changed)}"

    def correct(self, *, state: Observation, action: str, answer: ExperienceResult) -> ExperienceResult:
        """The answer to an action :meth:`implausible` ruled out (one of :data:`NO_OP_ACTIONS`):
        nothing changes, so the next state is the state itself. (The real game words its
        answer to an inventory differently; what the policy acts on, the inventory, score and
        action list, is exactly the real one.) Valid only where the state lists the action
        (TextWorldExpress lists ``look around`` but never ``look``), as the real game judges it; a
        state whose list is unknown keeps the model's verdict."""
        listed = is_admissible(action, state.admissible_actions) if state.admissible_actions else answer.valid
        return ExperienceResult(
            reasoning=f"'{action}' changes nothing in the game, so the state stays as it was.", next_state=state.text,
            reward=0.0, done=False, success=False, valid=listed, raw=answer.raw,
        )

    def vary_state(self, state: str, actions: Sequence[str], *, key: str, strength: float) -> str:
        """The state with each furniture sentence (no exit, nothing an action acts on) dropped
        with probability ``strength``: TWX folds furnish rooms differently (coin's test kitchens
        all have a dining table, which no train kitchen has), and the task never depends on it."""
        return drop_scenery(state, actions, key=key, drop=strength)

    # --- offline data ------------------------------------------------------------

    def collect(self, *, tasks: Sequence[Task], policy: str, episodes: int, seed: int) -> list[Trajectory]:
        """Play ``episodes`` real episodes (tasks in turn) with ``policy``: expert, random or noisy."""
        check_policy(policy)
        if not tasks:
            raise ConfigError(f"env {self.name!r}: collect() needs at least one task")
        rng = random.Random(seed)
        env = self._probe_env()
        out: list[Trajectory] = []
        known: set[str] = set()  # every action offered so far in this call: what "explore" draws from
        for i in range(episodes):
            task = tasks[i % len(tasks)]
            out.append(self._play(env, task, policy, rng, f"{task.id}/{policy}/s{seed}/e{i}", known))
        return out

    def _play(
        self, env: TextWorldEnv, task: Task, policy: str, rng: random.Random, episode_id: str, known: set[str]
    ) -> Trajectory:
        def next_action(obs: Observation) -> str:
            known.update(obs.admissible_actions)
            # Only these policies read the expert's move; twx pays a gold-path search for it.
            expert = env.expert_action() if policy in EXPERT_POLICIES else None
            return choose_action(
                policy, expert=expert, admissible=obs.admissible_actions, rng=rng, noise=self.config.noise, known=known
            )

        return play_offline(env, task, episode_id, next_action)

    def annotate(self, *, transition: Transition) -> str:
        """A rule-based reasoning trace from ground truth (see :mod:`.annotate`)."""
        return annotate_transition(transition, grounded_moves=self.config.grounded_moves)

    # --- task variation ----------------------------------------------------------

    def variable_params(self) -> tuple[str, ...]:
        """Parameters a synthetic variation may change, besides the seed."""
        return TWX_GAMES[self.config.game] if self.name == "twx" else tuple(TW_GAMES[self.config.game])

    def describe_variation(self, task: Task) -> str:
        """Tells the task generator what a variation of ``task`` may change, and how to write it."""
        seeds = split_range(self.name, "train")
        first, last = seeds[0], seeds[-1]
        now = task.payload["params"]
        params = ", ".join(f"{p} ({self._allowed(p, now)}now {now.get(p, 'engine default')})" for p in self.variable_params())
        return (
            f"This is a {self.config.game} game; its instruction comes from the generated game itself. "
            f"A variation changes the generated world: write key=value pairs (integers) separated by commas. "
            f"seed: a train seed in [{first}, {last}] (now {task.payload['seed']}) gives another world of the same kind"
            + (f"; difficulty parameters: {params}." if params else ".")
        )

    def _allowed(self, param: str, params: dict[str, int]) -> str:
        """``'1-20, '``: the values a variation may give ``param`` (twx checks its own but flags)."""
        if self.name == "twx":
            return "0 or 1, " if param in TWX_FLAGS else ""
        return describe_allowed(self.config.game, param, params) + ", "

    def propose_variations(self, parent: Task, *, n: int, rng: Any) -> list[str]:
        """``n`` variation texts ``make_variation`` accepts: other train worlds of the parent's kind.

        The rule-based M_task (curriculum ``generator: domain``) for an experience model that
        cannot write variations, such as a small one trained from scratch on transitions only.
        Difficulty parameters stay the parent's, so the task distribution keeps its kind.
        ``rng`` is a numpy Generator.
        """
        seeds = [s for s in split_range(self.name, "train") if s != parent.payload["seed"]]
        return [f"seed={seeds[i]}" for i in rng.choice(len(seeds), size=min(n, len(seeds)), replace=False)]

    def make_variation(self, parent: Task, text: str) -> Task | None:
        """A synthetic train Task from a variation text, or None when the text is not a valid variation.

        Its payload resets the real engine, so the initial state is the varied game's real reset.
        """
        changes = parse_variation(text, ("seed", *self.variable_params()))
        if self.name == "twx" and any(changes[k] not in (0, 1) for k in TWX_FLAGS & changes.keys()):
            return None
        seed = changes.pop("seed", parent.payload["seed"])
        params = {**parent.payload["params"], **changes}
        if seed_split(self.name, seed) != "train":
            return None
        if self.name == "tw":
            try:  # before generating: a world too large never finishes
                tw_params(self.config.game, params)
            except ConfigError as exc:
                log.info("%s; variation %r of %s skipped", exc, text, parent.id)
                return None
        payload = self.payload("train", seed, params)
        if {k: v for k, v in payload.items() if k != "split"} == {k: v for k, v in parent.payload.items() if k != "split"}:
            return None
        try:
            task = self._task(payload, parent=parent)
        except ConfigError:
            return None
        if getattr(self.config, "distinct_worlds", False) and self.world_key(task) in self._held_out_worlds():
            log.info("variation %r of %s gives a valid or test task's world; skipped", text, parent.id)
            return None
        return task

    def _held_out_worlds(self) -> set[str]:
        return {self.world_key(t) for split in ("valid", "test") for t in self.tasks(split=split)}

    def close(self) -> None:
        if self._probe is not None:
            self._probe.close()
            self._probe = None
        self._twx_engines.close()

