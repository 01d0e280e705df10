"""The reward-entropy curriculum, with a fake task generator (a test double for M_task:
the real one is an LLM experience model, too slow and untrained here)."""

import math

import msgspec
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dreamgym_core.errors import ConfigError, ConformanceError, DataError
from dreamgym_core.records import Task, TaskOutcome
from dreamgym_core.testing import BagOfWordsEncoder, check_curriculum
from dreamgym_plugin_reward_entropy import RewardEntropyConfig, dreamgym_register_curricula
from dreamgym_plugin_reward_entropy.maths import (
    SAMPLING_STREAM,
    kmeans,
    nearest,
    sampling_weights,
    stream_key,
    synthetic_quota,
    task_value,
)

TASKS = [Task(id=f"t{i}", instruction=f"put the {w} in the box", domain="test") for i, w in enumerate(
    ["apple", "key", "coin", "book", "lamp", "knife", "towel", "cup"])]


class FakeTaskGenerator:
    """Test double for M_task: numbered variations; selection picks candidate ``pick``."""

    def __init__(self, pick=1):
        self.pick, self.calls = pick, []

    def vary_tasks(self, *, task, n):
        self.calls.append(task.id)
        return [f"{task.instruction} variant {len(self.calls)}.{k}" for k in range(n)]

    def select_task(self, *, task, candidates):
        return self.pick


class FakeDomain:
    """Test double for a domain's make_variation: rejects texts containing 'reject'."""

    def make_variation(self, parent, text):
        if "reject" in text:
            return None
        return Task(id=f"{parent.id}/var", instruction=text, domain=parent.domain, payload={"from": parent.id})


def build(config=None, generator=None, encoder=None, domain=None, seed=0):
    (spec,) = dreamgym_register_curricula()
    return spec.factory(config or RewardEntropyConfig(), tasks=TASKS, task_generator=generator, encoder=encoder, seed=seed, domain=domain)


def test_task_value_is_population_variance():
    assert task_value([1, 0, 1, 0]) == pytest.approx(0.25)
    assert task_value([1, 1, 1]) == 0 == task_value([0, 0]) == task_value([])
    assert task_value([1, 0, 0, 0]) == pytest.approx(0.25 * 0.75)
    assert task_value([1.0, float("nan"), 0.0]) == pytest.approx(0.25)


@pytest.mark.parametrize("reward", [0.7, 0.1, 0.003, 1e-3, 123.456])
@pytest.mark.parametrize("n", [2, 3, 4, 7, 8])
def test_all_equal_rewards_have_exactly_zero_value(reward, n):
    # np.var of [0.7, 0.7, 0.7] is 1.2e-32, not 0: the rounded mean leaves a residue
    assert task_value([reward] * n) == 0.0


@pytest.mark.parametrize("rewards", [[0.1 + 0.2, 0.3, 0.3], [0.3, 0.1 + 0.2], [1.1 * 3, 3.3, 3.3, 3.3], [1e-20, 0.0]])
def test_rewards_equal_up_to_float_rounding_have_exactly_zero_value(rewards):
    # 0.1 + 0.2 is 0.30000000000000004: np.var left a 2e-33 residue that passed the threshold 0
    assert task_value(rewards) == 0.0
    assert task_value([*rewards, 1.0]) > 0  # a reward that really differs still counts


def test_rewards_equal_up_to_rounding_are_neither_varied_nor_favoured():
    generator = FakeTaskGenerator()
    c = build(RewardEntropyConfig(tasks_to_vary=2, exploration=0.2, synthetic_share=0.0), generator=generator)
    c.observe(outcomes=[TaskOutcome(task=t, rewards=[0.1 + 0.2, 0.3, 0.3] if t.id == "t0" else [1.0] * 3) for t in TASKS])
    assert generator.calls == [] and c.values["t0"] == 0.0
    counts = {t.id: 0 for t in TASKS}
    for _ in range(400):
        for t in c.next_tasks(n=1):
            counts[t.id] += 1
    assert counts["t0"] < 100  # uniform: about 50 of 400, not the whole greedy share (was ~335)


def test_all_equal_continuous_rewards_are_neither_varied_nor_favoured():
    generator = FakeTaskGenerator()
    c = build(RewardEntropyConfig(tasks_to_vary=2, exploration=0.2), generator=generator)
    c.observe(outcomes=[TaskOutcome(task=t, rewards=[0.7, 0.7, 0.7] if t.id == "t0" else [1.0, 1.0, 1.0]) for t in TASKS])
    assert generator.calls == [] and c.synthetic == []  # V = 0 is not above the threshold 0
    counts = {t.id: 0 for t in TASKS}
    for _ in range(400):
        for t in c.next_tasks(n=1):
            counts[t.id] += 1
    assert counts["t0"] < 100  # uniform: ~50 of 400; a residue of 1e-32 took the whole greedy share (~330)


@given(st.lists(st.booleans(), min_size=1, max_size=32))
def test_binary_value_is_p_times_one_minus_p(outcomes):
    p = sum(outcomes) / len(outcomes)
    assert task_value([float(o) for o in outcomes]) == pytest.approx(p * (1 - p))


@given(st.floats(0, 1), st.integers(0, 64))
def test_quota_never_exceeds_lambda_n(share, n):
    q = synthetic_quota(share, n)
    assert 0 <= q <= share * n + 1e-9 and q == math.floor(share * n + 1e-9)


def test_sampling_weights_prefer_high_value_and_keep_exploring():
    p = sampling_weights([0.25, 0.0, 0.1], 0.2)
    assert p[0] > p[2] > p[1] > 0 and p.sum() == pytest.approx(1)
    assert sampling_weights([0, 0], 0.0) == pytest.approx([0.5, 0.5])


def test_kmeans_is_deterministic_and_separates_blobs():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 0.1, (10, 2)), rng.normal(5, 0.1, (10, 2))])
    a, _ = kmeans(x, 2, seed=3)
    b, _ = kmeans(x, 2, seed=3)
    assert np.array_equal(a, b) and len(set(a[:10])) == 1 and len(set(a[10:])) == 1 and a[0] != a[10]


def test_conformance():
    check_curriculum(build(), rebuild=build)
    gen = lambda: build(generator=FakeTaskGenerator(), encoder=BagOfWordsEncoder(), config=RewardEntropyConfig(grouping="cluster", n_clusters=3))
    check_curriculum(gen(), rebuild=gen)


def test_another_run_seed_draws_other_tasks():
    # 100 tasks, none observed (all equally weighted), 3 batches of 4 drawn without replacement:
    # two seeds that were truly used would choose the same ordered batches with chance
    # (1 / (100*99*98*97))**3 ~ 1e-24.
    pool = [Task(id=f"p{i}", instruction=f"put thing {i} in the box", domain="test") for i in range(100)]
    (spec,) = dreamgym_register_curricula()
    one, two = (spec.factory(RewardEntropyConfig(), tasks=pool, task_generator=None, encoder=None, seed=s, domain=None) for s in (1, 2))
    draws = {s: [[t.id for t in c.next_tasks(n=4)] for _ in range(3)] for s, c in ((1, one), (2, two))}
    assert draws[1] != draws[2], "the run seed does not change the draws"


def test_observe_ranks_tasks_by_reward_variance():
    generator = FakeTaskGenerator()
    c = build(RewardEntropyConfig(tasks_to_vary=2), generator=generator)
    c.observe(outcomes=[
        TaskOutcome(task=TASKS[0], rewards=[1, 1, 1, 1]),  # V = 0
        TaskOutcome(task=TASKS[1], rewards=[1, 0, 0, 0]),  # V = 0.1875
        TaskOutcome(task=TASKS[2], rewards=[1, 0, 1, 0]),  # V = 0.25
        TaskOutcome(task=TASKS[3], rewards=[0, 0, 0, 0]),  # V = 0
    ])
    assert [t.id for t in c.rank(TASKS[:4])] == ["t2", "t1"]  # zero-variance tasks are never varied
    assert generator.calls == ["t2", "t1"]
    assert c.metrics()["curriculum/max_value"] == pytest.approx(0.25)
    assert c.metrics()["curriculum/mean_value"] == pytest.approx((0.25 + 0.1875) / 4)


def test_a_task_drawn_twice_in_one_batch_is_valued_on_all_its_rewards():
    pooled = []
    for order in ([[1, 1], [0, 0]], [[0, 0], [1, 1]]):
        c = build(RewardEntropyConfig(tasks_to_vary=0))
        c.observe(outcomes=[TaskOutcome(task=TASKS[0], rewards=rewards) for rewards in order])
        pooled.append(c.values["t0"])
    assert pooled == [0.25, 0.25]  # the variance of [1, 1, 0, 0], whichever group came last


def test_generated_tasks_carry_parent_id_and_origin():
    c = build(RewardEntropyConfig(tasks_to_vary=1), generator=FakeTaskGenerator(pick=2), domain=FakeDomain())
    c.observe(outcomes=[TaskOutcome(task=TASKS[5], rewards=[0, 1])])
    (task,) = c.synthetic
    assert task.origin == "synthetic" and task.parent_id == "t5" and task.id == "t5/var"
    assert task.instruction.endswith("variant 1.2") and task.payload == {"from": "t5"}
    # without a domain: the parent's payload with the selected instruction, a fresh id
    bare = build(RewardEntropyConfig(tasks_to_vary=1), generator=FakeTaskGenerator())
    bare.observe(outcomes=[TaskOutcome(task=TASKS[5], rewards=[0, 1])])
    assert bare.synthetic[0].parent_id == "t5" and bare.synthetic[0].id != "t5" and bare.synthetic[0].origin == "synthetic"


@pytest.mark.parametrize("pick", [None, 99])
def test_rejected_selection_generates_nothing(pick):
    c = build(generator=FakeTaskGenerator(pick=pick))
    c.observe(outcomes=[TaskOutcome(task=TASKS[0], rewards=[0, 1])])
    assert c.synthetic == [] and c.metrics()["curriculum/rejected_variations"] == 1


def test_domain_refusal_generates_nothing():
    class Rejecting(FakeTaskGenerator):
        def vary_tasks(self, *, task, n):
            return ["please reject this"] * n

    c = build(generator=Rejecting(pick=0), domain=FakeDomain())
    c.observe(outcomes=[TaskOutcome(task=TASKS[0], rewards=[0, 1])])
    assert c.synthetic == []


@pytest.mark.parametrize("share,n", [(0.25, 8), (0.5, 5), (0.0, 4), (1.0, 3)])
def test_lambda_caps_the_synthetic_share(share, n):
    c = build(RewardEntropyConfig(synthetic_share=share, tasks_to_vary=8), generator=FakeTaskGenerator())
    for _ in range(3):  # grow a synthetic pool larger than any batch
        c.observe(outcomes=[TaskOutcome(task=t, rewards=[0, 1]) for t in TASKS])
    assert len(c.synthetic) >= n
    for _ in range(20):
        batch = c.next_tasks(n=n)
        synthetic = sum(t.origin == "synthetic" for t in batch)
        assert len(batch) == n and synthetic == math.floor(share * n)


def test_lambda_is_spelled_lambda_in_pipeline_files():
    config = msgspec.convert({"lambda": 0.3}, type=RewardEntropyConfig)
    assert config.synthetic_share == 0.3 and msgspec.to_builtins(config)["lambda"] == 0.3
    assert msgspec.convert({}, type=RewardEntropyConfig).synthetic_share == 0.5


def test_high_value_seed_tasks_are_drawn_more_often():
    c = build(RewardEntropyConfig(exploration=0.4, tasks_to_vary=0))
    c.observe(outcomes=[TaskOutcome(task=t, rewards=[0, 1] if t.id == "t3" else [1, 1]) for t in TASKS])
    counts = {t.id: 0 for t in TASKS}
    for _ in range(200):
        for t in c.next_tasks(n=1):
            counts[t.id] += 1
    assert counts["t3"] > 100 and min(counts.values()) > 0


def test_cluster_grouping_pools_rewards_of_a_cluster():
    c = build(RewardEntropyConfig(grouping="cluster", n_clusters=2, tasks_to_vary=0), encoder=BagOfWordsEncoder())
    # one success and one failure on two tasks of one cluster: each alone has V = 0, the cluster 0.25
    members = [t for t in TASKS if c.cluster_of[t.id] == c.cluster_of["t0"]]
    assert len(members) >= 2
    c.observe(outcomes=[TaskOutcome(task=members[0], rewards=[1, 1]), TaskOutcome(task=members[1], rewards=[0, 0])])
    assert c.values[members[0].id] == pytest.approx(0.25) == c.values[members[1].id]


def test_cluster_grouping_without_encoder_and_empty_tasks_are_clear_errors():
    with pytest.raises(ConfigError, match="cluster.*encoder"):
        build(RewardEntropyConfig(grouping="cluster"))
    with pytest.raises(ConfigError, match="no seed tasks"):
        dreamgym_register_curricula()[0].factory(RewardEntropyConfig(), tasks=[], seed=0)


def test_state_round_trip_keeps_synthetic_tasks_and_draws():
    c = build(generator=FakeTaskGenerator(), domain=FakeDomain())
    c.observe(outcomes=[TaskOutcome(task=t, rewards=[0, 1]) for t in TASKS[:2]])
    c.next_tasks(n=4)
    clone = build(generator=FakeTaskGenerator(), domain=FakeDomain())
    clone.load_state_dict(msgspec.json.decode(msgspec.json.encode(c.state_dict())))
    assert clone.synthetic == c.synthetic and [t.id for t in clone.next_tasks(n=6)] == [t.id for t in c.next_tasks(n=6)]


@pytest.mark.parametrize(
    "damage, message",
    [
        ({"stats": {}}, "stats: missing 'generated'"),
        ({"stats": {"generated": 1.5}}, r"stats\['generated'\]: expected a whole number, got 1.5"),
        ({"draws": -1}, r"draws: expected a whole number, got -1"),
    ],
)
def test_a_damaged_state_is_refused_on_load_not_later_as_a_traceback(damage, message):
    # each was accepted, then failed in the first observe() or next_tasks() after the resume
    c = build(generator=FakeTaskGenerator(), domain=FakeDomain())
    state = c.state_dict()
    if "stats" in damage and damage["stats"]:
        damage = {"stats": {**state["stats"], **damage["stats"]}}
    clone = build(generator=FakeTaskGenerator(), domain=FakeDomain())
    with pytest.raises(DataError, match=rf"^curriculum 'reward-entropy': malformed state: {message}"):
        clone.load_state_dict({**state, **damage})


def _damaged_states():
    base = build().state_dict()
    return {
        "values is a list": ({**base, "values": []}, "values: expected a mapping, got list"),
        "cluster_of is a list": ({**base, "cluster_of": []}, "cluster_of: expected a mapping, got list"),
        "a cluster index is text": ({**base, "cluster_of": {"t0": "a"}}, r"cluster_of\['t0'\]: expected a whole number, got 'a'"),
        "draws is null": ({**base, "draws": None}, "draws: expected a whole number, got None"),
        "draws is true": ({**base, "draws": True}, "draws: expected a whole number, got True"),
        "a value is text": ({**base, "values": {"t0": "high"}}, r"values\['t0'\]: expected a number, got 'high'"),
        "a value is nan": ({**base, "values": {"t0": float("nan")}}, r"values\['t0'\]: expected a finite number, got nan"),
        "stats is null": ({**base, "stats": None}, "stats: expected a mapping, got NoneType"),
        "a stat is null": (
            {**base, "stats": {**base["stats"], "mean_value": None}}, r"stats\['mean_value'\]: expected a number, got None"
        ),
        "a stat is missing": ({**base, "stats": {"generated": 0}}, "stats: missing 'rejected'"),
        "synthetic is wrong": ({**base, "synthetic": [{"id": 1}]}, r"synthetic: Expected `str`, got `int` - at `\$\[0\].id`"),
        "synthetic is null": ({**base, "synthetic": None}, "synthetic: Expected `array`, got `null`"),
        "draws is missing": ({k: v for k, v in base.items() if k != "draws"}, "missing 'draws'"),
        "the state is a list": ([], "state: expected a mapping, got list"),
    }


@pytest.mark.parametrize("case", list(_damaged_states()))
def test_a_damaged_state_is_a_data_error_naming_the_field_and_changes_nothing(case):
    state, message = _damaged_states()[case]
    c = build(generator=FakeTaskGenerator(), domain=FakeDomain())
    c.observe(outcomes=[TaskOutcome(task=t, rewards=[0, 1]) for t in TASKS[:2]])
    c.next_tasks(n=4)
    before = c.state_dict()
    with pytest.raises(DataError, match=rf"^curriculum 'reward-entropy': malformed state: {message}$") as raised:
        c.load_state_dict(state)
    assert "\n" not in str(raised.value)
    assert c.state_dict() == before  # a refused state is not half loaded


def test_a_damaged_state_after_a_good_draws_leaves_draws_as_it_was():
    c = build()
    c.next_tasks(n=2)
    with pytest.raises(DataError, match="values: expected a mapping"):
        c.load_state_dict({**build().state_dict(), "draws": 7, "values": []})
    assert c.draws == 1


class ProposingDomain:
    """Test double for a domain with rule-based variations: worlds numbered by a seed."""

    def propose_variations(self, parent, *, n, rng):
        return [f"seed={s}" for s in rng.choice(6, size=n, replace=False)]

    def make_variation(self, parent, text):
        seed = int(text.split("=")[1])
        return Task(id=f"w{seed}", instruction=parent.instruction, domain=parent.domain, payload={"seed": seed})


@pytest.mark.parametrize("field", ["value_threshold", "unseen_value"])
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_a_config_built_in_python_refuses_non_finite_values(field, value):
    # a pipeline file refuses .inf and .nan; built in Python, unseen_value=inf made every draw NaN
    with pytest.raises(msgspec.ValidationError, match=rf"^RewardEntropyConfig: .* - at `\$\.{field}`$"):
        RewardEntropyConfig(**{field: value})


def test_finite_thresholds_and_unseen_values_are_still_taken():
    config = RewardEntropyConfig(value_threshold=-1.0, unseen_value=-0.5)
    assert (config.value_threshold, config.unseen_value) == (-1.0, -0.5)
    assert RewardEntropyConfig(value_threshold=0.1, unseen_value=1.0).unseen_value == 1.0


def test_domain_generator_varies_without_a_model_and_never_repeats_a_world():
    c = build(RewardEntropyConfig(generator="domain", tasks_to_vary=2, n_candidates=2), domain=ProposingDomain())
    for _ in range(8):
        c.observe(outcomes=[TaskOutcome(task=t, rewards=[0, 1]) for t in TASKS[:2]])
    seeds = [t.payload["seed"] for t in c.synthetic]
    assert seeds and len(seeds) == len(set(seeds)) <= 6  # six worlds exist; a repeat is rejected
    assert c.metrics()["curriculum/generated_tasks"] == len(seeds)
    assert c.metrics()["curriculum/rejected_variations"] == 16 - len(seeds)
    assert all(t.origin == "synthetic" and t.parent_id in {"t0", "t1"} for t in c.synthetic)


def test_batches_proposals_and_kmeans_draw_from_streams_of_their_own(monkeypatch):
    """numpy pads a stream's key with zeros: [seed, draws] and [seed, draws, 0] were one stream, so
    the first proposals after a batch replayed the next batch's draws (and k-means' start, key
    [seed], the first batch's)."""
    real, made = np.random.default_rng, []

    def recording(key=None):
        made.append(tuple(real(key).integers(2**32, size=4).tolist()))
        return real(key)

    monkeypatch.setattr(np.random, "default_rng", recording)
    config = RewardEntropyConfig(generator="domain", grouping="cluster", n_clusters=2, tasks_to_vary=1, n_candidates=2)
    c = build(config, encoder=BagOfWordsEncoder(), domain=ProposingDomain(), seed=3)
    for _ in range(4):
        c.observe(outcomes=[TaskOutcome(task=t, rewards=[0, 1]) for t in c.next_tasks(n=4)])
    assert len(made) >= 9 and len(set(made)) == len(made)  # k-means, 4 batches, 4+ proposals


def test_domain_generator_needs_a_domain_that_proposes():
    with pytest.raises(ConfigError, match="needs a domain with propose_variations and make_variation; .* has no propose_variations \\(use"):
        build(RewardEntropyConfig(generator="domain"), domain=FakeDomain())

    class ProposesOnly(ProposingDomain):
        make_variation = None

    with pytest.raises(ConfigError, match="has no make_variation \\(use generator: model\\)"):
        build(RewardEntropyConfig(generator="domain"), domain=ProposesOnly())


class _Proposes(ProposingDomain):
    name = "numbers"

    def propose_variations(self, parent, *, n, rng):
        return list(range(n))


class _MakesText(ProposingDomain):
    name = "texts"

    def make_variation(self, parent, text):
        return text


@pytest.mark.parametrize(
    "domain, message",
    [
        (_Proposes(), r"env 'numbers': propose_variations\(\) returned \[0, 1\], expected a list of str"),
        (_MakesText(), r"env 'texts': make_variation\(\) returned str, expected a Task or None"),
    ],
)
def test_a_domain_answering_with_the_wrong_type_is_named(domain, message):
    c = build(RewardEntropyConfig(generator="domain", tasks_to_vary=1, n_candidates=2), domain=domain)
    with pytest.raises(ConformanceError, match=message):
        c.observe(outcomes=[TaskOutcome(task=t, rewards=[0, 1]) for t in TASKS[:2]])


def test_sampling_weights_are_the_stated_mixture():
    # greedy share proportional to value, plus a uniform share `exploration`
    p = sampling_weights([0.25, 0.0, 0.1], 0.2)
    greedy = np.array([0.25, 0.0, 0.1]) / 0.35
    assert p == pytest.approx(0.8 * greedy + 0.2 / 3)


def test_sampling_weights_ignore_negative_values_and_keep_every_task_possible():
    # a negative unseen_value counts as 0, not as a negative probability
    assert sampling_weights([-1.0, 1.0], 0.0) == pytest.approx([0.0, 1.0], abs=1e-9)
    assert sampling_weights([-1.0, 1.0], 0.0)[0] > 0  # never exactly zero
    assert sampling_weights([1.0, 0.0], 0.0)[1] > 0


def test_nearest_is_the_closest_centroid():
    centroids = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = np.array([[1.0, 1.0], [9.0, 1.0], [1.0, 8.0], [6.0, 0.0]])
    assert nearest(x, centroids).tolist() == [0, 1, 2, 1]


def test_kmeans_never_makes_more_clusters_than_points():
    x = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    labels, centroids = kmeans(x, 5, seed=0)
    assert len(centroids) == 3 and sorted(labels.tolist()) == [0, 1, 2]


def test_rank_breaks_value_ties_by_task_id():
    c = build(RewardEntropyConfig(tasks_to_vary=0))
    c.observe(outcomes=[TaskOutcome(task=TASKS[3], rewards=[0, 1]), TaskOutcome(task=TASKS[1], rewards=[1, 0])])
    assert [t.id for t in c.rank([TASKS[3], TASKS[1]])] == ["t1", "t3"]


def test_unobserved_tasks_rank_at_the_unseen_value():
    c = build(RewardEntropyConfig(tasks_to_vary=0))
    c.observe(outcomes=[TaskOutcome(task=TASKS[0], rewards=[1, 0, 0, 0])])  # V = 0.1875 < 0.25
    assert [t.id for t in c.rank(TASKS[:2])] == ["t1", "t0"]


def test_cluster_grouping_ranks_one_task_per_cluster_the_first_by_id():
    c = build(RewardEntropyConfig(grouping="cluster", n_clusters=2, tasks_to_vary=0), encoder=BagOfWordsEncoder())
    members = sorted((t for t in TASKS if c.cluster_of[t.id] == c.cluster_of["t0"]), key=lambda t: t.id)
    assert len(members) >= 2
    c.observe(outcomes=[TaskOutcome(task=members[-1], rewards=[0, 1])])
    # the whole cluster took the observed member's value, the unobserved members included
    assert all(c.values[t.id] == pytest.approx(0.25) for t in members)
    assert [t.id for t in c.rank(members)] == [members[0].id]


def test_a_batch_no_larger_than_the_pool_has_no_repeats():
    c = build(RewardEntropyConfig(synthetic_share=0.0, tasks_to_vary=0))
    c.observe(outcomes=[TaskOutcome(task=t, rewards=[0, 1] if t.id == "t3" else [1, 1]) for t in TASKS])
    for _ in range(5):
        assert sorted(t.id for t in c.next_tasks(n=len(TASKS))) == sorted(t.id for t in TASKS)


def test_a_full_synthetic_pool_drops_its_lowest_value_task_the_newest_of_equals():
    c = build(RewardEntropyConfig(max_synthetic_tasks=2, tasks_to_vary=1), generator=FakeTaskGenerator())
    for task in TASKS[:3]:
        c.observe(outcomes=[TaskOutcome(task=task, rewards=[0, 1])])
    # three variations, all unseen (equal value): the pool keeps the two it had
    assert [t.parent_id for t in c.synthetic] == ["t0", "t1"]
    # the variation of t0 turns out to carry no signal (V = 0): the next one replaces it
    c.observe(outcomes=[TaskOutcome(task=c.synthetic[0], rewards=[1, 1])])
    c.observe(outcomes=[TaskOutcome(task=TASKS[3], rewards=[0, 1])])
    assert [t.parent_id for t in c.synthetic] == ["t1", "t3"]


def test_only_the_top_tasks_to_vary_are_varied():
    generator = FakeTaskGenerator()
    c = build(RewardEntropyConfig(tasks_to_vary=1), generator=generator)
    c.observe(outcomes=[
        TaskOutcome(task=TASKS[0], rewards=[1, 0, 0, 0]),  # V = 0.1875
        TaskOutcome(task=TASKS[1], rewards=[1, 0]),  # V = 0.25
        TaskOutcome(task=TASKS[2], rewards=[1, 1, 1, 0]),  # V = 0.1875
    ])
    assert generator.calls == ["t1"]


def test_uniform_seed_sampling_ignores_value_but_not_the_synthetic_share():
    # one high-value seed task would take most draws by value; uniformly it takes its 1/8
    config = RewardEntropyConfig(exploration=0.0, tasks_to_vary=1, synthetic_share=0.5, seed_sampling="uniform")
    c = build(config, generator=FakeTaskGenerator())
    c.observe(outcomes=[TaskOutcome(task=t, rewards=[0, 1] if t.id == "t3" else [1, 1]) for t in TASKS])
    assert len(c.synthetic) == 1  # t3's variation
    counts = {t.id: 0 for t in TASKS}
    for _ in range(400):
        batch = c.next_tasks(n=2)
        assert sum(t.origin == "synthetic" for t in batch) == 1
        for t in batch:
            if t.origin != "synthetic":
                counts[t.id] += 1
    assert 25 < counts["t3"] < 80 and min(counts.values()) > 25  # expected 50 each
    by_value = build(msgspec.structs.replace(config, seed_sampling="value"), generator=FakeTaskGenerator())
    by_value.observe(outcomes=[TaskOutcome(task=t, rewards=[0, 1] if t.id == "t3" else [1, 1]) for t in TASKS])
    assert all(t.id == "t3" for _ in range(20) for t in by_value.next_tasks(n=2) if t.origin != "synthetic")


def test_seed_sampling_value_draws_as_before():
    # the default keeps the draws of runs made before the option existed
    c = build(RewardEntropyConfig(tasks_to_vary=1), generator=FakeTaskGenerator())
    c.observe(outcomes=[TaskOutcome(task=t, rewards=[0, 1] if t.id in ("t3", "t5") else [1, 1]) for t in TASKS])
    rng = np.random.default_rng(stream_key(SAMPLING_STREAM, 0, 0))
    synthetic = [c.synthetic[i] for i in rng.choice(len(c.synthetic), size=1, replace=False,
                                                     p=sampling_weights([c._value(t) for t in c.synthetic], 0.2))]
    seeds = [TASKS[i] for i in rng.choice(len(TASKS), size=3, replace=False, p=sampling_weights([c._value(t) for t in TASKS], 0.2))]
    chosen = synthetic + seeds
    assert c.next_tasks(n=4) == [chosen[i] for i in rng.permutation(4)]


def test_lambda_zero_with_uniform_seeds_draws_the_uniform_curriculums_tasks():
    # the same generator calls as the 'uniform' plugin (another distribution): the same tasks, in another order
    uniform = pytest.importorskip("dreamgym_plugin_uniform")
    c = build(RewardEntropyConfig(synthetic_share=0.0, seed_sampling="uniform", tasks_to_vary=1), generator=FakeTaskGenerator(), seed=7)
    u = uniform.UniformCurriculum(uniform.UniformConfig(), tasks=TASKS, seed=7)
    for _ in range(5):
        assert sorted(t.id for t in c.next_tasks(n=4)) == sorted(t.id for t in u.next_tasks(n=4))
        c.observe(outcomes=[TaskOutcome(task=t, rewards=[0, 1]) for t in TASKS[:2]])


def test_generator_model_without_a_task_generator_is_refused_when_built_for_a_run():
    # The loop passes task_generator=None when the pipeline has no experience_model: nothing was ever varied.
    with pytest.raises(ConfigError, match=r"^curriculum 'reward-entropy': generator='model' needs an experience_model .*generator: domain\)$"):
        build(domain=FakeDomain())
    build(RewardEntropyConfig(generator="domain"), domain=ProposingDomain())  # needs no model
    build()  # `dreamgym check` builds it with no domain and no task generator


class _NoMakeVariation:
    name = "plain"


def test_a_copied_variation_is_named_after_its_parents_world():
    # Without make_variation the parent is copied (same world): its id must lead world_namer to the
    # parent's world, as a built-in variation's '<world>~syn' does, for loop.demos: same-world-first.
    from dreamgym_core.experience import world_namer

    seed = Task(id="game/7", instruction="take the coin", domain="test", payload={"seed": 7})
    c = dreamgym_register_curricula()[0].factory(
        RewardEntropyConfig(tasks_to_vary=1), tasks=[seed], task_generator=FakeTaskGenerator(pick=0), seed=0, domain=_NoMakeVariation()
    )
    c.observe(outcomes=[TaskOutcome(task=seed, rewards=[0, 1])])
    c.observe(outcomes=[TaskOutcome(task=seed, rewards=[0, 1])])
    c.observe(outcomes=[TaskOutcome(task=c.synthetic[0], rewards=[0, 1])])  # a variation of a variation
    ids = [t.id for t in c.synthetic]
    assert ids == ["game/7~syn1", "game/7~syn2", "game/7~syn3"] and len(set(ids)) == 3
    assert {world_namer(_NoMakeVariation())(i) for i in ids} == {"game/7"}
    assert [t.payload for t in c.synthetic] == [{"seed": 7}] * 3


def test_variations_made_by_the_domain_keep_their_ids():
    # make_variation's ids are the domain's ('<world>~syn' for the built-in domains); only a clash is renamed
    class SameId(FakeDomain):  # another world each time, under one id
        def make_variation(self, parent, text):
            return Task(id=f"{parent.id}/var", instruction=text, domain=parent.domain, payload={"text": text})

    c = build(RewardEntropyConfig(tasks_to_vary=1), generator=FakeTaskGenerator(), domain=SameId())
    c.observe(outcomes=[TaskOutcome(task=TASKS[5], rewards=[0, 1])])
    c.observe(outcomes=[TaskOutcome(task=TASKS[5], rewards=[0, 1])])
    assert [t.id for t in c.synthetic] == ["t5/var", "t5~v2"]


@pytest.mark.parametrize("seed_sampling", ["value", "uniform"])
def test_a_batch_larger_than_the_pool_takes_every_task_as_often(seed_sampling):
    """Drawn with replacement, a batch of 20 from 8 tasks left some out and took others 4 times."""
    for seed in range(5):
        c = build(RewardEntropyConfig(seed_sampling=seed_sampling, tasks_to_vary=0), seed=seed)
        counts = {t.id: 0 for t in TASKS}
        for task in c.next_tasks(n=20):
            counts[task.id] += 1
        assert sorted(set(counts.values())) in ([2], [2, 3]) and sum(counts.values()) == 20, counts
