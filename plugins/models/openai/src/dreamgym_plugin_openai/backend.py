"""Async HTTP client for OpenAI-compatible servers: concurrency, timeouts, retries.

Each request has ``timeout`` seconds from sending to the answer's last byte, and an
answer may be at most :data:`MAX_RESPONSE_BYTES` long.

With ``tokenize_url`` set the backend also has ``prompt_fits`` (the optional
:class:`~dreamgym_core.protocols.LanguageModel` method), asked of the server's vLLM-style
``/tokenize``: its token count plus ``max_new_tokens`` must be within ``max_model_len``.
A tokenize request that fails for good (same retries) is counted (``tokenize_failed``) and the
prompt is taken to fit, so it is sent whole as without ``tokenize_url``; with
``on_failure="raise"`` it raises :class:`ModelCallError` instead.

Failure contract: a prompt whose request still fails after ``max_retries`` retries
(connection refused, timeout, 408/409/429, any 5xx) or fails outright (other 4xx, malformed or
over-long answer) is a *failed call*. It is counted in ``stats["failed_calls"]`` and its error
kept in ``last_errors``; ``generate`` then returns ``""`` for that prompt (the
experience model's parser turns that into a counted failed transition; the first such
``generate`` call is also a warning), or raises :class:`ModelCallError` after the whole batch
when ``on_failure="raise"``.

Retry waits: a retry waits ``backoff`` seconds, doubling each retry up to ``max_backoff``; when a
retried answer carries ``Retry-After`` (seconds or an HTTP date), it waits at least that long,
but no longer than ``max_retry_after``.

Concurrency: at most ``concurrency`` requests are in flight at once for the whole backend, also
when ``generate``/``prompt_fits`` run in several threads at once; a request waiting out its retry
backoff holds no slot.

Proxies: httpx follows ``HTTP_PROXY``/``HTTPS_PROXY``/``ALL_PROXY`` (and ``NO_PROXY``), except
for a server on this machine (``localhost``, ``127.0.0.0/8``, ``::1``, and ``0.0.0.0``/``::``,
which a server listening on every interface prints), which is always called directly: no proxy
can reach this machine for it, and the request carries the API key. When every URL is such a
server the proxy variables are not read at all; otherwise one httpx cannot use is a
:class:`~dreamgym_core.errors.ConfigError` naming the variables. A connection failure through a
proxy names the proxy (host and port) in its error.

Connections: every backend's requests run in one event loop, in a daemon thread of its own, and
each backend keeps its client (its connection pool) between calls: a new client per call opened up
to ``concurrency`` new connections every time, and a server with a small listen backlog dropped
some of them, each resent only after the 1 s TCP timeout. ``close()`` closes them (a later call
opens new ones); a backend no longer referenced has its client closed when it is collected.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import ipaddress
import json
import logging
import math
import os
import re
import threading
import urllib.parse
import urllib.request
import weakref
from datetime import datetime, timezone
from typing import Any, AsyncIterator, Callable, Coroutine, Sequence

import httpx

from dreamgym_core.errors import ConfigError, DreamGymError
from dreamgym_core.experience import utf8_safe
from dreamgym_core.net import is_loopback

from .config import OpenAIConfig

log = logging.getLogger(__name__)

__all__ = ["OpenAIBackend", "ModelCallError", "backoff_delay", "retry_delay", "retry_after_seconds", "request_seed", "cut_at_stop", "RETRY_STATUS", "MAX_RESPONSE_BYTES"]

#: HTTP statuses below 500 worth retrying (every 5xx is retried too: server-side trouble,
#: such as a proxy's 520-524 or an overloaded server's 529).
RETRY_STATUS = frozenset({408, 409, 429})

#: Longest answer body accepted, in bytes: one completion is a few KB; more is a broken server.
MAX_RESPONSE_BYTES = 8 * 2**20

# A request's seed goes as a JSON integer, which servers take as a signed 64-bit one (vLLM refuses
# any other with HTTP 400)
_SEED_MIN, _SEED_MAX = -(2**63), 2**63 - 1

# Seconds between two looks for a free request slot: the slots are a thread-safe semaphore
# (calls come from several threads), which an asyncio primitive cannot wait on
_SLOT_POLL = 0.01

# The variables httpx reads from the environment when it builds a client: proxies, CA bundle
_PROXY_ENV = tuple(f"{n}{s}" for n in ("HTTP", "HTTPS", "ALL", "NO") for s in ("_PROXY", "_proxy"))
_CA_ENV = ("SSL_CERT_FILE", "SSL_CERT_DIR")


# (url, body, answer reader (answer, url), the four stats keys: calls, succeeded, retries, failed)
_Request = tuple[str, dict[str, Any], Callable[[Any, str], Any], tuple[str, str, str, str]]
_GENERATE = ("calls", "succeeded", "retries", "failed_calls")
# answers the server ended at max_tokens (finish_reason "length"): returned, but cut short
_TRUNCATED = "truncated"
_TOKENIZE = ("tokenize_calls", "tokenize_succeeded", "tokenize_retries", "tokenize_failed")


class ModelCallError(DreamGymError):
    """Requests to a model server failed after their retries."""


class _Failed(Exception):
    """One request's final failure (internal); ``retry`` says whether retrying may help, and
    ``wait`` the seconds the server asked to wait before it (its ``Retry-After``), if any."""

    def __init__(self, message: str, *, retry: bool, wait: float | None = None) -> None:
        super().__init__(message)
        self.retry = retry
        self.wait = wait


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Delay before retry number ``attempt`` (0-based): exponential, capped."""
    return min(cap, base * 2.0 ** min(attempt, 1023))  # 2.0**1024 raises OverflowError


def retry_delay(attempt: int, requested: float | None, config: OpenAIConfig) -> float:
    """Seconds before retry number ``attempt``: the backoff, or the server's ``Retry-After``
    (``requested``) when longer, that one capped at ``max_retry_after``."""
    delay = backoff_delay(attempt, config.backoff, config.max_backoff)
    return delay if requested is None else max(delay, min(requested, config.max_retry_after))


def request_seed(seed: int, index: int) -> int:
    """The seed sent with request ``index`` of a batch: ``seed + index``, or, only where that
    leaves the signed 64-bit range a server takes, ``(seed + index) % 2**63``. The experience
    model's call seeds are 63-bit hashes, so the last requests of a batch could pass 2**63 - 1 and
    be refused; every seed a server accepted before is sent unchanged."""
    value = seed + index
    return value if _SEED_MIN <= value <= _SEED_MAX else value % 2**63


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """Seconds a ``Retry-After`` header value asks to wait from ``now`` (an aware datetime):
    delta-seconds or an HTTP date; None for no header, anything unparsable, or a negative wait
    (a date already past is 0)."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:  # "-0000": UTC by RFC 5322
            when = when.replace(tzinfo=timezone.utc)
        return max(0.0, (when - now).total_seconds())
    # float() also takes "nan", "inf", "-1", "1e3" and "1_000": a wait to trust is plain digits
    return seconds if re.fullmatch(r"[0-9]+(\.[0-9]+)?", value) else None


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` before the earliest stop string (servers differ on whether they cut)."""
    hits = [text.find(s) for s in stop if s and s in text]
    return text[: min(hits)] if hits else text


def is_local(host: str | None) -> bool:
    """Whether connecting to ``host`` reaches this machine: a loopback name or address, or the
    unspecified address ``0.0.0.0``/``::`` that a server listening on every interface prints
    (``core.net.is_loopback`` is about binding, where those two mean every interface)."""
    try:
        unspecified = ipaddress.ip_address(host or "").is_unspecified
    except ValueError:
        unspecified = False
    return unspecified or is_loopback(host)


def env_proxy(url: str) -> str | None:
    """``host:port`` of the proxy the environment sends ``url`` through (the variables httpx
    reads), or None: none set, ``NO_PROXY`` exempts it, or it is a local URL."""
    target = httpx.URL(url)
    if is_local(target.host):
        return None
    proxies = urllib.request.getproxies()
    proxy = proxies.get(target.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass(target.host):
        return None
    try:
        found = httpx.URL(proxy if "://" in proxy else f"http://{proxy}")
    except httpx.InvalidURL:
        return "from the environment"
    return f"{found.host}:{found.port}" if found.port else found.host  # never its user:password


# The event loop all requests run in (see the module doc), started at the first call
_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()


# Every backend made in this process, so that a forked child can renew their locks
_backends: weakref.WeakSet[OpenAIBackend] = weakref.WeakSet()


def _forget_loop() -> None:
    """In a forked child: the loop's thread did not come along, so the next call starts another.
    The backends' slots and stats lock come along as the fork found them: a request in flight in
    the parent held a slot no thread of the child would release, and the child's calls waited
    for it forever (the timeout counts only once a request has a slot)."""
    global _loop, _loop_lock
    _loop, _loop_lock = None, threading.Lock()  # the lock may have been held by a thread left behind
    for backend in list(_backends):
        backend._slots = threading.BoundedSemaphore(backend.config.concurrency)
        backend._stats_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_loop)


def _requests_loop() -> asyncio.AbstractEventLoop:
    global _loop
    with _loop_lock:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, name="dreamgym-openai-requests", daemon=True).start()
        return _loop


def _run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine to completion in the requests' loop: from any thread, also from code
    already inside an event loop (which waits for it, as for any blocking call)."""
    future = asyncio.run_coroutine_threadsafe(coro, _requests_loop())
    try:
        return future.result()
    except BaseException:
        future.cancel()  # interrupted (Ctrl-C): its requests stop too; a no-op once it is done
        raise


def _running_in(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


class _Pool:
    """A backend's kept client and the loop it is bound to; closed apart from the backend, so
    that collecting the backend can close it."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.client: httpx.AsyncClient | None = None

    def get(self, make: Callable[[], httpx.AsyncClient]) -> httpx.AsyncClient:
        """The client, built by ``make`` at the first call in this loop (only the requests' loop
        runs this: no lock; a forked child's new loop builds its own)."""
        loop = asyncio.get_running_loop()
        if self.client is None or self.loop is not loop:
            self.loop, self.client = loop, make()
        return self.client

    def close(self, *, wait: bool) -> None:
        """Close the client in its loop; ``wait`` for it unless called in that loop's thread
        (a collection there would wait for itself)."""
        loop, client = self.loop, self.client
        self.loop = self.client = None
        if client is None or loop is not _loop:  # never built, or a forked child's copy of its parent's
            return
        future = asyncio.run_coroutine_threadsafe(client.aclose(), loop)
        if wait and not _running_in(loop):
            with contextlib.suppress(Exception):  # closing sockets of a server already gone
                future.result(timeout=10)


class OpenAIBackend:
    """A :class:`~dreamgym_core.protocols.LanguageModel` served over HTTP."""

    def __init__(self, config: OpenAIConfig) -> None:
        self.config = config
        self.model_id = f"openai:{config.model}"
        # never logged or shown; a key file's trailing newline is no part of the key
        self._api_key = os.environ.get(config.api_key_env, "").strip() or None
        if self._api_key and not (self._api_key.isascii() and self._api_key.isprintable()):
            raise ConfigError(f"openai: ${config.api_key_env} holds characters an HTTP header cannot carry (not printable ASCII)")
        if self._api_key:
            for url in dict.fromkeys(u for u in (config.base_url, config.tokenize_url) if u is not None):
                target = httpx.URL(url)
                if target.scheme == "http" and not is_local(target.host):
                    # anyone on the network path reads the Authorization header
                    log.warning("openai: the API key in $%s is sent to %s unencrypted (http://); use https:// "
                                "or reach the server over a network only the cluster shares", config.api_key_env, url)
        self.stats: dict[str, int] = dict.fromkeys((*_GENERATE, _TRUNCATED), 0)
        self.last_errors: list[str] = []
        self._stats_lock = threading.Lock()  # generate() may run in several threads at once
        self._warned: set[str] = set()  # the kinds of failure already warned about
        # concurrency counts for the whole backend, also across calls from several threads
        self._slots = threading.BoundedSemaphore(config.concurrency)
        _backends.add(self)
        self._pool = _Pool()
        # a backend dropped without close(): its connections (a server thread each) go with it
        weakref.finalize(self, self._pool.close, wait=False).atexit = False
        if config.tokenize_url is not None:
            # an optional protocol method: callers test for it, so it exists only when it can answer
            self.prompt_fits = self._prompt_fits
            self.stats.update(dict.fromkeys(_TOKENIZE, 0))

    def _count(self, key: str) -> None:
        with self._stats_lock:
            self.stats[key] += 1

    def _first(self, kind: str) -> bool:
        """Whether this is the first failure of ``kind`` to warn about (tested and set under the
        lock: failing calls from several threads would otherwise each, or none, warn)."""
        with self._stats_lock:
            first = kind not in self._warned
            self._warned.add(kind)
        return first

    def close(self) -> None:
        """Close the connections kept between calls (call it once no call is running; a later
        call opens new ones)."""
        self._pool.close(wait=True)

    def __repr__(self) -> str:
        return f"OpenAIBackend(base_url={self.config.base_url!r}, model={self.config.model!r})"

    def _redact(self, text: str) -> str:
        """``text`` without the API key: a server or proxy may echo the Authorization header,
        also JSON-escaped in an error body (a key holding ``"`` or ``\\``)."""
        if not self._api_key:
            return text
        for form in dict.fromkeys((self._api_key, json.dumps(self._api_key)[1:-1])):
            text = text.replace(form, "[redacted]")
        return text

    def _one_line(self, text: str, limit: int = 200) -> str:
        """``text`` redacted, cut to ``limit`` characters and on one line (any line break, CR or U+2028)."""
        return " ".join(self._redact(text)[:limit].split())  # redact first: a cut may split the key

    # --- requests ----------------------------------------------------------------

    def _payload(self, prompt: str, max_new_tokens: int, temperature: float, stop: Sequence[str], seed: int | None) -> dict[str, Any]:
        # a lone surrogate (JSON data can hold one) is not UTF-8: httpx raised on it and the whole batch was lost
        prompt, stop = utf8_safe(prompt), [utf8_safe(s) for s in stop]
        body: dict[str, Any] = {"model": self.config.model, "max_tokens": max_new_tokens, "temperature": temperature}
        if self.config.endpoint == "chat":
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        if stop:
            body["stop"] = list(stop)
        if seed is not None:
            body["seed"] = seed
        return body

    def _tokenize_payload(self, prompt: str) -> dict[str, Any]:
        prompt = utf8_safe(prompt)
        if self.config.endpoint == "chat":  # counted with the chat template, as the chat endpoint applies it
            return {"model": self.config.model, "messages": [{"role": "user", "content": prompt}], "add_generation_prompt": True}
        return {"model": self.config.model, "prompt": prompt}

    def _token_count(self, answer: Any, url: str) -> tuple[int, int]:
        """(count, max_model_len) of a /tokenize answer from ``url``."""
        try:
            count, limit = answer["count"], answer["max_model_len"]
        except (KeyError, TypeError) as exc:
            if (error := self._error_message(answer)) is not None:
                raise _Failed(f"error answer from {url} (HTTP 200): {error}", retry=False) from exc
            raise _Failed(f"malformed tokenize answer from {url} (no count and max_model_len): {exc!r}", retry=False) from exc
        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in (count, limit)):
            raise _Failed(f"malformed tokenize answer from {url}: count and max_model_len must be non-negative integers",
                          retry=False)
        return count, limit

    def _text(self, answer: Any, url: str) -> str:
        """The completion text of an answer from ``url``."""
        chat = self.config.endpoint == "chat"
        try:
            choice = answer["choices"][0]
            text = choice["message"]["content"] if chat else choice["text"]
        except (KeyError, IndexError, TypeError) as exc:
            if (error := self._error_message(answer)) is not None:
                raise _Failed(f"error answer from {url} (HTTP 200): {error}", retry=False) from exc
            raise _Failed(f"malformed answer from {url} (no choices[0] text): {exc!r}", retry=False) from exc
        if not isinstance(text, str):
            # null: e.g. vLLM's reasoning parser when max_tokens ends inside the reasoning
            field = "choices[0].message.content" if chat else "choices[0].text"
            what = "null" if text is None else f"a JSON {type(text).__name__}, not a string,"
            finish = repr(choice.get("finish_reason"))[:80]  # the server's: kept short, repr keeps it on one line
            raise _Failed(f"{field} is {what} (finish_reason={finish}) from {url}", retry=False)
        if isinstance(choice, dict) and choice.get("finish_reason") == "length":
            self._count(_TRUNCATED)  # max_new_tokens ran out: an answer without its end
        return utf8_safe(text)  # JSON can escape a lone surrogate ("\ud800"), which UTF-8 cannot hold

    def _error_message(self, answer: Any) -> str | None:
        """The server's own message in an ``{"error": ...}`` answer (some servers send it with
        status 200), redacted and on one line; None for any other answer."""
        if not isinstance(answer, dict) or "error" not in answer:
            return None
        error = answer["error"]
        message = error.get("message") if isinstance(error, dict) else error
        if not isinstance(message, str):
            message = json.dumps(error, ensure_ascii=False, default=str)
        return self._one_line(message) or "(no message)"

    def _completion_url(self) -> str:
        return self._url("/chat/completions" if self.config.endpoint == "chat" else "/completions")

    def _url(self, path: str) -> str:
        """``path`` under the base URL, before its query (``...?api-version=...`` stays a query)."""
        parts = urllib.parse.urlsplit(self.config.base_url)
        return urllib.parse.urlunsplit(parts._replace(path=parts.path.rstrip("/") + path))

    async def _post(self, client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> Any:
        """The JSON answer of one request to ``url``; :class:`_Failed` says whether to retry."""
        try:
            # httpx's timeout bounds each read; a server trickling bytes would never hit it
            status, raw, retry_after = await asyncio.wait_for(self._exchange(client, url, body), self.config.timeout)
        except asyncio.TimeoutError as exc:
            raise _Failed(f"Timeout: no whole answer from {url} in {self.config.timeout:g} s", retry=True) from exc
        except httpx.TransportError as exc:  # refused, reset, timeouts
            proxy = env_proxy(url)
            through = f" through the proxy {proxy} (HTTP_PROXY/HTTPS_PROXY/ALL_PROXY)" if proxy else ""
            cause = self._one_line(str(exc))  # refused, a name not found, a TLS failure: each has its own fix
            raise _Failed(f"{type(exc).__name__} calling {url}{through}" + (f": {cause}" if cause else ""), retry=True) from exc
        except httpx.DecodingError as exc:  # a body its Content-Encoding does not decode
            raise _Failed(f"answer from {url} does not decode: {exc}", retry=False) from exc
        if status == 401:
            env = self.config.api_key_env
            hint = f"check the key in ${env}" if self._api_key else f"no key was sent: ${env} is unset or empty"
            raise _Failed(f"HTTP 401 from {url}: {hint}", retry=False)
        if status != 200:
            detail = self._one_line(raw.decode("utf-8", errors="replace"))
            retry = status in RETRY_STATUS or status >= 500
            wait = retry_after_seconds(retry_after, datetime.now(timezone.utc)) if retry else None
            raise _Failed(f"HTTP {status} from {url}: {detail}", retry=retry, wait=wait)
        try:
            return json.loads(raw)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError included; RecursionError: nested too deep
            raise _Failed(f"answer from {url} is not JSON", retry=False) from exc

    async def _exchange(self, client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> tuple[int, bytes, str | None]:
        """Status, body and ``Retry-After`` header of one request, reading no more than MAX_RESPONSE_BYTES."""
        async with client.stream("POST", url, json=body) as response:
            chunks, size = [], 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > MAX_RESPONSE_BYTES:
                    raise _Failed(f"answer from {url} is larger than {MAX_RESPONSE_BYTES} bytes", retry=False)
                chunks.append(chunk)
            return response.status_code, b"".join(chunks), response.headers.get("Retry-After")

    @contextlib.asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        """One of the backend's ``concurrency`` request slots, shared with other threads' calls.
        Waited for by polling: a blocking wait would stall this event loop, and one in a worker
        thread would go on to take the slot, never to be released, were the call cancelled."""
        while not self._slots.acquire(blocking=False):
            await asyncio.sleep(_SLOT_POLL)
        try:
            yield
        finally:
            self._slots.release()

    async def _call(self, client: httpx.AsyncClient, gate: asyncio.Semaphore, request: _Request, errors: list[str]) -> Any:
        """One request with retries and backoff; None (its error added to ``errors``) once it has failed for good."""
        url, body, read, counts = request
        self._count(counts[0])
        for attempt in range(self.config.max_retries + 1):
            try:
                # gate: at most concurrency of this call's requests poll for a slot at once
                async with gate, self._slot():
                    result = read(await self._post(client, url, body), url)
                self._count(counts[1])
                return result
            except _Failed as exc:
                error = exc
                if not exc.retry or attempt == self.config.max_retries:
                    break
            self._count(counts[2])
            # outside the slot: other requests go meanwhile
            await asyncio.sleep(retry_delay(attempt, error.wait, self.config))
        self._count(counts[3])
        errors.append(self._redact(str(error)))
        return None

    def _direct_mounts(self, limits: httpx.Limits) -> dict[str, httpx.AsyncBaseTransport]:
        """A proxy-less transport for each local host configured: httpx would send those
        through an environment proxy too (with the Authorization header). A plain http one
        reads no CA bundle from the environment either: a stale ``SSL_CERT_FILE`` stopped calls
        that use no TLS."""
        targets = {httpx.URL(u) for u in (self.config.base_url, self.config.tokenize_url) if u is not None}
        hosts = {(t.scheme, t.host) for t in targets if is_local(t.host)}
        return {
            f"{scheme}://[{h}]" if ":" in h else f"{scheme}://{h}":
                httpx.AsyncHTTPTransport(limits=limits, trust_env=scheme != "http")
            for scheme, h in sorted(hosts)
        }

    def _client(self) -> httpx.AsyncClient:
        """A new client (kept between calls: see :class:`_Pool`); a proxy (or CA bundle) from the
        environment that httpx cannot use is a :class:`ConfigError` naming the variables set, not a
        raw ImportError or ValueError."""
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        limits = httpx.Limits(max_connections=self.config.concurrency)
        # every URL on this machine: no proxy applies, so an unusable one must not stop the calls
        local = all(is_local(httpx.URL(u).host) for u in (self.config.base_url, self.config.tokenize_url) if u is not None)
        try:
            return httpx.AsyncClient(headers=headers, timeout=self.config.timeout, limits=limits,
                                     mounts=self._direct_mounts(limits), trust_env=not local)
        except (ImportError, ValueError, OSError, httpx.InvalidURL) as exc:  # no socksio, a bad port or scheme, no CA file
            names = ", ".join(n for n in (_CA_ENV if isinstance(exc, OSError) else _PROXY_ENV) if os.environ.get(n)) or "none set"
            cause = re.sub(r"//[^/\s]*@", "//***@", self._one_line(str(exc)))  # never a proxy's user or password
            raise ConfigError(
                f"openai: cannot build the HTTP client from the environment ({names}): {type(exc).__name__}: {cause}"
            ) from exc

    async def _gather(self, requests: list[_Request], errors: list[str]) -> list[Any]:
        gate = asyncio.Semaphore(self.config.concurrency)
        client = self._pool.get(self._client)
        return await asyncio.gather(*(self._call(client, gate, r, errors) for r in requests))

    # --- LanguageModel -------------------------------------------------------------

    def generate(
        self,
        *,
        prompts: Sequence[str],
        max_new_tokens: int,
        temperature: float = 1.0,
        stop: Sequence[str] = (),
        seed: int | None = None,
    ) -> list[str]:
        """Completions for ``prompts`` (request ``i`` gets seed ``seed + i``, so equal
        prompts in a batch still sample independently; see :func:`request_seed`). Failed calls:
        see the module doc."""
        if not math.isfinite(temperature):  # httpx refuses it as JSON, mid-batch, with its calls counted
            raise ConfigError(f"openai: temperature={temperature} must be a finite number")
        errors: list[str] = []  # this call's own: another thread's call may be running too
        url = self._completion_url()
        requests = [
            (url, self._payload(p, max_new_tokens, temperature, stop, None if seed is None else request_seed(seed, i)), self._text, _GENERATE)
            for i, p in enumerate(prompts)
        ]
        results = _run(self._gather(requests, errors)) if requests else []
        self.last_errors = errors
        failed = sum(r is None for r in results)
        if failed and self.config.on_failure == "raise":
            raise ModelCallError(f"openai: {failed} of {len(results)} calls failed; first: {errors[0]}")
        if failed and self._first("generate"):  # the first: later ones are only counted
            log.warning("openai: %d of %d calls failed and return ''; first: %s (further failed calls are only"
                        " counted: stats['failed_calls'])", failed, len(results), errors[0])
        return [cut_at_stop(r, stop) if r is not None else "" for r in results]

    def _prompt_fits(self, prompt: str, *, max_new_tokens: int) -> bool:
        """Whether the server's context holds ``prompt`` and ``max_new_tokens`` more (bound as
        ``prompt_fits`` when ``tokenize_url`` is set). Failures: see the module doc."""
        errors: list[str] = []
        request = (self.config.tokenize_url, self._tokenize_payload(prompt), self._token_count, _TOKENIZE)
        (answer,) = _run(self._gather([request], errors))
        if answer is None:
            if self.config.on_failure == "raise":
                raise ModelCallError(f"openai: the tokenize request failed: {errors[0]}")
            if self._first("tokenize"):  # the first: later ones are only counted
                log.warning("openai: %s; the prompt is sent whole (further tokenize failures are only counted)", errors[0])
            return True
        count, limit = answer
        return count + max_new_tokens <= limit
