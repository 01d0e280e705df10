"""GRPO and PPO on a tiny random Llama: learning, NaN handling, save/load."""

import logging
import math

import msgspec
import pytest
import torch

from dreamgym_plugin_local import dreamgym_register_algos, maths
from dreamgym_core.errors import DataError
from dreamgym_plugin_local.batch import choice_logprobs, choice_rows, invalid_steps, response_logprobs, trajectory_steps
from dreamgym_plugin_local.config import GRPOConfig, PPOConfig
from dreamgym_plugin_local.grpo import GRPO
from dreamgym_plugin_local.ppo import PPO


def fixed_surrogate(algo, groups):
    """The PPO-clip loss of the current policy against the log-probs it had when this
    function was first called, with GRPO advantages held fixed: a loss on a fixed batch."""
    trajs = [t for g in groups for t in g]
    steps, _ = trajectory_steps(trajs)
    scores = maths.trajectory_scores([t.outcome_reward for t in trajs], [0] * len(trajs), 0.0)
    adv = maths.grpo_advantages(scores, [i for i, g in enumerate(groups) for _ in g])
    batch = algo._tokenize([s.prompt for s in steps], [s.response for s in steps])
    advantages = adv[[s.trajectory for s in steps]].unsqueeze(1) * batch.response_mask
    logp, _ = algo._logprobs_no_grad(algo.model, batch)
    if not hasattr(algo, "_test_logp0"):
        algo._test_logp0 = logp
    config = maths.actor_config(0.2, 0.2, 3.0, "token-mean")
    return maths.policy_loss(algo._test_logp0, logp, advantages, batch.response_mask, config=config)[0].item()


@pytest.mark.parametrize("cls,config_type", [(GRPO, GRPOConfig), (PPO, PPOConfig)], ids=["grpo", "ppo"])
def test_updates_change_parameters_and_reduce_the_loss(cls, config_type, kit):
    policy = kit.TinyPolicy()
    algo = cls(config_type(lr=1e-3, minibatch_size=4), policy=policy, seed=0)
    groups = kit.make_groups()
    before_params, before_loss = kit.flat_params(policy.model), fixed_surrogate(algo, groups)
    history = [algo.update(groups=groups) for _ in range(4)]
    assert not torch.equal(before_params, kit.flat_params(policy.model))
    assert fixed_surrogate(algo, groups) < before_loss - 1e-3
    assert all(m["errors/nonfinite_loss_steps"] == 0 and m["perf/optimizer_steps"] == 4 for m in history)
    assert history[-1]["losses/kl_loss"] > 0  # the policy moved away from its reference
    if cls is PPO:
        assert history[-1]["losses/value_loss"] < history[0]["losses/value_loss"]
    else:
        assert history[0]["charts/zero_signal_groups"] == 0.0  # both groups mix successes and failures


def test_grpo_reports_groups_that_carry_no_signal(kit):
    algo = GRPO(GRPOConfig(lr=1e-3, minibatch_size=4), policy=kit.TinyPolicy(), seed=0)
    mixed, other = kit.make_groups()
    all_won = other[:2]  # two successes without an invalid step: equal scores, zero advantages
    assert algo.update(groups=[mixed, all_won])["charts/zero_signal_groups"] == 0.5


def sequence_logprob(algo, decision):
    batch = algo._tokenize([decision.prompt], [decision.text])
    return algo._logprobs_no_grad(algo.model, batch)[0].sum().item()


def test_grpo_invalid_action_penalty_steers_the_update(kit):
    # two failures alike but for an invalid step: the update makes the clean response more
    # likely and the invalid one less, and counts the invalid step
    task = kit.make_groups()[0][0].task
    clean = kit.trajectory(task, ["go north"], False)
    invalid = kit.trajectory(task, ["go south"], False, valid=[False])
    algo = GRPO(GRPOConfig(lr=1e-3, minibatch_size=8, kl_coef=0.0), policy=kit.TinyPolicy(), seed=0)
    before = [sequence_logprob(algo, t.decisions[0]) for t in (clean, invalid)]
    metrics = algo.update(groups=[[clean, invalid]])
    assert metrics["charts/invalid_steps"] == 1 and metrics["charts/zero_signal_groups"] == 0.0
    after = [sequence_logprob(algo, t.decisions[0]) for t in (clean, invalid)]
    assert after[0] > before[0] and after[1] < before[1]
    # without the penalty the two score alike: no signal, no change
    algo = GRPO(GRPOConfig(lr=1e-3, minibatch_size=8, kl_coef=0.0, invalid_action_penalty=0.0), policy=kit.TinyPolicy(), seed=0)
    assert algo.update(groups=[[clean, invalid]])["charts/zero_signal_groups"] == 1.0
    assert [sequence_logprob(algo, t.decisions[0]) for t in (clean, invalid)] == before


def unparsed(kit, task, text):
    """A one-step failed trajectory whose response held no action (``text``: what the policy wrote)."""
    traj = kit.trajectory(task, ["go north"], False, valid=[False])
    decision = msgspec.structs.replace(traj.decisions[0], text=text, action="", parsed=False)
    return msgspec.structs.replace(traj, decisions=[decision])


def test_invalid_steps_count_every_transition_even_with_an_empty_response(kit):
    task = kit.make_groups()[0][0].task
    group = [kit.trajectory(task, ["go north"], True), unparsed(kit, task, "blah blah"), unparsed(kit, task, ""),
             kit.trajectory(task, ["go south"], False)]
    assert [invalid_steps(t) for t in group] == [0, 1, 1, 0]


def test_a_step_the_environment_could_not_answer_is_not_the_policys_invalid_step(kit):
    # The experience model's unparsable answer (or an engine error) ends the episode as a
    # failure (valid False, model_failed True) after a parsed policy output: no penalty. An
    # action the environment refused, and an unparsable policy output, keep theirs.
    task = kit.make_groups()[0][0].task
    refused = kit.trajectory(task, ["go north"], False, valid=[False])
    unanswered = msgspec.structs.replace(refused, transitions=[msgspec.structs.replace(refused.transitions[0], model_failed=True)])
    note = unparsed(kit, task, "blah blah")  # the rollout's note for an unparsable output
    note = msgspec.structs.replace(note, transitions=[msgspec.structs.replace(note.transitions[0], model_failed=True)])
    group = [refused, unanswered, note]
    assert [invalid_steps(t) for t in group] == [1, 0, 1]
    assert [s.valid for s in trajectory_steps(group)[0]] == [False, True, False]  # PPO's per-step penalty


def eos_logprob(algo, prompt):
    batch = algo._tokenize([prompt], [""])
    return algo._logprobs_no_grad(algo.model, batch)[0].sum().item()


@pytest.mark.parametrize("cls,config_type", [(GRPO, GRPOConfig), (PPO, PPOConfig)], ids=["grpo", "ppo"])
def test_an_empty_response_is_penalised_and_trained_as_eos(cls, config_type, kit):
    # producing nothing must not be favoured over a wrong answer: its penalty counts, and its
    # (negative) advantage lands on the EOS token, which the update makes less likely
    task = kit.make_groups()[0][0].task
    empty = unparsed(kit, task, "")
    group = [kit.trajectory(task, ["go north"], True), unparsed(kit, task, "blah blah"), empty,
             kit.trajectory(task, ["go south"], False)]
    algo = cls(config_type(lr=1e-3, minibatch_size=8, kl_coef=0.0), policy=kit.TinyPolicy(), seed=0)
    batch = algo._tokenize([empty.decisions[0].prompt], [""])
    assert batch.response_mask.sum().item() == 1
    assert batch.input_ids[0, batch.positions[0, 0]].item() == algo.policy.tokenizer.eos_token_id
    before = eos_logprob(algo, empty.decisions[0].prompt)
    metrics = algo.update(groups=[group])
    assert metrics["charts/invalid_steps"] == 2 and metrics["data/trainable_steps"] == 4
    assert metrics["data/empty_responses"] == 1
    for _ in range(3):
        algo.update(groups=[group])
    assert eos_logprob(algo, empty.decisions[0].prompt) < before - 1e-3


def test_ppo_trains_a_batch_of_a_single_response_token(kit):
    # one step whose response is empty (trained as one EOS token): verl's advantage whitening
    # raised ValueError on a single token. Its advantage is 0 (whitened alone), and the value
    # head still learns its return, the penalised reward.
    task = kit.make_groups()[0][0].task
    algo = PPO(PPOConfig(lr=1e-3, kl_coef=0.0), policy=kit.TinyPolicy(), seed=0)
    metrics = algo.update(groups=[[unparsed(kit, task, "")]])
    assert metrics["data/response_tokens"] == 1 and metrics["perf/optimizer_steps"] == 1
    assert metrics["charts/mean_return"] == pytest.approx(-0.1)
    assert metrics["losses/policy_loss"] == 0.0 and metrics["losses/value_loss"] > 0


def test_sft_still_drops_empty_responses(kit):
    task = kit.make_groups()[0][0].task
    steps, _ = trajectory_steps([unparsed(kit, task, ""), kit.trajectory(task, ["go north"], True)])
    assert [s.response for s in steps] == ["< action > go north < / action >"]


def logprobs_at(model, batch, temperature):
    """Response log-probs under softmax(logits / temperature), from the full logits."""
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()
    logp = torch.log_softmax(logits / temperature, dim=-1)
    rows = torch.arange(len(batch)).unsqueeze(1)
    targets = batch.input_ids.gather(1, batch.positions)
    return logp[rows, batch.positions - 1].gather(-1, targets.unsqueeze(-1)).squeeze(-1) * batch.response_mask


@pytest.mark.parametrize("cls,config_type", [(GRPO, GRPOConfig), (PPO, PPOConfig)], ids=["grpo", "ppo"])
def test_updates_score_responses_at_the_temperature_they_were_sampled_at(cls, config_type, kit, monkeypatch):
    # the run loop samples at its own temperature (act's argument); the update's old, new and
    # reference log-probs must be those of that distribution, softmax(logits / T)
    task = kit.make_groups()[0][0].task
    group = [kit.trajectory(task, ["go north"], True), kit.trajectory(task, ["go north"], False)]  # identical rows
    decision = group[0].decisions[0]
    algo = cls(config_type(lr=1e-3, minibatch_size=8, max_new_tokens=4), policy=kit.TinyPolicy(), seed=0)
    algo.act(prompts=[decision.prompt], temperature=0.4)
    algo.act(prompts=[decision.prompt], greedy=True)  # greedy play does not change what was sampled at
    seen = {}
    real_policy_loss, real_kl_loss = maths.policy_loss, maths.kl_loss

    def policy_loss(old_logp, logp, advantages, mask, *, config):
        seen.setdefault("old", old_logp.detach().clone())
        seen.setdefault("new", logp.detach().clone())
        return real_policy_loss(old_logp, logp, advantages, mask, config=config)

    def kl_loss(logp, ref_logp, mask, **kwargs):
        seen.setdefault("ref", ref_logp.detach().clone())
        return real_kl_loss(logp, ref_logp, mask, **kwargs)

    monkeypatch.setattr(maths, "policy_loss", policy_loss)
    monkeypatch.setattr(maths, "kl_loss", kl_loss)
    expected = logprobs_at(algo.model, algo._tokenize([decision.prompt], [decision.text]), 0.4)[0]
    at_one = logprobs_at(algo.model, algo._tokenize([decision.prompt], [decision.text]), 1.0)[0]
    assert (expected - at_one).abs().max() > 0.1  # the two temperatures are told apart
    algo.update(groups=[group])
    for key in ("old", "new", "ref"):
        assert torch.allclose(seen[key], expected.expand_as(seen[key]), atol=1e-5), key
    assert algo.sampling_temperature == 0.4


def test_scoring_at_temperature_one_divides_nothing(kit):
    algo = GRPO(GRPOConfig(), policy=kit.TinyPolicy(), seed=0)
    decision = kit.make_groups()[0][0].decisions[0]
    batch = algo._tokenize([decision.prompt], [decision.text])
    assert algo.sampling_temperature == 1.0
    assert torch.equal(response_logprobs(algo.model, batch)[0], response_logprobs(algo.model, batch, temperature=1.0)[0])


@pytest.mark.parametrize("cls,config_type", [(GRPO, GRPOConfig), (PPO, PPOConfig)], ids=["grpo", "ppo"])
def test_rl_refuses_a_policy_that_samples_from_a_nucleus(cls, config_type, kit):
    from types import SimpleNamespace

    from dreamgym_core.errors import ConfigError

    policy = kit.TinyPolicy()
    policy.config = SimpleNamespace(top_p=0.9)
    with pytest.raises(ConfigError, match="top_p=0.9"):
        cls(config_type(), policy=policy, seed=0)
    policy.config = SimpleNamespace(top_p=1.0)
    cls(config_type(), policy=policy, seed=0)


@pytest.mark.parametrize("cls,config_type", [(GRPO, GRPOConfig), (PPO, PPOConfig)], ids=["grpo", "ppo"])
def test_rl_refuses_responses_sampled_longer_than_it_trains(cls, config_type, kit):
    # the update keeps a response's first max_response_tokens: the action at the end of a longer one got no gradient
    from dreamgym_core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"algo.config.max_new_tokens=32 exceeds algo.config.max_response_tokens=6"):
        cls(config_type(max_new_tokens=32, max_response_tokens=6), policy=kit.TinyPolicy(), seed=0)
    cls(config_type(max_new_tokens=6, max_response_tokens=6), policy=kit.TinyPolicy(), seed=0)


@pytest.mark.parametrize("config_type", [GRPOConfig, PPOConfig], ids=["grpo", "ppo"])
def test_rl_configs_refuse_clip_ratios_that_drop_a_clip_bound(config_type):
    # the lower ratio bound is 1 - clip_ratio_low: at clip_ratio_low >= 1 it is <= 0 and clips
    # nothing (a ratio is never below 0); the upper bound 1 + clip_ratio_high must stay above 1
    from dreamgym_core.config import convert_config
    from dreamgym_core.errors import ConfigError

    for field, value in (("clip_ratio_low", 1.0), ("clip_ratio_low", 1.5), ("clip_ratio_low", 0.0),
                         ("clip_ratio_low", -0.2), ("clip_ratio_high", 0.0), ("clip_ratio_high", -0.2)):
        with pytest.raises(ConfigError, match=rf"^pipeline.yaml: Expected `float` .* - at `\$\.algo\.config\.{field}`$"):
            convert_config({field: value}, config_type, "pipeline.yaml", "$.algo.config")
        with pytest.raises(msgspec.ValidationError, match=rf"{config_type.__name__}: .* - at `\$\.{field}`"):
            config_type(**{field: value})  # built in Python, checked alike
    kept = convert_config({"clip_ratio_low": 0.99, "clip_ratio_high": 5.0}, config_type, "pipeline.yaml", "$.algo.config")
    assert (kept.clip_ratio_low, kept.clip_ratio_high) == (0.99, 5.0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("spec", dreamgym_register_algos(), ids=lambda s: s.name)
def test_low_precision_policies_are_refused(spec, dtype, kit):
    # AdamW on the weights themselves: in float16 its eps rounds to 0 and the weights turn
    # NaN, in bfloat16 most lr=1e-6 updates round away
    from dreamgym_core.errors import ConfigError

    policy = kit.TinyPolicy()
    policy.model.to(dtype)
    with pytest.raises(ConfigError, match=f"weights are {str(dtype).removeprefix('torch.')}.*float32"):
        spec.factory(spec.config_type(), policy=policy, seed=0)


def test_a_policy_turned_low_precision_after_construction_is_refused_at_update(kit):
    from dreamgym_core.errors import ConfigError

    policy = kit.TinyPolicy()
    algo = GRPO(GRPOConfig(), policy=policy, seed=0)
    policy.model = kit.TinyPolicy().model.to(torch.bfloat16)  # a backend that replaced its model
    with pytest.raises(ConfigError, match="bfloat16"):
        algo.update(groups=kit.make_groups())


@pytest.mark.parametrize("cls,config_type", [(GRPO, GRPOConfig), (PPO, PPOConfig)], ids=["grpo", "ppo"])
def test_weights_that_turn_non_finite_in_a_step_stop_training(cls, config_type, kit):
    from dreamgym_core.errors import DreamGymError

    # finite loss and gradient, and a step that leaves a weight NaN (as float16 AdamW did)
    algo = cls(config_type(lr=1e-3, minibatch_size=64), policy=kit.TinyPolicy(), seed=0)
    algo._bind()
    step = algo.optimizer.step

    def corrupting_step(*args, **kwargs):
        out = step(*args, **kwargs)
        with torch.no_grad():
            next(algo.model.parameters()).view(-1)[0] = float("nan")
        return out

    algo.optimizer.step = corrupting_step
    with pytest.raises(DreamGymError, match="weights are not finite after an optimiser step"):
        algo.update(groups=kit.make_groups())


@pytest.mark.parametrize("cls,config_type", [(GRPO, GRPOConfig), (PPO, PPOConfig)], ids=["grpo", "ppo"])
def test_nan_reward_skips_the_step_and_is_counted(cls, config_type, kit, caplog):
    policy = kit.TinyPolicy()
    algo = cls(config_type(lr=1e-3, minibatch_size=64), policy=policy, seed=0)
    groups = kit.make_groups()
    bad = groups[0][0]
    last = msgspec.structs.replace(bad.transitions[-1], reward=float("nan"))
    groups[0][0] = msgspec.structs.replace(bad, transitions=[*bad.transitions[:-1], last])
    before = kit.flat_params(policy.model)
    with caplog.at_level(logging.WARNING):
        metrics = algo.update(groups=groups)
    assert metrics["errors/nonfinite_loss_steps"] == 1 and metrics["perf/optimizer_steps"] == 0
    assert torch.equal(before, kit.flat_params(policy.model))
    assert "optimizer step skipped" in caplog.text
    assert all(v == v for v in metrics.values())  # no NaN reaches the metrics...
    assert metrics["errors/nonfinite_metrics"] >= 1  # ...but the ones left out are counted
    # the next, clean batch trains normally
    assert algo.update(groups=kit.make_groups())["perf/optimizer_steps"] == 1


@pytest.mark.parametrize("cls,config_type", [(GRPO, GRPOConfig), (PPO, PPOConfig)], ids=["grpo", "ppo"])
def test_save_load_resumes_identically(cls, config_type, kit, tmp_path):
    config = config_type(lr=1e-3, minibatch_size=4)
    first = kit.TinyPolicy()
    algo = cls(config, policy=first, seed=3)
    algo.update(groups=kit.make_groups())
    algo.save(path=str(tmp_path / "ckpt"))
    algo.update(groups=kit.make_groups())

    second = kit.TinyPolicy()  # same initial weights, as a rebuilt backend would have
    resumed = cls(config, policy=second, seed=3)
    resumed.load(path=str(tmp_path / "ckpt"))
    resumed.update(groups=kit.make_groups())
    assert torch.equal(kit.flat_params(first.model), kit.flat_params(second.model))
    assert torch.equal(kit.flat_params(algo.heads), kit.flat_params(resumed.heads))
    assert resumed.counters == algo.counters


def test_a_loaded_checkpoint_samples_as_in_a_fresh_trainer_whatever_was_played_before(kit, tmp_path):
    # dreamgym curve loads checkpoint after checkpoint into one trainer: an evaluation stream's
    # counter, never in a checkpoint, was merged on, so every checkpoint after the first sampled
    # other draws than `dreamgym eval --checkpoint K` gives it
    config = GRPOConfig(lr=1e-3, minibatch_size=4)
    algo = GRPO(config, policy=kit.TinyPolicy(), seed=3)
    algo.save(path=str(tmp_path / "ckpt"))
    prompts = [f"room {i}: where now?" for i in range(6)]

    def evaluated(trainer):
        trainer.load(path=str(tmp_path / "ckpt"))
        return trainer.act(prompts=prompts, temperature=1.0, evaluation=True, stream="eval/real")

    fresh = evaluated(GRPO(config, policy=kit.TinyPolicy(), seed=3))
    assert evaluated(algo) == fresh  # the first checkpoint played
    assert evaluated(algo) == fresh  # the next one, in the same trainer
    assert algo.counters["eval_sampled_calls/eval/real"] == 1


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_saved_weights_have_the_mode_a_plain_open_gives(kit, tmp_path, umask):
    # before: safetensors wrote the policy, reference and heads files 0o600, unlike the state
    # file beside them and every other file of the run directory
    import os
    import stat

    algo = PPO(PPOConfig(), policy=kit.TinyPolicy(), seed=0)  # kl_coef > 0: a reference too
    before = os.umask(umask)
    try:
        algo.save(path=str(tmp_path / "ckpt"))
        (tmp_path / "plain").write_bytes(b"")
    finally:
        os.umask(before)
    plain = stat.S_IMODE((tmp_path / "plain").stat().st_mode)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "ckpt").iterdir()}
    assert set(modes) == {"policy.safetensors", "reference.safetensors", "heads.safetensors", "trainer_state.pt"}
    assert modes == dict.fromkeys(modes, plain) and plain == 0o666 & ~umask


def test_load_of_a_missing_checkpoint_names_the_file(kit, tmp_path):
    from dreamgym_core.errors import DataError

    algo = GRPO(GRPOConfig(), policy=kit.TinyPolicy(), seed=0)
    with pytest.raises(DataError, match="policy.safetensors"):
        algo.load(path=str(tmp_path))


@pytest.mark.parametrize(
    "name, damage",
    [
        ("policy.safetensors", b"junk"), ("heads.safetensors", b"junk"), ("trainer_state.pt", b"junk"),
        ("trainer_state.pt", b""), ("trainer_state.pt", None),  # None: a loadable pickle of the wrong content
    ],
)
def test_load_of_a_damaged_checkpoint_file_is_a_data_error(kit, tmp_path, name, damage):
    from dreamgym_core.errors import DataError

    algo = GRPO(GRPOConfig(), policy=kit.TinyPolicy(), seed=0)
    algo.save(path=str(tmp_path))
    if damage is None:
        torch.save({"optimizer": {}}, tmp_path / name)
    else:
        (tmp_path / name).write_bytes(damage)
    with pytest.raises(DataError, match="cannot load 'grpo' algorithm state"):
        GRPO(GRPOConfig(), policy=kit.TinyPolicy(), seed=0).load(path=str(tmp_path))


def test_act_samples_with_the_backend_and_is_seeded(kit):
    a = GRPO(GRPOConfig(max_new_tokens=8), policy=kit.TinyPolicy(), seed=0)
    b = GRPO(GRPOConfig(max_new_tokens=8), policy=kit.TinyPolicy(), seed=0)
    c = GRPO(GRPOConfig(max_new_tokens=8), policy=kit.TinyPolicy(), seed=1)  # the same weights, another run seed
    prompts = [f"task : find the {w} step {i} observe : you are in the room {i} action" for i, w in enumerate(["apple", "key", "door", "cup"])]
    out = a.act(prompts=prompts)
    assert out == b.act(prompts=prompts) and len(out) == 4 and all(isinstance(x, str) for x in out)
    # The tiny random policy is near uniform over its 52 tokens: two seeds' first tokens agree with
    # chance ~0.02 (sum of p**2), so two calls x 4 prompts agree at most with ~0.02**8 ~ 3e-14
    # (every answer one token long), ~0.02**64 when all run their 8 tokens.
    assert [c.act(prompts=prompts) for _ in range(2)] != [out, a.act(prompts=prompts)], "the run seed does not change the samples"
    assert a.act(prompts=prompts[:1], greedy=True) == b.act(prompts=prompts[:1], greedy=True)
    with pytest.raises(TypeError, match="takes a list of prompts, got one str"):  # it played each character
        a.act(prompts=prompts[0])


def test_a_backend_without_local_weights_is_a_clear_error():
    from dreamgym_core.errors import ConfigError

    class Remote:
        model_id = "remote"

        def generate(self, **_):
            return []

    with pytest.raises(ConfigError, match="grpo.*no 'model'"):
        GRPO(GRPOConfig(), policy=Remote(), seed=0)


@pytest.mark.parametrize("cls,config_type", [(GRPO, GRPOConfig), (PPO, PPOConfig)], ids=["grpo", "ppo"])
def test_the_total_loss_adds_the_weighted_kl_and_value_terms(cls, config_type, kit):
    config = config_type(lr=1e-3, minibatch_size=4, kl_coef=0.5)
    algo = cls(config, policy=kit.TinyPolicy(), seed=0)
    groups = kit.make_groups()
    metrics = [algo.update(groups=groups) for _ in range(2)][-1]
    assert metrics["losses/kl_loss"] > 0  # the policy has moved from its reference
    expected = metrics["losses/policy_loss"] + 0.5 * metrics["losses/kl_loss"]
    if cls is PPO:
        expected += config.vf_coef * metrics["losses/value_loss"]
    assert metrics["losses/total_loss"] == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_ppo_runs_gae_with_its_gamma_and_lambda_on_the_value_heads_estimates(kit, monkeypatch):
    calls = []
    gae = maths.gae_advantages

    def spy(rewards, values, mask, *, gamma, lam):
        calls.append((values.clone(), mask.clone(), gamma, lam))
        return gae(rewards, values, mask, gamma=gamma, lam=lam)

    monkeypatch.setattr(maths, "gae_advantages", spy)
    algo = PPO(PPOConfig(lr=1e-3, minibatch_size=4, gamma=0.9, lam=0.5), policy=kit.TinyPolicy(), seed=0)
    groups = kit.make_groups()
    metrics = [algo.update(groups=groups) for _ in range(2)][-1]
    values, mask, gamma, lam = calls[-1]
    assert (gamma, lam) == (0.9, 0.5)
    # the second update's values come from the value head the first one trained: not all zero,
    # and their mean over response tokens is the mean value the update reports
    assert values.abs().sum() > 0
    assert float(values.sum() / mask.sum()) == pytest.approx(metrics["charts/mean_value"], rel=1e-4)


@pytest.mark.parametrize("name", ["grpo", "ppo", "dpo", "sft"])
def test_an_update_reports_each_minibatch_with_its_epoch_and_loss(name, kit):
    # The loop's progress lines inside an RL update (minutes with a pretrained policy on a CPU).
    spec = {s.name: s for s in dreamgym_register_algos()}[name]
    config = msgspec.convert({"lr": 1e-3, "minibatch_size": 3, **({"ppo_epochs": 2} if name in ("grpo", "ppo") else {})}, spec.config_type)
    algo = spec.factory(config, policy=kit.TinyPolicy(), seed=0)
    told = []
    metrics = algo.update(groups=kit.make_groups(), on_batch=lambda *args: told.append(args))
    epochs = 2 if name in ("grpo", "ppo") else 1
    per_epoch = told[0][2]
    assert len(told) == epochs * per_epoch == metrics["perf/optimizer_steps"]
    assert [(e, s) for e, s, _, _ in told] == [(e, s) for e in range(1, epochs + 1) for s in range(1, per_epoch + 1)]
    assert all(steps == per_epoch and math.isfinite(loss) for _, _, steps, loss in told)


MICRO_CASES = [("grpo", mode) for mode in ("token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean")] + [
    ("ppo", "token-mean"), ("ppo", "seq-mean-token-mean"), ("sft", "token-mean"), ("dpo", "token-mean"),
]


@pytest.mark.parametrize("name,mode", MICRO_CASES, ids=[f"{n}-{m}" for n, m in MICRO_CASES])
def test_micro_batches_give_the_update_of_the_whole_minibatch(name, mode, kit):
    # Gradients accumulated over micro-batches of 3 rows (uneven: 8 = 3 + 3 + 2, with responses of
    # different lengths) must move the policy as one minibatch of 8 does, in every aggregation.
    spec = {s.name: s for s in dreamgym_register_algos()}[name]
    groups = kit.make_groups()
    moved = []
    for micro in (None, 3):
        config = msgspec.convert({"lr": 0.5, "minibatch_size": 8, "micro_batch_size": micro, "loss_agg_mode": mode}, spec.config_type)
        algo = spec.factory(config, policy=kit.TinyPolicy(seed=1), seed=0)
        # plain SGD: the step is the gradient (AdamW divides near-zero gradients by their own size,
        # so rounding-level differences there would become whole steps)
        algo._bind()
        algo.optimizer = torch.optim.SGD(algo._param_groups())
        start = kit.flat_params(algo.policy.model)
        losses = []  # each minibatch's loss, as on_batch hears it
        steps = [algo.update(groups=groups, on_batch=lambda *told: losses.append(told[3]))["perf/optimizer_steps"] for _ in range(2)]
        moved.append((kit.flat_params(algo.policy.model) - start, losses, steps))
    (whole, whole_losses, whole_steps), (micro, micro_losses, micro_steps) = moved
    assert whole.abs().max() > 1e-3  # the update moved the weights, so the comparison means something
    assert torch.allclose(micro, whole, atol=1e-5, rtol=1e-4), float((micro - whole).abs().max())
    assert micro_steps == whole_steps and len(whole_losses) == sum(whole_steps) >= 2
    assert micro_losses == pytest.approx(whole_losses, rel=1e-4, abs=1e-6)


def _answer_logprob(algo, prompt: str, answer: str) -> float:
    """The policy's summed log-prob of ``answer`` after ``prompt``, computed on its own."""
    batch = algo._tokenize([prompt], [answer])
    logp, _ = response_logprobs(algo.model, batch)
    return logp.sum().item()


def test_act_with_candidates_picks_the_likeliest_listed_answer_when_greedy(kit):
    algo = GRPO(GRPOConfig(max_new_tokens=4), policy=kit.TinyPolicy(), seed=0)
    prompt = "task : find the apple step 0 observe : you are in the room 0 action"
    options = ["< action > go north < / action >", "< action > take apple < / action >", "< action > look < / action >"]
    with torch.no_grad():
        scores = [_answer_logprob(algo, prompt, o) for o in options]
    best = options[scores.index(max(scores))]
    out = algo.act(prompts=[prompt, prompt], greedy=True, candidates=[options, list(reversed(options))])
    assert out == [best, best]
    # the choice follows the weights: make another answer the likeliest and it is picked
    other = next(o for o in options if o != best)
    opt = torch.optim.SGD(algo.model.parameters(), lr=0.5)
    for _ in range(30):
        opt.zero_grad()
        (-response_logprobs(algo.model, algo._tokenize([prompt], [other]))[0].sum()).backward()
        opt.step()
    assert algo.act(prompts=[prompt], greedy=True, candidates=[options]) == [other]


def test_act_with_candidates_samples_only_listed_answers_seeded_and_generates_where_none_are_listed(kit):
    make = lambda: GRPO(GRPOConfig(max_new_tokens=4), policy=kit.TinyPolicy(), seed=0)  # noqa: E731
    a, b = make(), make()
    prompt = "task : find the apple step 0 observe : you are in the room 0 action"
    options = ["< action > go north < / action >", "< action > go south < / action >"]
    picks = a.act(prompts=[prompt] * 40, candidates=[options] * 40)
    assert set(picks) == set(options)  # both drawn: nearly even odds under random weights
    assert picks == b.act(prompts=[prompt] * 40, candidates=[options] * 40)  # same seed, same draws
    mixed = a.act(prompts=[prompt, prompt], greedy=True, candidates=[[], options])
    assert mixed[1] in options
    assert mixed[0] == a.act(prompts=[prompt], greedy=True)[0]  # no candidates: generated as without them
    with pytest.raises(ValueError, match="1 candidate lists for 2 prompts"):
        a.act(prompts=[prompt, prompt], candidates=[options])


def _listed(traj, options):
    """``traj`` as a listed choice played it: each decision picked among ``options`` (its own answer included)."""
    return msgspec.structs.replace(traj, decisions=[msgspec.structs.replace(d, candidates=list(options)) for d in traj.decisions])


CHOICE_OPTIONS = ["< action > go north < / action >", "< action > go south < / action >", "< action > take apple < / action >"]


def _choice_probs(algo, prompt: str, options) -> list[float]:
    with torch.no_grad():
        return torch.softmax(torch.tensor([_answer_logprob(algo, prompt, o) for o in options]), dim=0).tolist()


def test_choice_logprobs_are_the_log_softmax_of_the_answers_scored_one_by_one(kit):
    algo = GRPO(GRPOConfig(listed_update="choice"), policy=kit.TinyPolicy(), seed=0)
    task = kit.make_groups()[0][0].task
    listed = _listed(kit.trajectory(task, ["go south", "take apple"], False), CHOICE_OPTIONS)
    generated = kit.trajectory(task, ["go north"], True)
    steps, _ = trajectory_steps([listed, generated])
    rows = choice_rows(steps)
    rows.tokens = algo._tokenize([steps[int(o)].prompt for o in rows.owner], rows.texts)
    with torch.no_grad():
        got = choice_logprobs(algo.model, rows, torch.tensor([2, 0, 1])).squeeze(1).tolist()
    expected = [math.log(_choice_probs(algo, steps[i].prompt, CHOICE_OPTIONS)[CHOICE_OPTIONS.index(steps[i].response)]) for i in (0, 1)]
    own = _answer_logprob(algo, steps[2].prompt, steps[2].response)  # generated: its answer's own log-prob
    assert got == pytest.approx([own, *expected], abs=1e-5)


def test_a_choice_update_moves_probability_between_the_listed_answers_towards_the_winner(kit):
    task = kit.make_groups()[0][0].task
    won = _listed(kit.trajectory(task, ["go north"], True), CHOICE_OPTIONS)
    lost = _listed(kit.trajectory(task, ["go south"], False), CHOICE_OPTIONS)
    algo = GRPO(GRPOConfig(lr=1e-2, minibatch_size=8, kl_coef=0.0, listed_update="choice"), policy=kit.TinyPolicy(), seed=0)
    prompt = won.decisions[0].prompt
    before = _choice_probs(algo, prompt, CHOICE_OPTIONS)
    for _ in range(3):
        metrics = algo.update(groups=[[won, lost]])
    after = _choice_probs(algo, prompt, CHOICE_OPTIONS)
    assert after[0] > before[0] + 0.05 and after[1] < before[1]
    assert metrics["errors/nonfinite_loss_steps"] == 0 and metrics["data/trainable_steps"] == 2


def test_a_choice_among_one_listed_answer_trains_nothing_while_its_response_would(kit):
    task = kit.make_groups()[0][0].task
    only = [CHOICE_OPTIONS[0]]
    group = [_listed(kit.trajectory(task, ["go north"], True), only), _listed(kit.trajectory(task, ["go north"], False, reward=0.0), only)]
    moved = {}
    for mode in ("choice", "response"):
        algo = GRPO(GRPOConfig(lr=1e-2, minibatch_size=8, kl_coef=0.0, listed_update=mode), policy=kit.TinyPolicy(), seed=0)
        start = kit.flat_params(algo.policy.model)
        algo.update(groups=[group])
        moved[mode] = (kit.flat_params(algo.policy.model) - start).abs().max().item()
    # a sure pick has log-prob 0 whatever the weights: no gradient; the response's own tokens still move
    assert moved == {"choice": 0.0, "response": pytest.approx(moved["response"])} and moved["response"] > 1e-4


def test_a_choice_update_refuses_a_step_whose_answer_is_not_among_its_listed_ones(kit):
    task = kit.make_groups()[0][0].task
    stray = _listed(kit.trajectory(task, ["open door"], True), CHOICE_OPTIONS)
    algo = GRPO(GRPOConfig(listed_update="choice"), policy=kit.TinyPolicy(), seed=0)
    with pytest.raises(DataError, match=r"^task 't0', step 0 of its trajectory \(trajectory 0 of the update\): its answer "
                                         r"'< action > open door < / action >' is not among the 3 listed answers"):
        algo.update(groups=[[stray, _listed(kit.trajectory(task, ["go north"], False), CHOICE_OPTIONS)]])


def test_a_stray_choice_is_named_by_its_task_and_its_step_in_its_trajectory(kit):
    # not by its row in the flattened update (row 3 here)
    task = kit.make_groups()[0][0].task
    fine = _listed(kit.trajectory(task, ["go north", "take apple"], True), CHOICE_OPTIONS)
    stray = _listed(kit.trajectory(task, ["go south", "open door"], False), CHOICE_OPTIONS)
    steps, _ = trajectory_steps([fine, stray])
    with pytest.raises(DataError, match=r"^task 't0', step 1 of its trajectory \(trajectory 1 of the update\): its answer "
                                         r"'< action > open door < / action >'"):
        choice_rows(steps)


def without_eos(policy):
    policy.tokenizer.eos_token = None  # an empty response then has no token to be trained as
    return policy


@pytest.mark.parametrize("cls,config_type", [(GRPO, GRPOConfig), (PPO, PPOConfig)], ids=["grpo", "ppo"])
@pytest.mark.parametrize("micro", [None, 1])
@pytest.mark.parametrize("agg", ["token-mean", "token-sum"])
def test_a_minibatch_without_response_tokens_takes_no_step_and_is_no_error(cls, config_type, micro, agg, kit, caplog):
    # one row per minibatch: the empty response's minibatch has no token to divide its loss by
    # (token-sum: nothing divides, but an AdamW step on its zero gradient still moved the weights)
    task = kit.make_groups()[0][0].task
    group = [unparsed(kit, task, ""), unparsed(kit, task, "")]
    config = dict(lr=1e-3, micro_batch_size=micro, kl_coef=0.0, loss_agg_mode=agg)
    algo = cls(config_type(minibatch_size=1, **config), policy=without_eos(kit.TinyPolicy()), seed=0)
    before = kit.flat_params(algo.policy.model)
    told = []
    with caplog.at_level(logging.WARNING):
        metrics = algo.update(groups=[group], on_batch=lambda *args: told.append(args))
    assert metrics["errors/nonfinite_loss_steps"] == 0 and metrics["perf/optimizer_steps"] == 0
    assert metrics["data/empty_minibatches"] == 2 and told == []
    assert torch.equal(before, kit.flat_params(algo.policy.model))
    assert "optimizer step skipped" not in caplog.text
    # a minibatch of both rows (with micro: in two micro-batches, neither with a token): no step either
    algo = cls(config_type(minibatch_size=2, **config), policy=without_eos(kit.TinyPolicy()), seed=0)
    before = kit.flat_params(algo.policy.model)
    metrics = algo.update(groups=[group])
    assert metrics["errors/nonfinite_loss_steps"] == 0 and metrics["perf/optimizer_steps"] == 0
    assert metrics["data/empty_minibatches"] == 1
    assert torch.equal(before, kit.flat_params(algo.policy.model))


def test_grpo_says_once_that_a_group_of_one_has_no_baseline(kit, caplog):
    # loop.group_size: 1 made GRPO a REINFORCE without baseline (verl's estimator gives a lone
    # trajectory its raw score), without a word
    groups = kit.make_groups()
    algo = GRPO(GRPOConfig(lr=1e-3, minibatch_size=4), policy=kit.TinyPolicy(), seed=0)
    with caplog.at_level(logging.WARNING):
        algo.update(groups=groups)
        assert "groups hold one trajectory" not in caplog.text
        algo.update(groups=[[group[0]] for group in groups])
        algo.update(groups=[[group[0]] for group in groups])
    told = [r for r in caplog.records if "groups hold one trajectory" in r.getMessage()]
    assert len(told) == 1 and f"{len(groups)} of {len(groups)} groups" in told[0].getMessage()

