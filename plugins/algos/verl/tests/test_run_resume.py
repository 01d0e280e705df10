"""What VerlTrainer.run does before and after verl's trainer, on CPU: the task splits checked
before any stage, a resumed run's metrics.jsonl cut back to verl's checkpoint and its report and
summary built from the whole run, summary.json written when the run ends (so ``--resume`` of a
finished run runs nothing), and this process's environment left as it was.

verl's trainer is replaced by ``_run_main_ppo`` stand-ins that log what verl's FileLogger
would (``{"step": s, "data": {...}}`` lines in ``VERL_FILE_LOGGER_PATH``); the stages before
RL, Ray and the actors by stand-ins of :func:`_start_actors` and :func:`start_ray`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import msgspec
import pytest

from dreamgym_core.config import PipelineConfig, ResolvedPipeline, convert_config
from dreamgym_core.errors import ConfigError, DataError
from dreamgym_core.plugins import Plugins
from dreamgym_core.records import Task
from dreamgym_plugin_verl import trainer as trainer_mod
from dreamgym_plugin_verl.config import VerlConfig
from dreamgym_plugin_verl.metrics import kept_rows, read_rows, rewind_rows
from dreamgym_plugin_verl.trainer import VerlTrainer, check_splits, resumed_step

ITERATIONS = 4


class Splits:
    """An env's domain with the given task ids per split; ``closed`` once closed."""

    def __init__(self, **splits: list[str]) -> None:
        self.splits, self.closed = splits, False

    def tasks(self, *, split: str) -> list[Task]:
        if split not in self.splits:
            raise KeyError(split)
        return [Task(id=i, instruction="go", domain="stub", split=split) for i in self.splits[split]]

    def close(self) -> None:
        self.closed = True


def resolved_for(run_dir: Path, *, split: str = "test", episodes: int = 2) -> ResolvedPipeline:
    data = {
        "plugins": ["verl"], "env": {"name": "stub"}, "policy": {"name": "hf", "config": {"path": "/models/m"}},
        "algo": {"name": "verl-grpo"},
        "loop": {"mode": "real", "iterations": ITERATIONS, "tasks_per_iteration": 2, "group_size": 2, "warmstart_epochs": 0,
                 "checkpoint_every": 2},
        "eval": {"episodes": episodes, "split": split}, "run_dir": str(run_dir),
    }
    pipeline = msgspec.convert(data, type=PipelineConfig)
    algo = convert_config(pipeline.algo.config, VerlConfig, "pipeline.yaml", "$.algo.config")
    return ResolvedPipeline(source="pipeline.yaml", pipeline=pipeline, components={"algo": algo, "env": None})


def plugins_with(domain: Splits, monkeypatch: pytest.MonkeyPatch) -> Plugins:
    """The verl plugin, its env being ``domain`` (no env plugin is loaded here)."""
    plugins = Plugins.for_names(["verl"])
    monkeypatch.setattr(plugins, "build", lambda kind, name, config, **_: domain)
    monkeypatch.setattr(plugins, "who", lambda kind, name, role="": f"{kind} {name!r} (plugin 'stub')")
    return plugins


# --- the splits, checked before anything starts -------------------------------------------


@pytest.mark.parametrize(
    ("splits", "split", "message"),
    [
        ({"train": ["a", "b"], "test": []}, "test", "eval.split plays the 'test' split, and env 'stub' has no tasks in it"),
        ({"train": ["a", "b"], "test": ["c"]}, "tset", "eval.split plays the 'tset' split, and env 'stub' cannot list it: KeyError"),
        ({"train": [], "test": ["c"]}, "test", "RL trains on the 'train' split, and env 'stub' has no tasks in it"),
        ({"train": ["a", "b"], "test": ["c", "b"]}, "test", "1 of its 'test' tasks are train tasks too (first: 'b')"),
        ({"train": ["a/branch"], "test": ["c"]}, "test", "'train' task id 'a/branch' holds '/branch'"),
    ],
)
def test_bad_splits_fail_in_one_line_before_ray_or_any_stage(tmp_path, monkeypatch, splits, split, message):
    """A misspelt or empty eval.split used to surface as verl's DataError inside a Ray error after
    the offline data, the experience SFT and the warm start; an eval task that is also a train
    task was scored as held out. Even with eval.episodes 0: verl reads its val file anyway."""
    domain = Splits(**splits)
    started = []
    monkeypatch.setattr(trainer_mod, "require_cuda", lambda: None)
    monkeypatch.setattr(trainer_mod, "start_ray", lambda kwargs: started.append("ray"))
    monkeypatch.setattr(trainer_mod, "_start_actors", lambda *a, **k: started.append("stages"))
    resolved = resolved_for(tmp_path, split=split, episodes=0 if "branch" in message else 2)
    with pytest.raises(ConfigError) as caught:
        VerlTrainer(resolved.components["algo"]).run(resolved=resolved, plugins=plugins_with(domain, monkeypatch), run_dir=str(tmp_path))
    assert message in str(caught.value) and str(caught.value).startswith("pipeline.yaml: ") and "\n" not in str(caught.value)
    assert started == [] and domain.closed
    assert not (tmp_path / "verl" / "val_tasks.jsonl").exists()


def test_the_split_check_lets_good_splits_and_train_as_eval_split_through():
    check_splits(resolved_for(Path("/r")), Splits(train=["a"], test=["b"]), who="env 'stub'")
    check_splits(resolved_for(Path("/r"), split="train"), Splits(train=["a"]), who="env 'stub'")  # the local loop allows it too


# --- a resumed run's rows ------------------------------------------------------------------


def validation(success: float) -> dict[str, float]:
    return {"val-aux/dreamgym/stub/success/mean@1": success}


def training(step: int) -> dict[str, float]:
    return {"timing_s/step": 1.0, "critic/score/mean": step / 10, "actor/pg_loss": step / 100}


def checkpoint(run: Path, step: int) -> None:
    """What verl leaves in trainer.default_local_dir when it saves global step ``step``."""
    (run / "checkpoints" / f"global_step_{step}").mkdir(parents=True, exist_ok=True)
    (run / "checkpoints" / "latest_checkpointed_iteration.txt").write_text(str(step))


class Killed(Exception):
    """verl's trainer stopped mid-run (a kill, a crash)."""


def stand_in_verl(lines: list[tuple[int, dict[str, float]]], *, saves: tuple[int, ...] = (), then_fail: bool = False):
    """A _run_main_ppo that logs ``lines`` as verl's FileLogger does and saves ``saves``."""

    def run_main_ppo(overrides: list[str]) -> None:
        run = Path(_override(overrides, "trainer.default_local_dir")).parent
        with (run / "verl" / "verl_metrics.jsonl").open("a") as log:
            for step, data in lines:
                log.write(json.dumps({"step": step, "data": data}) + "\n")
        for step in saves:
            checkpoint(run, step)
        if then_fail:
            raise Killed

    return run_main_ppo


def _override(overrides: list[str], key: str) -> str:
    return next(o.split("=", 1)[1].strip("'\"") for o in overrides if o.startswith(key + "="))  # a path may be quoted


def run_once(run: Path, monkeypatch: pytest.MonkeyPatch, main_ppo: Any, *, start_ray: Any = lambda kwargs: None) -> dict[str, Any]:
    domain = Splits(train=["a", "b"], test=["c", "d"])
    monkeypatch.setattr(trainer_mod, "require_cuda", lambda: None)
    monkeypatch.setattr(trainer_mod, "start_ray", start_ray)
    monkeypatch.setattr(trainer_mod, "_start_actors", lambda *a, **k: ({}, [], {"offline_transitions": 6.0}))
    monkeypatch.setattr(trainer_mod, "_run_main_ppo", main_ppo)
    monkeypatch.setattr(trainer_mod, "POLL_SECONDS", 0.01)
    resolved = resolved_for(run)
    (run / "config.sha256").write_text("abc\n")
    return VerlTrainer(resolved.components["algo"]).run(resolved=resolved, plugins=plugins_with(domain, monkeypatch), run_dir=str(run))


def stored_steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def report_rows(run: Path) -> list[str]:
    return [line for line in (run / "report.md").read_text().splitlines() if line.startswith("| ") and "policy" not in line]


def test_a_resumed_run_logs_the_steps_after_its_checkpoint_once_and_reports_the_whole_run(tmp_path, monkeypatch):
    """Killed in step 4 after a checkpoint at step 2: steps 3 and 4 (rows 2, 3) were logged, and
    verl goes on from global_step_2. They used to be appended again (rows 2, 3 twice), and
    report.md and the summary came from the second session alone (no 'before RL' row)."""
    run = tmp_path / "run"
    run.mkdir()
    first = [(0, validation(0.25))] + [(s, training(s)) for s in (1, 2, 3)]
    with pytest.raises(Killed):
        run_once(run, monkeypatch, stand_in_verl(first, saves=(2,), then_fail=True))
    assert stored_steps(run) == [-1, 0, 1, 2] and not (run / "summary.json").exists()
    # verl resumes from global_step_2: its validation at step 2, then steps 3 and 4 (the last, validated)
    second = [(2, validation(0.5)), (3, training(3)), (4, training(4) | validation(0.75))]
    summary = run_once(run, monkeypatch, stand_in_verl(second, saves=(4,)))
    assert stored_steps(run) == [-1, 0, 1, 1, 2, 3, 4]  # row 1 twice: its training and the resumed run's validation of it
    rows = read_rows(run / "metrics.jsonl")
    assert rows[0]["eval_before/success_rate"] == 0.25 and rows[4]["charts/episodic_return"] == pytest.approx(0.3)
    assert rows[3]["valid/success_rate"] == 0.5
    assert [line.split(" | [")[0] for line in report_rows(run)] == ["| after warm start (SFT) | 0.250", "| after RL | 0.750"]
    assert summary["losses/policy_loss"] == pytest.approx(0.04) and summary["eval/success_rate"] == 0.75
    assert summary["counters/offline_transitions"] == 6.0 and summary["run_dir"] == str(run.resolve())
    assert json.loads((run / "summary.json").read_text()) == summary


def test_a_finished_run_stores_its_summary_so_resume_runs_nothing(tmp_path, monkeypatch):
    """The core returns a finished run's summary.json on --resume without running it
    (loop.py run_pipeline); verl's runs had none, so --resume ran verl again, whose validation
    of the last checkpoint then made report.md's results table empty."""
    from dreamgym_core.loop import _finished

    run = tmp_path / "run"
    run.mkdir()
    lines = [(0, validation(0.25))] + [(s, training(s)) for s in (1, 2, 3)] + [(4, training(4) | validation(0.75))]
    summary = run_once(run, monkeypatch, stand_in_verl(lines, saves=(2, 4)))
    stored = json.loads((run / "summary.json").read_text())
    assert stored == summary and stored["eval/success_rate"] == 0.75 and list(stored)[0] == "run_dir"
    assert (run / "summary.json").read_text().endswith("}\n") and _finished(run)


def test_a_finished_run_without_summary_keeps_its_report_when_verl_runs_again(tmp_path, monkeypatch):
    """A run finished before summary.json was written: verl resumes at its last step, validates
    it and trains no step. The stored rows stay, and the report keeps its results."""
    run = tmp_path / "run"
    run.mkdir()
    lines = [(0, validation(0.25))] + [(s, training(s)) for s in (1, 2, 3)] + [(4, training(4) | validation(0.75))]
    run_once(run, monkeypatch, stand_in_verl(lines, saves=(2, 4)))
    (run / "summary.json").unlink()
    summary = run_once(run, monkeypatch, stand_in_verl([(4, validation(0.75))]))
    assert stored_steps(run) == [-1, 0, 1, 2, 3, 4, 3]
    assert [line.split(" | [")[0] for line in report_rows(run)] == ["| after warm start (SFT) | 0.250", "| after RL | 0.750"]
    assert summary["losses/policy_loss"] == pytest.approx(0.04) and summary["eval/success_rate"] == 0.75


def test_rows_kept_for_the_checkpoint_verl_resumes_from(tmp_path):
    rows = [{"step": s} for s in (-1, 0, 1, 2, 3, 4)]
    assert kept_rows(rows, resumed_from=0, iterations=4) == []  # afresh: verl validates before training again
    assert [r["step"] for r in kept_rows(rows, resumed_from=2, iterations=4)] == [-1, 0, 1]
    assert [r["step"] for r in kept_rows(rows, resumed_from=4, iterations=4)] == [-1, 0, 1, 2, 3, 4]
    assert resumed_step(tmp_path / "checkpoints") == 0
    checkpoint(tmp_path, 2)
    assert resumed_step(tmp_path / "checkpoints") == 2
    (tmp_path / "checkpoints" / "latest_checkpointed_iteration.txt").write_text("6")
    assert resumed_step(tmp_path / "checkpoints") == 0  # no global_step_6: verl starts afresh


def test_rewinding_drops_a_cut_last_line_and_names_a_bad_one(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": -1, "eval_before/success_rate": 0.5}\n{"step": 0, "x": 1.0}\n{"step": 1, "x"')
    assert rewind_rows(path, resumed_from=4, iterations=4) == [{"step": -1, "eval_before/success_rate": 0.5}, {"step": 0, "x": 1.0}]
    assert path.read_text().endswith('"x":1.0}\n')
    path.write_text('{"step": -1}\nnot json\n')
    with pytest.raises(DataError, match=r"metrics.jsonl:2: not a JSON metrics row"):
        rewind_rows(path, resumed_from=4, iterations=4)


# --- this process's environment -----------------------------------------------------------

LEAKED = ("VERL_FILE_LOGGER_PATH", "TENSORBOARD_DIR", "VERL_FULL_DETERMINISM", "VLLM_BATCH_INVARIANT", "PYTHONHASHSEED",
          "VERL_RL_INSIGHT_ENABLE")


def test_a_run_leaves_this_process_environment_as_it_was(tmp_path, monkeypatch):
    """The log paths, and verl's determinism variables (rollout.full_determinism), reach verl's
    workers through Ray's runtime env; they used to be set in os.environ for good, and verl's own
    run_ppo sets the determinism ones there too (restored when the run ends)."""
    for name in LEAKED:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PYTHONHASHSEED", "7")  # one the shell set: kept as it was
    given: dict[str, Any] = {}
    real_translate = trainer_mod.translate
    monkeypatch.setattr(trainer_mod, "translate", lambda *a, **k: real_translate(*a, **k) + [
        "actor_rollout_ref.rollout.full_determinism=True", "actor_rollout_ref.rollout.seed=3"])

    def verl_sets_its_variables(overrides: list[str]) -> None:  # as verl's run_ppo does before its ray.init
        os.environ |= {"VERL_FULL_DETERMINISM": "1", "VLLM_BATCH_INVARIANT": "1", "PYTHONHASHSEED": "3"}
        stand_in_verl([(0, validation(0.5))])(overrides)

    run = tmp_path / "run"
    run.mkdir()
    before = dict(os.environ)
    run_once(run, monkeypatch, verl_sets_its_variables, start_ray=given.update)
    assert dict(os.environ) == before
    env = given["runtime_env"]["env_vars"]
    assert env["VERL_FILE_LOGGER_PATH"] == str(run.resolve() / "verl" / "verl_metrics.jsonl")
    assert env["TENSORBOARD_DIR"] == str(run.resolve() / "tensorboard")
    assert env["VERL_FULL_DETERMINISM"] == "1" and env["VLLM_BATCH_INVARIANT"] == "1" and env["PYTHONHASHSEED"] == "3"
