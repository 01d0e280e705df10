"""benchmarks/table1/games_won.py: which held-out games each policy wins, and its moves."""

from __future__ import annotations

import msgspec

from dreamgym_core.records import Task, Trajectory, Transition

from scripts import load_script


def _module():
    return load_script("table1/games_won.py", "table1_games_won")


def _episode(seed: int, actions: list[str], success: bool) -> Trajectory:
    task = Task(id=f"twx/coin/p/{seed}", instruction="find the coin", domain="twx", split="test")
    steps = [
        Transition(task_id=task.id, episode_id="e", step=i, state="s", action=a, next_state="s2",
                   reward=float(success and i == len(actions) - 1), done=i == len(actions) - 1,
                   success=success and i == len(actions) - 1)
        for i, a in enumerate(actions)
    ]
    return Trajectory(task=task, transitions=steps)


def test_table_counts_wins_moves_and_games_won_by_all_or_none(tmp_path):
    games_won = _module()
    east = [_episode(1, ["take coin"], True), _episode(2, ["move east", "take coin"], True), _episode(3, ["move east", "move east"], False)]
    west = [_episode(1, ["take coin"], True), _episode(2, ["move west", "move west"], False), _episode(3, ["move west", "move south"], False)]
    files = {}
    for label, episodes in {"east": east, "west": west}.items():
        files[label] = tmp_path / f"{label}.jsonl"
        files[label].write_bytes(b"".join(msgspec.json.encode(e) + b"\n" for e in episodes))
    text = games_won.table({label: games_won.read_episodes(path) for label, path in files.items()})
    assert "| east | 2 of 3 | move east 3 |" in text
    assert "| west | 1 of 3 | move south 1, move west 3 |" in text
    assert "| 2 | won | - |" in text and "| 3 | - | - |" in text
    assert "Won by every policy: 1; by none: 1; by some: 1." in text
