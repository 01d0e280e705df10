"""The conformance kit on every algorithm of the plugin."""

import pytest

from dreamgym_core.testing import check_algorithm
from dreamgym_plugin_local import dreamgym_register_algos


@pytest.mark.parametrize("spec", dreamgym_register_algos(), ids=lambda s: s.name)
def test_check_algorithm(spec, kit):
    def build():
        """A new policy and the algorithm on it, as a run (and its --resume) builds them."""
        policy = kit.TinyPolicy()
        return spec.factory(spec.config_type(lr=1e-3), policy=policy, seed=0), lambda: kit.flat_params(policy.model)

    algo, parameters = build()
    metrics = check_algorithm(algo, kit.make_groups(), parameters, rebuild=build)
    assert metrics["errors/nonfinite_loss_steps"] == 0
    assert metrics["errors/nonfinite_metrics"] == 0  # the trainer leaves non-finite metrics out: counted here


@pytest.mark.parametrize("spec", dreamgym_register_algos(), ids=lambda s: s.name)
def test_non_finite_metrics_are_counted_not_hidden(spec, kit):
    import msgspec

    # a NaN reward makes reward-derived metrics NaN: they are left out of the returned dict
    # (which stays finite) and counted, so a test like the one above can fail
    groups = kit.make_groups()
    for g, group in enumerate(groups):
        for i, traj in enumerate(group):
            last = msgspec.structs.replace(traj.transitions[-1], reward=float("nan"))
            groups[g][i] = msgspec.structs.replace(traj, transitions=[*traj.transitions[:-1], last])
    algo = spec.factory(spec.config_type(lr=1e-3), policy=kit.TinyPolicy(), seed=0)
    metrics = algo.update(groups=groups)
    assert all(isinstance(v, float) and v == v for v in metrics.values())
    if spec.name in ("grpo", "ppo"):
        assert metrics["errors/nonfinite_metrics"] >= 1
        assert "charts/mean_reward" not in metrics
    else:  # SFT and DPO do not read rewards
        assert metrics["errors/nonfinite_metrics"] == 0
