"""The openai backend against a real loopback server serving a local model."""

from __future__ import annotations

import socket
import threading
import time

import msgspec
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
    assert backoff_delay(5000, 0.5, 3.0) == 3.0  # before: OverflowError from attempt 1024 (max_retries >= 1025)


def test_cut_at_stop_client_side():
    assert cut_at_stop("take key. done", [".", "done"]) == "take key"
    assert cut_at_stop("no stop", ["."]) == "no stop"


def test_batched_generate_matches_the_served_model(server, model_dir):
    backend = backend_for(server.url, concurrency=3)
    texts = backend.generate(prompts=PROMPTS, max_new_tokens=12, temperature=0, stop=["\n"])
    local = HFBackend.load(model_dir).generate(prompts=PROMPTS, max_new_tokens=12, temperature=0, stop=["\n"])
    assert texts == local
    truncated = backend.stats.pop("truncated")  # the tiny model's answers may run to max_new_tokens
    assert backend.stats == {"calls": 6, "succeeded": 6, "retries": 0, "failed_calls": 0} and truncated <= 6


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


def test_a_prompt_holding_a_lone_surrogate_is_sent_not_a_crash_of_the_batch(server):
    # httpx encodes the body as UTF-8: a lone surrogate (JSON data can hold one) raised
    # UnicodeEncodeError out of generate() and the batch's other answers were lost
    backend = backend_for(server.url)
    texts = backend.generate(prompts=["Room: kitchen.", "Room: \ud800garden."], max_new_tokens=5, temperature=0)
    assert len(texts) == 2 and backend.stats["succeeded"] == 2 and backend.stats["failed_calls"] == 0


def test_a_base_url_with_a_query_keeps_it_a_query(server):
    # "/completions" was appended after the query: ".../v1?api-version=1/completions", a 404 for every call
    backend = backend_for(server.url + "?api-version=2024-02-01")
    assert backend._completion_url() == server.url + "/completions?api-version=2024-02-01"
    (text,) = backend.generate(prompts=["Room: kitchen."], max_new_tokens=5, temperature=0)
    assert backend.stats["succeeded"] == 1


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


def test_api_key_comes_from_the_named_env_var_and_is_never_shown(keyed_server, model_dir, monkeypatch):
    url, key = keyed_server
    monkeypatch.setenv("MY_CLIENT_KEY", key)
    good = OpenAIBackend(OpenAIConfig(base_url=url, api_key_env="MY_CLIENT_KEY"))
    expected = HFBackend.load(model_dir).generate(prompts=["Room:"], max_new_tokens=3, temperature=0)
    assert expected[0] and good.generate(prompts=["Room:"], max_new_tokens=3, temperature=0) == expected  # the served answer
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


def tokenize_url(server) -> str:
    return server.url.removesuffix("/v1") + "/tokenize"


def test_prompt_fits_exists_only_where_a_tokenize_url_lets_it_answer(server):
    assert not hasattr(backend_for(server.url), "prompt_fits")
    assert callable(backend_for(server.url, tokenize_url=tokenize_url(server)).prompt_fits)


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_prompt_fits_agrees_with_the_served_model_at_the_boundary(server, model_dir, endpoint):
    from dreamgym_plugin_hf.serve import chat_prompt

    local = HFBackend.load(model_dir)
    remote = backend_for(server.url, tokenize_url=tokenize_url(server), endpoint=endpoint)
    prompt = " ".join(PROMPTS)
    # the chat endpoint sends the prompt as a user turn, which the server renders before counting
    served = chat_prompt(local.tokenizer, [{"role": "user", "content": prompt}]) if endpoint == "chat" else prompt
    room = local.config.max_length - len(local.prompt_ids(served))  # new tokens that still fit
    answers = [remote.prompt_fits(prompt, max_new_tokens=n) for n in (room - 1, room, room + 1)]
    assert answers == [local.prompt_fits(served, max_new_tokens=n) for n in (room - 1, room, room + 1)]
    assert answers == [True, True, False]
    assert remote.stats["tokenize_calls"] == 3 and remote.stats["tokenize_failed"] == 0


def test_an_experience_request_is_shortened_as_the_local_model_would(server, model_dir):
    from dreamgym_core.experience import build_prompt, fit_request
    from dreamgym_core.records import ExperienceRequest, HistoryStep

    history = [HistoryStep(state=f"Room: kitchen {i}. Items: apple, key. " * 8, action="take key") for i in range(12)]
    request = ExperienceRequest(instruction="take the key", history=history, state="Room: garden.", action="take apple")
    local = HFBackend.load(model_dir)
    remote = backend_for(server.url, tokenize_url=tokenize_url(server))
    # an answer budget that leaves room for about half of the history
    half = build_prompt(msgspec.structs.replace(request, history=history[6:]))
    new_tokens = local.config.max_length - len(local.prompt_ids(half))
    fitted = fit_request(request, lambda p: remote.prompt_fits(p, max_new_tokens=new_tokens))
    assert fitted == fit_request(request, lambda p: local.prompt_fits(p, max_new_tokens=new_tokens))
    assert fitted.history == history[6:]


def test_a_tokenize_failure_is_counted_and_the_prompt_sent_whole_or_raised(server, caplog):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}/tokenize"
    remote = backend_for(server.url, tokenize_url=dead, max_retries=1, backoff=0.01)
    with caplog.at_level("WARNING"):
        assert remote.prompt_fits("Room: kitchen.", max_new_tokens=8) and remote.prompt_fits("x", max_new_tokens=8)
    assert remote.stats["tokenize_failed"] == 2 and remote.stats["tokenize_retries"] == 2
    assert remote.stats["calls"] == 0  # generation's own counters are untouched
    assert len([r for r in caplog.records if "tokenize" in r.getMessage() or dead in r.getMessage()]) == 1
    strict = backend_for(server.url, tokenize_url=dead, max_retries=0, on_failure="raise")
    with pytest.raises(ModelCallError, match="tokenize request failed"):
        strict.prompt_fits("Room: kitchen.", max_new_tokens=8)


def test_a_tokenize_url_that_cannot_work_is_refused_at_build(server):
    with pytest.raises(ValueError, match="tokenize_url"):
        OpenAIConfig(base_url=server.url, tokenize_url="127.0.0.1:8000/tokenize")


@pytest.mark.parametrize("field", ["base_url", "tokenize_url"])
@pytest.mark.parametrize("url", ["http://user:s3cret@127.0.0.1:8000/v1", "https://s3cret@api.example/v1?x=1", "user:s3cret@host:8000/v1"])
def test_a_password_in_a_url_is_refused_without_showing_it(field, url):
    """A URL's user:password would be stored in the run's config.json and named in every failed
    call's error: the secret belongs in the environment variable api_key_env names."""
    from dreamgym_core.config import convert_config

    settings = {"base_url": "http://127.0.0.1:8000/v1", field: url}
    with pytest.raises(ConfigError, match=f"{field} .*user name or password.*api_key_env") as caught:
        convert_config(settings, OpenAIConfig, "pipeline.yaml", "$.experience_model.config")
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize("field", ["base_url", "tokenize_url"])
@pytest.mark.parametrize(("url", "named"), [
    ("https://api.example/v1?key=s3cret", "key"),
    ("https://api.example/v1?api-version=2024-02-01&api_key=s3cret", "api_key"),
    ("https://api.example/v1?access_token=s3cret", "access_token"),
    ("https://api.example/v1?apikey=s3cret", "apikey"),
    ("https://store.example/v1?sv=2022&sig=s3cret", "sig"),
    # these passed, and their value went into config.json and every error naming the URL
    ("https://api.example/v1?authorization=Bearer%20s3cret", "authorization"),
    ("https://api.example/v1?Authorization=s3cret", "Authorization"),
    ("https://api.example/v1?bearer=s3cret", "bearer"),
    ("https://api.example/v1?pwd=s3cret", "pwd"),
    ("https://api.example/v1?jwt=s3cret", "jwt"),
])
def test_a_credential_in_a_urls_query_is_refused_without_showing_it(field, url, named):
    """A key in the query string leaks as a password in the URL does (config.json, every error
    naming the URL); the parameter is named, its value never shown."""
    from dreamgym_core.config import convert_config

    settings = {"base_url": "http://127.0.0.1:8000/v1", field: url}
    with pytest.raises(ConfigError, match=f"{field} 'https://[a-z.]+' carries a credential in its query \\({named}\\)") as caught:
        convert_config(settings, OpenAIConfig, "pipeline.yaml", "$.experience_model.config")
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize("url", ["http://[::1/v1?key=s3cret", "ftp://host/v1?x=s3cret", "http://127.0.0.1:0/v1?x=s3cret#s3cret"])
def test_a_url_refused_for_its_form_is_shown_without_its_query(url):
    # before: the whole value was shown, so a credential httpx could not parse out of the query leaked
    from dreamgym_core.config import convert_config

    with pytest.raises(ConfigError, match="base_url") as caught:
        convert_config({"base_url": url}, OpenAIConfig, "pipeline.yaml", "$.experience_model.config")
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize("url", ["https://api.example/v1?api-version=2024-02-01", "http://127.0.0.1:8000/v1?x=1&monkeys=3"])
def test_a_query_without_a_credential_is_kept(url):
    assert OpenAIConfig(base_url=url).base_url == url


@pytest.mark.parametrize(("url", "warned"), [
    ("http://10.1.2.3:8000/v1", True),
    ("http://models.example:8000/v1", True),
    ("https://models.example/v1", False),
    ("http://127.0.0.1:8000/v1", False),
    ("http://localhost:8000/v1", False),
    ("http://LOCALHOST.:8000/v1", True),
    ("http://model.localhost:8000/v1", True),  # a name DNS answers here, not this machine
    ("http://[::1]:8000/v1", False),
    ("http://0.0.0.0:8000/v1", False),  # connecting to it reaches this machine
])
def test_a_key_sent_unencrypted_over_a_network_is_warned_about(monkeypatch, caplog, url, warned):
    """The key goes in the Authorization header: to a server over plain http:// on another
    machine, anyone on the network path reads it. Said once, at build; the key itself never."""
    monkeypatch.setenv("MY_CLIENT_KEY", "sk-abc123")
    with caplog.at_level("WARNING", logger="dreamgym_plugin_openai.backend"):
        OpenAIBackend(OpenAIConfig(base_url=url, api_key_env="MY_CLIENT_KEY"))
    said = [r.getMessage() for r in caplog.records]
    assert bool(said) == warned and all("unencrypted" in m and "$MY_CLIENT_KEY" in m and "sk-abc123" not in m for m in said)
    monkeypatch.delenv("MY_CLIENT_KEY")
    caplog.clear()
    OpenAIBackend(OpenAIConfig(base_url=url, api_key_env="MY_CLIENT_KEY"))  # no key, nothing to expose
    assert not caplog.records


def test_a_key_pasted_into_api_key_env_is_refused_without_repeating_it():
    # it was accepted as a variable name: printed by config show, stored in config.json, and
    # named in the 401 hint ("$sk-proj-... is unset or empty")
    import msgspec

    with pytest.raises(msgspec.ValidationError) as caught:
        msgspec.convert({"api_key_env": "sk-proj-AbC123secret"}, type=OpenAIConfig)
    assert "api_key_env must name an environment variable" in str(caught.value)
    assert "AbC123secret" not in str(caught.value)
    assert msgspec.convert({"api_key_env": "MY_KEY_2"}, type=OpenAIConfig).api_key_env == "MY_KEY_2"
    assert msgspec.convert({"api_key_env": ""}, type=OpenAIConfig).api_key_env == ""  # no key at all

