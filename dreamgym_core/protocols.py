"""Component contracts.

Every component a plugin provides satisfies one of these Protocols (``ExperienceModel``
is the core's, over a model backend; see its docstring). Methods take
keyword-named parameters so call sites read without a signature at hand. The
conformance kit in :mod:`dreamgym_core.testing` checks a component against its
contract.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:
    import numpy as np

    from .progress import OnBatch
    from .records import (
        ExperienceRequest,
        ExperienceResult,
        Observation,
        StepResult,
        Task,
        TaskOutcome,
        Trajectory,
        Transition,
    )

__all__ = [
    "Env",
    "Domain",
    "LanguageModel",
    "TrainableLanguageModel",
    "ExperienceModel",
    "Encoder",
    "ReplayBuffer",
    "Curriculum",
    "Algorithm",
    "MetricSink",
]

Metrics = dict[str, float]


@runtime_checkable
class Env(Protocol):
    """A real environment adapter or the synthetic environment: one interface.

    Set in ALL implementations: ``reset``, ``step``, ``close``.
    The same rollout code drives both, so an algorithm cannot tell them apart.
    """

    def reset(self, *, task: Task, seed: int | None = None) -> Observation: ...

    def step(self, *, action: str) -> StepResult: ...

    def close(self) -> None:
        """Release engine resources. Idempotent."""


@runtime_checkable
class Domain(Protocol):
    """A domain's knowledge: tasks, real environments, offline data, annotation.

    Set in ALL implementations: ``name``, ``tasks``, ``make_env``, ``collect``,
    ``annotate``. Set in SOME: ``initial_observation(task) -> Observation`` (where a synthetic
    episode starts; else the task's ``payload["initial_state"]``), ``admissible_in(state) ->
    list[str]`` (the actions a state text offers), ``vary_state(state, actions, *, key,
    strength) -> str`` (the state with parts the task does not depend on changed;
    ``loop.state_variation``) and ``implausible(*, state, action, next_state) -> str`` (why an
    experience-model answer cannot be, "" when it can; ``loop.check_transitions``) with
    ``correct(*, state, action, answer) -> ExperienceResult`` (the answer to play instead;
    ``loop.implausible_answers: correct``): the synthetic environment uses these. For task variations:
    ``describe_variation(task) -> str`` (what a variation may change, put in M_task's prompt),
    ``make_variation(parent, text) -> Task | None`` (the Task a variation text describes, None
    when it is not a valid one) and ``propose_variations(parent, *, n, rng) -> list[str]``
    (``n`` texts ``make_variation`` accepts, drawn with the numpy Generator ``rng``; curriculum
    ``generator: domain``). ``world_of(task_id) -> str`` names the world a task plays in
    (tasks of one world share their demos under ``loop.demos: same-world-first``; else the id
    without a variation's ``records.VARIATION_SUFFIX``, the built-in domains' convention). ``close()`` releases what the domain holds (a simulator, a browser)
    and is called when the run ends.
    """

    name: str

    def tasks(self, *, split: str) -> list[Task]:
        """Seed tasks of ``split`` ("train", "valid", "test"); splits never overlap."""

    def make_env(self) -> Env:
        """A fresh real environment adapter."""

    def collect(self, *, tasks: Sequence[Task], policy: str, episodes: int, seed: int) -> list[Trajectory]:
        """Play ``episodes`` real episodes with a named data policy: ``expert``, ``noisy``
        (expert with mistakes), ``random`` (listed actions) or ``explore`` (any action the game
        has offered, listed or not: ``data.explore_episodes``, ``eval.fidelity_policies``).
        Transitions carry ``source="offline"``, the task's ``id`` and ``instruction`` (the
        experience model's training prompts read them from here), the ``admissible_actions`` of
        their state, and ``truncated`` where the step cap ended the episode;
        ``dreamgym_core.rollout.play_offline`` plays one such episode."""

    def annotate(self, *, transition: Transition) -> str:
        """A rule-based reasoning trace explaining ``transition`` from ground truth."""


@runtime_checkable
class LanguageModel(Protocol):
    """A text generator backend (local weights or a server)."""

    model_id: str

    def generate(
        self,
        *,
        prompts: Sequence[str],
        max_new_tokens: int,
        temperature: float = 1.0,
        stop: Sequence[str] = (),
        seed: int | None = None,
    ) -> list[str]: ...

    # Optional: ``prepare(*, corpus: Sequence[str]) -> None``, called before fine-tuning (the
    # policy's warm start, the experience model's training) with the texts it will train on,
    # e.g. to build or extend a tokenizer; the core calls it only where it exists.
    #
    # Optional: ``prompt_fits(prompt, *, max_new_tokens) -> bool``, whether generation would see
    # the whole prompt. The experience model then shortens its prompts itself (fit_request)
    # instead of letting the backend cut their start. The hf backends have it; the openai
    # backend has it when its ``tokenize_url`` names the server's /tokenize.
    #
    # Optional: ``count_tokens(texts) -> list[int]``, the tokens of each text as an answer. The
    # experience model warns before training when its training answers are longer than its
    # ``max_new_tokens`` (answers cut at generation do not parse). The hf backends have it.
    #
    # Optional: ``generate_with_ids(**generate's arguments) -> list[tuple[str, list[int]]]``,
    # generate's texts each with the token ids sampled for it (the ending EOS or stop-string
    # token included). The local RL trainers then score the sampled ids, not the text
    # re-tokenised (token in, token out). The hf backends have it.


@runtime_checkable
class TrainableLanguageModel(LanguageModel, Protocol):
    """A backend with local weights that supports supervised fine-tuning."""

    def sft(
        self,
        *,
        examples: Sequence[Sequence[tuple[str, bool]]],
        epochs: int,
        lr: float,
        batch_size: int,
        on_epoch: Callable[[int, float], None] | None = None,
        on_batch: OnBatch | None = None,
    ) -> Metrics:
        """Train on examples made of (text segment, train-on-it) pairs; returns metrics.

        ``on_epoch(epoch, mean_loss)``, when given, is called after each epoch (1-based) with
        the model in inference mode, e.g. to score a checkpoint on validation tasks.
        ``on_batch(epoch, step, steps_per_epoch, loss)``, when given, after each optimiser step
        (1-based), for progress within long epochs. Optional: callers pass it only to backends
        whose ``sft`` takes it."""

    def save(self, *, path: str) -> None:
        """Write the weights (and tokenizer) to the directory ``path``, created if absent. The
        core then writes ``metrics.json`` and ``done`` into it: names a backend must not use."""

    def reload(self, *, path: str) -> None:
        """Replace the weights (and tokenizer) in place with a directory written by ``save``."""


@runtime_checkable
class ExperienceModel(Protocol):
    """M_exp: predicts the next state and reward; also plays M_task (same weights).

    No hook registers one: a pipeline's ``experience_model`` names a model backend (a
    ``LanguageModel``), which the core wraps in ``dreamgym_core.experience.LMExperienceModel``
    (the text format of docs/experience-format.md). ``SyntheticEnv`` takes any object with
    ``predict``, so Python code may pass its own."""

    model_id: str

    def predict(self, *, requests: Sequence[ExperienceRequest]) -> list[ExperienceResult]: ...

    def train(
        self, *, transitions: Sequence[Transition], buffer: Any, epochs: int, lr: float, batch_size: int, other_tasks: bool = False,
        on_epoch: Callable[[int, float], None] | None = None,
        on_batch: OnBatch | None = None, world_of: Callable[[str], str] | None = None,
    ) -> Metrics:
        """Joint SFT (paper Eq. 5) on annotated transitions, prompts built as at inference
        (``other_tasks``: retrieved demos only from other tasks than the example's;
        ``on_epoch(epoch, mean_loss)`` after each epoch and ``on_batch(epoch, step,
        steps_per_epoch, loss)`` after each optimiser step, for progress; ``on_batch`` is passed
        only to models whose ``train`` takes it; ``world_of``, the world of a task id, only
        under ``loop.demos: same-world-first``, whose demos come from the example's world first)."""

    def metrics(self) -> Metrics:
        """Namespaced counters (requests, parse outcomes, retries)."""

    def vary_tasks(self, *, task: Task, n: int) -> list[str]:
        """Candidate variations of ``task``'s instruction."""

    def select_task(self, *, task: Task, candidates: Sequence[str]) -> int | None:
        """Index of the best candidate, or None when none is acceptable."""


@runtime_checkable
class Encoder(Protocol):
    """phi: texts to L2-normalised float32 rows. ``id`` names model and version."""

    id: str
    dim: int

    def encode(self, *, texts: Sequence[str]) -> np.ndarray: ...


@runtime_checkable
class ReplayBuffer(Protocol):
    """The experience replay buffer with cosine top-k retrieval over phi(s, a)."""

    def add(self, *, transitions: Sequence[Transition]) -> int:
        """Store transitions; returns how many were new (duplicates are suppressed)."""

    def retrieve(self, *, queries: Sequence[tuple[str, str]], k: int) -> list[list[Transition]]:
        """One list per query, in order: its at most ``k`` nearest stored transitions, best
        first, no record twice (fewer when fewer are stored; an empty list per query on an
        empty buffer, e.g. ``[[]]`` for one query)."""

    def sample(self, *, n: int, seed: int | None = None) -> list[Transition]: ...

    def __len__(self) -> int: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...

    # Optional, for an exact --resume: ``position`` (a property) and ``rollback(*, to)``,
    # which forgets everything added since that position and returns how many. The
    # checkpoint records the position; a resumed run rolls back to it. A buffer without
    # them is resumed with whatever it holds, and the run says so.


@runtime_checkable
class Curriculum(Protocol):
    """Chooses the tasks of each iteration and learns from their outcomes."""

    def next_tasks(self, *, n: int) -> list[Task]: ...

    def observe(self, *, outcomes: Sequence[TaskOutcome]) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        """Plain-JSON state; ``load_state_dict`` of it restores the curriculum."""

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    # Optional: ``metrics() -> dict[str, float]``, namespaced numbers (``curriculum/...``) that
    # the loop asks for after each ``observe`` and logs with the iteration's metrics (e.g. how
    # many tasks were generated); the core calls it only where it exists.


@runtime_checkable
class Algorithm(Protocol):
    """An RL or baseline trainer owning a policy."""

    def act(
        self, *, prompts: Sequence[str], greedy: bool = False, temperature: float | None = None, evaluation: bool = False
    ) -> list[str]:
        """Policy completions for agent prompts (``temperature`` None: the algorithm's own;
        ``evaluation``: an evaluation's play, not RL's, whose sampled calls should draw from a
        seed stream of their own so that RL samples alike whatever was evaluated). An act that
        also takes ``stream`` gets the name of each evaluation play's stream (``eval/real``). An
        act that also takes ``candidates`` can run ``loop.action_choice: listed``: per prompt, the
        answers (``render_response`` of each listed action) it must return one of, or an empty
        list where the state lists none (then it generates).

        The raw text, one per prompt: the core reads the action from it
        (``dreamgym_core.agent.parse_agent_output``: the first ``<action>...</action>``, as the
        prompt asks after a ``<think>`` block), so generation may stop at
        ``dreamgym_core.agent.ACTION_STOP`` and needs tokens enough for both tags; a completion
        without an action ends its episode as a failure."""

    def update(self, *, groups: Sequence[Sequence[Trajectory]], on_batch: OnBatch | None = None) -> Metrics:
        """One update from groups of trajectories (a group = rollouts of one task).
        ``on_batch(epoch, step, steps_per_epoch, loss)``, when given, after each optimiser step,
        for progress; it is optional: the loop passes it only to an ``update`` that takes it."""

    def save(self, *, path: str) -> None:
        """Write everything training needs to go on at ``path`` (a file or a directory, not
        there yet, inside a checkpoint): the policy's weights, optimiser state, and the
        algorithm's own counters and random streams. ``path`` itself must exist afterwards
        (``np.save(path, ...)`` writes ``path.npy``): the run stops when it does not."""

    def load(self, *, path: str) -> None:
        """Restore what ``save`` wrote, policy weights included: ``--resume`` goes on from it
        and ``dreamgym eval`` plays that policy. Both first reload the run's warm-started policy
        backend (``RUN/policy_init``), whose tokenizer the saved weights were trained with."""


@runtime_checkable
class MetricSink(Protocol):
    """Receives scalar metrics (JSONL, TensorBoard, ...)."""

    def log(self, *, step: int, metrics: Metrics) -> None: ...

    def close(self) -> None: ...

    # Optional: ``rewind(*, history)`` on --resume keeps only the checkpoint's rows, so
    # iterations played again after a kill are not logged twice. ``history`` is the list of
    # rows logged up to the checkpoint, oldest first, each ``{"step": step, **metrics}``;
    # it is called before the resumed run logs anything.
