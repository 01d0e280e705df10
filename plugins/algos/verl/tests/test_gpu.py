"""GPU smoke: a few GRPO steps of DreamGym on verl with SmolLM2-135M-Instruct (scripts/gpu_smoke.sh)."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parents[4]


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.skipif(not any(importlib.util.find_spec(m) for m in ("vllm", "sglang")), reason="needs a rollout engine (vllm or sglang)")
def test_gpu_smoke(tmp_path):
    out = tmp_path / "smoke"
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_smoke.sh"), str(out)], capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    metrics = (out / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) >= 2
