"""A stop asked for by Ctrl-C or SIGTERM, remembered until the command ends.

Python raises the KeyboardInterrupt wherever the main thread happens to be, and some places
drop it: a finalizer (printed as "Exception ignored"; py4j's proxies run many) or a
library's own handler of it that fails in turn. The same Ctrl-C also stops a simulator in
the process group, whose failures then look like the environment's. A rollout that meets
an environment error, and the CLI that meets a failure, ask :func:`requested` first, so that
either ends as the stop it is rather than as failed episodes or a failed run.

The handlers are the command's, not the process's: :func:`handled` installs them for one
command and puts back what was there, so the CLI called in-process (a notebook, a test's
``CliRunner``) leaves no stop and no handler behind.
"""

from __future__ import annotations

import _thread
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator

__all__ = ["Stopped", "handle", "handled", "requested", "check", "clear", "name"]

_requested: int | None = None
# Stops raised (by the handler or by check) and, of those, dropped in a finalizer, since the
# command began: a dropped stop is delivered again only while every one raised was dropped.
_raised = 0
_dropped = 0
# Bumped by clear(): a stop dropped in a finalizer is delivered again only if clear() has not
# run since. A re-send due after the command ended (handled() clears on its way out) would
# reach the caller's handlers: a stray KeyboardInterrupt, or SIGTERM's default, which kills
# the process. The lock makes a re-send's check and its sending one step against clear().
_generation = 0
_generation_lock = threading.Lock()


class Stopped(KeyboardInterrupt):
    """The interrupt a stop raises; ``signum`` names its signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def handle(signum: int, frame: Any) -> None:
    """Signal handler for SIGINT and SIGTERM: remember the stop and raise it here."""
    global _requested, _raised
    _requested = signum
    _raised += 1
    raise Stopped(signum)


def requested() -> int | None:
    """The signal of the stop asked for, or None."""
    return _requested


def check() -> None:
    """Raise the stop again if one was asked for (it may have been dropped where it was raised)."""
    global _raised
    if _requested is not None:
        _raised += 1
        raise Stopped(_requested)


def clear() -> None:
    """Forget a stop: the next command starts unstopped."""
    global _requested, _raised, _dropped, _generation
    with _generation_lock:
        _generation += 1
    _requested = None
    _raised = _dropped = 0


def name(signum: int) -> str:
    return signal.Signals(signum).name


@contextmanager
def handled() -> Iterator[None]:
    """For one command: Ctrl-C and SIGTERM (a scheduler's stop, ``kill``, ``timeout``) raise a
    remembered :class:`Stopped`, and an interrupt dropped in a finalizer is delivered again.
    SIGTERM's default killed every command but ``run`` outright: ``collect`` left its
    ``.partial`` file and no command closed its simulators or browsers.

    Each handler is set only where the signal's default one is (not where a background job
    ignores it) and only on the main thread (the only one that may set handlers)."""
    clear()
    on_main = threading.current_thread() is threading.main_thread()
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)} if on_main else {}
    saved_hook = sys.unraisablehook
    if saved.get(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, handle)
    if saved.get(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, handle)
    sys.unraisablehook = _keeping_interrupts(saved_hook)
    try:
        yield
    finally:
        clear()  # first: a stop re-sent from now on would reach the handlers put back below
        for sig, previous in saved.items():
            if previous is not None:  # None: set outside Python, nothing to put back
                signal.signal(sig, previous)
        sys.unraisablehook = saved_hook


def _keeping_interrupts(previous: Callable[[Any], None]) -> Callable[[Any], None]:
    """An unraisable-exception hook that delivers an interrupt again when it was raised in a
    finalizer (a weakref callback or ``__del__``). Python prints such an exception as
    "Exception ignored" and drops it, and the command would go on as if Ctrl-C or SIGTERM had
    not come. The signal is sent to the main thread again, a moment later, when that
    finalizer is over, unless the stop has reached the command meanwhile (a rollout's
    :func:`check`): the command is then unwinding, and a second stop would cut its cleanup
    short, leaving simulators and browsers open."""

    def hook(unraisable: Any) -> None:
        global _dropped
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            previous(unraisable)
            return
        _dropped += 1
        signum = unraisable.exc_value.signum if isinstance(unraisable.exc_value, Stopped) else signal.SIGINT
        timer = threading.Timer(0.05, _deliver_again, (threading.main_thread().ident, signum, _generation))
        timer.daemon = True
        timer.start()

    return hook


def _deliver_again(main: int | None, signum: int, generation: int) -> None:
    with _generation_lock:
        if generation != _generation:  # the command has ended (or its stop was forgotten)
            return
        if _raised > _dropped:  # a stop raised since was not dropped: the command has it
            return
        resend = signal.pthread_kill if hasattr(signal, "pthread_kill") else (lambda _, sig: _thread.interrupt_main(sig))
        resend(main, signum)
