"""The conformance kit fails deliberately broken stand-in components (and passes good ones)."""

from __future__ import annotations

import json
import random
import zlib

import msgspec
import numpy as np
import pytest

from dreamgym_core.errors import ConformanceError
from dreamgym_core.records import Observation, StepResult, Task
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
    check_language_model,
)

# --- buffers ---

_encoder = BagOfWordsEncoder()


class GoodBuffer:
    def __init__(self) -> None:
        self.items: list = []
        self.closed = False

    def add(self, *, transitions):
        new = [t for t in transitions if t not in self.items]
        self.items.extend(new)
        return len(new)

    def _ranked(self, query):
        if not self.items:
            return []
        stored = _encoder.encode(texts=[f"{t.state} {t.action}" for t in self.items])
        asked = _encoder.encode(texts=[f"{query[0]} {query[1]}"])[0]
        return [self.items[i] for i in np.argsort(-(stored @ asked), kind="stable")]

    def retrieve(self, *, queries, k):
        return [self._ranked(q)[:k] for q in queries]

    def sample(self, *, n, seed=None):
        return random.Random(seed).sample(self.items, min(n, len(self.items)))

    def __len__(self):
        return len(self.items)

    def flush(self):
        pass

    def close(self):
        self.closed = True


class AllRecords(GoodBuffer):
    def retrieve(self, *, queries, k):
        return [self._ranked(q) for q in queries]


class PadsWithRepeats(GoodBuffer):
    def retrieve(self, *, queries, k):
        return [(self._ranked(q)[:1] * k)[:k] for q in queries]


class OneListForAllQueries(GoodBuffer):
    def retrieve(self, *, queries, k):
        return [self._ranked(queries[0])[:k]]


class PadsBeyondSize(GoodBuffer):
    """Returns k records even when fewer are stored, by repeating the ranking."""

    def retrieve(self, *, queries, k):
        return [(self._ranked(q) * (k // max(len(self.items), 1) + 1))[:k] for q in queries]


class SampleIgnoresSeed(GoodBuffer):
    def sample(self, *, n, seed=None):
        return random.sample(self.items, n)


class SampleInvents(GoodBuffer):
    def sample(self, *, n, seed=None):
        return [msgspec.structs.replace(self.items[0], state=f"made up {i}") for i in range(n)]


def test_a_good_buffer_passes():
    check_buffer(GoodBuffer)


@pytest.mark.parametrize(
    "broken, message",
    [
        (AllRecords, r"retrieve\(k=4\) on 24 records returned 24 for one query, expected at most 4"),
        (PadsWithRepeats, r"retrieve\(k=4\) returned the same record more than once for one query"),
        (OneListForAllQueries, r"retrieve\(\) of 2 queries returned 1 lists, expected one list per query"),
        (PadsBeyondSize, r"retrieve\(k=30\) on 24 records returned 30 for one query, expected at most 24"),
        (SampleIgnoresSeed, r"sample\(n=5, seed=0\) twice gave different records"),
        (SampleInvents, r"sample\(\) returned a record that was never added"),
    ],
)
def test_check_buffer_fails_a_broken_buffer(broken, message):
    with pytest.raises(ConformanceError, match=rf"{broken.__name__}: {message}"):
        check_buffer(broken)


class CloseOnceBuffer(GoodBuffer):
    def close(self):
        if self.closed:
            raise RuntimeError("closed twice")
        self.closed = True


def test_check_buffer_turns_a_raising_close_into_a_conformance_error():
    with pytest.raises(ConformanceError, match=r"CloseOnceBuffer: a second close\(\) \(close must be idempotent\) raised RuntimeError: closed twice"):
        check_buffer(CloseOnceBuffer)


def test_check_buffer_reopens_fails_a_buffer_that_keeps_nothing_at_its_path():
    # it passes check_buffer, but a --resume would reopen RUN/buffer empty
    check_buffer(GoodBuffer)
    with pytest.raises(ConformanceError, match=r"GoodBuffer: reopened at its path, the buffer holds 0 of the 6 records it stored"):
        check_buffer_reopens(GoodBuffer)


def test_check_buffer_reopens_passes_a_buffer_kept_at_its_path():
    shelf: list = []

    class Kept(GoodBuffer):
        def __init__(self) -> None:
            super().__init__()
            self.items = shelf

    check_buffer_reopens(Kept)


# --- envs ---

TASK = Task(id="t0", instruction="find the coin", domain="check")


class GoodEnv:
    def __init__(self) -> None:
        self.closed = False

    def reset(self, *, task, seed=None):
        self.rng, self.n = random.Random(seed), 0
        return Observation(text=f"start {self.rng.random()}", admissible_actions=["a", "b"])

    def step(self, *, action):
        self.n += 1
        done = self.n >= 2
        return StepResult(observation=Observation(text=f"s{self.n} {self.rng.random()}", admissible_actions=["a"]), reward=float(done), done=done, success=done)

    def close(self):
        self.closed = True


class CloseOnceEnv(GoodEnv):
    def close(self):
        if self.closed:
            raise RuntimeError("already closed")
        self.closed = True


class RewardNone(GoodEnv):
    def step(self, *, action):
        return msgspec.structs.replace(super().step(action=action), reward=None)


class InfoNotJson(GoodEnv):
    def step(self, *, action):
        return msgspec.structs.replace(super().step(action=action), info={"obj": object()})


class RaisesOnUnlisted(GoodEnv):
    def step(self, *, action):
        if action not in ("a", "b"):
            raise KeyError(action)
        return super().step(action=action)


class SeedRequired(GoodEnv):
    def reset(self, *, task, seed):
        return super().reset(task=task, seed=seed)


class TimesItsSteps(GoodEnv):
    """Replays exactly, with a wall-clock timing in ``info``, which no run reads."""

    def step(self, *, action):
        return msgspec.structs.replace(super().step(action=action), info={"elapsed_s": random.random()})


class TruncatesOnce(GoodEnv):
    """Marks its first play's first step as cut by its step cap, and no other play's."""

    plays = 0

    def reset(self, *, task, seed=None):
        self.plays += 1
        return super().reset(task=task, seed=seed)

    def step(self, *, action):
        result = super().step(action=action)
        return msgspec.structs.replace(result, info={"truncated": self.plays == 1 and self.n == 1})


class Unseeded(GoodEnv):
    def reset(self, *, task, seed=None):
        return super().reset(task=task, seed=None)


def test_a_good_env_passes():
    check_env(GoodEnv(), TASK)


def test_check_env_replays_what_a_run_reads_not_timings_in_info():
    # failed: the whole step results were compared, info's timings included
    check_env(TimesItsSteps(), TASK)


@pytest.mark.parametrize(
    "broken, message",
    [
        (CloseOnceEnv, r"a second close\(\) \(close must be idempotent\) raised RuntimeError: already closed"),
        (RewardNone, r"step\(\) reward None is not a finite number"),
        (InfoNotJson, r"JSON-encoding the observations and step results raised TypeError"),
        (SeedRequired, r"reset\(task=\.\.\.\) without a seed raised TypeError"),
        (RaisesOnUnlisted, r"step\(action='xyzzy the unlisted action'\), an action no state lists raised KeyError"),
        (TruncatesOnce, r"same task and seed gave a different info\['truncated'\] at step 1: True, then False"),
        (Unseeded, r"same task and seed gave a different observation text at reset\(\): 'start 0\..*', then 'start 0\..*'"),
    ],
)
def test_check_env_fails_a_broken_env(broken, message):
    with pytest.raises(ConformanceError, match=rf"{broken.__name__}: {message}"):
        check_env(broken(), TASK)


class CountsCloses(RewardNone):
    """Fails the check (a None reward), and counts its close() calls."""

    def __init__(self) -> None:
        super().__init__()
        self.closes = 0

    def close(self):
        self.closes += 1


def test_a_failed_env_check_closes_the_env_once():
    # the env was closed only at the end of a passing check: a failing one left its JVM running
    env = CountsCloses()
    with pytest.raises(ConformanceError, match=r"CountsCloses: step\(\) reward None is not a finite number"):
        check_env(env, TASK)
    assert env.closes == 1


class CloseRaises(RewardNone):
    def close(self):
        raise RuntimeError("simulator already gone")


def test_a_close_that_raises_after_a_failed_env_check_does_not_hide_the_failure(caplog):
    with pytest.raises(ConformanceError, match=r"CloseRaises: step\(\) reward None is not a finite number"):
        check_env(CloseRaises(), TASK)
    assert "CloseRaises: close() after the failed check raised too" in caplog.text
    assert "simulator already gone" in caplog.text


class Closeless:
    """A domain without the optional close()."""


def test_closed_on_failure_is_the_one_close_after_a_failed_check(caplog):
    # check_env and dreamgym check's domains each had their own copy of this close-and-log code
    from dreamgym_core import testing
    from dreamgym_core.testing import closed_on_failure

    env = CountsCloses()
    with closed_on_failure(env):  # a passing block leaves it open: its check closes it
        pass
    assert env.closes == 0
    with pytest.raises(KeyError, match="the check's failure"), closed_on_failure(env):
        raise KeyError("the check's failure")
    assert env.closes == 1
    with pytest.raises(KeyError, match="the check's failure"), closed_on_failure(Closeless()):  # no close(): nothing to close
        raise KeyError("the check's failure")
    with pytest.raises(KeyError, match="the check's failure"), closed_on_failure(CloseRaises()):
        raise KeyError("the check's failure")
    assert [r.name for r in caplog.records] == [testing.__name__]
    assert caplog.records[0].getMessage() == "CloseRaises: close() after the failed check raised too"


# --- curricula ---

CURRICULUM_TASKS = [Task(id=f"c{i}", instruction=f"task {i}", domain="check") for i in range(8)]


class GoodCurriculum:
    def __init__(self) -> None:
        self.draws = 0

    def next_tasks(self, *, n):
        rng = np.random.default_rng([0, self.draws])
        self.draws += 1
        return [CURRICULUM_TASKS[i] for i in rng.choice(len(CURRICULUM_TASKS), size=n, replace=False)]

    def observe(self, *, outcomes):
        pass

    def state_dict(self):
        return {"draws": self.draws}

    def load_state_dict(self, state):
        self.draws = state["draws"]


class NumpyState(GoodCurriculum):
    def state_dict(self):
        return {"draws": np.int64(self.draws)}


class LoadNeedsAKey(GoodCurriculum):
    def load_state_dict(self, state):
        self.draws = state["missing"]


class TextMetrics(GoodCurriculum):
    def metrics(self):
        return {"curriculum/last": "a"}


class NoneMetrics(GoodCurriculum):
    def metrics(self):
        return None


class StepMetrics(GoodCurriculum):
    def metrics(self):
        return {"step": float(self.draws)}


class NaNDiagnostic(GoodCurriculum):
    def metrics(self):
        return {"curriculum/mean_success": float("nan")}  # 0/0 before any outcome: a run drops and counts it


@pytest.mark.parametrize("curriculum_type", [GoodCurriculum, NaNDiagnostic])
def test_a_good_curriculum_passes(curriculum_type):
    check_curriculum(curriculum_type(), rebuild=curriculum_type)


@pytest.mark.parametrize(
    "broken, message",
    [
        (NumpyState, r"JSON-encoding state_dict\(\) raised TypeError"),
        (LoadNeedsAKey, r"rebuild\(\) and load_state_dict\(\) of the JSON state raised KeyError"),
        (TextMetrics, r"metrics\(\) returned metric 'curriculum/last' = 'a', expected a number by str name"),
        (NoneMetrics, r"metrics\(\) returned NoneType, expected a dict of metrics"),
        (StepMetrics, r"metrics\(\) returned a metric named 'step', which names the iteration of every metrics row"),
    ],
)
def test_check_curriculum_fails_a_broken_curriculum(broken, message):
    with pytest.raises(ConformanceError, match=rf"{broken.__name__}: {message}"):
        check_curriculum(broken(), rebuild=broken)


# --- algorithms ---


class GoodAlgo:
    def __init__(self) -> None:
        self.weights = np.zeros(4)

    def act(self, *, prompts, greedy=False, temperature=None, evaluation=False):
        return ["<action>go north</action>" for _ in prompts]

    def update(self, *, groups):
        self.weights = self.weights + 1
        return {"loss": 0.5}

    def save(self, *, path):
        with open(path, "wb") as f:
            np.save(f, self.weights)

    def load(self, *, path):
        self.weights = np.load(path)


class NaNParameters(GoodAlgo):
    def update(self, *, groups):
        self.weights = self.weights * np.nan
        return {"loss": 0.5}


class DropsAPrompt(GoodAlgo):
    def act(self, *, prompts, **_):
        return super().act(prompts=prompts[1:])


class CountsItsSteps(GoodAlgo):
    def update(self, *, groups):
        return {**super().update(groups=groups), "step": 1.0}


class NaNClipFraction(GoodAlgo):
    def update(self, *, groups):
        return {**super().update(groups=groups), "clip_frac": float("nan")}  # 0/0: no token clipped or kept


class NaNLoss(GoodAlgo):
    def update(self, *, groups):
        return {**super().update(groups=groups), "loss": float("nan")}


def test_check_algorithm_reads_metrics_as_a_run_does():
    # a run refuses a metric named "step" (it passed) and drops a non-finite diagnostic (it failed)
    algo = NaNClipFraction()
    assert check_algorithm(algo, [[]], lambda: algo.weights.copy()) == {"loss": 0.5, "errors/nonfinite_metrics": 1.0}
    for broken, message in [
        (CountsItsSteps, r"update\(\) returned a metric named 'step', which names the iteration of every metrics row"),
        (NaNLoss, r"update\(\) returned metric 'loss' = nan: training diverged"),
    ]:
        algo = broken()
        with pytest.raises(ConformanceError, match=rf"^{broken.__name__}: {message}.*\(see docs/conformance.md\)$"):
            check_algorithm(algo, [[]], lambda: algo.weights.copy())


@pytest.mark.parametrize("algo_type", [GoodAlgo, NaNParameters])
def test_check_algorithm_requires_finite_updated_parameters(algo_type):
    algo = algo_type()
    if algo_type is GoodAlgo:
        assert check_algorithm(algo, [[]], lambda: algo.weights.copy()) == {"loss": 0.5}
        return
    with pytest.raises(ConformanceError, match=r"NaNParameters: update\(\) left non-finite \(NaN or inf\) parameters"):
        check_algorithm(algo, [[]], lambda: algo.weights.copy())


def test_check_algorithm_requires_one_str_per_prompt_from_act():
    from dreamgym_core.testing import stand_in_groups

    with pytest.raises(ConformanceError, match=r"DropsAPrompt: act\(greedy=True\) returned .*expected a list of 2 str"):
        check_algorithm(DropsAPrompt(), stand_in_groups(), lambda: np.zeros(1))


def test_stand_in_groups_give_an_update_signal():
    from dreamgym_core.testing import stand_in_groups

    groups = stand_in_groups()
    assert [len(g) for g in groups] == [4, 4]
    for group in groups:
        assert sorted(t.outcome_reward for t in group) == [0.0, 0.0, 1.0, 1.0]  # GRPO advantages are not all 0
        assert all(len(t.decisions) == len(t.transitions) == 2 for t in group)
        assert group[0].decisions[0].text == "<action>go north</action>" and "find the apple" in groups[0][0].decisions[0].prompt


class NoSaveAlgo:
    """Acts and updates, but has no save/load: every run refuses to build it."""

    def __init__(self) -> None:
        self.inner = GoodAlgo()

    def act(self, **kwargs):
        return self.inner.act(**kwargs)

    def update(self, **kwargs):
        return self.inner.update(**kwargs)


def test_check_algorithm_requires_save_and_load():
    algo = NoSaveAlgo()
    with pytest.raises(ConformanceError, match=r"^NoSaveAlgo: has no save, load \(a run calls act, update, save and load\)"):
        check_algorithm(algo, [[]], lambda: algo.inner.weights.copy())


class Float32Metrics(GoodAlgo):
    """Reports its metrics as numpy float32 (np.mean of a float32 array), which a run takes."""

    def update(self, *, groups):
        return {key: np.float32(value) for key, value in super().update(groups=groups).items()}


def test_check_algorithm_accepts_numpy_metrics_as_a_run_does():
    from dreamgym_core.contracts import checked_metrics

    algo = Float32Metrics()
    assert check_algorithm(algo, [[]], lambda: algo.weights.copy()) == {"loss": 0.5}
    assert checked_metrics({"loss": np.float32(0.5)}, "algo", "update()") == {"loss": 0.5}


class SavesBesideItsPath(GoodAlgo):
    """np.save(path) writes path.npy: a checkpoint without ``path`` that resume cannot find."""

    def save(self, *, path):
        np.save(path, self.weights)

    def load(self, *, path):
        self.weights = np.load(f"{path}.npy")


class LoadKeepsWeights(GoodAlgo):
    """Saves, but load() leaves the parameters as they are: a resumed run or dreamgym eval
    would play the policy of the last update() instead of the checkpoint's."""

    def load(self, *, path):
        pass


def test_check_algorithm_requires_load_to_restore_what_save_saw():
    algo = GoodAlgo()
    check_algorithm(algo, [[]], lambda: algo.weights.copy())
    assert (algo.weights == 1).all()  # back to the weights save() saw, after the second update
    broken = LoadKeepsWeights()
    with pytest.raises(ConformanceError, match=r"LoadKeepsWeights: load\(\) did not restore the parameters save\(\) saw"):
        check_algorithm(broken, [[]], lambda: broken.weights.copy())
    beside = SavesBesideItsPath()
    with pytest.raises(ConformanceError, match=r"SavesBesideItsPath: save\(path='.*algo'\) wrote nothing at that path"):
        check_algorithm(beside, [[]], lambda: beside.weights.copy())


class LoadsFromMemory(GoodAlgo):
    """Writes its checkpoint, but load() restores the copy save() kept in memory: it passes on
    the instance that saved, while a resumed run (a new process) keeps its fresh weights."""

    def save(self, *, path):
        super().save(path=path)
        self.kept = self.weights.copy()

    def load(self, *, path):
        self.weights = getattr(self, "kept", self.weights)


def _fresh(algo_type):
    """``check_algorithm``'s ``rebuild``: a new algorithm and the reader of its parameters."""
    algo = algo_type()
    return algo, lambda: algo.weights.copy()


def test_check_algorithm_loads_what_save_wrote_into_a_fresh_algorithm():
    # a load() from memory passed: the check loaded into the instance that had saved
    algo, parameters = _fresh(GoodAlgo)
    check_algorithm(algo, [[]], parameters, rebuild=lambda: _fresh(GoodAlgo))
    algo, parameters = _fresh(LoadsFromMemory)
    with pytest.raises(ConformanceError, match=r"^LoadsFromMemory: load\(\) into a fresh algorithm did not restore the parameters save\(\) saw"):
        check_algorithm(algo, [[]], parameters, rebuild=lambda: _fresh(LoadsFromMemory))


class _PolicyAlgo:
    """Acts, and updates and saves its policy's weights; load() restores them from its path."""

    def __init__(self, config, *, policy, seed):
        self.weights = list(policy.model.parameters())

    def act(self, *, prompts, greedy=False, temperature=None, evaluation=False):
        return ["<action>go north</action>" for _ in prompts]

    def update(self, *, groups):
        import torch

        with torch.no_grad():
            for w in self.weights:
                w.add_(0.5)
        return {"loss": 0.5}

    def save(self, *, path):
        import torch

        torch.save([w.detach().clone() for w in self.weights], path)

    def load(self, *, path):
        import torch

        self._restore(torch.load(path))

    def _restore(self, saved):
        import torch

        with torch.no_grad():
            for w, value in zip(self.weights, saved):
                w.copy_(value)


class _PolicyAlgoFromMemory(_PolicyAlgo):
    """Writes its checkpoint, but load() restores the copy save() kept in memory."""

    def save(self, *, path):
        super().save(path=path)
        self.kept = [w.detach().clone() for w in self.weights]

    def load(self, *, path):
        self._restore(getattr(self, "kept", self.weights))


def test_dreamgym_check_loads_an_algorithm_checkpoint_into_a_fresh_algorithm(register_plugin, monkeypatch):
    # passed: dreamgym check loaded the checkpoint into the algorithm that had saved it
    from dreamgym_core import ComponentSpec, conformance, hookimpl
    from dreamgym_core.config import Config

    register_plugin(pytest.importorskip("dreamgym_plugin_hf"), "hf")  # the hf-tiny stand-in policy

    class Algos:
        @hookimpl
        def dreamgym_register_algos(self):
            return [
                ComponentSpec(name="from-path", factory=_PolicyAlgo, config_type=Config, description="loads its path"),
                ComponentSpec(name="from-memory", factory=_PolicyAlgoFromMemory, config_type=Config, description="loads its memory"),
            ]

    plugins = register_plugin(Algos(), "algos")
    monkeypatch.setattr(conformance.Plugins, "for_names", classmethod(lambda cls, names, where="": plugins))
    lines = list(conformance.check_plugin("algos"))
    assert lines[0] == "ok   algo:from-path"
    assert lines[1].startswith("FAIL algo:from-memory: _PolicyAlgoFromMemory: load() into a fresh algorithm did not restore the parameters save() saw")
    assert lines[2:] == ["1 of 2 component(s) of plugin 'algos' failed"]


def test_check_algorithm_accepts_torch_parameters():
    torch = pytest.importorskip("torch")
    weights = torch.zeros(4, dtype=torch.bfloat16)

    class TorchAlgo(GoodAlgo):
        def update(self, *, groups):
            weights.add_(1)
            return {"loss": 0.5}

        def save(self, *, path):
            torch.save(weights.clone(), path)

        def load(self, *, path):
            weights.copy_(torch.load(path))

    check_algorithm(TorchAlgo(), [[]], lambda: weights.clone())


# --- domains ---


class GoodDomain:
    name = "splits"
    splits = {"train": ["a", "b"], "valid": ["c"], "test": ["d"]}

    def tasks(self, *, split):
        return [Task(id=i, instruction=f"task {i}", domain="splits", split=split) for i in self.splits[split]]

    def make_env(self):
        return GoodEnv()

    def collect(self, *, tasks, policy, episodes, seed):
        if policy not in ("expert", "noisy", "random"):
            raise ValueError(f"no {policy!r} policy")
        pick = lambda observation: observation.admissible_actions[0]  # noqa: E731
        return [play_offline(self.make_env(), tasks[i % len(tasks)], f"{policy}-{i}", pick) for i in range(episodes)]

    def annotate(self, *, transition):
        return f"{transition.action} was the first action listed."


class VaryingDomain(GoodDomain):
    """Every optional member, well typed."""

    def initial_observation(self, task):
        return Observation(text=f"start of {task.id}", admissible_actions=["a", "b"])

    def admissible_in(self, state):
        return ["a"]

    def describe_variation(self, task):
        return "another task number"

    def propose_variations(self, parent, *, n, rng):
        return [f"task {int(rng.integers(100))}" for _ in range(n)]

    def make_variation(self, parent, text):
        return Task(id=f"{parent.id}~syn", instruction=text, domain="splits", split="train")


class Nameless(GoodDomain):
    name = ""


class FlatCollect(GoodDomain):
    def collect(self, **kwargs):
        return [t for traj in super().collect(**kwargs) for t in traj.transitions]


class OtherTask(GoodDomain):
    def collect(self, *, tasks, policy, episodes, seed):
        return super().collect(tasks=self.tasks(split="test"), policy=policy, episodes=episodes, seed=seed)


class AnnotatesNothing(GoodDomain):
    def annotate(self, *, transition):
        return None


class AnnotatesFirstStepsOnly(GoodDomain):
    def annotate(self, *, transition):
        return None if transition.done else "a plan"


class OneEpisodePerTask(GoodDomain):
    def collect(self, *, tasks, policy, episodes, seed):
        return super().collect(tasks=tasks, policy=policy, episodes=min(episodes, len(tasks)), seed=seed)


class CollectsNaNRewards(GoodDomain):
    """Builds its transitions itself (from a log, say) with a 0/0 shaped reward."""

    def collect(self, **kwargs):
        return [msgspec.structs.replace(traj, transitions=[msgspec.structs.replace(t, reward=float("nan")) for t in traj.transitions])
                for traj in super().collect(**kwargs)]


class WorldKeyDict(GoodDomain):
    def world_key(self, task):
        return {"id": task.id}


class StartAsText(VaryingDomain):
    def initial_observation(self, task):
        return "start"


class NumberVariations(VaryingDomain):
    def propose_variations(self, parent, *, n, rng):
        return list(range(n))


class ProposesOnly(VaryingDomain):
    make_variation = None


class JudgingDomain(GoodDomain):
    def implausible(self, *, state, action, next_state):
        return ""


class CorrectsWithText(JudgingDomain):
    def correct(self, *, state, action, answer):
        return state.text


class RulesOutTheRealGame(GoodDomain):
    def implausible(self, *, state, action, next_state):
        return "nothing can change"


class JudgesUnlistedActions(GoodDomain):
    """Rules out an action the state's list leaves out (where the state lists any): never a real step."""

    def admissible_in(self, state):
        return ["a"]

    def implausible(self, *, state, action, next_state):
        return "not listed" if state.admissible_actions and action not in state.admissible_actions else ""


class RulesOutListChanges(GoodDomain):
    """Rules out any answer whose listed actions differ from the state's, where it lists any: a
    real move lists other actions, and a run passes the next state's list as admissible_in reads it."""

    def admissible_in(self, state):
        return ["a"]  # GoodEnv lists ["a"] after its first step

    def implausible(self, *, state, action, next_state):
        listed = next_state.admissible_actions
        return "the answer changed the action list" if listed and listed != state.admissible_actions else ""


class RulesOutNewListsOfTheEnv(RulesOutListChanges):
    """The same rule, without admissible_in: the real env's own list of the next state shows it."""

    admissible_in = None


class RulesOutLaterSteps(GoodDomain):
    """Rules out every answer after the first step (GoodEnv's second state reads "s1 ...")."""

    def implausible(self, *, state, action, next_state):
        return "nothing happens after the start" if state.text.startswith("s1 ") else ""


class LazyTasks(GoodDomain):
    def tasks(self, *, split):
        return (task for task in super().tasks(split=split))


class HeldOutTasksAsGenerators(GoodDomain):
    """Its held-out splits are generators, and they share a train task: a run's len() of them fails."""

    splits = {"train": ["a", "b"], "valid": ["a"], "test": ["a"]}

    def tasks(self, *, split):
        tasks = super().tasks(split=split)
        return tasks if split == "train" else iter(tasks)


class TrainValidOverlap(GoodDomain):
    splits = {"train": ["a", "b"], "valid": ["a"], "test": ["d"]}


class ValidTestOverlap(GoodDomain):
    splits = {"train": ["a", "b"], "valid": ["d"], "test": ["d"]}


class NoValid(GoodDomain):
    splits = {"train": ["a", "b"], "valid": [], "test": ["d"]}


@pytest.mark.parametrize("domain_type", [GoodDomain, NoValid, VaryingDomain, JudgingDomain, JudgesUnlistedActions])
def test_a_good_domain_passes(domain_type):
    check_domain(domain_type())


@pytest.mark.parametrize(
    "broken, message",
    [
        (TrainValidOverlap, r"train and valid splits share tasks: \['a'\]"),
        (ValidTestOverlap, r"valid and test splits share tasks: \['d'\]"),
        (Nameless, r"name must be a non-empty str"),
        (FlatCollect, r"collect\(policy='expert', episodes=2\) returned 4 Transition, expected a list of 2 Trajectory"),
        (OtherTask, r"collect\(policy='expert'\) gave a transition of task 'd', source 'offline'; expected task 'a'"),
        (AnnotatesNothing, r"annotate\(\) returned NoneType, expected str"),
        (AnnotatesFirstStepsOnly, r"annotate\(\) returned NoneType, expected str"),
        (OneEpisodePerTask, r"collect\(policy='expert', episodes=2\) returned 1 Trajectory, expected a list of 2 Trajectory"),
        (CollectsNaNRewards, r"collect\(policy='expert'\) gave step 0 of episode 'expert-0' with reward nan, expected a finite number"),
        (WorldKeyDict, r"world_key\(\) returned dict, expected str"),
        (StartAsText, r"initial_observation\(\) returned str, expected Observation"),
        (NumberVariations, r"propose_variations\(\) must return a list of str, got \[0, 1\]"),
        (ProposesOnly, r"has propose_variations but no make_variation"),
        (CorrectsWithText, r"correct\(\) returned str, expected ExperienceResult"),
        (RulesOutTheRealGame, r"implausible\(\) ruled out a real transition \('a', step 0 of episode 'expert-0'; .*\): 'nothing can change'; expected \"\""),
        # judged with lists: the next state listed nothing, so a rule on listed actions went unchecked
        (RulesOutListChanges, r"implausible\(\) ruled out a real transition \('a', step 0 of episode 'expert-0'; state listing \['a', 'b'\], "
                              r"next state listing \['a'\]\): 'the answer changed the action list'"),
        (RulesOutNewListsOfTheEnv, r"implausible\(\) ruled out a real transition \('a', step 0 of episode 'expert-0'; state listing \['a', 'b'\], "
                                   r"next state listing \['a'\]\): 'the answer changed the action list'"),
        # every real step: only the first was judged
        (RulesOutLaterSteps, r"implausible\(\) ruled out a real transition \('a', step 1 of episode 'expert-0'; .*\): 'nothing happens after the start'"),
        # the contract's list[Task]: a generator raised TypeError (all splits) or passed unread (held-out splits)
        (LazyTasks, r"tasks\(split='train'\) returned generator, expected a list of Task \(a run takes its len\(\) and reads it more than once"),
        (HeldOutTasksAsGenerators, r"tasks\(split='valid'\) returned list_iterator, expected a list of Task"),
    ],
)
def test_check_domain_fails_a_broken_domain(broken, message):
    with pytest.raises(ConformanceError, match=rf"{broken.__name__}: {message}"):
        check_domain(broken())


class NamelessGone(Nameless):
    """Fails its check (no name), and its close() raises, as one whose browser is already gone."""

    def close(self):
        raise RuntimeError("browser already gone")


def test_dreamgym_check_closes_a_failed_domain_as_check_env_closes_a_failed_env(register_plugin, monkeypatch, caplog):
    # one helper (testing.closed_on_failure) closes both, and logs a close() that fails too
    from dreamgym_core import ComponentSpec, conformance, hookimpl
    from dreamgym_core.config import Config

    class Gone:
        @hookimpl
        def dreamgym_register_envs(self):
            return [ComponentSpec(name="gone", factory=lambda config: NamelessGone(), config_type=Config, description="fails, then close raises")]

    plugins = register_plugin(Gone(), "gone")
    monkeypatch.setattr(conformance.Plugins, "for_names", classmethod(lambda cls, names, where="": plugins))
    lines = list(conformance.check_plugin("gone"))
    assert lines[0].startswith("FAIL env:gone: NamelessGone: name must be a non-empty str")
    closes = [(r.name, r.getMessage()) for r in caplog.records if "close()" in r.getMessage()]
    assert closes == [("dreamgym_core.testing", "NamelessGone: close() after the failed check raised too")]


class MakesABrokenEnv(GoodDomain):
    """Its env fails check_env; it keeps each env it made."""

    def __init__(self) -> None:
        self.made: list = []

    def make_env(self):
        self.made.append(CountsCloses())
        return self.made[-1]


def test_check_domain_closes_the_env_that_failed_its_check():
    domain = MakesABrokenEnv()
    with pytest.raises(ConformanceError, match=r"CountsCloses: step\(\) reward None is not a finite number"):
        check_domain(domain)
    assert [env.closes for env in domain.made] == [1]


# --- encoders ---


class NaNForEmptyText(BagOfWordsEncoder):
    """Deterministic, but normalises the empty text's zero row by its zero norm: NaN."""

    def encode(self, *, texts):
        out = super().encode(texts=texts)
        out[[i for i, text in enumerate(texts) if not text.split()]] = np.nan
        return out


def test_a_good_encoder_passes():
    check_encoder(BagOfWordsEncoder())


def test_check_encoder_names_the_text_it_encodes_to_nan():
    # was told "encode() is not deterministic": NaN != NaN
    with pytest.raises(ConformanceError, match=r"NaNForEmptyText: encode\(\) gave non-finite values \(NaN or inf\) for the text ''"):
        check_encoder(NaNForEmptyText())


# --- language models ---


class GoodLM:
    """A trainable stand-in: its text is a hash of the prompt, the seed and its "weights" (a
    step counter), so greedy and seeded output repeat and SFT changes what it writes."""

    model_id = "good-lm"

    def __init__(self) -> None:
        self.steps = 0

    def _text(self, prompt, n, seed):
        rng = random.Random(zlib.crc32(f"{prompt}|{seed}|{self.steps}".encode()))
        return "".join(rng.choice("abcde .") for _ in range(n))

    def _raw(self, prompts, max_new_tokens, temperature, seed):
        if temperature == 0:
            return [self._text(p, max_new_tokens, "greedy") for p in prompts]
        seed = random.random() if seed is None else seed
        return [self._text(p, max_new_tokens, f"{seed}+{i}") for i, p in enumerate(prompts)]

    def generate(self, *, prompts, max_new_tokens, temperature=1.0, stop=(), seed=None):
        texts = self._raw(prompts, max_new_tokens, temperature, seed)
        return [t[: min((t.index(s) for s in stop if s and s in t), default=len(t))] for t in texts]

    def sft(self, *, examples, epochs, lr, batch_size, on_epoch=None, on_batch=None):
        for epoch in range(1, epochs + 1):
            self.steps += 1
            if on_epoch is not None:
                on_epoch(epoch, 1.0 / epoch)
        return {"sft/loss": 0.5}

    def save(self, *, path):
        with open(path, "w") as f:
            json.dump({"steps": self.steps}, f)

    def reload(self, *, path):
        with open(path) as f:
            self.steps = json.load(f)["steps"]


class UnseededLM(GoodLM):
    def generate(self, *, prompts, max_new_tokens, temperature=1.0, stop=(), seed=None):
        return super().generate(prompts=prompts, max_new_tokens=max_new_tokens, temperature=temperature, stop=stop)


class StopKeptLM(GoodLM):
    def generate(self, *, prompts, max_new_tokens, temperature=1.0, stop=(), seed=None):
        return self._raw(prompts, max_new_tokens, temperature, seed)


class OneTextLM(GoodLM):
    def generate(self, *, prompts, max_new_tokens, temperature=1.0, stop=(), seed=None):
        return super().generate(prompts=prompts[:1], max_new_tokens=max_new_tokens, temperature=temperature, stop=stop, seed=seed)


class NoEpochReportLM(GoodLM):
    def sft(self, *, examples, epochs, lr, batch_size, on_epoch=None, on_batch=None):
        return super().sft(examples=examples, epochs=epochs, lr=lr, batch_size=batch_size)


class NanLossLM(GoodLM):
    def sft(self, *, examples, epochs, lr, batch_size, on_epoch=None, on_batch=None):
        super().sft(examples=examples, epochs=epochs, lr=lr, batch_size=batch_size, on_epoch=on_epoch)
        return {"sft/loss": float("nan")}


class StepMetricLM(GoodLM):
    def sft(self, *, examples, epochs, lr, batch_size, on_epoch=None, on_batch=None):
        return {**super().sft(examples=examples, epochs=epochs, lr=lr, batch_size=batch_size, on_epoch=on_epoch), "step": 6.0}


class ReloadKeepsWeightsLM(GoodLM):
    def reload(self, *, path):
        pass


class SilentUntilTrainedLM(StopKeptLM):
    """Writes nothing before SFT, as a from-scratch backend, and ignores stop after it."""

    def _raw(self, prompts, max_new_tokens, temperature, seed):
        return super()._raw(prompts, max_new_tokens, temperature, seed) if self.steps else [""] * len(prompts)


class EmptyIdLM(GoodLM):
    model_id = ""


class UntrainableLM(GoodLM):
    """A generator without sft (a server backend): only generation is checked."""

    sft = None


class Float32LossLM(GoodLM):
    """Reports its losses as numpy float32, as a torch trainer's ``.numpy()`` gives them."""

    def sft(self, *, examples, epochs, lr, batch_size, on_epoch=None, on_batch=None):
        report = None if on_epoch is None else lambda epoch, loss: on_epoch(epoch, np.float32(loss))
        metrics = super().sft(examples=examples, epochs=epochs, lr=lr, batch_size=batch_size, on_epoch=report)
        return {key: np.float32(value) for key, value in metrics.items()}


def test_a_good_language_model_passes():
    check_language_model(GoodLM())
    check_language_model(UntrainableLM())


def test_check_language_model_accepts_numpy_losses_as_a_run_does():
    check_language_model(Float32LossLM())


@pytest.mark.parametrize(
    "broken, message",
    [
        (UnseededLM, r"sampling with the same seed gave another text"),
        (StopKeptLM, r"generate\(stop=\[.*\]\) returned '.+'; without the stops the text was"),
        (OneTextLM, r"generate\(\) at temperature 0 returned .*, expected a list of 3 str \(one per prompt\)"),
        (NoEpochReportLM, r"sft\(epochs=2, on_epoch=\.\.\.\) must call on_epoch\(1, loss\) then on_epoch\(2, loss\) with finite losses, got \[\]"),
        (NanLossLM, r"sft\(\) returned metric 'sft/loss' = nan: training diverged"),
        (StepMetricLM, r"sft\(\) returned a metric named 'step'"),
        (ReloadKeepsWeightsLM, r"reload\(\) of the weights saved before sft\(\) generated"),
        (SilentUntilTrainedLM, r"generate\(stop=\[.*\]\) returned '.+'; without the stops"),  # passed: "" has nothing to stop
        (EmptyIdLM, r"model_id must be a non-empty str"),
    ],
)
def test_check_language_model_fails_a_broken_model(broken, message):
    with pytest.raises(ConformanceError, match=rf"{broken.__name__}: {message}"):
        check_language_model(broken())
