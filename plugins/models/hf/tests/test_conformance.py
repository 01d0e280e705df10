"""Each registered component builds through the plugin manager and passes the conformance
kit's language-model check (generation, stop strings, seeds, SFT, save and reload)."""

from __future__ import annotations

import pytest

from dreamgym_core.config import convert_config
from dreamgym_core.plugins import Plugins
from dreamgym_core.protocols import LanguageModel, TrainableLanguageModel
from dreamgym_core.testing import check_language_model as kit_check


@pytest.fixture(scope="module")
def plugins():
    return Plugins.for_names(["hf"])


def check_language_model(model) -> None:
    assert isinstance(model, LanguageModel) and isinstance(model, TrainableLanguageModel)
    kit_check(model)


def test_registered_components(plugins):
    assert set(plugins.components("model")) == {"hf", "hf-tiny", "smollm2"}
    for spec in plugins.components("model").values():
        assert spec.plugin == "hf"
        convert_config({}, spec.config_type, "test", "$")  # buildable from {}


def test_hf_tiny_conformance(plugins, small_config):
    spec = plugins.component("model", "hf-tiny")
    check_language_model(spec.factory(small_config()))


def test_hf_conformance_on_a_saved_checkpoint(plugins, trained, tmp_path):
    trained.save(path=str(tmp_path / "m"))
    spec = plugins.component("model", "hf")
    check_language_model(spec.factory(convert_config({"path": str(tmp_path / "m"), "max_length": 1024}, spec.config_type, "test", "$")))
