"""Multi-turn GRPO: one group-normalised outcome advantage per trajectory, broadcast
to every response token of every step of that trajectory; no critic."""

from __future__ import annotations

from typing import Sequence

import torch

from dreamgym_core.progress import OnBatch
from dreamgym_core.records import Trajectory

from . import maths
from .batch import invalid_steps, response_logprobs, trajectory_steps
from .config import GRPOConfig
from .trainer import LocalTrainer

__all__ = ["GRPO"]


class GRPO(LocalTrainer):
    """GRPO with PPO-clip, KL to the reference (the policy at its first update) and the invalid-action penalty."""

    name = "grpo"
    on_policy = True

    def __init__(self, config: GRPOConfig, *, policy, seed: int = 0) -> None:
        self.uses_reference = config.kl_coef > 0
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
        invalid = [invalid_steps(t) for t in trajectories]
        scores = maths.trajectory_scores([t.outcome_reward for t in trajectories], invalid, cfg.invalid_action_penalty)
        traj_adv = maths.grpo_advantages(scores, group_ids, norm_by_std=cfg.norm_adv_by_std, epsilon=cfg.epsilon)
        batch = self._tokenize([s.prompt for s in steps], [s.response for s in steps])
        row_adv = traj_adv[[s.trajectory for s in steps]].to(self.device)
        advantages = row_adv.unsqueeze(1) * batch.response_mask

        # old and reference log-probs, recomputed before the update (on-policy), like every
        # log-prob below at the temperature the responses were sampled at
        temperature = self.sampling_temperature
        old_logp, _ = self._logprobs_no_grad(self.model, batch, temperature=temperature)
        ref_logp = self._logprobs_no_grad(self.ref, batch, temperature=temperature)[0] if self.ref is not None else None
        actor = maths.actor_config(cfg.clip_ratio_low, cfg.clip_ratio_high, cfg.clip_ratio_c, cfg.loss_agg_mode)

        # policy loss + KL, optimised over ppo_epochs x minibatches
        def loss_fn(index: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
            mb = batch.rows(index)
            logp, _ = response_logprobs(self.model, mb, temperature=temperature)
            pg, pg_metrics = maths.policy_loss(old_logp[index], logp, advantages[index], mb.response_mask, config=actor)
            metrics = {"losses/policy_loss": pg.item(), "losses/approx_kl": pg_metrics["actor/ppo_kl"],
                       "losses/clipfrac": pg_metrics["actor/pg_clipfrac"]}
            loss = pg
            if ref_logp is not None:
                kl = maths.kl_loss(logp, ref_logp[index], mb.response_mask, kl_type=cfg.kl_type, agg_mode=cfg.loss_agg_mode)
                loss = loss + cfg.kl_coef * kl
                metrics["losses/kl_loss"] = kl.item()
            metrics["losses/total_loss"] = loss.item()
            return loss, metrics

        weights = maths.row_weights(batch.response_mask, cfg.loss_agg_mode)
        metrics = self._train(len(batch), cfg.ppo_epochs, loss_fn, on_batch, weights)
        metrics.update({
            "charts/mean_reward": float(sum(t.outcome_reward for t in trajectories) / len(trajectories)),
            "charts/success_rate": float(sum(t.success for t in trajectories) / len(trajectories)),
            "charts/mean_advantage": float(traj_adv.mean()),
            "charts/zero_signal_groups": maths.zero_signal_group_share(traj_adv, group_ids),
            "charts/invalid_steps": float(sum(invalid)),
            "data/trainable_steps": float(len(steps)),
            "data/empty_responses": float(sum(not s.response for s in steps)),
            "data/response_tokens": float(batch.response_mask.sum()),
            "data/skipped_trajectories": float(skipped),
        })
        return self._finite(metrics)

