"""``dreamgym collect``'s episode loop."""

from __future__ import annotations

import logging
import random

import pytest

from conftest import ROOT, build_plugin_package, run_cli
from dreamgym_core.commands import collect as collect_command
from dreamgym_core.commands.collect import collect_transitions, write_jsonl
from dreamgym_core.errors import ConfigError, DataError
from dreamgym_core.records import Trajectory
from dreamgym_core.rollout import play_offline

from stand_ins import CountConfig, CountDomain


class EmptyEpisodes(CountDomain):
    """A broken domain: every episode ends before its first step."""

    calls = 0

    def collect(self, *, tasks, policy, episodes, seed):
        self.calls += 1
        assert self.calls < 1000, "collect kept asking a domain whose episodes are empty"
        return [Trajectory(task=tasks[0], transitions=[]) for _ in range(episodes)]


class SeededEpisodes(CountDomain):
    """Episodes as the real domains play them: drawn from ``random.Random(seed)``, and named
    ``<task>/<policy>/s<seed>/e<i>``."""

    def collect(self, *, tasks, policy, episodes, seed):
        rng, out = random.Random(seed), []
        for i in range(episodes):
            task = tasks[i % len(tasks)]
            actions = iter(["inc"] * rng.randrange(4) + ["stop"])
            out.append(play_offline(self.make_env(), task, f"{task.id}/{policy}/s{seed}/e{i}", lambda obs: next(actions)))
        return out


def _episodes(seed: int, transitions: int = 60) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for t in collect_transitions(SeededEpisodes(CountConfig()), split="train", policy="random", transitions=transitions, seed=seed):
        out.setdefault(t.episode_id, []).append(t.action)
    return out


def test_collect_seeds_share_no_episode():
    # Episode e of --seed S played from seed S + e: on these 6 tasks --seed 6 replayed --seed 0's
    # episodes from its seventh on (same task, actions and episode id), which buffer import dropped.
    first, later, next_one = _episodes(0), _episodes(6), _episodes(1)
    assert len(first) > 6 and len(later) > 6
    assert not first.keys() & later.keys() and not first.keys() & next_one.keys() and not later.keys() & next_one.keys()
    assert "count-train-0/random/s0/e0" in first and "count-train-1/random/s1/e0" in first  # --seed 0 plays as it did
    assert "count-train-0/random/s6000000/e0" in later and "count-train-1/random/s6000001/e0" in later
    assert _episodes(6) == later  # and a seed plays the same episodes again


def test_collect_refuses_seeds_that_would_overlap_others(monkeypatch):
    # random.Random(-S) is random.Random(S): a negative seed replayed a positive one's draws
    with pytest.raises(ConfigError, match=r"^--seed -1: takes 0 to \d+ \(episode e of seed S plays from S \* 1000000 \+ e\)$"):
        next(collect_transitions(SeededEpisodes(CountConfig()), split="train", policy="random", transitions=3, seed=-1))
    # past its share of episodes, a seed's next episode would be the next seed's first
    monkeypatch.setattr(collect_command, "EPISODES_PER_SEED", 4)
    records = collect_transitions(CountDomain(CountConfig()), split="train", policy="expert", transitions=100, seed=2)
    with pytest.raises(ConfigError, match=r"^--transitions 100: 4 episodes of --seed 2 hold only 14; a seed plays at most 4 "
                                          r"\(the next episode's seed is --seed 3's first\): collect the rest under another --seed$"):
        list(records)


def test_the_collect_stage_warns_when_expert_episodes_repeat_earlier_ones(tmp_path, caplog):
    # 64 expert episodes on 32 train tasks (examples/default.yaml) are 32 demos, each twice: a
    # deterministic expert replays a task's, and nothing said the extra episodes were copies.
    from dreamgym_core.config import DataConfig
    from dreamgym_core.stages import collect_offline

    domain = CountDomain(CountConfig())  # 6 train tasks; its expert counts to each task's target
    tasks = domain.tasks(split="train")

    def stage(run: str, **episodes: int) -> tuple[int, list[str]]:
        caplog.clear()
        data = DataConfig(**{"expert_episodes": 0, "noisy_episodes": 0, "random_episodes": 0, **episodes})
        (tmp_path / run).mkdir()
        with caplog.at_level(logging.WARNING, logger="dreamgym_core.stages"):
            got = collect_offline(domain, tasks, data, seed=0, run_dir=tmp_path / run)
        return len(got), [r.getMessage() for r in caplog.records]

    assert stage("twice", expert_episodes=16, random_episodes=4) == (20, [  # every episode is kept
        "data.expert_episodes: 10 of the 16 expert episodes repeat an earlier one exactly (same task, same actions; "
        "6 train tasks played in turn): the copies add weight to those demos, not data"
    ])
    # one demo a task, and copies among other policies' episodes (chance, in a real domain): no warning
    assert stage("once", expert_episodes=6, random_episodes=12) == (18, [])


def test_collect_writes_exactly_the_asked_number_across_episodes():
    out = list(collect_transitions(CountDomain(CountConfig()), split="train", policy="expert", transitions=7, seed=0))
    assert len(out) == 7 and len({t.episode_id + t.task_id for t in out}) > 1


def test_a_domain_whose_episodes_hold_no_step_is_an_error_not_an_endless_loop():
    records = collect_transitions(EmptyEpisodes(CountConfig()), split="train", policy="expert", transitions=3, seed=0)
    with pytest.raises(DataError, match=r"env 'count': \d+ episodes in a row on split 'train' with policy 'expert' produced no transition"):
        next(records)


def test_an_output_path_that_cannot_be_written_fails_before_any_episode_is_played(tmp_path):
    (tmp_path / "taken").write_text("a file where the output folder should be")
    domain = EmptyEpisodes(CountConfig())
    records = collect_transitions(domain, split="train", policy="expert", transitions=3, seed=0)
    with pytest.raises(DataError, match=r"^--out .*taken/c\.jsonl: cannot write there \((File exists|Not a directory)\)$"):
        write_jsonl(records, tmp_path / "taken" / "c.jsonl", 3)
    assert domain.calls == 0


def test_the_partial_file_is_never_written_through_a_planted_link(tmp_path):
    """--out under a directory others can write to (/tmp) could find ``<out>.partial`` linking
    to one of the user's files: collecting would overwrite it."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    out = tmp_path / "c.jsonl"
    (tmp_path / "c.jsonl.partial").symlink_to(victim)
    records = collect_transitions(CountDomain(CountConfig()), split="train", policy="expert", transitions=3, seed=0)
    assert write_jsonl(records, out, 3) == 3
    assert victim.read_text() == "precious\n" and len(out.read_text().splitlines()) == 3 and not out.is_symlink()


def test_writing_without_progress_shows_no_bar(tmp_path, capfd):
    def records():
        return collect_transitions(CountDomain(CountConfig()), split="train", policy="expert", transitions=3, seed=0)

    assert write_jsonl(records(), tmp_path / "loud.jsonl", 3) == 3
    assert "collect loud.jsonl" in capfd.readouterr().err
    assert write_jsonl(records(), tmp_path / "quiet.jsonl", 3, progress=False) == 3
    assert capfd.readouterr().err == "" and len((tmp_path / "quiet.jsonl").read_text().splitlines()) == 3


def test_output_files_follow_links_and_refuse_streams(tmp_path):
    # a command's output is replaced through a .tmp sibling: renamed onto a link it replaced the link
    # (its file kept the old content), and onto /dev/stdout, as root, the /dev/stdout link itself
    from dreamgym_core.checkpoint import check_output_file, is_stream_path, output_file
    from dreamgym_core.errors import ConfigError

    real = tmp_path / "real.jsonl"
    link = tmp_path / "link.jsonl"
    link.symlink_to(real)
    assert output_file(link) == real.resolve() and output_file(real) == real
    assert check_output_file(link, "--predictions") == real.resolve()
    assert is_stream_path("/dev/stdout") and is_stream_path("/proc/self/fd/1") and not is_stream_path(real)
    # /dev/fd/1 rather than /dev/stdout: code that still replaced it could not (the fd directory takes no new file)
    with pytest.raises(ConfigError, match=r"^--trajectories /dev/fd/1: a device or stream; --trajectories writes a file"):
        check_output_file(__import__("pathlib").Path("/dev/fd/1"), "--trajectories")


def test_collect_refuses_a_stream_before_playing(tmp_path):
    from click.testing import CliRunner

    from dreamgym_core.cli import cli

    # /dev/fd/1, not /dev/stdout: the code before replaced /dev/stdout (as root) with the records
    result = CliRunner().invoke(cli, ["collect", "--env", "twx", "--transitions", "3", "--out", "/dev/fd/1"])
    assert result.exit_code != 0 and "--out /dev/fd/1: a device or stream" in result.output


COUNTGAME = '''
import sys
sys.path.insert(0, {tests!r})
from dreamgym_core import ComponentSpec, hookimpl
from stand_ins import CountConfig, CountDomain

import os, signal


class TermDomain(CountDomain):
    """Gets SIGTERM (a scheduler's stop) while playing its third episode."""

    calls = 0

    def collect(self, **kw):
        TermDomain.calls += 1
        if TermDomain.calls == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return super().collect(**kw)


@hookimpl
def dreamgym_register_envs():
    return [ComponentSpec(name="countgame", factory=CountDomain, config_type=CountConfig, description="A third-party env."),
            ComponentSpec(name="termgame", factory=TermDomain, config_type=CountConfig, description="Stopped mid-collect.")]
'''


@pytest.fixture(scope="module")
def countgame_site(tmp_path_factory):
    """An installed plugin with an env, and an entry point beside it whose module is missing."""
    return build_plugin_package(
        tmp_path_factory.mktemp("countgame"), "dreamgym-plugin-countgame", "dreamgym_plugin_countgame",
        COUNTGAME.format(tests=str(ROOT / "tests")),
        {"countgame": "dreamgym_plugin_countgame", "broken": "dreamgym_plugin_countgame_missing"},
    )


@pytest.mark.parametrize("blocked", ["broken", ""])
def test_collect_without_plugin_leaves_out_blocked_and_broken_plugins(countgame_site, tmp_path, blocked):
    # Without --plugin every installed plugin was loaded: a blocked one was "--plugin: plugin ...
    # is blocked" (no --plugin was given), and one that failed to import stopped the command.
    out = tmp_path / "c.jsonl"
    result = run_cli("collect", "--env", "countgame", "--transitions", "3", "--out", str(out), "-q",
                     site=countgame_site, env={"DREAMGYM_BLOCK_PLUGINS": blocked})
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"wrote 3 transitions to {out}\n" and len(out.read_text().splitlines()) == 3
    # a blocked plugin is left out without a word, as by a pipeline that does not name it
    warning = ("warning: plugin 'broken' (distribution dreamgym-plugin-countgame) failed to load: ModuleNotFoundError: "
               "No module named 'dreamgym_plugin_countgame_missing'; collect leaves it out\n")
    assert result.stderr == ("" if blocked else warning)


def test_collect_refuses_to_overwrite_its_pipeline_and_a_plugin_it_would_ignore(tmp_path):
    # --out naming the pipeline file replaced it with the records; --plugin beside --pipeline was
    # read by nothing (the pipeline's plugins were loaded) and the command exited 0
    from click.testing import CliRunner

    from dreamgym_core.cli import cli

    pipeline = tmp_path / "p.yaml"
    pipeline.write_text("plugins: []\nenv: {name: countgame}\npolicy: {name: x}\nalgo: {name: x}\nloop: {mode: real}\n")
    before = pipeline.read_bytes()
    link = tmp_path / "link.yaml"
    link.symlink_to(pipeline)
    for out in (pipeline, link):
        result = CliRunner().invoke(cli, ["collect", "--pipeline", str(pipeline), "--transitions", "2", "--out", str(out), "-q"])
        assert result.exit_code == 2 and f"--out {pipeline}: is the --pipeline file, which it would overwrite" in result.output
    assert pipeline.read_bytes() == before
    out = tmp_path / "c.jsonl"
    result = CliRunner().invoke(cli, ["collect", "--pipeline", str(pipeline), "--plugin", "countgame", "--transitions", "2", "--out", str(out)])
    assert result.exit_code == 2 and "--plugin chooses the plugins with --env; with --pipeline, the pipeline's plugins are loaded" in result.output
    assert not out.exists()


def test_collect_stopped_by_sigterm_says_so_and_leaves_no_partial_file(countgame_site, tmp_path):
    # Only `run` handled SIGTERM: collect died at once (status 143, no word) and left
    # <out>.partial, with whatever it held, behind.
    out = tmp_path / "c.jsonl"
    result = run_cli("collect", "--env", "termgame", "--transitions", "40", "--out", str(out), "-q", site=countgame_site)
    assert result.returncode == 143, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "Error: interrupted by SIGTERM"
    assert sorted(p.name for p in tmp_path.iterdir()) == []
