"""Multi-turn GRPO: one group-normalised outcome advantage per trajectory, broadcast
to every response token of every step of that trajectory; no critic."""

from __future__ import annotations

import logging
from typing import Callable, Sequence

import torch

from dreamgym_core.progress import OnBatch
from dreamgym_core.records import Trajectory

from . import maths
from .batch import Step, choice_logprobs, choice_rows, invalid_steps, response_logprobs, retokenized_rows, trajectory_steps
from .config import GRPOConfig
from .trainer import LocalTrainer

__all__ = ["GRPO"]

log = logging.getLogger(__name__)

# score(model, row index) -> the rows' log-probs, one column per unit the loss weighs
Scorer = Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]


class GRPO(LocalTrainer):
    """GRPO with PPO-clip, KL to the reference (the policy at its first update) and the invalid-action penalty."""

    name = "grpo"
    on_policy = True

    def __init__(self, config: GRPOConfig, *, policy, seed: int = 0) -> None:
        self.uses_reference = config.kl_coef > 0
        self._told_groups_of_one = False
        super().__init__(config, policy=policy, seed=seed)

    def update(self, *, groups: Sequence[Sequence[Trajectory]], on_batch: OnBatch | None = None) -> dict[str, float]:
        cfg = self.config
        self._bind()
        # rollout data: flatten the groups; each step is one (prompt, response) row
        trajectories = [traj for group in groups for traj in group]
        group_ids = [g for g, group in enumerate(groups) for _ in group]
        steps, skipped = trajectory_steps(trajectories, keep_empty=True)
        if not steps:
            return {"data/trainable_steps": 0.0, "data/skipped_trajectories": float(skipped)}

        # advantages: trajectory outcome minus penalties (every invalid transition, whether or
        # not its response has tokens), normalised within each group
        self._warn_on_groups_of_one(groups)
        invalid = [invalid_steps(t) for t in trajectories]
        scores = maths.trajectory_scores([t.outcome_reward for t in trajectories], invalid, cfg.invalid_action_penalty)
        traj_adv = maths.grpo_advantages(scores, group_ids, norm_by_std=cfg.norm_adv_by_std, epsilon=cfg.epsilon)
        row_adv = traj_adv[[s.trajectory for s in steps]].to(self.device)
        # What one row's log-prob is: its answer's, token by token, or (listed_update: choice) that
        # of picking its answer among the listed ones, one unit per row. Every log-prob below is at
        # the temperature the responses were sampled at.
        temperature = self.sampling_temperature
        sampled = self._take_sampled([s.prompt for s in steps], [s.response for s in steps])
        logprobs, mask, response_tokens = self._scorer(steps, sampled, temperature)
        advantages = row_adv.unsqueeze(1) * mask

        # old and reference log-probs, recomputed before the update (on-policy)
        old_logp = self._scored_no_grad(logprobs, self.model, len(steps))
        ref_logp = self._scored_no_grad(logprobs, self.ref, len(steps)) if self.ref is not None else None
        actor = maths.actor_config(cfg.clip_ratio_low, cfg.clip_ratio_high, cfg.clip_ratio_c, cfg.loss_agg_mode)

        # policy loss + KL, optimised over ppo_epochs x minibatches
        def loss_fn(index: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
            logp = logprobs(self.model, index)
            pg, pg_metrics = maths.policy_loss(old_logp[index], logp, advantages[index], mask[index], config=actor)
            metrics = {"losses/policy_loss": pg.item(), "losses/approx_kl": pg_metrics["actor/ppo_kl"],
                       "losses/clipfrac": pg_metrics["actor/pg_clipfrac"]}
            loss = pg
            if ref_logp is not None:
                kl = maths.kl_loss(logp, ref_logp[index], mask[index], kl_type=cfg.kl_type, agg_mode=cfg.loss_agg_mode)
                loss = loss + cfg.kl_coef * kl
                metrics["losses/kl_loss"] = kl.item()
            metrics["losses/total_loss"] = loss.item()
            return loss, metrics

        weights = maths.row_weights(mask, cfg.loss_agg_mode)
        metrics = self._train(len(steps), cfg.ppo_epochs, loss_fn, on_batch, weights, live=mask.sum(-1).cpu() > 0)
        metrics.update({
            "charts/mean_reward": float(sum(t.outcome_reward for t in trajectories) / len(trajectories)),
            "charts/success_rate": float(sum(t.success for t in trajectories) / len(trajectories)),
            "charts/mean_advantage": float(traj_adv.mean()),
            "charts/zero_signal_groups": maths.zero_signal_group_share(traj_adv, group_ids),
            "charts/invalid_steps": float(sum(invalid)),
            "data/trainable_steps": float(len(steps)),
            "data/empty_responses": float(sum(not s.response for s in steps)),
            "data/response_tokens": response_tokens,
            "data/retokenized_rows": float(retokenized_rows(steps, sampled)),
            "data/skipped_trajectories": float(skipped),
        })
        return self._finite(metrics)

    def _warn_on_groups_of_one(self, groups: Sequence[Sequence[Trajectory]]) -> None:
        """Say once that a group of one has no baseline: verl's estimator gives its trajectory its
        raw score as advantage (a REINFORCE step), which ``loop.group_size: 1`` did silently."""
        alone = sum(len(group) == 1 for group in groups)
        if alone and not self._told_groups_of_one:
            self._told_groups_of_one = True
            log.warning(
                "%s: %d of %d groups hold one trajectory, whose advantage is then its raw score (no group "
                "baseline, a REINFORCE step); GRPO needs loop.group_size >= 2", self.name, alone, len(groups),
            )

    def _scorer(
        self, steps: Sequence[Step], sampled: Sequence[list[int] | None], temperature: float,
    ) -> tuple[Scorer, torch.Tensor, float]:
        """How the update scores rows of ``steps`` (``score(model, index)``, with grad), the mask of
        its units (a response's tokens, or one unit per step with listed_update: choice), and how
        many response tokens the steps' own answers have. ``sampled``: per step, the ids its
        response was sampled as (None: its text is tokenised)."""
        if self.config.listed_update == "choice":
            rows = choice_rows(steps)
            owners = [int(o) for o in rows.owner]
            # a generated answer (no listed ones) is its step's only row: its sampled ids score it
            row_ids = [None if steps[o].candidates else sampled[o] for o in owners]
            rows.tokens = self._tokenize([steps[o].prompt for o in owners], rows.texts, row_ids)
            ones = torch.ones(len(steps), 1, device=self.device)
            response_tokens = float(rows.tokens.response_mask[rows.chosen.to(self.device)].sum())  # each step's own answer
            return (lambda model, index: choice_logprobs(model, rows, index, temperature=temperature)), ones, response_tokens
        batch = self._tokenize([s.prompt for s in steps], [s.response for s in steps], sampled)
        return (lambda model, index: response_logprobs(model, batch.rows(index), temperature=temperature)[0]), batch.response_mask, float(batch.response_mask.sum())

    def _scored_no_grad(self, score: Scorer, model: torch.nn.Module, n_rows: int) -> torch.Tensor:
        """``score`` of every row, minibatch by minibatch, without gradients."""
        with torch.no_grad():
            return torch.cat([score(model, index.to(self.device)) for index in torch.arange(n_rows).split(self.config.minibatch_size)])
