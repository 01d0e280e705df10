"""Append-only segment files of checksummed msgpack frames.

A segment is a file ``seg-<n>.dgs``: a sequence of frames, each
``MAGIC (4 bytes) | payload length (u32 LE) | crc32 of payload (u32 LE) | payload``
where the payload is a msgpack-encoded :class:`Frame`. A kill -9 leaves at most one
torn frame at the end of the file being written; readers drop it. A write that fails
(a full disk) is cut back off the file, so later frames follow an intact one, and
raises a DataError naming the file and the cause.
A frame over :data:`PIECE_BYTES` or :data:`PIECE_RECORDS` (a huge add, eviction or
backfill step) is written as several frames, its *pieces*, numbered ``part`` of
``parts``: one frame of 2 GiB or more could never be written (Linux writes at most
2,147,479,552 bytes per ``write`` call) nor read (see ``_MAX_PAYLOAD``). The pieces are
written in one go by :meth:`SegmentWriter.write` and cut back together, and a reader
keeps them only when every piece is there (see ``_SegmentIndex`` in :mod:`.buffer`),
so a split frame is all or nothing, as a single frame is. Files written before pieces
existed hold none and read as they always did. A frame that runs
past the end of its file while an intact frame follows it is not torn but
corrupt (its length field).
A corrupt frame is reported with its file name and offset, and reading resumes at
the next magic marker (or, for a corrupt length, at the next intact frame). So is
a frame that passes its checksum but cannot be what a writer wrote (say, fewer
transitions than record ids); it is skipped.
Files are never rewritten nor deleted: a reopened buffer starts a new segment, numbered
after the last, so a gap in the numbers is a lost file (see :func:`missing_segments`).
A new file's directory entry is synced with its first sync (a power cut could drop the
last file, which no gap shows).
"""

from __future__ import annotations

import errno
import os
import re
import struct
import zlib
from pathlib import Path
from typing import Any, Iterator, Literal

import msgspec

from dreamgym_core.checkpoint import sync_directory
from dreamgym_core.errors import DataError
from dreamgym_core.records import Transition

__all__ = [
    "Frame", "FrameIds", "encode_frame", "encode_pieces", "frame_inconsistency", "iter_segment", "missing_segments",
    "read_segment", "SegmentWriter", "segment_files", "MAGIC", "MAX_RECORD_BYTES", "PIECE_BYTES", "PIECE_RECORDS",
]

MAGIC = b"DGF1"
_HEADER = struct.Struct("<4sII")
_MAX_PAYLOAD = 1 << 31  # what a reader takes: a longer length field is a damaged one
# A frame larger than either bound is written as pieces of at most this much (a piece of one
# record may be larger, up to MAX_RECORD_BYTES plus its embedding).
PIECE_BYTES = 256 << 20
PIECE_RECORDS = 1 << 20
# The most msgpack bytes of one transition a buffer stores (add() refuses more): its piece
# must stay under _MAX_PAYLOAD.
MAX_RECORD_BYTES = 1 << 30
# Bytes given to one os.write call: Linux writes at most 0x7ffff000 bytes per call, so a
# larger blob always came back short.
_WRITE_CHUNK = 1 << 30


class Frame(msgspec.Struct, frozen=True, kw_only=True):
    """One storage operation.

    ``add``: new records with ids ``rids`` and their embeddings (float32 rows, little
    endian) under ``encoder_id``. ``embed``: new embeddings of stored records
    (backfill). ``evict``: records removed by the capacity policy, or by a rollback
    (``rollback`` true).
    """

    kind: Literal["add", "embed", "evict"]
    rids: list[int]
    transitions: list[Transition] = []
    encoder_id: str = ""
    dim: int = 0
    vectors: bytes = b""
    rollback: bool = False


class _Piece(Frame, frozen=True, kw_only=True):
    """A piece of a split :class:`Frame`: piece ``part`` (from 0) of ``parts`` (>= 2). Read back
    as a Frame its numbering is ignored; :class:`FrameIds` reads it."""

    part: int
    parts: int


class FrameIds(msgspec.Struct, frozen=True, kw_only=True):
    """A :class:`Frame` decoded without its transitions (kept as raw msgpack): what the first
    pass of an open needs, and enough for :func:`frame_inconsistency`."""

    kind: Literal["add", "embed", "evict"]
    rids: list[int]
    transitions: list[msgspec.Raw] = []
    encoder_id: str = ""
    dim: int = 0
    vectors: bytes = b""
    rollback: bool = False
    part: int = 0
    parts: int = 0  # 0: a whole frame, else a piece of a split one (see _Piece)


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Frame)
_ids_decoder = msgspec.msgpack.Decoder(FrameIds)


def encode_frame(frame: Frame) -> bytes:
    """Header plus payload of one frame, ready for a single write."""
    payload = _encoder.encode(frame)
    return _HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload


def encode_pieces(frame: Frame) -> Iterator[bytes]:
    """The bytes of ``frame``: one frame, as :func:`encode_frame` makes it, when it is within
    :data:`PIECE_BYTES` and :data:`PIECE_RECORDS`, else its pieces (:class:`_Piece`), each
    encoded once the one before was taken (the whole frame, encoded to measure it, is dropped
    first), so a split frame is not held encoded in memory on top of its pieces.

    Raises:
        OSError: EFBIG, one record alone makes a frame too long to read back (``add`` refuses
            such a record before anything changes, so only a direct caller of the writer meets this).
    """
    if len(frame.rids) <= PIECE_RECORDS:
        blob = encode_frame(frame)
        if len(blob) - _HEADER.size <= PIECE_BYTES or len(frame.rids) <= 1:
            _check_length(blob)
            yield blob
            return
        del blob
    bounds = _piece_bounds(frame)
    width = 4 * frame.dim if frame.vectors else 0
    for part, (i, j) in enumerate(bounds):
        piece = _Piece(
            kind=frame.kind, rids=frame.rids[i:j], transitions=frame.transitions[i:j] if frame.transitions else [],
            encoder_id=frame.encoder_id, dim=frame.dim, vectors=frame.vectors[width * i : width * j],
            rollback=frame.rollback, part=part, parts=len(bounds),
        )
        blob = encode_frame(piece)
        _check_length(blob)
        yield blob


def _check_length(blob: bytes) -> None:
    if len(blob) - _HEADER.size > _MAX_PAYLOAD:
        raise OSError(errno.EFBIG, f"a frame of {len(blob)} bytes, longer than a reader takes ({_MAX_PAYLOAD})")


def _piece_bounds(frame: Frame) -> list[tuple[int, int]]:
    """[start, end) of each piece's records: at most PIECE_RECORDS records and, but for a
    piece of one record, PIECE_BYTES bytes (a record id is at most 9 msgpack bytes)."""
    fixed = 1024 + len(frame.encoder_id.encode(errors="replace"))
    per = 9 + (4 * frame.dim if frame.vectors else 0)
    sizes = [len(_encoder.encode(t)) for t in frame.transitions] if frame.transitions else None
    bounds, start, size = [], 0, fixed
    for i in range(len(frame.rids)):
        cost = per + (sizes[i] if sizes is not None else 0)
        if i > start and (i - start >= PIECE_RECORDS or size + cost > PIECE_BYTES):
            bounds.append((start, i))
            start, size = i, fixed
        size += cost
    bounds.append((start, len(frame.rids)))
    return bounds


def read_segment(path: Path) -> tuple[list[tuple[int, Frame]], list[str]]:
    """Every intact frame of ``path`` with its offset, and the problems found (file: offset: what).

    Raises:
        DataError: the file cannot be read (permissions, not a file).
    """
    frames: list[tuple[int, Frame]] = []
    problems: list[str] = []
    for offset, result in iter_segment(path):
        if isinstance(result, str):
            problems.append(f"{path.name}: {result}")
        else:
            frames.append((offset, result))
    return frames, problems


def iter_segment(path: Path, *, ids_only: bool = False) -> Iterator[tuple[int, Frame | FrameIds | str]]:
    """(offset, frame) per intact frame of ``path``, (offset, what is wrong) per problem, in file order.

    A caller that uses each frame and drops it holds the file's bytes and one decoded frame,
    not every frame of the file. ``ids_only`` decodes :class:`FrameIds` instead, which skips
    building the transitions.

    Raises:
        DataError: the file cannot be read (permissions, not a file).
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read replay buffer segment: {exc.strerror or exc}") from exc
    yield from _scan(data, _ids_decoder if ids_only else _decoder)


def frame_inconsistency(frame: Frame | FrameIds) -> str | None:
    """What is wrong with a frame that decodes but cannot be what a writer wrote, or None."""
    parts = getattr(frame, "parts", 0)  # a Frame ignores a piece's numbering
    if parts and not (parts >= 2 and 0 <= frame.part < parts and frame.rids):
        return f"piece {frame.part} of {parts} of a split frame"
    if frame.kind == "add" and len(frame.transitions) != len(frame.rids):
        return f"{len(frame.transitions)} transitions for {len(frame.rids)} record ids"
    if any(rid < 0 or rid >= 1 << 63 for rid in frame.rids) or len(set(frame.rids)) != len(frame.rids):
        return "record ids out of range or repeated"
    if frame.encoder_id and (frame.dim <= 0 or len(frame.vectors) != 4 * frame.dim * len(frame.rids)):
        return f"{len(frame.vectors)} bytes of vectors do not fit {len(frame.rids)} x dim {frame.dim}"
    return None


def _scan(data: bytes, decoder: msgspec.msgpack.Decoder) -> Iterator[tuple[int, Any]]:
    pos = 0
    while pos < len(data):
        if len(data) - pos < _HEADER.size:
            yield pos, f"offset {pos}: torn frame header at end of file (an unfinished write), its {len(data) - pos} bytes dropped"
            return
        magic, length, crc = _HEADER.unpack_from(data, pos)
        start, end = pos + _HEADER.size, pos + _HEADER.size + length
        if magic != MAGIC or length > _MAX_PAYLOAD:
            yield pos, f"offset {pos}: bad frame marker, skipping to the next frame"
            pos = _resync(data, pos + 1)
            continue
        if end > len(data):
            following = _next_intact(data, pos + 1)
            if following < 0:
                yield pos, f"offset {pos}: torn frame at end of file (an unfinished write, or a damaged length field), its {len(data) - pos} bytes dropped"
                return
            # A torn write is always the last thing in a file: intact frames after it
            # mean the length field itself is corrupt.
            yield pos, (
                f"offset {pos}: frame length {length} runs past the end of the file but an intact frame "
                f"follows at offset {following} (corrupt length field), skipping to it"
            )
            pos = following
            continue
        payload = data[start:end]
        if zlib.crc32(payload) != crc:
            yield pos, f"offset {pos}: checksum mismatch, frame skipped"
            pos = _resync(data, pos + 1)
            continue
        try:
            frame = decoder.decode(payload)
        except msgspec.DecodeError as exc:
            yield pos, f"offset {pos}: undecodable frame ({exc}), skipped"
        else:
            wrong = frame_inconsistency(frame)
            yield pos, f"offset {pos}: inconsistent frame ({wrong}), skipped" if wrong else frame
        pos = end


def _intact_at(data: bytes, pos: int) -> bool:
    """Whether a whole frame with a matching checksum starts at ``pos``."""
    if len(data) - pos < _HEADER.size:
        return False
    magic, length, crc = _HEADER.unpack_from(data, pos)
    start = pos + _HEADER.size
    return magic == MAGIC and start + length <= len(data) and zlib.crc32(data[start : start + length]) == crc


def _next_intact(data: bytes, pos: int) -> int:
    """Offset of the first intact frame at or after ``pos``, or -1."""
    found = data.find(MAGIC, pos)
    while found >= 0 and not _intact_at(data, found):
        found = data.find(MAGIC, found + 1)
    return found


def _resync(data: bytes, pos: int) -> int:
    found = data.find(MAGIC, pos)
    return len(data) if found < 0 else found


_SEGMENT_NAME = re.compile(r"seg-(\d+)\.dgs")


def segment_files(directory: Path) -> list[Path]:
    """Segment files of a buffer directory in write order (by number: seg-1000000 follows
    seg-999999). Other files, say a stray ``seg-copy.dgs``, are not segments and are left out."""
    numbered = [(m, p) for p in directory.glob("seg-*.dgs") if (m := _SEGMENT_NAME.fullmatch(p.name))]
    return [p for m, p in sorted(numbered, key=lambda mp: int(mp[0].group(1)))]


def _number(path: Path) -> int:
    return int(_SEGMENT_NAME.fullmatch(path.name).group(1))


def missing_segments(files: list[Path]) -> list[str]:
    """One problem ("names: what") per run of numbers missing between ``files``, which
    :func:`segment_files` listed.

    The writer numbers files one after another and nothing deletes one, so a gap is a
    file lost, with the records, evictions and rollbacks it held: rolled-back records
    came back. Numbers before the first file are not checked (a file renamed to a
    higher number reads as before)."""
    problems = []
    for before, after in zip(files, files[1:]):
        first, last = _number(before) + 1, _number(after) - 1
        if first <= last:
            names = f"seg-{first:06d}.dgs" + (f" to seg-{last:06d}.dgs" if last > first else "")
            problems.append(
                f"{names}: missing between {before.name} and {after.name} (segment files are never deleted); "
                "the records, evictions and rollbacks written there are lost"
            )
    return problems


class SegmentWriter:
    """Appends frames to numbered segment files, rolling to a new file when one is full.

    A file that cannot be created, written or synced (a full disk) raises a
    :class:`~dreamgym_core.errors.DataError` naming the segment file and the cause, which the
    CLI prints as one line; the OSError is its ``__cause__``."""

    def __init__(self, directory: Path, *, max_records: int) -> None:
        self.directory = directory
        self.max_records = max_records
        existing = segment_files(directory)
        self._next = int(existing[-1].stem.split("-")[1]) + 1 if existing else 1
        self._fd: int | None = None
        self._path: Path | None = None  # the open segment
        self._entry_synced = False  # whether the open segment's directory entry was synced
        self.records_in_segment = 0

    def write(self, frame: Frame) -> bool:
        """Append ``frame``; returns True when this write sealed (filled) the segment.

        A large frame is written as its pieces (:func:`encode_pieces`), all in this call and
        into this file: a failure cuts every piece written back off, so the frame, whole,
        may be written again, and a kill between two pieces leaves an unfinished split frame
        at the end of the file, which readers drop whole, as they drop a torn frame.

        Raises:
            DataError: the segment could not be created or written; what a failed write left
                was cut back off the file (see :meth:`_cut_back`), so the frame may be written again.
        """
        if self._fd is None:
            path = self.directory / f"seg-{self._next:06d}.dgs"
            try:
                self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
            except OSError as exc:
                if isinstance(exc, FileExistsError):  # another writer's file: the next write tries the next number
                    self._next += 1
                raise _failed(path, "cannot create replay buffer segment", exc) from exc
            # Only once the file exists: a failed open (too many open files) whose retry took
            # the next number left a gap, which an open reports as a lost file.
            self._next += 1
            self._path = path
            self._entry_synced = False
            self.records_in_segment = 0
        path = self._path
        size = os.fstat(self._fd).st_size
        try:
            for blob in encode_pieces(frame):
                _write_all(self._fd, blob)
        except OSError as exc:
            try:
                self._cut_back(size)
            except OSError as closing:  # not cut back, and closing it failed too: say both
                raise _failed(path, "cannot write replay buffer segment", exc,
                              f"; closing it failed too: {closing.strerror or closing}") from exc
            raise _failed(path, "cannot write replay buffer segment", exc) from exc
        if frame.kind == "add":
            self.records_in_segment += len(frame.rids)
        if self.records_in_segment >= self.max_records:
            self.seal()
            return True
        return False

    def _cut_back(self, size: int) -> None:
        """Drop what a failed write (a full disk) left after byte ``size`` of the open segment.

        Torn bytes left there would sit between intact frames once the write is retried:
        every open would warn of a corrupt frame, and a strict open would refuse the buffer.
        If the file cannot be cut, it is closed instead, so the torn bytes stay its last
        ones (which readers drop quietly) and the next write starts a new segment, as
        :meth:`seal` does (frames written before the torn one may not be synced yet)."""
        try:
            os.ftruncate(self._fd, size)
        except OSError:
            fd, self._fd = self._fd, None
            try:
                os.fsync(fd)
                if not self._entry_synced:
                    sync_directory(self.directory)
            finally:
                os.close(fd)

    def sync(self) -> None:
        """fsync the open segment (survives power loss, not only process death), and the
        first time, its directory: the file's entry was made when it was created, and a
        power cut before that reaches the disk loses the whole file. A lost last file shows
        no gap in the numbers (:func:`missing_segments`), so nothing would tell.

        Raises:
            DataError: the fsync failed (a full disk, an I/O error); the segment stays open.
        """
        if self._fd is not None:
            try:
                os.fsync(self._fd)
            except OSError as exc:
                raise _failed(self._path, "cannot sync replay buffer segment", exc) from exc
            if not self._entry_synced:
                try:
                    sync_directory(self.directory)
                except OSError as exc:
                    raise _failed(self._path, "cannot sync the directory entry of replay buffer segment", exc) from exc
                self._entry_synced = True

    def seal(self) -> None:
        """Close the current segment; the next write starts a new file.

        Raises:
            DataError: the fsync failed; the segment stays open, so a later seal tries again.
        """
        if self._fd is not None:
            self.sync()
            os.close(self._fd)
            self._fd = None


def _write_all(fd: int, blob: bytes) -> None:
    """Write ``blob`` at the end of ``fd``, at most _WRITE_CHUNK bytes per ``os.write``.

    A call that writes less than it was given raises: on a regular file that is a full disk
    (the next call would fail with ENOSPC) or a limit reached, not a call to repeat, and the
    caller cuts back what was written. Chunks keep each call below Linux's limit per call,
    which made every write of 2 GiB or more come back short."""
    if len(blob) <= _WRITE_CHUNK:
        written = os.write(fd, blob)
        if written != len(blob):
            raise OSError(f"short write ({written} of {len(blob)} bytes)")
        return
    view = memoryview(blob)
    for start in range(0, len(blob), _WRITE_CHUNK):
        chunk = view[start : start + _WRITE_CHUNK]
        written = os.write(fd, chunk)
        if written != len(chunk):
            raise OSError(f"short write ({start + written} of {len(blob)} bytes)")


def _failed(path: Path | None, what: str, exc: OSError, more: str = "") -> DataError:
    """The one-line error of a segment file operation that failed: the file, what failed, why."""
    return DataError(f"{path}: {what}: {exc.strerror or exc}{more}")
