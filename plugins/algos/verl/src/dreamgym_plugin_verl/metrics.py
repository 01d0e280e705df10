"""verl's logged metrics as DreamGym metric rows, read while verl writes them.

verl's FileLogger (inside its TaskRunner actor) writes one JSON line per step to
``VERL_FILE_LOGGER_PATH``: ``{"step": s, "data": {...}}``, with validation before training
at step 0 and training steps from 1. DreamGym's rows count like the local loop's: step -1
before RL, iterations from 0, and a last row at step ``iterations`` with the held-out
evaluation. verl's validation plays the ``eval.split`` tasks, so its success becomes the
local loop's ``eval_before/`` (before training), ``valid/`` (during) and ``eval/`` (after).

A resumed run (verl's ``resume_mode: auto``) first cuts ``metrics.jsonl`` back to the rows
of the checkpoint verl goes on from (:func:`rewind_rows`), as the local loop rewinds its
sinks: steps played after that checkpoint are played and logged again, not twice.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dreamgym_core.checkpoint import open_append
from dreamgym_core.errors import DataError
from dreamgym_core.loggers import JsonlConfig, JsonlSink
from dreamgym_core.rollout import wilson_interval

__all__ = [
    "METRIC_NAMES", "TRAINING_STEP_KEY", "map_verl_metrics", "held_out_metrics", "MetricRows", "MetricsFollower",
    "read_rows", "kept_rows", "rewind_rows",
]

# verl metric -> DreamGym metric (the local trainer's names); every verl metric is also kept under verl/.
METRIC_NAMES: dict[str, str] = {
    "actor/pg_loss": "losses/policy_loss",
    "actor/ppo_kl": "losses/approx_kl",
    "actor/kl_loss": "losses/kl_loss",
    "actor/entropy": "losses/entropy",
    "actor/pg_clipfrac": "losses/clipfrac",
    "critic/vf_loss": "losses/value_loss",
    "critic/score/mean": "charts/episodic_return",
    "critic/advantages/mean": "charts/advantage_mean",
    "response_length/mean": "rollout/response_tokens",
    "perf/throughput": "perf/tokens_per_second",
    "timing_s/step": "perf/iteration_seconds",
}

# Every training step of verl's trainer logs its duration (trainer_base.py fit: marked_timer("step")).
TRAINING_STEP_KEY = "timing_s/step"

# verl's validation metric for a reward-extra-info field of DreamGym's agent loop, per data
# source ("dreamgym/<domain>"): val-aux/<source>/<field>/mean@<samples per prompt>.
_HELD_OUT = re.compile(r"^val-(?:core|aux)/dreamgym/[^/]+/(?P<field>success|episode_steps)/mean@(?P<n>\d+)$")


def map_verl_metrics(data: dict[str, Any]) -> dict[str, float]:
    """One verl step's metrics under DreamGym names (plus every scalar under ``verl/``)."""
    out: dict[str, float] = {}
    for key, value in data.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"verl/{key}"] = float(value)
            if key in METRIC_NAMES:
                out[METRIC_NAMES[key]] = float(value)
    return out


def held_out_metrics(data: dict[str, Any], *, prefix: str, tasks: int) -> dict[str, float]:
    """verl's validation of ``tasks`` held-out tasks as the local evaluation's metrics.

    A pipeline has one environment, hence one data source; its ``mean@n`` success over
    ``tasks`` prompts of ``n`` samples each gives the count behind the Wilson interval.
    """
    found: dict[str, tuple[float, int]] = {}
    for key, value in data.items():
        match = _HELD_OUT.match(key)
        if match and isinstance(value, (int, float)):
            found[match["field"]] = (float(value), int(match["n"]))
    if "success" not in found:
        return {}
    rate, samples = found["success"]
    episodes = tasks * samples
    low, high = wilson_interval(round(rate * episodes), episodes)
    out = {
        f"{prefix}/success_rate": rate, f"{prefix}/success_ci_low": low, f"{prefix}/success_ci_high": high,
        f"{prefix}/episodes": float(episodes),
    }
    if "episode_steps" in found:
        out[f"{prefix}/episode_length"] = found["episode_steps"][0]
    return out


def _finite(row: dict[str, float]) -> dict[str, float | None]:
    return {k: (v if math.isfinite(v) else None) for k, v in row.items()}


class MetricRows:
    """Converts verl's logged lines into DreamGym rows for a run of ``iterations`` steps
    validated on ``eval_tasks`` tasks."""

    def __init__(self, *, iterations: int, eval_tasks: int) -> None:
        self.iterations = iterations
        self.eval_tasks = eval_tasks

    def __call__(self, logged: dict[str, Any]) -> list[dict[str, Any]]:
        step = int(logged.get("step", 0)) - 1  # verl: validation before training at 0, training steps from 1
        data = logged.get("data", {})
        if step < 0:
            return [{"step": -1, **_finite(held_out_metrics(data, prefix="eval_before", tasks=self.eval_tasks))}]
        if TRAINING_STEP_KEY not in data:
            # Validation before a resumed run's first step (verl logs it at the step it resumes
            # from): the policy of that step, not a training step of its own.
            return [{"step": step, **_finite(held_out_metrics(data, prefix="valid", tasks=self.eval_tasks))}]
        row = {"step": step, **_finite(map_verl_metrics(data))}
        if step < self.iterations - 1:
            return [row | _finite(held_out_metrics(data, prefix="valid", tasks=self.eval_tasks))]
        # The last step's validation is the evaluation after RL: its own row, as in the local loop.
        final = held_out_metrics(data, prefix="eval", tasks=self.eval_tasks)
        return [row] + ([{"step": self.iterations, **_finite(final)}] if final else [])


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows stored in ``path`` (a run's metrics.jsonl; none if there is none yet).

    A last line without its newline is a row whose write a kill cut short: not stored."""
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(lines[:-1], 1):  # lines[-1]: after the last newline
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise DataError(f"{path}:{number}: not a JSON metrics row ({exc})") from None
        if not isinstance(row, dict) or isinstance(row.get("step"), bool) or not isinstance(row.get("step"), int):
            raise DataError(f"{path}:{number}: not a metrics row (a JSON object with an integer 'step')")
        rows.append(row)
    return rows


def kept_rows(rows: list[dict[str, Any]], *, resumed_from: int, iterations: int) -> list[dict[str, Any]]:
    """The rows verl does not log again when it resumes from its checkpoint ``global_step_<resumed_from>``.

    verl's line of step s holds DreamGym row s - 1 (and, at the last step, the evaluation
    after RL, row ``iterations``); the resumed trainer goes on with step ``resumed_from`` + 1,
    so rows up to ``resumed_from`` - 1 stay. Without a checkpoint (0) verl starts afresh,
    validation before training included, and no row stays.
    """
    if resumed_from <= 0:
        return []
    return [r for r in rows if r["step"] < resumed_from or (resumed_from >= iterations and r["step"] == iterations)]


def rewind_rows(path: Path, *, resumed_from: int, iterations: int) -> list[dict[str, Any]]:
    """Cut ``path`` (metrics.jsonl) back to :func:`kept_rows` with the core's JSONL sink (the
    local loop's rewind on ``--resume``) and return them. Rewritten even when every row stays:
    a line a kill cut short must not run into the next row appended."""
    kept = kept_rows(read_rows(path), resumed_from=resumed_from, iterations=iterations)
    if path.exists():
        sink = JsonlSink(JsonlConfig(filename=path.name), run_dir=str(path.parent))
        try:
            sink.rewind(history=kept)
        finally:
            sink.close()
    return kept


class MetricsFollower:
    """Appends DreamGym rows to ``sink`` as verl appends lines to ``source``.

    ``poll`` reads the complete lines written since the last poll (verl writes each line in
    one unbuffered write; a line still being written waits for the next poll), converts
    them with ``convert`` and hands each new row to ``on_row``. ``rows`` holds the run's
    rows: ``history`` (what a resumed run kept in ``sink``, already there) and then the new ones.
    """

    def __init__(
        self, source: Path, sink: Path, *, convert: Callable[[dict[str, Any]], list[dict[str, Any]]],
        on_row: Callable[[dict[str, Any]], None] = lambda row: None, history: list[dict[str, Any]] | None = None,
    ) -> None:
        self.source, self.sink, self.convert, self.on_row = source, sink, convert, on_row
        self.offset = 0
        self.lines = 0
        self.rows: list[dict[str, Any]] = list(history or [])

    def poll(self) -> list[dict[str, Any]]:
        if not self.source.exists():
            return []
        with self.source.open("rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self.offset += len(complete)
        rows: list[dict[str, Any]] = []
        for line in complete.splitlines():
            self.lines += 1
            if not line.strip():
                continue
            try:
                logged = json.loads(line)
            except ValueError as exc:
                raise DataError(f"{self.source} line {self.lines}: not a JSON metrics record ({exc})") from None
            rows += self.convert(logged)
        if rows:
            with open_append(self.sink) as out:
                out.writelines(json.dumps(row) + "\n" for row in rows)
        for row in rows:
            self.rows.append(row)
            self.on_row(row)
        return rows
