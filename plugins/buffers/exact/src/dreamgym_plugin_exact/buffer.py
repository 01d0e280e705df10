"""The replay buffer: records, embeddings per encoder, persistence, eviction, backfill.

Rows are kept in insertion order. Each encoder id that embedded some rows has its
own :class:`Space` (a growable float32 matrix plus a "has a vector" mask). Queries
are answered per space and merged by score (distance rank merge), so a buffer in
the middle of a backfill answers from old and new embeddings at once; an old space's
candidates are re-scored with the current encoder first, because cosines of two
encoders are not on one scale. Subclasses
change how the current space is searched (see the annoy backend).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import threading
import warnings
from collections import deque
from pathlib import Path
from typing import Any, Sequence

import msgspec
import numpy as np

from dreamgym_core.checkpoint import is_stream_path, open_new, output_file, sync_directory
from dreamgym_core.errors import DataError
from dreamgym_core.records import Transition

from .config import ExactConfig
from .search import embedding_text, merge_ranked, topk_cosine
from .segments import MAX_RECORD_BYTES, Frame, FrameIds, SegmentWriter, iter_segment, missing_segments, segment_files
from .writer_lock import WriterLock

__all__ = ["ExactBuffer", "Space", "content_key", "EVICTION_ORDER"]

# Sources evicted first to last when the buffer is over capacity.
EVICTION_ORDER = ("synthetic", "real", "offline")
# Evicted rows kept in memory before they are dropped: at least this many, and at least as
# many as the live rows, so a buffer at capacity holds at most about twice its capacity.
_COMPACT_MIN_DEAD = 1024


def content_key(t: Transition) -> bytes:
    """Duplicate key: what a transition says about the environment, not who logged it. A step-cap
    ending (``truncated``) is not the game's own ending: kept as one, the game-over was lost."""
    blob = msgspec.msgpack.encode((t.state, t.action, t.next_state, t.reward, t.done, t.success, t.valid, t.truncated))
    return hashlib.blake2b(blob, digest_size=16).digest()


_record_encoder = msgspec.msgpack.Encoder()
# What an open decodes a frame's transitions with (Frame.transitions): a batch that does not
# decode back with it would be stored, and its whole frame dropped on the next open.
_records_decoder = msgspec.msgpack.Decoder(list[Transition])
_AT_FIELD = re.compile(r"(?s)(.*) - at `\$\[(\d+)\]\.?([^`]*)`")


def _check_storable(transitions: Sequence[Transition], where: str) -> None:
    """Raise DataError, before anything changes, if the batch cannot be stored and read back.

    Refused: an item that is not a Transition; a ``source`` the eviction policy does not
    know; a reward that is NaN or infinite (``export_jsonl`` would write it as ``null``, which
    no import reads back); text that is not valid Unicode (segments hold UTF-8); a field of the wrong type,
    which a Transition built without validation can hold (``done=1``). The one Python
    ``str`` that is not valid Unicode text holds a lone surrogate (U+D800..U+DFFF), e.g.
    from ``bytes.decode(errors="surrogateescape")``.
    """
    for i, t in enumerate(transitions):
        if not isinstance(t, Transition):
            raise DataError(f"add(): item {i} is a {type(t).__name__}, expected Transition")
        if t.source not in EVICTION_ORDER:  # its eviction queue is looked up once rows are taken
            raise DataError(
                f"{where}: transition {i}: source is {t.source!r}, expected one of {', '.join(EVICTION_ORDER)}; "
                "nothing of this batch was added"
            )
        if isinstance(t.reward, float) and not math.isfinite(t.reward):  # another type: refused below
            raise DataError(
                f"{where}: transition {i}: reward is {t.reward}, expected a finite number (an export would write it "
                "as null, which no import reads back); nothing of this batch was added"
            )
    try:
        blob = _record_encoder.encode(transitions)
    except UnicodeEncodeError:
        for i, t in enumerate(transitions):
            for name in t.__struct_fields__:
                value = getattr(t, name)
                for text in value if isinstance(value, list) else [value]:
                    if isinstance(text, str):
                        try:
                            text.encode()
                        except UnicodeEncodeError as exc:
                            raise DataError(
                                f"{where}: transition {i}: {name} holds a lone surrogate {text[exc.start]!r} at character "
                                f"{exc.start}, which is not valid Unicode and cannot be stored; nothing of this "
                                "batch was added (replace it where the text is made, e.g. errors='replace')"
                            ) from None
        raise
    except TypeError:  # a value msgpack has no form for (a field holding an object)
        for i, t in enumerate(transitions):
            for name in t.__struct_fields__:
                try:
                    _record_encoder.encode(getattr(t, name))
                except TypeError as exc:
                    raise DataError(f"{where}: transition {i}: {name}: {exc}; nothing of this batch was added") from None
        raise
    if len(blob) > MAX_RECORD_BYTES:  # one record too long for a frame a reader takes (the batch is split)
        for i, t in enumerate(transitions):
            size = len(_record_encoder.encode(t))
            if size > MAX_RECORD_BYTES:
                raise DataError(
                    f"{where}: transition {i} is {size} bytes stored, more than the {MAX_RECORD_BYTES} one record may "
                    "take; nothing of this batch was added"
                )
    try:
        _records_decoder.decode(blob)
    except msgspec.ValidationError as exc:
        what, i, field = m.groups() if (m := _AT_FIELD.fullmatch(str(exc))) else (str(exc), "?", "")
        raise DataError(
            f"{where}: transition {i}: {field + ': ' if field else ''}{what}, so it could not be read back from "
            "the segment files; nothing of this batch was added (build records with validation, e.g. msgspec.convert)"
        ) from None


def _check_queries(queries: Sequence[tuple[str, str]], k: int) -> None:
    """Refuse what retrieve() cannot answer, in one line: a 2-character string would pass as a
    (state, action) pair, and other values failed deep in the encoder or the search."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:  # k=-1 gave [[]], as if empty
        raise DataError(f"retrieve(): k={k!r}; expected an int >= 0")
    for i, query in enumerate(queries):
        if not (isinstance(query, (tuple, list)) and len(query) == 2 and all(isinstance(part, str) for part in query)):
            raise DataError(f"retrieve(): query {i} is {query!r:.80}; expected a (state, action) pair of str")


def _grow(array: np.ndarray, n: int) -> np.ndarray:
    """``array`` with room for at least ``n`` rows (doubling), contents kept."""
    if n <= len(array):
        return array
    bigger = np.zeros((max(n, 2 * len(array), 1024),) + array.shape[1:], dtype=array.dtype)
    bigger[: len(array)] = array
    return bigger


class _EvictionLog:
    """(position when evicted, record id) of each record the capacity policy evicted, in two
    flat int64 arrays: 16 bytes a record (32 at most while the arrays have room to grow).

    What :meth:`ExactBuffer.rollback` warns of: the records older than its target that were
    evicted after it. A list of (position, ids array) per eviction took about 200 bytes per
    evicted record at capacity (one eviction per add of one record). It still grows with each
    eviction, as any target position may be asked for; a record evicted at the position right
    after its own (``position <= rid + 1``) is left out, as no target lies between the two."""

    def __init__(self) -> None:
        self._at = np.zeros(0, dtype=np.int64)
        self._rid = np.zeros(0, dtype=np.int64)
        self._n = 0

    def add(self, at: int, rids: Sequence[int] | np.ndarray) -> None:
        rids = np.asarray(rids, dtype=np.int64)
        rids = rids[rids + 1 < at]
        n = self._n + len(rids)
        self._at, self._rid = _grow(self._at, n), _grow(self._rid, n)
        self._at[self._n : n] = at
        self._rid[self._n : n] = rids
        self._n = n

    def lost(self, to: int) -> int:
        """How many records with an id below ``to`` were evicted at a position after ``to``."""
        n = self._n
        return int(((self._at[:n] > to) & (self._rid[:n] < to)).sum())

    def __len__(self) -> int:
        return self._n

    @property
    def nbytes(self) -> int:
        return self._at.nbytes + self._rid.nbytes


class Space:
    """The embeddings of one encoder id: rows aligned with the buffer's rows."""

    def __init__(self, encoder_id: str, dim: int) -> None:
        self.encoder_id = encoder_id
        self.dim = dim
        self.data = np.zeros((0, dim), dtype=np.float32)
        self.has = np.zeros(0, dtype=bool)
        self.count = 0  # rows given a vector here, evicted ones too until a compaction (see stats())

    def mask(self, n: int) -> np.ndarray:
        """(n,) bool: True where row has a vector in this space."""
        out = np.zeros(n, dtype=bool)
        m = min(n, len(self.has))
        out[:m] = self.has[:m]
        return out

    def put(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        top = int(rows.max()) + 1 if len(rows) else 0
        self.data, self.has = _grow(self.data, top), _grow(self.has, top)
        self.count += int((~self.has[rows]).sum())
        self.data[rows] = vectors
        self.has[rows] = True


class ExactBuffer:
    """Replay buffer with exact cosine top-k over phi(state, action).

    Args:
        config: storage, capacity and backfill settings.
        encoder: the current phi; new records and queries are embedded with it.
        path: directory of segment files (created); None keeps everything in memory.
        previous_encoders: encoders of embeddings already stored, used to embed
            queries in their space while a backfill runs.
    """

    def __init__(
        self,
        config: ExactConfig | None = None,
        *,
        encoder: Any,
        path: str | Path | None = None,
        previous_encoders: Sequence[Any] = (),
    ) -> None:
        self.config = config or ExactConfig()
        self.encoder = encoder
        self.path = Path(path) if path is not None else None
        self._encoders = {e.id: e for e in previous_encoders}
        self._encoders[encoder.id] = encoder
        self._lock = threading.RLock()
        self._records: list[Transition] = []
        self._rids = np.zeros(0, dtype=np.int64)
        self._alive = np.zeros(0, dtype=bool)
        self._row_of: dict[int, int] = {}
        self._keys: dict[bytes, int] = {}
        self._queues: dict[str, deque[int]] = {s: deque() for s in EVICTION_ORDER}
        # each record the capacity policy evicted, with the position then, so a rollback can
        # tell whether it lost older records it cannot bring back
        self._evictions = _EvictionLog()
        self._spaces: dict[str, Space] = {}
        self._pending: list[Frame] = []
        self._pending_records = 0
        self._next_rid = 0
        self._live = 0
        self._version = 0  # bumped by every change queries can see
        self._cached: tuple[int, list[tuple[Space, int, np.ndarray]]] | None = None
        self._sealed_rows = 0
        self.problems: list[str] = []
        self._writer: SegmentWriter | None = None
        self._writer_lock: WriterLock | None = None
        self._closed = False
        self._stop = threading.Event()
        self._backfill_thread: threading.Thread | None = None
        if self.path is not None:
            self._open()
        self._space(encoder.id, encoder.dim)
        self._check_encoder()
        self._on_ready()

    # --- opening -----------------------------------------------------------

    def _open(self) -> None:
        """Load the segment files in two passes, so memory follows the live records, not the history.

        Loading every frame first held each record ever written (a long run at a fixed capacity
        reopened with all it had evicted). The first pass keeps only record ids: what was
        evicted, what the configured encoder embedded, the highest id. The second replays one
        file at a time, only frames the first pass accepted."""
        self.path.mkdir(parents=True, exist_ok=True)
        # the files as found before reading them: a write by anyone else after this is noticed
        # when this buffer first writes (its record ids would collide with that writer's)
        self._writer_lock = WriterLock(self.path, self)
        files = segment_files(self.path)
        for problem in missing_segments(files):  # a lost file can hold the rollback of records the others add
            self._problem(problem)
        index = _SegmentIndex(self.encoder.id)
        for file in files:
            for problem in index.scan(file):
                self._problem(problem)
        evicted, covered = index.evicted(), index.covered()
        for file in files:
            accepted = index.accepted[file.name]
            for offset, frame in iter_segment(file):
                if offset not in accepted:
                    continue
                if isinstance(frame, str):  # its record ids decoded, a transition did not
                    self._problem(f"{file.name}: {frame}")
                    continue
                self._replay(frame, evicted, covered)
                if frame.kind == "evict" and not frame.rollback:
                    self._evictions.add(self._next_rid, frame.rids)
        # Ids of every frame, not only of the adds that survived: an add frame lost to corruption
        # whose ids a later evict frame names left them free, and new records given them were
        # dropped as evicted on the next open.
        self._next_rid = max(self._next_rid, index.next_rid)
        self._sealed_rows = len(self._records)
        self._writer = SegmentWriter(self.path, max_records=self.config.segment_records)

    def _problem(self, problem: str) -> None:
        """A damaged part of a segment found on opening: refused when strict, else a warning
        (none for a torn last frame, what a killed writer leaves)."""
        if "torn frame" not in problem:
            if self.config.strict:
                raise DataError(f"{self.path}/{problem}")
            warnings.warn(f"replay buffer {self.path}/{problem}; the rest is recovered", stacklevel=4)
        self.problems.append(problem)

    def _replay(self, frame: Frame, evicted: np.ndarray, covered: np.ndarray) -> None:
        vectors = self._vectors(frame)
        if frame.kind == "add":
            rids = np.asarray(frame.rids, dtype=np.int64)
            gone = np.isin(rids, evicted)
            keep = [i for i, rid in enumerate(frame.rids) if not gone[i] and rid not in self._row_of]
            rows = self._append([frame.transitions[i] for i in keep], [frame.rids[i] for i in keep])
            self._next_rid = max(self._next_rid, max(frame.rids, default=-1) + 1)
            if vectors is not None:
                self._load_vectors(frame, rows, vectors[keep], covered)
        elif frame.kind == "embed" and vectors is not None:
            pairs = [(self._row_of[rid], i) for i, rid in enumerate(frame.rids) if rid in self._row_of]
            if pairs:
                rows, idx = (np.array(x, dtype=np.int64) for x in zip(*pairs))
                self._load_vectors(frame, rows, vectors[idx], covered)

    def _load_vectors(self, frame: Frame, rows: np.ndarray, vectors: np.ndarray, covered: np.ndarray) -> None:
        """Put a replayed frame's vectors in its encoder's space, except another encoder's
        vectors of rows in ``covered`` (re-embedded by the configured one).

        Queries never search those (see :meth:`_snapshot`), and a finished backfill drops
        them in memory only: loaded again, they doubled the memory of a re-embedded buffer,
        and ``on_encoder_change: error`` refused to open it. They stay in the files, so
        opening with the old encoder again still finds them."""
        if frame.encoder_id != self.encoder.id:
            wanted = ~np.isin(self._rids[rows], covered)
            rows, vectors = rows[wanted], vectors[wanted]
            if not len(rows):
                return
        self._space(frame.encoder_id, frame.dim).put(rows, vectors)

    @staticmethod
    def _vectors(frame: Frame) -> np.ndarray | None:
        """The frame's embeddings as rows (sizes were checked when it was read)."""
        if not frame.encoder_id:
            return None
        vectors = np.frombuffer(frame.vectors, dtype="<f4")
        return vectors.reshape(len(frame.rids), frame.dim).astype(np.float32)

    def _space(self, encoder_id: str, dim: int) -> Space:
        space = self._spaces.get(encoder_id)
        if space is None:
            space = self._spaces[encoder_id] = Space(encoder_id, dim)
        elif space.dim != dim:
            raise DataError(
                f"{self.path or 'buffer'}: encoder {encoder_id!r} gives dim {dim}, stored embeddings have dim {space.dim}"
            )
        return space

    def _check_encoder(self) -> None:
        others = [s for s in self._spaces.values() if s.encoder_id != self.encoder.id and s.count]
        if others and self.config.on_encoder_change == "error":
            raise DataError(
                f"{self.path}: stored embeddings come from encoder {others[0].encoder_id!r}, configured encoder is "
                f"{self.encoder.id!r}; use that encoder or set on_encoder_change: backfill"
            )

    def _on_ready(self) -> None:
        """Called once the buffer is loaded: starts a backfill if one is due."""
        done, total = self.backfill_progress
        if done < total and self.config.backfill_background:
            self.start_backfill()

    # --- adding ------------------------------------------------------------

    def __len__(self) -> int:
        return self._live

    def _append(
        self, transitions: Sequence[Transition], rids: Sequence[int], keys: Sequence[bytes] | None = None
    ) -> np.ndarray:
        start = len(self._records)
        n = start + len(transitions)
        self._rids, self._alive = _grow(self._rids, n), _grow(self._alive, n)
        self._rids[start:n] = rids
        self._alive[start:n] = True
        for row, (t, rid) in enumerate(zip(transitions, rids), start):
            self._records.append(t)
            self._row_of[rid] = row
            self._queues[t.source].append(row)
        if self.config.dedup == "content":
            keys = keys if keys is not None else [content_key(t) for t in transitions]
            self._keys.update(zip(keys, range(start, n)))
        self._live += len(transitions)
        self._version += 1
        return np.arange(start, n, dtype=np.int64)

    def add(self, *, transitions: Sequence[Transition], embeddings: np.ndarray | None = None) -> int:
        """Store transitions not already stored; returns how many were new.

        Args:
            transitions: records to add.
            embeddings: optional precomputed phi rows (float32, one per transition,
                from this buffer's encoder, of ``embedding_text(state, action)``).

        Raises:
            DataError: an item is not a Transition, its ``source`` is unknown, its reward is
                NaN or infinite, some text holds a lone surrogate (not valid Unicode, so it cannot be stored) or a
                field has the wrong type (it would not decode from the segment files);
                nothing of the batch is added and later adds, flushes and the segment
                files are unaffected.
        """
        _check_storable(transitions, f"replay buffer {self.path or '(in memory)'}")
        if embeddings is not None:
            embeddings = self._check_embeddings(embeddings, len(transitions))
        with self._lock:
            self._require_open()
            fresh, keys = self._fresh(transitions)
            if not fresh:
                return 0
            self._claim_writes()
            if embeddings is None:
                texts = [embedding_text(transitions[i].state, transitions[i].action) for i in fresh]
                vectors = np.ascontiguousarray(self.encoder.encode(texts=texts), dtype=np.float32)
            else:
                vectors = embeddings[fresh]
            records = [transitions[i] for i in fresh]
            rids = list(range(self._next_rid, self._next_rid + len(records)))
            self._next_rid += len(records)
            rows = self._append(records, rids, keys)
            self._spaces[self.encoder.id].put(rows, vectors)
            self._log(Frame(kind="add", rids=rids, transitions=records, encoder_id=self.encoder.id,
                            dim=self.encoder.dim, vectors=vectors.astype("<f4").tobytes()))
            self._evict_over_capacity()
            self._compact()
            if self._writer is None and len(self._records) - self._sealed_rows >= self.config.segment_records:
                self.seal()  # in memory, segments are virtual: seal by count alike
            return len(records)

    def _check_embeddings(self, embeddings: Any, n: int) -> np.ndarray:
        array = np.asarray(embeddings)
        if array.ndim != 2 or array.shape != (n, self.encoder.dim):
            raise DataError(
                f"embeddings have shape {array.shape}, expected ({n}, {self.encoder.dim}) for encoder {self.encoder.id!r}"
            )
        if not np.isfinite(array).all():
            raise DataError("embeddings contain NaN or infinite values")
        array = array.astype(np.float32)
        norms = np.linalg.norm(array, axis=1, keepdims=True)
        return np.divide(array, norms, out=np.zeros_like(array), where=norms > 0)

    def _fresh(self, transitions: Sequence[Transition]) -> tuple[list[int], list[bytes] | None]:
        """Indices (and content keys) of transitions neither stored nor repeated earlier in the batch."""
        if self.config.dedup == "none":
            return list(range(len(transitions))), None
        seen: dict[bytes, int] = {}
        for i, t in enumerate(transitions):
            key = content_key(t)
            if key not in self._keys and key not in seen:
                seen[key] = i
        return list(seen.values()), list(seen)

    def _evict_over_capacity(self) -> None:
        excess = self._live - self.config.capacity if self.config.capacity else 0
        order = EVICTION_ORDER[:-1] if self.config.keep_offline else EVICTION_ORDER
        victims: list[int] = []
        for source in order:
            queue = self._queues[source]
            while excess > 0 and queue:
                row = queue.popleft()
                if self._alive[row]:
                    victims.append(row)
                    excess -= 1
        if victims:
            self._evictions.add(self._next_rid, self._retire(victims, rollback=False))

    def _compact(self) -> None:
        """Drop evicted rows from memory once they outnumber the live ones (the lock held).

        Evicted rows are only marked dead, and every add appends: without this a buffer at
        capacity still grew by each record it evicted (its text, embedding and indexes), so
        ``capacity`` bounded the searchable rows but not the memory. Rows keep their order,
        so searches and their ties are unchanged; the segment files are not touched (a
        reopened buffer skips evicted records anyway). Skipped while a backfill has other
        embedding spaces to serve, or when a subclass says its row numbers are in use."""
        n = len(self._records)
        dead = n - self._live
        if dead < max(self._live, _COMPACT_MIN_DEAD) or len(self._spaces) != 1 or not self._compactable():
            return
        keep = np.flatnonzero(self._alive[:n])
        new_of_old = np.full(n, -1, dtype=np.int64)
        new_of_old[keep] = np.arange(len(keep))
        # New objects throughout: a query that took its snapshot before still reads the old ones.
        self._records = [self._records[r] for r in keep.tolist()]
        self._rids = self._rids[keep]
        self._alive = np.ones(len(keep), dtype=bool)
        self._row_of = {rid: row for row, rid in enumerate(self._rids.tolist())}
        self._keys = {key: int(new_of_old[row]) for key, row in self._keys.items() if new_of_old[row] >= 0}
        self._queues = {
            source: deque(int(new_of_old[row]) for row in queue if new_of_old[row] >= 0) for source, queue in self._queues.items()
        }
        spaces = {}
        for encoder_id, old in self._spaces.items():
            space = spaces[encoder_id] = Space(encoder_id, old.dim)
            stored = keep[keep < len(old.data)]  # rows past the end have no vector
            space.data = np.zeros((len(keep), old.dim), dtype=np.float32)
            space.data[: len(stored)] = old.data[stored]
            space.has = old.mask(n)[keep]
            space.count = int(space.has.sum())
        self._spaces = spaces
        self._sealed_rows = int((new_of_old[: self._sealed_rows] >= 0).sum())
        self._version += 1
        self._on_compacted(new_of_old)

    def _compactable(self) -> bool:
        """Hook: whether rows may be renumbered now (no background work holds row numbers)."""
        return True

    def _on_compacted(self, new_of_old: np.ndarray) -> None:
        """Hook: rows were renumbered; ``new_of_old[row]`` is a row's new number, -1 if dropped."""

    def _retire(self, rows: list[int], *, rollback: bool) -> list[int]:
        """Mark ``rows`` dead, forget their dedup keys and log the eviction; their record ids."""
        self._alive[rows] = False
        self._live -= len(rows)
        self._version += 1
        for row in rows:
            self._keys.pop(content_key(self._records[row]), None)
        rids = self._rids[rows].tolist()
        self._log(Frame(kind="evict", rids=rids, rollback=rollback))
        return rids

    # --- rolling back --------------------------------------------------------

    @property
    def position(self) -> int:
        """Where the buffer stands now: ``rollback(to=position)`` later forgets everything added since."""
        return self._next_rid

    def rollback(self, *, to: int) -> int:
        """Forget every record added at or after position ``to``; returns how many.

        A run resumed from a checkpoint calls this with the position the checkpoint
        recorded, so transitions of an iteration that never reached its checkpoint are
        not retrieved when that iteration is played again. Persisted as an eviction
        frame, so a reopened buffer stays rolled back. Older records that the capacity
        policy evicted since ``to`` are not brought back; a warning says how many.

        Raises:
            DataError: ``to`` is negative (no position is; it would forget everything).
        """
        if to < 0:
            raise DataError(f"replay buffer {self.path or '(in memory)'}: rollback position must be >= 0, got {to}")
        with self._lock:
            self._require_open()
            n = len(self._records)
            rows = np.flatnonzero(self._alive[:n] & (self._rids[:n] >= to))
            lost = self._evictions.lost(to)
            if lost:
                warnings.warn(
                    f"replay buffer {self.path or '(in memory)'}: rollback to {to} cannot restore {lost} older "
                    "records the capacity policy evicted since then",
                    stacklevel=2,
                )
            if not len(rows):
                return 0
            self._claim_writes()
            self._retire(rows.tolist(), rollback=True)
            self.flush()  # durable at once: a crash right after must not undo it
            return len(rows)

    def _claim_writes(self) -> None:
        """Take the directory's write claim before a change that will be written (see
        :mod:`.writer_lock`); refused with a DataError, before anything changes, while
        another buffer writes it. In memory there is nothing to claim."""
        if self._writer_lock is not None:
            self._writer_lock.claim()

    def _log(self, frame: Frame) -> None:
        if self._writer is None:
            return
        self._claim_writes()  # a no-op: every change that logs claimed before it changed anything
        self._pending.append(frame)
        self._pending_records += len(frame.rids)
        if self._pending_records >= self.config.flush_every:
            self._write_pending()

    def _write_pending(self) -> None:
        sealed, written = False, 0
        try:
            for frame in self._pending:
                sealed = self._writer.write(frame) or sealed  # type: ignore[union-attr]
                written += 1
        finally:
            # Frames leave the queue as they reach the file: after a failed write (a full
            # disk) the next flush retries from the failed frame, not from the first one.
            del self._pending[:written]
            self._pending_records = sum(len(f.rids) for f in self._pending)
        if sealed:
            self._sealed_rows = len(self._records)
            self._on_sealed()

    def seal(self) -> None:
        """Write pending records and seal the current segment now (backends index sealed rows)."""
        with self._lock:
            if self._writer is not None:
                self._write_pending()
                self._writer.seal()
            self._sealed_rows = len(self._records)
        self._on_sealed()

    def _on_sealed(self) -> None:
        """Hook: a segment was sealed; rows below ``_sealed_rows`` will not change file."""

    def flush(self) -> None:
        """Write every pending record; with ``fsync`` they survive power loss too."""
        with self._lock:
            if self._writer is None:
                return
            self._write_pending()
            if self.config.fsync:
                self._writer.sync()

    def close(self) -> None:
        """Stop any backfill, flush and seal. Idempotent."""
        if self._closed:
            return
        self._stop.set()
        if self._backfill_thread is not None:
            self._backfill_thread.join()
        with self._lock:
            if self._writer is not None:
                self._write_pending()  # a failure (a full disk) keeps the claim: close() may be retried
                self._writer.seal()
            if self._writer_lock is not None:
                self._writer_lock.release()
            self._closed = True

    def __enter__(self) -> ExactBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _require_open(self) -> None:
        if self._closed:
            raise DataError(f"replay buffer {self.path or '(in memory)'} is closed")

    # --- querying ----------------------------------------------------------

    def retrieve(self, *, queries: Sequence[tuple[str, str]], k: int) -> list[list[Transition]]:
        """Top-k stored transitions per (state, action) query; [] per query when empty.

        Raises:
            DataError: a query is not a (state, action) pair of str, ``k`` is not an int >= 0,
                or the buffer is closed.
        """
        _check_queries(queries, k)
        self._require_open()  # as a closed file refuses reads: a caller still using it has a bug
        if not queries:
            return []
        if k <= 0 or self._live == 0:
            return [[] for _ in queries]
        texts = [embedding_text(state, action) for state, action in queries]
        now = _encode(self.encoder, texts)
        per_space = []
        with self._lock:  # rows of one state of the buffer (a compaction renumbers them)
            snapshot, records = self._snapshot(), self._records
        for space, n, mask in snapshot:
            encoder = self._encoders.get(space.encoder_id)
            if encoder is None or not mask.any():
                continue
            if space.encoder_id == self.encoder.id:
                per_space.append(self._search(space, now, k, n, mask))
            else:
                per_space.append(self._rescored(self._search(space, _encode(encoder, texts), k, n, mask), now, records))
        results = []
        for i in range(len(queries)):
            rows = merge_ranked([hits[i] for hits in per_space], k)
            results.append([records[r] for r in rows])
        return results

    def _rescored(
        self, hits: list[tuple[np.ndarray, np.ndarray]], now: np.ndarray, records: list[Transition]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """An old space's (rows, scores) per query, scored again with the current encoder.

        ``records`` is the list the rows number, taken with the snapshot: a compaction since
        then renumbered ``self._records``.

        Old and new cosines are not comparable (the hashing encoder at 64 dims scores
        every pair higher than at 256 with bigrams), so merging them raw lets the
        old space crowd out the new one until the backfill ends. Costs k encodes per
        query, and only while a backfill runs (otherwise there is one space)."""
        rows = [row for ids, _ in hits for row in ids.tolist()]
        if not rows:
            return hits
        vectors = _encode(self.encoder, [embedding_text(records[r].state, records[r].action) for r in rows])
        out, start = [], 0
        for i, (ids, _) in enumerate(hits):
            out.append((ids, vectors[start : start + len(ids)] @ now[i]))
            start += len(ids)
        return out

    def _snapshot(self) -> list[tuple[Space, int, np.ndarray]]:
        """Per space: rows visible now and the mask of rows to search there.

        The current encoder's space serves rows it has embedded; every other space
        serves only rows not yet re-embedded (distance rank merge over a backfill).
        Cached until the buffer changes, so queries on a static buffer copy nothing.
        """
        with self._lock:
            if self._cached is not None and self._cached[0] == self._version:
                return self._cached[1]
            n = len(self._records)
            alive = self._alive[:n].copy()
            current = self._spaces[self.encoder.id]
            has_new = current.mask(n)
            out = [(current, n, alive & has_new)]
            for space in self._spaces.values():
                if space is not current:
                    out.append((space, n, alive & space.mask(n) & ~has_new))
            self._cached = (self._version, out)
        return out

    def _search(self, space: Space, q: np.ndarray, k: int, n: int, mask: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """(rows, scores) per query over ``space`` rows allowed by ``mask``: exact."""
        data = space.data[:n]
        # An old encoder's space stops growing once new rows go to the current one: rows past its
        # end have no vector there (their mask is False), and a longer mask failed the search.
        mask = mask[: len(data)]
        idx, scores = topk_cosine(q, data, k, None if mask.all() else mask)
        return list(zip(idx, scores))

    def sample(self, *, n: int, seed: int | None = None) -> list[Transition]:
        """Up to ``n`` distinct live transitions, uniformly at random (``n`` >= 0, else DataError)."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise DataError(f"sample(): n={n!r}; expected an int >= 0")
        with self._lock:  # rows of one state of the buffer (a compaction renumbers them)
            self._require_open()
            rows, records = np.flatnonzero(self._alive[: len(self._records)]), self._records
        rng = np.random.default_rng(seed)
        picked = rng.choice(rows, size=min(n, len(rows)), replace=False) if len(rows) else rows
        return [records[r] for r in picked.tolist()]

    def __iter__(self):
        """Live transitions in insertion order (those live when iteration starts)."""
        with self._lock:  # as in sample(): a compaction while the caller iterates makes a new list
            records = self._records
            rows = np.flatnonzero(self._alive[: len(records)]).tolist()
        for row in rows:
            yield records[row]

    # --- backfill ----------------------------------------------------------

    @property
    def backfill_progress(self) -> tuple[int, int]:
        """(live rows embedded by the current encoder, live rows in total)."""
        with self._lock:
            n = len(self._records)
            has = self._spaces[self.encoder.id].mask(n)
            return int((has & self._alive[:n]).sum()), self._live

    @property
    def unsearchable(self) -> int:
        """Live rows that no encoder of this buffer has embedded: retrieve() cannot return them
        (stored by another encoder, not given as ``previous_encoder``, and not re-embedded yet)."""
        with self._lock:
            n = len(self._records)
            searchable = np.zeros(n, dtype=bool)
            for space in self._spaces.values():
                if space.encoder_id in self._encoders:
                    searchable |= space.mask(n)
            return int((self._alive[:n] & ~searchable).sum())

    def start_backfill(self) -> None:
        """Re-embed rows that lack a current-encoder embedding, in a background thread."""
        with self._lock:
            if self._backfill_thread is None or not self._backfill_thread.is_alive():
                thread = threading.Thread(target=self._backfill_loop, name="buffer-backfill", daemon=True)
                thread.start()
                self._backfill_thread = thread

    def wait_backfill(self, timeout: float | None = None) -> bool:
        """Block until the background backfill ends; True when it has."""
        if self._backfill_thread is not None:
            self._backfill_thread.join(timeout)
            return not self._backfill_thread.is_alive()
        return True

    def _backfill_loop(self) -> None:
        try:
            while not self._stop.is_set() and self.backfill_step():
                pass
        except Exception as exc:  # surfaced in stats(); the buffer keeps serving queries
            self.problems.append(f"backfill stopped: {type(exc).__name__}: {exc}")
            raise

    def backfill_step(self) -> int:
        """Re-embed one batch of rows with the current encoder; returns how many (0 when done)."""
        with self._lock:
            n = len(self._records)
            current = self._spaces[self.encoder.id]
            rows = np.flatnonzero(self._alive[:n] & ~current.mask(n))[: self.config.backfill_batch]
            records = [self._records[r] for r in rows.tolist()]
        if not len(rows):
            self._finish_backfill()
            return 0
        vectors = np.ascontiguousarray(
            self.encoder.encode(texts=[embedding_text(t.state, t.action) for t in records]), dtype=np.float32
        )
        with self._lock:
            self._claim_writes()
            current.put(rows, vectors)
            self._version += 1
            self._log(Frame(kind="embed", rids=self._rids[rows].tolist(), encoder_id=self.encoder.id,
                            dim=self.encoder.dim, vectors=vectors.astype("<f4").tobytes()))
        return len(rows)

    def _finish_backfill(self) -> None:
        """Every live row has a current embedding: drop the old spaces, persist."""
        with self._lock:
            for encoder_id in [e for e in self._spaces if e != self.encoder.id]:
                del self._spaces[encoder_id]
            self._version += 1
            if self._writer is not None and self._pending:
                self._write_pending()
        self._on_backfilled()

    def _on_backfilled(self) -> None:
        """Hook: the backfill finished (the current space covers every live row)."""

    # --- inspection and exchange ------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counts by source, encoders and their coverage, segments, problems, backfill."""
        with self._lock:
            alive = np.flatnonzero(self._alive[: len(self._records)]).tolist()
            by_source: dict[str, int] = {}
            for row in alive:
                source = self._records[row].source
                by_source[source] = by_source.get(source, 0) + 1
            done, total = self.backfill_progress
            return {
                "path": str(self.path) if self.path else None,
                "records": self._live,
                "by_source": by_source,
                "capacity": self.config.capacity,
                "encoder": self.encoder.id,
                "dim": self.encoder.dim,
                "spaces": self._space_counts(),
                "backfill": {"done": done, "total": total},
                "segments": len(segment_files(self.path)) if self.path else 0,
                "problems": list(self.problems),
            }

    def _space_counts(self) -> dict[str, int]:
        """Live rows per encoder space, as a reopened buffer loads them: the rows each space
        serves to queries (:meth:`_snapshot`). Not ``Space.count``: that counts evicted and
        rolled-back rows too until a compaction drops them, and an old encoder's vectors of rows
        the current one re-embedded, which an open does not load (nor an old space left with none)."""
        current = self._spaces[self.encoder.id]
        return {space.encoder_id: int(mask.sum()) for space, _, mask in self._snapshot() if space is current or mask.any()}

    def import_jsonl(self, path: str | Path, batch: int = 4096) -> tuple[int, int]:
        """Add Transition records from a JSONL file, ``batch`` per add; returns (read, added).

        Raises:
            DataError: the file cannot be read, or a line is not a Transition record or is
                marked ``model_failed``. The whole file is read first, so then nothing of it is added.
        """
        records = _read_jsonl(path)
        added = sum(self.add(transitions=records[i : i + batch]) for i in range(0, len(records), batch))
        self.flush()
        return len(records), added

    def export_jsonl(self, path: str | Path) -> int:
        """Write every live transition as JSONL, in insertion order; returns the count.

        A regular file is replaced atomically: a failure part way (a full disk) leaves the
        file that was there whole; a symbolic link is followed to the file it names. A device
        (``/dev/stdout``, even when it leads to a file) or a pipe is written directly.

        Raises:
            DataError: ``path`` cannot be written (say, its directory does not exist).
        """
        encoder = msgspec.json.Encoder()
        target = Path(path)
        direct = is_stream_path(target) or (target.exists() and not target.is_file())
        if not direct:  # renaming onto a link replaced the link and left its file as it was
            target = output_file(target)
        tmp = target if direct else target.with_name(target.name + ".tmp")
        count = 0
        try:
            with (open(tmp, "wb") if direct else open_new(tmp)) as fh:  # the temporary file never through a link
                for t in self:
                    fh.write(encoder.encode(t) + b"\n")
                    count += 1
                if not direct:
                    fh.flush()
                    os.fsync(fh.fileno())
            if not direct:
                os.replace(tmp, target)
                sync_directory(target.parent)  # the rename survives a power cut too
        except BaseException as exc:
            if not direct:
                tmp.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise DataError(f"{path}: cannot write: {exc.strerror or exc}") from exc
            raise
        return count


class _SegmentIndex:
    """The first pass of an open: per file the offsets of frames to replay, and record ids only.

    A frame too large for one (see :func:`.segments.encode_pieces`) was written as pieces,
    one after another in one file. They are replayed only once the last one is read: a kill
    between two pieces (or a torn last piece) leaves the first ones at the end of the file,
    and those are dropped whole, quietly, as a torn frame is (what a killed writer leaves).
    So an add of any size is still all or nothing across a crash, which a resumed run relies
    on: the loop's seed stage stores its transitions with one add and marks the stage done
    at the position the whole add reaches (``Runner._seed_buffer``); a part stored would
    end the reopened buffer before that position, so the stage runs again, and without
    deduplication its first records would be stored twice. The ids of dropped pieces still
    count for ``next_rid`` (ids that reached a file are never given again), which only moves
    the position past them: a checkpoint is taken after a flush (``Runner._checkpoint``), so
    every add before its position is whole on disk and a resume finds it; what lies after is
    rolled back anyway. Pieces broken off in the middle of a file (a damaged piece, itself
    reported) are reported and dropped too."""

    def __init__(self, encoder_id: str) -> None:
        self.encoder_id = encoder_id
        self.accepted: dict[str, set[int]] = {}
        self.next_rid = 0
        self._dims: dict[str, int] = {}  # the first frame of an encoder sets its dimension
        self._evicted: list[np.ndarray] = []
        self._covered: list[np.ndarray] = []

    def scan(self, file: Path) -> list[str]:
        """Index ``file``'s intact frames; the problems found (file: offset: what)."""
        problems: list[str] = []
        accepted = self.accepted[file.name] = set()
        group: list[tuple[int, FrameIds]] = []  # pieces of a split frame read so far: (offset, piece)
        for offset, frame in iter_segment(file, ids_only=True):
            if isinstance(frame, str):
                problems.append(f"{file.name}: {frame}")
                continue
            dim = self._dims.setdefault(frame.encoder_id, frame.dim) if frame.encoder_id else frame.dim
            if dim != frame.dim:
                problems.append(
                    f"{file.name}: offset {offset}: inconsistent frame (dim {frame.dim}, earlier frames of "
                    f"encoder {frame.encoder_id!r} have dim {dim}), skipped"
                )
                continue
            rids = np.asarray(frame.rids, dtype=np.int64)
            self.next_rid = max(self.next_rid, int(rids.max()) + 1 if len(rids) else 0)
            if group and not _continues(group[-1][1], frame):
                problems.append(_broken(file.name, group, torn=False))
                group = []
            if not frame.parts:
                self._accept(accepted, offset, frame, rids)
            elif group or frame.part == 0:
                group.append((offset, frame))
                if frame.part == frame.parts - 1:
                    for at, piece in group:
                        self._accept(accepted, at, piece, np.asarray(piece.rids, dtype=np.int64))
                    group = []
            else:
                problems.append(
                    f"{file.name}: offset {offset}: piece {frame.part + 1} of {frame.parts} of a split {frame.kind} "
                    "frame whose earlier pieces are missing, skipped"
                )
        if group:  # the file ends inside a split frame: its writer stopped (killed) part way
            problems.append(_broken(file.name, group, torn=True))
        return problems

    def _accept(self, accepted: set[int], offset: int, frame: FrameIds, rids: np.ndarray) -> None:
        accepted.add(offset)
        if frame.kind == "evict":
            self._evicted.append(rids)
        if frame.encoder_id == self.encoder_id:
            self._covered.append(rids)

    def evicted(self) -> np.ndarray:
        """Sorted ids of records some frame evicted."""
        return np.unique(np.concatenate(self._evicted)) if self._evicted else np.zeros(0, dtype=np.int64)

    def covered(self) -> np.ndarray:
        """Sorted ids of records the configured encoder embedded."""
        return np.unique(np.concatenate(self._covered)) if self._covered else np.zeros(0, dtype=np.int64)


def _continues(before: FrameIds, piece: FrameIds) -> bool:
    """Whether ``piece`` is the piece of a split frame that follows ``before``."""
    return (
        piece.parts == before.parts and piece.part == before.part + 1 and piece.kind == before.kind
        and piece.encoder_id == before.encoder_id and piece.rollback == before.rollback
        and (piece.kind != "add" or piece.rids[0] == before.rids[-1] + 1)  # an add's ids run on
    )


def _broken(name: str, group: list[tuple[int, FrameIds]], *, torn: bool) -> str:
    """The problem of pieces of a split frame whose other pieces are not there (dropped)."""
    offset, first = group[0]
    records = sum(len(piece.rids) for _, piece in group)
    what = f"{len(group)} of the {first.parts} pieces of a split {first.kind} frame ({records} records)"
    if torn:  # "torn frame": what a killed writer leaves, not reported as damage (see ExactBuffer._problem)
        return f"{name}: offset {offset}: torn frame at end of file: {what}, an unfinished write, dropped"
    return f"{name}: offset {offset}: {what}, the others missing or damaged, dropped"


def _read_jsonl(path: str | Path) -> list[Transition]:
    """Every Transition record of a JSONL file (blank lines skipped).

    Decoded in full before any is added: adding batch by batch as lines came in stored
    the batches before a bad line (4096 of a 5001-line file whose last line was bad),
    and a retry of the fixed file with ``dedup: none`` stored those twice. Decoding also
    rejects text a segment cannot hold (lone surrogates, invalid UTF-8).
    """
    decoder = msgspec.json.Decoder(Transition)
    records: list[Transition] = []
    try:
        with open(path, "rb") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    record = decoder.decode(line)
                except msgspec.DecodeError as exc:
                    raise DataError(f"{path}:{lineno}: not a Transition record: {exc}") from exc
                if record.model_failed:  # a note on an unparsable answer: retrieved, it would be served as a demo
                    raise DataError(f"{path}:{lineno}: a model_failed record (an experience model's failed answer) is not stored")
                records.append(record)
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    return records


def _encode(encoder: Any, texts: list[str]) -> np.ndarray:
    return np.ascontiguousarray(encoder.encode(texts=texts), dtype=np.float32)
