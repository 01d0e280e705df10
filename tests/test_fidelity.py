"""Fidelity metrics (pure maths) and the eval-model command."""

from __future__ import annotations

import json

import msgspec
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from dreamgym_core.commands.eval_model import command, read_transitions
from dreamgym_core.errors import ConfigError, DataError
from dreamgym_core.experience import ExperienceModelConfig, LMExperienceModel, render_output
from dreamgym_core.fidelity import (
    agreement,
    balanced_accuracy,
    evaluate_model,
    exact_match,
    fidelity_metrics,
    majority_accuracy,
    predict_all,
    refusal_recall,
    token_f1,
    tokens,
    unparsed_answers,
)
from dreamgym_core.records import ExperienceResult, Transition
from test_experience_doubles import ListBuffer, ScriptedLM


def test_token_f1_known_values() -> None:
    assert token_f1("the red door", "the red door") == 1.0
    assert token_f1("", "") == 1.0
    assert token_f1("a b", "") == 0.0
    # 2 of 3 predicted tokens match 2 of 4 reference tokens: P=2/3, R=1/2 -> F1=4/7
    assert token_f1("open red door", "the red door opens") == pytest.approx(4 / 7)
    assert tokens("You see: a Key.") == ["you", "see", ":", "a", "key", "."]


@given(st.text(max_size=40), st.text(max_size=40))
def test_token_f1_is_symmetric_and_bounded(a: str, b: str) -> None:
    assert 0.0 <= token_f1(a, b) <= 1.0
    assert token_f1(a, b) == pytest.approx(token_f1(b, a))


def test_exact_match_ignores_case_and_spacing() -> None:
    assert exact_match("You  see a Key.\n", "you see a key.")
    assert not exact_match("you see a key", "you see a key.")


def test_agreement_and_majority() -> None:
    assert agreement([1, 0, 1, 1], [1, 1, 1, 0]) == 0.5
    assert majority_accuracy([0, 0, 0, 1]) == 0.75
    assert majority_accuracy([]) == 0.0
    with pytest.raises(ValueError):
        agreement([1], [1, 0])


def test_balanced_accuracy_gives_any_constant_one_over_the_labels() -> None:
    real = [0] * 9 + [1]
    assert balanced_accuracy([0] * 10, real) == 0.5 and agreement([0] * 10, real) == 0.9
    assert balanced_accuracy([1] * 10, real) == 0.5
    # every win found, one plain step in nine called a win: agreement 0.9 ties the constant
    one_false_alarm = [1] + [0] * 8 + [1]
    assert agreement(one_false_alarm, real) == 0.9 and balanced_accuracy(one_false_alarm, real) == pytest.approx((8 / 9 + 1) / 2)
    assert balanced_accuracy([0, 1, 2], [0, 1, 1]) == pytest.approx((1 + 1 / 2) / 2)
    assert balanced_accuracy([1, 0], [0, 0]) is None
    with pytest.raises(ValueError):
        balanced_accuracy([1], [1, 0])


def _t(step: int, *, done=False, success=False, next_state="room", ep="e") -> Transition:
    return Transition(task_id="t", episode_id=ep, step=step, state=f"s{step}", action="go", next_state=next_state,
                      reward=float(done and success), done=done, success=success, instruction="win")  # fmt: skip


def _r(*, done=False, success=False, next_state="room", status="ok") -> ExperienceResult:
    return ExperienceResult(reasoning="", next_state=next_state, reward=float(done and success), done=done,
                            success=success, parse_status=status)  # fmt: skip


def test_fidelity_metrics_against_a_majority_baseline() -> None:
    real = [_t(0), _t(1), _t(2), _t(3, done=True, success=True)]
    perfect = [_r(), _r(), _r(), _r(done=True, success=True)]
    m = fidelity_metrics(perfect, real)
    assert m["fidelity/reward_agreement"] == 1.0 and m["fidelity/reward_majority_baseline"] == 0.75
    assert m["fidelity/eps_r_mean"] == 0.0 and m["fidelity/outcome_agreement"] == 1.0
    constant = [_r(next_state="room here"), _r(), _r(), _r(status="failed", done=True)]
    m = fidelity_metrics(constant, real)
    assert m["fidelity/reward_agreement"] == 0.75 == m["fidelity/reward_majority_baseline"]
    # the failed answer's stand-in says done, as the real last step does: it still counts as wrong
    assert m["fidelity/success_agreement"] == 0.75 and m["fidelity/done_agreement"] == 0.75
    assert m["fidelity/done_majority_baseline"] == 0.75
    assert m["fidelity/eps_r_mean"] == 0.0 and m["fidelity/parse_failed"] == 0.25  # eps_r over parsed answers
    assert m["fidelity/next_state_exact_match"] == 0.5
    assert m["fidelity/next_state_token_f1"] == pytest.approx((2 / 3 + 2) / 4)
    assert m["fidelity/next_state_line_recall"] == 0.5  # "room here" is not the line "room"
    assert m["fidelity/reward_balanced_accuracy"] == 0.5 == m["fidelity/success_balanced_accuracy"]  # a constant's
    assert fidelity_metrics(perfect, real)["fidelity/reward_balanced_accuracy"] == 1.0
    assert "fidelity/reward_balanced_accuracy" not in fidelity_metrics([_r()], [_t(0)])  # no win to find
    assert fidelity_metrics([], []) == {"fidelity/n": 0.0}


def test_unparsable_answers_are_wrong_on_every_label_and_refuse_nothing() -> None:
    """Their stand-in (no reward, done, not won, invalid) matched the common real labels: a
    model that never answered scored 0.75 success agreement here and a perfect refusal recall."""
    real = [_t(0), _t(1), _t(2), _t(3, done=True, success=True)]
    real[1] = msgspec.structs.replace(real[1], valid=False)
    failed = [_r(status="failed", done=True, next_state="room") for _ in real]
    failed = [msgspec.structs.replace(r, valid=False) for r in failed]
    m = fidelity_metrics(failed, real)
    for label in ("outcome", "reward", "success", "done", "valid"):
        assert m[f"fidelity/{label}_agreement"] == 0.0, label
    assert m["fidelity/refusal_recall"] == 0.0 and m["fidelity/refused_n"] == 1.0
    assert m["fidelity/next_state_exact_match"] == 0.0 == m["fidelity/next_state_line_recall"]
    assert m["fidelity/reward_balanced_accuracy"] == 0.0 and "fidelity/eps_r_mean" not in m
    assert m["fidelity/parse_failed"] == 1.0


def test_line_recall_takes_each_line_whole() -> None:
    from dreamgym_core.fidelity import line_recall

    real = "Observation: You are in the hall.\nInventory: a map\nScore: 0.00\nActions (2): look; move east"
    # every word of the real state is there (token F1 near 1), but the room line is not
    swapped = "Observation: You are in the map.\nInventory: a hall\nScore: 0.00\nActions (2): look; move east"
    assert line_recall(swapped, real) == 0.5 and token_f1(swapped, real) == 1.0
    assert line_recall(real.upper().replace("\n", "\n\n  "), real) == 1.0  # case, spacing and blank lines aside
    assert line_recall("Score: 0.00\nScore: 0.00", "Score: 0.00\nScore: 0.00\nScore: 1.00") == pytest.approx(2 / 3)
    assert line_recall("", real) == 0.0 and line_recall("anything", "  ") == 1.0


def test_an_episode_cut_by_its_step_cap_has_not_ended_for_the_model() -> None:
    # The last real step of a capped episode is done=True only because of the cap: the
    # game goes on, so a model that predicts it goes on agrees.
    capped = msgspec.structs.replace(_t(7, done=True), truncated=True)
    m = fidelity_metrics([_r()], [capped])
    assert m["fidelity/done_agreement"] == 1.0 and m["fidelity/outcome_agreement"] == 1.0
    assert fidelity_metrics([_r(done=True)], [capped])["fidelity/done_agreement"] == 0.0


def test_refusal_recall_counts_only_the_engines_refusals() -> None:
    real = [_t(0), msgspec.structs.replace(_t(1), valid=False), msgspec.structs.replace(_t(2), valid=False), _t(3)]
    says_valid = [_r(), _r(), _r(), _r()]
    m = fidelity_metrics(says_valid, real)
    assert m["fidelity/refusal_recall"] == 0.0 and m["fidelity/refused_n"] == 2.0
    assert m["fidelity/valid_agreement"] == 0.5 == m["fidelity/valid_majority_baseline"]
    one_refused = [_r(), msgspec.structs.replace(_r(), valid=False), _r(), msgspec.structs.replace(_r(), valid=False)]
    m = fidelity_metrics(one_refused, real)
    assert m["fidelity/refusal_recall"] == 0.5 and m["fidelity/valid_agreement"] == 0.5
    # expert-only data has no refusals: no recall to report, rather than a made-up number
    assert "fidelity/refusal_recall" not in fidelity_metrics([_r()], [_t(0)])


def test_scored_answers_put_each_answer_beside_its_real_step() -> None:
    from dreamgym_core.fidelity import scored_answers

    listed = msgspec.structs.replace(_t(0, next_state="hall"), admissible_actions=["go", "look"])
    refused = msgspec.structs.replace(_t(1), admissible_actions=["look"], valid=False)
    won = _t(2, done=True, success=True, next_state="won")
    answers = scored_answers([_r(next_state="Hall"), _r(next_state="cellar"), _r(status="failed")], [listed, refused, won])
    assert [a.listed for a in answers] == [True, False, True]  # a state that lists nothing counts as listed
    assert [a.next_state_exact for a in answers] == [True, False, False]
    assert [(a.real_valid, a.model_valid) for a in answers] == [(True, True), (False, True), (True, None)]
    # an unparsable answer is no answer: its stand-in outcome and partly read state were scored (as right, often)
    assert answers[2].real_outcome == (1, True, True) and answers[2].model_outcome is None
    assert answers[2].parse_status == "failed" and answers[1].model_next_state == "cellar"
    assert answers[1].next_state_f1 == 0.0 and answers[0].next_state_f1 == 1.0
    # the same scoring as the averages
    averages = fidelity_metrics([_r(next_state="Hall"), _r(next_state="cellar"), _r(status="failed")], [listed, refused, won])
    assert sum(a.next_state_exact for a in answers) / 3 == averages["fidelity/next_state_exact_match"]
    assert sum(a.next_state_line_recall for a in answers) / 3 == averages["fidelity/next_state_line_recall"]
    two_lines = _t(3, next_state="Observation: a hall.\nScore: 0")
    (half,) = scored_answers([_r(next_state="Observation: a cellar.\nScore: 0")], [two_lines])
    assert half.next_state_line_recall == 0.5  # the score line right, the observation not
    with pytest.raises(ValueError, match="2 results for 3 transitions"):
        scored_answers([_r(), _r()], [listed, refused, won])
    (failed,) = scored_answers([_r(next_state="hall", status="failed")], [listed])  # its state read right, its flags not
    assert (failed.next_state_exact, failed.next_state_f1, failed.next_state_line_recall) == (False, 0.0, 0.0)


def test_a_scored_unparsable_answer_refused_nothing() -> None:
    from dreamgym_core.experience import _failed
    from dreamgym_core.fidelity import scored_answers

    refused = msgspec.structs.replace(_t(0), valid=False)
    stand_in = _failed("garbage")  # what the parser gives an unparsable answer: invalid
    assert not stand_in.valid
    (failed,) = scored_answers([stand_in], [refused])
    # as the metrics count it: no answer, so no refusal (its stand-in's invalid read as the model refusing too)
    assert failed.model_valid is None and failed.model_outcome is None
    assert fidelity_metrics([stand_in], [refused])["fidelity/refusal_recall"] == 0.0
    (said,) = scored_answers([msgspec.structs.replace(_r(), valid=False)], [refused])
    assert said.model_valid is False
    assert msgspec.json.decode(msgspec.json.encode(failed))["model_valid"] is None  # what --predictions writes


def _oracle(prompt: str) -> str:
    """A test double that answers with the truth it reads from the prompt (step index s<N>)."""
    step = int(prompt.split("State: s")[-1].split("\n")[0])
    done = step == 3
    return render_output(_r(done=done, success=done, next_state=f"after {step}"))


def test_evaluate_model_uses_history_and_demos_and_batches() -> None:
    real = [_t(i, done=i == 3, success=i == 3, next_state=f"after {i}") for i in range(4)]
    train = [_t(i, ep="train", next_state=f"train {i}") for i in range(4)]
    lm = ScriptedLM(answer=_oracle)
    model = LMExperienceModel(lm, ExperienceModelConfig(max_retries=0))
    m = evaluate_model(model, real, ListBuffer(train), history_window=2, k=1, batch_size=3)
    assert m["fidelity/next_state_exact_match"] == 1.0 and m["fidelity/outcome_agreement"] == 1.0
    assert [len(c["prompts"]) for c in lm.calls] == [3, 1]
    assert "train " in lm.calls[0]["prompts"][0] and " -> go" in lm.calls[0]["prompts"][2]


def test_evaluate_model_never_shows_a_held_out_episode_its_own_steps() -> None:
    """Held-out data that also sits in the buffer (eval-model --train-data holding the
    held-out file, an eval split that is the train split): a demo from the same episode
    would show the next state being scored (step t+1's state is step t's next state)."""
    real = [_t(i, done=i == 3, success=i == 3, next_state=f"after {i}") for i in range(4)]
    train = [_t(i, ep="train", next_state=f"train {i}") for i in range(4)]
    lm = ScriptedLM(answer=_oracle)
    model = LMExperienceModel(lm, ExperienceModelConfig(max_retries=0))
    evaluate_model(model, real, ListBuffer(real + train), history_window=0, k=2)
    prompts = lm.calls[0]["prompts"]
    demos = [p.split("Similar transitions:\n")[1].split("\n\nState:")[0] for p in prompts]
    assert all(d.count("- state:") == 2 and "after" not in d for d in demos)


def test_unparsed_answers_pair_each_failed_answer_with_its_transition() -> None:
    """Steps 1 and 3 come back as tag soup: exactly those two are kept, with the raw
    text and the real next state, in held-out order."""
    real = [_t(i, done=i == 3, success=i == 3, next_state=f"after {i}") for i in range(4)]

    def answer(prompt: str) -> str:
        step = int(prompt.split("State: s")[-1].split("\n")[0])
        return f"<state>x</valid> soup {step}" if step in (1, 3) else _oracle(prompt)

    model = LMExperienceModel(ScriptedLM(answer=answer), ExperienceModelConfig(max_retries=1))
    results = predict_all(model, real, ListBuffer(), history_window=1, k=0)
    failed = unparsed_answers(results, real)
    assert [(f.step, f.reference_state) for f in failed] == [(1, "after 1"), (3, "after 3")]
    assert failed[0].raw == "<state>x</valid> soup 1" and failed[0].action == real[1].action
    assert fidelity_metrics(results, real)["fidelity/parse_failed"] == 0.5
    with pytest.raises(ValueError, match="3 results for 4 transitions"):
        unparsed_answers(results[:3], real)


def test_read_transitions_errors_name_file_and_line(tmp_path) -> None:
    good = tmp_path / "ok.jsonl"
    good.write_bytes(msgspec.json.encode(_t(0)) + b"\n\n" + msgspec.json.encode(_t(1)) + b"\n")
    assert [t.step for t in read_transitions(str(good))] == [0, 1]
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(msgspec.json.encode(_t(0)) + b'\n{"task_id": 3}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not a valid Transition record"):
        read_transitions(str(bad))
    (tmp_path / "binary.jsonl").write_bytes(b"\xff\xfe\x00\x81\n")
    with pytest.raises(DataError, match=r"binary.jsonl:1: not a valid Transition record"):
        read_transitions(str(tmp_path / "binary.jsonl"))
    with pytest.raises(DataError, match="cannot read"):
        read_transitions(str(tmp_path / "missing.jsonl"))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="no transitions"):
        read_transitions(str(tmp_path / "empty.jsonl"))


PIPELINE = """
plugins: [textworld, hf, local, encoders, exact]
env: {name: twx, config: {game: coin}}
policy: {name: hf-tiny, config: {hidden_size: 32, layers: 1, heads: 2, intermediate_size: 64, vocab_size: 300, max_length: 1024, max_positions: 1024}}
algo: {name: grpo}
experience_model: {name: hf-tiny, config: {hidden_size: 32, layers: 1, heads: 2, intermediate_size: 64, vocab_size: 300, max_length: 1024, max_positions: 1024}}
encoder: {name: hashing}
buffer: {name: exact}
loop: {history_window: 2, top_k: 2}
"""


def _eval_model_files(tmp_path) -> tuple:
    """PIPELINE, three held-out steps (the last wins) and three training steps as files."""
    for plugin in ("dreamgym_plugin_hf", "dreamgym_plugin_exact", "dreamgym_plugin_textworld"):
        pytest.importorskip(plugin)
    pipeline, heldout, train = tmp_path / "pipeline.yaml", tmp_path / "heldout.jsonl", tmp_path / "train.jsonl"
    pipeline.write_text(PIPELINE)
    heldout.write_bytes(b"\n".join(msgspec.json.encode(_t(i, done=i == 2, success=i == 2)) for i in range(3)))
    train.write_bytes(b"\n".join(msgspec.json.encode(_t(i, ep="train")) for i in range(3)))
    return pipeline, heldout, train


def test_eval_model_command_prints_metrics(tmp_path) -> None:
    """Runs the real plugins (untrained byte-level tiny model): the wiring, not the quality."""
    pipeline, heldout, train = _eval_model_files(tmp_path)
    args = [str(pipeline), "--heldout", str(heldout), "--train-data", str(train), "--limit", "2", "--max-new-tokens", "24", "--retries", "0",
            "--set", "experience_model.config.max_length=1024", "--set", "loop.top_k=1"]  # fmt: skip
    result = CliRunner().invoke(command, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["fidelity/n"] == 2.0 and report["experience/requests"] == 2.0
    assert 0.0 <= report["fidelity/reward_agreement"] <= 1.0 and report["model_id"].startswith("hf-tiny")


def test_seen_in_demos_counts_held_out_steps_the_demos_play_the_same_way() -> None:
    """Demos are kept from a held-out step by episode id only: the same step from another
    episode (a split shared with the offline data, coin's few worlds) is counted as seen."""
    from dreamgym_core.fidelity import seen_in_demos

    held = [_t(0), _t(1), _t(2)]
    assert seen_in_demos(held, []) == 0.0 and seen_in_demos([], held) == 0.0
    assert seen_in_demos(held, [_t(1, ep="train")]) == pytest.approx(1 / 3)
    other_action = msgspec.structs.replace(_t(0, ep="train"), action="north")
    other_goal = msgspec.structs.replace(_t(2, ep="train"), instruction="lose")
    assert seen_in_demos(held, [other_action, other_goal]) == 0.0


def test_eval_model_reports_the_held_out_steps_its_demos_hold(tmp_path) -> None:
    pipeline, heldout, train = _eval_model_files(tmp_path)  # train holds steps 0-2 of the same task
    args = [str(pipeline), "--heldout", str(heldout), "--train-data", str(train), "--limit", "2", "--max-new-tokens", "8", "--retries", "0"]
    result = CliRunner().invoke(command, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["fidelity/seen_in_demos"] == 1.0
    no_demos = CliRunner().invoke(command, args[:3] + args[5:], catch_exceptions=False)
    assert "fidelity/seen_in_demos" not in json.loads(no_demos.stdout)


def test_eval_model_refuses_a_held_out_step_held_twice(tmp_path) -> None:
    """A file appended to itself: the second copy of a step would have the first in its history
    and both would be scored. Refused before the model runs."""
    pipeline, heldout, train = _eval_model_files(tmp_path)
    heldout.write_bytes(heldout.read_bytes() + b"\n" + heldout.read_bytes())
    result = CliRunner().invoke(command, [str(pipeline), "--heldout", str(heldout), "--train-data", str(train)])
    assert isinstance(result.exception, DataError)
    assert str(result.exception) == f"{heldout}: episode 'e' of task 't' holds step 0 more than once"


def test_eval_model_refuses_train_data_it_cannot_retrieve_from(tmp_path) -> None:
    """Without a buffer or encoder the demos were dropped while the report named their file."""
    pipeline, heldout, train = _eval_model_files(tmp_path)
    pipeline.write_text(PIPELINE.replace("encoder: {name: hashing}\nbuffer: {name: exact}\n", "").replace("top_k: 2}", "top_k: 2, mode: real}"))
    result = CliRunner().invoke(command, [str(pipeline), "--heldout", str(heldout), "--train-data", str(train)])
    assert isinstance(result.exception, ConfigError)
    assert str(result.exception) == f"{pipeline}: --train-data needs the pipeline's buffer and encoder to retrieve demos from it"


def test_eval_model_with_same_world_demos_reads_worlds_from_the_pipelines_domain(tmp_path) -> None:
    from dreamgym_core.commands.eval_model import _world_of
    from dreamgym_core.config import load_resolved

    pipeline, heldout, train = _eval_model_files(tmp_path)
    world_of = _world_of(*load_resolved(pipeline))
    assert world_of("twx/coin/numLocations=2/7~syn") == world_of("twx/coin/numLocations=2/7") == "twx/coin/numLocations=2/7"
    args = [str(pipeline), "--heldout", str(heldout), "--train-data", str(train), "--limit", "2", "--max-new-tokens", "8",
            "--retries", "0", "--set", "loop.demos=same-world-first"]  # fmt: skip
    result = CliRunner().invoke(command, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["fidelity/n"] == 2.0


def test_eval_model_loads_a_trained_tiny_model_dir(tmp_path) -> None:
    """--model-dir loads a saved hf-tiny model (what a run's experience_model/ holds) in place;
    an empty or missing directory is a one-line error naming it."""
    pytest.importorskip("dreamgym_plugin_exact")
    pytest.importorskip("dreamgym_plugin_textworld")
    tiny = pytest.importorskip("dreamgym_plugin_hf.tiny")
    from dreamgym_plugin_hf.config import TinyConfig

    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(PIPELINE)
    saved = tmp_path / "experience_model"
    config = msgspec.convert({"hidden_size": 32, "layers": 1, "heads": 2, "intermediate_size": 64, "vocab_size": 300,
                              "max_length": 1024, "max_positions": 1024}, type=TinyConfig)  # fmt: skip
    tiny.TinyBackend(config).save(path=str(saved))
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_bytes(b"\n".join(msgspec.json.encode(_t(i, done=i == 1, success=i == 1)) for i in range(2)))
    args = [str(pipeline), "--heldout", str(heldout), "--max-new-tokens", "8", "--retries", "0"]
    result = CliRunner().invoke(command, [*args, "--model-dir", str(saved)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # stderr carries transformers' loading progress
    assert report["model_dir"] == str(saved) and report["fidelity/n"] == 2.0
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(command, [*args, "--model-dir", str(empty)])
    assert result.exit_code != 0 and "cannot load a causal LM" in str(result.exception) and str(empty) in str(result.exception)
    result = CliRunner().invoke(command, [*args, "--model-dir", str(tmp_path / "missing")])
    assert result.exit_code != 0 and "not a directory" in str(result.exception)


def test_eval_model_writes_the_unparsable_answers(tmp_path) -> None:
    """An untrained byte-level model writes no tagged answer in 8 tokens, so every held-out
    answer fails: the file holds one record per failure, matching the printed counter.
    A --failures path in a missing directory is refused before the model runs."""
    pytest.importorskip("dreamgym_plugin_hf")
    pytest.importorskip("dreamgym_plugin_exact")
    pytest.importorskip("dreamgym_plugin_textworld")
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(PIPELINE)
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_bytes(b"\n".join(msgspec.json.encode(_t(i, next_state=f"after {i}")) for i in range(3)))
    out = tmp_path / "failed.jsonl"
    # Answer budget and retries from the pipeline (no option given), temperature from the command line.
    args = [str(pipeline), "--heldout", str(heldout), "--set", "experience.max_new_tokens=8", "--set", "experience.max_retries=0"]
    scored = tmp_path / "scored.jsonl"
    result = CliRunner().invoke(command, [*args, "--failures", str(out), "--temperature", "0", "--predictions", str(scored)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["settings"] == {"temperature": 0.0, "max_new_tokens": 8, "max_retries": 0}
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == report["experience/parse_failed"] == 3.0
    assert [(r["step"], r["reference_state"]) for r in records] == [(i, f"after {i}") for i in range(3)]
    # --predictions: every answer (here all failed), beside its real step
    answers = [json.loads(line) for line in scored.read_text().splitlines()]
    assert [(a["step"], a["real_next_state"], a["parse_status"]) for a in answers] == [(i, f"after {i}", "failed") for i in range(3)]
    for option in ("--failures", "--predictions"):
        missing = tmp_path / "nowhere" / "failed.jsonl"
        result = CliRunner().invoke(command, [*args, option, str(missing)])
        assert result.exit_code != 0 and f"{option} " in str(result.exception) and "nowhere" in str(result.exception)
    kept = heldout.read_bytes()
    for option in ("--failures", "--predictions"):  # refused before the model runs, the input kept
        result = CliRunner().invoke(command, [*args, option, str(heldout)])
        assert isinstance(result.exception, ConfigError)
        assert f"{option} {heldout}: is the --heldout file, which it would overwrite" in str(result.exception)
        (tmp_path / "blocked.jsonl.tmp").mkdir(exist_ok=True)
        result = CliRunner().invoke(command, [*args, option, str(tmp_path / "blocked.jsonl")])
        assert isinstance(result.exception, ConfigError) and "cannot write blocked.jsonl.tmp there (Is a directory)" in str(result.exception)
    assert heldout.read_bytes() == kept
    result = CliRunner().invoke(command, [*args, "--failures", str(out), "--predictions", str(out)])
    assert isinstance(result.exception, ConfigError) and "--failures and --predictions name one file" in str(result.exception)
    for value in ("nan", "inf"):
        result = CliRunner().invoke(command, [*args, "--temperature", value])
        assert result.exit_code == 2 and f"Invalid value for '--temperature': {value} is not a finite number" in result.output


def test_refusal_recall_refuses_results_and_transitions_of_different_lengths() -> None:
    # It zipped them and returned {} (no refusals seen), where its siblings raise.
    transition = Transition(task_id="t", episode_id="e", step=0, state="s", action="a", next_state="s", reward=0.0,
                            done=False, success=False, valid=False)
    result = ExperienceResult(reasoning="", next_state="s", reward=0.0, done=False, success=False, valid=False)
    assert refusal_recall([result], [transition])["fidelity/refusal_recall"] == 1.0
    with pytest.raises(ValueError, match="1 results for 2 transitions"):
        refusal_recall([result], [transition, transition])
