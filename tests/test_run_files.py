"""Files a run writes into its directory: never written through a planted symbolic link; errors
restoring them name the file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dreamgym_core.checkpoint import atomic_write, read_transitions, write_records
from dreamgym_core.errors import DataError
from dreamgym_core.loggers import JsonlConfig, JsonlSink
from dreamgym_core.testing import make_transitions


def _atomic(path: Path) -> None:
    atomic_write(path, b'{"new": 1}\n')


def _records(path: Path) -> None:
    write_records(path, make_transitions(2))


def _rewind(path: Path) -> None:
    sink = JsonlSink(JsonlConfig(), run_dir=str(path.parent))
    sink.path = path  # the rewind under test, at the name each test gives (a config refuses run files' names)
    sink.rewind(history=[{"step": 0, "m": 1.0}])
    sink.close()


WRITERS = {"atomic_write": _atomic, "write_records": _records, "metrics rewind": _rewind}


@pytest.mark.parametrize("writer", WRITERS)
def test_a_link_planted_at_the_temporary_name_is_not_written_through(tmp_path, writer):
    """A run directory others can write to (say, under /tmp) could hold ``<file>.tmp`` linking to
    one of the user's files: writing the temporary file would overwrite that file."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    target = run_dir / "config.json"
    os.symlink(victim, run_dir / "config.json.tmp")
    WRITERS[writer](target)
    assert victim.read_text() == "precious\n"
    assert target.is_file() and not target.is_symlink()


@pytest.mark.parametrize("writer", WRITERS)
def test_a_temporary_file_left_by_a_killed_write_is_replaced(tmp_path, writer):
    target = tmp_path / "config.json"
    (tmp_path / "config.json.tmp").write_text("half a file")
    WRITERS[writer](target)
    assert not (tmp_path / "config.json.tmp").exists()
    assert "half a file" not in target.read_text()


def test_records_written_so_read_back(tmp_path):
    path = tmp_path / "offline.jsonl"
    write_records(path, make_transitions(3))
    assert len(read_transitions(path)) == 3


def test_metrics_are_not_appended_through_a_planted_link(tmp_path):
    """metrics.jsonl is appended to: a link planted at that name would have the run append to
    the file it points at. Such a link is a one-line error naming the file."""
    from dreamgym_core.errors import DataError

    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    os.symlink(victim, run_dir / "metrics.jsonl")
    sink = JsonlSink(JsonlConfig(), run_dir=str(run_dir))
    with pytest.raises(DataError, match="metrics.jsonl: a symbolic link"):
        sink.log(step=0, metrics={"m": 1.0})
    assert victim.read_text() == "precious\n"


def test_metrics_are_appended_to_a_file_of_the_run(tmp_path):
    sink = JsonlSink(JsonlConfig(), run_dir=str(tmp_path))
    sink.log(step=0, metrics={"m": 1.0})
    sink.close()
    sink = JsonlSink(JsonlConfig(), run_dir=str(tmp_path))
    sink.log(step=1, metrics={"m": 2.0})
    sink.close()
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 2


@pytest.mark.parametrize("writer", WRITERS)
def test_a_link_planted_at_the_file_itself_is_replaced_not_written_through(tmp_path, writer):
    """``run/report.md -> ~/notes`` is replaced by the run's file; the file it pointed at stays."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    target = run_dir / "report.md"
    os.symlink(victim, target)
    WRITERS[writer](target)
    assert victim.read_text() == "precious\n"
    assert target.is_file() and not target.is_symlink()


class _SavesInPlace:
    """A backend whose save writes into the folder it is given, keeping what is there."""

    def save(self, *, path: str) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "weights").write_bytes(b"w")


def _experience_model_done(run_dir: Path) -> Path:
    from types import SimpleNamespace

    from dreamgym_core.stages import EXPERIENCE_DIR, train_experience_model

    pipeline = SimpleNamespace(
        experience=SimpleNamespace(train_demos="same-task", epochs=1, lr=1e-3, batch_size=1, success_repeats=1), loop=SimpleNamespace(demos="nearest")
    )
    model = SimpleNamespace(train=lambda **_: {"loss": 1.0})
    train_experience_model(
        model, _SavesInPlace(), make_transitions(2), annotate=lambda t: t, buffer=None, pipeline=pipeline, run_dir=run_dir,
        say=lambda _: None,
    )
    return run_dir / EXPERIENCE_DIR / "done"


def test_the_experience_model_trains_on_same_world_demos_when_the_pipeline_asks(tmp_path) -> None:
    """loop.demos: same-world-first reaches training with the model's domain's world_of; the
    default passes nothing, so an experience model whose train lacks the argument still trains."""
    from types import SimpleNamespace

    from dreamgym_core.stages import train_experience_model

    domain = SimpleNamespace(world_of=lambda task_id: task_id.removesuffix("~syn"))
    for demos in ("same-world-first", "nearest"):
        seen: dict = {}
        pipeline = SimpleNamespace(
            experience=SimpleNamespace(train_demos="any", epochs=1, lr=1e-3, batch_size=1, success_repeats=1), loop=SimpleNamespace(demos=demos)
        )
        model = SimpleNamespace(train=lambda **kw: seen.update(kw) or {"loss": 1.0}, domain=domain)
        (tmp_path / demos).mkdir()
        train_experience_model(
            model, _SavesInPlace(), make_transitions(2), annotate=lambda t: t, buffer=None, pipeline=pipeline,
            run_dir=tmp_path / demos, say=lambda _: None,
        )
        if demos == "nearest":
            assert "world_of" not in seen
        else:
            assert seen["world_of"]("t~syn") == "t"


def test_the_experience_model_trains_on_each_success_as_often_as_the_pipeline_asks(tmp_path) -> None:
    """experience.success_repeats shows each winning transition that many times to joint SFT (the
    others once); the annotated file keeps the data as it is, each transition once."""
    from types import SimpleNamespace

    from dreamgym_core.checkpoint import read_transitions
    from dreamgym_core.stages import train_experience_model

    data = make_transitions(16)
    wins = [t for t in data if t.success]
    assert 0 < len(wins) < len(data)
    for repeats in (1, 3):
        seen: dict = {}
        said: list[str] = []
        pipeline = SimpleNamespace(
            experience=SimpleNamespace(train_demos="any", epochs=1, lr=1e-3, batch_size=1, success_repeats=repeats),
            loop=SimpleNamespace(demos="nearest"),
        )
        model = SimpleNamespace(train=lambda **kw: seen.update(kw) or {"loss": 1.0})
        run_dir = tmp_path / f"r{repeats}"
        run_dir.mkdir()
        train_experience_model(
            model, _SavesInPlace(), data, annotate=lambda t: t, buffer=None, pipeline=pipeline, run_dir=run_dir, say=said.append,
        )
        shown = seen["transitions"]
        assert len(shown) == len(data) + (repeats - 1) * len(wins)
        assert all(shown.count(t) == (repeats if t.success else 1) for t in data)
        assert read_transitions(run_dir / "offline_annotated.jsonl") == data
        assert any("success_repeats" in line for line in said) == (repeats > 1)


def _policy_init_done(run_dir: Path) -> Path:
    from types import SimpleNamespace

    from dreamgym_core.loop import Runner

    runner = SimpleNamespace(run_dir=run_dir, policy=_SavesInPlace(), who=lambda field: field)
    Runner._save_policy_init(runner, {"loss": 1.0})
    return run_dir / "policy_init" / "done"


MARKERS = {"experience_model/done": _experience_model_done, "policy_init/done": _policy_init_done}


@pytest.mark.parametrize("marker", MARKERS)
def test_a_saved_stages_done_marker_is_not_written_through_a_planted_link(tmp_path, marker):
    # before: the marker was written with write_text, which follows a link planted at its name
    # and created the file it names outside the run directory (the link names no file yet: one
    # to an existing file reads as a finished stage, which is then reloaded, not saved)
    victim = tmp_path / "elsewhere" / "victim"
    victim.parent.mkdir()
    run_dir = tmp_path / "run"
    (run_dir / marker).parent.mkdir(parents=True)
    os.symlink(victim, run_dir / marker)
    done = MARKERS[marker](run_dir)
    assert not victim.exists()
    assert done.is_file() and not done.is_symlink() and done.read_text() == "1\n"


class _Reloads:
    """A backend that records the folders it reloads, and saves as :class:`_SavesInPlace`."""

    def __init__(self) -> None:
        self.reloaded: list[str] = []

    def reload(self, *, path: str) -> None:
        self.reloaded.append(path)

    def save(self, *, path: str) -> None:
        _SavesInPlace().save(path=path)


def _reload_trained(run_dir: Path) -> bool:
    from dreamgym_core.stages import EXPERIENCE_DIR, reload_trained

    backend = _Reloads()
    found = reload_trained(backend, run_dir)
    assert found == bool(backend.reloaded)
    return found and backend.reloaded == [str(run_dir / EXPERIENCE_DIR)]


def _warm_policy_reused(run_dir: Path) -> bool:
    from types import SimpleNamespace

    from dreamgym_core.loop import Runner

    runner = SimpleNamespace(run_dir=run_dir, policy=_Reloads(), _say=lambda _: None, counters={"valid_transitions": 0})
    runner._reload_policy = lambda: Runner._reload_policy(runner)
    runner._warmstart_policy = lambda offline: {"warmstart/sft_loss": 1.0}
    runner._save_policy_init = lambda metrics: None
    metrics = Runner._warm_policy(runner, [])
    reused = bool(runner.policy.reloaded)
    assert metrics == ({} if reused else {"warmstart/sft_loss": 1.0})  # reloaded, or trained
    return reused


def _checkpoints_policy_reloaded(run_dir: Path) -> bool:
    from types import SimpleNamespace

    from dreamgym_core.errors import DataError
    from dreamgym_core.loop import Runner

    runner = SimpleNamespace(run_dir=run_dir, policy=_Reloads())
    try:
        Runner._reload_policy(runner, required_by="it-00001")
    except DataError as err:
        assert "no 'done' marker" in str(err) and not runner.policy.reloaded
        return False
    return runner.policy.reloaded == [str(run_dir / "policy_init")]


FINISHED = {
    "experience_model": _reload_trained, "policy_init (warm start)": _warm_policy_reused,
    "policy_init (a checkpoint's)": _checkpoints_policy_reloaded,
}


@pytest.mark.parametrize("stage", FINISHED)
def test_a_link_planted_at_a_done_marker_is_not_a_finished_stage(tmp_path, stage):
    # before: the check was (dir / "done").exists(), which follows the link: one to any file
    # made the stage count as finished, and whatever its folder held was loaded as trained
    run_dir = tmp_path / "run"
    folder = run_dir / stage.split()[0]
    folder.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("1\n")
    os.symlink(elsewhere, folder / "done")
    assert not FINISHED[stage](run_dir)
    (folder / "done").unlink()
    (folder / "done").write_text("1\n")
    assert FINISHED[stage](run_dir)  # a marker of its own still is one


def test_a_plugins_own_error_restoring_its_state_is_given_the_file(tmp_path):
    """A curriculum's DataError ("malformed state: 'draws'") named neither the checkpoint nor
    its state.json; an error that names the file already is left as it is."""
    from dreamgym_core.checkpoint import _restoring

    state = tmp_path / "checkpoints" / "it-00001" / "state.json"
    with pytest.raises(DataError) as info:
        with _restoring(state, "the curriculum's state"):
            raise DataError("curriculum 'reward-entropy': malformed state: 'draws'")
    assert str(info.value) == f"{state}: cannot restore the curriculum's state: curriculum 'reward-entropy': malformed state: 'draws'"
    with pytest.raises(DataError) as info:
        with _restoring(state, "the curriculum's state"):
            raise DataError(f"{state}: bad")
    assert str(info.value) == f"{state}: bad"


def test_collected_data_of_the_wrong_type_names_the_env():
    """A domain whose collect returns Transitions, not Trajectories, failed deep in the loop
    ('Transition' object has no attribute 'transitions')."""
    from types import SimpleNamespace

    from dreamgym_core.errors import ConformanceError
    from dreamgym_core.stages import collect

    flat = SimpleNamespace(name="guessnum", collect=lambda **kw: make_transitions(2))
    with pytest.raises(ConformanceError, match=r"env 'guessnum': collect\(policy='expert'\) returned Transition items, expected a list of Trajectory"):
        collect(flat, tasks=[], policy="expert", episodes=1, seed=0)
    nothing = SimpleNamespace(name="guessnum", collect=lambda **kw: None)
    with pytest.raises(ConformanceError, match=r"returned NoneType, expected a list of Trajectory"):
        collect(nothing, tasks=[], policy="expert", episodes=1, seed=0)


def test_collected_data_with_a_non_finite_reward_names_the_env():
    """offline.jsonl wrote a NaN reward as null, which no resume could read back."""
    from types import SimpleNamespace

    import msgspec

    from dreamgym_core.errors import ConformanceError
    from dreamgym_core.records import Task, Trajectory
    from dreamgym_core.stages import collect

    steps = [msgspec.structs.replace(t, reward=float("nan")) for t in make_transitions(1)]
    task = Task(id=steps[0].task_id, instruction="guess", domain="guessnum")
    broken = SimpleNamespace(name="guessnum", collect=lambda **kw: [Trajectory(task=task, transitions=steps)])
    with pytest.raises(ConformanceError, match=r"env 'guessnum': collect\(policy='expert'\) returned step \d+ of episode .* with reward nan"):
        collect(broken, tasks=[], policy="expert", episodes=1, seed=0)


@pytest.mark.parametrize(
    "command",
    [
        ["eval", "{p}", "--trajectories", "{p}"],
        ["curve", "{p}", "--plot", "{link}"],
        ["eval-model", "{p}", "--heldout", "{heldout}", "--predictions", "{p}"],
        ["eval-model", "{p}", "--heldout", "{heldout}", "--failures", "{link}"],
        ["buffer", "export", "--pipeline", "{p}", "{p}"],
    ],
    ids=["eval", "curve", "eval-model-predictions", "eval-model-failures", "buffer-export"],
)
def test_no_output_option_overwrites_the_pipeline_it_reads(tmp_path, command):
    # each replaced the pipeline file (with trajectories, a PNG, JSONL) and exited 0
    from click.testing import CliRunner

    from dreamgym_core.cli import cli

    pipeline = tmp_path / "p.yaml"
    pipeline.write_text("plugins: []\nenv: {name: countgame}\npolicy: {name: x}\nalgo: {name: x}\nloop: {mode: real}\n")
    (tmp_path / "link.yaml").symlink_to(pipeline)
    (tmp_path / "held.jsonl").write_text("")
    before = pipeline.read_bytes()
    names = {"p": str(pipeline), "link": str(tmp_path / "link.yaml"), "heldout": str(tmp_path / "held.jsonl")}
    result = CliRunner().invoke(cli, [part.format(**names) for part in command])
    assert result.exit_code != 0
    message = result.output + str(result.exception or "")
    assert "--pipeline file, which the export would overwrite" in message or "is the PIPELINE file, which it would overwrite" in message, message
    assert pipeline.read_bytes() == before
