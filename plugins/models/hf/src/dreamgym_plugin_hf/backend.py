"""The transformers backend: batched seeded generation, masked SFT, safetensors saves."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Sequence

import msgspec
import torch
import torch.nn.functional as F
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedModel,
    StoppingCriteria,
    StoppingCriteriaList,
)

from dreamgym_core.checkpoint import new_directory, plain_file_modes
from dreamgym_core.errors import ConfigError, DataError, ModelUnavailable
from dreamgym_core.progress import OnBatch

from .config import MAX_TORCH_SEED, MIN_TORCH_SEED, HFConfig, LoraSettings
from .text import IGNORE, cut_at_stop, keep_end, left_pad, right_pad, segment_labels

log = logging.getLogger(__name__)

__all__ = ["HFBackend", "context_length", "load_pretrained", "resolve_chat_template", "save_checkpoint", "saved_chat_template", "saved_model_id"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
Example = Sequence[tuple[str, bool]]


def leading_special_tokens(tokenizer: Any) -> list[int]:
    """The special tokens the tokenizer puts before a text (Llama's BOS), without any it puts
    after: one that appends EOS (``<s> $A </s>``) gave ``tokenizer("")`` = BOS EOS, and every
    prompt then started with an EOS no pretrained model has seen there."""
    probe = "a"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
    starts = [i for i in range(len(full) - len(plain) + 1) if full[i : i + len(plain)] == plain]
    return full[: starts[0]] if starts else list(tokenizer("", add_special_tokens=True)["input_ids"])


def special_stop_ids(tokenizer: Any, stop: Sequence[str]) -> set[int]:
    """Ids of the stop strings that are special tokens (``<|im_start|>``): the text generation
    returns is decoded without special tokens, so such a stop is never found in it, and is
    matched by id instead."""
    special = {added.content: i for i, added in tokenizer.added_tokens_decoder.items() if added.special}
    special.update({token: tokenizer.convert_tokens_to_ids(token) for token in tokenizer.all_special_tokens})
    return {special[s] for s in stop if s in special}


def cut_at_special_stop(ids: list[int], stop_ids: set[int]) -> list[int]:
    """``ids`` up to (without) the first special-token stop."""
    return next((ids[:i] for i, token in enumerate(ids) if token in stop_ids), ids)


class _StopStrings(StoppingCriteria):
    """Marks a row done once its new text contains any stop string (a special token's by its id);
    ``ended`` maps each such row to the number of new tokens it had then (a record only: it
    changes no generation)."""

    def __init__(self, tokenizer: Any, stop: Sequence[str], prompt_width: int) -> None:
        self.tokenizer, self.stop, self.prompt_width = tokenizer, [s for s in stop if s], prompt_width
        self.stop_ids = special_stop_ids(tokenizer, self.stop)
        self.ended: dict[int, int] = {}

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        new = input_ids[:, self.prompt_width :]
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        done = [any(s in t for s in self.stop) for t in texts]
        if self.stop_ids:
            hit = torch.isin(new, torch.tensor(sorted(self.stop_ids), device=new.device)).any(dim=1).tolist()
            done = [d or h for d, h in zip(done, hit, strict=True)]
        for row in (i for i, hit in enumerate(done) if hit):
            self.ended.setdefault(row, input_ids.shape[1] - self.prompt_width)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class Generation(msgspec.Struct, frozen=True, kw_only=True):
    """One answer of :meth:`HFBackend._generations`, with what an OpenAI-style server reports of it."""

    text: str  # what generate() returns for the prompt
    prompt_tokens: int  # the prompt's tokens as the model saw them (after any cut)
    completion_tokens: int  # tokens generated, up to and including the EOS or the one that completed a stop string
    finish_reason: Literal["stop", "length"]  # "stop": EOS or a stop string ended it; "length": max_new_tokens did
    token_ids: tuple[int, ...] = ()  # the ids sampled, ``completion_tokens`` of them (the ending EOS or stop included)


def check_device(device: str) -> None:
    """A ConfigError naming ``device`` unless this torch can place a model there: CUDA on a build
    or machine without it failed as torch's AssertionError (or RuntimeError) naming no setting,
    and 'meta' holds no weights to compute with."""
    where = torch.device(device)
    if where.type == "meta":
        raise ConfigError(f"hf: device={device!r} holds no weights; use 'cpu' or 'cuda'")
    if where.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"hf: device={device!r} but this torch has no CUDA device (torch {torch.__version__}); use 'cpu'")
    if where.type == "cuda" and where.index is not None and where.index >= torch.cuda.device_count():
        raise ConfigError(f"hf: device={device!r} but only {torch.cuda.device_count()} CUDA device(s) are visible")


def forked_devices(device: torch.device | str) -> list[int]:
    """The CUDA devices whose generators a seeded call must fork as well as the CPU's:
    ``torch.manual_seed`` reseeds every device, and only forked states are restored."""
    device = torch.device(device)
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


@contextlib.contextmanager
def quiet_progress_bars() -> Iterator[None]:
    """Hide transformers' progress bars for one save or load. A run saves and reloads these
    small models many times, and each bar ("Writing model shards", "Loading weights") would
    interleave with the run's own progress lines; the setting is put back afterwards."""
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def _cached_snapshot(hub_id: str) -> str | None:
    """The local hub cache's directory of ``hub_id`` (a pure file-system look-up), or None."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id=hub_id, filename="config.json")
    except ValueError:  # not a valid hub id
        return None
    return os.path.dirname(found) if isinstance(found, str) else None


def load_pretrained(path: str, dtype: str = "float32", *, allow_download: bool = False) -> tuple[PreTrainedModel, Any]:
    """Model and tokenizer from a directory or hub id; a clear DataError if that fails.

    Without ``allow_download`` a run touches no network: a hub id loads from the local
    hub cache's directory or not at all, and a mistyped directory (``runs/exp-model``
    reads as a hub id) is an error naming it rather than a hub request. Even
    ``local_files_only`` lets the hub library send telemetry for a non-directory, hence
    the look-up here.
    """
    if (os.path.isabs(path) or path.startswith(".")) and not os.path.isdir(path):
        raise DataError(f"hf: path={path!r} is not a directory (expected a saved model directory or a hub id)")
    source = path if allow_download or os.path.isdir(path) else _cached_snapshot(path)
    if source is None:
        raise ModelUnavailable(
            f"hf: path={path!r} is not a directory, nor a hub id in the local cache; "
            "set allow_download: true to fetch it from the Hugging Face hub"
        )
    try:
        with quiet_progress_bars():
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=not allow_download)
            model = AutoModelForCausalLM.from_pretrained(source, dtype=DTYPES[dtype], local_files_only=not allow_download)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"hf: cannot load a causal LM from path={path!r}{_damaged_json(source)}: {first}") from exc
    except Exception as exc:  # noqa: BLE001 - a damaged saved directory, as transformers and its readers report it
        # (SafetensorError for torn weights, TypeError for a config.json that is not an object,
        # RuntimeError for weights of another shape, KeyError for a tokenizer.json missing a part)
        first = " ".join(str(exc).split())[:300] or "no detail"
        raise DataError(f"hf: cannot load a causal LM from path={path!r}{_damaged_json(source)}: {type(exc).__name__}: {first}") from exc
    return model, tokenizer


def _damaged_json(source: str) -> str:
    """Names the first JSON file of a saved directory that is not valid JSON, so a load error
    names the file (transformers' own error names at most the directory); "" when none."""
    if not os.path.isdir(source):
        return ""
    for name in sorted(os.listdir(source)):
        if name.endswith(".json"):
            try:
                with open(os.path.join(source, name), "rb") as f:
                    json.loads(f.read())
            except (OSError, ValueError):
                return f" ({name} there is not valid JSON)"
    return ""


def context_length(model: PreTrainedModel) -> tuple[str, int] | None:
    """The model's number of positions and the config field that holds it (GPT-2's
    ``n_positions``, else ``max_position_embeddings``); None when its config names neither."""
    for field in ("n_positions", "max_position_embeddings"):
        value = getattr(model.config, field, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return field, value
    return None


def _save_model(model: PreTrainedModel, directory: Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """``model.save_pretrained`` (of ``state_dict`` when given), also for a generation config
    transformers loads but refuses to save (sampling flags such as temperature without do_sample,
    as some hub checkpoints ship): that one is written back as it was read rather than failing the save."""
    own = getattr(model, "generation_config", None)
    try:
        if own is not None:
            own.validate(strict=True)
    except ValueError:
        model.generation_config = GenerationConfig()
        try:
            model.save_pretrained(directory, state_dict=state_dict, safe_serialization=True)
        finally:
            model.generation_config = own
        own.to_json_file(directory / "generation_config.json")
        return
    model.save_pretrained(directory, state_dict=state_dict, safe_serialization=True)


# Beside the weights: how the saved model's prompts were formatted, which its weights cannot say.
SETTINGS_FILE = "dreamgym.json"


def save_checkpoint(
    model: PreTrainedModel,
    tokenizer: Any,
    path: str,
    *,
    chat_template: bool | None = None,
    model_id: str | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
    extra_files: dict[str, bytes] | None = None,
) -> None:
    """Save model (safetensors; ``state_dict`` as its weights when given) and tokenizer to ``path``
    atomically; with ``chat_template``, also whether the model was trained on chat-formatted
    prompts, and with ``model_id`` the name the saving backend gave it (:data:`SETTINGS_FILE`);
    ``extra_files`` (name: content) are written with them, so they land together or not at all.

    Written to a sibling temporary directory first and swapped in, so a kill never
    leaves a half-written checkpoint at ``path``.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = new_directory(target.parent, prefix=f".{target.name}.")
    try:
        with quiet_progress_bars():
            _save_model(model, tmp, state_dict)
            tokenizer.save_pretrained(tmp)
        settings = {key: value for key, value in {"chat_template": chat_template, "model_id": model_id}.items() if value is not None}
        if settings:
            (tmp / SETTINGS_FILE).write_text(json.dumps(settings) + "\n")
        for name, content in (extra_files or {}).items():
            (tmp / name).write_bytes(content)
        plain_file_modes(tmp)
        old = target.with_name(f".{target.name}.old")
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def saved_chat_template(path: str) -> bool | None:
    """Whether the checkpoint at ``path`` was saved with chat-formatted prompts; None when it does
    not say (a hub model, or a checkpoint saved before the file existed).

    Raises:
        DataError: the file is there but damaged.
    """
    return _saved_setting(path, "chat_template", bool, "true or false")


def saved_model_id(path: str) -> str | None:
    """The name the backend that saved the checkpoint at ``path`` gave its model (hf-tiny's names
    its fitted tokenizer's corpus, which the weights cannot say); None when the checkpoint does
    not record one (saved before the field existed, or by :func:`save_checkpoint` without it)."""
    return _saved_setting(path, "model_id", str, "a string", required=False)


def _saved_setting(path: str, key: str, kind: type, expected: str, *, required: bool = True) -> Any:
    """``key`` of the checkpoint's :data:`SETTINGS_FILE`; None when the file is absent (or, not
    ``required``, the key). Raises DataError when the file is damaged or the value not a ``kind``."""
    file = Path(path) / SETTINGS_FILE
    if not file.is_file():
        return None
    try:
        settings = json.loads(file.read_text())
        value = settings[key] if required else settings.get(key)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"{file}: cannot read the checkpoint's settings: {type(exc).__name__}: {exc}") from exc
    if (value is not None and not isinstance(value, kind)) or (value is None and required):
        raise DataError(f"{file}: {key} is {value!r}, expected {expected}")
    return value


def resolve_chat_template(path: str, asked: bool | None) -> bool:
    """``asked``, or when None what the checkpoint at ``path`` was trained with (else off). A
    model trained on chat-formatted prompts and reloaded without the template (the old default)
    read its prompts unlike training; an explicit choice against the checkpoint is a warning."""
    saved = saved_chat_template(path)
    if asked is None:
        return bool(saved)
    if saved is not None and saved != asked:
        warnings.warn(
            f"hf: {path} was trained with chat_template={str(saved).lower()}, loaded with "
            f"chat_template={str(asked).lower()}: its prompts are formatted unlike training",
            stacklevel=3,
        )
    return asked


def _tied_embeddings_adapted(model: PreTrainedModel, lora: LoraSettings) -> list[str]:
    """The word-embedding modules (input, output) that ``lora`` adapts on a model whose two share
    one weight (hf-tiny, SmolLM2); [] when they are not tied. Merged on save, an adapter there adds
    its update to the shared weight, so the other module changes too and the saved model is not
    the trained one. Matched as peft matches a list: the name or its last dotted parts."""
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    if inp is None or out is None:
        return []
    if inp.weight is not out.weight and not getattr(model.config, "tie_word_embeddings", False):
        return []
    names = {id(module): name for name, module in model.named_modules()}
    found = [names.get(id(module), "") for module in (inp, out)]
    return [n for n in found if n and any(n == t or n.endswith(f".{t}") for t in lora.target_modules)]


def _wrap_lora(model: PreTrainedModel, lora: LoraSettings) -> Any:
    from peft import LoraConfig, get_peft_model

    tied = _tied_embeddings_adapted(model, lora)
    if tied:
        raise ConfigError(
            f"hf: lora.target_modules={list(lora.target_modules)} adapt {tied}, but this model ties its input and "
            "output word embeddings (one shared weight): the merged save would change both; leave them out"
        )
    config = LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules), task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        raise ConfigError(f"hf: lora.target_modules={list(lora.target_modules)} do not match the model: {exc}") from exc


def merged_lora_weights(base: PreTrainedModel) -> dict[str, torch.Tensor]:
    """The state dict peft's ``merge_and_unload()`` would leave ``base`` (a peft-wrapped model's
    base) with, computed beside the live model rather than in it: each adapted weight is a new
    tensor (W + its adapters' deltas, the arithmetic of peft's merge), every other entry the live
    tensor itself. A deep copy merged held the whole model twice at each save; merging in place
    and unmerging after changes the live weights by rounding (W + d - d is not W), and a
    generation running meanwhile (hf serve) would apply the adapters twice."""
    from peft.tuners.lora import Embedding, LoraLayer

    weights = {key.replace(".base_layer.", "."): value for key, value in base.state_dict().items() if ".lora_" not in key}
    for name, module in base.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        weight = module.get_base_layer().weight.detach()
        merged = weight.clone()
        for adapter in module.active_adapters:
            if adapter in module.lora_A or adapter in module.lora_embedding_A:
                delta = module.get_delta_weight(adapter)
                merged += delta.to(weight.dtype) if isinstance(module, Embedding) else delta  # as peft merges each
        weights[f"{name}.weight"] = merged
    return weights


class HFBackend:
    """A local causal LM: ``generate``, ``sft``, ``save``; satisfies TrainableLanguageModel.

    ``model`` is the transformers model (a peft ``PeftModel`` wrapping it when LoRA is
    configured); ``tokenizer`` has a pad token and pads on the left.
    """

    def __init__(self, config: Any, *, model: PreTrainedModel, tokenizer: Any, model_id: str, chat_template: bool = False) -> None:
        check_device(config.device)
        self.config = config
        self.model_id = model_id
        self.chat_template = chat_template
        # generation keeps a long prompt's end; each prompt cut so is counted, the first is a warning
        self.prompts_cut = 0
        self._attach(model, tokenizer)

    # --- construction -----------------------------------------------------------

    @classmethod
    def from_config(cls, config: HFConfig) -> HFBackend:
        """The ``hf`` component's factory."""
        check_device(config.device)  # before a load of minutes
        model, tokenizer = load_pretrained(config.path, config.dtype, allow_download=config.allow_download)
        chat_template = resolve_chat_template(config.path, config.chat_template)
        return cls(config, model=model, tokenizer=tokenizer, model_id=config.path, chat_template=chat_template)

    @classmethod
    def load(cls, path: str, **settings: Any) -> HFBackend:
        """Reload a directory written by :meth:`save` (``settings``: other HFConfig fields)."""
        return cls.from_config(HFConfig(path=str(path), **settings))

    def reload(self, *, path: str) -> None:
        """Replace model and tokenizer in place with a directory written by :meth:`save`
        (the run loop's ``--resume``, eval-model's ``--model-dir``); this backend's settings
        (device, LoRA) still apply. The model takes the name its saver gave it (else
        :meth:`_reloaded_id`'s), and the checkpoint's chat template unless the config sets one."""
        model, tokenizer = load_pretrained(str(path), getattr(self.config, "dtype", "float32"))
        chat_template = resolve_chat_template(str(path), getattr(self.config, "chat_template", None))
        before = self.chat_template
        self.chat_template = chat_template
        try:
            self._attach(model, tokenizer)
        except BaseException:
            self.chat_template = before  # the old model stays, with its settings
            raise
        self.model_id = saved_model_id(str(path)) or self._reloaded_id(str(path))

    def _reloaded_id(self, path: str) -> str:
        """The name of a reloaded checkpoint that records none: this backend's own (a fine-tune
        of the model it was built from)."""
        return self.model_id

    def _attach(self, model: PreTrainedModel, tokenizer: Any) -> None:
        if self.config.cpu_threads is not None:
            torch.set_num_threads(self.config.cpu_threads)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if tokenizer.pad_token is None:
            raise DataError(f"hf: tokenizer of {self.model_id!r} has neither a pad nor an EOS token")
        tokenizer.padding_side = "left"
        if self.chat_template and not tokenizer.chat_template:
            raise ConfigError(f"hf: chat_template=true but the tokenizer of {self.model_id!r} has no chat template")
        # past its positions a model fails inside (GPT-2: IndexError) or extrapolates unseen ones
        positions = context_length(model)
        if positions is not None and self.config.max_length > positions[1]:
            field, n = positions
            source = getattr(model, "name_or_path", "") or self.model_id
            raise ConfigError(
                f"hf: max_length={self.config.max_length} exceeds the {n} positions of the model"
                f"{f' {source!r}' if source else ''} (config.{field}); set max_length to {n} or less"
            )
        model = model.to(self.config.device)
        if self.config.lora is not None:
            model = _wrap_lora(model, self.config.lora)
        model.eval()
        self.model, self.tokenizer = model, tokenizer
        self._header: str | None = None  # the chat template's rendered head, per tokenizer

    def prepare(self, *, corpus: Sequence[str]) -> None:
        """Pretrained models need no preparation (the tiny preset trains its tokenizer here)."""

    # --- tokenisation -----------------------------------------------------------

    def _format_prompt(self, prompt: str) -> str:
        if not self.chat_template:
            return prompt
        messages = [{"role": "user", "content": prompt}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _prefix(self, text: str = "") -> list[int]:
        """Special tokens the tokenizer puts before ``text`` (BOS for Llama); none under a chat
        template, nor before text that starts with the BOS already (a rendered chat template)."""
        bos = self.tokenizer.bos_token
        if self.chat_template or (bos and text.startswith(bos)):
            return []
        return leading_special_tokens(self.tokenizer)  # per call: two encodings of one character

    def _kept_start(self, prompt: str, ids: list[int]) -> int:
        """How many leading tokens of ``ids`` (``prompt`` as generation sees it) a cut keeps: the
        tokenizer's start tokens (BOS), and under a chat template the rendered turns before the
        user's text (a system turn, the user turn's opening). Cut with the rest, the model saw the
        middle of a user's text with no turn opened."""
        if not self.chat_template:
            return len(self._prefix(prompt))
        header = self._chat_header()
        if not header:
            return 0
        kept = 0  # the header's tokens as the whole prompt's encoding has them
        for a, b in zip(ids, self._encode(header)):
            if a != b:
                break
            kept += 1
        return kept if self._format_prompt(prompt).startswith(header) else 0

    def _chat_header(self) -> str:
        """The chat template's text before the user's content (same for every prompt), rendered
        once per tokenizer with a marker as the content; "" when the marker is not found."""
        if self._header is None:
            marker = "\x00dreamgym-prompt\x00"
            rendered = self._format_prompt(marker)
            self._header = rendered[: rendered.index(marker)] if marker in rendered else ""
        return self._header

    def encode_prompt(self, prompt: str, limit: int) -> list[int]:
        """Token ids of one prompt as generation sees it, keeping its last ``limit`` tokens."""
        ids = self.prompt_ids(prompt)
        return keep_end(ids, limit, keep_start=self._kept_start(prompt, ids))

    def prompt_fits(self, prompt: str, *, max_new_tokens: int) -> bool:
        """Whether generation with ``max_new_tokens`` would see the whole prompt (it cuts the start
        of a longer one), so that a caller can shorten it where it chooses instead."""
        return len(self.prompt_ids(prompt)) <= self.config.max_length - max_new_tokens

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text as an answer (no special tokens): what it needs of max_new_tokens."""
        return [len(self._encode(text)) for text in texts]

    def prompt_ids(self, prompt: str) -> list[int]:
        """Token ids of ``prompt`` as generation sees it, uncut (the server's ``/tokenize`` reports these)."""
        return self._prefix(prompt) + self._encode(self._format_prompt(prompt))

    def _count_cuts(self, lengths: list[int], limit: int, max_new_tokens: int) -> None:
        cut = [n for n in lengths if n > limit]
        if cut and not self.prompts_cut:
            log.warning(
                "hf %s: a prompt of %d tokens was cut to its last %d tokens (max_length %d - max_new_tokens %d):"
                " its start is lost; further cuts are only counted (prompts_cut)",
                self.model_id or type(self).__name__, max(cut), limit, self.config.max_length, max_new_tokens,
            )
        self.prompts_cut += len(cut)

    def encode_example(self, example: Example) -> tuple[list[int], list[int]]:
        """(input ids, labels) of one SFT example, tokenised segment by segment.

        The leading untrained segments form the prompt and get the same formatting as
        :meth:`generate` (chat template when enabled), so training matches inference.
        """
        example = list(example)
        split = next((i for i, (_, train) in enumerate(example) if train), len(example))
        prompt = "".join(text for text, _ in example[:split])
        head = self._prefix(prompt) + (self._encode(self._format_prompt(prompt)) if split else [])
        pieces = [(head, False)]
        pieces += [(self._encode(text), train) for text, train in example[split:] if text]
        if self.config.sft_append_eos and example and example[-1][1] and self.tokenizer.eos_token_id is not None:
            pieces.append(([self.tokenizer.eos_token_id], True))
        return segment_labels(pieces, self.config.max_length, keep_start=self._kept_start(prompt, head) if split else len(head))

    # --- generation -------------------------------------------------------------

    def generate(
        self,
        *,
        prompts: Sequence[str],
        max_new_tokens: int,
        temperature: float = 1.0,
        stop: Sequence[str] = (),
        seed: int | None = None,
    ) -> list[str]:
        """New text for each prompt, cut before the first stop string; temperature 0 is greedy.

        With a ``seed`` the sample is drawn from forked torch RNGs, the CPU's and the model's CUDA
        device's (the same seed gives the same text; the global RNGs are untouched); without one it comes from the global RNG, which it
        advances, so that unseeded calls differ.
        """
        generations = self._generations(prompts=prompts, max_new_tokens=max_new_tokens, temperature=temperature, stop=stop, seed=seed)
        return [g.text for g in generations]

    def generate_with_ids(
        self,
        *,
        prompts: Sequence[str],
        max_new_tokens: int,
        temperature: float = 1.0,
        stop: Sequence[str] = (),
        seed: int | None = None,
    ) -> list[tuple[str, list[int]]]:
        """:meth:`generate`'s texts (the same draws), each with the token ids that were sampled for
        it: up to and including the EOS or the token that completed a stop string, which the text
        leaves out. RL scores these ids: the text re-tokenised can be other ids (a byte-level
        tokenizer merges sampled pieces anew) and has no stop token."""
        generations = self._generations(prompts=prompts, max_new_tokens=max_new_tokens, temperature=temperature, stop=stop, seed=seed)
        return [(g.text, list(g.token_ids)) for g in generations]

    def _generations(
        self,
        *,
        prompts: Sequence[str],
        max_new_tokens: int,
        temperature: float = 1.0,
        stop: Sequence[str] = (),
        seed: int | None = None,
    ) -> list[Generation]:
        """:meth:`generate`'s answers with their token counts and finish reasons (the server's
        ``usage`` and ``finish_reason``), read from the generated ids; the texts are generate's."""
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int):  # True was 1 token
            raise ConfigError(f"hf: max_new_tokens={max_new_tokens!r} must be an integer")
        if max_new_tokens < 1 or max_new_tokens >= self.config.max_length:
            raise ConfigError(
                f"hf: max_new_tokens={max_new_tokens} must be in [1, max_length={self.config.max_length})"
            )
        # NaN passed `< 0` and `> 0` alike and decoded greedily; infinity sampled uniformly
        if isinstance(temperature, bool) or not math.isfinite(temperature) or temperature < 0:
            raise ConfigError(f"hf: temperature={temperature!r} must be a finite number >= 0")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not MIN_TORCH_SEED <= seed <= MAX_TORCH_SEED):
            raise ConfigError(f"hf: seed={seed!r} must be an integer in [{MIN_TORCH_SEED}, {MAX_TORCH_SEED}]")
        prompts = list(prompts)
        size = self.config.generation_batch_size
        with torch.random.fork_rng(devices=forked_devices(self.config.device), enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            out: list[Generation] = []
            for start in range(0, len(prompts), size):
                out += self._generate_batch(prompts[start : start + size], max_new_tokens, temperature, stop)
        return out

    def _generation_config(self, max_new_tokens: int, temperature: float) -> GenerationConfig:
        sample = {"do_sample": True, "temperature": temperature, "top_p": self.config.top_p, "top_k": 0}
        return GenerationConfig(
            max_new_tokens=max_new_tokens,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
            **(sample if temperature > 0 else {"do_sample": False}),
        )

    @torch.no_grad()
    def _generate_batch(self, prompts: list[str], max_new_tokens: int, temperature: float, stop: Sequence[str]) -> list[Generation]:
        limit = self.config.max_length - max_new_tokens
        full = [self.prompt_ids(p) for p in prompts]
        self._count_cuts([len(ids) for ids in full], limit, max_new_tokens)
        encoded = [keep_end(ids, limit, keep_start=self._kept_start(p, ids)) for ids, p in zip(full, prompts, strict=True)]
        if not all(encoded):  # the model has no position to start from (transformers fails obscurely)
            raise DataError("hf: a prompt is empty and this tokenizer adds no start token: nothing to generate from")
        ids, mask = left_pad(encoded, self.tokenizer.pad_token_id)
        stops = _StopStrings(self.tokenizer, stop, ids.shape[1]) if stop else None
        criteria = StoppingCriteriaList([stops]) if stops is not None else None
        device = self.config.device
        # transformers fills every setting our config leaves unset from the model's own
        # generation_config (a hub checkpoint's repetition_penalty, no_repeat_ngram_size, ...),
        # so sampling would not be the distribution asked for (nor the one RL log-probs score).
        # A blank one stands in during the call; the checkpoint's is kept and saved as it was.
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        own, base.generation_config = base.generation_config, GenerationConfig()
        try:
            output = self.model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                generation_config=self._generation_config(max_new_tokens, temperature),
                stopping_criteria=criteria,
            )
        finally:
            base.generation_config = own
        new = output[:, ids.shape[1] :]
        stop_ids = stops.stop_ids if stops is not None else set()
        texts = self.tokenizer.batch_decode(
            [cut_at_special_stop(row, stop_ids) for row in new.tolist()] if stop_ids else new, skip_special_tokens=True
        )
        ended = stops.ended if stops is not None else {}
        return [
            self._generation(cut_at_stop(t, stop), len(prompt), row.tolist(), ended.get(i), max_new_tokens)
            for i, (t, prompt, row) in enumerate(zip(texts, encoded, new, strict=True))
        ]

    def _generation(self, text: str, prompt_tokens: int, new: list[int], stopped_at: int | None, max_new_tokens: int) -> Generation:
        """One row's record. A finished row is padded to the batch's width, so its count is where
        it ended: just after its first EOS, or after the token that completed a stop string."""
        eos = self.tokenizer.eos_token_id
        ends = [n for n in (new.index(eos) + 1 if eos in new else None, stopped_at) if n is not None]
        if ends:
            end = min(ends)
            return Generation(
                text=text, prompt_tokens=prompt_tokens, completion_tokens=end, finish_reason="stop", token_ids=tuple(new[:end]),
            )
        reason = "length" if len(new) >= max_new_tokens else "stop"
        return Generation(text=text, prompt_tokens=prompt_tokens, completion_tokens=len(new), finish_reason=reason, token_ids=tuple(new))

    # --- training ---------------------------------------------------------------

    def _loss_sum(self, rows: Sequence[tuple[list[int], list[int]]]) -> tuple[torch.Tensor, int]:
        """Summed next-token cross-entropy over the labelled tokens of a right-padded batch,
        and how many tokens were labelled.

        Logits are computed only at positions whose next token is labelled (``logits_to_keep``
        with explicit indices): the trained answer is a few tokens per row, and the full
        (batch, length, vocab) tensor is large for a big vocabulary (SmolLM2: 49k tokens).
        """
        ids, mask, labels = right_pad(rows, self.tokenizer.pad_token_id)
        device = self.config.device
        targets = labels[:, 1:]
        keep = (targets != IGNORE).any(dim=0).nonzero().squeeze(1)
        logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device), logits_to_keep=keep.to(device)).logits
        kept = targets[:, keep].flatten().to(device)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), kept, ignore_index=IGNORE, reduction="sum")
        return loss, int((kept != IGNORE).sum())

    def _batch_loss(self, rows: Sequence[tuple[list[int], list[int]]]) -> torch.Tensor:
        """Mean next-token loss over the labelled tokens of ``rows`` (transformers' ``labels=`` loss)."""
        total, count = self._loss_sum(rows)
        return total / count

    def _accumulate(self, rows: Sequence[tuple[list[int], list[int]]]) -> float:
        """Backward of the batch's mean token loss, over micro-batches of ``sft_micro_batch`` rows:
        activation memory grows with rows x length x layers (SmolLM2: about 20 GB for 16 rows
        of 745 tokens), and the accumulated gradient equals the whole batch's."""
        size = self.config.sft_micro_batch or len(rows)
        chunks = [rows[i : i + size] for i in range(0, len(rows), size)]
        tokens = sum(sum(1 for x in lab[1:] if x != IGNORE) for _, lab in rows)
        mean = 0.0
        for chunk in chunks:
            total, _ = self._loss_sum(chunk)
            (total / tokens).backward()
            mean += total.item() / tokens
        return mean

    def _trainable_rows(self, examples: Sequence[Example]) -> list[tuple[list[int], list[int]]]:
        rows = [self.encode_example(e) for e in examples]
        # a label is predicted from the token before it, so the first position never counts
        rows = [r for r in rows if any(label != IGNORE for label in r[1][1:])]
        if not rows:
            raise DataError(f"hf: none of the {len(examples)} SFT examples has a trained (train_on_it=True) token")
        return rows

    @torch.no_grad()
    def evaluate_loss(self, *, examples: Sequence[Example], batch_size: int = 8) -> float:
        """Mean masked next-token loss over the trained tokens of ``examples`` (no update);
        ``batch_size`` only bounds memory."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"hf: evaluate_loss needs batch_size >= 1 (got {batch_size!r})")
        rows = self._trainable_rows(examples)
        self.model.eval()
        sums = [self._loss_sum(rows[i : i + batch_size]) for i in range(0, len(rows), batch_size)]
        return sum(total.item() for total, _ in sums) / sum(count for _, count in sums)

    def sft(
        self,
        *,
        examples: Sequence[Example],
        epochs: int,
        lr: float,
        batch_size: int,
        on_epoch: Callable[[int, float], None] | None = None,
        on_batch: OnBatch | None = None,
    ) -> dict[str, float]:
        """Supervised fine-tuning; loss only on segments marked train_on_it. ``on_epoch(epoch,
        mean_loss)`` runs after each epoch with the model in eval mode (validation, snapshots);
        ``on_batch(epoch, step, steps_per_epoch, loss)`` after each optimiser step (progress)."""
        if epochs < 1 or batch_size < 1 or lr <= 0:
            raise ConfigError(f"hf: sft needs epochs >= 1, batch_size >= 1, lr > 0 (got {epochs}, {batch_size}, {lr})")
        params = [p for p in self.model.parameters() if p.requires_grad]
        if any(p.dtype == torch.float16 for p in params):
            raise ConfigError(
                "hf: sft cannot update float16 weights (AdamW without a float32 copy turns them to NaN); "
                "load with dtype bfloat16 or float32, or train LoRA adapters (kept in float32)"
            )
        rows = self._trainable_rows(examples)
        optimiser = torch.optim.AdamW(params, lr=lr)
        order = random.Random(self.config.seed)
        epoch_means: list[float] = []
        self.model.train()
        try:
            for epoch in range(1, epochs + 1):
                index = list(range(len(rows)))
                order.shuffle(index)
                losses = []
                steps = -(-len(index) // batch_size)
                for start in range(0, len(index), batch_size):
                    optimiser.zero_grad(set_to_none=True)
                    losses.append(self._accumulate([rows[i] for i in index[start : start + batch_size]]))
                    torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip)
                    optimiser.step()
                    if on_batch is not None:
                        on_batch(epoch, len(losses), steps, losses[-1])
                epoch_means.append(sum(losses) / len(losses))
                if on_epoch is not None:
                    self.model.eval()
                    on_epoch(epoch, epoch_means[-1])
                    self.model.train()
        finally:
            # the last step's gradients are a model-sized buffer (the trained part's): kept, they
            # stayed allocated through the rest of the run (RL, evaluation) with no use
            optimiser.zero_grad(set_to_none=True)
            self.model.eval()
        return {
            "losses/sft_loss": epoch_means[-1],
            "losses/sft_loss_first": epoch_means[0],
            "sft/examples": float(len(rows)),
            "sft/trained_tokens": float(sum(sum(1 for x in lab[1:] if x != IGNORE) for _, lab in rows)),
        }

    # --- persistence ------------------------------------------------------------

    def save(self, *, path: str) -> None:
        """Write safetensors weights, config and tokenizer; the ``hf`` component reloads it.
        LoRA adapters are saved merged into the weights they adapt (a plain model)."""
        if self.config.lora is None:
            model, weights = self.model, None
        else:
            model, weights = self.model.get_base_model(), merged_lora_weights(self.model.get_base_model())
        save_checkpoint(model, self.tokenizer, path, chat_template=self.chat_template, model_id=self.model_id, state_dict=weights)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model_id={self.model_id!r}, device={self.config.device!r})"
