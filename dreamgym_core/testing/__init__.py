"""Conformance kit: check a component against its contract.

Each check raises :class:`~dreamgym_core.errors.ConformanceError` with a precise
message. Every built-in plugin runs the kit against itself in its own tests, and
``dreamgym check PLUGIN`` runs it from the command line.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import msgspec
import numpy as np

from ..errors import ConformanceError
from ..hookspecs import hookimpl
from ..records import ExperienceRequest, ExperienceResult, Observation, StepResult, Task, TaskOutcome, Trajectory, Transition

__all__ = [
    "check_env",
    "check_domain",
    "check_experience_model",
    "check_encoder",
    "check_buffer",
    "check_curriculum",
    "check_algorithm",
    "make_transitions",
    "BagOfWordsEncoder",
    "LifecycleRecorder",
]

DOCS = "see docs/conformance.md"


def _fail(component: Any, message: str) -> ConformanceError:
    return ConformanceError(f"{type(component).__name__}: {message} ({DOCS})")


def _expect(component: Any, value: Any, kind: type, what: str) -> None:
    if not isinstance(value, kind):
        raise _fail(component, f"{what} returned {type(value).__name__}, expected {kind.__name__}")


def check_env(env: Any, task: Task, *, actions: int = 3, seed: int = 0) -> None:
    """Types of reset/step, determinism under one seed, idempotent close."""

    def play() -> list[Any]:
        trace: list[Any] = []
        obs = env.reset(task=task, seed=seed)
        _expect(env, obs, Observation, "reset()")
        trace.append(obs)
        for _ in range(actions):
            action = obs.admissible_actions[0] if obs.admissible_actions else "look"
            result = env.step(action=action)
            _expect(env, result, StepResult, "step()")
            if not math.isfinite(result.reward):
                raise _fail(env, f"step() reward {result.reward} is not finite")
            if result.success and not result.done:
                raise _fail(env, "step() reported success on a step that is not done")
            trace.append(result)
            obs = result.observation
            if result.done:
                break
        return trace

    first, second = play(), play()
    if msgspec.json.encode(first) != msgspec.json.encode(second):
        raise _fail(env, "same task and seed gave different observations or rewards")
    env.close()
    env.close()  # must be idempotent


def check_domain(domain: Any) -> None:
    """Splits are non-empty, disjoint by id; make_env passes check_env on a train task."""
    ids: dict[str, set[str]] = {}
    for split in ("train", "test"):
        tasks = domain.tasks(split=split)
        if not tasks:
            raise _fail(domain, f"tasks(split={split!r}) is empty")
        for task in tasks:
            _expect(domain, task, Task, "tasks()")
        ids[split] = {t.id for t in tasks}
    if ids["train"] & ids["test"]:
        raise _fail(domain, f"train and test splits share tasks: {sorted(ids['train'] & ids['test'])[:3]}")
    check_env(domain.make_env(), domain.tasks(split="train")[0])


def check_experience_model(model: Any, requests: Sequence[ExperienceRequest]) -> None:
    """Batched predict returns one parsed result per request, with valid fields."""
    results = model.predict(requests=list(requests))
    if not isinstance(results, list) or len(results) != len(requests):
        raise _fail(model, f"predict() returned {len(results) if isinstance(results, list) else results!r} results for {len(requests)} requests")
    for result in results:
        _expect(model, result, ExperienceResult, "predict()")
        if result.parse_status not in ("ok", "repaired", "failed"):
            raise _fail(model, f"unknown parse_status {result.parse_status!r}")
        if result.parse_status == "failed" and (result.success or not result.done):
            raise _fail(model, "an unparsable result must end the episode as a failure")
    if not isinstance(getattr(model, "model_id", None), str):
        raise _fail(model, "model_id must be a str")


def check_encoder(encoder: Any) -> None:
    """float32 rows of the declared dim, L2-normalised, deterministic."""
    texts = ["open the fridge", "take apple from table", ""]
    a = encoder.encode(texts=texts)
    b = encoder.encode(texts=texts)
    if not isinstance(a, np.ndarray) or a.dtype != np.float32 or a.shape != (3, encoder.dim):
        raise _fail(encoder, f"encode() returned {getattr(a, 'dtype', type(a))} {getattr(a, 'shape', '')}, expected float32 (3, {encoder.dim})")
    norms = np.linalg.norm(a[:2], axis=1)
    if not np.allclose(norms, 1.0, atol=1e-3):
        raise _fail(encoder, f"rows are not L2-normalised (norms {norms})")
    if not np.allclose(a, b, atol=1e-5):
        raise _fail(encoder, "encode() is not deterministic")
    if not isinstance(encoder.id, str) or not encoder.id:
        raise _fail(encoder, "id must be a non-empty str naming model and version")


def make_transitions(n: int, *, source: str = "offline", prefix: str = "t") -> list[Transition]:
    """Distinct, plausible transitions for tests (text varies so retrieval is meaningful)."""
    rooms = ["kitchen", "pantry", "garden", "bedroom", "bathroom", "corridor"]
    objects = ["apple", "key", "coin", "book", "lamp", "knife", "towel"]
    out = []
    for i in range(n):
        room, obj = rooms[i % len(rooms)], objects[(i // len(rooms)) % len(objects)]
        out.append(
            Transition(
                task_id=f"{prefix}-task-{i % 5}",
                episode_id=f"{prefix}-ep-{i // 4}",
                step=i % 4,
                state=f"You are in the {room}. You see a {obj}. ({i})",
                action=f"take {obj}",
                next_state=f"You take the {obj} in the {room}. ({i})",
                reward=float(i % 7 == 0),
                done=i % 4 == 3,
                success=i % 7 == 0 and i % 4 == 3,
                source=source,  # type: ignore[arg-type]
            )
        )
    return out


def check_buffer(make_buffer: Callable[[], Any]) -> None:
    """add/len/retrieve/sample round trip, duplicate suppression, empty-buffer queries.

    ``make_buffer`` returns a new, empty buffer each call.
    """
    buffer = make_buffer()
    if len(buffer) != 0:
        raise _fail(buffer, "a new buffer is not empty")
    empty = buffer.retrieve(queries=[("a state", "an action")], k=3)
    if empty != [[]]:
        raise _fail(buffer, f"retrieve() on an empty buffer must return [[]], got {empty!r}")
    records = make_transitions(24)
    added = buffer.add(transitions=records)
    if added != 24 or len(buffer) != 24:
        raise _fail(buffer, f"add() of 24 distinct records gave added={added}, len={len(buffer)}")
    if buffer.add(transitions=records[:5]) != 0 or len(buffer) != 24:
        raise _fail(buffer, "duplicate transitions were stored again")
    stored = {_key(t) for t in records}
    targets = [records[7], records[13]]
    for k in (4, len(records) + 6):
        hits = buffer.retrieve(queries=[(t.state, t.action) for t in targets], k=k)
        _check_hits(buffer, hits, targets, k=k, size=len(buffer), stored=stored)
    sample = buffer.sample(n=5, seed=0)
    if len(sample) != 5 or not all(isinstance(t, Transition) for t in sample):
        raise _fail(buffer, "sample(n=5) did not return 5 Transitions")
    if any(_key(t) not in stored for t in sample):
        raise _fail(buffer, "sample() returned a record that was never added")
    if [_key(t) for t in buffer.sample(n=5, seed=0)] != [_key(t) for t in sample]:
        raise _fail(buffer, "sample(n=5, seed=0) twice gave different records")
    if hasattr(buffer, "rollback"):
        _check_rollback(buffer, records)
    buffer.flush()
    buffer.close()
    buffer.close()


def _key(record: Any) -> bytes:
    return msgspec.json.encode(record)


def _check_hits(buffer: Any, hits: Any, targets: Sequence[Transition], *, k: int, size: int, stored: set[bytes]) -> None:
    """One list per query, at most k (and at most the buffer's size) long, no record twice,
    only stored records, each query's own record first."""
    if not isinstance(hits, list) or len(hits) != len(targets):
        got = f"{len(hits)} lists" if isinstance(hits, list) else type(hits).__name__
        raise _fail(buffer, f"retrieve() of {len(targets)} queries returned {got}, expected one list per query")
    for target, found in zip(targets, hits):
        if not isinstance(found, list) or not found:
            raise _fail(buffer, "retrieve() returned no neighbours for a stored query")
        for hit in found:
            _expect(buffer, hit, Transition, "retrieve()")
        if len(found) > min(k, size):
            raise _fail(buffer, f"retrieve(k={k}) on {size} records returned {len(found)} for one query, expected at most {min(k, size)}")
        keys = [_key(t) for t in found]
        if len(set(keys)) != len(keys):
            raise _fail(buffer, f"retrieve(k={k}) returned the same record more than once for one query")
        if any(key not in stored for key in keys):
            raise _fail(buffer, "retrieve() returned a record that was never added")
        if found[0] != target:
            raise _fail(buffer, "the exact stored (state, action) is not the top-1 neighbour")


def _check_rollback(buffer: Any, stored: Sequence[Transition]) -> None:
    """The optional rollback: records added after ``position`` are forgotten, and can come back."""
    position = buffer.position
    later = [msgspec.structs.replace(t, state=f"later {t.state}") for t in stored[:3]]
    buffer.add(transitions=later)
    dropped = buffer.rollback(to=position)
    if dropped != 3 or len(buffer) != len(stored):
        raise _fail(buffer, f"rollback() after adding 3 records gave dropped={dropped}, len={len(buffer)}")
    if later[0] in buffer.retrieve(queries=[(later[0].state, later[0].action)], k=4)[0]:
        raise _fail(buffer, "retrieve() returned a rolled-back record")
    if buffer.add(transitions=later[:1]) != 1 or buffer.rollback(to=position) != 1:
        raise _fail(buffer, "a rolled-back record could not be added (and rolled back) again")


def check_curriculum(curriculum: Any, *, rebuild: Callable[[], Any]) -> None:
    """next_tasks returns Tasks; state survives encode/decode into a fresh instance."""
    tasks = curriculum.next_tasks(n=3)
    if len(tasks) != 3 or not all(isinstance(t, Task) for t in tasks):
        raise _fail(curriculum, "next_tasks(n=3) did not return 3 Tasks")
    curriculum.observe(outcomes=[TaskOutcome(task=t, rewards=[0.0, 1.0, 1.0, 0.0]) for t in tasks])
    state = curriculum.state_dict()
    blob = msgspec.json.encode(state)
    clone = rebuild()
    clone.load_state_dict(msgspec.json.decode(blob))
    if msgspec.json.encode(clone.state_dict()) != blob:
        raise _fail(curriculum, "state_dict() does not survive a JSON round trip")
    a = [t.id for t in curriculum.next_tasks(n=4)]
    b = [t.id for t in clone.next_tasks(n=4)]
    if a != b:
        raise _fail(curriculum, f"restored curriculum chose {b}, original chose {a}")


def check_algorithm(algo: Any, groups: Sequence[Sequence[Trajectory]], parameters: Callable[[], Any]) -> dict[str, float]:
    """One update on a tiny batch gives finite metrics and changes the parameters.

    ``parameters`` returns a flat copy of the policy's parameters (a tensor or array).
    """
    before = parameters()
    metrics = algo.update(groups=groups)
    if not isinstance(metrics, dict) or not metrics:
        raise _fail(algo, "update() must return a non-empty dict of metrics")
    for key, value in metrics.items():
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _fail(algo, f"metric {key!r} = {value!r} is not a finite number")
    after = parameters()
    if bool((before == after).all()):
        raise _fail(algo, "update() did not change the policy's parameters")
    return metrics


class BagOfWordsEncoder:
    """A deterministic hashed bag-of-words encoder: a test double for phi, no model."""

    id = "testing-bow-v1"

    def __init__(self, dim: int = 256) -> None:
        self.dim = dim

    def encode(self, *, texts: Sequence[str]) -> np.ndarray:
        import zlib

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                out[row, zlib.crc32(word.encode()) % self.dim] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.divide(out, norms, out=out, where=norms > 0)
        return out


class LifecycleRecorder:
    """Records the run lifecycle hooks in the order a run fires them (register it as a
    plugin), to check that a trainer, or a backend that runs its own loop, fires them."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.iteration_metrics: dict[int, dict[str, float]] = {}
        self.final_metrics: dict[str, float] | None = None

    @hookimpl
    def dreamgym_configure(self, config: Any) -> None:
        self.calls.append("configure")

    @hookimpl
    def dreamgym_run_started(self, run_dir: str, config: Any) -> None:
        self.calls.append("run_started")

    @hookimpl
    def dreamgym_before_iteration(self, iteration: int, state: dict[str, Any]) -> None:
        self.calls.append(f"before_iteration:{iteration}")

    @hookimpl
    def dreamgym_after_iteration(self, iteration: int, metrics: dict[str, float]) -> None:
        self.calls.append(f"after_iteration:{iteration}")
        self.iteration_metrics[iteration] = dict(metrics)

    @hookimpl
    def dreamgym_run_finished(self, run_dir: str, metrics: dict[str, float]) -> None:
        self.calls.append("run_finished")
        self.final_metrics = dict(metrics)
