"""``dreamgym buffer`` commands, on real exact/annoy buffers and encoders."""

import json

import msgspec
import pytest
from click.testing import CliRunner

from dreamgym_core.cli import cli
from dreamgym_core.commands.buffer import command
from dreamgym_core.testing import make_transitions

pytest.importorskip("dreamgym_plugin_exact")
pytest.importorskip("dreamgym_plugin_encoders")

if "buffer" not in cli.commands:  # until "buffer" is listed in COMMAND_MODULES
    cli.add_command(command)


def _invoke(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture
def jsonl(tmp_path):
    path = tmp_path / "seed.jsonl"
    path.write_bytes(b"".join(msgspec.json.encode(t) + b"\n" for t in make_transitions(30)))
    return path


@pytest.mark.parametrize("backend", ["exact", "annoy"])
def test_import_query_info_export(tmp_path, jsonl, backend):
    buf = ["--path", str(tmp_path / "buf"), "--backend", backend]
    result = _invoke("buffer", "import", *buf, str(jsonl))
    assert result.exit_code == 0 and "read 30, added 30" in result.output
    assert "added 0" in _invoke("buffer", "import", *buf, str(jsonl)).output
    target = make_transitions(30)[11]
    result = _invoke("buffer", "query", *buf, "--state", target.state, "--action", target.action, "-k", "3")
    lines = result.output.strip().splitlines()
    assert len(lines) == 3 and msgspec.json.decode(lines[0]) == msgspec.to_builtins(target)
    stats = json.loads(_invoke("buffer", "info", *buf).output)
    assert stats["records"] == 30 and stats["by_source"] == {"offline": 30}
    out = tmp_path / "out.jsonl"
    assert "wrote 30" in _invoke("buffer", "export", *buf, str(out)).output
    assert out.read_bytes() == jsonl.read_bytes()


def test_buffer_from_pipeline(tmp_path, jsonl):
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(
        "plugins: [exact, encoders]\nenv: {name: x}\npolicy: {name: x}\nalgo: {name: x}\nloop: {mode: real}\n"
        f"encoder: {{name: hashing, config: {{dim: 128}}}}\nbuffer: {{name: exact}}\nrun_dir: {tmp_path / 'run'}\n"
    )
    assert "added 30" in _invoke("buffer", "import", "--pipeline", str(pipeline), str(jsonl)).output
    stats = json.loads(_invoke("buffer", "info", "--pipeline", str(pipeline)).output)
    assert stats["dim"] == 128 and stats["path"] == str(tmp_path / "run" / "buffer")


def test_bad_input_gives_one_line_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    result = _invoke("buffer", "import", "--path", str(tmp_path / "b"), str(bad))
    assert result.exit_code != 0 and "bad.jsonl:1: not a valid Transition record" in result.output
    result = _invoke("buffer", "export", "--path", str(tmp_path / "b"), str(tmp_path / "nodir" / "out.jsonl"))
    assert result.exit_code != 0 and "nodir/out.jsonl: directory" in result.output and "does not exist" in result.output
    result = _invoke("buffer", "info", "--path", str(tmp_path / "b"), "--backend", "exactt")
    assert result.exit_code != 0 and "Did you mean 'exact'" in result.output
    (tmp_path / "e").mkdir()
    empty = _invoke("buffer", "query", "--path", str(tmp_path / "e"), "--state", "s", "--action", "a")
    assert empty.exit_code == 0 and empty.output == ""


def test_a_failed_import_stores_nothing(tmp_path):
    # more good lines than one batch of import_jsonl (4096) before the bad one
    bad = tmp_path / "bad.jsonl"
    good = [msgspec.json.encode(t) for t in make_transitions(4100, prefix="bulk")]
    bad.write_bytes(b"\n".join(good) + b'\n{"oops": 1}\n')
    buf = ["--path", str(tmp_path / "b"), "--backend", "exact"]
    result = _invoke("buffer", "import", *buf, str(bad))
    assert result.exit_code == 1 and "bad.jsonl:4101: not a valid Transition record" in result.output
    assert not (tmp_path / "b").exists()  # read before the buffer opens: not even an empty one


@pytest.mark.parametrize("backend", ["exact", "annoy"])
def test_an_import_of_several_files_stores_nothing_when_one_is_bad(tmp_path, jsonl, backend):
    # the first file is good and would be stored whole before the second is read
    second = b"".join(msgspec.json.encode(msgspec.structs.replace(t, state=f"later: {t.state}")) + b"\n" for t in make_transitions(3))
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(second + b'{"oops": 1}\n')
    buf = ["--path", str(tmp_path / "b"), "--backend", backend]
    result = _invoke("buffer", "import", *buf, str(jsonl), str(bad))
    assert result.exit_code == 1 and not (tmp_path / "b").exists() and "read 30" not in result.output
    assert "bad.jsonl:4: not a valid Transition record" in result.output
    bad.write_bytes(second)
    result = _invoke("buffer", "import", *buf, str(jsonl), str(bad))  # fixed: each record once
    assert result.exit_code == 0 and "read 30, added 30" in result.output and "read 3, added 3, buffer now 33" in result.output
    assert json.loads(_invoke("buffer", "info", *buf).output)["records"] == 33


def _corrupt_frames(buf, every: bool) -> None:
    """Flip a payload byte of every intact frame of the buffer (``every``), or of its first one only."""
    from dreamgym_plugin_exact.segments import read_segment, segment_files

    for segment in segment_files(buf):
        data = bytearray(segment.read_bytes())
        for offset, _ in read_segment(segment)[0]:
            data[offset + 14] ^= 0xFF  # past the 12-byte header: the payload, which its checksum covers
            if not every:
                segment.write_bytes(bytes(data))
                return
        segment.write_bytes(bytes(data))


@pytest.mark.parametrize("backend", ["exact", "annoy"])
def test_an_export_of_a_buffer_with_corrupt_frames_is_refused_unless_partial(tmp_path, backend):
    buf = ["--path", str(tmp_path / "b"), "--backend", backend]
    records = make_transitions(30)
    for part in range(3):  # three frames: one per import
        path = tmp_path / f"part{part}.jsonl"
        path.write_bytes(b"".join(msgspec.json.encode(t) + b"\n" for t in records[part * 10 : part * 10 + 10]))
        assert _invoke("buffer", "import", *buf, str(path)).exit_code == 0
    out = tmp_path / "out.jsonl"
    for every, readable in ((False, 20), (True, 0)):  # a third of the records lost, then all
        _corrupt_frames(tmp_path / "b", every)
        refused = CliRunner().invoke(cli, ["buffer", "export", *buf, str(out)])
        assert refused.exit_code == 1 and not out.exists()
        assert refused.output.startswith("Error: ") and len(refused.output.splitlines()) == 1
        assert "seg-000001.dgs: offset 0: checksum mismatch" in refused.output and "nothing exported ('--partial'" in refused.output
        partial = CliRunner().invoke(cli, ["buffer", "export", *buf, "--partial", str(out)])
        assert partial.exit_code == 0 and f"wrote {readable} transitions" in partial.stdout
        # what --partial leaves out is said, one line each, not Python's two lines naming the source
        said = partial.stderr.splitlines()
        assert said and all(line.startswith("warning: replay buffer ") for line in said)
        assert any("seg-000001.dgs: offset 0: checksum mismatch" in line for line in said)
        assert len(out.read_bytes().splitlines()) == readable
        out.unlink()
    info = _invoke("buffer", "info", *buf)  # reading it as a run resumes it still recovers the rest
    stats = json.loads(info.stdout)
    assert "checksum mismatch" in info.stderr
    assert stats["records"] == 0 and len(stats["problems"]) == 3


@pytest.mark.parametrize("args", [["info"], ["query", "--state", "s", "--action", "a"], ["export", "out.jsonl"]])
def test_reading_a_buffer_that_is_not_there_is_an_error_and_creates_nothing(tmp_path, args):
    missing = tmp_path / "typo"
    command_name, rest = args[0], args[1:]
    rest = [str(tmp_path / a) if a.endswith(".jsonl") else a for a in rest]
    result = CliRunner().invoke(cli, ["buffer", command_name, "--path", str(missing), *rest])
    assert result.exit_code == 1 and f"{missing}: no replay buffer there" in result.output
    assert not missing.exists() and not (tmp_path / "out.jsonl").exists()


def test_reading_with_another_encoder_neither_rewrites_the_buffer_nor_answers_partly(tmp_path, jsonl):
    buf = tmp_path / "buf"
    assert _invoke("buffer", "import", "--path", str(buf), str(jsonl)).exit_code == 0
    before = sorted(p.name for p in buf.iterdir())
    other = ["--path", str(buf), "--encoder", "minilm"]
    stats = json.loads(_invoke("buffer", "info", *other).stdout)
    assert stats["backfill"] == {"done": 0, "total": 30}
    result = CliRunner().invoke(cli, ["buffer", "query", *other, "--state", "s", "--action", "a"])
    assert result.exit_code == 1 and "30 of 30 stored transitions have no embedding from encoder" in result.output
    assert "hashing" in result.output and "--backfill" in result.output
    assert sorted(p.name for p in buf.iterdir()) == before  # nothing re-embedded, nothing written


def test_an_export_into_the_buffer_directory_is_refused_and_the_buffer_kept(tmp_path, jsonl):
    # It replaced the only segment with JSONL, and exit 0: every record was gone.
    buf = tmp_path / "buf"
    _invoke("buffer", "import", "--path", str(buf), str(jsonl))
    segments = {p.name: p.read_bytes() for p in buf.iterdir()}
    segment = sorted(p for p in buf.iterdir() if p.suffix == ".dgs")[0]
    for target in (segment, buf / "seg-999999.dgs"):
        result = CliRunner().invoke(cli, ["buffer", "export", "--path", str(buf), str(target)])
        assert result.exit_code == 2 and f"inside the buffer directory {buf.resolve()}" in result.output
    assert {p.name: p.read_bytes() for p in buf.iterdir()} == segments


def test_an_export_names_a_torn_frame_it_dropped(tmp_path, jsonl):
    buf = tmp_path / "buf"
    _invoke("buffer", "import", "--path", str(buf), str(jsonl))
    segment = sorted(p for p in buf.iterdir() if p.suffix == ".dgs")[-1]
    size = segment.stat().st_size
    with open(segment, "r+b") as f:
        f.truncate(size - 10)  # as a write cut short, or a damaged length field, leaves it
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(cli, ["buffer", "export", "--path", str(buf), str(out)])
    assert result.exit_code == 0
    assert f"warning: {buf.resolve()}/{segment.name}: offset " in result.stderr
    assert "torn frame at end of file (an unfinished write, or a damaged length field), its" in result.stderr


def test_a_run_directory_given_as_the_buffer_is_named(tmp_path, jsonl):
    # It read as a buffer of 0 records, exit 0.
    run = tmp_path / "run"
    _invoke("buffer", "import", "--path", str(run / "buffer"), str(jsonl))
    (run / "config.json").write_text("{}")
    for command in ("info", "export"):
        args = [str(tmp_path / "out.jsonl")] if command == "export" else []
        result = CliRunner().invoke(cli, ["buffer", command, "--path", str(run), *args])
        assert result.exit_code == 1, result.output
        assert f"{run}: a run directory, not a replay buffer; its buffer is {run / 'buffer'}" in result.output
    assert not (tmp_path / "out.jsonl").exists()


def test_an_import_with_a_model_failed_record_in_a_later_file_stores_nothing(tmp_path, jsonl):
    # the buffer refused the record while importing, after the earlier files were stored
    failed = tmp_path / "failed.jsonl"
    failed.write_bytes(msgspec.json.encode(msgspec.structs.replace(make_transitions(1, prefix="f")[0], model_failed=True)) + b"\n")
    result = _invoke("buffer", "import", "--path", str(tmp_path / "b"), str(jsonl), str(failed))
    assert result.exit_code == 1 and "failed.jsonl: record 1 is model_failed" in result.output and "nothing imported" in result.output
    assert not (tmp_path / "b").exists()


def test_an_import_into_a_run_directory_is_refused(tmp_path, jsonl):
    # it stored a buffer at RUN_DIR itself, which the run (reading RUN_DIR/buffer) never reads, and exited 0
    run = tmp_path / "run"
    (run / "buffer").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    result = _invoke("buffer", "import", "--path", str(run), str(jsonl))
    assert result.exit_code == 1 and "a run directory, not a replay buffer; its buffer is" in result.output
    assert sorted(p.name for p in run.iterdir()) == ["buffer", "config.json"]


@pytest.mark.parametrize("how", ["--pipeline", "--path"])
def test_an_import_into_an_unfinished_runs_buffer_is_refused_and_after_it_finishes_taken(tmp_path, jsonl, how):
    # Its --resume rolls the buffer back to the last checkpoint and stores that: an import that
    # exited 0 ("buffer now 45") was gone after the next resume (records 20).
    run = tmp_path / "run"
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(
        "plugins: [exact, encoders]\nenv: {name: x}\npolicy: {name: x}\nalgo: {name: x}\nloop: {mode: real}\n"
        f"encoder: {{name: hashing}}\nbuffer: {{name: exact}}\nrun_dir: {run}\n"
    )
    source = ["--pipeline", str(pipeline)] if how == "--pipeline" else ["--path", str(run / "buffer")]
    jsonl.with_name("one.jsonl").write_bytes(msgspec.json.encode(make_transitions(35)[30]) + b"\n")
    assert "added 30" in _invoke("buffer", "import", *source, str(jsonl)).output  # before the run: no config.json
    (run / "config.json").write_text("{}")
    (run / "checkpoints" / "global_step_1").mkdir(parents=True)  # verl's: its resume keeps the buffer
    assert "added 1, buffer now 31" in _invoke("buffer", "import", *source, str(jsonl.with_name("one.jsonl"))).output
    (run / "checkpoints" / "it-00000").mkdir()  # the local loop's: its resume rolls the buffer back
    more = tmp_path / "more.jsonl"
    more.write_bytes(b"".join(msgspec.json.encode(t) + b"\n" for t in make_transitions(35)[31:]))
    result = _invoke("buffer", "import", *source, str(more))
    assert result.exit_code == 1 and "the buffer of an unfinished run" in result.output and "--resume rolls" in result.output
    assert json.loads(_invoke("buffer", "info", *source).output)["records"] == 31
    (run / "summary.json").write_text("{}")
    assert "added 4, buffer now 35" in _invoke("buffer", "import", *source, str(more)).output


def test_an_export_through_a_link_writes_the_file_it_names(tmp_path, jsonl):
    # the .tmp sibling was renamed onto the link: the link became a file and its file kept the old records
    buf = ["--path", str(tmp_path / "buf")]
    _invoke("buffer", "import", *buf, str(jsonl))
    real = tmp_path / "real.jsonl"
    real.write_text("old\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(real)
    assert _invoke("buffer", "export", *buf, str(link)).exit_code == 0
    assert link.is_symlink() and real.read_bytes() == jsonl.read_bytes()


def test_an_export_to_stdout_that_leads_to_a_file_writes_the_records_there(tmp_path, jsonl):
    # /dev/fd/1 (like /dev/stdout) resolves to the file stdout was sent to: the export tried a .tmp
    # sibling beside the link (for /dev/stdout, as root, it replaced the link itself), and the
    # status line went to stdout among the records
    import subprocess
    import sys

    buf = ["--path", str(tmp_path / "buf")]
    _invoke("buffer", "import", *buf, str(jsonl))
    out = tmp_path / "out.jsonl"
    with open(out, "wb") as stdout:
        done = subprocess.run(
            [sys.executable, "-m", "dreamgym_core.cli", "buffer", "export", *buf, "/dev/fd/1"], stdout=stdout, stderr=subprocess.PIPE, text=True,
        )
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == jsonl.read_bytes() and "wrote 30 transitions" in done.stderr


def test_options_the_chosen_source_would_ignore_are_refused(tmp_path, jsonl):
    # --set without --pipeline, or --backend beside it, were read by nothing and the command exited 0
    result = CliRunner().invoke(cli, ["buffer", "import", "--path", str(tmp_path / "b"), "--set", "x=1", str(jsonl)])
    assert result.exit_code == 2 and "--set overrides a pipeline field: give --pipeline too" in result.output
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(
        "plugins: [exact, encoders]\nenv: {name: x}\npolicy: {name: x}\nalgo: {name: x}\nloop: {mode: real}\n"
        f"encoder: {{name: hashing}}\nbuffer: {{name: exact}}\nrun_dir: {tmp_path / 'run'}\n"
    )
    result = CliRunner().invoke(cli, ["buffer", "import", "--pipeline", str(pipeline), "--backend", "annoy", str(jsonl)])
    assert result.exit_code == 2 and "--backend choose the buffer without --pipeline" in result.output
    assert not (tmp_path / "run").exists()
    assert "added 30" in _invoke("buffer", "import", "--pipeline", str(pipeline), str(jsonl)).output


def test_an_import_from_a_pipe_stores_its_records(tmp_path, jsonl):
    # each file was read twice (a model_failed check, then the import): a pipe was empty the
    # second time, and the import stored nothing and exited 0
    import subprocess
    import sys

    buf = ["--path", str(tmp_path / "buf")]
    done = subprocess.run(
        [sys.executable, "-m", "dreamgym_core.cli", "buffer", "import", *buf, "/dev/stdin"],
        input=jsonl.read_bytes(), capture_output=True,
    )
    assert done.returncode == 0, done.stderr
    assert b"/dev/stdin: read 30, added 30, buffer now 30" in done.stdout
    assert json.loads(_invoke("buffer", "info", *buf).output)["records"] == 30


def _full_disk(monkeypatch) -> None:
    """Every segment write fails as on a full disk."""
    import errno
    import os

    from dreamgym_plugin_exact.segments import SegmentWriter

    def write(self, frame):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(SegmentWriter, "write", write)


def test_a_write_that_fails_is_one_line_naming_the_buffer(tmp_path, jsonl, monkeypatch):
    # an OSError from the buffer's writer was two tracebacks: the import's, then close()'s
    from dreamgym_plugin_exact import ExactBuffer

    buf = tmp_path / "buf"
    _full_disk(monkeypatch)
    result = CliRunner().invoke(cli, ["buffer", "import", "--path", str(buf), str(jsonl)])
    assert result.exit_code == 1 and result.output == f"Error: {buf}: cannot write the replay buffer: No space left on device\n"
    monkeypatch.setattr(ExactBuffer, "flush", lambda self: None)  # what is pending is written by close()
    result = CliRunner().invoke(cli, ["buffer", "import", "--path", str(buf), str(jsonl)])
    assert result.exit_code == 1 and result.output.endswith(f"Error: {buf}: cannot write the replay buffer: No space left on device\n")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_backfill_that_stopped_is_an_error_not_done(tmp_path, jsonl, monkeypatch):
    # its thread died on a failed write, and info reported it done (every row embedded in memory)
    buf = tmp_path / "buf"
    assert _invoke("buffer", "import", "--path", str(buf), str(jsonl)).exit_code == 0
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(
        "plugins: [exact, encoders]\nenv: {name: x}\npolicy: {name: x}\nalgo: {name: x}\nloop: {mode: real}\n"
        f"encoder: {{name: hashing, config: {{dim: 128}}}}\nbuffer: {{name: exact}}\nrun_dir: {tmp_path / 'run'}\n"
    )
    _full_disk(monkeypatch)
    result = CliRunner().invoke(cli, ["buffer", "info", "--backfill", "--pipeline", str(pipeline), "--path", str(buf)])
    assert result.exit_code == 1 and result.stdout == ""
    assert f"Error: {buf}: backfill stopped: OSError: [Errno 28] No space left on device; the backfill is not finished" in result.stderr


def _pipeline(tmp_path, run, dim):
    pipeline = tmp_path / f"p{dim}.yaml"
    pipeline.write_text(
        "plugins: [exact, encoders]\nenv: {name: x}\npolicy: {name: x}\nalgo: {name: x}\nloop: {mode: real}\n"
        f"encoder: {{name: hashing, config: {{dim: {dim}}}}}\nbuffer: {{name: exact}}\nrun_dir: {run}\n"
    )
    return pipeline


def test_an_import_with_another_encoder_than_the_buffers_is_refused_and_nothing_changes(tmp_path, jsonl):
    # without --encoder it embedded the new records with hashing, and a background backfill
    # re-embedded the stored ones with it: exit 0, and the buffer's own encoder then found
    # "N of M stored transitions have no embedding"
    run = tmp_path / "run"
    assert "added 30" in _invoke("buffer", "import", "--pipeline", str(_pipeline(tmp_path, run, 128)), str(jsonl)).output
    buf = run / "buffer"
    before = {p.name: p.read_bytes() for p in buf.iterdir()}
    more = tmp_path / "more.jsonl"
    more.write_bytes(b"".join(msgspec.json.encode(msgspec.structs.replace(t, state=f"more: {t.state}")) + b"\n" for t in make_transitions(5)))
    for source, named in ((["--path", str(buf)], "(--encoder hashing)"),
                          (["--pipeline", str(_pipeline(tmp_path, run, 256))], "(the encoder of ")):
        result = CliRunner().invoke(cli, ["buffer", "import", *source, str(more)])
        assert result.exit_code == 1 and len(result.output.splitlines()) == 1, result.output
        assert f"{buf}: 30 of 30 stored transitions are embedded by encoder hashing-v1-d128-bi, not " in result.output
        assert named in result.output and "--encoder, or the run's --pipeline" in result.output
        assert {p.name: p.read_bytes() for p in buf.iterdir()} == before  # nothing added, nothing re-embedded
    assert "added 5, buffer now 35" in _invoke("buffer", "import", "--pipeline", str(_pipeline(tmp_path, run, 128)), str(more)).output


def test_an_import_into_an_unfinished_runs_buffer_given_as_dot_is_refused(tmp_path, jsonl, monkeypatch):
    # --path . from inside RUN/buffer: the parent of "." is ".", no run, and the import was taken
    run = tmp_path / "run"
    assert _invoke("buffer", "import", "--path", str(run / "buffer"), str(jsonl)).exit_code == 0
    (run / "config.json").write_text("{}")
    (run / "checkpoints" / "it-00000").mkdir(parents=True)
    more = tmp_path / "more.jsonl"
    more.write_bytes(b"".join(msgspec.json.encode(t) + b"\n" for t in make_transitions(5, prefix="m")))
    monkeypatch.chdir(run / "buffer")
    for path in (".", "../buffer"):
        result = _invoke("buffer", "import", "--path", path, str(more))
        assert result.exit_code == 1, result.output
        assert f"Error: {path}: the buffer of an unfinished run (" in result.output and "--resume rolls" in result.output
    assert f"({run.resolve()} has no summary.json)" in _invoke("buffer", "import", "--path", ".", str(more)).output
    assert f"(.. has no summary.json)" in _invoke("buffer", "import", "--path", "../buffer", str(more)).output
    assert json.loads(_invoke("buffer", "info", "--path", ".").output)["records"] == 30


@pytest.mark.parametrize("args", [["info"], ["query", "--state", "s", "--action", "a"], ["export", "out.jsonl"]])
def test_reading_a_directory_that_holds_no_buffer_is_an_error(tmp_path, jsonl, args):
    # it read as an empty buffer: query printed nothing, export wrote an empty file, exit 0
    other = tmp_path / "src"
    other.mkdir()
    (other / "notes.txt").write_text("not a buffer\n")
    command_name, rest = args[0], [str(tmp_path / a) if a.endswith(".jsonl") else a for a in args[1:]]
    result = CliRunner().invoke(cli, ["buffer", command_name, "--path", str(other), *rest])
    assert result.exit_code == 1 and result.output == (
        f"Error: {other}: no replay buffer there (no segment files seg-*.dgs, and the directory is not empty)\n"
    )
    assert not (tmp_path / "out.jsonl").exists() and sorted(p.name for p in other.iterdir()) == ["notes.txt"]
    # what a buffer created and never added to leaves (an empty directory) is still read as one,
    # and so is a buffer beside files of its own kind (an annoy index)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert CliRunner().invoke(cli, ["buffer", command_name, "--path", str(empty), *rest]).exit_code == 0
    buf = tmp_path / "annoy-buf"
    assert _invoke("buffer", "import", "--path", str(buf), "--backend", "annoy", str(jsonl)).exit_code == 0
    (tmp_path / "out.jsonl").unlink(missing_ok=True)
    assert CliRunner().invoke(cli, ["buffer", command_name, "--path", str(buf), "--backend", "annoy", *rest]).exit_code == 0


def test_an_export_into_a_run_directory_is_refused_and_its_files_kept(tmp_path, jsonl):
    # `buffer export --pipeline P RUN/offline.jsonl` replaced the run's training data, exit 0.
    run = tmp_path / "run"
    _invoke("buffer", "import", "--path", str(run / "buffer"), str(jsonl))
    (run / "config.json").write_text("{}")
    offline = run / "offline.jsonl"
    offline.write_text("the run's data\n")
    for target in (offline, run / "sub" / "new.jsonl"):
        target.parent.mkdir(exist_ok=True)
        result = CliRunner().invoke(cli, ["buffer", "export", "--path", str(run / "buffer"), str(target)])
        assert result.exit_code == 2 and f"inside the run directory {run.resolve()}" in result.output, result.output
    assert offline.read_text() == "the run's data\n" and not (run / "sub" / "new.jsonl").exists()
    out = tmp_path / "out.jsonl"  # beside the run, the export goes ahead
    assert "wrote 30" in _invoke("buffer", "export", "--path", str(run / "buffer"), str(out)).output
