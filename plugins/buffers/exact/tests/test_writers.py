"""One writer per buffer directory: a second writer is refused before it changes anything.

Without the claim, two buffers writing one directory numbered their records alike: the second's
first write failed with a raw FileExistsError (both chose one segment name), its retry wrote the
next segment, and the next open kept one record of each id (4 of 7 records added).
"""

import gc
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dreamgym_core.errors import DataError
from dreamgym_core.testing import BagOfWordsEncoder
from dreamgym_plugin_exact import ExactBuffer, ExactConfig

# Opens the buffer, adds and flushes 3 records, says so, then holds the buffer open until
# its stdin closes (the test's side of the pipe).
HOLDER = textwrap.dedent(
    """
    import sys
    from dreamgym_core.testing import BagOfWordsEncoder, make_transitions
    from dreamgym_plugin_exact import ExactBuffer

    buffer = ExactBuffer(encoder=BagOfWordsEncoder(), path=sys.argv[1])
    buffer.add(transitions=make_transitions(3, prefix="holder"))
    buffer.flush()
    print("ready", flush=True)
    sys.stdin.read()
    buffer.close()
    print(len(buffer), flush=True)
    """
)


def _open(path, **config):
    return ExactBuffer(ExactConfig(**config), encoder=BagOfWordsEncoder(), path=path)


@pytest.fixture
def holder(tmp_path):
    """A writer in another process, holding the buffer open (3 records flushed)."""
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    path = tmp_path / "buffer"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        yield path, proc
    finally:
        if proc.poll() is None:
            proc.stdin.close()
            proc.wait(timeout=60)


def test_a_second_process_cannot_write_while_one_does(holder, distinct):
    path, proc = holder
    other = _open(path)
    assert len(other) == 3  # reading needs no claim: what the writer flushed is there
    assert other.retrieve(queries=[("anything", "look")], k=2)[0]
    with pytest.raises(DataError, match=rf"process {proc.pid} is writing this replay buffer"):
        other.add(transitions=distinct(2, prefix="intruder"))
    assert len(other) == 3  # the refused batch is not half-added in memory
    with pytest.raises(DataError, match="is writing this replay buffer"):
        other.rollback(to=0)
    assert len(other) == 3
    other.close()

    proc.stdin.close()
    assert proc.stdout.read().split() == ["3"]
    assert proc.wait(timeout=60) == 0
    # the writer's records are all there; a buffer opened after it closed may write
    with _open(path) as after:
        assert len(after) == 3
        assert after.add(transitions=distinct(2, prefix="after")) == 2
    with _open(path) as reopened:
        assert len(reopened) == 5


def test_two_open_buffers_of_one_process_take_turns_only_by_reopening(tmp_path, distinct):
    path = tmp_path / "buffer"
    first, second = _open(path), _open(path)
    assert first.add(transitions=distinct(4, prefix="first")) == 4
    with pytest.raises(DataError, match="another open replay buffer of this process writes this directory"):
        second.add(transitions=distinct(3, prefix="second"))
    first.close()
    # first's records are on disk now, which second never loaded: its ids would collide with them
    with pytest.raises(DataError, match="segment files changed since this replay buffer was opened"):
        second.add(transitions=distinct(3, prefix="second"))
    assert len(second) == 0
    second.close()
    with _open(path) as third:
        assert third.add(transitions=distinct(3, prefix="third")) == 3
    with _open(path) as reopened:
        assert len(reopened) == 7  # every record kept: no two share an id


ADD_ONE = textwrap.dedent(
    """
    import sys
    from dreamgym_core.testing import BagOfWordsEncoder, make_transitions
    from dreamgym_plugin_exact import ExactBuffer

    with ExactBuffer(encoder=BagOfWordsEncoder(), path=sys.argv[1]) as buffer:
        print(buffer.add(transitions=make_transitions(1, prefix="other")))
    """
)


def _lock_descriptors():
    fds = Path("/proc/self/fd")
    return sum(1 for fd in fds.iterdir() if os.path.realpath(fd).endswith("writer.lock"))


def test_a_writer_dropped_without_close_gives_its_claim_back(tmp_path, distinct):
    path = tmp_path / "buffer"
    with _open(path) as seed:
        seed.add(transitions=distinct(2, prefix="seed"))
    dropped = _open(path, flush_every=10_000)
    dropped.add(transitions=distinct(2, prefix="dropped"))  # claimed; held in memory, never flushed
    successor = _open(path)
    assert _lock_descriptors() == 1
    del dropped
    gc.collect()
    assert _lock_descriptors() == 0  # its descriptor closed with it: the lock is not held on
    assert successor.add(transitions=distinct(2, prefix="next")) == 2
    successor.close()
    with _open(path) as reopened:
        assert len(reopened) == 4
    # nothing of this process holds the directory now: another process may write it
    dropped = _open(path)
    dropped.add(transitions=distinct(1, prefix="again"))
    del dropped
    gc.collect()
    script = tmp_path / "add_one.py"
    script.write_text(ADD_ONE)
    done = subprocess.run([sys.executable, str(script), str(path)], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout.strip()) == (0, "1"), done.stderr


def test_a_claim_is_taken_afresh_on_a_recreated_directory(tmp_path, distinct):
    # a claim must lock the directory's lock file as it is now, not a descriptor of a deleted one
    path = tmp_path / "buffer"
    first = _open(path)
    first.add(transitions=distinct(1, prefix="first"))
    del first  # dropped without close()
    gc.collect()
    shutil.rmtree(path)
    mine = _open(path)
    assert mine.add(transitions=distinct(3, prefix="mine")) == 3
    script = tmp_path / "add_one.py"
    script.write_text(ADD_ONE)
    done = subprocess.run([sys.executable, str(script), str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "is writing this replay buffer" in done.stderr
    mine.close()


def test_a_backfill_beside_a_writer_stops_with_the_reason(holder, tmp_path):
    path, proc = holder

    class Renamed(BagOfWordsEncoder):
        id = "bow-renamed"

    other = ExactBuffer(
        ExactConfig(on_encoder_change="backfill", backfill_background=False),
        encoder=Renamed(), path=path, previous_encoders=[BagOfWordsEncoder()],
    )
    with pytest.raises(DataError, match=rf"process {proc.pid} is writing"):
        other.backfill_step()
    assert other.backfill_progress == (0, 3)  # nothing re-embedded in memory either
    other.close()


def test_in_memory_buffers_claim_nothing(distinct):
    a, b = ExactBuffer(encoder=BagOfWordsEncoder()), ExactBuffer(encoder=BagOfWordsEncoder())
    assert a.add(transitions=distinct(2)) == 2
    assert b.add(transitions=distinct(2)) == 2
