import hashlib
import re

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


@pytest.mark.parametrize("broken", ["only_weights", "truncated_weights"])
def test_minilm_unloadable_model_dir_is_one_line_naming_it(tmp_path, broken):
    from dreamgym_plugin_encoders.minilm import packaged_model_dir

    packaged = packaged_model_dir()
    if broken == "truncated_weights":  # every file of the model, the weights cut short
        for item in packaged.iterdir():
            if item.name != "model.safetensors":
                (tmp_path / item.name).symlink_to(item)
    with open(packaged / "model.safetensors", "rb") as fh:
        (tmp_path / "model.safetensors").write_bytes(fh.read(4096))
    with pytest.raises(ConfigError, match=rf"minilm: cannot load the model in {re.escape(str(tmp_path))} \(config field model_path\): ") as err:
        MiniLMEncoder(MiniLMConfig(model_path=str(tmp_path)))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("device", ["cpux", "cuda:99"])
def test_minilm_unusable_device_is_a_config_error_naming_device(device):
    # moving the model to the device was inside the loading's try: reported as a model_path problem
    with pytest.raises(ConfigError, match=rf"^minilm: cannot use device '{device}' \(config field device\): ") as err:
        MiniLMEncoder(MiniLMConfig(device=device))
    assert "model_path" not in str(err.value) and "\n" not in str(err.value)


def test_plugin_registers_both_encoders():
    plugins = Plugins.for_names(["encoders"])
    assert set(plugins.components("encoder")) >= {"minilm", "hashing"}
    enc = plugins.build("encoder", "hashing", HashingConfig(dim=32))
    assert enc.encode(texts=["hi"]).shape == (1, 32)


def test_hashing_ascii_text_gives_the_same_words_and_vectors_as_ever():
    # Stored hashing embeddings of ASCII text must not change: the words are checked against
    # the original pattern on random ASCII text, the vectors against a digest recorded with
    # the encoder before it learned other scripts.
    rng = np.random.default_rng(0)
    for _ in range(500):
        text = "".join(chr(c) for c in rng.integers(0, 128, int(rng.integers(0, 80))))
        words = re.findall(r"[a-z0-9]+", text.lower())
        assert features(text) == words + [f"{a} {b}" for a, b in zip(words, words[1:])]
    texts = [
        "action: take the KEY!\nstate: You are in the kitchen_2. A fridge (closed) is here; score=0.5",
        "".join(chr(c) for c in range(128)),
        "  open   door\t\tx1 y22 __init__ a-b c.d e/f",
        "",
        "Go NORTH-east, then 3 steps 42x9",
    ]
    digest = hashlib.sha256()
    for cfg in (HashingConfig(), HashingConfig(dim=64, bigrams=False), HashingConfig(dim=1000)):
        digest.update(HashingEncoder(cfg).encode(texts=texts).astype("<f4").tobytes())
    assert digest.hexdigest() == "662aa358a503ff1f66ebeacf665d02eae3c4a13aeed7e0da178a9c719494f251"


def test_hashing_keeps_letters_of_every_script():
    assert features("Du bist in der Küche.", bigrams=False) == ["du", "bist", "in", "der", "küche"]
    assert features("Вы на кухне", bigrams=False) == ["вы", "на", "кухне"]
    assert features("किताब", bigrams=False) == ["किताब"]  # vowel signs stay inside the word
    assert features("Cafe\u0301") == features("Caf\u00e9")  # one word however the accent is encoded
    states = ["Вы на кухне. Здесь монета.", "你在厨房里。这里有一枚硬币。", "Είσαι στην κουζίνα.", "Du bist in der Küche."]
    vectors = HashingEncoder().encode(texts=states)
    assert np.abs(vectors).sum(axis=1).min() > 0
    assert np.allclose(vectors @ vectors.T, np.eye(4), atol=0.25)  # four different texts, four directions


def test_hashing_rows_whose_signs_cancel_are_still_unit_rows():
    # Without bigrams, two words can land in one bucket with opposite signs ("close to" at
    # dim 256): such rows used to be all zero. Every other row must stay as it was, checked
    # against a digest recorded before the fallback.
    enc = HashingEncoder(HashingConfig(bigrams=False))
    words = (
        "take open close go to fridge apple mug cabinet drawer countertop look inventory put in on from the a key "
        "door north south east west book desk shelf pen egg sink microwave lamp knife"
    ).split()
    texts = [f"{a} {b}" for i, a in enumerate(words) for b in words[i + 1:]]
    rows = enc.encode(texts=texts)
    assert np.allclose(np.linalg.norm(rows, axis=1), 1.0)
    cancelled = ["close to", "desk lamp"]  # the zero rows before
    kept = enc.encode(texts=[t for t in texts if t not in cancelled])
    assert hashlib.sha256(kept.astype("<f4").tobytes()).hexdigest() == "6e617e5b6621b055c6c53129564230d5ea36fa303295a05908dd3b429c1402e4"
    assert not enc.encode(texts=["", "!?"]).any()  # text without words is still a zero row
