"""Fixes from a review of the CLI and config: run directories of other files, outputs written into
the run directory, misspelt plugin names, names a run makes, a deleted working directory, plugins
listed twice, duplicate keys in YAML merges, and s2r settings outside s2r.

Uses the stand-ins of tests/stand_ins.py, as tests/test_loop.py does."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest
import yaml
from click.testing import CliRunner

from dreamgym_core import config as config_module
from dreamgym_core.cli import cli
from dreamgym_core.config import PipelineConfig, load_pipeline, pipeline_from_dict, resolve
from dreamgym_core.errors import ConfigError, DataError, PluginNotFound
from dreamgym_core.loggers import RUN_FILES, JsonlConfig, JsonlSink, TensorBoardConfig
from dreamgym_core.loop import run_pipeline

from stand_ins import StandIns, pipeline_dict


def _resolved(plugins, run_dir: Path, parts: dict | None = None, **loop):
    pipeline = msgspec.convert(pipeline_dict(str(run_dir), **loop) | (parts or {}), type=PipelineConfig)
    return resolve(pipeline, plugins, where="inline.yaml")


def _pipeline_file(tmp_path: Path, run_dir: Path) -> Path:
    """The stand-in pipeline as a file: phase 1 reads it; no installed plugin provides its components."""
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(pipeline_dict(str(run_dir), iterations=1)))
    return path


def _invoke_with(monkeypatch, resolved, plugins, *args: str):
    """The CLI, with the stand-in pipeline ``resolved`` as what any PIPELINE argument loads."""
    monkeypatch.setattr(config_module, "load_resolved", lambda source, overrides=(): (resolved, plugins))
    return CliRunner().invoke(cli, list(args), prog_name="dreamgym")


def _one_line_error(result) -> str:
    """The one line of stderr of a command that failed as the CLI fails (no traceback)."""
    assert result.exit_code != 0, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, (result.output, result.exception)
    return lines[0]


# --- 1: a run_dir of another directory's files ---------------------------------------------


def test_a_run_dir_holding_files_of_no_run_is_refused_and_left_as_it_was(register_plugin, tmp_path, monkeypatch):
    # It wrote config.json, offline.jsonl, metrics.jsonl ... among the files, over its report.md, and exited 0.
    plugins = register_plugin(StandIns(), "stand-ins")
    project = tmp_path / "project"
    project.mkdir()
    (project / "notes.txt").write_text("mine\n")
    (project / "report.md").write_text("my report\n")  # a name a run writes too
    resolved = _resolved(plugins, project, iterations=1)
    result = _invoke_with(monkeypatch, resolved, plugins, "run", "pipeline.yaml")
    assert _one_line_error(result) == f"Error: run_dir {project}: holds files of no run (notes.txt); choose an empty or new directory"
    assert result.exit_code == 2
    assert sorted(p.name for p in project.iterdir()) == ["notes.txt", "report.md"]
    assert (project / "report.md").read_text() == "my report\n"


def test_a_run_dir_seeded_with_a_donors_parts_still_runs(register_plugin, tmp_path):
    # benchmarks/table1 (copy_parts) and test_end_to_end copy offline.jsonl and policy_init/ into a
    # new run directory before the run; an empty existing directory is a fresh run's too.
    plugins = register_plugin(StandIns(), "stand-ins")
    run_pipeline(_resolved(plugins, tmp_path / "donor", iterations=1), plugins)
    seeded = tmp_path / "seeded"
    seeded.mkdir()
    (seeded / "offline.jsonl").write_bytes((tmp_path / "donor" / "offline.jsonl").read_bytes())
    (seeded / "policy_init").mkdir()
    run_pipeline(_resolved(plugins, seeded, iterations=1), plugins)
    assert (seeded / "summary.json").is_file()
    (tmp_path / "empty").mkdir()
    run_pipeline(_resolved(plugins, tmp_path / "empty", iterations=1), plugins)
    assert (tmp_path / "empty" / "summary.json").is_file()


# --- 2: outputs written into the run directory ---------------------------------------------


def test_eval_trajectories_into_the_run_directory_is_refused_before_play(register_plugin, tmp_path, monkeypatch):
    # eval --trajectories RUN/offline.jsonl replaced the run's offline data, which a resume trains on.
    plugins = register_plugin(StandIns(), "stand-ins")
    run = tmp_path / "run"
    resolved = _resolved(plugins, run, iterations=1)
    run_pipeline(resolved, plugins)
    offline = (run / "offline.jsonl").read_bytes()
    result = _invoke_with(monkeypatch, resolved, plugins, "eval", str(tmp_path / "p.yaml"), "--trajectories", str(run / "offline.jsonl"))
    assert _one_line_error(result) == (
        f"Error: --trajectories {run / 'offline.jsonl'}: is inside the run directory {run}, whose files the run reads back; write elsewhere"
    )
    assert (run / "offline.jsonl").read_bytes() == offline
    result = _invoke_with(monkeypatch, resolved, plugins, "curve", str(tmp_path / "p.yaml"), "--plot", str(run / "checkpoints" / "curve.png"))
    assert _one_line_error(result).startswith(f"Error: --plot {run / 'checkpoints' / 'curve.png'}: is inside the run directory {run}")
    assert not (run / "checkpoints" / "curve.png").exists()
    played = _invoke_with(monkeypatch, resolved, plugins, "eval", str(tmp_path / "p.yaml"), "--trajectories", str(tmp_path / "t.jsonl"))
    assert played.exit_code == 0, played.output  # outside it, as before


@pytest.mark.parametrize(
    "command",
    [
        ["eval-model", "{p}", "--heldout", "{held}", "--predictions", "{run}/offline.jsonl"],
        ["eval-model", "{p}", "--heldout", "{held}", "--failures", "{run}/sub/../offline.jsonl"],
        ["collect", "--pipeline", "{p}", "--transitions", "2", "--out", "{run}/offline.jsonl"],
    ],
    ids=["eval-model-predictions", "eval-model-failures", "collect-out"],
)
def test_other_outputs_into_the_run_directory_are_refused(tmp_path, command):
    run = tmp_path / "run"
    (run / "sub").mkdir(parents=True)
    (run / "offline.jsonl").write_text("the run's data\n")
    (tmp_path / "held.jsonl").write_text("")
    names = {"p": str(_pipeline_file(tmp_path, run)), "held": str(tmp_path / "held.jsonl"), "run": str(run)}
    result = CliRunner().invoke(cli, [part.format(**names) for part in command], prog_name="dreamgym")
    line = _one_line_error(result)
    assert f": is inside the run directory {run}, whose files the run reads back; write elsewhere" in line, line
    assert line.startswith(f"Error: {command[-2]} ")
    assert (run / "offline.jsonl").read_text() == "the run's data\n"


# --- 3: a plugin name spelt as its distribution normalises it --------------------------------


def test_a_plugin_name_with_the_wrong_separator_names_the_entry_point():
    # "Distribution 'dreamgym-plugin-reward_entropy' is installed but declares no entry point": the
    # lookup normalised the name and found the distribution, whose entry point is 'reward-entropy'.
    from dreamgym_core.plugins import installed_plugins

    installed = installed_plugins()
    if "reward-entropy" not in installed:
        pytest.skip("needs dreamgym-plugin-reward-entropy installed")
    message = str(PluginNotFound("reward_entropy", installed))
    assert "declares no entry point" not in message
    assert message.endswith("Distribution 'dreamgym-plugin-reward-entropy' is installed; its entry point is 'reward-entropy'.")


# --- 4: names a run makes ------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["buffer_seeded", "policy_init", "checkpoints", "buffer", "experience_model", "policy_best", "policy_warmstart_best"]
)
def test_a_metrics_file_named_as_a_place_the_run_makes_is_refused(name):
    # policy_init: IsADirectoryError after data collection; buffer_seeded: the marker appended to
    with pytest.raises(ValueError, match=f"filename {name!r} is a file the run writes itself"):
        JsonlConfig(filename=name)
    with pytest.raises(ValueError, match=f"subdir '{name}/tb' is inside a place the run writes itself"):
        TensorBoardConfig(subdir=f"{name}/tb")


def test_every_name_a_run_makes_is_a_run_file(register_plugin, tmp_path):
    register_plugin(pytest.importorskip("dreamgym_plugin_encoders"), "encoders")
    register_plugin(pytest.importorskip("dreamgym_plugin_exact"), "exact")
    plugins = register_plugin(StandIns(), "stand-ins")
    parts = {"policy": {"name": "scripted-saving"}, "experience_model": {"name": "dice-lm"},
             "encoder": {"name": "hashing"}, "buffer": {"name": "exact"},
             "data": {"expert_episodes": 4, "noisy_episodes": 0, "random_episodes": 0, "branch_actions": 1},
             "eval": {"episodes": 2, "valid_every": 1, "valid_episodes": 2, "keep": "best-valid", "fidelity_episodes": 2}}  # fmt: skip
    run = tmp_path / "run"
    run_pipeline(_resolved(plugins, run, parts, iterations=2, mode="dreamgym", warmstart_epochs=1, warmstart_select_episodes=2), plugins)
    made = {p.name for p in run.iterdir()} - {"metrics.jsonl"}  # the jsonl logger's own file
    assert {"buffer_seeded", "buffer", "checkpoints", "policy_init", "experience_model", "branches.jsonl", "policy_best"} <= made
    assert made <= RUN_FILES, made - RUN_FILES


def test_a_metrics_file_that_cannot_be_opened_is_one_line_naming_it(tmp_path):
    (tmp_path / "metrics.jsonl").mkdir()
    sink = JsonlSink(JsonlConfig(), run_dir=str(tmp_path))
    with pytest.raises(DataError, match=rf"^{re.escape(str(tmp_path / 'metrics.jsonl'))}: cannot open the metrics file \(Is a directory\)$"):
        sink.log(step=0, metrics={"m": 1.0})


# --- 5: a deleted working directory --------------------------------------------------------


def test_a_pipeline_is_read_when_the_working_directory_was_deleted(tmp_path, monkeypatch):
    # `dreamgym config show /abs/pipeline.yaml` was a FileNotFoundError traceback (Path.cwd()).
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(pipeline_dict(str(tmp_path / "run"))))
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    assert load_pipeline(path).run_dir == str(tmp_path / "run")
    with pytest.raises(ConfigError, match=r"run_dir='runs/x' is not a usable path"):  # relative to no directory
        pipeline_from_dict(pipeline_dict("runs/x"))


# --- 6: a plugin listed twice --------------------------------------------------------------


def test_a_plugin_listed_twice_is_refused():
    # loaded once, but the copy changed the config hash, so a resume without it was refused
    with pytest.raises(ConfigError, match=r"^<pipeline dict>: plugins names 'textworld' more than once"):
        pipeline_from_dict(pipeline_dict("runs/x") | {"plugins": ["textworld", "hf", "textworld"]})


# --- 7: duplicate keys inside a YAML merge -------------------------------------------------


@pytest.mark.parametrize(
    "loop",
    [
        "{<<: {iterations: 1, iterations: 2}, mode: real}",
        "{<<: [{mode: real}, {iterations: 1, iterations: 2}]}",
        "{<<: {<<: {iterations: 1, iterations: 2}}, mode: real}",
    ],
    ids=["inline", "in-a-list", "nested"],
)
def test_a_key_given_twice_inside_a_merge_is_refused(tmp_path, loop):
    with pytest.raises(ConfigError, match=r"not valid YAML \(line 1\d, column \d+\): duplicate key 'iterations'"):
        load_pipeline(_with_loop(tmp_path, loop))


def test_merges_still_override_one_another(tmp_path):
    # the first merged mapping wins over later ones, the mapping's own keys over all of them
    loop = load_pipeline(_with_loop(tmp_path, "{<<: [{mode: real, iterations: 1}, {iterations: 5, group_size: 3}], iterations: 2}")).loop
    assert (loop.mode, loop.iterations, loop.group_size) == ("real", 2, 3)


def _with_loop(tmp_path: Path, loop: str) -> Path:
    """The stand-in pipeline as a file whose last line is ``loop: <loop>``."""
    data = pipeline_dict(str(tmp_path / "run"))
    del data["loop"]
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data) + f"loop: {loop}\n")
    return path


# --- 8: s2r settings outside s2r -----------------------------------------------------------


@pytest.mark.parametrize("mode", ["real", "dreamgym"])
def test_s2r_settings_outside_s2r_are_refused(mode):
    parts = {"experience_model": {"name": "m"}, "encoder": {"name": "e"}, "buffer": {"name": "b"}}
    data = pipeline_dict("runs/x", mode=mode, real_budget=64, s2r_synthetic_share=0.5) | parts
    with pytest.raises(ConfigError, match=(
        rf"loop.real_budget=64, loop.s2r_synthetic_share=0.5 only apply to loop.mode='s2r' \(it is '{mode}'\); drop them or set the mode"
    )):
        pipeline_from_dict(data)
    assert pipeline_from_dict(pipeline_dict("runs/x", mode=mode) | parts).loop.real_budget == 0  # the defaults pass
    assert pipeline_from_dict(data | {"loop": data["loop"] | {"mode": "s2r"}}).loop.real_budget == 64
