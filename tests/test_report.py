"""The run's plots are replaced whole: a save that fails part-way leaves the previous plot."""

from __future__ import annotations

import matplotlib.figure
import pytest

from dreamgym_core.report import SYNTHETIC_CURVE, plot_heldout_curve, plot_success, success_curves

HISTORY = [{"step": i, "rollout/success_rate": 0.25 * i, "counters/real_transitions": 8.0 * i} for i in range(3)]


def test_plots_are_written_and_readable(tmp_path) -> None:
    paths = plot_success(HISTORY, tmp_path)
    assert [p.name for p in paths] == ["success_vs_iteration.png", "success_vs_real_transitions.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in paths)
    assert plot_success([{"step": -1}], tmp_path) == []


def test_a_run_without_rollout_success_plots_its_training_return(tmp_path) -> None:
    """verl logs its rollouts' reward, not their success, and no transition counters."""
    paths = plot_success([{"step": -1}, {"step": 0, "charts/episodic_return": 0.2}, {"step": 1, "charts/episodic_return": 0.5}], tmp_path)
    assert [p.name for p in paths] == ["return_vs_iteration.png"]
    assert paths[0].read_bytes().startswith(b"\x89PNG")


def test_a_save_that_fails_part_way_leaves_the_previous_plot(tmp_path, monkeypatch) -> None:
    old = plot_success(HISTORY, tmp_path)[0].read_bytes()

    def broken_save(self, target, **kwargs):  # writes a truncated image, then fails (a full disk, a kill)
        if hasattr(target, "write"):
            target.write(b"\x89PNG trunc")
        else:
            open(target, "wb").write(b"\x89PNG trunc")
        raise OSError("No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", broken_save)
    with pytest.raises(OSError, match="No space"):
        plot_success(HISTORY[:2], tmp_path)
    assert (tmp_path / "success_vs_iteration.png").read_bytes() == old


def test_synthetic_success_is_a_curve_of_its_own_and_not_plotted_against_real_transitions(tmp_path) -> None:
    # s2r: two synthetic iterations (success as the experience model judged it), then two real
    # ones; one curve used to mix them, and put the synthetic points at 0 real transitions.
    history = [{"step": -1}] + [
        {"step": i, "rollout/success_rate": v, "counters/real_transitions": r, "charts/synthetic_phase": float(i < 2)}
        for i, (v, r) in enumerate([(0.9, 0.0), (0.95, 0.0), (0.3, 96.0), (0.35, 190.0)])
    ]
    _, _, curves = success_curves(history)
    assert [(label, [r["step"] for r in rows]) for label, rows in curves] == [(SYNTHETIC_CURVE, [0, 1]), ("real rollouts", [2, 3])]
    assert [p.name for p in plot_success(history, tmp_path)] == ["success_vs_iteration.png", "success_vs_real_transitions.png"]
    (tmp_path / "dreamgym").mkdir()
    dreamgym_only = [r for r in history if r["step"] < 2]  # no real rollout: no plot against real transitions
    assert [p.name for p in plot_success(dreamgym_only, tmp_path / "dreamgym")] == ["success_vs_iteration.png"]


def test_a_heldout_curve_whose_bound_misses_its_rate_by_a_rounding_error_is_drawn(tmp_path) -> None:
    # 6 of 6 won: the Wilson high bound came out 1.1e-16 below the rate of 1.0, and matplotlib
    # refused the negative error bar, after every checkpoint had been played.
    rows = [{"checkpoint_iteration": 0, "eval/success_rate": 1.0, "eval/success_ci_low": 0.61,
             "eval/success_ci_high": 1.0 - 1.1e-16},
            {"checkpoint_iteration": 1, "eval/success_rate": 0.0, "eval/success_ci_low": 2.8e-17,
             "eval/success_ci_high": 0.26}]
    path = plot_heldout_curve(rows, tmp_path / "curve.png", split="test")
    assert path.read_bytes().startswith(b"\x89PNG")
