"""Importing third-party libraries without their side effects on the program's logging.

verl's ``__init__`` calls ``logging.basicConfig``: after that, a program's own
``basicConfig`` does nothing, so its log level and format were silently ignored once a plugin
that imports verl was loaded. Plugins import such libraries inside :func:`root_logging_kept`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["root_logging_kept"]


@contextmanager
def root_logging_kept() -> Iterator[None]:
    """Run the block, then give the root logger back the handlers and level it had before::

        with root_logging_kept():
            from verl.trainer.ppo import core_algos
    """
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
