"""DPO baseline on preference pairs built from trajectories of the same task.

A pair is (prompt, chosen, rejected): ``chosen`` is a step response of a successful
trajectory, ``rejected`` a different response of a failed trajectory of the same task at
the same state (same prompt) when one exists (the winner's assigned failed trajectory
first, then the others in turn), else the assigned one's response at the same step index
(a similar state; an empty response is never trained, but its step still counts). A state
the failed trajectories answered only as the winner did, or the assigned one left empty at
that index or ended before it (no step of its stands in for a later one), gives no pair.
Both are scored under the chosen step's prompt.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import torch

from dreamgym_core.progress import OnBatch
from dreamgym_core.records import Trajectory

from . import maths
from .batch import response_logprobs
from .trainer import LocalTrainer

__all__ = ["DPO", "preference_pairs"]


def _responses(traj: Trajectory) -> list[tuple[str, str]]:
    """(prompt, response) of every step, empty ones included: the list index is the step index."""
    return [(d.prompt, d.text) for d in traj.decisions]


def preference_pairs(group: Sequence[Trajectory], max_pairs: int = 0) -> list[tuple[str, str, str]]:
    """(prompt, chosen, rejected) pairs from one task's trajectories (see module docs)."""
    winners = [_responses(t) for t in group if t.success and t.decisions]
    losers = [_responses(t) for t in group if not t.success and t.decisions]
    losers = [steps for steps in losers if any(r for _, r in steps)]  # one with no response has nothing to reject
    pairs = []
    for w, chosen_steps in enumerate(winners):
        if not losers:
            break
        k = w % len(losers)
        rejected_steps = losers[k]
        for i, (prompt, chosen) in enumerate(chosen_steps):
            if not chosen:
                continue
            # the same state: the assigned loser first, then the others in turn
            same_state = [r for steps in losers[k:] + losers[:k] for p, r in steps if p == prompt and r]
            if same_state:
                rejected = next((r for r in same_state if r != chosen), chosen)
            else:
                rejected = rejected_steps[i][1] if i < len(rejected_steps) else ""  # it ended before step i
            if rejected and rejected != chosen:
                pairs.append((prompt, chosen, rejected))
    return pairs[:max_pairs] if max_pairs else pairs


class DPO(LocalTrainer):
    """Direct preference optimisation against the frozen policy of the first update."""

    name = "dpo"
    uses_reference = True

    def update(self, *, groups: Sequence[Sequence[Trajectory]], on_batch: OnBatch | None = None) -> dict[str, float]:
        """One epoch on the pairs built within each group (a group = one task)."""
        pairs = [p for group in groups for p in preference_pairs(group, self.config.max_pairs_per_group)]
        return self._fit(pairs, epochs=1, on_batch=on_batch)

    def fit_offline(self, trajectories: Sequence[Trajectory]) -> dict[str, float]:
        """``config.epochs`` epochs on pairs from offline trajectories grouped by task id."""
        by_task: dict[str, list[Trajectory]] = defaultdict(list)
        for traj in trajectories:
            by_task[traj.task.id].append(traj)
        pairs = [p for group in by_task.values() for p in preference_pairs(group, self.config.max_pairs_per_group)]
        return self._fit(pairs, epochs=self.config.epochs)

    def _fit(self, pairs: list[tuple[str, str, str]], *, epochs: int, on_batch: OnBatch | None = None) -> dict[str, float]:
        cfg = self.config
        self._bind()
        if not pairs:
            return {"data/pairs": 0.0}
        # data: rows 2k (chosen) and 2k+1 (rejected) share pair k's prompt
        prompts = [p for p, _, _ in pairs for _ in range(2)]
        responses = [r for _, c, rj in pairs for r in (c, rj)]
        batch = self._tokenize(prompts, responses)
        ref_seq = (self._logprobs_no_grad(self.ref, batch)[0] * batch.response_mask).sum(-1)

        # loss: DPO on sequence log-probs of each pair
        def loss_fn(index: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
            rows = torch.stack([2 * index, 2 * index + 1], dim=1).flatten()
            mb = batch.rows(rows)
            seq = (response_logprobs(self.model, mb)[0] * mb.response_mask).sum(-1)
            losses, chosen_r, rejected_r = maths.dpo_loss(seq[0::2], seq[1::2], ref_seq[rows][0::2], ref_seq[rows][1::2], beta=cfg.beta)
            loss = losses.mean()
            return loss, {"losses/dpo_loss": loss.item(), "charts/reward_margin": float((chosen_r - rejected_r).mean()),
                          "charts/reward_accuracy": float((chosen_r > rejected_r).float().mean())}

        metrics = self._train(len(pairs), epochs, loss_fn, on_batch, weights=torch.ones(len(pairs)))  # a mean over pairs
        metrics["data/pairs"] = float(len(pairs))
        return self._finite(metrics)
