"""A real 3-node Redis Cluster on loopback, for the tests that prove sharding across nodes.

``redis-server --cluster-enabled yes`` on three free ports, joined by ``redis-cli --cluster create``
(no replicas), each node in its own directory; stopped and removed by the fixture.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster

from tests.conftest import wait_for


class LocalRedisCluster:
    def __init__(self, directory: Path, nodes: int = 3) -> None:
        self.dir = directory
        self.ports = _cluster_ports(nodes)
        self.procs: list[subprocess.Popen] = []

    @property
    def url(self) -> str:
        """Fitstream's URL for it: any one node."""
        return f"redis+cluster://127.0.0.1:{self.ports[0]}/0"

    def start(self) -> None:
        server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if server is None or cli is None:
            pytest.fail("redis-server / redis-cli are not installed; ./dev test installs them")
        for port in self.ports:
            node_dir = self.dir / str(port)
            node_dir.mkdir(parents=True, exist_ok=True)
            self.procs.append(
                subprocess.Popen(
                    [
                        server,
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        str(node_dir / "nodes.conf"),
                        "--cluster-node-timeout",
                        "5000",
                        "--dir",
                        str(node_dir),
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        for port in self.ports:
            client = redis.Redis(port=port)
            wait_for(lambda c=client: _pings(c), timeout=10, message=f"cluster node {port}")
        created = subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *[f"127.0.0.1:{p}" for p in self.ports],
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if created.returncode != 0:
            raise AssertionError(f"redis-cli --cluster create failed: {created.stdout}\n{created.stderr}")
        for port in self.ports:
            client = redis.Redis(port=port)
            wait_for(
                lambda c=client: _state_ok(c.execute_command("CLUSTER INFO")),
                timeout=30,
                message=f"cluster state ok on {port}",
            )

    def client(self) -> RedisCluster:
        return RedisCluster(host="127.0.0.1", port=self.ports[0])

    def node_of(self, key: str) -> int:
        """The port of the node that holds ``key``."""
        client = self.client()
        try:
            return int(client.nodes_manager.get_node_from_slot(client.keyslot(key)).port)
        finally:
            client.close()

    def flush(self) -> None:
        for port in self.ports:
            redis.Redis(port=port).flushall()

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        deadline = time.monotonic() + 10
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
        self.procs.clear()


def _cluster_ports(count: int) -> list[int]:
    """Free ports whose cluster-bus port (port + 10000) is free too, below the ephemeral range."""
    import random
    import socket

    ports: list[int] = []
    candidates = list(range(20000, 30000))
    random.shuffle(candidates)
    for port in candidates:
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        ports.append(port)
        if len(ports) == count:
            return ports
    raise AssertionError("no free ports for a Redis Cluster in 20000-40000")


def _state_ok(info: object) -> bool:
    if isinstance(info, dict):  # redis-py parses CLUSTER INFO
        return info.get("cluster_state") in ("ok", b"ok")
    return b"cluster_state:ok" in (info if isinstance(info, bytes) else str(info).encode())


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
