"""Conformance kit: check a component against its contract.

Each check raises :class:`~dreamgym_core.errors.ConformanceError` with a precise
message. Every built-in plugin runs the kit against itself in its own tests, and
``dreamgym check PLUGIN`` runs it from the command line.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import tempfile
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import msgspec
import numpy as np

from ..contracts import ComponentError, checked_metrics, missing_members
from ..errors import ConformanceError
from ..hookspecs import hookimpl
from ..records import (
    ExperienceRequest, ExperienceResult, Observation, PolicyDecision, StepResult, Task, TaskOutcome, Trajectory, Transition,
)

__all__ = [
    "check_env",
    "check_domain",
    "check_experience_model",
    "check_encoder",
    "check_buffer",
    "check_buffer_reopens",
    "check_curriculum",
    "check_algorithm",
    "check_language_model",
    "make_transitions",
    "stand_in_trajectory",
    "stand_in_groups",
    "BagOfWordsEncoder",
    "LifecycleRecorder",
]

DOCS = "see docs/conformance.md"

log = logging.getLogger(__name__)


def _name(component: Any) -> str:
    """``component`` is the object checked, or a str naming it."""
    return component if isinstance(component, str) else type(component).__name__


def _fail(component: Any, message: str) -> ConformanceError:
    return ConformanceError(f"{_name(component)}: {message} ({DOCS})")


def _metrics(component: Any, value: Any, call: str) -> dict[str, float]:
    """``value`` read as a run reads a component's metrics (:func:`~dreamgym_core.contracts.checked_metrics`):
    what the run refuses (a metric named ``step``, a non-finite loss, a value that is not a number)
    fails the check; what it drops and counts (a non-finite diagnostic) passes."""
    try:
        return checked_metrics(value, _name(component), call)
    except ComponentError as exc:
        raise ConformanceError(f"{exc} ({DOCS})") from exc


@contextmanager
def _step(component: Any, what: str) -> Iterator[None]:
    """Turn any exception a component raises during ``what`` into a ConformanceError naming
    the component and the step, so that breakage fails the check instead of crashing it."""
    try:
        yield
    except ConformanceError:
        raise
    except Exception as exc:
        raise _fail(component, f"{what} raised {type(exc).__name__}: {exc}") from exc


def _json(component: Any, value: Any, what: str) -> bytes:
    with _step(component, f"JSON-encoding {what}"):
        return msgspec.json.encode(value)


def _expect(component: Any, value: Any, kind: type, what: str) -> None:
    if not isinstance(value, kind):
        raise _fail(component, f"{what} returned {type(value).__name__}, expected {kind.__name__}")


UNLISTED_ACTION = "xyzzy the unlisted action"


def check_env(env: Any, task: Task, *, actions: int = 3, seed: int = 0) -> None:
    """Types of reset/step, the outcome reward of every step (1.0 only on a success's final
    step), determinism under one seed, reset without a seed, a step of an action no state
    lists, idempotent close. A failed check closes the env too."""
    with closed_on_failure(env):  # its simulator (a JVM, a browser) must not outlive the failed check
        _check_plays(env, task, actions=actions, seed=seed)
    with _step(env, "close()"):
        env.close()
    with _step(env, "a second close() (close must be idempotent)"):
        env.close()


@contextmanager
def closed_on_failure(component: Any) -> Iterator[None]:
    """Close ``component`` (where it has a ``close``) when the check in the block fails, and
    re-raise that failure: it is the report, so an error from ``close()`` is logged, not raised
    over it. A passing block leaves the component open: its check closes it as it must.
    (:func:`check_env` and ``dreamgym check``'s domains use it.)"""
    try:
        yield
    except BaseException:
        close = getattr(component, "close", None)
        if callable(close):
            try:
                close()
            except Exception:
                log.warning("%s: close() after the failed check raised too", _name(component), exc_info=True)
        raise


def _check_plays(env: Any, task: Task, *, actions: int, seed: int) -> None:
    """All of :func:`check_env` but its close."""

    def play() -> list[Any]:
        trace: list[Any] = []
        with _step(env, f"reset(task=..., seed={seed})"):
            obs = env.reset(task=task, seed=seed)
        _expect(env, obs, Observation, "reset()")
        trace.append(obs)
        for _ in range(actions):
            action = obs.admissible_actions[0] if obs.admissible_actions else "look"
            with _step(env, f"step(action={action!r})"):
                result = env.step(action=action)
            _check_step_result(env, result, "step()")
            trace.append(result)
            obs = result.observation
            if result.done:
                break
        return trace

    first, second = play(), play()
    _json(env, [first, second], "the observations and step results")
    for i, (a, b) in enumerate(zip(first, second)):  # field by field, to name the one that differs
        for field, value in _replayed(a).items():
            if (again := _replayed(b)[field]) != value:
                where = "reset()" if i == 0 else f"step {i}"
                raise _fail(env, f"same task and seed gave a different {field} at {where}: {value!r:.60}, then {again!r:.60}")
    # the core's rollouts call reset(task=task) with no seed
    with _step(env, "reset(task=...) without a seed"):
        obs = env.reset(task=task)
    _expect(env, obs, Observation, "reset() without a seed")
    # A policy writes any text: an action no state offers is a step of the game (refused, as
    # the engine refuses it), not an exception that ends the run.
    with _step(env, f"step(action={UNLISTED_ACTION!r}), an action no state lists"):
        result = env.step(action=UNLISTED_ACTION)
    _check_step_result(env, result, "step() of an unlisted action")


def _check_step_result(env: Any, result: Any, what: str) -> None:
    """A StepResult as a run reads it: an Observation, a finite reward, success only on a done
    step, and the outcome reward (records.StepResult: 1.0 only on a success's final step, else
    0.0), which GRPO scores, the experience model learns, and data.path requires of every row."""
    _expect(env, result, StepResult, what)
    if not isinstance(result.observation, Observation):
        raise _fail(env, f"{what} returned a StepResult whose observation is {type(result.observation).__name__}, expected an Observation")
    if not _finite_number(result.reward):
        raise _fail(env, f"{what} reward {result.reward!r} is not a finite number")
    if result.success and not result.done:
        raise _fail(env, f"{what} reported success on a step that is not done")
    expected = _outcome_reward(done=result.done, success=result.success)
    if result.reward != expected:
        raise _fail(
            env,
            f"{what} gave reward {result.reward!r} on a step with done={result.done}, success={result.success}; expected {expected}: "
            "a step's reward is the outcome reward, 1.0 on the final step of a success and 0.0 elsewhere (records.StepResult)",
        )


def _outcome_reward(*, done: bool, success: bool) -> float:
    from ..experience import outcome_reward  # as stages.offline_step_problem reads it

    return outcome_reward(done=done, success=success)


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _finite_real(value: Any) -> bool:
    """Any real number, numpy's included, and finite: as the core's ``math.isfinite`` takes it."""
    return isinstance(value, numbers.Real) and math.isfinite(value)


def _replayed(item: Observation | StepResult) -> dict[str, Any]:
    """What a run reads of a reset's Observation or a step's StepResult, which the same task and
    seed must repeat; of ``info`` only ``truncated`` (an env may keep timings there)."""
    if isinstance(item, Observation):
        return {"observation text": item.text, "admissible actions": item.admissible_actions}
    info = item.info if isinstance(item.info, dict) else {}
    return {
        **_replayed(item.observation), "reward": item.reward, "done": item.done, "success": item.success,
        "valid": item.valid, "info['truncated']": info.get("truncated"),
    }


def check_domain(domain: Any) -> None:
    """A non-empty ``name``; ``tasks`` returns a list of Tasks (a generator is refused); train
    and test splits are non-empty; no two of train/valid/test share a task id; make_env passes
    check_env on a train task; ``collect`` with each data policy a run uses returns
    Trajectories of that task, whose steps carry its instruction and are real offline data
    (``stages.offline_step_problem``: what ``data.path`` refuses of `dreamgym collect`'s file),
    which ``annotate`` explains in text; the optional members a run
    calls, where present, return what the run reads (:func:`check_domain_extras`, with every
    collected episode)."""
    name = getattr(domain, "name", None)
    if not isinstance(name, str) or not name:
        raise _fail(domain, f"name must be a non-empty str (pipelines and errors name the env by it), got {name!r}")
    splits: dict[str, list[Task]] = {}
    for split in ("train", "valid", "test"):
        with _step(domain, f"tasks(split={split!r})"):
            tasks = domain.tasks(split=split)
        if not isinstance(tasks, list):  # the contract's list[Task] (protocols.Domain.tasks)
            raise _fail(
                domain,
                f"tasks(split={split!r}) returned {type(tasks).__name__}, expected a list of Task "
                "(a run takes its len() and reads it more than once; a generator is used up by the first read)",
            )
        if not tasks and split != "valid":
            raise _fail(domain, f"tasks(split={split!r}) is empty")
        for task in tasks:
            _expect(domain, task, Task, "tasks()")
        splits[split] = tasks
    ids = {split: {t.id for t in tasks} for split, tasks in splits.items()}
    for a, b in (("train", "valid"), ("train", "test"), ("valid", "test")):
        if shared := ids[a] & ids[b]:
            raise _fail(domain, f"{a} and {b} splits share tasks: {sorted(shared)[:3]}")
    task = splits["train"][0]
    with _step(domain, "make_env()"):
        env = domain.make_env()
    check_env(env, task)  # which closes it, also when it fails
    # two expert episodes of one task: a run asks for more episodes than it has tasks
    episodes = [steps for policy in DATA_POLICIES for steps in _check_collect(domain, task, policy, episodes=2 if policy == "expert" else 1)]
    transitions = [t for steps in episodes for t in steps]
    if not transitions:
        raise _fail(domain, f"collect() of one episode of task {task.id!r} returned no transitions, for any of {', '.join(DATA_POLICIES)}")
    for transition in transitions:  # every step: an annotator may fail on winning steps only
        with _step(domain, "annotate(transition=...)"):
            reasoning = domain.annotate(transition=transition)
        _expect(domain, reasoning, str, "annotate()")
    check_domain_extras(domain, task, transitions[0], episodes=episodes)


# The data policies every domain plays (data.*_episodes, eval.fidelity_policies); "explore"
# is optional: a domain without it refuses it by name.
DATA_POLICIES = ("expert", "noisy", "random")


def _offline_step_problem(transition: Transition) -> str | None:
    from ..stages import offline_step_problem as problem  # not at import: stages imports much of the core

    return problem(transition)


def _check_collect(domain: Any, task: Task, policy: str, episodes: int = 1) -> list[list[Transition]]:
    """``episodes`` of ``policy`` on ``task``, each episode's transitions: a run asks for more
    episodes than it has tasks, so one task must give any number of them."""
    call = f"collect(policy={policy!r}, episodes={episodes})"
    with _step(domain, call):
        got = domain.collect(tasks=[task], policy=policy, episodes=episodes, seed=0)
    if not isinstance(got, list) or len(got) != episodes or not all(isinstance(t, Trajectory) for t in got):
        kinds = sorted({type(t).__name__ for t in got}) if isinstance(got, list) else [type(got).__name__]
        size = f"{len(got)} " if isinstance(got, list) else ""
        raise _fail(domain, f"{call} returned {size}{'/'.join(kinds)}, expected a list of {episodes} Trajectory")
    steps = [transition for trajectory in got for transition in trajectory.transitions]
    for transition in steps:
        _expect(domain, transition, Transition, f"collect(policy={policy!r}) trajectory's transitions:")
        if transition.task_id != task.id or transition.source != "offline":
            raise _fail(domain, f"collect(policy={policy!r}) gave a transition of task {transition.task_id!r}, source {transition.source!r}; expected task {task.id!r}, source 'offline'")
        where = f"collect(policy={policy!r}) gave step {transition.step} of episode {transition.episode_id!r}"
        if not _finite_real(transition.reward):  # as stages.collect refuses it
            raise _fail(domain, f"{where} with reward {transition.reward!r}, expected a finite number")
        if transition.instruction != task.instruction:  # protocols.Domain.collect
            raise _fail(
                domain,
                f"{where} with instruction {transition.instruction!r:.80}, expected the task's {task.instruction!r:.80} "
                "(the experience model's training prompts read it from the transition)",
            )
        if problem := _offline_step_problem(transition):  # as data.path refuses `dreamgym collect`'s file
            raise _fail(domain, f"{where}, which {problem}: data.path refuses such a row of `dreamgym collect`'s file")
    return [list(trajectory.transitions) for trajectory in got]


def check_domain_extras(
    domain: Any, task: Task, transition: Transition, *, episodes: Sequence[Sequence[Transition]] = (),
) -> None:
    """The optional members a run calls, where the domain has them: ``initial_observation``
    (an Observation), ``admissible_in`` (a list of str), ``world_of`` and ``world_key`` (a str),
    ``implausible`` ("" for every real step of ``episodes``, else of ``transition``: the real
    game's answer is never ruled out, whichever action lists a run shows with its states),
    ``correct`` (an ExperienceResult), and for the
    curriculum ``describe_variation`` (a str), ``propose_variations`` (a list of str) whose
    texts ``make_variation`` turns into Tasks (or None for one it refuses)."""
    calls = (
        ("initial_observation", lambda: domain.initial_observation(task), Observation),
        ("admissible_in", lambda: domain.admissible_in(transition.next_state), list),
        ("world_of", lambda: domain.world_of(task.id), str),
        ("world_key", lambda: domain.world_key(task), str),
        ("describe_variation", lambda: domain.describe_variation(task), str),
    )
    for member, call, kind in calls:
        if callable(getattr(domain, member, None)):
            with _step(domain, f"{member}()"):
                value = call()
            _expect(domain, value, kind, f"{member}()")
            if kind is list and not all(isinstance(a, str) for a in value):
                raise _fail(domain, f"{member}() must return a list of str, got {value!r:.120}")
    if callable(getattr(domain, "implausible", None)):
        _check_implausible(domain, episodes or [[transition]])
    if callable(getattr(domain, "correct", None)):
        state = Observation(text=transition.state, admissible_actions=list(transition.admissible_actions))
        answer = ExperienceResult(reasoning="", next_state=transition.next_state, reward=0.0, done=False, success=False)
        with _step(domain, "correct()"):
            corrected = domain.correct(state=state, action=transition.action, answer=answer)
        _expect(domain, corrected, ExperienceResult, "correct()")
    if callable(getattr(domain, "propose_variations", None)):
        with _step(domain, "propose_variations(n=2)"):
            texts = domain.propose_variations(task, n=2, rng=np.random.default_rng(0))
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise _fail(domain, f"propose_variations() must return a list of str, got {texts!r:.120}")
        if not callable(getattr(domain, "make_variation", None)):
            raise _fail(domain, "has propose_variations but no make_variation (the curriculum turns each text into a Task with it)")
        for text in texts:
            with _step(domain, "make_variation() of a proposed text"):
                made = domain.make_variation(task, text)
            if made is not None and not isinstance(made, Task):
                raise _fail(domain, f"make_variation() returned {type(made).__name__}, expected a Task or None")


def _check_implausible(domain: Any, episodes: Sequence[Sequence[Transition]]) -> None:
    """``implausible`` of each real step of ``episodes`` is "", judged with each pair of action
    lists a run's synthetic env may pass: the state listing what the env listed in it, with the
    next state listing what the env listed in it (the next step's list, where that step starts
    from it), what ``admissible_in`` reads in it (what a run passes), or nothing (what a run
    passes for a domain without ``admissible_in``); and both listing nothing."""
    read = getattr(domain, "admissible_in", None)
    for steps in episodes:
        for i, t in enumerate(steps):
            listed = list(t.admissible_actions)
            following = steps[i + 1] if i + 1 < len(steps) else None
            next_lists = [list(following.admissible_actions)] if following is not None and following.state == t.next_state else []
            if callable(read):
                with _step(domain, "admissible_in() of a real next state"):
                    actions = read(t.next_state)
                if not isinstance(actions, list) or not all(isinstance(a, str) for a in actions):
                    raise _fail(domain, f"admissible_in() must return a list of str, got {actions!r:.120}")
                next_lists.append(actions)
            pairs = [(listed, next_listed) for next_listed in (*next_lists, [])] + [([], [])]
            for state_actions, next_actions in dict.fromkeys((tuple(a), tuple(b)) for a, b in pairs):
                state = Observation(text=t.state, admissible_actions=list(state_actions))
                next_state = Observation(text=t.next_state, admissible_actions=list(next_actions))
                with _step(domain, f"implausible() of a real transition ({t.action!r})"):
                    verdict = domain.implausible(state=state, action=t.action, next_state=next_state)
                if verdict != "":
                    raise _fail(
                        domain,
                        f"implausible() ruled out a real transition ({t.action!r}, step {t.step} of episode {t.episode_id!r}; "
                        f"state listing {list(state_actions)!r:.80}, next state listing {list(next_actions)!r:.80}): "
                        f"{verdict!r:.120}; expected \"\"",
                    )


def check_experience_model(model: Any, requests: Sequence[ExperienceRequest]) -> None:
    """Batched predict returns one parsed result per request, with valid fields."""
    with _step(model, f"predict() of {len(requests)} requests"):
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
    """A positive int ``dim``; float32 rows of that dim, L2-normalised, deterministic; a non-empty ``id``."""
    dim = getattr(encoder, "dim", None)
    if not isinstance(dim, numbers.Integral) or isinstance(dim, bool) or dim <= 0:
        raise _fail(encoder, f"dim must be a positive int (the width of the rows encode() returns; buffers size their index by it), got {dim!r}")
    texts = ["open the fridge", "take apple from table", ""]
    with _step(encoder, "encode()"):
        a = encoder.encode(texts=texts)
        b = encoder.encode(texts=texts)
    if not isinstance(a, np.ndarray) or a.dtype != np.float32 or a.shape != (3, dim):
        raise _fail(encoder, f"encode() returned {getattr(a, 'dtype', type(a))} {getattr(a, 'shape', '')}, expected float32 (3, {dim})")
    for text, row in zip(texts, a):
        if not np.isfinite(row).all():
            raise _fail(encoder, f"encode() gave non-finite values (NaN or inf) for the text {text!r}")
    norms = np.linalg.norm(a[:2], axis=1)
    if not np.allclose(norms, 1.0, atol=1e-3):
        raise _fail(encoder, f"rows are not L2-normalised (norms {norms})")
    if not np.allclose(a, b, atol=1e-5, equal_nan=True):
        raise _fail(encoder, "encode() is not deterministic")
    encoder_id = getattr(encoder, "id", None)
    if not isinstance(encoder_id, str) or not encoder_id:
        raise _fail(encoder, f"id must be a non-empty str naming model and version (a buffer keeps vectors by it), got {encoder_id!r}")


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
    """add/len/retrieve/sample round trip (``min(k, len)`` records per query), duplicate
    suppression, empty-buffer queries (an empty list per query), the optional position (an
    int >= 0) and rollback.

    ``make_buffer`` returns a new, empty buffer each call.
    """
    with _step(getattr(make_buffer, "__qualname__", "make_buffer"), "make_buffer()"):
        buffer = make_buffer()
    with _step(buffer, "len() of a new buffer"):
        size = len(buffer)
    if size != 0:
        raise _fail(buffer, "a new buffer is not empty")
    with _step(buffer, "retrieve() on an empty buffer"):
        empty = buffer.retrieve(queries=[("a state", "an action")], k=3)
        empty_two = buffer.retrieve(queries=[("a state", "an action"), ("another state", "another action")], k=3)
    if empty != [[]]:
        raise _fail(buffer, f"retrieve() of 1 query on an empty buffer must return [[]], got {empty!r:.120}")
    if not isinstance(empty_two, list) or len(empty_two) != 2:
        got = f"{len(empty_two)} lists" if isinstance(empty_two, list) else type(empty_two).__name__
        raise _fail(buffer, f"retrieve() of 2 queries returned {got}, expected one list per query (on an empty buffer [[], []]), got {empty_two!r:.120}")
    if empty_two != [[], []]:
        raise _fail(buffer, f"retrieve() of 2 queries on an empty buffer must return [[], []] (an empty list per query), got {empty_two!r:.120}")
    records = make_transitions(24)
    with _step(buffer, "add() of 24 records"):
        added = buffer.add(transitions=records)
        size = len(buffer)
    if added != 24 or size != 24:
        raise _fail(buffer, f"add() of 24 distinct records gave added={added}, len={size}")
    with _step(buffer, "add() of 5 stored records again"):
        added, size = buffer.add(transitions=records[:5]), len(buffer)
    if added != 0 or size != 24:
        raise _fail(buffer, "duplicate transitions were stored again")
    stored = {_key(t) for t in records}
    targets = [records[7], records[13]]
    for k in (4, len(records) + 6):
        with _step(buffer, f"retrieve() of {len(targets)} queries, k={k}"):
            hits = buffer.retrieve(queries=[(t.state, t.action) for t in targets], k=k)
        _check_hits(buffer, hits, targets, k=k, size=size, stored=stored)
    with _step(buffer, "sample(n=5, seed=0)"):
        sample = buffer.sample(n=5, seed=0)
        again = buffer.sample(n=5, seed=0)
    if not isinstance(sample, list) or len(sample) != 5 or not all(isinstance(t, Transition) for t in sample):
        raise _fail(buffer, "sample(n=5) did not return 5 Transitions")
    if any(_key(t) not in stored for t in sample):
        raise _fail(buffer, "sample() returned a record that was never added")
    if not isinstance(again, list) or [_key(t) for t in again] != [_key(t) for t in sample]:
        raise _fail(buffer, "sample(n=5, seed=0) twice gave different records")
    if hasattr(buffer, "rollback"):
        _check_rollback(buffer, records)
    with _step(buffer, "flush()"):
        buffer.flush()
    with _step(buffer, "close()"):
        buffer.close()
    with _step(buffer, "a second close() (close must be idempotent)"):
        buffer.close()


def _key(record: Any) -> bytes:
    return msgspec.json.encode(record)


def _check_hits(
    buffer: Any, hits: Any, targets: Sequence[Transition], *, k: int, size: int, stored: set[bytes], when: str = "",
) -> None:
    """One list per query, min(k, the buffer's size) long (the protocol's k nearest, fewer only
    when fewer are stored), no record twice, only stored records, each query's own record
    first. ``when`` says when the buffer was asked (" of the reopened buffer")."""
    if not isinstance(hits, list) or len(hits) != len(targets):
        got = f"{len(hits)} lists" if isinstance(hits, list) else type(hits).__name__
        raise _fail(buffer, f"retrieve(){when} of {len(targets)} queries returned {got}, expected one list per query")
    for target, found in zip(targets, hits):
        if not isinstance(found, list) or not found:
            raise _fail(buffer, f"retrieve(){when} returned no neighbours for a stored query")
        for hit in found:
            _expect(buffer, hit, Transition, f"retrieve(){when}")
        if len(found) > min(k, size):
            raise _fail(buffer, f"retrieve(k={k}){when} on {size} records returned {len(found)} for one query, expected at most {min(k, size)}")
        if len(found) < min(k, size):
            raise _fail(
                buffer,
                f"retrieve(k={k}){when} on {size} records returned {len(found)} for one query, expected {min(k, size)}: "
                "the k nearest stored transitions, fewer only when fewer are stored (the demos a prompt shows)",
            )
        keys = [_key(t) for t in found]
        if len(set(keys)) != len(keys):
            raise _fail(buffer, f"retrieve(k={k}){when} returned the same record more than once for one query")
        if any(key not in stored for key in keys):
            raise _fail(buffer, f"retrieve(){when} returned a record that was never added")
        if found[0] != target:
            raise _fail(buffer, f"the exact stored (state, action) is not the top-1 neighbour{when}")


def _position(buffer: Any, when: str = "") -> int:
    """``buffer.position``, which a checkpoint records (``checkpoint._State.buffer_position``, an int)."""
    with _step(buffer, f"position{when}"):
        position = buffer.position
    if not isinstance(position, int) or isinstance(position, bool) or position < 0:
        raise _fail(
            buffer,
            f"position{when} is {position!r:.60} ({type(position).__name__}), expected an int >= 0: "
            "a checkpoint records it as an int, and --resume rolls the buffer back to it",
        )
    return position


def _check_rollback(buffer: Any, stored: Sequence[Transition]) -> None:
    """The optional rollback: records added after ``position`` are forgotten, and can come back."""
    later = [msgspec.structs.replace(t, state=f"later {t.state}") for t in stored[:3]]
    position = _position(buffer)
    with _step(buffer, "add() then rollback(to=position)"):
        buffer.add(transitions=later)
        dropped = buffer.rollback(to=position)
        size = len(buffer)
    if dropped != 3 or size != len(stored):
        raise _fail(buffer, f"rollback() after adding 3 records gave dropped={dropped}, len={size}")
    with _step(buffer, "retrieve() after rollback()"):
        hits = buffer.retrieve(queries=[(later[0].state, later[0].action)], k=4)[0]
    if later[0] in hits:
        raise _fail(buffer, "retrieve() returned a rolled-back record")
    with _step(buffer, "add() of a rolled-back record, then rollback()"):
        readded = buffer.add(transitions=later[:1]) == 1 and buffer.rollback(to=position) == 1
    if not readded:
        raise _fail(buffer, "a rolled-back record could not be added (and rolled back) again")


def check_buffer_reopens(open_buffer: Callable[[], Any]) -> None:
    """What a flushed and closed buffer stored is there when its path is opened again, and
    ``retrieve`` finds it; a buffer with ``position``/``rollback`` reopens at the position it
    had, and rolls back to it what was added since (what ``--resume`` does).

    ``open_buffer`` opens the buffer at one and the same (at first empty) path each call, as
    a run opens ``RUN/buffer`` and ``--resume`` opens it again.
    """
    with _step(getattr(open_buffer, "__qualname__", "open_buffer"), "open_buffer()"):
        buffer = open_buffer()
    records = make_transitions(6)
    stored = {_key(t) for t in records}
    with _step(buffer, "add() of 6 records, flush()"):
        buffer.add(transitions=records)
        buffer.flush()
    rolls_back = hasattr(buffer, "rollback")  # the optional exact resume: a checkpoint records the position
    with closed_on_failure(buffer):  # a buffer on disk may hold a writer lock on its path
        position = _position(buffer, " after add() and flush()") if rolls_back else None
    with _step(buffer, "close()"):
        buffer.close()
    with _step(buffer, "open_buffer() again at the same path"):
        again = open_buffer()
    targets = [records[2], records[4]]
    try:
        with _step(again, "len() and sample() of the reopened buffer"):
            size = len(again)
            kept = {_key(t) for t in again.sample(n=6, seed=0)} if size else set()
        if size != len(records) or kept != stored:
            raise _fail(
                buffer,
                f"reopened at its path, the buffer holds {size} of the {len(records)} records it stored; "
                "a run reopens RUN/buffer on --resume, so a buffer keeps its records under its path",
            )
        with _step(again, "retrieve() of the reopened buffer"):
            hits = again.retrieve(queries=[(t.state, t.action) for t in targets], k=3)
        # a --resume'd run retrieves its demos from the reopened buffer: its index must be back too
        _check_hits(again, hits, targets, k=3, size=size, stored=stored, when=" of the reopened buffer")
        if rolls_back:
            _check_reopened_rollback(again, records, position)
    finally:
        with _step(again, "close() of the reopened buffer"):
            again.close()


def _check_reopened_rollback(again: Any, records: Sequence[Transition], position: int) -> None:
    """What ``--resume`` does: the reopened buffer stands at the position it had when closed (a
    checkpoint's), and rolls back to it what was added since."""
    reopened = _position(again, " of the reopened buffer")
    if reopened != position:
        raise _fail(
            again,
            f"position of the reopened buffer is {reopened}, but {position} before close(): a checkpoint records the position, "
            "and --resume rolls the reopened buffer back to it, so the position persists under its path",
        )
    later = [msgspec.structs.replace(t, state=f"later {t.state}") for t in records[:2]]
    with _step(again, "add() to the reopened buffer, then rollback(to=its position before close())"):
        again.add(transitions=later)
        dropped = again.rollback(to=position)
        size = len(again)
        hits = again.retrieve(queries=[(later[0].state, later[0].action)], k=4)[0]
    if dropped != len(later) or size != len(records):
        raise _fail(again, f"rollback() of the reopened buffer after adding {len(later)} records gave dropped={dropped}, len={size}")
    if later[0] in hits:
        raise _fail(again, "retrieve() of the reopened buffer returned a rolled-back record")


def check_curriculum(curriculum: Any, *, rebuild: Callable[[], Any], draws: int = 6) -> None:
    """next_tasks returns Tasks; state survives encode/decode into a fresh instance, which then
    chooses what the original chooses for ``draws`` draws of 4 tasks, each observed alike (6:
    24 tasks, more than twice a pool of 8, ``dreamgym check``'s: a curriculum that draws epochs
    of its pool must restore what draws the next epoch, not only the current one's queue)."""
    with _step(curriculum, "next_tasks(n=3)"):
        tasks = curriculum.next_tasks(n=3)
    if not isinstance(tasks, list) or len(tasks) != 3 or not all(isinstance(t, Task) for t in tasks):
        raise _fail(curriculum, "next_tasks(n=3) did not return 3 Tasks")
    with _step(curriculum, "observe()"):
        curriculum.observe(outcomes=[TaskOutcome(task=t, rewards=[0.0, 1.0, 1.0, 0.0]) for t in tasks])
    with _step(curriculum, "state_dict()"):
        state = curriculum.state_dict()
    blob = _json(curriculum, state, "state_dict()")
    with _step(curriculum, "rebuild() and load_state_dict() of the JSON state"):
        clone = rebuild()
        clone.load_state_dict(msgspec.json.decode(blob))
        restored = clone.state_dict()
    if _json(curriculum, restored, "the restored state_dict()") != blob:
        raise _fail(curriculum, "state_dict() does not survive a JSON round trip")
    for draw in range(1, draws + 1):
        with _step(curriculum, f"next_tasks(n=4) of the original and the restored curriculum, draw {draw} after the restore"):
            a_tasks, b_tasks = curriculum.next_tasks(n=4), clone.next_tasks(n=4)
            a, b = [t.id for t in a_tasks], [t.id for t in b_tasks]
        if a != b:
            raise _fail(curriculum, f"restored curriculum chose {b}, original chose {a} (draw {draw} of {draws} after the restore)")
        # both learn the same outcomes, as a resumed run observes what the original would have
        with _step(curriculum, f"observe() of draw {draw} after the restore, by the original and the restored curriculum"):
            for drawn, learner in ((a_tasks, curriculum), (b_tasks, clone)):
                learner.observe(outcomes=[
                    TaskOutcome(task=t, rewards=[float((draw + i + j) % 3 == 0) for j in range(4)]) for i, t in enumerate(drawn)
                ])
    if callable(getattr(curriculum, "metrics", None)):  # optional; the run logs what it returns
        with _step(curriculum, "metrics()"):
            metrics = curriculum.metrics()
        _metrics(curriculum, metrics, "metrics()")


def stand_in_trajectory(
    task: Task, actions: Sequence[str], success: bool, *, valid: Sequence[bool] | None = None, reward: float | None = None,
    episode: str = "e", prompt: Callable[[Task, int], str] | None = None, response: Callable[[str], str] | None = None,
) -> Trajectory:
    """A finished episode of ``task`` that played ``actions``, with the policy's decisions (its
    prompts and responses) as an algorithm's ``update`` reads them. The outcome reward
    (``reward``, else 1 for a success) is on the last step; ``valid`` marks refused actions.
    ``prompt(task, step)`` and ``response(action)`` write the decisions' text (default: the
    agent format, ``<action>go north</action>``), for a policy whose tokenizer wants another."""
    valid = list(valid) if valid is not None else [True] * len(actions)
    prompt = prompt or (lambda t, i: f"Task: {t.instruction}\nStep {i}. Observation: you are in room {i}.\nAction:")
    response = response or (lambda action: f"<action>{action}</action>")
    transitions, decisions = [], []
    for i, action in enumerate(actions):
        last = i == len(actions) - 1
        transitions.append(Transition(
            task_id=task.id, episode_id=episode, step=i, state=f"you are in the room {i}", action=action,
            next_state=f"you are in the room {i + 1}", reward=(reward if reward is not None else float(success)) if last else 0.0,
            done=last, success=success and last, valid=valid[i],
        ))
        decisions.append(PolicyDecision(text=response(action), action=action, parsed=True, prompt=prompt(task, i)))
    return Trajectory(task=task, transitions=transitions, decisions=decisions)


def stand_in_groups(make: Callable[..., Trajectory] = stand_in_trajectory) -> list[list[Trajectory]]:
    """Two tasks x four rollouts of two steps each (``make``: :func:`stand_in_trajectory` or one
    with its own text): two successes, two failures (one with a refused action) per group, so
    GRPO's group advantages are non-zero and an update has something to learn (go north)."""
    groups = []
    for k, instruction in enumerate(["find the apple", "open the door"]):
        task = Task(id=f"t{k}", instruction=instruction, domain="test")
        groups.append([
            make(task, ["go north", "take apple"], True, episode=f"{k}a"),
            make(task, ["go north", "open door"], True, episode=f"{k}b"),
            make(task, ["go south", "look"], False, episode=f"{k}c"),
            make(task, ["go west", "look"], False, valid=[True, False], episode=f"{k}d"),
        ])
    return groups


def check_algorithm(
    algo: Any,
    groups: Sequence[Sequence[Trajectory]],
    parameters: Callable[[], Any],
    *,
    rebuild: Callable[[], tuple[Any, Callable[[], Any]]] | None = None,
) -> dict[str, float]:
    """``act``, called as a run calls it (``greedy`` and ``temperature``), gives one str per prompt; one update on a tiny batch gives finite metrics and
    changes the parameters, to finite values; ``load`` of what ``save`` wrote restores them,
    into a fresh algorithm (``rebuild``) and into this one after another update.

    ``parameters`` returns a flat copy of the policy's parameters (a tensor or array);
    ``groups``: :func:`stand_in_groups` will do. ``rebuild()`` builds a fresh algorithm as a
    run does (a new policy, then the factory) and returns it with the ``parameters`` of its
    policy: ``--resume`` and ``dreamgym eval`` load the checkpoint into a new process, so a
    ``load`` that restores from memory instead of from its path passes without it.
    """
    missing = missing_members("algo", algo)
    if missing:  # Plugins.build refuses such an algorithm, so no run could use it
        raise _fail(algo, f"has no {', '.join(missing)} (a run calls act, update, save and load)")
    prompts = [d.prompt for d in groups[0][0].decisions][:2] if groups and groups[0] and groups[0][0].decisions else ["Action:"]
    for greedy, temperature in ((True, None), (False, 1.0)):  # as every run calls it (Runner.act_fn)
        with _step(algo, f"act(prompts=..., greedy={greedy}, temperature={temperature}), as a run calls it,"):
            out = algo.act(prompts=prompts, greedy=greedy, temperature=temperature)
        if not isinstance(out, list) or len(out) != len(prompts) or not all(isinstance(text, str) for text in out):
            raise _fail(algo, f"act(greedy={greedy}) returned {out!r:.120}, expected a list of {len(prompts)} str (one per prompt)")
    with _step(algo, "parameters() before update()"):
        before = parameters()
    with _step(algo, "update()"):
        metrics = algo.update(groups=groups)
    if not isinstance(metrics, dict) or not metrics:
        raise _fail(algo, "update() must return a non-empty dict of metrics")
    metrics = _metrics(algo, metrics, "update()")
    with _step(algo, "parameters() after update()"):
        after = parameters()
        unchanged = bool((before == after).all())
        finite = _all_finite(after)
    if not finite:
        raise _fail(algo, "update() left non-finite (NaN or inf) parameters")
    if unchanged:
        raise _fail(algo, "update() did not change the policy's parameters")
    _check_save_load(algo, groups, parameters, after, rebuild)
    return metrics


def _check_save_load(
    algo: Any, groups: Sequence[Sequence[Trajectory]], parameters: Callable[[], Any], saved: Any,
    rebuild: Callable[[], tuple[Any, Callable[[], Any]]] | None,
) -> None:
    """``load`` of what ``save`` wrote brings the saved parameters back, into a fresh algorithm
    (``rebuild``, as ``--resume`` and ``dreamgym eval`` build one) and into ``algo`` after
    another update: a run plays the policy that ``load`` restores from its checkpoint."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "algo")
        with _step(algo, "save(path=...)"):
            algo.save(path=path)
        if not os.path.exists(path):  # as a run checks each checkpoint's
            raise _fail(algo, f"save(path={path!r}) wrote nothing at that path")
        if rebuild is not None:
            with _step(algo, "rebuild() of a fresh algorithm"):
                fresh, fresh_parameters = rebuild()
            with _step(fresh, "load(path=...) of what save() wrote, into a fresh algorithm"):
                fresh.load(path=path)
                same = bool((fresh_parameters() == saved).all())
            if not same:
                raise _fail(
                    algo,
                    "load() into a fresh algorithm did not restore the parameters save() saw: --resume and dreamgym eval "
                    "build the algorithm anew and play what load() restores from the path, not what this instance holds",
                )
        with _step(algo, "update() after save()"):
            algo.update(groups=groups)
        with _step(algo, "load(path=...) of what save() wrote"):
            algo.load(path=path)
            restored = parameters()
            same = bool((restored == saved).all())
    if not same:
        raise _fail(algo, "load() did not restore the parameters save() saw (--resume and dreamgym eval play what load() restores)")


# What check_language_model asks a backend to continue and to learn: short, plain prompts
# that any tokenizer encodes, each paired with an answer for the trainable checks.
LM_PROMPTS = ("Task: find the coin.\nAction:", "You are in the kitchen. Exits: north.\nAction:", "Observation: a closed door.\nAction:")
LM_ANSWERS = (" take coin", " move north", " open door")


def _generated(model: Any, what: str, **kwargs: Any) -> list[str]:
    prompts = list(kwargs.pop("prompts", LM_PROMPTS))
    with _step(model, f"generate() {what}"):
        out = model.generate(prompts=prompts, **kwargs)
    if not isinstance(out, list) or len(out) != len(prompts) or not all(isinstance(t, str) for t in out):
        raise _fail(model, f"generate() {what} returned {out!r:.120}, expected a list of {len(prompts)} str (one per prompt)")
    return out


def check_language_model(model: Any, *, max_new_tokens: int = 8) -> None:
    """Generation: one str per prompt, greedy output and seeded samples repeat, a stop string
    cuts the text before it. A trainable backend (``sft``, ``save``, ``reload``) also: SFT
    returns finite metrics and reports each epoch; ``reload`` of what ``save`` wrote before
    SFT gives back the text generated before SFT (checked where SFT changed that text)."""
    model_id = getattr(model, "model_id", None)
    if not isinstance(model_id, str) or not model_id:
        raise _fail(model, f"model_id must be a non-empty str, got {model_id!r}")
    greedy = _generated(model, "at temperature 0", max_new_tokens=max_new_tokens, temperature=0.0)
    if _generated(model, "at temperature 0, again", max_new_tokens=max_new_tokens, temperature=0.0) != greedy:
        raise _fail(model, "greedy generation (temperature 0) gave another text the second time")
    sampled = _generated(model, "with seed=0", max_new_tokens=max_new_tokens, temperature=1.0, seed=0)
    if _generated(model, "with seed=0, again", max_new_tokens=max_new_tokens, temperature=1.0, seed=0) != sampled:
        raise _fail(model, "sampling with the same seed gave another text (runs replay their draws from seeds)")
    _check_stop(model, greedy, max_new_tokens)
    fits = getattr(model, "prompt_fits", None)
    if callable(fits):
        with _step(model, "prompt_fits() of a short prompt"):
            answer = fits(LM_PROMPTS[0], max_new_tokens=max_new_tokens)
        if answer is not True:
            raise _fail(model, f"prompt_fits() of a {len(LM_PROMPTS[0])}-character prompt returned {answer!r}, expected True")
    if all(callable(getattr(model, name, None)) for name in ("sft", "save", "reload")):
        _check_trainable(model, max_new_tokens)


def _check_stop(model: Any, greedy: list[str], max_new_tokens: int) -> None:
    """The greedy texts, asked for again with the last visible ASCII character of each as a
    stop string, must come back cut just before the first occurrence of any of them. (ASCII:
    a byte-level tokenizer can show half a multi-byte character as U+FFFD while it generates.)"""
    visible = [[c for c in text if c.isascii() and c.isprintable() and not c.isspace()] for text in greedy]
    stops = sorted({chars[-1] for chars in visible if chars})
    if not stops:
        return  # no visible ASCII character to stop at
    cut = _generated(model, f"with stop={stops!r}", max_new_tokens=max_new_tokens, temperature=0.0, stop=stops)
    for text, got in zip(greedy, cut, strict=True):
        want = text[: min((text.index(s) for s in stops if s in text), default=len(text))]
        if got != want:
            raise _fail(model, f"generate(stop={stops!r}) returned {got!r}; without the stops the text was {text!r}, so expected {want!r}")


def _check_trainable(model: Any, max_new_tokens: int) -> None:
    examples = [[(prompt, False), (answer, True)] for prompt, answer in zip(LM_PROMPTS, LM_ANSWERS, strict=True)]
    prepare = getattr(model, "prepare", None)
    if callable(prepare):  # as the core does before fine-tuning
        with _step(model, "prepare(corpus=...)"):
            prepare(corpus=[prompt + answer for prompt, answer in zip(LM_PROMPTS, LM_ANSWERS, strict=True)])
    before = _generated(model, "before sft()", max_new_tokens=max_new_tokens, temperature=0.0)
    epochs: list[tuple[int, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        with _step(model, "save(path=...) before sft()"):
            model.save(path=os.path.join(tmp, "before"))
        with _step(model, "sft() of 3 examples, 2 epochs"):
            metrics = model.sft(examples=examples, epochs=2, lr=1e-3, batch_size=2, on_epoch=lambda epoch, loss: epochs.append((epoch, loss)))
        _metrics(model, metrics, "sft()")
        if [e for e, _ in epochs] != [1, 2] or not all(_finite_real(loss) for _, loss in epochs):
            raise _fail(model, f"sft(epochs=2, on_epoch=...) must call on_epoch(1, loss) then on_epoch(2, loss) with finite losses, got {epochs}")
        after = _generated(model, "after sft()", max_new_tokens=max_new_tokens, temperature=0.0)
        # Again on the trained weights: a from-scratch backend writes nothing before SFT, which
        # left the repeat and stop checks above nothing to check.
        if _generated(model, "after sft(), again", max_new_tokens=max_new_tokens, temperature=0.0) != after:
            raise _fail(model, "greedy generation (temperature 0) after sft() gave another text the second time")
        _check_stop(model, after, max_new_tokens)
        with _step(model, "reload(path=...) of what save() wrote"):
            model.reload(path=os.path.join(tmp, "before"))
        restored = _generated(model, "after reload()", max_new_tokens=max_new_tokens, temperature=0.0)
    if after != before and restored != before:
        raise _fail(model, f"reload() of the weights saved before sft() generated {restored!r:.120}, not the text before sft(): {before!r:.120}")


def _all_finite(values: Any) -> bool:
    """Whether every parameter is finite: a tensor (any device or dtype) or an array."""
    if hasattr(values, "isfinite") and callable(values.isfinite):
        return bool(values.isfinite().all())
    return bool(np.isfinite(np.asarray(values, dtype=np.float64)).all())


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
