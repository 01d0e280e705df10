"""A stop asked for by Ctrl-C or SIGTERM, remembered until the command ends.

Python raises the KeyboardInterrupt wherever the main thread happens to be, and some places
drop it: a finalizer (printed as "Exception ignored"; py4j's proxies run many) or a
library's own handler of it that fails in turn. The same Ctrl-C also stops a simulator in
the process group, whose failures then look like the environment's. A rollout that meets
an environment error, and the CLI that meets a failure, ask :func:`requested` first, so that
either ends as the stop it is rather than as failed episodes or a failed run.
"""

from __future__ import annotations

import signal
from typing import Any

__all__ = ["Stopped", "handle", "requested", "check", "clear", "name"]

_requested: int | None = None


class Stopped(KeyboardInterrupt):
    """The interrupt a stop raises; ``signum`` names its signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def handle(signum: int, frame: Any) -> None:
    """Signal handler for SIGINT and SIGTERM: remember the stop and raise it here."""
    global _requested
    _requested = signum
    raise Stopped(signum)


def requested() -> int | None:
    """The signal of the stop asked for, or None."""
    return _requested


def check() -> None:
    """Raise the stop again if one was asked for (it may have been dropped where it was raised)."""
    if _requested is not None:
        raise Stopped(_requested)


def clear() -> None:
    """Forget an earlier stop: a new command starts unstopped (the CLI run again in one process,
    as a notebook or ``CliRunner`` does)."""
    global _requested
    _requested = None


def name(signum: int) -> str:
    return signal.Signals(signum).name
