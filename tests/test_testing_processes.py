"""``dreamgym_core.testing.processes.ctrl_c_run`` on a stand-in CLI, on this Python and on the
oldest one the project supports (requires-python >=3.10)."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys

import pytest

import dreamgym_core.testing.processes as processes

# A stand-in dreamgym_core.cli: one progress line, then it waits for Ctrl-C and stops in one line.
FAKE_CLI = f"""
import os, sys, time
try:
    print(f"own group: {{os.getpgid(0) == os.getpid()}}", flush=True)
    print("{processes.PROGRESS}waiting] for Ctrl-C", file=sys.stderr, flush=True)
    while True:
        time.sleep(1)
except KeyboardInterrupt:
    print({processes.STOP_LINE!r}, file=sys.stderr, flush=True)
    sys.exit(130)
"""

# Loads processes.py by its path (an interpreter without the project's dependencies can), Ctrl-Cs
# the stand-in CLI and prints what it saw.
RUN = """
import importlib.util, json, sys
from pathlib import Path
spec = importlib.util.spec_from_file_location("processes", sys.argv[1])
processes = importlib.util.module_from_spec(spec)
spec.loader.exec_module(processes)
stopped = processes.ctrl_c_run(["run"], "waiting", 0, Path("stdout"), limit_s=30, settle_s=5)
stopped.assert_stopped_in_one_line()
print(json.dumps({"lines": stopped.lines, "stdout": Path("stdout").read_text()}))
"""


def _python_310() -> str | None:
    """A Python 3.10 interpreter, if this machine has one (a pyenv shim may name one it cannot run)."""
    candidates = [shutil.which("python3.10"), *sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.10*/bin/python3.10")))]
    for exe in filter(None, candidates):
        if subprocess.run([exe, "-c", "import sys; sys.exit(sys.version_info[:2] != (3, 10))"], capture_output=True).returncode == 0:
            return exe
    return None


@pytest.mark.parametrize("python", ["this", "3.10"])
def test_ctrl_c_run_stops_a_run_in_a_process_group_of_its_own(tmp_path, python):
    # On 3.10 it raised TypeError: Popen's process_group keyword came with Python 3.11.
    interpreter = sys.executable if python == "this" else _python_310()
    if interpreter is None:
        pytest.skip("no Python 3.10 interpreter here")
    (tmp_path / "dreamgym_core").mkdir()
    (tmp_path / "dreamgym_core" / "__init__.py").write_text("")
    (tmp_path / "dreamgym_core" / "cli.py").write_text(FAKE_CLI)
    # cwd and PYTHONPATH: the stand-in package comes before the installed one
    done = subprocess.run(
        [interpreter, "-c", RUN, processes.__file__], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)},
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout)
    assert seen["lines"] == [f"{processes.PROGRESS}waiting] for Ctrl-C", processes.STOP_LINE]
    assert seen["stdout"] == "own group: True\n"  # the group SIGINT went to is the run's own
