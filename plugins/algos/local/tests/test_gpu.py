"""The local trainers with the policy on a CUDA GPU: each update must build its batches,
advantages, value head and optimizer state on the policy's device. CI has no GPU: skipped there."""

import pytest
import torch

from dreamgym_plugin_local.batch import response_logprobs
from dreamgym_plugin_local.config import DPOConfig, GRPOConfig, PPOConfig, SFTConfig
from dreamgym_plugin_local.dpo import DPO, preference_pairs
from dreamgym_plugin_local.grpo import GRPO
from dreamgym_plugin_local.ppo import PPO
from dreamgym_plugin_local.sft import SFT

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def cuda_policy(kit):
    policy = kit.TinyPolicy()
    policy.model.to("cuda")
    return policy


def success_logprob(algo, groups) -> float:
    """Mean log-probability of the successful trajectories' responses under the policy."""
    pairs = [(d.prompt, d.text) for g in groups for t in g if t.success for d in t.decisions]
    batch = algo._tokenize([p for p, _ in pairs], [r for _, r in pairs])
    with torch.no_grad():
        logp, _ = response_logprobs(algo.model, batch)
    return float((logp * batch.response_mask).sum() / batch.response_mask.sum())


@pytest.mark.parametrize("cls,config_type", [(GRPO, GRPOConfig), (PPO, PPOConfig)], ids=["grpo", "ppo"])
def test_rl_updates_on_cuda_raise_the_successes_and_resume_from_a_checkpoint(cls, config_type, kit, tmp_path):
    policy = cuda_policy(kit)
    algo = cls(config_type(lr=1e-3, minibatch_size=4), policy=policy, seed=0)
    groups = kit.make_groups()
    before = success_logprob(algo, groups)
    history = [algo.update(groups=groups) for _ in range(4)]
    assert success_logprob(algo, groups) > before + 0.01
    assert all(m["errors/nonfinite_loss_steps"] == 0 and m["perf/optimizer_steps"] == 4 for m in history)
    assert all(p.device.type == "cuda" for p in [*policy.model.parameters(), *algo.heads.parameters()])

    algo.save(path=str(tmp_path / "ckpt"))
    resumed = cls(config_type(lr=1e-3, minibatch_size=4), policy=cuda_policy(kit), seed=0)
    resumed.load(path=str(tmp_path / "ckpt"))
    assert resumed.counters == algo.counters
    for mine, theirs in zip(policy.model.parameters(), resumed.model.parameters()):
        assert theirs.device.type == "cuda" and torch.equal(mine, theirs)


def test_dpo_on_cuda_raises_chosen_relative_to_rejected(kit):
    algo = DPO(DPOConfig(lr=1e-3, epochs=3, minibatch_size=2), policy=cuda_policy(kit), seed=0)
    prompt, chosen, rejected = preference_pairs(kit.make_groups()[0])[0]

    def margin() -> float:
        batch = algo._tokenize([prompt, prompt], [chosen, rejected])
        with torch.no_grad():
            logp, _ = response_logprobs(algo.model, batch)
        sums = (logp * batch.response_mask).sum(dim=1)
        return float(sums[0] - sums[1])

    margin0 = margin()
    metrics = algo.fit_offline([t for g in kit.make_groups() for t in g])
    assert margin() > margin0 + 0.1
    assert metrics["data/pairs"] == 8 and metrics["charts/reward_margin"] > 0


def test_sft_on_cuda_lowers_the_nll_of_expert_responses(kit):
    algo = SFT(SFTConfig(lr=1e-3, epochs=3, minibatch_size=4), policy=cuda_policy(kit), seed=0)
    groups = kit.make_groups()
    before = success_logprob(algo, groups)
    algo.fit_offline([t for g in groups for t in g])
    assert success_logprob(algo, groups) > before + 0.1
