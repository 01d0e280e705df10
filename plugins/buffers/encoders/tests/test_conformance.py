from dreamgym_core.testing import check_encoder
from dreamgym_plugin_encoders import HashingEncoder


def test_hashing_conforms():
    check_encoder(HashingEncoder())


def test_minilm_conforms(minilm):
    check_encoder(minilm)
