"""dreamgym_core.imports: a library's logging.basicConfig at import leaves the program's root logger alone."""

from __future__ import annotations

import logging

import pytest

from dreamgym_core.imports import root_logging_kept


@pytest.fixture
def root():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)


def test_the_root_loggers_handlers_and_level_come_back(root):
    mine = logging.NullHandler()
    root.handlers[:] = [mine]
    root.setLevel(logging.ERROR)
    with root_logging_kept():
        root.handlers[:] = []
        logging.basicConfig(level=logging.DEBUG)  # what verl's __init__ does
        assert root.level == logging.DEBUG and root.handlers
    assert root.handlers == [mine] and root.level == logging.ERROR


def test_they_come_back_when_the_import_fails(root):
    root.handlers[:] = []
    with pytest.raises(ImportError), root_logging_kept():
        logging.basicConfig()
        raise ImportError("no module")
    assert root.handlers == []
