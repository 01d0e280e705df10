"""benchmarks/table1/run.py's running side: shared parts copied whole and after every donor is found,
donors checked against their cells, files written whole, arguments checked before any work, the
table's recorded command, and a resumed cell's first start.

Nothing is trained: ``_dreamgym_run`` (one ``dreamgym run``, minutes of CPU per cell) is replaced by
a stand-in that leaves the run directory as a finished run does, since these tests are about what
run.py does around the runs. Run directories and cells go to a temporary directory.
TABLE1_RUN_PY names another run.py to test (e.g. an older one, with its base.yaml beside it)."""

from __future__ import annotations

import errno
import importlib.util
import io
import json
import os
import shlex
import shutil
import sys
import types
from pathlib import Path

import pytest

from dreamgym_core.errors import DataError

REPO = Path(__file__).resolve().parents[1]
RUN_PY = Path(os.environ.get("TABLE1_RUN_PY") or REPO / "benchmarks" / "table1" / "run.py")
COMMITTED_CELLS = REPO / "benchmarks" / "table1" / "results" / "cells"  # read only
RUN_DIR = Path("<run_dir>")  # how a cell's overrides record its run directory
# A run's first metrics row (before RL) and its summary, as the stand-in run leaves them.
FIRST = {"eval_untrained/success_rate": 0.0, "eval_before/success_rate": 0.5,
         "fidelity/n": 60.0, "fidelity/parse_failed": 0.0, "fidelity/success_agreement": 0.95}
SUMMARY = {"eval/success_rate": 0.625, "counters/real_transitions": 0, "counters/offline_transitions": 400,
           "counters/synthetic_transitions": 96}


@pytest.fixture
def table1(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("table1_run_fixes", RUN_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(module, "CELLS", tmp_path / "cells")
    monkeypatch.setattr(module, "git_commit", lambda: "abc1234")
    return module


def _fake_run(items: list[str], run_dir: Path, env: dict) -> dict:
    """Stands in for ``dreamgym run``: a finished run's directory, each stage not copied in
    trained here (its ``trained_by`` names the run's row)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.sha256").write_text("0\n")
    for stage in ("policy_init", "experience_model"):
        if not (run_dir / stage).exists():  # the loop reuses a stage copied in
            (run_dir / stage).mkdir()
            (run_dir / stage / "trained_by").write_text(run_dir.parent.name)
            (run_dir / stage / "done").write_text("")
    (run_dir / "metrics.jsonl").write_text(json.dumps(FIRST) + "\n")
    return SUMMARY


def _donor(table1, first: dict = FIRST, game: str = "coin", seed: int = 0) -> Path:
    """The seed's default-row run directory, as its finished run left it."""
    donor = table1.run_dir_of(game, "GRPO DreamGym", seed)
    for stage in ("policy_init", "experience_model"):
        (donor / stage).mkdir(parents=True)
        (donor / stage / "config.json").write_text("{}")
        (donor / stage / "done").write_text("")
    (donor / "offline.jsonl").write_text("{}\n")
    (donor / "metrics.jsonl").write_text(json.dumps(first) + "\n")
    return donor


def _write(table1, game: str, row: str, seed: int, *, warmstart: float = 0.5, protocol: int | None = None) -> Path:
    """A cached cell of the current protocol whose run gave FIRST."""
    cell = {
        "game": game, "row": row, "seed": seed, "base_sha256": table1.base_sha256(), "protocol": table1.PROTOCOL,
        "machine": "test cpu", "success": 0.625, "real_transitions": 0.0, "offline_transitions": 400.0,
        "warmstart_success": warmstart, "fidelity": {k: v for k, v in FIRST.items() if k.startswith("fidelity/")},
        "overrides": table1.overrides(game, row, seed, RUN_DIR),
    }
    path = table1.cell_path(game, row, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cell))
    return path


def _main(table1, monkeypatch, *args: str) -> None:
    monkeypatch.setattr(sys, "argv", ["run.py", *args])
    table1.main()


def _seed_dirs(table1) -> list[str]:
    return sorted(str(p.relative_to(table1.RUNS)) for p in table1.RUNS.rglob("seed*"))


class Killed(BaseException):
    """A kill (Ctrl-C, SIGKILL) part way through."""


# 1a
def test_a_copy_killed_part_way_is_redone_not_taken_as_complete(table1, monkeypatch) -> None:
    _donor(table1)
    run_dir = table1.run_dir_of("coin", "SFT", 0)
    plain = shutil.copytree

    def dying(src, dst, **kw):  # killed as the policy's weights are copied
        def copy(s, d, **k):
            if Path(s).name == "config.json":
                raise Killed
            return shutil.copy2(s, d, **k)
        return plain(src, dst, copy_function=copy, **kw)

    monkeypatch.setattr(shutil, "copytree", dying)
    with pytest.raises(Killed):
        table1.share_from("coin", "SFT", 0, run_dir)
    monkeypatch.setattr(shutil, "copytree", plain)
    table1.share_from("coin", "SFT", 0, run_dir)  # the rerun
    assert (run_dir / "policy_init" / "config.json").exists()  # the policy the cell would load
    assert sorted(p.name for p in run_dir.parent.iterdir()) == ["seed0"]  # no partial copy beside it


# 1b
def test_a_row_whose_model_row_has_not_run_leaves_no_run_directory(table1) -> None:
    _donor(table1)
    row = "w/o reasoning (listed actions)"
    run_dir = table1.run_dir_of("coin", row, 0)
    with pytest.raises(SystemExit, match="run draw 0 of this row first"):
        table1.share_from("coin", row, 0, run_dir)
    # a directory left here was taken as complete later: the row trained a model of its own
    assert not run_dir.exists()


# 1b
def test_rows_run_after_the_row_whose_model_they_play_in_one_command(table1, monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(table1, "_dreamgym_run", _fake_run)
    _donor(table1)
    listed, base = "w/o reasoning (listed actions)", "w/o reasoning"
    _main(table1, monkeypatch, "--games", "coin", "--seeds", "0", "--rows", listed, base, "--out", str(tmp_path / "t.md"))
    model = table1.run_dir_of("coin", listed, 0) / "experience_model"
    assert (model / "trained_by").read_text() == table1.slug(base)  # played, not trained by the listed row
    assert table1.current("coin", listed, 0) is not None and table1.current("coin", base, 0) is not None


# 2
def test_the_recorded_command_of_an_earlier_protocols_table_rewrites_it(table1, monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(table1, "CELLS", COMMITTED_CELLS)
    out = tmp_path / "p8.md"
    _main(table1, monkeypatch, "--games", "coin", "mapreader", "--seeds", *map(str, range(10)), "--report", "--protocol", "8",
          "--out", str(out))
    written = out.read_text()
    recorded = shlex.split(written.splitlines()[2].removeprefix("Produced by `").removesuffix("`;"))
    assert recorded[recorded.index("--protocol") + 1] == "8" and "--report" in recorded  # else it runs protocol 9's cells
    out.unlink()
    _main(table1, monkeypatch, *recorded[2:])
    assert out.read_text() == written


# 2
def test_the_recorded_command_gives_its_rows(table1, monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(table1, "run_cell", lambda *a: pytest.fail("the cell is cached"))
    row = "SFT (listed actions)"
    _write(table1, "coin", row, 0)
    out = tmp_path / "t.md"
    _main(table1, monkeypatch, "--games", "coin", "--seeds", "0", "--rows", row, "--out", str(out))
    recorded = shlex.split(out.read_text().splitlines()[2].removeprefix("Produced by `").removesuffix("`;"))
    assert recorded[recorded.index("--rows") + 1] == row


class _DiskFull:
    """A file being written whose write of text holding ``marker`` stops half way (a full disk;
    a kill leaves the same), the rest of the file's writes as they are."""

    def __init__(self, file, marker):
        self._file, self._marker = file, marker

    def write(self, data):
        if self._marker not in (data.decode() if isinstance(data, bytes) else data):
            return self._file.write(data)
        self._file.write(data[: len(data) // 2])
        self._file.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self._file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._file.close()


def _disk_full(monkeypatch, marker: str) -> None:
    # io.open: what Path.write_text and os.fdopen (checkpoint.atomic_write) both open through
    plain = io.open
    monkeypatch.setattr(io, "open", lambda file, mode="r", *a, **k: (
        _DiskFull(plain(file, mode, *a, **k), marker) if set(mode) & set("wax+") else plain(file, mode, *a, **k)))


# 3
def test_a_table_write_cut_short_leaves_the_earlier_table_whole(table1, monkeypatch, tmp_path) -> None:
    _write(table1, "coin", "SFT", 0)
    out = tmp_path / "t.md"
    out.write_text("the committed table\n")
    with monkeypatch.context() as patched:
        _disk_full(patched, "Produced by")
        with pytest.raises((OSError, DataError)):
            _main(table1, monkeypatch, "--games", "coin", "--seeds", "0", "--report", "--out", str(out))
    assert out.read_text() == "the committed table\n"


# 3
def test_a_cell_write_cut_short_leaves_the_earlier_cell_whole(table1, monkeypatch) -> None:
    monkeypatch.setattr(table1, "_dreamgym_run", _fake_run)
    path = table1.cell_path("coin", "GRPO DreamGym", 0)
    path.parent.mkdir(parents=True)
    path.write_text('{"stale": true}')  # a cell of other overrides, run again
    with monkeypatch.context() as patched:
        _disk_full(patched, '"wall_seconds"')
        with pytest.raises((OSError, DataError)):
            table1.run_cell("coin", "GRPO DreamGym", 0)
    assert path.read_text() == '{"stale": true}'


# 3
def test_an_unreadable_cell_stops_with_its_name(table1) -> None:
    path = _write(table1, "coin", "SFT", 0)
    path.write_text(path.read_text()[:40])  # cut short by a kill while written in place
    with pytest.raises(SystemExit, match=path.name):
        table1.current("coin", "SFT", 0)


# 4
def test_a_donor_run_directory_unlike_its_cached_cell_stops_the_rows_that_copy_it(table1) -> None:
    _write(table1, "coin", "GRPO DreamGym", 0, warmstart=0.5)
    donor = _donor(table1, {**FIRST, "eval_before/success_rate": 0.25})  # another machine's rounding
    with pytest.raises(SystemExit, match=r"the cached cell \{'warmstart_success': 0.5"):
        table1._before_rl("coin", "GRPO DreamGym", 0)
    run_dir = table1.run_dir_of("coin", "SFT", 0)
    with pytest.raises(SystemExit):
        table1.share_from("coin", "SFT", 0, run_dir)
    assert not run_dir.exists()
    (donor / "metrics.jsonl").write_text(json.dumps(FIRST) + "\n")  # the cell's own run
    assert table1._before_rl("coin", "GRPO DreamGym", 0) == donor


# 5
@pytest.mark.parametrize("report", [False, True])
def test_a_misspelled_row_is_refused_before_any_work(table1, monkeypatch, tmp_path, report) -> None:
    monkeypatch.setattr(table1, "_dreamgym_run", _fake_run)
    donor = _donor(table1)
    _write(table1, "coin", "SFT", 0)
    out = tmp_path / "t.md"
    with pytest.raises(SystemExit) as stopped:
        _main(table1, monkeypatch, "--games", "coin", "--seeds", "0", "--rows", "SFT (listed action)",
              *(["--report"] if report else []), "--out", str(out))
    assert stopped.value.code == 2
    assert _seed_dirs(table1) == [str(donor.relative_to(table1.RUNS))]  # no run directory of the misspelled row
    assert not out.exists()


# 5
def test_an_out_directory_and_a_negative_draw_are_refused_before_any_cell_runs(table1, monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(table1, "run_cell", lambda *a: pytest.fail("a cell ran"))
    for args in (["--out", str(tmp_path)], ["--draws", "-1", "--out", str(tmp_path / "t.md")]):
        with pytest.raises(SystemExit) as stopped:
            _main(table1, monkeypatch, "--games", "coin", "--seeds", "0", "--rows", "SFT", *args)
        assert stopped.value.code == 2


# 6
def test_a_resumed_cell_records_its_first_starts_time_and_commit(table1, monkeypatch) -> None:
    clock, commits = [1000.0], ["first1"]
    monkeypatch.setattr(table1, "time", types.SimpleNamespace(time=lambda: clock[0]))
    monkeypatch.setattr(table1, "git_commit", lambda: commits[0])

    def killed_once(items, run_dir, env):
        if clock[0] == 1000.0:  # the first attempt: started, then killed
            run_dir.mkdir(parents=True)
            (run_dir / "config.sha256").write_text("0\n")
            raise Killed
        clock[0] += 10.0  # the resumed attempt's own time
        return _fake_run(items, run_dir, env)

    monkeypatch.setattr(table1, "_dreamgym_run", killed_once)
    with pytest.raises(Killed):
        table1.run_cell("coin", "GRPO DreamGym", 0)
    clock[0], commits[0] = 5000.0, "second"
    cell = table1.run_cell("coin", "GRPO DreamGym", 0)
    assert (cell["wall_seconds"], cell["commit"]) == (4010.0, "first1")
