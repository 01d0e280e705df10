"""Keeping the RL policy that plays best on validation tasks.

Training rollouts are sampled; the held-out evaluation is greedy. A policy can collapse in
greedy play while its sampled rollouts still win (Table 1's coin seed 7: one blind move on every
test game, 69-81% rollout success), so the loop can play the 'valid' split greedily every few
iterations (``eval.valid_every``) and end with the best policy it saw (``eval.keep: best-valid``).
That is only as good as the validation games: coin's score most of Table 1's checkpoints alike,
collapsed ones included (benchmarks/table1/results/validation).

Snapshots live in ``<run_dir>/policy_best/it-<iteration>``. Only the best one that a checkpoint
records is kept after that checkpoint, so a run killed between a new best and its checkpoint
resumes with the best the checkpoint knew, whose snapshot is still on disk.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable

from . import checkpoint
from .errors import DataError

__all__ = ["best_iteration", "ValidSelection"]


def best_iteration(scores: dict[int, float]) -> int:
    """The iteration with the highest validation score; ties keep the earliest (the policy
    that moved least from the warm start for the same validation result)."""
    if not scores:
        raise ValueError("no validation scores")
    return min(scores, key=lambda it: (-scores[it], it))


class ValidSelection:
    """Validation scores by iteration and the snapshot of the best policy."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.scores: dict[int, float] = {}

    @property
    def best(self) -> int | None:
        return best_iteration(self.scores) if self.scores else None

    def path(self, iteration: int) -> Path:
        return self.root / f"it-{iteration:05d}"

    def offer(self, iteration: int, score: float, save: Callable[[Path], None] | None) -> bool:
        """Record ``iteration``'s score; if it is the new best, snapshot the policy with
        ``save(dir)`` (None: only the scores are kept, for a run that keeps its last policy).
        A new best's score is recorded only once its snapshot is in place: a best without one
        would be kept, and its missing snapshot found only at the end of the run."""
        if best_iteration({**self.scores, iteration: score}) != iteration:
            self.scores[iteration] = score
            return False
        if save is not None:
            self._snapshot(iteration, save)
        self.scores[iteration] = score
        return True

    def _snapshot(self, iteration: int, save: Callable[[Path], None]) -> None:
        final, tmp = self.path(iteration), self.root / f".it-{iteration:05d}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        with checkpoint.unwritten_removed(tmp, final, "validation policy snapshot", "earlier bests' snapshots"):
            tmp.parent.mkdir(parents=True, exist_ok=True)
            save(tmp)
            shutil.rmtree(final, ignore_errors=True)  # a killed attempt's snapshot of the same iteration
            os.replace(tmp, final)

    def prune(self) -> None:
        """After a checkpoint recorded this state: drop every snapshot but the best."""
        keep = self.path(self.best).name if self.best is not None else None
        if self.root.is_dir():
            for entry in self.root.iterdir():
                if entry.name != keep:
                    shutil.rmtree(entry, ignore_errors=True)

    def best_path(self) -> Path:
        """The best policy's snapshot; a clear error if the run directory lost it."""
        if self.best is None:
            raise DataError(f"{self.root}: no validation score recorded yet, so no policy to keep")
        path = self.path(self.best)
        if not path.is_dir():
            raise DataError(f"{path}: the snapshot of the best validation policy (iteration {self.best}) is missing")
        return path

    def metrics(self) -> dict[str, float]:
        best = self.best
        return {} if best is None else {"valid/best_iteration": float(best), "valid/best_success_rate": self.scores[best]}

    def state_dict(self) -> dict[str, Any]:
        return {"scores": {str(k): v for k, v in self.scores.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scores = {int(k): float(v) for k, v in state.get("scores", {}).items()}
