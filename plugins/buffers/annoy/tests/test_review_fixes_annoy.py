"""A buffer that only reads gives back the write claim it took to save its index; saves sync
their directory."""

import os
import stat
import subprocess
import sys
import textwrap

import pytest

from dreamgym_core.errors import DataError
from dreamgym_core.records import Transition
from dreamgym_plugin_annoy import AnnoyBuffer, AnnoyConfig
from dreamgym_plugin_encoders import HashingEncoder


def _mk(i):
    return Transition(task_id="t", episode_id=f"e{i}", step=0, state=f"s{i} room", action="a", next_state="n",
                      reward=0.0, done=False, success=False, source="real")


def _stored_without_index(path, n=50):
    with AnnoyBuffer(AnnoyConfig(min_rows=10**9), encoder=HashingEncoder(), path=path) as b:
        b.add(transitions=[_mk(i) for i in range(n)])
    assert not (path / "annoy.json").exists()


READER = AnnoyConfig(min_rows=10, n_trees=5, background_build=False)  # builds (and saves) on opening

WRITER = textwrap.dedent("""
    import sys
    from dreamgym_core.records import Transition
    from dreamgym_plugin_annoy import AnnoyBuffer, AnnoyConfig
    from dreamgym_plugin_encoders import HashingEncoder
    b = AnnoyBuffer(AnnoyConfig(min_rows=10**9), encoder=HashingEncoder(), path=sys.argv[1])
    b.add(transitions=[Transition(task_id="t", episode_id="w", step=0, state="written", action="a", next_state="n",
                                  reward=0.0, done=False, source="real")])
    b.close()
    print("added")
""")


def test_a_reader_that_saved_its_index_does_not_block_another_process_from_writing(tmp_path):
    """The claim taken to save the index was kept until close(): `dreamgym buffer query` or an
    eval on a run's buffer refused the run's next write ("process N is writing this replay buffer")."""
    path = tmp_path / "buf"
    _stored_without_index(path)
    reader = AnnoyBuffer(READER, encoder=HashingEncoder(), path=path)
    try:
        assert len(reader.retrieve(queries=[("s1 room", "a")], k=3)[0]) == 3
        assert (path / "annoy.json").exists() and reader.problems == []  # the index was saved
        done = subprocess.run([sys.executable, "-c", WRITER, str(path)], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and done.stdout.strip() == "added", done.stderr
    finally:
        reader.close()
    with AnnoyBuffer(READER, encoder=HashingEncoder(), path=path) as again:
        assert len(again) == 51


def test_a_reader_gives_the_claim_back_in_process_too_and_may_still_write_later(tmp_path):
    path = tmp_path / "buf"
    _stored_without_index(path)
    reader = AnnoyBuffer(READER, encoder=HashingEncoder(), path=path)
    assert (path / "annoy.json").exists()
    assert not reader._writer_lock.held
    other = AnnoyBuffer(AnnoyConfig(min_rows=10**9), encoder=HashingEncoder(), path=path)
    other.close()  # opened, nothing written: the reader may still write
    assert reader.add(transitions=[_mk(100)]) == 1  # its own write claims and keeps it
    assert reader._writer_lock.held
    writer = AnnoyBuffer(AnnoyConfig(min_rows=10**9), encoder=HashingEncoder(), path=path)
    with pytest.raises(DataError, match="another open replay buffer of this process writes this directory"):
        writer.add(transitions=[_mk(101)])
    writer.close()
    reader.close()
    with AnnoyBuffer(READER, encoder=HashingEncoder(), path=path) as again:
        assert len(again) == 51


def test_a_writer_keeps_its_claim_after_saving_an_index(tmp_path):
    path = tmp_path / "buf"
    with AnnoyBuffer(READER, encoder=HashingEncoder(), path=path) as b:
        b.add(transitions=[_mk(i) for i in range(30)])
        b.seal()  # builds and saves
        assert (path / "annoy.json").exists() and b._writer_lock.held


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="names a descriptor by its /proc/self/fd link (Linux)")
def test_saving_the_index_syncs_its_directory_after_the_replaces(tmp_path, monkeypatch):
    path = tmp_path / "buf"
    _stored_without_index(path)
    real, replaced, log = os.fsync, [], []
    real_replace = os.replace

    def fsync(fd):
        log.append(("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file", len(replaced)))
        return real(fd)

    def replace(src, dst):
        replaced.append(dst)
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    with AnnoyBuffer(READER, encoder=HashingEncoder(), path=path):
        assert len(replaced) == 3
        assert ("dir", 3) in log  # the directory, once the three files are in place
