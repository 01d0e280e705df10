"""Reviewed bugs of the hf backend: tied-embedding LoRA, leftover gradients, LoRA saves,
reload's name and chat template, device/seed validation, generate's argument checks."""

from __future__ import annotations

import copy
import json

import msgspec
import pytest
import torch
from safetensors.torch import load_file

from dreamgym_core.errors import ConfigError
from dreamgym_plugin_hf import backend as hf_backend
from dreamgym_plugin_hf.backend import HFBackend
from dreamgym_plugin_hf.config import LoraSettings, TinyConfig
from dreamgym_plugin_hf.tiny import TinyBackend

SMALL = {"hidden_size": 32, "layers": 1, "heads": 2, "intermediate_size": 64, "vocab_size": 320, "max_positions": 1024, "max_length": 1024}
CORPUS = ["Room: kitchen. Items: apple, lamp. Action: take apple. Result: you take the apple."] * 4 + ["go north . you see a door"]
EXAMPLES = [[("Room: kitchen. Action:", False), (" take apple. Result: you take the apple.", True)]]
PROMPTS = ["Room: kitchen. Action:", "go"]


def config(**changes) -> TinyConfig:
    return msgspec.convert({**SMALL, **changes}, type=TinyConfig)


def fitted(**changes) -> TinyBackend:
    backend = TinyBackend(config(**changes))
    backend.prepare(corpus=CORPUS)
    return backend


def greedy(backend: HFBackend) -> list[str]:
    return backend.generate(prompts=PROMPTS, max_new_tokens=8, temperature=0)


# --- 1. LoRA on tied word embeddings ----------------------------------------------


@pytest.mark.parametrize("target", ["lm_head", "embed_tokens", "model.embed_tokens"])
def test_lora_on_a_tied_word_embedding_is_a_config_error_naming_target_modules(target):
    # merged on save, the lm_head update went into the weight embed_tokens shares: the saved
    # model was not the trained one (reloaded loss 4.58 against 2.65 live)
    with pytest.raises(ConfigError, match=r"lora\.target_modules=.*ties its input and output word embeddings") as info:
        TinyBackend(config(lora={"r": 4, "target_modules": [target, "q_proj"]}))
    assert "\n" not in str(info.value)
    TinyBackend(config(lora={"r": 4, "target_modules": ["q_proj"]}))  # the projections alone are fine


# --- 2. gradients after sft ----------------------------------------------------------


@pytest.mark.parametrize("lora", [None, {"r": 4}])
def test_sft_leaves_no_gradient_buffers_behind(lora):
    backend = fitted(lora=lora)
    backend.sft(examples=EXAMPLES, epochs=1, lr=1e-3, batch_size=1)
    assert [n for n, p in backend.model.named_parameters() if p.grad is not None] == []


# --- 3. LoRA saves --------------------------------------------------------------------


def lora_trained(**changes) -> TinyBackend:
    backend = fitted(lora={"r": 4, "target_modules": ["q_proj", "v_proj", "down_proj"]}, seed=1, **changes)
    backend.sft(examples=EXAMPLES, epochs=3, lr=1e-2, batch_size=1)
    return backend


def old_merge(backend: HFBackend) -> dict[str, torch.Tensor]:
    """What the save wrote before: a deep copy, merged and unloaded by peft."""
    return copy.deepcopy(backend.model).merge_and_unload().state_dict()


def test_a_lora_save_writes_the_weights_a_merged_copy_has_without_copying_the_model(tmp_path, monkeypatch):
    backend = lora_trained()
    expected = old_merge(backend)
    live = {k: v.clone() for k, v in backend.model.state_dict().items()}
    loss, answers = backend.evaluate_loss(examples=EXAMPLES), greedy(backend)

    def no_model_copies(obj, *args, **kwargs):
        assert not isinstance(obj, torch.nn.Module), "save deep-copied the model (twice its memory)"
        return real(obj, *args, **kwargs)

    real = copy.deepcopy
    monkeypatch.setattr(copy, "deepcopy", no_model_copies)
    backend.save(path=str(tmp_path / "m"))
    monkeypatch.undo()

    saved = load_file(str(tmp_path / "m" / "model.safetensors"))
    assert saved.keys() <= expected.keys() and expected.keys() - saved.keys() <= {"lm_head.weight"}  # tied: saved once
    assert all(torch.equal(saved[k], expected[k]) for k in saved)  # bit for bit
    # the live model is untouched: weights, loss and greedy answers as before the save
    after = backend.model.state_dict()
    assert after.keys() == live.keys() and all(torch.equal(after[k], live[k]) for k in live)
    assert backend.evaluate_loss(examples=EXAMPLES) == loss and greedy(backend) == answers
    reloaded = HFBackend.load(str(tmp_path / "m"), max_length=1024)
    assert greedy(reloaded) == answers


def test_merged_lora_weights_equal_peft_merge_in_bfloat16(tmp_path):
    # a bfloat16 model keeps its adapters in float32: the merge adds a float32 delta, as peft's
    backend = lora_trained()
    backend.save(path=str(tmp_path / "plain"))
    half = HFBackend.load(str(tmp_path / "plain"), dtype="bfloat16", max_length=1024, lora=LoraSettings(r=4, target_modules=("q_proj", "down_proj")))
    with torch.no_grad():
        for name, param in half.model.named_parameters():
            if "lora_B" in name:
                param.normal_()  # peft starts B at zero: a non-zero delta to merge
    expected = old_merge(half)
    ours = hf_backend.merged_lora_weights(half.model.get_base_model())
    assert ours.keys() == expected.keys()
    assert all(ours[k].dtype == expected[k].dtype and torch.equal(ours[k], expected[k]) for k in ours)


# --- 4. reload's model id and chat template ---------------------------------------------


def test_an_in_place_reload_names_the_model_as_its_saver_did(tmp_path):
    trained = fitted(seed=3)
    trained.save(path=str(tmp_path / "ck"))
    fresh = TinyBackend(config(seed=3))
    assert fresh.model_id.endswith("-bytes")
    fresh.reload(path=str(tmp_path / "ck"))
    assert fresh.model_id == trained.model_id and len(fresh.tokenizer) == len(trained.tokenizer)
    assert greedy(fresh) == greedy(trained)


def test_reloading_a_checkpoint_that_records_no_name_names_it_by_its_tokenizer(tmp_path):
    trained = fitted(seed=3)
    trained.save(path=str(tmp_path / "ck"))
    (tmp_path / "ck" / "dreamgym.json").write_text(json.dumps({"chat_template": False}))  # saved before the name was kept
    fresh = TinyBackend(config(seed=3))
    fresh.reload(path=str(tmp_path / "ck"))
    assert fresh.model_id.startswith(f"hf-tiny-32x1-v{len(trained.tokenizer)}-") and not fresh.model_id.endswith("-bytes")
    TinyBackend(config(seed=3)).save(path=str(tmp_path / "bytes"))
    (tmp_path / "bytes" / "dreamgym.json").unlink()
    fresh.reload(path=str(tmp_path / "bytes"))
    assert fresh.model_id == TinyBackend(config(seed=3)).model_id


def test_an_in_place_reload_applies_the_checkpoints_chat_template(tmp_path):
    chat = fitted(seed=3)
    chat.tokenizer.chat_template = "{% for m in messages %}<u>{{ m['content'] }}</u>{% endfor %}{% if add_generation_prompt %}<a>{% endif %}"
    chat.chat_template = True
    chat.save(path=str(tmp_path / "chat"))
    fresh = TinyBackend(config(seed=3))
    fresh.reload(path=str(tmp_path / "chat"))
    assert fresh.chat_template is True
    assert fresh.prompt_ids(PROMPTS[0]) == chat.prompt_ids(PROMPTS[0])


# --- 5. device and seed -------------------------------------------------------------------


def test_a_device_torch_does_not_know_is_refused_naming_device():
    with pytest.raises(msgspec.ValidationError, match=r"device='gpu' is not a torch device"):
        config(device="gpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1", "meta"])
def test_a_device_this_torch_cannot_use_is_a_config_error_naming_device(device):
    with pytest.raises(ConfigError, match=rf"device='{device}'") as info:
        TinyBackend(config(device=device))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("seed", [2**64, -(2**63) - 1])
def test_a_seed_torch_cannot_take_is_refused_naming_seed(seed):
    with pytest.raises(msgspec.ValidationError, match=r"\$\.seed"):
        config(seed=seed)


def test_generate_refuses_a_seed_torch_cannot_take():
    backend = TinyBackend(config())
    with pytest.raises(ConfigError, match=r"seed=18446744073709551616"):
        backend.generate(prompts=["go"], max_new_tokens=2, temperature=1.0, seed=2**64)
    assert backend.generate(prompts=["go"], max_new_tokens=2, temperature=1.0, seed=2**64 - 1)  # torch's largest


# --- 6. generate's and evaluate_loss's arguments -------------------------------------------


@pytest.mark.parametrize("temperature", [float("nan"), float("inf"), -0.5])
def test_a_temperature_that_is_no_finite_non_negative_number_is_refused(temperature):
    # NaN decoded greedily without a word
    with pytest.raises(ConfigError, match="temperature="):
        TinyBackend(config()).generate(prompts=["go"], max_new_tokens=2, temperature=temperature)


def test_max_new_tokens_true_is_refused_not_read_as_one():
    with pytest.raises(ConfigError, match="max_new_tokens=True"):
        TinyBackend(config()).generate(prompts=["go"], max_new_tokens=True, temperature=0)


@pytest.mark.parametrize("batch_size", [0, -1])
def test_evaluate_loss_refuses_a_batch_size_below_one(batch_size):
    with pytest.raises(ConfigError, match="batch_size"):
        fitted().evaluate_loss(examples=EXAMPLES, batch_size=batch_size)


# --- 7. cutting a chat-formatted prompt -----------------------------------------------------

TEMPLATE = "<sys>Be brief.</sys>{% for m in messages %}<u>{{ m['content'] }}</u>{% endfor %}{% if add_generation_prompt %}<a>{% endif %}"


def test_a_cut_chat_prompt_keeps_the_templates_turns_before_the_users_text():
    # the cut kept the prompt's end only: the model saw the middle of the user's text, no turn opened
    backend = fitted(max_length=48)
    backend.tokenizer.chat_template, backend.chat_template = TEMPLATE, True
    prompt = "Task: find the key. " + "You walk around. " * 40 + "What next?"
    full = backend.prompt_ids(prompt)
    header = backend._encode("<sys>Be brief.</sys><u>")
    assert full[: len(header)] == header and len(full) > 40
    cut = backend.encode_prompt(prompt, 40)
    assert len(cut) == 40 and cut[: len(header)] == header and cut[len(header) :] == full[len(full) - 40 + len(header) :]
    ids, labels = backend.encode_example([(prompt, False), (" go", True)])
    assert len(ids) == 48 and ids[: len(header)] == header and backend.tokenizer.decode(ids).endswith("<a> go<|eos|>")
    assert len(backend.generate(prompts=[prompt], max_new_tokens=8, temperature=0)) == 1
    # a short prompt is as it was
    assert backend.encode_prompt("go", 40) == backend.prompt_ids("go")
