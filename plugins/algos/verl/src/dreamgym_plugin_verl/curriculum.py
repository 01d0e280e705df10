"""The curriculum on verl: which tasks each step's batch holds, and what the curriculum learns.

verl draws a step's prompts from its dataset through its sampler; with
``data.shuffle=False`` the sampler is sequential, so row ``i`` belongs to step
``i // batch_size``. :class:`TaskFeed` maps rows to curriculum batches: the first
row of a step asks the curriculum for that step's tasks. Agent-loop workers report
each episode's outcome; :class:`OutcomeGroups` assembles a task's group of
``group_size`` rewards (reward variance is computed over that GRPO group, as in the
paper). :class:`CurriculumActor` holds the curriculum in one Ray actor that the dataset
and every worker share; it hands a step's completed groups to ``curriculum.observe`` in
one call when the next step asks for tasks, as the local loop observes an iteration.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import msgspec

from dreamgym_core.config import s2r_synthetic_iterations
from dreamgym_core.errors import DreamGymError
from dreamgym_core.records import Task, TaskOutcome

from .buffer_actor import NAMESPACE

__all__ = ["phase_for", "OutcomeGroups", "TaskFeed", "CurriculumActor", "RemoteCurriculum"]

_tasks = msgspec.msgpack.Decoder(list[Task])
_outcome = msgspec.msgpack.Decoder(TaskOutcome)
_encode = msgspec.msgpack.Encoder().encode
_json = msgspec.json.Encoder().encode

log = logging.getLogger(__name__)


class _ActorState(msgspec.Struct, frozen=True):
    """What a :class:`CurriculumActor` saves with verl's checkpoint (through the dataset)."""

    curriculum: dict[str, Any]
    # The task generator's (M_task's call count seeds its variations); None in a state saved before
    # it was kept, or for a generator without state.
    generator: dict[str, Any] | None = None
    collected: list[TaskOutcome] = []
    pending: list[TaskOutcome] = []
    pending_groups: list[str] = []  # the group key of each pending outcome (verl's row uid)


def phase_for(iteration: int, *, mode: str, iterations: int, s2r_synthetic_share: float) -> str:
    """The environment of ``iteration``: "synthetic" or "real" (s2r: synthetic first)."""
    if mode == "s2r":
        return "synthetic" if iteration < s2r_synthetic_iterations(iterations, s2r_synthetic_share) else "real"
    return "synthetic" if mode == "dreamgym" else "real"


class OutcomeGroups:
    """Collects single-episode outcomes into groups of ``group_size`` rewards.

    An outcome belongs to the group its ``group`` key names (verl's ``uid`` of the row: one
    row, one group of sessions) or, without one, to its task's. verl's V1 worker drops a whole
    row when one of its sessions fails, after the sessions that finished reported: that group
    never completes, and :meth:`drop_partial` removes it before the next step's outcomes arrive
    (a later draw of the task would otherwise complete it with another policy's rewards)."""

    def __init__(self, group_size: int) -> None:
        self.group_size = group_size
        self.pending: dict[str, tuple[Task, list[float]]] = {}

    def add(self, outcome: TaskOutcome, group: str = "") -> list[TaskOutcome]:
        """Record ``outcome``; returns the groups it completed (usually none or one)."""
        key = group or outcome.task.id
        task, rewards = self.pending.get(key, (outcome.task, []))
        rewards = rewards + list(outcome.rewards)
        done = []
        while len(rewards) >= self.group_size:
            done.append(TaskOutcome(task=task, rewards=rewards[: self.group_size]))
            rewards = rewards[self.group_size :]
        if rewards:
            self.pending[key] = (task, rewards)
        else:
            self.pending.pop(key, None)
        return done

    def drop_partial(self) -> int:
        """Forget the groups still incomplete (a failed row's); returns how many there were."""
        dropped = len(self.pending)
        self.pending = {}
        return dropped


class TaskFeed:
    """Dataset rows drawn from a curriculum, one batch of ``batch_size`` tasks per step.

    ``next_tasks(n, step)`` returns step ``step``'s ``n`` tasks; a curriculum draws in order
    (verl asks step by step), a fixed task list places its batch by ``step``."""

    def __init__(self, next_tasks: Callable[[int, int], list[Task]], *, batch_size: int, iterations: int, phase: Callable[[int], str], seed: int = 0) -> None:
        self.next_tasks = next_tasks
        self.batch_size = batch_size
        self.iterations = iterations
        self.phase = phase
        self.seed = seed
        self._step = -1
        self._batch: list[Task] = []

    def __len__(self) -> int:
        return self.iterations * self.batch_size

    def task(self, index: int) -> tuple[int, Task]:
        """(step, task) of row ``index``; asks the curriculum once per step."""
        step, slot = divmod(index, self.batch_size)
        if step != self._step:
            batch = self.next_tasks(self.batch_size, step)
            if len(batch) != self.batch_size:
                raise DreamGymError(f"curriculum returned {len(batch)} tasks for a batch of {self.batch_size}")
            self._step, self._batch = step, batch
        return step, self._batch[slot]

    def row(self, index: int) -> dict[str, Any]:
        step, task = self.task(index)
        return task_row(task, index=index, phase=self.phase(step), seed=self.seed * 1_000_003 + index)


def task_row(task: Task, *, index: int, phase: str, seed: int, publish: bool = True) -> dict[str, Any]:
    """One verl dataset row: the agent loop reads ``task``, ``phase``, ``seed`` and ``publish``
    (False for validation rows: their episodes reach neither the buffer nor the curriculum)."""
    import torch

    from .config import AGENT_LOOP_NAME

    return {
        "raw_prompt": [{"role": "user", "content": task.instruction}],
        "task": msgspec.json.encode(task).decode(),
        "phase": phase,
        "seed": seed,
        "publish": publish,
        "agent_name": AGENT_LOOP_NAME,
        "data_source": f"dreamgym/{task.domain}",
        "index": index,
        "extra_info": {"task_id": task.id, "origin": task.origin},
        "tools_kwargs": {},
        "interaction_kwargs": {},
        "dummy_tensor": torch.tensor([0], dtype=torch.uint8),
    }


class CurriculumActor:
    """Holds the curriculum for the dataset and all agent-loop workers (``ray.remote`` it)."""

    def __init__(self, make_curriculum: Callable[[], Any], group_size: int) -> None:
        self.curriculum = make_curriculum()
        self.groups = OutcomeGroups(group_size)
        self.collected: list[TaskOutcome] = []  # the groups completed since the last observe
        self.observed = 0

    def next_tasks(self, n: int) -> bytes:
        self._observe()
        # verl's synchronous trainer has played every row of the last step: a group still
        # incomplete lost a session (its row failed) and never completes.
        dropped = self.groups.drop_partial()
        if dropped:
            log.warning("curriculum: %d incomplete group(s) of the last step dropped (a session of theirs failed)", dropped)
        return _encode(self.curriculum.next_tasks(n=n))

    def record(self, payload: bytes, group: str = "") -> int:
        """Add one episode outcome of row ``group`` (verl's uid; empty: group by task);
        returns how many groups were completed so far."""
        done = self.groups.add(_outcome.decode(payload), group)
        self.collected += done
        self.observed += len(done)
        return self.observed

    def _observe(self) -> None:
        """Observe the collected groups in one call, as the local loop observes an iteration's
        groups (dreamgym_core.loop's _advance_curriculum): reward-entropy applies
        ``tasks_to_vary`` and pools clusters per call. verl's synchronous trainer finishes
        step k before it draws step k+1's rows, so these are step k's groups. The last step's
        are observed by ``metrics`` if asked (the local loop reports metrics after observing),
        and ``state_dict`` keeps them for a resumed run."""
        if self.collected:
            self.curriculum.observe(outcomes=self.collected)
            self.collected = []

    def metrics(self) -> dict[str, float]:
        """The curriculum's metrics after it observed every completed group: ask between steps
        (asked mid-step, it would observe that step's groups in two calls)."""
        self._observe()
        return dict(self.curriculum.metrics()) if hasattr(self.curriculum, "metrics") else {}

    def _generator(self) -> Any:
        """The curriculum's task generator when it keeps one (reward-entropy's ``generator``) with
        a state of its own, else None. In the local loop M_task is the run's experience model,
        saved with the run; here the actor builds its own, which only this state saves."""
        generator = getattr(self.curriculum, "generator", None)
        has_state = callable(getattr(generator, "state_dict", None)) and callable(getattr(generator, "load_state_dict", None))
        return generator if has_state else None

    def state_dict(self) -> bytes:
        """The curriculum and its task generator, with the outcomes it has not observed yet (see
        ``_observe``). Without the generator's call count, a resumed run's M_task drew its variations
        with the seeds of the run's first calls again, and wrote other tasks than an uninterrupted run."""
        groups = list(self.groups.pending)
        pending = [TaskOutcome(task=task, rewards=rewards) for task, rewards in self.groups.pending.values()]
        generator = self._generator()
        return _json(_ActorState(
            curriculum=self.curriculum.state_dict(), generator=generator.state_dict() if generator is not None else None,
            collected=self.collected, pending=pending, pending_groups=groups,
        ))

    def load_state_dict(self, payload: bytes) -> None:
        state = msgspec.json.decode(payload, type=_ActorState)
        self.curriculum.load_state_dict(state.curriculum)
        generator = self._generator()
        if generator is not None and state.generator is not None:  # a state saved before it was kept has none
            generator.load_state_dict(state.generator)
        self.collected = list(state.collected)
        self.groups = OutcomeGroups(self.groups.group_size)
        groups = state.pending_groups if len(state.pending_groups) == len(state.pending) else [""] * len(state.pending)
        for outcome, group in zip(state.pending, groups):
            self.groups.add(outcome, group)


class RemoteCurriculum:
    """Client of a :class:`CurriculumActor`: ``next_tasks`` for the feed, ``report`` for workers."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    @classmethod
    def start(cls, make_curriculum: Callable[[], Any], *, group_size: int, name: str | None = None) -> RemoteCurriculum:
        import ray

        options: dict[str, Any] = {"num_cpus": 0}
        if name:
            options |= {"name": name, "namespace": NAMESPACE, "get_if_exists": True}
        client = cls(ray.remote(CurriculumActor).options(**options).remote(make_curriculum, group_size))
        client.metrics()  # raises here, not at first use, if the curriculum cannot be built
        return client

    @classmethod
    def connect(cls, name: str) -> RemoteCurriculum:
        import ray

        try:
            return cls(ray.get_actor(name, namespace=NAMESPACE))
        except ValueError as exc:
            raise DreamGymError(f"curriculum actor {name!r} is not running in this Ray cluster") from exc

    def next_tasks(self, n: int) -> list[Task]:
        import ray

        return _tasks.decode(ray.get(self.handle.next_tasks.remote(n)))

    def report(self, outcome: TaskOutcome, group: str = "") -> None:
        """Send one episode's outcome; ``group`` names its row (verl's uid), whose sessions form a group."""
        import ray

        ray.get(self.handle.record.remote(_encode(outcome), group))

    def metrics(self) -> dict[str, float]:
        import ray

        return ray.get(self.handle.metrics.remote())

    def state_dict(self) -> bytes:
        import ray

        return ray.get(self.handle.state_dict.remote())

    def load_state_dict(self, state: bytes) -> None:
        import ray

        ray.get(self.handle.load_state_dict.remote(state))

    def close(self) -> None:
        """Nothing to release: the curriculum's state lives in the actor until the run ends."""
