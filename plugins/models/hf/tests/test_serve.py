"""The OpenAI-compatible server over a real tiny model, on a loopback port."""

from __future__ import annotations

import json
import os
import socket
import struct
import threading
import time
import urllib.error
import urllib.request

import pytest

from dreamgym_plugin_hf.serve import _Turn, main, start_server


def call(url: str, body: dict | None = None, key: str | None = None, timeout: float = 60) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


@pytest.fixture(scope="module")
def server(trained):
    srv = start_server(trained, port=0)
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1", trained
    srv.shutdown()
    srv.server_close()


def test_models_lists_the_backend(server):
    base, backend = server
    status, body = call(f"{base}/models")
    assert status == 200 and body["data"][0]["id"] == backend.model_id


def test_completions_match_the_backend(server):
    base, backend = server
    prompts = ["Room: garden. Items: coin, lamp. Action:", "Room: pantry. Items: key, lamp. Action:"]
    status, body = call(f"{base}/completions", {"prompt": prompts, "max_tokens": 20, "temperature": 0, "stop": ["Result"]})
    assert status == 200
    expected = backend.generate(prompts=prompts, max_new_tokens=20, temperature=0, stop=["Result"])
    assert [c["text"] for c in body["choices"]] == expected
    assert [c["index"] for c in body["choices"]] == [0, 1]


def test_seeded_completion_is_reproducible(server):
    base, _ = server
    body = {"prompt": "Room:", "max_tokens": 12, "temperature": 1.0, "seed": 3}
    assert call(f"{base}/completions", body)[1]["choices"] == call(f"{base}/completions", body)[1]["choices"]


def test_chat_completion_returns_a_message(server):
    base, _ = server
    status, body = call(f"{base}/chat/completions", {"messages": [{"role": "user", "content": "Room: garden."}], "max_tokens": 8})
    assert status == 200
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert isinstance(body["choices"][0]["message"]["content"], str)


@pytest.mark.parametrize(
    "body, message",
    [({"max_tokens": 4}, "'prompt'"), ({"prompt": "a", "max_tokens": 0}, "'max_tokens'"), ({"prompt": "a", "stop": 5}, "'stop'"),
     ({"prompt": "a", "seed": 2**64}, "'seed'"), ({"prompt": "a", "seed": "3"}, "'seed'")],
)
def test_bad_requests_get_400_with_a_reason(server, body, message):
    base, _ = server
    status, answer = call(f"{base}/completions", body)
    assert status == 400 and message in answer["error"]["message"]


def raw_post(base: str, head: bytes, body: bytes) -> tuple[int, dict]:
    """Status and JSON body of one hand-written POST (headers a normal client would not send)."""
    host, port = base.split("//")[1].split("/")[0].split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n" + head + b"\r\n" + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
            top, _, rest = data.partition(b"\r\n\r\n")
            length = [int(line.split(b":")[1]) for line in top.split(b"\r\n") if line.lower().startswith(b"content-length:")]
            if length and len(rest) >= length[0]:
                return int(top.split(b" ")[1]), json.loads(rest[: length[0]])
    raise AssertionError(f"connection closed without an answer: {data[:200]!r}")


def with_length(body: bytes) -> tuple[bytes, bytes]:
    return b"Content-Length: " + str(len(body)).encode() + b"\r\n", body


@pytest.mark.parametrize(
    "head, body, message",
    [
        (b"Content-Length: abc\r\n", b"{}", "Content-Length"),
        (b"Content-Length: -1\r\n", b"{}", "Content-Length"),
        (*with_length(b'{"prompt": "\xff\xfe", "max_tokens": 4}'), "UTF-8"),
        (*with_length(b'{"prompt": "Room", '), "not JSON"),
        (*with_length(b'{"prompt": "", "max_tokens": 4, "temperature": 0}'), "empty"),
    ],
    ids=["length-not-a-number", "length-negative", "not-utf8", "not-json", "empty-prompt"],
)
def test_malformed_requests_get_a_json_400_not_a_dropped_connection(server, head, body, message):
    base, _ = server
    status, answer = raw_post(base, head, body)
    assert status == 400 and message in answer["error"]["message"]


def test_a_body_over_the_limit_is_a_413_before_it_is_read(server):
    # the server must not allocate what a client merely declares (a terabyte here)
    from dreamgym_plugin_hf.serve import MAX_BODY_BYTES

    base, _ = server
    status, answer = raw_post(base, f"Content-Length: {10**12}\r\n".encode(), b"{}")
    assert status == 413 and str(MAX_BODY_BYTES) in answer["error"]["message"]


class FailingModel:
    """A served model whose generation fails inside (as a GPU out of memory does)."""

    def __init__(self, inner) -> None:
        self.tokenizer, self.model_id, self.chat_template = inner.tokenizer, inner.model_id, False

    def _generations(self, **_):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_a_failure_inside_generate_is_a_json_500_and_the_server_goes_on(trained, capsys):
    srv = start_server(FailingModel(trained), port=0)
    try:
        base = f"http://127.0.0.1:{srv.server_address[1]}/v1"
        for route, body in (("completions", {"prompt": "Room:"}), ("chat/completions", {"messages": [{"role": "user", "content": "x"}], "max_tokens": 4})):
            status, answer = call(f"{base}/{route}", body)  # before: the connection dropped, no answer
            assert status == 500 and answer["error"]["message"] == "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"
        assert call(f"{base}/models")[0] == 200
    finally:
        srv.shutdown()
        srv.server_close()
    assert "CUDA out of memory" in capsys.readouterr().err  # the operator still sees the traceback


class SlowModel(FailingModel):
    """A served model that takes a second per call and counts its calls."""

    def __init__(self, inner) -> None:
        super().__init__(inner)
        self.prompts: list[str] = []

    def _generations(self, *, prompts, **_):
        from dreamgym_plugin_hf.backend import Generation

        self.prompts += prompts
        time.sleep(1.0)
        return [Generation(text="ok", prompt_tokens=1, completion_tokens=1, finish_reason="stop")] * len(prompts)


def test_a_request_whose_client_hung_up_in_the_queue_is_not_generated(trained):
    model = SlowModel(trained)
    srv = start_server(model, port=0)
    try:
        base = f"http://127.0.0.1:{srv.server_address[1]}/v1"
        first = threading.Thread(target=call, args=(f"{base}/completions", {"prompt": "first"}))
        first.start()
        time.sleep(0.3)  # "first" holds the model
        head, body = with_length(json.dumps({"prompt": "abandoned"}).encode())
        with socket.create_connection(("127.0.0.1", srv.server_address[1])) as sock:  # a client that times out
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n" + head + b"\r\n" + body)
            time.sleep(0.3)
        first.join(timeout=30)
        status, answer = call(f"{base}/completions", {"prompt": "last"})
        assert status == 200 and answer["choices"][0]["text"] == "ok"
        assert model.prompts == ["first", "last"]
    finally:
        srv.shutdown()
        srv.server_close()


def test_a_client_hanging_up_during_generation_leaves_no_traceback(trained, capsys):
    srv = start_server(SlowModel(trained), port=0)
    try:
        head, body = with_length(json.dumps({"prompt": "abandoned"}).encode())
        with socket.create_connection(("127.0.0.1", srv.server_address[1])) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # hang up with a reset
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n" + head + b"\r\n" + body)
            time.sleep(0.3)  # generating
        time.sleep(1.5)  # the answer was written to a closed connection
        assert call(f"http://127.0.0.1:{srv.server_address[1]}/v1/models")[0] == 200
    finally:
        srv.shutdown()
        srv.server_close()
    assert "Traceback" not in capsys.readouterr().err


class StubModel:
    """A served model that answers "ok" at once: no weights, the server's plumbing is under test."""

    model_id, chat_template = "stub", False

    def _generations(self, *, prompts, **_):
        from dreamgym_plugin_hf.backend import Generation

        return [Generation(text="ok", prompt_tokens=1, completion_tokens=1, finish_reason="stop")] * len(prompts)


def test_a_turn_whose_hang_up_check_fails_leaves_the_model_free():
    # whatever the check raises once the model's lock is taken, the lock goes back: held, every later request hung
    class NoDescriptor:
        def fileno(self):
            raise RuntimeError("no descriptor")

    lock = threading.Lock()
    with pytest.raises(RuntimeError, match="no descriptor"):
        with _Turn(lock, NoDescriptor()):
            pass
    assert not lock.locked()


def test_a_connection_past_descriptor_1023_is_served_and_later_requests_too():
    # select.select() refuses fds from 1024 (FD_SETSIZE) on, which a long run holding many files reaches:
    # the request got a 500 and the model's lock stayed held, so every later request hung
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 1200
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"this process may open only {hard} files")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    srv = start_server(StubModel(), port=0)
    held: list[int] = []
    try:
        base = f"http://127.0.0.1:{srv.server_address[1]}/v1"
        try:
            while (fd := os.open(os.devnull, os.O_RDONLY)) < 1100:  # every lower number taken: the next connection's is higher
                held.append(fd)
            held.append(fd)
            status, answer = call(f"{base}/completions", {"prompt": "high"})
            assert status == 200 and answer["choices"][0]["text"] == "ok", answer
        finally:
            for fd in held:
                os.close(fd)
        status, answer = call(f"{base}/completions", {"prompt": "low"}, timeout=10)
        assert status == 200 and answer["choices"][0]["text"] == "ok"
    finally:
        srv.shutdown()
        srv.server_close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_unknown_route_is_404(server):
    base, _ = server
    assert call(f"{base}/embeddings", {"input": "x"})[0] == 404


def test_api_key_is_enforced_when_configured(trained):
    srv = start_server(trained, port=0, api_key="sekrit")
    try:
        base = f"http://127.0.0.1:{srv.server_address[1]}/v1"
        assert call(f"{base}/models")[0] == 401
        assert call(f"{base}/models", key="wrong")[0] == 401
        assert call(f"{base}/models", key="sekrit")[0] == 200
    finally:
        srv.shutdown()
        srv.server_close()


def test_an_api_key_variable_that_is_unset_stops_the_server(monkeypatch, capsys, tmp_path):
    # starting without authentication when a key was asked for would serve anyone
    monkeypatch.delenv("DREAMGYM_TEST_SERVE_KEY", raising=False)
    with pytest.raises(SystemExit) as info:
        main(["--model-dir", str(tmp_path), "--port", "0", "--api-key-env", "DREAMGYM_TEST_SERVE_KEY"])
    assert info.value.code != 0
    error = capsys.readouterr().err
    assert "DREAMGYM_TEST_SERVE_KEY" in error and error.count("\n") == 1


@pytest.mark.parametrize("start", ["{{ bos_token }}", ""], ids=["template-writes-bos", "template-writes-none"])
def test_chat_completion_conditions_on_one_start_token(trained, tmp_path, start):
    # The tokenizer adds BOS to plain text itself; Llama 3's chat template writes the BOS text too,
    # TinyLlama-Chat's and Zephyr's write none. A chat request must be tokenised as the backend
    # tokenises a templated prompt, and as apply_chat_template(tokenize=True): the template's own
    # start alone, not a second BOS in front (before: a BOS the template does not write was added).
    import threading

    from tokenizers.processors import TemplateProcessing

    from dreamgym_plugin_hf.backend import HFBackend
    from dreamgym_plugin_hf.serve import chat_body, tokenize_body

    trained.save(path=str(tmp_path / "m"))
    backend = HFBackend.load(str(tmp_path / "m"), max_length=1024)
    tok = backend.tokenizer
    bos = [("<|bos|>", tok.bos_token_id)]
    tok._tokenizer.post_processor = TemplateProcessing(single="<|bos|> $A", pair="<|bos|> $A $B", special_tokens=bos)
    tok.chat_template = (
        start + "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    assert tok("", add_special_tokens=True)["input_ids"] == [tok.bos_token_id]
    seen = []
    generate = backend.model.generate
    backend.model.generate = lambda **kwargs: seen.append(kwargs["input_ids"][0].tolist()) or generate(**kwargs)
    messages = [{"role": "user", "content": "Room: garden."}]
    chat_body(backend, {"messages": messages, "max_tokens": 4, "temperature": 0}, threading.Lock())
    counted = tokenize_body(backend, {"messages": messages}, threading.Lock())["tokens"]
    assert "_prefix" not in vars(backend) and backend.chat_template is False  # the backend is as it was
    backend.chat_template = True
    backend.generate(prompts=["Room: garden."], max_new_tokens=4, temperature=0)
    templated = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    templated = list(templated["input_ids"] if hasattr(templated, "keys") else templated)
    assert seen[0] == seen[1] == counted == templated
    assert (seen[0][0] == tok.bos_token_id) is bool(start) and seen[0][:2] != [tok.bos_token_id] * 2


def test_tokenize_reports_the_ids_generation_sees_and_the_context(server):
    base, backend = server
    root = base.removesuffix("/v1")
    prompt = "Room: garden. Items: coin, lamp. Action:"
    status, body = call(f"{root}/tokenize", {"model": "any", "prompt": prompt})
    assert status == 200
    assert body == {"count": len(backend.prompt_ids(prompt)), "max_model_len": backend.config.max_length,
                    "tokens": backend.prompt_ids(prompt)}
    status, answer = call(f"{root}/tokenize", {"model": "any", "prompt": ["a", "b"]})
    assert status == 400 and "'prompt'" in answer["error"]["message"]


def test_tokenize_of_messages_counts_what_the_chat_endpoint_generates_from(trained):
    import threading

    from dreamgym_plugin_hf.serve import chat_body, tokenize_body

    seen = []
    generate = trained.model.generate
    trained.model.generate = lambda **kwargs: seen.append(kwargs["input_ids"][0].tolist()) or generate(**kwargs)
    messages = [{"role": "user", "content": "Room: garden."}]
    try:
        chat_body(trained, {"messages": messages, "max_tokens": 2, "temperature": 0}, threading.Lock())
        counted = tokenize_body(trained, {"messages": messages}, threading.Lock())
    finally:
        trained.model.generate = generate
    assert counted["tokens"] == seen[0] and counted["count"] == len(seen[0])


def test_the_servers_max_length_is_the_models_context_at_most_2048(short_gpt2, small_config, tmp_path, capsys):
    # before: the server took max_length 2048 whatever the model, so /tokenize promised a
    # 64-position model 2048 tokens and a long prompt failed inside it
    from dreamgym_plugin_hf.serve import load_backend, tokenize_body
    from dreamgym_plugin_hf.tiny import TinyBackend

    backend = load_backend(short_gpt2)
    assert tokenize_body(backend, {"prompt": "a a"}, threading.Lock())["max_model_len"] == 64
    assert load_backend(short_gpt2, max_length=32).config.max_length == 32
    TinyBackend(small_config(max_positions=4096)).save(path=str(tmp_path / "long"))
    assert load_backend(str(tmp_path / "long")).config.max_length == 2048
    with pytest.raises(SystemExit) as info:
        main(["--model-dir", short_gpt2, "--port", "0", "--max-length", "100"])
    assert info.value.code != 0
    error = capsys.readouterr().err
    assert "max_length=100" in error and "64 positions" in error and error.count("\n") == 1


@pytest.mark.parametrize(
    "route, body, field",
    [
        ("completions", {"prompt": "a", "temperature": float("nan")}, "'temperature'"),
        ("completions", {"prompt": "a", "temperature": float("inf")}, "'temperature'"),
        ("completions", {"prompt": "a", "temperature": True}, "'temperature'"),
        ("completions", {"prompt": "a", "temperature": 1e-300}, "'temperature'"),
        ("chat/completions", {"messages": [{"role": "user", "content": "hi"}], "temperature": 1e-30}, "'temperature'"),
        ("completions", {"prompt": "a", "max_tokens": True}, "'max_tokens'"),
        ("completions", {"prompt": "a", "max_completion_tokens": False}, "'max_completion_tokens'"),
        ("completions", {"prompt": "a", "seed": True}, "'seed'"),
        ("chat/completions", {"messages": []}, "'messages'"),
        ("chat/completions", {"messages": {"role": "user", "content": "hi"}}, "'messages'"),
        ("chat/completions", {"messages": [{"role": "user", "content": None}]}, "'messages[0].content'"),
        ("chat/completions", {"messages": [{"role": "user", "content": 5}]}, "'messages[0].content'"),
        ("chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
         "'messages[0].content[0]'"),
        ("chat/completions", {"messages": [{"role": "user", "content": [{"type": "text", "text": 7}]}]},
         "'messages[0].content[0]'"),
        ("chat/completions", {"messages": [{"role": "user", "content": "a"}, {"role": {"x": 1}, "content": "hi"}]},
         "'messages[1].role'"),
        ("chat/completions", {"messages": [{"content": "hi"}]}, "'messages[0].role'"),
        ("chat/completions", {"messages": ["hi"]}, "'messages[0]'"),
        # JSON's \ud800 escape: a lone surrogate, which the tokenizer failed on with a TypeError (500)
        ("completions", {"prompt": "Room: \ud800 garden"}, "'prompt'"),
        ("completions", {"prompt": ["Room:", "\udc00"]}, "'prompt[1]'"),
        ("chat/completions", {"messages": [{"role": "user", "content": "\ud800"}]}, "'messages[0].content'"),
        ("chat/completions", {"messages": [{"role": "user", "content": [{"type": "text", "text": "a\ud800"}]}]},
         "'messages[0].content'"),
        ("chat/completions", {"messages": [{"role": "user\ud800", "content": "hi"}]}, "'messages[0].role'"),
    ],
    ids=["temperature-nan", "temperature-inf", "temperature-bool", "temperature-tiny", "chat-temperature-tiny", "max-tokens-bool", "max-completion-tokens-bool",
         "seed-bool", "messages-empty", "messages-not-a-list", "content-null", "content-number", "content-image-part",
         "content-part-not-text", "role-object", "role-missing", "message-not-an-object", "prompt-surrogate",
         "prompt-list-surrogate", "content-surrogate", "content-part-surrogate", "role-surrogate"],
)
def test_bad_sampling_values_and_messages_get_400_naming_the_field(server, route, body, field):
    # before: every one of these was answered 200 (a NaN or infinite temperature sampled, True was
    # 1 token or seed 1, a null content became the prompt "user: None", no messages generated from nothing),
    # but a temperature too small to divide the logits by, which passed the checks and failed as a 500
    base, _ = server
    status, answer = call(f"{base}/{route}", body if "max_completion_tokens" in body else {"max_tokens": 4, **body})
    message = answer["error"]["message"]
    assert status == 400 and field in message and "\n" not in message


def test_tokenize_checks_messages_as_the_chat_endpoint_does(server):
    base, _ = server
    status, answer = call(f"{base.removesuffix('/v1')}/tokenize", {"messages": [{"content": 5}]})
    assert status == 400 and "'messages[0]" in answer["error"]["message"]


@pytest.mark.parametrize(
    "body, field",
    [({"prompt": "Room: \ud800"}, "'prompt'"), ({"messages": [{"role": "user", "content": "\ud800"}]}, "'messages[0].content'")],
    ids=["prompt", "messages"],
)
def test_tokenize_of_a_lone_surrogate_is_a_400_naming_the_field(server, body, field):
    # before: 500, the tokenizer's TypeError, and a traceback on the server's stderr
    base, _ = server
    status, answer = call(f"{base.removesuffix('/v1')}/tokenize", body)
    assert status == 400 and field in answer["error"]["message"] and "\n" not in answer["error"]["message"]


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/tokenize"])
def test_messages_the_chat_template_refuses_are_a_400_naming_them(server, route):
    # a template's raise_exception (Llama 2's, Mistral's: roles must alternate) raised a jinja2
    # TemplateError, answered 500 with a traceback as though the server had failed
    base, backend = server
    before = backend.tokenizer.chat_template
    backend.tokenizer.chat_template = (
        "{% for m in messages %}{% if m.role not in ['user', 'assistant'] %}"
        "{{ raise_exception('roles must be user or assistant') }}{% endif %}<{{ m.role }}>{{ m.content }}{% endfor %}<assistant>"
    )
    try:
        status, answer = call(base.removesuffix("/v1") + route, {"messages": [{"role": "tool", "content": "x"}], "max_tokens": 3})
    finally:
        backend.tokenizer.chat_template = before
    message = answer["error"]["message"]
    assert status == 400 and message.startswith("'messages': the model's chat template refuses them: roles must be user or assistant")


class TemplateTokenizer:
    """Records the messages a chat template is applied to."""

    chat_template = "set"

    def __init__(self) -> None:
        self.seen: list = []

    def apply_chat_template(self, messages, **_):
        self.seen.append(messages)
        return "templated"


def test_text_parts_of_a_message_are_joined_as_its_content(trained):
    from dreamgym_plugin_hf.serve import chat_prompt

    parts = [{"type": "text", "text": "Room: garden."}, {"type": "text", "text": "Action:"}]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": parts, "name": "ann"}]
    assert chat_prompt(trained.tokenizer, messages) == "system: Be brief.\nuser: Room: garden.\nAction:\nassistant: "
    templated = TemplateTokenizer()
    assert chat_prompt(templated, messages) == "templated"
    assert templated.seen == [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Room: garden.\nAction:", "name": "ann"}]]


@pytest.mark.parametrize("method", [b"POST /v1/completions", b"GET /v1/models"])
def test_a_transfer_encoded_request_gets_411_and_the_connection_closes(server, method):
    # before: the chunked body was left unread, answered 400 ('prompt' missing), and then its
    # chunk bytes were parsed as a second request, answered with an HTML 400
    base, _ = server
    host, port = base.split("//")[1].split("/")[0].split(":")
    body = json.dumps({"prompt": "Room:", "max_tokens": 4}).encode()
    chunked = b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(method + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked)
        data = b""
        try:
            while chunk := sock.recv(65536):  # the server closes the connection after its one answer
                data += chunk
        except ConnectionResetError:  # closed with the unread body in its buffer: the answer came first
            pass
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 411") and b"connection: close" in head.lower()
    answer = json.loads(rest)
    assert "Transfer-Encoding" in answer["error"]["message"] and "Content-Length" in answer["error"]["message"]
    assert b"HTTP/" not in rest  # one answer only


def call_with(url: str, headers: dict[str, str], body: dict | None = None) -> int:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        assert "loopback" in json.load(exc)["error"]["message"] or exc.code != 403
        return exc.code


@pytest.mark.parametrize("route, body", [("models", None), ("completions", {"prompt": "Room:", "max_tokens": 2})])
@pytest.mark.parametrize(
    "headers, status",
    [
        ({}, 200),
        ({"Host": "localhost:{port}"}, 200),
        ({"Host": "[::1]:{port}"}, 200),
        ({"Host": "0.0.0.0:{port}"}, 200),  # a client of http://0.0.0.0:PORT reaches this machine
        ({"Origin": "http://127.0.0.1:{port}"}, 200),
        # DNS rebinding: a page of evil.example, its name now pointing at 127.0.0.1, calls its own host
        ({"Host": "evil.example:{port}"}, 403),
        ({"Host": "evil.example:{port}", "Origin": "http://evil.example:{port}"}, 403),
        # a cross-site request from a page in the user's browser
        ({"Origin": "https://evil.example"}, 403),
        ({"Origin": "null"}, 403),
    ],
    ids=["plain", "localhost", "ipv6-loopback", "unspecified", "loopback-origin", "rebound-host", "rebound-page", "cross-site", "opaque-origin"],
)
def test_a_loopback_server_answers_no_web_page_of_another_host(server, route, body, headers, status):
    """Bound to 127.0.0.1, the server is still reachable from a page in the user's browser:
    requests naming another host (DNS rebinding) or coming from another origin are refused."""
    base, _ = server
    port = base.split(":")[2].split("/")[0]
    assert call_with(f"{base}/{route}", {k: v.format(port=port) for k, v in headers.items()}, body) == status


def test_the_api_key_is_compared_in_constant_time(trained, monkeypatch):
    """A server on a network (--host) must not tell by its answer time how much of a guessed
    key was right: the key is compared with hmac.compare_digest."""
    import hmac

    compared = []

    def spy(a, b):
        compared.append((a, b))
        return hmac_compare(a, b)

    hmac_compare = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", spy)
    srv = start_server(trained, port=0, api_key="sekrit")
    try:
        base = f"http://127.0.0.1:{srv.server_address[1]}/v1"
        assert call(f"{base}/models", key="sekriX")[0] == 401
        assert call(f"{base}/models", key="sekrit")[0] == 200
        assert call_with(f"{base}/models", {"Authorization": "Bearer s\u00e9krit"}) == 401  # not ASCII: still a 401
    finally:
        srv.shutdown()
        srv.server_close()
    assert [b for _, b in compared] == [b"Bearer sekrit"] * 3


@pytest.fixture(scope="module")
def saved_model(trained, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("served") / "model"
    trained.save(path=str(path))
    return str(path)


def serve_main_once(monkeypatch, argv: list[str], key: str | None = None) -> int:
    """Run ``main(argv)`` in a thread until its real server answers ``GET /v1/models`` on
    127.0.0.1 (``::1`` for an IPv6 server), then shut it down; the status of that answer."""
    from dreamgym_plugin_hf import serve

    made = []

    def making(*args, **kwargs):
        made.append(real_make(*args, **kwargs))
        return made[-1]

    real_make = serve.make_server
    monkeypatch.setattr(serve, "make_server", making)
    thread = threading.Thread(target=main, args=(argv,), daemon=True)
    thread.start()
    while not made and thread.is_alive():
        time.sleep(0.05)
    assert made, "main stopped before it made its server"
    host = "[::1]" if made[0].address_family == socket.AF_INET6 else "127.0.0.1"
    try:
        return call(f"http://{host}:{made[0].server_address[1]}/v1/models", key=key)[0]
    finally:
        made[0].shutdown()
        thread.join(timeout=60)


@pytest.mark.parametrize(
    "host, key, warned",
    [("0.0.0.0", None, True), ("0.0.0.0", "s3kr1t-value", False), ("127.0.0.1", None, False), ("localhost", None, False)],
    ids=["all-interfaces-no-key", "all-interfaces-key", "loopback", "localhost"],
)
def test_a_server_open_to_the_network_without_a_key_says_so_once_on_stderr(
    saved_model, monkeypatch, capsys, host, key, warned
):
    # before: --host 0.0.0.0 without --api-key-env served the model to the whole network silently
    argv = ["--model-dir", saved_model, "--host", host, "--port", "0"]
    if key:
        monkeypatch.setenv("DREAMGYM_TEST_SERVE_KEY", key)
        argv += ["--api-key-env", "DREAMGYM_TEST_SERVE_KEY"]
    assert serve_main_once(monkeypatch, argv, key=key) == 200
    out, err = capsys.readouterr()
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    if warned:
        assert len(warnings) == 1, err
        assert "'0.0.0.0'" in warnings[0] and "--api-key-env" in warnings[0] and "without an API key" in warnings[0]
    else:
        assert warnings == [], err
    assert "serving" in out and (key is None or key not in out + err)


@pytest.mark.parametrize("port", ["70000", "-1", "http"])
def test_a_port_out_of_range_is_a_usage_error(port, capsys):
    # before: 70000 reached bind, which failed with an OverflowError traceback
    with pytest.raises(SystemExit) as info:
        main(["--model-dir", "unused", "--port", port])
    error = capsys.readouterr().err
    assert info.value.code == 2 and "argument --port" in error and "0 to 65535" in error


def test_an_address_it_cannot_listen_on_is_a_one_line_error(saved_model, capsys):
    # before: an 18-line traceback (OSError: Address already in use, or for another machine's address)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as info:
            main(["--model-dir", saved_model, "--port", str(port)])
    error = capsys.readouterr().err
    assert info.value.code == 2 and error == f"error: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    with pytest.raises(SystemExit) as info:  # TEST-NET-1: no address of this machine
        main(["--model-dir", saved_model, "--host", "192.0.2.1", "--port", "0"])
    error = capsys.readouterr().err
    assert info.value.code == 2 and error.startswith("error: cannot listen on 192.0.2.1:0: ") and error.count("\n") == 1


@pytest.mark.parametrize(
    "host, key, warned",
    [("0.0.0.0", None, True), ("::", None, True), ("", None, True), ("192.168.1.20", None, True),
     ("0.0.0.0", "k", False), ("127.0.0.1", None, False), ("127.0.1.1", None, False), ("::1", None, False),
     ("localhost", None, False)],
)
def test_which_servers_are_warned_about(host, key, warned):
    from dreamgym_plugin_hf.serve import open_server_warning

    warning = open_server_warning(host, key)
    assert (warning is not None) is warned
    if warning:
        assert repr(host) in warning and "--api-key-env" in warning and "\n" not in warning


@pytest.fixture
def sampler(small_config, make_examples):
    """An untrained tiny model: sampled at temperature 1 it ends some answers on EOS within 40
    tokens, often after bytes that decode to U+FFFD (one character, up to three tokens again)."""
    from dreamgym_plugin_hf.tiny import TinyBackend

    backend = TinyBackend(small_config())
    backend.prepare(corpus=["".join(text for text, _ in example) for example in make_examples()])
    return backend


def generated_rows(backend, request: dict) -> tuple[dict, list[list[int]]]:
    """The answer of ``POST /v1/completions`` to ``request`` and the new ids of each row as the
    model generated them (padded rows included)."""
    from dreamgym_plugin_hf.serve import completion_body

    rows = []
    generate = backend.model.generate

    def spy(**kwargs):
        output = generate(**kwargs)
        rows.extend(output[:, kwargs["input_ids"].shape[1] :].tolist())
        return output

    backend.model.generate = spy
    try:
        return completion_body(backend, request, threading.Lock()), rows
    finally:
        backend.model.generate = generate


def test_finish_reason_and_usage_are_read_from_the_generated_ids(sampler):
    # before: finish_reason re-encoded the returned text and compared it with max_tokens, so an
    # answer that ended on EOS after bytes decoding to U+FFFD read as "length"; there was no usage
    prompt = "Room: garden. Items: key, lamp. Action:"
    answer, rows = generated_rows(sampler, {"prompt": [prompt] * 20, "max_tokens": 40, "temperature": 1.0, "seed": 6})
    eos = sampler.tokenizer.eos_token_id
    ended = [row.index(eos) + 1 if eos in row else None for row in rows]
    assert any(ended) and not all(ended)  # both kinds of answer are in the batch
    recounted = sampler.count_tokens([c["text"] for c in answer["choices"]])
    assert any(n and again >= 40 for n, again in zip(ended, recounted))  # the case re-encoding read as "length"
    assert [c["finish_reason"] for c in answer["choices"]] == ["stop" if n else "length" for n in ended]
    completion = sum(n or 40 for n in ended)
    prompt_tokens = 20 * len(sampler.prompt_ids(prompt))
    assert answer["usage"] == {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion}


def test_an_answer_cut_at_a_stop_string_finishes_with_stop_and_counts_the_tokens_spent(sampler):
    prompt = "Room: kitchen."
    answer, rows = generated_rows(sampler, {"prompt": [prompt] * 6, "max_tokens": 30, "temperature": 1.0, "seed": 1, "stop": ["e"]})
    decode, eos = sampler.tokenizer.decode, sampler.tokenizer.eos_token_id

    def end(row: list[int]) -> tuple[str, int]:
        """How a row ended, and the tokens it spent: at the token completing the stop string,
        at its EOS, or after max_tokens (a finished row is padded to the batch's width)."""
        at_stop = next((k for k in range(1, len(row) + 1) if "e" in decode(row[:k], skip_special_tokens=True)), len(row) + 1)
        at_eos = row.index(eos) + 1 if eos in row else len(row) + 1
        return min(("stop string", at_stop), ("eos", at_eos), ("length", 30), key=lambda kind: kind[1])

    ends = [end(row) for row in rows]
    assert {kind for kind, _ in ends} == {"stop string", "eos", "length"}  # all three in one batch
    assert [c["finish_reason"] for c in answer["choices"]] == ["length" if kind == "length" else "stop" for kind, _ in ends]
    assert answer["usage"]["completion_tokens"] == sum(n for _, n in ends)


def test_a_chat_answer_carries_usage(server):
    base, backend = server
    status, body = call(f"{base}/chat/completions", {"messages": [{"role": "user", "content": "Room: garden."}], "max_tokens": 40, "temperature": 0})
    usage = body["usage"]
    assert status == 200 and body["choices"][0]["finish_reason"] == "stop"  # the trained model ends on EOS
    assert usage["prompt_tokens"] > 0 and 0 < usage["completion_tokens"] < 40
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


@pytest.mark.parametrize("route", ["completions", "chat/completions"])
@pytest.mark.parametrize(
    "extra, status, field",
    [({"n": 3}, 400, "'n'"), ({"n": True}, 400, "'n'"), ({"n": 0}, 400, "'n'"), ({"stream": True}, 400, "'stream'"),
     ({"n": 1, "stream": False}, 200, None), ({"n": None, "stream": None}, 200, None)],
    ids=["n-3", "n-true", "n-0", "stream", "n-1-no-stream", "nulls"],
)
def test_several_choices_or_a_stream_are_refused_not_silently_ignored(server, route, extra, status, field):
    # before: "n": 3 got one choice and "stream": true a plain JSON answer, both with 200
    base, _ = server
    request = {"prompt": "Room:"} if route == "completions" else {"messages": [{"role": "user", "content": "Room:"}]}
    got, answer = call(f"{base}/{route}", {**request, "max_tokens": 2, **extra})
    assert got == status
    if field:
        assert field in answer["error"]["message"] and "\n" not in answer["error"]["message"]
    else:
        assert len(answer["choices"]) == 1


def test_json_nested_too_deeply_is_a_400_not_a_500(server):
    # before: the decoder's RecursionError was answered 500 with a traceback on the server's stderr
    base, _ = server
    status, answer = raw_post(base, *with_length(b"[" * 200_000))
    assert status == 400 and "nested too deeply" in answer["error"]["message"]


def answers_on_one_connection(port: int, request: bytes) -> list[tuple[int, bytes]]:
    """(status, body) of every answer on one connection that sends ``request`` and then a
    ``GET /v1/models`` that closes it."""
    closing = b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    data = b""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request + closing)
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except ConnectionResetError:  # closed with unread bytes in its buffer: the answers came first
            pass
    answers = []
    while data:
        head, _, data = data.partition(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
        answers.append((int(head.split(b" ")[1]), data[:length]))
        data = data[length:]
    return answers


@pytest.mark.parametrize(
    "line, headers, statuses",
    [
        (b"GET /v1/models", b"", [200, 200]),
        (b"GET /v1/nowhere", b"", [404, 200]),
        (b"GET /v1/models", b"Origin: https://evil.example\r\n", [403, 200]),
        (b"GET /v1/models", b"Authorization: Bearer wrong\r\n", [401, 401]),  # the closing GET has no key either
        (b"PUT /v1/models", b"", [405, 200]),  # its body read, the connection goes on
    ],
    ids=["models", "no-route", "foreign-origin", "wrong-key", "unsupported-method"],
)
def test_the_body_of_a_request_is_never_read_as_the_next_request(trained, line, headers, statuses):
    # before: a GET's body was left unread, and on a kept-alive connection parsed as the next request
    inner = json.dumps({"prompt": "SMUGGLED", "max_tokens": 2, "seed": 7}).encode()
    smuggled = b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n%s" % (len(inner), inner)
    srv = start_server(trained, port=0, api_key="sekrit" if b"Authorization" in headers else None)
    try:
        request = line + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" + headers + b"Content-Length: %d\r\n\r\n" % len(smuggled) + smuggled
        answers = answers_on_one_connection(srv.server_address[1], request)
    finally:
        srv.shutdown()
        srv.server_close()
    assert [status for status, _ in answers] == statuses
    assert not any(b"text_completion" in body for _, body in answers)


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_an_ipv6_host_is_served(trained):
    # before: ThreadingHTTPServer binds IPv4 only, so --host ::1 crashed at start
    srv = start_server(trained, host="::1", port=0)
    try:
        base = f"http://[::1]:{srv.server_address[1]}/v1"
        assert call(f"{base}/models")[0] == 200
        assert call_with(f"{base}/models", {"Host": "evil.example"}) == 403  # still a loopback server
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_the_command_serves_an_ipv6_host_and_prints_its_address_in_brackets(saved_model, monkeypatch, capsys):
    assert serve_main_once(monkeypatch, ["--model-dir", saved_model, "--host", "::1", "--port", "0"]) == 200
    out, err = capsys.readouterr()
    assert "http://[::1]:" in out and "warning" not in err


def test_a_burst_of_connections_is_queued_not_dropped():
    # before: socketserver's listen backlog of 5; a client opening its 8 connections at once (the openai
    # backend's default concurrency) had the rest dropped by the kernel, each retried only after 1 s
    from dreamgym_plugin_hf.serve import make_server

    srv = make_server(StubModel(), port=0)  # listening, not yet accepting: every connection waits in the backlog
    opened: list[socket.socket] = []
    try:
        for _ in range(16):
            sock = socket.socket()
            opened.append(sock)
            sock.settimeout(0.5)  # a dropped connection is retried only after 1 s
            sock.connect(srv.server_address)
    finally:
        for sock in opened:
            sock.close()
        srv.server_close()
