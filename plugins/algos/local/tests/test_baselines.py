"""SFT and DPO baselines on a tiny random Llama."""

import logging
import math
from types import SimpleNamespace

import pytest
import torch

from dreamgym_core.records import PolicyDecision, Task, Trajectory, Transition
from dreamgym_plugin_local.batch import TokenBatch, response_logprobs
from dreamgym_plugin_local.config import DPOConfig, SFTConfig
from dreamgym_plugin_local.dpo import DPO, preference_pairs
from dreamgym_plugin_local.sft import SFT


def sequence_logprob(algo, prompt, response):
    batch = algo._tokenize([prompt], [response])
    with torch.no_grad():
        return float(response_logprobs(algo.model, batch)[0].sum())


def test_preference_pairs_prefer_same_prompt_then_same_step(kit):
    group = kit.make_groups()[0]
    pairs = preference_pairs(group)
    assert len(pairs) == 4  # two winners x two steps, each against a loser
    prompt, chosen, rejected = pairs[0]
    assert "go north" in chosen and "go south" in rejected and prompt == group[0].decisions[0].prompt
    assert all(c != r for _, c, r in pairs)
    assert preference_pairs(group, max_pairs=1) == pairs[:1]
    assert preference_pairs([t for t in group if t.success]) == []


def _played(task, steps, success):
    """A trajectory of (prompt, action) steps: the prompts name the states."""
    transitions = [Transition(task_id=task.id, episode_id="e", step=i, state=p, action=a, next_state="", reward=float(success and i == len(steps) - 1),
                              done=i == len(steps) - 1, success=success and i == len(steps) - 1) for i, (p, a) in enumerate(steps)]
    decisions = [PolicyDecision(text=a, action=a, parsed=True, prompt=p) for p, a in steps]
    return Trajectory(task=task, transitions=transitions, decisions=decisions)


def test_preference_pairs_take_a_rejected_response_at_the_same_state_from_any_failed_trajectory():
    task = Task(id="t", instruction="find the key", domain="d")
    win = _played(task, [("P0", "go north"), ("P1", "take key")], True)
    lose_a = _played(task, [("P0", "go west"), ("Q1", "look")], False)
    lose_b = _played(task, [("P0", "go north"), ("P1", "drop key")], False)
    # at P0 the assigned loser's own answer; at P1 the other loser's, not "look" from state Q1
    assert preference_pairs([win, lose_a, lose_b]) == [("P0", "go north", "go west"), ("P1", "take key", "drop key")]
    # no failed trajectory reached the state: the assigned loser's step at the same index
    assert preference_pairs([win, lose_a]) == [("P0", "go north", "go west"), ("P1", "take key", "look")]
    # a failed trajectory's same-state answer that equals the chosen one is no preference: the next loser's is taken
    assert preference_pairs([win, lose_b, lose_a]) == [("P0", "go north", "go west"), ("P1", "take key", "drop key")]
    # the same state, answered only as the winner did: no pair there
    assert preference_pairs([win, lose_b]) == [("P1", "take key", "drop key")]


def test_dpo_raises_chosen_relative_to_rejected(kit):
    algo = DPO(DPOConfig(lr=1e-3, epochs=3, minibatch_size=2), policy=kit.TinyPolicy(), seed=0)
    trajectories = [t for g in kit.make_groups() for t in g]
    prompt, chosen, rejected = preference_pairs(kit.make_groups()[0])[0]
    margin0 = sequence_logprob(algo, prompt, chosen) - sequence_logprob(algo, prompt, rejected)
    metrics = algo.fit_offline(trajectories)
    margin1 = sequence_logprob(algo, prompt, chosen) - sequence_logprob(algo, prompt, rejected)
    assert margin1 > margin0 + 0.1
    assert metrics["data/pairs"] == 8 and metrics["charts/reward_margin"] > 0


def test_sft_lowers_the_nll_of_expert_responses_only(kit):
    algo = SFT(SFTConfig(lr=1e-3, epochs=3, minibatch_size=4), policy=kit.TinyPolicy(), seed=0)
    groups = kit.make_groups()
    expert = groups[0][0].decisions[0]
    before = sequence_logprob(algo, expert.prompt, expert.text)
    first = algo.fit_offline([t for g in groups for t in g])
    assert first["data/trainable_steps"] == 8  # 4 successful trajectories x 2 steps
    assert sequence_logprob(algo, expert.prompt, expert.text) > before + 1.0
    last = algo.update(groups=groups)
    assert last["losses/sft_loss"] < first["losses/sft_loss"]


def test_trajectories_without_decisions_are_skipped_and_counted(kit):
    import msgspec

    algo = SFT(SFTConfig(), policy=kit.TinyPolicy(), seed=0)
    bare = [msgspec.structs.replace(t, decisions=[]) for t in kit.make_groups()[0]]
    assert algo.fit_offline(bare) == {"data/trainable_steps": 0.0, "data/skipped_trajectories": 2.0}


def test_response_logprobs_equal_the_full_logits_computation(kit):
    # response_logprobs asks the model for logits only where a response token is predicted;
    # on a padded batch with different prompt and response lengths (one empty) it must equal
    # the log-softmax of the full logits at the same positions.
    algo = SFT(SFTConfig(lr=1e-3, epochs=1, minibatch_size=4), policy=kit.TinyPolicy(), seed=0)
    prompts = ["go", "you are in a long corridor with many doors " * 3, "look around the room", "x"]
    batch = algo._tokenize(prompts, [" go north", " take the coin now", "", " open door"])
    with torch.no_grad():
        kept, _ = response_logprobs(algo.model, batch)
        logits = algo.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()
    full = torch.log_softmax(logits, dim=-1)
    for i in range(len(prompts)):
        for j in range(int(batch.response_mask[i].sum())):
            pos = int(batch.positions[i, j])
            expected = full[i, pos - 1, batch.input_ids[i, pos]]
            assert float(kept[i, j]) == pytest.approx(float(expected), abs=1e-5)
    assert float(kept[2].abs().sum()) == 0.0  # the empty response contributes nothing


def test_each_winner_is_assigned_the_next_failed_trajectory_in_turn():
    task = Task(id="t", instruction="find the key", domain="d")
    wins = [_played(task, [(f"W{i}", f"win {i}")], True) for i in range(3)]
    losses = [_played(task, [(f"L{i}", f"lose {i}")], False) for i in range(2)]
    # no loser reached a winner's state: winner w takes loser w mod 2's answer at the same step
    assert preference_pairs([*wins, *losses]) == [("W0", "win 0", "lose 0"), ("W1", "win 1", "lose 1"), ("W2", "win 2", "lose 0")]


def test_the_same_state_is_looked_up_in_the_assigned_failed_trajectory_first():
    task = Task(id="t", instruction="find the key", domain="d")
    wins = [_played(task, [("P0", "go north")], True) for _ in range(2)]
    losses = [_played(task, [("P0", f"go {d}")], False) for d in ("west", "east")]
    assert preference_pairs([*wins, *losses]) == [("P0", "go north", "go west"), ("P0", "go north", "go east")]


def test_trajectories_with_no_response_are_not_assigned_as_losers():
    task = Task(id="t", instruction="find the key", domain="d")
    win = _played(task, [("W0", "go north")], True)
    silent = _played(task, [("L0", "")], False)  # failed without writing anything
    loss = _played(task, [("L1", "look")], False)
    assert preference_pairs([win, silent, loss]) == [("W0", "go north", "look")]


def test_the_dpo_loss_of_a_step_is_the_mean_over_its_pairs(kit):
    # before the first step the policy is its reference: every pair's loss is log 2
    algo = DPO(DPOConfig(lr=1e-3, minibatch_size=8), policy=kit.TinyPolicy(), seed=0)
    group = kit.make_groups()[0]
    metrics = algo.update(groups=[group])
    assert metrics["data/pairs"] == 4 and metrics["losses/dpo_loss"] == pytest.approx(math.log(2), abs=1e-5)
    # and no pair is counted as ranked right while its two implicit rewards are equal
    assert metrics["charts/reward_margin"] == 0.0 and metrics["charts/reward_accuracy"] == 0.0


def test_an_empty_step_keeps_its_index_for_the_same_step_fallback():
    task = Task(id="t", instruction="find the key", domain="d")
    # the winner wrote nothing at step 0: its steps 1 and 2 face the loser's steps 1 and 2
    win = _played(task, [("W0", ""), ("W1", "take key"), ("W2", "open door")], True)
    loss = _played(task, [("L0", "go west"), ("L1", "look"), ("L2", "go east")], False)
    assert preference_pairs([win, loss]) == [("W1", "take key", "look"), ("W2", "open door", "go east")]
    # the loser wrote nothing at step 1: nothing to reject there (not its step 0 or 2)
    gap = _played(task, [("L0", "go west"), ("L1", ""), ("L2", "go east")], False)
    assert preference_pairs([win, gap]) == [("W2", "open door", "go east")]


def test_a_winner_step_past_the_failed_trajectorys_end_gives_no_pair():
    task = Task(id="t", instruction="find the key", domain="d")
    win = _played(task, [("W0", "go north"), ("W1", "open drawer"), ("W2", "take key"), ("W3", "unlock door")], True)
    short = _played(task, [("L0", "go west"), ("L1", "eat key")], False)  # failed after two steps
    # its steps 0 and 1 face the winner's; it has no step 2 or 3 (not its last one, again and again)
    assert preference_pairs([win, short]) == [("W0", "go north", "go west"), ("W1", "open drawer", "eat key")]


@pytest.mark.parametrize("agg", ["token-mean", "token-sum"])
def test_sft_minibatch_of_a_response_without_tokens_takes_no_step_and_is_no_error(agg, kit, caplog):
    task = Task(id="t", instruction="find the key", domain="d")
    blank = _played(task, [("W0", " ")], True)  # not empty, but the tokenizer gives it no token
    good = _played(task, [("W0", "go north")], True)
    algo = SFT(SFTConfig(lr=1e-3, minibatch_size=1, loss_agg_mode=agg), policy=kit.TinyPolicy(), seed=0)
    with caplog.at_level(logging.WARNING):
        metrics = algo.update(groups=[[blank, good]])
    assert metrics["errors/nonfinite_loss_steps"] == 0 and metrics["perf/optimizer_steps"] == 1
    assert metrics["data/empty_minibatches"] == 1 and "optimizer step skipped" not in caplog.text


def test_micro_batched_metrics_are_weighed_by_the_micro_batches_that_ran(kit):
    # minibatch of two rows, one without tokens: its micro-batch is skipped, and the other's loss
    # is the minibatch's, so the logged loss is that of the whole minibatch at once
    task = Task(id="t", instruction="find the key", domain="d")
    group = [_played(task, [("W0", " ")], True), _played(task, [("W0", "go north")], True)]
    logged = [
        SFT(SFTConfig(lr=1e-3, minibatch_size=2, micro_batch_size=micro), policy=kit.TinyPolicy(), seed=0).update(groups=[group])
        for micro in (None, 1)
    ]
    assert logged[1]["losses/sft_loss"] == pytest.approx(logged[0]["losses/sft_loss"], rel=1e-6)


class _MetaModel(torch.nn.Module):
    """A stand-in causal LM on the meta device: logits of the asked-for columns, nothing computed."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.empty(1, device="meta"))

    def forward(self, input_ids, attention_mask, output_hidden_states, logits_to_keep):
        return SimpleNamespace(logits=torch.empty(input_ids.shape[0], len(logits_to_keep), 8, device="meta"))


def test_a_batch_without_response_tokens_keeps_its_logits_index_on_the_batch_device(kit, monkeypatch):
    # on a GPU, a column index on the CPU made searchsorted raise; the meta device stands in for it
    algo = SFT(SFTConfig(), policy=kit.TinyPolicy(), seed=0)
    cpu = algo._tokenize(["W0", "W1"], [" ", ""])
    batch = TokenBatch(*(t.to("meta") for t in (cpu.input_ids, cpu.attention_mask, cpu.positions, cpu.response_mask)))
    searchsorted = torch.searchsorted

    def same_device(sorted_sequence, values, **kwargs):
        assert sorted_sequence.device == values.device, (sorted_sequence.device, values.device)
        return searchsorted(sorted_sequence, values, **kwargs)

    monkeypatch.setattr(torch, "searchsorted", same_device)
    monkeypatch.setattr(batch.response_mask, "any", lambda: torch.tensor(False))  # a meta tensor has no value to test
    logp, _ = response_logprobs(_MetaModel(), batch)
    assert logp.shape == cpu.response_mask.shape
