"""A reduced version of the README's main job, on the real engine and real models:
collect -> buffer -> annotate -> joint SFT -> warm start -> GRPO in DreamGym -> evaluate.
Minutes, not the full budget: it proves the pipeline, not the learning (benchmarks do)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import open_run_buffer, reduced_args, run_cli, run_cli_in_process, stored_transitions

pytest.importorskip("dreamgym_plugin_textworld")
pytest.importorskip("dreamgym_plugin_hf")
pytest.importorskip("dreamgym_plugin_local")


# Two reduced runs that several tests read (a reduced run costs about a minute); tests that read
# them write only outside their run directories.
@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """The reduced main job, measuring its experience model (synthetic agreement, fidelity), run
    as the README's command runs it: in a process of its own."""
    run_dir = tmp_path_factory.mktemp("measured") / "run"
    args = reduced_args(run_dir, "eval.synthetic_agreement=true", "eval.fidelity_episodes=2")
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    return args, result, run_dir


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """The same job measuring nothing, with a sampling final evaluation."""
    run_dir = tmp_path_factory.mktemp("plain") / "run"
    args = reduced_args(run_dir, "eval.synthetic_agreement=false", "eval.fidelity_episodes=0", "eval.temperature=0.5")
    result = run_cli_in_process(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    return args, result, run_dir


def test_reduced_main_job_then_resume_and_eval(measured, tmp_path):
    args, result, run_dir = measured
    summary = json.loads(result.stdout)
    assert summary["eval/episodes"] == 4.0
    # the same 4 test tasks replayed in the synthetic environment: outcomes can agree at most
    # as often as the two success rates allow
    real, imagined = summary["eval/success_rate"], summary["eval/synthetic_success_rate"]
    assert 0.0 <= summary["eval/synthetic_agreement"] <= 1.0 - abs(real - imagined) + 1e-9
    assert summary["counters/real_transitions"] == 0.0  # DreamGym mode: no real RL transitions
    rows = _metric_rows(run_dir)
    assert summary["counters/synthetic_transitions"] == _played(rows, synthetic=True)
    assert sum(r.get("rollout/steps", 0) for r in rows) > 0  # episodes were played (their steps may all be unparsable)
    assert summary["counters/offline_transitions"] > 0
    assert "training the experience model" in result.stderr  # progress is visible
    assert "experience model epoch 1/1: loss" in result.stderr
    assert f"report: {run_dir / 'report.md'}" in result.stderr  # the last progress line says where to look
    assert "Writing model shards" not in result.stderr and "Loading weights" not in result.stderr
    offline = [json.loads(line) for line in (run_dir / "offline.jsonl").read_text().splitlines()]
    assert sum("/explore/" in t["transitions"][0]["episode_id"] for t in offline) == 2
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert "eval_untrained/success_rate" in rows[0] and "experience/sft_loss" in rows[0]
    assert any("experience/parse_failure_rate" in r for r in rows[1:])
    report = (run_dir / "report.md").read_text()
    assert "| untrained |" in report and "| after RL |" in report
    assert "- after RL: synthetic success" in report
    assert list((run_dir / "tensorboard").iterdir())
    # --resume of a finished run plays nothing and writes nothing; eval reads the last checkpoint
    written = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    resumed = run_cli_in_process(*args, "--resume")
    assert resumed.returncode == 0 and json.loads(resumed.stdout) == summary, resumed.stderr[-2000:]
    assert resumed.stderr.splitlines() == [
        f"[dreamgym] {run_dir}: the run is already complete (summary.json); nothing to resume. 'dreamgym eval' evaluates its policy again"
    ]
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()} == written
    played = tmp_path / "played.jsonl"
    evaluated = run_cli_in_process("eval", *args[1:], "--episodes", "2", "--trajectories", str(played))
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert json.loads(evaluated.stdout)["checkpoint_iteration"] == 2
    episodes = [json.loads(line) for line in played.read_text().splitlines()]
    assert [e["task"]["split"] for e in episodes] == ["test", "test"]
    earlier = run_cli_in_process("eval", *args[1:], "--episodes", "1", "--checkpoint", "1")
    assert earlier.returncode == 0 and json.loads(earlier.stdout)["checkpoint_iteration"] == 1, earlier.stderr[-2000:]
    # the learning curve plays each checkpoint as eval --checkpoint does, in one process
    plot = tmp_path / "curve.png"
    curve = run_cli_in_process("curve", *args[1:], "--episodes", "1", "--checkpoint", "0", "--checkpoint", "1", "--plot", str(plot))
    assert curve.returncode == 0, curve.stderr[-2000:]
    rows = json.loads(curve.stdout)["curve"]
    alone = {k: v for k, v in json.loads(earlier.stdout).items() if k not in ("run_dir", "eval/policy_iteration")}
    assert [row["checkpoint_iteration"] for row in rows] == [0, 1] and rows[1] == alone
    assert plot.read_bytes().startswith(b"\x89PNG")
    nowhere = run_cli_in_process("curve", *args[1:], "--plot", str(tmp_path / "no" / "curve.png"))
    assert nowhere.returncode != 0
    assert nowhere.stderr.strip().splitlines()[-1] == f"Error: --plot {tmp_path / 'no' / 'curve.png'}: its directory {tmp_path / 'no'} does not exist"
    missing = run_cli_in_process("eval", *args[1:], "--episodes", "1", "--checkpoint", "9")
    assert missing.returncode != 0
    assert missing.stderr.strip().splitlines()[-1] == (
        f"Error: {run_dir / 'checkpoints'}: no checkpoint of iteration 9 (it holds iterations 0, 1, 2; loop.keep_checkpoints prunes old ones)"
    )


KILLER = """
import os, signal
from dreamgym_core import hookimpl

@hookimpl
def dreamgym_after_iteration(iteration, metrics):
    if iteration == int(os.environ.get("KILL_AT_ITERATION", "-1")):
        os.kill(os.getpid(), signal.SIGKILL)
"""


def _metric_rows(run_dir):
    return [
        {k: v for k, v in json.loads(line).items() if not k.startswith("perf/")}
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
    ]


def _played(rows, *, synthetic: bool) -> float:
    """The RL steps an environment played (real or synthetic): every step less the notes that
    end an episode whose policy output held no action, which no environment saw."""
    return sum(
        r["rollout/steps"] - r["errors/rollout_unparsed_actions"]
        for r in rows if "rollout/steps" in r and r["charts/synthetic_phase"] == float(synthetic)
    )


def test_sigkilled_dreamgym_run_resumes_to_the_same_metrics(tmp_path):
    """Real components end to end; a plugin SIGKILLs the run after iteration 2, between two
    checkpoints, when the buffer has already written that iteration's transitions to disk
    (flush_every 1). The run directory is moved, and the resume plays iteration 2 again from checkpoint it-2, after rolling
    the buffer back to it; metrics.jsonl keeps one row per iteration. (tests/test_loop.py
    checks the rolled-back contents; here the reduced models barely use retrieval.)"""
    from conftest import build_plugin_package

    site = build_plugin_package(tmp_path, "dreamgym-plugin-killer", "dreamgym_plugin_killer", KILLER, {"killer": "dreamgym_plugin_killer"})

    def run(run_dir, kill_at, *extra):
        args = reduced_args(
            run_dir, "loop.iterations=4", "loop.checkpoint_every=2", "buffer.config={flush_every: 1}",
            "eval.before_training=false", "plugins=[textworld, hf, local, encoders, exact, reward-entropy, killer]",
        )  # fmt: skip
        return run_cli(*args, *extra, site=site, env={"KILL_AT_ITERATION": str(kill_at)})

    whole = run(tmp_path / "whole", -1)
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed = run(tmp_path / "killed", 2)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert [r["step"] for r in _metric_rows(tmp_path / "killed")] == [-1, 0, 1, 2]
    # What iteration 2 stored after checkpoint it-2 must be forgotten. The reduced policy's
    # unparsable outputs are not stored (error notes, not experience), so there may be none.
    latest = tmp_path / "killed" / "checkpoints" / (tmp_path / "killed" / "checkpoints" / "latest").read_text()
    at_checkpoint = json.loads((latest / "state.json").read_text())["buffer_position"]
    with open_run_buffer(tmp_path / "killed") as buffer:
        stored_since = buffer.position - at_checkpoint
    # resumed after a move: nothing in a run directory may depend on where it lives
    shutil.move(tmp_path / "killed", tmp_path / "moved")
    resumed = run(tmp_path / "moved", -1, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert ("replay buffer rolled back to the checkpoint" in resumed.stderr) == (stored_since > 0)
    assert [r["step"] for r in _metric_rows(tmp_path / "moved")] == [-1, 0, 1, 2, 3, 4]
    assert _metric_rows(tmp_path / "moved") == _metric_rows(tmp_path / "whole")
    assert json.loads(resumed.stdout) | {"run_dir": ""} == json.loads(whole.stdout) | {"run_dir": ""}
    assert stored_transitions(tmp_path / "moved") == stored_transitions(tmp_path / "whole")


@pytest.mark.parametrize("mode", ["real", "s2r"])
def test_short_run_in_each_mode_counts_real_transitions(tmp_path, mode):
    args = reduced_args(tmp_path / "run", f"loop.mode={mode}", "eval.before_training=false", "loop.iterations=2")
    if mode == "real":  # the real-env baselines: no experience model is trained or scored
        args += ["--set", "experience.skip=true", "--set", "eval.fidelity_episodes=2"]
    else:  # s2r's own settings, refused in other modes
        args += ["--set", "loop.s2r_synthetic_share=0.5", "--set", "loop.real_budget=9"]
    result = run_cli_in_process(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    rows = _metric_rows(tmp_path / "run")
    phases = [r["charts/synthetic_phase"] for r in rows if 0 <= r["step"] < 2]
    assert phases == ([0.0, 0.0] if mode == "real" else [1.0, 0.0])
    assert summary["counters/real_transitions"] == _played(rows, synthetic=False)
    if mode == "real":
        assert not [k for k in rows[0] if k.startswith(("fidelity/", "experience/"))]
    if mode == "s2r":
        assert summary["counters/synthetic_transitions"] == _played(rows, synthetic=True)
        # A budget of 9 fits one group of 2 episodes of at most 3 steps, not the iteration's 2 groups.
        assert [r["rollout/episodes"] for r in rows if r["step"] == 1] == [2.0]
        assert summary["counters/real_transitions"] <= 9


def test_a_finished_warm_start_in_the_run_dir_is_reused(tmp_path):
    # Benchmarks copy one seed's warm-started policy into every row's run directory so that
    # all methods start RL from the same weights; a run must then skip its own SFT.
    from safetensors.torch import load_file

    def run(run_dir, *extra):
        # loop.iterations=0 after the reduced job's own (the last --set wins): no RL is needed here
        args = reduced_args(run_dir, "loop.mode=real", "experience.skip=true", "eval.before_training=false",
                            "loop.iterations=0", *extra)
        result = run_cli_in_process(*args)
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    donor, reuser = tmp_path / "donor", tmp_path / "reuser"
    first = run(donor)
    assert "warm-starting the policy" in first.stderr and (donor / "policy_init" / "done").exists()
    reuser.mkdir()
    for name in ("offline.jsonl", "policy_init"):
        (shutil.copytree if name == "policy_init" else shutil.copy)(donor / name, reuser / name)
    second = run(reuser, "loop.warmstart_epochs=3")  # would train differently if it trained
    assert "reusing the warm-started policy" in second.stderr and "warm-starting" not in second.stderr
    # it reports the warm start it reused (the donor's training), not one of its own
    donor_warmstart = {k: v for k, v in _metric_rows(donor)[0].items() if k.startswith("warmstart/")}
    assert donor_warmstart and {k: v for k, v in _metric_rows(reuser)[0].items() if k.startswith("warmstart/")} == donor_warmstart
    def weights(path):  # tied embeddings are saved under either name
        return {k.replace("lm_head.", "model.embed_tokens."): v for k, v in load_file(str(path)).items()}

    donor_weights = weights(donor / "policy_init" / "model.safetensors")
    used = weights(reuser / "checkpoints" / "it-00000" / "algo" / "policy.safetensors")
    assert donor_weights.keys() == used.keys()
    assert all(torch.equal(donor_weights[k], used[k]) for k in used)


def test_warm_start_keeps_the_best_validation_epoch(tmp_path):
    # Real TextWorldExpress validation games scored after each of 3 SFT epochs; the run keeps
    # the best epoch's weights as its warm start and reports which epoch that was.
    run_dir = tmp_path / "run"
    args = reduced_args(run_dir, "loop.mode=real", "experience.skip=true", "loop.iterations=0", "loop.warmstart_epochs=3")
    result = run_cli_in_process(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if "warm start epoch" in line]
    assert [line.split("warm start epoch ")[1][:3] for line in lines] == ["1/3", "2/3", "3/3"]
    first = _metric_rows(run_dir)[0]
    scores = [float(line.split("valid success ")[1][:5]) for line in lines]
    assert first["warmstart/best_epoch"] == 1 + scores.index(max(scores))
    assert first["warmstart/valid_success"] == max(scores) and first["warmstart/valid_success_last"] == scores[-1]
    assert not (run_dir / "policy_warmstart_best").exists() and (run_dir / "policy_init" / "done").exists()


@pytest.fixture(scope="module")
def branched(tmp_path_factory):
    """Early experience and branch transitions in one reduced DreamGym run: branch transitions
    from the real engine at the demos' states, one epoch of implicit world modelling on them,
    the imitation warm start with self-reflections in the demos' <think>, and the branches in
    the replay buffer and the experience model's SFT data."""
    run_dir = tmp_path_factory.mktemp("branched") / "run"
    args = reduced_args(
        run_dir, "loop.iterations=1", "data.branch_actions=2", "experience.branches=true", "eval.fidelity_episodes=0",
        "loop.world_model_epochs=1", "loop.self_reflection=rule", "algo.config.max_new_tokens=96",
    )  # fmt: skip
    result = run_cli_in_process(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    return result, run_dir


def test_early_experience_world_modelling_comes_before_the_warm_start(branched):
    # the branches are real data the report counts
    result, run_dir = branched
    branches = (run_dir / "branches.jsonl").read_text().splitlines()
    assert len(branches) > 0 and all(json.loads(line)["source"] == "offline" for line in branches)
    said = result.stderr
    assert f"{len(branches)} branch transitions at the states of" in said
    assert said.index("implicit world modelling: ") < said.index("warm start epoch 1/1")
    thinking, steps = said.split("self-reflection: ")[1].split(" demo steps")[0].split(" of ")
    assert 0 < int(thinking) <= int(steps)
    first = _metric_rows(run_dir)[0]
    assert first["world_model/examples"] > 0 and first["world_model/sft_loss"] > 0
    report = (run_dir / "report.md").read_text()
    assert f"- branch transitions: {len(branches)}" in report and "world_model/sft_loss" in report


def test_branch_transitions_seed_the_buffer_and_train_the_experience_model(branched):
    # experience.branches: the real engine's branch transitions join the replay buffer after the
    # offline episodes (the buffer drops content it holds already), and the joint SFT data
    # (offline_annotated.jsonl), with the rule-based reasoning of any other real transition.
    result, run_dir = branched
    offline = [json.loads(line) for line in (run_dir / "offline.jsonl").read_text().splitlines()]
    offline_steps = sum(len(episode["transitions"]) for episode in offline)
    branches = [json.loads(line) for line in (run_dir / "branches.jsonl").read_text().splitlines()]
    assert branches
    stored = [json.loads(t) for t in stored_transitions(run_dir)]
    content = [(t["state"], t["action"], t["next_state"]) for t in stored]
    assert {(b["state"], b["action"], b["next_state"]) for b in branches} <= set(content)
    is_branch = ["/branch" in t["episode_id"] for t in stored]
    assert any(is_branch) and is_branch == sorted(is_branch)  # offline episodes first, then branches
    trained = [json.loads(line) for line in (run_dir / "offline_annotated.jsonl").read_text().splitlines()]
    assert len(trained) == offline_steps + len(branches)
    assert all(t["reasoning"] for t in trained[offline_steps:])
    assert f"seeding the buffer with {offline_steps + len(branches)} real transitions" in result.stderr


def _rl_rows(run_dir, *measurements):
    return [
        {k: v for k, v in row.items() if not k.startswith(("perf/", "eval", *measurements))}
        for row in _metric_rows(run_dir) if row["step"] >= 0
    ]


def test_measuring_the_experience_model_leaves_rl_unchanged(measured, plain, tmp_path):
    """Fidelity scoring and the synthetic replay of the warm start call the experience model
    before RL. They draw from streams of their own, so a run that measures and one that does
    not play the same synthetic episodes and store the same transitions; the evaluations'
    sampling (the plain run's temperature 0.5) draws from streams of its own too. (The reduced
    job's one-epoch policy writes mostly unparsable actions, so its RL seldom calls the model:
    this catches measurements leaking into RL's counters; test_loop.py's dice experience model
    checks the synthetic draws themselves.)"""
    _, _, run_dir = measured
    assert "eval_before/synthetic_agreement" in _metric_rows(run_dir)[0]
    assert "fidelity/success_agreement" in _metric_rows(run_dir)[0]
    assert not [k for k in _metric_rows(plain[2])[0] if k.startswith("fidelity/") or k.endswith("synthetic_agreement")]
    assert _rl_rows(run_dir, "fidelity/") == _rl_rows(plain[2], "fidelity/")
    assert stored_transitions(run_dir) == stored_transitions(plain[2])
    # eval-model on the run's own config, held-out set, demos and weights repeats its fidelity numbers
    # and its unparsable answers word for word (the one-epoch model's answers are mostly sampled
    # noise, so another sampling stream would write other text).
    failures = tmp_path / "failures.jsonl"
    scored = run_cli_in_process(
        "eval-model", str(run_dir / "config.json"), "--heldout", str(run_dir / "fidelity_heldout.jsonl"),
        "--train-data", str(run_dir / "offline_annotated.jsonl"), "--model-dir", str(run_dir / "experience_model"),
        "--failures", str(failures),
    )  # fmt: skip
    assert scored.returncode == 0, scored.stderr[-3000:]
    report = json.loads(scored.stdout)
    fidelity = {k: v for k, v in _metric_rows(run_dir)[0].items() if k.startswith("fidelity/")}
    assert fidelity["fidelity/n"] > 0 and {k: report[k] for k in fidelity} == fidelity
    unparsed = (run_dir / "fidelity_unparsed.jsonl").read_text()
    assert unparsed and failures.read_text() == unparsed


def test_validation_plays_leave_rl_unchanged_and_eval_plays_the_kept_policy(plain, tmp_path):
    """Validation plays between RL iterations are greedy, whatever eval.temperature says, and
    draw no random numbers RL would have drawn: the run that validates (and keeps its best
    policy) trains exactly like the one that does not. ``dreamgym eval`` then plays the policy
    the run kept, as the run's own final evaluation did."""
    _, plain_result, plain_dir = plain
    run_dir = tmp_path / "kept"
    args = reduced_args(
        run_dir, "eval.synthetic_agreement=false", "eval.fidelity_episodes=0", "eval.temperature=0.5",
        "eval.valid_every=1", "eval.valid_episodes=2", "eval.keep=best-valid",
    )  # fmt: skip
    result = run_cli_in_process(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    kept = json.loads(result.stdout)
    # the validation plays' own counter aside (counters/valid_transitions), RL logs the same rows
    assert _rl_rows(run_dir, "valid/", "counters/valid_") == _rl_rows(plain_dir, "valid/", "counters/valid_")
    # both pick the warm start's epoch on validation games; this run also plays them each iteration
    # (the steps played: the notes ending an episode whose output held no action are no steps)
    validated = [r for r in _metric_rows(run_dir) if "valid/episode_length" in r]
    steps = [round(r["valid/episode_length"] * r["valid/episodes"]) for r in validated]
    extra = sum(n - r["valid/unparsed_actions"] for n, r in zip(steps, validated, strict=True))
    assert len(validated) == 3 and sum(steps) > 0
    assert _metric_rows(run_dir)[-1]["counters/valid_transitions"] == _metric_rows(plain_dir)[-1]["counters/valid_transitions"] + extra
    assert stored_transitions(run_dir) == stored_transitions(plain_dir)
    scored = [row["valid/success_rate"] for row in _metric_rows(run_dir) if "valid/success_rate" in row]
    assert len(scored) == 3  # the warm start and both iterations
    assert json.loads(plain_result.stdout)["eval/policy_iteration"] == 2.0
    assert kept["eval/policy_iteration"] == scored.index(max(scored))
    evaluated = run_cli_in_process("eval", *args[1:])
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    again = json.loads(evaluated.stdout)
    assert again["eval/policy_iteration"] == kept["eval/policy_iteration"]
    assert again["eval/success_rate"] == kept["eval/success_rate"]


def test_the_tiny_pipeline_fixture_runs_a_small_budget(tiny_pipeline):
    # It collected the default 64 offline episodes (1789 transitions) and trained a 4-layer policy
    # on them: about 200 s for what docs/conformance.md calls a small pipeline.
    from dreamgym_core.config import load_resolved
    from dreamgym_core.loop import run_pipeline

    summary = run_pipeline(*load_resolved(tiny_pipeline))
    rows = _metric_rows(Path(summary["run_dir"]))
    assert summary["counters/offline_transitions"] <= 40 and summary["counters/real_transitions"] == _played(rows, synthetic=False)
    assert sum(r.get("rollout/steps", 0) for r in rows) > 0  # real episodes were played
    assert summary["eval/episodes"] == 2.0


def test_listed_action_choice_plays_only_listed_actions(tmp_path):
    # The reduced job, but the policy picks among each state's listed actions (real RL rollouts,
    # sampled, and the greedy evaluations); the same job generating its answers plays unlisted ones.
    rows = {}
    for choice in ("generate", "listed"):
        run_dir = tmp_path / choice
        args = reduced_args(
            run_dir, "loop.mode=real", "experience.skip=true", "eval.synthetic_agreement=false", "eval.fidelity_episodes=0",
            "loop.iterations=1", "loop.reject_unlisted_actions=false", f"loop.action_choice={choice}",
        )  # fmt: skip
        result = run_cli_in_process(*args)
        assert result.returncode == 0, result.stderr[-3000:]
        rows[choice] = _metric_rows(run_dir)
    off_list = lambda row: [row[k] for k in row if k.endswith(("/unlisted_actions", "_unparsed_actions"))]  # noqa: E731
    assert any("rollout/unlisted_actions" in r for r in rows["listed"])  # the RL rollouts are counted
    assert all(n == 0 for r in rows["listed"] for n in off_list(r))
    assert sum(n for r in rows["generate"] for n in off_list(r)) > 0
