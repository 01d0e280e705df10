"""benchmarks/table1/wall_moves.py: reading a run's buffer back and counting wall moves.

The buffer directory is written with the exact buffer's own segment writer, so the reader is
checked against the real storage format, evictions included."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from dreamgym_core.records import Transition
from dreamgym_plugin_exact.segments import Frame, SegmentWriter

WALL_MOVES_PY = Path(__file__).resolve().parents[1] / "benchmarks" / "table1" / "wall_moves.py"
EXITS = ["inventory", "look around", "move north"]


def _module():
    spec = importlib.util.spec_from_file_location("table1_wall_moves", WALL_MOVES_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _step(action: str, *, step: int = 0, valid: bool = True, next_state: str = "Actions (2): look around; move south") -> Transition:
    return Transition(
        task_id="t", episode_id=f"e{step}{action}", step=step, state="You are in the kitchen.", action=action,
        next_state=next_state, reward=0.0, done=False, valid=valid, source="synthetic", admissible_actions=EXITS,
    )


def test_wall_move_is_a_move_the_list_does_not_offer():
    wall = _module()
    assert wall.is_wall_move(_step("move east"))
    assert not wall.is_wall_move(_step("move north"))
    assert not wall.is_wall_move(_step("take coin"))  # unlisted, but not a move
    unknown_list = Transition(task_id="t", episode_id="e", step=0, state="s", action="move east", next_state="s2",
                              reward=0.0, done=False)
    assert not wall.is_wall_move(unknown_list)  # no action list stored: nothing to judge against


def test_count_cell_splits_step_zero_and_counts_accepted_and_coin_offers():
    wall = _module()
    steps = [
        _step("move east", valid=True, next_state="Observation: a coin.\nActions (2): look around; take coin"),
        _step("move west", valid=False),
        _step("move north"),
        _step("move south", step=2, valid=True),
    ]
    c = wall.count_cell(steps)
    assert (c["steps_step0"], c["wall_step0"], c["accepted_step0"], c["coin_after_step0"]) == (3, 2, 1, 1)
    assert (c["steps_later"], c["wall_later"], c["accepted_later"], c["coin_after_later"]) == (1, 1, 1, 0)


def test_stored_transitions_drops_evicted_records(tmp_path):
    wall = _module()
    writer = SegmentWriter(tmp_path, max_records=2)  # two records per file: the reader must span files
    writer.write(Frame(kind="add", rids=[0, 1], transitions=[_step("move east"), _step("look around")]))
    writer.write(Frame(kind="add", rids=[2], transitions=[_step("move west")]))
    writer.write(Frame(kind="evict", rids=[0], rollback=True))
    writer.seal()
    kept = wall.stored_transitions(tmp_path)
    assert [t.action for t in kept] == ["look around", "move west"]
    assert len(list(tmp_path.glob("seg-*.dgs"))) == 2


def test_a_damaged_frame_is_reported_by_file_and_the_rest_still_read(tmp_path):
    wall = _module()
    writer = SegmentWriter(tmp_path, max_records=10)
    writer.write(Frame(kind="add", rids=[0], transitions=[_step("move east")]))
    writer.write(Frame(kind="add", rids=[1], transitions=[_step("move west")]))
    writer.seal()
    segment = next(tmp_path.glob("seg-*.dgs"))
    data = bytearray(segment.read_bytes())
    data[20] ^= 0xFF  # inside the first frame's payload: its checksum fails
    segment.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match=re.escape(f"{tmp_path}/{segment.name}")):  # the buffer's own warning
        assert [t.action for t in wall.stored_transitions(tmp_path)] == ["move west"]
