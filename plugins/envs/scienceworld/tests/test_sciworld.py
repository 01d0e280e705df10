"""The sciworld domain on the real ScienceWorld simulator (its JVM ships in the wheel)."""

from __future__ import annotations

import gc
import logging
import re
import signal
import sys
import threading
from pathlib import Path

import msgspec
import numpy as np
import pytest

from dreamgym_core.errors import ConfigError
from dreamgym_core.plugins import Plugins
from dreamgym_core.testing import check_domain
from dreamgym_core.testing.processes import bounded, ctrl_c_run, py4j_noise, stop_process
from dreamgym_plugin_scienceworld import SciWorldConfig, SciWorldDomain, SciWorldEnv
from dreamgym_plugin_scienceworld.env import EngineError, inventory_items, render_state, sorted_listings

CONFIG = SciWorldConfig(train_variations=3, valid_variations=2, test_variations=2, max_steps=12)


@pytest.fixture(scope="module")
def domain():
    built = SciWorldDomain(CONFIG)
    yield built
    built.close()


@pytest.fixture
def env(domain):
    made = domain.make_env()
    yield made
    made.close()


def test_registered_through_the_entry_point():
    spec = Plugins.for_names(["scienceworld"]).components("env")["sciworld"]
    assert spec.plugin == "scienceworld" and spec.config_type is SciWorldConfig


def test_splits_are_scienceworlds_own_and_disjoint(domain):
    ids = {split: [t.payload["variation"] for t in domain.tasks(split=split)] for split in ("train", "valid", "test")}
    assert ids == {"train": [0, 1, 2], "valid": [150, 151], "test": [225, 226]}
    assert set(domain.variations("valid")).isdisjoint(domain.variations("train") + domain.variations("test"))
    task = domain.tasks(split="test")[0]
    assert task.instruction.startswith("Your task is to find a(n) non-living thing.") and "focus on OBJ" in task.instruction


def test_conformance(domain):
    check_domain(domain)


def test_expert_demos_complete_the_task_with_the_outcome_reward(domain):
    trajectories = domain.collect(tasks=domain.tasks(split="train"), policy="expert", episodes=3, seed=0)
    for trajectory in trajectories:
        last = trajectory.transitions[-1]
        assert last.done and last.success and last.reward == 1.0
        assert all(t.reward == 0.0 and not t.done for t in trajectory.transitions[:-1])
        assert all(t.valid and t.source == "offline" for t in trajectory.transitions)
        assert last.next_state.endswith("Score: 100")


def test_random_play_fails_within_the_step_cap_and_counts_unknown_actions(domain):
    trajectory = domain.collect(tasks=domain.tasks(split="train"), policy="random", episodes=1, seed=3)[0]
    assert not trajectory.transitions[-1].success and trajectory.transitions[-1].reward == 0.0
    assert len(trajectory.transitions) <= CONFIG.max_steps


def test_unknown_and_ambiguous_actions(domain, env):
    env.reset(task=domain.tasks(split="train")[0])
    unknown = env.step(action="fly to the moon")
    assert not unknown.valid and unknown.observation.text.startswith("No known action matches that input.")
    ambiguous = env.step(action="open door")  # several doors: the simulator's first reading is taken
    assert ambiguous.valid and not ambiguous.observation.text.startswith("Ambiguous request")


def test_reset_task_mid_episode_is_refused_and_keeps_the_progress(domain, env):
    # "reset task" is in no action list, yet it was sent: it wiped the goal progress and counted as valid
    env.reset(task=domain.tasks(split="train")[0])
    before = env.step(action="look around")
    refused = env.step(action="  Reset  Task ")
    assert not refused.valid and not refused.done and refused.reward == 0.0
    assert refused.observation.text.startswith("No known action matches that input.")
    assert refused.info["score"] == before.info["score"] and refused.info["steps"] == 2
    assert env.step(action="look around").info["score"] == before.info["score"]


def test_reset_task_in_any_spelling_the_parser_reads_is_refused(domain, env):
    # the simulator's parser skips the/a/an anywhere and any case: these wiped the goal progress and counted as valid
    env.reset(task=domain.tasks(split="train")[0])
    before = env.step(action="look around")
    for spelling in ["reset the task", "Reset The Task", "the reset task", "reset task the", "reset a task"]:
        refused = env.step(action=spelling)
        assert not refused.valid and refused.observation.text.startswith("No known action matches that input."), spelling
        assert refused.info["score"] == before.info["score"]
    from dreamgym_plugin_scienceworld.env import is_reset_task

    assert not is_reset_task("reset, task") and not is_reset_task("reset tasks")  # the parser knows neither


def test_an_unreadable_action_is_refused_without_killing_the_simulator(domain, env):
    # py4j cannot send a lone surrogate: the call broke, the guard killed the JVM, the episode ended
    env.reset(task=domain.tasks(split="train")[0])
    before, process = env.step(action="look around"), _java(env)
    for action in ["\ud800", "look \ud800 around", "look around\x00"]:
        refused = env.step(action=action)
        assert not refused.valid and not refused.done and refused.reward == 0.0
        assert refused.observation.text.startswith("No known action matches that input. (the simulator cannot read this action")
        refused.observation.text.encode()  # valid Unicode: the action is not echoed
        assert refused.info["score"] == before.info["score"]
    assert _java(env) is process and process.poll() is None
    after = env.step(action="look around")
    assert after.valid and after.info["steps"] == 5  # the refused steps count


def test_a_non_str_action_is_a_type_error_and_the_episode_goes_on(domain, env):
    env.reset(task=domain.tasks(split="train")[0])
    with pytest.raises(TypeError, match=r"^scienceworld env: step\(action=\.\.\.\) takes a str, got int$"):
        env.step(action=5)
    result = env.step(action="look around")
    assert result.valid and result.info["steps"] == 1


def test_a_failed_task_ends_the_episode_as_a_failure():
    living = SciWorldDomain(SciWorldConfig(task="find-living-thing", train_variations=1, valid_variations=0, test_variations=1))
    try:
        env = living.make_env()
        env.reset(task=living.tasks(split="train")[0])
        result = env.step(action="focus on air")  # air is not alive: the simulator fails the task
        assert result.done and not result.success and result.reward == 0.0 and result.info["score"] < 0
        with pytest.raises(EngineError, match="needs reset"):
            env.step(action="look around")
        env.close()
    finally:
        living.close()


def _java(env):
    """The JVM of an env that has been reset."""
    return env._engine._gateway.java_process


def test_a_dead_simulator_fails_in_one_line_and_the_next_reset_starts_another(domain, env):
    task = domain.tasks(split="train")[0]
    first = env.reset(task=task)
    process = _java(env)
    process.kill()  # the JVM dies under the adapter
    process.wait()
    with pytest.raises(EngineError, match=r"^scienceworld: step 'look around': the ScienceWorld engine \(JVM\) has exited") as err:
        env.step(action="look around")
    assert "\n" not in str(err.value)
    with pytest.raises(EngineError, match="needs reset"):  # the episode went with the JVM
        env.step(action="look around")
    assert env.reset(task=task) == first  # a new JVM
    assert env.step(action="look around").valid


def test_the_probe_survives_its_simulators_death():
    """The domain's probe env answers initial_observation for every synthetic episode: one
    JVM death must cost one call at most, and no call may leak a raw py4j error."""
    probe_domain = SciWorldDomain(CONFIG)
    try:
        parent = probe_domain.tasks(split="train")[0]
        first = probe_domain.initial_observation(parent)
        process = _java(probe_domain._probe)
        process.kill()
        process.wait()
        with pytest.raises(EngineError, match=r"^scienceworld: .*has exited"):
            probe_domain.make_variation(parent, "variation=5")
        child = probe_domain.make_variation(parent, "variation=5")  # a new JVM
        assert child is not None and child.payload["variation"] == 5
        process = _java(probe_domain._probe)
        process.kill()
        process.wait()
        with pytest.raises(EngineError, match=r"^scienceworld: reset sciworld/find-non-living-thing/0: .*has exited"):
            probe_domain.initial_observation(parent)
        assert probe_domain.initial_observation(parent) == first
    finally:
        probe_domain.close()


def test_initial_observation_loads_no_gold_path_and_collection_does(domain, monkeypatch):
    # every synthetic episode starts with initial_observation: computing the unused gold path made it about 4x slower
    loads = []
    load = SciWorldEnv._load

    def spy(self, *args, gold_path):
        loads.append(gold_path)
        return load(self, *args, gold_path=gold_path)

    task = domain.tasks(split="train")[0]
    monkeypatch.setattr(SciWorldEnv, "_load", spy)
    start = domain.initial_observation(task)
    assert loads == [False]
    trajectory = domain.collect(tasks=[task], policy="expert", episodes=1, seed=0)[0]
    assert loads == [False, True] and trajectory.transitions[-1].success
    assert trajectory.transitions[0].state == start.text


_LINUX = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="stops a JVM with SIGSTOP, watched in /proc")


@_LINUX
def test_a_hung_simulator_fails_after_call_timeout_s_and_the_next_reset_starts_another(domain, caplog):
    task = domain.tasks(split="train")[0]
    limit = 10.0  # the JVM's start is under it too (about 2 s; more on a loaded machine)
    env = SciWorldEnv(max_steps=CONFIG.max_steps, max_observation_chars=CONFIG.max_observation_chars, call_timeout_s=limit)
    try:
        first = env.reset(task=task)
        process = _java(env)
        stop_process(process.pid)  # hung: its sockets stay open, nothing answers
        with caplog.at_level(logging.INFO):
            error, elapsed = bounded(lambda: env.step(action="look around"), limit_s=60, unblock=process.kill)
        assert isinstance(error, EngineError), error
        assert str(error) == (
            "scienceworld: step 'look around': the ScienceWorld engine (JVM) did not answer within 10 s"
            " (call_timeout_s) and was stopped"
        )
        assert limit <= elapsed < limit + 15
        assert process.returncode == -signal.SIGKILL  # killed and reaped
        assert py4j_noise(caplog.records) == []
        assert env.reset(task=task) == first  # a new JVM
        assert env.step(action="look around").valid
        process = _java(env)
        stop_process(process.pid)  # closing a hung JVM is bounded too
        _, elapsed = bounded(env.close, limit_s=60, unblock=process.kill)
        assert elapsed < limit + 15 and process.poll() is not None
    finally:
        env.close()


@_LINUX
def test_a_jvm_killed_during_a_call_is_one_line_without_py4j_tracebacks(domain, env, caplog):
    task = domain.tasks(split="train")[0]
    first = env.reset(task=task)
    process = _java(env)
    stop_process(process.pid)
    killer = threading.Timer(0.5, process.kill)  # dies mid-call; the limit is far off
    killer.start()
    with caplog.at_level(logging.INFO):
        error, _ = bounded(lambda: env.step(action="look around"), limit_s=30, unblock=process.kill)
    killer.join()
    assert isinstance(error, EngineError), error
    assert str(error).startswith("scienceworld: step 'look around': the ScienceWorld engine (JVM) stopped answering")
    assert "\n" not in str(error)
    assert py4j_noise(caplog.records) == []
    assert env.reset(task=task) == first


def test_the_simulator_leaves_no_java_proxies_for_the_garbage_collector(domain, env):
    """A py4j proxy sits in a reference cycle; freed by a later collection, it messages its JVM
    from whatever thread runs it, and a stopped JVM blocks that thread with no time limit."""
    from py4j.finalizer import ThreadSafeFinalizer

    gc.collect()
    gc.disable()
    try:
        env.reset(task=domain.tasks(split="train")[1])  # starts the JVM
        env.step(action="look around")
        env.step(action="open door")  # ambiguous: a second engine step
        env.valid_actions()
        env.action_templates()
        env.reset(task=domain.tasks(split="train")[0])
        client = env._engine._gateway._gateway_client
        prefix = f"{client.address}{client.port}"
        live = {key[len(prefix):] for key, ref in list(ThreadSafeFinalizer.finalizers.items()) if key.startswith(prefix) and ref() is not None}
        # what the gateway and the wrapper hold for good: nothing left for the collector
        assert live == {"GATEWAY_SERVER", "t", env._engine.server._target_id}
    finally:
        gc.enable()


@pytest.mark.parametrize("limit", [1e10, float("inf")])
def test_a_call_timeout_s_past_a_day_is_refused_naming_the_field(limit):
    # It was accepted, and the JVM's start then failed with "timestamp out of range for platform time_t".
    from dreamgym_core.config import convert_config

    with pytest.raises(ConfigError, match=r"^p\.yaml: Expected `float` <= 86400\.0 - at `\$\.env\.config\.call_timeout_s`$"):
        convert_config({"call_timeout_s": limit}, SciWorldConfig, "p.yaml", "$.env.config")
    assert msgspec.convert({"call_timeout_s": 86400}, type=SciWorldConfig).call_timeout_s == 86400.0
    with pytest.raises(ValueError, match=r"call_timeout_s is (1e\+10|inf); it takes 0 \(no limit\) to 86400 s"):
        SciWorldEnv(max_steps=CONFIG.max_steps, max_observation_chars=CONFIG.max_observation_chars, call_timeout_s=limit)


def test_call_timeout_s_is_a_checked_config_field(domain):
    assert SciWorldConfig().call_timeout_s == 120.0
    with pytest.raises(msgspec.ValidationError, match="call_timeout_s"):
        msgspec.convert({"call_timeout_s": -1}, type=SciWorldConfig)
    assert domain.make_env().call_timeout_s == CONFIG.call_timeout_s


def test_an_unknown_simplification_names_the_field():
    with pytest.raises(ConfigError, match=r"env.config.simplifications: unknown ScienceWorld simplification 'teleport'"):
        SciWorldDomain(SciWorldConfig(simplifications="openDoors,teleport"))


def test_unknown_task_names_the_field_and_the_closest_task():
    with pytest.raises(ConfigError, match=r"env.config.task: unknown ScienceWorld task 'find-livng-thing'; did you mean 'find-living-thing'"):
        SciWorldDomain(SciWorldConfig(task="find-livng-thing"))


def test_unknown_split_and_policy_are_config_errors(domain):
    with pytest.raises(ConfigError, match="unknown split 'dev'"):
        domain.tasks(split="dev")
    with pytest.raises(ConfigError, match="unknown data policy 'oracle'"):
        domain.collect(tasks=domain.tasks(split="train"), policy="oracle", episodes=1, seed=0)


def test_a_bad_variation_in_a_hand_made_task_is_a_config_error_naming_the_field(domain, env):
    # A negative one came back as a raw py4j Java ArrayIndexOutOfBoundsException; a str as a JVM
    # that "stopped answering", which was then killed.
    task = domain.tasks(split="train")[0]
    for variation in (-1, "3", True, None):
        bad = msgspec.structs.replace(task, id="hand-made", payload={**task.payload, "variation": variation})
        with pytest.raises(ConfigError, match=rf"^scienceworld: task 'hand-made': payload\['variation'\] is {re.escape(repr(variation))}; a ScienceWorld variation is an int from 0"):
            env.reset(task=bad)
    assert env._engine is None  # refused before the simulator was asked (and started)
    assert env.reset(task=task).text  # the env plays on


def test_variations_are_other_train_variations(domain):
    parent = domain.tasks(split="train")[0]
    texts = domain.propose_variations(parent, n=3, rng=np.random.default_rng(0))
    children = [domain.make_variation(parent, text) for text in texts]
    assert all(c is not None and c.origin == "synthetic" and c.parent_id == parent.id and c.split == "train" for c in children)
    assert domain.make_variation(parent, "variation=0") is None  # the parent itself
    assert domain.make_variation(parent, "variation=225") is None  # a test variation
    assert domain.make_variation(parent, "something else") is None


def test_no_variation_is_a_seed_task(domain):
    # A seed's variation has the seed's payload, and the curriculum rejects it as a world it has.
    seeds = domain.tasks(split="train")
    parent = seeds[0]
    texts = domain.propose_variations(parent, n=10_000, rng=np.random.default_rng(0))  # every one it may propose
    proposed = {int(text.split("=")[1]) for text in texts}
    assert proposed == set(domain.variations("train")) - {t.payload["variation"] for t in seeds}
    children = [domain.make_variation(parent, text) for text in texts[:3]]
    assert all(c is not None and c.payload not in [t.payload for t in seeds] for c in children)
    assert all(domain.make_variation(parent, f"variation={t.payload['variation']}") is None for t in seeds)
    assert f"{len(proposed)} other train variations that are not seed tasks: {min(proposed)}-{max(proposed)}." in domain.describe_variation(parent)


def test_a_task_whose_seeds_hold_every_train_variation_proposes_none():
    boil = SciWorldDomain(SciWorldConfig(task="boil", train_variations=32, valid_variations=0, test_variations=1))
    try:
        variations = boil.variations("train")
        assert len(variations) < 32  # 14: every one is a seed task
        parent = boil._task("train", variations[0])  # a seed, without describing all 14
        assert boil.propose_variations(parent, n=5, rng=np.random.default_rng(0)) == []
        assert boil.make_variation(parent, f"variation={variations[1]}") is None
        assert "there is none" in boil.describe_variation(parent)
    finally:
        boil.close()


def test_a_collection_is_a_function_of_its_arguments(domain):
    # in the probe's JVM a second collect with the seed played other episodes (random: other action
    # strings; noisy: another gold-path step), as the simulator orders its lists by its JVM's history
    tasks = domain.tasks(split="train")[:2]
    for policy in ("random", "noisy"):
        first, second = (domain.collect(tasks=tasks, policy=policy, episodes=2, seed=0) for _ in range(2))
        assert [[(t.action, t.next_state) for t in e.transitions] for e in first] == [
            [(t.action, t.next_state) for t in e.transitions] for e in second
        ], policy


def test_annotation_reads_the_score_change(domain):
    trajectory = domain.collect(tasks=domain.tasks(split="train")[:1], policy="expert", episodes=1, seed=0)[0]
    traces = [domain.annotate(transition=t) for t in trajectory.transitions]
    assert any("The score rises from" in trace for trace in traces)
    assert traces[-1].endswith("This completes the task: the episode ends in success with reward 1.")
    # a step-cap ending is no ending of the game: the trace agrees with the done=false it is trained with
    cut = msgspec.structs.replace(trajectory.transitions[0], done=True, truncated=True, success=False, reward=0.0)
    assert domain.annotate(transition=cut).endswith("the episode continues with reward 0.")


def test_state_rendering():
    state = render_state("You move to the kitchen.\n\n", "In your inventory, you see:\n\tan orange\n", 25.0, max_observation_chars=100)
    assert state == "You move to the kitchen.\nInventory: an orange\nScore: 25"
    assert inventory_items("In your inventory, you see:\n") == "nothing"
    assert render_state("x" * 50, "", 0.0, max_observation_chars=10).splitlines()[0] == "xxxxxxx..."


@pytest.mark.parametrize("budget", [1, 2, 3, 4, 10])
def test_a_cut_observation_keeps_to_its_budget(budget):
    # below 4 the cut kept text[:budget - 3], a negative end: all of the text but a few characters
    observation = render_state("y" * 50, "", 0.0, max_observation_chars=budget).split("\nInventory:")[0]
    assert len(observation) == budget and observation.startswith("y")


def test_listed_objects_read_the_same_in_any_order():
    # ScienceWorld lists a room's objects in its hash set's order, which a JVM's history changes
    one = "In it, you see: \n\tthe agent\n\ta wood cup (containing red paint)\n\ta table\nYou also see:\n\tA door to the hallway\n\tA door to the kitchen"
    other = "In it, you see: \n\ta table\n\tthe agent\n\ta wood cup (containing red paint)\nYou also see:\n\tA door to the kitchen\n\tA door to the hallway"
    inventory = "In your inventory, you see:\n\tan orange\n\ta key\n"
    state = render_state(one, inventory, 0.0, max_observation_chars=500)
    assert state == render_state(other, inventory, 0.0, max_observation_chars=500)
    assert state.splitlines() == [
        "In it, you see:", "a table", "a wood cup (containing red paint)", "the agent",
        "You also see:", "A door to the hallway", "A door to the kitchen", "Inventory: a key, an orange", "Score: 0",
    ]  # fmt: skip
    assert sorted_listings("a\n\tz\n\ty") == ["a", "\ty", "\tz"]  # a listing that ends the text is sorted too


def reduced_example(run_dir: Path) -> list[str]:
    """``dreamgym run`` arguments for examples/scienceworld.yaml cut to a few minutes."""
    example = Path(__file__).parents[4] / "examples" / "scienceworld.yaml"
    reduced = [
        f"run_dir={run_dir}", "env.config.train_variations=4", "env.config.valid_variations=2",
        "env.config.test_variations=2", "data.expert_episodes=4", "data.noisy_episodes=1", "data.random_episodes=1",
        # a warm start that writes actions, so that RL's synthetic steps reach the experience model
        # (one epoch of one step wrote none, and RL's every step was an unparsable action)
        "experience.epochs=1", "experience.batch_size=2", "loop.warmstart_epochs=6", "loop.warmstart_select_episodes=0",
        "loop.iterations=1",
        "loop.tasks_per_iteration=2", "loop.group_size=2", "loop.max_steps=3", "eval.episodes=2",
        "policy.config.cpu_threads=1", "experience_model.config.cpu_threads=1",
    ]
    return ["run", str(example)] + [x for item in reduced for x in ("--set", item)]


@pytest.mark.slow
def test_reduced_example_pipeline_runs_on_the_simulator(tmp_path):
    """examples/scienceworld.yaml, reduced: collect -> buffer -> annotate -> joint SFT ->
    warm start -> GRPO in DreamGym with domain variations -> evaluate, on the real simulator."""
    import json
    import subprocess

    pytest.importorskip("dreamgym_plugin_hf")
    pytest.importorskip("dreamgym_plugin_local")
    args = [sys.executable, "-m", "dreamgym_core.cli", *reduced_example(tmp_path / "run")]
    result = subprocess.run(args, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["eval/episodes"] == 2.0 and summary["counters/synthetic_transitions"] > 0
    assert summary["counters/offline_transitions"] > 0 and summary["counters/real_transitions"] == 0.0
    assert "| after RL |" in (tmp_path / "run" / "report.md").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("lands", ["in_a_call", "after_the_simulators"])
@pytest.mark.parametrize("marker", ["collecting offline real data", "evaluating the untrained policy"])
def test_ctrl_c_of_the_example_ends_in_one_line_and_leaves_no_jvm(tmp_path, marker, lands):
    """Ctrl-C as a terminal sends it (to the run and its JVMs at once) while the run talks to
    the simulator: one line, exit 130, no JVM left."""
    pytest.importorskip("dreamgym_plugin_hf")
    pytest.importorskip("dreamgym_plugin_local")
    stopped = ctrl_c_run(reduced_example(tmp_path / "run"), marker, 0.2, tmp_path / "stdout", lands=lands)
    stopped.assert_stopped_in_one_line()


def test_an_expert_episode_ended_by_the_step_cap_is_warned_about_once(caplog):
    # boil's gold paths (39 and 50 steps) outran the default cap of 30: its "expert" episodes were
    # stored as failures without a word
    short = SciWorldDomain(SciWorldConfig(train_variations=1, valid_variations=0, test_variations=1, max_steps=2))
    try:
        with caplog.at_level("WARNING"):
            episodes = short.collect(tasks=short.tasks(split="train"), policy="expert", episodes=2, seed=0)
    finally:
        short.close()
    assert all(not e.transitions[-1].success for e in episodes)
    warned = [r.getMessage() for r in caplog.records if "reached max_steps=2" in r.getMessage()]
    assert len(warned) == 1 and "raise env.config.max_steps" in warned[0]


def test_a_gold_path_longer_than_the_step_cap_is_no_warning_when_the_expert_finishes(domain, monkeypatch, caplog):
    # gold paths list steps after the task is complete (grow-plant: 63, done at 29, a slow load to test
    # on): their length warned that episodes which succeed "end unfinished"
    gold = SciWorldEnv.gold_actions  # collect() plays in an env of its own
    monkeypatch.setattr(SciWorldEnv, "gold_actions", lambda self: gold(self) + ["look around"] * CONFIG.max_steps)
    with caplog.at_level("WARNING"):
        trajectory = domain.collect(tasks=domain.tasks(split="train")[:1], policy="expert", episodes=1, seed=0)[0]
    assert trajectory.transitions[-1].success and len(trajectory.transitions) < CONFIG.max_steps
    assert [r.getMessage() for r in caplog.records if "max_steps" in r.getMessage()] == []


def test_a_split_smaller_than_configured_is_warned_about_naming_the_field(caplog):
    # tasks() quietly gave fewer seed tasks (boil: 14/7/9 variations against the defaults 32/8/16)
    small = SciWorldDomain(
        SciWorldConfig(task="identify-life-stages-2", train_variations=1, valid_variations=3, test_variations=1, describe_actions=False)
    )
    try:
        with caplog.at_level("WARNING"):
            tasks = small.tasks(split="valid")
    finally:
        small.close()
    assert len(tasks) == 2
    warned = [r.getMessage() for r in caplog.records if "env.config.valid_variations=3" in r.getMessage()]
    assert len(warned) == 1 and "dev split has only 2 variations" in warned[0]


def test_an_ambiguous_action_takes_the_reading_whose_text_sorts_first():
    # the simulator's own order depends on what its JVM ran before: "0" was another door in another JVM
    from dreamgym_plugin_scienceworld.env import first_reading

    listing = ("Ambiguous request: Please enter the number for the action you intended (or blank to cancel):\n"
               "0:\topen door between workshop and hallway\n1:\topen door between art studio and hallway\n"
               "2:\topen door between kitchen and hallway\n")
    assert first_reading(listing) == "1"
    reordered = listing.replace("0:\topen door between workshop", "9:\topen door between workshop")
    assert first_reading(reordered.replace("1:\topen door between art", "0:\topen door between art")) == "0"
    assert first_reading("Ambiguous request:") == "0"  # nothing readable: the simulator's first


def test_an_ambiguous_action_reaches_the_same_state_whatever_the_jvm_ran_before():
    fresh = SciWorldDomain(SciWorldConfig(task="find-non-living-thing", train_variations=8, valid_variations=0, test_variations=1))
    try:
        task = fresh.tasks(split="train")[7]
        env = fresh.make_env()
        env.reset(task=task)
        first = env.step(action="look at door").observation.text
        env.close()
        used = fresh.make_env()
        for earlier in fresh.tasks(split="train")[:7]:
            used.reset(task=earlier)
        used.reset(task=task)
        assert used.step(action="look at door").observation.text == first
        used.close()
    finally:
        fresh.close()
