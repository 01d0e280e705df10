"""The state mapper's pure functions (no engine)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dreamgym_plugin_textworld.state import (
    clean_text,
    compact_actions,
    compact_inventory,
    drop_scenery,
    expand_actions,
    normalize_action,
    parse_state,
    render_state,
)


def test_inventory_formats_of_both_engines() -> None:
    assert compact_inventory("Inventory (maximum capacity is 2 items): \n  Your inventory is currently empty.\n") == "nothing"
    assert compact_inventory("Inventory: \n  a map\n  a coin\n") == "a map, a coin"
    assert compact_inventory("You are carrying nothing.") == "nothing"
    assert compact_inventory("You are carrying: a key, a red apple and a coin.") == "a key, a red apple, a coin"


def test_actions_are_grouped_by_verb_and_cut_to_budget() -> None:
    actions = ["take apple", "take knife", "open fridge", "look around", "inventory"]
    assert compact_actions(actions, 300) == "take apple / knife; open fridge; look around; inventory"
    many = [f"verb{i} object number {i}" for i in range(40)]
    short = compact_actions(many, 100)
    assert len(short) < 130 and short.endswith("more verbs)")


def test_expanding_a_compact_list_gives_back_the_sorted_actions() -> None:
    actions = sorted(["take apple", "take knife", "open fridge", "look around", "inventory", "put coin in box"])
    assert expand_actions(compact_actions(actions, 300)) == actions
    many = [f"verb{i} object" for i in range(40)]
    kept = expand_actions(compact_actions(many, 100))
    assert kept == many[: len(kept)] and 0 < len(kept) < 40  # the cut tail is unknown, not invented
    assert expand_actions("") == []


def test_render_then_parse_round_trip() -> None:
    text = render_state("You are in the  kitchen.\n\nA coin.", "Inventory: \n  a map\n", ["take coin", "move west"], 0.5)
    assert text.splitlines()[0] == "Observation: You are in the kitchen. A coin."
    fields = parse_state(text)
    assert fields["inventory"] == "a map" and fields["score"] == "0.50" and fields["n_actions"] == "2"
    assert fields["actions"] == "take coin; move west"


def test_parse_state_tolerates_missing_fields() -> None:
    assert parse_state("Observation: dark room")["inventory"] == ""


@given(st.text(), st.integers(min_value=5, max_value=200))
def test_clean_text_respects_its_budget(text: str, limit: int) -> None:
    out = clean_text(text, limit)
    assert len(out) <= limit and "\n" not in out


def test_normalize_action() -> None:
    assert normalize_action("  Take   the COIN ") == "take the coin"


KITCHEN = (
    "Observation: You are in the kitchen. In one part of the room you see a stove. There is also an oven. "
    "You also see a fridge that is closed. There is also a coin. To the North you see the pantry.\n"
    "Inventory: nothing\nScore: 0.00\nActions (3): look around; move north; take coin"
)
KITCHEN_ACTIONS = ["look around", "move north", "take coin"]


def test_drop_scenery_drops_only_what_no_action_names() -> None:
    bare = drop_scenery(KITCHEN, KITCHEN_ACTIONS, key="e1", drop=1.0)
    assert bare.splitlines()[0] == "Observation: You are in the kitchen. There is also a coin. To the North you see the pantry."
    assert bare.splitlines()[1:] == KITCHEN.splitlines()[1:]
    assert drop_scenery(KITCHEN, KITCHEN_ACTIONS, key="e1", drop=0.0) == KITCHEN
    assert drop_scenery("Inventory: nothing", KITCHEN_ACTIONS, key="e1", drop=1.0) == "Inventory: nothing"
    # a generated state whose list misses its own exit keeps the exit
    assert "To the North you see the pantry." in drop_scenery(KITCHEN, ["take coin"], key="e1", drop=1.0)
    the_map = "Observation: The map reads: The chamber connects to the hall. The hall connects to the chamber."
    assert drop_scenery(the_map, ["read map"], key="e1", drop=1.0) == the_map  # not a room: information


def test_drop_scenery_is_a_function_of_the_key_and_varies_between_keys() -> None:
    once = drop_scenery(KITCHEN, KITCHEN_ACTIONS, key="e1", drop=0.5)
    assert drop_scenery(KITCHEN, KITCHEN_ACTIONS, key="e1", drop=0.5) == once
    variants = {drop_scenery(KITCHEN, KITCHEN_ACTIONS, key=f"e{i}", drop=0.5) for i in range(40)}
    assert len(variants) > 4  # three furniture sentences: up to 8 variants
    assert all("To the North you see the pantry." in v and "There is also a coin." in v for v in variants)
