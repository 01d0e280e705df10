"""benchmarks/table1/next_state_parts.py: per-line scoring of an experience model's next states."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import msgspec

from dreamgym_core.fidelity import scored_answers
from dreamgym_core.records import ExperienceResult, Transition

PARTS_PY = Path(__file__).resolve().parents[1] / "benchmarks" / "table1" / "next_state_parts.py"


def _module():
    spec = importlib.util.spec_from_file_location("table1_next_state_parts", PARTS_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _state(room: str, actions: str, inventory: str = "a map") -> str:
    return f"Observation: You are in the {room}.\nInventory: {inventory}\nScore: 0.00\nActions (2): {actions}"


def _answers(pairs):
    """JSON records as eval-model --predictions writes them, from (transition, result) pairs."""
    steps, results = zip(*pairs)
    return [msgspec.json.decode(msgspec.json.encode(a)) for a in scored_answers(list(results), list(steps))]


def _pair(action, real_next, model_next, *, listed=("move east", "look around"), real_valid=True, model_valid=True):
    step = Transition(task_id="t", episode_id="e", step=0, state=_state("hall", "; ".join(listed)), action=action,
                      next_state=real_next, reward=0.0, done=False, valid=real_valid, admissible_actions=list(listed))
    result = ExperienceResult(reasoning="", next_state=model_next, reward=0.0, done=False, success=False, valid=model_valid)
    return step, result


def test_lines_are_scored_apart_and_by_kind_of_action():
    parts = _module()
    kitchen = _state("kitchen", "move west; look around")
    pairs = [
        _pair("move east", kitchen, kitchen),  # all right
        _pair("move east", kitchen, _state("cellar", "move west; look around")),  # wrong room, right list
        _pair("look around", kitchen, _state("kitchen", "move west; look around", inventory="nothing")),
        # off the list: the engine refuses, the model walks on
        _pair("move north", _state("hall", "move east; look around"), kitchen, real_valid=False),
    ]
    counts = parts.tally(_answers(pairs))
    move = counts["move"]
    assert (move["steps"], move["exact"], move["Observation_right"], move["Actions_right"]) == (2, 1, 1, 2)
    assert (move["room_n"], move["room_right"]) == (2, 1)
    look = counts["look"]
    assert (look["Observation_right"], look["Inventory_right"], look["Inventory_n"]) == (1, 0, 1)
    unlisted = counts["unlisted"]
    assert (unlisted["steps"], unlisted["refused"], unlisted["refused_matched"], unlisted["Observation_right"]) == (1, 1, 0, 0)
    assert counts["all"]["steps"] == 4 and counts["all"]["exact"] == 1
    assert counts["all"]["way_shown"] == 0  # no state here says what lies east
    table = parts.table(counts)
    assert table[2].startswith("| move | 2 | 50% | 50% |") and table[-1].startswith("| all | 4 | 25% |")


def test_an_unparsable_answer_is_not_counted_as_the_model_refusing_too():
    parts = _module()
    kitchen = _state("kitchen", "move west; look around")
    refused = _pair("move north", kitchen, kitchen, real_valid=False, model_valid=False)
    failed = _pair("move north", kitchen, "", real_valid=False, model_valid=False)
    failed = (failed[0], msgspec.structs.replace(failed[1], parse_status="failed"))  # its stand-in says invalid
    c = parts.tally(_answers([refused, failed]))["all"]
    assert (c["refused"], c["refused_matched"]) == (2, 1)


def test_moves_whose_state_names_the_way_are_counted_apart():
    parts = _module()
    step, result = _pair("move east", _state("kitchen", "move west"), _state("kitchen", "move west"))
    step = msgspec.structs.replace(step, state=step.state.replace("the hall.", "the hall. To the East you see the kitchen."))
    wrong = msgspec.structs.replace(result, next_state=_state("cellar", "move west"))
    c = parts.tally(_answers([(step, result), (step, wrong), _pair("move east", _state("kitchen", "x"), _state("kitchen", "x"))]))["all"]
    assert (c["room_n"], c["way_shown"], c["way_shown_room_right"]) == (3, 2, 1)


def test_a_state_line_is_found_by_its_part_and_compared_normalised():
    parts = _module()
    lines = parts.state_lines("Observation:  You are in the Hall.\nActions (3): a; b; c\nnoise line")
    assert lines == {"Observation": "observation: you are in the hall.", "Actions": "actions (3): a; b; c"}


def test_the_room_is_read_from_the_observation():
    parts = _module()
    assert parts.room("Observation: You are in the Living Room. To the North you see the hall.") == "living room"
    assert parts.room("Observation: You put the map in the box.") is None


def test_retrieval_coverage_counts_the_moves_a_demo_answers():
    import sys

    sys.path.insert(0, str(PARTS_PY.parent))  # the script imports its neighbour, as when run
    try:
        spec = importlib.util.spec_from_file_location("table1_retrieval_coverage", PARTS_PY.parent / "retrieval_coverage.py")
        coverage = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(coverage)
    finally:
        sys.path.remove(str(PARTS_PY.parent))
    kitchen, cellar = _state("kitchen", "look around"), _state("cellar", "look around")

    def step(action, next_state, *, task="w1", valid=True):
        return Transition(task_id=task, episode_id="e", step=0, state=_state("hall", action), action=action,
                          next_state=next_state, reward=0.0, done=False, valid=valid)

    steps = [step("move east", kitchen), step("move west", cellar), step("look around", kitchen), step("move north", kitchen, valid=False)]
    train = [step("move east", kitchen), step("move west", cellar, task="w2")]  # the cellar step is of another world
    demos = [[train[0]], [train[1]], [train[0]], [train[0]]]
    answers = [{"model_next_state": kitchen}, {"model_next_state": kitchen}, {"model_next_state": kitchen}, {"model_next_state": kitchen}]
    c = coverage.coverage(steps, demos, train, answers)
    # two valid moves; only the first world's step is in the data, both are shown by a demo
    assert (c["moves"], c["in_data"], c["in_demo"], c["right_in_demo"], c["right_not_in_demo"]) == (2, 1, 2, 1, 0)
