"""The shared buffer and curriculum as Ray actors, on a local Ray (started once here).

Inner components are real plugins: the ``exact`` buffer and the ``uniform`` curriculum.
"""

from __future__ import annotations

from functools import partial

import pytest

from dreamgym_core.records import Task, TaskOutcome
from dreamgym_core.testing import BagOfWordsEncoder, check_buffer, make_transitions
from dreamgym_plugin_verl.buffer_actor import RemoteBuffer
from dreamgym_plugin_verl.curriculum import RemoteCurriculum

ray = pytest.importorskip("ray")
exact = pytest.importorskip("dreamgym_plugin_exact")
uniform = pytest.importorskip("dreamgym_plugin_uniform")
ExactConfig = pytest.importorskip("dreamgym_plugin_exact.config").ExactConfig


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="dreamgym-tests")
    yield
    ray.shutdown()


def exact_buffer(path: str):
    return partial(exact.make_exact, ExactConfig(), encoder=BagOfWordsEncoder(), path=path)


def test_remote_buffer_passes_the_conformance_kit(local_ray, tmp_path):
    counter = iter(range(100))
    check_buffer(lambda: RemoteBuffer.start(exact_buffer(str(tmp_path / f"b{next(counter)}"))))


def test_named_buffer_is_shared_between_clients(local_ray, tmp_path):
    owner = RemoteBuffer.start(exact_buffer(str(tmp_path / "shared")), name="buffer-shared-test")
    worker = RemoteBuffer.connect("buffer-shared-test")
    added = worker.add(transitions=make_transitions(5, source="synthetic"))
    assert added == 5 and len(owner) == 5
    hits = owner.retrieve(queries=[("state t-0", "action t-0")], k=2)
    assert len(hits) == 1 and len(hits[0]) == 2
    owner.close()
    owner.close()


def test_connect_to_missing_actor_is_a_clear_error(local_ray):
    with pytest.raises(Exception, match="shared buffer actor 'nope' is not running"):
        RemoteBuffer.connect("nope")


def test_curriculum_actor_observes_complete_groups(local_ray):
    tasks = [Task(id=f"t{i}", instruction=f"task {i}", domain="d") for i in range(4)]
    make = partial(uniform.UniformCurriculum, uniform.UniformConfig(), tasks=tasks, seed=0)
    curriculum = RemoteCurriculum.start(make, group_size=2, name="curriculum-test")
    batch = RemoteCurriculum.connect("curriculum-test").next_tasks(3)
    assert len(batch) == 3 and all(isinstance(t, Task) for t in batch)
    curriculum.report(TaskOutcome(task=tasks[0], rewards=[1.0]))
    assert curriculum.metrics()["curriculum/observed_tasks"] == 0.0  # group not complete yet
    curriculum.report(TaskOutcome(task=tasks[0], rewards=[0.0]))
    metrics = curriculum.metrics()
    assert metrics["curriculum/observed_tasks"] == 1.0 and metrics["curriculum/mean_reward"] == 0.5
