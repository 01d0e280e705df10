"""The openai backend against a server that misbehaves: what it answers is never trusted."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import pytest

import dreamgym_plugin_openai.backend as backend_module
from dreamgym_plugin_openai import ModelCallError, OpenAIBackend, OpenAIConfig

ANSWER = "<think>r</think>\n<state>ok</state>\n<valid>true</valid> <done>false</done> <success>false</success> <reward>0"
KEY = "sk-test-secret-5d2a7c"


class Misbehaving(BaseHTTPRequestHandler):
    """Answers according to the request's ``model`` field."""

    protocol_version = "HTTP/1.1"
    prompts: list[str] = []  # the "by-prompt" requests' prompts, in the order they came
    lock = threading.Lock()
    in_flight = peak = 0  # "counted" requests being answered, and the most at once
    arrivals: dict[str, list[float]] = {}  # "retry-after-once" requests' arrival times, by prompt
    seeds: list[int] = []  # the "int64-seed" requests' seeds, in the order they came

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send(self, status: int, data: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        mode = body["model"]
        if mode == "by-prompt":  # "fail": an HTTP 400 at once; "slow": the answer after a second; "503"
            Misbehaving.prompts.append(body["prompt"])
            mode = {"fail": "echo-auth", "slow": "slow", "503": "status-503"}.get(body["prompt"], "plain")
        auth = self.headers.get("Authorization", "")
        if mode == "surrogate":  # JSON may escape a lone surrogate
            self._send(200, json.dumps({"choices": [{"text": ANSWER}]}).replace("ok", "ok \\ud800").encode())
        elif mode == "echo-auth":  # some proxies echo the request's headers in an error
            self._send(400, json.dumps({"error": f"bad request; headers: Authorization: {auth}"}).encode())
        elif mode == "echo-auth-at-cut":  # the key straddles the client's 200-character cut of a detail
            self._send(400, ("x" * 180 + auth).encode())
        elif mode == "trickle":  # headers, then one byte at a time: no single read ever times out
            self._trickle()
        elif mode == "bad-gzip":  # a body its Content-Encoding does not decode
            self._send(200, b"not gzip", headers={"Content-Encoding": "gzip"})
        elif mode == "deep":  # valid JSON nested deeper than the decoder recurses
            self._send(200, b"[" * 100_000 + b"]" * 100_000)
        elif mode == "slow":
            time.sleep(1.0)
            self._send(200, json.dumps({"choices": [{"text": ANSWER}]}).encode())
        elif mode == "retry-after-once":  # prompt "<Retry-After>|<key>": 429 with that header, then an answer
            with Misbehaving.lock:
                times = Misbehaving.arrivals.setdefault(body["prompt"], [])
                times.append(time.monotonic())
            if len(times) == 1:
                self._send(429, b'{"error": "rate limited"}', headers={"Retry-After": body["prompt"].split("|")[0]})
            else:
                self._send(200, json.dumps({"choices": [{"text": ANSWER}]}).encode())
        elif mode == "counted":
            self._counted()
        elif mode == "int64-seed":  # vLLM's check of a request's seed: a signed 64-bit integer
            with Misbehaving.lock:
                Misbehaving.seeds.append(body["seed"])
            if -(2**63) <= body["seed"] < 2**63:
                self._send(200, json.dumps({"choices": [{"text": ANSWER}]}).encode())
            else:
                self._send(400, b'{"error": "seed: Input should be less than or equal to 9223372036854775807"}')
        elif mode == "line-breaks":  # an error page with CR LF and U+2028 line breaks
            self._send(400, "<html>\r\n<body>\r\nBad\u2028Request\r\n</body></html>".encode())
        elif mode == "null-content":  # vLLM's reasoning parser when max_tokens ends inside the reasoning
            message = {"role": "assistant", "content": None, "reasoning_content": "hmm"}
            self._send(200, json.dumps({"choices": [{"message": message, "finish_reason": "length"}]}).encode())
        elif mode.startswith("status-"):
            self._send(int(mode[7:]), b'{"error": "try again"}')
        elif mode == "huge":
            self._send(200, json.dumps({"choices": [{"text": "a" * (9 * 2**20)}]}).encode())
        else:
            self._send(200, json.dumps({"choices": [{"text": ANSWER}]}).encode())

    def _counted(self) -> None:
        with Misbehaving.lock:
            Misbehaving.in_flight += 1
            Misbehaving.peak = max(Misbehaving.peak, Misbehaving.in_flight)
        time.sleep(0.3)
        with Misbehaving.lock:
            Misbehaving.in_flight -= 1
        self._send(200, json.dumps({"choices": [{"text": ANSWER}]}).encode())

    def _trickle(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(10**6))
        self.end_headers()
        try:
            for _ in range(200):
                self.wfile.write(b" ")
                self.wfile.flush()
                time.sleep(0.1)
        except OSError:  # the client gave up
            pass


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # the client hanging up on a huge or trickling answer is the point of those tests


@pytest.fixture(scope="module")
def url(scripted_server) -> Iterator[str]:
    with scripted_server(Misbehaving, QuietServer) as base:
        yield base


def backend(url: str, mode: str, **settings) -> OpenAIBackend:
    return OpenAIBackend(OpenAIConfig(base_url=url, model=mode, api_key_env="DREAMGYM_TEST_KEY", **settings))


def test_a_plain_answer(url):
    assert backend(url, "plain").generate(prompts=["p"], max_new_tokens=8) == [ANSWER]


def test_lone_surrogates_in_an_answer_become_replacement_characters(url):
    (text,) = backend(url, "surrogate").generate(prompts=["p"], max_new_tokens=8)
    assert "ok \ufffd" in text
    text.encode("utf-8")  # what a buffer writes to disk


@pytest.mark.parametrize("mode", ["echo-auth", "echo-auth-at-cut"])
def test_a_key_echoed_by_the_server_is_never_kept_or_raised(url, monkeypatch, mode):
    monkeypatch.setenv("DREAMGYM_TEST_KEY", KEY)
    strict = backend(url, mode, max_retries=0, on_failure="raise")
    with pytest.raises(ModelCallError, match="HTTP 400") as info:
        strict.generate(prompts=["p"], max_new_tokens=8)
    for shown in (str(info.value), *strict.last_errors):
        assert KEY[:8] not in shown  # not even the part before a cut
    assert "[redacted]" in strict.last_errors[0]


def test_timeout_caps_the_whole_request_not_each_read(url):
    slow = backend(url, "trickle", timeout=1.0, max_retries=0)
    start = time.monotonic()
    assert slow.generate(prompts=["p"], max_new_tokens=8) == [""]
    assert time.monotonic() - start < 5.0  # the server would trickle for 20 s
    assert "Timeout" in slow.last_errors[0] and slow.stats["failed_calls"] == 1
    assert slow.last_errors[0].endswith("in 1 s")  # the limit as configured, not as a float prints


def test_an_answer_over_the_size_limit_fails_the_call(url):
    big = backend(url, "huge", max_retries=2)
    assert big.generate(prompts=["p"], max_new_tokens=8) == [""]
    assert "larger than" in big.last_errors[0]
    assert big.stats["retries"] == 0  # the same server would answer the same again


@pytest.mark.parametrize(("mode", "error"), [("bad-gzip", "does not decode"), ("deep", "is not JSON")])
def test_an_answer_that_does_not_decode_is_a_counted_failure(url, mode, error):
    odd = backend(url, mode, max_retries=2)
    assert odd.generate(prompts=["p", "q"], max_new_tokens=8) == ["", ""]  # no exception for the batch
    assert odd.stats["failed_calls"] == 2 and odd.stats["retries"] == 0
    assert error in odd.last_errors[0] and "\n" not in odd.last_errors[0]


def test_generate_from_several_threads_keeps_each_call_its_own_errors(url):
    """One backend called from worker threads (as an agent loop's executor does)."""
    shared = backend(url, "by-prompt", max_retries=0, on_failure="raise")
    outcome: list[BaseException] = []

    def failing_call() -> None:
        try:
            shared.generate(prompts=["fail", "slow"], max_new_tokens=8)
        except BaseException as exc:  # noqa: BLE001 - the test inspects what came out
            outcome.append(exc)

    worker = threading.Thread(target=failing_call)
    worker.start()
    time.sleep(0.3)  # the worker's "fail" has failed; its "slow" is still in flight
    assert shared.generate(prompts=["ok"], max_new_tokens=8) == [ANSWER]
    worker.join(timeout=30)
    (error,) = outcome
    assert isinstance(error, ModelCallError) and "1 of 2 calls failed" in str(error) and "HTTP 400" in str(error)
    assert shared.stats == {"calls": 3, "succeeded": 2, "retries": 0, "failed_calls": 1, "truncated": 0}


def test_a_batch_seed_near_the_int64_limit_stays_in_the_range_a_server_takes(url):
    # Request i is sent seed + i; the experience model's call seeds are 63-bit hashes, so a batch's
    # last requests could pass 2**63 - 1, which a vLLM server refuses (HTTP 400, a failed call).
    Misbehaving.seeds.clear()
    near = backend(url, "int64-seed", max_retries=0, on_failure="raise")
    assert near.generate(prompts=["p", "q", "r"], max_new_tokens=8, seed=2**63 - 2) == [ANSWER] * 3
    assert sorted(Misbehaving.seeds) == [0, 2**63 - 2, 2**63 - 1]  # seed + i where it fits, unchanged
    Misbehaving.seeds.clear()
    assert near.generate(prompts=["p", "q"], max_new_tokens=8, seed=5) == [ANSWER] * 2
    assert sorted(Misbehaving.seeds) == [5, 6]


@pytest.mark.parametrize("status", [500, 503, 520, 529])
def test_every_5xx_is_retried(url, status):
    troubled = backend(url, f"status-{status}", max_retries=2, backoff=0.01)
    assert troubled.generate(prompts=["p"], max_new_tokens=8) == [""]
    assert troubled.stats["retries"] == 2 and troubled.stats["failed_calls"] == 1
    assert f"HTTP {status}" in troubled.last_errors[0]


@pytest.mark.parametrize(("retry_after", "cap", "waited"), [("1", 60.0, 1.0), ("30", 0.2, 0.2)])
def test_a_429_retry_waits_out_the_servers_retry_after_up_to_max_retry_after(url, retry_after, cap, waited, monkeypatch):
    delays = []  # the waits the backend chose (a spy: no wall-clock bound is asserted)
    chosen = backend_module.retry_delay
    monkeypatch.setattr(backend_module, "retry_delay", lambda *a: delays.append(chosen(*a)) or delays[-1])
    prompt = f"{retry_after}|{cap}"
    limited = backend(url, "retry-after-once", max_retries=1, backoff=0.01, max_retry_after=cap)
    assert limited.generate(prompts=[prompt], max_new_tokens=8) == [ANSWER]
    assert delays == [waited]  # before: the 0.01 s backoff, which a real server refuses again
    first, second = Misbehaving.arrivals[prompt]
    assert second - first >= waited - 0.05  # and the retry was sent after it
    assert limited.stats["retries"] == 1 and limited.stats["failed_calls"] == 0


@pytest.mark.parametrize(
    ("mode", "error", "retries"),
    [("plain", "malformed tokenize answer", 0), ("deep", "is not JSON", 0), ("status-503", "HTTP 503", 2)],
)
def test_a_tokenize_answer_that_cannot_be_read_is_a_counted_failure(url, mode, error, retries, monkeypatch):
    monkeypatch.setenv("DREAMGYM_TEST_KEY", KEY)
    odd = backend(url, mode, tokenize_url=url.removesuffix("/v1") + "/tokenize", max_retries=2, backoff=0.01)
    assert odd.prompt_fits("p", max_new_tokens=8)  # taken to fit: sent whole, as without a tokenize_url
    assert odd.stats["tokenize_failed"] == 1 and odd.stats["tokenize_retries"] == retries
    strict = backend(url, mode, tokenize_url=url.removesuffix("/v1") + "/tokenize", max_retries=0, on_failure="raise")
    with pytest.raises(ModelCallError, match=error) as info:
        strict.prompt_fits("p", max_new_tokens=8)
    assert KEY[:8] not in str(info.value) and "\n" not in str(info.value)


def test_concurrency_holds_for_calls_from_several_threads(url):
    # before: each generate() call had its own limit, so 3 threads with concurrency 2 had 6 requests in flight
    shared = backend(url, "counted", concurrency=2, max_retries=0)
    Misbehaving.peak = 0
    workers = [threading.Thread(target=shared.generate, kwargs={"prompts": ["p"] * 4, "max_new_tokens": 8}) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert shared.stats["succeeded"] == 12 and Misbehaving.peak == 2


def test_a_request_waiting_out_its_backoff_holds_no_slot(url):
    # before: the retry's backoff kept the slot, and the batch's other prompt waited it out too
    Misbehaving.prompts.clear()
    single = backend(url, "by-prompt", concurrency=1, max_retries=1, backoff=0.5)
    assert single.generate(prompts=["503", "ok"], max_new_tokens=8) == ["", ANSWER]
    assert Misbehaving.prompts == ["503", "ok", "503"]


def test_a_connection_error_keeps_its_cause(url):
    # before: "ConnectError calling URL" alone, the same for a TLS failure as for a dead server
    tls = backend(url.replace("http://", "https://"), "plain", max_retries=0)
    assert tls.generate(prompts=["p"], max_new_tokens=8) == [""]
    error = tls.last_errors[0]
    assert error.startswith(f"ConnectError calling {tls._completion_url()}: ") and "\n" not in error
    assert len(error) > len(f"ConnectError calling {tls._completion_url()}: ")


def test_an_error_body_is_kept_on_one_line_whatever_its_line_breaks(url):
    # before: only "\n" was replaced, so CR and U+2028 still broke the kept error (and log lines)
    odd = backend(url, "line-breaks", max_retries=0)
    odd.generate(prompts=["p"], max_new_tokens=8)
    assert odd.last_errors[0].endswith(": <html> <body> Bad Request </body></html>")
    assert len(odd.last_errors[0].splitlines()) == 1


def test_null_chat_content_names_the_field_the_finish_reason_and_the_url(url):
    # before: "malformed answer: text is not a string", with no hint why or from where
    chat = backend(url, "null-content", endpoint="chat", max_retries=0)
    assert chat.generate(prompts=["p"], max_new_tokens=8) == [""]
    assert chat.last_errors == [f"choices[0].message.content is null (finish_reason='length') from {chat._completion_url()}"]


def test_a_401_from_the_tokenize_url_names_it_and_says_when_no_key_was_sent(url, monkeypatch):
    # before: the message named base_url and said "check the key" though the variable was unset
    tokenize = url.removesuffix("/v1") + "/tokenize"
    monkeypatch.delenv("DREAMGYM_TEST_KEY", raising=False)
    strict = backend(url, "status-401", tokenize_url=tokenize, max_retries=0, on_failure="raise")
    with pytest.raises(ModelCallError, match=f"HTTP 401 from {tokenize}: no key was sent: \\$DREAMGYM_TEST_KEY is unset"):
        strict.prompt_fits("p", max_new_tokens=8)
    monkeypatch.setenv("DREAMGYM_TEST_KEY", KEY)
    keyed = backend(url, "status-401", tokenize_url=tokenize, max_retries=0, on_failure="raise")
    with pytest.raises(ModelCallError, match=f"HTTP 401 from {tokenize}: check the key in \\$DREAMGYM_TEST_KEY"):
        keyed.prompt_fits("p", max_new_tokens=8)


def test_a_key_echoed_json_escaped_is_redacted(url, monkeypatch):
    # before: a key holding " or \ came back escaped in the JSON error body and was kept whole
    key = 'sk-test-"quoted\\slash-71c0'
    monkeypatch.setenv("DREAMGYM_TEST_KEY", key)
    echo = backend(url, "echo-auth", max_retries=0)
    echo.generate(prompts=["p"], max_new_tokens=8)
    assert json.dumps(key)[1:-1] not in echo.last_errors[0] and "Bearer [redacted]" in echo.last_errors[0]


def test_the_first_tokenize_failure_is_warned_about_also_when_threads_fail_at_once(url, caplog, monkeypatch):
    # before: the warning was decided by reading the counter after the fact, and concurrent
    # failures each saw it past 1: no warning at all
    from dreamgym_plugin_openai import backend as module

    run, together = module._run, threading.Barrier(8, timeout=30)

    def run_then_wait(coro):  # every thread's request has failed and been counted before any goes on
        result = run(coro)
        together.wait()
        return result

    monkeypatch.setattr(module, "_run", run_then_wait)
    shared = backend(url, "status-503", tokenize_url=url.removesuffix("/v1") + "/tokenize", max_retries=0)
    workers = [threading.Thread(target=shared.prompt_fits, args=("p",), kwargs={"max_new_tokens": 8}) for _ in range(8)]
    with caplog.at_level("WARNING", logger="dreamgym_plugin_openai.backend"):
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=60)
    assert shared.stats["tokenize_failed"] == 8
    assert len([r for r in caplog.records if "HTTP 503" in r.getMessage()]) == 1
