"""A writer process is killed with SIGKILL mid-ingest; flushed records must survive."""

import os
import signal
import subprocess
import sys
import textwrap

import msgspec
import numpy as np

from dreamgym_core.testing import BagOfWordsEncoder
from dreamgym_plugin_exact import ExactBuffer

WRITER = textwrap.dedent(
    """
    import sys
    from dreamgym_core.records import Transition
    from dreamgym_core.testing import BagOfWordsEncoder
    from dreamgym_plugin_exact import ExactBuffer, ExactConfig

    def record(i):
        return Transition(task_id=f"task-{i % 7}", episode_id=f"ep-{i // 5}", step=i % 5,
                          state=f"state {i} room {i % 13}", action=f"act {i % 11}",
                          next_state=f"next {i}", reward=float(i % 3 == 0), done=i % 5 == 4, source="synthetic")

    buffer = ExactBuffer(ExactConfig(flush_every=37, segment_records=400, fsync=False),
                         encoder=BagOfWordsEncoder(), path=sys.argv[1])
    i = len(buffer)
    for batch in range(1, 10**9):
        buffer.add(transitions=[record(j) for j in range(i, i + 25)])
        i += 25
        if batch % 4 == 0:
            buffer.flush()
            print(len(buffer), flush=True)
    """
)


def _record(i):
    from dreamgym_core.records import Transition

    return Transition(task_id=f"task-{i % 7}", episode_id=f"ep-{i // 5}", step=i % 5,
                      state=f"state {i} room {i % 13}", action=f"act {i % 11}",
                      next_state=f"next {i}", reward=float(i % 3 == 0), done=i % 5 == 4, source="synthetic")


def _run_and_kill(path, flushes, tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    proc = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE, text=True)
    flushed = 0
    for _ in range(flushes):
        line = proc.stdout.readline()
        assert line, "writer exited before flushing"
        flushed = int(line)
    os.kill(proc.pid, signal.SIGKILL)  # mid-ingest: the writer never stops adding
    proc.wait()
    return flushed


def test_sigkill_mid_ingest_loses_only_unflushed_records(tmp_path):
    path = tmp_path / "buffer"
    rng = np.random.default_rng(0)
    for _ in range(4):
        flushed = _run_and_kill(path, int(rng.integers(2, 8)), tmp_path)
        buffer = ExactBuffer(encoder=BagOfWordsEncoder(), path=path)
        stored = [msgspec.msgpack.encode(t) for t in buffer]
        assert len(stored) >= flushed
        assert stored == [msgspec.msgpack.encode(_record(i)) for i in range(len(stored))]  # bit for bit, no gaps
        assert not [p for p in buffer.problems if "checksum" in p or "marker" in p]
        assert buffer.add(transitions=[_record(len(stored))]) == 1  # still accepts new records
        hit = buffer.retrieve(queries=[(_record(3).state, _record(3).action)], k=1)[0]
        assert hit == [_record(3)]
        buffer.close()
