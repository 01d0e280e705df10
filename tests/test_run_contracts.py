"""What a run checks of a plugin's answers before they reach its data: the splits it plays,
world keys, rule-based reasoning, synthetic action lists and curriculum metrics. Each broken
plugin here is a test double of a mistake a plugin author can make; the error must name the
plugin or field, and the run must stop before it stores what the mistake would spoil."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from dreamgym_core.config import PipelineConfig, resolve
from dreamgym_core.contracts import ComponentError
from dreamgym_core.errors import ConfigError, DreamGymError, PluginNotFound
from dreamgym_core.hookspecs import hookimpl
from dreamgym_core.loop import run_pipeline
from dreamgym_core.specs import ComponentSpec

from stand_ins import CountConfig, CountDomain, CountEnv, StandIns, pipeline_dict


def _env_plugin(domain_type: type) -> object:
    class EnvPlugin:
        @hookimpl
        def dreamgym_register_envs(self):
            return [ComponentSpec(name=domain_type.name, factory=domain_type, config_type=CountConfig, description="(test double)")]

    return EnvPlugin()


SYNTHETIC = {"loop": {"mode": "dreamgym"}, "experience_model": {"name": "dice-lm"}, "encoder": {"name": "hashing"}, "buffer": {"name": "exact"}}


def _run(register_plugin, tmp_path: Path, domain_type: type, *, synthetic: bool = False, **sections):
    """The stand-in pipeline on ``domain_type`` (one iteration; ``synthetic``: in DreamGym)."""
    if synthetic:
        register_plugin(pytest.importorskip("dreamgym_plugin_encoders"), "encoders")
        register_plugin(pytest.importorskip("dreamgym_plugin_exact"), "exact")
    plugins = register_plugin(StandIns(), "stand-ins")
    if domain_type is not CountDomain:
        plugins = register_plugin(_env_plugin(domain_type), "broken-env")
    data = pipeline_dict(str(tmp_path / "run"), iterations=1)
    data["env"] = {"name": domain_type.name}
    for section, values in [*(SYNTHETIC.items() if synthetic else []), *sections.items()]:
        data[section] = data.get(section, {}) | values
    return run_pipeline(resolve(msgspec.convert(data, type=PipelineConfig), plugins, where="inline.yaml"), plugins)


class SharedTestTask(CountDomain):
    name = "shared-test-task"

    def tasks(self, *, split):
        tasks = super().tasks(split=split)
        return tasks if split != "test" else [*tasks, super().tasks(split="train")[0]]


class NoValidTasks(CountDomain):
    name = "no-valid-tasks"

    def tasks(self, *, split):
        return [] if split == "valid" else super().tasks(split=split)


class TestTasksCannotStart(CountDomain):
    name = "test-tasks-cannot-start"

    def make_env(self):
        class Env(CountEnv):
            def reset(self, *, task, seed=None):
                if task.split == "test":
                    raise RuntimeError("no such game file")
                return super().reset(task=task, seed=seed)

        return Env(self.config.max_value)


class WorldKeyDict(CountDomain):
    name = "world-key-dict"

    def world_key(self, task):
        return {"id": task.id}


class AnnotatesFirstStepsOnly(CountDomain):
    name = "annotates-first-steps-only"

    def annotate(self, *, transition):
        return None if transition.done else super().annotate(transition=transition)


class ActionsAsText(CountDomain):
    name = "actions-as-text"

    def admissible_in(self, state):
        return "inc"


def test_a_test_task_that_is_also_a_train_task_is_refused_before_any_data(register_plugin, tmp_path):
    with pytest.raises(ConfigError, match=r"inline.yaml: env 'shared-test-task': 1 of its 'test' tasks are train tasks too "
                                          r"\(first: 'count-train-0'\); play on them would be scored as held out"):
        _run(register_plugin, tmp_path, SharedTestTask)
    assert not (tmp_path / "run" / "offline.jsonl").exists()


def test_a_misspelt_eval_split_is_refused_naming_its_field(register_plugin, tmp_path):
    with pytest.raises(ConfigError, match=r"inline.yaml: eval.split plays the 'tset' split, and env 'count' cannot list it: KeyError"):
        _run(register_plugin, tmp_path, CountDomain, eval={"split": "tset"})
    assert not (tmp_path / "run" / "offline.jsonl").exists()


def test_an_empty_valid_split_is_refused_when_the_warm_start_plays_it(register_plugin, tmp_path):
    with pytest.raises(ConfigError, match=r"loop.warmstart_select_episodes plays the 'valid' split, and env 'no-valid-tasks' has no tasks"):
        _run(register_plugin, tmp_path, NoValidTasks, loop={"warmstart_epochs": 1, "warmstart_select_episodes": 2})
    assert not (tmp_path / "run" / "offline.jsonl").exists()


def test_an_evaluation_whose_episodes_cannot_start_fails_the_run(register_plugin, tmp_path):
    with pytest.raises(DreamGymError, match=r"env 'test-tasks-cannot-start': none of the 6 'test' episodes of 'eval_\w+' could start"):
        _run(register_plugin, tmp_path, TestTasksCannotStart)


def test_a_world_key_that_is_not_a_str_names_the_env(register_plugin, tmp_path):
    with pytest.raises(ComponentError, match=r"env 'world-key-dict'.*: world_key\(task\) returned dict \{'id': 'count-test-0'\}, expected a str"):
        _run(register_plugin, tmp_path, WorldKeyDict)


def test_reasoning_that_is_not_a_str_names_the_env_and_is_not_stored(register_plugin, tmp_path):
    with pytest.raises(ComponentError, match=r"env 'annotates-first-steps-only'.*: annotate\(transition=...\) returned NoneType None "
                                             r"for task 'count-train-0' step 1, expected a str"):
        _run(register_plugin, tmp_path, AnnotatesFirstStepsOnly, synthetic=True, experience={"annotator": "rule"})
    assert not (tmp_path / "run" / "offline_annotated.jsonl").exists()


def test_a_synthetic_action_list_given_as_text_names_the_domain(register_plugin, tmp_path):
    with pytest.raises(ComponentError, match=r"env domain ActionsAsText: admissible_in\(state\) returned str 'inc', expected a list of str"):
        _run(register_plugin, tmp_path, ActionsAsText, synthetic=True)


class TextMetricsCurriculum:
    def __init__(self, config, *, tasks, seed=0, **unused):
        self.tasks = list(tasks)

    def next_tasks(self, *, n):
        return [self.tasks[i % len(self.tasks)] for i in range(n)]

    def observe(self, *, outcomes):
        pass

    def metrics(self):
        return {"curriculum/last": self.tasks[0].id}

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


class TextMetricsPlugin:
    @hookimpl
    def dreamgym_register_curricula(self):
        from dreamgym_core.config import Config

        return [ComponentSpec(name="text-metrics", factory=TextMetricsCurriculum, config_type=Config, description="(test double)")]


def test_curriculum_metrics_that_are_not_numbers_name_the_curriculum(register_plugin, tmp_path):
    register_plugin(TextMetricsPlugin(), "text-metrics")
    with pytest.raises(ComponentError, match=r"curriculum 'text-metrics'.*: metrics\(\) returned metric 'curriculum/last' = 'count-train-0', "
                                             r"expected a number by str name"):
        _run(register_plugin, tmp_path, CountDomain, curriculum={"name": "text-metrics"})


def test_an_installed_plugin_without_an_entry_point_is_told_so(monkeypatch):
    from importlib import metadata

    real = metadata.distribution
    monkeypatch.setattr(metadata, "distribution", lambda name: object() if name == "dreamgym-plugin-noep" else real(name))
    message = str(PluginNotFound("noep", ["textworld"]))
    assert "Distribution 'dreamgym-plugin-noep' is installed but declares no entry point 'noep' in the 'dreamgym' group" in message
    assert "declares no entry point" not in str(PluginNotFound("nosuch", ["textworld"]))
