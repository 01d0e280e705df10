"""stages.seed_task_of: a written copy is played as its root's train task, also when seed tasks
share a payload (a domain whose tasks need no reset data keeps Task's default {})."""

import pytest

from dreamgym_core.records import Task, TaskOutcome
from dreamgym_core.stages import seed_task_of

WEB = [Task(id=f"web/{i}", instruction=f"buy item {i}", domain="d") for i in range(3)]  # payload {} each


def copy_of(parent: Task, task_id: str) -> Task:
    return Task(id=task_id, instruction=parent.instruction + " under $20", domain="d", payload=parent.payload,
                origin="synthetic", parent_id=parent.id)


def test_a_copy_is_played_as_the_train_task_it_is_named_after_not_the_first_with_its_payload():
    # the first payload match played web/1's and web/2's variations as web/0
    assert seed_task_of(copy_of(WEB[1], "web/1~syn1"), WEB) is WEB[1]
    assert seed_task_of(copy_of(WEB[2], "web/2~syn"), WEB) is WEB[2]
    assert seed_task_of(Task(id="web/1~syn7", instruction="x", domain="d", origin="synthetic", parent_id="web/1~syn1"), WEB) is WEB[1]


def test_the_payload_match_remains_the_fallback():
    assert seed_task_of(WEB[2], WEB) is WEB[2]  # a seed task plays itself
    tasks = [Task(id="a", instruction="a", domain="d", payload={"w": 1}), Task(id="b", instruction="b", domain="d", payload={"w": 2})]
    assert seed_task_of(Task(id="other", instruction="x", domain="d", payload={"w": 2}, origin="synthetic"), tasks) is tasks[1]
    # named after 'a' but of b's world: played in the world it has
    assert seed_task_of(Task(id="a~syn1", instruction="x", domain="d", payload={"w": 2}, origin="synthetic"), tasks) is tasks[1]
    assert seed_task_of(Task(id="a~syn2", instruction="x", domain="d", payload={"w": 3}, origin="synthetic"), tasks) is None


def test_reward_entropys_copy_on_a_domain_without_make_variation_plays_its_parent():
    re = pytest.importorskip("dreamgym_plugin_reward_entropy")

    class Generator:  # test double for M_task
        def vary_tasks(self, *, task, n):
            return [task.instruction + " under $20"]

        def select_task(self, *, task, candidates):
            return 0

    class Plain:  # a domain without make_variation
        name = "d"

    (spec,) = re.dreamgym_register_curricula()
    c = spec.factory(re.RewardEntropyConfig(tasks_to_vary=1), tasks=WEB, task_generator=Generator(), encoder=None, seed=0, domain=Plain())
    c.observe(outcomes=[TaskOutcome(task=WEB[1], rewards=[0.0, 1.0])])
    (copy,) = c.synthetic
    assert copy.parent_id == "web/1" and seed_task_of(copy, WEB) is WEB[1]
