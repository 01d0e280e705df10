"""The conformance kit on every algorithm of the plugin."""

import pytest

from dreamgym_core.testing import check_algorithm
from dreamgym_plugin_local import dreamgym_register_algos


@pytest.mark.parametrize("spec", dreamgym_register_algos(), ids=lambda s: s.name)
def test_check_algorithm(spec, kit):
    policy = kit.TinyPolicy()
    algo = spec.factory(spec.config_type(lr=1e-3), policy=policy, seed=0)
    metrics = check_algorithm(algo, kit.make_groups(), lambda: kit.flat_params(policy.model))
    assert metrics["errors/nonfinite_loss_steps"] == 0
