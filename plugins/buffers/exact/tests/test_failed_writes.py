"""A segment write that fails part way (a full disk) must leave the segment as it was."""

import errno
import os
import warnings

import msgspec
import pytest

from dreamgym_core.errors import DataError
from dreamgym_core.testing import BagOfWordsEncoder, make_transitions
from dreamgym_plugin_exact import ExactBuffer, ExactConfig
from dreamgym_plugin_exact import segments
from dreamgym_plugin_exact.segments import read_segment, segment_files


def _failing_write(monkeypatch, buffer, *, call, short):
    """Make the ``call``-th write to the buffer's open segment fail: write half the bytes
    (``short``) or nothing (ENOSPC, as Linux does when not a byte fits)."""
    real, calls = os.write, [0]

    def write(fd, blob):
        if fd != buffer._writer._fd:
            return real(fd, blob)
        calls[0] += 1
        if calls[0] != call:
            return real(fd, blob)
        if short:
            return real(fd, blob[: len(blob) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(segments.os, "write", write)


def _rids_on_disk(path):
    return [rid for file in segment_files(path) for _, frame in read_segment(file)[0] for rid in frame.rids]


def _reopen_strictly(path, records):
    """The problems a strict, warning-free reopen notes; it must hold exactly ``records``."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a torn frame left mid-file warns "checksum mismatch"
        with ExactBuffer(ExactConfig(strict=True), encoder=BagOfWordsEncoder(), path=path) as b:
            assert [msgspec.msgpack.encode(t) for t in b] == [msgspec.msgpack.encode(t) for t in records]
            return b.problems


@pytest.mark.parametrize("short", [True, False], ids=["short-write", "enospc"])
def test_a_failed_write_leaves_no_torn_frame_and_is_retried_once(tmp_path, distinct, monkeypatch, short):
    records = distinct(15, prefix="disk")
    b = ExactBuffer(ExactConfig(flush_every=1), encoder=BagOfWordsEncoder(), path=tmp_path)
    b.add(transitions=records[:5])
    _failing_write(monkeypatch, b, call=1, short=short)
    with pytest.raises(DataError, match="seg-000001.dgs: cannot write replay buffer segment: "):
        b.add(transitions=records[5:10])
    monkeypatch.undo()
    b.add(transitions=records[10:])  # retries the failed frame first
    b.close()
    assert len(segment_files(tmp_path)) == 1
    assert _rids_on_disk(tmp_path) == list(range(15))  # each frame once, in order
    assert _reopen_strictly(tmp_path, records) == []


def test_frames_written_before_a_failed_one_are_not_written_again(tmp_path, distinct, monkeypatch):
    records = distinct(15, prefix="queue")
    b = ExactBuffer(ExactConfig(flush_every=1000), encoder=BagOfWordsEncoder(), path=tmp_path)
    for i in range(0, 15, 5):
        b.add(transitions=records[i : i + 5])  # three frames wait for the flush
    _failing_write(monkeypatch, b, call=2, short=True)
    with pytest.raises(DataError, match="short write"):
        b.flush()
    monkeypatch.undo()
    b.close()
    assert _rids_on_disk(tmp_path) == list(range(15))
    assert _reopen_strictly(tmp_path, records) == []


def test_a_segment_that_cannot_be_cut_back_is_closed_and_a_new_one_started(tmp_path, distinct, monkeypatch):
    records = distinct(10, prefix="cut")
    b = ExactBuffer(ExactConfig(flush_every=1), encoder=BagOfWordsEncoder(), path=tmp_path)
    b.add(transitions=records[:5])
    _failing_write(monkeypatch, b, call=1, short=True)

    def no_truncate(fd, size):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(segments.os, "ftruncate", no_truncate)
    with pytest.raises(DataError, match="short write"):
        b.add(transitions=records[5:])
    monkeypatch.undo()
    b.close()
    first, second = segment_files(tmp_path)
    assert _rids_on_disk(tmp_path) == list(range(10))
    # the torn frame is the last thing in the closed file, which readers drop quietly
    assert [p.split(":")[0] for p in _reopen_strictly(tmp_path, records)] == [first.name]
    assert "torn frame at end of file" in read_segment(first)[1][0] and read_segment(second)[1] == []


def test_a_segment_that_cannot_be_created_keeps_its_number(tmp_path, distinct, monkeypatch):
    """A failed open of a new segment (too many open files) took its number all the same: the
    retry wrote the next one, and the gap read as a lost file."""
    records = distinct(10, prefix="open")
    with ExactBuffer(ExactConfig(flush_every=1), encoder=BagOfWordsEncoder(), path=tmp_path) as b:
        b.add(transitions=records[:5])
    real = os.open

    def fail_once(path, *args, **kwargs):
        if str(path).endswith(".dgs"):
            monkeypatch.setattr(segments.os, "open", real)
            raise OSError(errno.EMFILE, "Too many open files")
        return real(path, *args, **kwargs)

    b = ExactBuffer(ExactConfig(flush_every=1), encoder=BagOfWordsEncoder(), path=tmp_path)
    monkeypatch.setattr(segments.os, "open", fail_once)
    with pytest.raises(DataError, match="seg-000002.dgs: cannot create replay buffer segment: Too many open files"):
        b.add(transitions=records[5:])
    b.flush()  # retries the frame
    b.close()
    assert [p.name for p in segment_files(tmp_path)] == ["seg-000001.dgs", "seg-000002.dgs"]
    assert _reopen_strictly(tmp_path, records) == []


def test_a_full_disk_is_one_line_naming_the_segment_and_keeps_what_was_written(tmp_path, distinct, monkeypatch):
    """ENOSPC from the segment writer was a bare OSError naming no file, which the CLI printed
    as a traceback (it turns only DataError into one line)."""
    records = distinct(10, prefix="full")
    b = ExactBuffer(ExactConfig(flush_every=1), encoder=BagOfWordsEncoder(), path=tmp_path)
    b.add(transitions=records[:5])
    real = os.write

    def full(fd, blob):
        if fd == b._writer._fd:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, blob)

    monkeypatch.setattr(segments.os, "write", full)
    with pytest.raises(DataError) as caught:
        b.add(transitions=records[5:])
    assert str(caught.value) == f"{tmp_path / 'seg-000001.dgs'}: cannot write replay buffer segment: No space left on device"
    assert caught.value.__cause__.errno == errno.ENOSPC  # the chain --traceback shows
    with pytest.raises(DataError, match="seg-000001.dgs: cannot write replay buffer segment: No space left"):
        b.close()  # the disk is still full: the frame stays pending, the claim is kept
    assert _reopen_strictly(tmp_path, records[:5]) == []  # no torn bytes were left behind
    monkeypatch.undo()
    b.close()  # the retried close writes the pending frame
    assert _reopen_strictly(tmp_path, records) == []


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="tells a segment's descriptor by its /proc/self/fd link (Linux)")
def test_a_full_disk_is_one_line_from_buffer_import(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from dreamgym_core.cli import cli
    from dreamgym_core.commands.buffer import command

    pytest.importorskip("dreamgym_plugin_encoders")
    if "buffer" not in cli.commands:
        cli.add_command(command)
    source = tmp_path / "seed.jsonl"
    source.write_bytes(b"".join(msgspec.json.encode(t) + b"\n" for t in make_transitions(30)))
    real = os.write

    def write(fd, blob):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".dgs"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, blob)

    monkeypatch.setattr(segments.os, "write", write)
    buf = tmp_path / "buf"
    result = CliRunner().invoke(cli, ["buffer", "import", "--path", str(buf), str(source)])
    assert (result.exit_code, result.output) == (1, f"Error: {buf / 'seg-000001.dgs'}: cannot write replay buffer segment: No space left on device\n")
