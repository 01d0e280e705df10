"""Review fixes of the conformance kit: each stand-in here passed the old kit (or crashed it with a
bare exception) while a run fails on it."""

from __future__ import annotations

import os
import random
import sys

import msgspec
import numpy as np
import pytest

from dreamgym_core import ComponentSpec, hookimpl
from dreamgym_core.errors import ConformanceError
from dreamgym_core.records import Observation, StepResult, Task, Transition
from dreamgym_core.rollout import play_offline
from dreamgym_core.testing import (
    BagOfWordsEncoder,
    check_algorithm,
    check_buffer,
    check_buffer_reopens,
    check_curriculum,
    check_domain,
    check_encoder,
    check_env,
    stand_in_groups,
)
from test_conformance_kit import GoodBuffer

TASK = Task(id="t0", instruction="find the coin", domain="check")


class _Cfg(msgspec.Struct):
    pass


# --- stand-ins that pass the kit (GoodBuffer: the kit tests' own) ---


class FileBuffer(GoodBuffer):
    """Keeps its records in ``path/records.json``; with a persisted position and rollback."""

    def __init__(self, path) -> None:
        super().__init__()
        self.file = os.path.join(path, "records.json")
        os.makedirs(path, exist_ok=True)
        if os.path.exists(self.file):
            with open(self.file, "rb") as fh:
                self.items = msgspec.json.decode(fh.read(), type=list[Transition])

    @property
    def position(self):
        return len(self.items)

    def rollback(self, *, to):
        dropped = len(self.items) - to
        del self.items[to:]
        return dropped

    def flush(self):
        with open(self.file, "wb") as fh:
            fh.write(msgspec.json.encode(self.items))


class GoodEnv:
    def __init__(self) -> None:
        self.closed = False

    def reset(self, *, task, seed=None):
        self.rng, self.n = random.Random(seed), 0
        return Observation(text=f"start {self.rng.random()}", admissible_actions=["a", "b"])

    def step(self, *, action):
        self.n += 1
        done = self.n >= 2
        return StepResult(observation=Observation(text=f"s{self.n} {self.rng.random()}", admissible_actions=["a"]),
                          reward=float(done), done=done, success=done)

    def close(self):
        self.closed = True


class GoodDomain:
    name = "splits"
    splits = {"train": ["a", "b"], "valid": ["c"], "test": ["d"]}

    def tasks(self, *, split):
        return [Task(id=i, instruction=f"task {i}", domain="splits", split=split) for i in self.splits[split]]

    def make_env(self):
        return GoodEnv()

    def collect(self, *, tasks, policy, episodes, seed):
        pick = lambda observation: observation.admissible_actions[0]  # noqa: E731
        return [play_offline(self.make_env(), tasks[i % len(tasks)], f"{policy}-{i}", pick) for i in range(episodes)]

    def annotate(self, *, transition):
        return f"{transition.action} was the first action listed."


class GoodAlgo:
    def __init__(self) -> None:
        self.w = np.zeros(4)
        self.acts: list = []

    def act(self, *, prompts, greedy=False, temperature=None, evaluation=False):
        self.acts.append((greedy, temperature))
        return ["<action>go north</action>" for _ in prompts]

    def update(self, *, groups):
        self.w = self.w + 1.0
        return {"loss": 0.1}

    def save(self, *, path):
        with open(path, "wb") as fh:
            np.save(fh, self.w)

    def load(self, *, path):
        with open(path, "rb") as fh:
            self.w = np.load(fh)


TASKS = [Task(id=f"check-{i}", instruction=f"find the coin number {i}", domain="check") for i in range(8)]  # as dreamgym check


class SeededCurriculum:
    """Draws from a numpy stream it keeps in its state, and counts what it observed."""

    def __init__(self) -> None:
        self.rng = np.random.default_rng(0)
        self.observed = 0

    def next_tasks(self, *, n):
        return [TASKS[i] for i in self.rng.choice(len(TASKS), size=n, replace=False)]

    def observe(self, *, outcomes):
        self.observed += 1

    def state_dict(self):
        return {"rng": self.rng.bit_generator.state, "observed": self.observed}

    def load_state_dict(self, state):
        self.rng.bit_generator.state = state["rng"]
        self.observed = state["observed"]


# --- 1. collected steps as data.path reads them; the outcome reward of a step ---


class ShapedEnv(GoodEnv):
    def step(self, *, action):
        return msgspec.structs.replace(super().step(action=action), reward=0.5)


class ShapedDomain(GoodDomain):
    def make_env(self):
        return ShapedEnv()


class ShapedLogDomain(GoodDomain):
    """Its env is right, but it builds its transitions from a log with a shaped reward."""

    def collect(self, **kw):
        return [msgspec.structs.replace(tr, transitions=[msgspec.structs.replace(t, reward=0.5) for t in tr.transitions])
                for tr in super().collect(**kw)]


class EmptyNextStateDomain(GoodDomain):
    def collect(self, **kw):
        return [msgspec.structs.replace(tr, transitions=[msgspec.structs.replace(t, next_state=" ") for t in tr.transitions])
                for tr in super().collect(**kw)]


class NoInstruction(GoodDomain):
    def collect(self, **kw):
        return [msgspec.structs.replace(tr, transitions=[msgspec.structs.replace(t, instruction="") for t in tr.transitions])
                for tr in super().collect(**kw)]


def test_a_good_domain_passes():
    check_domain(GoodDomain())


def test_check_env_requires_the_outcome_reward_of_every_step():
    with pytest.raises(ConformanceError, match=r"^ShapedEnv: step\(\) gave reward 0\.5 on a step with done=False, success=False; expected 0\.0: "
                                               r"a step's reward is the outcome reward"):
        check_env(ShapedEnv(), TASK)


def test_check_domain_refuses_an_env_with_a_shaped_reward():
    with pytest.raises(ConformanceError, match=r"^ShapedEnv: step\(\) gave reward 0\.5"):
        check_domain(ShapedDomain())


@pytest.mark.parametrize("broken, message", [
    (ShapedLogDomain, r"collect\(policy='expert'\) gave step 0 of episode 'expert-0', which has reward 0\.5, but the outcome reward is 1\.0 "
                      r"on a success's final step and 0\.0 elsewhere: data\.path refuses such a row"),
    (EmptyNextStateDomain, r"collect\(policy='expert'\) gave step 0 of episode 'expert-0', which has an empty next_state"),
    (NoInstruction, r"collect\(policy='expert'\) gave step 0 of episode 'expert-0' with instruction '', expected the task's 'task a'"),
])
def test_check_domain_requires_collected_steps_that_a_run_reads_as_offline_data(broken, message):
    with pytest.raises(ConformanceError, match=rf"^{broken.__name__}: {message}"):
        check_domain(broken())


# --- 2. act as every run calls it ---


class NoTemperature(GoodAlgo):
    def act(self, *, prompts, greedy=False):  # the protocol's temperature left out
        return ["<action>go north</action>" for _ in prompts]


def test_check_algorithm_calls_act_with_the_temperature_a_run_passes():
    algo = GoodAlgo()
    check_algorithm(algo, stand_in_groups(), lambda: algo.w.copy())
    assert algo.acts == [(True, None), (False, 1.0)]  # Runner.act_fn: greedy=temperature <= 0, temperature None when greedy


def test_check_algorithm_fails_an_act_without_temperature():
    algo = NoTemperature()
    with pytest.raises(ConformanceError, match=r"^NoTemperature: act\(prompts=\.\.\., greedy=True, temperature=None\), as a run calls it, "
                                               r"raised TypeError: .*temperature"):
        check_algorithm(algo, stand_in_groups(), lambda: algo.w.copy())


# --- 3. retrieve gives min(k, size) per query; one empty list per query on an empty buffer ---


class TopOneOnly(GoodBuffer):
    def retrieve(self, *, queries, k):
        return [self._ranked(q)[:1] for q in queries]


class EmptyIsOneList(GoodBuffer):
    def retrieve(self, *, queries, k):
        if not self.items:
            return [[]]
        return super().retrieve(queries=queries, k=k)


def test_a_good_buffer_passes():
    check_buffer(GoodBuffer)


@pytest.mark.parametrize("broken, message", [
    (TopOneOnly, r"retrieve\(k=4\) on 24 records returned 1 for one query, expected 4: the k nearest stored transitions"),
    (EmptyIsOneList, r"retrieve\(\) of 2 queries returned 1 lists, expected one list per query \(on an empty buffer \[\[\], \[\]\]\), got \[\[\]\]"),
])
def test_check_buffer_requires_the_k_nearest_per_query(broken, message):
    with pytest.raises(ConformanceError, match=rf"^{broken.__name__}: {message}"):
        check_buffer(broken)


# --- 4. dreamgym check builds a buffer with path=None too ---


class DiskOnlyBuffer(FileBuffer):
    """Keeps its records under its path; no in-memory mode (os.path.join(None) raises)."""

    def __init__(self, config, *, encoder, path):
        super().__init__(path)


class EitherBuffer(FileBuffer):
    paths: list = []

    def __init__(self, config, *, encoder, path):
        type(self).paths.append(path)
        if path is None:
            GoodBuffer.__init__(self)
            self.file = None
        else:
            super().__init__(path)

    def flush(self):
        if self.file is not None:
            super().flush()


def test_dreamgym_check_builds_an_in_memory_buffer_with_path_none(checked_plugin, monkeypatch):
    from dreamgym_core import conformance

    class Buffers:
        @hookimpl
        def dreamgym_register_buffers(self):
            return [ComponentSpec(name="disk", factory=DiskOnlyBuffer, config_type=_Cfg, description="needs a path"),
                    ComponentSpec(name="either", factory=EitherBuffer, config_type=_Cfg, description="path or memory")]

    checked_plugin(Buffers(), "bufs")
    monkeypatch.setattr(EitherBuffer, "paths", [])
    lines = list(conformance.check_plugin("bufs"))
    assert lines[0].startswith("FAIL buffer:disk: buffer 'disk': factory(config, encoder=..., path=None) raised TypeError: ")
    assert "path=None asks for an in-memory buffer" in lines[0]
    assert lines[1:] == ["ok   buffer:either", "1 of 2 component(s) of plugin 'bufs' failed"]
    assert None in EitherBuffer.paths and any(p is not None for p in EitherBuffer.paths)


# --- 5. retrieval on a reopened buffer ---


class RecordsOnlyReopened(FileBuffer):
    """Reloads its records, but not the index retrieve searches (built by add())."""

    def __init__(self, path):
        super().__init__(path)
        self.indexed: list = []

    def add(self, *, transitions):
        n = super().add(transitions=transitions)
        self.indexed = list(self.items)
        return n

    def rollback(self, *, to):
        n = super().rollback(to=to)
        self.indexed = list(self.items)
        return n

    def retrieve(self, *, queries, k):
        saved, self.items = self.items, self.indexed
        try:
            return super().retrieve(queries=queries, k=k)
        finally:
            self.items = saved


def test_check_buffer_reopens_passes_a_buffer_kept_at_its_path(tmp_path):
    counter = iter(range(100))
    check_buffer(lambda: FileBuffer(tmp_path / str(next(counter))))
    check_buffer_reopens(lambda: FileBuffer(tmp_path / "reopened"))


def test_check_buffer_reopens_retrieves_from_the_reopened_buffer(tmp_path):
    counter = iter(range(100))
    check_buffer(lambda: RecordsOnlyReopened(tmp_path / str(next(counter))))  # it passes within one open
    with pytest.raises(ConformanceError, match=r"^RecordsOnlyReopened: retrieve\(\) of the reopened buffer returned no neighbours for a stored query"):
        check_buffer_reopens(lambda: RecordsOnlyReopened(tmp_path / "reopened"))


# --- 6. position: an int, kept across a reopen, and rollback of the reopened buffer ---


class SessionPosition(FileBuffer):
    """Its position counts this session's adds: 0 again after a reopen."""

    def __init__(self, path):
        super().__init__(path)
        self.base = len(self.items)

    @property
    def position(self):
        return len(self.items) - self.base

    def rollback(self, *, to):
        return super().rollback(to=self.base + to)


class StrPosition(FileBuffer):
    @property
    def position(self):
        return f"seg-0:{len(self.items)}"

    def rollback(self, *, to):
        return super().rollback(to=int(to.split(":")[1]))


class ForgetsRollbackOnReopen(FileBuffer):
    """Its position persists, but a reopened buffer's rollback forgets nothing."""

    def __init__(self, path):
        super().__init__(path)
        self.reopened = bool(self.items)

    def rollback(self, *, to):
        return 0 if self.reopened else super().rollback(to=to)


def test_check_buffer_requires_an_int_position(tmp_path):
    counter = iter(range(100))
    with pytest.raises(ConformanceError, match=r"^StrPosition: position is 'seg-0:24' \(str\), expected an int >= 0"):
        check_buffer(lambda: StrPosition(tmp_path / str(next(counter))))


@pytest.mark.parametrize("broken, message", [
    (SessionPosition, r"position of the reopened buffer is 0, but 6 before close\(\)"),
    (ForgetsRollbackOnReopen, r"rollback\(\) of the reopened buffer after adding 2 records gave dropped=0, len=8"),
])
def test_check_buffer_reopens_rolls_the_reopened_buffer_back_to_its_position(tmp_path, broken, message):
    counter = iter(range(100))
    check_buffer(lambda: broken(tmp_path / str(next(counter))))  # it passes within one open
    with pytest.raises(ConformanceError, match=rf"^{broken.__name__}: {message}"):
        check_buffer_reopens(lambda: broken(tmp_path / "reopened"))


# --- 7. several draws after a curriculum's restore ---


class ShuffledEpochs:
    """Keeps its queue in its state, but not its random stream: the next epoch differs."""

    def __init__(self, seed=0):
        self.rng, self.queue = np.random.default_rng(seed), []

    def next_tasks(self, *, n):
        while len(self.queue) < n:
            self.queue += [TASKS[i].id for i in self.rng.permutation(len(TASKS))]
        ids, self.queue = self.queue[:n], self.queue[n:]
        return [next(t for t in TASKS if t.id == i) for i in ids]

    def observe(self, *, outcomes):
        pass

    def state_dict(self):
        return {"queue": list(self.queue)}

    def load_state_dict(self, state):
        self.queue = list(state["queue"])


def test_check_curriculum_compares_many_draws_observed_alike():
    made: list = []

    def build():
        made.append(SeededCurriculum())
        return made[-1]

    check_curriculum(build(), rebuild=build)
    original, clone = made
    assert original.observed == clone.observed == 7  # once before the state_dict, then after each of 6 draws


def test_check_curriculum_fails_a_curriculum_that_forgets_its_random_stream():
    with pytest.raises(ConformanceError, match=r"^ShuffledEpochs: restored curriculum chose .*, original chose .* \(draw 2 of 6 after the restore\)"):
        check_curriculum(ShuffledEpochs(), rebuild=ShuffledEpochs)


# --- 8. contract breaks are ConformanceErrors naming the component ---


class TextObservation(GoodEnv):
    def step(self, *, action):
        r = super().step(action=action)
        return msgspec.structs.replace(r, observation=r.observation.text)


class NoId:
    dim = 8

    def encode(self, *, texts):
        return BagOfWordsEncoder(8).encode(texts=texts)


class NoDim:
    id = "x"

    def encode(self, *, texts):
        return BagOfWordsEncoder(8).encode(texts=texts)


def test_check_env_names_a_step_whose_observation_is_not_an_observation():
    with pytest.raises(ConformanceError, match=r"^TextObservation: step\(\) returned a StepResult whose observation is str, expected an Observation"):
        check_env(TextObservation(), TASK)


@pytest.mark.parametrize("broken, message", [
    (NoId, r"id must be a non-empty str naming model and version .*, got None"),
    (NoDim, r"dim must be a positive int .*, got None"),
])
def test_check_encoder_names_a_missing_id_or_dim(broken, message):
    with pytest.raises(ConformanceError, match=rf"^{broken.__name__}: {message}"):
        check_encoder(broken())


# --- 9. a component that raises SystemExit fails, and dreamgym check goes on ---


class NotEmpty(GoodBuffer):
    def __len__(self):
        return 1


def test_dreamgym_check_reports_a_system_exit_as_a_failure_and_goes_on(checked_plugin):
    from click.testing import CliRunner

    from dreamgym_core.cli import cli

    def exits(config, **kwargs):
        sys.exit(0)

    class Buffers:
        @hookimpl
        def dreamgym_register_buffers(self):
            return [ComponentSpec(name="exits", factory=exits, config_type=_Cfg, description="calls sys.exit(0)"),
                    ComponentSpec(name="keeps-nothing", factory=lambda config, **kw: GoodBuffer(), config_type=_Cfg, description=""),
                    ComponentSpec(name="not-empty", factory=lambda config, **kw: NotEmpty(), config_type=_Cfg, description="")]

    checked_plugin(Buffers(), "sysexit")
    result = CliRunner().invoke(cli, ["check", "sysexit"])
    lines = result.output.splitlines()
    assert lines[0].startswith("FAIL buffer:exits: SystemExit(0): it called sys.exit()"), result.output
    assert lines[1].startswith("FAIL buffer:keeps-nothing: GoodBuffer: reopened at its path, the buffer holds 0 of the 6 records")
    assert lines[2].startswith("FAIL buffer:not-empty: NotEmpty: a new buffer is not empty")
    assert lines[3:] == ["3 of 3 component(s) of plugin 'sysexit' failed"]
    assert result.exit_code == 1
