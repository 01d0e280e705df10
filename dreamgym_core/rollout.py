"""Batched multi-turn rollouts: one code path for real and synthetic environments,
for training and for evaluation."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from . import stopping
from .agent import build_agent_prompt, parse_agent_output, render_response
from .contracts import WrongReturn
from .errors import ConfigError
from .protocols import Env
from .records import HistoryStep, Observation, PolicyDecision, StepResult, Task, Trajectory, Transition

__all__ = [
    "RolloutStats", "sum_stats", "Episode", "rollout", "step_transition", "answer_failed", "play_offline", "unlisted", "wilson_interval",
    "unanswered_step", "unanswered", "drop_unanswered", "task_family", "success_by_family",
]

log = logging.getLogger(__name__)

# act(prompts) -> raw policy outputs, one per prompt; with a rollout's ``listed_choice``,
# act(prompts, listed), where ``listed`` holds each prompt's listed actions.
ActFn = Callable[..., list[str]]
# Steps envs with their actions; a slot holds the exception its env raised. A step_many that
# raises instead must do so before stepping any env: the rollout then steps them one by one,
# and stops with the first error if there are several and every one of them raises too.
StepManyFn = Callable[[Sequence[Env], Sequence[str]], list[StepResult | Exception]]
# on_step(step, max_steps, playing, episodes): told as each lockstep step begins (progress lines).
StepFn = Callable[[int, int, int, int], None]


@dataclass
class RolloutStats:
    """Counters of one rollout call; merged into the iteration's metrics."""

    episodes: int = 0
    steps: int = 0
    successes: int = 0
    unparsed_actions: int = 0
    invalid_actions: int = 0
    env_errors: int = 0
    truncated: int = 0
    parse_failures: int = 0
    # Steps whose action the observation's own list does not offer, and those the environment
    # still accepted: a real engine refuses them, so accepted ones show a lenient experience model.
    unlisted_actions: int = 0
    unlisted_accepted: int = 0
    # Experience-model answers the domain ruled out (loop.check_transitions): failures of the
    # model, as parse_failures are, counted apart.
    implausible_answers: int = 0

    def metrics(self, prefix: str) -> dict[str, float]:
        eps = max(self.episodes, 1)
        return {
            f"{prefix}/success_rate": self.successes / eps,
            f"{prefix}/episodes": float(self.episodes),
            f"{prefix}/episode_length": self.steps / eps,
            f"{prefix}/steps": float(self.steps),
            f"errors/{prefix}_unparsed_actions": float(self.unparsed_actions),
            f"errors/{prefix}_invalid_actions": float(self.invalid_actions),
            f"errors/{prefix}_env_errors": float(self.env_errors),
            f"errors/{prefix}_model_parse_failures": float(self.parse_failures),
            f"{prefix}/truncated": float(self.truncated),
            f"{prefix}/unlisted_actions": float(self.unlisted_actions),
            f"{prefix}/unlisted_accepted": float(self.unlisted_accepted),
            f"errors/{prefix}_implausible_answers": float(self.implausible_answers),
        }


def sum_stats(parts: Sequence[RolloutStats]) -> RolloutStats:
    """The counters of several rollout calls that make one play, added up."""
    return RolloutStats(**{field: sum(getattr(part, field) for part in parts) for field in RolloutStats.__dataclass_fields__})


@dataclass
class Episode:
    """A live episode: its env, current observation and what happened so far."""

    task: Task
    env: Env
    episode_id: str
    observation: Observation
    history: list[HistoryStep] = field(default_factory=list)
    transitions: list[Transition] = field(default_factory=list)
    decisions: list[PolicyDecision] = field(default_factory=list)
    done: bool = False
    truncated: bool = False  # ended by the env's own step cap (info["truncated"]), not by the game

    def trajectory(self) -> Trajectory:
        return Trajectory(task=self.task, transitions=self.transitions, decisions=self.decisions)


def played_steps(trajectories: Sequence[Trajectory]) -> int:
    """Steps an environment was asked to play: not the note that ends an episode whose policy
    output held no action (no environment saw it). An environment's crash counts: it was asked.
    Counted as real transitions, they charged S2R's real budget for steps never played."""
    return sum(len(t.transitions) - sum(not d.parsed for d in t.decisions) for t in trajectories)


def unlisted(action: str, admissible: Sequence[str]) -> bool:
    """Whether the state's own action list leaves ``action`` out (False when the list is unknown).
    Case and spacing do not count, as the envs that list actions (TextWorld, ALFWorld) read an
    action: "Take  coin" is their listed "take coin", and the synthetic env refused it as unlisted."""
    if not admissible or action in admissible:
        return False
    key = _action_key(action)
    return all(_action_key(a) != key for a in admissible)


def _action_key(action: str) -> str:
    return " ".join(action.split()).lower()


def _default_step_many(envs: Sequence[Env], actions: Sequence[str]) -> list[StepResult | Exception]:
    return [step_or_error(env, action) for env, action in zip(envs, actions)]


def step_or_error(env: Env, action: str) -> StepResult | Exception:
    """``env.step(action)``, or what it raised: a step_many slot, so that one env's crash
    fails its own episode and the envs already stepped are not stepped again."""
    try:
        return env.step(action=action)
    except WrongReturn:  # a plugin's bug: the run's failure, not an engine crash
        raise
    except Exception as exc:  # an engine crash is the episode's failure, never the batch's
        stopping.check()  # unless Ctrl-C brought it about
        return exc


def _failed_step(ep: Episode, decision: PolicyDecision, note: str, source: str) -> None:
    """End ``ep`` as a failure at the current state (reward 0), recording why."""
    ep.transitions.append(
        Transition(
            task_id=ep.task.id,
            episode_id=ep.episode_id,
            step=len(ep.transitions),
            state=ep.observation.text,
            action=decision.action or decision.text[:200],
            next_state=note,
            reward=0.0,
            done=True,
            success=False,
            valid=False,
            source=source,  # type: ignore[arg-type]
            admissible_actions=list(ep.observation.admissible_actions),
            instruction=ep.task.instruction,
            model_failed=True,  # a note, not an environment's answer: kept out of the replay buffer
        )
    )
    ep.decisions.append(decision)
    ep.done = True


def answer_failed(info: dict[str, Any]) -> bool:
    """Whether a step's info marks the experience model's failure (an unparsable answer, or one
    the domain ruled out): then the step is not the environment's answer."""
    return bool(info.get("model_failed")) or info.get("parse_status") == "failed"


def step_transition(
    task: Task, episode_id: str, step: int, observation: Observation, action: str, result: StepResult, *, source: str, model_id: str
) -> Transition:
    """The record of one applied step, for this loop and for other trainers' rollouts (verl).

    A non-finite reward is stored as 0; a synthetic step whose answer did not parse is marked
    ``model_failed``, so the buffer never serves it as a demo."""
    return Transition(
        task_id=task.id,
        episode_id=episode_id,
        step=step,
        state=observation.text,
        action=action,
        next_state=result.observation.text,
        reward=result.reward if math.isfinite(result.reward) else 0.0,
        done=result.done,
        success=result.success,
        valid=result.valid,
        reasoning=str(result.info.get("reasoning", "")),
        source=source,  # type: ignore[arg-type]
        admissible_actions=list(observation.admissible_actions),
        model_id=model_id,
        instruction=task.instruction,
        model_failed=answer_failed(result.info),
        truncated=bool(result.info.get("truncated", False)),
    )


def play_offline(env: Env, task: Task, episode_id: str, next_action: Callable[[Observation], str]) -> Trajectory:
    """One real episode of a domain's scripted data policy (expert, noisy, random play in
    ``collect``): ``next_action`` picks each action from the state it sees, until the env ends
    the episode. Its transitions are ``source="offline"``."""
    observation, transitions = env.reset(task=task), []
    while True:
        action = next_action(observation)
        result = env.step(action=action)
        transitions.append(step_transition(task, episode_id, len(transitions), observation, action, result, source="offline", model_id=""))
        observation = result.observation
        if result.done:
            return Trajectory(task=task, transitions=transitions)


def _apply(ep: Episode, decision: PolicyDecision, result: StepResult, source: str, model_id: str) -> None:
    ep.transitions.append(
        step_transition(
            ep.task, ep.episode_id, len(ep.transitions), ep.observation, decision.action, result, source=source, model_id=model_id
        )
    )
    ep.decisions.append(decision)
    ep.history.append(HistoryStep(state=ep.observation.text, action=decision.action))
    ep.observation = result.observation
    ep.done = result.done
    ep.truncated = bool(result.info.get("truncated", False))


def _start(
    tasks: Sequence[Task], envs: Sequence[Env], seeds: Sequence[int], tag: str, stats: RolloutStats, first_episode: int = 0
) -> list[Episode]:
    episodes = []
    for i, (task, env, seed) in enumerate(zip(tasks, envs, seeds), start=first_episode):
        try:
            obs = env.reset(task=task, seed=seed)
        except (WrongReturn, ConfigError):  # a plugin's bug, or a task the env refuses as malformed (its
            raise  # payload): the run's failure, named in one line, not an engine crash scored as a lost episode
        except Exception as exc:  # an engine crash fails this episode, never the run
            stopping.check()  # unless Ctrl-C brought it about
            stats.env_errors += 1
            log.warning("env reset failed for task %s: %s", task.id, exc)
            obs = Observation(text=f"[environment error at reset: {type(exc).__name__}]")
            episode = Episode(task=task, env=env, episode_id=f"{tag}-{i}", observation=obs, done=True)
            episodes.append(episode)
            continue
        episodes.append(Episode(task=task, env=env, episode_id=f"{tag}-{i}", observation=obs))
    return episodes


def rollout(
    *,
    tasks: Sequence[Task],
    envs: Sequence[Env],
    act: ActFn,
    max_steps: int,
    history_window: int,
    seeds: Sequence[int],
    source: str,
    tag: str,
    step_many: StepManyFn | None = None,
    model_id: str = "",
    on_step: StepFn | None = None,
    listed_choice: bool = False,
    first_episode: int = 0,
) -> tuple[list[Trajectory], RolloutStats]:
    """Play one episode per (task, env) in lockstep; return trajectories and counters.

    A policy output with no parsable action, or an environment that raises, ends
    that episode as a failure (reward 0) and is counted; it never stops the others.
    ``on_step`` hears of each step before it is played (``RolloutProgress``).
    ``listed_choice``: ``act`` also gets each state's listed actions (``loop.action_choice``).
    Episode ids are ``<tag>-<n>`` from ``n = first_episode``: a play split in batches passes
    each batch's offset, so two episodes of one task never share an id.
    """
    stats = RolloutStats(episodes=len(tasks))
    episodes = _start(tasks, envs, seeds, tag, stats, first_episode)
    for step in range(max_steps):
        stopping.check()  # a stop that was dropped where it was raised
        live = [ep for ep in episodes if not ep.done]
        if not live:
            break
        if on_step is not None:
            on_step(step, max_steps, len(live), len(episodes))
        stepping = _decide(
            live, act, step=step, max_steps=max_steps, history_window=history_window, source=source, stats=stats,
            listed_choice=listed_choice,
        )
        if stepping:
            _step_envs(stepping, step_many or _default_step_many, source=source, model_id=model_id, stats=stats)
    _tally(episodes, stats)
    return [ep.trajectory() for ep in episodes], stats


def _decide(
    live: list[Episode], act: ActFn, *, step: int, max_steps: int, history_window: int, source: str, stats: RolloutStats,
    listed_choice: bool = False,
) -> list[tuple[Episode, PolicyDecision]]:
    """The policy's stage of one lockstep step: one prompt per live episode, one action each.
    An output with no parsable action ends its episode as a failure; the rest are returned."""
    prompts = [
        build_agent_prompt(
            task=ep.task, observation=ep.observation, history=ep.history, step=step,
            max_steps=max_steps, history_window=history_window,
        )
        for ep in live
    ]
    stepping: list[tuple[Episode, PolicyDecision]] = []
    listed = [list(ep.observation.admissible_actions) for ep in live] if listed_choice else None
    texts = act(prompts, listed) if listed is not None else act(prompts)
    for i, (ep, prompt, text) in enumerate(zip(live, prompts, texts)):
        action, parsed = parse_agent_output(text, ep.observation.admissible_actions)
        # the answers as act() scored them (the loop renders each listed action so)
        candidates = [render_response(a) for a in listed[i]] if listed is not None else []
        decision = PolicyDecision(text=text, action=action, parsed=parsed, prompt=prompt, candidates=candidates)
        if not parsed:
            stats.unparsed_actions += 1
            _failed_step(ep, decision, "[no parsable action in the policy output]", source)
        else:
            stepping.append((ep, decision))
    return stepping


def _step_envs(
    stepping: list[tuple[Episode, PolicyDecision]], step_many: StepManyFn, *, source: str, model_id: str, stats: RolloutStats
) -> None:
    """The environments' stage: step each episode with its action and apply the result; an
    environment that raises ends its own episode as a failure."""
    try:
        results = step_many([ep.env for ep, _ in stepping], [d.action for _, d in stepping])
    except Exception:  # raised before any env moved (StepManyFn): step them one by one
        results = [step_or_error(ep.env, d.action) for ep, d in stepping]
        if len(results) > 1 and all(isinstance(result, Exception) for result in results):
            # Several episodes, none of which could be stepped (an experience model that cannot
            # answer at all): the run's failure. Counted as env errors, it trained on nothing and
            # exited 0. One episode alone failing is its own failure (a request its server refused).
            raise results[0]  # noqa: B904 - its own cause (the model's error) is the one to show
    broken = next((result for result in results if isinstance(result, WrongReturn)), None)
    if broken is not None:  # a plugin's bug in its env's slot: the run's failure
        raise broken
    for (ep, decision), result in zip(stepping, results):
        if isinstance(result, Exception):
            stats.env_errors += 1
            log.warning("env step failed for task %s: %s", ep.task.id, result)
            _failed_step(ep, decision, f"[environment error: {type(result).__name__}]", source)
            continue
        offered = unlisted(decision.action, ep.observation.admissible_actions)  # before _apply moves on
        model_failed = answer_failed(result.info)
        stats.unlisted_actions += offered
        # an answer ruled out as the model's failure ended the episode: not an acceptance
        stats.unlisted_accepted += offered and result.valid and not model_failed
        _apply(ep, decision, result, source, model_id)
        # an unparsable or implausible experience-model answer is the model's failure, counted once
        # as such (as SyntheticEnv's own info counters do), not also as an invalid action of the policy
        stats.invalid_actions += int(not result.valid and not model_failed)
        stats.implausible_answers += int(bool(result.info.get("implausible")))
        stats.parse_failures += int(model_failed and not result.info.get("implausible"))


def _tally(episodes: list[Episode], stats: RolloutStats) -> None:
    """Steps, successes and truncations of the finished rollout."""
    for ep in episodes:
        stats.steps += len(ep.transitions)
        if ep.transitions and ep.transitions[-1].success:
            stats.successes += 1
        if not ep.done or ep.truncated:  # cut by this rollout's cap or by the env's own
            stats.truncated += 1


def unanswered_step(transition: Transition, parsed: bool) -> bool:
    """Whether the environment could not answer a parsable action (the experience model's
    unparsable answer, an engine error): the step's failure is not the policy's."""
    return parsed and transition.model_failed


def unanswered(traj: Trajectory) -> bool:
    """Whether ``traj`` ended on an :func:`unanswered_step`, or has no step at all (its env
    crashed at reset, before the policy acted): then its reward 0 says nothing about the
    policy's play."""
    if not traj.transitions:
        return True
    return unanswered_step(traj.transitions[-1], not traj.decisions or traj.decisions[-1].parsed)


def drop_unanswered(
    tasks: Sequence[Task], groups: Sequence[Sequence[Trajectory]]
) -> tuple[list[Task], list[list[Trajectory]], int]:
    """``tasks`` and their ``groups`` without the :func:`unanswered` episodes, and how many
    episodes were left out. A group left with a single episode of several goes whole: a
    group-relative advantage (GRPO) or a reward variance (the curriculum) needs two."""
    kept_tasks: list[Task] = []
    kept_groups: list[list[Trajectory]] = []
    dropped = 0
    for task, group in zip(tasks, groups, strict=True):
        answered = [traj for traj in group if not unanswered(traj)]
        if len(answered) < min(2, len(group)):
            dropped += len(group)
            continue
        dropped += len(group) - len(answered)
        kept_tasks.append(task)
        kept_groups.append(answered)
    return kept_tasks, kept_groups, dropped


def task_family(task: Task) -> str:
    """The kind of problem a task is: its id up to the last ``/`` (``miniwob/click-button`` for
    ``miniwob/click-button/7``), the convention of the built-in domains' ids; "" without one."""
    return task.id.rsplit("/", 1)[0] if "/" in task.id else ""


def success_by_family(trajectories: Sequence[Trajectory]) -> dict[str, tuple[int, int]]:
    """(successes, episodes) per :func:`task_family`, in order of first appearance."""
    out: dict[str, tuple[int, int]] = {}
    for traj in trajectories:
        family = task_family(traj.task)
        wins, n = out.get(family, (0, 0))
        out[family] = (wins + int(traj.success), n + 1)
    return out


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a success rate (sound at small n and p near 0 or 1)."""
    if n < 0 or not 0 <= successes <= max(n, 0):  # else a bound outside [0, 1] or a math domain error
        raise ValueError(f"wilson_interval: {successes} successes of {n} trials; needs 0 <= successes <= n")
    if n == 0:  # no trial says nothing: the whole range, not a certain 0%
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At p = 0 or 1 one bound is p in exact arithmetic but misses it by ~1e-16 in floats (0 of 11,
    # 6 of 6), which made a plotted error bar negative; the interval always holds p.
    return min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half))
