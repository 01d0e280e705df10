"""The Table 1 report's arithmetic (benchmarks/table1/run.py): the committed table and its
met/missed verdicts are computed here, from cached cells, so they get the same tests as the
framework's maths. Cells are written to a temporary cache; nothing is run."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest
import yaml

RUN_PY = Path(__file__).resolve().parents[1] / "benchmarks" / "table1" / "run.py"
RUN_DIR = Path("<run_dir>")  # how a cell's overrides record its run directory


@pytest.fixture
def table1(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("table1_run", RUN_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "CELLS", tmp_path / "cells")
    return module


def _write(table1, game: str, row: str, seed: int, success: float, *, draw: int = 0, real: float = 0.0, **extra) -> None:
    cell = {
        "game": game, "row": row, "seed": seed, "base_sha256": table1.base_sha256(), "protocol": table1.PROTOCOL,
        "machine": "test cpu", "success": success, "real_transitions": real, "offline_transitions": 400.0,
        "warmstart_success": 0.5, "fidelity": {"fidelity/success_agreement": 0.95},
        "overrides": table1.overrides(game, row, seed, RUN_DIR, draw), **({"draw": draw} if draw else {}), **extra,
    }
    path = table1.cell_path(game, row, seed, draw=draw)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cell))


def test_a_seed_over_draws_averages_numbers_and_keeps_each_draw(table1) -> None:
    cells = [{"success": 0.75, "real_transitions": 0.0, "fidelity": {"a": 1.0}, "machine": "m"},
             {"success": 0.25, "real_transitions": 0.0, "fidelity": {"a": 2.0}, "machine": "m"},
             {"success": 0.5, "real_transitions": 3.0, "fidelity": {"a": 3.0}, "machine": "m"}]
    merged = table1._over_draws(cells)
    assert merged["success"] == pytest.approx(0.5)
    assert merged["real_transitions"] == pytest.approx(1.0)
    assert merged["draw_success"] == [0.75, 0.25, 0.5]
    assert merged["fidelity"] == {"a": 1.0}  # scored before RL, on a stream no draw moves


def test_targets_are_judged_on_the_seeds_both_rows_have(table1) -> None:
    for seed, (sft, dg, real_grpo, s2r) in enumerate([(0.5, 0.625, 0.6, 0.625), (0.5, 0.625, 0.6, 0.625)]):
        _write(table1, "coin", "SFT", seed, sft)
        _write(table1, "coin", "GRPO DreamGym", seed, dg)
        _write(table1, "coin", "GRPO (real env)", seed, real_grpo, real=300.0)
        _write(table1, "coin", "GRPO DreamGym-S2R", seed, s2r, real=31.0)  # 31 / 300 > 1/10
        _write(table1, "coin", "w/o retrieval", seed, dg)  # a tie is not "below"
    _write(table1, "coin", "SFT", 2, 0.0)  # a seed DreamGym lacks does not lower SFT's mean
    _write(table1, "coin", "w/o reasoning", 0, 0.5)  # below on one seed, above on the other: the mean is below
    _write(table1, "coin", "w/o reasoning", 1, 0.7)
    lines = table1._targets("coin", table1._cells(["coin"], [0, 1, 2], table1.PROTOCOL))
    verdict = {line.split(": ")[1]: line.rsplit("-> ", 1)[1] for line in lines}
    assert verdict == {
        "DreamGym >= SFT + 10": "met",  # 62.5 vs 50.0 on seeds 0-1
        "DreamGym within 10 of real GRPO": "met",
        "S2R >= real GRPO with <= 1/10 of its real transitions": "missed",
        "w/o retrieval below the full method": "missed",
        "w/o reasoning below the full method": "met",
    }
    assert "62.5 vs 50.0 (n=2; paired difference +12.5) -> met" in lines[0]  # no spread: no interval
    assert "(n=2; seeds below / tied / above: 0 / 2 / 0, sign test p = 1.00; paired difference +0.0)" in lines[3]
    # -12.5 and +7.5 on the two seeds: mean -2.5, sd 14.1, t(0.975, 1) = 12.706
    assert ("60.0 vs 62.5 (n=2; seeds below / tied / above: 1 / 0 / 1, sign test p = 1.00; "
            "paired difference -2.5, 95% CI [-129.6, +124.6]) -> met") in lines[4]


def test_a_gain_of_exactly_ten_points_is_met(table1) -> None:
    # 40.9375 vs 30.9375: float arithmetic put SFT + 0.10 one ulp above DreamGym ("missed")
    sft, dg = [9, 2, 5, 5, 8, 16, 5, 21, 8, 20], [13, 4, 7, 9, 12, 18, 10, 25, 12, 21]
    for seed, (a, b) in enumerate(zip(sft, dg)):
        _write(table1, "coin", "SFT", seed, a / 32)
        _write(table1, "coin", "GRPO DreamGym", seed, b / 32)
        _write(table1, "coin", "GRPO (real env)", seed, (b + 3.2) / 32)  # 10 points above DreamGym
    lines = table1._targets("coin", table1._cells(["coin"], list(range(10)), table1.PROTOCOL))
    assert lines[0].startswith("- coin: DreamGym >= SFT + 10: 40.9 vs 30.9") and lines[0].endswith("-> met")
    assert lines[1].endswith("-> met")  # exactly 10 points below real GRPO is still within 10


def test_a_drawn_row_counts_a_seed_only_once_every_draw_has_run(table1) -> None:
    _write(table1, "coin", "SFT", 0, 0.5)
    _write(table1, "coin", "GRPO (real env)", 0, 0.625, real=300.0)
    for draw, success in enumerate([0.75, 0.5, 0.625]):
        _write(table1, "coin", "GRPO DreamGym", 0, success, draw=draw)
    _write(table1, "coin", "w/o curriculum", 0, 0.5)  # draw 0 only
    table = table1._cells(["coin"], [0], table1.PROTOCOL, draws=(0, 1, 2))
    assert table[("coin", "GRPO DreamGym")][0]["success"] == pytest.approx(0.625)
    assert table[("coin", "GRPO (real env)")][0]["success"] == 0.625  # real rows run once
    assert table[("coin", "w/o curriculum")] == {}
    text = table1.report(["coin"], [0], draws=(0, 1, 2))
    assert "- GRPO DreamGym: 62.5 (75.0, 50.0, 62.5)" in text
    assert "coin / w/o curriculum seeds 0 (some of draws 0, 1, 2 missing)" in text


def test_the_paired_interval_is_the_student_t_interval_of_the_mean_difference(table1) -> None:
    # Textbook value t(0.975, df=4) = 2.776; mean 0.1, sd sqrt(0.005), so half-width 2.776 * 0.0316
    low, high = table1.paired_interval([0.0, 0.1, 0.2, 0.1, 0.1])
    assert low == pytest.approx(0.1 - 0.08779, abs=1e-4)
    assert high == pytest.approx(0.1 + 0.08779, abs=1e-4)
    assert table1.paired_interval([0.1]) is None  # one seed has no spread to estimate
    assert table1.paired_interval([0.0, 0.0, 0.0]) is None  # every seed equal: no interval, not a zero-width one


def test_the_sign_test_is_the_exact_two_sided_binomial_tail(table1) -> None:
    assert table1.sign_test_p(5, 0) == pytest.approx(2 / 32)  # all five one way: 0.0625
    assert table1.sign_test_p(4, 1) == pytest.approx(2 * 6 / 32)  # 0.375
    assert table1.sign_test_p(0, 9) == pytest.approx(2 / 512)
    assert table1.sign_test_p(3, 3) == 1.0  # capped: an even split is no evidence either way
    assert table1.sign_test_p(0, 0) == 1.0  # every seed tied


def test_checkpoint_curve_summary_picks_like_the_loop_and_bounds_every_pick() -> None:
    import sys

    sys.path.insert(0, str(RUN_PY.parent))
    spec = importlib.util.spec_from_file_location("checkpoint_curve", RUN_PY.parent / "checkpoint_curve.py")
    curve = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(curve)
    cells = [
        # validation ties at 0.75 on checkpoints 1 and 2: the earlier is kept (test 0.5)
        {"valid": {"0": 0.5, "1": 0.75, "2": 0.75}, "test": {"0": 0.25, "1": 0.5, "2": 1.0}},
        # flat validation: the warm start is kept although the last checkpoint is better on test
        {"valid": {"0": 0.5, "1": 0.5, "2": 0.5}, "test": {"0": 0.0, "1": 0.75, "2": 0.5}},
    ]
    assert curve.summary(cells) == {
        "warm start": 12.5, "last checkpoint": 75.0, "validation pick": 25.0,
        "best test checkpoint (picked on test: a ceiling for any pick, not a method)": 87.5,
        "cells with flat validation": 1.0,
    }


def test_the_committed_cells_ran_on_the_pinned_base_pipeline(table1) -> None:
    # The report drops cells whose base digest differs, so an edit to base.yaml would silently
    # empty the committed table; the main job's own examples/default.yaml is free to change.
    committed = sorted((RUN_PY.parent / "results" / "cells" / f"p{table1.PROTOCOL}").glob("*.json"))
    assert committed
    digests = {json.loads(path.read_text())["base_sha256"] for path in committed}
    assert digests == {table1.base_sha256()}


def test_the_paired_interval_of_two_seeds_and_at_another_level(table1) -> None:
    # two seeds: t(0.975, df=1) = 12.706, mean 0.1, sd 0.1414, standard error 0.1
    low, high = table1.paired_interval([0.0, 0.2])
    assert (low, high) == pytest.approx((0.1 - 1.27062, 0.1 + 1.27062), abs=1e-4)
    # 90%: t(0.95, df=4) = 2.1318 on the five seeds above, standard error sqrt(0.005 / 5)
    low, high = table1.paired_interval([0.0, 0.1, 0.2, 0.1, 0.1], level=0.90)
    assert (low, high) == pytest.approx((0.1 - 2.13185 * 0.0316228, 0.1 + 2.13185 * 0.0316228), abs=1e-4)


def test_seeds_whose_means_differ_by_float_rounding_are_tied(table1) -> None:
    # a mean summed as 0.1 + 0.2 and one of 0.3 differ by about 6e-17 in floats: the same result
    table = {("coin", "a"): {0: {"success": 0.1 + 0.2}, 1: {"success": 0.5}, 2: {"success": 0.25}},
             ("coin", "b"): {0: {"success": 0.3}, 1: {"success": 0.25}, 2: {"success": 0.5}}}
    assert 0.1 + 0.2 != 0.3
    assert table1._seed_signs(table, "coin", "a", "b") == (1, 1, 1)


def test_a_seed_built_on_avx2_is_rebuilt_held_to_avx2_on_an_avx512_cpu(table1, monkeypatch) -> None:
    """A seed's rows start from its default-row cell's warm start, which only the same rounding
    rebuilds: on an AVX-512 CPU, a seed whose cells ran on AVX2 runs with the kernels held there."""
    _write(table1, "coin", "GRPO DreamGym", 5, 0.5, machine="x86_64, AMD EPYC, 2 cpus, avx2")
    _write(table1, "coin", "GRPO DreamGym", 6, 0.5, machine="x86_64, AMD EPYC, 2 cpus, avx512")
    _write(table1, "coin", "GRPO DreamGym", 7, 0.5, machine="x86_64, AMD EPYC, 2 cpus, avx2 (avx512 held to avx2)")
    monkeypatch.setattr(table1, "cpu_simd", lambda: "avx512")
    assert table1.kernel_env("coin", 5) == table1.kernel_env("coin", 7) == table1.HELD_TO_AVX2
    assert table1.kernel_env("coin", 6) == {}
    assert table1.kernel_env("coin", 8) == {}  # no cell yet: this CPU's own rounding
    assert table1.machine(held=True).endswith(", avx2 (avx512 held to avx2)")
    assert table1.simd_of(table1.machine(held=True)) == "avx2"
    for name, value in table1.HELD_TO_AVX2.items():  # held by hand, in this process's environment
        monkeypatch.setenv(name, value)
    assert table1.simd_of(table1.machine()) == "avx2"
    monkeypatch.setattr(table1, "cpu_simd", lambda: "avx2")  # an AVX2 CPU rounds so already
    assert table1.kernel_env("coin", 5) == {}
    assert table1.machine(held=True).endswith(", avx2")


def test_listed_action_rows_are_paired_with_their_own_sft_and_judged_apart(table1) -> None:
    for seed in (0, 1):
        _write(table1, "coin", "SFT", seed, 0.5)
        _write(table1, "coin", "GRPO DreamGym", seed, 0.5625)
        _write(table1, "coin", "SFT" + table1.LISTED, seed, 0.25)
        _write(table1, "coin", "GRPO DreamGym" + table1.LISTED, seed, 0.375)
    assert table1.ROWS["w/o retrieval" + table1.LISTED] == [*table1.ROWS["w/o retrieval"], "loop.action_choice=listed"]
    table = table1._cells(["coin"], [0, 1], table1.PROTOCOL)
    assert table1._targets("coin", table)[0].endswith("-> missed")  # +6.2 between the generating rows
    listed = table1._targets("coin", table, table1.LISTED)
    assert listed[0].startswith("- coin (listed actions): DreamGym >= SFT + 10: 37.5 vs 25.0") and listed[0].endswith("-> met")
    text = table1.report(["coin"], [0, 1])
    assert "| GRPO DreamGym (listed actions) | 37.5 ± 0.0 (n=2) | +12.5 | 0 |" in text  # vs its own SFT, not the generating one
    assert "The same targets between the rows whose policy picks among the listed actions:" in text


def test_checked_transition_rows_play_the_default_rows_experience_model(table1) -> None:
    # the check judges the model's answers in RL; it does not change how the model is trained
    for row in (table1.CHECKED, table1.CHECKED + table1.LISTED, table1.CORRECTED, table1.CORRECTED + table1.LISTED, table1.CORRECTED_S2R,
                table1.CORRECTED_REJECTING):
        assert "loop.check_transitions=true" in table1.ROWS[row] and row in table1.SHARES_MODEL and row in table1.DRAWN
    assert table1.sft_of(table1.CHECKED + table1.LISTED) == "SFT" + table1.LISTED and table1.sft_of(table1.CHECKED) == "SFT"
    # unlisted actions refused at every step: RL in the default row's experience model, judged against the writing SFT
    assert table1.ROWS[table1.REJECTING] == ["loop.reject_unlisted_actions=true"] and table1.REJECTING in table1.SHARES_MODEL
    assert table1.sft_of(table1.REJECTING) == "SFT"


def test_corrected_rows_carry_every_target_with_the_listed_sft_and_real_grpo(table1) -> None:
    # the ablations play their own row's experience model, with the default row's correction and listed actions
    suffix = table1.CORRECTED_SUFFIX
    assert table1.ROWS["w/o retrieval" + suffix] == [*table1.ROWS["w/o retrieval" + table1.LISTED], *table1.ROWS[table1.CORRECTED]]
    assert table1.MODEL_FROM["w/o reasoning" + suffix] == "w/o reasoning" and "w/o reasoning" + suffix not in table1.SHARES_MODEL
    assert "w/o curriculum" + suffix in table1.SHARES_MODEL and table1.sft_of("w/o retrieval" + suffix) == "SFT" + table1.LISTED
    for seed in (0, 1):
        _write(table1, "coin", "SFT" + table1.LISTED, seed, 0.5)
        _write(table1, "coin", "GRPO (real env)" + table1.LISTED, seed, 0.625, real=300.0)
        _write(table1, "coin", "GRPO DreamGym" + suffix, seed, 0.625)
        _write(table1, "coin", "w/o retrieval" + suffix, seed, 0.5625)
        _write(table1, "coin", "w/o curriculum" + suffix, seed, 0.625)  # level: not below
    lines = table1._targets("coin", table1._cells(["coin"], [0, 1], table1.PROTOCOL), suffix, table1.LISTED)
    verdict = {line.split(": ")[1]: line.rsplit("-> ", 1)[1] for line in lines}
    assert verdict == {
        "DreamGym >= SFT + 10": "met", "DreamGym within 10 of real GRPO": "met",
        "w/o retrieval below the full method": "met", "w/o curriculum below the full method": "missed",
    }
    assert lines[0].startswith(f"- coin{suffix}: DreamGym >= SFT + 10: 62.5 vs 50.0")
    assert "rows whose experience model's no-op answers are corrected" in table1.report(["coin"], [0, 1])


def test_no_variations_row_keeps_the_curriculum_but_never_plays_a_variation(table1) -> None:
    # lambda 0: seed tasks still drawn by reward variance, no synthetic task in any batch
    row = table1.NO_VARIATIONS
    assert table1.ROWS[row][: len(table1.ROWS[table1.CORRECTED + table1.LISTED])] == table1.ROWS[table1.CORRECTED + table1.LISTED]
    assert table1.ROWS[row][-1] == "curriculum.config={generator: domain, lambda: 0.0}"
    assert row in table1.SHARES_MODEL and table1.sft_of(row) == "SFT" + table1.LISTED


def test_uniform_seeds_row_is_the_full_corrected_method_with_seed_tasks_drawn_uniformly(table1) -> None:
    row = table1.UNIFORM_SEEDS
    assert table1.ROWS[row] == [*table1.ROWS[table1.CORRECTED + table1.LISTED], "curriculum.config={generator: domain, seed_sampling: uniform}"]
    assert row in table1.SHARES_MODEL and row in table1.DRAWN and table1.sft_of(row) == "SFT" + table1.LISTED


def test_both_halves_off_row_draws_as_the_uniform_plugin_does(table1) -> None:
    row = table1.BOTH_OFF
    assert table1.ROWS[row][-1] == "curriculum.config={generator: domain, lambda: 0.0, seed_sampling: uniform}"
    assert row in table1.SHARES_MODEL and table1.sft_of(row) == "SFT" + table1.LISTED


def test_choice_trained_rows_change_only_the_grpo_update_of_the_base_algo_config(table1) -> None:
    algo = yaml.safe_load(table1.BASE.read_text())["algo"]
    assert algo["name"] == "grpo"
    override = yaml.safe_load(table1.CHOICE_ALGO.split("=", 1)[1])
    assert override == {**algo["config"], "listed_update": "choice"}  # the same lr and batch as the rows it is compared with
    assert table1.ROWS[table1.CORRECTED_CHOICE] == [*table1.ROWS[table1.CORRECTED + table1.LISTED], table1.CHOICE_ALGO]
    assert table1.ROWS[table1.REAL_CHOICE] == [*table1.ROWS["GRPO (real env)" + table1.LISTED], table1.CHOICE_ALGO]
    assert table1.CORRECTED_CHOICE in table1.SHARES_MODEL and table1.REAL_CHOICE not in table1.DRAWN
    assert {table1.sft_of(table1.CORRECTED_CHOICE), table1.sft_of(table1.REAL_CHOICE)} == {"SFT" + table1.LISTED}


def test_real_demos_rows_add_only_the_real_only_buffer_and_resolve(table1) -> None:
    from dreamgym_core.config import load_pipeline

    for row, repeated in ((table1.CORRECTED_REAL_DEMOS, table1.CORRECTED + table1.LISTED), (table1.CORRECTED_LONGER_REAL_DEMOS, table1.CORRECTED_LONGER)):
        assert table1.ROWS[row] == [*table1.ROWS[repeated], "loop.store_synthetic=false"]
        assert row in table1.SHARES_MODEL and table1.sft_of(row) == "SFT" + table1.LISTED
        loop = load_pipeline(str(table1.BASE), table1.ROWS[row]).loop
        assert loop.store_synthetic is False and loop.action_choice == "listed" and loop.implausible_answers == "correct"
    for ablation in ("w/o reasoning", "w/o curriculum"):
        row = ablation + table1.REAL_DEMOS_SUFFIX
        assert table1.ROWS[row] == [*table1.ROWS[ablation + table1.CORRECTED_SUFFIX], "loop.store_synthetic=false"]
        assert table1.MODEL_FROM[row] == ablation  # each plays its own row's experience model
        assert (row in table1.SHARES_MODEL) == (ablation in table1.SHARES_MODEL)


def test_a_cell_missing_a_value_stops_the_report_instead_of_counting_zero(table1) -> None:
    # `or 0` read a missing success as 0% and missing real transitions as 0, which met the S2R
    # target's "at most 1/10" by itself
    for seed in (0, 1):
        _write(table1, "coin", "SFT", seed, 0.5)
        _write(table1, "coin", "GRPO (real env)", seed, 0.6, real=300.0)
    _write(table1, "coin", "GRPO DreamGym", 0, 0.6)
    _write(table1, "coin", "GRPO DreamGym", 1, None)
    table = table1._cells(["coin"], [0, 1], table1.PROTOCOL)
    with pytest.raises(SystemExit, match=r"coin \| GRPO DreamGym \| seed 1: the cell records no 'success'"):
        table1._pair(table, "coin", "GRPO DreamGym", "SFT")


def test_a_fidelity_mean_some_seeds_lack_says_on_how_many_it_rests(table1) -> None:
    _write(table1, "coin", "GRPO DreamGym", 0, 0.6, fidelity={"fidelity/success_agreement": 0.9, "fidelity/success_balanced_accuracy": 0.8})
    _write(table1, "coin", "GRPO DreamGym", 1, 0.6, fidelity={"fidelity/success_agreement": 1.0})
    text = table1.report(["coin"], [0, 1])
    assert "- coin fidelity/success_agreement: 0.950\n" in text
    assert "- coin fidelity/success_balanced_accuracy: 0.800 (1 of 2 seeds)" in text


def test_a_rebuilt_donor_matches_its_cell_up_to_the_unparsable_answers_now_counted_wrong(table1) -> None:
    cached = {"warmstart_success": 0.5, "fidelity": {"fidelity/n": 60.0, "fidelity/parse_failed": 0.05,
                                                      "fidelity/success_agreement": 0.95}}
    first = {"eval_before/success_rate": 0.5, "fidelity/n": 60.0, "fidelity/parse_failed": 0.05}
    assert table1.same_before_rl({**first, "fidelity/success_agreement": 0.95}, cached)
    assert table1.same_before_rl({**first, "fidelity/success_agreement": 0.9}, cached)  # all three failed answers matched
    assert not table1.same_before_rl({**first, "fidelity/success_agreement": 0.8833}, cached)
    assert not table1.same_before_rl({**first, "fidelity/success_agreement": 0.9667}, cached)
    assert not table1.same_before_rl({**first, "eval_before/success_rate": 0.53125, "fidelity/success_agreement": 0.95}, cached)
    assert not table1.same_before_rl({**first, "fidelity/parse_failed": 0.0333, "fidelity/success_agreement": 0.95}, cached)
    no_model = {"warmstart_success": 0.5, "fidelity": {}}
    assert table1.same_before_rl({"eval_before/success_rate": 0.5}, no_model)


def test_every_committed_cell_is_read_by_its_protocols_report(table1, monkeypatch) -> None:
    # Protocols 1-3 ran on other base pipelines than base.yaml: requiring base.yaml's digest of every
    # protocol dropped all their cells. The current protocol's cells also match their rows' overrides.
    monkeypatch.setattr(table1, "CELLS", RUN_PY.parent / "results" / "cells")
    for protocol in range(1, table1.PROTOCOL + 1):
        cells = [json.loads(path.read_text()) for path in sorted((table1.CELLS / f"p{protocol}").glob("*.json"))]
        assert cells
        unread = [c for c in cells if table1.current(c["game"], c["row"], c["seed"], protocol, c.get("draw", 0)) is None]
        assert not unread, f"protocol {protocol}: {len(unread)} of {len(cells)} cells left out"
    assert set(table1.EARLIER_BASES) == set(range(1, table1.PROTOCOL))  # a bumped protocol records its base


@pytest.mark.parametrize("protocol", range(2, 9))  # protocol 1's table has the first report's columns
def test_an_earlier_protocols_table_is_rebuilt_from_its_committed_cells(table1, monkeypatch, protocol) -> None:
    monkeypatch.setattr(table1, "CELLS", RUN_PY.parent / "results" / "cells")
    committed = (RUN_PY.parent / "results" / f"table1-p{protocol}.md").read_text()
    command = committed.splitlines()[2]  # Produced by `python benchmarks/table1/run.py --games ... --seeds ...`;
    games = re.search(r"--games (.+?) --seeds", command).group(1).split()
    seeds = [int(s) for s in re.search(r"--seeds ([\d ]+)`", command).group(1).split()]
    rows = lambda text: [line for line in text.splitlines() if line.startswith("| ")]  # noqa: E731
    assert rows(table1.report(games, seeds, protocol)) == rows(committed)


def test_a_report_of_no_cells_writes_no_table(table1, monkeypatch, tmp_path) -> None:
    # `--report --protocol 2` found no cell it accepted and wrote an empty table over the committed one
    out = tmp_path / "table.md"
    for protocol in (table1.PROTOCOL, 2):
        monkeypatch.setattr(sys, "argv", ["run.py", "--games", "coin", "--seeds", "0", "--report", "--protocol", str(protocol), "--out", str(out)])
        with pytest.raises(SystemExit, match=f"no cells of protocol {protocol} on base pipeline") as stopped:
            table1.main()
        assert stopped.value.code != 0 and not out.exists()


def test_a_current_cell_recorded_with_other_overrides_is_not_reused(table1) -> None:
    row = "GRPO DreamGym-S2R"
    _write(table1, "coin", row, 0, 0.5)
    _write(table1, "coin", row, 1, 0.5, overrides=sorted(table1.overrides("coin", row, 1, RUN_DIR), reverse=True))
    stale = [item.replace("loop.real_budget=32", "loop.real_budget=320") for item in table1.overrides("coin", row, 2, RUN_DIR)]
    _write(table1, "coin", row, 2, 0.5, overrides=stale)
    _write(table1, "coin", row, 3, 0.5, overrides=table1.overrides("coin", row, 3, RUN_DIR)[:-1])  # no run_dir
    assert table1.current("coin", row, 0) is not None
    assert table1.current("coin", row, 1) is not None  # the same settings in another order
    assert table1.current("coin", row, 2) is None and table1.current("coin", row, 3) is None
    assert list(table1._cells(["coin"], [0, 1, 2, 3], table1.PROTOCOL)[("coin", row)]) == [0, 1]


def test_a_draw_missing_a_value_stops_the_report_instead_of_taking_draw_0s(table1) -> None:
    # the seed kept draw 0's value for a number one draw lacked: 0 real transitions for draws 0, None and 30
    for draw, real in enumerate([0.0, None, 30.0]):
        _write(table1, "coin", "GRPO DreamGym", 1, 0.5, draw=draw, real=real)
    with pytest.raises(SystemExit, match=r"coin \| GRPO DreamGym \| seed 1 draw1: the cell records no 'real_transitions'"):
        table1._cells(["coin"], [1], table1.PROTOCOL, draws=(0, 1, 2))
    _write(table1, "coin", "GRPO DreamGym", 2, None, draw=0)  # draw 0 lacking it: the others' mean was not taken either
    for draw in (1, 2):
        _write(table1, "coin", "GRPO DreamGym", 2, 0.5, draw=draw)
    with pytest.raises(SystemExit, match=r"coin \| GRPO DreamGym \| seed 2: the cell records no 'success'"):
        table1._cells(["coin"], [2], table1.PROTOCOL, draws=(0, 1, 2))


def test_a_cell_missing_its_real_transitions_stops_the_table_instead_of_counting_zero(table1) -> None:
    _write(table1, "coin", "SFT", 0, 0.5)
    _write(table1, "coin", "GRPO (real env)", 0, 0.6, real=None)
    with pytest.raises(SystemExit, match=r"coin \| GRPO \(real env\) \| seed 0: the cell records no 'real_transitions'"):
        table1.report(["coin"], [0])


def test_vs_sft_gives_its_own_n_where_sft_lacks_some_of_the_rows_seeds(table1) -> None:
    # results/table1-p8-coin-3-seeds0-19.md: "57.3 (n=20) | +2.8" was a difference over 10 seeds
    for seed in (0, 1, 2):
        _write(table1, "coin", "GRPO DreamGym", seed, 0.625)
        _write(table1, "coin", "w/o retrieval", seed, 0.5)
    for seed in (0, 1):
        _write(table1, "coin", "SFT", seed, 0.5)
    _write(table1, "coin", "SFT", 3, 0.5)
    text = table1.report(["coin"], [0, 1, 2, 3])
    assert "| SFT | 50.0 ± 0.0 (n=3) | +0.0 | 0 |" in text
    assert "| GRPO DreamGym | 62.5 ± 0.0 (n=3) | +12.5 (n=2) | 0 |" in text
    assert "| w/o retrieval | 50.0 ± 0.0 (n=3) | +0.0 (n=2) | 0 |" in text
