"""verl's logged metrics become DreamGym rows while verl writes them."""

from __future__ import annotations

import json
import threading

import pytest

from dreamgym_core.errors import DataError
from dreamgym_core.rollout import wilson_interval
from dreamgym_plugin_verl.metrics import MetricRows, MetricsFollower, held_out_metrics
from dreamgym_plugin_verl.trainer import run_alongside


def verl_validation(successes: list[float]) -> dict[str, float]:
    """The metrics verl's V1 trainer computes for a validation of DreamGym's agent loop
    (its own ``_val_metrics_update`` on the agent loop's reward extra info)."""
    from verl.trainer.ppo.v1.trainer_base import PPOTrainer

    n = len(successes)
    infos = {"reward": [s - 0.1 for s in successes], "success": successes, "episode_steps": [4.0] * n}
    return PPOTrainer._val_metrics_update(None, ["dreamgym/twx"] * n, [f"u{i}" for i in range(n)], infos, [8] * n)


def test_held_out_success_is_read_from_verls_own_validation_metrics():
    metrics = held_out_metrics(verl_validation([1.0, 0.0, 1.0, 1.0]), prefix="eval", tasks=4)
    assert metrics["eval/success_rate"] == 0.75 and metrics["eval/episodes"] == 4.0
    assert (metrics["eval/success_ci_low"], metrics["eval/success_ci_high"]) == pytest.approx(wilson_interval(3, 4))
    assert metrics["eval/episode_length"] == 4.0
    assert held_out_metrics({"val-core/dreamgym/twx/reward/mean@1": 0.9}, prefix="eval", tasks=4) == {}


def test_rows_count_like_the_local_loop():
    rows = MetricRows(iterations=3, eval_tasks=2)
    assert rows({"step": 0, "data": verl_validation([0.0, 1.0])})[0]["eval_before/success_rate"] == 0.5
    first = rows({"step": 1, "data": {"actor/pg_loss": 0.3, "critic/score/mean": float("nan"), "timing_s/step": 2}})
    assert first == [{
        "step": 0, "losses/policy_loss": 0.3, "verl/actor/pg_loss": 0.3, "charts/episodic_return": None,
        "verl/critic/score/mean": None, "perf/iteration_seconds": 2.0, "verl/timing_s/step": 2.0,
    }]
    middle = rows({"step": 2, "data": {"timing_s/step": 2} | verl_validation([1.0, 1.0])})  # a user's trainer.test_freq
    assert middle[0]["step"] == 1 and middle[0]["valid/success_rate"] == 1.0
    last = rows({"step": 3, "data": {"actor/pg_loss": 0.1, "timing_s/step": 2} | verl_validation([1.0, 0.0])})
    assert [r["step"] for r in last] == [2, 3]
    assert "eval/success_rate" not in last[0] and last[1]["eval/success_rate"] == 0.5
    no_validation = rows({"step": 3, "data": {"actor/pg_loss": 0.1, "timing_s/step": 2}})
    assert [r["step"] for r in no_validation] == [2]


def test_validation_before_a_resumed_run_is_not_a_training_step():
    """verl (trainer.resume_mode=auto) validates before its first resumed step, logged at the
    step it resumes from: that row holds validation only."""
    resumed = MetricRows(iterations=5, eval_tasks=2)({"step": 2, "data": verl_validation([1.0, 0.0])})
    assert resumed == [{"step": 1, **held_out_metrics(verl_validation([1.0, 0.0]), prefix="valid", tasks=2)}]
    assert "perf/iteration_seconds" not in resumed[0]  # so dreamgym_after_iteration does not fire for it


def test_follower_reads_only_complete_lines_and_appends_rows(tmp_path):
    source, sink = tmp_path / "verl.jsonl", tmp_path / "metrics.jsonl"
    seen: list[int] = []
    follower = MetricsFollower(source, sink, convert=MetricRows(iterations=5, eval_tasks=1), on_row=lambda r: seen.append(r["step"]))
    assert follower.poll() == []  # verl has not opened its file yet
    first, second = (json.dumps({"step": step, "data": {"actor/pg_loss": 0.5}}) for step in (1, 2))
    source.write_text(first + "\n" + second[:12])  # the second line is still being written
    assert [r["step"] for r in follower.poll()] == [0]
    with source.open("a") as f:
        f.write(second[12:] + "\n")
    assert [r["step"] for r in follower.poll()] == [1] and follower.poll() == []
    assert seen == [0, 1] and [json.loads(x)["step"] for x in sink.read_text().splitlines()] == [0, 1]


def test_a_corrupt_metrics_line_is_named_and_keeps_the_rows_already_written(tmp_path):
    source, sink = tmp_path / "verl.jsonl", tmp_path / "metrics.jsonl"
    source.write_text(json.dumps({"step": 1, "data": {"actor/pg_loss": 0.5}}) + "\n")
    follower = MetricsFollower(source, sink, convert=MetricRows(iterations=5, eval_tasks=1))
    follower.poll()
    with source.open("a") as f:
        f.write("{not json\n")
    with pytest.raises(DataError, match=r"verl.jsonl line 2: not a JSON metrics record"):
        follower.poll()
    assert len(sink.read_text().splitlines()) == 1


def test_run_alongside_ticks_while_the_work_runs_and_once_after():
    started, release = threading.Event(), threading.Event()
    ticks: list[bool] = []

    def work() -> None:
        started.set()
        release.wait(10)

    def tick() -> None:
        ticks.append(release.is_set())
        if started.is_set() and len(ticks) >= 2:
            release.set()

    run_alongside(work, tick=tick, every=0.01)
    assert ticks[0] is False and ticks[-1] is True


def test_run_alongside_ticks_once_when_the_work_was_done_before_its_first_look(monkeypatch):
    """A work that ended before the first is_alive() was never ticked: a short run's rows were not
    copied to metrics.jsonl (seen under load in a verl resume test). The thread here finishes
    within start()."""
    def start_and_finish(self) -> None:
        self.run()

    monkeypatch.setattr(threading.Thread, "start", start_and_finish)
    ticks: list[int] = []
    run_alongside(lambda: None, tick=lambda: ticks.append(1), every=0.01)
    assert ticks == [1]


def test_run_alongside_raises_the_works_error_here():
    def work() -> None:
        raise RuntimeError("verl's trainer failed")

    with pytest.raises(RuntimeError, match="verl's trainer failed"):
        run_alongside(work, tick=lambda: None, every=0.01)


def test_after_iteration_fires_for_training_steps_only():
    from dreamgym_plugin_verl.trainer import _after_row, _Progress

    fired: list[int] = []

    class Hook:
        def dreamgym_after_iteration(self, iteration, metrics):
            fired.append(iteration)

    rows = MetricRows(iterations=3, eval_tasks=2)
    logged = [
        {"step": 0, "data": verl_validation([0.0, 1.0])},  # before training
        {"step": 1, "data": {"actor/pg_loss": 0.3, "timing_s/step": 2}},
        {"step": 1, "data": verl_validation([1.0, 1.0])},  # validation before a resume from step 1
        {"step": 2, "data": {"actor/pg_loss": 0.2, "timing_s/step": 2}},
        {"step": 3, "data": {"actor/pg_loss": 0.1, "timing_s/step": 2} | verl_validation([1.0, 0.0])},
    ]
    for line in logged:
        for row in rows(line):
            _after_row(Hook(), _Progress(3), row)
    assert fired == [0, 1, 2]


def test_progress_lines_are_left_out_of_a_quiet_run(capsys):
    from dreamgym_plugin_verl.trainer import _Progress

    _Progress(3, shown=False).say("collecting offline real data")
    assert capsys.readouterr().err == ""
    _Progress(3).say("collecting offline real data")
    assert capsys.readouterr().err.endswith("s] collecting offline real data\n")


def test_the_follower_does_not_append_through_a_planted_link(tmp_path):
    """The run's metrics.jsonl, linked by someone else to another file, is refused, not appended to."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    source, sink = tmp_path / "verl.jsonl", tmp_path / "metrics.jsonl"
    sink.symlink_to(victim)
    source.write_text(json.dumps({"step": 1, "data": {"actor/pg_loss": 0.5}}) + "\n")
    follower = MetricsFollower(source, sink, convert=MetricRows(iterations=5, eval_tasks=1))
    with pytest.raises(DataError, match="metrics.jsonl: a symbolic link"):
        follower.poll()
    assert victim.read_text() == "precious\n"
