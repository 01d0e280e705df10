"""From trajectories to token tensors, and response log-probabilities of a causal LM.

Every policy step is one row: the agent ``prompt`` followed by the policy's response
``text`` (``Trajectory.decisions[i]``, aligned with ``Trajectory.transitions[i]``).
Only response tokens are trained: ``response_mask`` marks them, in verl's
(batch, response_length) layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from dreamgym_core.errors import DataError
from dreamgym_core.records import Trajectory, Transition
from dreamgym_core.rollout import unanswered_step

from . import maths

__all__ = [
    "Step", "invalid_steps", "trajectory_steps", "retokenized_rows", "TokenBatch", "tokenize_steps", "fit_row", "response_logprobs", "ChoiceRows",
    "choice_rows", "choice_logprobs",
]


@dataclass(frozen=True)
class Step:
    """One policy step of a trajectory."""

    prompt: str
    response: str
    trajectory: int  # index of the trajectory in the flattened batch
    reward: float
    valid: bool  # the environment accepted the action and the output parsed
    candidates: tuple[str, ...] = ()  # the listed answers ``response`` was picked from (none: generated)
    task_id: str = ""  # the trajectory's task, for messages
    step: int = 0  # its index in its trajectory (decisions[step]), for messages


def _check_aligned(traj: Trajectory) -> None:
    if traj.decisions and len(traj.decisions) != len(traj.transitions):
        raise DataError(
            f"trajectory of task {traj.task.id!r}: {len(traj.decisions)} decisions for "
            f"{len(traj.transitions)} transitions (they must align one to one)"
        )


def invalid_steps(traj: Trajectory) -> int:
    """How many steps of ``traj`` are invalid: the transition is not ``valid`` or, where the
    trajectory has decisions, the aligned decision did not parse. Every transition counts,
    whatever its response (an empty one included), so producing nothing is penalised
    like any other invalid output.

    Raises:
        DataError: the trajectory's decisions do not align with its transitions.
    """
    _check_aligned(traj)
    parsed = [d.parsed for d in traj.decisions] if traj.decisions else [True] * len(traj.transitions)
    return sum(not _policy_valid(t, p) for t, p in zip(traj.transitions, parsed))


def _policy_valid(transition: Transition, parsed: bool) -> bool:
    """Whether the policy's step was valid: its output parsed, and the environment accepted the
    action. A step the environment could not answer (:func:`unanswered_step`) is not the
    policy's fault, so it is not penalised; it still ends the episode with reward 0."""
    return (parsed and transition.valid) or unanswered_step(transition, parsed)


def trajectory_steps(trajectories: Sequence[Trajectory], *, keep_empty: bool = False) -> tuple[list[Step], int]:
    """The trainable steps of ``trajectories`` and how many trajectories had no decisions.

    Args:
        keep_empty: keep steps whose response is empty (the RL trainers train them as the
            tokenizer's EOS token, see :func:`tokenize_steps`); otherwise they are dropped.

    Raises:
        DataError: a trajectory has decisions that do not align with its transitions.
    """
    steps: list[Step] = []
    skipped = 0
    for index, traj in enumerate(trajectories):
        if not traj.decisions:
            skipped += 1
            continue
        _check_aligned(traj)
        for i, (decision, transition) in enumerate(zip(traj.decisions, traj.transitions)):
            if decision.text or keep_empty:
                valid = _policy_valid(transition, decision.parsed)
                steps.append(Step(
                    decision.prompt, decision.text, index, transition.reward, valid, tuple(decision.candidates),
                    task_id=traj.task.id, step=i,
                ))
    return steps, skipped


def retokenized_rows(steps: Sequence[Step], sampled: Sequence[Sequence[int] | None]) -> int:
    """How many generated responses (no listed answers) an update scores from their text
    re-tokenised, not from the ids they were sampled as: all of them with a backend that does
    not give its ids, and those a resumed run sampled before it stopped."""
    return sum(ids is None and not step.candidates for step, ids in zip(steps, sampled, strict=True))


@dataclass
class TokenBatch:
    """Right-padded prompt+response rows and where their response tokens sit."""

    input_ids: torch.Tensor  # (B, L)
    attention_mask: torch.Tensor  # (B, L)
    positions: torch.Tensor  # (B, R) index in the row of each response token (0 where masked)
    response_mask: torch.Tensor  # (B, R) float

    def rows(self, index: torch.Tensor) -> TokenBatch:
        """The sub-batch of the given rows."""
        return TokenBatch(self.input_ids[index], self.attention_mask[index], self.positions[index], self.response_mask[index])

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def tokenize_steps(
    tokenizer, encode_prompt: Callable[[str], list[int]], prompts: Sequence[str], responses: Sequence[str], *,
    max_prompt_tokens: int, max_response_tokens: int, empty_response_ids: Sequence[int] = (), max_row_tokens: int | None = None,
    response_ids: Sequence[Sequence[int] | None] | None = None,
) -> TokenBatch:
    """Tokenise prompt and response separately (so the boundary is exact) and pad right.

    ``encode_prompt`` gives the prompt's ids as generation saw them (the backend's own
    encoding: chat template, BOS); the response is tokenised without special tokens.
    Long prompts keep their last ``max_prompt_tokens`` tokens, long responses their
    first ``max_response_tokens``. A response with no tokens (the policy produced
    nothing) becomes ``empty_response_ids`` (the RL trainers pass the EOS token), so
    that its advantage has a token to land on; with none given it has no tokens.
    ``max_row_tokens`` (at least 2) caps a row's prompt + response (see :func:`fit_row`).
    ``response_ids``: per row, the ids generation sampled for its response (token in, token
    out), used instead of tokenising the text; None for a row (or for all) tokenises its text.
    """
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    sampled = response_ids if response_ids is not None else [None] * len(prompts)
    if len(sampled) != len(prompts):
        raise ValueError(f"tokenize_steps: {len(sampled)} response id lists for {len(prompts)} prompts")
    rows, starts, lengths = [], [], []
    for prompt, response, ids in zip(prompts, responses, sampled):
        p = list(encode_prompt(prompt))[-max_prompt_tokens:]
        r = list(tokenizer(response, add_special_tokens=False)["input_ids"]) if ids is None else list(ids)
        r = r[:max_response_tokens] or list(empty_response_ids)
        if not p:  # a response needs a context token to be scored
            p = [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else pad]
        p, r = fit_row(p, r, max_row_tokens)
        rows.append(p + r)
        starts.append(len(p))
        lengths.append(len(r))
    width, resp_width = max(len(r) for r in rows), max(max(lengths), 1)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    positions = torch.zeros((len(rows), resp_width), dtype=torch.long)
    mask = torch.zeros((len(rows), resp_width), dtype=torch.float32)
    for i, (row, start, n) in enumerate(zip(rows, starts, lengths)):
        input_ids[i, : len(row)] = torch.tensor(row)
        attention[i, : len(row)] = 1
        positions[i, :n] = torch.arange(start, start + n)
        mask[i, :n] = 1.0
    return TokenBatch(input_ids, attention, positions, mask)


def fit_row(prompt: list[int], response: list[int], limit: int | None) -> tuple[list[int], list[int]]:
    """``prompt`` and ``response`` cut to hold at most ``limit`` (>= 2) tokens together. The
    response keeps what fits after the prompt, as generation stops at max_length (a prompt
    within the generation window leaves it max_new_tokens); a prompt too long for any then
    keeps its end, with one response token to score."""
    if limit is None or len(prompt) + len(response) <= limit:
        return prompt, response
    response = response[: max(limit - len(prompt), 1)]
    return prompt[len(prompt) - (limit - len(response)):], response


def response_logprobs(
    model, batch: TokenBatch, *, hidden: bool = False, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probabilities (B, R) of the response tokens, and optionally the last hidden
    state (B, R, H) at the position that predicts each of them (where a value head reads).

    ``temperature``: the logits are divided by it first, so the log-probs are those of the
    distribution a sampler at that temperature drew from (at 1.0 nothing is divided).
    """
    device = next(model.parameters()).device
    before = (batch.positions - 1).clamp(min=0)
    # Logits only at the positions that predict a response token (logits_to_keep with explicit
    # indices): the full (batch, length, vocab) tensor is most of the memory for a large
    # vocabulary and a long prompt, while responses are a few tokens. With no response token:
    # one column (all masked below), on the device of ``before``, which searchsorted reads with it.
    keep = (
        torch.unique(before[batch.response_mask > 0]) if batch.response_mask.any()
        else torch.zeros(1, dtype=torch.long, device=before.device)
    )
    out = model(
        input_ids=batch.input_ids.to(device),
        attention_mask=batch.attention_mask.to(device),
        output_hidden_states=hidden,
        logits_to_keep=keep.to(device),
    )
    column = torch.searchsorted(keep, before).clamp(max=len(keep) - 1).to(device)  # padding columns: masked below
    logits = out.logits.gather(1, column.unsqueeze(-1).expand(-1, -1, out.logits.shape[-1])).float()
    if temperature != 1.0:
        logits = logits / temperature
    before = before.to(device)
    targets = batch.input_ids.to(device).gather(1, batch.positions.to(device))
    logp = F.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    logp = logp * batch.response_mask.to(device)
    states = None
    if hidden:
        last = out.hidden_states[-1]
        states = last.gather(1, before.unsqueeze(-1).expand(-1, -1, last.shape[-1]))
    return logp, states


@dataclass
class ChoiceRows:
    """Each step's answers to choose among, one row each (``loop.action_choice=listed``): a step's
    listed answers, or its own answer alone where it listed none. ``tokens`` holds them tokenised."""

    texts: list[str]
    owner: torch.Tensor  # (C,) the step each row belongs to
    chosen: torch.Tensor  # (S,) the row of each step's own answer
    listed: torch.Tensor  # (S,) bool: the step picked among listed answers
    tokens: TokenBatch | None = None


def choice_rows(steps: Sequence[Step]) -> ChoiceRows:
    """The rows :func:`choice_logprobs` scores, from steps in order.

    Raises:
        DataError: a step lists answers but its own is not among them (its policy did not pick it
            from that list, so the choice among them says nothing of it).
    """
    texts: list[str] = []
    owner: list[int] = []
    chosen: list[int] = []
    for index, step in enumerate(steps):
        options = step.candidates or (step.response,)
        if step.response not in options:
            raise DataError(
                f"task {step.task_id!r}, step {step.step} of its trajectory (trajectory {step.trajectory} of the update): "
                f"its answer {step.response!r} is not among the {len(options)} listed answers it was picked from"
            )
        chosen.append(len(texts) + options.index(step.response))
        texts.extend(options)
        owner.extend([index] * len(options))
    return ChoiceRows(
        texts, torch.tensor(owner, dtype=torch.long), torch.tensor(chosen, dtype=torch.long),
        torch.tensor([bool(step.candidates) for step in steps]),
    )


def choice_logprobs(model, rows: ChoiceRows, index: torch.Tensor, *, temperature: float = 1.0) -> torch.Tensor:
    """(len(index), 1): for each step ``index`` names, the log-prob of picking its answer among
    its listed ones (:func:`maths.choice_logprob`), every answer scored by its summed response
    log-probs at ``temperature``, as the listed choice scored them when it picked."""
    if rows.tokens is None:
        raise ValueError("choice_logprobs: tokenise the rows first (ChoiceRows.tokens)")
    index = index.cpu()
    slot = torch.full((len(rows.chosen),), -1, dtype=torch.long)
    slot[index] = torch.arange(len(index))
    mine = torch.nonzero(slot[rows.owner] >= 0).squeeze(1)  # the rows of these steps, ascending
    device = rows.tokens.input_ids.device
    logp, _ = response_logprobs(model, rows.tokens.rows(mine.to(device)), temperature=temperature)
    segment = slot[rows.owner[mine]].to(logp.device)
    chosen = torch.searchsorted(mine, rows.chosen[index]).to(logp.device)
    return maths.choice_logprob(logp.sum(dim=-1), segment, chosen, rows.listed[index].to(logp.device)).unsqueeze(1)
