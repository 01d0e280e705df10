import numpy as np
import pytest

from dreamgym_core.errors import ConfigError
from dreamgym_core.plugins import Plugins
from dreamgym_plugin_encoders import HashingConfig, HashingEncoder, MiniLMConfig, MiniLMEncoder
from dreamgym_plugin_encoders.hashing import features


def test_features_are_words_then_bigrams():
    assert features("Take the KEY!") == ["take", "the", "key", "take the", "the key"]
    assert features("Take the key", bigrams=False) == ["take", "the", "key"]


def test_hashing_id_names_its_settings_and_empty_text_is_zero():
    assert HashingEncoder(HashingConfig(dim=64)).id != HashingEncoder(HashingConfig(dim=128)).id
    assert HashingEncoder(HashingConfig(bigrams=False)).id != HashingEncoder().id
    assert not HashingEncoder().encode(texts=[""]).any()


def test_hashing_similarity_follows_shared_words():
    enc = HashingEncoder()
    a, b, c = enc.encode(texts=["take the red apple", "take the apple", "open the wooden door"])
    assert a @ b > a @ c


def test_minilm_is_semantic(minilm):
    a, b, c = minilm.encode(texts=["pick up the apple", "take the apple", "unlock the front door with the key"])
    assert a @ b > a @ c + 0.2
    assert minilm.dim == 384 and minilm.id.startswith("all-MiniLM-L6-v2@")


def test_minilm_batching_does_not_change_vectors(minilm):
    texts = ["a short one", "a much longer text about a kitchen with a fridge and a table", "x"]
    together = minilm.encode(texts=texts)
    alone = np.concatenate([minilm.encode(texts=[t]) for t in texts])
    assert np.allclose(together, alone, atol=1e-5)


def test_minilm_bad_model_path_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="model_path"):
        MiniLMEncoder(MiniLMConfig(model_path=str(tmp_path)))


def test_plugin_registers_both_encoders():
    plugins = Plugins.for_names(["encoders"])
    assert set(plugins.components("encoder")) >= {"minilm", "hashing"}
    enc = plugins.build("encoder", "hashing", HashingConfig(dim=32))
    assert enc.encode(texts=["hi"]).shape == (1, 32)
