"""The training loop: short named stages over the components a pipeline names."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .config import ResolvedPipeline, config_hash
from .plugins import Plugins


def prepare_run_dir(resolved: ResolvedPipeline) -> Path:
    """Create the run directory and write the resolved config and its hash."""
    run_dir = Path(resolved.pipeline.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    data = resolved.to_builtins()
    (run_dir / "config.json").write_text(json.dumps(data, indent=2, sort_keys=True))
    (run_dir / "config.sha256").write_text(config_hash(data) + "\n")
    return run_dir


def run_pipeline(resolved: ResolvedPipeline, plugins: Plugins, *, resume: bool = False) -> dict[str, Any]:
    run_dir = prepare_run_dir(resolved)
    return {"run_dir": str(run_dir)}
