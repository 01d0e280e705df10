"""Review fixes in the reward-entropy curriculum: damaged centroids refused on load, the
uniform plugin's equal draws (batches no larger than the pool), and lambda 0's M_task calls."""

import msgspec
import pytest

from dreamgym_core.errors import DataError
from dreamgym_core.records import Task, TaskOutcome
from dreamgym_core.testing import BagOfWordsEncoder
from dreamgym_plugin_reward_entropy import RewardEntropyConfig, dreamgym_register_curricula

TASKS = [Task(id=f"t{i}", instruction=f"put the {w} in the box", domain="test") for i, w in enumerate(
    ["apple", "key", "coin", "book", "lamp", "knife", "towel", "cup"])]


class CountingGenerator:
    """Test double for M_task: one new variation per call, counted."""

    def __init__(self):
        self.calls = 0

    def vary_tasks(self, *, task, n):
        self.calls += 1
        return [f"{task.instruction} again {self.calls}"]

    def select_task(self, *, task, candidates):
        return 0


def build(config, generator=None):
    (spec,) = dreamgym_register_curricula()
    encoder = BagOfWordsEncoder() if config.grouping == "cluster" else None
    return spec.factory(config, tasks=TASKS, task_generator=generator, encoder=encoder, seed=0, domain=None)


# --- damaged centroids ---------------------------------------------------------------------------


CLUSTER = RewardEntropyConfig(grouping="cluster", n_clusters=2)
WIDTH = BagOfWordsEncoder().dim


def _cluster_damage():
    good = build(CLUSTER).state_dict()
    row = good["centroids"][0]
    return {
        # each was accepted: null failed in the second observe() (TypeError), [] in the first
        # (IndexError), and a row of another width put every task in cluster 0
        "null": ({"centroids": None}, "centroids: expected rows of 256 finite numbers"),
        "empty": ({"centroids": []}, "centroids: expected rows of 256 finite numbers"),
        "no rows": ({"centroids": [[]]}, "centroids: expected rows of 256 finite numbers"),
        "another width": ({"centroids": [[0.0]]}, "centroids: expected rows of 256 finite numbers"),
        "one flat row": ({"centroids": row}, "centroids: expected rows of 256 finite numbers"),
        "a null number": ({"centroids": [[None] + row[1:]]}, "centroids: expected rows of 256 finite numbers"),
        "ragged": ({"centroids": [row, row[1:]]}, "centroids: "),
        "text": ({"centroids": [["a"] * WIDTH]}, "centroids: "),
        "a cluster past the centroids": (
            {"cluster_of": {**good["cluster_of"], "t0": 2}}, r"cluster_of\['t0'\]: cluster 2, and the state has 2 centroids"
        ),
    }


def _loaded_and_played(c):
    c.observe(outcomes=[TaskOutcome(task=t, rewards=[0.0, 1.0]) for t in c.next_tasks(n=4)])
    return c


@pytest.mark.parametrize("case", list(_cluster_damage()))
def test_damaged_centroids_are_a_data_error_on_load_and_nothing_is_set(case):
    damage, message = _cluster_damage()[case]
    c = _loaded_and_played(build(CLUSTER, CountingGenerator()))
    before = c.state_dict()
    state = msgspec.json.decode(msgspec.json.encode({**build(CLUSTER).state_dict(), "draws": 9, **damage}))
    with pytest.raises(DataError, match=rf"^curriculum 'reward-entropy': malformed state: {message}") as raised:
        c.load_state_dict(state)
    assert "\n" not in str(raised.value)
    assert c.state_dict() == before


def test_centroids_with_grouping_task_are_refused():
    c = build(RewardEntropyConfig())
    with pytest.raises(DataError, match=r"^curriculum 'reward-entropy': malformed state: centroids: expected null with grouping 'task'"):
        c.load_state_dict({**c.state_dict(), "draws": 3, "centroids": [[0.0, 1.0]]})
    assert c.draws == 0 and c.centroids is None


@pytest.mark.parametrize("config", [CLUSTER, RewardEntropyConfig()], ids=["cluster", "task"])
def test_a_good_state_still_loads_and_draws_alike(config):
    c = _loaded_and_played(build(config, CountingGenerator()))
    clone = build(config, CountingGenerator())
    clone.load_state_dict(msgspec.json.decode(msgspec.json.encode(c.state_dict())))
    assert clone.state_dict() == c.state_dict()
    assert [t.id for t in clone.next_tasks(n=4)] == [t.id for t in c.next_tasks(n=4)]


# --- the uniform plugin's draws ------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 4, len(TASKS)])
def test_lambda_zero_uniform_seeds_draw_the_uniform_plugins_tasks_up_to_the_whole_pool(n):
    # documented (uniform's README and next_tasks): equal for n <= pool only, the edge n == pool included
    uniform = pytest.importorskip("dreamgym_plugin_uniform")
    c = build(RewardEntropyConfig(synthetic_share=0.0, seed_sampling="uniform"), CountingGenerator())
    u = uniform.UniformCurriculum(uniform.UniformConfig(), tasks=TASKS, seed=0)
    for _ in range(6):
        batch = c.next_tasks(n=n)
        assert sorted(t.id for t in batch) == sorted(t.id for t in u.next_tasks(n=n))
        c.observe(outcomes=[TaskOutcome(task=t, rewards=[0.0, 1.0]) for t in batch])


# --- lambda 0 still asks M_task ------------------------------------------------------------------


def test_lambda_zero_keeps_asking_m_task_and_its_draws_do_not_depend_on_it():
    # Kept on purpose (README: lambda): the local loop's M_task is the experience model, whose call
    # count seeds every synthetic step; skipping these calls changed a lambda-0 run's rollouts and
    # value-weighted draws. The curriculum's own draws do not depend on them.
    generator = CountingGenerator()
    asked = build(RewardEntropyConfig(synthetic_share=0.0), generator)
    silent = build(RewardEntropyConfig(synthetic_share=0.0, tasks_to_vary=0), CountingGenerator())
    for _ in range(10):
        batches = [c.next_tasks(n=4) for c in (asked, silent)]
        assert [t.id for t in batches[0]] == [t.id for t in batches[1]]
        for c, batch in zip((asked, silent), batches):
            c.observe(outcomes=[TaskOutcome(task=t, rewards=[0.0, 1.0]) for t in batch])
    assert generator.calls == 20 and all(t.origin == "seed" for c in (asked, silent) for t in c.next_tasks(n=4))
