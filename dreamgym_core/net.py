"""Host names, for plugins that talk to a server: a model served over loopback is this
machine's own, which decides whether a request may leave the machine (a proxy, a key sent over
plain http, a web page's request to a local server)."""

from __future__ import annotations

import ipaddress

__all__ = ["is_loopback"]


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` (a name or an address, without port or brackets) is this machine's
    loopback: ``localhost``, a ``*.localhost`` name, or a loopback address (127.0.0.0/8, ``::1``)."""
    host = (host or "").lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
