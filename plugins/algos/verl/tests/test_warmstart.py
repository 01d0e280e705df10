"""The policy's warm start on verl's driver: SFT on the expert episodes in the chat layout
verl's agent loop plays them in, saved where translate.py points verl's actor.

Real pieces throughout: TextWorldExpress's coin game for the expert episodes, the ``hf``
policy over a small Llama with a ChatML tokenizer (conftest.py), transformers' SFT and
save. Nothing here needs CUDA: the warm start runs before verl's trainer starts.
"""

from __future__ import annotations

import pytest
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from dreamgym_core.config import load_pipeline, resolve
from dreamgym_core.errors import ConfigError, DataError
from dreamgym_core.loop import demo_conversations
from dreamgym_core.plugins import Plugins
from dreamgym_plugin_verl.translate import translate
from dreamgym_plugin_verl.warmstart import _policy, chat_segments, warm_start

pytest.importorskip("dreamgym_plugin_textworld")
pytest.importorskip("dreamgym_plugin_hf")

TURNS = [("Task: find the coin. You are in the kitchen.", "<action>go north</action>"), ("You are in the hall.", "<action>take coin</action>")]


def test_chat_segments_join_to_the_conversation_and_train_on_the_replies(chat_tokenizer):
    segments = chat_segments(chat_tokenizer, TURNS)
    messages = [m for prompt, reply in TURNS for m in ({"role": "user", "content": prompt}, {"role": "assistant", "content": reply})]
    assert "".join(text for text, _ in segments) == chat_tokenizer.apply_chat_template(messages, tokenize=False)
    assert [text for text, trained in segments if trained] == [reply + "<|im_end|>" for _, reply in TURNS]
    assert segments[0] == ("<|im_start|>user\n" + TURNS[0][0] + "<|im_end|>\n<|im_start|>assistant\n", False)


def test_a_template_that_rewrites_past_turns_is_refused(chat_tokenizer):
    drops_past_replies = (
        "{% for m in messages %}{% if m['role'] == 'assistant' and not loop.last %}<|im_start|>assistant\n<|im_end|>\n"
        "{% else %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    original, chat_tokenizer.chat_template = chat_tokenizer.chat_template, drops_past_replies
    try:
        with pytest.raises(DataError, match="renders a conversation's earlier turns differently"):
            chat_segments(chat_tokenizer, TURNS)
    finally:
        chat_tokenizer.chat_template = original  # a session fixture


def _pipeline(tmp_path, policy: dict, data: dict | None = None, **loop):
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({
        "plugins": ["textworld", "hf", "verl"],
        "env": {"name": "twx", "config": {"game": "coin", "train_seeds": 3, "test_seeds": 1}},
        "policy": policy, "algo": {"name": "verl-grpo"},
        "loop": {"mode": "real", "max_steps": 6, "warmstart_lr": 1e-2, **loop},
        "data": {"expert_episodes": 3, "noisy_episodes": 0, "random_episodes": 1, **(data or {})},
        "experience": {"batch_size": 2}, "run_dir": str(tmp_path / "run"),
    }))
    pipeline = load_pipeline(path)
    plugins = Plugins.for_names(pipeline.plugins)
    return resolve(pipeline, plugins, where=str(path)), plugins


def _offline(resolved, plugins):
    domain = plugins.build("env", "twx", resolved.components["env"])
    data = resolved.pipeline.data
    return domain.collect(tasks=domain.tasks(split="train"), policy="expert", episodes=data.expert_episodes, seed=0) + domain.collect(
        tasks=domain.tasks(split="train"), policy="random", episodes=data.random_episodes, seed=0)


def _weights(model) -> list:
    return [p.detach().clone() for p in model.parameters()]


def test_the_warm_start_trains_the_policy_in_verls_layout_and_saves_what_verl_loads(tmp_path, chat_model):
    resolved, plugins = _pipeline(tmp_path, {"name": "hf", "config": {"path": str(chat_model), "chat_template": True}}, warmstart_epochs=3)
    offline = _offline(resolved, plugins)
    run = tmp_path / "run"
    lines: list[str] = []
    metrics = warm_start(resolved, plugins, offline, run_dir=run, say=lines.append)

    # verl's actor starts where the warm start saved, a directory transformers loads as is
    target = run / "policy_init"
    assert f"actor_rollout_ref.model.path='{target}'" in translate(resolved, run_dir=str(run))
    assert (target / "done").exists()
    trained = AutoModelForCausalLM.from_pretrained(target)
    base = AutoModelForCausalLM.from_pretrained(chat_model)
    assert any(not a.equal(b) for a, b in zip(_weights(trained), _weights(base)))
    assert AutoTokenizer.from_pretrained(target).chat_template == AutoTokenizer.from_pretrained(chat_model).chat_template
    from verl.workers.config.model import HFModelConfig  # what verl's workers build from actor_rollout_ref.model.path

    verl_model = HFModelConfig(path=str(target))
    assert verl_model.hf_config.architectures == ["LlamaForCausalLM"]
    assert verl_model.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")

    # one example per successful expert episode, whole conversations, loss on the replies only
    conversations = demo_conversations(offline, max_steps=6, history_window=resolved.pipeline.loop.history_window)
    assert metrics["warmstart/examples"] == len(conversations) == 3
    assert metrics["warmstart/sft_loss"] < metrics["warmstart/sft_loss_first"]
    assert [line.split(":")[0] for line in lines if line.startswith("warm start epoch")] == [f"warm start epoch {e}/3" for e in (1, 2, 3)]

    # what SFT trained on: the replies and their end-of-turn token, nothing of the prompts, no second EOS
    policy = _policy(resolved, plugins)
    ids, labels = policy.encode_example(chat_segments(policy.tokenizer, conversations[0]))
    assert policy.tokenizer.decode(ids) == policy.tokenizer.apply_chat_template(
        [m for p, r in conversations[0] for m in ({"role": "user", "content": p}, {"role": "assistant", "content": r})], tokenize=False)
    kept = policy.tokenizer.decode([t for t, label in zip(ids, labels) if label != -100])
    assert kept == "".join(reply + "<|im_end|>" for _, reply in conversations[0])

    # started again (--resume): the finished warm start is kept, not trained a second time
    stamp = (target / "model.safetensors").stat().st_mtime_ns
    assert warm_start(resolved, plugins, offline, run_dir=run, say=lines.append) == {}
    assert (target / "model.safetensors").stat().st_mtime_ns == stamp and lines[-1].startswith("reusing the warm-started policy")


def test_a_policy_without_a_path_or_a_chat_template_is_a_config_error(tmp_path, chat_model):
    resolved, plugins = _pipeline(tmp_path, {"name": "hf-tiny"})
    with pytest.raises(ConfigError, match="model_path is empty and policy 'hf-tiny' has no `path`"):
        warm_start(resolved, plugins, [], run_dir=tmp_path / "run", say=print)
    plain = tmp_path / "plain"
    tokenizer = AutoTokenizer.from_pretrained(chat_model)
    tokenizer.chat_template = None
    AutoModelForCausalLM.from_pretrained(chat_model).save_pretrained(plain)
    tokenizer.save_pretrained(plain)
    resolved, plugins = _pipeline(tmp_path, {"name": "hf", "config": {"path": str(plain)}})
    with pytest.raises(ConfigError, match="has no chat template, and verl's agent loop renders every turn with it"):
        warm_start(resolved, plugins, [], run_dir=tmp_path / "run", say=print)
    assert not (tmp_path / "run" / "policy_init").exists()


def test_sft_tokens_are_the_rendered_conversation_with_no_second_bos_or_eos(tmp_path, chat_model):
    """A Llama-style tokenizer puts a BOS before text and a template may end a turn without a
    line break: the rendered conversation already holds both, so SFT must add neither."""
    from tokenizers import processors

    resolved, plugins = _pipeline(tmp_path, {"name": "hf", "config": {"path": str(chat_model)}})
    policy = _policy(resolved, plugins)
    tok = policy.tokenizer
    bos = tok.convert_tokens_to_ids("<|im_start|>")
    tok._tokenizer.post_processor = processors.TemplateProcessing(single="<|im_start|> $A", special_tokens=[("<|im_start|>", bos)])
    assert tok("", add_special_tokens=True)["input_ids"] == [bos]
    tok.chat_template = (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    ids, labels = policy.encode_example(chat_segments(tok, TURNS))
    messages = [m for p, r in TURNS for m in ({"role": "user", "content": p}, {"role": "assistant", "content": r})]
    assert tok.decode(ids) == tok.apply_chat_template(messages, tokenize=False)
    assert tok.decode([t for t, label in zip(ids, labels) if label != -100]) == "".join(r + "<|im_end|>" for _, r in TURNS)


def test_implicit_world_modelling_comes_first_and_the_replies_reflect(tmp_path, chat_model):
    from dreamgym_core.early import collect_branches, world_model_examples

    resolved, plugins = _pipeline(
        tmp_path, {"name": "hf", "config": {"path": str(chat_model)}}, {"branch_actions": 1}, world_model_epochs=1, self_reflection="rule")
    offline = _offline(resolved, plugins)
    domain = plugins.build("env", "twx", resolved.components["env"])
    branches, _ = collect_branches(domain.make_env, offline, k=1, seed=0)
    lines: list[str] = []
    metrics = warm_start(resolved, plugins, offline, run_dir=tmp_path / "run", say=lines.append, branches=branches)
    world = world_model_examples(branches, offline, max_steps=6, history_window=resolved.pipeline.loop.history_window)
    assert metrics["world_model/examples"] == len(world) > 0 and metrics["warmstart/examples"] == 3
    assert [line.split(":")[0] for line in lines[:3]] == [
        "self-reflection", "implicit world modelling", "warm-starting the policy on the driver (SFT on 3 expert episodes, verl's chat layout)"]
    (tmp_path / "plain").mkdir()
    plain = warm_start(*_pipeline(tmp_path / "plain", {"name": "hf", "config": {"path": str(chat_model)}}), offline, run_dir=tmp_path / "plain", say=print)
    assert metrics["warmstart/trained_tokens"] > plain["warmstart/trained_tokens"]  # the replies think about their branches
    (ask, _), (seen, _) = world[0]
    assert [text for text, trained in chat_segments(_policy(resolved, plugins).tokenizer, [(ask, seen)]) if trained] == [seen + "<|im_end|>"]
