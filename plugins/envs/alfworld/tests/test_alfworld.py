"""The alfworld domain on ALFWorld's own text engine, over games these tests write in ALFWorld's
on-disk format (ALFWorld's downloaded games cannot be fetched here). One test loads the written
games with ALFWorld's own loader and expert, to show the format is the real one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from dreamgym_core.errors import ConfigError, DataError
from dreamgym_core.plugins import Plugins
from dreamgym_core.records import Task
from dreamgym_core.testing import check_domain
from dreamgym_plugin_alfworld import AlfWorldConfig, AlfWorldDomain, EngineError, PickAndPlace, write_game
from dreamgym_plugin_alfworld.env import NOTHING_HAPPENS, AlfWorldEnv, intro_parts

TRAIN = [
    PickAndPlace(receptacles=["CounterTop", "Fridge", "Cabinet"], objects=[("Apple", 0), ("Mug", 2)], target=("Apple", "Fridge")),
    PickAndPlace(receptacles=["CounterTop", "Cabinet", "Cabinet", "Microwave"], objects=[("Mug", 1), ("Apple", 0)], target=("Mug", "Microwave")),
    PickAndPlace(receptacles=["Desk", "Drawer", "Shelf"], objects=[("Pencil", 0), ("Book", 2)], target=("Book", "Drawer")),
]
VALID = [PickAndPlace(receptacles=["Sofa", "Shelf"], objects=[("Pillow", 0)], target=("Pillow", "Shelf"))]
TEST = [
    PickAndPlace(receptacles=["Desk", "Shelf", "Drawer"], objects=[("Pen", 0), ("Book", 1)], target=("Pen", "Drawer")),
    PickAndPlace(receptacles=["Fridge", "CounterTop"], objects=[("Egg", 1)], target=("Egg", "Fridge")),
]


def write_folder(root: Path) -> Path:
    for split, scenes, first in (("train", TRAIN, 1), ("valid_seen", VALID, 10), ("valid_unseen", TEST, 20)):
        for i, scene in enumerate(scenes):
            write_game(root, split, scene, number=first + i)
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("alfworld") / "json_2.1.1")


@pytest.fixture(scope="module")
def domain(data):
    domain = AlfWorldDomain(AlfWorldConfig(data_path=str(data), max_steps=12))
    yield domain
    domain.close()


def test_registered_through_the_entry_point():
    plugins = Plugins.for_names(["alfworld"])
    assert plugins.component("env", "alfworld").factory is AlfWorldDomain


def test_conformance(domain):
    check_domain(domain)


def test_splits_are_alfworlds_folders_with_the_goal_from_each_game(domain):
    train, valid, test = (domain.tasks(split=s) for s in ("train", "valid", "test"))
    assert (len(train), len(valid), len(test)) == (3, 1, 2)
    assert not {t.id for t in train} & {t.id for t in test}
    apple = next(t for t in train if "Apple-None-Fridge" in t.id)
    assert apple.instruction == "Your task is to: put a apple in fridge."
    assert apple.id.rsplit("/", 1)[0] == "alfworld/pick_and_place_simple"  # the task type is the family
    assert apple.payload["game"].startswith("train/pick_and_place_simple-Apple-None-Fridge-1/")


def test_a_split_is_limited_and_filtered_by_task_type(data):
    assert len(AlfWorldDomain(AlfWorldConfig(data_path=str(data), train_games=2)).tasks(split="train")) == 2
    with pytest.raises(ConfigError, match=r"env.config.data_path: no pick_two_obj_and_place games in .*train.*alfworld-download"):
        AlfWorldDomain(AlfWorldConfig(data_path=str(data), task_types=["pick_two_obj_and_place"])).tasks(split="train")
    with pytest.raises(ValueError, match="^task_types: unknown task type 'pick_and_place'"):
        AlfWorldConfig(task_types=["pick_and_place"])


def test_missing_data_says_where_it_looked_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("ALFWORLD_DATA", str(tmp_path))
    with pytest.raises(ConfigError, match=rf"env.config.data_path: no ALFWorld games in {tmp_path}/json_2.1.1 .*alfworld-download"):
        AlfWorldDomain(AlfWorldConfig())


def test_expert_demos_complete_the_task_with_the_outcome_reward(domain):
    tasks = domain.tasks(split="train")
    for traj in domain.collect(tasks=tasks, policy="expert", episodes=3, seed=0):
        assert traj.success and traj.transitions[-1].reward == 1.0 and traj.transitions[-1].done
        assert all(t.reward == 0.0 and not t.done for t in traj.transitions[:-1])
        assert all(t.valid for t in traj.transitions) and len(traj.transitions) <= 7
    noisy = domain.collect(tasks=tasks, policy="noisy", episodes=6, seed=1)
    assert sum(t.success for t in noisy) >= 4  # the planner plans again after each detour


def test_random_play_stops_at_the_step_cap_as_a_failure(domain):
    for traj in domain.collect(tasks=domain.tasks(split="train")[:1], policy="random", episodes=2, seed=0):
        last = traj.transitions[-1]
        assert len(traj.transitions) == 12 and last.done and not last.success and last.reward == 0.0


def test_an_action_the_engine_cannot_carry_out_changes_nothing_and_is_flagged(domain):
    env = domain.make_env()
    try:
        start = env.reset(task=domain.tasks(split="train")[0])
        assert "help" not in start.admissible_actions and "look" in start.admissible_actions
        result = env.step(action="take apple 1 from fridge 1")
        assert not result.valid and result.observation.text.startswith(f"Observation: {NOTHING_HAPPENS}")
        assert result.observation.admissible_actions == start.admissible_actions and not result.done
    finally:
        env.close()


def test_help_is_answered_but_invalid_as_it_is_not_listed(domain):
    # The TextWorld domains' rule: an action outside the state's list is flagged invalid,
    # even where the engine answers it.
    env = domain.make_env()
    try:
        start = env.reset(task=domain.tasks(split="train")[0])
        result = env.step(action="help")
        assert "help" not in start.admissible_actions and not result.valid and not result.done
        assert result.observation.text.startswith("Observation: Available commands:")
        assert env.step(action=" look ").valid  # a listed action the engine reads, spacing aside
    finally:
        env.close()


def test_a_listed_action_in_another_case_or_spacing_is_carried_out_as_listed(domain):
    # it was judged listed but sent as typed, and the engine answered "Nothing happens."
    env = domain.make_env()
    try:
        start = env.reset(task=domain.tasks(split="train")[0])
        goto = next(a for a in start.admissible_actions if a.startswith("go to "))
        shouted = "  ".join(word.capitalize() for word in goto.split())  # "Go  To  Countertop  1"
        result = env.step(action=shouted)
        assert result.valid and NOTHING_HAPPENS not in result.observation.text, (shouted, result.observation.text)
        assert result.observation.text != start.text  # it went there
    finally:
        env.close()


def test_a_non_str_action_is_a_type_error_and_the_episode_goes_on(domain):
    # An int used to reach the engine, whose failure ended the episode.
    env = domain.make_env()
    try:
        start = env.reset(task=domain.tasks(split="train")[0])
        with pytest.raises(TypeError, match=r"^alfworld env: step\(action=\.\.\.\) takes a str, got int$"):
            env.step(action=5)
        result = env.step(action="look")
        assert result.valid and result.info["steps"] == 1 and result.observation.admissible_actions == start.admissible_actions
    finally:
        env.close()


def test_the_state_shows_what_the_agent_holds(domain):
    env = domain.make_env()
    try:
        env.reset(task=domain.tasks(split="train")[0])
        env.step(action="go to countertop 1")
        held = env.step(action="take apple 1 from countertop 1").observation.text
        assert "Inventory: apple 1\n" in held and "move apple 1 to countertop 1" in domain.admissible_in(held)
    finally:
        env.close()


# A kitchen the size of ALFWorld's big FloorPlan16: 52 receptacles, 16 objects on the table.
BIG_KITCHEN = PickAndPlace(
    receptacles=["Cabinet"] * 27 + ["CoffeeMachine", "CounterTop", "CounterTop", "DiningTable"] + ["Drawer"] * 12
    + ["Fridge", "GarbageCan", "Microwave", "SinkBasin"] + ["StoveBurner"] * 4 + ["Toaster"],
    objects=[(cls, 30) for cls in (
        "Apple", "Bread", "Bread", "Bread", "Bread", "ButterKnife", "Fork", "GlassBottle", "GlassBottle", "Mug",
        "PaperTowelRoll", "PepperShaker", "Plate", "Spoon", "Tomato", "WineBottle",
    )],
    target=("Bread", "CounterTop"),
)


def test_the_state_lists_every_action_of_a_large_room(tmp_path):
    # The synthetic env offers the policy what admissible_in reads back from a state; with the
    # list cut after the "go to" group, it read back as few as one action of 70.
    root = tmp_path / "json_2.1.1"
    write_game(root, "train", BIG_KITCHEN)
    domain = AlfWorldDomain(AlfWorldConfig(data_path=str(root)))  # the default budget
    env = domain.make_env()
    try:
        seen = [env.reset(task=domain.tasks(split="train")[0])]
        for action in ("go to diningtable 1", "take bread 1 from diningtable 1", "go to countertop 1"):
            seen.append(env.step(action=action).observation)
        assert max(len(obs.admissible_actions) for obs in seen) == 70
        for obs in seen:
            assert sorted(domain.admissible_in(obs.text)) == sorted(obs.admissible_actions)
    finally:
        env.close()


def test_the_opening_of_a_large_room_names_every_receptacle_at_the_default_budget(tmp_path):
    # At 600 characters the big kitchen's opening (800) lost its drawers, fridge, microwave,
    # sinkbasin and stoveburners: the receptacles of the heat, cool and clean tasks.
    root = tmp_path / "json_2.1.1"
    write_game(root, "train", BIG_KITCHEN)
    domain = AlfWorldDomain(AlfWorldConfig(data_path=str(root)))  # the default budget
    env = domain.make_env()
    try:
        opening = env.reset(task=domain.tasks(split="train")[0]).text.splitlines()[0]
    finally:
        env.close()
    assert not opening.endswith("...")
    for receptacle in ("cabinet 27", "drawer 1,", "fridge 1", "microwave 1", "stoveburner 4", "toaster 1"):  # toaster: the last
        assert receptacle in opening


def test_a_failed_reset_leaves_no_episode_to_play(data, monkeypatch):
    env = AlfWorldEnv(root=data, max_steps=12, max_observation_chars=600, max_action_chars=2000, gold_path=True)
    task = AlfWorldDomain(AlfWorldConfig(data_path=str(data))).tasks(split="train")[0]
    try:
        env.reset(task=task)
        env.step(action="go to countertop 1")
        assert env.gold_actions()

        def broken_reset():
            raise RuntimeError("planner library failed")

        monkeypatch.setattr(env._engine, "reset", broken_reset)  # the same game: no load before the reset
        with pytest.raises(EngineError, match="reset failed: RuntimeError: planner library failed"):
            env.reset(task=task)
        with pytest.raises(EngineError, match=r"step\(\) needs reset\(\) first"):
            env.step(action="take apple 1 from countertop 1")
        assert env.gold_actions() == []
        monkeypatch.undo()
        assert env.reset(task=task).admissible_actions and env.step(action="look").info["steps"] == 1
    finally:
        monkeypatch.undo()
        env.close()


@pytest.mark.parametrize(("payload", "shown"), [({}, "missing"), ({"game": 5}, "5"), ({"game": ""}, "''"), ({"game": None}, "None")])
def test_a_bad_payload_is_a_config_error_naming_the_task_and_the_field_before_the_engine(data, payload, shown):
    """A missing game was a bare KeyError, an int a TypeError from the path join: the rollout
    counted either as one more failed episode, with nothing saying what was wrong."""
    env = AlfWorldEnv(root=data, max_steps=12, max_observation_chars=600, max_action_chars=2000)
    task = Task(id="alfworld/x/1", instruction="put a apple in fridge", domain="alfworld", payload=payload)
    try:
        with pytest.raises(ConfigError) as err:
            env.reset(task=task)
        assert str(err.value) == (
            f"alfworld: task 'alfworld/x/1': payload['game'] is {shown}; an ALFWorld game is a str, the path of its "
            "game.tw-pddl in env.config.data_path (a task's own: AlfWorldDomain.tasks(split))"
        )
        assert env._engine is None  # no engine taken, no game loaded
    finally:
        env.close()


def test_a_scene_solved_at_reset_is_refused():
    with pytest.raises(ValueError, match=r"scene 'put a Apple in Fridge' is solved at reset: a Apple starts in receptacle 1 \(Fridge\)"):
        PickAndPlace(receptacles=["CounterTop", "Fridge"], objects=[("Apple", 1)], target=("Apple", "Fridge"))


def test_write_game_refuses_to_overwrite_a_game_unless_asked(tmp_path):
    """Two scenes with the same target and number shared a folder: the second silently replaced
    the first game."""
    root = tmp_path / "json_2.1.1"
    first = write_game(root, "train", TRAIN[0])
    before = first.read_text()
    other = PickAndPlace(receptacles=["Cabinet", "Drawer", "Fridge"], objects=[("Apple", 1)], target=("Apple", "Fridge"))
    with pytest.raises(FileExistsError) as err:
        write_game(root, "train", other)
    assert str(err.value).startswith(f"write_game: {first.parent} already exists") and "\n" not in str(err.value)
    assert first.read_text() == before
    assert write_game(root, "train", other, number=2) != first  # another number: another folder
    assert write_game(root, "train", other, overwrite=True) == first and first.read_text() != before


def test_a_game_won_at_reset_fails_the_reset(tmp_path):
    # Its first step, even one the engine cannot carry out, would be rewarded as the success.
    root = tmp_path / "json_2.1.1"
    game = write_game(root, "train", PickAndPlace(receptacles=["CounterTop", "Fridge"], objects=[("Apple", 0)], target=("Apple", "Fridge")))
    content = json.loads(game.read_text())
    # the goal asks for the countertop, where the apple starts
    problem = content["pddl_problem"].replace("(receptacleType ?r FridgeType)", "(receptacleType ?r CounterTopType)")
    game.write_text(json.dumps(content | {"pddl_problem": problem}))
    domain = AlfWorldDomain(AlfWorldConfig(data_path=str(root)))
    env = domain.make_env()
    try:
        with pytest.raises(EngineError, match=r"the task is already done at reset .*: its goal holds in the initial state"):
            env.reset(task=domain.tasks(split="train")[0])
        with pytest.raises(EngineError, match=r"step\(\) needs reset\(\) first"):
            env.step(action="take apple 1 from fridge 1")
    finally:
        env.close()


def _planner_library_copies() -> int:
    """Copies of fast_downward's planner library mapped into this process (one per engine made)."""
    lines = Path("/proc/self/maps").read_text().splitlines()
    return len({line.split()[4] for line in lines if "libdownward.so" in line})


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="counts mapped libraries through Linux's /proc")
def test_engines_are_reused_across_games_and_envs(domain):
    # Each engine pins a 34 MB deleted copy of the planner library until the process exits;
    # one per game used to fill /tmp in long runs.
    tasks = domain.tasks(split="train") + domain.tasks(split="test")
    # An env takes an engine at its first reset only: this one puts an idle engine in the pool for
    # the envs below, so the count does not depend on what earlier tests left there.
    env = domain.make_env()
    env.reset(task=tasks[0])
    env.close()
    before, first = _planner_library_copies(), None
    for _ in range(3):
        env = domain.make_env()
        try:
            seen = [env.reset(task=task).text for task in tasks]
            seen.append(env.step(action="look").observation.text)
        finally:
            env.close()
        first = first or seen
        assert seen == first  # a reused engine plays each game as a fresh one did
    assert _planner_library_copies() == before


def test_a_broken_game_fails_in_one_line_naming_it(data, tmp_path):
    root = tmp_path / "json_2.1.1"
    shutil.copytree(data, root)
    domain = AlfWorldDomain(AlfWorldConfig(data_path=str(root)))
    task = domain.tasks(split="train")[0]
    game = root / task.payload["game"]
    data_ = json.loads(game.read_text())
    game.write_text(json.dumps(data_ | {"pddl_problem": "(define (problem broken"}))
    env, good = domain.make_env(), domain.tasks(split="train")[1]
    env.reset(task=good)  # an episode in progress when the broken game is asked for
    with pytest.raises(EngineError, match=rf"alfworld {game}: the engine could not load the game: ") as info:
        env.reset(task=task)
    assert "\n" not in str(info.value)
    with pytest.raises(EngineError, match=r"step\(\) needs reset\(\) first"):
        env.step(action="look")
    # the engine that failed the broken game plays the next one
    assert env.reset(task=good).admissible_actions and env.step(action="look").valid
    env.close()
    game.write_text("{not json")
    with pytest.raises(DataError, match=rf"{game}: unreadable ALFWorld file"):
        AlfWorldDomain(AlfWorldConfig(data_path=str(root))).tasks(split="train")


def test_unsolvable_and_movable_games_are_left_out_as_alfworld_does(data, tmp_path):
    root = tmp_path / "json_2.1.1"
    shutil.copytree(data, root)
    games = sorted((root / "train").rglob("game.tw-pddl"))
    game = json.loads(games[0].read_text())
    games[0].write_text(json.dumps(game | {"solvable": False}))
    shutil.move(games[1].parents[1], root / "train" / (games[1].parents[1].name + "-movable"))
    assert len(AlfWorldDomain(AlfWorldConfig(data_path=str(root))).tasks(split="train")) == 1


def test_variations_are_train_games_of_the_type_that_are_not_seed_tasks(data):
    """A variation used to be another seed task's game (the same payload), which the curriculum
    drops as a duplicate: it never added an ALFWorld task. It is now a train game past
    ``train_games``, of the parent's task type, and a real game the engine plays."""
    domain = AlfWorldDomain(AlfWorldConfig(data_path=str(data), train_games=1, max_steps=12))
    (parent,) = domain.tasks(split="train")
    assert parent.payload["game"].startswith("train/pick_and_place_simple-Apple-None-Fridge-1/")
    pool = ["train/pick_and_place_simple-Book-None-Drawer-3/", "train/pick_and_place_simple-Mug-None-Microwave-2/"]
    assert sorted(domain.propose_variations(parent, n=5, rng=np.random.default_rng(0))) == ["game=0", "game=1"]
    assert domain.describe_variation(parent).endswith("Write game=K with K a number 0-1.")
    children = [domain.make_variation(parent, f"game={k}") for k in range(2)]
    assert [c.payload["game"][: len(p)] for c, p in zip(children, pool, strict=True)] == pool
    assert all(c.origin == "synthetic" and c.parent_id == parent.id and c.payload != parent.payload for c in children)
    assert domain.make_variation(parent, "game=2") is None and domain.make_variation(parent, "another room") is None
    other_type = Task(id="x/y", instruction="", domain="alfworld", split="train", payload=parent.payload | {"task_type": "look_at_obj_in_light"})
    assert domain.make_variation(other_type, "game=0") is None and domain.propose_variations(other_type, n=2, rng=np.random.default_rng(0)) == []
    # a variation of a variation is never its parent's own game
    grandchild = domain.make_variation(children[0], "game=0")
    assert grandchild.payload == children[1].payload and domain.make_variation(children[0], "game=1") is None
    traj = domain.collect(tasks=[children[0]], policy="expert", episodes=1, seed=0)[0]
    assert traj.success  # the payload names a playable game
    domain.close()
    # the reward-entropy curriculum adds them (it refused every one as the same world as a seed task)
    try:
        from dreamgym_core.records import TaskOutcome
        from dreamgym_plugin_reward_entropy.config import RewardEntropyConfig
        from dreamgym_plugin_reward_entropy.curriculum import RewardEntropyCurriculum
    except ImportError:
        return
    curriculum = RewardEntropyCurriculum(RewardEntropyConfig(generator="domain", grouping="task", tasks_to_vary=1), tasks=[parent], domain=domain, seed=0)
    for _ in range(3):
        curriculum.observe(outcomes=[TaskOutcome(task=t, rewards=[0.0, 1.0, 0.0, 1.0]) for t in [parent] + curriculum.synthetic])
    assert curriculum.synthetic and curriculum.stats["generated"] == len(curriculum.synthetic)
    assert {t.payload["game"] for t in curriculum.synthetic} <= {c.payload["game"] for c in children}


def test_no_variation_when_the_seed_tasks_hold_every_train_game(domain):
    parent = domain.tasks(split="train")[0]  # train_games 0: every train game is a seed task
    assert domain.propose_variations(parent, n=5, rng=np.random.default_rng(0)) == []
    assert all(domain.make_variation(parent, f"game={k}") is None for k in range(4))
    assert "there is none" in domain.describe_variation(parent) and "game=K" not in domain.describe_variation(parent)


def _typed_folder(root: Path, types: list[str], per_type: int) -> Path:
    """``per_type`` games of each task type, in ALFWorld's layout (the folder named after the type)."""
    for k, task_type in enumerate(types):
        for j, scene in enumerate(TRAIN[:per_type]):
            trial = write_game(root, "train", scene, number=10 * k + j).parent
            folder = trial.parent.rename(trial.parent.with_name(trial.parent.name.replace("pick_and_place_simple", task_type)))
            traj = folder / trial.name / "traj_data.json"
            traj.write_text(json.dumps(json.loads(traj.read_text()) | {"task_type": task_type}))
    return root


def test_a_limited_split_takes_its_games_round_robin_across_task_types(tmp_path):
    """ALFWorld names a task folder after its type, so the first games in path order were all of
    the alphabetically first types: train_games 3 of three types gave two of them."""
    types = ["pick_and_place_simple", "look_at_obj_in_light", "pick_heat_then_place_in_recep"]
    root = _typed_folder(tmp_path / "json_2.1.1", types, 2)

    def listed(limit, task_types=()):
        config = AlfWorldConfig(data_path=str(root), train_games=limit, task_types=list(task_types))
        return [t.payload["game"] for t in AlfWorldDomain(config).tasks(split="train")]

    every = listed(0)
    assert len(every) == 6 and every == sorted(every)
    kind = lambda game: game.split("/")[1].split("-")[0]  # noqa: E731
    kinds = lambda games: sorted(map(kind, games))  # noqa: E731
    assert kinds(listed(3)) == sorted(types)
    # the first game of each type in path order, listed in path order
    assert listed(3) == sorted(next(g for g in every if kind(g) == t) for t in types)
    # the next turn goes to the first type in ALFWorld's numbering; limits nest
    assert kinds(listed(4)) == sorted(types + ["pick_and_place_simple"])
    assert all(set(listed(n)) <= set(listed(n + 1)) for n in range(1, 6)) and set(listed(6)) == set(every)
    # a type with fewer games leaves its turns to the others; the config's order does not matter
    assert kinds(listed(3, types[:2])) == sorted(types[:2] + ["pick_and_place_simple"])
    assert listed(3, types[:2]) == listed(3, types[1::-1])


def test_annotation_reads_the_engine_answer_and_the_inventory(domain):
    traj = domain.collect(tasks=domain.tasks(split="train")[:1], policy="expert", episodes=1, seed=0)[0]
    take = next(t for t in traj.transitions if t.action.startswith("take "))
    text = domain.annotate(transition=take)
    assert "You pick up the apple 1 from the countertop 1" in text and "nothing to apple 1" in text
    assert "reward 1" in domain.annotate(transition=traj.transitions[-1])


def test_intro_parts():
    intro = "-= Welcome to TextWorld, ALFRED! =-\n\nYou are in the middle of a room. You see a desk 1.\n\nYour task is to: put a pen in desk."
    assert intro_parts(intro) == ("You are in the middle of a room. You see a desk 1.", "put a pen in desk")


def test_the_written_games_are_alfworlds_own_format(data, tmp_path, monkeypatch):
    """ALFWorld's own loader (AlfredTWEnv) finds every written game and its hand-coded expert,
    which reads traj_data.json and the engine's text, wins one."""
    monkeypatch.setenv("ALFWORLD_DATA", str(tmp_path))  # alfworld's import creates this folder
    from alfworld.agents.environment import get_environment

    config = {
        "dataset": {"data_path": str(data / "train"), "eval_id_data_path": "", "eval_ood_data_path": "", "num_train_games": -1, "num_eval_games": -1},
        "env": {"type": "AlfredTWEnv", "goal_desc_human_anns_prob": 0.0, "task_types": [1, 2, 3, 4, 5, 6], "domain_randomization": False, "expert_type": "handcoded"},
        "general": {"training_method": "dagger"}, "dagger": {"training": {"max_nb_steps_per_episode": 30}},
        "rl": {"training": {"max_nb_steps_per_episode": 30}},
    }
    loader = get_environment("AlfredTWEnv")(config, train_eval="train")
    assert loader.num_games == len(TRAIN)
    env = loader.init_env(batch_size=1)
    try:
        _, infos = env.reset()
        for _ in range(30):
            _, _, dones, infos = env.step([infos["extra.expert_plan"][0][0]])
            if dones[0]:
                break
        assert infos["won"][0]
    finally:
        env.close()


def test_reduced_example_pipeline_runs_on_the_engine(data, tmp_path):
    """examples/alfworld.yaml, reduced, over the written games: collect -> buffer -> annotate ->
    joint SFT -> warm start -> GRPO in DreamGym with domain variations -> evaluate."""
    import subprocess
    import sys

    pytest.importorskip("dreamgym_plugin_hf")
    pytest.importorskip("dreamgym_plugin_local")
    example = Path(__file__).parents[4] / "examples" / "alfworld.yaml"
    reduced = [
        f"run_dir={tmp_path / 'run'}", f"env.config.data_path={data}", "data.expert_episodes=3", "data.noisy_episodes=1",
        "data.random_episodes=1", "experience.epochs=1", "loop.warmstart_epochs=1", "loop.warmstart_select_episodes=1",
        "loop.iterations=1", "loop.tasks_per_iteration=2", "loop.group_size=2", "loop.max_steps=4", "eval.episodes=2",
        "policy.config.cpu_threads=1", "experience_model.config.cpu_threads=1",
    ]
    args = [sys.executable, "-m", "dreamgym_core.cli", "run", str(example)] + [x for item in reduced for x in ("--set", item)]
    result = subprocess.run(args, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    played = sum(r["rollout/steps"] - r["errors/rollout_unparsed_actions"] for r in rows if "rollout/steps" in r)
    # the steps the synthetic env played: not the notes ending an episode whose output held no action
    assert summary["eval/episodes"] == 2.0 and summary["counters/synthetic_transitions"] == played
    assert sum(r.get("rollout/steps", 0) for r in rows) > 0
    assert summary["counters/offline_transitions"] > 0 and summary["counters/real_transitions"] == 0.0
    report = (tmp_path / "run" / "report.md").read_text()
    assert "| after RL |" in report
