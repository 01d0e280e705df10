"""Fixtures: resolved pipelines built without other plugins, verl's composed config, a BPE tokenizer.

The tokenizer is a byte-level BPE trained here on agent prompts, with a ChatML chat
template (the format SmolLM2-Instruct uses); real tokenizer code, small vocabulary,
so tests need no model download.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Callable

import msgspec
import pytest
import yaml
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from dreamgym_core.config import PipelineConfig, ResolvedPipeline, convert_config
from dreamgym_plugin_verl.config import VerlConfig

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = [
    "You are an agent acting in a text environment. Reach the goal in as few steps as possible.",
    "Task: Step of at most Recent history: action: Current observation: Admissible actions:",
    "Think in <think></think>, then give exactly one action in <action></action>.",
    "You are in the kitchen. A door leads north. You see an apple. go north take apple wait jump",
    "<think>the goal is north</think><action>go north</action>",
]


def _resolve(data: dict[str, Any], source: str = "pipeline.yaml") -> ResolvedPipeline:
    pipeline = msgspec.convert(data, type=PipelineConfig)
    algo = convert_config(pipeline.algo.config, VerlConfig, source, "$.algo.config")
    return ResolvedPipeline(source=source, pipeline=pipeline, components={"algo": algo})


@pytest.fixture
def resolve_file() -> Callable[[Path], ResolvedPipeline]:
    """Resolve a pipeline YAML for the verl algo alone (the env/policy plugins are not loaded)."""

    def load(path: Path) -> ResolvedPipeline:
        return _resolve(yaml.safe_load(Path(path).read_text()), source=Path(path).name)

    return load


@pytest.fixture
def resolve_dict() -> Callable[[dict[str, Any]], ResolvedPipeline]:
    return _resolve


def compose_verl(overrides: list[str]) -> Any:
    """verl's own ppo_trainer config composed with ``overrides`` (Hydra struct mode)."""
    from hydra import compose, initialize_config_dir

    config_dir = os.path.join(importlib.util.find_spec("verl").submodule_search_locations[0], "trainer", "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        return compose(config_name="ppo_trainer", overrides=overrides)


@pytest.fixture
def compose() -> Callable[[list[str]], Any]:
    return compose_verl


@pytest.fixture(scope="session")
def chat_tokenizer() -> PreTrainedTokenizerFast:
    core = Tokenizer(models.BPE(unk_token=None))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    core.train_from_iterator(CORPUS * 4, trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token="<|im_start|>"
    )
    tok.chat_template = CHATML
    return tok


@pytest.fixture(scope="session")
def chat_model(tmp_path_factory, chat_tokenizer) -> Path:
    """A small Llama with weights and the ChatML tokenizer: an instruct-model directory that
    the ``hf`` policy loads and the warm start trains (random weights, real model code)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("chat_model")
    config = LlamaConfig(
        vocab_size=len(chat_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=8192,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    chat_tokenizer.save_pretrained(path)
    return path
