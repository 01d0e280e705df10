"""Proxies from the environment: never for a loopback server, and named when a call through one fails."""

from __future__ import annotations

import importlib.util
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import pytest

from dreamgym_core.errors import ConfigError
from dreamgym_plugin_openai import OpenAIBackend, OpenAIConfig
from dreamgym_plugin_openai.backend import env_proxy

KEY = "sk-test-proxy-9b3e1f"


class Recording(ThreadingHTTPServer):
    """Answers every POST with one completion and records (request target, Authorization)."""

    daemon_threads = True

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None]] = []
        seen = self.seen

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                seen.append((self.path, self.headers.get("Authorization")))
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = {"choices": [{"text": "hi"}], "count": 1, "max_model_len": 64}
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def servers() -> Iterator[tuple[Recording, Recording]]:
    """(a model server, an HTTP proxy), both on loopback."""
    started = [Recording(), Recording()]
    for server in started:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield started[0], started[1]
    for server in started:
        server.shutdown()
        server.server_close()


def dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "0.0.0.0"])  # 0.0.0.0: what vLLM prints
def test_a_loopback_server_is_called_directly_whatever_the_proxy_variables(servers, monkeypatch, host):
    # before: HTTP_PROXY sent the loopback request, and its Bearer key, to the proxy
    model, proxy = servers
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy"):
        monkeypatch.setenv(name, proxy.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.setenv("DREAMGYM_TEST_PROXY_KEY", KEY)
    port = model.server_address[1]
    backend = OpenAIBackend(OpenAIConfig(
        base_url=f"http://{host}:{port}/v1", api_key_env="DREAMGYM_TEST_PROXY_KEY",
        tokenize_url=f"http://{host}:{port}/tokenize", max_retries=0,
    ))
    assert backend.generate(prompts=["x", "y"], max_new_tokens=4) == ["hi", "hi"]
    assert backend.prompt_fits("x", max_new_tokens=4)
    assert proxy.seen == []
    assert sorted(model.seen) == [("/tokenize", f"Bearer {KEY}")] + [("/v1/completions", f"Bearer {KEY}")] * 2


def test_a_remote_server_still_goes_through_the_environments_proxy(servers, monkeypatch):
    _, proxy = servers
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    backend = OpenAIBackend(OpenAIConfig(base_url="http://model.dreamgym-test.invalid/v1", max_retries=0))
    assert backend.generate(prompts=["x"], max_new_tokens=4) == ["hi"]
    assert proxy.seen == [("http://model.dreamgym-test.invalid/v1/completions", None)]


def test_a_call_failing_through_a_proxy_names_the_proxy_and_is_warned_about_once(monkeypatch, caplog):
    # before: a dead proxy made every call "" with no log line, and the kept error named only
    # the model server's URL, as if that server were down
    monkeypatch.setenv("HTTP_PROXY", f"http://user:pw@127.0.0.1:{dead_port()}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    backend = OpenAIBackend(OpenAIConfig(base_url="http://model.dreamgym-test.invalid/v1", max_retries=0))
    with caplog.at_level("WARNING"):
        assert backend.generate(prompts=["x", "y"], max_new_tokens=4) == ["", ""]
        assert backend.generate(prompts=["z"], max_new_tokens=4) == [""]
    assert backend.stats["failed_calls"] == 3
    assert all("through the proxy 127.0.0.1:" in error for error in backend.last_errors)
    assert all("pw" not in error for error in backend.last_errors)  # a proxy's credentials are not shown
    (warning,) = [r for r in caplog.records if r.name.startswith("dreamgym_plugin_openai")]
    message = warning.getMessage()
    assert "2 of 2 calls failed" in message and "through the proxy" in message and "pw" not in message


def test_a_failed_call_to_a_dead_loopback_server_is_warned_about_once(caplog):
    backend = OpenAIBackend(OpenAIConfig(base_url=f"http://127.0.0.1:{dead_port()}/v1", max_retries=0))
    with caplog.at_level("WARNING"):
        assert backend.generate(prompts=["x"], max_new_tokens=4) == [""]
        assert backend.generate(prompts=["x"], max_new_tokens=4) == [""]
    (warning,) = [r for r in caplog.records if r.name.startswith("dreamgym_plugin_openai")]
    assert "ConnectError" in warning.getMessage() and "proxy" not in warning.getMessage()


def test_the_unspecified_addresses_are_this_machine_for_the_proxy_too(monkeypatch):
    # before: http://0.0.0.0:PORT went through HTTP_PROXY, with the Bearer key
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.dreamgym-test.invalid:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert [env_proxy(f"http://{host}:8000/v1") for host in ("0.0.0.0", "[::]", "10.0.0.1")] == [
        None, None, "proxy.dreamgym-test.invalid:3128"]


def test_a_name_under_localhost_goes_through_the_proxy(monkeypatch):
    # it was called directly, with the Bearer key: the resolver here asks DNS for *.localhost
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.dreamgym-test.invalid:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert env_proxy("http://model.localhost:8000/v1") == "proxy.dreamgym-test.invalid:3128"
    assert env_proxy("http://LOCALHOST.:8000/v1") == "proxy.dreamgym-test.invalid:3128"  # asked of DNS too
    assert env_proxy("http://LOCALHOST:8000/v1") is None


# proxy variables httpx cannot use; SOCKS only while socksio (httpx[socks]) is not installed
UNUSABLE = [
    ("HTTPS_PROXY", "http://user:pw@proxy.dreamgym-test.invalid:31280x"),
    ("ALL_PROXY", "ftp://user:pw@proxy.dreamgym-test.invalid:21"),
]
if importlib.util.find_spec("socksio") is None:
    UNUSABLE.append(("ALL_PROXY", "socks5://user:pw@127.0.0.1:1080"))


def unusable_proxy(monkeypatch, name: str, value: str) -> None:
    for other in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(other, raising=False)
    monkeypatch.setenv(name, value)


@pytest.mark.parametrize(("name", "value"), UNUSABLE)
def test_an_unusable_proxy_variable_does_not_stop_calls_to_this_machine(servers, monkeypatch, name, value):
    # before: httpx read the variables for every client, and raised ImportError / InvalidURL /
    # ValueError out of generate even though no proxy applies to loopback
    model, _ = servers
    unusable_proxy(monkeypatch, name, value)
    backend = OpenAIBackend(OpenAIConfig(base_url=model.url + "/v1", tokenize_url=model.url + "/tokenize", max_retries=0))
    assert backend.generate(prompts=["x"], max_new_tokens=4) == ["hi"]
    assert backend.prompt_fits("x", max_new_tokens=4)


@pytest.mark.parametrize(("name", "value"), UNUSABLE)
def test_an_unusable_proxy_variable_for_a_remote_server_is_a_config_error_naming_it(monkeypatch, name, value):
    unusable_proxy(monkeypatch, name, value)
    backend = OpenAIBackend(OpenAIConfig(base_url="http://model.dreamgym-test.invalid/v1", max_retries=0))
    with pytest.raises(ConfigError, match=f"openai: cannot build the HTTP client from the environment \\({name}\\)") as info:
        backend.generate(prompts=["x"], max_new_tokens=4)
    assert "pw" not in str(info.value) and "\n" not in str(info.value)
