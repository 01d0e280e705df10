"""Fixes from a review of the commands' output files: outputs into a moved or copied run
directory, regular files under /dev/shm taken for streams, a failed collect write as a
traceback, eval-model's report lost to a failed write, and --backend loaded as a plugin name.

Uses the stand-ins of tests/stand_ins.py (as tests/test_cli_review_fixes.py does) where a run
is needed, and the real twx/hf-tiny/exact plugins where a command plays or generates."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import msgspec
import pytest
import yaml
from click.testing import CliRunner

from dreamgym_core import checkpoint
from dreamgym_core import config as config_module
from dreamgym_core.cli import cli
from dreamgym_core.commands import collect as collect_module
from dreamgym_core.config import PipelineConfig, resolve
from dreamgym_core.loop import run_pipeline
from dreamgym_core.testing import make_transitions

from stand_ins import StandIns, pipeline_dict


def _one_line_error(result) -> str:
    """The one line of stderr of a command that failed as the CLI fails (no traceback)."""
    assert result.exit_code != 0, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, (result.output, result.exception)
    return lines[0]


def _full_disk(real_open_new):
    """``open_new`` whose files fail every write as a full disk does (ENOSPC)."""

    class FullDisk:
        def __init__(self, fh):
            self.fh = fh

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.fh, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    return lambda path, mode="wb": FullDisk(real_open_new(path, mode))


# --- 1: outputs into a moved or copied run directory -------------------------------------------


_QUICK = ["--limit", "1", "--max-new-tokens", "4", "--retries", "0"]  # eval-model: one short answer


@pytest.mark.parametrize(
    "command",
    [
        ["eval-model", "{copied}/config.json", "--heldout", "{held}", *_QUICK, "--predictions", "{copied}/offline.jsonl"],
        ["eval-model", "{copied}/config.json", "--heldout", "{held}", *_QUICK, "--failures", "{copied}/offline.jsonl"],
        ["collect", "--pipeline", "{copied}/config.json", "--transitions", "2", "--out", "{copied}/offline.jsonl"],
        ["collect", "--env", "twx", "--transitions", "2", "--out", "{copied}/offline.jsonl"],
    ],
    ids=["eval-model-predictions", "eval-model-failures", "collect-pipeline-out", "collect-env-out"],
)
def test_outputs_into_a_copied_run_are_refused(tmp_path, command):
    # the check compared with config.json's run_dir, the old place: the copy's offline.jsonl (its
    # resume's training data) was overwritten, exit 0. The copy is made by hand, of a pipeline of
    # real tiny plugins, so that the old code got as far as writing.
    from test_fidelity import _eval_model_files

    pipeline, heldout, _ = _eval_model_files(tmp_path)
    copied = tmp_path / "copied"
    (copied / "buffer").mkdir(parents=True)
    stored = yaml.safe_load(pipeline.read_text()) | {"run_dir": str(tmp_path / "original")}
    (copied / "config.json").write_text(json.dumps(stored))
    (copied / "offline.jsonl").write_text("the run's data\n")
    names = {"copied": str(copied), "held": str(heldout)}
    result = CliRunner().invoke(cli, [part.format(**names) for part in command], prog_name="dreamgym")
    assert _one_line_error(result) == (
        f"Error: {command[-2]} {copied / 'offline.jsonl'}: is inside the run directory {copied}, whose files the run reads back; write elsewhere"
    )
    assert (copied / "offline.jsonl").read_text() == "the run's data\n"


@pytest.fixture
def copied_run(register_plugin, tmp_path):
    """A finished stand-in run copied elsewhere: its config.json still names the old run_dir. It has
    no buffer/ (the stand-in pipeline has no buffer): config.sha256 tells it for a run directory."""
    plugins = register_plugin(StandIns(), "stand-ins")
    resolved = resolve(msgspec.convert(pipeline_dict(str(tmp_path / "run"), iterations=1), type=PipelineConfig), plugins, where="p.yaml")
    run_pipeline(resolved, plugins)
    copied = tmp_path / "copied"
    shutil.copytree(tmp_path / "run", copied)
    return resolved, plugins, copied


def test_eval_trajectories_and_curve_plot_into_a_copied_run_are_refused(copied_run, tmp_path, monkeypatch):
    resolved, plugins, copied = copied_run
    monkeypatch.setattr(config_module, "load_resolved", lambda source, overrides=(): (resolved, plugins))
    offline = (copied / "offline.jsonl").read_bytes()
    for args in (["eval", "p.yaml", "--trajectories", str(copied / "offline.jsonl")], ["curve", "p.yaml", "--plot", str(copied / "c.png")]):
        result = CliRunner().invoke(cli, args, prog_name="dreamgym")
        assert _one_line_error(result).startswith(f"Error: {args[2]} {args[3]}: is inside the run directory {copied},")
    assert (copied / "offline.jsonl").read_bytes() == offline and not (copied / "c.png").exists()


def test_a_run_directory_is_told_by_what_it_holds(tmp_path):
    from dreamgym_core.config import is_run_directory

    assert "is_run_directory" in config_module.__all__ and "refuse_inside_a_run" in config_module.__all__
    (tmp_path / "config.json").write_text("{}")
    assert not is_run_directory(tmp_path)  # a config.json alone (a model's, say) is no run
    (tmp_path / "config.sha256").write_text("x\n")
    assert is_run_directory(tmp_path)
    (tmp_path / "config.sha256").unlink()
    (tmp_path / "buffer").mkdir()
    assert is_run_directory(tmp_path)


# --- 2: a regular file under /dev/shm is a file, not a stream ----------------------------------

SHM = Path("/dev/shm")
needs_shm = pytest.mark.skipif(not SHM.is_dir() or not os.access(SHM, os.W_OK), reason="no writable /dev/shm")


@pytest.fixture
def shm_file():
    path = SHM / f"dreamgym-test-{uuid.uuid4().hex}.jsonl"
    yield path
    for leftover in (path, path.with_name(path.name + ".tmp"), path.with_name(path.name + ".partial")):
        leftover.unlink(missing_ok=True)


@needs_shm
def test_streams_are_told_by_file_type_not_by_place(tmp_path, shm_file):
    shm_file.write_text("data\n")
    assert not checkpoint.is_stream_path(shm_file) and not checkpoint.is_stream_path(SHM / "not-there.jsonl")
    assert checkpoint.is_stream_path("/dev/null")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert checkpoint.is_stream_path(fifo)
    # an open file stays a stream whatever it leads to (pytest sends fd 1 to a regular file)
    link = tmp_path / "out"
    link.symlink_to("/dev/stdout")
    assert checkpoint.is_stream_path(link) and checkpoint.is_stream_path("/dev/fd/1")


@needs_shm
def test_collect_writes_a_file_under_dev_shm(shm_file):
    # refused as "a device or stream" before
    result = CliRunner().invoke(cli, ["collect", "--env", "twx", "--transitions", "3", "--out", str(shm_file), "-q"])
    assert result.exit_code == 0, result.output
    assert len(shm_file.read_text().splitlines()) == 3


@needs_shm
def test_a_failed_export_to_dev_shm_keeps_the_file_there(tmp_path, shm_file):
    # written in place, truncated first: a write that failed (a full tmpfs; here a 4 KiB file-size
    # limit, for an export of 11 KB) destroyed the file that was there
    pytest.importorskip("dreamgym_plugin_exact")
    seed = tmp_path / "seed.jsonl"
    seed.write_bytes(b"".join(msgspec.json.encode(t) + b"\n" for t in make_transitions(30)))
    buf = ["--path", str(tmp_path / "buf")]
    dreamgym = [sys.executable, "-m", "dreamgym_core.cli", "buffer"]
    assert subprocess.run([*dreamgym, "import", *buf, str(seed)], capture_output=True).returncode == 0
    shm_file.write_bytes(b"x" * 4000)

    def limit_file_size():
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    done = subprocess.run([*dreamgym, "export", *buf, str(shm_file)], capture_output=True, text=True, preexec_fn=limit_file_size)
    assert done.returncode != 0 and "cannot write: File too large" in done.stderr, done.stderr
    assert shm_file.read_bytes() == b"x" * 4000


# --- 3: a failed collect write is one line ----------------------------------------------------


def test_a_failed_collect_write_is_one_line_and_keeps_the_file(tmp_path, monkeypatch):
    # only the open was wrapped: a full disk while streaming records was a traceback, twice over
    monkeypatch.setattr(collect_module, "open_new", _full_disk(collect_module.open_new))
    out = tmp_path / "out.jsonl"
    out.write_text("old\n")
    result = CliRunner().invoke(cli, ["collect", "--env", "twx", "--transitions", "3", "--out", str(out), "-q"])
    assert _one_line_error(result) == f"Error: --out {out}: cannot write: No space left on device; the file there before is kept"
    assert out.read_text() == "old\n" and not (tmp_path / "out.jsonl.partial").exists()


# --- 4: eval-model prints its report before writing its files ----------------------------------


def test_eval_model_prints_its_report_when_a_file_fails_to_write(tmp_path, monkeypatch):
    # --failures and --predictions were written first: a full disk lost the whole report
    from test_fidelity import _eval_model_files

    pipeline, heldout, _ = _eval_model_files(tmp_path)
    monkeypatch.setattr(checkpoint, "open_new", _full_disk(checkpoint.open_new))
    scored = tmp_path / "scored.jsonl"
    args = ["eval-model", str(pipeline), "--heldout", str(heldout), "--limit", "1", "--max-new-tokens", "4", "--retries", "0",
            "--predictions", str(scored)]  # fmt: skip
    result = CliRunner().invoke(cli, args, prog_name="dreamgym")
    assert _one_line_error(result) == f"Error: {scored}: cannot write: No space left on device; the file there before is kept"
    assert json.loads(result.stdout)["fidelity/n"] == 1.0 and not scored.exists()


# --- 5: --backend names a buffer component, which --plugin may provide -------------------------

# A stand-in third-party plugin, installed for the test only (a dist-info on sys.path): its buffer
# 'ring-test' is the exact buffer under a name other than its plugin's, which no installed plugin has.
_RING_PLUGIN = '''
from dreamgym_core.hookspecs import hookimpl
from dreamgym_core.specs import ComponentSpec
from dreamgym_plugin_exact import make_exact
from dreamgym_plugin_exact.config import ExactConfig


@hookimpl
def dreamgym_register_buffers():
    return [ComponentSpec(name="ring-test", factory=make_exact, config_type=ExactConfig, description="exact, renamed")]
'''


def test_a_buffer_of_a_plugin_named_otherwise_is_chosen_with_plugin(tmp_path, monkeypatch):
    # 'plugin ring-test is not installed': --backend was loaded as a plugin name
    pytest.importorskip("dreamgym_plugin_exact")
    site = tmp_path / "site"
    (site / "ringbufs_test_plugin").mkdir(parents=True)
    (site / "ringbufs_test_plugin" / "__init__.py").write_text(_RING_PLUGIN)
    (site / "ringbufs_test-1.0.dist-info").mkdir()
    (site / "ringbufs_test-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: ringbufs-test\nVersion: 1.0\n")
    (site / "ringbufs_test-1.0.dist-info" / "entry_points.txt").write_text("[dreamgym]\nringbufs-test = ringbufs_test_plugin\n")
    monkeypatch.syspath_prepend(str(site))
    seed = tmp_path / "seed.jsonl"
    seed.write_bytes(b"".join(msgspec.json.encode(t) + b"\n" for t in make_transitions(5)))
    buf = ["--path", str(tmp_path / "buf"), "--backend", "ring-test"]
    result = CliRunner().invoke(cli, ["buffer", "import", *buf, "--plugin", "ringbufs-test", str(seed)])
    assert result.exit_code == 0 and "added 5" in result.output, result.output
    result = CliRunner().invoke(cli, ["buffer", "info", *buf, "--plugin", "ringbufs-test"])
    assert result.exit_code == 0 and json.loads(result.output)["records"] == 5, result.output
    # without --plugin, --backend is still the plugin to load, with the error as before
    result = CliRunner().invoke(cli, ["buffer", "info", *buf], prog_name="dreamgym")
    assert _one_line_error(result).startswith("Error: --backend/--plugin: plugin 'ring-test' is not installed")
