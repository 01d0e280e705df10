"""dreamgym_core.net: which host names are this machine's loopback."""

from __future__ import annotations

import pytest

from dreamgym_core.net import is_loopback


@pytest.mark.parametrize(
    "host",
    # the last three reach 127.0.0.1 too: an IPv4-mapped address and the resolver's short forms
    ["localhost", "LocalHost", "127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1", "127.1", "2130706433"],
)
def test_loopback_names_and_addresses(host):
    assert is_loopback(host)


@pytest.mark.parametrize(
    "host",
    [None, "", "example.com", "localhost.example.com", "10.0.0.1", "0.0.0.0", "::", "128.0.0.1", "::ffff:10.0.0.1", "127", "1.2.3", "127.0.0.1.nip.io"],
)
def test_other_hosts_are_not_loopback(host):
    # 0.0.0.0 and :: are "any address" for a bind, not a host that a request may name as this one
    assert not is_loopback(host)


@pytest.mark.parametrize("host", ["api.localhost", "API.LOCALHOST.", "localhost.", "LOCALHOST.", "a.b.localhost", "localhost..", "127.0.0.1.", "127.1."])
def test_names_the_resolver_may_send_to_dns_are_not_loopback(host):
    # *.localhost was counted as this machine, but glibc (nsswitch.conf: files ... dns, /etc/hosts
    # naming only localhost) asks DNS for it: the openai backend then skipped the proxy and sent
    # its API key over plain http to wherever DNS pointed. "127.0.0.1." is a name to the resolver.
    assert not is_loopback(host)
