"""``dreamgym collect`` on the real TextWorldExpress engine."""

from __future__ import annotations

import click
import msgspec
from click.testing import CliRunner

from dreamgym_core.cli import _Group
from dreamgym_core.commands.collect import collect_transitions, command
from dreamgym_core.records import Transition
from dreamgym_plugin_textworld import make_twx

from .conftest import twx_config


def _cli() -> click.Group:
    # The core adds "collect" to its CLI; here it is attached to a group of its own.
    group = _Group("dreamgym")
    group.add_command(command)
    return group


def test_collect_writes_the_requested_number_of_transitions(tmp_path) -> None:
    out = tmp_path / "data" / "twc.jsonl"
    result = CliRunner().invoke(
        _cli(),
        [
            "collect", "--env", "twx", "--plugin", "textworld", "--set", "game=twc",
            "--set", "params.numLocations=1", "--set", "train_seeds=2", "--policy", "noisy",
            "--transitions", "37", "--annotate", "--out", str(out),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    records = [msgspec.json.decode(line, type=Transition) for line in out.read_bytes().splitlines()]
    assert len(records) == 37
    assert all(r.source == "offline" and r.instruction and r.reasoning for r in records)
    assert {r.task_id for r in records} <= {"twx/twc/numLocations=1/0", "twx/twc/numLocations=1/1"}
    assert not list(out.parent.glob("*.partial"))


def test_collect_from_a_pipeline_file(tmp_path) -> None:
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(
        "plugins: [textworld]\n"
        "env: {name: twx, config: {game: coin, params: {numLocations: 3}, test_seeds: 1}}\n"
        "policy: {name: none}\nalgo: {name: none}\nloop: {mode: real}\n"
    )
    out = tmp_path / "coin.jsonl"
    args = ["collect", "--pipeline", str(pipeline), "--split", "test", "--transitions", "5", "--out", str(out)]
    result = CliRunner().invoke(_cli(), args)
    assert result.exit_code == 0, result.output
    records = [msgspec.json.decode(line, type=Transition) for line in out.read_bytes().splitlines()]
    assert len(records) == 5 and all(r.task_id.endswith("/20000") for r in records)


def test_another_seed_collects_other_episodes() -> None:
    # Episode e of --seed S played from seed S + e: with 2 train tasks, --seed 2 replayed --seed 0's
    # episodes from its third on, with the same actions and episode ids (buffer import dropped them).
    domain = make_twx(twx_config("coin", max_steps=8))
    try:
        def episodes(seed: int) -> dict[str, tuple[str, ...]]:
            out: dict[str, list[str]] = {}
            for t in collect_transitions(domain, split="train", policy="random", transitions=40, seed=seed):
                out.setdefault(t.episode_id, []).append(t.action)
            return {k: tuple(v) for k, v in out.items()}

        first, later = episodes(0), episodes(2)
        assert len(first) > 2 and len(later) > 2
        assert not first.keys() & later.keys()
        seeds = sorted(int(k.rsplit("/", 2)[1].removeprefix("s")) for k in later)  # .../random/s2000001/e0
        assert seeds == list(range(2_000_000, 2_000_000 + len(later)))
        assert episodes(2) == later
    finally:
        domain.close()


def test_unknown_game_is_one_line_and_writes_nothing(tmp_path) -> None:
    out = tmp_path / "x.jsonl"
    args = ["collect", "--env", "twx", "--plugin", "textworld", "--set", "game=zork", "--transitions", "3", "--out", str(out)]
    result = CliRunner().invoke(_cli(), args)
    assert result.exit_code == 2
    assert "unknown game 'zork' (available: arithmetic, coin, cookingworld" in result.output
    assert not out.exists()
