"""The session's Ray instance talks over the loopback only, and a node's bundled-model server is
started once and shared."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest
from ray_helpers import ray_cluster_fixture  # noqa: F401

from pullsmith.config import load_settings


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def socket_inodes(pids: list[int]) -> set[str]:
    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
        except OSError:
            continue
    return inodes


def _address(text: str, v6: bool) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    raw = bytes.fromhex(text)
    if v6:  # four little-endian 32-bit words; an IPv4-mapped one is its IPv4 address
        address = ipaddress.IPv6Address(b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4)))
        return address.ipv4_mapped or address
    return ipaddress.IPv4Address(raw[::-1])


def inet_sockets(inodes: set[str]) -> list[tuple[str, str, str, str]]:
    """(protocol, local address, remote address, state) of the sockets with these inodes."""
    found = []
    for name in ("tcp", "tcp6", "udp", "udp6"):
        for line in Path(f"/proc/net/{name}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] not in inodes:
                continue
            v6 = name.endswith("6")
            local, remote = (_address(f.split(":")[0], v6) for f in fields[1:3])
            found.append((name, str(local), str(remote), fields[3]))
    return found


def test_ray_uses_the_loopback_only(ray_cluster):
    import ray

    @ray.remote(num_cpus=1)
    def touch() -> int:
        return os.getpid()

    assert ray.get(touch.remote()) > 0
    pids = [os.getpid(), *descendants(os.getpid())]
    sockets = inet_sockets(socket_inodes(pids))
    assert sockets, "found none of Ray's sockets"
    outside = []
    for proto, local, remote, state in sockets:
        remote_ip = ipaddress.ip_address(remote)
        local_ip = ipaddress.ip_address(local)
        # A listening socket has no peer; a connected one must have a loopback peer.
        if not remote_ip.is_unspecified and not remote_ip.is_loopback:
            outside.append((proto, local, remote, state))
        elif not (local_ip.is_loopback or local_ip.is_unspecified):
            outside.append((proto, local, remote, state))
    assert not outside, outside


def test_a_nodes_bundled_model_server_is_started_once_and_shared(ray_cluster, tmp_path):
    pytest.importorskip("xllamacpp", reason="the bundled model is not installed")
    from pullsmith.models.local import model_path, probe_health

    if not model_path().is_file():
        pytest.skip("the bundled model is not assembled here")
    import ray

    from pullsmith.ray_executor import NAMESPACE, node_model_url

    settings = load_settings({"sandbox": "none", "threads": 1, "n_ctx": 1024}, cwd=tmp_path)
    assert settings.uses_local_model

    @ray.remote(num_cpus=1)
    def url_of_this_node() -> tuple[str, str]:
        import ray as worker_ray

        return node_model_url(settings, worker_ray), worker_ray.get_runtime_context().get_node_id()

    try:
        (first, node), (second, again) = ray.get(
            [url_of_this_node.remote(), url_of_this_node.remote()]
        )
        assert node == again and first == second and first.startswith("http://127.0.0.1:")
        assert probe_health(first.removesuffix("/v1"))
        actors = [
            a
            for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith("model-server-")
        ]
        assert actors == [{"name": f"model-server-{node}", "namespace": NAMESPACE}]
    finally:
        with_actor = ray.get_actor(f"model-server-{node}", namespace=NAMESPACE)
        ray.get(with_actor.stop.remote())
        ray.kill(with_actor)
