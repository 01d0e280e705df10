"""Storage fixes: adds too large for one frame, directory syncs, the eviction log's memory.

The size bounds are lowered by monkeypatch (``raising=False``: the names did not exist before
the fix), and the kernel's cap on one ``write`` call is imitated at a lowered size, so no test
writes gigabytes."""

import errno
import os
import stat
import tracemalloc
import warnings

import msgspec
import numpy as np
import pytest

from dreamgym_core.errors import DataError
from dreamgym_core.records import Transition
from dreamgym_core.testing import BagOfWordsEncoder
from dreamgym_plugin_exact import ExactBuffer, ExactConfig
from dreamgym_plugin_exact import buffer as buffer_module
from dreamgym_plugin_exact import segments
from dreamgym_plugin_exact.segments import Frame, encode_frame, iter_segment, segment_files

_REAL_FTRUNCATE = os.ftruncate
CAP = 64 << 10  # the lowered stand-in for Linux's 2,147,479,552 bytes per write() call


def _blob(records):
    return [msgspec.msgpack.encode(r) for r in records]


def _small_bounds(monkeypatch, *, piece_bytes=16 << 10, piece_records=1 << 20):
    """Pieces of at most ``piece_bytes``, and writes that, like Linux's, never take more than CAP
    bytes per call (a longer one comes back short)."""
    monkeypatch.setattr(segments, "PIECE_BYTES", piece_bytes, raising=False)
    monkeypatch.setattr(segments, "PIECE_RECORDS", piece_records, raising=False)
    monkeypatch.setattr(segments, "_WRITE_CHUNK", CAP, raising=False)
    real = os.write

    def capped(fd, blob):
        return real(fd, blob[:CAP])

    monkeypatch.setattr(segments.os, "write", capped)


def _reopen_strictly(path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a dropped or damaged frame would warn
        return ExactBuffer(ExactConfig(strict=True), encoder=BagOfWordsEncoder(), path=path)


def _pieces_on_disk(path):
    return [(frame.kind, frame.part, frame.parts) for file in segment_files(path)
            for _, frame in iter_segment(file, ids_only=True) if not isinstance(frame, str)]


def test_an_add_larger_than_one_write_is_written_in_pieces_and_reopens_whole(tmp_path, distinct, monkeypatch):
    """An add over ~2 GiB was one frame, which every write() cut short: it was cut back and raised,
    stayed first in the queue, and every later add, flush and close failed the same way."""
    _small_bounds(monkeypatch)
    records = distinct(300, prefix="big")  # ~370 KB with their embeddings: over CAP
    huge = msgspec.structs.replace(distinct(1, prefix="huge")[0], state="x" * (3 * CAP))  # one record over CAP
    later = distinct(5, prefix="later")
    b = ExactBuffer(ExactConfig(flush_every=1), encoder=BagOfWordsEncoder(), path=tmp_path)
    assert b.add(transitions=records + [huge]) == 301
    assert b.add(transitions=later) == 5
    b.flush()
    b.close()
    on_disk = _pieces_on_disk(tmp_path)
    parts = on_disk[0][2]
    assert parts > 10 and on_disk[:parts] == [("add", i, parts) for i in range(parts)]
    assert on_disk[parts:] == [("add", 0, 0)]  # a small add stays one frame
    with _reopen_strictly(tmp_path) as again:
        assert _blob(list(again)) == _blob(records + [huge] + later)
        assert again.position == 306 and again.problems == []


def test_pieces_are_bounded_by_records_too(tmp_path, distinct, monkeypatch):
    _small_bounds(monkeypatch, piece_bytes=1 << 30, piece_records=7)
    records = distinct(30, prefix="count")
    with ExactBuffer(ExactConfig(), encoder=BagOfWordsEncoder(), path=tmp_path) as b:
        b.add(transitions=records)
    assert _pieces_on_disk(tmp_path) == [("add", i, 5) for i in range(5)]  # 7+7+7+7+2
    with _reopen_strictly(tmp_path) as again:
        assert _blob(list(again)) == _blob(records)


def test_a_small_frame_is_written_as_before(tmp_path, distinct):
    """Files hold the same bytes as before pieces existed for every frame that fits one."""
    records = distinct(3, prefix="same")
    with ExactBuffer(ExactConfig(), encoder=BagOfWordsEncoder(), path=tmp_path) as b:
        b.add(transitions=records)
        vectors = b._spaces[b.encoder.id].data[:3].astype("<f4").tobytes()
    expected = encode_frame(Frame(kind="add", rids=[0, 1, 2], transitions=records, encoder_id=BagOfWordsEncoder.id,
                                  dim=256, vectors=vectors))
    assert segment_files(tmp_path)[0].read_bytes() == expected


def test_a_failed_piece_is_cut_back_with_the_others_and_the_buffer_stays_usable(tmp_path, distinct, monkeypatch):
    _small_bounds(monkeypatch)
    first, big, last = distinct(5, prefix="a"), distinct(200, prefix="b"), distinct(5, prefix="c")
    b = ExactBuffer(ExactConfig(flush_every=1), encoder=BagOfWordsEncoder(), path=tmp_path)
    b.add(transitions=first)
    size = segment_files(tmp_path)[0].stat().st_size
    capped, calls = segments.os.write, [0]

    def fails_third(fd, blob):
        calls[0] += 1
        if calls[0] == 3:  # the third piece of the big add: a full disk
            raise OSError(errno.ENOSPC, "No space left on device")
        return capped(fd, blob)

    monkeypatch.setattr(segments.os, "write", fails_third)
    with pytest.raises(DataError, match="seg-000001.dgs: cannot write replay buffer segment: No space left"):
        b.add(transitions=big)
    assert segment_files(tmp_path)[0].stat().st_size == size  # the two pieces written were cut back too
    monkeypatch.setattr(segments.os, "write", capped)
    assert b.add(transitions=last) == 5  # retries the whole big add first
    b.close()
    with _reopen_strictly(tmp_path) as again:
        assert _blob(list(again)) == _blob(first + big + last)


def test_pieces_left_in_a_segment_that_cannot_be_cut_back_are_dropped_and_written_again_whole(tmp_path, distinct, monkeypatch):
    _small_bounds(monkeypatch)
    first, big = distinct(5, prefix="a"), distinct(200, prefix="b")
    b = ExactBuffer(ExactConfig(flush_every=1), encoder=BagOfWordsEncoder(), path=tmp_path)
    b.add(transitions=first)
    capped, calls = segments.os.write, [0]

    def short_third(fd, blob):
        calls[0] += 1
        return capped(fd, blob[: len(blob) // 2] if calls[0] == 3 else blob)

    def no_truncate(fd, size):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(segments.os, "write", short_third)
    monkeypatch.setattr(segments.os, "ftruncate", no_truncate)
    with pytest.raises(DataError, match="short write"):
        b.add(transitions=big)  # two pieces and half a third stay: the file is closed instead
    monkeypatch.setattr(segments.os, "write", capped)
    monkeypatch.setattr(segments.os, "ftruncate", _REAL_FTRUNCATE)
    b.close()  # writes the big add again, whole, into a new segment
    assert [p.name for p in segment_files(tmp_path)] == ["seg-000001.dgs", "seg-000002.dgs"]
    with _reopen_strictly(tmp_path) as again:  # no warning: dropped as what a crash leaves
        assert _blob(list(again)) == _blob(first + big)
        assert [p.split(":")[0] for p in again.problems] == ["seg-000001.dgs"] * 2  # the torn piece, the group


class _Killed(BaseException):
    """A kill -9 between two pieces: nothing after it runs, nothing is cut back."""


def test_a_kill_between_pieces_drops_the_whole_add_so_a_resume_stores_it_once(tmp_path, distinct, monkeypatch):
    """An add used to be one frame, all or nothing across a crash. The loop's seed stage relies
    on it: a part stored would pass for nothing stored, and without deduplication the stage run
    again stored the first records twice."""
    _small_bounds(monkeypatch)
    first, seed = distinct(5, prefix="a"), distinct(200, prefix="seed")
    b = ExactBuffer(ExactConfig(flush_every=1, dedup="none"), encoder=BagOfWordsEncoder(), path=tmp_path)
    b.add(transitions=first)
    position = b.position
    capped, calls = segments.os.write, [0]

    def killed_at_fourth(fd, blob):
        calls[0] += 1
        if calls[0] == 4:
            raise _Killed
        return capped(fd, blob)

    monkeypatch.setattr(segments.os, "write", killed_at_fourth)
    with pytest.raises(_Killed):
        b.add(transitions=seed)
    b._writer_lock.release()  # the kernel drops a dead process's flock
    assert [kind for kind, _, parts in _pieces_on_disk(tmp_path) if parts] == ["add"] * 3  # three pieces made it
    monkeypatch.setattr(segments.os, "write", capped)
    again = _reopen_strictly(tmp_path)  # dropped quietly, as a torn frame: what a killed writer leaves
    assert _blob(list(again)) == _blob(first)
    assert position < again.position < position + len(seed)  # the seed stage sees it unfinished
    assert any("torn frame" in p and "split add" in p for p in again.problems)
    again.add(transitions=seed)  # the stage, run again
    again.close()
    with _reopen_strictly(tmp_path) as last:
        assert _blob(list(last)) == _blob(first + seed)  # each record once


def test_a_record_too_large_for_a_frame_is_refused_before_anything_changes(tmp_path, distinct, monkeypatch):
    monkeypatch.setattr(buffer_module, "MAX_RECORD_BYTES", 4096, raising=False)
    records = distinct(3, prefix="ok")
    huge = msgspec.structs.replace(records[0], state="y" * 5000)
    with ExactBuffer(ExactConfig(flush_every=1), encoder=BagOfWordsEncoder(), path=tmp_path) as b:
        with pytest.raises(DataError, match="transition 1 is .* bytes stored, more than the 4096"):
            b.add(transitions=[records[1], huge])
        assert len(b) == 0
        assert b.add(transitions=records) == 3
    with _reopen_strictly(tmp_path) as again:
        assert _blob(list(again)) == _blob(records)


def _trace_fsyncs(monkeypatch):
    real, log = os.fsync, []

    def fsync(fd):
        log.append(("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file", os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return log


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="names a descriptor by its /proc/self/fd link (Linux)")
def test_a_new_segment_has_its_directory_entry_synced(tmp_path, distinct, monkeypatch):
    """flush() and close() synced the segment file only: a power cut could drop the new last
    file's directory entry, and nothing on reopen tells (no gap in the numbers)."""
    path = tmp_path / "buf"
    log = _trace_fsyncs(monkeypatch)
    b = ExactBuffer(ExactConfig(fsync=True, segment_records=10), encoder=BagOfWordsEncoder(), path=path)
    b.add(transitions=distinct(3, prefix="a"))
    b.flush()
    assert log == [("file", "seg-000001.dgs"), ("dir", "buf")]
    log.clear()
    b.add(transitions=distinct(3, prefix="b"))
    b.flush()
    assert log == [("file", "seg-000001.dgs")]  # once per segment
    log.clear()
    b.add(transitions=distinct(5, prefix="c"))  # fills it: sealed; the next write starts seg-000002
    b.add(transitions=distinct(1, prefix="d"))
    b.close()
    assert log == [("file", "seg-000001.dgs"), ("file", "seg-000002.dgs"), ("dir", "buf")]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="names a descriptor by its /proc/self/fd link (Linux)")
def test_a_segment_sealed_without_fsync_config_still_has_its_entry_synced_and_export_syncs_its_rename(
    tmp_path, distinct, monkeypatch
):
    log = _trace_fsyncs(monkeypatch)
    with ExactBuffer(ExactConfig(fsync=False), encoder=BagOfWordsEncoder(), path=tmp_path / "buf") as b:
        b.add(transitions=distinct(3, prefix="a"))
        b.flush()
        assert log == []  # fsync: false syncs on seal only
        b.seal()
        assert log == [("file", "seg-000001.dgs"), ("dir", "buf")]
        log.clear()
        (tmp_path / "out").mkdir()
        b.export_jsonl(tmp_path / "out" / "all.jsonl")
        assert log[-1] == ("dir", "out")  # after the rename


def test_rollback_still_counts_the_older_records_evicted_since_its_target(tmp_path, distinct):
    records = distinct(6, prefix="ev", source="real")
    b = ExactBuffer(ExactConfig(capacity=3, flush_every=1), encoder=BagOfWordsEncoder(), path=tmp_path)
    for t in records[:5]:
        b.add(transitions=[t])  # ids 0..4: id 0 evicted at position 4, id 1 at 5
    with pytest.warns(UserWarning, match="cannot restore 1 older records"):
        assert b.rollback(to=4) == 1  # id 4 forgotten; id 1 (evicted at 5) is lost
    b.close()
    with ExactBuffer(ExactConfig(capacity=3), encoder=BagOfWordsEncoder(), path=tmp_path) as again:  # rebuilt from the files
        assert [t.episode_id for t in again] == [records[2].episode_id, records[3].episode_id]
        with pytest.warns(UserWarning, match="cannot restore 2 older records"):
            assert again.rollback(to=2) == 2  # ids 2, 3 forgotten; ids 0 and 1 were evicted after position 2
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert again.rollback(to=0) == 0  # no id lies below 0: nothing lost, no warning


def test_the_eviction_log_takes_a_few_bytes_per_evicted_record():
    """At capacity each add evicted one record and the log kept a tuple and an array for it:
    80,000 adds at capacity 100 held 17 MB."""
    b = ExactBuffer(ExactConfig(capacity=100), encoder=BagOfWordsEncoder(dim=8))
    row = np.ones((1, 8), np.float32)

    def one(i):
        return msgspec.structs.replace(_TEMPLATE, episode_id=f"e{i}", state=f"s{i}")

    def fill(n):
        while b.position < n:
            b.add(transitions=[one(b.position)], embeddings=row)

    fill(2_000)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        fill(14_000)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # 12,000 evictions: 16 bytes each in the log, twice that while its arrays have room to grow,
    # plus at most ~1,100 evicted rows held until a compaction (measured: about 50 bytes per
    # eviction in all; the list of tuples took about 228)
    assert grown / 12_000 < 100, f"{grown} bytes for 12,000 evictions"
    with pytest.warns(UserWarning, match="cannot restore 10 older records"):
        assert b.rollback(to=13_990) == 10


_TEMPLATE = Transition(task_id="t", episode_id="e", step=0, state="s", action="a", next_state="n", reward=0.0,
                       done=False, source="real")
