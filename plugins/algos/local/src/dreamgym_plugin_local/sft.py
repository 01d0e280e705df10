"""SFT baseline: behaviour cloning of the policy's responses in successful trajectories."""

from __future__ import annotations

from typing import Sequence

import torch

from dreamgym_core.progress import OnBatch
from dreamgym_core.records import Trajectory

from . import maths
from .batch import response_logprobs, trajectory_steps
from .trainer import LocalTrainer

__all__ = ["SFT"]


class SFT(LocalTrainer):
    """Token-level NLL on the response tokens of expert (successful) steps."""

    name = "sft"
    uses_reference = False

    def update(self, *, groups: Sequence[Sequence[Trajectory]], on_batch: OnBatch | None = None) -> dict[str, float]:
        """One epoch on the successful trajectories of ``groups``."""
        return self._fit([traj for group in groups for traj in group], epochs=1, on_batch=on_batch)

    def fit_offline(self, trajectories: Sequence[Trajectory]) -> dict[str, float]:
        """``config.epochs`` epochs on offline expert trajectories (with decisions)."""
        return self._fit(list(trajectories), epochs=self.config.epochs)

    def _fit(self, trajectories: list[Trajectory], *, epochs: int, on_batch: OnBatch | None = None) -> dict[str, float]:
        cfg = self.config
        self._bind()
        # data: the expert steps
        if cfg.successful_only:
            trajectories = [t for t in trajectories if t.success]
        steps, skipped = trajectory_steps(trajectories)
        if not steps:
            return {"data/trainable_steps": 0.0, "data/skipped_trajectories": float(skipped)}
        batch = self._tokenize([s.prompt for s in steps], [s.response for s in steps])

        # loss: token NLL of the responses
        def loss_fn(index: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
            mb = batch.rows(index)
            logp, _ = response_logprobs(self.model, mb)
            loss = maths.nll_loss(logp, mb.response_mask, agg_mode=cfg.loss_agg_mode)
            return loss, {"losses/sft_loss": loss.item()}

        weights = maths.row_weights(batch.response_mask, cfg.loss_agg_mode)
        metrics = self._train(len(batch), epochs, loss_fn, on_batch, weights, live=batch.response_mask.sum(-1).cpu() > 0)
        metrics.update({
            "data/trainable_steps": float(len(steps)),
            "data/response_tokens": float(batch.response_mask.sum()),
            "data/skipped_trajectories": float(skipped),
        })
        return self._finite(metrics)
