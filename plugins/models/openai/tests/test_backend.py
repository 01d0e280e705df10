"""The openai backend against a real loopback server serving a local model."""

from __future__ import annotations

import threading
import time

import pytest

from dreamgym_core.errors import ConfigError
from dreamgym_plugin_hf.backend import HFBackend
from dreamgym_plugin_openai import ModelCallError, OpenAIBackend, OpenAIConfig
from dreamgym_plugin_openai.backend import backoff_delay, cut_at_stop

PROMPTS = [f"Room: {r}. Items: {i}. Action:" for r in ("kitchen", "garden", "pantry") for i in ("apple", "key")]


def backend_for(url: str, **settings) -> OpenAIBackend:
    return OpenAIBackend(OpenAIConfig(base_url=url, api_key_env="DREAMGYM_TEST_KEY_UNSET", **settings))


def test_backoff_doubles_and_is_capped():
    assert [backoff_delay(a, 0.5, 3.0) for a in range(4)] == [0.5, 1.0, 2.0, 3.0]


def test_cut_at_stop_client_side():
    assert cut_at_stop("take key. done", [".", "done"]) == "take key"
    assert cut_at_stop("no stop", ["."]) == "no stop"


def test_batched_generate_matches_the_served_model(server, model_dir):
    backend = backend_for(server.url, concurrency=3)
    texts = backend.generate(prompts=PROMPTS, max_new_tokens=12, temperature=0, stop=["\n"])
    local = HFBackend.load(model_dir).generate(prompts=PROMPTS, max_new_tokens=12, temperature=0, stop=["\n"])
    assert texts == local
    assert backend.stats == {"calls": 6, "succeeded": 6, "retries": 0, "failed_calls": 0}


def test_seeds_reproduce_and_differ_per_prompt(server):
    backend = backend_for(server.url)
    same = ["Room: kitchen."] * 3
    a = backend.generate(prompts=same, max_new_tokens=10, temperature=1.0, seed=5)
    b = backend.generate(prompts=same, max_new_tokens=10, temperature=1.0, seed=5)
    assert a == b
    assert len(set(a)) > 1  # seed + i per request: a GRPO group does not collapse


def test_chat_endpoint(server):
    backend = backend_for(server.url, endpoint="chat")
    (text,) = backend.generate(prompts=["hello"], max_new_tokens=5, temperature=0)
    assert isinstance(text, str) and backend.stats["succeeded"] == 1


def test_timeout_counts_a_failed_call(server):
    backend = backend_for(server.url, timeout=0.001, max_retries=1, backoff=0.01)
    assert backend.generate(prompts=["Room:"], max_new_tokens=200, temperature=0) == [""]
    assert backend.stats["retries"] == 1 and backend.stats["failed_calls"] == 1
    assert "Timeout" in backend.last_errors[0]


@pytest.fixture
def keyed_server(model_dir):
    """An in-process server (same HTTP code, thread instead of subprocess) requiring a key."""
    from dreamgym_plugin_hf.serve import start_server

    srv = start_server(HFBackend.load(model_dir), port=0, api_key="sk-test-4f1c9e")
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1", "sk-test-4f1c9e"
    srv.shutdown()
    srv.server_close()


def test_api_key_comes_from_the_named_env_var_and_is_never_shown(keyed_server, monkeypatch):
    url, key = keyed_server
    monkeypatch.setenv("MY_CLIENT_KEY", key)
    good = OpenAIBackend(OpenAIConfig(base_url=url, api_key_env="MY_CLIENT_KEY"))
    assert good.generate(prompts=["Room:"], max_new_tokens=3)[0] is not None
    assert good.stats["failed_calls"] == 0
    monkeypatch.setenv("MY_CLIENT_KEY", "sk-wrong-77")
    bad = OpenAIBackend(OpenAIConfig(base_url=url, api_key_env="MY_CLIENT_KEY", max_retries=3, on_failure="raise"))
    with pytest.raises(ModelCallError, match="MY_CLIENT_KEY") as info:
        bad.generate(prompts=["Room:"], max_new_tokens=3)
    assert bad.stats["retries"] == 0  # 401 is not retried
    for shown in (repr(good), repr(bad), str(info.value), repr(good.config)):
        assert key not in shown and "sk-wrong-77" not in shown


def test_a_key_read_with_its_newline_still_authenticates(keyed_server, monkeypatch):
    url, key = keyed_server
    monkeypatch.setenv("MY_CLIENT_KEY", key + "\n")  # as a secret file mounted into the environment holds it
    backend = OpenAIBackend(OpenAIConfig(base_url=url, api_key_env="MY_CLIENT_KEY", max_retries=0))
    backend.generate(prompts=["Room:"], max_new_tokens=3)
    assert backend.stats["succeeded"] == 1, backend.last_errors


def test_a_key_no_header_can_carry_is_refused_at_build(monkeypatch):
    monkeypatch.setenv("MY_CLIENT_KEY", "sk-\u00e9t\u00e9-9c1")
    with pytest.raises(ConfigError, match=r"\$MY_CLIENT_KEY holds characters") as info:
        OpenAIBackend(OpenAIConfig(api_key_env="MY_CLIENT_KEY"))
    assert "t\u00e9-9c1" not in str(info.value)


def test_killing_the_server_mid_run_gives_retries_then_counted_failures(start_server):
    srv = start_server()
    backend = backend_for(srv.url, concurrency=2, max_retries=2, backoff=0.05)
    prompts = [f"Room: kitchen {i}." for i in range(16)]
    result: list[list[str]] = []
    worker = threading.Thread(target=lambda: result.append(backend.generate(prompts=prompts, max_new_tokens=48, temperature=1.0, seed=0)))
    worker.start()
    deadline = time.monotonic() + 120
    while backend.stats["succeeded"] < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    srv.kill()
    worker.join(timeout=120)
    (texts,) = result  # generate returned: no crash
    stats = backend.stats
    assert len(texts) == 16 and all(isinstance(t, str) for t in texts)
    assert stats["succeeded"] >= 2 and stats["failed_calls"] >= 1
    assert stats["succeeded"] + stats["failed_calls"] == 16
    assert stats["retries"] == 2 * stats["failed_calls"]  # every failed prompt was retried max_retries times
    assert sum(t == "" for t in texts) >= stats["failed_calls"]
    # with the server gone, a strict backend raises one clear error naming the server
    strict = backend_for(srv.url, max_retries=1, backoff=0.01, on_failure="raise")
    with pytest.raises(ModelCallError, match=f"2 of 2 calls failed.*127.0.0.1:{srv.port}"):
        strict.generate(prompts=["a", "b"], max_new_tokens=4)
    assert strict.stats["retries"] == 2
