"""Reviewed bugs of the OpenAI-compatible server: a cut chat's head, chat's default max_tokens,
null parameters, over-long JSON integers, malformed request targets, accepted-and-ignored
parameters and methods no route takes. A small untrained hf-tiny model served on loopback."""

from __future__ import annotations

import http.client
import json
import socket

import msgspec
import pytest

from dreamgym_plugin_hf.config import TinyConfig
from dreamgym_plugin_hf.serve import start_server
from dreamgym_plugin_hf.tiny import TinyBackend

SMALL = {"hidden_size": 32, "layers": 1, "heads": 2, "intermediate_size": 64, "vocab_size": 300, "max_positions": 1024, "max_length": 64}
CORPUS = ["Room: kitchen. Items: apple, lamp. Action: take apple."] * 20
# a template whose start (BOS), system turn and turn openings are special tokens of hf-tiny's tokenizer
TEMPLATE = (
    "<|bos|>{% for m in messages %}<|pad|>{{ m['role'] }}\n{{ m['content'] }}<|eos|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|pad|>assistant\n{% endif %}"
)
LONG = "Room: kitchen. Items: apple, lamp. " * 10  # about 150 tokens: over max_length 64


def tiny(template: str | None = None) -> TinyBackend:
    backend = TinyBackend(msgspec.convert(SMALL, type=TinyConfig))
    backend.prepare(corpus=CORPUS)
    if template is not None:
        backend.tokenizer.chat_template = template
    return backend


class Served:
    """A backend on a loopback port that records the ids the model is given and the
    generation arguments the server passes."""

    def __init__(self, backend: TinyBackend) -> None:
        self.backend, self.seen, self.calls = backend, [], []
        generate, generations = backend.model.generate, backend._generations

        def spy_generate(**kwargs):
            self.seen.append(kwargs["input_ids"][0][kwargs["attention_mask"][0].bool()].tolist())
            return generate(**kwargs)

        def spy_generations(**kwargs):
            self.calls.append(kwargs)
            return generations(**kwargs)

        backend.model.generate, backend._generations = spy_generate, spy_generations
        self.server = start_server(backend, port=0)
        self.port = self.server.server_address[1]

    def request(self, method: str, path: str, body: bytes | dict | None = None) -> tuple[int, dict, dict]:
        """(status, JSON answer ({} for none), headers) of one request on a new connection."""
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            connection.request(method, path, data, {"Content-Type": "application/json"})
            response = connection.getresponse()
            raw = response.read()
            try:
                answer = json.loads(raw) if raw else {}
            except ValueError:  # http.server's own HTML error page
                answer = {"html": raw.decode(errors="replace")}
            return response.status, answer, dict(response.getheaders())
        finally:
            connection.close()

    def post(self, path: str, body: bytes | dict) -> tuple[int, dict]:
        return self.request("POST", path, body)[:2]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def served():
    made: list[Served] = []

    def make(template: str | None = None) -> Served:
        made.append(Served(tiny(template)))
        return made[-1]

    yield make
    for one in made:
        one.close()


def common_start(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


# --- 1. a cut chat keeps its head -----------------------------------------------------------


def test_a_cut_chat_keeps_the_template_start_system_turn_and_user_turn_opening(served):
    # before: the chat route cut the rendered chat keeping only its end: the model saw the middle
    # of the user's text, with no BOS, no system turn and no turn opened (200 OK)
    s = served(TEMPLATE)
    tok = s.backend.tokenizer
    messages = [{"role": "system", "content": "You are a world model."}, {"role": "user", "content": LONG}]
    status, answer = s.post("/v1/chat/completions", {"messages": messages, "max_tokens": 8, "temperature": 0})
    assert status == 200 and answer["usage"]["prompt_tokens"] == 64 - 8
    full = s.post("/tokenize", {"messages": messages})[1]["tokens"]
    assert len(full) > 64  # the chat was cut
    head = tok.apply_chat_template(messages[:1] + [{"role": "user", "content": "\x00"}], tokenize=False, add_generation_prompt=True)
    head_ids = tok(head[: head.index("\x00")], add_special_tokens=False)["input_ids"]
    kept = common_start(full, head_ids)
    (seen,) = s.seen
    assert seen[0] == tok.convert_tokens_to_ids("<|bos|>") and kept >= len(head_ids) - 1
    assert seen[:kept] == full[:kept]  # BOS, the whole system turn, the user turn's opening
    assert seen[kept:] == full[len(full) - (len(seen) - kept) :]  # then the chat's end, as before


def test_a_cut_chat_is_cut_as_the_backends_own_chat_template_path_cuts(served):
    # the same user turn through the chat route and through /v1/completions with the backend's
    # chat template on (the path SFT and generate take) gives the model the same ids
    s = served(TEMPLATE)
    s.post("/v1/chat/completions", {"messages": [{"role": "user", "content": LONG}], "max_tokens": 8, "temperature": 0})
    s.backend.chat_template = True
    s.post("/v1/completions", {"prompt": LONG, "max_tokens": 8, "temperature": 0})
    chat, backend_path = s.seen
    assert len(chat) == 64 - 8 and chat == backend_path


def test_a_cut_chat_of_role_lines_keeps_the_system_line_and_user_opening(served):
    # without a chat template the chat is "role: content" lines; a cut keeps them up to the user's text
    s = served()
    messages = [{"role": "system", "content": "You are a world model."}, {"role": "user", "content": LONG}]
    s.post("/v1/chat/completions", {"messages": messages, "max_tokens": 8, "temperature": 0})
    (seen,) = s.seen
    assert s.backend.tokenizer.decode(seen).startswith("system: You are a world model.\nuser:")


def test_the_backend_is_as_it_was_after_a_chat(served):
    s = served(TEMPLATE)
    s.post("/v1/chat/completions", {"messages": [{"role": "user", "content": LONG}], "max_tokens": 8, "temperature": 0})
    assert "_kept_start" not in vars(s.backend) and "_prefix" not in vars(s.backend) and s.backend.chat_template is False


# --- 2. chat's default max_tokens ------------------------------------------------------------


def test_a_chat_without_max_tokens_may_use_the_rest_of_the_context(served):
    # before: 16 tokens, OpenAI's legacy-completions default, which cut most chat answers short
    s = served(TEMPLATE)
    messages = [{"role": "user", "content": "Room: kitchen."}]
    status, _ = s.post("/v1/chat/completions", {"messages": messages, "temperature": 0})
    count = s.post("/tokenize", {"messages": messages})[1]["count"]
    assert status == 200 and s.calls[-1]["max_new_tokens"] == 64 - count


def test_completions_without_max_tokens_keep_16(served):
    s = served()
    assert s.post("/v1/completions", {"prompt": "Room:", "temperature": 0})[0] == 200
    assert s.calls[-1]["max_new_tokens"] == 16


def test_a_chat_filling_the_context_without_max_tokens_is_a_400_naming_it(served):
    s = served(TEMPLATE)
    status, answer = s.post("/v1/chat/completions", {"messages": [{"role": "user", "content": LONG}]})
    assert status == 400 and "'max_tokens'" in answer["error"]["message"] and "max_model_len 64" in answer["error"]["message"]
    assert s.calls == []


# --- 3. null is the default ------------------------------------------------------------------


@pytest.mark.parametrize(
    "route, body, expected",
    [
        ("/v1/completions", {"prompt": "Room:", "max_tokens": None}, {"max_new_tokens": 16, "temperature": 1.0}),
        ("/v1/completions", {"prompt": "Room:", "max_tokens": 4, "temperature": None}, {"max_new_tokens": 4, "temperature": 1.0}),
        ("/v1/completions", {"prompt": "Room:", "max_tokens": None, "max_completion_tokens": 3}, {"max_new_tokens": 3}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a"}], "max_tokens": 4, "temperature": None},
         {"max_new_tokens": 4, "temperature": 1.0}),
    ],
    ids=["max-tokens", "temperature", "max-completion-tokens-beside-null", "chat-temperature"],
)
def test_null_parameters_take_their_defaults(served, route, body, expected):
    # before: null max_tokens or temperature was a 400 ("must be a positive integer")
    s = served()
    status, answer = s.post(route, body)
    assert status == 200, answer
    assert {key: s.calls[-1][key] for key in expected} == expected


# --- 4. an integer of too many digits -------------------------------------------------------


def test_an_integer_of_5000_digits_is_a_400(served):
    # before: json.loads' ValueError (Python's int_max_str_digits) was not caught: a 500
    s = served()
    status, answer = s.post("/v1/completions", b'{"prompt": "Room:", "max_tokens": ' + b"1" * 5000 + b"}")
    assert status == 400 and "cannot be read" in answer["error"]["message"] and "4300 digits" in answer["error"]["message"]


# --- 5. a malformed request target -----------------------------------------------------------


def raw_answers(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
    return out


@pytest.mark.parametrize("method", [b"GET", b"POST"])
def test_a_malformed_request_target_is_a_json_400_and_the_connection_goes_on(served, method):
    # before: urlsplit's ValueError killed the handler thread: the client got no bytes at all
    s = served()
    bad = method + b" http://[x/v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n{}"
    then = b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    out = raw_answers(s.port, bad + then)
    first, _, rest = out.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 400 ") and b"application/json" in first
    assert b"malformed request target" in rest and b"HTTP/1.1 200 " in rest


# --- 7. parameters that would be ignored, methods no route takes ----------------------------


@pytest.mark.parametrize(
    "route, field, value",
    [
        ("/v1/completions", "echo", True), ("/v1/completions", "logprobs", 2), ("/v1/completions", "logprobs", 0),
        ("/v1/completions", "best_of", 2), ("/v1/completions", "top_p", 0.5), ("/v1/completions", "top_p", True),
        ("/v1/chat/completions", "logprobs", True), ("/v1/chat/completions", "top_p", 0.01),
    ],
)
def test_parameters_the_server_would_ignore_are_a_400_naming_them(served, route, field, value):
    # before: 200, echo gave no prompt back, logprobs were null, top_p changed no sample
    s = served()
    body = {"prompt": "Room:"} if route == "/v1/completions" else {"messages": [{"role": "user", "content": "a"}]}
    status, answer = s.post(route, {**body, "max_tokens": 2, field: value})
    assert status == 400 and answer["error"]["message"].startswith(f"'{field}' is not supported")
    assert s.calls == []


@pytest.mark.parametrize(
    "changes",
    [{"echo": False, "logprobs": None, "best_of": 1, "top_p": 1}, {"echo": None, "logprobs": False, "best_of": None, "top_p": 1.0},
     {"top_p": None}],
)
def test_their_defaults_and_null_are_accepted(served, changes):
    s = served()
    assert s.post("/v1/completions", {"prompt": "Room:", "max_tokens": 2, **changes})[0] == 200


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "OPTIONS"])
def test_other_methods_get_a_json_405(served, method):
    # before: http.server's HTML 501 page
    s = served()
    status, answer, headers = s.request(method, "/v1/completions", b"{}")
    assert status == 405 and method in answer["error"]["message"] and headers["Allow"] == "GET, POST"


def test_head_gets_a_405_without_a_body_and_the_connection_goes_on(served):
    s = served()
    out = raw_answers(s.port, b"HEAD /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                              b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    first, _, rest = out.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 405 ") and b"application/json" in first
    assert rest.startswith(b"HTTP/1.1 200 ")  # no body between the two answers


def test_a_put_body_is_not_read_as_the_next_request(served):
    s = served()
    inner = json.dumps({"prompt": "SMUGGLED", "max_tokens": 2}).encode()
    smuggled = b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n%s" % (len(inner), inner)
    out = raw_answers(s.port, b"PUT /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n%s" % (len(smuggled), smuggled)
                      + b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    assert out.count(b"HTTP/1.1 ") == 2 and b"HTTP/1.1 405 " in out and b"text_completion" not in out
    assert s.calls == []
