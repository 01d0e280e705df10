"""The uniform curriculum."""

import math
from collections import Counter

import msgspec
import numpy as np

import pytest

from dreamgym_core.errors import ConfigError, DataError
from dreamgym_core.records import Task, TaskOutcome
from dreamgym_core.testing import check_curriculum
from dreamgym_plugin_uniform import UniformConfig, dreamgym_register_curricula

TASKS = [Task(id=f"t{i}", instruction=f"task {i}", domain="test") for i in range(6)]


def build(seed=0):
    (spec,) = dreamgym_register_curricula()
    return spec.factory(UniformConfig(), tasks=TASKS, task_generator=None, encoder=None, seed=seed, domain=None)


def test_conformance():
    check_curriculum(build(), rebuild=build)


def test_draws_are_seeded_distinct_within_a_batch_and_cover_the_pool():
    a, b = build(seed=1), build(seed=1)
    first = a.next_tasks(n=4)
    assert [t.id for t in first] == [t.id for t in b.next_tasks(n=4)]
    assert len({t.id for t in first}) == 4
    counts = Counter(t.id for _ in range(300) for t in a.next_tasks(n=2))
    assert set(counts) == {t.id for t in TASKS} and min(counts.values()) > 60  # ~100 each


def test_another_run_seed_draws_other_tasks():
    # 100 tasks, 3 batches of 4 drawn without replacement: two seeds that were truly used would
    # choose the same ordered batches with chance (1 / (100*99*98*97))**3 ~ 1e-24.
    pool = [Task(id=f"p{i}", instruction=f"task {i}", domain="test") for i in range(100)]
    (spec,) = dreamgym_register_curricula()
    one, two = (spec.factory(UniformConfig(), tasks=pool, task_generator=None, encoder=None, seed=s, domain=None) for s in (1, 2))
    draws = {s: [[t.id for t in c.next_tasks(n=4)] for _ in range(3)] for s, c in ((1, one), (2, two))}
    assert draws[1] != draws[2], "the run seed does not change the draws"


def test_observe_only_records_and_never_generates():
    c = build()
    before = [t.id for t in build().next_tasks(n=3)]
    c.observe(outcomes=[TaskOutcome(task=TASKS[0], rewards=[1.0, 0.0])])
    assert [t.id for t in c.next_tasks(n=3)] == before
    assert c.metrics()["curriculum/observed_tasks"] == 1 and c.metrics()["curriculum/synthetic_tasks"] == 0


def test_no_tasks_is_a_clear_error():
    with pytest.raises(ConfigError, match="uniform.*no seed tasks"):
        dreamgym_register_curricula()[0].factory(UniformConfig(), tasks=[], seed=0)


def test_a_nan_reward_leaves_a_restorable_state():
    # NaN is written as JSON null in the checkpoint; float(None) made the resume fail
    c = build()
    c.observe(outcomes=[TaskOutcome(task=TASKS[0], rewards=[float("nan"), 1.0, 0.0])])
    assert math.isfinite(c.metrics()["curriculum/mean_reward"]) and c.metrics()["curriculum/mean_reward"] == 0.5
    clone = build()
    clone.load_state_dict(msgspec.json.decode(msgspec.json.encode(c.state_dict())))
    assert clone.state_dict() == c.state_dict()


@pytest.mark.parametrize(("field", "value", "says"), [
    ("draws", -1, "draws must be a whole number >= 0, got -1"),
    ("draws", 2.7, "draws must be a whole number >= 0, got 2.7"),  # int() resumed it as 2: other tasks drawn
    ("observed_tasks", 1.5, "observed_tasks must be a whole number >= 0, got 1.5"),
    ("mean_reward", "nan", "mean_reward must be finite, got 'nan'"),  # float() read it as a NaN metric
])
def test_a_damaged_state_is_refused_on_load_and_nothing_of_it_is_kept(field, value, says):
    c = build()
    c.next_tasks(n=2)
    before = c.state_dict()
    with pytest.raises(DataError, match=rf"^curriculum 'uniform': malformed state: .*{says}"):
        c.load_state_dict({**before, "draws": 5, field: value})
    assert c.state_dict() == before


def test_a_batch_of_the_whole_pool_is_a_permutation_of_it():
    c = build()
    for _ in range(20):
        assert sorted(t.id for t in c.next_tasks(n=len(TASKS))) == sorted(t.id for t in TASKS)


def test_observed_tasks_count_every_outcome():
    c = build()
    c.observe(outcomes=[TaskOutcome(task=TASKS[0], rewards=[1.0]), TaskOutcome(task=TASKS[1], rewards=[0.0])])
    assert c.metrics()["curriculum/observed_tasks"] == 2 and c.metrics()["curriculum/mean_reward"] == 0.5


@pytest.mark.parametrize("n", [7, 11, 12, 13, 20])
def test_a_batch_larger_than_the_pool_holds_every_task_as_evenly_as_n_allows(n):
    # drawn with replacement once n passed the pool: at n=7 of 6 tasks, 2.3 tasks missed a batch on average
    c = build(seed=3)
    for _ in range(50):
        counts = Counter(t.id for t in c.next_tasks(n=n))
        assert set(counts) == {t.id for t in TASKS} and set(counts.values()) <= {n // len(TASKS), -(-n // len(TASKS))}


def test_batches_no_larger_than_the_pool_are_drawn_as_before():
    # the draw of the code before whole shuffles were used for n > pool: a batch no larger than
    # the pool must repeat it, or the committed runs' task draws would change
    def before(draws, seed, n):
        rng = np.random.default_rng([1, draws, seed])
        return [f"t{i}" for i in rng.choice(len(TASKS), size=n, replace=False)]

    for seed in (0, 1, 7):
        c = build(seed=seed)
        for draws, n in enumerate([1, 4, 6, 2, 5, 6, 3]):
            assert [t.id for t in c.next_tasks(n=n)] == before(draws, seed, n)
