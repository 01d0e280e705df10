"""smollm2's safetensors cache: what a cache_dir holds is never lost, and the record of the GGUF a
cache was built from lands with its weights.

The GGUF's dequantisation (``load_gguf``) is replaced by a tiny model built here: the path under
test is what ``from_config`` does with the cache directory, and a real GGUF load takes minutes.
"""

from __future__ import annotations

import pytest

import dreamgym_plugin_hf.backend as backend_module
import dreamgym_plugin_hf.smollm2 as smol
from dreamgym_core.errors import ConfigError
from dreamgym_plugin_hf.config import SmolLM2Config, TinyConfig
from dreamgym_plugin_hf.tiny import build_tiny_model, train_tokenizer


@pytest.fixture
def tiny_gguf(monkeypatch):
    tokenizer = train_tokenizer([], vocab_size=300)
    model = build_tiny_model(TinyConfig(hidden_size=32, layers=1, heads=2, intermediate_size=64, vocab_size=300, seed=123), tokenizer)
    monkeypatch.setattr(smol, "load_gguf", lambda path: (model, tokenizer))
    return model


def test_a_cache_dir_holding_other_files_is_refused_and_left_as_it_was(tmp_path, tiny_gguf):
    """The cache replaced the whole directory: `cache_dir: ~/models` deleted what was kept there."""
    kept = tmp_path / "models"
    (kept / "other_model").mkdir(parents=True)
    (kept / "notes.txt").write_text("mine\n")
    with pytest.raises(ConfigError, match=r"cache_dir .*models holds files but no model.safetensors \(notes.txt, other_model\)"):
        smol.SmolLM2Backend.from_config(SmolLM2Config(cache_dir=str(kept), chat_template=False))
    assert sorted(p.name for p in kept.iterdir()) == ["notes.txt", "other_model"]


def test_an_empty_or_new_cache_dir_is_filled(tmp_path, tiny_gguf):
    for cache in (tmp_path / "new", tmp_path / "empty"):
        if cache.name == "empty":
            cache.mkdir()
        smol.SmolLM2Backend.from_config(SmolLM2Config(cache_dir=str(cache), chat_template=False))
        assert (cache / "model.safetensors").is_file() and (cache / smol.SOURCE_FILE).is_file()


def test_a_stop_while_the_cache_is_written_leaves_no_cache_without_its_source(tmp_path, tiny_gguf, monkeypatch):
    """Written after the weights, the record was missing after a stop in between, and a later run
    with gguf_file unset loaded the custom GGUF's model as the packaged SmolLM2."""
    custom = tmp_path / "finetuned.gguf"
    custom.write_bytes(b"GGUF")
    cache = tmp_path / "cache"
    replace = backend_module.os.replace

    def stopped_after_the_swap(src, dst):
        replace(src, dst)
        if str(dst) == str(cache):
            raise KeyboardInterrupt  # a stop right after the cache is in place

    monkeypatch.setattr(backend_module.os, "replace", stopped_after_the_swap)
    with pytest.raises(KeyboardInterrupt):
        smol.SmolLM2Backend.from_config(SmolLM2Config(cache_dir=str(cache), gguf_file=str(custom), chat_template=False))
    monkeypatch.setattr(backend_module.os, "replace", replace)
    with pytest.raises(ConfigError, match=r"holds the model built from .*finetuned.gguf, not from gguf_file \(the packaged GGUF\)"):
        smol.SmolLM2Backend.from_config(SmolLM2Config(cache_dir=str(cache), chat_template=False))
