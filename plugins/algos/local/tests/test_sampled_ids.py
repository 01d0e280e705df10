"""Token in, token out: GRPO and PPO score the ids a response was sampled as (the real ``hf-tiny``
backend, whose byte-level tokenizer re-tokenises a decoded sample to other ids)."""

import pytest

hf = pytest.importorskip("dreamgym_plugin_hf")

from dreamgym_core.records import PolicyDecision, Task, Trajectory, Transition  # noqa: E402
from dreamgym_core.testing import stand_in_groups  # noqa: E402
from dreamgym_plugin_hf.config import TinyConfig  # noqa: E402

from dreamgym_plugin_local.batch import tokenize_steps  # noqa: E402
from dreamgym_plugin_local.config import GRPOConfig, PPOConfig  # noqa: E402
from dreamgym_plugin_local.grpo import GRPO  # noqa: E402
from dreamgym_plugin_local.ppo import PPO  # noqa: E402

MAX_NEW = 16


@pytest.fixture
def backend():
    """A fresh run's tiny policy: its tokenizer built on agent-format text, its weights untrained."""
    groups = stand_in_groups()
    policy = hf.build_tiny(TinyConfig(hidden_size=32, layers=1, heads=2, intermediate_size=64, vocab_size=300, max_positions=1024, max_length=256))
    policy.prepare(corpus=[d.prompt + d.text for g in groups for t in g for d in t.decisions] * 4)
    return policy


def prompts() -> list[str]:
    return [d.prompt for g in stand_in_groups() for t in g[:1] for d in t.decisions]


def one_step_groups(prompt_list: list[str], texts: list[str], per_group: int) -> list[list[Trajectory]]:
    """Groups of one-step episodes whose decisions are the given (prompt, text) pairs; within a
    group the first half win, so every group has an advantage to train."""
    groups = []
    for g in range(len(texts) // per_group):
        task = Task(id=f"t{g}", instruction="find the apple", domain="test")
        group = []
        for k in range(per_group):
            i = g * per_group + k
            win = k < per_group // 2
            group.append(Trajectory(
                task=task,
                transitions=[Transition(
                    task_id=task.id, episode_id=f"e{i}", step=0, state="s", action="go north", next_state="s2",
                    reward=float(win), done=True, success=win,
                )],
                decisions=[PolicyDecision(text=texts[i], action="go north", parsed=True, prompt=prompt_list[i])],
            ))
        groups.append(group)
    return groups


def test_generate_with_ids_gives_generates_texts_and_the_ids_that_ended_them(backend):
    args = {"prompts": prompts(), "max_new_tokens": MAX_NEW, "temperature": 1.0, "stop": ["</action>"], "seed": 7}
    texts = backend.generate(**args)
    pairs = backend.generate_with_ids(**args)
    assert [text for text, _ in pairs] == texts  # the same draws
    eos = backend.tokenizer.eos_token_id
    for text, ids in pairs:
        assert 1 <= len(ids) <= MAX_NEW
        decoded = backend.tokenizer.decode(ids, skip_special_tokens=True)
        assert decoded.startswith(text)  # the text is the ids' decoding, cut before a stop string
        if eos in ids:  # generation ends at its first EOS, which the ids keep as their last
            assert ids.index(eos) == len(ids) - 1
        elif len(ids) < MAX_NEW:  # nor EOS nor the length ended it: a stop string did
            assert "</action>" in decoded


@pytest.mark.parametrize("cls,config_type,extra", [
    (GRPO, GRPOConfig, {}), (PPO, PPOConfig, {}),
    (GRPO, GRPOConfig, {"listed_update": "choice"}),  # generated answers (none listed) are scored alone
], ids=["grpo", "ppo", "grpo-choice"])
def test_an_update_scores_the_ids_its_responses_were_sampled_as(cls, config_type, extra, backend):
    algo = cls(config_type(lr=1e-3, max_new_tokens=MAX_NEW, temperature=1.0, **extra), policy=backend, seed=0)
    prompt_list = [p for p in prompts() for _ in range(4)]
    texts = algo.act(prompts=prompt_list)
    sampled = [ids for queue in algo._sampled.values() for ids in queue]
    retokenized = [backend.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    # the premise: these samples re-tokenise to other ids (random bytes decode to U+FFFD)
    assert sum(map(len, sampled)) != sum(max(len(r), 1) for r in retokenized)

    metrics = algo.update(groups=one_step_groups(prompt_list, texts, per_group=4))
    assert metrics["data/retokenized_rows"] == 0
    assert metrics["data/response_tokens"] == sum(map(len, sampled))
    assert algo._sampled == {}  # each sample is trained once


def test_rows_this_trainer_did_not_sample_are_tokenised_and_counted(backend):
    """A resumed run's rollouts (sampled before the stop) and demos: their text is tokenised."""
    algo = GRPO(GRPOConfig(lr=1e-3, max_new_tokens=MAX_NEW, temperature=1.0), policy=backend, seed=0)
    prompt_list = [p for p in prompts() for _ in range(4)]
    texts = ["<action>go north</action>"] * len(prompt_list)
    metrics = algo.update(groups=one_step_groups(prompt_list, texts, per_group=4))
    assert metrics["data/retokenized_rows"] == len(texts)
    assert metrics["data/response_tokens"] == sum(len(backend.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)


def test_evaluation_and_greedy_play_keep_no_ids(backend):
    algo = GRPO(GRPOConfig(lr=1e-3, max_new_tokens=MAX_NEW, temperature=1.0), policy=backend, seed=0)
    algo.act(prompts=prompts(), greedy=True)
    algo.act(prompts=prompts(), temperature=1.0, evaluation=True)
    assert algo._sampled == {}
    algo.act(prompts=prompts())
    assert sum(map(len, algo._sampled.values())) == len(prompts())


def test_tokenize_steps_uses_given_ids_and_falls_back_to_the_text(backend):
    tok = backend.tokenizer
    batch = tokenize_steps(
        tok, lambda p: tok(p)["input_ids"], ["a b", "a b"], ["go north", "go north"],
        max_prompt_tokens=64, max_response_tokens=4, response_ids=[[5, 6, 7, 8, 9, 10], None],
    )
    first = batch.input_ids[0, batch.positions[0][batch.response_mask[0] > 0]].tolist()
    second = batch.input_ids[1, batch.positions[1][batch.response_mask[1] > 0]].tolist()
    assert first == [5, 6, 7, 8]  # the given ids, cut to max_response_tokens
    assert second == tok("go north", add_special_tokens=False)["input_ids"][:4]
    with pytest.raises(ValueError, match="1 response id lists for 2 prompts"):
        tokenize_steps(tok, lambda p: tok(p)["input_ids"], ["a", "b"], ["x", "y"], max_prompt_tokens=8, max_response_tokens=4, response_ids=[None])
