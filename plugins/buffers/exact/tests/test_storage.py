import struct
import warnings
import zlib

import msgspec
import numpy as np
import pytest

from dreamgym_core.errors import DataError
from dreamgym_core.testing import BagOfWordsEncoder, make_transitions
from dreamgym_plugin_exact import ExactBuffer, ExactConfig
from dreamgym_plugin_exact import buffer as buffer_module
from dreamgym_plugin_exact.segments import Frame, encode_frame, read_segment, segment_files


def _blob(records):
    return [msgspec.msgpack.encode(r) for r in records]


def test_reopen_restores_records_bit_for_bit(tmp_path, distinct):
    records = make_transitions(300)
    with ExactBuffer(ExactConfig(flush_every=64, segment_records=100), encoder=BagOfWordsEncoder(), path=tmp_path) as b:
        b.add(transitions=records)
        before = b.retrieve(queries=[(records[9].state, records[9].action)], k=3)
    with ExactBuffer(encoder=BagOfWordsEncoder(), path=tmp_path) as b:
        assert _blob(list(b)) == _blob(records)
        assert b.retrieve(queries=[(records[9].state, records[9].action)], k=3) == before
        assert b.add(transitions=records[:10]) == 0  # dedup survives reopening
        assert b.add(transitions=distinct(5, prefix="new")) == 5


def test_duplicates_suppressed_within_and_across_batches():
    b = ExactBuffer(encoder=BagOfWordsEncoder())
    r = make_transitions(3)
    assert b.add(transitions=[r[0], r[0], r[1]]) == 2
    relabelled = msgspec.structs.replace(r[1], episode_id="other", source="synthetic")
    assert b.add(transitions=[relabelled, r[2]]) == 1
    assert ExactBuffer(ExactConfig(dedup="none"), encoder=BagOfWordsEncoder()).add(transitions=[r[0], r[0]]) == 2


def test_capacity_evicts_oldest_synthetic_first_and_keeps_offline(tmp_path, distinct):
    cfg = ExactConfig(capacity=10, flush_every=1)
    offline = distinct(6, source="offline", prefix="off")
    synthetic = distinct(8, source="synthetic", prefix="syn")
    with ExactBuffer(cfg, encoder=BagOfWordsEncoder(), path=tmp_path) as b:
        b.add(transitions=offline)
        b.add(transitions=synthetic)
        kept = list(b)
        assert len(b) == 10
        assert kept == offline + synthetic[4:]
    with ExactBuffer(cfg, encoder=BagOfWordsEncoder(), path=tmp_path) as b:
        assert list(b) == kept  # evictions are persisted
        hits = b.retrieve(queries=[(synthetic[0].state, synthetic[0].action)], k=10)[0]
        assert synthetic[0] not in hits and len(hits) == 10


def test_memory_at_capacity_stays_bounded_as_records_keep_coming(tmp_path, distinct):
    """Evicted rows leave memory (a long run's synthetic records would otherwise pile up
    behind a fixed capacity); the live ones are still found, deduplicated and persisted."""
    cfg = ExactConfig(capacity=50, flush_every=1)
    encoder = BagOfWordsEncoder()
    batches = [distinct(50, source="synthetic", prefix=f"b{i}") for i in range(60)]
    with ExactBuffer(cfg, encoder=encoder, path=tmp_path) as b:
        for batch in batches:
            b.add(transitions=batch)
        held = len(b._records)  # rows in memory, evicted ones included
        assert len(b) == 50 and held <= 50 + 1024 + 50  # 3000 added in all
        assert list(b) == batches[-1]
        hits = b.retrieve(queries=[(t.state, t.action) for t in batches[-1]], k=1)
        assert [row[0] for row in hits] == batches[-1]
        assert b.add(transitions=batches[-1][:3]) == 0  # still known
        assert b.add(transitions=batches[0][:3]) == 3  # evicted, so new again
        kept = list(b)
    with ExactBuffer(cfg, encoder=encoder, path=tmp_path) as b:
        assert list(b) == kept


def test_offline_evicted_only_when_not_kept():
    b = ExactBuffer(ExactConfig(capacity=4, keep_offline=False), encoder=BagOfWordsEncoder())
    b.add(transitions=make_transitions(6, source="offline"))
    assert len(b) == 4


def test_empty_buffer_and_bad_k_give_empty_results():
    b = ExactBuffer(encoder=BagOfWordsEncoder())
    assert b.retrieve(queries=[("s", "a"), ("t", "b")], k=4) == [[], []]
    assert b.retrieve(queries=[], k=4) == []
    b.add(transitions=make_transitions(3))
    assert b.retrieve(queries=[("s", "a")], k=0) == [[]]
    assert len(b.retrieve(queries=[("s", "a")], k=10)[0]) == 3
    assert b.sample(n=10, seed=0) and len(b.sample(n=10, seed=0)) == 3


@pytest.mark.parametrize("empty", [True, False])
@pytest.mark.parametrize(
    "call, message",
    [
        (lambda b: b.retrieve(queries=["sa"], k=1), r"query 0 is 'sa'; expected a \(state, action\) pair of str"),
        (lambda b: b.retrieve(queries=[("s", "a"), ("s", None)], k=1), r"query 1 is \('s', None\)"),
        (lambda b: b.retrieve(queries=[("s", "a", "x")], k=1), r"query 0 is \('s', 'a', 'x'\)"),
        (lambda b: b.retrieve(queries=[("s", "a")], k=2.5), r"k=2.5; expected an int"),
        (lambda b: b.retrieve(queries=[("s", "a")], k=-1), r"retrieve\(\): k=-1; expected an int >= 0"),  # gave [[]]
        (lambda b: b.sample(n=-1, seed=0), r"sample\(\): n=-1; expected an int >= 0"),
    ],
)
def test_a_query_or_count_it_cannot_answer_is_one_line(empty, call, message):
    # A 2-character string passed as a (state, action) pair, and the rest failed deep in the
    # encoder or numpy (AttributeError, TypeError, ValueError), or not at all on an empty buffer.
    b = ExactBuffer(encoder=BagOfWordsEncoder())
    if not empty:
        b.add(transitions=make_transitions(3))
    with pytest.raises(DataError, match=message):
        call(b)
    assert len(b.retrieve(queries=[["s", "a"]], k=np.int64(2))[0]) == (0 if empty else 2)  # a list pair, a numpy int


def test_wrong_embedding_dimension_is_rejected():
    b = ExactBuffer(encoder=BagOfWordsEncoder(dim=64))
    with pytest.raises(DataError, match=r"shape \(2, 32\), expected \(2, 64\)"):
        b.add(transitions=make_transitions(2), embeddings=np.ones((2, 32), dtype=np.float32))
    assert len(b) == 0


def test_precomputed_embeddings_are_used():
    enc = BagOfWordsEncoder(dim=64)
    b = ExactBuffer(encoder=enc)
    records = make_transitions(5)
    vectors = np.eye(5, 64, dtype=np.float32)
    assert b.add(transitions=records, embeddings=vectors) == 5
    assert b._spaces[enc.id].data[3, 3] == 1.0


def test_encoder_dimension_change_under_same_id_is_an_error(tmp_path):
    with ExactBuffer(encoder=BagOfWordsEncoder(dim=64), path=tmp_path) as b:
        b.add(transitions=make_transitions(4))
    with pytest.raises(DataError, match="dim 32, stored embeddings have dim 64"):
        ExactBuffer(encoder=BagOfWordsEncoder(dim=32), path=tmp_path)


def test_encoder_mismatch_refused_when_configured(tmp_path):
    class Other(BagOfWordsEncoder):
        id = "other-v2"

    with ExactBuffer(encoder=BagOfWordsEncoder(), path=tmp_path) as b:
        b.add(transitions=make_transitions(4))
    with pytest.raises(DataError, match="'testing-bow-v1'.*'other-v2'"):
        ExactBuffer(ExactConfig(on_encoder_change="error"), encoder=Other(), path=tmp_path)


def test_corrupt_segment_reported_by_name_and_rest_recovered(tmp_path):
    records = make_transitions(40)
    cfg = ExactConfig(flush_every=10, segment_records=20)
    with ExactBuffer(cfg, encoder=BagOfWordsEncoder(), path=tmp_path) as b:
        for i in range(0, 40, 10):
            b.add(transitions=records[i : i + 10])
    first = segment_files(tmp_path)[0]
    data = bytearray(first.read_bytes())
    data[len(data) // 4] ^= 0xFF  # inside the first frame of the first segment
    first.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match=first.name):
        b = ExactBuffer(cfg, encoder=BagOfWordsEncoder(), path=tmp_path)
    assert list(b) == records[10:]
    assert any(first.name in p and "checksum" in p for p in b.stats()["problems"])
    with pytest.raises(DataError, match=first.name):
        ExactBuffer(ExactConfig(strict=True), encoder=BagOfWordsEncoder(), path=tmp_path)


def test_torn_tail_is_dropped_silently(tmp_path):
    records = make_transitions(20)
    with ExactBuffer(ExactConfig(flush_every=10), encoder=BagOfWordsEncoder(), path=tmp_path) as b:
        b.add(transitions=records)
    seg = segment_files(tmp_path)[-1]
    seg.write_bytes(seg.read_bytes()[:-7])
    b = ExactBuffer(encoder=BagOfWordsEncoder(), path=tmp_path)
    assert len(b) == 0 and b.stats()["problems"]  # the only frame was torn
    assert b.add(transitions=records) == 20


def test_corrupt_length_field_is_not_mistaken_for_a_torn_tail(tmp_path, recwarn):
    # A length that runs past the end of the file looks like a torn write, but a torn
    # write is the last thing in a file: intact frames after it mean the length is corrupt.
    records = make_transitions(50)
    cfg = ExactConfig(flush_every=10)
    with ExactBuffer(cfg, encoder=BagOfWordsEncoder(), path=tmp_path) as b:
        for i in range(0, 50, 10):
            b.add(transitions=records[i : i + 10])
            b.flush()
    seg = segment_files(tmp_path)[0]
    data = bytearray(seg.read_bytes())
    data[7] = 0x10  # high byte of the first frame's length: now far past the end of the file
    seg.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match=f"{seg.name}: offset 0: .*corrupt length"):
        b = ExactBuffer(cfg, encoder=BagOfWordsEncoder(), path=tmp_path)
    assert list(b) == records[10:]  # the four intact frames after it are recovered
    b.close()
    with pytest.raises(DataError, match=f"{seg.name}: offset 0"):
        ExactBuffer(ExactConfig(strict=True), encoder=BagOfWordsEncoder(), path=tmp_path)


def test_torn_tail_of_an_earlier_segment_stays_quiet(tmp_path):
    # A buffer reopened after a crash starts a new segment, so a torn tail need not be in the last file.
    records = make_transitions(40)
    with ExactBuffer(ExactConfig(flush_every=10), encoder=BagOfWordsEncoder(), path=tmp_path) as b:
        b.add(transitions=records[:10])
        b.add(transitions=records[10:20])
    seg = segment_files(tmp_path)[0]
    seg.write_bytes(seg.read_bytes()[:-7])
    with ExactBuffer(ExactConfig(strict=True), encoder=BagOfWordsEncoder(), path=tmp_path) as b:
        b.add(transitions=records[20:])
    assert len(segment_files(tmp_path)) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        b = ExactBuffer(ExactConfig(strict=True), encoder=BagOfWordsEncoder(), path=tmp_path)
    assert list(b) == records[:10] + records[20:]
    assert all("torn frame" in p for p in b.problems)


def test_import_export_round_trip(tmp_path):
    records = make_transitions(12)
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(msgspec.json.encode(r) + b"\n" for r in records))
    b = ExactBuffer(encoder=BagOfWordsEncoder(), path=tmp_path / "buf")
    assert b.import_jsonl(src) == (12, 12)
    assert b.export_jsonl(tmp_path / "out.jsonl") == 12
    assert (tmp_path / "out.jsonl").read_bytes() == src.read_bytes()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task_id": 3}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:1: not a Transition"):
        b.import_jsonl(bad)
    missing = tmp_path / "no such folder" / "out.jsonl"
    with pytest.raises(DataError, match=f"{missing}: cannot write: No such file or directory"):
        b.export_jsonl(missing)


def test_an_import_refuses_an_experience_models_failed_answer_and_stores_nothing(tmp_path):
    # model_failed records are notes on unparsable answers; imported, retrieve() served them as demos.
    records = make_transitions(3)
    records[2] = msgspec.structs.replace(records[2], model_failed=True)
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(msgspec.json.encode(r) + b"\n" for r in records))
    with ExactBuffer(encoder=BagOfWordsEncoder(), path=tmp_path / "buf") as b:
        with pytest.raises(DataError, match=r"in.jsonl:3: a model_failed record \(an experience model's failed answer\) is not stored$"):
            b.import_jsonl(src)
        assert len(b) == 0


@pytest.mark.parametrize("dedup", ["content", "none"])
def test_an_import_with_a_bad_line_stores_nothing(tmp_path, distinct, dedup):
    records = distinct(25, prefix="import")
    src = tmp_path / "in.jsonl"
    good = b"".join(msgspec.json.encode(r) + b"\n" for r in records)
    src.write_bytes(good + b'{"oops": 1}\n')
    cfg = ExactConfig(dedup=dedup, flush_every=1)
    with ExactBuffer(cfg, encoder=BagOfWordsEncoder(), path=tmp_path / "buf") as b:
        with pytest.raises(DataError, match=r"in.jsonl:26: not a Transition record"):
            b.import_jsonl(src, batch=10)  # two batches of 10 come before the bad line
        assert len(b) == 0
    src.write_bytes(good)  # the file fixed and imported again: each record once
    with ExactBuffer(cfg, encoder=BagOfWordsEncoder(), path=tmp_path / "buf") as b:
        assert len(b) == 0
        assert b.import_jsonl(src, batch=10) == (25, 25)
    with ExactBuffer(cfg, encoder=BagOfWordsEncoder(), path=tmp_path / "buf") as b:
        assert _blob(b) == _blob(records)


def test_an_export_that_fails_part_way_leaves_the_earlier_file_whole(tmp_path, monkeypatch):
    b = ExactBuffer(encoder=BagOfWordsEncoder(), path=tmp_path / "buf")
    b.add(transitions=make_transitions(12))
    out = tmp_path / "out.jsonl"
    out.write_bytes(b"an earlier export\n")

    def disk_full(self):
        yield next(iter(self._records))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ExactBuffer, "__iter__", disk_full)
    with pytest.raises(DataError, match=f"{out}: cannot write: No space left on device"):
        b.export_jsonl(out)
    assert out.read_bytes() == b"an earlier export\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["buf", "out.jsonl"]
    monkeypatch.undo()
    assert b.export_jsonl(out) == 12 and len(out.read_bytes().splitlines()) == 12
    assert b.export_jsonl("/dev/null") == 12  # not a regular file: written in place, not replaced


def test_stray_and_unreadable_segment_files(tmp_path, distinct):
    first, second = distinct(3, prefix="first"), distinct(3, prefix="second")
    with ExactBuffer(encoder=BagOfWordsEncoder(), path=tmp_path) as b:
        b.add(transitions=first)
    (tmp_path / "seg-000001.dgs").rename(tmp_path / "seg-999999.dgs")
    (tmp_path / "seg-copy.dgs").write_bytes(b"not a segment")  # not a name the writer uses: left out
    with ExactBuffer(encoder=BagOfWordsEncoder(), path=tmp_path) as b:
        assert b.problems == []
        b.add(transitions=second)  # a new segment numbered after the last one
    assert [p.name for p in segment_files(tmp_path)] == ["seg-999999.dgs", "seg-1000000.dgs"]
    with ExactBuffer(encoder=BagOfWordsEncoder(), path=tmp_path) as b:
        assert list(b) == first + second
    (tmp_path / "seg-1000001.dgs").mkdir()
    with pytest.raises(DataError, match=r"seg-1000001.dgs: cannot read replay buffer segment: Is a directory"):
        ExactBuffer(encoder=BagOfWordsEncoder(), path=tmp_path)


def test_rollback_forgets_what_came_after_the_position_and_stays_rolled_back(tmp_path, distinct):
    kept, later = distinct(6, prefix="kept"), distinct(4, source="synthetic", prefix="later")
    with ExactBuffer(ExactConfig(flush_every=1), encoder=BagOfWordsEncoder(), path=tmp_path) as b:
        b.add(transitions=kept)
        position = b.position
        b.add(transitions=later)
        assert b.rollback(to=position) == 4
        assert list(b) == kept
        hits = b.retrieve(queries=[(later[0].state, later[0].action)], k=10)[0]
        assert later[0] not in hits and len(hits) == 6
        assert b.rollback(to=position) == 0  # nothing left to forget
    with ExactBuffer(encoder=BagOfWordsEncoder(), path=tmp_path) as b:
        assert list(b) == kept  # the rollback is on disk
        assert b.position > position  # ids are never reused, so old frames stay unambiguous
        assert b.add(transitions=later) == 4  # what was forgotten can be stored again
        assert list(b) == kept + later
    with ExactBuffer(encoder=BagOfWordsEncoder(), path=tmp_path) as b:
        assert list(b) == kept + later


def test_rollback_warns_when_capacity_evicted_older_records_since_the_position(distinct):
    b = ExactBuffer(ExactConfig(capacity=6), encoder=BagOfWordsEncoder())
    b.add(transitions=distinct(6, source="real", prefix="old"))
    position = b.position
    b.add(transitions=distinct(2, source="real", prefix="new"))  # evicts two old records
    with pytest.warns(UserWarning, match="cannot restore 2 older records"):
        assert b.rollback(to=position) == 2
    assert len(b) == 4


def test_rollback_to_a_negative_position_is_refused_and_forgets_nothing(tmp_path, distinct):
    kept = distinct(5)
    with ExactBuffer(ExactConfig(flush_every=1), encoder=BagOfWordsEncoder(), path=tmp_path) as b:
        b.add(transitions=kept)
        with pytest.raises(DataError, match="rollback position must be >= 0, got -5"):
            b.rollback(to=-5)
        assert list(b) == kept
    with ExactBuffer(encoder=BagOfWordsEncoder(), path=tmp_path) as b:
        assert list(b) == kept


def test_ids_named_only_by_an_evict_frame_are_never_given_again(tmp_path, distinct):
    """The add frame of rolled-back records is damaged, its evict frame intact: a reopened buffer
    took its next id from the surviving adds, gave those ids to new records, and the next open
    dropped the new records as evicted."""
    kept, later, new = distinct(6, prefix="kept"), distinct(4, source="synthetic", prefix="later"), distinct(3, prefix="new")
    with ExactBuffer(ExactConfig(flush_every=1), encoder=BagOfWordsEncoder(), path=tmp_path) as b:
        b.add(transitions=kept)
        position = b.position
        b.add(transitions=later)
        b.rollback(to=position)
    (segment,) = segment_files(tmp_path)
    frames, _ = read_segment(segment)
    assert [f.kind for _, f in frames] == ["add", "add", "evict"]
    data = bytearray(segment.read_bytes())
    data[frames[1][0] + 20] ^= 0xFF  # inside the rolled-back add frame's payload
    segment.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="checksum mismatch"):
        with ExactBuffer(encoder=BagOfWordsEncoder(), path=tmp_path) as b:
            assert list(b) == kept
            assert b.position == position + len(later)
            assert b.add(transitions=new) == 3
    with pytest.warns(UserWarning, match="checksum mismatch"):
        with ExactBuffer(encoder=BagOfWordsEncoder(), path=tmp_path) as b:
            assert list(b) == kept + new


@pytest.mark.parametrize("dedup", ["content", "none"])
def test_lone_surrogate_is_refused_without_harming_later_writes(tmp_path, distinct, dedup):
    good, later = distinct(3, prefix="good"), distinct(2, prefix="later")
    bad = msgspec.structs.replace(good[0], state="", next_state="broken \ud800 text")
    with ExactBuffer(ExactConfig(dedup=dedup, flush_every=1), encoder=BagOfWordsEncoder(), path=tmp_path) as b:
        b.add(transitions=good[:2])
        with pytest.raises(DataError, match=r"transition 1: next_state holds a lone surrogate '\\ud800' at character 7"):
            b.add(transitions=[good[2], bad])
        assert list(b) == good[:2]  # the whole batch was refused
        assert b.add(transitions=later) == 2
        b.flush()
    with ExactBuffer(ExactConfig(dedup=dedup), encoder=BagOfWordsEncoder(), path=tmp_path) as b:
        assert list(b) == good[:2] + later


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("done", 1, r"transition 2: done: Expected `bool`, got `int`"),
        ("state", 3, r"transition 2: state: Expected `str`, got `int`"),
        ("admissible_actions", ["look", 2], r"transition 2: admissible_actions\[1\]: Expected `str`, got `int`"),
    ],
)
def test_a_wrongly_typed_field_is_refused_and_nothing_is_stored(tmp_path, distinct, field, value, message):
    """A Transition built without validation can hold any value: stored, its whole frame failed
    to decode on the next open (a strict open refused the buffer)."""
    good, later = distinct(3, prefix="good"), distinct(2, prefix="later")
    bad = msgspec.structs.replace(good[2], **{field: value})
    with ExactBuffer(ExactConfig(flush_every=1), encoder=BagOfWordsEncoder(), path=tmp_path) as b:
        with pytest.raises(DataError, match=message + ", so it could not be read back"):
            b.add(transitions=[*good[:2], bad])
        assert len(b) == 0 and list(b) == [] and b.position == 0
        assert b.add(transitions=good + later) == 5
    with ExactBuffer(ExactConfig(strict=True), encoder=BagOfWordsEncoder(), path=tmp_path) as b:
        assert list(b) == good + later and b.problems == []


def test_an_unknown_source_is_refused_before_anything_changes(tmp_path, distinct):
    """An unknown source failed (KeyError) once its record had a row: the buffer counted none of
    the batch but listed it, and took the earlier record as stored."""
    good = distinct(3, source="real", prefix="src")
    bad = msgspec.structs.replace(good[1], source="human")  # not a Source: built without validation
    with ExactBuffer(ExactConfig(flush_every=1), encoder=BagOfWordsEncoder(), path=tmp_path) as b:
        with pytest.raises(DataError, match=r"transition 1: source is 'human', expected one of synthetic, real, offline"):
            b.add(transitions=[good[0], bad])
        assert len(b) == 0 and list(b) == [] and b.position == 0
        assert b.add(transitions=good) == 3  # none of them was taken as stored
        assert list(b) == good and len(b) == 3
    with ExactBuffer(ExactConfig(strict=True), encoder=BagOfWordsEncoder(), path=tmp_path) as b:
        assert list(b) == good


@pytest.mark.parametrize("reward", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_a_non_finite_reward_is_refused_so_an_export_imports_back(tmp_path, distinct, reward):
    """A NaN reward was stored: the export wrote it as null, and importing that export was refused."""
    good, later = distinct(3, prefix="finite"), distinct(2, prefix="later")
    bad = msgspec.structs.replace(good[2], reward=reward)
    with ExactBuffer(ExactConfig(flush_every=1), encoder=BagOfWordsEncoder(), path=tmp_path / "buf") as b:
        b.add(transitions=good[:1])
        with pytest.raises(DataError, match=rf"transition 1: reward is {reward}, expected a finite number .*; nothing of this batch was added"):
            b.add(transitions=[good[1], bad])
        assert list(b) == good[:1] and b.position == 1  # what was stored stays, the whole batch was refused
        assert b.add(transitions=[*good[1:2], *later]) == 3
    with ExactBuffer(ExactConfig(strict=True), encoder=BagOfWordsEncoder(), path=tmp_path / "buf") as b:
        assert list(b) == [good[0], good[1], *later] and b.problems == []
        assert b.export_jsonl(tmp_path / "out.jsonl") == 4
    with ExactBuffer(encoder=BagOfWordsEncoder(), path=tmp_path / "copy") as copy:
        assert copy.import_jsonl(tmp_path / "out.jsonl") == (4, 4)
        assert list(copy) == [good[0], good[1], *later]


def test_a_missing_segment_file_is_reported_by_name(tmp_path, distinct):
    """The buffer never deletes a segment, so a gap in the numbers is a lost file; here it
    held a rollback, and the records rolled back came back unnoticed, even when strict."""
    first, later = distinct(10, prefix="first"), distinct(2, prefix="later")
    with ExactBuffer(encoder=BagOfWordsEncoder(), path=tmp_path) as b:
        b.add(transitions=first)
    with ExactBuffer(encoder=BagOfWordsEncoder(), path=tmp_path) as b:
        b.rollback(to=5)
    with ExactBuffer(encoder=BagOfWordsEncoder(), path=tmp_path) as b:
        b.add(transitions=later)
        assert list(b) == first[:5] + later
    (tmp_path / "seg-000002.dgs").unlink()
    said = r"seg-000002.dgs: missing between seg-000001.dgs and seg-000003.dgs"
    with pytest.raises(DataError, match=said):
        ExactBuffer(ExactConfig(strict=True), encoder=BagOfWordsEncoder(), path=tmp_path)
    with pytest.warns(UserWarning, match=said + r".*; the rest is recovered"):
        b = ExactBuffer(encoder=BagOfWordsEncoder(), path=tmp_path)
    assert [p.split(":")[0] for p in b.problems] == ["seg-000002.dgs"]
    b.close()


def test_stats_count_live_rows_as_a_reopened_buffer_does(tmp_path, distinct):
    """Evicted and rolled-back rows stay in memory until a compaction: counted in "spaces", a live
    buffer said 50 where the same buffer reopened said 5."""
    encoder = BagOfWordsEncoder()
    with ExactBuffer(ExactConfig(capacity=10), encoder=encoder, path=tmp_path) as b:
        b.add(transitions=distinct(50, source="synthetic", prefix="stats"))
        with pytest.warns(UserWarning, match="cannot restore 40 older records"):
            b.rollback(to=45)
        live = b.stats()
        assert len(b._records) == 50  # no compaction yet: the dead rows are still held
    with ExactBuffer(ExactConfig(capacity=10), encoder=encoder, path=tmp_path) as b:
        assert live["spaces"] == b.stats()["spaces"] == {encoder.id: 5}
        assert live["backfill"] == b.stats()["backfill"]


def _compacting_add(buffer, records):
    """Add ``records`` to a buffer at capacity and check that the add compacted it."""
    before = buffer._records
    buffer.add(transitions=records)
    assert buffer._records is not before and len(buffer._records) == len(buffer)


def test_sample_returns_the_rows_it_took_when_a_compaction_comes_between(distinct, monkeypatch):
    """sample() took row numbers under the lock and read them after releasing it: an add that
    compacted meanwhile renumbered the rows (other records, duplicates, or an IndexError)."""
    monkeypatch.setattr(buffer_module, "_COMPACT_MIN_DEAD", 1)
    old, new = distinct(4, source="synthetic", prefix="old"), distinct(8, source="synthetic", prefix="new")
    b = ExactBuffer(ExactConfig(capacity=4), encoder=BagOfWordsEncoder())
    b.add(transitions=old)
    real_rng = np.random.default_rng

    def rng_after_an_add(seed=None):  # called between taking the rows and reading them
        monkeypatch.setattr(np.random, "default_rng", real_rng)
        _compacting_add(b, new)
        return real_rng(seed)

    monkeypatch.setattr(np.random, "default_rng", rng_after_an_add)
    picked = b.sample(n=4, seed=0)
    assert sorted(picked, key=old.index) == old
    assert list(b) == new[4:]


def test_iteration_yields_the_rows_it_took_when_a_compaction_comes_between(distinct, monkeypatch):
    monkeypatch.setattr(buffer_module, "_COMPACT_MIN_DEAD", 1)
    old, new = distinct(4, source="synthetic", prefix="old"), distinct(8, source="synthetic", prefix="new")
    b = ExactBuffer(ExactConfig(capacity=4), encoder=BagOfWordsEncoder())
    b.add(transitions=old)
    records = iter(b)
    first = next(records)
    _compacting_add(b, new)  # while the caller iterates
    assert [first, *records] == old
    assert list(b) == new[4:]


def test_frames_that_pass_the_checksum_but_do_not_fit_are_skipped_by_name(tmp_path, distinct):
    enc = BagOfWordsEncoder(dim=64)
    first, second = distinct(2, prefix="first"), distinct(1, prefix="second")
    with ExactBuffer(encoder=enc, path=tmp_path) as b:
        b.add(transitions=first)

    def add(rids, transitions, dim=64, floats=None):
        floats = len(rids) * dim if floats is None else floats
        vectors = np.eye(1, floats, dtype="<f4").tobytes()
        return Frame(kind="add", rids=rids, transitions=transitions, encoder_id=enc.id, dim=dim, vectors=vectors)

    bad = [
        add([10, 11], second),  # fewer transitions than record ids
        add([12], second, floats=16),  # vectors too short for the dim
        add([13], second, dim=32),  # another dim than the encoder's earlier frames
        add([14, 14], second * 2),  # a repeated record id
    ]
    blobs = [encode_frame(f) for f in bad] + [encode_frame(add([20], second))]
    seg = tmp_path / "seg-000002.dgs"  # the next number: a gap would be a problem of its own
    seg.write_bytes(b"".join(blobs))
    offsets = np.cumsum([0] + [len(blob) for blob in blobs])[:-1].tolist()
    with pytest.warns(UserWarning) as caught:
        b = ExactBuffer(encoder=enc, path=tmp_path)
    assert list(b) == first + second  # the intact frame after the bad ones is kept
    assert [str(w.message).split("/")[-1].split(";")[0] for w in caught] == b.problems
    assert sorted(p.split(": ")[:2] for p in b.problems) == sorted([seg.name, f"offset {o}"] for o in offsets[:4])
    assert all("inconsistent frame" in p for p in b.problems)
    b.close()
    with pytest.raises(DataError, match=f"{seg.name}: offset 0: inconsistent frame \\(1 transitions for 2 record ids"):
        ExactBuffer(ExactConfig(strict=True), encoder=enc, path=tmp_path)


def test_a_frame_whose_ids_decode_but_whose_transitions_do_not_is_reported_and_skipped(tmp_path, distinct):
    """An open reads record ids first and transitions after: a frame that passes the first
    read and fails the second is still a named problem, and refused when strict."""
    enc = BagOfWordsEncoder()
    first, second = distinct(3, prefix="a"), distinct(1, prefix="b")
    with ExactBuffer(encoder=enc, path=tmp_path) as b:
        b.add(transitions=first)
    vectors = np.eye(1, enc.dim, dtype="<f4").tobytes()
    payload = msgspec.msgpack.encode(
        {"kind": "add", "rids": [10], "transitions": [{"state": 5}], "encoder_id": enc.id, "dim": enc.dim, "vectors": vectors}
    )
    seg = tmp_path / "seg-000002.dgs"  # the next number: a gap would be a problem of its own
    seg.write_bytes(struct.pack("<4sII", b"DGF1", len(payload), zlib.crc32(payload)) + payload
                    + encode_frame(Frame(kind="add", rids=[11], transitions=second, encoder_id=enc.id, dim=enc.dim, vectors=vectors)))
    with pytest.warns(UserWarning, match=f"{seg.name}: offset 0: undecodable frame"):
        b = ExactBuffer(encoder=enc, path=tmp_path)
    assert list(b) == first + second and len(b.problems) == 1
    b.close()
    with pytest.raises(DataError, match=f"{seg.name}: offset 0: undecodable frame"):
        ExactBuffer(ExactConfig(strict=True), encoder=enc, path=tmp_path)


def test_an_export_never_writes_through_a_link_planted_at_its_temporary_name(tmp_path):
    """``buffer export /tmp/x.jsonl`` writes ``/tmp/x.jsonl.tmp`` first: a link someone planted
    there must not make it overwrite the file the link points at."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    b = ExactBuffer(encoder=BagOfWordsEncoder(), path=tmp_path / "buf")
    b.add(transitions=make_transitions(3))
    out = tmp_path / "out.jsonl"
    (tmp_path / "out.jsonl.tmp").symlink_to(victim)
    assert b.export_jsonl(out) == 3
    assert victim.read_text() == "precious\n" and len(out.read_text().splitlines()) == 3 and not out.is_symlink()
    b.close()



def test_a_closed_buffer_refuses_reads_as_it_refuses_writes(tmp_path):
    # It used to answer retrieve() and sample() after close() while add() was refused.
    b = ExactBuffer(ExactConfig(), encoder=BagOfWordsEncoder(), path=tmp_path)
    b.add(transitions=make_transitions(5))
    assert len(b.retrieve(queries=[("state", "action")], k=2)[0]) == 2 and len(b.sample(n=2, seed=0)) == 2
    b.close()
    for call in (lambda: b.retrieve(queries=[("state", "action")], k=2), lambda: b.sample(n=2, seed=0),
                 lambda: b.add(transitions=make_transitions(1))):
        with pytest.raises(DataError, match=r" is closed$"):
            call()
    assert len(b) == 5 and len(list(ExactBuffer(ExactConfig(), encoder=BagOfWordsEncoder(), path=tmp_path))) == 5


def test_a_step_cap_ending_and_the_games_own_ending_are_not_duplicates(tmp_path):
    # content_key left out truncated: of the two, only the first stored was kept.
    (ended,) = make_transitions(1)
    ended = msgspec.structs.replace(ended, done=True)
    capped = msgspec.structs.replace(ended, truncated=True)
    b = ExactBuffer(encoder=BagOfWordsEncoder())
    assert b.add(transitions=[capped, ended]) == 2 and b.add(transitions=[ended]) == 0
