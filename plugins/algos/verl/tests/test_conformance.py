"""Conformance: the kit on this plugin (its algorithms run their own loop; the shared
buffer actor runs the buffer kit in test_actors.py)."""

from dreamgym_core.conformance import check_plugin


def test_conformance():
    lines = list(check_plugin("verl"))
    assert any("algo:verl-grpo" in line for line in lines) and any("algo:verl-ppo" in line for line in lines)
