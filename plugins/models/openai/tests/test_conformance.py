"""The component builds from {} through the plugin manager and passes the conformance kit's
language-model check against a served model on loopback."""

from __future__ import annotations

import pytest

from dreamgym_core.config import convert_config
from dreamgym_core.errors import DreamGymError
from dreamgym_core.plugins import Plugins
from dreamgym_core.protocols import LanguageModel
from dreamgym_core.testing import check_language_model


def test_openai_conformance(server):
    plugins = Plugins.for_names(["openai"])
    spec = plugins.component("model", "openai")
    assert spec.plugin == "openai"
    convert_config({}, spec.config_type, "test", "$")  # buildable from defaults
    model = spec.factory(convert_config({"base_url": server.url}, spec.config_type, "test", "$"))
    assert isinstance(model, LanguageModel)
    check_language_model(model)  # generation only: the backend has no sft


@pytest.mark.parametrize("url", ["127.0.0.1:8000/v1", "localhost:8000/v1", "ftp://host/v1", "http:///v1", "http://127.0.0.1:99999/v1", ""])
def test_a_base_url_that_cannot_work_is_a_config_error(url):
    spec = Plugins.for_names(["openai"]).component("model", "openai")
    with pytest.raises(DreamGymError, match="base_url"):
        convert_config({"base_url": url}, spec.config_type, "test.yaml", "$.experience_model.config")
