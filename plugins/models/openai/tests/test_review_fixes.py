"""Review findings: kept connections, URLs that leak or cannot work, bad temperatures, error
bodies with status 200, answers cut at max_tokens, and a stale CA bundle in the environment."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler
from typing import Iterator

import pytest

from dreamgym_core.errors import ConfigError
from dreamgym_plugin_openai import ModelCallError, OpenAIBackend, OpenAIConfig

KEY = "sk-review-secret-8e41"


class Scripted(BaseHTTPRequestHandler):
    """Answers according to the request's ``model`` field; counts connections and their ends."""

    protocol_version = "HTTP/1.1"  # keep-alive: a kept client reuses its connections
    lock = threading.Lock()
    opened = closed = 0

    def log_message(self, format: str, *args: object) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        with Scripted.lock:
            Scripted.opened += 1

    def finish(self) -> None:
        with Scripted.lock:
            Scripted.closed += 1
        super().finish()

    def _send(self, answer: object) -> None:
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        mode, auth = body["model"], self.headers.get("Authorization", "")
        if mode == "error-200":  # some servers and gateways answer an error with status 200
            self._send({"error": {"message": f"model 'x' not found\nfor {auth}", "code": 404}})
        elif mode == "error-string-200":
            self._send({"error": "overloaded"})
        elif mode == "length":
            self._send({"choices": [{"text": "<think>cut", "finish_reason": "length"}]})
        else:
            self._send({"choices": [{"text": "ok", "finish_reason": "stop"}]})


@pytest.fixture(scope="module")
def url(scripted_server) -> Iterator[str]:
    with scripted_server(Scripted) as base:
        yield base


def backend(url: str, mode: str, **settings: object) -> OpenAIBackend:
    return OpenAIBackend(OpenAIConfig(base_url=url, model=mode, api_key_env="DREAMGYM_REVIEW_KEY", **settings))


@pytest.fixture
def settled() -> None:
    """No connection of an earlier test's backend still open (collected: closed)."""
    gc.collect()
    assert wait_for(lambda: Scripted.opened == Scripted.closed)


def wait_for(condition, limit: float = 10.0) -> bool:
    deadline = time.monotonic() + limit
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()


# --- 1: connections kept between calls ----------------------------------------------------


def test_calls_reuse_their_connections(url):
    # before: a new client per call, so every call opened new connections (up to concurrency), and a
    # server with a small listen backlog dropped some, each resent only after a 1 s TCP timeout
    kept = backend(url, "plain", concurrency=4)
    kept.generate(prompts=["p"] * 4, max_new_tokens=4)
    before = Scripted.opened
    for _ in range(5):
        assert kept.generate(prompts=["p"] * 4, max_new_tokens=4) == ["ok"] * 4
    assert Scripted.opened == before  # the five calls' 20 requests all went over kept connections


def test_close_closes_the_kept_connections_and_a_later_call_opens_new_ones(url, settled):
    kept = backend(url, "plain", concurrency=2)
    kept.generate(prompts=["p"] * 2, max_new_tokens=4)
    opened = Scripted.opened
    assert wait_for(lambda: Scripted.opened - Scripted.closed >= 1)
    kept.close()
    assert wait_for(lambda: Scripted.opened == Scripted.closed)  # the server saw them end
    assert kept.generate(prompts=["p"], max_new_tokens=4) == ["ok"]
    assert Scripted.opened > opened
    kept.close()


def test_a_backend_collected_without_close_closes_its_connections(url, settled):
    dropped = backend(url, "plain", concurrency=2)
    dropped.generate(prompts=["p"] * 2, max_new_tokens=4)
    del dropped
    gc.collect()  # the backend refers to itself (its prompt_fits slot): only the cycle collector frees it
    assert wait_for(lambda: Scripted.opened == Scripted.closed)


def test_calls_from_inside_an_event_loop_and_from_threads_share_the_kept_client(url):
    shared = backend(url, "plain", concurrency=3)

    async def inside_a_loop() -> list[str]:
        return shared.generate(prompts=["p"] * 3, max_new_tokens=4)

    assert asyncio.run(inside_a_loop()) == ["ok"] * 3
    results: list[list[str]] = []
    workers = [threading.Thread(target=lambda: results.append(shared.generate(prompts=["p"] * 3, max_new_tokens=4)))
               for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert results == [["ok"] * 3] * 4 and shared.stats["succeeded"] == 15
    shared.close()


# --- 2 and 3: URLs that leak a secret or cannot work --------------------------------------


@pytest.mark.parametrize("field", ["base_url", "tokenize_url"])
@pytest.mark.parametrize(("value", "secrets"), [
    ("http://user:pa/ss@api.example.com/v1", ("pa/ss", "user:")),  # before: refused, the error showing "user:pa"
    ("http://user:12345/678@api.example.com/v1", ("12345", "678", "user:")),  # before: accepted, sent to host "user"
    ("https://api.example.com/v1/x@y?api-version=1", ("/v1",)),
])
def test_any_at_sign_before_the_query_is_refused_showing_only_scheme_and_host(field, value, secrets):
    from dreamgym_core.config import convert_config

    with pytest.raises(ConfigError, match=f"{field} 'https?://\\*\\*\\*@[a-z.]+' holds '@'") as caught:
        convert_config({field: value}, OpenAIConfig, "pipeline.yaml", "$.experience_model.config")
    assert not any(secret in str(caught.value) for secret in secrets)


@pytest.mark.parametrize("value", [
    "https://api.example.com/s3cret-path/v1?key=s3cret",  # a credential in the query
    "ftp://api.example.com/s3cret-path/v1",  # not http(s)
    "http://api.example.com:0/s3cret-path/v1",  # port out of range
    "http://user:s3cret?x@api.example.com/v1",  # the "port" httpx quotes would be the password's start
])
def test_a_refused_url_is_shown_as_scheme_and_host_only(value):
    # before: the path was shown, and the httpx error quoted the text it took for a port
    from dreamgym_core.config import convert_config

    with pytest.raises(ConfigError, match="base_url '[a-z]+://[a-z.]+'") as caught:
        convert_config({"base_url": value}, OpenAIConfig, "pipeline.yaml", "$.experience_model.config")
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize("field", ["base_url", "tokenize_url"])
@pytest.mark.parametrize("value", [
    "http://127.0.0.1 :8000/v1", "http://local host:8000/v1", "http://127.0.0.1:8000/v1 ", " http://127.0.0.1:8000/v1",
    "http://127.0.0.1:8000/v1\n", "http://127.0.0.1:8000/v\t1", "http://127.0.0.1:8000/v1\x00",
])
def test_whitespace_or_a_control_character_in_a_url_is_refused_naming_the_field(field, value):
    # before: "http://127.0.0.1 :8000/v1" passed, and every call failed a DNS lookup of "127.0.0.1 "
    with pytest.raises(ValueError, match=f"^{field} holds a space, line break or other control character") as caught:
        OpenAIConfig(**{field: value})
    assert len(str(caught.value).splitlines()) == 1


# --- 4: a temperature JSON cannot carry ----------------------------------------------------


@pytest.mark.parametrize("temperature", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_temperature_is_refused_before_any_request(url, temperature):
    # before: httpx's ValueError mid-batch, with the batch's calls counted but never finished
    model = backend(url, "plain")
    with pytest.raises(ConfigError, match=f"^openai: temperature={temperature} must be a finite number$"):
        model.generate(prompts=["p", "q"], max_new_tokens=4, temperature=temperature)
    assert model.stats["calls"] == 0


# --- 5: an error body with status 200 ------------------------------------------------------


def test_an_error_answer_with_status_200_keeps_the_servers_message_redacted_on_one_line(url, monkeypatch):
    # before: "malformed answer ... KeyError('choices')", the server's message lost
    monkeypatch.setenv("DREAMGYM_REVIEW_KEY", KEY)
    model = backend(url, "error-200", max_retries=2)
    assert model.generate(prompts=["p"], max_new_tokens=4) == [""]
    (error,) = model.last_errors
    assert error == f"error answer from {model._completion_url()} (HTTP 200): model 'x' not found for Bearer [redacted]"
    assert model.stats["retries"] == 0  # the same server would answer the same again
    plain = backend(url, "error-string-200")
    plain.generate(prompts=["p"], max_new_tokens=4)
    assert plain.last_errors[0].endswith("(HTTP 200): overloaded")


def test_an_error_answer_with_status_200_to_a_tokenize_request_keeps_the_message(url):
    tokenize = url.removesuffix("/v1") + "/tokenize"
    model = backend(url, "error-string-200", tokenize_url=tokenize, max_retries=0, on_failure="raise")
    with pytest.raises(ModelCallError, match=f"^openai: the tokenize request failed: error answer from {tokenize} \\(HTTP 200\\): overloaded$"):
        model.prompt_fits("p", max_new_tokens=4)


# --- 6: answers cut at max_tokens ----------------------------------------------------------


def test_answers_cut_at_max_tokens_are_counted(url):
    # before: finish_reason "length" went uncounted; a too small max_new_tokens looked like a bad model
    cut = backend(url, "length")
    assert cut.generate(prompts=["p", "q"], max_new_tokens=4) == ["<think>cut"] * 2
    assert cut.stats["truncated"] == 2 and cut.stats["succeeded"] == 2
    whole = backend(url, "plain")
    whole.generate(prompts=["p"], max_new_tokens=4)
    assert whole.stats["truncated"] == 0


# --- 7: a stale CA bundle and a plain-http server on this machine -------------------------


@pytest.mark.parametrize("variable", ["SSL_CERT_FILE", "SSL_CERT_DIR"])
def test_a_stale_ca_bundle_does_not_stop_calls_to_a_plain_http_loopback_server(url, monkeypatch, tmp_path, variable):
    # before: the loopback host's proxy-less transport read it, and every call was a ConfigError
    monkeypatch.setenv(variable, str(tmp_path / "gone.pem"))
    model = backend(url, "plain", tokenize_url=url.removesuffix("/v1") + "/tokenize")
    assert model.generate(prompts=["p"], max_new_tokens=4) == ["ok"], model.last_errors


class _SlowOnCue(BaseHTTPRequestHandler):
    """Answers "ok" at once, or after 2 s to the prompt "slow"."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if request.get("prompt") == "slow":
            time.sleep(2)
        body = json.dumps({"choices": [{"text": "ok", "finish_reason": "stop"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="forks")
def test_a_child_forked_while_a_request_holds_the_only_slot_can_still_call(scripted_server) -> None:
    """The child kept the parent's semaphore with that slot taken, and no thread of the child would
    ever release it: its generate() waited forever, whatever the timeout."""
    with scripted_server(_SlowOnCue) as url:
        backend = OpenAIBackend(OpenAIConfig(base_url=url, concurrency=1, timeout=5, max_retries=0))
        assert backend.generate(prompts=["x"], max_new_tokens=2) == ["ok"]
        slow = threading.Thread(target=backend.generate, kwargs={"prompts": ["slow"], "max_new_tokens": 2})
        slow.start()
        time.sleep(0.5)  # the slow request holds the one slot
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: one call, its answer (or none within 8 s) written to the pipe
            os.close(read)
            answer: dict[str, list[str]] = {}
            call = threading.Thread(
                target=lambda: answer.setdefault("out", backend.generate(prompts=["x"], max_new_tokens=2)), daemon=True
            )
            call.start()
            call.join(8)
            os.write(write, json.dumps(answer.get("out", "no answer")).encode())
            os._exit(0)
        os.close(write)
        with os.fdopen(read) as pipe:
            child_said = json.loads(pipe.read())
        os.waitpid(pid, 0)
        slow.join()
    assert child_said == ["ok"]
