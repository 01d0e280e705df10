"""Multi-turn PPO: a value head on the policy's last hidden state and GAE over the
concatenated response tokens of each episode.

Each step's reward (minus the invalid-action penalty) sits on the last token of that
step's response. The response tokens of an episode's steps are concatenated in step
order into one row and verl's GAE runs over it, so credit flows across turns while
prompt/observation tokens are skipped (they are not in the row). Advantages are
whitened over the batch (verl), then scattered back to the step rows.
"""

from __future__ import annotations

from typing import Sequence

import torch

from dreamgym_core.progress import OnBatch
from dreamgym_core.records import Trajectory

from . import maths
from .batch import invalid_steps, response_logprobs, retokenized_rows, trajectory_steps
from .config import PPOConfig
from .trainer import LocalTrainer

__all__ = ["PPO"]


class PPO(LocalTrainer):
    """PPO-clip with GAE, clipped value loss, KL to the reference (the policy at its first update)."""

    name = "ppo"
    on_policy = True

    def __init__(self, config: PPOConfig, *, policy, seed: int = 0) -> None:
        self.uses_reference = config.kl_coef > 0
        super().__init__(config, policy=policy, seed=seed)

    def _make_heads(self) -> torch.nn.ModuleDict:
        param = next(self.model.parameters())
        head = torch.nn.Linear(self.model.config.hidden_size, 1).to(device=param.device, dtype=param.dtype)
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)
        return torch.nn.ModuleDict({"value": head})

    def _param_groups(self):
        return super()._param_groups() + [{"params": list(self.heads.parameters()), "lr": self.config.value_lr}]

    def _values(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.heads["value"](states).squeeze(-1).float() * mask

    def update(self, *, groups: Sequence[Sequence[Trajectory]], on_batch: OnBatch | None = None) -> dict[str, float]:
        cfg = self.config
        self._bind()
        # rollout data: one row per step, one episode per trajectory
        trajectories = [traj for group in groups for traj in group]
        steps, skipped = trajectory_steps(trajectories, keep_empty=True)
        if not steps:
            return {"data/trainable_steps": 0.0, "data/skipped_trajectories": float(skipped)}
        sampled = self._take_sampled([s.prompt for s in steps], [s.response for s in steps])
        batch = self._tokenize([s.prompt for s in steps], [s.response for s in steps], sampled)
        episode = [s.trajectory for s in steps]

        # old log-probs and values, reference log-probs (recomputed: on-policy); every log-prob
        # at the temperature the responses were sampled at
        temperature = self.sampling_temperature
        old_logp, states = self._logprobs_no_grad(self.model, batch, hidden=True, temperature=temperature)
        with torch.no_grad():
            old_values = self._values(states, batch.response_mask)
        ref_logp = self._logprobs_no_grad(self.ref, batch, temperature=temperature)[0] if self.ref is not None else None

        # advantages: step rewards on last response tokens, GAE per episode over its response tokens
        penalised = torch.tensor([s.reward - cfg.invalid_action_penalty * (not s.valid) for s in steps])
        mask_cpu = batch.response_mask.cpu()
        token_rewards = maths.place_step_rewards(penalised, mask_cpu)
        packed_r, packed_mask = maths.pack_episodes(token_rewards, mask_cpu, episode)
        packed_v, _ = maths.pack_episodes(old_values.cpu(), mask_cpu, episode)
        packed_adv, packed_ret = maths.gae_advantages(packed_r, packed_v, packed_mask, gamma=cfg.gamma, lam=cfg.lam)
        advantages = maths.unpack_episodes(packed_adv, mask_cpu, episode).to(self.device)
        returns = maths.unpack_episodes(packed_ret, mask_cpu, episode).to(self.device)
        actor = maths.actor_config(cfg.clip_ratio_low, cfg.clip_ratio_high, cfg.clip_ratio_c, cfg.loss_agg_mode)

        # policy loss + value loss + KL, optimised over ppo_epochs x minibatches
        def loss_fn(index: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
            mb = batch.rows(index)
            logp, h = response_logprobs(self.model, mb, hidden=True, temperature=temperature)
            pg, pg_metrics = maths.policy_loss(old_logp[index], logp, advantages[index], mb.response_mask, config=actor)
            vf, vf_clip = maths.value_loss(
                self._values(h, mb.response_mask), returns[index], old_values[index], mb.response_mask,
                cliprange=cfg.cliprange_value, agg_mode=cfg.loss_agg_mode,
            )
            loss = pg + cfg.vf_coef * vf
            metrics = {"losses/policy_loss": pg.item(), "losses/value_loss": vf.item(), "losses/value_clipfrac": float(vf_clip),
                       "losses/approx_kl": pg_metrics["actor/ppo_kl"], "losses/clipfrac": pg_metrics["actor/pg_clipfrac"]}
            if ref_logp is not None:
                kl = maths.kl_loss(logp, ref_logp[index], mb.response_mask, kl_type=cfg.kl_type, agg_mode=cfg.loss_agg_mode)
                loss = loss + cfg.kl_coef * kl
                metrics["losses/kl_loss"] = kl.item()
            metrics["losses/total_loss"] = loss.item()
            return loss, metrics

        weights = maths.row_weights(batch.response_mask, cfg.loss_agg_mode)
        metrics = self._train(len(batch), cfg.ppo_epochs, loss_fn, on_batch, weights, live=batch.response_mask.sum(-1).cpu() > 0)
        metrics.update({
            "charts/mean_reward": float(sum(t.outcome_reward for t in trajectories) / len(trajectories)),
            "charts/success_rate": float(sum(t.success for t in trajectories) / len(trajectories)),
            "charts/mean_value": float(old_values.sum() / batch.response_mask.sum()),
            "charts/mean_return": float((returns * batch.response_mask).sum() / batch.response_mask.sum()),
            "charts/invalid_steps": float(sum(invalid_steps(t) for t in trajectories)),
            "data/trainable_steps": float(len(steps)),
            "data/empty_responses": float(sum(not s.response for s in steps)),
            "data/response_tokens": float(batch.response_mask.sum()),
            "data/retokenized_rows": float(retokenized_rows(steps, sampled)),
            "data/skipped_trajectories": float(skipped),
        })
        return self._finite(metrics)
