"""Built-in metric sinks (an essential plugin): JSONL always, TensorBoard on request."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import msgspec

from .checkpoint import open_append, open_new
from .config import Config
from .errors import DataError
from .hookspecs import hookimpl
from .provenance import VERSIONS_FILE
from .specs import ComponentSpec
from .stages import BRANCHES_FILE, EXPERIENCE_DIR, OFFLINE_FILE


def _in_run_dir(field: str, value: str, *, nested: bool) -> None:
    """Refuse a path that would put a sink's output outside the run directory."""
    path = Path(value)
    if path.is_absolute() or not value.strip() or any(part == ".." for part in path.parts) or path == Path("."):
        raise ValueError(f"{field} {value!r} must name a place inside the run directory (relative, no '..')")
    if not nested and len(path.parts) != 1:
        raise ValueError(f"{field} {value!r} must be a file name in the run directory, without a directory part")


# Files and directories the run itself makes in its directory: a jsonl sink named after one
# appended metrics to it (offline.jsonl, the run's real data, among them), or failed on a directory
# after the data was collected. Those without a constant are named in dreamgym_core.loop (the
# buffer_seeded marker, policy_init/, policy_best/, policy_warmstart_best/, buffer/, summary.json),
# checkpoint.py (checkpoints/) and report.py (the plots); tests/test_cli_review_fixes.py checks
# that a run makes no other.
RUN_FILES = frozenset({
    "config.json", "config.sha256", VERSIONS_FILE, OFFLINE_FILE, "offline_annotated.jsonl", BRANCHES_FILE,
    "fidelity_heldout.jsonl", "fidelity_unparsed.jsonl", "summary.json", "report.md", "buffer_seeded",
    EXPERIENCE_DIR, "policy_init", "policy_best", "policy_warmstart_best", "buffer", "checkpoints",
    *(f"{stem}_{x}.png" for stem in ("success_vs", "return_vs") for x in ("iteration", "real_transitions")),
})


class JsonlConfig(Config):
    """Metrics as one JSON object per line in ``<run_dir>/metrics.jsonl``."""

    filename: str = "metrics.jsonl"

    def __post_init__(self) -> None:
        super().__post_init__()
        _in_run_dir("filename", self.filename, nested=False)
        # as the sink opens it: Path drops a leading './' and a trailing '/' ('./config.json' was appended to)
        if Path(self.filename).parts[0].lower() in RUN_FILES:
            raise ValueError(f"filename {self.filename!r} is a file the run writes itself; name the metrics file otherwise")


class JsonlSink:
    """Opens its file on the first row: a run that fails on bad input before logging anything
    leaves no empty file that would make its directory look like another run's output."""

    def __init__(self, config: JsonlConfig, *, run_dir: str) -> None:
        self.path = Path(run_dir) / config.filename
        self._file: Any = None

    def log(self, *, step: int, metrics: dict[str, float]) -> None:
        if self._file is None:
            try:
                self._file = open_append(self.path)
            except OSError as exc:  # a directory there, no permission: after minutes of data collection
                raise DataError(f"{self.path}: cannot open the metrics file ({exc.strerror or exc})") from exc
        self._file.write(_line(step, metrics))
        self._file.flush()

    def rewind(self, *, history: Sequence[dict[str, Any]]) -> None:
        """Keep only the rows of ``history`` (a resumed run's checkpoint): rows of iterations
        that never reached a checkpoint are played and logged again, not twice."""
        self.close()
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open_new(tmp, "w") as f:
            f.writelines(_line(row["step"], {k: v for k, v in row.items() if k != "step"}) for row in history)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self._file = open_append(self.path)

    def close(self) -> None:
        if self._file is not None and not self._file.closed:
            self._file.close()


def _line(step: int, metrics: dict[str, Any]) -> str:
    # NaN/inf are not JSON: write them as null so a bad step is visible, not fatal.
    row = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
    return msgspec.json.encode({"step": step, **row}).decode() + "\n"


class TensorBoardConfig(Config):
    """TensorBoard event files under ``<run_dir>/<subdir>``."""

    subdir: str = "tensorboard"

    def __post_init__(self) -> None:
        super().__post_init__()
        _in_run_dir("subdir", self.subdir, nested=True)
        if Path(self.subdir).parts[0].lower() in RUN_FILES:  # event files inside checkpoints/ or over buffer/
            raise ValueError(f"subdir {self.subdir!r} is inside a place the run writes itself; name the TensorBoard directory otherwise")


class TensorBoardSink:
    """Starts its event file on the first row, like :class:`JsonlSink`."""

    def __init__(self, config: TensorBoardConfig, *, run_dir: str) -> None:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401  (a missing tensorboard fails at build)

        self.path = Path(run_dir) / config.subdir
        self._log_dir = str(self.path)
        self._writer: Any = None
        self._purge_step: int | None = None

    def rewind(self, *, history: Sequence[dict[str, Any]]) -> None:
        """Hide events logged after the checkpoint (TensorBoard's purge_step, applied when the
        next writer starts)."""
        self.close()
        # -1 without a history: the loop's first row (before RL) is step -1, which purge step 0 kept,
        # so a run stopped before its first checkpoint showed that row twice after --resume
        self._purge_step = history[-1]["step"] + 1 if history else -1

    def log(self, *, step: int, metrics: dict[str, float]) -> None:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=self._log_dir, purge_step=self._purge_step)
        for key, value in metrics.items():
            if isinstance(value, (int, float)):
                self._writer.add_scalar(key, float(value), global_step=step)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


@hookimpl
def dreamgym_register_loggers() -> list[ComponentSpec]:
    return [
        ComponentSpec(name="jsonl", factory=JsonlSink, config_type=JsonlConfig, description="Metrics as JSON lines."),
        ComponentSpec(
            name="tensorboard",
            factory=TensorBoardSink,
            config_type=TensorBoardConfig,
            description="TensorBoard scalar event files.",
        ),
    ]
