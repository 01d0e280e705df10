"""Ctrl-C of the README's main job (reduced), sent as a terminal sends it: SIGINT to the whole
foreground process group, so the run and the TextWorldExpress JVMs it started get it at once.

The README promises one line (exit 130) and closed environments. The JVMs die with the same
Ctrl-C, so the run's cleanup races their exit. Where the run lost that race it printed pages of
py4j tracebacks: its cleanup stopped at the first engine whose JVM was gone, and py4j logged the
failed calls of the rest. The race is pinned to each of its ends here rather than left to chance."""

from __future__ import annotations

import pytest

from conftest import reduced_args
from dreamgym_core.testing.processes import ctrl_c_run

pytest.importorskip("dreamgym_plugin_textworld")

# stages long enough to be inside them 0.2 s after they start: 16 test games of up to 8 steps, and
# 48 expert episodes to collect
LONGER_EVAL = ["env.config.test_seeds=16", "eval.episodes=16", "loop.max_steps=8"]
LONGER_COLLECTION = ["env.config.train_seeds=48", "data.expert_episodes=48"]


@pytest.mark.parametrize("lands", ["in_a_call", "after_the_simulators"])
@pytest.mark.parametrize(
    ("marker", "longer"),
    [
        ("evaluating the untrained policy", LONGER_EVAL),
        pytest.param("collecting offline real data", LONGER_COLLECTION, marks=pytest.mark.slow),
    ],
)
def test_ctrl_c_of_the_main_job_ends_in_one_line_and_leaves_no_jvm(tmp_path, marker, longer, lands):
    stopped = ctrl_c_run(reduced_args(tmp_path / "run", *longer), marker, 0.2, tmp_path / "stdout", lands=lands)
    stopped.assert_stopped_in_one_line()
