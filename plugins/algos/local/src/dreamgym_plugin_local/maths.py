"""The trainers' maths as small pure functions.

Advantages, the PPO-clip policy loss, the value loss, KL penalties and loss
aggregation are verl's (``verl.trainer.ppo.core_algos``): these are thin wrappers
that adapt DreamGym's multi-turn layout to verl's (batch, response_length) tensors.
Only the DPO loss is ours (verl has none); it follows TRL's sigmoid formula.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from dreamgym_core.imports import root_logging_kept

with root_logging_kept():  # importing verl runs logging.basicConfig on the program's root logger
    from verl.trainer.ppo import core_algos

__all__ = [
    "choice_logprob",
    "trajectory_scores",
    "zero_signal_group_share",
    "grpo_advantages",
    "place_step_rewards",
    "pack_episodes",
    "unpack_episodes",
    "gae_advantages",
    "actor_config",
    "policy_loss",
    "kl_loss",
    "value_loss",
    "nll_loss",
    "dpo_loss",
    "row_weights",
    "micro_shares",
    "pick_candidate",
]


# Scores closer than this (relative to the larger magnitude, at least 1) are one score.
SAME_SCORE_TOLERANCE = 1e-9


def trajectory_scores(outcomes: Sequence[float], invalid_steps: Sequence[int], penalty: float) -> torch.Tensor:
    """Outcome reward of each trajectory minus ``penalty`` per invalid or unparsed step (float64)."""
    return torch.tensor([o - penalty * n for o, n in zip(outcomes, invalid_steps)], dtype=torch.float64)


def grpo_advantages(
    scores: torch.Tensor, group_ids: Sequence[int], *, norm_by_std: bool = True, epsilon: float = 1e-6
) -> torch.Tensor:
    """Group-normalised outcome advantage of each trajectory (verl's GRPO estimator).

    Args:
        scores: (n,) trajectory outcome scores.
        group_ids: the group (task) of each trajectory.

    Returns:
        (n,) float32 advantages; the trainer broadcasts each to all response tokens of its
        trajectory. A group of two or more whose scores are all equal gets exactly 0: in
        float32 the group mean of, say, eight scores of 0.9 misses 0.9 by an ulp, and
        dividing that by (std + epsilon) with std ~1e-8 gave every member the same
        non-zero advantage (-0.056). verl's estimator therefore runs in float64, and such
        groups are zeroed explicitly; scores within :data:`SAME_SCORE_TOLERANCE` (relative)
        count as equal, since an outcome minus penalties can land an ulp from another outcome.
    """
    rewards = scores.reshape(-1, 1).double().clone()
    index = np.asarray(list(group_ids))
    adv, _ = core_algos.compute_grpo_outcome_advantage(
        token_level_rewards=rewards,
        response_mask=torch.ones_like(rewards),
        index=index,
        epsilon=epsilon,
        norm_adv_by_std_in_grpo=norm_by_std,
    )
    adv = adv[:, 0]
    for group in np.unique(index):
        members = torch.from_numpy(np.flatnonzero(index == group))
        values = rewards[members, 0]
        # alike up to rounding: 0.3 - 0.1 * 1 and 0.2 are one score (an ulp apart), not a signal
        if len(members) > 1 and values.max() - values.min() <= SAME_SCORE_TOLERANCE * max(1.0, values.abs().max().item()):
            adv[members] = 0.0
    return adv.float()


def zero_signal_group_share(advantages: torch.Tensor, group_ids: Sequence[int]) -> float:
    """Share of groups whose advantages are all zero, so they teach the policy nothing: in
    GRPO, a group of two or more whose trajectories all scored alike (every sample
    succeeded, or every one failed the same way)."""
    silent: dict[int, bool] = {}
    for adv, group in zip(advantages.tolist(), group_ids):
        silent[group] = silent.get(group, True) and adv == 0.0
    return sum(silent.values()) / max(len(silent), 1)


def place_step_rewards(step_rewards: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """(B, R) token rewards: each step's reward on the last token of its response."""
    out = torch.zeros_like(response_mask, dtype=torch.float32)
    lengths = response_mask.sum(dim=1).long()
    rows = torch.nonzero(lengths > 0).flatten()
    out[rows, lengths[rows] - 1] = step_rewards[rows].float()
    return out


def pack_episodes(rows: torch.Tensor, mask: torch.Tensor, episode_of_row: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate the response tokens of each episode's steps (rows in step order).

    Args:
        rows: (B, R) per-step token values; mask: (B, R) response mask.
        episode_of_row: the episode index of each row; rows of one episode are in step order.

    Returns:
        (E, T) packed values and their (E, T) mask, T = longest episode in tokens.
    """
    episodes = sorted(set(episode_of_row))
    pieces = [
        torch.cat([rows[i][mask[i].bool()] for i, e in enumerate(episode_of_row) if e == ep]) for ep in episodes
    ]
    width = max((len(p) for p in pieces), default=0)
    packed = torch.zeros(len(pieces), width, dtype=rows.dtype)
    packed_mask = torch.zeros(len(pieces), width, dtype=mask.dtype)
    for j, piece in enumerate(pieces):
        packed[j, : len(piece)] = piece
        packed_mask[j, : len(piece)] = 1
    return packed, packed_mask


def unpack_episodes(packed: torch.Tensor, mask: torch.Tensor, episode_of_row: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`pack_episodes`: scatter packed values back to (B, R) rows."""
    episodes = sorted(set(episode_of_row))
    out = torch.zeros(mask.shape, dtype=packed.dtype)
    cursor = {ep: 0 for ep in episodes}
    for i, ep in enumerate(episode_of_row):
        j, n = episodes.index(ep), int(mask[i].sum())
        out[i][mask[i].bool()] = packed[j, cursor[ep] : cursor[ep] + n]
        cursor[ep] += n
    return out


def gae_advantages(
    token_rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, *, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """verl's GAE over (E, T) episode token rows: (whitened advantages, returns).

    verl's whitening needs two or more response tokens in the batch (it raises on fewer:
    Bessel's n - 1 is 0). On one token, whitening centres the lone advantage to 0, and the
    token ends its episode (next value 0), so its return is its reward; on none there is
    nothing to compute.
    """
    if mask.sum() < 2:
        returns = token_rewards.float() * mask.float()
        return torch.zeros_like(returns), returns
    return core_algos.compute_gae_advantage_return(
        token_level_rewards=token_rewards.float(), values=values.float(), response_mask=mask.float(), gamma=gamma, lam=lam
    )


@lru_cache(maxsize=32)
def actor_config(clip_ratio_low: float, clip_ratio_high: float, clip_ratio_c: float, loss_agg_mode: str):
    """The verl ``ActorConfig`` its vanilla policy loss reads (clip ratios, agg mode)."""
    from verl.workers.config import ActorConfig

    return ActorConfig(
        strategy="fsdp",
        rollout_n=1,
        ppo_micro_batch_size_per_gpu=1,
        clip_ratio=clip_ratio_low,
        clip_ratio_low=clip_ratio_low,
        clip_ratio_high=clip_ratio_high,
        clip_ratio_c=clip_ratio_c,
        loss_agg_mode=loss_agg_mode,
    )


def policy_loss(
    old_logp: torch.Tensor, logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *, config
) -> tuple[torch.Tensor, dict[str, float]]:
    """verl's vanilla PPO-clip policy loss; ``config`` comes from :func:`actor_config`."""
    fn = core_algos.get_policy_loss_fn("vanilla")
    return fn(
        old_log_prob=old_logp, log_prob=logp, advantages=advantages, response_mask=mask,
        loss_agg_mode=config.loss_agg_mode, config=config,
    )


def kl_loss(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor, *, kl_type: str, agg_mode: str) -> torch.Tensor:
    """Aggregated KL estimate to the reference policy (verl kl_penalty + agg_loss)."""
    kl = core_algos.kl_penalty(logprob=logp, ref_logprob=ref_logp, kl_penalty=kl_type)
    return core_algos.agg_loss(loss_mat=kl, loss_mask=mask, loss_agg_mode=agg_mode)


def value_loss(
    vpreds: torch.Tensor, returns: torch.Tensor, old_values: torch.Tensor, mask: torch.Tensor, *, cliprange: float, agg_mode: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """verl's clipped value loss: (loss, clip fraction)."""
    return core_algos.compute_value_loss(
        vpreds=vpreds, returns=returns, values=old_values, response_mask=mask, cliprange_value=cliprange, loss_agg_mode=agg_mode
    )


def nll_loss(logp: torch.Tensor, mask: torch.Tensor, *, agg_mode: str) -> torch.Tensor:
    """Aggregated negative log-likelihood of the response tokens (SFT)."""
    return core_algos.agg_loss(loss_mat=-logp, loss_mask=mask, loss_agg_mode=agg_mode)


def dpo_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, *, beta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPO sigmoid loss per pair (TRL's formula) from sequence log-probabilities.

    ``loss = -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))``.

    Returns:
        (per-pair losses, implicit chosen rewards, implicit rejected rewards).
    """
    chosen_reward = beta * (chosen - ref_chosen)
    rejected_reward = beta * (rejected - ref_rejected)
    losses = -F.logsigmoid(chosen_reward - rejected_reward)
    return losses, chosen_reward.detach(), rejected_reward.detach()


def row_weights(mask: torch.Tensor, agg_mode: str) -> torch.Tensor | None:
    """What each row adds to the normaliser of verl's ``agg_loss`` in ``agg_mode``: its response
    tokens (token-mean), 1 if it has any (seq-mean-*), or None (token-sum: nothing divides)."""
    if agg_mode == "token-sum":
        return None
    tokens = mask.sum(-1).float()
    return tokens if agg_mode == "token-mean" else (tokens > 0).float()


def micro_shares(weights: torch.Tensor | None, chunks: Sequence[torch.Tensor]) -> list[float] | None:
    """Each micro-batch's share of its minibatch's loss normaliser: the sum over micro-batches of
    share x (micro-batch loss) is the minibatch loss, and so are its gradients. ``weights``: per
    row of the batch (:func:`row_weights`; None: the loss is a sum, each share 1). None when the
    minibatch has nothing to normalise by (its loss is not finite and its step is skipped whole)."""
    if weights is None:
        return [1.0] * len(chunks)
    parts = [float(weights[chunk.cpu()].sum()) for chunk in chunks]
    total = sum(parts)
    return [part / total for part in parts] if total > 0 else None


def pick_candidate(scores: torch.Tensor, *, greedy: bool, generator: torch.Generator | None = None) -> int:
    """The index of one candidate answer from their summed response log-probs ``scores`` (1-D):
    the likeliest when ``greedy`` (the first of ties), else a draw from their softmax, i.e. the
    policy's distribution renormalised over the candidates (the scores already carry the
    sampling temperature, applied per token as the trainers score a response)."""
    if scores.ndim != 1 or scores.numel() == 0:
        raise ValueError(f"pick_candidate: needs a non-empty 1-D tensor of scores, got shape {tuple(scores.shape)}")
    if greedy:
        return int(torch.argmax(scores))
    return int(torch.multinomial(torch.softmax(scores.double(), dim=0), 1, generator=generator))


def choice_logprob(scores: torch.Tensor, segment: torch.Tensor, chosen: torch.Tensor, listed: torch.Tensor) -> torch.Tensor:
    """Per step, the log-prob of the policy's pick among listed answers: the log-softmax, within
    the step's answers, of their summed response log-probs. That is the distribution the listed
    choice samples from (:func:`pick_candidate`), so its gradient moves probability between the
    listed answers only, and tokens every answer shares carry none.

    ``scores`` (C,): one per answer row; ``segment`` (C,): the step (0..S-1) each row belongs to;
    ``chosen`` (S,): the row of each step's own answer; ``listed`` (S,) bool: False for a step
    whose answer was generated (its only row), which keeps its answer's whole log-prob.
    """
    steps = len(chosen)
    top = torch.full((steps,), -math.inf, dtype=scores.dtype, device=scores.device)
    top = top.scatter_reduce(0, segment, scores.detach(), reduce="amax")  # for a stable log-sum-exp
    total = torch.zeros(steps, dtype=scores.dtype, device=scores.device).scatter_add(0, segment, (scores - top[segment]).exp())
    normaliser = total.log() + top
    return scores[chosen] - torch.where(listed, normaliser, torch.zeros_like(normaliser))
