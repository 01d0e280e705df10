"""Config of the OpenAI-compatible backend (every field defaulted, documented once)."""

from __future__ import annotations

import re
from typing import Annotated, Literal

import httpx
from msgspec import Meta

from dreamgym_core.config import Config, NonNegativeInt, PositiveFloat, PositiveInt

__all__ = ["OpenAIConfig"]


class OpenAIConfig(Config):
    """A server speaking the OpenAI HTTP API; one request per prompt, run concurrently."""

    base_url: Annotated[str, Meta(description="API root including /v1, e.g. http://127.0.0.1:8000/v1.")] = (
        "http://127.0.0.1:8000/v1"
    )
    model: Annotated[str, Meta(description="Model name sent with each request.")] = "default"
    api_key_env: Annotated[
        str, Meta(description="Name of the environment variable holding the API key (unset: no auth header).")
    ] = "OPENAI_API_KEY"
    endpoint: Annotated[
        Literal["completions", "chat"],
        Meta(description="completions: raw prompt to /completions; chat: prompt as one user message."),
    ] = "completions"
    timeout: Annotated[
        PositiveFloat, Meta(description="Seconds allowed per HTTP request, from sending it to the answer's last byte.")
    ] = 60.0
    max_retries: Annotated[
        NonNegativeInt, Meta(description="Retries per prompt after a connection error, timeout, 408, 409, 429 or any 5xx.")
    ] = 3
    backoff: Annotated[PositiveFloat, Meta(description="First retry delay in seconds; doubles each retry.")] = 0.5
    max_backoff: Annotated[PositiveFloat, Meta(description="Cap of one retry delay in seconds.")] = 8.0
    max_retry_after: Annotated[
        PositiveFloat,
        Meta(description="The longest server-requested Retry-After wait honoured, in seconds; a longer request waits"
             " this long."),
    ] = 60.0
    concurrency: Annotated[PositiveInt, Meta(description="Requests in flight at once.")] = 8
    tokenize_url: Annotated[
        str | None,
        Meta(description="vLLM-style POST /tokenize URL, e.g. http://127.0.0.1:8000/tokenize (unset: prompts go whole,"
             " and a server cuts or refuses one over its context). Set: a caller such as the experience model"
             " shortens such a prompt itself."),
    ] = None
    on_failure: Annotated[
        Literal["empty", "raise"],
        Meta(description="After retries run out: return '' for that prompt (counted in stats) or raise ModelCallError."),
    ] = "empty"

    def __post_init__(self) -> None:
        super().__post_init__()
        # a typo here would otherwise fail every call at run time, each one retried first
        _check_url("base_url", self.base_url)
        if self.tokenize_url is not None:
            _check_url("tokenize_url", self.tokenize_url)
        if self.api_key_env and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.api_key_env):
            # the key pasted in by mistake would be printed by config show, stored in config.json
            # and named in errors: so its value is not repeated here either
            raise ValueError(
                "api_key_env must name an environment variable (letters, digits and _), not hold the key itself "
                "(its value is not shown); put the key in that variable"
            )


# Query parameter names that carry a credential (``?key=``, ``?api_key=``, ``?access_token=``,
# ``?sig=``, ``?authorization=``, ``?jwt=``); ``api-version`` and the like pass.
_CREDENTIAL_WORDS = (
    "key", "token", "secret", "password", "passwd", "pwd", "sig", "signature", "auth", "authorization", "bearer",
    "jwt", "credential", "credentials",
)


def credential_parameter(name: str) -> bool:
    """Whether a URL query parameter of this name holds a credential: one of its words
    (split at ``-``, ``_`` and ``.``) is a credential word, or the whole name ends in one
    (``apikey``)."""
    lowered = name.lower()
    words = lowered.replace("-", "_").replace(".", "_").split("_")
    return any(word in _CREDENTIAL_WORDS for word in words) or lowered.endswith(("key", "token", "secret"))


def _shown(value: str, *, userinfo: bool = False) -> str:
    """``value`` as an error may show it: ``scheme://host`` alone (``***@`` before the host for
    a URL holding a user name or password). Its path, query and fragment may hold a credential,
    and a password may hold a ``/`` (``user:pa/ss@host``): the host is what follows the last ``@``."""
    scheme, sep, rest = value.partition("://")
    authority = re.split(r"[/?#]", re.split(r"[?#]", rest if sep else value, maxsplit=1)[0].rsplit("@", 1)[-1], maxsplit=1)[0]
    host = re.sub(r":[^:\]]*$", "", authority)  # without its port; an IPv6 host keeps its brackets
    host = f"***@{host}" if userinfo else host
    return f"{scheme}://{host}" if sep else host


def _check_url(field: str, value: str) -> None:
    if any(c.isspace() or not c.isprintable() for c in value):
        # httpx takes "127.0.0.1 " as a host name: every call then failed its DNS lookup, each retried first
        raise ValueError(f"{field} holds a space, line break or other control character; a URL has none")
    if "@" in re.split(r"[?#]", value, maxsplit=1)[0]:
        # a user name or password: kept in the run's config.json and shown in every error naming the
        # URL; with a "/" in it ("user:12345/678@host") httpx takes "user" as the host and sends it there
        raise ValueError(
            f"{field} {_shown(value, userinfo=True)!r} holds '@' (a user name or password?); give the API key through "
            "api_key_env (an environment variable) instead"
        )
    shown = _shown(value)  # its path and query may hold a credential even where httpx cannot tell
    try:
        url = httpx.URL(value)
        port = url.port
    except httpx.InvalidURL as exc:
        # httpx's reason without the part it quotes ("Invalid port: 'p'"): that may be a password's start
        raise ValueError(f"{field} {shown!r} is not a URL ({str(exc).split(':', 1)[0]})") from exc
    credentials = sorted({name for name in url.params if credential_parameter(name)})
    if credentials:
        # the same leak as a password in the authority (config.json, error lines); the
        # parameter is named, its value never shown
        raise ValueError(
            f"{field} {shown!r} carries a credential in its query ({', '.join(credentials)}); give the API key "
            "through api_key_env (an environment variable) instead"
        )
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"{field} {shown!r} must start http:// or https:// and name a host")
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"{field} {shown!r}: port {port} is not in 1-65535")
