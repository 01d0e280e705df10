"""Host names, for plugins that talk to a server: a model served over loopback is this
machine's own, which decides whether a request may leave the machine (a proxy, a key sent over
plain http, a web page's request to a local server)."""

from __future__ import annotations

import ipaddress
import socket

__all__ = ["is_loopback"]


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` (a name or an address, without port or brackets) is this machine's
    loopback: ``localhost``, a ``*.localhost`` name, or a loopback address (127.0.0.0/8, ``::1``,
    ``::ffff:127.0.0.1``, and the short forms ``127.1`` the resolver takes)."""
    host = (host or "").lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        # the short forms the resolver also takes for an IPv4 address ("127.1", "2130706433")
        if not host or not all(part.isdigit() for part in host.split(".")):
            return False
        try:
            return socket.inet_aton(host)[0] == 127
        except OSError:
            return False
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1 reaches 127.0.0.1
    return address.is_loopback or (mapped is not None and mapped.is_loopback)
