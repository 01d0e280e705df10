"""The core loop's control flow, lifecycle hooks, run directory and resume.

Uses the stand-ins of tests/stand_ins.py (test doubles); the real-component runs are
in tests/test_end_to_end.py and the plugins' own tests.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import msgspec
import pytest

from dreamgym_core import ComponentSpec, hookimpl
from dreamgym_core.agent import render_response
from dreamgym_core.config import PipelineConfig, config_hash, resolve
from dreamgym_core.errors import ConfigError, DataError, DreamGymError
from dreamgym_core.loop import (
    Runner, changed_fields, demo_examples, evaluate_checkpoints, evaluate_run, prepare_run_dir, run_pipeline,
)
from dreamgym_core.records import Task, Trajectory, Transition
from dreamgym_core.rollout import drop_unanswered, rollout, unanswered, wilson_interval
from dreamgym_core.synthetic import storable
from dreamgym_core.testing import LifecycleRecorder, make_transitions

from conftest import open_run_buffer, stored_transitions
from stand_ins import (
    CountConfig, CountDomain, CountEnv, RecordConfig, RecordingAlgo, SavingScriptedPolicy, ScriptConfig, ScriptedPolicy, StandIns,
    pipeline_dict,
)

HERE = Path(__file__).resolve().parent


def _resolved(plugins, run_dir: Path, parts: dict | None = None, **loop):
    """The stand-in pipeline with loop settings, and ``parts`` replacing its top-level sections."""
    pipeline = msgspec.convert(pipeline_dict(str(run_dir), **loop) | (parts or {}), type=PipelineConfig)
    return resolve(pipeline, plugins, where="inline.yaml")


def test_lifecycle_hook_order(register_plugin, tmp_path):
    register_plugin(StandIns(), "stand-ins")
    spy = LifecycleRecorder()
    plugins = register_plugin(spy, "spy")
    summary = run_pipeline(_resolved(plugins, tmp_path / "run", iterations=2), plugins)
    assert spy.calls == [
        "configure", "run_started",
        "before_iteration:0", "after_iteration:0",
        "before_iteration:1", "after_iteration:1",
        "run_finished",
    ]
    assert all("losses/policy_loss" in metrics for metrics in spy.iteration_metrics.values())
    assert 0.0 <= summary["eval/success_rate"] <= 1.0 and spy.final_metrics["eval/success_rate"] == summary["eval/success_rate"]


class BuildOrder(LifecycleRecorder):
    """The lifecycle spy, also recording when its own env is built."""

    @hookimpl
    def dreamgym_register_envs(self):
        def build(config):
            self.calls.append("env built")
            return CountDomain(config)

        return [ComponentSpec(name="count-spied", factory=build, config_type=CountConfig, description="Counting game, spied.")]


def test_progress_names_only_the_stages_a_pipeline_has(register_plugin, tmp_path, capsys):
    # A pipeline without buffer or experience model said "seeding the buffer with N real
    # transitions" and "training the experience model (joint SFT)", then "experience model: -".
    register_plugin(pytest.importorskip("dreamgym_plugin_encoders"), "encoders")
    register_plugin(pytest.importorskip("dreamgym_plugin_exact"), "exact")
    plugins = register_plugin(StandIns(), "stand-ins")
    run_pipeline(_resolved(plugins, tmp_path / "real", iterations=1), plugins)
    err = capsys.readouterr().err
    assert "collecting offline real data" in err
    assert "seeding the buffer" not in err and "experience model" not in err
    parts = {"experience_model": {"name": "dice-lm"}, "encoder": {"name": "hashing"}, "buffer": {"name": "exact"}}
    run_pipeline(_resolved(plugins, tmp_path / "dreamgym", parts, iterations=1, mode="dreamgym"), plugins)
    err = capsys.readouterr().err
    assert "seeding the buffer with" in err and "training the experience model (joint SFT)" in err


def test_a_run_without_progress_prints_no_progress_line_but_its_warnings(register_plugin, tmp_path, capfd, caplog):
    # A script or notebook had no way to silence the "[dreamgym   1.2s] ..." lines; leaving them
    # out of one run leaves the next run in the same process its own.
    plugins = register_plugin(StandIns(), "stand-ins")
    greedy = {"eval": {"episodes": 9}}  # more greedy games than the 6 test tasks: a warning
    quiet = run_pipeline(_resolved(plugins, tmp_path / "quiet", greedy, iterations=1), plugins, progress=False)
    assert "[dreamgym" not in capfd.readouterr().err
    # said once, though the untrained, the warm-started and the final policy were all evaluated
    assert caplog.text.count("eval: 9 episodes requested on 6 test tasks with greedy play; using 6") == 1
    assert quiet["eval/episodes"] == 6.0
    run_pipeline(_resolved(plugins, tmp_path / "loud", greedy, iterations=1), plugins)
    assert "] collecting offline real data" in capfd.readouterr().err


class OwnLoop:
    """Algorithms that run the whole pipeline themselves, as verl's trainer does; ``asked``
    records the progress each was given (``older``: one written before the option)."""

    def __init__(self):
        self.asked: list = []

    @hookimpl
    def dreamgym_register_algos(self):
        spy = self

        class Trainer:
            runs_own_loop = True

            def __init__(self, config, **context):
                pass

            def run(self, *, resolved, plugins, run_dir, progress=True):
                spy.asked.append(progress)
                return {"run_dir": run_dir}

        class Older(Trainer):
            def run(self, *, resolved, plugins, run_dir):
                spy.asked.append("older")
                return {"run_dir": run_dir}

        return [
            ComponentSpec(name="own-loop", factory=Trainer, config_type=CountConfig, description="Runs its own loop."),
            ComponentSpec(name="own-loop-older", factory=Older, config_type=CountConfig, description="Runs its own loop."),
        ]


def test_a_backend_that_runs_its_own_loop_is_told_to_leave_out_its_progress(register_plugin, tmp_path):
    register_plugin(StandIns(), "stand-ins")
    spy = OwnLoop()
    plugins = register_plugin(spy, "own-loop")
    for name, progress in [("own-loop", False), ("own-loop", True), ("own-loop-older", False)]:
        run_pipeline(_resolved(plugins, tmp_path / f"{name}-{progress}", {"algo": {"name": name}}), plugins, progress=progress)
    assert spy.asked == [False, True, "older"]


def test_configure_reaches_plugins_before_any_component_is_built(register_plugin, tmp_path):
    register_plugin(StandIns(), "stand-ins")
    spy = BuildOrder()
    plugins = register_plugin(spy, "build-order")
    run_pipeline(_resolved(plugins, tmp_path / "run", {"env": {"name": "count-spied"}}, iterations=1), plugins)
    assert spy.calls[:2] == ["configure", "env built"]


# Each hook has a test named test_hook_<name> (checked by test_meta.py).
def test_hook_dreamgym_configure(register_plugin, tmp_path):
    test_lifecycle_hook_order(register_plugin, tmp_path)


test_hook_dreamgym_run_started = test_hook_dreamgym_configure  # one spy run covers all five
test_hook_dreamgym_before_iteration = test_hook_dreamgym_configure
test_hook_dreamgym_after_iteration = test_hook_dreamgym_configure
test_hook_dreamgym_run_finished = test_hook_dreamgym_configure


def test_run_dir_has_config_hash_metrics_report_and_plots(register_plugin, tmp_path):
    plugins = register_plugin(StandIns(), "stand-ins")
    resolved = _resolved(plugins, tmp_path / "run")
    run_pipeline(resolved, plugins)
    run = tmp_path / "run"
    config = json.loads((run / "config.json").read_text())
    assert config["algo"]["config"] == {"lr": 0.1}  # defaults filled in
    assert len((run / "config.sha256").read_text().strip()) == 64
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [-1, 0, 1, 2, 3, 4]
    assert rows[-1]["counters/real_transitions"] > 0
    assert "eval/success_rate" in rows[-1]
    assert (run / "report.md").read_text().count("after RL") == 1
    assert (run / "success_vs_iteration.png").stat().st_size > 1000
    assert (run / "success_vs_real_transitions.png").exists()
    versions = json.loads((run / "versions.json").read_text())
    assert versions["packages"]["msgspec"] == msgspec.__version__
    assert f"msgspec {msgspec.__version__}" in (run / "report.md").read_text().split("## Software")[1]


def test_rerun_without_resume_refuses_to_overwrite(register_plugin, tmp_path):
    plugins = register_plugin(StandIns(), "stand-ins")
    run_pipeline(_resolved(plugins, tmp_path / "run", iterations=1), plugins)
    with pytest.raises(ConfigError, match="already holds a run"):
        run_pipeline(_resolved(plugins, tmp_path / "run", iterations=1), plugins)


class SecondRun:
    """Starts a second run in the same directory while the first one plays its first iteration."""

    def __init__(self, start):
        self.start, self.errors = start, []

    @hookimpl
    def dreamgym_after_iteration(self, iteration, metrics):
        try:
            self.start()
        except ConfigError as exc:
            self.errors.append(str(exc))


@pytest.mark.parametrize("resume", [False, True])
def test_a_second_run_in_a_running_run_directory_is_refused(register_plugin, tmp_path, resume):
    # Two processes in one run directory would write the same buffer segments, checkpoints
    # and metrics over each other (a scheduler restarting a job that is still running).
    register_plugin(StandIns(), "stand-ins")
    run_dir = tmp_path / "run"
    second = SecondRun(lambda: run_pipeline(_resolved(plugins, run_dir, iterations=2), plugins, resume=resume))
    plugins = register_plugin(second, "second-run")
    run_pipeline(_resolved(plugins, run_dir, iterations=2), plugins)
    assert len(second.errors) == 2 and "another dreamgym process is running there" in second.errors[0]
    assert [r["step"] for r in _rows(run_dir)] == [-1, 0, 1, 2]
    second.start = lambda: None
    run_pipeline(_resolved(plugins, run_dir, iterations=2), plugins, resume=True)  # free once the first has ended


def test_state_variation_on_a_domain_that_cannot_vary_states_fails_before_any_rollout(register_plugin, tmp_path):
    plugins = register_plugin(StandIns(), "stand-ins")
    with pytest.raises(ConfigError, match="loop.state_variation needs an env whose domain has vary_state"):
        run_pipeline(_resolved(plugins, tmp_path / "run", iterations=1, state_variation=0.5), plugins)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_check_transitions_on_a_domain_that_cannot_judge_answers_fails_before_any_rollout(register_plugin, tmp_path):
    plugins = register_plugin(StandIns(), "stand-ins")
    with pytest.raises(ConfigError, match="inline.yaml: loop.check_transitions needs an env whose domain has implausible; env 'count' has none"):
        run_pipeline(_resolved(plugins, tmp_path / "run", iterations=1, check_transitions=True), plugins)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_correcting_implausible_answers_on_a_domain_that_cannot_correct_fails_before_any_rollout(register_plugin, tmp_path):
    class JudgingDomain(CountDomain):
        def implausible(self, *, state, action, next_state):
            return ""

    class Judging:
        @hookimpl
        def dreamgym_register_envs(self):
            return [ComponentSpec(name="judging", factory=JudgingDomain, config_type=CountConfig, description="Judges answers (test double).")]

    register_plugin(StandIns(), "stand-ins")
    plugins = register_plugin(Judging(), "judging")
    parts = {"env": {"name": "judging"}}
    resolved = _resolved(plugins, tmp_path / "run", parts, iterations=1, check_transitions=True, implausible_answers="correct")
    with pytest.raises(ConfigError, match="loop.implausible_answers=correct needs an env whose domain has correct; env 'judging' has none"):
        run_pipeline(resolved, plugins)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.parametrize("where", ["mode", "synthetic_agreement"])
def test_synthetic_play_without_a_start_state_fails_before_any_rollout(register_plugin, tmp_path, monkeypatch, where):
    # Without the guard every synthetic episode ended as an environment error, and the run
    # finished with exit 0 having trained on nothing.
    register_plugin(pytest.importorskip("dreamgym_plugin_encoders"), "encoders")
    register_plugin(pytest.importorskip("dreamgym_plugin_exact"), "exact")
    plugins = register_plugin(StandIns(), "stand-ins")
    monkeypatch.delattr(CountDomain, "initial_observation")
    parts = {"experience_model": {"name": "dice-lm"}, "encoder": {"name": "hashing"}, "buffer": {"name": "exact"}}
    if where == "mode":
        resolved = _resolved(plugins, tmp_path / "run", parts, iterations=1, mode="dreamgym")
        message = r"loop.mode='dreamgym' plays 'train' tasks .* task 'count-train-0' has no payload\['initial_state'\]"
    else:
        parts["eval"] = {"episodes": 2, "synthetic_agreement": True}
        resolved = _resolved(plugins, tmp_path / "run", parts, iterations=1)
        message = r"eval.synthetic_agreement plays 'test' tasks .* task 'count-test-0' has no payload\['initial_state'\]"
    with pytest.raises(ConfigError, match=message + r" string \(docs/experience-format.md\)"):
        run_pipeline(resolved, plugins)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    # real play needs no start state
    run_pipeline(_resolved(plugins, tmp_path / "real", parts | {"eval": {"episodes": 2}}, iterations=1), plugins)


def test_keep_checkpoints_deletes_all_but_the_newest_and_the_run_still_resumes(register_plugin, tmp_path):
    plugins = register_plugin(StandIns(), "stand-ins")
    run_pipeline(_resolved(plugins, tmp_path / "all", iterations=3), plugins)
    assert len(list((tmp_path / "all" / "checkpoints").glob("it-*"))) == 4  # before RL and after each iteration
    run_pipeline(_resolved(plugins, tmp_path / "one", iterations=3, keep_checkpoints=1), plugins)
    kept = [p.name for p in (tmp_path / "one" / "checkpoints").glob("it-*")]
    assert kept == [(tmp_path / "one" / "checkpoints" / "latest").read_text()]
    _unfinished(tmp_path / "one")
    summary = run_pipeline(_resolved(plugins, tmp_path / "one", iterations=3, keep_checkpoints=1), plugins, resume=True)
    assert summary["counters/iteration"] == 3  # resumed from the one checkpoint left
    # no iteration was played again, and the final evaluation is logged once, not twice
    assert [r["step"] for r in _rows(tmp_path / "one")] == [-1, 0, 1, 2, 3]


def test_resuming_a_finished_run_says_so_and_writes_nothing(register_plugin, tmp_path, capsys):
    plugins = register_plugin(StandIns(), "stand-ins")
    run_dir = tmp_path / "run"
    summary = run_pipeline(_resolved(plugins, run_dir, iterations=2), plugins)
    capsys.readouterr()
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run_dir.rglob("*") if p.is_file()}
    again = run_pipeline(_resolved(plugins, run_dir, iterations=2), plugins, resume=True)
    assert again == summary  # the run's own summary, not a second evaluation's
    said = capsys.readouterr().err.splitlines()
    assert said == [f"[dreamgym] {run_dir}: the run is already complete (summary.json); nothing to resume. "
                    "'dreamgym eval' evaluates its policy again"]
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run_dir.rglob("*") if p.is_file()} == before
    assert json.loads((run_dir / "summary.json").read_text()) == summary
    # moved elsewhere, it names where it is now
    shutil.move(run_dir, tmp_path / "moved")
    moved = run_pipeline(_resolved(plugins, tmp_path / "moved", iterations=2), plugins, resume=True)
    assert moved == summary | {"run_dir": str(tmp_path / "moved")}
    (tmp_path / "moved" / "summary.json").write_text("{")
    with pytest.raises(DataError, match=r"moved/summary.json: unreadable run summary .*; delete it to play the run's final evaluation again"):
        run_pipeline(_resolved(plugins, tmp_path / "moved", iterations=2), plugins, resume=True)


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _unfinished(run_dir: Path) -> None:
    """A finished run as a kill during its final evaluation would have left it: without the
    summary written last, so that --resume continues it from its newest checkpoint."""
    (run_dir / "summary.json").unlink()


def test_resume_rolls_the_buffer_back_to_the_checkpoint_and_rewinds_the_metrics(register_plugin, tmp_path):
    # What a run killed between two checkpoints leaves behind: transitions the buffer had already
    # written and metric rows of iterations that will be played again.
    register_plugin(pytest.importorskip("dreamgym_plugin_encoders"), "encoders")
    register_plugin(pytest.importorskip("dreamgym_plugin_exact"), "exact")
    plugins = register_plugin(StandIns(), "stand-ins")
    run_dir = tmp_path / "run"

    def resolved():
        return _resolved(plugins, run_dir, {"encoder": {"name": "hashing"}, "buffer": {"name": "exact"}}, iterations=2)

    run_pipeline(resolved(), plugins)
    stored, rows = stored_transitions(run_dir), _rows(run_dir)
    assert stored and [r["step"] for r in rows] == [-1, 0, 1, 2]
    stray = [msgspec.structs.replace(t, state=f"stray {t.state}", source="real") for t in make_transitions(5)]
    with open_run_buffer(run_dir) as buffer:
        buffer.add(transitions=stray)
    with (run_dir / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"step": 2, "rollout/success_rate": 0.5}) + "\n")
    evaluate_run(resolved(), plugins, split="test", episodes=2)  # reads the checkpoint, leaves the buffer be
    assert len(stored_transitions(run_dir)) == len(stored) + 5
    _unfinished(run_dir)  # the final evaluation is played again
    run_pipeline(resolved(), plugins, resume=True)
    assert stored_transitions(run_dir) == stored
    assert _rows(run_dir)[:-1] == rows[:-1] and [r["step"] for r in _rows(run_dir)] == [-1, 0, 1, 2]


def test_changed_fields_lists_the_dotted_paths_that_differ():
    old = {"loop": {"iterations": 1, "mode": "real"}, "seed": 0, "plugins": ["a"]}
    new = {"loop": {"iterations": 3, "mode": "real", "top_k": 2}, "seed": 0, "plugins": ["a", "b"]}
    assert changed_fields(old, new) == ["loop.iterations", "loop.top_k", "plugins"]
    assert changed_fields(old, old) == []


def test_resume_with_a_different_config_is_refused(register_plugin, tmp_path):
    plugins = register_plugin(StandIns(), "stand-ins")
    run_pipeline(_resolved(plugins, tmp_path / "run", iterations=1), plugins)
    with pytest.raises(ConfigError, match=r"config differs .*; differs at loop.iterations\); resume with the same"):
        prepare_run_dir(_resolved(plugins, tmp_path / "run", iterations=3), resume=True)


KILLER = textwrap.dedent(
    """
    import json, os, signal, sys
    sys.path.insert(0, {here!r})
    import msgspec
    from dreamgym_core import hookimpl
    from dreamgym_core.config import PipelineConfig, resolve
    from dreamgym_core.loop import run_pipeline
    from dreamgym_core.plugins import Plugins, get_plugin_manager
    from stand_ins import StandIns, pipeline_dict

    class Killer:
        @hookimpl
        def dreamgym_after_iteration(self, iteration, metrics):
            if iteration == int(sys.argv[2]):
                os.kill(os.getpid(), signal.SIGKILL)

    pm = get_plugin_manager([])
    pm.register(StandIns(), name="stand-ins")
    pm.register(Killer(), name="killer")
    plugins = Plugins(pm)
    data = pipeline_dict(sys.argv[1], iterations=5)
    for section, values in json.loads(sys.argv[3]).items():  # e.g. {{"eval": {{"valid_every": 1}}}}
        data[section] |= values
    pipeline = msgspec.convert(data, type=PipelineConfig)
    resume = len(sys.argv) > 4
    print(msgspec.json.encode(run_pipeline(resolve(pipeline, plugins, "inline.yaml"), plugins, resume=resume)).decode())
    """
)


def _whole_and_resumed(tmp_path: Path, kill_at: int, parts: dict | None = None, *, move_to: str = "") -> tuple[dict, dict]:
    """Final summaries of an uninterrupted run and of one SIGKILLed after iteration index
    ``kill_at`` and resumed (``parts``: sections merged into the stand-in pipeline; ``move_to``:
    the killed run's directory is moved there before it resumes)."""
    script = tmp_path / "killer.py"
    script.write_text(KILLER.format(here=str(HERE)))

    def run(run_dir, kill, *resume):
        args = [sys.executable, str(script), str(run_dir), str(kill), json.dumps(parts or {}), *resume]
        return subprocess.run(args, capture_output=True, text=True)

    whole = run(tmp_path / "whole", -1)
    assert whole.returncode == 0, whole.stderr
    killed = run(tmp_path / "killed", kill_at)
    assert killed.returncode == -signal.SIGKILL
    if move_to:
        shutil.move(tmp_path / "killed", tmp_path / move_to)
    resumed = run(tmp_path / (move_to or "killed"), -1, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    return json.loads(whole.stdout.splitlines()[-1]), json.loads(resumed.stdout.splitlines()[-1])


def test_killed_and_resumed_run_matches_uninterrupted(tmp_path):
    whole, resumed = _whole_and_resumed(tmp_path, 2)
    assert resumed | {"run_dir": ""} == whole | {"run_dir": ""}

    def rows(run_dir):
        return [
            {k: v for k, v in json.loads(line).items() if not k.startswith("perf/")}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()
        ]

    # The killed run logged iterations 0..2 before dying; resumption continues at 3.
    resumed_rows = rows(tmp_path / "killed")
    assert [r["step"] for r in resumed_rows] == [-1, 0, 1, 2, 3, 4, 5]
    assert resumed_rows == rows(tmp_path / "whole")


def test_a_moved_run_directory_resumes_where_it_stopped(tmp_path):
    # Where a run lives is not part of its config's identity: runs are copied between disks.
    whole, resumed = _whole_and_resumed(tmp_path, 2, move_to="elsewhere")
    assert resumed | {"run_dir": ""} == whole | {"run_dir": ""}
    assert resumed["run_dir"] == str(tmp_path / "elsewhere")
    assert json.loads((tmp_path / "elsewhere" / "config.json").read_text())["run_dir"] == str(tmp_path / "elsewhere")


def _as_stored_by_an_older_version(run_dir: Path, dropped: tuple[str, str], *, with_run_dir: bool = False) -> None:
    """Rewrite a run's stored config as a version without option ``dropped`` would have."""
    stored = json.loads((run_dir / "config.json").read_text())
    del stored[dropped[0]][dropped[1]]
    (run_dir / "config.json").write_text(json.dumps(stored))
    (run_dir / "config.sha256").write_text(config_hash(stored, with_run_dir=with_run_dir) + "\n")


def test_a_run_stored_before_an_option_existed_resumes_with_its_default(register_plugin, tmp_path, caplog):
    plugins = register_plugin(StandIns(), "stand-ins")
    run_pipeline(_resolved(plugins, tmp_path / "run", iterations=1), plugins)
    _unfinished(tmp_path / "run")
    _as_stored_by_an_older_version(tmp_path / "run", ("loop", "checkpoint_every"))
    with caplog.at_level("WARNING", logger="dreamgym_core.loop"):
        prepare_run_dir(_resolved(plugins, tmp_path / "run", iterations=1), resume=True)
    assert "options new since this run started take their defaults: loop.checkpoint_every" in caplog.text
    assert "checkpoint_every" in json.loads((tmp_path / "run" / "config.json").read_text())["loop"]
    # a changed value next to the new option is still refused, naming only the changed value
    _as_stored_by_an_older_version(tmp_path / "run", ("loop", "checkpoint_every"))
    with pytest.raises(ConfigError, match=r"; differs at loop.iterations\); resume with the same"):
        prepare_run_dir(_resolved(plugins, tmp_path / "run", iterations=2), resume=True)


@pytest.mark.parametrize("damaged", ["{}", "[1, 2]", '{"loop": {"iterations": 1}}'])
def test_a_damaged_config_record_is_no_licence_to_resume_with_another_config(register_plugin, tmp_path, damaged):
    # Every field of a config.json that is {} would count as "new since the run started".
    plugins = register_plugin(StandIns(), "stand-ins")
    run_pipeline(_resolved(plugins, tmp_path / "run", iterations=1), plugins)
    (tmp_path / "run" / "config.json").write_text(damaged)
    digest = (tmp_path / "run" / "config.sha256").read_text()
    with pytest.raises(ConfigError, match=r"config differs from the one in .*; resume with the same"):
        prepare_run_dir(_resolved(plugins, tmp_path / "run", iterations=3), resume=True)
    with pytest.raises(DataError, match=r"config.json: unreadable, so eval cannot check"):
        evaluate_run(_resolved(plugins, tmp_path / "run", iterations=3), plugins, split=None, episodes=1)
    assert (tmp_path / "run" / "config.json").read_text() == damaged  # the record stays for a person to mend
    assert (tmp_path / "run" / "config.sha256").read_text() == digest


def test_a_run_whose_stored_hash_covers_its_run_dir_still_resumes(register_plugin, tmp_path, caplog):
    plugins = register_plugin(StandIns(), "stand-ins")
    run_pipeline(_resolved(plugins, tmp_path / "run", iterations=1), plugins)
    _unfinished(tmp_path / "run")
    stored = json.loads((tmp_path / "run" / "config.json").read_text())
    (tmp_path / "run" / "config.sha256").write_text(config_hash(stored, with_run_dir=True) + "\n")
    with caplog.at_level("WARNING", logger="dreamgym_core.loop"):
        prepare_run_dir(_resolved(plugins, tmp_path / "run", iterations=1), resume=True)
    assert "options new" not in caplog.text
    assert (tmp_path / "run" / "config.sha256").read_text().strip() == config_hash(stored)


def test_killed_between_checkpoints_resumes_to_the_same_kept_policy(tmp_path):
    # Checkpoints every second iteration; killed after iteration 3 (index 2), which was scored
    # on validation and perhaps snapshotted, so the resumed run plays iteration 3 again.
    parts = {
        "policy": {"name": "scripted-saving"}, "loop": {"checkpoint_every": 2},
        "eval": {"valid_every": 1, "valid_episodes": 6, "keep": "best-valid"},
    }
    whole, resumed = _whole_and_resumed(tmp_path, 2, parts)
    assert resumed | {"run_dir": ""} == whole | {"run_dir": ""}
    kept = int(resumed["eval/policy_iteration"])
    assert [p.name for p in (tmp_path / "killed" / "policy_best").iterdir()] == [f"it-{kept:05d}"]


def test_killed_after_the_checkpoint_before_rl_resumes_without_redoing_that_stage(tmp_path):
    # With checkpoints every second iteration, a kill after iteration 0 leaves it-00000 (taken
    # after the stages before RL) as the latest: the resumed run must start RL there.
    whole, resumed = _whole_and_resumed(tmp_path, 0, {"loop": {"checkpoint_every": 2}})
    assert (tmp_path / "killed" / "checkpoints" / "it-00000").is_dir()
    assert resumed | {"run_dir": ""} == whole | {"run_dir": ""}
    assert [r["step"] for r in _rows(tmp_path / "killed")] == [-1, 0, 1, 2, 3, 4, 5]


def _exact_buffer_plugins(register_plugin):
    register_plugin(pytest.importorskip("dreamgym_plugin_encoders"), "encoders")
    register_plugin(pytest.importorskip("dreamgym_plugin_exact"), "exact")
    return register_plugin(StandIns(), "stand-ins")


def _exact_buffer_pipeline(plugins, run_dir: Path, **buffer_config):
    parts = {"encoder": {"name": "hashing"}, "buffer": {"name": "exact", "config": buffer_config}}
    return _resolved(plugins, run_dir, parts, iterations=1)


def _exact_buffer_run(register_plugin, run_dir: Path):
    plugins = _exact_buffer_plugins(register_plugin)
    return plugins, _exact_buffer_pipeline(plugins, run_dir)


def test_resume_without_the_latest_pointer_or_a_checkpoint_that_reads_refuses_and_keeps_every_file(register_plugin, tmp_path):
    # Without the pointer a resume continues from the newest checkpoint that reads (tests/test_checkpoint.py).
    plugins, resolved = _exact_buffer_run(register_plugin, tmp_path / "run")
    run_pipeline(resolved, plugins)
    _unfinished(tmp_path / "run")
    (tmp_path / "run" / "checkpoints" / "latest").unlink()
    for state in (tmp_path / "run" / "checkpoints").glob("it-*/state.json"):
        state.write_text("{")
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    with pytest.raises(DataError, match=r"checkpoints/latest: missing, but .* holds it-00000, it-00001"):
        run_pipeline(resolved, plugins, resume=True)
    assert {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("pointer", [b"\xff\xfe", b"", b"it-00009\n", b"../../elsewhere\n"])
def test_resume_with_a_corrupt_latest_pointer_refuses_and_keeps_every_file(register_plugin, tmp_path, pointer):
    plugins, resolved = _exact_buffer_run(register_plugin, tmp_path / "run")
    run_pipeline(resolved, plugins)
    _unfinished(tmp_path / "run")
    (tmp_path / "run" / "checkpoints" / "latest").write_bytes(pointer)
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    with pytest.raises(DataError, match=r"checkpoints/latest: names .*, not a checkpoint of .* \(it holds it-00000, it-00001\)"):
        run_pipeline(resolved, plugins, resume=True)
    assert {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("part", ["experience_model", "policy_init"])
def test_resume_without_the_trained_parts_the_checkpoints_need_refuses_and_keeps_every_file(register_plugin, tmp_path, part):
    # Without the guard a resume went on silently from an untrained experience model or policy.
    register_plugin(pytest.importorskip("dreamgym_plugin_encoders"), "encoders")
    register_plugin(pytest.importorskip("dreamgym_plugin_exact"), "exact")
    plugins = register_plugin(StandIns(), "stand-ins")
    parts = {"policy": {"name": "scripted-saving"}, "experience_model": {"name": "dice-lm"},
             "encoder": {"name": "hashing"}, "buffer": {"name": "exact"}}  # fmt: skip
    resolved = _resolved(plugins, tmp_path / "run", parts, iterations=2, mode="dreamgym")
    run_pipeline(resolved, plugins)
    _unfinished(tmp_path / "run")
    (tmp_path / "run" / part / "done").unlink()
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    with pytest.raises(DataError, match=rf"run/{part}: the .* is missing \(no 'done' marker\), and checkpoint it-00002"):
        run_pipeline(resolved, plugins, resume=True)
    assert {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()} == before


def test_a_resume_that_reuses_the_trained_stages_reports_their_training_metrics(register_plugin, tmp_path):
    # Killed after the experience model and the warm start were saved but before the first
    # checkpoint: the resumed run reloads both, and its row before RL used to lose their metrics.
    register_plugin(pytest.importorskip("dreamgym_plugin_encoders"), "encoders")
    register_plugin(pytest.importorskip("dreamgym_plugin_exact"), "exact")
    plugins = register_plugin(StandIns(), "stand-ins")
    parts = {"policy": {"name": "scripted-saving"}, "experience_model": {"name": "dice-lm"},
             "encoder": {"name": "hashing"}, "buffer": {"name": "exact", "config": {"dedup": "none"}}}  # fmt: skip
    resolved = _resolved(plugins, tmp_path / "run", parts, iterations=1, mode="dreamgym", warmstart_epochs=1)
    run_pipeline(resolved, plugins)
    whole = _rows(tmp_path / "run")[0]
    for name in ("checkpoints", "buffer"):
        shutil.rmtree(tmp_path / "run" / name)
    (tmp_path / "run" / "metrics.jsonl").unlink()
    run_pipeline(resolved, plugins, resume=True)
    resumed = _rows(tmp_path / "run")[0]
    trained = [k for k in whole if k.startswith(("experience/", "warmstart/"))]
    assert any(k.startswith("experience/") for k in trained) and any(k.startswith("warmstart/") for k in trained)
    assert {k: resumed.get(k) for k in trained} == {k: whole[k] for k in trained}


def test_resume_before_the_first_checkpoint_does_not_store_the_offline_data_twice(register_plugin, tmp_path):
    # A buffer that keeps duplicates, and a run killed before its first checkpoint: the
    # offline transitions it stored are already there when the resumed run seeds the buffer.
    plugins = _exact_buffer_plugins(register_plugin)
    resolved = _exact_buffer_pipeline(plugins, tmp_path / "run", dedup="none")
    run_pipeline(_exact_buffer_pipeline(plugins, tmp_path / "whole", dedup="none"), plugins)
    runner = Runner(resolved, plugins, prepare_run_dir(resolved, resume=False))
    runner._seed_buffer([t for traj in runner._collect_offline() for t in traj.transitions])
    runner.buffer.close()
    run_pipeline(resolved, plugins, resume=True)
    assert stored_transitions(tmp_path / "run") == stored_transitions(tmp_path / "whole")


def test_a_fresh_run_in_a_directory_of_another_config_is_refused(register_plugin, tmp_path):
    # A run killed before its first checkpoint leaves its data and config behind; starting
    # another config there would reuse that data and overwrite the record of the config.
    plugins = register_plugin(StandIns(), "stand-ins")
    run_pipeline(_resolved(plugins, tmp_path / "run", iterations=1), plugins)
    shutil.rmtree(tmp_path / "run" / "checkpoints")
    config = (tmp_path / "run" / "config.json").read_bytes()
    with pytest.raises(ConfigError, match="config differs from the one in .*that directory holds another run"):
        run_pipeline(_resolved(plugins, tmp_path / "run", iterations=2), plugins)
    assert (tmp_path / "run" / "config.json").read_bytes() == config
    run_pipeline(_resolved(plugins, tmp_path / "run", iterations=1), plugins)  # the same config may start over


def test_a_run_that_stored_nothing_but_its_config_leaves_the_directory_to_the_corrected_run(register_plugin, tmp_path):
    # A run that fails on bad input while building its components has written only its config record.
    plugins = register_plugin(StandIns(), "stand-ins")
    prepare_run_dir(_resolved(plugins, tmp_path / "run", iterations=1), resume=False)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.json", "config.sha256", "versions.json"]
    summary = run_pipeline(_resolved(plugins, tmp_path / "run", iterations=2), plugins)
    assert summary["counters/iteration"] == 2.0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["loop"]["iterations"] == 2


def test_resume_where_no_run_was_started_is_refused_and_creates_nothing(register_plugin, tmp_path):
    plugins = register_plugin(StandIns(), "stand-ins")
    with pytest.raises(ConfigError, match=r"run_dir .*typo: no run to resume there"):
        run_pipeline(_resolved(plugins, tmp_path / "typo", iterations=1), plugins, resume=True)
    assert not (tmp_path / "typo").exists()


@pytest.mark.parametrize("loggers", [[], [{"name": "jsonl"}, {"name": "tensorboard"}]])
def test_a_run_that_failed_before_logging_leaves_the_directory_to_the_corrected_run(register_plugin, tmp_path, loggers):
    # The sinks used to create their files when built, so a run that failed on bad input
    # left an empty metrics.jsonl that made the directory look like another run's output.
    plugins = register_plugin(StandIns(), "stand-ins")
    bad = {"data": {"path": str(tmp_path / "no-such.jsonl")}, "loggers": loggers}
    with pytest.raises(DataError, match="no-such.jsonl"):
        run_pipeline(_resolved(plugins, tmp_path / "run", bad, iterations=1), plugins)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.json", "config.sha256", "versions.json"]
    summary = run_pipeline(_resolved(plugins, tmp_path / "run", {"loggers": loggers}, iterations=1), plugins)
    assert summary["counters/iteration"] == 1.0


@pytest.mark.parametrize(
    "loggers",
    [
        [{"name": "jsonl"}, {"name": "jsonl"}],
        [{"name": "jsonl", "config": {"filename": "m.jsonl"}}, {"name": "jsonl", "config": {"filename": "m.jsonl"}}],
        [{"name": "tensorboard"}, {"name": "tensorboard", "config": {"subdir": "tensorboard"}}],
    ],
)
def test_two_loggers_writing_one_place_are_refused_before_the_run(register_plugin, tmp_path, loggers):
    """Two jsonl entries wrote every metrics row twice into one file, with exit 0."""
    plugins = register_plugin(StandIns(), "stand-ins")
    with pytest.raises(ConfigError, match=r"loggers.0 and loggers.1 both write .*run/"):
        run_pipeline(_resolved(plugins, tmp_path / "run", {"loggers": loggers}, iterations=1), plugins)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    two = [{"name": "jsonl"}, {"name": "jsonl", "config": {"filename": "copy.jsonl"}}]
    run_pipeline(_resolved(plugins, tmp_path / "other", {"loggers": two}, iterations=1), plugins)
    assert (tmp_path / "other" / "metrics.jsonl").read_text() == (tmp_path / "other" / "copy.jsonl").read_text()


def test_resume_without_a_stored_config_hash_is_refused(register_plugin, tmp_path):
    plugins = register_plugin(StandIns(), "stand-ins")
    run_pipeline(_resolved(plugins, tmp_path / "run", iterations=1), plugins)
    (tmp_path / "run" / "config.sha256").write_text("")
    with pytest.raises(DataError, match=r"config.sha256: empty, so --resume cannot check"):
        run_pipeline(_resolved(plugins, tmp_path / "run", iterations=3), plugins, resume=True)
    (tmp_path / "run" / "config.sha256").write_bytes(b"\xff\xfe junk")
    with pytest.raises(DataError, match=r"config.sha256: damaged \(not text\), so --resume cannot check"):
        run_pipeline(_resolved(plugins, tmp_path / "run", iterations=3), plugins, resume=True)
    (tmp_path / "run" / "config.sha256").unlink()
    with pytest.raises(DataError, match=r"config.sha256: missing, so --resume cannot check"):
        run_pipeline(_resolved(plugins, tmp_path / "run", iterations=3), plugins, resume=True)


def test_a_damaged_digest_beside_the_same_config_is_named_in_a_warning(register_plugin, tmp_path, caplog):
    plugins = register_plugin(StandIns(), "stand-ins")
    run_pipeline(_resolved(plugins, tmp_path / "run", iterations=1), plugins)
    digest = (tmp_path / "run" / "config.sha256").read_text()
    (tmp_path / "run" / "config.sha256").write_text(digest[:20] + "\n")  # cut short
    with caplog.at_level("WARNING"):
        run_pipeline(_resolved(plugins, tmp_path / "run", iterations=1), plugins, resume=True)
    assert "config.sha256: does not match config.json, which holds this very config (a damaged digest)" in caplog.text
    assert "options new since" not in caplog.text  # it said so with an empty list of options


def test_a_run_dir_that_cannot_be_created_is_a_config_error(register_plugin, tmp_path):
    plugins = register_plugin(StandIns(), "stand-ins")
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(ConfigError, match=r"run_dir .*file/run: cannot create it"):
        run_pipeline(_resolved(plugins, tmp_path / "file" / "run", iterations=1), plugins)


@pytest.mark.parametrize("damage", ["history", "algo", "iteration"])
def test_a_checkpoint_with_a_damaged_history_or_algorithm_state_is_one_line_and_changes_nothing(register_plugin, tmp_path, damage):
    # Both were tracebacks: KeyError 'step' from the metrics rewind, JSONDecodeError from the algorithm's load.
    plugins, resolved = _exact_buffer_run(register_plugin, tmp_path / "run")
    run_pipeline(resolved, plugins)
    _unfinished(tmp_path / "run")
    ckpt = tmp_path / "run" / "checkpoints" / "it-00001"
    state = json.loads((ckpt / "state.json").read_text())
    if damage == "history":
        state["history"][0].pop("step")
    elif damage == "iteration":  # was taken as it stood: "evaluating the policy of checkpoint 10**30"
        state["iteration"] = 10**30
    else:
        (ckpt / "algo" / "state.json").write_text('{"updates": 1, "par')
    (ckpt / "state.json").write_text(json.dumps(state))
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    expected = {
        "history": r"it-00001/state.json: a history row has no integer 'step'",
        "iteration": r"it-00001/state.json: holds iteration 10{30} in the checkpoint of iteration 1; the checkpoint is damaged",
        "algo": r"it-00001/algo: cannot restore the algorithm's state: JSONDecodeError",
    }[damage]
    with pytest.raises(DataError, match=expected):
        run_pipeline(resolved, plugins, resume=True)
    assert {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("selection", [{"scores": {"best": 1.0}}, {"scores": [0.5]}, {"scores": {"0": "high"}}, {"best": 0}])
def test_a_checkpoint_with_damaged_validation_scores_is_one_line_and_changes_nothing(register_plugin, tmp_path, selection):
    # These were tracebacks (int('best'), list.items) after the buffer had been rolled back.
    plugins = _exact_buffer_plugins(register_plugin)
    parts = {"encoder": {"name": "hashing"}, "buffer": {"name": "exact"}, "policy": {"name": "scripted-saving"},
             "eval": {"valid_every": 1, "valid_episodes": 2, "keep": "best-valid", "episodes": 2}}
    resolved = _resolved(plugins, tmp_path / "run", parts, iterations=1)
    run_pipeline(resolved, plugins)
    _unfinished(tmp_path / "run")
    state_file = tmp_path / "run" / "checkpoints" / "it-00001" / "state.json"
    state = json.loads(state_file.read_text())
    state["selection"] = selection
    state_file.write_text(json.dumps(state))
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    with pytest.raises(DataError, match=r"it-00001/state.json: unreadable checkpoint state: .*`\$.selection"):
        run_pipeline(resolved, plugins, resume=True)
    with pytest.raises(DataError, match=r"it-00001/state.json: unreadable checkpoint state"):
        evaluate_run(resolved, plugins, split=None, episodes=1)
    assert {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()} == before


@pytest.mark.parametrize(
    "field, value",
    [("python_rng", [3, [1, 2], None]), ("torch_rng", [1, 2, 3]), ("numpy_rng", {"kind": "MT19937", "keys": [1, 2]})],
)
def test_a_checkpoint_with_broken_random_state_is_refused_before_the_buffer_rolls_back(register_plugin, tmp_path, field, value):
    plugins, resolved = _exact_buffer_run(register_plugin, tmp_path / "run")
    run_pipeline(resolved, plugins)
    _unfinished(tmp_path / "run")
    with open_run_buffer(tmp_path / "run") as buffer:  # stored after the checkpoint: a resume would forget them
        buffer.add(transitions=[msgspec.structs.replace(t, source="real") for t in make_transitions(3)])
    stored = stored_transitions(tmp_path / "run")
    state_file = tmp_path / "run" / "checkpoints" / "it-00001" / "state.json"
    state_file.write_text(json.dumps(json.loads(state_file.read_text()) | {field: value}))
    with pytest.raises(DataError, match=r"it-00001/state.json: unusable random-generator state"):
        run_pipeline(resolved, plugins, resume=True)
    assert stored_transitions(tmp_path / "run") == stored


def test_empty_offline_data_is_refused_not_trained_on(register_plugin, tmp_path):
    plugins = register_plugin(StandIns(), "stand-ins")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match=r"data.path .*empty.jsonl: no transitions"):
        run_pipeline(_resolved(plugins, tmp_path / "a", {"data": {"path": str(empty)}}, iterations=1), plugins)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "offline.jsonl").write_text("")  # a run dir whose stored offline data was emptied
    with pytest.raises(DataError, match=r"b/offline.jsonl: holds no episodes, but the config asks for offline data"):
        run_pipeline(_resolved(plugins, tmp_path / "b", iterations=1), plugins)


def _offline_file(path: Path, records: list[dict]) -> Path:
    base = {"state": "count is 0", "action": "inc", "next_state": "count is 1", "reward": 0.0, "done": False}
    path.write_text("".join(json.dumps(base | r) + "\n" for r in records))
    return path


def test_offline_data_of_two_tasks_sharing_an_episode_id_stays_two_episodes(register_plugin, tmp_path):
    # Episodes were grouped by episode id alone: task B's steps joined task A's episode.
    plugins = register_plugin(StandIns(), "stand-ins")
    data = _offline_file(tmp_path / "mine.jsonl", [
        {"task_id": "count-train-0", "episode_id": "ep0", "step": 0, "action": "stop", "reward": 1.0, "done": True, "success": True},
        {"task_id": "count-train-1", "episode_id": "ep0", "step": 0},
        {"task_id": "count-train-1", "episode_id": "ep0", "step": 1, "action": "stop", "done": True},
    ])
    run_pipeline(_resolved(plugins, tmp_path / "run", {"data": {"path": str(data)}}, iterations=0), plugins)
    stored = [json.loads(line) for line in (tmp_path / "run" / "offline.jsonl").read_text().splitlines()]
    assert [(e["task"]["id"], len(e["transitions"])) for e in stored] == [("count-train-0", 1), ("count-train-1", 2)]


@pytest.mark.parametrize(
    "records, message",
    [
        ([{"task_id": "count-train-0", "episode_id": "e", "step": 0}] * 2, r"episode 'e' of task 'count-train-0' holds step 0 more than once"),
        ([{"task_id": "count-test-3", "episode_id": "e", "step": 0}], r"holds steps of 1 test-split task\(s\) \(e.g. 'count-test-3'\), which the run evaluates on"),
        ([{"task_id": "count-valid-0", "episode_id": "e", "step": 0}], r"holds steps of 1 valid-split task\(s\)"),
        ([{"task_id": "count-train-0", "episode_id": "e", "step": 0, "model_failed": True}], r"step 0 of episode 'e' is model_failed"),
        ([{"task_id": "count-train-0", "episode_id": "e", "step": 0, "source": "synthetic"}], r"step 0 of episode 'e' is synthetic"),
        ([{"task_id": "count-train-0", "episode_id": "e", "step": -3}], r"step -3 of episode 'e' has a negative step number"),
        ([{"task_id": "count-train-0", "episode_id": "e", "step": 0, "next_state": " "}], r"step 0 of episode 'e' has an empty next_state"),
        ([{"task_id": "count-train-0", "episode_id": "e", "step": 0, "success": True}], r"step 0 of episode 'e' is a success that is not done"),
        ([{"task_id": "count-train-0", "episode_id": "e", "step": 0, "reward": 1.0}], r"step 0 of episode 'e' has reward 1.0, but the outcome reward"),
        ([{"task_id": "count-train-0", "episode_id": "e", "step": 0, "done": True, "success": True}], r"step 0 of episode 'e' has reward 0.0, but"),
    ],
)
def test_offline_data_that_cannot_be_real_training_data_is_refused_in_one_line(register_plugin, tmp_path, records, message):
    # Each was trained on without a word: a step twice (its copy with itself in its history), the
    # held-out tasks the run then evaluated on, an experience model's failed answer.
    plugins = register_plugin(StandIns(), "stand-ins")
    data = _offline_file(tmp_path / "mine.jsonl", records)
    with pytest.raises(DataError, match=rf"^data.path {re.escape(str(data))}: {message}"):
        run_pipeline(_resolved(plugins, tmp_path / "run", {"data": {"path": str(data)}}, iterations=0), plugins)
    assert not (tmp_path / "run" / "offline.jsonl").exists()


def _scripted_rollout(turns: list[list[str]], envs: list) -> tuple[list, object]:
    """Two steps of CountDomain train tasks, one env each; ``turns``: the policy's outputs per step."""
    outputs = iter(turns)
    return rollout(
        tasks=CountDomain(CountConfig()).tasks(split="train")[: len(envs)], envs=envs,
        act=lambda prompts: next(outputs)[: len(prompts)],
        max_steps=2, history_window=2, seeds=list(range(len(envs))), source="real", tag="t",
    )


def test_rollout_counts_unparsable_actions_and_env_crashes_and_keeps_their_notes_out_of_the_buffer():
    envs = [CountEnv(5) for _ in range(3)]
    trajectories, stats = _scripted_rollout(
        [["no tags at all", "<action>explode</action>", "<action>inc</action>"], ["<action>stop</action>"]], envs
    )
    assert stats.unparsed_actions == 1 and stats.env_errors == 1
    assert [len(t.transitions) for t in trajectories] == [1, 1, 2]
    assert all(not t.success for t in trajectories[:2])
    assert trajectories[0].transitions[-1].valid is False and trajectories[0].transitions[-1].done
    # the two notes stay in their episodes (the update sees them) and out of the replay buffer
    notes = [t.transitions[-1] for t in trajectories[:2]]
    assert [n.next_state for n in notes] == ["[no parsable action in the policy output]", "[environment error: RuntimeError]"]
    kept = storable([t for traj in trajectories for t in traj.transitions])
    assert [t.next_state for t in kept] == ["count is 1", "count is 1"]  # the third episode's two real steps


def test_a_task_the_env_refuses_at_reset_as_malformed_stops_the_rollout_in_one_line():
    # the env plugins check a task's payload at reset (ScienceWorld's variation, MiniWoB's page
    # and seed, ALFWorld's game) with a ConfigError naming the task and the field; it was logged
    # as an env error and the episode scored as a loss
    class Refusing(CountEnv):
        def reset(self, *, task, seed=None):
            raise ConfigError(f"count: task {task.id!r}: payload['start'] is missing")

    with pytest.raises(ConfigError, match=r"^count: task 'count-train-1': payload\['start'\] is missing$"):
        _scripted_rollout([["<action>inc</action>"] * 2], [CountEnv(5), Refusing(5)])


def test_an_env_that_crashes_after_others_stepped_fails_alone_and_nothing_steps_twice():
    envs = [CountEnv(5), CountEnv(5)]
    trajectories, stats = _scripted_rollout([["<action>inc</action>", "<action>explode</action>"], ["<action>inc</action>"]], envs)
    assert stats.env_errors == 1 and envs[0].value == 2  # two steps, not three
    assert [t.next_state for t in trajectories[0].transitions] == ["count is 1", "count is 2"]


@pytest.mark.parametrize("crash_at", ["reset", "step"])
def test_an_env_crash_after_a_stop_was_asked_for_is_the_stop(monkeypatch, crash_at):
    # Ctrl-C stops the simulator in the process group too, and the interrupt itself may be
    # dropped where it was raised (a finalizer): the engine's failures that follow must end
    # the rollout as the stop, not be played on as failed episodes of the evaluation.
    from dreamgym_core import stopping

    class ResetCrashEnv(CountEnv):
        def reset(self, *, task, seed=None):
            raise RuntimeError("the engine has exited (code 130)")

    env = ResetCrashEnv(5) if crash_at == "reset" else CountEnv(5)
    monkeypatch.setattr(stopping, "_requested", signal.SIGINT)
    with pytest.raises(stopping.Stopped):
        _scripted_rollout([["<action>explode</action>"], ["<action>inc</action>"]], [env])


def test_episodes_ended_by_the_envs_own_step_cap_count_as_truncated():
    class CappedEnv(CountEnv):
        def step(self, *, action):
            result = super().step(action=action)
            return msgspec.structs.replace(result, done=True, info={"truncated": True}) if self.value >= 1 else result

    trajectories, stats = _scripted_rollout([["<action>inc</action>"] * 2] * 2, [CappedEnv(5), CountEnv(5)])
    assert stats.truncated == 2  # one by the env's own cap, one by this rollout's
    assert [t.truncated for t in trajectories[0].transitions] == [True]  # recorded as a cap ending


def test_unanswered_episodes_are_the_envs_failures_not_the_policys():
    envs = [CountEnv(5) for _ in range(3)]
    trajectories, _ = _scripted_rollout(
        [["no tags at all", "<action>explode</action>", "<action>inc</action>"], ["<action>stop</action>"]], envs
    )
    # the policy's unparsable output is its own failure; the engine's crash is not
    assert [unanswered(t) for t in trajectories] == [False, True, False]


def test_drop_unanswered_leaves_out_the_envs_failures_and_groups_left_with_one_episode():
    envs = [CountEnv(5) for _ in range(3)]
    unparsed, crashed, played = _scripted_rollout(
        [["no tags at all", "<action>explode</action>", "<action>inc</action>"], ["<action>stop</action>"]], envs
    )[0]
    tasks = CountDomain(CountConfig()).tasks(split="train")[:3]
    kept_tasks, kept_groups, dropped = drop_unanswered(tasks, [[unparsed, crashed, played], [crashed, played], [played]])
    assert kept_tasks == [tasks[0], tasks[2]]
    assert kept_groups == [[unparsed, played], [played]]  # a group of one stays whole
    assert dropped == 3  # the crash of the first group, and the second group whole (one episode left of two)


def test_an_episode_whose_env_crashed_at_reset_is_unanswered_and_dropped():
    class ResetCrashEnv(CountEnv):
        def reset(self, *, task, seed=None):
            raise RuntimeError("engine crashed at reset")

    crashed, played = _scripted_rollout([["<action>inc</action>"], ["<action>stop</action>"]], [ResetCrashEnv(5), CountEnv(5)])[0]
    assert crashed.transitions == [] and not played.transitions[-1].model_failed
    # the policy never acted: its reward 0 is the engine's failure, not the policy's
    assert [unanswered(crashed), unanswered(played)] == [True, False]
    tasks = CountDomain(CountConfig()).tasks(split="train")[:2]
    kept_tasks, kept_groups, dropped = drop_unanswered(tasks, [[crashed, played, played], [crashed, played]])
    assert kept_tasks == [tasks[0]] and kept_groups == [[played, played]] and dropped == 3


class EvalFlagAlgo:
    """The recording algorithm, keeping how each act() call was made."""

    calls: list[tuple[bool, float | None, bool]] = []

    @hookimpl
    def dreamgym_register_algos(self):
        from stand_ins import RecordConfig, RecordingAlgo

        class FlagRecordingAlgo(RecordingAlgo):
            def act(self, *, prompts, greedy=False, temperature=None, evaluation=False):
                EvalFlagAlgo.calls.append((greedy, temperature, evaluation))
                return super().act(prompts=prompts, greedy=greedy, temperature=temperature)

        return [ComponentSpec(name="record-flags", factory=FlagRecordingAlgo, config_type=RecordConfig,
                              description="Recording algorithm keeping its act() calls (test double).")]


@pytest.mark.parametrize("eval_temperature", [0.0, 0.5])
def test_evaluation_plays_tell_the_algorithm_they_are_evaluations(register_plugin, tmp_path, eval_temperature):
    """So that a sampled evaluation draws from a seed stream of its own and leaves RL's alone."""
    register_plugin(StandIns(), "stand-ins")
    plugins = register_plugin(EvalFlagAlgo(), "eval-flags")
    EvalFlagAlgo.calls = []
    parts = {"algo": {"name": "record-flags"}, "eval": {"episodes": 2, "temperature": eval_temperature}}
    run_pipeline(_resolved(plugins, tmp_path / "run", parts, iterations=1, sampling_temperature=0.7), plugins)
    rl = (False, 0.7, False)
    evaluation = (True, None, True) if eval_temperature == 0 else (False, 0.5, True)
    assert set(EvalFlagAlgo.calls) == {rl, evaluation}


class EvalStreamAlgo:
    """The recording algorithm, keeping the stream each sampled evaluation call names."""

    calls: list[tuple[bool, str | None]] = []

    @hookimpl
    def dreamgym_register_algos(self):
        from stand_ins import RecordConfig, RecordingAlgo

        class StreamRecordingAlgo(RecordingAlgo):
            def act(self, *, prompts, greedy=False, temperature=None, evaluation=False, stream=None):
                EvalStreamAlgo.calls.append((evaluation, stream))
                return super().act(prompts=prompts, greedy=greedy, temperature=temperature)

        return [ComponentSpec(name="record-streams", factory=StreamRecordingAlgo, config_type=RecordConfig,
                              description="Recording algorithm keeping its evaluation streams (test double).")]


def test_each_evaluation_play_names_a_seed_stream_of_its_own(register_plugin, tmp_path):
    """At eval.temperature > 0, a synthetic replay (eval.synthetic_agreement) sampled before the
    next evaluation's real play must not move that play's draws: each play its own stream."""
    register_plugin(pytest.importorskip("dreamgym_plugin_encoders"), "encoders")
    register_plugin(pytest.importorskip("dreamgym_plugin_exact"), "exact")
    register_plugin(StandIns(), "stand-ins")
    plugins = register_plugin(EvalStreamAlgo(), "eval-streams")
    EvalStreamAlgo.calls = []
    parts = {
        "algo": {"name": "record-streams"}, "experience_model": {"name": "dice-lm"}, "encoder": {"name": "hashing"},
        "buffer": {"name": "exact"}, "eval": {"episodes": 2, "temperature": 0.5, "synthetic_agreement": True},
    }
    run_pipeline(_resolved(plugins, tmp_path / "run", parts, iterations=1, mode="dreamgym", sampling_temperature=0.7), plugins)
    streams = {stream for evaluation, stream in EvalStreamAlgo.calls if evaluation}
    assert {"eval_before/real", "eval_before/synthetic", "eval/real", "eval/synthetic"} <= streams
    assert all(stream is None for evaluation, stream in EvalStreamAlgo.calls if not evaluation)  # RL's own


class EarlyStopCrashEnv(CountEnv):
    """The engine crashes on 'stop' before the target (the scripted policy's mistake);
    the expert demos never stop early, so offline collection does not crash."""

    def step(self, *, action: str):
        if action == "stop" and self.value < self.target:
            raise RuntimeError("engine crashed")
        return super().step(action=action)


class EarlyStopCrashDomain(CountDomain):
    name = "early-stop-crash"

    def make_env(self) -> CountEnv:
        return EarlyStopCrashEnv(self.config.max_value)


class EarlyStopCrash:
    @hookimpl
    def dreamgym_register_envs(self):
        return [ComponentSpec(name="early-stop-crash", factory=EarlyStopCrashDomain, config_type=CountConfig,
                              description="Counting game whose engine crashes on an early stop (test double).")]


@pytest.mark.parametrize("handling", ["penalise", "drop"])
def test_unanswered_episodes_drop_keeps_the_envs_crashes_out_of_the_update(register_plugin, tmp_path, handling):
    register_plugin(StandIns(), "stand-ins")
    plugins = register_plugin(EarlyStopCrash(), "early-stop-crash")
    parts = {"env": {"name": "early-stop-crash"}}
    run_pipeline(_resolved(plugins, tmp_path / "run", parts, iterations=4, unanswered_episodes=handling), plugins)
    rows = [r for r in _rows(tmp_path / "run") if "data/episodes" in r]
    assert len(rows) == 4
    crashes = sum(r["errors/rollout_env_errors"] for r in rows)
    assert crashes > 0  # the scripted policy's mistakes crash the engine
    seen = [r["data/episodes"] for r in rows]
    dropped = [r["rollout/dropped_unanswered_episodes"] for r in rows]
    if handling == "penalise":
        assert seen == [6.0] * 4 and dropped == [0.0] * 4
        assert sum(r["data/unanswered_episodes"] for r in rows) == crashes
    else:
        assert all(r["data/unanswered_episodes"] == 0 for r in rows)
        assert [a + b for a, b in zip(seen, dropped)] == [6.0] * 4 and sum(dropped) >= crashes


def test_evaluation_counts_and_reports_the_episodes_the_environment_ended_by_failing(register_plugin, tmp_path):
    # Crashed episodes count as failures in the success rate; the report says how many there were.
    register_plugin(StandIns(), "stand-ins")
    plugins = register_plugin(EarlyStopCrash(), "early-stop-crash")
    parts = {"env": {"name": "early-stop-crash"}, "policy": {"name": "scripted", "config": {"mistakes": 0.9}}}
    summary = run_pipeline(_resolved(plugins, tmp_path / "run", parts, iterations=1), plugins)
    crashed = int(summary["eval/env_errors"])
    assert 0 < crashed <= summary["eval/episodes"] * (1 - summary["eval/success_rate"])
    report = (tmp_path / "run" / "report.md").read_text()
    assert f"- after RL: {crashed} of {int(summary['eval/episodes'])} episodes ended by an environment error" in report


class OpenEnvCount:
    """A counting game that keeps the most envs it had open at once."""

    most = 0

    @hookimpl
    def dreamgym_register_envs(self):
        class CountedEnv(CountEnv):
            open = 0

            def __init__(self, max_value: int) -> None:
                super().__init__(max_value)
                CountedEnv.open += 1
                OpenEnvCount.most = max(OpenEnvCount.most, CountedEnv.open)

            def close(self) -> None:
                CountedEnv.open -= 1

        class CountedDomain(CountDomain):
            def make_env(self) -> CountEnv:
                return CountedEnv(self.config.max_value)

            def collect(self, **kwargs):  # offline play leaves its envs open: not counted
                return CountDomain(self.config).collect(**kwargs)

        return [ComponentSpec(name="count-open", factory=CountedDomain, config_type=CountConfig,
                              description="Counting game that counts its open envs (test double).")]


def test_real_envs_at_once_plays_in_batches_with_the_same_results(register_plugin, tmp_path):
    # An evaluation opened one env per episode at once: 17 ScienceWorld JVMs held 4.6 GB.
    register_plugin(StandIns(), "stand-ins")
    plugins = register_plugin(OpenEnvCount(), "count-open")
    parts = {"env": {"name": "count-open"}, "policy": {"name": "scripted", "config": {"mistakes": 0.0}}, "eval": {"episodes": 5}}
    summaries, most = {}, {}
    for at_once in (0, 2):
        OpenEnvCount.most = 0
        resolved = _resolved(plugins, tmp_path / f"run{at_once}", parts, iterations=2, real_envs_at_once=at_once)
        summaries[at_once] = {k: v for k, v in run_pipeline(resolved, plugins).items() if k != "run_dir"}
        most[at_once] = OpenEnvCount.most
    assert most == {0: 6, 2: 2}  # RL's real rollouts: 3 tasks x 2; the evaluation: 5 episodes
    assert summaries[2] == summaries[0]
    assert summaries[2]["eval/episodes"] == 5 and summaries[2]["counters/real_transitions"] > 0


def test_episodes_played_in_batches_keep_ids_of_their_own():
    # Each batch restarted the ids at "<tag>-0": the episodes of one GRPO group, played in
    # several batches, shared one (task, episode) and could not be told apart again.
    from types import SimpleNamespace

    from dreamgym_core.records import Observation, StepResult

    class OneStep:
        def reset(self, *, task, seed=None):
            return Observation(text="s0")

        def step(self, *, action):
            return StepResult(observation=Observation(text="s1"), reward=1.0, done=True, success=True)

        def close(self):
            pass

    loop_cfg = SimpleNamespace(real_envs_at_once=1, max_steps=3, history_window=0, action_choice="free")
    runner = SimpleNamespace(cfg=SimpleNamespace(loop=loop_cfg), experience_model=None, _say=lambda message: None)
    runner.play = lambda *args, **kwargs: Runner.play(runner, *args, **kwargs)
    runner._make_envs = lambda phase, n, model=None: ([OneStep() for _ in range(n)], None)
    runner.act_fn = lambda temperature, **kwargs: (lambda prompts, listed=None: ["<action>go</action>"] * len(prompts))
    group = [Task(id="t0", instruction="win", domain="toy")] * 4  # one task's group, as _rollout builds it
    trajectories, _ = Runner.play(runner, group, "real", temperature=1.0, seeds=[0, 1, 2, 3], tag="it0")
    assert [t.transitions[0].episode_id for t in trajectories] == ["it0-0", "it0-1", "it0-2", "it0-3"]


def test_wilson_interval_brackets_the_rate():
    low, high = wilson_interval(5, 10)
    assert low < 0.5 < high
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)  # was (0, 0): a certain 0% from no trial
    for n in range(1, 101):  # an all-lost or all-won run's bound missed its rate by ~1e-16 (0 of 11, 6 of 6)
        for successes in (0, n):
            low, high = wilson_interval(successes, n)
            assert low <= successes / n <= high, (successes, n)
    for successes, n in ((1, -3), (5, 3), (-1, 3)):  # gave a low bound above 1, or a math domain error
        with pytest.raises(ValueError, match=f"{successes} successes of {n} trials"):
            wilson_interval(successes, n)


def test_an_algorithm_written_before_the_evaluation_flag_still_runs(register_plugin, tmp_path):
    # Algorithm.act gained ``evaluation``; a plugin whose act does not take it must keep working.
    from stand_ins import RecordConfig, RecordingAlgo

    class OlderAlgo(RecordingAlgo):
        def act(self, *, prompts, greedy=False, temperature=None):
            return self.policy.generate(prompts=list(prompts), max_new_tokens=32)

    class Older:
        @hookimpl
        def dreamgym_register_algos(self):
            return [ComponentSpec(name="older", factory=OlderAlgo, config_type=RecordConfig, description="act without evaluation")]

    register_plugin(StandIns(), "stand-ins")
    plugins = register_plugin(Older(), "older")
    summary = run_pipeline(_resolved(plugins, tmp_path / "run", {"algo": {"name": "older"}}, iterations=1), plugins)
    assert summary["eval/episodes"] == 6.0


def test_eval_uses_the_last_checkpoint_on_held_out_tasks(register_plugin, tmp_path):
    from dreamgym_core.errors import DreamGymError
    from dreamgym_core.loop import evaluate_run

    plugins = register_plugin(StandIns(), "stand-ins")
    resolved = _resolved(plugins, tmp_path / "run", iterations=2)
    with pytest.raises(DreamGymError, match="no checkpoint to evaluate"):
        evaluate_run(resolved, plugins, split=None, episodes=None)
    run_pipeline(resolved, plugins)
    result = evaluate_run(resolved, plugins, split="test", episodes=5)
    assert result["checkpoint_iteration"] == 2
    assert result["eval/episodes"] == 5.0
    assert result["eval/success_ci_low"] <= result["eval/success_rate"] <= result["eval/success_ci_high"]


def test_eval_of_an_earlier_checkpoint_plays_that_iterations_policy(register_plugin, tmp_path):
    # A learning curve on held-out tasks, after the run: each checkpoint's own counters and
    # policy, and the run's pointer left as it was.
    plugins = register_plugin(StandIns(), "stand-ins")
    resolved = _resolved(plugins, tmp_path / "run", iterations=3)
    run_pipeline(resolved, plugins)
    pointer = tmp_path / "run" / "checkpoints" / "latest"
    before = pointer.read_bytes()
    for iteration in (0, 1, 3):
        result = evaluate_run(resolved, plugins, split="test", episodes=2, at_checkpoint=iteration)
        assert (result["checkpoint_iteration"], result["eval/policy_iteration"]) == (iteration, float(iteration))
    assert evaluate_run(resolved, plugins, split="test", episodes=2)["checkpoint_iteration"] == 3
    assert pointer.read_bytes() == before
    with pytest.raises(DataError, match=r"no checkpoint of iteration 7 \(it holds iterations 0, 1, 2, 3;"):
        evaluate_run(resolved, plugins, split="test", episodes=2, at_checkpoint=7)
    with pytest.raises(ConfigError, match="checkpoint -1: iterations are numbered from 0"):
        evaluate_run(resolved, plugins, split="test", episodes=2, at_checkpoint=-1)


def test_eval_without_the_pointer_plays_what_resume_would_continue_from(register_plugin, tmp_path):
    # a run stopped between its first checkpoint's rename and the pointer's write: --resume and
    # dreamgym curve read the checkpoint, and eval refused it as "no checkpoint"
    plugins = register_plugin(StandIns(), "stand-ins")
    resolved = _resolved(plugins, tmp_path / "run", iterations=2)
    run_pipeline(resolved, plugins)
    pointer = tmp_path / "run" / "checkpoints" / "latest"
    pointer.unlink()
    assert evaluate_run(resolved, plugins, split="test", episodes=2, progress=False)["checkpoint_iteration"] == 2
    assert evaluate_run(resolved, plugins, split="test", episodes=2, at_checkpoint=1, progress=False)["checkpoint_iteration"] == 1
    assert not pointer.exists()  # a reader writes nothing


def test_curve_plays_each_checkpoint_as_eval_of_that_checkpoint_alone(register_plugin, tmp_path):
    # One runner for every checkpoint must play each as a fresh `eval --checkpoint K` does:
    # a state left by the checkpoint before (the policy's random state, the global RNGs)
    # would shift the later rows. The scripted policy's mistakes come from its saved random
    # state, so the checkpoints play differently.
    plugins = register_plugin(StandIns(), "stand-ins")
    resolved = _resolved(plugins, tmp_path / "run", iterations=3)
    run_pipeline(resolved, plugins)
    curve = evaluate_checkpoints(resolved, plugins, [3, 0, 2], split="test", episodes=6, progress=False)
    alone = [evaluate_run(resolved, plugins, split="test", episodes=6, at_checkpoint=k, progress=False) for k in (3, 0, 2)]
    for row, single in zip(curve, alone):
        del single["run_dir"], single["eval/policy_iteration"]
        assert row == single
    assert [row["checkpoint_iteration"] for row in curve] == [3, 0, 2]
    assert len({row["eval/episode_length"] for row in curve}) > 1  # the rows are not one policy's
    every = evaluate_checkpoints(resolved, plugins, split="test", episodes=6, progress=False)
    assert [row["checkpoint_iteration"] for row in every] == [0, 1, 2, 3]
    assert every[0] == curve[1] and every[2] == curve[2] and every[3] == curve[0]


def test_curve_names_a_missing_checkpoint_before_playing_any(register_plugin, tmp_path, monkeypatch):
    plugins = register_plugin(StandIns(), "stand-ins")
    resolved = _resolved(plugins, tmp_path / "run", iterations=1)
    with pytest.raises(DreamGymError, match="no checkpoint to evaluate; run the pipeline first"):
        evaluate_checkpoints(resolved, plugins, progress=False)
    run_pipeline(resolved, plugins)

    def no_runner(*args, **kwargs):
        raise AssertionError("a runner was built: checkpoint 0 would have been played first")

    monkeypatch.setattr("dreamgym_core.loop.Runner", no_runner)
    with pytest.raises(DataError, match=r"no checkpoint of iteration 5 \(it holds iterations 0, 1;"):
        evaluate_checkpoints(resolved, plugins, [0, 5], progress=False)
    with pytest.raises(ConfigError, match="episodes=0"):
        evaluate_checkpoints(resolved, plugins, [0], episodes=0, progress=False)


class ClosingDomains:
    """The counting game whose domains record their close() calls."""

    def __init__(self):
        self.built, self.closed = 0, 0

    @hookimpl
    def dreamgym_register_envs(self):
        spy = self

        class Closing(CountDomain):
            def __init__(self, config):
                super().__init__(config)
                spy.built += 1

            def close(self):
                spy.closed += 1

        return [ComponentSpec(name="count-closing", factory=Closing, config_type=CountConfig, description="Counting game, closes counted.")]


def test_eval_closes_the_domain_it_built(register_plugin, tmp_path):
    # A real domain's probe env holds a JVM or a browser: each evaluation left one behind
    # (three `evaluate_run` calls on a TextWorldExpress run: one more thread and fd each).
    register_plugin(StandIns(), "stand-ins")
    spy = ClosingDomains()
    plugins = register_plugin(spy, "closing")
    resolved = _resolved(plugins, tmp_path / "run", {"env": {"name": "count-closing"}}, iterations=1)
    run_pipeline(resolved, plugins)
    for _ in range(3):
        evaluate_run(resolved, plugins, split="test", episodes=2)
    assert (spy.built, spy.closed) == (4, 4)


def test_eval_of_zero_episodes_is_refused_not_replaced_by_the_pipelines_count(register_plugin, tmp_path):
    # evaluate_run(episodes=0) played eval.episodes games, as if None had been given.
    plugins = register_plugin(StandIns(), "stand-ins")
    resolved = _resolved(plugins, tmp_path / "run", {"eval": {"episodes": 3}}, iterations=1)
    run_pipeline(resolved, plugins)
    with pytest.raises(ConfigError, match="episodes=0: evaluate at least one episode"):
        evaluate_run(resolved, plugins, split="test", episodes=0)
    assert evaluate_run(resolved, plugins, split="test", episodes=1)["eval/episodes"] == 1.0
    assert evaluate_run(resolved, plugins, split=None, episodes=None)["eval/episodes"] == 3.0
    assert evaluate_run(resolved, plugins)["eval/episodes"] == 3.0  # both default to the pipeline's


class FailingAlgo:
    """An algorithm whose factory fails, after the domain, the buffer and the models were built."""

    @hookimpl
    def dreamgym_register_algos(self):
        def build(config, **context):
            raise RuntimeError("no accelerator")

        return [ComponentSpec(name="broken", factory=build, config_type=CountConfig, description="Fails to build.")]


@pytest.mark.parametrize("failure", ["component", "check"])
def test_a_run_that_fails_while_building_closes_what_it_built(register_plugin, tmp_path, failure):
    # In a program that goes on after the error (a notebook, a sweep), the domain's simulator or
    # browser and the buffer's open segment stayed behind: only a finished run closed them.
    register_plugin(pytest.importorskip("dreamgym_plugin_encoders"), "encoders")
    register_plugin(pytest.importorskip("dreamgym_plugin_exact"), "exact")
    register_plugin(StandIns(), "stand-ins")
    register_plugin(FailingAlgo(), "failing")
    spy = ClosingDomains()
    plugins = register_plugin(spy, "closing")
    parts = {"env": {"name": "count-closing"}, "encoder": {"name": "hashing"}, "buffer": {"name": "exact"}}
    if failure == "component":
        resolved, error = _resolved(plugins, tmp_path / "run", parts | {"algo": {"name": "broken"}}, iterations=1), "failed to build"
    else:
        resolved, error = _resolved(plugins, tmp_path / "run", parts, iterations=1, state_variation=0.5), "vary_state"
    for run in (run_pipeline, lambda r, p: evaluate_run(r, p, split="test", episodes=1)):
        if run is not run_pipeline:
            (tmp_path / "run" / "checkpoints" / "latest").parent.mkdir(exist_ok=True)
            (tmp_path / "run" / "checkpoints" / "latest").write_text("it-00000")
        with pytest.raises(DreamGymError, match=error):
            run(resolved, plugins)
    assert (spy.built, spy.closed) == (2, 2)


def test_eval_refuses_a_config_whose_policy_or_training_differs_from_the_runs(register_plugin, tmp_path, caplog):
    # The checkpoint would be loaded into components built from the other config and the
    # result reported as the run's; settings of how and where it is played may differ.
    plugins = register_plugin(StandIns(), "stand-ins")
    run_pipeline(_resolved(plugins, tmp_path / "run", iterations=1), plugins)
    other_policy = _resolved(plugins, tmp_path / "run", {"policy": {"name": "scripted", "config": {"mistakes": 0.9}}}, iterations=1)
    with pytest.raises(ConfigError, match=r"config differs from the run's in .*run at policy.config.mistakes; evaluate with"):
        evaluate_run(other_policy, plugins, split="test", episodes=2)
    with pytest.raises(ConfigError, match=r"at loop.group_size"):
        evaluate_run(_resolved(plugins, tmp_path / "run", iterations=1, group_size=7), plugins, split="test", episodes=2)
    more_games = _resolved(plugins, tmp_path / "run", {"eval": {"episodes": 4}}, iterations=1)
    assert evaluate_run(more_games, plugins, split="test", episodes=None)["eval/episodes"] == 4.0
    assert "evaluating with settings other than the run's: eval.episodes" in caplog.text


def test_a_named_checkpoint_restores_that_iteration(register_plugin, tmp_path):
    from dreamgym_core import checkpoint

    plugins = register_plugin(StandIns(), "stand-ins")
    resolved = _resolved(plugins, tmp_path / "run", iterations=3)
    run_pipeline(resolved, plugins)
    runner = Runner(resolved, plugins, tmp_path / "run", progress=False)
    assert checkpoint.load(runner, "it-00001", roll_back_buffer=False) == 1
    assert runner.algo.updates == 1 and runner.counters["iteration"] == 1
    with pytest.raises(DataError, match=r"checkpoints/it-00009/state.json: unreadable checkpoint state"):
        checkpoint.load(runner, "it-00009")
    runner.close()
    # the run directory as a str, as a script names it (it failed: unsupported operand type for /)
    runner = Runner(resolved, plugins, str(tmp_path / "run"), progress=False)
    assert checkpoint.load(runner, "it-00002", roll_back_buffer=False) == 2 and runner.algo.updates == 2
    runner.close()


def test_eval_writes_the_episodes_it_played(register_plugin, tmp_path):
    from dreamgym_core.checkpoint import read_trajectories
    from dreamgym_core.errors import ConfigError
    from dreamgym_core.loop import evaluate_run

    plugins = register_plugin(StandIns(), "stand-ins")
    resolved = _resolved(plugins, tmp_path / "run", iterations=1)
    run_pipeline(resolved, plugins)
    with pytest.raises(ConfigError, match="no-such-dir"):  # bad input: exit 2, nothing played
        evaluate_run(resolved, plugins, split="test", episodes=3, trajectories=tmp_path / "no-such-dir" / "e.jsonl")
    out = tmp_path / "episodes.jsonl"
    result = evaluate_run(resolved, plugins, split="test", episodes=3, trajectories=out)
    played = read_trajectories(out)
    assert len(played) == 3 and {t.task.split for t in played} == {"test"}
    assert sum(t.success for t in played) / 3 == result["eval/success_rate"]
    # what RL would train on is kept: one prompt and raw output per step
    assert all(len(t.decisions) == len(t.transitions) > 0 for t in played)
    # a path given as a str, as a script writes it (it failed: 'str' object has no attribute 'parent')
    evaluate_run(resolved, plugins, split="test", episodes=2, trajectories=str(tmp_path / "as-str.jsonl"))
    assert len(read_trajectories(tmp_path / "as-str.jsonl")) == 2
    with pytest.raises(ConfigError, match="no-such-dir"):
        evaluate_run(resolved, plugins, split="test", episodes=3, trajectories=str(tmp_path / "no-such-dir" / "e.jsonl"))


class _SavedWeights:
    """Stands in for a policy backend's save/reload: 'weights' are the epoch number."""

    def __init__(self) -> None:
        self.weights, self.saved, self.saves = 0, {}, []

    def save(self, *, path: str) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        self.saved[path] = self.weights
        self.saves.append(self.weights)

    def reload(self, *, path: str) -> None:
        self.weights = self.saved[path]


def _select(tmp_path, scores):
    from dreamgym_core.loop import EpochSelector

    policy, lines = _SavedWeights(), []
    values = iter(scores)
    selector = EpochSelector(score=lambda: next(values), policy=policy, snapshot=tmp_path / "best", epochs=len(scores), say=lines.append)
    for epoch in range(1, len(scores) + 1):
        policy.weights = epoch  # one more epoch of training
        selector.after_epoch(epoch, loss=1.0 / epoch)
    return policy, selector.restore_best(), lines


def test_warm_start_keeps_the_earliest_best_validation_epoch(tmp_path):
    policy, metrics, lines = _select(tmp_path, [0.1, 0.5, 0.3, 0.5, 0.2])
    assert policy.weights == 2  # epoch 4 ties with 2; the earlier one has fitted the demos less
    assert metrics == {"warmstart/best_epoch": 2.0, "warmstart/valid_success": 0.5, "warmstart/valid_success_last": 0.2}
    assert not (tmp_path / "best").exists()  # the snapshot is removed once restored
    assert "(best)" in lines[1] and "(best)" not in lines[3]


def test_warm_start_whose_last_epoch_is_best_reloads_nothing(tmp_path):
    policy, metrics, _ = _select(tmp_path, [0.0, 0.25, 0.75])
    assert policy.weights == 3 and metrics["warmstart/best_epoch"] == 3.0
    assert policy.saves == [1, 2]  # the last epoch needs no snapshot


class FirstDraws:
    """Records the global random draws RL would see at its first iteration."""

    def __init__(self) -> None:
        self.draws: list[tuple[float, float, float]] = []

    @hookimpl
    def dreamgym_before_iteration(self, iteration, state):
        import numpy as np
        import random
        import torch

        if iteration == 0:
            self.draws.append((random.random(), float(np.random.rand()), float(torch.rand(1))))


def test_rl_starts_from_the_same_random_state_whatever_ran_before(register_plugin, tmp_path, monkeypatch):
    """A run that reloads its experience model draws fewer numbers before RL than one that
    trains it; RL must not depend on that, so rows sharing those parts share RL's draws."""
    import random

    import torch

    register_plugin(StandIns(), "stand-ins")
    spy = FirstDraws()
    plugins = register_plugin(spy, "first-draws")
    run_pipeline(_resolved(plugins, tmp_path / "a", iterations=1), plugins)
    plain = Runner._before_rl
    monkeypatch.setattr(Runner, "_before_rl", lambda self, **kw: (torch.rand(3), random.random(), plain(self, **kw))[2])
    run_pipeline(_resolved(plugins, tmp_path / "b", iterations=1), plugins)
    assert len(spy.draws) == 2 and spy.draws[0] == spy.draws[1]


def test_resume_refuses_a_buffer_that_lost_records_the_checkpoint_counted(register_plugin, tmp_path):
    register_plugin(pytest.importorskip("dreamgym_plugin_encoders"), "encoders")
    register_plugin(pytest.importorskip("dreamgym_plugin_exact"), "exact")
    plugins = register_plugin(StandIns(), "stand-ins")
    resolved = _resolved(plugins, tmp_path / "run", {"encoder": {"name": "hashing"}, "buffer": {"name": "exact"}}, iterations=1)
    run_pipeline(resolved, plugins)
    _unfinished(tmp_path / "run")
    for segment in (tmp_path / "run" / "buffer").glob("seg-*"):
        segment.unlink()
    with pytest.raises(DataError, match=r"run/buffer: the replay buffer ends at position 0, before the checkpoint's \d+"):
        run_pipeline(resolved, plugins, resume=True)


def test_store_synthetic_false_keeps_the_buffer_to_real_transitions(register_plugin, tmp_path):
    """By default RL's synthetic steps join the buffer (later steps retrieve them as demos);
    loop.store_synthetic: false stores none, and the offline seed stays as it was."""
    register_plugin(pytest.importorskip("dreamgym_plugin_encoders"), "encoders")
    register_plugin(pytest.importorskip("dreamgym_plugin_exact"), "exact")
    plugins = register_plugin(StandIns(), "stand-ins")
    parts = {"experience_model": {"name": "dice-lm"}, "encoder": {"name": "hashing"}, "buffer": {"name": "exact"}}

    def run(name: str, **loop) -> tuple[dict, list[dict]]:
        summary = run_pipeline(_resolved(plugins, tmp_path / name, parts, iterations=2, mode="dreamgym", **loop), plugins)
        return summary, [json.loads(line) for line in stored_transitions(tmp_path / name)]

    enriched_summary, enriched = run("enriched")
    real_summary, real = run("real-only", store_synthetic=False)
    assert real_summary["counters/synthetic_transitions"] > 0 and enriched_summary["counters/synthetic_transitions"] > 0
    assert any(t["source"] == "synthetic" for t in enriched)
    assert real and all(t["source"] == "offline" for t in real)
    assert real == [t for t in enriched if t["source"] == "offline"]


def test_rl_draws_from_the_experience_models_main_stream_only(register_plugin, tmp_path):
    """Synthetic RL steps use the experience model's main stream. Fidelity scoring and the
    replay of evaluated games draw from streams of their own, so turning them on leaves RL's
    synthetic transitions unchanged; another draw (loop.experience_draw) changes them and
    nothing before RL. The dice experience model makes every outcome a function of the seed."""
    register_plugin(pytest.importorskip("dreamgym_plugin_encoders"), "encoders")
    register_plugin(pytest.importorskip("dreamgym_plugin_exact"), "exact")
    plugins = register_plugin(StandIns(), "stand-ins")

    def run(name: str, *, measure: bool, draw: int = 0):
        parts = {
            # A policy without mistakes: the stand-in's mistake die also rolls on greedy calls, which measurements add.
            "policy": {"name": "scripted", "config": {"mistakes": 0.0}},
            "experience_model": {"name": "dice-lm"}, "encoder": {"name": "hashing"}, "buffer": {"name": "exact"},
            "eval": {"episodes": 6, "fidelity_episodes": 2 if measure else 0, "synthetic_agreement": measure},
        }
        run_pipeline(_resolved(plugins, tmp_path / name, parts, iterations=3, mode="dreamgym", experience_draw=draw), plugins)
        rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        synthetic = [t for t in map(json.loads, stored_transitions(tmp_path / name)) if t["source"] == "synthetic"]
        return rows, synthetic

    plain_rows, plain = run("plain", measure=False)
    measured_rows, measured = run("measured", measure=True)
    drawn_rows, drawn = run("drawn", measure=False, draw=1)
    assert "fidelity/success_agreement" in measured_rows[0] and "eval/synthetic_agreement" in measured_rows[-1]
    # The fidelity answers that failed to parse are kept, one line each; none without scoring.
    unparsed = (tmp_path / "measured" / "fidelity_unparsed.jsonl").read_text().splitlines()
    assert len(unparsed) == round(measured_rows[0]["fidelity/parse_failed"] * measured_rows[0]["fidelity/n"])
    assert not (tmp_path / "plain" / "fidelity_unparsed.jsonl").exists()
    assert plain and any(t["success"] for t in plain) and not all(t["success"] for t in plain if t["done"])
    assert measured == plain
    assert drawn != plain
    assert drawn_rows[0] == plain_rows[0]  # before RL: the same run


def test_warm_start_demos_stop_at_the_policys_step_cap():
    # Offline episodes may run past loop.max_steps (the env's own cap can be higher); the
    # policy never meets those steps, and their prompts would read "Step 7 of at most 6".
    task = Task(id="t", instruction="count", domain="count")
    steps = [Transition(task_id="t", episode_id="e", step=i, state=f"s{i}", action=f"a{i}", next_state=f"s{i + 1}",
                        reward=float(i == 7), done=i == 7, success=i == 7) for i in range(8)]  # fmt: skip
    pairs = demo_examples([Trajectory(task=task, transitions=steps)], max_steps=6, history_window=2)
    assert len(pairs) == 6 and "Step 6 of at most 6." in pairs[-1][0]
    assert not any("Step 7" in prompt for prompt, _ in pairs)


def test_play_offline_records_one_episode_until_the_env_ends_it():
    from stand_ins import CountConfig, CountDomain

    from dreamgym_core.rollout import play_offline

    domain = CountDomain(CountConfig())
    task = domain.tasks(split="train")[2]  # count to 3
    actions, seen = iter(["inc", "bogus", "inc", "inc", "stop", "inc"]), []

    def next_action(observation):
        seen.append(observation.text)
        return next(actions)

    trajectory = play_offline(domain.make_env(), task, "e0", next_action)
    steps = trajectory.transitions
    assert [t.action for t in steps] == ["inc", "bogus", "inc", "inc", "stop"]  # the env ended it: "inc" never asked for
    assert seen == ["count is 0", "count is 1", "count is 1", "count is 2", "count is 3"]
    assert [t.step for t in steps] == [0, 1, 2, 3, 4] and [t.valid for t in steps] == [True, False, True, True, True]
    assert all(t.source == "offline" and t.episode_id == "e0" and t.instruction == task.instruction for t in steps)
    assert steps[-1].done and steps[-1].success and steps[-1].reward == 1.0 and not any(t.done for t in steps[:-1])


def test_success_by_task_family():
    from dreamgym_core.report import _family_lines
    from dreamgym_core.rollout import success_by_family, task_family

    def played(task_id, success):
        task = Task(id=task_id, instruction="x", domain="d")
        step = Transition(task_id=task_id, episode_id="e", step=0, state="s", action="a", next_state="t", reward=float(success),
                          done=True, success=success)
        return Trajectory(task=task, transitions=[step])

    assert task_family(Task(id="miniwob/click-button/7", instruction="x", domain="d")) == "miniwob/click-button"
    assert task_family(Task(id="count-3", instruction="x", domain="d")) == ""
    games = [played("w/a/1", True), played("w/b/1", False), played("w/a/2", False), played("w/b/2", False), played("w/a/3", True)]
    assert success_by_family(games) == {"w/a": (2, 3), "w/b": (0, 2)}
    rows = [("untrained", {"eval_untrained/success_rate": 0.0}, "eval_untrained"),
            ("after RL", {"eval/success_rate/w/a": 2 / 3, "eval/episodes/w/a": 3.0, "eval/success_rate/w/b": 0.0, "eval/episodes/w/b": 2.0}, "eval")]
    assert _family_lines(rows)[3:] == ["| family | after RL |", "|---|---|", "| w/a | 0.667 (3) |", "| w/b | 0.000 (2) |"]
    assert _family_lines(rows[:1]) == []  # one family: no table


def _s2r_runner(iterations=4, share=0.5, real_budget=20, spent=0):
    """A Runner with only what _phase and _real_tasks_left read (two episodes of at most 3 steps a group)."""
    from types import SimpleNamespace

    runner = Runner.__new__(Runner)
    loop = SimpleNamespace(mode="s2r", iterations=iterations, s2r_synthetic_share=share, real_budget=real_budget,
                           group_size=2, max_steps=3)
    runner.cfg = SimpleNamespace(loop=loop)
    runner.counters = {"real_transitions": spent}
    return runner


def test_s2r_runs_the_synthetic_share_first_then_real_while_a_whole_group_fits():
    runner = _s2r_runner()
    assert [runner._phase(i) for i in range(4)] == ["synthetic", "synthetic", "real", "real"]
    # a group may take 2 * 3 = 6 real transitions: 20 - 15 = 5 left fits none, so the rest is synthetic
    assert _s2r_runner(spent=14)._real_tasks_left() == 1 and _s2r_runner(spent=15)._real_tasks_left() == 0
    assert _s2r_runner(spent=15)._phase(3) == "synthetic"



class _Policies:
    """Warm-startable policies whose ``sft`` takes no progress callback, or both (test doubles)."""

    class Old(SavingScriptedPolicy):
        def sft(self, *, examples, epochs, lr, batch_size):  # written before on_epoch and on_batch
            return {"losses/sft_loss": 1.0}

    class Stepping(SavingScriptedPolicy):
        def sft(self, *, examples, epochs, lr, batch_size, on_epoch=None, on_batch=None):
            for epoch in range(1, epochs + 1):
                for step in range(1, 4):
                    on_batch(epoch, step, 3, float(step))
                on_epoch(epoch, 2.0)
            return {"losses/sft_loss": 2.0}

    @hookimpl
    def dreamgym_register_models(self):
        return [ComponentSpec(name=f"scripted-{name}", factory=cls, config_type=ScriptConfig, description="Warm-startable (test double).")
                for name, cls in (("old", self.Old), ("stepping", self.Stepping))]


def test_the_warm_start_reports_steps_to_a_policy_that_takes_them_and_spares_one_that_does_not(register_plugin, tmp_path, capsys, monkeypatch):
    import dreamgym_core.progress as progress_module
    from dreamgym_core.progress import StepProgress

    register_plugin(StandIns(), "stand-ins")
    plugins = register_plugin(_Policies(), "policies")
    monkeypatch.setattr(progress_module, "StepProgress", lambda say, what, epochs: StepProgress(say, what, epochs, every_s=0.0))
    run_pipeline(_resolved(plugins, tmp_path / "old", {"policy": {"name": "scripted-old"}}, iterations=0, warmstart_epochs=2), plugins)
    assert "warm start epoch" not in capsys.readouterr().err
    run_pipeline(_resolved(plugins, tmp_path / "new", {"policy": {"name": "scripted-stepping"}}, iterations=0, warmstart_epochs=2), plugins)
    said = [line.split("] ", 1)[1] for line in capsys.readouterr().err.splitlines() if "warm start epoch" in line]
    assert said == [
        "warm start epoch 1/2: step 1/3, loss 1", "warm start epoch 1/2: step 2/3, loss 2", "warm start epoch 1/2: step 3/3, loss 3",
        "warm start epoch 1/2: loss 2",
        "warm start epoch 2/2: step 1/3, loss 1", "warm start epoch 2/2: step 2/3, loss 2", "warm start epoch 2/2: step 3/3, loss 3",
        "warm start epoch 2/2: loss 2",
    ]


def test_rollouts_and_evaluations_report_their_steps(register_plugin, tmp_path, capsys, monkeypatch):
    # An RL iteration or an evaluation of a pretrained policy on a CPU runs for minutes; each
    # play tells its lockstep steps (here every one: no minimum interval).
    import dreamgym_core.loop as loop_module
    from dreamgym_core.progress import RolloutProgress

    monkeypatch.setattr(loop_module, "RolloutProgress", lambda say, what: RolloutProgress(say, what, every_s=0.0))
    plugins = register_plugin(StandIns(), "stand-ins")
    run_pipeline(_resolved(plugins, tmp_path / "run", iterations=1, tasks_per_iteration=3, group_size=2), plugins)
    said = [line.split("] ", 1)[1] for line in capsys.readouterr().err.splitlines() if "still playing" in line]
    plays: dict[str, list[str]] = {}
    for line in said:
        plays.setdefault(line.split(": ")[0], []).append(line)
    # the warm-started policy's evaluation, the RL rollout (3 tasks x 2), the trained policy's evaluation
    assert list(plays) == ["playing eval_before (real)", "iteration 1/1 rollout (real)", "playing eval (real)"]
    for what, lines in plays.items():
        assert lines[0] == f"{what}: step 1/8, 6 of 6 episodes still playing"
        # one line per step played, with no more episodes playing than the step before
        steps = [int(line.split("step ")[1].split("/")[0]) for line in lines]
        playing = [int(line.split(", ")[1].split(" of ")[0]) for line in lines]
        assert steps == list(range(1, len(lines) + 1)) and playing == sorted(playing, reverse=True) and playing[-1] >= 1


def test_evaluating_a_run_reports_its_steps(register_plugin, tmp_path, capsys, monkeypatch):
    # ``dreamgym eval`` of a pretrained policy on a CPU plays for minutes too.
    import dreamgym_core.loop as loop_module
    from dreamgym_core.progress import RolloutProgress

    plugins = register_plugin(StandIns(), "stand-ins")
    resolved = _resolved(plugins, tmp_path / "run", iterations=1)
    run_pipeline(resolved, plugins, progress=False)
    capsys.readouterr()
    monkeypatch.setattr(loop_module, "RolloutProgress", lambda say, what: RolloutProgress(say, what, every_s=0.0))
    evaluate_run(resolved, plugins, split="test", episodes=2)
    said = [line.split("] ", 1)[1] for line in capsys.readouterr().err.splitlines() if line.startswith("[dreamgym")]
    assert said[0] == "evaluating the policy of checkpoint 1 on real test tasks"
    assert said[1] == "playing eval (real): step 1/8, 2 of 2 episodes still playing"
    evaluate_run(resolved, plugins, split="test", episodes=2, progress=False)
    assert "[dreamgym" not in capsys.readouterr().err


class _SteppingAlgo:
    """The recording algorithm with an ``update`` that reports two optimiser steps (test double)."""

    class Stepping(RecordingAlgo):
        def update(self, *, groups, on_batch=None):
            for step in (1, 2):
                on_batch(1, step, 2, 0.5 * step)
            return super().update(groups=groups)

    @hookimpl
    def dreamgym_register_algos(self):
        return [ComponentSpec(name="record-stepping", factory=self.Stepping, config_type=RecordConfig, description="Stepping (test double).")]


def test_rl_updates_report_their_steps_to_an_algorithm_that_takes_them_and_spare_one_that_does_not(
    register_plugin, tmp_path, capsys, monkeypatch,
):
    import dreamgym_core.progress as progress_module
    from dreamgym_core.progress import StepProgress

    register_plugin(StandIns(), "stand-ins")
    plugins = register_plugin(_SteppingAlgo(), "stepping")
    monkeypatch.setattr(progress_module, "StepProgress", lambda say, what, epochs: StepProgress(say, what, epochs, every_s=0.0))
    run_pipeline(_resolved(plugins, tmp_path / "old", iterations=2), plugins)  # "record": update(groups) only
    err = capsys.readouterr().err
    assert " update epoch" not in err
    # the start of every update is said whatever the algorithm takes, before its first minibatch
    started = [line.split("] ", 1)[1] for line in err.splitlines() if " update: " in line]
    logged = [json.loads(line) for line in (tmp_path / "old" / "metrics.jsonl").read_text().splitlines()]
    rollouts = [row for row in logged if "rollout/steps" in row]
    assert len(rollouts) == 2
    assert started == [
        f"iteration {i}/2 update: {row['rollout/episodes']:.0f} episodes, {row['rollout/steps']:.0f} steps"
        for i, row in enumerate(rollouts, 1)
    ]
    run_pipeline(_resolved(plugins, tmp_path / "new", {"algo": {"name": "record-stepping"}}, iterations=2), plugins)
    said = [line.split("] ", 1)[1] for line in capsys.readouterr().err.splitlines() if " update epoch" in line]
    assert said == [
        "iteration 1/2 update epoch 1: step 1/2, loss 0.5", "iteration 1/2 update epoch 1: step 2/2, loss 1",
        "iteration 2/2 update epoch 1: step 1/2, loss 0.5", "iteration 2/2 update epoch 1: step 2/2, loss 1",
    ]


def _broken_algo(how: str):
    """A RecordingAlgo that breaks its contract as ``how`` says."""
    from stand_ins import RecordingAlgo

    class Broken(RecordingAlgo):
        def act(self, *, prompts, greedy=False, temperature=None, evaluation=False):
            out = super().act(prompts=prompts, greedy=greedy, temperature=temperature, evaluation=evaluation)
            return out[:-1] if how == "act drops a prompt" else out

        def update(self, *, groups):
            metrics = super().update(groups=groups)
            return {
                "update returns None": None, "update returns NaN": {**metrics, "losses/policy_loss": float("nan")},
                "update returns text": {**metrics, "losses/policy_loss": "high"},
            }.get(how, metrics)

        def save(self, *, path):
            if how != "save writes nothing":
                super().save(path=path)

    if how == "no update":
        Broken.update = None  # type: ignore[assignment]
    return Broken


@pytest.mark.parametrize("how, message", [
    ("update returns None", r"update\(\) returned NoneType, expected a dict of metrics"),
    ("update returns NaN", r"update\(\) returned metric 'losses/policy_loss' = nan: training diverged"),
    ("update returns text", r"update\(\) returned metric 'losses/policy_loss' = 'high', expected a number"),
    ("act drops a prompt", r"act\(\) returned \d+ texts for \d+ prompts"),
    ("save writes nothing", r"save\(path=\.\.\.\) wrote nothing at .*checkpoints/\.it-00000\.partial/algo$"),
    ("no update", r"Broken has no update \(dreamgym check broken runs the conformance kit\)"),
    ("factory returns None", r"its factory returned None"),
])
def test_an_algorithm_that_breaks_its_contract_stops_the_run_naming_it(register_plugin, tmp_path, how, message):
    # Each was a traceback in core code minutes into a run, or a run that exited 0: a dropped
    # prompt lost its episode, a NaN loss left NaN weights, a save that wrote nothing a checkpoint
    # that --resume and eval could not use.
    from dreamgym_core.contracts import ComponentError
    from stand_ins import RecordConfig

    factory = (lambda config, **_: None) if how == "factory returns None" else _broken_algo(how)

    class Plugin:
        @hookimpl
        def dreamgym_register_algos(self):
            return [ComponentSpec(name="broken", factory=factory, config_type=RecordConfig, description=how)]

    register_plugin(StandIns(), "stand-ins")
    plugins = register_plugin(Plugin(), "broken")
    with pytest.raises(ComponentError, match=r"^algo 'broken' \(plugin 'broken'\): " + message):
        run_pipeline(_resolved(plugins, tmp_path / "run", {"algo": {"name": "broken"}}, iterations=1), plugins)


def test_an_experience_model_that_cannot_answer_at_all_stops_the_run(register_plugin, tmp_path):
    # Its errors were counted as environment errors, every synthetic episode failed, and the run
    # exited 0 having trained on nothing (data/trainable_steps 0).
    from dreamgym_core.contracts import ComponentError
    from stand_ins import DiceLM, DiceLMConfig

    class Mute(DiceLM):
        model_id = "mute"

        def generate(self, **_):
            raise RuntimeError("no server at 127.0.0.1:9")

    class Plugin:
        @hookimpl
        def dreamgym_register_models(self):
            return [ComponentSpec(name="mute", factory=Mute, config_type=DiceLMConfig, description="raises")]

    register_plugin(pytest.importorskip("dreamgym_plugin_encoders"), "encoders")
    register_plugin(pytest.importorskip("dreamgym_plugin_exact"), "exact")
    register_plugin(StandIns(), "stand-ins")
    plugins = register_plugin(Plugin(), "mute")
    parts = {"experience_model": {"name": "mute"}, "encoder": {"name": "hashing"}, "buffer": {"name": "exact"},
             "experience": {"skip": True}}
    resolved = _resolved(plugins, tmp_path / "run", parts, iterations=1, mode="dreamgym")
    with pytest.raises(ComponentError, match=r"^experience model 'mute': predict\(\) raised RuntimeError: no server at 127.0.0.1:9$"):
        run_pipeline(resolved, plugins)


def test_plugin_metrics_become_floats_and_a_non_finite_diagnostic_is_counted_not_fatal():
    import numpy as np

    from dreamgym_core.contracts import ComponentError, checked_metrics

    metrics = checked_metrics({"loss": np.float32(0.5), "steps": np.int64(3), "explained_variance": float("nan")}, "algo 'x'", "update()")
    assert metrics == {"loss": 0.5, "steps": 3.0, "errors/nonfinite_metrics": 1.0}
    assert all(type(v) is float for v in metrics.values())  # numpy scalars are not JSON
    with pytest.raises(ComponentError, match=r"^algo 'x': update\(\) returned metric 'losses/pg_loss' = inf: training diverged"):
        checked_metrics({"losses/pg_loss": float("inf")}, "algo 'x'", "update()")
    # a metric named 'step' replaced its row's iteration number in metrics.jsonl and the resume history
    with pytest.raises(ComponentError, match=r"^algo 'x': update\(\) returned a metric named 'step'"):
        checked_metrics({"loss": 0.5, "step": 100}, "algo 'x'", "update()")


class WorldCount:
    """The counting game whose world is its target: 6 tasks a split, 5 worlds, all shared by the splits."""

    @hookimpl
    def dreamgym_register_envs(self):
        class WorldDomain(CountDomain):
            def world_key(self, task: Task) -> str:
                return f"target {task.payload['target']}"

        return [ComponentSpec(name="count-worlds", factory=WorldDomain, config_type=CountConfig, description="Counting game with worlds (test double).")]


class ListedSplits:
    """The counting game with worlds, recording each split it is asked to list."""

    def __init__(self) -> None:
        self.listed: list[str] = []

    @hookimpl
    def dreamgym_register_envs(self):
        listed = self.listed

        class ListingDomain(CountDomain):
            def tasks(self, *, split: str) -> list[Task]:
                listed.append(split)
                return super().tasks(split=split)  # KeyError for a split it does not know

            def world_key(self, task: Task) -> str:
                return f"target {task.payload['target']}"

        return [ComponentSpec(name="count-listed", factory=ListingDomain, config_type=CountConfig, description="Counting game, listing spied.")]


@pytest.mark.parametrize("split", ["test", "tset"])
def test_world_checks_leave_an_eval_split_that_is_not_played_unlisted(register_plugin, tmp_path, split):
    # eval.episodes 0 plays no eval split, yet its worlds were counted: a domain that generates its
    # tasks (TextWorld with distinct_worlds resets each seed) did that work for nothing, and a
    # misspelt split, which the split checks rightly skip then, failed the run with a raw KeyError.
    register_plugin(StandIns(), "stand-ins")
    spy = ListedSplits()
    plugins = register_plugin(spy, "listed-splits")
    parts = {"env": {"name": "count-listed"}, "eval": {"episodes": 0, "split": split}}
    summary = run_pipeline(_resolved(plugins, tmp_path / "run", parts, iterations=1), plugins)
    assert split not in spy.listed and "train" in spy.listed
    assert "eval/success_rate" not in summary


class BranchNamed:
    """The counting game whose tasks of one split have ids holding Early Experience's branch tag."""

    def __init__(self, split: str) -> None:
        self.split = split

    @hookimpl
    def dreamgym_register_envs(self):
        tagged = self.split

        class BranchNamedDomain(CountDomain):
            def tasks(self, *, split: str) -> list[Task]:
                found = super().tasks(split=split)
                if split != tagged:
                    return found
                return [msgspec.structs.replace(t, id=t.id.replace("count-", "count/branchy-")) for t in found]

        return [ComponentSpec(name="count-branchy", factory=BranchNamedDomain, config_type=CountConfig, description="Counting game, tagged ids.")]


@pytest.mark.parametrize("split", ["train", "test"])
def test_a_task_id_holding_the_branch_tag_is_refused_naming_the_env_and_the_id(register_plugin, tmp_path, split):
    # A task's episode ids hold its id, and branch_parent read any episode id holding "/branch" as
    # an Early Experience branch of another episode: its history and its excluded demos were wrong.
    register_plugin(StandIns(), "stand-ins")
    plugins = register_plugin(BranchNamed(split), "branch-named")
    parts = {"env": {"name": "count-branchy"}}
    with pytest.raises(ConfigError, match=(
        rf"^inline.yaml: env 'count-branchy' \(plugin 'branch-named'\): '{split}' task id 'count/branchy-{split}-0' "
        r"holds '/branch', which marks Early Experience's branch episodes"
    )):
        run_pipeline(_resolved(plugins, tmp_path / "run", parts, iterations=1), plugins)
    assert not (tmp_path / "run" / "offline.jsonl").exists()


def test_held_out_play_counts_its_worlds_and_those_the_train_tasks_share(register_plugin, tmp_path, caplog):
    # 6 test tasks of 5 worlds, each a train task's world: the success rate counts one world twice and
    # trained worlds, which only a domain's world_key can tell; the run says so and the report shows it.
    register_plugin(StandIns(), "stand-ins")
    plugins = register_plugin(WorldCount(), "world-count")
    with caplog.at_level("WARNING"):
        summary = run_pipeline(_resolved(plugins, tmp_path / "run", {"env": {"name": "count-worlds"}}, iterations=1), plugins)
    assert (summary["eval/episodes"], summary["eval/worlds"], summary["eval/train_worlds"]) == (6, 5, 5)
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "env 'count-worlds': the 6 'test' tasks are 5 distinct worlds; a repeated world counts more than once" in warned
    assert "env 'count-worlds': 5 of the 'test' tasks' worlds are train tasks' worlds; play on them is not held out" in warned
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## Held-out real tasks (split `test`)" in report
    assert "- 6 episodes over **5 distinct worlds**" in report and "- **5 of these worlds are worlds of the train tasks**" in report


def test_a_domain_without_world_keys_reports_no_world_counts_and_the_train_split_is_not_called_held_out(register_plugin, tmp_path):
    plugins = register_plugin(StandIns(), "stand-ins")
    parts = {"eval": {"episodes": 6, "split": "train"}}
    summary = run_pipeline(_resolved(plugins, tmp_path / "run", parts, iterations=1), plugins)
    assert "eval/worlds" not in summary
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## Real tasks of the train split (eval.split: not held out)" in report and "Held-out" not in report


def test_fidelity_on_the_train_split_is_refused_before_anything_runs(register_plugin, tmp_path):
    # With eval.split train (or eval.episodes 0, which skipped the split checks), "held-out"
    # fidelity was scored on the tasks whose episodes the experience model trained on.
    register_plugin(pytest.importorskip("dreamgym_plugin_encoders"), "encoders")
    register_plugin(pytest.importorskip("dreamgym_plugin_exact"), "exact")
    plugins = register_plugin(StandIns(), "stand-ins")
    parts = {
        "experience_model": {"name": "dice-lm"}, "encoder": {"name": "hashing"}, "buffer": {"name": "exact"},
        "eval": {"episodes": 0, "split": "train", "fidelity_episodes": 2},
    }
    with pytest.raises(ConfigError, match=r"^inline.yaml: eval.fidelity_episodes scores the experience model on held-out tasks, and eval.split is 'train'"):
        run_pipeline(_resolved(plugins, tmp_path / "run", parts, iterations=1, mode="dreamgym"), plugins)
    assert not (tmp_path / "run" / "offline.jsonl").exists()


def test_listed_action_choice_with_an_algorithm_that_cannot_take_candidates_fails_before_anything_runs(register_plugin, tmp_path):
    plugins = register_plugin(StandIns(), "stand-ins")  # RecordingAlgo.act takes no candidates
    with pytest.raises(ConfigError, match=r"^inline.yaml: loop.action_choice=listed needs an algorithm whose act\(\) takes candidates"):
        run_pipeline(_resolved(plugins, tmp_path / "run", iterations=1, action_choice="listed"), plugins)
    assert not (tmp_path / "run" / "offline.jsonl").exists()


def test_a_rollout_with_listed_choice_gives_act_each_states_listed_actions():
    seen = []

    def act(prompts, listed=None):
        seen.append(listed)
        return ["<action>inc</action>"] * len(prompts)

    tasks = CountDomain(CountConfig()).tasks(split="train")[:2]
    common = dict(tasks=tasks, max_steps=2, history_window=2, seeds=[0, 1], source="real", tag="t")
    listed, _ = rollout(envs=[CountEnv(5), CountEnv(5)], act=act, listed_choice=True, **common)
    assert seen == [[["inc", "stop"], ["inc", "stop"]]] * 2
    # each decision keeps the answers it was picked from, rendered as act() scored them
    assert [d.candidates for t in listed for d in t.decisions] == [[render_response("inc"), render_response("stop")]] * 4
    generated, _ = rollout(envs=[CountEnv(5), CountEnv(5)], act=act, **common)  # generated: act gets the prompts alone
    assert seen[2:] == [None, None]
    assert [d.candidates for t in generated for d in t.decisions] == [[]] * 4


class FlakyOpenDomains:
    """The counting game whose third env fails to open; every env records its close()."""

    def __init__(self):
        self.envs: list = []

    @hookimpl
    def dreamgym_register_envs(self):
        spy = self

        class FlakyOpen(CountDomain):
            def collect(self, **kwargs):  # offline data from envs of its own, not counted
                return CountDomain(self.config).collect(**kwargs)

            def make_env(self):
                if len(spy.envs) == 2:
                    raise RuntimeError("simulator did not start")
                spy.envs.append(super().make_env())
                return spy.envs[-1]

        return [ComponentSpec(name="count-flaky", factory=FlakyOpen, config_type=CountConfig, description="Third env fails.")]


def test_envs_opened_before_one_fails_to_open_are_closed(register_plugin, tmp_path):
    # The envs were opened in a comprehension before play()'s try: the two that opened
    # (JVMs or browsers in a real domain) stayed open when the third failed.
    register_plugin(StandIns(), "stand-ins")
    spy = FlakyOpenDomains()
    plugins = register_plugin(spy, "flaky")
    resolved = _resolved(plugins, tmp_path / "run", {"env": {"name": "count-flaky"}}, iterations=1)
    with pytest.raises(Exception, match="simulator did not start"):
        run_pipeline(resolved, plugins)
    assert len(spy.envs) == 2 and all(env.closed for env in spy.envs)


class FailingFinish:
    """A lifecycle plugin whose run_finished hook raises."""

    @hookimpl
    def dreamgym_run_finished(self, run_dir, metrics):
        raise RuntimeError("hook failed")


def test_a_raising_run_finished_hook_still_closes_the_run(register_plugin, tmp_path):
    # run()'s finally called the hook before close(): a hook that raised left the domain
    # (and the buffer's open segment) unclosed.
    register_plugin(StandIns(), "stand-ins")
    spy = ClosingDomains()
    plugins = register_plugin(spy, "closing")
    register_plugin(FailingFinish(), "failing-finish")
    with pytest.raises(RuntimeError, match="hook failed"):
        run_pipeline(_resolved(plugins, tmp_path / "run", {"env": {"name": "count-closing"}}, iterations=1), plugins)
    assert (spy.built, spy.closed) == (1, 1)


def test_close_all_calls_every_closer_and_raises_the_first_error():
    from dreamgym_core.loop import close_all

    called = []

    def fails(name):
        def close():
            called.append(name)
            raise OSError(f"{name} failed")

        return close

    with pytest.raises(OSError, match="logger failed"):
        close_all([fails("logger"), lambda: called.append("buffer"), fails("domain")])
    assert called == ["logger", "buffer", "domain"]
    close_all([fails("env")], raise_first=False)  # while another error is on its way out
    assert called[-1] == "env"


def test_warm_start_epochs_are_scored_greedily_whatever_eval_temperature(register_plugin, tmp_path, monkeypatch):
    # warmstart_select_episodes plays "greedy episodes"; the selector played at eval.temperature,
    # so with eval.temperature > 0 each epoch was scored on another random draw.
    plugins = register_plugin(StandIns(), "stand-ins")
    resolved = _resolved(plugins, tmp_path / "run", {"eval": {"episodes": 2, "temperature": 0.4}}, iterations=1,
                         warmstart_select_episodes=2)
    seen = []
    monkeypatch.setattr(Runner, "evaluate", lambda self, **kwargs: seen.append(kwargs) or {"valid/success_rate": 0.5})
    runner = Runner(resolved, plugins, tmp_path / "run", progress=False)
    try:
        assert runner._epoch_selector(2).score() == 0.5
    finally:
        runner.close()
    assert seen == [{"prefix": "valid", "split": "valid", "episodes": 2, "temperature": 0.0}]


class _SelectionPolicies:
    """Policies that warm-start but cannot take part in its epoch selection (test doubles)."""

    class Old(SavingScriptedPolicy):
        def sft(self, *, examples, epochs, lr, batch_size):  # written before on_epoch
            return {"losses/sft_loss": 1.0}

    class Unsaved(ScriptedPolicy):
        def sft(self, *, examples, epochs, lr, batch_size, on_epoch=None):
            for epoch in range(1, epochs + 1):
                on_epoch(epoch, 1.0)
            return {"losses/sft_loss": 1.0}

    @hookimpl
    def dreamgym_register_models(self):
        return [ComponentSpec(name=f"scripted-{name}", factory=cls, config_type=ScriptConfig, description="Warm-startable (test double).")
                for name, cls in (("old", self.Old), ("unsaved", self.Unsaved))]


@pytest.mark.parametrize(
    "policy, plugin, reason",
    [
        ("scripted-old", "selection", r"its sft\(\) takes no on_epoch"),
        ("scripted-unsaved", "selection", r"it has no save\(\) or reload\(\)"),
        ("scripted", "stand-ins", r"it has no sft\(\), and it has no save\(\) or reload\(\)"),
    ],
)
def test_warm_start_epoch_selection_is_refused_before_the_run_for_a_policy_that_cannot_take_part(register_plugin, tmp_path, policy, plugin, reason):
    # It failed at the warm start, minutes into the run: a bare TypeError (an sft() without
    # on_epoch) or AttributeError (no save), naming neither the field nor the policy's plugin.
    register_plugin(StandIns(), "stand-ins")
    plugins = register_plugin(_SelectionPolicies(), "selection")
    parts = {"policy": {"name": policy}}
    resolved = _resolved(plugins, tmp_path / "run", parts, iterations=0, warmstart_epochs=2, warmstart_select_episodes=2)
    with pytest.raises(ConfigError, match=(
        rf"^inline.yaml: loop.warmstart_select_episodes scores each warm-start epoch .* and policy '{policy}' "
        rf"\(plugin '{plugin}'\) cannot: {reason}; set it to 0$"
    )):
        run_pipeline(resolved, plugins)
    assert not (tmp_path / "run" / "offline.jsonl").exists()  # refused before any data
    # without warm-start epochs there is nothing to select, and nothing is asked of the policy
    run_pipeline(_resolved(plugins, tmp_path / "none", parts, iterations=0, warmstart_select_episodes=2), plugins)


def test_warm_start_epoch_selection_keeps_the_last_weights_when_sft_scores_no_epoch(register_plugin, tmp_path, caplog):
    # SavingScriptedPolicy's sft() takes **kwargs and never calls on_epoch: the selector then
    # reloaded a best-epoch snapshot that was never written (FileNotFoundError).
    import logging

    plugins = register_plugin(StandIns(), "stand-ins")
    resolved = _resolved(plugins, tmp_path / "run", {"policy": {"name": "scripted-saving"}}, iterations=0,
                         warmstart_epochs=2, warmstart_select_episodes=2)
    with caplog.at_level(logging.WARNING, logger="dreamgym_core.loop"):
        run_pipeline(resolved, plugins)
    assert "policy 'scripted-saving' (plugin 'stand-ins'): sft() never called on_epoch" in caplog.text
    assert not (tmp_path / "run" / "policy_warmstart_best").exists()

    from dreamgym_core.loop import EpochSelector

    policy = _SavedWeights()
    policy.weights = 2  # the last epoch's
    selector = EpochSelector(score=lambda: 1.0, policy=policy, snapshot=tmp_path / "best", epochs=2, say=print)
    assert selector.restore_best() == {} and policy.weights == 2


class _ClosesBadly(CountEnv):
    def close(self) -> None:
        raise BrokenPipeError("engine already gone")


def _play_runner(register_plugin, tmp_path, monkeypatch, envs: list, **loop) -> Runner:
    """A runner whose real envs are ``envs``, in order."""
    plugins = register_plugin(StandIns(), "stand-ins")
    resolved = _resolved(plugins, tmp_path / "run", {"eval": {"episodes": 0}}, iterations=0, **loop)
    runner = Runner(resolved, plugins, prepare_run_dir(resolved, resume=False), progress=False)
    supply = iter(envs)
    monkeypatch.setattr(runner.domain, "make_env", lambda: next(supply))
    return runner


def test_a_play_closes_every_env_when_one_close_fails_and_names_the_env_plugin(register_plugin, tmp_path, monkeypatch):
    # The envs were closed in a bare loop: the first close() that raised ended the run with that
    # raw error, and the envs after it stayed open (their simulators or browsers too).
    import dreamgym_core.loop as loop_module

    envs = [_ClosesBadly(5), CountEnv(5), _ClosesBadly(5), CountEnv(5)]
    runner = _play_runner(register_plugin, tmp_path, monkeypatch, envs)
    try:
        tasks = runner.train_tasks[:4]
        with pytest.raises(DreamGymError, match=(
            r"^env 'count' \(plugin 'stand-ins'\): an env's close\(\) failed after playing x: BrokenPipeError: engine already gone$"
        )):
            runner.play(tasks, "real", temperature=0.0, seeds=[0, 1, 2, 3], tag="x")
        assert envs[1].closed and envs[3].closed
        # a failing play reports its own error; the envs still close, and their close errors are dropped
        more = [_ClosesBadly(5), CountEnv(5)]
        monkeypatch.setattr(runner.domain, "make_env", lambda supply=iter(more): next(supply))
        monkeypatch.setattr(loop_module, "rollout", lambda **kwargs: (_ for _ in ()).throw(RuntimeError("the policy died")))
        with pytest.raises(RuntimeError, match="the policy died"):
            runner.play(tasks[:2], "real", temperature=0.0, seeds=[0, 1], tag="y")
        assert more[1].closed
    finally:
        runner.close()


def test_a_play_split_by_real_envs_at_once_numbers_its_episodes_from_first_episode(register_plugin, tmp_path, monkeypatch):
    # The batches were numbered from 0 (first_episode=i, not first_episode + i).
    runner = _play_runner(register_plugin, tmp_path, monkeypatch, [CountEnv(5) for _ in range(4)], real_envs_at_once=2)
    try:
        played, _ = runner.play(runner.train_tasks[:4], "real", temperature=0.0, seeds=[0, 1, 2, 3], tag="x", first_episode=10)
    finally:
        runner.close()
    assert [traj.transitions[0].episode_id for traj in played] == ["x-10", "x-11", "x-12", "x-13"]
