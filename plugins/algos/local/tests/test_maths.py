"""The maths wrappers against verl's functions called directly on the same inputs."""

import math

import numpy as np
import pytest
import torch
from verl.trainer.ppo import core_algos

from dreamgym_plugin_local import maths


def test_grpo_advantages_equal_verl_token_level():
    scores = torch.tensor([1.0, 0.0, 0.9, 0.0, 1.0, 1.0, 0.0, -0.1])
    groups = [0, 0, 0, 0, 1, 1, 1, 2]
    ours = maths.grpo_advantages(scores, groups)
    # verl on token-level rows: the score on one token of a 5-token masked response
    mask = torch.zeros(8, 5)
    mask[:, :3] = 1
    rewards = torch.zeros(8, 5)
    rewards[:, 2] = scores
    theirs, _ = core_algos.compute_grpo_outcome_advantage(
        token_level_rewards=rewards, response_mask=mask, index=np.array(groups), epsilon=1e-6, norm_adv_by_std_in_grpo=True
    )
    assert torch.allclose(ours, theirs[:, 0], atol=1e-6)
    assert ours[7].item() == pytest.approx(-0.1)  # verl: a group of one keeps its raw score
    # group 0: mean 0.475, so the successes are positive and the failures negative
    assert (ours[[0, 2]] > 0).all() and (ours[[1, 3]] < 0).all()


def test_grpo_without_std_normalisation_is_mean_centred():
    scores = torch.tensor([1.0, 0.0, 0.0, 0.0])
    adv = maths.grpo_advantages(scores, [0, 0, 0, 0], norm_by_std=False)
    assert torch.allclose(adv, torch.tensor([0.75, -0.25, -0.25, -0.25]))


@pytest.mark.parametrize("norm_by_std", [True, False])
def test_groups_that_all_scored_alike_get_exactly_zero_advantage(norm_by_std):
    # eight successes, each with one invalid step: all score 0.9; in float32 verl's group mean
    # missed 0.9 by an ulp and every member got -0.056 (norm_by_std) instead of 0
    scores = maths.trajectory_scores([1.0] * 8, [1] * 8, 0.1)
    adv = maths.grpo_advantages(scores, [0] * 8, norm_by_std=norm_by_std)
    assert adv.tolist() == [0.0] * 8
    assert maths.zero_signal_group_share(adv, [0] * 8) == 1.0
    # every group size, penalty count and outcome: an all-alike group carries no signal
    for n in (2, 3, 4, 5, 6, 7, 8, 16):
        for k in range(16):
            for outcome in (0.0, 1.0):
                scores = maths.trajectory_scores([outcome] * n, [k] * n, 0.1)
                adv = maths.grpo_advantages(scores, [0] * n, norm_by_std=norm_by_std)
                assert adv.abs().max().item() == 0.0, (n, k, outcome)


@pytest.mark.parametrize("norm_by_std", [True, False])
def test_scores_alike_but_for_rounding_are_one_score(norm_by_std):
    # 0.3 with one invalid step is 0.19999999999999998, not 0.2: the group got +-2.8e-11
    # advantages and was not counted as a zero-signal group
    scores = maths.trajectory_scores([0.3, 0.2], [1, 0], 0.1)
    assert scores[0].item() != scores[1].item()
    adv = maths.grpo_advantages(scores, [0, 0], norm_by_std=norm_by_std)
    assert adv.tolist() == [0.0, 0.0] and maths.zero_signal_group_share(adv, [0, 0]) == 1.0
    # scores apart by more than rounding still carry their signal
    adv = maths.grpo_advantages(maths.trajectory_scores([0.3, 0.2], [0, 0], 0.1), [0, 0], norm_by_std=norm_by_std)
    assert adv[0].item() > 0 > adv[1].item()


def test_a_zeroed_group_leaves_the_other_groups_as_verl_computes_them():
    scores = maths.trajectory_scores([1.0, 1.0, 1.0, 0.0], [1, 1, 0, 0], 0.1)
    adv = maths.grpo_advantages(scores, [0, 0, 1, 1])
    assert adv[:2].tolist() == [0.0, 0.0]
    assert adv[2].item() == pytest.approx(1 / math.sqrt(2), rel=1e-5) and adv[3].item() == pytest.approx(-1 / math.sqrt(2), rel=1e-5)
    assert adv.dtype == torch.float32


def test_trajectory_scores_subtract_penalty_per_invalid_step():
    assert maths.trajectory_scores([1.0, 0.0], [0, 3], 0.1).tolist() == pytest.approx([1.0, -0.3])


def test_place_step_rewards_puts_reward_on_last_response_token():
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.float32)
    out = maths.place_step_rewards(torch.tensor([0.5, 1.0, 7.0]), mask)
    assert out.tolist() == [[0, 0, 0.5, 0], [1.0, 0, 0, 0], [0, 0, 0, 0]]


def test_pack_unpack_round_trip_keeps_step_order():
    rows = torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1]], dtype=torch.float32)
    packed, pmask = maths.pack_episodes(rows, mask, [0, 1, 0])
    assert packed.tolist() == [[1, 2, 4, 5, 6], [3, 0, 0, 0, 0]]
    assert pmask.tolist() == [[1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert torch.equal(maths.unpack_episodes(packed, mask, [0, 1, 0]), rows)


def test_gae_equals_verl_and_returns_are_reward_to_go_at_lambda_one():
    torch.manual_seed(0)
    rewards = torch.zeros(2, 6)
    rewards[0, 2], rewards[0, 5], rewards[1, 3] = 0.5, 1.0, -0.1
    values = torch.randn(2, 6)
    mask = torch.ones(2, 6)
    mask[1, 4:] = 0
    adv, ret = maths.gae_advantages(rewards, values, mask, gamma=1.0, lam=1.0)
    ref_adv, ref_ret = core_algos.compute_gae_advantage_return(rewards, values, mask, gamma=1.0, lam=1.0)
    assert torch.allclose(adv, ref_adv) and torch.allclose(ret, ref_ret)
    assert ret[0, :3].tolist() == pytest.approx([1.5, 1.5, 1.5])
    assert ret[0, 3:].tolist() == pytest.approx([1.0, 1.0, 1.0])


@pytest.mark.parametrize("mask", [[[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]], [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], [[], []]],
                         ids=["one-token", "no-token", "no-column"])
def test_gae_on_fewer_than_two_tokens_gives_zero_advantage_and_the_reward_as_return(mask):
    # verl's whitening raises on a batch of one response token (Bessel: n - 1 = 0) or none;
    # a PPO batch of one step whose response is a single token (an empty response trained as
    # EOS) got there. Whitening one value centres it to 0; its return is its reward (terminal).
    mask = torch.tensor(mask).reshape(2, -1)
    rewards, values = 0.7 * mask, 0.3 * mask
    adv, ret = maths.gae_advantages(rewards, values, mask, gamma=0.9, lam=0.95)
    assert adv.shape == ret.shape == mask.shape
    assert torch.equal(adv, torch.zeros_like(mask)) and torch.allclose(ret, 0.7 * mask)


def test_policy_loss_equals_verl_vanilla():
    torch.manual_seed(1)
    old, new, adv = torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 4)
    mask = torch.ones(3, 4)
    config = maths.actor_config(0.2, 0.28, 3.0, "token-mean")
    ours, metrics = maths.policy_loss(old, new, adv, mask, config=config)
    theirs, _ = core_algos.compute_policy_loss_vanilla(old, new, adv, mask, loss_agg_mode="token-mean", config=config)
    assert torch.allclose(ours, theirs) and "actor/ppo_kl" in metrics


def test_kl_loss_is_zero_at_reference_and_positive_elsewhere():
    logp = torch.log(torch.tensor([[0.5, 0.25]]))
    mask = torch.ones(1, 2)
    assert maths.kl_loss(logp, logp, mask, kl_type="low_var_kl", agg_mode="token-mean").item() == pytest.approx(0.0)
    assert maths.kl_loss(logp, logp - 0.3, mask, kl_type="low_var_kl", agg_mode="token-mean").item() > 0


def test_dpo_loss_sanity():
    zero = torch.zeros(2)
    losses, cr, rr = maths.dpo_loss(zero, zero, zero, zero, beta=0.1)
    assert losses.tolist() == pytest.approx([math.log(2)] * 2)
    better, _, _ = maths.dpo_loss(torch.tensor([-1.0]), torch.tensor([-5.0]), torch.tensor([-3.0]), torch.tensor([-3.0]), beta=0.1)
    worse, _, _ = maths.dpo_loss(torch.tensor([-5.0]), torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-3.0]), beta=0.1)
    assert better.item() < math.log(2) < worse.item()
    # TRL's formula: -logsigmoid(beta * (2 - (-2)))
    assert better.item() == pytest.approx(-torch.nn.functional.logsigmoid(torch.tensor(0.4)).item())


@pytest.mark.parametrize("norm_by_std", [True, False])
def test_zero_signal_groups_are_those_whose_samples_all_scored_alike(norm_by_std):
    # groups: all succeed | mixed | all fail alike | all fail, one with an invalid step | a group of one
    scores = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, -0.1, 1.0])
    groups = [0, 0, 1, 1, 2, 2, 3, 3, 4]
    adv = maths.grpo_advantages(scores, groups, norm_by_std=norm_by_std)
    # groups 0 and 2 carry no signal; verl keeps a lone sample's raw score, so group 4 does
    assert maths.zero_signal_group_share(adv, groups) == pytest.approx(2 / 5)


# --- values computed by hand (the formulas are written out, not taken from verl) ---------


def test_gae_discounts_by_gamma_and_lambda_as_written():
    # one episode of three tokens, gamma != lambda: A_t = delta_t + gamma * lam * A_{t+1},
    # delta_t = r_t + gamma * V_{t+1} - V_t (V after the last token is 0); returns = A + V
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.2, 0.4]])
    mask = torch.ones(1, 3)
    adv, ret = maths.gae_advantages(rewards, values, mask, gamma=0.9, lam=0.5)
    a2 = 1.0 - 0.4
    a1 = 0.9 * 0.4 - 0.2 + 0.9 * 0.5 * a2
    a0 = 0.9 * 0.2 - 0.5 + 0.9 * 0.5 * a1
    assert ret[0].tolist() == pytest.approx([a0 + 0.5, a1 + 0.2, a2 + 0.4], abs=1e-6)
    raw = torch.tensor([a0, a1, a2])
    assert adv[0].tolist() == pytest.approx(((raw - raw.mean()) / raw.std()).tolist(), abs=1e-4)  # whitened (n - 1)


def test_gae_on_exactly_two_tokens_is_whitened_not_zeroed():
    rewards = torch.tensor([[0.0, 1.0, 0.0]])
    values = torch.tensor([[0.5, 0.2, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    adv, ret = maths.gae_advantages(rewards, values, mask, gamma=1.0, lam=1.0)
    # raw advantages 0.5 and 0.8: whitened with Bessel's n - 1 = 1 they are -/+ 1/sqrt(2)
    assert adv[0, :2].tolist() == pytest.approx([-1 / math.sqrt(2), 1 / math.sqrt(2)], abs=1e-4)
    assert ret[0, :2].tolist() == pytest.approx([1.0, 1.0])


def _pg_by_hand(ratio, adv, low, high, c):
    """The dual-clip PPO loss of one token, written out."""
    unclipped, clipped = -adv * ratio, -adv * min(max(ratio, 1 - low), 1 + high)
    loss = max(unclipped, clipped)
    return min(loss, -adv * c) if adv < 0 else loss


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-sum"])
def test_policy_loss_clips_with_both_ratios_and_the_dual_clip_bound(agg):
    # tokens: (ratio 1.5, A +1) hits the upper bound 1.28; (ratio 5, A -1) the dual-clip bound 4;
    # (ratio 0.5, A +1) is unclipped. Rows: [a, b] and [c, padding].
    ratio = torch.tensor([[1.5, 5.0], [0.5, 1.0]])
    adv = torch.tensor([[1.0, -1.0], [1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    old = torch.zeros(2, 2)
    config = maths.actor_config(0.2, 0.28, 4.0, agg)
    loss, _ = maths.policy_loss(old, torch.log(ratio), adv, mask, config=config)
    a, b, c = (_pg_by_hand(r, x, 0.2, 0.28, 4.0) for r, x in ((1.5, 1.0), (5.0, -1.0), (0.5, 1.0)))
    assert (a, b, c) == pytest.approx((-1.28, 4.0, -0.5))
    expected = (a + b + c) / 3 if agg == "token-mean" else ((a + b) + c) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("kl_type,per_token", [
    ("low_var_kl", lambda d: math.exp(-d) + d - 1),  # k3 with d = logp - ref_logp
    ("k1", lambda d: d),
    ("k2", lambda d: 0.5 * d * d),
])
@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
def test_kl_loss_is_the_named_estimator_of_logp_minus_ref(kl_type, per_token, agg):
    logp = torch.log(torch.tensor([[0.5, 0.2], [0.4, 0.9]]))
    ref = torch.log(torch.tensor([[0.25, 0.3], [0.1, 0.9]]))
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    d = (logp - ref).tolist()
    t = [[per_token(x) for x in row] for row in d]
    expected = (t[0][0] + t[0][1] + t[1][0]) / 3 if agg == "token-mean" else ((t[0][0] + t[0][1]) / 2 + t[1][0]) / 2
    got = maths.kl_loss(logp, ref, mask, kl_type=kl_type, agg_mode=agg).item()
    assert got == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("agg,expected", [
    ("token-mean", 0.5 * (0.25 + 1.44 + 2.25) / 3),
    ("seq-mean-token-sum", 0.5 * ((0.25 + 1.44) + 2.25) / 2),
])
def test_value_loss_is_half_the_worse_of_clipped_and_unclipped_squared_errors(agg, expected):
    # token 1: vpred 1.0 moved 1.0 from old 0.0 and is clipped to 0.5 (return 1.0): (0.5 - 1)^2
    # token 2: vpred 0.2 within the range (return -1.0): 1.2^2 either way
    # token 3: vpred -2.0 clipped to -0.5 (return -2.0): the unclipped error 0 is not taken
    vpreds = torch.tensor([[1.0, 0.2], [-2.0, 9.0]])
    returns = torch.tensor([[1.0, -1.0], [-2.0, 0.0]])
    old = torch.zeros(2, 2)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    loss, clipfrac = maths.value_loss(vpreds, returns, old, mask, cliprange=0.5, agg_mode=agg)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert float(clipfrac) == pytest.approx(2 / 3)


@pytest.mark.parametrize("agg,expected", [("token-mean", (1 + 2 + 3) / 3), ("seq-mean-token-sum", ((1 + 2) + 3) / 2)])
def test_nll_loss_aggregates_as_configured(agg, expected):
    logp = -torch.tensor([[1.0, 2.0], [3.0, 7.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    assert maths.nll_loss(logp, mask, agg_mode=agg).item() == pytest.approx(expected)


def test_dpo_loss_takes_each_response_against_its_own_reference():
    beta = 0.5
    chosen, rejected = torch.tensor([-2.0]), torch.tensor([-4.0])
    ref_chosen, ref_rejected = torch.tensor([-1.0]), torch.tensor([-6.0])
    losses, cr, rr = maths.dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=beta)
    # chosen fell by 1 against its reference, rejected rose by 2: margin beta * (-1 - 2) = -1.5
    assert cr.item() == pytest.approx(-0.5) and rr.item() == pytest.approx(1.0)
    assert losses.item() == pytest.approx(math.log(1 + math.exp(1.5)))


def test_grpo_advantages_add_epsilon_to_the_group_std():
    # scores 1 and 0: mean 0.5, std (n - 1) 1/sqrt(2); epsilon 1.0 is visible in the quotient
    adv = maths.grpo_advantages(torch.tensor([1.0, 0.0]), [0, 0], epsilon=1.0)
    std = 1 / math.sqrt(2)
    assert adv.tolist() == pytest.approx([0.5 / (std + 1.0), -0.5 / (std + 1.0)], rel=1e-5)


def test_zero_signal_share_of_no_groups_is_zero():
    assert maths.zero_signal_group_share(torch.zeros(0), []) == 0.0


def test_a_group_with_one_zero_advantage_still_carries_signal():
    # scores 1, 0 and 0.5: the last sits on the group mean (advantage 0), the others do not
    adv = maths.grpo_advantages(torch.tensor([1.0, 0.0, 0.5]), [0, 0, 0])
    assert adv[2].item() == 0.0 and adv[0].item() > 0 > adv[1].item()
    assert maths.zero_signal_group_share(adv, [0, 0, 0]) == 0.0


def test_loading_the_plugin_leaves_the_programs_logging_alone():
    # verl's import ran logging.basicConfig on the root logger: a script's own basicConfig
    # (its level, its format) then did nothing once the local trainer was loaded.
    import subprocess
    import sys

    code = (
        "import logging; import dreamgym_plugin_local.maths;"
        "assert logging.root.handlers == [], logging.root.handlers;"
        "logging.basicConfig(level=logging.INFO, format='mine %(message)s'); logging.getLogger('x').info('hello')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "mine hello" in done.stderr


def test_micro_shares_split_the_loss_normaliser_of_each_aggregation():
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
    chunks = [torch.tensor([0, 1]), torch.tensor([2, 3])]
    assert maths.micro_shares(maths.row_weights(mask, "token-mean"), chunks) == [4 / 8, 4 / 8]
    # sequences count once, and a sequence without response tokens not at all (as in verl's agg_loss)
    assert maths.micro_shares(maths.row_weights(mask, "seq-mean-token-mean"), chunks) == [2 / 3, 1 / 3]
    assert maths.micro_shares(maths.row_weights(mask, "seq-mean-token-sum"), [torch.tensor([0]), torch.tensor([1, 2, 3])]) == [1 / 3, 2 / 3]
    assert maths.row_weights(mask, "token-sum") is None and maths.micro_shares(None, chunks) == [1.0, 1.0]
    # nothing to normalise by: no split (the minibatch's loss is 0/0 and its step is skipped whole)
    assert maths.micro_shares(maths.row_weights(mask, "token-mean"), [torch.tensor([2])]) is None


def test_the_shared_micro_batch_losses_add_up_to_the_minibatch_loss():
    torch.manual_seed(0)
    loss_mat, mask = torch.randn(5, 6), (torch.rand(5, 6) > 0.4).float()
    chunks = [torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([4])]
    for mode in ("token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean"):
        whole = maths.core_algos.agg_loss(loss_mat=loss_mat, loss_mask=mask, loss_agg_mode=mode)
        shares = maths.micro_shares(maths.row_weights(mask, mode), chunks)
        parts = [maths.core_algos.agg_loss(loss_mat=loss_mat[c], loss_mask=mask[c], loss_agg_mode=mode) for c in chunks]
        assert float(sum(s * p for s, p in zip(shares, parts))) == pytest.approx(float(whole), rel=1e-6), mode


def test_pick_candidate_takes_the_likeliest_when_greedy_and_draws_from_the_softmax_otherwise():
    scores = torch.tensor([math.log(1.0), math.log(3.0), float("-inf")])
    assert maths.pick_candidate(scores, greedy=True) == 1
    assert maths.pick_candidate(torch.tensor([0.5, 0.5]), greedy=True) == 0  # the first of ties
    generator = torch.Generator().manual_seed(0)
    picks = [maths.pick_candidate(scores, greedy=False, generator=generator) for _ in range(4000)]
    assert 2 not in picks  # probability 0
    assert abs(picks.count(1) / len(picks) - 0.75) < 0.03  # softmax([0, log 3]) = [0.25, 0.75]
    with pytest.raises(ValueError, match="non-empty 1-D"):
        maths.pick_candidate(torch.tensor([]), greedy=True)


def test_choice_logprob_is_the_log_softmax_within_each_steps_answers_and_a_generated_answers_own_score():
    scores = torch.tensor([-1.0, -3.0, -2.0, -0.5, -4.0], requires_grad=True)
    segment = torch.tensor([0, 0, 0, 1, 2])  # step 0 lists three answers, step 1 one, step 2 generated its own
    chosen, listed = torch.tensor([1, 3, 4]), torch.tensor([True, True, False])
    out = maths.choice_logprob(scores, segment, chosen, listed)
    expected = [torch.log_softmax(scores[:3], dim=0)[1].item(), 0.0, -4.0]  # one listed answer: a sure pick
    assert out.tolist() == pytest.approx(expected, abs=1e-6)
    # the pick's gradient is one minus its probability on it, minus the others' probabilities on
    # them: scores every answer of a step shares (the same prefix) cancel out
    out[0].backward()
    p = torch.softmax(scores[:3].detach(), dim=0)
    assert scores.grad[:3].tolist() == pytest.approx([-p[0].item(), 1 - p[1].item(), -p[2].item()], abs=1e-6)
    assert scores.grad[:3].sum().item() == pytest.approx(0.0, abs=1e-6) and scores.grad[3:].tolist() == [0.0, 0.0]
    # stable where a plain exp would underflow to log(0)
    far = maths.choice_logprob(torch.tensor([-2000.0, -2001.0]), torch.tensor([0, 0]), torch.tensor([0]), torch.tensor([True]))
    assert far.item() == pytest.approx(-math.log1p(math.exp(-1.0)), abs=1e-3)  # float32 spacing near 2000: 1.2e-4
