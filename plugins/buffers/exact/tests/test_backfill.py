"""Switching encoders on a populated buffer: online backfill with distance rank merge."""

import numpy as np
import pytest

from dreamgym_core.errors import DataError
from dreamgym_plugin_encoders import HashingConfig, HashingEncoder
from dreamgym_plugin_exact import EncoderRef, ExactBuffer, ExactConfig, embedding_text, make_exact
from dreamgym_plugin_exact import buffer as buffer_module

OLD = HashingConfig(dim=64, bigrams=False)
NEW = HashingConfig(dim=256, bigrams=True)


def _populate(path, distinct, n=600):
    records = distinct(n, prefix="bf")
    with ExactBuffer(ExactConfig(flush_every=100), encoder=HashingEncoder(OLD), path=path) as b:
        b.add(transitions=records)
    return records


def _recall(buffer, reference_vectors, records, queries, k=5):
    """Tie-aware recall@k of ``buffer`` against the exact top-k under the new encoder."""
    enc = HashingEncoder(NEW)
    qv = enc.encode(texts=[embedding_text(s, a) for s, a in queries])
    index = {id(t): i for i, t in enumerate(records)}
    got = buffer.retrieve(queries=queries, k=k)
    hits = 0
    for i, row in enumerate(got):
        kth = np.sort(reference_vectors @ qv[i])[-k]
        hits += sum(reference_vectors[index[id(t)]] @ qv[i] >= kth - 1e-6 for t in row)
    return hits / (k * len(queries))


def test_backfill_recall_rises_to_one(tmp_path, distinct):
    records = _populate(tmp_path, distinct)
    cfg = ExactConfig(backfill_background=False, backfill_batch=100)
    b = ExactBuffer(cfg, encoder=HashingEncoder(NEW), path=tmp_path, previous_encoders=[HashingEncoder(OLD)])
    stored = list(b)  # the buffer's own objects, for identity lookups
    reference = HashingEncoder(NEW).encode(texts=[embedding_text(t.state, t.action) for t in stored])
    queries = [(t.state.replace("You", "you now"), t.action) for t in stored[::29]]
    assert b.backfill_progress == (0, 600)
    recalls = [_recall(b, reference, stored, queries)]
    while b.backfill_step():
        recalls.append(_recall(b, reference, stored, queries))
    assert b.backfill_progress == (600, 600)
    assert recalls[-1] == 1.0 and recalls[0] < 1.0
    # Old-space candidates are re-scored with the new encoder, so recall climbs with the
    # backfilled share (merged raw, old cosines crowded out new ones: 0.30 at half way).
    assert recalls[len(recalls) // 2] >= (recalls[0] + 1.0) / 2
    assert list(b.stats()["spaces"]) == [HashingEncoder(NEW).id]
    b.close()
    reopened = ExactBuffer(cfg, encoder=HashingEncoder(NEW), path=tmp_path)
    assert reopened.backfill_progress == (600, 600) and list(reopened) == records


def test_background_backfill_serves_queries_throughout(tmp_path, distinct):
    records = _populate(tmp_path, distinct, n=400)
    ref = EncoderRef(plugin="encoders", name="hashing", config={"dim": 64, "bigrams": False})
    b = make_exact(ExactConfig(backfill_batch=20, previous_encoder=ref), encoder=HashingEncoder(NEW), path=tmp_path)
    while True:
        done, total = b.backfill_progress
        hits = b.retrieve(queries=[(records[7].state, records[7].action)], k=3)[0]
        assert hits[0] == records[7]  # the exact stored pair is top-1 in either space
        if done == total and b.wait_backfill(timeout=0):
            break
    assert total == 400
    b.close()


def test_added_records_during_backfill_use_the_new_encoder(tmp_path, distinct):
    _populate(tmp_path, distinct, n=50)
    b = ExactBuffer(ExactConfig(backfill_background=False), encoder=HashingEncoder(NEW), path=tmp_path,
                    previous_encoders=[HashingEncoder(OLD)])
    b.add(transitions=distinct(10, prefix="fresh"))
    assert b.backfill_progress == (10, 60)
    while b.backfill_step():
        pass
    assert b.backfill_progress == (60, 60)


def test_queries_during_a_backfill_survive_more_rows_than_the_old_space_holds(tmp_path, distinct):
    """The old encoder's matrix stops growing (1024 rows at least) while adds go to the new one:
    past that, every retrieve() raised IndexError until the backfill ended."""
    old = _populate(tmp_path, distinct, n=10)
    b = ExactBuffer(ExactConfig(backfill_background=False), encoder=HashingEncoder(NEW), path=tmp_path,
                    previous_encoders=[HashingEncoder(OLD)])
    b.add(transitions=distinct(1100, prefix="fresh"))
    assert b.backfill_progress == (1100, 1110)
    hits = b.retrieve(queries=[(old[3].state, old[3].action)], k=3)[0]
    assert old[3] in hits and len(hits) == 3
    b.close()


def _backfill(path, batches=None):
    """Re-embed the buffer at ``path`` with the new encoder: ``batches`` batches of 30, or all."""
    cfg = ExactConfig(backfill_background=False, backfill_batch=30)
    with ExactBuffer(cfg, encoder=HashingEncoder(NEW), path=path) as b:
        done = 0
        while (batches is None or done < batches) and b.backfill_step():
            done += 1


def test_a_finished_backfill_stays_finished_after_reopening(tmp_path, distinct):
    records = _populate(tmp_path, distinct, n=100)
    _backfill(tmp_path)
    new, old = HashingEncoder(NEW), HashingEncoder(OLD)
    cfg = ExactConfig(backfill_background=False)
    with ExactBuffer(cfg, encoder=new, path=tmp_path) as b:
        assert b.stats()["spaces"] == {new.id: 100}  # the old vectors are not loaded again
        assert b.backfill_progress == (100, 100)
    with ExactBuffer(ExactConfig(on_encoder_change="error"), encoder=new, path=tmp_path) as b:
        assert list(b) == records
        assert b.retrieve(queries=[(records[7].state, records[7].action)], k=1) == [[records[7]]]
    # nothing stored is lost: opened with the old encoder, the buffer has its embeddings
    with ExactBuffer(ExactConfig(on_encoder_change="error"), encoder=old, path=tmp_path) as b:
        assert b.stats()["spaces"] == {old.id: 100}


def test_a_half_done_backfill_reloads_old_vectors_only_for_rows_not_re_embedded(tmp_path, distinct):
    records = _populate(tmp_path, distinct, n=100)
    _backfill(tmp_path, batches=2)
    new, old = HashingEncoder(NEW), HashingEncoder(OLD)
    cfg = ExactConfig(backfill_background=False)
    with ExactBuffer(cfg, encoder=new, path=tmp_path, previous_encoders=[old]) as b:
        assert b.stats()["spaces"] == {old.id: 40, new.id: 60}
        assert b.backfill_progress == (60, 100)
        for t in (records[7], records[90]):  # re-embedded, and not yet
            assert b.retrieve(queries=[(t.state, t.action)], k=1) == [[t]]
    with pytest.raises(DataError, match=f"{old.id!r}, configured encoder is {new.id!r}"):
        ExactBuffer(ExactConfig(on_encoder_change="error"), encoder=new, path=tmp_path)


def test_a_live_buffer_counts_its_spaces_as_it_reopens(tmp_path, distinct):
    """An old space kept the vectors of rows the current encoder re-embedded (queries skip
    them): counted, stats() said 100 old-encoder rows where the reopened buffer said 40."""
    _populate(tmp_path, distinct, n=100)
    new, old = HashingEncoder(NEW), HashingEncoder(OLD)
    cfg = ExactConfig(backfill_background=False, backfill_batch=30)
    with ExactBuffer(cfg, encoder=new, path=tmp_path, previous_encoders=[old]) as b:
        b.backfill_step(), b.backfill_step()
        live = b.stats()["spaces"]
    with ExactBuffer(cfg, encoder=new, path=tmp_path, previous_encoders=[old]) as b:
        assert live == b.stats()["spaces"] == {old.id: 40, new.id: 60}


def test_re_scoring_reads_the_records_of_its_snapshot_when_a_compaction_comes_between(tmp_path, distinct, monkeypatch):
    """retrieve() took the rows of one state of the buffer, but the re-scoring of an old space's
    candidates read ``self._records``: after a compaction meanwhile, it scored other records."""
    monkeypatch.setattr(buffer_module, "_COMPACT_MIN_DEAD", 1)
    records = distinct(20, source="synthetic", prefix="snap")
    cfg = ExactConfig(capacity=20, backfill_background=False)
    with ExactBuffer(cfg, encoder=HashingEncoder(OLD), path=tmp_path) as b:
        b.add(transitions=records)

    class Old(HashingEncoder):
        meanwhile = None

        def encode(self, *, texts):  # the query's old-space embedding: after the snapshot
            if self.meanwhile is not None:
                meanwhile, self.meanwhile = self.meanwhile, None
                meanwhile()
            return super().encode(texts=texts)

    class New(HashingEncoder):
        seen: list[list[str]] = []

        def encode(self, *, texts):
            self.seen.append(list(texts))
            return super().encode(texts=texts)

    old, new = Old(OLD), New(NEW)
    b = ExactBuffer(cfg, encoder=new, path=tmp_path, previous_encoders=[old])

    def finish_backfill_and_compact():
        while b.backfill_step():
            pass
        before = b._records
        b.add(transitions=distinct(40, source="synthetic", prefix="later"))  # evicts every snapshot row
        assert b._records is not before  # compacted: the rows are renumbered

    old.meanwhile = finish_backfill_and_compact
    target = records[7]
    hits = b.retrieve(queries=[(target.state, target.action)], k=3)[0]
    rescored = new.seen[-1]  # the candidates' texts, embedded again with the new encoder
    assert sorted(rescored) == sorted(embedding_text(t.state, t.action) for t in hits)
    assert hits[0] == target and all(t in records for t in hits)
    b.close()
