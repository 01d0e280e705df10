"""Curriculum wiring without Ray: outcome groups, the task feed, dataset rows, phases."""

from __future__ import annotations

import json

import msgspec
import pytest

from dreamgym_core.errors import DataError
from dreamgym_core.records import Task, TaskOutcome
from dreamgym_plugin_verl.curriculum import CurriculumActor, OutcomeGroups, TaskFeed, phase_for
from dreamgym_plugin_verl.dataset import DreamGymTaskDataset, feed_spec_path, write_tasks

TASKS = [Task(id=f"t{i}", instruction=f"task {i}", domain="d") for i in range(5)]


class RecordingCurriculum:
    """Test curriculum: hands out tasks in order and records what it observes."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.observed: list[TaskOutcome] = []
        self.observe_calls = 0

    def next_tasks(self, *, n: int) -> list[Task]:
        self.calls.append(n)
        start = sum(self.calls[:-1])
        return [TASKS[(start + i) % len(TASKS)] for i in range(n)]

    def observe(self, *, outcomes) -> None:
        self.observed += list(outcomes)
        self.observe_calls += 1

    def state_dict(self):
        return {"calls": self.calls, "observed": msgspec.to_builtins(self.observed)}

    def load_state_dict(self, state) -> None:
        self.calls = list(state["calls"])
        self.observed = msgspec.convert(state["observed"], list[TaskOutcome])


def test_outcome_groups_complete_per_task():
    groups = OutcomeGroups(group_size=3)
    assert groups.add(TaskOutcome(task=TASKS[0], rewards=[1.0])) == []
    assert groups.add(TaskOutcome(task=TASKS[1], rewards=[0.0])) == []
    assert groups.add(TaskOutcome(task=TASKS[0], rewards=[0.0])) == []
    done = groups.add(TaskOutcome(task=TASKS[0], rewards=[1.0]))
    assert done == [TaskOutcome(task=TASKS[0], rewards=[1.0, 0.0, 1.0])]
    assert list(groups.pending) == ["t1"]


def test_curriculum_actor_logic_in_process():
    actor = CurriculumActor(RecordingCurriculum, group_size=2)
    tasks = msgspec.msgpack.decode(actor.next_tasks(2), type=list[Task])
    assert tasks == TASKS[:2]
    encode = msgspec.msgpack.encode
    assert actor.record(encode(TaskOutcome(task=TASKS[0], rewards=[1.0]))) == 0
    assert actor.record(encode(TaskOutcome(task=TASKS[0], rewards=[0.0]))) == 1
    actor.next_tasks(2)  # the next step's draw observes the finished step first
    assert actor.curriculum.observed == [TaskOutcome(task=TASKS[0], rewards=[1.0, 0.0])]


def test_curriculum_actor_observes_a_step_in_one_call():
    """The local loop calls observe() once an iteration with all its groups; reward-entropy
    varies its top ``tasks_to_vary`` tasks and pools clusters per call. The actor must do the
    same, not observe each group as its last episode comes in."""
    actor = CurriculumActor(RecordingCurriculum, group_size=2)
    encode = msgspec.msgpack.encode
    step = msgspec.msgpack.decode(actor.next_tasks(2), type=list[Task])
    for reward in (1.0, 0.0):
        for task in step:
            actor.record(encode(TaskOutcome(task=task, rewards=[reward])))
    assert actor.curriculum.observe_calls == 0  # the step is over only when the next one starts
    actor.next_tasks(2)
    assert actor.curriculum.observe_calls == 1
    assert actor.curriculum.observed == [TaskOutcome(task=t, rewards=[1.0, 0.0]) for t in step]
    actor.next_tasks(2)  # nothing new: no empty observe
    assert actor.curriculum.observe_calls == 1


def test_feed_asks_once_per_step_in_sequential_order():
    curriculum = RecordingCurriculum()
    feed = TaskFeed(lambda n, step: curriculum.next_tasks(n=n), batch_size=2, iterations=3, phase=lambda s: "synthetic")
    assert len(feed) == 6
    ids = [feed.task(i)[1].id for i in range(6)]
    assert ids == ["t0", "t1", "t2", "t3", "t4", "t0"]
    assert curriculum.calls == [2, 2, 2]
    assert [feed.task(i)[0] for i in range(6)] == [0, 0, 1, 1, 2, 2]


def test_feed_rejects_short_batches():
    feed = TaskFeed(lambda n, step: TASKS[:1], batch_size=2, iterations=1, phase=lambda s: "real")
    with pytest.raises(Exception, match="curriculum returned 1 tasks for a batch of 2"):
        feed.task(0)


@pytest.mark.parametrize(
    ("mode", "phases"),
    [("dreamgym", ["synthetic"] * 4), ("real", ["real"] * 4), ("s2r", ["synthetic", "synthetic", "synthetic", "real"])],
)
def test_phase_for(mode, phases):
    assert [phase_for(i, mode=mode, iterations=4, s2r_synthetic_share=0.75) for i in range(4)] == phases


def test_dataset_rows_carry_task_phase_and_agent(tmp_path):
    path = tmp_path / "train_tasks.jsonl"
    write_tasks(path, TASKS)
    spec = {"batch_size": 2, "iterations": 2, "mode": "s2r", "s2r_synthetic_share": 0.5, "seed": 1, "curriculum_actor": ""}
    feed_spec_path(path).write_text(json.dumps(spec))
    ds = DreamGymTaskDataset(data_files=[str(path)], tokenizer=None, processor=None, config=None)
    assert len(ds) == 4
    rows = [ds[i] for i in range(4)]
    assert [r["phase"] for r in rows] == ["synthetic", "synthetic", "real", "real"]
    assert msgspec.json.decode(rows[2]["task"], type=Task) == TASKS[2]
    assert rows[0]["agent_name"] == "dreamgym_agent" and rows[0]["raw_prompt"][0]["content"] == "task 0"
    assert len({r["seed"] for r in rows}) == 4


def test_resumed_dataset_goes_on_at_its_row(tmp_path):
    """verl resumes its dataloader at the checkpoint's row with a dataset built afresh: without a
    curriculum, row i must hold the task it held in the uninterrupted run (not restart at t0)."""
    path = tmp_path / "train_tasks.jsonl"
    write_tasks(path, TASKS)
    spec = {"batch_size": 2, "iterations": 4, "mode": "real", "s2r_synthetic_share": 0.75, "seed": 0, "curriculum_actor": ""}
    feed_spec_path(path).write_text(json.dumps(spec))
    ids = lambda ds, rows: [msgspec.json.decode(ds[i]["task"], type=Task).id for i in rows]  # noqa: E731
    whole = ids(DreamGymTaskDataset(data_files=str(path)), range(8))
    assert whole == ["t0", "t1", "t2", "t3", "t4", "t0", "t1", "t2"]
    assert ids(DreamGymTaskDataset(data_files=str(path)), range(4, 8)) == whole[4:]


class InProcessCurriculum:
    """RemoteCurriculum's calls, on a CurriculumActor in this process (no Ray)."""

    def __init__(self, actor: CurriculumActor) -> None:
        self.actor = actor

    def next_tasks(self, n: int) -> list[Task]:
        return msgspec.msgpack.decode(self.actor.next_tasks(n), type=list[Task])

    def state_dict(self) -> bytes:
        return self.actor.state_dict()

    def load_state_dict(self, state: bytes) -> None:
        self.actor.load_state_dict(state)


def test_resumed_run_restores_the_curriculum_through_the_dataloader(tmp_path, monkeypatch):
    """verl saves its StatefulDataLoader's state_dict with each checkpoint (data.pt) and loads it
    on resume; the dataset's state there must carry the curriculum actor's state (observed
    outcomes, draws, the last step's groups not yet observed), since the actor starts afresh."""
    from torchdata.stateful_dataloader import StatefulDataLoader

    import dreamgym_plugin_verl.dataset as dataset_module

    path = tmp_path / "train_tasks.jsonl"
    write_tasks(path, TASKS)
    spec = {"batch_size": 2, "iterations": 4, "mode": "real", "s2r_synthetic_share": 0.75, "seed": 0, "curriculum_actor": "c"}
    feed_spec_path(path).write_text(json.dumps(spec))

    def run() -> tuple[CurriculumActor, StatefulDataLoader]:
        actor = CurriculumActor(RecordingCurriculum, group_size=1)
        monkeypatch.setattr(dataset_module.RemoteCurriculum, "connect", classmethod(lambda cls, name: InProcessCurriculum(actor)))
        loader = StatefulDataLoader(DreamGymTaskDataset(data_files=str(path)), batch_size=2, shuffle=False, collate_fn=list)
        return actor, loader

    def play(actor: CurriculumActor, rows: list[dict], reward: float) -> None:
        for row in rows:
            task = msgspec.json.decode(row["task"], type=Task)
            actor.record(msgspec.msgpack.encode(TaskOutcome(task=task, rewards=[reward])))

    first, loader = run()
    steps = iter(loader)
    play(first, next(steps), 1.0)
    play(first, next(steps), 0.0)
    saved = loader.state_dict()  # verl's checkpoint after step 2
    expected = [row["task"] for row in next(steps)]
    observed = list(first.curriculum.observed)

    again, resumed = run()
    resumed.load_state_dict(saved)
    assert [row["task"] for row in next(iter(resumed))] == expected
    assert again.curriculum.observed == observed and again.curriculum.calls == first.curriculum.calls


def test_validation_dataset_is_the_file_in_order(tmp_path):
    path = tmp_path / "val_tasks.jsonl"
    write_tasks(path, TASKS[:3])
    ds = DreamGymTaskDataset(data_files=str(path))
    assert len(ds) == 3 and ds[1]["phase"] == "real" and "t1" in ds[1]["task"]


def test_bad_task_file_names_file_and_line(tmp_path):
    path = tmp_path / "tasks.jsonl"
    path.write_text(msgspec.json.encode(TASKS[0]).decode() + "\n{\"id\": 3}\n")
    with pytest.raises(DataError, match=r"tasks.jsonl:2: not a Task record"):
        DreamGymTaskDataset(data_files=str(path))


class SeededBackend:
    """Test double of a sampling LM: its text depends only on the call's seed (and the prompt's
    place), which it records; the selection prompt always picks the first candidate."""

    model_id = "fake"

    def __init__(self) -> None:
        self.seeds: list[int] = []

    def generate(self, *, prompts, max_new_tokens, temperature, stop, seed=None):
        self.seeds.append(seed)
        if prompts and prompts[0].startswith("Choose"):
            return [" 1"]
        return [f"put the thing {seed % 1_000_003}.{i} in the box" for i, _ in enumerate(prompts)]


def _reward_entropy_with_m_task():
    from dreamgym_core.experience import ExperienceModelConfig, LMExperienceModel

    entropy = pytest.importorskip("dreamgym_plugin_reward_entropy")
    (spec,) = entropy.dreamgym_register_curricula()
    tasks = [Task(id=f"t{i}", instruction=f"put the item {i} in the box", domain="d") for i in range(6)]
    generator = LMExperienceModel(SeededBackend(), ExperienceModelConfig())
    return spec.factory(entropy.RewardEntropyConfig(tasks_to_vary=1), tasks=tasks, task_generator=generator, seed=0, domain=None)


def _play(stop_at=None, steps=4, saved=lambda state: state):
    """The synthetic tasks after each of ``steps`` steps; with ``stop_at``, the actor is saved and
    rebuilt (as verl's resume does) before that step; ``saved`` edits the saved state."""
    actor, log = CurriculumActor(_reward_entropy_with_m_task, group_size=2), []
    encode = msgspec.msgpack.encode
    for step in range(steps):
        if step == stop_at:
            state = saved(actor.state_dict())
            actor = CurriculumActor(_reward_entropy_with_m_task, group_size=2)
            actor.load_state_dict(state)
        for task in msgspec.msgpack.decode(actor.next_tasks(3), type=list[Task]):
            for reward in (0.0, 1.0):  # every task's group has reward variance: one is varied each step
                actor.record(encode(TaskOutcome(task=task, rewards=[reward])), f"{task.id}/{step}")
        actor.metrics()
        log.append([t.instruction for t in actor.curriculum.synthetic])
    return log


def test_a_resumed_curriculum_actor_writes_the_variations_of_an_uninterrupted_run():
    """M_task's call count seeds each of its calls; the actor's state keeps it, so a resumed
    run's variations are the uninterrupted run's (they restarted at call 1's seeds)."""
    uninterrupted = _play()
    assert len(set(uninterrupted[-1])) >= 3  # the generator wrote several variations
    for stop_at in (1, 2, 3):
        assert _play(stop_at=stop_at) == uninterrupted


def test_an_actor_state_saved_before_the_generator_was_kept_still_loads():
    def without_generator(payload: bytes) -> bytes:
        state = json.loads(payload)
        assert state.pop("generator")["calls"] > 0
        return json.dumps(state).encode()

    resumed = _play(stop_at=2, saved=without_generator)
    assert len(resumed) == 4 and resumed[:2] == _play()[:2]


def _built_curriculum(monkeypatch, draw: int):
    """build_curriculum's task generator and a worker's M_exp, both over one recording backend."""
    from types import SimpleNamespace

    from dreamgym_core.experience import ExperienceModelConfig, LMExperienceModel
    from dreamgym_plugin_verl import runtime

    backend = SeededBackend()
    config = ExperienceModelConfig(seed=3, draw=draw)
    pipeline = SimpleNamespace(
        env=SimpleNamespace(name="d"), curriculum=SimpleNamespace(name="c"), encoder=None, seed=3,
        loop=SimpleNamespace(experience_draw=draw),
    )
    built: dict = {}

    def build(kind, name, config, **kwargs):
        return SimpleNamespace(tasks=lambda split: TASKS) if kind == "env" else built.update(kwargs) or built

    plugins = SimpleNamespace(build=build)
    monkeypatch.setattr(runtime, "_load", lambda run_dir: (SimpleNamespace(pipeline=pipeline, components={"env": None, "curriculum": None}), plugins))
    monkeypatch.setattr(runtime, "_experience_model", lambda *a: LMExperienceModel(backend, config))
    runtime.build_curriculum("run")
    return built["task_generator"], LMExperienceModel(backend, config), backend


def test_the_curriculum_actors_task_generator_draws_from_a_stream_of_its_own(monkeypatch):
    """The actor's M_task is built like the workers' M_exp (same weights, seed and draw); on the
    same stream, its call k and a worker's synthetic-step call k sampled with the same noise."""
    seeds = {}
    for draw in (0, 1):
        generator, worker, backend = _built_curriculum(monkeypatch, draw)
        generator.vary_tasks(task=TASKS[0], n=1)
        worker.vary_tasks(task=TASKS[0], n=1)  # a worker's first call, as M_exp
        task_seed, worker_seed = backend.seeds
        assert task_seed != worker_seed
        seeds[draw] = task_seed
    assert seeds[0] != seeds[1]  # another draw of M_exp is another draw of M_task too, as in the local loop



class WritingCurriculum:
    """Stands in for a RemoteCurriculum that hands out written copies of the train tasks' worlds
    (what reward-entropy writes on a domain without make_variation: a new instruction, the
    parent's payload)."""

    def __init__(self, tasks: list[Task]) -> None:
        self.tasks = tasks

    def next_tasks(self, n: int) -> list[Task]:
        return [
            msgspec.structs.replace(t, id=f"{t.id}~syn", instruction=f"written {i}", origin="synthetic", parent_id=t.id)
            for i, t in enumerate(self.tasks[:n])
        ]


@pytest.mark.parametrize("real_as_seed", [True, False])
def test_a_real_step_plays_a_written_copy_as_its_seed_task_when_the_domain_cannot_build_it(tmp_path, monkeypatch, real_as_seed):
    """The real environment scores the seed task's goal, not the copy's written instruction: real
    RL rewarded ignoring it. A domain with make_variation builds each variation's own world."""
    import dreamgym_plugin_verl.dataset as dataset_module

    tasks = [msgspec.structs.replace(t, payload={"world": i}) for i, t in enumerate(TASKS)]
    path = tmp_path / "train_tasks.jsonl"
    write_tasks(path, tasks)
    spec = {"batch_size": 2, "iterations": 2, "mode": "s2r", "s2r_synthetic_share": 0.5, "seed": 0, "curriculum_actor": "c",
            "real_as_seed": real_as_seed}
    feed_spec_path(path).write_text(json.dumps(spec))
    monkeypatch.setattr(dataset_module.RemoteCurriculum, "connect", classmethod(lambda cls, name: WritingCurriculum(tasks)))
    ds = DreamGymTaskDataset(data_files=str(path))
    rows = [ds[i] for i in range(4)]
    played = [msgspec.json.decode(r["task"], type=Task) for r in rows]
    assert [r["phase"] for r in rows] == ["synthetic", "synthetic", "real", "real"]
    assert [t.instruction for t in played[:2]] == ["written 0", "written 1"]  # synthetic steps play the copy as written
    if real_as_seed:
        assert played[2:] == tasks[:2]
    else:
        assert [t.instruction for t in played[2:]] == ["written 0", "written 1"]


def test_a_written_task_of_no_train_world_stops_a_real_step_in_one_line(tmp_path, monkeypatch):
    import dreamgym_plugin_verl.dataset as dataset_module

    path = tmp_path / "train_tasks.jsonl"
    write_tasks(path, TASKS)
    spec = {"batch_size": 1, "iterations": 1, "mode": "real", "s2r_synthetic_share": 0.0, "seed": 0, "curriculum_actor": "c",
            "real_as_seed": True}
    feed_spec_path(path).write_text(json.dumps(spec))
    elsewhere = [msgspec.structs.replace(TASKS[0], payload={"world": "made up"})]
    monkeypatch.setattr(dataset_module.RemoteCurriculum, "connect", classmethod(lambda cls, name: WritingCurriculum(elsewhere)))
    with pytest.raises(DataError, match=r"curriculum task 't0~syn' \(origin 'synthetic'\) reached a real step"):
        DreamGymTaskDataset(data_files=str(path))[0]
