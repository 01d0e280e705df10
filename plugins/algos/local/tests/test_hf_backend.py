"""The trainers on the real ``hf-tiny`` backend (plugins/models/hf), when it is installed."""

import pytest
import torch

hf = pytest.importorskip("dreamgym_plugin_hf")

from dreamgym_core.errors import DataError  # noqa: E402
from dreamgym_plugin_hf.config import TinyConfig  # noqa: E402

from dreamgym_plugin_local.config import GRPOConfig, PPOConfig  # noqa: E402
from dreamgym_plugin_local.grpo import GRPO  # noqa: E402
from dreamgym_plugin_local.ppo import PPO  # noqa: E402


def tiny_backend(groups):
    backend = hf.build_tiny(TinyConfig(hidden_size=32, layers=1, heads=2, intermediate_size=64, vocab_size=300, max_positions=1024, max_length=256))
    corpus = [d.prompt + d.text for g in groups for t in g for d in t.decisions] * 4
    return backend, corpus


def prepared_grpo(groups, temperature):
    """GRPO over a tiny backend already prepared on ``groups``' text: a fresh run's policy."""
    backend, corpus = tiny_backend(groups)
    backend.prepare(corpus=corpus)
    return GRPO(GRPOConfig(lr=1e-3, max_new_tokens=8, temperature=temperature), policy=backend, seed=0)


@pytest.mark.parametrize("cls,config_type", [(GRPO, GRPOConfig), (PPO, PPOConfig)], ids=["grpo", "ppo"])
def test_rebinds_after_prepare_and_trains_the_backend_model(cls, config_type, kit):
    groups = kit.make_groups()
    backend, corpus = tiny_backend(groups)
    algo = cls(config_type(lr=1e-3, max_new_tokens=8), policy=backend, seed=0)  # built before prepare(), as in a run
    backend.prepare(corpus=corpus)  # replaces model and tokenizer
    before = kit.flat_params(backend.model)
    metrics = algo.update(groups=groups)
    assert metrics["perf/optimizer_steps"] >= 1 and metrics["errors/nonfinite_loss_steps"] == 0
    assert not torch.equal(before, kit.flat_params(backend.model))
    assert kit.flat_params(algo.ref).equal(before)  # the reference is the policy at its first update
    assert all(isinstance(x, str) for x in algo.act(prompts=[groups[0][0].decisions[0].prompt], greedy=True))


def test_greedy_calls_do_not_move_the_sampling_seed(kit):
    """A run that evaluated (greedily) more before RL must sample RL's rollouts alike."""
    groups = kit.make_groups()
    prompts = [d.prompt for g in groups for t in g for d in t.decisions][:4]
    sampled = []
    for greedy_calls_first in (0, 3):
        algo = prepared_grpo(groups, temperature=1.0)
        for _ in range(greedy_calls_first):
            algo.act(prompts=prompts, greedy=True)
        sampled.append(algo.act(prompts=prompts) + algo.act(prompts=prompts))
    assert sampled[0] == sampled[1]
    assert len(set(sampled[0])) > 1  # the draws are random, not one repeated answer


def test_sampled_evaluation_calls_draw_from_a_stream_of_their_own(kit):
    """A run that evaluated at eval.temperature > 0 before RL (or evaluated more) must sample
    RL's rollouts alike; the evaluations' own draws are seeded and are not RL's."""
    groups = kit.make_groups()
    prompts = [d.prompt for g in groups for t in g for d in t.decisions][:4]
    sampled, evaluated = [], []
    for evaluations_first in (0, 3, 3):
        algo = prepared_grpo(groups, temperature=0.5)
        evaluated.append([algo.act(prompts=prompts, temperature=0.5, evaluation=True) for _ in range(evaluations_first)])
        sampled.append(algo.act(prompts=prompts) + algo.act(prompts=prompts))
    assert sampled[0] == sampled[1] == sampled[2]
    assert evaluated[1] == evaluated[2]  # seeded: the same evaluations draw the same answers
    assert evaluated[1][0] != sampled[0][:4]  # and not with RL's noise
    assert len({a for answers in evaluated[1] for a in answers}) > 1


def test_a_named_evaluation_stream_samples_alike_whatever_other_evaluations_sampled(kit):
    """eval's real play must draw the same answers whether or not eval_before's synthetic replay
    (eval.synthetic_agreement) sampled before it."""
    groups = kit.make_groups()
    prompts = [d.prompt for g in groups for t in g for d in t.decisions][:4]
    played = []
    for replay_first in (0, 3):
        algo = prepared_grpo(groups, temperature=0.5)
        for _ in range(replay_first):
            algo.act(prompts=prompts, temperature=0.5, evaluation=True, stream="eval_before/synthetic")
        played.append([algo.act(prompts=prompts, temperature=0.5, evaluation=True, stream="eval/real") for _ in range(2)])
    assert played[0] == played[1]
    assert len({a for answers in played[0] for a in answers}) > 1


def long_prompt_backend(max_length=256):
    prompt = " ".join(f"room {i} has a door to the north ." for i in range(60)) + " action"
    backend = hf.build_tiny(TinyConfig(hidden_size=32, layers=1, heads=2, intermediate_size=64, vocab_size=300,
                                       max_positions=1024, max_length=max_length))
    backend.prepare(corpus=[prompt] * 4)
    return backend, prompt


@pytest.mark.parametrize("cls,config_type", [(GRPO, GRPOConfig), (PPO, PPOConfig)], ids=["grpo", "ppo"])
def test_updates_score_a_response_on_the_context_it_was_sampled_from(cls, config_type):
    # generation keeps the prompt's last max_length - max_new_tokens tokens (240); the update
    # must condition on the same ones, not on its own max_prompt_tokens (1024)
    backend, prompt = long_prompt_backend()
    algo = cls(config_type(max_new_tokens=16), policy=backend, seed=0)
    sampled = backend.encode_prompt(prompt, 256 - 16)
    assert len(backend.encode_prompt(prompt, 1024)) > len(sampled) == 240
    batch = algo._tokenize([prompt], [" go north"])
    start = int(batch.positions[0, 0])
    assert batch.input_ids[0, :start].tolist() == sampled


def test_an_update_refuses_a_prompt_it_would_cut_shorter_than_sampling_did(kit, caplog):
    from dreamgym_core.errors import DataError
    from dreamgym_core.records import Task

    backend, prompt = long_prompt_backend()
    with caplog.at_level("WARNING"):
        algo = GRPO(GRPOConfig(max_new_tokens=16, max_prompt_tokens=128), policy=backend, seed=0)
    assert "max_prompt_tokens=128" in caplog.text
    task = Task(id="long", instruction=prompt, domain="test")
    group = [kit.trajectory(task, ["go north"], True), kit.trajectory(task, ["go south"], False)]
    with pytest.raises(DataError, match=r"max_prompt_tokens=128 would cut it.*>= 240.*max_length <= 144"):
        algo.update(groups=[group])
    # prompts within both limits train as before
    short = Task(id="short", instruction="find the apple", domain="test")
    assert algo.update(groups=[[kit.trajectory(short, ["go north"], True), kit.trajectory(short, ["go south"], False)]])[
        "perf/optimizer_steps"] == 1


def test_a_checkpoint_loads_into_the_warm_started_policy_and_says_so_otherwise(kit, tmp_path):
    # A fresh hf-tiny policy has the byte vocabulary; a run's checkpoint was trained after its warm
    # start extended it. The load failed as "cannot load ... state: RuntimeError: Error(s) in
    # loading state_dict ... size mismatch", read as a damaged file, with no way forward.
    groups = kit.make_groups()
    trained, corpus = tiny_backend(groups)
    trained.prepare(corpus=corpus)
    trained.save(path=str(tmp_path / "policy_init"))
    GRPO(GRPOConfig(lr=1e-3), policy=trained, seed=0).save(path=str(tmp_path / "algo"))
    fresh, _ = tiny_backend(groups)
    algo = GRPO(GRPOConfig(lr=1e-3), policy=fresh, seed=0)
    with pytest.raises(DataError, match=r"algo: cannot load 'grpo' algorithm state into this policy \(size mismatch for .*\); "
                                        r"load the run's warm-started policy first \(policy.reload\(path=RUN/policy_init\)") as info:
        algo.load(path=str(tmp_path / "algo"))
    assert "\n" not in str(info.value)
    fresh.reload(path=str(tmp_path / "policy_init"))
    algo.load(path=str(tmp_path / "algo"))
    assert kit.flat_params(fresh.model).equal(kit.flat_params(trained.model))
