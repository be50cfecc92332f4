"""The descriptor reads' own Redis client (chalicelib.cache.resp) against a real redis-server."""
from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator

import pytest
import redis

from chalicelib import keepalive
from chalicelib.cache import resp

from .redis_server import RedisServer, count_redis_network, redis_server, requires_redis
from .servers import free_port

pytestmark = requires_redis
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path / "redis") as srv:
        yield srv


def reader(port: int, **kwargs) -> resp.ReadClient:
    kwargs.setdefault("connect_timeout", 2.0)
    kwargs.setdefault("read_timeout", 2.0)
    kwargs.setdefault("write_timeout", 2.0)
    return resp.ReadClient(kwargs.pop("host", "127.0.0.1"), port, **kwargs)


def test_replies_are_decoded_in_order(server):
    admin = server.client()
    admin.hset("h", mapping={"digest": "sha256:ab", "size": 7})
    admin.sadd("s", "x")
    admin.hset("é", "k", "välue")
    client = reader(server.port)
    assert client.execute(
        ("HMGET", "h", "digest", "size", "mediatype"),
        ("SISMEMBER", "s", "x"),
        ("SISMEMBER", "s", "y"),
        ("HGET", "é", "k"),
        ("HGET", "absent", "k"),
    ) == [["sha256:ab", "7", None], 1, 0, "välue", None]


def test_commands_go_in_one_write_on_one_kept_connection(server, monkeypatch):
    network = count_redis_network(monkeypatch)
    client = reader(server.port)
    for _ in range(20):
        client.execute(("HGET", "a", "b"), ("SISMEMBER", "c", "d"), ("HMGET", "e", "f", "g"))
    assert network == {"connect": 1, "send": 20}
    assert int(server.client().info("stats")["total_commands_processed"]) >= 60


def test_a_reply_error_raises_after_every_reply_was_read(server, monkeypatch):
    server.client().set("string", "oops")
    network = count_redis_network(monkeypatch)
    client = reader(server.port)
    with pytest.raises(resp.ReplyError, match="WRONGTYPE"):
        client.execute(("HGET", "string", "f"), ("SISMEMBER", "s", "x"))
    # the connection stayed in step: the next command gets its own reply on it
    assert client.execute(("SISMEMBER", "s", "x")) == [0]
    assert network == {"connect": 1, "send": 2}


def test_a_reply_that_is_not_utf8_is_a_reply_error(server, monkeypatch):
    redis.Redis(port=server.port).hset("h", "f", b"\xff\xfe")
    network = count_redis_network(monkeypatch)
    client = reader(server.port)
    with pytest.raises(resp.ReplyError, match="UTF-8"):
        client.execute(("HGET", "h", "f"), ("SISMEMBER", "s", "x"))
    assert client.execute(("SISMEMBER", "s", "x")) == [0]
    assert network == {"connect": 1, "send": 2}


@pytest.mark.parametrize("seen", [True, False], ids=["seen-idle", "died-unseen"])
def test_a_kept_connection_redis_closed_is_replaced(server, monkeypatch, seen):
    """Seen closed before anything is sent on it; or, as after a Lambda instance was
    frozen (the idle check off), it looks fine until used: then the command is sent
    once more, on a new connection."""
    client = reader(server.port)
    client.execute(("HGET", "a", "b"))
    server.client().client_kill_filter(_type="normal", skipme=True)
    if not seen:
        monkeypatch.setattr(keepalive, "closed", lambda sock: False)
    network = count_redis_network(monkeypatch)
    assert client.execute(("SISMEMBER", "s", "x")) == [0]
    assert network == {"connect": 1, "send": 1 if seen else 2}


def test_a_new_connection_that_fails_is_not_retried(monkeypatch):
    network = count_redis_network(monkeypatch)
    with pytest.raises(ConnectionRefusedError):
        reader(free_port()).execute(("HGET", "a", "b"))
    assert network == {"connect": 1}


def test_a_hung_server_costs_the_read_timeout(server, monkeypatch):
    client = reader(server.port, read_timeout=0.1)
    server.pause()
    try:
        network = count_redis_network(monkeypatch)
        with pytest.raises(TimeoutError):
            client.execute(("HGET", "a", "b"))
        assert network == {"connect": 1, "send": 1}
    finally:
        server.resume()
    assert client.execute(("HGET", "a", "b")) == [None]


def test_idle_connections_are_bounded_and_expire(server, monkeypatch):
    client = reader(server.port, max_idle=2, idle_timeout=30)
    conns = [client._take() for _ in range(3)]
    for conn in conns:
        client._give(conn)
    assert len(client._idle) == 2 and conns[2].sock.fileno() == -1  # the third was closed
    network = count_redis_network(monkeypatch)
    client.execute(("HGET", "a", "b"))
    assert network == {"send": 1}  # a kept one served it
    for conn in client._idle:
        conn.idle_since -= 31
    client.execute(("HGET", "a", "b"))
    assert network == {"send": 2, "connect": 1}  # idle too long: not reused
    client.close()
    assert client._idle == []


def test_threads_each_get_a_connection_of_their_own(server):
    server.client().hset("h", "f", "v")
    client = reader(server.port, max_idle=4)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for i in range(200):
                assert client.execute(("HGET", "h", "f"), ("SISMEMBER", "s", str(i))) == ["v", 0]
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(client._idle) <= 4


def test_auth_select_and_rbac(tmp_path):
    with redis_server(tmp_path / "redis", password="s3cret") as srv:
        srv.client().acl_setuser("stratus", enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all"])
        redis.Redis(port=srv.port, password="s3cret", db=3).hset("h", "f", "in db 3")
        assert reader(srv.port, password="s3cret", db=3).execute(("HGET", "h", "f")) == ["in db 3"]
        assert reader(srv.port, password="s3cret").execute(("HGET", "h", "f")) == [None]
        assert reader(srv.port, username="stratus", password="pw", db=3).execute(("HGET", "h", "f")) == ["in db 3"]
        with pytest.raises(resp.AuthenticationError):
            reader(srv.port, password="wrong").execute(("HGET", "h", "f"))
        with pytest.raises(resp.AuthenticationError):
            reader(srv.port, username="stratus", password="wrong").execute(("HGET", "h", "f"))
        with pytest.raises(resp.ReplyError, match="NOAUTH") as unauthenticated:
            reader(srv.port).execute(("HGET", "h", "f"))
        assert not isinstance(unauthenticated.value, resp.AuthenticationError)  # no credentials given
        with pytest.raises(resp.ReplyError, match="(?i)DB index"):
            reader(srv.port, password="s3cret", db=99).execute(("HGET", "h", "f"))


def test_tls_is_verified_with_the_system_cas_and_the_host_name(tmp_path, monkeypatch):
    with redis_server(tmp_path / "redis", password="tok", tls=True) as srv:
        srv.client().hset("h", "f", "over tls")
        with pytest.raises(ssl.SSLCertVerificationError):  # not trusted yet
            reader(srv.port, tls=True, password="tok").execute(("HGET", "h", "f"))
        monkeypatch.setenv("SSL_CERT_FILE", str(srv.tls.ca))
        assert reader(srv.port, tls=True, password="tok").execute(("HGET", "h", "f")) == ["over tls"]
        # the certificate names 127.0.0.1 only
        with pytest.raises(ssl.SSLCertVerificationError, match="(?i)host|match"):
            reader(srv.port, host="localhost", tls=True, password="tok").execute(("HGET", "h", "f"))


def test_what_is_not_resp_drops_the_connection():
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def answer_garbage() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(1024)
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            conn.recv(1024)

    thread = threading.Thread(target=answer_garbage, daemon=True)
    thread.start()
    client = reader(port)
    with pytest.raises(resp.ProtocolError):
        client.execute(("HGET", "a", "b"))
    assert client._idle == []
    listener.close()
    thread.join(5)


def test_a_pull_reads_descriptors_without_importing_redis_py(server):
    """The reason this client exists: a cold instance's descriptor reads import no redis-py."""
    server.client().hset("blobs::sha256:" + "a" * 64, mapping={"digest": "sha256:" + "a" * 64, "size": 3})
    script = f"""
import sys
from chalicelib.cache.redis import RedisBlobDescriptorCache
from chalicelib.config import RedisConfig
from chalicelib.context import Context
from chalicelib.digest import Digest
cache = RedisBlobDescriptorCache(RedisConfig(addr={server.addr!r}))
assert cache.stat(Context(), Digest.parse("sha256:" + "a" * 64)).size == 3
print(sorted(m for m in sys.modules if m == "redis" or m.startswith("redis.")))
"""
    out = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r})\n{script}"],
                         capture_output=True, text=True, timeout=60, env={**os.environ})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
