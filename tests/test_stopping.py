"""A stop asked for by Ctrl-C or SIGTERM, and delivered again when a finalizer dropped it
(dreamgym_core.stopping)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import pytest

from dreamgym_core import stopping


class _StoppedInFinalizer:
    """What Ctrl-C does when it lands in a finalizer (py4j's proxies run many): the handler
    raises there, and Python drops the exception."""

    def __del__(self) -> None:
        stopping.handle(signal.SIGINT, None)


def test_a_stop_dropped_in_a_finalizer_is_delivered_again() -> None:
    assert threading.current_thread() is threading.main_thread()
    with stopping.handled():
        with pytest.raises(KeyboardInterrupt):
            _StoppedInFinalizer()  # dropped as the object goes
            time.sleep(5)  # the command going on; the stop comes again here
        assert stopping.requested() == signal.SIGINT


def test_a_stop_the_command_has_already_raised_is_not_delivered_a_second_time() -> None:
    # A rollout asks for the stop (check) when an environment fails, as one the same Ctrl-C
    # killed does. The run then unwinds and closes its envs; the stop sent again into that
    # cleanup cut it short, and the simulators' JVMs it had not closed yet were messaged at
    # exit, printing pages of py4j tracebacks after the one-line stop message.
    with stopping.handled():
        _StoppedInFinalizer()
        with pytest.raises(stopping.Stopped):
            stopping.check()
        try:
            time.sleep(0.5)  # the cleanup: a second stop would land here
        except KeyboardInterrupt:
            pytest.fail("the stop came a second time, into the cleanup")
        assert stopping.requested() == signal.SIGINT


def test_a_stop_dropped_just_before_the_command_ends_is_not_sent_into_its_caller() -> None:
    # The re-send is due 50 ms after the drop. It went out even when the command had returned
    # by then, into the handlers handled() had put back: a stray KeyboardInterrupt here.
    with stopping.handled():
        _StoppedInFinalizer()
    try:
        time.sleep(0.3)
    except KeyboardInterrupt:
        pytest.fail("the stop was sent again after the command had ended")
    assert stopping.requested() is None


_TERM_DROPPED_AT_THE_END = """
import signal, time
from dreamgym_core import stopping

class StoppedInFinalizer:
    def __del__(self):
        stopping.handle(signal.SIGTERM, None)

with stopping.handled():
    signal.signal(signal.SIGTERM, stopping.handle)  # as `dreamgym run` does
    StoppedInFinalizer()
time.sleep(0.3)
print("alive")
"""


def test_a_sigterm_dropped_just_before_the_command_ends_does_not_kill_the_process_after_it() -> None:
    # SIGTERM's handler put back is the default one, which ended the process (rc -15).
    done = subprocess.run([sys.executable, "-c", _TERM_DROPPED_AT_THE_END], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, "alive\n"), done.stderr
