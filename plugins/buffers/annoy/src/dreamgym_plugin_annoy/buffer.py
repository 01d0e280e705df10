"""AnnoyBuffer: approximate search over sealed rows, exact over the rest, merged."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from contextlib import suppress
from pathlib import Path
from typing import Annotated, Sequence

import numpy as np
from annoy import AnnoyIndex
from msgspec import Meta

from dreamgym_core.checkpoint import open_new, sync_directory
from dreamgym_core.errors import DataError
from dreamgym_core.records import Transition
from dreamgym_plugin_exact import ExactBuffer, ExactConfig, best_first, topk_cosine
from dreamgym_plugin_exact.buffer import Space
from dreamgym_plugin_exact.search import cosine_scores

__all__ = ["AnnoyConfig", "AnnoyBuffer", "BuiltIndex", "unsafe_index"]

_FILES = ("annoy.ann", "annoy.rids.npy", "annoy.json")
_DIGESTS = ("ann_sha256", "rids_sha256")  # manifest keys: sha256 of the first two files


class AnnoyConfig(ExactConfig):
    """The exact buffer's settings plus the annoy index's."""

    n_trees: Annotated[int, Meta(gt=0, description="annoy trees: more is slower to build, better recall.")] = 50
    search_k: Annotated[
        int, Meta(ge=-1, description="Nodes inspected per query (annoy search_k), >= 1; -1 is annoy's n_trees * n.")
    ] = 20000
    min_rows: Annotated[int, Meta(ge=0, description="Below this many sealed rows no index is built (exact).")] = 5000
    rebuild_growth: Annotated[
        float, Meta(gt=0.0, description="Rebuild when unindexed sealed rows exceed this share of indexed rows.")
    ] = 0.25
    build_jobs: Annotated[
        int, Meta(ge=-1, description="Threads annoy builds with (annoy n_jobs), >= 1; -1 is all cores.")
    ] = 1
    background_build: Annotated[
        bool,
        Meta(description="Build in a background thread, queries going on meanwhile (true), or in the call that "
             "sealed the rows (false): then a query always sees the index of every sealed row, and runs repeat "
             "their retrievals whatever the machine's timing."),
    ] = True
    tie_candidates: Annotated[
        int,
        Meta(gt=0, description="Most index candidates asked for per query while a tie at the k-th place may spill "
             "past them (ties go to the earliest row, as in the exact search)."),
    ] = 256

    def __post_init__(self) -> None:
        super().__post_init__()
        # 0 is within the bounds that let -1 through, and fails silently: annoy builds no tree
        # with 0 threads, and inspects no node with search_k 0 (every query misses the index)
        if self.build_jobs == 0:
            raise ValueError("annoy: build_jobs=0 builds an index of no trees; set -1 (all cores) or a thread count >= 1")
        if self.search_k == 0:
            raise ValueError("annoy: search_k=0 inspects no node, so queries never find indexed rows; set -1 or >= 1")


def _sha256(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def unsafe_index(path: Path, dim: int) -> str | None:
    """What makes a saved angular annoy index unsafe to map and search, or None.

    annoy follows the node and item numbers in the file unchecked: a number out of range (a
    damaged file, or one made so, whose manifest digests were made to match) reads outside
    the mapping and crashes the process at the first query. A node is ``dim + 3`` int32-sized
    fields: its number of descendants, then two children and the vector; item ``i`` is node
    ``i``, the roots are the last nodes (their count of descendants is the number of items),
    a node of at most ``dim + 2`` descendants lists its items in the fields after the first,
    and any other node names its two child nodes.
    """
    width = dim + 3
    size = path.stat().st_size
    if size == 0 or size % (4 * width):
        return f"its size ({size} bytes) is no whole number of {dim}-dimensional nodes"
    nodes = np.memmap(path, dtype=np.int32, mode="r").reshape(-1, width)
    total, items, bucket_size = len(nodes), int(nodes[-1, 0]), width - 1
    if not 0 < items <= total:
        return f"its roots count {items} items in {total} nodes"
    for start in range(0, total, 1 << 14):
        block = np.asarray(nodes[start : start + (1 << 14)])
        number = np.arange(start, start + len(block))
        count, fields = block[:, 0], block[:, 1:]
        if (count[number < items] != 1).any():
            return "an item's node is not a leaf"
        count, fields = count[number >= items], fields[number >= items]
        if (count < 0).any():
            return "a node has a negative count of descendants"
        bucket = count <= bucket_size
        listed = np.arange(bucket_size)[None, :] < count[bucket, None]
        if ((fields[bucket] < 0) | (fields[bucket] >= items))[listed].any():
            return "a node lists an item that does not exist"
        children = fields[~bucket, :2]
        if ((children < 0) | (children >= total)).any():
            return "a node names a child node that does not exist"
    return None


def _saved_rids(path: Path) -> np.ndarray:
    """The record ids saved with an index: a 1-D integer array, else a DataError naming the file.

    Checked here, not by the manifest: an index saved before digests were kept is loaded
    unchecked, and an empty, cut-short or reshaped ids file raised a bare EOFError, TypeError
    or ValueError (no file named) from the buffer's constructor.
    """
    try:
        rids = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path.name}: not a saved array of record ids ({str(exc) or type(exc).__name__})") from None
    if not isinstance(rids, np.ndarray) or rids.ndim != 1 or not np.issubdtype(rids.dtype, np.integer):
        what = f"{rids.dtype} of shape {rids.shape}" if isinstance(rids, np.ndarray) else type(rids).__name__
        raise DataError(f"{path.name}: expected a 1-D integer array of record ids, found {what}")
    return rids


class BuiltIndex:
    """One immutable annoy index: item i is buffer row ``item_rows[i]`` (-1 if gone).

    ``upto``: rows below it were considered at build time; ``holes``: those of them
    the index does not hold (searched exactly when eligible).
    """

    def __init__(self, annoy: AnnoyIndex, encoder_id: str, item_rows: np.ndarray, upto: int) -> None:
        self.annoy = annoy
        self.encoder_id = encoder_id
        self.item_rows = item_rows
        self.upto = upto
        covered = np.zeros(upto, dtype=bool)
        covered[item_rows[(item_rows >= 0) & (item_rows < upto)]] = True
        self.holes = np.flatnonzero(~covered)


def _live_items(built: BuiltIndex, alive: np.ndarray) -> int:
    """How many of the index's items are rows the buffer still holds."""
    rows = built.item_rows
    held = (rows >= 0) & (rows < len(alive))
    return int(alive[rows[held]].sum())


class AnnoyBuffer(ExactBuffer):
    """Replay buffer whose current embedding space is searched with annoy."""

    config: AnnoyConfig

    def __init__(self, config: AnnoyConfig | None = None, **kwargs) -> None:
        self._built: BuiltIndex | None = None
        self._build_thread: threading.Thread | None = None
        # held for a whole build, taken before the buffer's lock: one build at a time (two raced on
        # the .tmp files), and no compaction between reading its row numbers and installing it
        self._build_lock = threading.Lock()
        self._closing = False  # set by close(): no build thread starts after it (one would outlive it)
        self._query = threading.local()  # per querying thread: the index of its retrieve()'s snapshot
        self._wrote_since_claim = False  # a write claimed while _persist held a claim it gives back
        super().__init__(config or AnnoyConfig(), **kwargs)

    # --- index lifecycle ---------------------------------------------------

    def _on_ready(self) -> None:
        self._built = self._load_saved()
        super()._on_ready()
        self._maybe_rebuild()

    def _on_sealed(self) -> None:
        self._maybe_rebuild()

    def _on_backfilled(self) -> None:
        self._maybe_rebuild(force=True)

    def _compactable(self) -> bool:
        # a build under way (in its thread, or blocking in any call) holds row numbers of the buffer as it was
        return not self._build_lock.locked()

    def _on_compacted(self, new_of_old: np.ndarray) -> None:
        built = self._built
        if built is not None:
            rows = built.item_rows
            moved = np.where(rows >= 0, new_of_old[np.maximum(rows, 0)], -1)
            upto = int((new_of_old[: built.upto] >= 0).sum())
            self._built = BuiltIndex(built.annoy, built.encoder_id, moved, upto)

    def _maybe_rebuild(self, force: bool = False) -> None:
        with self._lock:
            sealed, current = self._sealed_rows, self._spaces[self.encoder.id]
            eligible = int((current.mask(sealed) & self._alive[:sealed]).sum())
            built = self._built
            # live rows only: at capacity the evicted ones stay indexed until compaction, and counting
            # them kept a full buffer from ever rebuilding (an index of dead rows, searched in vain)
            indexed = _live_items(built, self._alive) if built and built.encoder_id == self.encoder.id else 0
        if eligible < self.config.min_rows or eligible == indexed:
            return
        if force or eligible - indexed > self.config.rebuild_growth * indexed:
            if self.config.background_build:
                self.rebuild(block=False)
            else:  # the caller may hold the buffer's lock, which a build under way needs to end: not waited for
                self._build_here(wait=False)

    def rebuild(self, block: bool = True) -> None:
        """Build an index over the sealed rows now: in a thread, queries going on meanwhile, or
        (``block``) in this call, which returns once it is built. One build runs at a time: a
        blocking one first waits for one under way. A blocking build runs in the calling thread:
        the call that seals rows inside ``add``, ``flush`` or ``close`` holds the buffer's lock,
        which a build thread would wait for while this one joined it (forever)."""
        if block:
            self._build_here(wait=True)
            return
        with self._lock:  # one build at a time; a thread is published only once started
            thread = self._build_thread
            if not self._closing and (thread is None or not thread.is_alive()):
                thread = threading.Thread(target=self._guarded_build, name="annoy-build", daemon=True)
                thread.start()
                self._build_thread = thread

    def wait_index(self) -> None:
        """Block until a running build has finished."""
        if self._build_thread is not None:
            self._build_thread.join()

    def _build_here(self, wait: bool) -> None:
        """Build in this thread; without ``wait``, none when another build is under way."""
        try:
            self._build(wait)
        except Exception as exc:  # surfaced in stats(); queries fall back to exact search
            self.problems.append(f"annoy build failed: {type(exc).__name__}: {exc}")

    def _guarded_build(self) -> None:
        try:
            self._build(wait=True)  # a build thread holds no lock of the buffer
        except Exception as exc:  # surfaced in stats(); queries fall back to exact search
            self.problems.append(f"annoy build failed: {type(exc).__name__}: {exc}")
            raise

    def _build(self, wait: bool) -> None:
        if not self._build_lock.acquire(blocking=wait):
            return  # the build under way indexes the rows sealed before it; the next seal the rest
        try:
            self._build_and_install()
        finally:
            self._build_lock.release()

    def _build_and_install(self) -> None:
        with self._lock:
            upto = self._sealed_rows
            space = self._spaces[self.encoder.id]
            rows = np.flatnonzero(space.mask(upto) & self._alive[:upto])
            vectors = space.data[rows].copy()
            rids = self._rids[rows].copy()
        index = AnnoyIndex(space.dim, "angular")
        for item, vector in enumerate(vectors):
            index.add_item(item, vector)
        index.build(self.config.n_trees, n_jobs=self.config.build_jobs)
        unsaved = self._persist(index, rids, space.encoder_id) if self.path is not None else None
        if index.get_n_items() != len(rows):  # annoy unloads an index before mapping its saved file, which failed
            self.problems.append(unsaved or f"{_FILES[0]}: the annoy index was lost on saving; queries search exactly")
            return
        built = BuiltIndex(index, space.encoder_id, rows.astype(np.int64), upto)
        with self._lock:
            if not self._closed:
                self._built = built
        if unsaved is not None:
            self.problems.append(unsaved)

    def _persist(self, index: AnnoyIndex, rids: np.ndarray, encoder_id: str) -> str | None:
        """Save a built index if this buffer may write its directory; what kept it unsaved, or None.

        The index files are writes like any other: they need the directory's write claim
        (see :mod:`dreamgym_plugin_exact.writer_lock`), or a buffer that only reads a
        directory another one writes replaced the index files under it. Unsaved (claim
        refused, or the save failed), the index is still searched from memory; the files
        saved before stay as they were.

        A buffer that held no claim before (it has written nothing: a ``dreamgym buffer query``,
        an eval) gives it back once the files are saved. Kept until close(), it refused every
        write of the run whose directory this reader had only read.
        """
        lock = self._writer_lock
        with self._lock:  # add() claims under the lock too: two threads of one buffer never claim at once
            if self._closed or lock is None:  # its claim is given back: a closed buffer writes nothing
                return None
            borrowed = not lock.held
            self._wrote_since_claim = False
            try:
                lock.claim()
            except DataError as exc:
                return f"{_FILES[0]}: index not saved, searched from memory (the write claim is refused: {exc})"
        try:
            self._save(index, rids, encoder_id)
        except DataError as exc:
            return f"{exc}; the new index is searched from memory"
        finally:
            with self._lock:
                # not if the buffer made a write of its own meanwhile (another thread): that keeps it
                if borrowed and not self._wrote_since_claim:
                    lock.release()
        return None

    def _claim_writes(self) -> None:
        super()._claim_writes()
        self._wrote_since_claim = True  # see _persist (every write claims first, under the buffer's lock)

    def _save(self, index: AnnoyIndex, rids: np.ndarray, encoder_id: str) -> None:
        """Write index, item ids and a manifest; all three in full, then each replaced, manifest last.

        The manifest holds the sha256 of the other two files, so a set torn by a kill
        between the replaces (new index, old ids) or a corrupt file is never loaded.
        Nothing is replaced before every file is written: a write that fails (a full disk)
        leaves the saved set as it was, and its temporary files are removed. No temporary
        file is written through a link planted at its name: the ids and the manifest are
        created anew (open_new), and annoy's save removes what is at its name before it writes.

        Raises:
            DataError: a file could not be written or replaced; the message names it.
        """
        assert self.path is not None  # only called with a path (not user input)
        ann, rid_file, manifest = (self.path / name for name in _FILES)
        tmp = {ann: Path(str(ann) + ".tmp"), rid_file: Path(str(rid_file) + ".tmp.npy"),
               manifest: Path(str(manifest) + ".tmp")}
        step = rid_file
        try:
            with open_new(tmp[rid_file]) as f:
                np.save(f, rids, allow_pickle=False)
            step = ann
            index.save(str(tmp[ann]))
            meta = {"encoder_id": encoder_id, "items": len(rids), "n_trees": self.config.n_trees, "dim": index.f,
                    _DIGESTS[0]: _sha256(tmp[ann]), _DIGESTS[1]: _sha256(tmp[rid_file])}
            step = manifest
            with open_new(tmp[manifest]) as f:
                f.write(json.dumps(meta).encode())
                f.flush()
                os.fsync(f.fileno())
            for step in (ann, rid_file, manifest):
                os.replace(tmp[step], step)
            sync_directory(self.path)  # the replaces survive a power cut too
        except BaseException as exc:
            for path in tmp.values():  # those not replaced yet; a replaced one is gone from its temporary name
                with suppress(OSError):
                    path.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise DataError(f"{step.name}: cannot save the annoy index: {exc.strerror or exc}") from exc
            raise

    def _load_saved(self) -> BuiltIndex | None:
        """The saved index if it matches the manifest and the current encoder; else None.

        annoy does not check the file it maps (a flipped byte can crash the process),
        so the index and id files are checked against the manifest's digests first.
        A manifest written before digests were kept is trusted as it always was.
        """
        if self.path is None or not all((self.path / name).is_file() for name in _FILES):
            return None
        ann, rid_file, manifest = (self.path / name for name in _FILES)
        try:
            meta = json.loads(manifest.read_text())
            if not isinstance(meta, dict):
                raise ValueError(f"expected a JSON object, got {type(meta).__name__}")
            if meta.get("encoder_id") != self.encoder.id or meta.get("dim") != self.encoder.dim:
                return None
            for file, key in zip((ann, rid_file), _DIGESTS):
                if key in meta and _sha256(file) != meta[key]:
                    self.problems.append(
                        f"{file.name} does not match the digest in {manifest.name} (torn save or corrupt file); rebuilding"
                    )
                    return None
            unsafe = unsafe_index(ann, self.encoder.dim)
            if unsafe is not None:
                self.problems.append(f"{ann.name}: not a sound annoy index ({unsafe}); rebuilding")
                return None
            rids = _saved_rids(rid_file)
            index = AnnoyIndex(self.encoder.dim, "angular")
            index.load(str(ann))
        except DataError as exc:  # names its file
            self.problems.append(f"{exc}; rebuilding")
            return None
        except (OSError, ValueError, KeyError) as exc:
            self.problems.append(f"{manifest.name}: saved annoy index unreadable ({exc}); rebuilding")
            return None
        if index.get_n_items() != len(rids) or meta.get("items") != len(rids):
            self.problems.append(f"{manifest.name}: saved annoy index does not match its manifest; rebuilding")
            return None
        item_rows = np.array([self._row_of.get(int(r), -1) for r in rids], dtype=np.int64)
        return BuiltIndex(index, self.encoder.id, item_rows, self._sealed_rows)

    def close(self) -> None:
        """Wait for a running build, then close; a segment that closing seals starts no build in
        a thread (the next open builds its index), as one would outlive the buffer."""
        with self._lock:  # under the lock: a rebuild() under way has published its thread, or starts none
            self._closing = True
        self.wait_index()
        super().close()
        with self._lock:
            # a closed buffer kept by its caller kept the index file open and mapped. Dropped, not
            # unloaded: a query begun before close() may still search it; the last reference unmaps it
            self._built = None

    # --- search ------------------------------------------------------------

    def retrieve(self, *, queries: Sequence[tuple[str, str]], k: int) -> list[list[Transition]]:
        try:
            return super().retrieve(queries=queries, k=k)
        finally:
            self._query.built = None  # a thread that queries no more keeps no replaced index alive

    def _snapshot(self) -> list[tuple[Space, int, np.ndarray]]:
        # the index as of the same state of the buffer as the rows: an add between the snapshot and
        # the search may compact (renumber the rows of self._built) or rebuild it
        with self._lock:
            self._query.built = self._built
            return super()._snapshot()

    def _search(self, space: Space, q: np.ndarray, k: int, n: int, mask: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        built = getattr(self._query, "built", None)
        if built is None or built.encoder_id != space.encoder_id:
            return super()._search(space, q, k, n, mask)
        rest = np.concatenate([built.holes[mask[built.holes]], built.upto + np.flatnonzero(mask[built.upto : n])])
        exact = topk_cosine(q, space.data[rest], k) if len(rest) else None
        hits = []
        for i, vector in enumerate(q):
            rows, scores = self._annoy_hits(built, space, vector, k, mask)
            if exact is not None:
                rows = np.concatenate([rows, rest[exact[0][i]]])
                scores = np.concatenate([scores, exact[1][i]])
            hits.append(best_first(rows, scores, k))
        return hits

    def _annoy_hits(
        self, built: BuiltIndex, space: Space, vector: np.ndarray, k: int, mask: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k eligible rows from the index, scored and tie-broken as the exact search does.

        annoy orders candidates by float32 distances, so rows the exact search scores
        alike (its ties go to the earliest row) come back in rounding-noise order, and a
        tie at the k-th place keeps whichever tied rows annoy met first. Candidates are
        therefore scored again from the stored vectors, and more are asked for while
        ineligible rows crowd in or the k-th score ties the last candidate's (the tie may
        spill past them), up to ``tie_candidates``. They are scored as the exact search
        scores (:func:`cosine_scores`, summed in float64): summed in float32, another
        summation order than the exact search's moved a cosine near a 1e-6 rounding
        boundary to the other side (1 list of 300 real TextWorldExpress queries ranked otherwise).
        """
        total = len(built.item_rows)
        tie_limit = max(self.config.tie_candidates, k + 8)
        ask = min(total, k + 8)
        while True:
            items = built.annoy.get_nns_by_vector(vector, ask, search_k=self.config.search_k)
            rows = built.item_rows[np.asarray(items, dtype=np.int64)]
            rows = rows[(rows >= 0) & mask[np.maximum(rows, 0)]]
            rows, scores = best_first(rows, cosine_scores(vector[None, :], space.data[rows])[0], len(rows))
            short = len(rows) < k
            spills = not short and scores[k - 1] == scores[-1] and ask < tie_limit
            if ask >= total or not (short or spills):
                return rows[:k], scores[:k]
            ask = min(total, ask * 4 if short else min(ask * 4, tie_limit))

    def stats(self) -> dict:
        try:
            out = super().stats()  # its space counts take a snapshot, which keeps the index for a query
        finally:
            self._query.built = None  # as after retrieve(): this thread keeps no replaced index alive
        built = self._built
        out["annoy"] = {
            "items": len(built.item_rows) if built else 0,
            "encoder": built.encoder_id if built else None,
            "building": bool(self._build_thread and self._build_thread.is_alive()),
            "n_trees": self.config.n_trees,
            "search_k": self.config.search_k,
        }
        return out
