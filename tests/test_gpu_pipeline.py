"""The reduced main job with the policy and the experience model on a CUDA GPU, for each
local RL algorithm: every tensor the trainers build must follow the models onto the device.
CI has no GPU, so these skip there."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import reduced_args, run_cli

pytest.importorskip("dreamgym_plugin_textworld")
pytest.importorskip("dreamgym_plugin_hf")
pytest.importorskip("dreamgym_plugin_local")

ON_CUDA = ["policy.config.device=cuda", "experience_model.config.device=cuda"]
# row -> (overrides, a metric each RL iteration of that row logs)
ALGOS = {
    "grpo-dreamgym": ([], "losses/policy_loss"),
    "ppo-dreamgym": (["algo.name=ppo", "algo.config={lr: 1.0e-4, max_new_tokens: 24, minibatch_size: 16, value_lr: 1.0e-3}"],
                     "losses/value_loss"),
    # DPO trains on real groups (a reduced run may find no pair in them: the trainer's own GPU
    # test covers its update); the experience model still trains, on CUDA, for the fidelity check
    "dpo-real": (["algo.name=dpo", "algo.config={lr: 1.0e-4, max_new_tokens: 24, minibatch_size: 16}", "loop.mode=real"],
                 "data/pairs"),
}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("row", sorted(ALGOS))
def test_reduced_main_job_on_cuda(tmp_path, row):
    run_dir = tmp_path / "run"
    overrides, logged = ALGOS[row]
    args = reduced_args(run_dir, *ON_CUDA, *overrides)
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["eval/episodes"] == 4.0
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert sum(logged in r for r in rows) == 2, rows  # two RL iterations
    # the run resumes from its CUDA checkpoint and evaluates again
    evaluated = run_cli("eval", *args[1:], "--episodes", "2")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert json.loads(evaluated.stdout)["checkpoint_iteration"] == 2
