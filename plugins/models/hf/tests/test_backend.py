"""Behaviour of the transformers backend on the tiny preset (real model code, CPU)."""

from __future__ import annotations

import copy
import math
import socket

import msgspec
import pytest
import torch

from dreamgym_core.errors import ConfigError, DataError
from dreamgym_plugin_hf.backend import HFBackend
from dreamgym_plugin_hf.config import LoraSettings
from dreamgym_plugin_hf.text import IGNORE
from dreamgym_plugin_hf.tiny import TinyBackend

PROMPT = "Room: garden. Items: coin, lamp. Action:"


def test_trained_model_answers_and_stops_at_stop_sequence(trained):
    full = trained.generate(prompts=[PROMPT], max_new_tokens=24, temperature=0)[0]
    assert full.startswith(" take ") and ". Result: you take the " in full
    cut = trained.generate(prompts=[PROMPT], max_new_tokens=24, temperature=0, stop=["."])
    assert cut == [full[: full.index(".")]]
    # the earliest of several stops wins, and only new text is returned
    assert trained.generate(prompts=[PROMPT], max_new_tokens=24, temperature=0, stop=["you", " take "]) == [""]
    assert trained.generate(prompts=[PROMPT], max_new_tokens=24, temperature=0, stop=["Result", "you"]) == [
        full[: full.index("Result")]
    ]


def test_a_stop_string_that_is_a_special_token_ends_the_answer(small_config, make_examples):
    # The answers are decoded without special tokens, so a stop such as "<|im_start|>" was never
    # found in them: the answer ran on past it (hf serve passes clients' stop lists here).
    examples = [
        [(prompt, False), (target.replace(". Result:", "<|bos|> Result:"), True)] for (prompt, _), (target, _) in make_examples()
    ]
    backend = TinyBackend(small_config())
    backend.prepare(corpus=["".join(text for text, _ in example) for example in examples])
    backend.sft(examples=examples, epochs=25, lr=5e-3, batch_size=8)
    whole = backend._generations(prompts=[PROMPT], max_new_tokens=24, temperature=0)[0]
    assert whole.text.startswith(" take ") and " Result:" in whole.text  # the special token itself is not shown
    before = whole.text[: whole.text.index(" Result:")]
    assert backend.generate(prompts=[PROMPT], max_new_tokens=24, temperature=0, stop=["<|bos|>"]) == [before]
    # with a text stop as well, the earlier one ends it
    assert backend.generate(prompts=[PROMPT], max_new_tokens=24, temperature=0, stop=["take", "<|bos|>"]) == [" "]
    answer = backend._generations(prompts=[PROMPT], max_new_tokens=24, temperature=0, stop=["<|bos|>"])[0]
    assert answer.finish_reason == "stop" and answer.completion_tokens < whole.completion_tokens


def test_batched_greedy_matches_one_by_one(trained):
    prompts = [PROMPT, "Room: kitchen. Items: key, lamp. Action:", "Room: pantry."]
    batched = trained.generate(prompts=prompts, max_new_tokens=12, temperature=0)
    single = [trained.generate(prompts=[p], max_new_tokens=12, temperature=0)[0] for p in prompts]
    assert batched == single
    assert all(isinstance(t, str) for t in batched)


def test_sampling_is_deterministic_per_seed(small_config):
    backend = TinyBackend(small_config())
    prompts = ["hello", "the kitchen"] * 2
    a = backend.generate(prompts=prompts, max_new_tokens=16, temperature=1.0, seed=7)
    b = backend.generate(prompts=prompts, max_new_tokens=16, temperature=1.0, seed=7)
    c = backend.generate(prompts=prompts, max_new_tokens=16, temperature=1.0, seed=8)
    assert a == b
    assert a != c


def test_unseeded_sampling_draws_fresh_text_and_seeded_leaves_global_rng_alone(small_config):
    # seed=None used to sample inside a forked RNG that was then restored: every unseeded call
    # (a server request without "seed") returned the very same "sample".
    backend = TinyBackend(small_config())
    prompts = ["hello", "the kitchen"]
    torch.manual_seed(0)
    unseeded = [backend.generate(prompts=prompts, max_new_tokens=16, temperature=1.0) for _ in range(3)]
    assert len({tuple(u) for u in unseeded}) == 3  # pairwise distinct (a != b != c never compares a with c)
    torch.manual_seed(0)
    assert backend.generate(prompts=prompts, max_new_tokens=16, temperature=1.0) == unseeded[0]  # global seed rules
    state = torch.get_rng_state()
    backend.generate(prompts=prompts, max_new_tokens=16, temperature=1.0, seed=5)
    assert torch.equal(torch.get_rng_state(), state)


def test_seeded_calls_fork_the_model_devices_rng():
    from dreamgym_plugin_hf.backend import forked_devices

    assert forked_devices("cpu") == [] and forked_devices(torch.device("cuda", 1)) == [1]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_seeded_generation_on_cuda_leaves_the_device_rng_alone(small_config):
    # torch.manual_seed reseeds every CUDA generator; only a forked one is restored afterwards.
    backend = TinyBackend(small_config(device="cuda"))
    state = torch.cuda.get_rng_state()
    a = backend.generate(prompts=["hello"], max_new_tokens=8, temperature=1.0, seed=5)
    assert torch.equal(torch.cuda.get_rng_state(), state)
    assert backend.generate(prompts=["hello"], max_new_tokens=8, temperature=1.0, seed=5) == a


def test_long_prompt_keeps_its_end(small_config):
    backend = TinyBackend(small_config(max_positions=1024, max_length=1024))
    long_prompt = "x" * 3000 + " END"
    ids = backend.encode_prompt(long_prompt, limit=1000)
    assert len(ids) == 1000
    assert backend.tokenizer.decode(ids).endswith(" END")
    assert len(backend.generate(prompts=[long_prompt], max_new_tokens=4, temperature=0)) == 1


def test_a_long_prompt_keeps_the_tokenizers_start_token(trained, tmp_path):
    # keep_end cut the BOS (from the tokenizer's post-processor) with the prompt's start
    from tokenizers.processors import TemplateProcessing

    trained.save(path=str(tmp_path / "m"))
    backend = HFBackend.load(str(tmp_path / "m"), max_length=64)
    tok = backend.tokenizer
    tok._tokenizer.post_processor = TemplateProcessing(single="<|bos|> $A", special_tokens=[("<|bos|>", tok.bos_token_id)])
    assert backend.encode_prompt("hi", 54)[0] == tok.bos_token_id
    cut = backend.encode_prompt("word " * 200 + "END", 54)
    assert len(cut) == 54 and cut[0] == tok.bos_token_id and tok.decode(cut[1:]).endswith("END")
    ids, labels = backend.encode_example([("word " * 200, False), (" END", True)])
    assert len(ids) == 64 and ids[0] == tok.bos_token_id and labels[-1] != IGNORE


def test_a_prompt_cut_to_fit_is_counted_and_warned_about_once(small_config, caplog):
    # the cut drops the prompt's start (an experience model's role and task): say so, not silently
    backend = TinyBackend(small_config(max_positions=1024, max_length=1024))
    backend.generate(prompts=["short one"], max_new_tokens=4, temperature=0)
    assert backend.prompts_cut == 0 and not caplog.records
    with caplog.at_level("WARNING"):
        backend.generate(prompts=["x" * 3000, "short", "y" * 3000], max_new_tokens=24, temperature=0)
        backend.generate(prompts=["z" * 3000], max_new_tokens=24, temperature=0)
    assert backend.prompts_cut == 3
    (warning,) = caplog.records
    assert "cut to its last 1000 tokens" in warning.getMessage() and "max_length 1024" in warning.getMessage()


def test_an_experience_model_prompt_is_shortened_to_the_budget_instead_of_cut(small_config):
    # The experience model drops its least similar demos to fit max_length - max_new_tokens, so the
    # backend never cuts the role and task off the prompt's start.
    from dreamgym_core.experience import ExperienceModelConfig, LMExperienceModel, build_prompt
    from dreamgym_core.records import ExperienceRequest
    from dreamgym_core.testing import make_transitions

    backend = TinyBackend(small_config(max_positions=1024, max_length=1024))
    demos = [msgspec.structs.replace(t, state="room " * 300) for t in make_transitions(4)]
    request = ExperienceRequest(instruction="find the coin", history=[], state="You are in the pantry.", action="look", demos=demos)
    assert not backend.prompt_fits(build_prompt(request), max_new_tokens=24)
    model = LMExperienceModel(backend, ExperienceModelConfig(max_new_tokens=24, max_retries=0))
    model.predict(requests=[request])
    assert backend.prompts_cut == 0 and model.metrics()["experience/prompts_shortened"] == 1


def test_an_empty_prompt_is_refused_clearly(trained):
    # the tiny tokenizer adds no start token, so an empty prompt leaves nothing to condition on
    with pytest.raises(DataError, match="empty"):
        trained.generate(prompts=["Room:", ""], max_new_tokens=4, temperature=0)


def test_max_new_tokens_must_leave_room_for_the_prompt(small_config):
    backend = TinyBackend(small_config())
    with pytest.raises(ConfigError, match="max_new_tokens=1024"):
        backend.generate(prompts=["a"], max_new_tokens=1024)


def test_sft_reduces_loss(make_examples, small_config):
    backend = TinyBackend(small_config())
    backend.prepare(corpus=["".join(t for t, _ in e) for e in make_examples()])
    before = backend.evaluate_loss(examples=make_examples())
    metrics = backend.sft(examples=make_examples(), epochs=4, lr=3e-3, batch_size=8)
    after = backend.evaluate_loss(examples=make_examples())
    assert metrics["losses/sft_loss"] < metrics["losses/sft_loss_first"]
    assert after < before * 0.8


def test_sft_calls_on_epoch_after_each_epoch_in_eval_mode(make_examples, small_config):
    backend = TinyBackend(small_config())
    backend.prepare(corpus=["".join(t for t, _ in e) for e in make_examples()])
    seen = []

    def on_epoch(epoch: int, loss: float) -> None:
        # what a validation callback would measure: the weights as they are after this epoch
        seen.append((epoch, round(loss, 6), backend.model.training, round(backend.evaluate_loss(examples=make_examples()), 6)))

    metrics = backend.sft(examples=make_examples(), epochs=3, lr=3e-3, batch_size=8, on_epoch=on_epoch)
    assert [e for e, *_ in seen] == [1, 2, 3]
    assert not any(training for _, _, training, _ in seen)
    assert seen[0][1] == round(metrics["losses/sft_loss_first"], 6) and seen[-1][1] == round(metrics["losses/sft_loss"], 6)
    assert seen[-1][3] == round(backend.evaluate_loss(examples=make_examples()), 6)  # no update after the last call
    assert backend.model.training is False


def test_sft_calls_on_batch_after_each_optimiser_step(make_examples, small_config):
    backend = TinyBackend(small_config())
    examples = make_examples()
    backend.prepare(corpus=["".join(t for t, _ in e) for e in examples])
    steps = -(-len(examples) // 3)
    seen, epochs = [], []
    backend.sft(examples=examples, epochs=2, lr=3e-3, batch_size=3,
                on_batch=lambda epoch, step, total, loss: seen.append((epoch, step, total, loss)),
                on_epoch=lambda epoch, loss: epochs.append(loss))
    assert [(e, s, t) for e, s, t, _ in seen] == [(e, s, steps) for e in (1, 2) for s in range(1, steps + 1)]
    # the epoch's loss is the mean of its steps' losses
    for epoch, mean in zip((1, 2), epochs):
        losses = [loss for e, _, _, loss in seen if e == epoch]
        assert abs(sum(losses) / len(losses) - mean) < 1e-9


def test_prompt_tokens_are_masked_out_of_the_labels(trained, make_examples):
    prompt, target = make_examples()[0]
    ids, labels = trained.encode_example([prompt, target])
    n_prompt = len(trained.encode_prompt(prompt[0], limit=10_000))
    assert labels[:n_prompt] == [IGNORE] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:]
    assert ids[-1] == trained.tokenizer.eos_token_id  # trained EOS appended


def test_masked_text_does_not_contribute_to_the_loss(trained):
    base = [("Room: kitchen. Items: key, lamp. Action:", False), (" take key.", True)]
    a = trained.evaluate_loss(examples=[base + [(" some trailing context", False)]])
    b = trained.evaluate_loss(examples=[base + [(" totally different words here and more", False)]])
    c = trained.evaluate_loss(examples=[base + [(" some trailing context", True)]])
    assert a == pytest.approx(b, abs=1e-6)
    assert a != pytest.approx(c, abs=1e-3)


def test_loss_on_kept_positions_equals_the_full_logits_loss(trained, make_examples):
    # _batch_loss computes logits only where a labelled token follows; on a padded batch of
    # different lengths it must equal transformers' own loss over the full logits.
    from dreamgym_plugin_hf.text import right_pad

    rows = trained._trainable_rows(make_examples()[:5] + [[("a much longer prompt " * 6, False), (" take key.", True)]])
    ids, mask, labels = right_pad(rows, trained.tokenizer.pad_token_id)
    with torch.no_grad():
        full = trained.model(input_ids=ids, attention_mask=mask, labels=labels).loss
        kept = trained._batch_loss(rows)
    assert kept.item() == pytest.approx(full.item(), rel=1e-5)


def test_micro_batches_give_the_whole_batch_gradient(make_examples, small_config):
    # Gradient accumulation over micro-batches (sft_micro_batch) weighs each by its labelled
    # tokens, so the gradient equals the whole batch's although the rows differ in length.
    # (Compared on gradients: Adam's first step is about lr * sign(g), which amplifies
    # float noise on near-zero entries.)
    examples = make_examples()[:6] + [[("a much longer prompt " * 6, False), (" take key.", True)]]
    grads, losses = [], []
    for micro in (None, 2):
        backend = TinyBackend(small_config(sft_micro_batch=micro))
        backend.prepare(corpus=["".join(t for t, _ in e) for e in examples])
        losses.append(backend._accumulate(backend._trainable_rows(examples)))
        grads.append({n: p.grad for n, p in backend.model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name, g in grads[0].items():
        assert torch.allclose(g, grads[1][name], atol=1e-6), name
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_sft_rejects_examples_without_trained_tokens(trained):
    with pytest.raises(DataError, match="train_on_it"):
        trained.sft(examples=[[("only a prompt", False)]], epochs=1, lr=1e-3, batch_size=1)


def test_save_reload_gives_identical_generations(trained, tmp_path):
    path = tmp_path / "ckpt"
    trained.save(path=str(path))
    trained.save(path=str(path))  # overwriting an existing checkpoint is safe
    assert (path / "model.safetensors").is_file()
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())
    reloaded = HFBackend.load(str(path), max_length=1024)
    prompts = [PROMPT, "Room: bedroom."]
    for seed in (0, 1):
        expected = trained.generate(prompts=prompts, max_new_tokens=16, temperature=1.0, seed=seed)
        assert reloaded.generate(prompts=prompts, max_new_tokens=16, temperature=1.0, seed=seed) == expected


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_a_saved_model_directory_has_the_mode_a_plain_mkdir_gives(small_config, tmp_path, umask):
    # before: the directory was made by tempfile.mkdtemp (always 0o700) and renamed into place,
    # so a run's experience model and policy checkpoints were private unlike its other files
    import os
    import stat

    backend = TinyBackend(small_config())
    before = os.umask(umask)
    try:
        backend.save(path=str(tmp_path / "ckpt"))
        (tmp_path / "plain").mkdir()
    finally:
        os.umask(before)
    mode = stat.S_IMODE((tmp_path / "ckpt").stat().st_mode)
    assert mode == 0o777 & ~umask == stat.S_IMODE((tmp_path / "plain").stat().st_mode)
    assert stat.S_IMODE((tmp_path / "ckpt" / "model.safetensors").stat().st_mode) == 0o666 & ~umask


def test_saves_and_loads_print_no_progress_bars_and_leave_the_setting_as_it_was(trained, tmp_path, capfd):
    from transformers.utils import logging as hf_logging

    path = tmp_path / "ckpt"
    before = hf_logging.is_progress_bar_enabled()
    try:
        for shown in (True, False):
            (hf_logging.enable_progress_bar if shown else hf_logging.disable_progress_bar)()
            capfd.readouterr()
            trained.save(path=str(path))
            HFBackend.load(str(path), max_length=1024)
            err = capfd.readouterr().err
            assert "Writing model shards" not in err and "Loading weights" not in err
            assert hf_logging.is_progress_bar_enabled() is shown
    finally:  # other tests see the setting they started with
        (hf_logging.enable_progress_bar if before else hf_logging.disable_progress_bar)()


def test_lora_trains_only_adapters_and_merges_on_save(tmp_path, make_examples, small_config):
    backend = TinyBackend(small_config(lora=LoraSettings(r=4, alpha=8.0)))
    trainable = {n for n, p in backend.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    frozen_before = {n: p.detach().clone() for n, p in backend.model.named_parameters() if not p.requires_grad}
    backend.sft(examples=make_examples()[:4], epochs=2, lr=1e-2, batch_size=4)
    for name, param in backend.model.named_parameters():
        if name in frozen_before:
            assert torch.equal(param, frozen_before[name]), name
    backend.save(path=str(tmp_path / "merged"))
    merged = HFBackend.load(str(tmp_path / "merged"), max_length=1024)
    ids = torch.tensor([backend.encode_prompt(PROMPT, limit=100)])
    with torch.no_grad():
        assert torch.allclose(backend.model(input_ids=ids).logits, merged.model(input_ids=ids).logits, atol=1e-4)
    assert not any("lora" in n for n, _ in merged.model.named_parameters())
    assert backend.generate(prompts=[PROMPT], max_new_tokens=6, temperature=0) == merged.generate(
        prompts=[PROMPT], max_new_tokens=6, temperature=0
    )


def test_lora_with_unknown_modules_is_a_config_error(small_config):
    with pytest.raises(ConfigError, match="target_modules"):
        TinyBackend(small_config(lora=LoraSettings(target_modules=("no_such_proj",))))


def test_missing_model_directory_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no-model-here"):
        HFBackend.load(str(tmp_path / "no-model-here"))


@pytest.fixture
def connections(monkeypatch):
    """Every host lookup or socket connect the test makes (none are let through)."""
    seen: list[object] = []

    def refuse(*args, **kwargs):
        seen.append(args)
        raise OSError("network use in a test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return seen


@pytest.mark.parametrize("path", ["runs/exp-model", "HuggingFaceTB/SmolLM2-135M-Instruct"])
def test_a_path_that_is_no_directory_nor_cached_is_an_error_without_network(path, connections, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(DataError, match="allow_download") as info:
        HFBackend.load(path)
    assert repr(path) in str(info.value) and "\n" not in str(info.value)
    assert connections == []


def test_a_hub_id_in_the_local_cache_loads_without_network(trained, connections, tmp_path, monkeypatch):
    import huggingface_hub.constants

    repo = tmp_path / "hub" / "models--someone--tiny"
    trained.save(path=str(repo / "snapshots" / "abc123"))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    loaded = HFBackend.load("someone/tiny", max_length=1024)
    assert loaded.model_id == "someone/tiny"
    assert loaded.generate(prompts=[PROMPT], max_new_tokens=8, temperature=0) == trained.generate(
        prompts=[PROMPT], max_new_tokens=8, temperature=0
    )
    assert connections == []


def test_allow_download_lets_transformers_fetch(monkeypatch):
    from dreamgym_plugin_hf import backend as module

    calls = []

    class Refusing:
        @staticmethod
        def from_pretrained(source, **kwargs):
            calls.append((source, kwargs["local_files_only"]))
            raise OSError("offline")

    monkeypatch.setattr(module, "AutoTokenizer", Refusing)
    with pytest.raises(DataError, match="cannot load"):
        HFBackend.load("someone/not-cached", allow_download=True)
    assert calls == [("someone/not-cached", False)]


@pytest.mark.parametrize(
    "name, damage, error",
    [
        ("model.safetensors", b"", "SafetensorError"),
        ("config.json", b"[1, 2]", "TypeError"),
        ("generation_config.json", b"5", "TypeError"),
        ("tokenizer.json", b"{}", "KeyError"),
        # the error named only the directory, not which of its files is not JSON
        ("tokenizer.json", b"\xff\xfe junk", r"\(tokenizer.json there is not valid JSON\): 'utf-8' codec can't decode"),
        ("config.json", b'{"model_type": "gpt2", "n_', r"\(config.json there is not valid JSON\)"),
    ],
)
def test_a_damaged_saved_model_is_a_data_error_naming_it(trained, tmp_path, name, damage, error):
    # Each was a traceback from inside transformers when a run resumed or was evaluated.
    trained.save(path=str(tmp_path / "m"))
    (tmp_path / "m" / name).write_bytes(damage)
    with pytest.raises(DataError, match=rf"hf: cannot load a causal LM from path='{tmp_path / 'm'}'(: | ){error}"):
        HFBackend.load(str(tmp_path / "m"))


def test_chat_template_without_template_is_rejected(trained, tmp_path):
    trained.save(path=str(tmp_path / "m"))
    with pytest.raises(ConfigError, match="chat template"):
        HFBackend.load(str(tmp_path / "m"), chat_template=True)


def test_a_checkpoint_trained_with_the_chat_template_reloads_with_it(trained, tmp_path):
    """The checkpoint says how its prompts were formatted: reloaded through ``hf`` or ``serve``
    without saying, a model trained on chat-formatted prompts was read with plain ones."""
    from dreamgym_plugin_hf.serve import load_backend

    chat = copy.deepcopy(trained)
    chat.tokenizer.chat_template = "{% for m in messages %}<u>{{ m['content'] }}</u>{% endfor %}{% if add_generation_prompt %}<a>{% endif %}"
    chat.chat_template = True
    chat.save(path=str(tmp_path / "chat"))
    trained.save(path=str(tmp_path / "plain"))
    assert HFBackend.load(str(tmp_path / "chat"), max_length=64).chat_template is True
    assert load_backend(str(tmp_path / "chat")).chat_template is True
    assert HFBackend.load(str(tmp_path / "plain"), max_length=64).chat_template is False
    with pytest.warns(UserWarning, match="trained with chat_template=true, loaded with chat_template=false"):
        assert HFBackend.load(str(tmp_path / "chat"), chat_template=False, max_length=64).chat_template is False
    (tmp_path / "plain" / "dreamgym.json").unlink()  # saved before the file existed: off, as it was
    assert HFBackend.load(str(tmp_path / "plain"), max_length=64).chat_template is False
    (tmp_path / "chat" / "dreamgym.json").write_text("{not json")
    with pytest.raises(DataError, match=r"dreamgym.json: cannot read the checkpoint's settings"):
        HFBackend.load(str(tmp_path / "chat"), max_length=64)


def test_prepare_fits_domain_words_as_single_tokens(small_config):
    backend = TinyBackend(small_config())
    assert len(backend.tokenizer.tokenize(" kitchen")) > 1
    backend.prepare(corpus=["You are in the kitchen. take apple"] * 50)
    assert backend.tokenizer.tokenize(" kitchen") == ["Ġkitchen"]
    assert backend.model.get_input_embeddings().num_embeddings == len(backend.tokenizer)
    assert backend.tokenizer.decode(backend.tokenizer("héllo\n{\"a\": 1}")["input_ids"]) == "héllo\n{\"a\": 1}"


def test_a_checkpoints_generation_config_does_not_change_sampling(make_examples, small_config, tmp_path):
    # Hub checkpoints ship sampling defaults in generation_config.json (Qwen2.5-Instruct:
    # repetition_penalty 1.05, top_k 20, top_p 0.8, temperature 0.7, do_sample true). generate()
    # must sample exactly as its own arguments say (what RL log-probs score), not with those.
    import json

    backend = TinyBackend(small_config())
    backend.prepare(corpus=["".join(t for t, _ in e) for e in make_examples()])
    backend.save(path=str(tmp_path / "plain"))
    backend.save(path=str(tmp_path / "tuned"))
    config_file = tmp_path / "tuned" / "generation_config.json"
    settings = {"repetition_penalty": 1.5, "no_repeat_ngram_size": 1, "do_sample": True, "temperature": 0.7, "top_k": 20, "top_p": 0.8}
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), **settings}))
    plain, tuned = HFBackend.load(str(tmp_path / "plain"), max_length=1024), HFBackend.load(str(tmp_path / "tuned"), max_length=1024)
    prompts = [PROMPT, "Room: bedroom."]
    for kwargs in ({"temperature": 0}, {"temperature": 1.0, "seed": 3}):
        assert tuned.generate(prompts=prompts, max_new_tokens=12, **kwargs) == plain.generate(
            prompts=prompts, max_new_tokens=12, **kwargs
        ), kwargs
    # the checkpoint's own settings are kept (and saved again), only not applied
    assert tuned.model.generation_config.repetition_penalty == 1.5
    tuned.save(path=str(tmp_path / "again"))
    assert json.loads((tmp_path / "again" / "generation_config.json").read_text())["repetition_penalty"] == 1.5


def test_sft_refuses_to_update_float16_weights_but_trains_float16_lora(trained, make_examples, tmp_path):
    # AdamW on float16 weights (no float32 master copy) turned every weight NaN after one step:
    # its eps (1e-8) is 0 in float16, and 0/0 where a gradient is 0 (unused embedding rows).
    trained.save(path=str(tmp_path / "m"))
    half = HFBackend.load(str(tmp_path / "m"), dtype="float16", max_length=1024)
    before = {n: p.detach().clone() for n, p in half.model.named_parameters()}
    with pytest.raises(ConfigError, match="float16"):
        half.sft(examples=make_examples()[:4], epochs=1, lr=1e-3, batch_size=4)
    assert all(torch.equal(p, before[n]) for n, p in half.model.named_parameters())
    # LoRA adapters on a float16 model are float32 (peft), so that trains
    adapted = HFBackend.load(str(tmp_path / "m"), dtype="float16", lora=LoraSettings(r=4), max_length=1024)
    metrics = adapted.sft(examples=make_examples()[:4], epochs=1, lr=1e-3, batch_size=4)
    assert math.isfinite(metrics["losses/sft_loss"])
    assert all(torch.isfinite(p).all() for p in adapted.model.parameters())


def test_evaluate_loss_is_the_token_mean_whatever_the_batch_size(trained, make_examples):
    # 9 examples in batches of 8: the last batch (one example) must not weigh as much as the other 8
    examples = make_examples()[:8] + [[("Room: garden.", False), (" take coin. Result: you take the coin, then the lamp.", True)]]
    per_batch = {size: trained.evaluate_loss(examples=examples, batch_size=size) for size in (1, 8, 9)}
    assert per_batch[1] == pytest.approx(per_batch[9], rel=1e-5)
    assert per_batch[8] == pytest.approx(per_batch[9], rel=1e-5)


def test_a_checkpoint_whose_generation_config_transformers_calls_invalid_saves(trained, tmp_path):
    # Some hub checkpoints set temperature/top_p in generation_config.json without do_sample.
    # transformers loads such a generation_config.json but refuses to save it, so a run on one
    # crashed at its first checkpoint after training; it is written back as it was read.
    import json

    trained.save(path=str(tmp_path / "hub"))
    config_file = tmp_path / "hub" / "generation_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "temperature": 0.6, "top_p": 0.9}))
    loaded = HFBackend.load(str(tmp_path / "hub"), max_length=1024)
    loaded.save(path=str(tmp_path / "trained"))
    saved = json.loads((tmp_path / "trained" / "generation_config.json").read_text())
    assert saved["temperature"] == 0.6 and saved["top_p"] == 0.9 and "do_sample" not in saved
    assert loaded.model.generation_config.temperature == 0.6  # the live model's config is back
    again = HFBackend.load(str(tmp_path / "trained"), max_length=1024)
    assert again.generate(prompts=[PROMPT], max_new_tokens=8, temperature=0) == trained.generate(
        prompts=[PROMPT], max_new_tokens=8, temperature=0
    )


def test_a_max_length_over_the_models_positions_is_a_config_error(short_gpt2):
    # before: the default max_length 2048 was taken on a 64-position model, and a 100-token
    # prompt failed inside the embedding with "IndexError: index out of range in self"
    with pytest.raises(ConfigError) as info:
        HFBackend.load(short_gpt2)
    message = str(info.value)
    assert "max_length=2048" in message and "64" in message and "n_positions" in message and "\n" not in message
    backend = HFBackend.load(short_gpt2, max_length=64)
    assert backend.prompt_fits("a " * 50, max_new_tokens=4) and not backend.prompt_fits("a " * 61, max_new_tokens=4)
    (text,) = backend.generate(prompts=["a " * 100], max_new_tokens=4, temperature=0)  # the prompt keeps its end
    assert isinstance(text, str) and backend.prompts_cut == 1


def test_reloading_a_model_with_fewer_positions_than_max_length_is_refused(short_gpt2, small_config):
    backend = TinyBackend(small_config())  # max_length 1024
    with pytest.raises(ConfigError, match="max_length=1024"):
        backend.reload(path=short_gpt2)


@pytest.mark.parametrize(
    "field, largest",
    [("hidden_size", 65_536), ("layers", 1_024), ("heads", 1_024), ("intermediate_size", 262_144),
     ("vocab_size", 1_048_576), ("max_positions", 16_777_216)],
)
def test_an_absurd_tiny_model_size_is_refused_before_the_model_is_built(small_config, field, largest):
    # before: layers: 10**30 (or a huge width or vocabulary) was accepted, and building the
    # model looped or allocated until the process was killed
    for value in (10**30, largest + 1):
        with pytest.raises(msgspec.ValidationError) as info:
            small_config(**{field: value})
        assert str(info.value) == f"Expected `int` <= {largest} - at `$.{field}`"


def test_an_absurd_tiny_model_size_on_the_command_line_is_one_line_and_exit_2(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    pipeline = Path(__file__).resolve().parents[4] / "examples" / "default.yaml"
    done = subprocess.run(
        [sys.executable, "-m", "dreamgym_core.cli", "run", str(pipeline), "--set", f"run_dir={tmp_path / 'run'}",
         "--set", "policy.config.layers=1000000000000000000000000000000"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip() == f"Error: {pipeline}: Expected `int` <= 1024 - at `$.policy.config.layers`"
    assert not (tmp_path / "run").exists()


def test_a_tiny_model_too_large_as_a_whole_is_refused_before_it_is_built(small_config):
    # before: each size was bounded but not their product: width 65536 with 1024 blocks passed
    # validation and building the model tried to allocate some 1.8e13 parameters
    with pytest.raises(msgspec.ValidationError) as info:
        small_config(hidden_size=65_536, layers=1_024, heads=4, intermediate_size=344)
    message = str(info.value)
    assert message.startswith("hf-tiny: hidden_size=65536, layers=1024, intermediate_size=344, vocab_size=400 ")
    assert "about 1.8e+13 parameters, over the cap of 2e+09" in message and "\n" not in message
    small_config(hidden_size=4_096, layers=8, heads=32, intermediate_size=11_008, vocab_size=32_000)  # 1.8e9: accepted


def test_the_tiny_parameter_estimate_is_the_built_models_count(small_config):
    from dreamgym_plugin_hf.config import tiny_parameters

    backend = TinyBackend(small_config())
    c = backend.config
    built = sum(p.numel() for p in backend.model.parameters())
    assert built == tiny_parameters(
        hidden_size=c.hidden_size, layers=c.layers, intermediate_size=c.intermediate_size, vocab_size=len(backend.tokenizer)
    )


def test_an_absurd_lora_rank_is_refused_at_validation():
    # before: the rank had no upper bound and peft tried to allocate the adapters
    for value in (10**30, 4_097):
        with pytest.raises(msgspec.ValidationError) as info:
            msgspec.convert({"r": value}, type=LoraSettings)
        assert str(info.value) == "Expected `int` <= 4096 - at `$.r`"
    assert msgspec.convert({"r": 4_096}, type=LoraSettings).r == 4_096


@pytest.mark.parametrize(
    "settings, error",
    [
        (["policy.config.hidden_size=65536", "policy.config.layers=1024"],
         "hf-tiny: hidden_size=65536, layers=1024, intermediate_size=344, vocab_size=1024 make about 1.8e+13 "
         "parameters, over the cap of 2e+09; make the model smaller - at `$.policy.config`"),
        (["policy.config.lora.r=100000"], "Expected `int` <= 4096 - at `$.policy.config.lora.r`"),
    ],
)
def test_a_tiny_model_too_large_or_an_absurd_lora_rank_on_the_command_line_is_one_line_and_exit_2(tmp_path, settings, error):
    import subprocess
    import sys
    from pathlib import Path

    pipeline = Path(__file__).resolve().parents[4] / "examples" / "default.yaml"
    done = subprocess.run(
        [sys.executable, "-m", "dreamgym_core.cli", "run", str(pipeline), "--set", f"run_dir={tmp_path / 'run'}",
         *[arg for setting in settings for arg in ("--set", setting)]],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip() == f"Error: {pipeline}: {error}"
    assert not (tmp_path / "run").exists()


def test_count_tokens_counts_an_answer_as_generation_spends_its_budget(trained):
    # What the experience model compares with max_new_tokens before training.
    text = "<think>the coin is here</think>\n<state>You take the coin.</state>\n"
    assert trained.count_tokens([text, "", text + text]) == [
        len(trained.tokenizer(text, add_special_tokens=False)["input_ids"]), 0,
        len(trained.tokenizer(text + text, add_special_tokens=False)["input_ids"]),
    ]
    assert 0 < trained.count_tokens([text])[0] < trained.count_tokens([text + text])[0]


def test_generate_returns_the_texts_of_the_server_records(small_config, make_examples):
    # generate() wraps _generations() (which also gives the server its finish reasons and token
    # counts). Its texts were compared with the code before it on 868 settings when it was split
    # out, byte for byte; literal expected texts here would hold on one CPU's kernels only.
    backend = TinyBackend(small_config())
    backend.prepare(corpus=["".join(text for text, _ in example) for example in make_examples()])
    prompts = ["Room: kitchen.", "Items: coin, lamp. Action:"]
    for settings in ({"temperature": 0}, {"temperature": 1.0, "seed": 7}, {"temperature": 0.7, "seed": 1, "stop": ["e"]}):
        records = backend._generations(prompts=prompts, max_new_tokens=8, **settings)
        assert [g.text for g in records] == backend.generate(prompts=prompts, max_new_tokens=8, **settings)
        assert all(g.finish_reason in ("stop", "length") and 0 <= g.completion_tokens <= 8 for g in records)


def test_an_odd_head_size_is_refused_before_the_model_is_built(small_config):
    # 100 / 4 = 25 per head built a model whose every forward pass failed on the rotary
    # embedding ("size of tensor a (25) must match ... (26)"), after the run had started
    with pytest.raises(msgspec.ValidationError, match=r"hidden_size=100 / heads=4 = 25 per head must be even"):
        small_config(hidden_size=100, heads=4)
    assert small_config(hidden_size=96, heads=4).heads == 4


def test_a_tokenizer_that_appends_eos_puts_only_its_bos_before_a_prompt():
    # The prefix was all of tokenizer(""): with a "<s> $A </s>" template every prompt, in
    # training and in generation, began "<s></s>", which no pretrained model has seen there.
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from dreamgym_plugin_hf.backend import HFBackend
    from dreamgym_plugin_hf.config import HFConfig

    vocab = {"[UNK]": 0, "<s>": 1, "</s>": 2, "<pad>": 3, "go": 4, "north": 5}
    words = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    words.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, unk_token="[UNK]", bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    model = LlamaForCausalLM(LlamaConfig(vocab_size=6, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64))
    backend = HFBackend(HFConfig(path="unused", max_length=64), model=model, tokenizer=tokenizer, model_id="appends-eos")
    assert backend.prompt_ids("go north") == [1, 4, 5]
    assert backend.encode_prompt("go north", 2) == [1, 5]  # a cut keeps the start token


def test_a_smollm2_cache_built_from_another_gguf_is_refused(small_config, tmp_path):
    # The cache was loaded whatever gguf_file said, under SmolLM2's name: a user who pointed
    # gguf_file at another quantisation or a fine-tune kept getting the first model.
    import json
    import os

    from dreamgym_core.errors import ConfigError
    from dreamgym_plugin_hf.backend import save_checkpoint
    from dreamgym_plugin_hf.config import SmolLM2Config
    from dreamgym_plugin_hf.smollm2 import SOURCE_FILE, SmolLM2Backend, gguf_source

    tiny = TinyBackend(small_config())  # stands in for the dequantised model: no GGUF is read below
    tiny.prepare(corpus=["go north", "take coin"])
    cache = tmp_path / "cache"
    save_checkpoint(tiny.model, tiny.tokenizer, str(cache))
    mine = tmp_path / "fine-tune.gguf"
    mine.write_bytes(b"GGUF one")
    with pytest.raises(ConfigError, match=r"cache_dir .*cache holds the model built from the packaged GGUF, not from gguf_file .*fine-tune.gguf"):
        SmolLM2Backend.from_config(SmolLM2Config(cache_dir=str(cache), gguf_file=str(mine)))
    plain = {"chat_template": False, "max_length": 1024}  # what the stand-in model allows
    assert SmolLM2Backend.from_config(SmolLM2Config(cache_dir=str(cache), **plain)).model_id == "SmolLM2-135M-Instruct"  # an older cache
    (cache / SOURCE_FILE).write_text(json.dumps(gguf_source(str(mine))))  # as a build from that file records it
    assert SmolLM2Backend.from_config(SmolLM2Config(cache_dir=str(cache), gguf_file=str(mine), **plain)).model is not None
    with pytest.raises(ConfigError, match="holds the model built from .*fine-tune.gguf, not from gguf_file \\(the packaged GGUF\\)"):
        SmolLM2Backend.from_config(SmolLM2Config(cache_dir=str(cache)))
    mine.write_bytes(b"GGUF two, rewritten in place")
    os.utime(mine, ns=(1, 1))
    with pytest.raises(ConfigError, match="as it is now"):
        SmolLM2Backend.from_config(SmolLM2Config(cache_dir=str(cache), gguf_file=str(mine)))
