"""TextWorld (tw-make) games through the plugin, on the real engine.

Games are generated once per session into a temporary cache (see conftest).
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from dreamgym_core.errors import ConfigError
from dreamgym_core.testing.processes import bounded
from dreamgym_plugin_textworld import TwConfig, make_tw

from .conftest import TW_GAMES

# Every tw game, cooking marked slow (its generation is).
TW_GAMES_COOKING_SLOW = [pytest.param(g, marks=pytest.mark.slow) if g == "cooking" else g for g in TW_GAMES]


@pytest.mark.parametrize("game", TW_GAMES_COOKING_SLOW)
def test_gold_path_succeeds_with_reward_only_at_the_end(tw_domains, game: str) -> None:
    domain = tw_domains[game]
    (trajectory,) = domain.collect(tasks=domain.tasks(split="train"), policy="expert", episodes=1, seed=0)
    steps = trajectory.transitions
    assert trajectory.success and steps[-1].reward == 1.0
    assert all(t.reward == 0.0 and not t.done for t in steps[:-1])
    assert all(t.valid for t in steps)
    assert trajectory.task.instruction and trajectory.task.payload["game"] == game


def test_random_policy_reaches_a_defined_end(tw_domains) -> None:
    domain = tw_domains["treasure_hunter"]
    for trajectory in domain.collect(tasks=domain.tasks(split="train"), policy="random", episodes=2, seed=3):
        last = trajectory.transitions[-1]
        assert last.done and len(trajectory.transitions) <= domain.config.max_steps
        assert last.reward == (1.0 if last.success else 0.0)


def test_noisy_expert_replans_after_deviations(tw_domains) -> None:
    domain = tw_domains["coin_collector"]
    trajectories = domain.collect(tasks=domain.tasks(split="train"), policy="noisy", episodes=3, seed=0)
    assert all(t.success for t in trajectories)  # the engine's planner recovers from random moves


def test_invalid_action_is_flagged_and_answered_by_the_engine(tw_domains) -> None:
    domain = tw_domains["coin_collector"]
    env = domain.make_env()
    try:
        env.reset(task=domain.tasks(split="train")[0])
        result = env.step(action="dance wildly")
        assert not result.valid and not result.done and result.reward == 0.0
        assert "recognise" in result.observation.text or "understand" in result.observation.text
    finally:
        env.close()


def test_games_are_cached_and_deterministic(tw_domains, tw_cache: str) -> None:
    domain = tw_domains["coin_collector"]
    task = domain.tasks(split="train")[0]
    files = sorted(Path(tw_cache).glob("coin_collector-*-train-s0.z8"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    fresh = make_tw(domain.config)  # a new domain reuses the cached game
    try:
        assert fresh.tasks(split="train")[0] == task
        assert fresh.initial_observation(task) == domain.initial_observation(task)
    finally:
        fresh.close()
    assert files[0].stat().st_mtime_ns == stamp


def test_splits_use_disjoint_generation_seeds(tw_domains) -> None:
    domain = tw_domains["coin_collector"]
    train = {t.payload["seed"] for t in domain.tasks(split="train")}
    test = {t.payload["seed"] for t in domain.tasks(split="test")}
    assert train and test and not train & test


def test_variation_changes_the_generated_world(tw_domains) -> None:
    domain = tw_domains["coin_collector"]
    parent = domain.tasks(split="train")[0]
    assert "level" in domain.describe_variation(parent)
    child = domain.make_variation(parent, "seed=7")
    assert child is not None and child.origin == "synthetic" and child.parent_id == parent.id
    assert child.instruction and domain.initial_observation(child).text.startswith("Observation: ")
    assert domain.make_variation(parent, "seed=2000001") is None  # a test seed


def test_out_of_range_variations_are_skipped_at_once_naming_the_range(tw_domains, caplog) -> None:
    """A generated world of world_size=100000 never finishes generating: the bound is checked first."""
    domain = tw_domains["custom"]
    parent = domain.tasks(split="train")[0]
    description = domain.describe_variation(parent)
    assert "world_size (1-20, now 2)" in description and "quest_length (1-10, now 2)" in description
    with caplog.at_level(logging.INFO, logger="dreamgym_plugin_textworld"):
        child, elapsed = bounded(lambda: domain.make_variation(parent, "world_size=100000"), limit_s=30, unblock=lambda: None)
    assert child is None and elapsed < 5
    assert "game 'custom' parameter world_size=100000 is out of range (1-20)" in caplog.text
    assert domain.make_variation(parent, "nb_objects=-1") is None
    cooking = tw_domains["cooking"].tasks(split="train")[0]
    assert "go (1, 6, 9 or 12, now 1)" in tw_domains["cooking"].describe_variation(cooking)
    assert tw_domains["cooking"].make_variation(cooking, "go=4") is None
    assert tw_domains["cooking"].make_variation(cooking, "take=2") is None  # more than the recipe's 1 ingredient


def test_out_of_range_parameters_are_config_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"^env 'tw': game 'custom' parameter world_size=100000 is out of range \(1-20\)$"):
        make_tw(TwConfig(game="custom", params={"world_size": 100000}, cache_dir=str(tmp_path)))
    with pytest.raises(ConfigError, match=r"parameter level=151 is out of range \(1-150\)"):
        make_tw(TwConfig(game="coin_collector", params={"level": 151}, cache_dir=str(tmp_path)))
    with pytest.raises(ConfigError, match=r"parameter take=3 is out of range \(0-2: at most recipe\)"):
        make_tw(TwConfig(game="cooking", params={"recipe": 2, "take": 3}, cache_dir=str(tmp_path)))
    # drop=1 games have no walkthrough, so no expert: its "expert" demos were random play
    with pytest.raises(ConfigError, match=r"parameter drop=1 is out of range \(0\)"):
        make_tw(TwConfig(game="cooking", params={"drop": 1}, cache_dir=str(tmp_path)))


def test_unknown_game_and_parameter_fail_listing_what_exists(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"unknown game 'zork' \(available: coin_collector, cooking, custom, treasure_hunter\)"):
        make_tw(TwConfig(game="zork"))
    with pytest.raises(ConfigError, match=r"no parameter 'levle' \(known: level\)"):
        make_tw(TwConfig(game="coin_collector", params={"levle": 3}))


CHILD = """
import sys, msgspec
from dreamgym_plugin_textworld import TwConfig, make_tw
domain = make_tw(msgspec.json.decode(sys.argv[1], type=TwConfig))
env = domain.make_env()
env.reset(task=domain.tasks(split="train")[0])
refused = env.step(action="look\\x00")
after = env.step(action="look")
print(msgspec.json.encode([refused.valid, refused.done, refused.observation.text, after.valid]).decode())
"""


def test_nul_in_an_action_is_refused_before_the_interpreter(tw_domains) -> None:
    # Sent to the interpreter, a NUL kills the whole process (SIGSEGV): the step runs in a child.
    config = msgspec.json.encode(tw_domains["coin_collector"].config).decode()
    child = subprocess.run([sys.executable, "-c", CHILD, config], capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr[-500:]
    valid, done, text, after_valid = msgspec.json.decode(child.stdout.splitlines()[-1])
    assert not valid and not done and after_valid
    assert "control character U+0000" in text


def test_a_line_break_inside_an_action_does_not_queue_a_command(tw_domains) -> None:
    # The interpreter ends a command at a line break and keeps the rest for the next step.
    domain = tw_domains["coin_collector"]
    env = domain.make_env()
    try:
        env.reset(task=domain.tasks(split="train")[0])
        env.step(action="inventory\nlook")
        assert "carrying" in env.step(action="inventory").observation.text.splitlines()[0]
    finally:
        env.close()


def test_an_answer_reads_without_the_prompt_and_status_line(tw_domains) -> None:
    # The interpreter ends each answer with "> -= Cellar =-0/2" (room, score/moves): one state
    # read differently at every turn, and unlike the reset's.
    domain = tw_domains["coin_collector"]
    env = domain.make_env()
    try:
        start = env.reset(task=domain.tasks(split="train")[0])
        first, second = (env.step(action="look").observation for _ in range(2))
        assert first == second == start
    finally:
        env.close()


@pytest.mark.parametrize("action", ["restart", "RESTART", "quit", "undo", "save", "restore", "script", "verbose", "look. restart"])
def test_interpreter_commands_are_invalid_steps_never_sent(tw_domains, action: str, tmp_path, monkeypatch) -> None:
    # After "restart" and "yes" the game restarted while the env showed the old state; save and
    # script write files into the working directory (here a temporary one).
    monkeypatch.chdir(tmp_path)
    domain = tw_domains["coin_collector"]
    env = domain.make_env()
    try:
        start = env.reset(task=domain.tasks(split="train")[0])
        sent: list[str] = []
        step = env.engine.step
        monkeypatch.setattr(env.engine, "step", lambda a: sent.append(a) or step(a))
        result = env.step(action=action)
        assert not result.valid and not result.done and result.reward == 0.0 and sent == []
        assert result.observation.text.splitlines()[0].startswith("Observation: Not sent: ")
        assert result.observation.admissible_actions == start.admissible_actions and result.info["steps"] == 1
        env.step(action="yes")
        assert env.step(action="look").observation == start
        assert list(tmp_path.iterdir()) == []
    finally:
        env.close()


@pytest.mark.parametrize("game", ["coin_collector", "treasure_hunter", "cooking"])
def test_no_real_no_op_step_is_judged_implausible(tw_domains, game: str) -> None:
    from dreamgym_core.records import Observation

    from .test_twx import no_op_steps

    domain = tw_domains[game]
    steps = no_op_steps(domain, episodes=8)
    assert len(steps) >= 3, f"random play took {len(steps)} no-op actions: too few to check the rule"
    for t in steps:
        reason = domain.implausible(state=Observation(text=t.state), action=t.action, next_state=Observation(text=t.next_state))
        assert reason == "", f"{game}: the real step {t.action!r} was judged implausible: {reason}"


@pytest.mark.parametrize("separator", [". ", " then ", ", "])
def test_chained_commands_are_invalid_steps_never_sent(tw_domains, separator: str, monkeypatch) -> None:
    # The interpreter plays "go west. go north. take coin" as several turns: one step of an
    # unlisted action won the game, with reward 1.0, past the step cap.
    domain = tw_domains["coin_collector"]
    task = domain.tasks(split="train")[0]
    (expert,) = domain.collect(tasks=[task], policy="expert", episodes=1, seed=0)
    plan = ["look", *(t.action for t in expert.transitions)]  # "look, go west" chains too
    env = domain.make_env()
    try:
        start = env.reset(task=task)
        sent: list[str] = []
        step = env.engine.step
        monkeypatch.setattr(env.engine, "step", lambda a: sent.append(a) or step(a))
        result = env.step(action=separator.join(plan))
        assert not result.valid and not result.done and not result.success and result.reward == 0.0
        assert sent == [] and result.info["steps"] == 1 and result.info["score"] == 0.0
        assert f"holds {len(plan)} commands" in result.observation.text.splitlines()[0]
        assert result.observation.text.splitlines()[0].startswith("Observation: Not sent: ")
        assert result.observation.admissible_actions == start.admissible_actions
        assert env.step(action="look").observation == start
        # one command, with a full stop or a trailing "then", still goes to the game
        assert env.step(action=plan[1] + ".").valid is False and sent[-1] == plan[1] + "."
    finally:
        env.close()


@pytest.mark.parametrize("game", TW_GAMES_COOKING_SLOW)
def test_no_listed_action_is_refused(tw_domains, game: str) -> None:
    domain = tw_domains[game]
    (trajectory,) = domain.collect(tasks=domain.tasks(split="train"), policy="expert", episodes=1, seed=0)
    listed = {a for t in trajectory.transitions for a in t.admissible_actions}
    assert listed and all(t.valid for t in trajectory.transitions)
    env = domain.make_env()
    try:
        assert [a for a in sorted(listed) if env.engine.refusal(a) is not None] == []
    finally:
        env.close()


def test_a_lost_games_inventory_line_shows_what_the_player_carries(tw_cache: str) -> None:
    # A lost game prints no inventory and TextWorld carried the previous turn's over: after the
    # losing "take towel" the state read "Inventory: nothing" and offered "drop towel".
    from .conftest import tw_config

    config = tw_config("treasure_hunter", tw_cache, params={"level": 10}, train_seeds=2, valid_seeds=1, test_seeds=2, max_steps=40)
    domain = make_tw(config)
    try:
        tasks = [t for split in ("train", "valid", "test") for t in domain.tasks(split=split)]
        trajectories = domain.collect(tasks=tasks, policy="random", episodes=15, seed=2)
        lost = [t.transitions[-1] for t in trajectories if t.transitions[-1].done and not t.success]
        lost = [t for t in lost if "*** You lost! ***" in t.next_state.splitlines()[0]]
        assert lost, "random play lost no game: nothing to check"
        for t in lost:
            inventory = t.next_state.splitlines()[1].removeprefix("Inventory: ")
            actions = t.next_state.splitlines()[3].split(": ", 1)[1].split("; ")
            dropped = [name for group in actions if group.startswith("drop ") for name in group[5:].split(" / ")]
            assert dropped, f"{t.action!r} lost the game carrying nothing: nothing to check"
            shown = sorted(item.split(" ", 1)[-1] for item in inventory.split(", "))
            assert shown == sorted(dropped), f"after {t.action!r}: Inventory: {inventory}, but the game offers {dropped}"
            assert inventory.startswith(("a ", "an "))  # as a won game's line: "a passkey"
    finally:
        domain.close()


def test_a_lost_games_inventory_lists_the_latest_taken_first() -> None:
    # The game lists the latest taken first ("You are carrying: a bug, a latchkey and a laptop.").
    from types import SimpleNamespace as NS

    from dreamgym_plugin_textworld.engines import carried_inventory

    def carried(entity: str, holder: str = "I") -> NS:
        return NS(name="in", arguments=[NS(name=entity), NS(name=holder)])

    infos = {"o_0": NS(name="laptop", indefinite=None), "o_1": NS(name="apple", indefinite=None),
             "k_0": NS(name="latchkey", indefinite="some"), "o_2": NS(name="bug", indefinite=None)}  # fmt: skip
    state = {
        "_facts": [carried("o_0"), carried("o_1"), carried("k_0"), carried("o_2", holder="r_0")],
        "_game_progression": NS(game=NS(infos=infos)),
        "inventory": "You are carrying: some latchkey, a bug and a laptop.",
    }
    assert carried_inventory(state) == "You are carrying: an apple, some latchkey and a laptop."
    assert carried_inventory({**state, "_facts": [carried("o_2", holder="r_0")]}) == "You are carrying nothing."
    assert carried_inventory({"inventory": "You are carrying nothing."}) is None
