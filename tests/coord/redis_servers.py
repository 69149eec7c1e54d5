"""Private ``redis-server`` / ``redis-sentinel`` processes for tests, on free loopback ports.

Never the machine's own Redis (often on 6379): every server here is started
by the test, without persistence, in a temporary directory, and killed after.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from tests.conftest import free_port, require_binary


def require_redis(name: str) -> str:
    """``redis-server`` or ``redis-sentinel`` (a failure in CI, else a skip, when missing)."""
    return require_binary(name, "apt-get install -y redis-server redis-sentinel")


def command(port: int, *args: str, timeout: float = 1.0) -> str:
    """Send one inline command with a plain socket; the first reply line."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall((" ".join(args) + "\r\n").encode())
        return sock.makefile("rb").readline().decode(errors="replace").strip()


def wait_for_ping(port: int, process: subprocess.Popen[bytes], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"redis on port {port} exited with {process.returncode}")
        with contextlib.suppress(OSError):
            if command(port, "PING", timeout=0.5) == "+PONG":
                return
        time.sleep(0.02)
    raise RuntimeError(f"redis on port {port} did not answer PING within {within} s")


class RedisProcess:
    """One private server (or sentinel) that can be stopped and started again on its port."""

    def __init__(self, binary: str, args: Sequence[str] = (), *, sentinel_conf: str = "") -> None:
        self.binary = binary
        self.args = list(args)
        self.sentinel_conf = sentinel_conf
        self.dir = Path(tempfile.mkdtemp(prefix="te-redis-"))
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisProcess:
        """Start on a free port (the first time) or on the same port again."""
        for attempt in range(5):
            port = self.port or free_port()
            if self.sentinel_conf:
                conf = self.dir / "sentinel.conf"
                conf.write_text(f"port {port}\nbind 127.0.0.1\n{self.sentinel_conf}")
                argv = [self.binary, str(conf), "--sentinel"]
            else:
                argv = [self.binary, "--port", str(port), "--bind", "127.0.0.1"]
                argv += ["--save", "", "--appendonly", "no", "--dir", str(self.dir)]
            argv += self.args
            self.process = subprocess.Popen(
                argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.dir
            )
            try:
                wait_for_ping(port, self.process)
            except RuntimeError:
                self.kill()
                if self.port or attempt == 4:  # a fixed port must work; else try another
                    raise
                continue
            self.port = port
            return self
        raise AssertionError("unreachable")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no goodbye to clients (a crash)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
        self.process = None

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def redis_server(*args: str) -> Iterator[RedisProcess]:
    server = RedisProcess(require_redis("redis-server"), args).start()
    try:
        yield server
    finally:
        server.close()


@contextlib.contextmanager
def sentinel_topology(
    service: str = "edge", *, down_after_ms: int = 500
) -> Iterator[tuple[RedisProcess, RedisProcess, list[RedisProcess]]]:
    """One primary, one replica, three sentinels (quorum 2), all local.

    Yields once the replica is in sync and every sentinel knows the replica
    and the other sentinels, so a failover can proceed.
    """
    server_bin = require_redis("redis-server")
    sentinel_bin = require_redis("redis-sentinel")
    processes: list[RedisProcess] = []
    try:
        primary = RedisProcess(server_bin).start()
        processes.append(primary)
        replica = RedisProcess(server_bin, ["--replicaof", "127.0.0.1", str(primary.port)])
        processes.append(replica.start())
        conf = (
            f"sentinel monitor {service} 127.0.0.1 {primary.port} 2\n"
            f"sentinel down-after-milliseconds {service} {down_after_ms}\n"
            f"sentinel failover-timeout {service} 5000\n"
            f"sentinel parallel-syncs {service} 1\n"
        )
        sentinels = []
        for _ in range(3):
            sentinel = RedisProcess(sentinel_bin, sentinel_conf=conf).start()
            processes.append(sentinel)
            sentinels.append(sentinel)
        _wait(lambda: "master_link_status:up" in _info(replica.port, "replication"))
        for sentinel in sentinels:
            _wait(lambda s=sentinel: _sentinel_ready(s.port, service))
        yield primary, replica, sentinels
    finally:
        for process in processes:
            process.close()


def _info(port: int, section: str) -> str:
    return _bulk(port, "INFO", section)


def _sentinel_ready(port: int, service: str) -> bool:
    text = _info(port, "sentinel")
    return f"name={service},status=ok" in text and "slaves=1,sentinels=3" in text


def _wait(predicate: Callable[[], bool], within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if predicate():
                return
        time.sleep(0.05)
    raise RuntimeError("redis topology did not settle in time")


@contextlib.contextmanager
def cluster_node() -> Iterator[RedisProcess]:
    """A one-node Redis Cluster owning every slot.

    Such a node refuses (``CROSSSLOT``) any command, ``MULTI`` or script whose
    keys span two hash slots, exactly as a real cluster does, so the contract
    suite run against it proves every step is single-slot.
    """
    server = RedisProcess(
        require_redis("redis-server"),
        ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"],
    ).start()
    try:
        assert command(server.port, "CLUSTER", "ADDSLOTSRANGE", "0", "16383") == "+OK"
        _wait(lambda: "cluster_state:ok" in _bulk(server.port, "CLUSTER", "INFO"))
        yield server
    finally:
        server.close()


def _bulk(port: int, *args: str) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
        sock.sendall((" ".join(args) + "\r\n").encode())
        reply = sock.makefile("rb")
        length = int(reply.readline()[1:])  # a bulk string: $<length>
        return reply.read(length).decode(errors="replace")
