"""DreamGym's environment as a verl agent loop (token-in/token-out, multi-turn).

One verl sample is one DreamGym episode. Policy turns are token ids from verl's
rollout servers (``server_manager.generate``), kept verbatim with mask 1; each
environment turn is the next agent prompt (built from the new observation),
tokenised through verl's Continuous Token builder with mask 0. The environment is
any :class:`dreamgym_core.protocols.Env`: the synthetic environment (experience
model + shared buffer) or a real adapter, so the real, dreamgym and s2r modes share
this code. The episode ends on ``done``, on an unparsable action, at
``max_steps`` or when the response budget is spent; the response always ends with
the last policy turn, so the outcome reward lands on a policy token. A policy turn cut
by ``turn_max_tokens`` whose action parses plays on, closed with the chat template's
end-of-turn token (mask 0) as if the policy had ended it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Optional
from uuid import uuid4

import msgspec

from dreamgym_core.agent import build_agent_prompt, parse_agent_output
from dreamgym_core.errors import DreamGymError
from dreamgym_core.imports import root_logging_kept
from dreamgym_core.protocols import Env
from dreamgym_core.records import HistoryStep, Observation, StepResult, Task, TaskOutcome, Transition
from dreamgym_core.rollout import step_transition, unlisted

from .config import AGENT_LOOP_NAME

with root_logging_kept():  # importing verl runs logging.basicConfig on the program's root logger
    from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopOutput, register
    from verl.experimental.agent_loop.tool_agent_loop import SPEC_DECODE_EXTRA_KEYS
    from verl.utils.tokenizer.continuous_token import ContinuousTokenBuilder, QwenContinuousTokenBuilder

__all__ = [
    "EpisodeRuntime",
    "EpisodeStats",
    "DreamGymAgentLoop",
    "RUNTIMES",
    "episode_reward",
    "episode_seed",
    "get_runtime",
]

log = logging.getLogger(__name__)


def episode_reward(step_rewards: list[float], invalid_actions: int, penalty: float) -> float:
    """Outcome reward of one episode (paper): the environment's rewards (1 on the final
    step of a success, else 0) minus ``penalty`` per invalid or unparsable action."""
    return float(sum(step_rewards)) - penalty * invalid_actions


def episode_seed(row_seed: int, session_id: int, group_size: int) -> int:
    """The reset seed of session ``session_id`` (0 to ``group_size`` - 1) of a dataset row.

    verl's V1 worker plays one row ``rollout.n`` times with the row's kwargs, seed included;
    the local loop gives each episode of a GRPO group its own seed (``Runner._rollout``), and
    ``loop.state_variation`` varies the synthetic world by it. Training rows' seeds step by one
    a row, so ``row_seed * group_size + session_id`` is the episode's place in the run (the local
    loop's ``i``), offset by the run's seed: distinct for every episode. A group of one (verl's
    validation, ``val_kwargs.n`` 1) keeps the row's seed."""
    return row_seed * group_size + session_id


@dataclass
class EpisodeRuntime:
    """What every episode of a run shares inside one agent-loop worker process.

    ``make_env(phase)`` returns a fresh environment for ``phase`` ("synthetic" or
    "real"); ``store`` receives a finished episode's transitions (the shared
    buffer); ``report(outcome, group=uid)`` receives its outcome and verl's uid of its row
    (the shared curriculum, which groups a row's sessions).
    """

    make_env: Callable[[str], Env]
    max_steps: int
    history_window: int = 4
    invalid_action_penalty: float = 0.1
    turn_max_tokens: int = 256
    model_id: str = ""
    store: Callable[[list[Transition]], None] | None = None
    report: Callable[..., None] | None = None


# Runtimes by key (the run directory in production). The agent-loop YAML names the key;
# the first episode in a worker process builds the runtime from the run directory.
RUNTIMES: dict[str, EpisodeRuntime] = {}


def get_runtime(key: str) -> EpisodeRuntime:
    """The runtime for ``key``, built from the run directory on first use."""
    if key not in RUNTIMES:
        from .runtime import load_runtime

        RUNTIMES[key] = load_runtime(key)
    return RUNTIMES[key]


@dataclass
class EpisodeStats:
    """Counters of one episode, returned to verl as reward extra info."""

    steps: int = 0
    invalid_actions: int = 0
    unparsed_actions: int = 0
    unlisted_actions: int = 0  # not in the state's own list; a real engine refuses them
    unlisted_accepted: int = 0  # ... and the environment still accepted them (a lenient experience model)
    # experience-model failures, as the local rollout counts them: unparsable answers, and answers
    # the domain ruled out (loop.check_transitions; counted whether failed or corrected)
    model_parse_failures: int = 0
    implausible_answers: int = 0
    success: bool = False
    truncated: bool = False
    env_error: bool = False
    step_rewards: list[float] = field(default_factory=list)


@dataclass
class _Tokens:
    """The growing token stream: prompt + response, with the response's mask and logprobs,
    the generation server's extra fields (weights versions, as verl's tool agent keeps them)
    and the experts an MoE policy routed each token to (the last turn's: it covers all before)."""

    ids: list[int]
    mask: list[int] = field(default_factory=list)
    logprobs: Optional[list[float]] = None
    server_fields: dict[str, Any] = field(default_factory=dict)
    routed_experts: Any = None


def _renders_chatml(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template ends a turn with ``<|im_end|>`` and a newline."""
    if "<|im_end|>" not in tokenizer.get_vocab() or not getattr(tokenizer, "chat_template", None):
        return False
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    except Exception:  # a template that cannot render a plain user turn is not ChatML
        return False
    return "<|im_end|>\n" in text


def _end_of_turn(tokenizer: Any, chat_template_kwargs: dict[str, Any]) -> list[int]:
    """The tokens the chat template closes an assistant turn with (``<|im_end|>`` for ChatML),
    without the whitespace after them, which the Continuous Token builder adds before the next
    turn as it does after a turn the policy ended itself; the EOS token where the template
    shows none."""
    marker = "DREAMGYM-END-OF-TURN-PROBE"
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "x"}, {"role": "assistant", "content": marker}], tokenize=False, **chat_template_kwargs
        )
    except Exception:  # no usable template: a turn the policy ends itself ends with EOS
        text = ""
    tail = text.rpartition(marker)[2].rstrip() if marker in text else ""
    if tail:
        return list(tokenizer.encode(tail, add_special_tokens=False))
    return [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []


def _serving_version(kwargs: dict[str, Any]) -> int | None:
    """The weights version the rollout servers hold for this row, which an episode with no
    policy turn reports in place of the server's. verl 0.9's synchronous trainer pushes the
    weights of step k at its end and then counts step k+1, so training rows (``publish``) are
    played by version ``global_steps - 1``; reporting ``global_steps`` logged a staleness of -1.
    Validation rows keep ``global_steps``."""
    steps = kwargs.get("global_steps")
    if steps is None:
        return None
    return max(int(steps) - 1, 0) if bool(kwargs.get("publish", True)) else int(steps)


@register(AGENT_LOOP_NAME)
class DreamGymAgentLoop(AgentLoopBase):
    """Plays one DreamGym episode per verl sample; see the module docstring."""

    def __init__(self, *args: Any, runtime: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not runtime:
            raise DreamGymError(f"verl agent loop {AGENT_LOOP_NAME!r}: its config names no `runtime` (run directory)")
        self.runtime = get_runtime(runtime)
        self.response_length = self.rollout_config.response_length
        if type(self.continuous_token_builder) is ContinuousTokenBuilder and _renders_chatml(self.tokenizer):
            # verl picks Qwen's ChatML boundary handling by model_type only; a ChatML model of
            # another type (SmolLM2 is 'llama') gets the generic builder, which appends the
            # environment's turn right after the generated <|im_end|>, without the newline the
            # chat template (and so the warm start) puts there.
            self.continuous_token_builder = QwenContinuousTokenBuilder(
                self.tokenizer, chat_template_kwargs=self.apply_chat_template_kwargs
            )
        self.end_of_turn = _end_of_turn(self.tokenizer, dict(self.apply_chat_template_kwargs or {}))

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> AgentLoopOutput:
        """One episode of the task in ``kwargs["task"]`` (a JSON-encoded Task); ``publish``
        False (validation rows) keeps it out of the shared buffer and curriculum."""
        task = msgspec.json.decode(kwargs["task"], type=Task)
        phase = str(kwargs.get("phase", "synthetic"))
        publish = bool(kwargs.get("publish", True))  # validation rows say False
        seed = episode_seed(int(kwargs.get("seed", 0)), int(kwargs.get("session_id", 0)), self._group_size(publish))
        rt, stats = self.runtime, EpisodeStats()
        env: Env | None = None
        transitions: list[Transition] = []
        try:
            try:
                env = rt.make_env(phase)
                observation = await self._call(env.reset, task=task, seed=seed)
            except Exception as exc:  # an engine crash fails this episode (reward 0), never the batch
                log.warning("env start failed for task %s: %s", task.id, exc)
                stats.env_error = True
                observation = Observation(text=f"[environment error at reset: {type(exc).__name__}]")
            tokens, messages = await self._start(task, observation)
            prompt_len = len(tokens.ids)
            if not stats.env_error:
                await self._play(task, env, observation, tokens, messages, sampling_params, stats, transitions, phase)
        finally:
            if env is not None:
                try:
                    await self._call(env.close)
                except Exception as exc:  # the episode was played: a failed close must not fail verl's row
                    log.warning("env close failed for task %s: %s", task.id, exc)
        reward = episode_reward(stats.step_rewards, stats.invalid_actions + stats.unparsed_actions, rt.invalid_action_penalty)
        if publish:
            # Blocking Ray calls to the shared actors: off the event loop, like env calls.
            await self._call(self._publish, task=task, transitions=transitions, stats=stats, group=str(kwargs.get("uid") or ""))
        return self._output(tokens, prompt_len, reward, stats, task, sampling_params, _serving_version(kwargs))

    def _group_size(self, publish: bool) -> int:
        """How many sessions verl plays a row in: ``rollout.n`` for training, ``val_kwargs.n`` for validation."""
        rollout = self.rollout_config
        return int(rollout.n if publish else rollout.val_kwargs.n)

    # --- turns ---------------------------------------------------------------------

    async def _start(self, task: Task, observation: Observation) -> tuple[_Tokens, list[dict[str, str]]]:
        prompt = build_agent_prompt(
            task=task, observation=observation, history=[], step=0,
            max_steps=self.runtime.max_steps, history_window=self.runtime.history_window,
        )
        messages = [{"role": "user", "content": prompt}]
        return _Tokens(ids=await self.ct_build_initial_tokens(messages)), messages

    async def _play(
        self,
        task: Task,
        env: Env,
        observation: Observation,
        tokens: _Tokens,
        messages: list[dict[str, str]],
        sampling_params: dict[str, Any],
        stats: EpisodeStats,
        transitions: list[Transition],
        phase: str,
    ) -> None:
        rt, history = self.runtime, []
        request_id = uuid4().hex
        for step in range(rt.max_steps):
            text = await self._policy_turn(tokens, sampling_params, request_id)
            action, parsed = parse_agent_output(text, observation.admissible_actions)
            stats.steps += 1
            if not parsed:
                stats.unparsed_actions += 1
                return
            try:
                result: StepResult = await self._call(env.step, action=action)
            except Exception as exc:  # an engine crash fails this episode only
                log.warning("env step failed for task %s: %s", task.id, exc)
                stats.env_error = True
                return
            transition = step_transition(
                task, request_id, step, observation, action, result,
                source="real" if phase == "real" else "synthetic", model_id=rt.model_id if phase != "real" else "",
            )
            # an experience-model answer that did not parse is the environment's failure, not the policy's
            stats.invalid_actions += int(not result.valid and not transition.model_failed)
            implausible = bool(result.info.get("implausible"))
            stats.implausible_answers += int(implausible)
            stats.model_parse_failures += int(transition.model_failed and not implausible)
            offered = unlisted(action, observation.admissible_actions)
            stats.unlisted_actions += offered
            # an answer ruled out as the model's failure ended the episode: not an acceptance (as rollout.py)
            stats.unlisted_accepted += offered and result.valid and not transition.model_failed
            stats.step_rewards.append(result.reward)
            transitions.append(transition)
            history.append(HistoryStep(state=observation.text, action=action))
            observation = result.observation
            if result.done:
                stats.success = result.success
                stats.truncated = bool(result.info.get("truncated", False))  # the env's own step cap, as rollout.py
                return
            if step + 1 == rt.max_steps or len(tokens.mask) >= self.response_length:
                break
            prompt = build_agent_prompt(
                task=task, observation=observation, history=history, step=step + 1,
                max_steps=rt.max_steps, history_window=rt.history_window,
            )
            messages.append({"role": "assistant", "content": text})
            await self._env_turn(tokens, messages, prompt)
            if len(tokens.mask) >= self.response_length:
                break
        stats.truncated = True

    async def _policy_turn(self, tokens: _Tokens, sampling_params: dict[str, Any], request_id: str) -> str:
        budget = self.response_length - len(tokens.mask)
        params = {**sampling_params, "max_tokens": max(1, min(self.runtime.turn_max_tokens, budget))}
        output = await self.server_manager.generate(request_id=request_id, prompt_ids=tokens.ids, sampling_params=params)
        logprobs = output.log_probs or None
        if logprobs is not None and tokens.logprobs is None:
            tokens.logprobs = [0.0] * len(tokens.mask)
        merge, tokens.mask, tokens.logprobs = await self.ct_merge_assistant_token(
            tokens.ids, output.token_ids, tokens.mask, tokens.logprobs, assistant_logprobs=logprobs
        )
        tokens.ids = merge.token_ids
        self._keep_server_fields(tokens, dict(output.extra_fields or {}))
        if output.routed_experts is not None:
            # The server routes the whole request (every earlier turn) plus this turn's tokens,
            # so the last turn's rows are the episode's: router replay trains on them.
            tokens.routed_experts = output.routed_experts
        return self.tokenizer.decode(output.token_ids, skip_special_tokens=True)

    @staticmethod
    def _keep_server_fields(tokens: _Tokens, fields: dict[str, Any]) -> None:
        """The first turn's server fields; later turns raise max_global_steps and add
        speculative-decoding counts (as verl's ToolAgentLoop does). verl's V1 trainer tags each
        output with min/max_global_steps and reads them as ints."""
        if not tokens.server_fields:
            tokens.server_fields.update(fields)
            return
        if fields.get("max_global_steps") is not None:
            tokens.server_fields["max_global_steps"] = fields["max_global_steps"]
        for key in SPEC_DECODE_EXTRA_KEYS:
            if key in fields and key in tokens.server_fields:
                tokens.server_fields[key] = int(tokens.server_fields[key]) + int(fields[key])

    async def _env_turn(self, tokens: _Tokens, messages: list[dict[str, str]], prompt: str) -> None:
        self._close_cut_turn(tokens)
        updated = messages + [{"role": "user", "content": prompt}]
        merge, tokens.mask, tokens.logprobs = await self.ct_merge_context_msg(
            messages, updated, tokens.ids, tokens.mask, tokens.logprobs
        )
        tokens.ids = merge.token_ids
        messages.append(updated[-1])

    def _close_cut_turn(self, tokens: _Tokens) -> None:
        """A policy turn cut by ``turn_max_tokens`` (its action parsed, so the episode goes on)
        has no end-of-turn token: close it as the chat template and the warm start do, so the
        next turns are played and trained on the context a turn the policy ended itself gives.
        The policy did not generate these tokens: mask 0 and logprob 0, as the environment's."""
        eot, eos = self.end_of_turn, self.tokenizer.eos_token_id
        if not eot or tokens.ids[-len(eot):] == eot or (eos is not None and tokens.ids[-1] == eos):
            return
        tokens.ids = tokens.ids + eot
        tokens.mask = tokens.mask + [0] * len(eot)
        if tokens.logprobs is not None:
            tokens.logprobs = tokens.logprobs + [0.0] * len(eot)

    # --- results -------------------------------------------------------------------

    def _publish(self, task: Task, transitions: list[Transition], stats: EpisodeStats, group: str = "") -> None:
        """Send the episode to the shared buffer and the shared curriculum (if any). The
        curriculum gets the outcome reward, the environment's rewards summed
        (``Trajectory.outcome_reward``, what the local loop observes), not the penalised
        ``reward_score`` verl trains on: reward-entropy's task value is its variance.
        ``group`` is verl's uid of the row: its sessions are one GRPO group."""
        if self.runtime.store is not None and transitions:
            self.runtime.store(transitions)
        if self.runtime.report is not None:
            self.runtime.report(TaskOutcome(task=task, rewards=[float(sum(stats.step_rewards))]), group=group)

    def _output(
        self, tokens: _Tokens, prompt_len: int, reward: float, stats: EpisodeStats, task: Task,
        sampling_params: dict[str, Any], weights_version: int | None,
    ) -> AgentLoopOutput:
        n = self.response_length
        response = tokens.ids[prompt_len:]
        mask = tokens.mask
        # The response ends with the last policy token: trim anything after it.
        while mask and mask[-1] == 0:
            mask = mask[:-1]
        response = response[: len(mask)]
        logprobs = tokens.logprobs[: len(mask)] if tokens.logprobs else None
        routed = tokens.routed_experts
        if routed is not None:  # verl aligns these rows to prompt + response by position
            routed = routed[: prompt_len + min(len(response), n)]
        server_fields = dict(tokens.server_fields)
        if not mask:
            # No policy turn (the environment failed at reset). verl puts the reward on the last
            # response token (AgentLoopOutput.as_dict, which the V1 worker calls): give it one
            # end-of-sequence token that carries no loss, and the prompt's weights version.
            eos = self.tokenizer.eos_token_id
            response, mask = [eos if eos is not None else (self.tokenizer.pad_token_id or 0)], [0]
            logprobs = [0.0] if sampling_params.get("logprobs") else None
            if weights_version is not None:
                server_fields |= {"min_global_steps": weights_version, "max_global_steps": weights_version}
        return AgentLoopOutput(
            prompt_ids=tokens.ids[:prompt_len],
            response_ids=response[:n],
            response_mask=mask[:n],
            response_logprobs=logprobs[:n] if logprobs else None,
            routed_experts=routed,
            reward_score=reward,
            # first prompt + one policy turn per step + the environment turns between them
            num_turns=2 * stats.steps if stats.steps else 1,
            metrics={},
            extra_fields={
                **server_fields,
                "turn_scores": list(stats.step_rewards),
                "tool_rewards": [],
                "reward_extra_info": {
                    "success": float(stats.success),
                    "episode_steps": float(stats.steps),
                    "invalid_actions": float(stats.invalid_actions),
                    "unparsed_actions": float(stats.unparsed_actions),
                    "unlisted_actions": float(stats.unlisted_actions),
                    "unlisted_accepted": float(stats.unlisted_accepted),
                    "model_parse_failures": float(stats.model_parse_failures),
                    "implausible_answers": float(stats.implausible_answers),
                    "truncated": float(stats.truncated),
                    "env_errors": float(stats.env_error),
                },
                "task_id": task.id,
            },
        )

    async def _call(self, fn: Callable[..., Any], **kwargs: Any) -> Any:
        """Run a blocking call (environment, shared actors) off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(None, lambda: fn(**kwargs))
