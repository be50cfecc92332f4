"""A real redis-server for tests: loopback only, a free port, a temp dir, no persistence.

The server can be killed, paused (SIGSTOP: it accepts connections but never
answers, like an overloaded node) and started again on the same port, so tests can
take the cache away in the middle of a run the way an outage would.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import pytest

from .components import needs, require
from .servers import free_port, stop, wait_for_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"

HAVE_REDIS = os.access(REDIS_SERVER, os.X_OK)
NO_REDIS = "redis-server is not installed (scripts/install-system-deps.sh)"
requires_redis = needs("redis-server", None if HAVE_REDIS else NO_REDIS)


@dataclass(frozen=True)
class TLSFiles:
    ca: Path  # self-signed certificate for 127.0.0.1, also the CA to trust
    key: Path


def make_tls_files(directory: Path) -> TLSFiles:
    cert, key = directory / "redis.crt", directory / "redis.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return TLSFiles(cert, key)


class RedisServer:
    def __init__(self, directory: Path, password: Optional[str] = None, tls: Optional[TLSFiles] = None):
        self.dir = directory
        self.port = free_port()
        self.password = password
        self.tls = tls
        self.proc: Optional[subprocess.Popen] = None

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        argv = [
            REDIS_SERVER, "--bind", "127.0.0.1", "--dir", str(self.dir),
            "--save", "", "--appendonly", "no", "--protected-mode", "yes",
            "--logfile", str(self.dir / "redis.log"),
        ]
        if self.password:
            argv += ["--requirepass", self.password]
        if self.tls:
            argv += [
                "--port", "0", "--tls-port", str(self.port),
                "--tls-cert-file", str(self.tls.ca), "--tls-key-file", str(self.tls.key),
                "--tls-ca-cert-file", str(self.tls.ca), "--tls-auth-clients", "no",
            ]
        else:
            argv += ["--port", str(self.port)]
        return argv

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.proc = subprocess.Popen(
            self.argv(), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True
        )
        wait_for_port(self.port, 10, self.proc)
        if not self.tls:
            self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 10
        while True:
            try:
                if self.client().ping():
                    return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL, as a crashed node: no shutdown, the port closes at once, and the
        data is gone unless snapshot() was called."""
        if self.proc is not None and self.proc.poll() is None:
            self.resume()
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def snapshot(self) -> None:
        """Write dump.rdb now; the next start() loads it, as a node restarted from a
        backup or a promoted replica comes back with the data it had."""
        self.client().save()

    def restart(self) -> None:
        self.kill()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: connections are accepted but nothing is answered."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None:
            self.resume()
            stop(self.proc)

    def client(self):
        """A plain client, for looking at keys directly."""
        import redis

        kwargs = dict(host="127.0.0.1", port=self.port, password=self.password, decode_responses=True,
                      socket_timeout=5, protocol=2)
        if self.tls:
            kwargs.update(ssl=True, ssl_ca_certs=str(self.tls.ca))
        return redis.Redis(**kwargs)


class ManualClock:
    """A cache provider's clock (its `clock=`): time passes only when the test says so,
    so cooldowns end without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def count_redis_network(monkeypatch: pytest.MonkeyPatch) -> Counter:
    """Socket connects ("connect") and commands or pipelines sent ("send") by every
    Redis connection of this process from now on (redis-py's and the descriptor
    reads' of chalicelib.cache.resp): what an outage costs, in round trips rather
    than seconds."""
    from redis.connection import AbstractConnection, Connection

    from chalicelib.cache import resp

    counts: Counter = Counter()
    connect, send = Connection._connect, AbstractConnection.send_packed_command
    read_connect, read_send = resp._connect, resp._send

    def counting_connect(self, *args, **kwargs):
        counts["connect"] += 1
        return connect(self, *args, **kwargs)

    def counting_send(self, *args, **kwargs):
        counts["send"] += 1
        return send(self, *args, **kwargs)

    monkeypatch.setattr(Connection, "_connect", counting_connect)
    monkeypatch.setattr(AbstractConnection, "send_packed_command", counting_send)
    monkeypatch.setattr(resp, "_connect", lambda *a: (counts.update(["connect"]), read_connect(*a))[1])
    monkeypatch.setattr(resp, "_send", lambda *a: (counts.update(["send"]), read_send(*a))[1])
    return counts


@contextmanager
def redis_server(
    directory: Path, password: Optional[str] = None, tls: bool = False
) -> Iterator[RedisServer]:
    directory.mkdir(parents=True, exist_ok=True)
    server = RedisServer(directory, password, make_tls_files(directory) if tls else None)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def redis_srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One server per test module (tests flush it); skips when redis-server is missing
    (fails under CI=true). Import it into a test module to use it."""
    require("redis-server", None if HAVE_REDIS else NO_REDIS)
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server
