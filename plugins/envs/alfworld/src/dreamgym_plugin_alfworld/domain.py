"""The ALFWorld domain: seed tasks from ALFWorld's data folder, real envs, offline collection
(the PDDL planner's plan, noisy, random, explore), annotation and task variation."""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path
from typing import Any, NamedTuple, Sequence

from dreamgym_core.errors import ConfigError, DataError
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
    """The playable games under ``folder`` (the first ``limit``, 0: all), in path order, as
    ALFWorld's loader keeps them: a trial folder with traj_data.json and a game.tw-pddl marked
    solvable, of a wanted task type; ALFWorld leaves out "movable" and "Sliced" trials."""
    games: list[Game] = []
    for traj in sorted(folder.rglob("traj_data.json")):
        if limit and len(games) == limit:  # game files are tens of KB each: read no more than needed
            break
        trial = traj.parent
        path = trial / "game.tw-pddl"
        where = trial.relative_to(folder).as_posix()  # ALFWorld looks at its whole path, even above the data
        if "movable" in where or "Sliced" in where or not path.exists():
            continue
        task_type = _read_json(traj).get("task_type")
        if task_type not in task_types:
            continue
        game = _read_json(path)
        if game.get("solvable") is True:
            games.append(Game(path, task_type, goal_sentence(str(game.get("grammar", "")), path)))
    return games


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
        self._probe: AlfWorldEnv | None = None
        if not (self.root / SPLIT_DIRS["train"]).is_dir():
            raise ConfigError(f"env.config.data_path: no ALFWorld games in {self.root} (no train/ folder); {_GET_DATA}")

    # --- tasks -------------------------------------------------------------------

    def tasks(self, *, split: str) -> list[Task]:
        """Seed tasks of ``split``: train, valid (ALFWorld's valid_seen) or test (valid_unseen),
        the first ``<split>_games`` games in path order (0: all)."""
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

    def describe_variation(self, task: Task) -> str:
        """Tells the task generator what a variation of ``task`` may change, and how to write it."""
        n = len(self.tasks(split="train"))
        return (
            f"ALFWorld task of type {task.payload['task_type']}; a variation is another train game of that type "
            f"(another room, objects or goal). Write game=K with K a train game number 0-{n - 1}."
        )

    def propose_variations(self, parent: Task, *, n: int, rng: Any) -> list[str]:
        """``n`` texts ``make_variation`` accepts: other train games of the parent's task type
        (the rule-based M_task; ``rng`` is a numpy Generator)."""
        train = self.tasks(split="train")
        kind, game = parent.payload["task_type"], parent.payload["game"]
        others = [i for i, t in enumerate(train) if t.payload["task_type"] == kind and t.payload["game"] != game]
        return [f"game={others[i]}" for i in rng.choice(len(others), size=min(n, len(others)), replace=False)]

    def make_variation(self, parent: Task, text: str) -> Task | None:
        """A synthetic train Task from ``game=K``, or None when K is not another train game of the
        parent's task type."""
        match = _GAME.search(text)
        train = self.tasks(split="train")
        if match is None or int(match.group(1)) >= len(train):
            return None
        chosen = train[int(match.group(1))]
        if chosen.payload["game"] == parent.payload["game"] or chosen.payload["task_type"] != parent.payload["task_type"]:
            return None
        game = Game(self.root / chosen.payload["game"], chosen.payload["task_type"], chosen.payload["goal"])
        return self._task("train", game, parent=parent)

    def close(self) -> None:
        if self._probe is not None:
            self._probe.close()
            self._probe = None

