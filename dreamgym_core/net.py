"""Host names, for plugins that talk to a server: a model served over loopback is this
machine's own, which decides whether a request may leave the machine (a proxy, a key sent over
plain http, a web page's request to a local server)."""

from __future__ import annotations

import ipaddress
import socket

__all__ = ["is_loopback"]


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` (a name or an address, without port or brackets) is this machine's
    loopback: the name ``localhost`` (any case), or a loopback address
    (127.0.0.0/8, ``::1``, ``::ffff:127.0.0.1``, and the short forms ``127.1`` the resolver takes).

    Read from the text alone, never resolved: a lookup here could wait on DNS, and the client
    looks the name up again when it connects, maybe getting another address. Other names are
    not loopback even when they look it: ``api.localhost`` (RFC 6761 asks resolvers to answer it
    with loopback, but glibc's with ``files ... dns`` in nsswitch.conf asks DNS), ``localhost.`` (a fully qualified name that
    /etc/hosts does not list, so glibc asks DNS too) or ``127.0.0.1.`` (to the resolver a name, not an address)."""
    host = (host or "").lower()
    if host == "localhost":
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
