import json
import os
import threading
from pathlib import Path
from types import SimpleNamespace

import msgspec
import numpy as np
import pytest
from annoy import AnnoyIndex

import dreamgym_plugin_annoy.buffer as annoy_buffer
from dreamgym_core.config import convert_config
from dreamgym_core.errors import ConfigError, DataError
from dreamgym_core.records import Transition
from dreamgym_plugin_annoy import AnnoyBuffer, AnnoyConfig
from dreamgym_plugin_encoders import HashingConfig, HashingEncoder
from dreamgym_plugin_exact import ExactBuffer, ExactConfig, embedding_text

ROOMS = ["kitchen", "pantry", "garden", "bedroom", "bathroom", "corridor", "cellar", "attic", "study"]
THINGS = ["apple", "key", "coin", "book", "lamp", "knife", "towel", "bottle", "map", "candle", "rope"]
VERBS = ["take", "open", "examine", "drop", "put", "push", "eat", "light"]


def household(n, seed=0, prefix=""):
    """Varied household transitions: distinct texts, clustered vocabulary (like real states)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        room, a, b = rng.choice(ROOMS), rng.choice(THINGS), rng.choice(THINGS)
        state = f"{prefix}You are in the {room}. On the table: a {a} and a {b}. Exits: {rng.choice(ROOMS)}. #{i}"
        action = f"{rng.choice(VERBS)} {rng.choice([a, b])}"
        out.append(Transition(task_id=f"t{i % 9}", episode_id=f"e{i // 6}", step=i % 6, state=state, action=action,
                              next_state=f"{state} -> {action}", reward=0.0, done=False, source="synthetic"))
    return out


def _scores(encoder, query, results):
    q = encoder.encode(texts=[embedding_text(*query)])[0]
    return np.round(encoder.encode(texts=[embedding_text(t.state, t.action) for t in results]) @ q, 5)


def _indexed_and_exact(encoder, records):
    """An annoy buffer with every row indexed (high search effort), and an exact one, on ``records``."""
    annoy = AnnoyBuffer(AnnoyConfig(min_rows=100, n_trees=20, search_k=60000), encoder=encoder)
    exact = ExactBuffer(encoder=encoder)
    annoy.add(transitions=records)
    exact.add(transitions=records)
    annoy.seal()
    annoy.wait_index()
    return annoy, exact


def test_same_topk_as_exact_with_enough_search_effort():
    enc = HashingEncoder()
    annoy, exact = _indexed_and_exact(enc, household(3000))
    assert annoy.stats()["annoy"]["items"] == 3000
    queries = [(t.state.replace("You are", "you stand"), t.action) for t in household(40, seed=1)]
    got, want = annoy.retrieve(queries=queries, k=4), exact.retrieve(queries=queries, k=4)
    for q, a, b in zip(queries, got, want):  # equal up to ties: compare score lists
        assert np.allclose(_scores(enc, q, a), _scores(enc, q, b), atol=1e-4)


def test_ties_come_back_as_exact_returns_them():
    # Rows that share a state and differ only in a one-word action are equally similar to a
    # query of that state with another action. exact returns the earliest of equally similar
    # rows, and so must annoy, or what the experience model is shown would depend on the backend.
    enc = HashingEncoder()
    records = household(400)
    words = [f"zq{c}{d}" for c in "abcdefgh" for d in "abcdefgh"]
    for i, base in enumerate(range(0, 400, 40)):
        for j in range(1, 9):
            records[base + j] = msgspec.structs.replace(records[base], action=words[(8 * i + j) % 64], episode_id=f"v{i}-{j}")
    annoy, exact = _indexed_and_exact(enc, records)
    queries = [(records[base].state, "look around") for base in range(0, 400, 40)]
    assert annoy.retrieve(queries=queries, k=4) == exact.retrieve(queries=queries, k=4)


class TableEncoder:
    """Fixed vectors per text: scores the test can state exactly."""

    id, dim = "table-test", 8

    def __init__(self, vectors: dict[str, np.ndarray]) -> None:
        self.vectors = vectors

    def encode(self, *, texts):
        return np.stack([self.vectors[t] for t in texts]).astype(np.float32)


def test_a_tie_wider_than_annoys_candidates_goes_to_the_earliest_rows():
    # 40 rows score exactly 0.75 against the query (the query is the first axis, and
    # 0.75 is exact in float32), more than the k + 8 candidates first asked of the index.
    # annoy's own float32 distances differ within such a tie (the rows differ elsewhere),
    # so unless candidates are scored again and widened, which tied rows come back
    # depends on the index, not on the exact search's rule: the earliest rows.
    rng = np.random.default_rng(0)
    records, vectors, tied = household(1000), {}, []
    for row, record in enumerate(records):
        first = 0.875 if row in (500, 900) else 0.75 if row % 25 == 7 else rng.uniform(0.0, 0.4)
        rest = rng.normal(size=7)
        rest *= np.sqrt(1 - first**2) / np.linalg.norm(rest)  # unit rows that differ off the query's axis
        vectors[embedding_text(record.state, record.action)] = np.concatenate([[first], rest])
        if first == 0.75:
            tied.append(row)
    query = ("the query", "look")
    vectors[embedding_text(*query)] = np.eye(8)[0]
    annoy, exact = _indexed_and_exact(TableEncoder(vectors), records)
    assert len(tied) == 40
    want = [records[r] for r in (500, 900, *tied[:2])]
    assert exact.retrieve(queries=[query], k=4) == [want]
    assert annoy.retrieve(queries=[query], k=4) == [want]


def test_fresh_tail_is_searchable_before_any_rebuild():
    enc = HashingEncoder()
    b = AnnoyBuffer(AnnoyConfig(min_rows=100, segment_records=1000), encoder=enc)
    b.add(transitions=household(1000))
    b.wait_index()
    assert b.stats()["annoy"]["items"] == 1000
    fresh = household(30, seed=5, prefix="NEW ")
    b.add(transitions=fresh)  # unsealed tail: not in the index
    assert b.stats()["annoy"]["items"] == 1000
    for t in fresh[:5]:
        assert b.retrieve(queries=[(t.state, t.action)], k=2)[0][0] == t


def test_queries_run_while_an_index_builds():
    enc = HashingEncoder()
    b = AnnoyBuffer(AnnoyConfig(min_rows=100, n_trees=200, segment_records=10**6), encoder=enc)
    records = household(4000)
    b.add(transitions=records)
    b.seal()  # starts a background build
    answered_during_build = 0
    while b.stats()["annoy"]["building"] or b.stats()["annoy"]["items"] == 0:
        t = records[answered_during_build % 4000]
        assert b.retrieve(queries=[(t.state, t.action)], k=1)[0] == [t]
        answered_during_build += 1
    b.wait_index()
    assert answered_during_build > 0 and b.stats()["annoy"]["items"] == 4000


def test_a_foreground_build_is_done_when_the_rows_seal():
    # background_build: false makes retrieval independent of timing: the call that seals
    # rows past the rebuild threshold returns with them indexed. (In the background, a build
    # of this size is still running when seal() returns: test_queries_run_while_an_index_builds.)
    enc = HashingEncoder()
    cfg = AnnoyConfig(min_rows=100, n_trees=200, segment_records=10**6, background_build=False)
    b = AnnoyBuffer(cfg, encoder=enc)
    records = household(5500)
    b.add(transitions=records[:4000])
    b.seal()
    assert b.stats()["annoy"]["items"] == 4000 and not b.stats()["annoy"]["building"]
    b.add(transitions=records[4000:])
    b.seal()  # 1500 new sealed rows > rebuild_growth (0.25) x 4000: rebuilt before seal() returns
    assert b.stats()["annoy"]["items"] == 5500 and not b.stats()["annoy"]["building"]


def test_a_foreground_build_when_an_add_seals_a_segment_does_not_hang():
    # the add that fills a segment seals it holding the buffer's lock; the build thread it
    # started then waited for that lock while add joined it: the first automatic seal hung
    import threading

    b = AnnoyBuffer(AnnoyConfig(min_rows=100, segment_records=50, background_build=False), encoder=HashingEncoder())
    records = household(400)
    worker = threading.Thread(target=lambda: [b.add(transitions=records[i : i + 50]) for i in range(0, 400, 50)], daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "add() hung on a foreground annoy build"
    assert b.stats()["annoy"]["items"] >= 100 and not b.stats()["annoy"]["building"]
    b.close()


def test_a_buffer_at_capacity_rebuilds_its_index_as_rows_are_evicted():
    # the rebuild test counted the index's evicted items as indexed: once full, a buffer never
    # rebuilt, and every query searched an index of dead rows before falling back to exact search
    from dreamgym_plugin_annoy.buffer import _live_items

    b = AnnoyBuffer(AnnoyConfig(min_rows=100, capacity=200, segment_records=100, background_build=False), encoder=HashingEncoder())
    records = household(1000)
    for i in range(0, 1000, 100):
        b.add(transitions=records[i : i + 100])
    assert _live_items(b._built, b._alive) >= 150  # of the 200 rows held
    b.close()


def _full_indexed_buffer() -> tuple[AnnoyBuffer, list]:
    """A buffer of capacity 1500 holding 2000 added rows, its index built over them."""
    b = AnnoyBuffer(AnnoyConfig(min_rows=100, capacity=1500, segment_records=500), encoder=HashingEncoder())
    records = household(2000)
    for i in range(0, 2000, 500):
        b.add(transitions=records[i : i + 500])
    b.rebuild()
    return b, records


def test_evicted_rows_never_returned():
    b, records = _full_indexed_buffer()
    b.add(transitions=household(200, seed=3, prefix="LATE "))  # evicts 200 indexed rows
    alive = {msgspec.msgpack.encode(t) for t in b}
    assert len(alive) == 1500
    hits = b.retrieve(queries=[(t.state, t.action) for t in records[500:700]], k=4)
    assert all(msgspec.msgpack.encode(t) in alive for row in hits for t in row)
    assert all(len(row) == 4 for row in hits)


def test_index_follows_the_rows_when_evicted_ones_leave_memory():
    b, records = _full_indexed_buffer()
    late = household(1100, seed=3, prefix="LATE ")
    b.add(transitions=late)  # 1600 evicted rows, more than the live ones: dropped from memory
    assert b.stats()["spaces"][b.encoder.id] == 1500
    live = records[1600:]
    hits = b.retrieve(queries=[(t.state, t.action) for t in live], k=1)
    assert [row[0] for row in hits] == live  # the index's items still name their own rows
    b.close()


def test_index_persists_and_a_broken_manifest_rebuilds(tmp_path):
    enc = HashingEncoder()
    cfg = AnnoyConfig(min_rows=100, segment_records=400, flush_every=200)
    records = household(1200)
    with AnnoyBuffer(cfg, encoder=enc, path=tmp_path) as b:
        b.add(transitions=records)
        b.seal()
        b.wait_index()
    reopened = AnnoyBuffer(cfg.__class__(min_rows=10**9), encoder=enc, path=tmp_path)  # no rebuild allowed
    assert reopened.stats()["annoy"]["items"] == 1200
    t = records[17]
    assert reopened.retrieve(queries=[(t.state, t.action)], k=1)[0] == [t]
    reopened.close()
    manifest = tmp_path / "annoy.json"
    manifest.write_text(json.dumps(json.loads(manifest.read_text()) | {"items": 5}))
    again = AnnoyBuffer(cfg, encoder=enc, path=tmp_path)
    again.wait_index()
    assert any("annoy.json" in p for p in again.problems)
    assert again.stats()["annoy"]["items"] == 1200  # rebuilt
    again.close()


@pytest.mark.parametrize("tmp_name", ["annoy.json.tmp", "annoy.rids.npy.tmp.npy", "annoy.ann.tmp"])
def test_a_saved_index_is_not_written_through_a_link_planted_at_a_temporary_name(tmp_path, tmp_name):
    # before: the manifest's and the ids' temporary files were written through such a link
    # (write_text, np.save), overwriting the file it points at outside the buffer's folder
    import os

    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    folder = tmp_path / "buffer"
    folder.mkdir()
    os.symlink(victim, folder / tmp_name)
    records = household(300)
    with AnnoyBuffer(AnnoyConfig(min_rows=100, segment_records=200, flush_every=100), encoder=HashingEncoder(), path=folder) as b:
        b.add(transitions=records)
        b.seal()
        b.wait_index()
    assert victim.read_text() == "precious\n"
    reopened = AnnoyBuffer(AnnoyConfig(min_rows=10**9), encoder=HashingEncoder(), path=folder)  # no rebuild allowed
    assert reopened.stats()["annoy"]["items"] == 300 and not reopened.problems
    reopened.close()


def test_backfill_moves_the_index_to_the_new_encoder(tmp_path):
    old, new = HashingEncoder(HashingConfig(dim=64, bigrams=False)), HashingEncoder()
    cfg = AnnoyConfig(min_rows=100, segment_records=500)
    records = household(1000)
    with AnnoyBuffer(cfg, encoder=old, path=tmp_path) as b:
        b.add(transitions=records)
        b.seal()
        b.wait_index()
        assert b.stats()["annoy"]["encoder"] == old.id
    b = AnnoyBuffer(cfg, encoder=new, path=tmp_path, previous_encoders=[old])
    t = records[42]
    assert b.retrieve(queries=[(t.state, t.action)], k=1)[0] == [t]  # served during the backfill
    assert b.wait_backfill(timeout=60)
    b.wait_index()
    assert b.backfill_progress == (1000, 1000)
    assert b.stats()["annoy"] == b.stats()["annoy"] | {"encoder": new.id, "items": 1000}
    assert b.retrieve(queries=[(t.state, t.action)], k=1)[0] == [t]
    b.close()


def test_rolled_back_rows_never_returned_from_the_index():
    enc = HashingEncoder()
    b = AnnoyBuffer(AnnoyConfig(min_rows=100, segment_records=500), encoder=enc)
    kept, later = household(1000), household(500, seed=5, prefix="LATE ")
    b.add(transitions=kept)
    position = b.position
    b.add(transitions=later)
    b.rebuild()  # the rolled-back rows are in the index
    assert b.rollback(to=position) == 500
    hits = b.retrieve(queries=[(t.state, t.action) for t in later[:50]], k=4)
    assert all(not t.state.startswith("LATE ") for row in hits for t in row)
    assert all(len(row) == 4 for row in hits)


def _saved(path, records, cfg):
    with AnnoyBuffer(cfg, encoder=HashingEncoder(), path=path) as b:
        b.add(transitions=records)
        b.seal()
        b.wait_index()


def _reopened(path, cfg):
    b = AnnoyBuffer(cfg, encoder=HashingEncoder(), path=path)
    b.wait_index()
    return b


@pytest.mark.parametrize("content", ["[]", "null", '"annoy"', "3"])
def test_a_manifest_that_is_not_an_object_rebuilds(tmp_path, content):
    cfg = AnnoyConfig(min_rows=100, segment_records=400)
    _saved(tmp_path, household(800), cfg)
    (tmp_path / "annoy.json").write_text(content)
    b = _reopened(tmp_path, cfg)
    assert any("annoy.json" in p and "JSON object" in p for p in b.problems)
    assert b.stats()["annoy"]["items"] == 800  # rebuilt
    b.close()


def test_a_corrupt_index_file_is_rebuilt_not_mapped(tmp_path):
    # annoy maps the file unchecked; a flipped byte in a tree node can crash the process.
    # This flips a byte of the first item's vector, which cannot crash: before digests
    # were kept the damage went unnoticed.
    cfg = AnnoyConfig(min_rows=100, segment_records=400)
    records = household(800)
    _saved(tmp_path, records, cfg)
    ann = tmp_path / "annoy.ann"
    data = bytearray(ann.read_bytes())
    data[20] ^= 0x40
    ann.write_bytes(bytes(data))
    b = _reopened(tmp_path, cfg)
    assert any("annoy.ann does not match the digest" in p for p in b.problems)
    assert b.stats()["annoy"]["items"] == 800
    t = records[5]
    assert b.retrieve(queries=[(t.state, t.action)], k=1)[0] == [t]
    b.close()


def test_an_index_saved_without_its_ids_is_not_used(tmp_path):
    # A kill between replacing annoy.ann and annoy.rids.npy leaves a new index with the
    # old ids and manifest: same item count, wrong records. Made here by copying in the
    # index of another buffer of the same size.
    cfg = AnnoyConfig(min_rows=100, segment_records=400)
    records = household(800)
    _saved(tmp_path / "a", records, cfg)
    _saved(tmp_path / "b", household(800, seed=9, prefix="OTHER "), cfg)
    (tmp_path / "a" / "annoy.ann").write_bytes((tmp_path / "b" / "annoy.ann").read_bytes())
    b = _reopened(tmp_path / "a", cfg)
    assert any("annoy.ann does not match the digest" in p for p in b.problems)
    assert b.stats()["annoy"]["items"] == 800
    hits = b.retrieve(queries=[(t.state, t.action) for t in records[:20]], k=1)
    assert [row[0] for row in hits] == records[:20]
    b.close()


def test_a_manifest_without_digests_loads_as_before(tmp_path):
    # Indexes saved before digests were kept are used without a rebuild.
    cfg = AnnoyConfig(min_rows=100, segment_records=400)
    _saved(tmp_path, household(800), cfg)
    manifest = tmp_path / "annoy.json"
    meta = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({k: v for k, v in meta.items() if not k.endswith("_sha256")}))
    b = AnnoyBuffer(AnnoyConfig(min_rows=10**9), encoder=HashingEncoder(), path=tmp_path)  # no rebuild allowed
    assert b.stats()["annoy"]["items"] == 800 and not b.problems
    b.close()


def test_an_index_naming_nodes_it_does_not_hold_is_rebuilt_not_searched(tmp_path):
    """annoy follows the node numbers of the file it maps unchecked: an index file whose numbers
    point past its end (and whose manifest digests were made to match, or left out as before
    digests were kept) crashed the process at the first query. Reopened in a child process,
    so that such a crash fails this test instead of ending the suite."""
    import hashlib
    import os
    import subprocess
    import sys
    import textwrap

    cfg = AnnoyConfig(min_rows=100, segment_records=400)
    _saved(tmp_path, household(800), cfg)
    ann, manifest = tmp_path / "annoy.ann", tmp_path / "annoy.json"
    dim = HashingEncoder().dim
    nodes = np.frombuffer(ann.read_bytes(), dtype=np.int32).reshape(-1, dim + 3).copy()
    splits = np.flatnonzero((np.arange(len(nodes)) >= 800) & (nodes[:, 0] > dim + 2))
    nodes[splits, 1:3] = 2**30  # every inner node's children, far past the file's end; the roots still count 800 items
    data = nodes.tobytes()
    ann.write_bytes(data)
    manifest.write_text(json.dumps(json.loads(manifest.read_text()) | {"ann_sha256": hashlib.sha256(data).hexdigest()}))
    child = textwrap.dedent(f"""
        from dreamgym_plugin_annoy import AnnoyBuffer, AnnoyConfig
        from dreamgym_plugin_encoders import HashingEncoder
        b = AnnoyBuffer(AnnoyConfig(min_rows=100, segment_records=400), encoder=HashingEncoder(), path={str(tmp_path)!r})
        b.wait_index()
        print(len(b.retrieve(queries=[("You are in the kitchen.", "take apple")], k=3)[0]))
        print(*b.problems, sep="\\n")
        print(b.stats()["annoy"]["items"])
        b.close()
    """)
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert done.returncode == 0, f"the reopened buffer crashed (status {done.returncode}): {done.stderr[-500:]}"
    lines = done.stdout.splitlines()
    assert lines[0] == "3" and lines[-1] == "800"  # answered, and the index rebuilt
    assert any(line.startswith("annoy.ann: not a sound annoy index") for line in lines)


def test_a_closed_buffer_refuses_queries_made_through_its_index():
    b = AnnoyBuffer(AnnoyConfig(min_rows=100, segment_records=1000), encoder=HashingEncoder())
    records = household(1000)
    b.add(transitions=records)
    b.wait_index()
    assert b.stats()["annoy"]["items"] == 1000
    b.close()
    with pytest.raises(DataError, match=r"replay buffer \(in memory\) is closed$"):
        b.retrieve(queries=[(records[0].state, records[0].action)], k=1)


def test_a_query_overlapping_an_add_that_compacts_answers_from_its_snapshot():
    # the query read the index after its snapshot of the rows: an add in between compacted the
    # buffer (renumbering the index's rows) and rebuilt it, so new row numbers picked the
    # snapshot's records (wrong neighbours)
    enc = HashingEncoder()
    records = household(2600)
    query = [(records[50].state, records[50].action)]
    exact = ExactBuffer(ExactConfig(capacity=200, segment_records=100), encoder=enc)
    exact.add(transitions=records[:1300])
    b = AnnoyBuffer(AnnoyConfig(capacity=200, segment_records=100, min_rows=100, n_trees=20, search_k=100000,
                                background_build=False), encoder=enc)
    b.add(transitions=records[:1300])
    search, added = b._search, []

    def add_then_search(*args):  # another thread's add, landing after retrieve() took its snapshot
        if not added:
            added.append(b.add(transitions=records[1300:]))
        return search(*args)

    b._search = add_then_search
    assert b.retrieve(queries=query, k=5) == exact.retrieve(queries=query, k=5)
    assert added == [1300]


def test_close_starts_no_build_that_outlives_it(tmp_path):
    # close() waited for a running build, then sealed a segment (writing what was pending),
    # which started a new build in a thread still running after close() returned
    cfg = AnnoyConfig(min_rows=100, n_trees=200, segment_records=200, flush_every=1000)
    b = AnnoyBuffer(cfg, encoder=HashingEncoder(), path=tmp_path)
    b.add(transitions=household(300))  # pending: written, and a segment sealed, by close()
    b.close()
    assert b._build_thread is None or not b._build_thread.is_alive()
    again = AnnoyBuffer(cfg, encoder=HashingEncoder(), path=tmp_path)  # the next open builds its index
    again.wait_index()
    assert len(again) == 300 and again.stats()["annoy"]["items"] >= 200
    again.close()


@pytest.fixture
def hold_builds(monkeypatch):
    """Call to make annoy builds from then on stand for long ones: the first waits in build()
    until ``release`` is set; ``most`` counts the builds that ran at once."""
    held = SimpleNamespace(started=threading.Event(), release=threading.Event(), running=0, most=0, lock=threading.Lock())

    class HeldIndex(AnnoyIndex):
        def build(self, *args, **kwargs):
            with held.lock:
                first = not held.started.is_set()
                held.running += 1
                held.most = max(held.most, held.running)
                held.started.set()
            try:
                if first:
                    held.release.wait(30)
                return super().build(*args, **kwargs)
            finally:
                with held.lock:
                    held.running -= 1

    def hold():
        monkeypatch.setattr(annoy_buffer, "AnnoyIndex", HeldIndex)
        return held

    yield hold
    held.release.set()  # a failed test leaves no build waiting


def _same_as_exact(b, records, exact):
    """Queries of live records answered as the exact buffer answers them, with stored records only."""
    stored = list(b)
    for t in records:
        got = b.retrieve(queries=[(t.state, t.action)], k=4)[0]
        assert got == exact.retrieve(queries=[(t.state, t.action)], k=4)[0]
        assert all(r in stored for r in got)


def test_a_blocking_build_in_another_thread_holds_off_compaction(hold_builds):
    # rebuild() read the row numbers, built without the lock, and installed its index after an add
    # in another thread had compacted (renumbered) the rows: retrieve() then returned evicted records
    enc, records = HashingEncoder(), household(3000)
    cfg = {"capacity": 200, "segment_records": 100}
    b = AnnoyBuffer(AnnoyConfig(**cfg, min_rows=10**9, n_trees=10, search_k=100000, background_build=False), encoder=enc)
    exact = ExactBuffer(ExactConfig(**cfg), encoder=enc)
    for buffer in (b, exact):
        buffer.add(transitions=records[:1300])
    held = hold_builds()
    builder = threading.Thread(target=b.rebuild)
    builder.start()
    assert held.started.wait(30)
    for buffer in (b, exact):  # evicts past capacity: the evicted rows outnumber the live ones
        buffer.add(transitions=records[1300:])
    held.release.set()
    builder.join()
    assert not b.problems
    _same_as_exact(b, records[2800:2850], exact)


def test_the_build_that_ends_a_backfill_holds_off_compaction(tmp_path, hold_builds):
    # with background_build: false the backfill thread builds in its own call, outside the lock;
    # an add compacting meanwhile left retrieve() raising IndexError on the stale index
    old, new, records = HashingEncoder(HashingConfig(dim=64)), HashingEncoder(), household(3000)
    with AnnoyBuffer(AnnoyConfig(min_rows=10**9), encoder=old, path=tmp_path) as first:
        first.add(transitions=records[:1300])
    held = hold_builds()
    cfg = AnnoyConfig(capacity=200, min_rows=10, n_trees=10, search_k=100000, background_build=False, fsync=False)
    b = AnnoyBuffer(cfg, encoder=new, path=tmp_path)  # re-embeds in a thread, then builds there
    assert held.started.wait(30)
    b.add(transitions=records[1300:])
    held.release.set()
    assert b.wait_backfill(timeout=60)
    exact = ExactBuffer(ExactConfig(capacity=200), encoder=new)
    exact.add(transitions=records)
    assert not b.problems
    _same_as_exact(b, records[2800:2850], exact)
    b.close()


def test_a_build_due_while_another_runs_does_not_run_alongside(hold_builds):
    # two builds ran at once (racing on the .tmp files, the later one installed last)
    b = AnnoyBuffer(AnnoyConfig(min_rows=100, segment_records=100, background_build=False), encoder=HashingEncoder())
    records = household(600)
    b.add(transitions=records[:300])
    held = hold_builds()
    builder = threading.Thread(target=b.rebuild)
    builder.start()
    assert held.started.wait(30)
    b.add(transitions=records[300:])  # seals segments past rebuild_growth: a foreground build is due
    held.release.set()
    builder.join()
    assert held.most == 1
    b.rebuild()  # the rows sealed during the other build
    assert b.stats()["annoy"]["items"] == 600
    b.close()


@pytest.mark.parametrize(("field", "value"), [("build_jobs", 0), ("build_jobs", -2), ("search_k", 0)])
def test_a_build_jobs_or_search_k_that_breaks_the_index_is_refused(field, value):
    # build_jobs 0 built an index of no trees and search_k 0 inspected no node: the index found
    # nothing, silently; build_jobs -2 aborted the process inside annoy
    with pytest.raises(ConfigError, match=rf"^pipeline.yaml: .*{field}") as err:
        convert_config({field: value}, AnnoyConfig, "pipeline.yaml", "$.buffer.config")
    assert "`$.buffer.config" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ValueError, match=field):
        AnnoyConfig(**{field: value})
    assert AnnoyConfig(**{field: -1}) == msgspec.convert({field: -1}, AnnoyConfig)  # -1: annoy's "all"


def _held_open(file: Path) -> bool:
    """Whether this process has ``file`` open or mapped (Linux /proc)."""
    fds = [os.path.realpath(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")]
    maps = {line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines() if len(line.split()) >= 6}
    return str(file) in fds or str(file) in maps


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads this process's open files from /proc (Linux)")
def test_a_closed_buffer_lets_go_of_its_index_file(tmp_path):
    # close() kept the index, and stats() a snapshot of it: a closed buffer kept by its caller
    # kept annoy.ann open and mapped
    b = AnnoyBuffer(AnnoyConfig(min_rows=10, segment_records=100, n_trees=5, fsync=False), encoder=HashingEncoder(), path=tmp_path)
    b.add(transitions=household(300))
    b.seal()
    b.wait_index()
    ann = (tmp_path / "annoy.ann").resolve()
    assert b.stats()["annoy"]["items"] == 300 and _held_open(ann)
    b.close()
    assert not _held_open(ann)


INDEX_FILES = ("annoy.ann", "annoy.rids.npy", "annoy.json")


def _index_files(path: Path) -> dict[str, tuple[int, bytes]]:
    """Inode and bytes of each saved index file: a save replaces a file (new inode) even with equal bytes."""
    return {name: ((path / name).stat().st_ino, (path / name).read_bytes()) for name in INDEX_FILES}


def _leftovers(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.name.startswith("annoy.") and p.name not in INDEX_FILES)


def _writer_with_saved_index(path: Path, records) -> AnnoyBuffer:
    """An open buffer that wrote ``records`` (holding the directory's write claim) and saved their index."""
    writer = AnnoyBuffer(AnnoyConfig(min_rows=100, segment_records=400, background_build=False, fsync=False),
                         encoder=HashingEncoder(), path=path)
    writer.add(transitions=records)
    writer.seal()  # builds, in this call, and saves the index of every row
    assert writer.stats()["annoy"]["items"] == len(records) and not writer.problems
    return writer


@pytest.mark.parametrize("block", [True, False], ids=["foreground", "background"])
def test_a_buffer_without_the_write_claim_saves_no_index_over_the_writers(tmp_path, block):
    # builds saved the index files without the directory's write claim that every other write
    # takes: a buffer reading a directory another one writes replaced the writer's index files
    records = household(800)
    writer = _writer_with_saved_index(tmp_path, records)
    files = _index_files(tmp_path)
    reader = AnnoyBuffer(AnnoyConfig(min_rows=100, n_trees=5), encoder=HashingEncoder(), path=tmp_path)
    loaded = reader._built
    assert loaded is not None and not reader.problems
    reader.rebuild(block=block)
    reader.wait_index()
    assert _index_files(tmp_path) == files and not _leftovers(tmp_path)
    assert reader._built is not loaded and reader.stats()["annoy"]["items"] == 800  # built, searched from memory
    [problem] = reader.problems
    assert problem.startswith("annoy.ann: index not saved, searched from memory") and "writes this directory" in problem
    assert "\n" not in problem
    t = records[123]
    assert reader.retrieve(queries=[(t.state, t.action)], k=1)[0] == [t]
    reader.close()
    writer.add(transitions=household(10, seed=4, prefix="MORE "))  # the writer's claim is untouched
    writer.close()
    again = AnnoyBuffer(AnnoyConfig(min_rows=10**9), encoder=HashingEncoder(), path=tmp_path)  # no rebuild allowed
    assert again.stats()["annoy"]["items"] == 800 and not again.problems
    again.close()


def test_a_build_in_another_process_saves_no_index_over_the_writers(tmp_path):
    # the same across processes (the claim is a flock there): the reader runs in a child process
    import subprocess
    import sys
    import textwrap

    writer = _writer_with_saved_index(tmp_path, household(800))
    files = _index_files(tmp_path)
    child = textwrap.dedent(f"""
        from dreamgym_plugin_annoy import AnnoyBuffer, AnnoyConfig
        from dreamgym_plugin_encoders import HashingEncoder
        b = AnnoyBuffer(AnnoyConfig(min_rows=100, n_trees=5), encoder=HashingEncoder(), path={str(tmp_path)!r})
        b.rebuild()
        print(b.stats()["annoy"]["items"])
        print(*b.problems, sep="\\n")
        b.close()
    """)
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert done.returncode == 0, done.stderr[-800:]
    items, *problems = done.stdout.splitlines()
    assert items == "800" and len(problems) == 1
    assert problems[0].startswith("annoy.ann: index not saved") and "is writing this replay buffer" in problems[0]
    assert _index_files(tmp_path) == files and not _leftovers(tmp_path)
    writer.close()


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="tells the manifest's file by its /proc/self/fd link (Linux)")
def test_a_save_that_fails_keeps_the_saved_index_and_searches_the_new_one(tmp_path, monkeypatch):
    # the disk filled while the manifest was written: the new index and ids had already replaced the
    # saved ones (so the next open found them torn and rebuilt), and the index just built was dropped
    import errno

    records = household(1200)
    b = _writer_with_saved_index(tmp_path, records[:800])
    files = _index_files(tmp_path)
    fsync = os.fsync

    def full_disk(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith("annoy.json.tmp"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", full_disk)
    b.add(transitions=records[800:])
    b.seal()  # 400 new sealed rows > rebuild_growth x 800: rebuilt in this call, its save fails
    monkeypatch.undo()
    assert b.stats()["annoy"]["items"] == 1200  # the index just built is searched
    [problem] = b.problems
    assert problem.startswith("annoy.json: cannot save the annoy index: No space left on device") and "\n" not in problem
    assert _index_files(tmp_path) == files and not _leftovers(tmp_path)  # the saved set as it was, no temporary files
    t = records[1000]
    assert b.retrieve(queries=[(t.state, t.action)], k=1)[0] == [t]
    b.close()
    reopened = AnnoyBuffer(AnnoyConfig(min_rows=10**9), encoder=HashingEncoder(), path=tmp_path)  # no rebuild allowed
    assert reopened.stats()["annoy"]["items"] == 800 and not reopened.problems  # the saved index, whole
    reopened.close()


def test_a_first_index_whose_save_fails_is_searched_from_memory(tmp_path, monkeypatch):
    # annoy's save failing (a full disk) dropped the index just built: the buffer had none
    class FullDisk(AnnoyIndex):
        def save(self, fn, prefault=False):
            raise OSError("Unable to write: No space left on device (28)")  # as annoy reports a failed fwrite

    monkeypatch.setattr(annoy_buffer, "AnnoyIndex", FullDisk)
    records = household(800)
    b = AnnoyBuffer(AnnoyConfig(min_rows=100, segment_records=400, background_build=False, fsync=False),
                    encoder=HashingEncoder(), path=tmp_path)
    b.add(transitions=records)
    b.seal()
    assert b.stats()["annoy"]["items"] == 800
    assert b.problems and all(
        p.startswith("annoy.ann: cannot save the annoy index: Unable to write: No space left") and "\n" not in p
        for p in b.problems
    )
    assert not any((tmp_path / name).exists() for name in INDEX_FILES) and not _leftovers(tmp_path)
    t = records[321]
    assert b.retrieve(queries=[(t.state, t.action)], k=1)[0] == [t]
    b.close()


@pytest.mark.parametrize(
    "damage",
    [
        lambda path: path.write_bytes(b""),
        lambda path: np.save(path, np.int64(3)),
        lambda path: np.save(path, np.zeros((800, 2), dtype=np.int64)),
        lambda path: np.save(path, np.array(["x"] * 800)),
    ],
    ids=["empty", "scalar", "2-D", "text"],
)
def test_a_malformed_ids_file_of_an_index_saved_without_digests_is_named_and_rebuilt(tmp_path, damage):
    # such an index is loaded unchecked, as it always was: an ids file that is empty or no 1-D
    # integer array raised a bare EOFError, TypeError or ValueError, naming no file, from the constructor
    cfg = AnnoyConfig(min_rows=100, segment_records=400)
    records = household(800)
    _saved(tmp_path, records, cfg)
    manifest = tmp_path / "annoy.json"
    meta = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({k: v for k, v in meta.items() if not k.endswith("_sha256")}))
    damage(tmp_path / "annoy.rids.npy")
    b = _reopened(tmp_path, cfg)
    [problem] = b.problems
    assert problem.startswith("annoy.rids.npy: ") and problem.endswith("; rebuilding") and "\n" not in problem
    assert b.stats()["annoy"]["items"] == 800  # rebuilt
    t = records[77]
    assert b.retrieve(queries=[(t.state, t.action)], k=1)[0] == [t]
    b.close()
