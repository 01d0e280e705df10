"""benchmarks/table1/phantom_wins.py: RL's synthetic coin wins the real game could not give."""

from __future__ import annotations

import msgspec

from dreamgym_core.records import Transition

from scripts import load_script


def _module():
    return load_script("table1/phantom_wins.py", "table1_phantom_wins")


def _steps(episode: str, actions: list[str], won: bool, listed: list[str], source: str = "synthetic") -> list[Transition]:
    last = len(actions) - 1
    return [
        Transition(task_id="twx/coin/p/1", episode_id=episode, step=i, state="s", action=a, next_state="s2", source=source,
                   reward=float(won and i == last), done=i == last, success=won and i == last,
                   admissible_actions=listed if i == 0 else ["inventory", "take coin"])
        for i, a in enumerate(actions)
    ]


def test_counts_wins_without_a_move_of_an_action_the_start_did_not_list(tmp_path):
    phantom_wins = _module()
    start = ["inventory", "look around", "move east"]
    records = [
        *_steps("it0-0", ["inventory", "take coin"], True, start),  # phantom: the coin appeared in place
        *_steps("it0-1", ["move east", "take coin"], True, start),  # moved: a real way to win
        *_steps("it1-0", ["take coin"], True, [*start, "take coin"]),  # the start room holds the coin
        *_steps("it1-1", ["inventory", "inventory"], False, start),
        *_steps("fidelity-0", ["inventory", "take coin"], True, start),  # not an RL episode
        *_steps("e0", ["inventory", "take coin"], True, start, source="offline"),
    ]
    path = tmp_path / "buffer.jsonl"
    path.write_bytes(b"".join(msgspec.json.encode(t) + b"\n" for t in reversed(records)))  # any order
    episodes = phantom_wins.rl_episodes(path)
    assert phantom_wins.counts(episodes) == (4, 3, 1)
    assert [t.step for t in next(e for e in episodes if e[0].episode_id == "it0-0")] == [0, 1]
