"""The synthetic environment: M_exp behind the same ``Env`` contract as a real adapter.

``SyntheticEnv.reset(task=...)`` obtains the initial abstract state by this rule:

1. ``domain.initial_observation(task)`` when the domain has that method (the domain
   knows its start states, e.g. from the real engine's first observation);
2. otherwise ``task.payload["initial_state"]`` (a string), which synthetic tasks may carry;
3. otherwise :class:`SyntheticEnvError`.

``step(action=...)`` builds an :class:`ExperienceRequest` (history window, top-k demos
from the buffer, never of the episode being played), calls the model, turns an invalid
action or an unparsable answer into a failure state with reward 0, adds the synthetic
transition to the buffer and caps the episode at ``max_steps``. With ``reject_unlisted``, an action missing from the
current state's own action list is such a failure without a model call: the abstract state
lists what can be done, so the model is not asked to judge what the state already rules out.
With ``reject_unlisted_at="start"`` only the start state's list counts: it is the real reset's,
while later lists are the model's own writing (which can be another world's).
With ``state_variation`` > 0 every state the policy sees (the start and each generated one)
goes through ``domain.vary_state``, keyed by the episode's task and seed (a room looks the same each
time it is seen within an episode, and a replay or a resumed run redraws the same variations): the synthetic
worlds then differ from the train worlds in what the task does not depend on (TextWorld:
furniture), which real rollouts on the train worlds cannot show the policy.
:func:`step_many` steps many environments with one model call and one retrieval call per
model/buffer, falling back to ``env.step`` for real environments. ``DreamGymGymEnv``
(imported lazily, needs ``gymnasium``) wraps any ``Env`` with Gymnasium text spaces.
"""

from __future__ import annotations

import string
import uuid
from typing import Annotated, Any, Literal, Sequence

from msgspec import Meta

from .config import Config, NonNegativeInt, PositiveInt, Probability
from .contracts import ComponentError, WrongReturn, checked_retrieval
from .errors import DreamGymError
from .experience import SAME_WORLD_POOL, same_world_first, world_namer
from .records import ExperienceRequest, ExperienceResult, HistoryStep, Observation, StepResult, Task, Transition
from .rollout import step_or_error, unlisted

__all__ = ["SyntheticEnvConfig", "synthetic_config_of", "SyntheticEnv", "SyntheticEnvError", "step_many", "storable", "initial_state", "DreamGymGymEnv"]


class SyntheticEnvError(DreamGymError):
    """The synthetic environment was misused (no start state, step before reset or after done)."""


class SyntheticEnvConfig(Config):
    """Episode shape of the synthetic environment."""

    max_steps: Annotated[PositiveInt, Meta(description="Step cap per synthetic episode; the last step is done.")] = 15
    history_window: Annotated[
        NonNegativeInt, Meta(description="Earlier (state, action) pairs given to the experience model.")
    ] = 4
    top_k: Annotated[
        NonNegativeInt, Meta(description="Buffer transitions retrieved per step as demos (never of the episode being played).")
    ] = 4
    demos: Annotated[
        Literal["nearest", "same-world-first"],
        Meta(description="Retrieved demos: the top_k nearest, or the episode's own world's and action's first (loop.demos)."),
    ] = "nearest"
    # Off by default: a buffer opened from a finished run to play in it must stay as the run left it.
    add_to_buffer: Annotated[bool, Meta(description="Add every synthetic transition to the buffer (written to its files).")] = False
    seeded_episodes: Annotated[
        bool,
        Meta(description=(
            "reset(seed=s) draws the episode's answers from the model's stream named by s and its config's draw "
            "(a model with stream(), as LMExperienceModel), so the same seed, draw and actions replay the episode; trainers turn it off to answer every "
            "episode's step in one batched model call, seeded by their rollout's own stream."
        )),
    ] = True
    reject_unlisted: Annotated[
        bool,
        Meta(description="An action the current state's action list does not offer is invalid without asking the model."),
    ] = False
    reject_unlisted_at: Annotated[
        Literal["every-step", "start"],
        Meta(description="Where reject_unlisted applies: every state, or only the start state, whose list is the real reset's."),
    ] = "every-step"
    state_variation: Annotated[
        Probability,
        Meta(description="Strength of domain.vary_state on every state the policy sees (0: states as generated)."),
    ] = 0.0
    check_transitions: Annotated[
        bool,
        Meta(description="domain.implausible judges each answer; one it rules out is the model's failure, as an unparsable one is."),
    ] = False
    implausible_answers: Annotated[
        Literal["fail", "correct"],
        Meta(description="An answer check_transitions rules out: the model's failure, or replaced by domain.correct's answer."),
    ] = "fail"


def synthetic_config_of(pipeline: Any, *, seeded_episodes: bool = False) -> SyntheticEnvConfig:
    """The synthetic environment's settings from a pipeline config, one place for every
    trainer (the local loop and verl), so both cap, retrieve, refuse and vary alike.
    Transitions enter the buffer in the trainer's store stage, after the rollout
    (``add_to_buffer`` off): a resumed iteration then retrieves what the uninterrupted one did.
    Episodes share the model given (``seeded_episodes`` off), so each lockstep step is one model
    call, seeded by the rollout's own stream; a single env played from Python passes
    ``seeded_episodes=True``, so that its episodes replay from ``reset(seed=...)``."""
    loop = pipeline.loop
    return SyntheticEnvConfig(
        max_steps=loop.max_steps, history_window=loop.history_window, top_k=loop.top_k, demos=loop.demos, add_to_buffer=False,
        seeded_episodes=seeded_episodes, reject_unlisted=loop.reject_unlisted_actions, reject_unlisted_at=loop.reject_unlisted_at,
        state_variation=loop.state_variation, check_transitions=loop.check_transitions,
        implausible_answers=loop.implausible_answers,
    )


def initial_state(task: Task, domain: Any) -> Observation:
    """The start observation of ``task`` by the rule in the module docstring."""
    if domain is not None and hasattr(domain, "initial_observation"):
        observation = domain.initial_observation(task)
        # else the agent's prompt fails on .text, deep in a rollout; WrongReturn: the run's failure,
        # not each episode's environment error (every synthetic episode was lost, the run exited 0)
        if not isinstance(observation, Observation):
            raise WrongReturn(
                f"env {getattr(domain, 'name', type(domain).__name__)!r}: initial_observation({task.id!r}) returned "
                f"{type(observation).__name__}, expected an Observation (dreamgym check runs the conformance kit)"
            )
        return observation
    state = task.payload.get("initial_state")
    if isinstance(state, str) and state.strip():
        return Observation(text=state)
    raise SyntheticEnvError(
        f"task {task.id!r}: no initial state (the domain has no initial_observation and "
        "task.payload has no 'initial_state' string)"
    )


class SyntheticEnv:
    """An ``Env`` whose transitions come from an experience model.

    ``info`` of each step carries ``parse_status``, ``truncated``, ``retrieved`` and the
    episode counters ``parse_failures``, ``parse_repairs`` and ``invalid_actions``.
    """

    def __init__(self, model: Any, buffer: Any = None, domain: Any = None, config: SyntheticEnvConfig | None = None) -> None:
        self.model = self._given_model = model
        self.buffer = buffer
        self.domain = domain
        self.config = config or SyntheticEnvConfig()
        self._task: Task | None = None
        self._obs: Observation | None = None
        self._history: list[HistoryStep] = []
        self._done = True
        self._episode = 0
        self._env_token = uuid.uuid4().hex[:8]
        self._variation_key = ""
        self.counters = {"parse_failures": 0, "parse_repairs": 0, "invalid_actions": 0, "implausible_answers": 0}
        if not callable(getattr(model, "predict", None)):  # else the first step fails on .predict
            hint = (
                ": it is a language model backend; wrap it as dreamgym_core.experience.LMExperienceModel(backend)"
                if callable(getattr(model, "generate", None)) else ""
            )
            raise SyntheticEnvError(f"SyntheticEnv needs an experience model (with predict), got {type(model).__name__}{hint}")
        if self.config.state_variation > 0 and not hasattr(domain, "vary_state"):
            raise SyntheticEnvError(
                f"state_variation={self.config.state_variation} needs a domain with vary_state; "
                f"domain {getattr(domain, 'name', None)!r} has none"
            )
        if self.config.check_transitions and not hasattr(domain, "implausible"):
            raise SyntheticEnvError(f"check_transitions needs a domain with implausible; domain {getattr(domain, 'name', None)!r} has none")
        if self.config.check_transitions and self.config.implausible_answers == "correct" and not hasattr(domain, "correct"):
            raise SyntheticEnvError(f"implausible_answers='correct' needs a domain with correct; domain {getattr(domain, 'name', None)!r} has none")

    # -- Env contract

    def reset(self, *, task: Task, seed: int | None = None) -> Observation:
        """Start an episode of ``task``. With ``seed`` (and ``seeded_episodes``), the model's answers
        come from the stream that seed names: the same task, seed and actions replay the episode
        (given a buffer that does not change meanwhile). Without one, the model given is used
        as it stands (its own call count seeds its draws)."""
        if not isinstance(task, Task):  # checked before anything changes: the env stays as it was
            raise SyntheticEnvError(f"SyntheticEnv.reset: task must be a Task, got {type(task).__name__}")
        # Everything is worked out before the env changes: a start state or variation that raises
        # leaves the last episode as it was, not running on under the new task's id.
        model = self._episode_model(seed)
        start = initial_state(task, self.domain)
        episode = self._episode + 1
        # Unique across envs and runs sharing a buffer (add_to_buffer): a per-env counter alone gave
        # two envs' first episodes of a task one id, and the buffer could not be regrouped by episode.
        episode_id = f"syn-{task.id}-{seed if seed is not None else 'x'}-{self._env_token}-{episode}"
        # The variation is keyed by what replays an episode (task and seed), not by its id.
        variation_key = f"{task.id}/{seed}" if seed is not None else episode_id
        obs = self._vary(start, key=variation_key)
        self.model, self._task, self._episode, self._episode_id = model, task, episode, episode_id
        self._variation_key, self._obs = variation_key, obs
        self._history = []
        self._done = False
        self.counters = {key: 0 for key in self.counters}
        return self._obs

    def step(self, *, action: str) -> StepResult:
        result = step_many([self], [action])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def close(self) -> None:
        """Nothing to release: the model and buffer are shared and owned by the caller (who
        gets the model given back as ``model``, not an episode's stream of it)."""
        self._done = True
        self.model = self._given_model

    def _episode_model(self, seed: int | None) -> Any:
        """The model an episode started with ``seed`` draws from (see :meth:`reset`)."""
        stream = getattr(self._given_model, "stream", None)
        if seed is None or not self.config.seeded_episodes or not callable(stream):
            return self._given_model
        # stream() starts its stream at draw 0 (measurements ignore the draw), so a draw other
        # than 0 goes into the name, else draws 1, 2, ... replayed draw 0's episodes. Draw 0
        # keeps the name it had, so its episodes (and earlier runs) replay as before.
        draw = getattr(getattr(self._given_model, "config", None), "draw", 0)
        return stream(f"episode/{seed}" if not draw else f"episode/{seed}/draw/{draw}")

    # -- pieces step_many composes

    def _admissible_in(self, state: str) -> list[str]:
        """The actions a generated state offers, read back by the domain (when it can), so
        synthetic steps show the agent the same action list as real ones."""
        if self.domain is None or not hasattr(self.domain, "admissible_in"):
            return []
        actions = self.domain.admissible_in(state)
        # a str would become a list of one-letter actions
        if not isinstance(actions, (list, tuple)) or not all(isinstance(a, str) for a in actions):
            raise WrongReturn(
                f"env domain {type(self.domain).__name__}: admissible_in(state) returned {type(actions).__name__} "
                f"{actions!r:.60}, expected a list of str"
            )
        return list(actions)

    def _vary(self, obs: Observation, *, key: str) -> Observation:
        """``obs`` as the domain varies it (``state_variation``) under the episode's ``key``; the action list stays."""
        if self.config.state_variation <= 0:
            return obs
        text = self.domain.vary_state(obs.text, obs.admissible_actions, key=key, strength=self.config.state_variation)
        if not isinstance(text, str):  # else a None reaches the prompt, and the experience model is blamed
            raise WrongReturn(
                f"env domain {type(self.domain).__name__}: vary_state(state, ...) returned {type(text).__name__}, expected a str"
            )
        return Observation(text=text, admissible_actions=list(obs.admissible_actions))

    def _rejects(self, action: str) -> bool:
        """Whether the current state's own action list rules ``action`` out (the real engine
        would refuse it), so the step is a failure state without a model call. A state whose
        list is unknown (empty) leaves the verdict to the model."""
        assert self._obs is not None
        listed = self._obs.admissible_actions
        here = self.config.reject_unlisted_at == "every-step" or not self._history
        return self.config.reject_unlisted and here and unlisted(action, listed)

    def _implausible(self, action: str, next_obs: Observation) -> str:
        """Why the domain rules out the model's answer to ``action`` ("" when it does not, or
        when ``check_transitions`` is off). Judged on the current state as the agent was shown it
        and the next state as generated, before its variation."""
        assert self._obs is not None
        if not self.config.check_transitions:
            return ""
        reason = self.domain.implausible(state=self._obs, action=action, next_state=next_obs)
        if not isinstance(reason, str):
            raise WrongReturn(
                f"env domain {type(self.domain).__name__}: implausible(...) returned {type(reason).__name__}, expected a str"
            )
        return reason

    def _judged(self, action: str, result: ExperienceResult) -> tuple[ExperienceResult, Observation, str]:
        """The answer to play, its next observation (before variation), and why the domain ruled
        the model's answer out ("" when it did not; see ``check_transitions``)."""
        assert self._obs is not None
        generated = Observation(text=result.next_state, admissible_actions=self._admissible_in(result.next_state))
        implausible = "" if result.parse_status == "failed" else self._implausible(action, generated)
        if not implausible:
            return result, generated, ""
        if self.config.implausible_answers == "correct":  # the domain's answer is played and stored in its place
            result = self._corrected(action, result)
            return result, Observation(text=result.next_state, admissible_actions=self._admissible_in(result.next_state)), implausible
        # the model's failure, as an unparsable answer is: nothing changes, nothing is stored
        failure = ExperienceResult(
            reasoning=f"implausible answer: {implausible}", next_state=self._obs.text, reward=0.0, done=True, success=False, raw=result.raw,
        )
        return failure, self._unchanged(), implausible

    def _unchanged(self) -> Observation:
        """The next observation of a step that changes nothing: the current one, as shown."""
        assert self._obs is not None
        return Observation(text=self._obs.text, admissible_actions=list(self._obs.admissible_actions))

    def _corrected(self, action: str, answer: ExperienceResult) -> ExperienceResult:
        """The domain's answer in place of the model's implausible ``answer``."""
        assert self._obs is not None
        corrected = self.domain.correct(state=self._obs, action=action, answer=answer)
        if not isinstance(corrected, ExperienceResult):
            raise WrongReturn(
                f"env domain {type(self.domain).__name__}: correct(...) returned {type(corrected).__name__}, expected an ExperienceResult"
            )
        return corrected

    def _check_running(self) -> None:
        if self._task is None or self._obs is None:
            raise SyntheticEnvError("step() called before reset()")
        if self._done:
            raise SyntheticEnvError(f"step() called after the episode of task {self._task.id!r} ended; call reset()")

    def _request(self, action: str, demos: Sequence[Transition]) -> ExperienceRequest:
        assert self._task is not None and self._obs is not None  # guarded by _check_running
        window = self.config.history_window
        return ExperienceRequest(
            instruction=self._task.instruction,
            history=self._history[-window:] if window else [],
            state=self._obs.text,
            action=action,
            admissible_actions=list(self._obs.admissible_actions),
            demos=list(demos),
        )

    def _finish(self, action: str, result: ExperienceResult, retrieved: int, *, refused: bool = False) -> tuple[StepResult, Transition]:
        """Apply the failure rules and the step cap; record the transition. ``refused``: the env
        refused the action itself (``reject_unlisted``), so ``result`` is no answer of the model's."""
        assert self._task is not None and self._obs is not None
        if refused:  # judged, the policy's invalid action could become the model's implausible answer
            generated, implausible = self._unchanged(), ""
        else:
            result, generated, implausible = self._judged(action, result)
        unparsed = result.parse_status == "failed"
        failed = unparsed or (bool(implausible) and self.config.implausible_answers == "fail")
        self.counters["parse_failures"] += unparsed
        self.counters["implausible_answers"] += bool(implausible)
        self.counters["parse_repairs"] += result.parse_status == "repaired"
        self.counters["invalid_actions"] += not result.valid and not failed
        # Success ends the episode, as the LM parser reads it; else a plugin model's success on a step
        # not done would reach the step cap as a win with reward 0.
        done, success = result.done or result.success, result.success
        if failed or not result.valid:  # paper: an invalid action leads to a failure state, reward 0
            done, success = True, False
        reward = 1.0 if done and success else 0.0
        step = len(self._history)
        truncated = not done and step + 1 >= self.config.max_steps
        done = done or truncated
        # A next state that reads as the current one is the current one, varied when it was shown:
        # varied again, a step that changed nothing would show and store a changed state.
        next_obs = generated if generated.text == self._obs.text else self._vary(generated, key=self._variation_key)
        transition = Transition(
            task_id=self._task.id, episode_id=self._episode_id, step=step, state=self._obs.text,
            action=action, next_state=next_obs.text, reward=reward, done=done, success=success,
            valid=result.valid, reasoning=result.reasoning, source="synthetic",
            model_id=getattr(self.model, "model_id", ""), instruction=self._task.instruction,
            model_failed=failed, admissible_actions=list(self._obs.admissible_actions), truncated=truncated,
        )
        self._history.append(HistoryStep(state=self._obs.text, action=action))
        self._obs = next_obs
        self._done = done
        info = {
            "parse_status": result.parse_status, "truncated": truncated, "retrieved": retrieved, "model_failed": failed,
            "implausible": implausible, "reasoning": result.reasoning, **self.counters,
        }  # fmt: skip
        step_result = StepResult(
            observation=self._obs, reward=reward, done=done, success=success, valid=result.valid, info=info
        )
        return step_result, transition


def storable(transitions: Sequence[Transition], *, synthetic: bool = True) -> list[Transition]:
    """What of ``transitions`` may enter the replay buffer: not the experience model's
    unparsable answers (errors, not experience; retrieval would feed them back), and no
    synthetic step at all without ``synthetic`` (``loop.store_synthetic``)."""
    return [t for t in transitions if not t.model_failed and (synthetic or t.source != "synthetic")]


def _own_steps(env: SyntheticEnv) -> int:
    """How many of the current episode's steps ``env`` may have put in its buffer so far."""
    return len(env._history) if env.config.add_to_buffer else 0


def _retrieve(envs: Sequence[SyntheticEnv], actions: Sequence[str]) -> list[list[Transition]]:
    """Demos for every env, one ``retrieve`` call per distinct buffer. An env that adds its
    steps at once (``add_to_buffer``) is never shown its own episode's steps, as training's
    demos never are (:func:`~dreamgym_core.experience.requests_for`): it asks for as many
    more neighbours as it has stored, so ``top_k`` remain when the buffer holds them. With
    ``demos: same-world-first`` the episode's own world's come first among the nearest
    :data:`~dreamgym_core.experience.SAME_WORLD_POOL`, as in training."""
    demos: list[list[Transition]] = [[] for _ in envs]
    groups: dict[int, list[int]] = {}
    for i, env in enumerate(envs):
        if env.buffer is not None and env.config.top_k > 0:
            groups.setdefault(id(env.buffer), []).append(i)
    for members in groups.values():
        buffer, k = envs[members[0]].buffer, max(_fetch(envs[i]) for i in members)
        queries = [(envs[i]._obs.text, actions[i]) for i in members]  # type: ignore[union-attr]
        hits = checked_retrieval(buffer.retrieve(queries=queries, k=k), len(queries), f"buffer {type(buffer).__name__}")
        for i, found in zip(members, hits):
            env = envs[i]
            own = (env._task.id, env._episode_id) if _own_steps(env) else None  # type: ignore[union-attr]
            # As training's demos (experience._demos): the episode's own steps are dropped, then the pool is
            # cut to its size and only then sorted, so a same-world demo ranked past the pool is not shown.
            kept = [d for d in found if (d.task_id, d.episode_id) != own][: _pool(env)]
            if env.config.demos == "same-world-first":
                world_of = world_namer(env.domain)
                kept = same_world_first(kept, world=world_of(env._task.id), action=actions[i], world_of=world_of)  # type: ignore[union-attr]
            demos[i] = kept[: env.config.top_k]
    return demos


def _pool(env: SyntheticEnv) -> int:
    """How many of the nearest neighbours ``env``'s demos are chosen among (see :func:`_retrieve`)."""
    return max(env.config.top_k, SAME_WORLD_POOL) if env.config.demos == "same-world-first" else env.config.top_k


def _fetch(env: SyntheticEnv) -> int:
    """How many neighbours ``env``'s step asks the buffer for (see :func:`_retrieve`)."""
    return _pool(env) + _own_steps(env)  # the episode's own stored steps come on top of the pool, as in training


def _unlisted(env: SyntheticEnv, action: str) -> ExperienceResult:
    """The failure state for an action the state does not offer: nothing changes."""
    assert env._obs is not None
    return ExperienceResult(
        reasoning=f"'{action}' is not among the actions the state offers, so it fails.",
        next_state=env._obs.text, reward=0.0, done=True, success=False, valid=False,
    )


def _step_synthetic(envs: Sequence[SyntheticEnv], actions: Sequence[str]) -> list[StepResult | Exception]:
    for env, action in zip(envs, actions, strict=True):
        env._check_running()
        if not isinstance(action, str):  # else it fails deep in the prompt, after other envs were asked
            raise SyntheticEnvError(f"SyntheticEnv.step: an action is a str, got {type(action).__name__}")
    rejected = [env._rejects(a) for env, a in zip(envs, actions)]
    asked = [i for i in range(len(envs)) if not rejected[i]]
    demos: list[list[Transition]] = [[] for _ in envs]
    for i, found in zip(asked, _retrieve([envs[i] for i in asked], [actions[i] for i in asked])):
        demos[i] = found
    requests = {i: envs[i]._request(actions[i], demos[i]) for i in asked}
    results: list[ExperienceResult] = [_unlisted(env, a) if r else None for env, a, r in zip(envs, actions, rejected)]  # type: ignore[misc]
    by_model: dict[int, list[int]] = {}
    for i in asked:
        by_model.setdefault(id(envs[i].model), []).append(i)
    for members in by_model.values():
        answers = _predict(envs[members[0]].model, [requests[i] for i in members])
        for i, answer in zip(members, answers, strict=True):
            results[i] = answer
    # From here envs move: what fails now is its env's slot (StepManyFn), not a raise that would
    # have the rollout step the envs already moved a second time.
    steps: list[StepResult | Exception] = []
    to_add: dict[int, tuple[Any, list[int], list[Transition]]] = {}
    for i, (env, action, result, found) in enumerate(zip(envs, actions, results, demos)):
        try:
            # a domain's admissible_in or vary_state runs here
            step, transition = env._finish(action, result, len(found), refused=rejected[i])
        except Exception as exc:
            steps.append(exc)
            continue
        steps.append(step)
        if env.buffer is not None and env.config.add_to_buffer:
            entry = to_add.setdefault(id(env.buffer), (env.buffer, [], []))
            entry[1].append(i)
            entry[2].append(transition)
    for buffer, members, transitions in to_add.values():
        try:
            buffer.add(transitions=storable(transitions))
        except Exception as exc:
            for i in members:
                steps[i] = exc
    return steps


def _predict(model: Any, requests: list[ExperienceRequest]) -> list[ExperienceResult]:
    """``model.predict``, with what it raised named as the experience model's failure: the
    rollout fails only the episodes it could not step, and stops when it could step none. An
    answer of the wrong kind is the plugin's bug (:class:`WrongReturn`): the run's failure."""
    who = f"experience model {getattr(model, 'model_id', type(model).__name__)!r}"
    try:
        answers = model.predict(requests=requests)
    except DreamGymError:
        raise
    except Exception as exc:  # the model's (a plugin's) failure: say whose, in one line
        raise ComponentError(f"{who}: predict() raised {type(exc).__name__}: {' '.join(str(exc).split())}") from exc
    if not isinstance(answers, list) or len(answers) != len(requests):
        raise WrongReturn(f"{who}: predict() returned {len(answers) if isinstance(answers, list) else type(answers).__name__} "
                          f"answers for {len(requests)} requests")
    for i, answer in enumerate(answers):  # a Python model's dict, or a None state, failed far from here
        if not isinstance(answer, ExperienceResult) or not isinstance(answer.next_state, str):
            what = type(answer).__name__ if not isinstance(answer, ExperienceResult) else f"next_state {type(answer.next_state).__name__}"
            raise WrongReturn(f"{who}: predict() returned {what} at position {i}, expected an ExperienceResult with a str next_state")
    return answers


def step_many(envs: Sequence[Any], actions: Sequence[str]) -> list[StepResult | Exception]:
    """Step every env with its action: synthetic ones in one batched model call.

    Real environments (anything not a :class:`SyntheticEnv`) are stepped one by one
    with ``env.step(action=...)``; the slot of one that raises holds the exception.
    Results come back in the order of ``envs``. A failing model call raises before any
    env moves: the synthetic batch goes first, as a caller then steps every env again.
    """
    if len(envs) != len(actions):
        raise SyntheticEnvError(f"step_many got {len(envs)} envs and {len(actions)} actions")
    results: list[StepResult | Exception] = [None] * len(envs)  # type: ignore[list-item]
    synthetic = [i for i, env in enumerate(envs) if isinstance(env, SyntheticEnv)]
    if synthetic:
        for i, step in zip(synthetic, _step_synthetic([envs[i] for i in synthetic], [actions[i] for i in synthetic])):
            results[i] = step
    for i, env in enumerate(envs):
        if not isinstance(env, SyntheticEnv):
            results[i] = step_or_error(env, actions[i])
    return results


# --- Gymnasium wrapper (lazy import) ---------------------------------------------

_GYM_CLASS: type | None = None


def _make_gym_class() -> type:
    try:
        import gymnasium
        from gymnasium import spaces
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise DreamGymError("DreamGymGymEnv needs gymnasium: pip install gymnasium") from exc

    class AnyText(spaces.Text):
        """Text of any characters within the length bounds: observations and actions are
        whatever an env and a policy write (a degree sign, an accented name), not ASCII.
        ``sample()`` still draws printable ASCII: a text space samples from a finite set."""

        def contains(self, x: Any) -> bool:
            return isinstance(x, str) and self.min_length <= len(x) <= self.max_length

    class DreamGymGymEnv(gymnasium.Env):
        """Any DreamGym ``Env`` as a Gymnasium env with text observation and action spaces.

        Both spaces are ``gymnasium.spaces.Text`` that hold text of any characters up to
        ``max_length`` (sampling an action from them gives random printable ASCII, as for any
        text space).
        ``reset(options={"task": Task})`` picks the task; without it, tasks are drawn
        from ``tasks`` with the env's seeded RNG. A reset without ``seed`` draws the episode's
        seed from that RNG, and the wrapped env is reset with it (or with ``seed``); a
        :class:`SyntheticEnv` then draws the episode's answers from the model stream that seed
        names (``seeded_episodes``), so ``reset(seed=s)`` and the same actions replay the same
        episode, and so do the resets after it (given a buffer that does not change meanwhile,
        as with the default ``add_to_buffer=False``). The wrapped env's ``model`` is that
        stream during an episode (its ``metrics()`` are the episode's); ``close()`` puts the
        given model back. ``info`` carries the admissible
        actions, success, validity and the wrapped env's own info. An action that is not a
        str or is longer than ``max_length`` (the action space's bound), or a task that is not
        a :class:`~dreamgym_core.records.Task`, raises :class:`SyntheticEnvError`.
        """

        metadata = {"render_modes": []}

        def __init__(self, env: Any, tasks: Sequence[Task] = (), max_length: int = 8192) -> None:
            self.env = env
            self.tasks = list(tasks)
            self.observation_space = AnyText(max_length=max_length, min_length=0, charset=string.printable)
            self.action_space = AnyText(max_length=max_length, min_length=1, charset=string.printable)

        def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
            super().reset(seed=seed)
            task = (options or {}).get("task")
            if task is None:
                if not self.tasks:
                    raise SyntheticEnvError("DreamGymGymEnv.reset needs options={'task': Task} or a tasks list")
                task = self.tasks[int(self.np_random.integers(len(self.tasks)))]
            if not isinstance(task, Task):
                raise SyntheticEnvError(f"DreamGymGymEnv.reset: options['task'] must be a Task, got {type(task).__name__}")
            # Drawn on every reset, so the resets after a seeded one replay too.
            episode_seed = int(self.np_random.integers(2**31))
            obs = self.env.reset(task=task, seed=episode_seed if seed is None else seed)
            return obs.text, {"admissible_actions": list(obs.admissible_actions), "task_id": task.id}

        def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
            if not isinstance(action, str):  # the env would fail deep inside, on a str method
                raise SyntheticEnvError(f"DreamGymGymEnv.step: an action is a str (action_space is Text), got {type(action).__name__}")
            if len(action) > self.action_space.max_length:  # its start would crowd the task out of the model's prompt
                raise SyntheticEnvError(
                    f"DreamGymGymEnv.step: an action of {len(action)} characters is longer than action_space's "
                    f"max_length ({self.action_space.max_length})"
                )
            result = self.env.step(action=action)
            truncated = bool(result.info.get("truncated", False))
            info = {
                **result.info, "admissible_actions": list(result.observation.admissible_actions),
                "success": result.success, "valid": result.valid,
            }
            return result.observation.text, float(result.reward), result.done and not truncated, truncated, info

        def close(self) -> None:
            self.env.close()

    return DreamGymGymEnv


def __getattr__(name: str) -> Any:
    global _GYM_CLASS
    if name == "DreamGymGymEnv":
        if _GYM_CLASS is None:
            _GYM_CLASS = _make_gym_class()
        return _GYM_CLASS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
