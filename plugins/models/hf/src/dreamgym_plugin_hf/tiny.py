"""The tiny preset: a few-M-parameter Llama-style model trained from scratch on CPU."""

from __future__ import annotations

import hashlib
from typing import Iterable, Sequence

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from .backend import HFBackend
from .config import TinyConfig

__all__ = ["SPECIAL_TOKENS", "train_tokenizer", "build_tiny_model", "TinyBackend"]

PAD, BOS, EOS = "<|pad|>", "<|bos|>", "<|eos|>"
SPECIAL_TOKENS = [PAD, BOS, EOS]


def train_tokenizer(corpus: Iterable[str], *, vocab_size: int, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """Byte-level BPE fitted on ``corpus``: frequent domain words become single tokens.

    Every byte is in the alphabet, so any text round-trips, even with an empty corpus.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token=PAD, bos_token=BOS, eos_token=EOS, padding_side="left"
    )


def build_tiny_model(config: TinyConfig, tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    """A freshly initialised Llama-style model sized by ``config``, seeded by ``config.seed``."""
    llama = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.layers,
        num_attention_heads=config.heads,
        num_key_value_heads=config.heads,
        max_position_embeddings=config.max_positions,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return LlamaForCausalLM(llama)


def _corpus_digest(corpus: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for text in corpus:
        digest.update(text.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:10]


class TinyBackend(HFBackend):
    """``hf-tiny``: usable at once (byte-level tokenizer); :meth:`prepare` fits it to a domain."""

    def __init__(self, config: TinyConfig) -> None:
        tokenizer = train_tokenizer([], vocab_size=config.vocab_size)
        super().__init__(config, model=build_tiny_model(config, tokenizer), tokenizer=tokenizer, model_id="")
        self.model_id = self._name("bytes")

    def _name(self, corpus_id: str) -> str:
        c = self.config
        return f"hf-tiny-{c.hidden_size}x{c.layers}-v{len(self.tokenizer)}-{corpus_id}"

    def _reloaded_id(self, path: str) -> str:
        """A checkpoint saved before it recorded its name: named as :meth:`prepare` names its model,
        for the reloaded tokenizer's size, with a digest of its vocabulary in place of the corpus's
        (which the checkpoint does not keep); "bytes" for the unfitted byte-level tokenizer."""
        vocab = sorted(self.tokenizer.get_vocab().items())
        if vocab == sorted(train_tokenizer([], vocab_size=self.config.vocab_size).get_vocab().items()):
            return self._name("bytes")
        return self._name("vocab-" + hashlib.sha256(repr(vocab).encode()).hexdigest()[:10])

    def prepare(self, *, corpus: Sequence[str]) -> None:
        """Train the tokenizer on ``corpus`` and re-initialise the model for that vocabulary."""
        corpus = list(corpus)
        tokenizer = train_tokenizer(corpus, vocab_size=self.config.vocab_size, min_frequency=self.config.min_frequency)
        self._attach(build_tiny_model(self.config, tokenizer), tokenizer)
        self.model_id = self._name(_corpus_digest(corpus))
