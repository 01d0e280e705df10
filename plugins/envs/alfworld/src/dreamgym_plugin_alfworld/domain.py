"""The ALFWorld domain: seed tasks from ALFWorld's data folder, real envs, offline collection
(the PDDL planner's plan, noisy, random, explore), annotation and task variation."""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path
from typing import Any, NamedTuple, Sequence

from dreamgym_core.errors import ConfigError, DataError, DataUnavailable
from dreamgym_core.records import VARIATION_SUFFIX, Observation, Task, Trajectory, Transition
from dreamgym_core.rollout import play_offline
from dreamgym_plugin_textworld.annotate import annotate_transition
from dreamgym_plugin_textworld.policies import check_policy, choose_action
from dreamgym_plugin_textworld.state import expand_actions, parse_state

from .config import SPLIT_DIRS, TASK_TYPES, AlfWorldConfig
from .env import AlfWorldEnv

__all__ = ["AlfWorldDomain", "Game", "find_games", "goal_sentence", "data_root"]

_GAME = re.compile(r"game\s*[=:]\s*(\d+)")
_TASK_SENTENCE = re.compile(r'Your task is to: ([^"]*?)\.?"')
_GET_DATA = "get ALFWorld's games with `alfworld-download` (it fills $ALFWORLD_DATA) or point env.config.data_path at a json_2.1.1 folder"


def data_root(config: AlfWorldConfig) -> Path:
    """The json_2.1.1 folder: ``data_path``, else ``$ALFWORLD_DATA/json_2.1.1`` (ALFWorld's own default)."""
    if config.data_path:
        return Path(config.data_path).expanduser()
    base = os.environ.get("ALFWORLD_DATA", "~/.cache/alfworld")
    return Path(base).expanduser() / "json_2.1.1"


class Game(NamedTuple):
    """A playable game of the data folder: its game file, task type and goal sentence."""

    path: Path
    task_type: str
    goal: str


def find_games(folder: Path, task_types: Sequence[str], limit: int = 0) -> list[Game]:
    """The playable games under ``folder``, in path order, as ALFWorld's loader keeps them: a
    trial folder with traj_data.json and a game.tw-pddl marked solvable, of a wanted task type;
    ALFWorld leaves out "movable" and "Sliced" trials.

    ``limit`` (0: all) keeps that many, taken round-robin across the wanted task types (in
    ALFWorld's numbering, ``TASK_TYPES``), each type's games in path order; a type with too few
    games leaves its turns to the others. ALFWorld names a task folder after its type, so the
    first games in path order would all be of one type."""
    order = sorted(set(task_types), key=lambda t: (TASK_TYPES.index(t) if t in TASK_TYPES else len(TASK_TYPES), t))
    by_type: dict[str, list[Game]] = {t: [] for t in order}
    # With each type holding ceil(limit / types) games, the round-robin's first `limit` are known.
    enough = -(-limit // len(order)) if limit and order else 0
    for traj in sorted(folder.rglob("traj_data.json")):
        if enough and all(len(games) >= enough for games in by_type.values()):
            break  # game files are tens of KB each: read no more than needed
        trial = traj.parent
        path = trial / "game.tw-pddl"
        where = trial.relative_to(folder).as_posix()  # ALFWorld looks at its whole path, even above the data
        if "movable" in where or "Sliced" in where or not path.exists():
            continue
        task_type = _read_json(traj).get("task_type")
        if task_type not in by_type or (limit and len(by_type[task_type]) >= limit):
            continue  # no type gives more than `limit` games
        game = _read_json(path)
        if game.get("solvable") is True:
            by_type[task_type].append(Game(path, task_type, goal_sentence(str(game.get("grammar", "")), path)))
    if not limit:
        return sorted((g for games in by_type.values() for g in games), key=lambda g: g.path)
    chosen: list[Game] = []
    for turn in range(limit):
        chosen += [games[turn] for games in by_type.values() if turn < len(games)]
    return sorted(chosen[:limit], key=lambda g: g.path)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable ALFWorld file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(data, dict):
        raise DataError(f"{path}: not an ALFWorld file (a JSON object was expected)")
    return data


def goal_sentence(grammar: str, path: Path) -> str:
    """The goal ALFWorld wrote into a game's grammar when it generated the game ("put a apple
    in fridge"), read without loading the engine."""
    match = _TASK_SENTENCE.search(grammar)
    goal = match.group(1).strip() if match else ""
    if goal in ("", "UNKNOWN GOAL"):
        raise DataError(f"{path}: its grammar states no task ('Your task is to: ...'); generate it with alfworld-generate")
    return goal


class AlfWorldDomain:
    """ALFWorld's household games; each game is one seed task (see the README)."""

    name = "alfworld"

    def __init__(self, config: AlfWorldConfig) -> None:
        self.config = config
        self.root = data_root(config)
        self.task_types = list(config.task_types) or list(TASK_TYPES)
        self._tasks: dict[str, list[Task]] = {}
        self._variation_pools: dict[str, list[Game]] = {}
        self._probe: AlfWorldEnv | None = None
        if not (self.root / SPLIT_DIRS["train"]).is_dir():
            # the default folder (none given) is a download not made here: DataUnavailable, which
            # `dreamgym check` skips; a data_path given that holds no games stays a plain ConfigError
            missing = ConfigError if config.data_path else DataUnavailable
            raise missing(f"env.config.data_path: no ALFWorld games in {self.root} (no train/ folder); {_GET_DATA}")

    # --- tasks -------------------------------------------------------------------

    def tasks(self, *, split: str) -> list[Task]:
        """Seed tasks of ``split``: train, valid (ALFWorld's valid_seen) or test (valid_unseen),
        ``<split>_games`` games taken round-robin across the task types (0: all; see
        :func:`find_games`), in path order."""
        if split not in SPLIT_DIRS:
            raise ConfigError(f"unknown split {split!r} (splits: {', '.join(SPLIT_DIRS)})")
        if split not in self._tasks:
            limit = {"train": self.config.train_games, "valid": self.config.valid_games, "test": self.config.test_games}[split]
            folder = self.root / SPLIT_DIRS[split]
            games = find_games(folder, self.task_types, limit) if folder.is_dir() else []
            if not games and (split != "valid" or limit):
                raise ConfigError(f"env.config.data_path: no {', '.join(self.task_types)} games in {folder}; {_GET_DATA}")
            self._tasks[split] = [self._task(split, game) for game in games]
        return list(self._tasks[split])

    def _task(self, split: str, game: Game, parent: Task | None = None) -> Task:
        trial = game.path.parent
        return Task(
            # The family (the id up to its last "/") is the task type, as ALFWorld reports success.
            id=f"alfworld/{game.task_type}/{trial.parent.name}@{trial.name}" + (VARIATION_SUFFIX if parent else ""),
            instruction=f"Your task is to: {game.goal}.",
            domain=self.name,
            split=split,
            origin="synthetic" if parent else "seed",
            parent_id=parent.id if parent else None,
            payload={"game": game.path.relative_to(self.root).as_posix(), "task_type": game.task_type, "goal": game.goal},
        )

    # --- real environments -------------------------------------------------------

    def make_env(self) -> AlfWorldEnv:
        """A fresh real environment (it loads a game on its first reset)."""
        config = self.config
        return AlfWorldEnv(
            root=self.root, max_steps=config.max_steps, max_observation_chars=config.max_observation_chars,
            max_action_chars=config.max_action_chars,
        )

    def _probe_env(self) -> AlfWorldEnv:
        if self._probe is None:
            config = self.config
            self._probe = AlfWorldEnv(
                root=self.root, max_steps=config.max_steps, max_observation_chars=config.max_observation_chars,
                max_action_chars=config.max_action_chars, gold_path=True,
            )
        return self._probe

    def initial_observation(self, task: Task) -> Observation:
        """The task's real initial state (a reset, no steps), for the synthetic environment."""
        return self._probe_env().reset(task=task)

    def admissible_in(self, state: str) -> list[str]:
        """The actions listed in a state text (real or generated): its "Actions" line expanded."""
        return expand_actions(parse_state(state)["actions"])

    # --- offline data ------------------------------------------------------------

    def collect(self, *, tasks: Sequence[Task], policy: str, episodes: int, seed: int) -> list[Trajectory]:
        """Play ``episodes`` real episodes (tasks in turn) with ``policy``: expert (the PDDL
        planner's next action, planned again from every state), noisy (that, or with probability
        ``noise`` a uniform admissible action), random, or explore (any action offered so far)."""
        check_policy(policy)
        if not tasks:
            raise ConfigError("env 'alfworld': collect() needs at least one task")
        rng = random.Random(seed)
        env = self._probe_env()
        known: set[str] = set()
        out = []
        for i in range(episodes):
            task = tasks[i % len(tasks)]

            def next_action(obs: Observation) -> str:
                known.update(obs.admissible_actions)
                plan = env.gold_actions()
                return choose_action(
                    policy, expert=plan[0] if plan else None, admissible=obs.admissible_actions, rng=rng,
                    noise=self.config.noise, known=known,
                )

            out.append(play_offline(env, task, f"{task.id}/{policy}/s{seed}/e{i}", next_action))
        return out

    def annotate(self, *, transition: Transition) -> str:
        """A rule-based reasoning trace from ground truth (the TextWorld domains' annotator:
        the states share their format)."""
        return annotate_transition(transition)

    # --- task variation ----------------------------------------------------------

    def _variation_games(self, parent: Task) -> list[Game]:
        """The games a variation of ``parent`` may be, ``game=K`` indexing them: the train games
        of its task type (found as :func:`find_games` finds them) that are not seed tasks (those
        past ``train_games``), in path order, less the parent's own game. None when
        ``train_games`` lists every train game."""
        kind = parent.payload.get("task_type")
        if kind not in self.task_types:
            return []
        if kind not in self._variation_pools:
            seeds = {t.payload["game"] for t in self.tasks(split="train")}
            games = find_games(self.root / SPLIT_DIRS["train"], [kind]) if self.config.train_games else []
            self._variation_pools[kind] = [g for g in games if self._relative(g) not in seeds]
        return [g for g in self._variation_pools[kind] if self._relative(g) != parent.payload.get("game")]

    def _relative(self, game: Game) -> str:
        return game.path.relative_to(self.root).as_posix()

    def describe_variation(self, task: Task) -> str:
        """Tells the task generator what a variation of ``task`` may change, and how to write it."""
        kind = task.payload.get("task_type")
        m = len(self._variation_games(task))
        if not m:
            return (
                f"ALFWorld task of type {kind}; a variation is a train game of that type that is not a seed task, "
                "and there is none (the seed tasks hold every train game of this type): no variation can be made."
            )
        which = "K = 0" if m == 1 else f"K a number 0-{m - 1}"
        return (
            f"ALFWorld task of type {kind}; a variation is one of the {m} train games of that type that are not "
            f"seed tasks (another room, objects or goal). Write game=K with {which}."
        )

    def propose_variations(self, parent: Task, *, n: int, rng: Any) -> list[str]:
        """Up to ``n`` texts ``make_variation`` accepts: train games of the parent's task type that
        are not seed tasks (the rule-based M_task; ``rng`` is a numpy Generator). None when the
        seed tasks hold every train game of that type."""
        m = len(self._variation_games(parent))
        if not m or n <= 0:
            return []
        return [f"game={int(k)}" for k in rng.choice(m, size=min(n, m), replace=False)]

    def make_variation(self, parent: Task, text: str) -> Task | None:
        """A synthetic train Task from ``game=K``, K indexing the train games of the parent's task
        type that are not seed tasks (see describe_variation), or None for any other text."""
        match = _GAME.search(text)
        games = self._variation_games(parent)
        if match is None or int(match.group(1)) >= len(games):
            return None
        return self._task("train", games[int(match.group(1))], parent=parent)

    def close(self) -> None:
        if self._probe is not None:
            self._probe.close()
            self._probe = None

