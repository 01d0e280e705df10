"""The Ray a verl run starts for itself listens on loopback only (no network at run time).

A real local Ray is started here (about 10 s); its own processes' listening sockets are read
with psutil while it runs.
"""

from __future__ import annotations

import ipaddress

import pytest

from dreamgym_plugin_verl.trainer import start_ray

ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")


def listening_addresses() -> set[str]:
    """The addresses this process and its descendants (Ray's GCS, raylet, workers) listen on."""
    me = psutil.Process()
    addresses = set()
    for proc in [me, *me.children(recursive=True)]:
        try:
            sockets = proc.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        addresses |= {s.laddr.ip for s in sockets if s.status == psutil.CONN_LISTEN}
    return addresses


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return ip.is_loopback or (ip.version == 6 and ip.ipv4_mapped is not None and ip.ipv4_mapped.is_loopback)


def test_a_ray_of_its_own_listens_on_loopback_only(monkeypatch):
    from ray._private import ray_constants

    if ray.is_initialized():
        pytest.skip("a Ray is already running in this process")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    shared = ray_constants.ENABLE_RAY_CLUSTER
    start_ray({"num_cpus": 1, "log_to_driver": False, "namespace": "dreamgym-loopback-test"})
    try:
        addresses = listening_addresses()
        node = ray.util.get_node_ip_address()
    finally:
        ray.shutdown()
    assert addresses, "found none of Ray's listening sockets"
    assert node == "127.0.0.1"
    assert all(is_loopback(a) for a in addresses), sorted(addresses)  # before: 0.0.0.0, ::, the node's IP
    assert ray_constants.ENABLE_RAY_CLUSTER == shared  # the switch is Ray's again once the node runs


@pytest.mark.parametrize("where", ["config", "environment"])
def test_a_cluster_address_is_left_to_ray(monkeypatch, where):
    """With a cluster to join, Ray's own address resolution stands: its nodes must reach each other."""
    from ray._private import ray_constants

    seen = {}

    def stand_in_init(**kwargs):
        seen.update(kwargs, cluster=ray_constants.ENABLE_RAY_CLUSTER)

    monkeypatch.setattr(ray, "init", stand_in_init)
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", True)  # Linux's default
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    kwargs = {"num_cpus": 1}
    if where == "config":
        kwargs["address"] = "auto"
    else:
        monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    start_ray(kwargs)
    assert seen.get("address") == kwargs.get("address") and seen["cluster"] is True
