"""SFT baseline: behaviour cloning of the policy's responses in successful trajectories."""

from __future__ import annotations

from typing import Sequence

import torch

from dreamgym_core.progress import OnBatch
from dreamgym_core.records import Trajectory

from . import maths
from .batch import TokenBatch, response_logprobs, trajectory_steps
from .trainer import LocalTrainer

__all__ = ["SFT", "closed_response"]


def closed_response(text: str, stop: Sequence[str]) -> str:
    """``text`` as the policy wrote it, its stop string included: generate() returns it cut
    before the stop string (``</action>``), so without it SFT would never train the tokens that
    close the action (the hf warm start's targets end with them too). The text does not say
    which stop ended it, or whether one did, so the first configured one is appended where the
    text holds none (listed answers and expert demos hold theirs already). A blank text wrote no
    action to close, and stays blank."""
    first = next((s for s in stop if s), None)
    if first is None or not text.strip() or any(s in text for s in stop if s):
        return text
    return text + first


class SFT(LocalTrainer):
    """Token-level NLL on the response tokens (stop string included) of expert steps: the valid
    steps of successful trajectories."""

    name = "sft"
    uses_reference = False

    def update(self, *, groups: Sequence[Sequence[Trajectory]], on_batch: OnBatch | None = None) -> dict[str, float]:
        """One epoch on the successful trajectories of ``groups``."""
        return self._fit([traj for group in groups for traj in group], epochs=1, on_batch=on_batch)

    def fit_offline(self, trajectories: Sequence[Trajectory]) -> dict[str, float]:
        """``config.epochs`` epochs on offline expert trajectories (with decisions)."""
        return self._fit(list(trajectories), epochs=self.config.epochs)

    def _tokenize(self, prompts: Sequence[str], responses: Sequence[str]) -> TokenBatch:
        """Rows of the responses closed by their stop string (:func:`closed_response`)."""
        return super()._tokenize(prompts, [closed_response(r, self.config.stop) for r in responses])

    def _fit(self, trajectories: list[Trajectory], *, epochs: int, on_batch: OnBatch | None = None) -> dict[str, float]:
        cfg = self.config
        self._bind()
        # data: the expert steps
        if cfg.successful_only:
            trajectories = [t for t in trajectories if t.success]
        steps, skipped = trajectory_steps(trajectories)
        # a step the environment rejected (or that did not parse) is no expert step, even in a success
        steps = [s for s in steps if s.valid]
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
