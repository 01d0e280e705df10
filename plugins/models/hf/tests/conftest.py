"""Shared fixtures: a small tiny-preset model, fitted to a toy household corpus."""

from __future__ import annotations

import msgspec
import pytest
import torch

from dreamgym_plugin_hf.config import TinyConfig
from dreamgym_plugin_hf.tiny import TinyBackend



@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Models this small run several times faster on one thread on a shared CPU;
    restored afterwards so other plugins' tests keep torch's default."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


ROOMS = ["kitchen", "pantry", "garden", "bedroom"]
ITEMS = ["apple", "key", "coin", "book"]


def make_examples() -> list[list[tuple[str, bool]]]:
    """(prompt, target) examples: the target repeats the prompt's first item."""
    out = []
    for room in ROOMS:
        for item in ITEMS:
            prompt = f"Room: {room}. Items: {item}, lamp. Action:"
            out.append([(prompt, False), (f" take {item}. Result: you take the {item}.", True)])
    return out


def corpus() -> list[str]:
    return ["".join(text for text, _ in example) for example in make_examples()]


SMALL = {"hidden_size": 64, "layers": 2, "heads": 2, "intermediate_size": 128, "vocab_size": 400, "max_positions": 1024, "max_length": 1024}


def small_config(**changes) -> TinyConfig:
    return msgspec.convert({**SMALL, **changes}, type=TinyConfig)


@pytest.fixture(name="make_examples")
def make_examples_fixture():
    """The example builder, for tests (test modules cannot import conftest)."""
    return make_examples


@pytest.fixture(name="small_config")
def small_config_fixture():
    """The small TinyConfig factory."""
    return small_config


@pytest.fixture(scope="module")
def trained() -> TinyBackend:
    """A tiny model that has memorised the examples (greedy output is predictable)."""
    backend = TinyBackend(small_config())
    backend.prepare(corpus=corpus())
    backend.sft(examples=make_examples(), epochs=25, lr=5e-3, batch_size=8)
    return backend


@pytest.fixture(scope="session")
def short_gpt2(tmp_path_factory) -> str:
    """A saved GPT-2 of 64 positions (learned position embeddings: position 64 does not exist)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1, "<eos>": 2}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, unk_token="[UNK]", eos_token="<eos>")
    model = GPT2LMHeadModel(GPT2Config(vocab_size=3, n_positions=64, n_embd=16, n_layer=1, n_head=2, bos_token_id=2, eos_token_id=2))
    path = tmp_path_factory.mktemp("gpt2") / "short"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)

