"""A minimal OpenAI-compatible HTTP server around any hf backend (stdlib only).

Endpoints: ``GET /v1/models``, ``POST /v1/completions`` (prompt string or list,
max_tokens (default 16), temperature, stop, seed), ``POST /v1/chat/completions`` (messages;
max_tokens defaults to the rest of the context, as vLLM's) and vLLM's
``POST /tokenize`` (prompt or messages: ``count``, ``max_model_len`` and ``tokens``, so a
client can shorten a prompt before the server would cut its start). Answers carry ``usage`` and
each choice a ``finish_reason`` read from the generated ids; one choice per prompt (``n`` 1) and
no streaming: ``n`` other than 1 or ``stream`` true is a 400, and so is ``echo``, ``logprobs``,
``best_of`` or ``top_p`` other than its default (they would be ignored); null is a field's default.
A method other than GET and POST is a 405.
Requests are served one generate() at a time (the model is not thread-safe); one whose
client hung up while it waited (a client timeout) is dropped, not generated (a client that
only half-closed, shutdown(SHUT_WR), reads the same: an end of input). Bodies need a
Content-Length: a Transfer-Encoding (chunked) request gets 411 and the connection closes. With
``--api-key-env NAME``, requests must carry ``Authorization: Bearer <key>`` where the
key is that variable's value; the server refuses to start when it is unset or empty.
Bound to a loopback address (the default), it answers only requests that name a loopback host
(``Host``) and come from no web page of another host (``Origin``): a page in the user's
browser could otherwise reach it, through DNS rebinding or a cross-site POST (403).
Bound to any other address (``--host 0.0.0.0``) without a key, it serves the model to whoever
can reach the machine: it says so in one line on stderr at start. An IPv6 address (``--host ::1``)
binds an IPv6 socket.
``--max-length`` (the ``max_model_len`` ``/tokenize`` reports) defaults to the model's own
context, at most 2048; one over the model's context, or an address it cannot listen on (a port in
use), stops the server with a one-line error.

    python -m dreamgym_plugin_hf.serve --model-dir runs/x/policy --port 8011
"""

from __future__ import annotations

import argparse
import hmac
import json
import math
import os
import selectors
import socket
import sys
import threading
import time
import traceback
import uuid
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Iterator
from urllib.parse import urlsplit

from dreamgym_core.errors import DreamGymError
from dreamgym_core.net import is_loopback

if TYPE_CHECKING:
    from .backend import Generation

__all__ = [
    "make_server", "start_server", "load_backend", "completion_body", "tokenize_body", "chat_messages", "chat_prompt",
    "open_server_warning", "main",
]


# A request is prompts and parameters: 16 MiB is millions of tokens, beyond any context window.
MAX_BODY_BYTES = 16 * 2**20

# Below this the model's logits divided by the temperature leave float range (inf, then NaN
# probabilities, and generate fails); 0 is greedy.
MIN_TEMPERATURE = 1e-5


class RequestError(ValueError):
    """A malformed request; answered with HTTP ``status`` (400 unless given)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class ClientGone(Exception):
    """The client hung up (gave up waiting) before its turn at the model came."""


# poll has no limit on descriptor numbers: select.select raises ValueError from fd 1024 (FD_SETSIZE)
# on, which a long run holding many files reaches. Windows has no poll, and its select takes any socket.
_Selector = getattr(selectors, "PollSelector", selectors.SelectSelector)


def _hung_up(connection: Any) -> bool:
    """Whether the client closed its end: the connection reads as an end of input (or fails)."""
    try:
        with _Selector() as selector:
            selector.register(connection, selectors.EVENT_READ)
            readable = bool(selector.select(0))
        return readable and connection.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


class _Turn:
    """The model's lock, taken for one request: once it is held, a request whose client has
    hung up in the queue is dropped instead of generated for nobody."""

    def __init__(self, lock: threading.Lock, connection: Any) -> None:
        self.lock, self.connection = lock, connection

    def __enter__(self) -> None:
        self.lock.acquire()
        try:
            gone = _hung_up(self.connection)
        except BaseException:  # a lock left held here would hang every later request
            self.lock.release()
            raise
        if gone:
            self.lock.release()
            raise ClientGone

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


def _route_path(target: str) -> str:
    """The path a request asks for, without its query (a client may add ``?api-version=...``);
    RequestError for a target urlsplit cannot read (``http://[x/...``: its ValueError killed the
    handler thread and the client got no answer at all)."""
    try:
        return urlsplit(target).path.rstrip("/")
    except ValueError:
        raise RequestError(f"malformed request target {target!r}") from None


def _stop_list(stop: Any) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return stop
    raise RequestError("'stop' must be a string or a list of strings")


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is no count nor seed


# OpenAI parameters this server does not implement, each with the test of its default (which
# changes nothing): any other value would be accepted and silently ignored, as n and stream were.
_UNSUPPORTED = {
    "echo": ("false", lambda v: v is False),
    "logprobs": ("false", lambda v: v is False),  # null on /v1/completions, false on chat
    "best_of": ("1", lambda v: _integer(v) and v == 1),
    "top_p": ("1", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v == 1),  # the backend's own top_p applies
}


def _sampling(body: dict[str, Any], default_max_tokens: int | None = 16) -> dict[str, Any]:
    """Generation arguments of a request. A field sent as null counts as left out (OpenAI's
    clients send null for "the default"). Without max tokens, ``max_new_tokens`` is
    ``default_max_tokens``: None leaves it to the caller (the chat route's rest of the context)."""
    name = "max_tokens" if body.get("max_tokens") is not None or body.get("max_completion_tokens") is None else "max_completion_tokens"
    max_tokens = body.get(name)
    temperature = body.get("temperature")
    temperature = 1.0 if temperature is None else temperature
    seed = body.get("seed")
    for field, (default, is_default) in _UNSUPPORTED.items():
        if body.get(field) is not None and not is_default(body[field]):
            raise RequestError(f"'{field}' is not supported by this server (it would be ignored): send {default} or leave it out")
    n = body.get("n")
    if n is not None and not (_integer(n) and n == 1):  # answered with one choice, n would be silently ignored
        raise RequestError("'n' must be 1 or left out: this server returns one choice per prompt")
    if body.get("stream") not in (None, False):
        raise RequestError("'stream' is not supported (the answer comes as one JSON object); send stream false or leave it out")
    if max_tokens is None:
        max_tokens = default_max_tokens
    elif not _integer(max_tokens) or max_tokens < 1:
        raise RequestError(f"'{name}' must be a positive integer")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature < 0:
        raise RequestError("'temperature' must be a finite number >= 0")
    if 0 < temperature < MIN_TEMPERATURE:
        raise RequestError(f"'temperature' {temperature!r} is too small to sample with: send 0 (greedy) or at least {MIN_TEMPERATURE}")
    if seed is not None and not (_integer(seed) and -(2**63) <= seed < 2**64):  # what torch.manual_seed takes
        raise RequestError("'seed' must be an integer in [-2**63, 2**64)")
    return {"max_new_tokens": max_tokens, "temperature": float(temperature), "stop": _stop_list(body.get("stop")), "seed": seed}


def _unicode(text: str, where: str) -> str:
    """``text``, if it is Unicode the tokenizer takes: JSON's ``\\ud800`` escape gives a lone
    surrogate, which it fails on with a TypeError (a 500 that blamed the server)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RequestError(f"'{where}' must be Unicode text: it holds a lone surrogate {text[exc.start]!r} at character {exc.start}") from None
    return text


def _content(content: Any, where: str) -> str:
    """A message's text: a string, or OpenAI-style text parts joined by line breaks (as vLLM does)."""
    if isinstance(content, str):
        return _unicode(content, where)
    if not isinstance(content, list):
        raise RequestError(f"'{where}' must be a string or a list of text parts")
    texts = []
    for i, part in enumerate(content):
        if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
            raise RequestError(f"'{where}[{i}]' must be a text part {{\"type\": \"text\", \"text\": <string>}} (only text is served)")
        texts.append(part["text"])
    return _unicode("\n".join(texts), where)


def chat_messages(messages: Any) -> list[dict[str, Any]]:
    """``messages`` checked, each content as one string; RequestError naming the field otherwise."""
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty list of {role, content} objects")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise RequestError(f"'messages[{i}]' must be a {{role, content}} object")
        if not isinstance(message.get("role"), str):
            raise RequestError(f"'messages[{i}].role' must be a string")
        _unicode(message["role"], f"messages[{i}].role")
        out.append({**message, "content": _content(message.get("content"), f"messages[{i}].content")})
    return out


def chat_prompt(tokenizer: Any, messages: Any) -> str:
    """The prompt text of a chat (checked by :func:`chat_messages`): the tokenizer's template,
    or ``role: content`` lines."""
    messages = chat_messages(messages)
    if not tokenizer.chat_template:
        lines = [f"{m['role']}: {m['content']}" for m in messages]
        return _unicode("\n".join(lines + ["assistant: "]), "messages")
    from jinja2 import TemplateError  # what transformers renders a chat template with

    try:
        rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except TemplateError as exc:  # its raise_exception(...): roles out of order, a system turn it has no place for
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise RequestError(f"'messages': the model's chat template refuses them: {reason}") from None
    return _unicode(rendered, "messages")  # another field of a message may hold a lone surrogate too


def completion_body(backend: Any, body: dict[str, Any], lock: Any) -> dict[str, Any]:
    """Answer of ``POST /v1/completions``."""
    prompt = body.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise RequestError("'prompt' must be a string or a non-empty list of strings")
    for i, text in enumerate(prompts):
        _unicode(text, "prompt" if isinstance(prompt, str) else f"prompt[{i}]")
    args = _sampling(body)
    with lock:
        done = backend._generations(prompts=prompts, **args)
    choices = [{"index": i, "text": g.text, "finish_reason": g.finish_reason, "logprobs": None} for i, g in enumerate(done)]
    return _envelope("text_completion", backend, choices, done)


def _no_start_tokens(text: str = "") -> list[int]:
    """The backend's ``_prefix`` for a rendered chat template (what it gives under its own)."""
    return []


def _common_start(a: list[int], b: list[int]) -> int:
    """How many leading ids ``a`` and ``b`` share."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


@contextmanager
def _template_applied(backend: Any, head: str = "") -> Iterator[None]:
    """The backend taking prompts as raw text: a chat's template is already applied. A rendered
    template gets no start token added, as in the backend's own chat-template path (SFT,
    generate) and ``apply_chat_template(tokenize=True)``: the template writes any the model was
    trained with (Llama 3's writes BOS; TinyLlama's and Zephyr's none, though their tokenizers add
    one to plain text). ``role: content`` lines are plain text, started as any prompt.

    ``head`` (:func:`_chat_head`): the leading text a cut of an over-long prompt keeps, as the
    backend's own chat-template path keeps its template's head (``_kept_start``). As raw text the
    backend kept no more than the start tokens, and the model saw the middle of the user's text
    with no BOS, system turn or turn opened."""
    chat, backend.chat_template = backend.chat_template, False
    if backend.tokenizer.chat_template:
        backend._prefix = _no_start_tokens  # for this request only (the model's lock is held)
    if head:  # the head's tokens as the whole prompt's encoding has them
        backend._kept_start = lambda prompt, ids: _common_start(ids, backend.prompt_ids(head))
    try:
        yield
    finally:
        backend.chat_template = chat
        vars(backend).pop("_prefix", None)
        vars(backend).pop("_kept_start", None)


def _chat_head(tokenizer: Any, messages: Any, prompt: str) -> str:
    """The text of the rendered chat ``prompt`` before the content of its first message that is
    not a system turn (else its last): the template's start, the system turn and that turn's
    opening, which the backend's chat path keeps when it cuts (its ``_chat_header``). Not the head
    up to the last message: a long history there would fill the whole window and leave the model
    no turn to answer. Rendered with a marker as that content; "" when the template does not show
    the marker, or renders the chat otherwise."""
    checked = chat_messages(messages)
    at = next((i for i, m in enumerate(checked) if m["role"] not in ("system", "developer")), len(checked) - 1)
    marker = "\x00dreamgym-prompt\x00"
    try:
        marked = chat_prompt(tokenizer, [*checked[:at], {**checked[at], "content": marker}, *checked[at + 1 :]])
    except RequestError:  # a template that refuses the marker: keep what the backend keeps by itself
        return ""
    head = marked[: marked.index(marker)] if marker in marked else ""
    return head if prompt.startswith(head) else ""


def chat_body(backend: Any, body: dict[str, Any], lock: Any) -> dict[str, Any]:
    """Answer of ``POST /v1/chat/completions`` (one choice)."""
    prompt = chat_prompt(backend.tokenizer, body.get("messages"))
    args = _sampling(body, default_max_tokens=None)
    with lock, _template_applied(backend, _chat_head(backend.tokenizer, body.get("messages"), prompt)):
        if args["max_new_tokens"] is None:
            # no max_tokens: the rest of the context, as vLLM's chat endpoint (legacy completions
            # keep OpenAI's 16); 16 cut most chat answers short, finish_reason "length"
            count, context = len(backend.prompt_ids(prompt)), backend.config.max_length
            if count >= context:
                raise RequestError(
                    f"the chat is {count} tokens, which leaves no room for an answer in max_model_len {context}: "
                    "send 'max_tokens' (the chat is then cut, keeping its head and end) or a shorter chat"
                )
            args["max_new_tokens"] = min(context - count, context - 1)  # the backend takes fewer than max_length
        (done,) = backend._generations(prompts=[prompt], **args)
    choice = {"index": 0, "message": {"role": "assistant", "content": done.text}, "finish_reason": done.finish_reason}
    return _envelope("chat.completion", backend, [choice], [done])


def tokenize_body(backend: Any, body: dict[str, Any], lock: Any) -> dict[str, Any]:
    """Answer of ``POST /tokenize`` in vLLM's shape: the token ids generation would see, uncut,
    and the context length (a prompt fits when ``count + max_tokens <= max_model_len``)."""
    if "messages" in body:
        prompt = chat_prompt(backend.tokenizer, body["messages"])
        with lock, _template_applied(backend):
            ids = backend.prompt_ids(prompt)
    else:
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise RequestError("'prompt' must be a string (or send 'messages')")
        _unicode(prompt, "prompt")
        with lock:
            ids = backend.prompt_ids(prompt)
    return {"count": len(ids), "max_model_len": backend.config.max_length, "tokens": ids}


def _envelope(kind: str, backend: Any, choices: list[dict[str, Any]], done: list[Generation]) -> dict[str, Any]:
    prompt_tokens, completion_tokens = sum(g.prompt_tokens for g in done), sum(g.completion_tokens for g in done)
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}
    return {"id": f"cmpl-{uuid.uuid4().hex[:16]}", "object": kind, "created": int(time.time()), "model": backend.model_id,
            "choices": choices, "usage": usage}


def _json_object(raw: bytes) -> dict[str, Any]:
    """A request body as a JSON object; RequestError if it is not UTF-8 JSON of an object."""
    try:
        body = json.loads(raw.decode("utf-8") or "{}")
    except UnicodeDecodeError as exc:
        raise RequestError("the request body is not UTF-8") from exc
    except json.JSONDecodeError as exc:
        raise RequestError(f"the request body is not JSON: {exc}") from exc
    except RecursionError as exc:  # the decoder recurses once per level of [ or {
        raise RequestError("the request body's JSON is nested too deeply") from exc
    except ValueError as exc:  # an integer of over 4300 digits (Python's int_max_str_digits): was a 500
        raise RequestError(f"the request body's JSON holds a value that cannot be read: {str(exc).split(';')[0]}") from exc
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    return body


def _foreign(header: str | None, *, origin: bool) -> bool:
    """Whether a ``Host`` or ``Origin`` header names a host other than this machine (an absent
    one names none; a browser's opaque origin, ``null``, is foreign). The loopback names this
    machine, and so does the unspecified address (a client of ``http://0.0.0.0:8000``)."""
    if header is None:
        return False
    try:
        name = urlsplit(header if origin else f"//{header}").hostname
    except ValueError:  # a malformed port or bracket
        return True
    return not (is_loopback(name) or name in ("0.0.0.0", "::"))


def _handler(backend: Any, api_key: str | None, loopback: bool = True) -> type[BaseHTTPRequestHandler]:
    lock = threading.Lock()
    routes = {"/v1/completions": completion_body, "/v1/chat/completions": chat_body, "/tokenize": tokenize_body}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet: no per-request lines
            pass

        def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if self.close_connection:
                self.send_header("Connection", "close")
            try:
                self.end_headers()
                if self.command != "HEAD":  # an answer to HEAD has no body: one would be read as the next answer
                    self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up waiting: nobody to tell
                self.close_connection = True

        def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
            self._send(status, {"error": {"message": message, "type": "invalid_request_error", "code": status}}, headers)

        def _transfer_encoded(self) -> bool:
            """Answer 411 and close for a request framed by Transfer-Encoding (chunked): its body
            is not read, so where the next request on the connection starts is unknown."""
            encoding = self.headers.get("Transfer-Encoding")
            if encoding is None:
                return False
            self.close_connection = True
            self._error(411, f"Transfer-Encoding {encoding!r} is not supported; send the body with a Content-Length")
            return True

        def _read_body(self) -> bytes:
            """The request body; a Content-Length that is no count is a RequestError."""
            declared = self.headers.get("Content-Length") or "0"
            if not (declared.strip().isascii() and declared.strip().isdigit()):
                self.close_connection = True  # where this body ends, and the next request starts, is unknown
                raise RequestError(f"Content-Length {declared!r} is not a byte count")
            if int(declared) > MAX_BODY_BYTES:
                self.close_connection = True  # the body is left unread
                raise RequestError(f"request body of {int(declared)} bytes is over the {MAX_BODY_BYTES}-byte limit", status=413)
            return self.rfile.read(int(declared))

        def _authorised(self) -> bool:
            if loopback and (_foreign(self.headers.get("Host"), origin=False) or _foreign(self.headers.get("Origin"), origin=True)):
                # a web page's request: DNS rebinding names the page's host, a cross-site one its origin
                self._error(403, "this server answers only requests to a loopback host that come from no web page")
                return False
            # compared in constant time: how long a wrong key takes to refuse says nothing of the right one
            sent = self.headers.get("Authorization", "").encode("latin-1")  # as http.server decoded it
            if api_key is None or hmac.compare_digest(sent, f"Bearer {api_key}".encode()):
                return True
            self._error(401, "missing or wrong API key")
            return False

        def do_GET(self) -> None:
            if self._transfer_encoded():
                return
            try:
                self._read_body()  # unused, but unread it would be parsed as the next request
            except RequestError as exc:
                return self._error(exc.status, str(exc))
            if not self._authorised():
                return
            try:
                path = _route_path(self.path)
            except RequestError as exc:
                return self._error(exc.status, str(exc))
            if path != "/v1/models":
                return self._error(404, f"no route {self.path}")
            self._send(200, {"object": "list", "data": [{"id": backend.model_id, "object": "model", "owned_by": "dreamgym"}]})

        def do_POST(self) -> None:
            if self._transfer_encoded():
                return
            try:
                raw = self._read_body()
            except RequestError as exc:
                return self._error(exc.status, str(exc))
            if not self._authorised():
                return
            try:
                route = routes.get(_route_path(self.path))
            except RequestError as exc:
                return self._error(exc.status, str(exc))
            if route is None:
                return self._error(404, f"no route {self.path}")
            try:
                self._send(200, route(backend, _json_object(raw), _Turn(lock, self.connection)))
            except ClientGone:
                self.close_connection = True
            except (RequestError, DreamGymError) as exc:
                self._error(400, str(exc))
            except Exception as exc:  # noqa: BLE001 - the model failed inside: say so, not hang up
                traceback.print_exc()
                self._error(500, f"{type(exc).__name__}: {exc}".splitlines()[0])

        def _not_allowed(self) -> None:
            """A JSON 405 for a method no route takes (http.server answered these with an HTML 501)."""
            if self._transfer_encoded():
                return
            try:
                self._read_body()  # as for GET: unread, it would be parsed as the next request
            except RequestError as exc:
                return self._error(exc.status, str(exc))
            if not self._authorised():
                return
            self._error(405, f"method {self.command} is not allowed: this server answers GET and POST", {"Allow": "GET, POST"})

        do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _not_allowed

    return Handler


class _ThreadingHTTPServer(ThreadingHTTPServer):
    """The threaded server with room for a client's burst of new connections."""

    # the listen backlog (socketserver's default is 5): a client opening its ``concurrency``
    # connections at once (the openai backend's default is 8) had the extra ones dropped by the
    # kernel, and each came back only after the 1 s TCP retransmission timeout
    request_queue_size = 128


class _ThreadingHTTPServerV6(_ThreadingHTTPServer):
    """The threaded server on an IPv6 socket (the standard one binds IPv4 only)."""

    address_family = socket.AF_INET6


def make_server(backend: Any, *, host: str = "127.0.0.1", port: int = 0, api_key: str | None = None) -> ThreadingHTTPServer:
    """A bound (not yet serving) server; ``port=0`` picks a free port (see ``server_address``).
    An IPv6 address as ``host`` (``::1``, ``::``) binds an IPv6 socket."""
    kind = _ThreadingHTTPServerV6 if ":" in host else _ThreadingHTTPServer
    server = kind((host, port), _handler(backend, api_key, loopback=is_loopback(host)))
    server.daemon_threads = True
    return server


def start_server(backend: Any, *, host: str = "127.0.0.1", port: int = 0, api_key: str | None = None) -> ThreadingHTTPServer:
    """Serve ``backend`` from a daemon thread; stop with ``server.shutdown()``."""
    server = make_server(backend, host=host, port=port, api_key=api_key)
    threading.Thread(target=server.serve_forever, name="dreamgym-hf-serve", daemon=True).start()
    return server


def load_backend(model_dir: str, *, chat_template: bool | None = None, max_length: int | None = None) -> Any:
    """The HFBackend served for ``model_dir``. Without ``max_length`` it is the model's own
    context (its config's ``n_positions`` or ``max_position_embeddings``), at most the hf
    config's default 2048; a larger ``max_length`` than the model's context is a ConfigError.
    Without ``chat_template``, prompts are formatted as the checkpoint was trained (else plain)."""
    from .backend import HFBackend, context_length, load_pretrained, resolve_chat_template
    from .config import HFConfig

    model, tokenizer = load_pretrained(model_dir)
    if max_length is None:
        default = HFConfig().max_length
        positions = context_length(model)
        max_length = min(default, positions[1]) if positions is not None else default
    chat_template = resolve_chat_template(model_dir, chat_template)
    config = HFConfig(path=model_dir, chat_template=chat_template, max_length=max_length)
    return HFBackend(config, model=model, tokenizer=tokenizer, model_id=model_dir, chat_template=chat_template)


def open_server_warning(host: str, api_key: str | None) -> str | None:
    """The one-line warning for a server that answers anyone who can reach it: bound to an
    address other than loopback (``0.0.0.0``, a LAN address) and started without an API key.
    None when it is bound to loopback or clients need a key (whose value it never names)."""
    if api_key or is_loopback(host):
        return None
    return (f"warning: serving on host {host!r} without an API key: anyone who can reach this machine can use "
            "the model; require a key with --api-key-env NAME, or bind to 127.0.0.1")


def _positive_int(text: str) -> int:
    if not (text.isascii() and text.isdigit() and int(text) > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(text)


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit() and int(text) <= 65535):  # else bind fails with an OverflowError
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0 to 65535; 0 picks a free one)")
    return int(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="dreamgym-hf-serve", description="OpenAI-compatible server for an hf model directory.")
    parser.add_argument("--model-dir", required=True, help="a directory saved by an hf backend (or any causal LM)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=_port, default=8000)
    parser.add_argument("--chat-template", action=argparse.BooleanOptionalAction, default=None,
                        help="wrap /v1/completions prompts as a user turn (default: as the checkpoint was trained, else off)")
    parser.add_argument("--api-key-env", default=None, help="env var holding the key clients must send")
    parser.add_argument("--max-length", type=_positive_int, default=None,
                        help="token cap of prompt + completion (default: the model's context, at most 2048)")
    args = parser.parse_args(argv)
    api_key = os.environ.get(args.api_key_env) if args.api_key_env else None
    if args.api_key_env and not api_key:  # serving without the asked-for key would be open to anyone
        parser.exit(2, f"error: --api-key-env {args.api_key_env}: that environment variable is unset or empty\n")
    try:
        backend = load_backend(args.model_dir, chat_template=args.chat_template, max_length=args.max_length)
    except DreamGymError as exc:
        parser.exit(2, f"error: {exc}\n")
    shown = f"[{args.host}]" if ":" in args.host else args.host
    try:
        server = make_server(backend, host=args.host, port=args.port, api_key=api_key)
    except OSError as exc:  # the port is taken or not ours to bind, the host unknown or not this machine's
        parser.exit(2, f"error: cannot listen on {shown}:{args.port}: {exc.strerror or exc}\n")
    warning = open_server_warning(args.host, api_key)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    print(f"serving {backend.model_id} on http://{shown}:{server.server_address[1]}/v1"
          f" (max_length {backend.config.max_length})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
