"""`stratus relay` in front of real registries: `stratus serve` with a small chunk limit
(chunked mode), `stratus serve` over S3 on moto with direct uploads (direct mode), and the
reference registry; skopeo and plain HTTP clients on the other side.

What reaches an upstream is measured by a counting TCP proxy between the relay and it
(`Tap`), so "not re-sent" is counted in bytes on the wire, not taken from the relay's log.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import pytest
import requests
import yaml

from .clients_images import (
    Layout, assert_same_image, assert_stored_like, build_image, needs_tools, pull, push,
)
from .clients_servers import clean_env, needs_reference, reference_registry
from .docker_daemon import docker_daemon_fixture  # noqa: F401  (the fixture `docker_daemon`)
from .moto_server import MotoS3
from .servers import ROOT, free_port, process, stratus_server
from .test_auth_htpasswd import PASSWORD, htpasswd_file
from .token_issuer import TokenIssuer

MIB = 1 << 20
CHUNK_MAX = 1 * MIB  # the chunked upstream's http.chunkmaxlength: every layer here is larger
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- the relay and what sits between it and its upstream -------------------------------------


@dataclass
class RunningRelay:
    url: str
    proc: subprocess.Popen
    log: Path

    @property
    def host(self) -> str:
        return self.url.split("://", 1)[1]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """kill -9 of the relay and its server's worker (one process group), waiting until
        none is left: a dying worker still holding the port would take the next relay's
        first connections."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        deadline = time.monotonic() + 10
        while group_members(self.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not group_members(self.proc.pid), "the relay's worker outlived kill -9"


@contextmanager
def relay(upstream: str, state: Path, *extra: str, port: Optional[int] = None) -> Iterator[RunningRelay]:
    port = port or free_port()
    log = state.parent / f"relay-{port}-{time.monotonic_ns()}.log"
    argv = [sys.executable, "-m", "chalicelib", "relay", "--upstream", upstream,
            "--listen", f"127.0.0.1:{port}", "--state-dir", str(state), *extra]
    env = clean_env({"PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"})
    with process(argv, port, env, log_path=log, cwd=ROOT, inherit_env=False) as proc:
        url = f"http://127.0.0.1:{port}"
        # a port that accepted a connection is not yet proof: restarted on a port just freed,
        # a probe can meet its own socket (a TCP self-connect) before the relay listens
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(url + "/v2/", timeout=10)
                break
            except requests.ConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")
                time.sleep(0.1)
        yield RunningRelay(url, proc, log)


class Tap:
    """A TCP proxy that counts the bytes sent through it towards the server, and can
    stop forwarding them at a given count (to cut a push off at a known point)."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.sent = 0
        self.hold_at: Optional[int] = None
        self._pattern: Optional[bytes] = None
        self._occurrence = self._seen = 0
        self.holding = threading.Event()
        self._released = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._server = socket.socket()
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(64)
        self.port = self._server.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, daemon=True).start()

    def hold(self, after: int) -> None:
        """Forward `after` more bytes towards the server, then nothing until release()."""
        self._released.clear()
        self.holding.clear()
        self.hold_at = self.sent + after

    def hold_on(self, pattern: bytes, occurrence: int) -> None:
        """Forward nothing from the `occurrence`-th piece of a request containing `pattern`
        on (its request line, say), until release()."""
        self._released.clear()
        self.holding.clear()
        self._pattern, self._occurrence, self._seen = pattern, occurrence, 0

    def release(self) -> None:
        self.hold_at = None
        self._pattern = None
        self._released.set()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self._sockets += [client, server]
            threading.Thread(target=self._pipe, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, counted: bool) -> None:
        try:
            while True:
                want = 64 << 10
                hold_at = self.hold_at
                if counted and hold_at is not None:
                    with self._lock:
                        want = min(want, hold_at - self.sent)
                    if want <= 0:
                        self.holding.set()
                        # stop reading: the sender stalls once the socket buffers fill
                        self._released.wait()
                        continue
                data = src.recv(want)
                if not data:
                    break
                if counted and self._pattern is not None and self._pattern in data:
                    with self._lock:
                        self._seen += 1
                        held = self._seen >= self._occurrence
                    if held:
                        self.holding.set()
                        self._released.wait()
                        return  # what was held is dropped, as the network would
                dst.sendall(data)
                if counted:
                    with self._lock:
                        self.sent += len(data)
        except OSError:
            pass
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def cut(self) -> None:
        """Close every connection through the tap so far (the held ones too): what they
        still carried is lost, as when the network goes."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self._server.close()
        self.cut()
        self.release()


@contextmanager
def tapped(url: str) -> Iterator[Tap]:
    tap = Tap(int(url.rsplit(":", 1)[1]))
    try:
        yield tap
    finally:
        tap.close()


def group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of a process group, from /proc."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry))
    return members


def peak_rss(pgid: int) -> int:
    """The largest peak resident set (VmHWM, bytes) of the processes in a process group."""
    peak = 0
    for pid in group_members(pgid):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) * 1024)
        except (OSError, ValueError, IndexError):
            continue
    return peak


# -- upstreams -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chunked_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """`stratus serve` over a filesystem, taking chunks of at most CHUNK_MAX bytes."""
    root = tmp_path_factory.mktemp("relay-upstream") / "data"
    root.mkdir()
    with stratus_server(root, {"REGISTRY_HTTP_CHUNKMAXLENGTH": str(CHUNK_MAX)}) as url:
        yield url, root


@pytest.fixture(scope="module")
def chunked_relay(chunked_upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRelay]:
    url, _ = chunked_upstream
    with relay(url, tmp_path_factory.mktemp("relay") / "state") as running:
        yield running


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("relay-images")


def layer_image(base: Path, tag: str, size: int) -> Layout:
    """An image whose layer is `size` random bytes (gzip cannot shrink them)."""
    layout = base / f"layout-{tag}"
    if (layout / "index.json").exists():
        return Layout(layout)
    return build_image(layout, tag, {"big.bin": os.urandom(size), "run": tag.encode()})


# -- plain HTTP uploads, every way clients send them -----------------------------------------


def _post(url: str, name: str, **kwargs) -> requests.Response:
    return requests.post(f"{url}/v2/{name}/blobs/uploads/", timeout=60, **kwargs)


def _blob(url: str, name: str, digest: str) -> bytes:
    r = requests.get(f"{url}/v2/{name}/blobs/{digest}", timeout=60)
    assert r.status_code == 200, r.text
    return r.content


def upload_patch_stream(url: str, name: str, data: bytes, piece: int = 256 << 10) -> requests.Response:
    """docker's way: POST, one PATCH streamed without a length (chunked), PUT ?digest=."""
    r = _post(url, name)
    assert r.status_code == 202, r.text
    location = r.headers["Location"]
    assert location.startswith(url), "the client is sent back to the relay"
    r = requests.patch(location, data=(data[i:i + piece] for i in range(0, len(data), piece)),
                       headers={"Content-Type": "application/octet-stream"}, timeout=120)
    assert r.status_code == 202, r.text
    assert r.headers["Range"] == f"0-{len(data) - 1}"
    return requests.put(r.headers["Location"], params={"digest": sha256(data)}, timeout=120)


def test_blob_uploads_every_way_clients_send_them(chunked_relay: RunningRelay, chunked_upstream) -> None:
    url, root = chunked_upstream
    name = "ways/app"
    blobs = {way: os.urandom(3 * MIB + 12345) for way in ("patch", "put", "post", "ranges")}

    assert upload_patch_stream(chunked_relay.url, name, blobs["patch"]).status_code == 201

    # containerd: POST, then the whole blob as the PUT's body
    r = _post(chunked_relay.url, name)
    r = requests.put(r.headers["Location"], params={"digest": sha256(blobs["put"])}, data=blobs["put"], timeout=60)
    assert r.status_code == 201, r.text
    assert r.headers["Location"].startswith(chunked_relay.url)

    # a blob in one POST ?digest=
    r = _post(chunked_relay.url, name, params={"digest": sha256(blobs["post"])}, data=blobs["post"])
    assert r.status_code == 201, r.text
    assert r.headers["Docker-Content-Digest"] == sha256(blobs["post"])

    # a client that chunks by itself, with Content-Range, in pieces that do not line up with the upstream's
    data = blobs["ranges"]
    r = _post(chunked_relay.url, name)
    location, start = r.headers["Location"], 0
    for size in (700_000, 2 * MIB, len(data)):
        piece = data[start:size]
        r = requests.patch(location, data=piece, timeout=60, headers={
            "Content-Range": f"{start}-{start + len(piece) - 1}", "Content-Type": "application/octet-stream"})
        assert r.status_code == 202, r.text
        location, start = r.headers["Location"], start + len(piece)
        assert r.headers["Range"] == f"0-{start - 1}"
    assert requests.put(location, params={"digest": sha256(data)}, timeout=60).status_code == 201

    # an empty blob
    r = _post(chunked_relay.url, name)
    r = requests.put(r.headers["Location"], params={"digest": sha256(b"")}, timeout=60)
    assert r.status_code == 201, r.text

    for data in [*blobs.values(), b""]:
        assert _blob(chunked_relay.url, name, sha256(data)) == data
        hex_ = sha256(data).split(":")[1]
        assert (root / "docker/registry/v2/blobs/sha256" / hex_[:2] / hex_ / "data").read_bytes() == data

    # a mount from another repository goes through as is: 201, no bytes
    r = _post(chunked_relay.url, "ways/other", params={"mount": sha256(blobs["put"]), "from": name})
    assert r.status_code == 201, r.text
    assert _blob(chunked_relay.url, "ways/other", sha256(blobs["put"])) == blobs["put"]


def test_several_layers_upload_at_once(chunked_relay: RunningRelay) -> None:
    blobs = [os.urandom(4 * MIB + i) for i in range(4)]
    results: list[Optional[int]] = [None] * len(blobs)

    def one(i: int) -> None:
        results[i] = upload_patch_stream(chunked_relay.url, "many/app", blobs[i]).status_code

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(blobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results == [201] * len(blobs)
    for data in blobs:
        assert _blob(chunked_relay.url, "many/app", sha256(data)) == data
    assert "MB/s" in chunked_relay.log_text()  # progress is reported per blob


# -- skopeo through the relay ------------------------------------------------------------------


@needs_tools
def test_skopeo_pushes_and_pulls_through_the_relay_in_chunks(
    chunked_relay: RunningRelay, chunked_upstream, images: Path, tmp_path: Path
) -> None:
    _, root = chunked_upstream
    source = layer_image(images, "six", 6 * MIB)  # six times the upstream's chunk limit
    push(source.path, "six", chunked_relay.url, "skopeo/app", "v1")
    copy = tmp_path / "copy"
    pull(chunked_relay.url, "skopeo/app", "v1", copy, "v1")
    digest = assert_same_image(source, "six", Layout(copy), "v1")
    assert_stored_like(source, digest, root)


# -- errors ------------------------------------------------------------------------------------


def _codes(r: requests.Response) -> list[str]:
    return [e["code"] for e in r.json()["errors"]]


def test_bad_input_gets_the_registrys_errors(chunked_relay: RunningRelay, chunked_upstream) -> None:
    upstream, _ = chunked_upstream
    bad = [
        ("GET", "/v2/Bad_Name/tags/list", {}),
        ("POST", "/v2/UPPER/app/blobs/uploads/", {}),
        ("GET", "/v2/team/app/blobs/sha256:1234", {}),
        ("HEAD", "/v2/team/app/blobs/md5:" + "0" * 32, {}),
        ("POST", "/v2/team/app/blobs/uploads/", {"digest": "sha256:nothex"}),
    ]
    for method, path, params in bad:
        mine = requests.request(method, chunked_relay.url + path, params=params, timeout=10)
        theirs = requests.request(method, upstream + path, params=params, timeout=10)
        assert mine.status_code == theirs.status_code, (method, path)
        if method != "HEAD":
            assert _codes(mine) == _codes(theirs), (method, path)

    # a PUT with a malformed digest, a chunk that skips bytes: what the registry says
    r = _post(chunked_relay.url, "team/app")
    location = r.headers["Location"]
    r = requests.put(location, params={"digest": "sha256:short"}, timeout=10)
    assert (r.status_code, _codes(r)) == (400, ["DIGEST_INVALID"])
    r = requests.patch(location, data=b"abc", headers={"Content-Range": "5-7"}, timeout=10)
    assert (r.status_code, _codes(r)) == (416, ["BLOB_UPLOAD_INVALID"])
    assert r.headers["Range"] == "0-0"
    # a digest that does not match the bytes: the upstream's verdict comes back
    r = requests.put(location, params={"digest": sha256(b"other")}, data=b"abc", timeout=10)
    assert (r.status_code, _codes(r)) == (400, ["DIGEST_INVALID"])


def test_upstream_down_is_503_with_an_oci_body(tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    with relay(closed, tmp_path / "state") as running:
        for method, path in (("GET", "/v2/"), ("POST", "/v2/team/app/blobs/uploads/"),
                             ("PUT", "/v2/team/app/manifests/v1")):
            r = requests.request(method, running.url + path, data=b"{}" if method == "PUT" else None, timeout=30)
            assert r.status_code == 503, r.text
            assert r.headers["Content-Type"] == "application/json"
            error = r.json()["errors"][0]
            assert error["code"] == "UNAVAILABLE"
            assert error["detail"]["upstream"] == closed


def test_upstream_that_hangs_up_is_502(tmp_path: Path) -> None:
    """A server that accepts the connection and closes it without an answer."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    stop = threading.Event()

    def hang_up() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.recv(65536)
            conn.close()

    threading.Thread(target=hang_up, daemon=True).start()
    try:
        with relay(f"http://127.0.0.1:{listener.getsockname()[1]}", tmp_path / "state") as running:
            r = requests.get(running.url + "/v2/", timeout=30)
            assert r.status_code == 502, r.text
            assert _codes(r) == ["UNAVAILABLE"]
    finally:
        stop.set()
        listener.close()


# -- credentials pass through ------------------------------------------------------------------


@needs_tools
def test_htpasswd_credentials_pass_through(tmp_path: Path, images: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    path = htpasswd_file(tmp_path, {"alice": PASSWORD}, cost=6)
    config = tmp_path / "config.yml"
    config.write_text(yaml.safe_dump({"version": "0.1", "http": {"chunkmaxlength": CHUNK_MAX},
                                      "auth": {"htpasswd": {"realm": "Stratus", "path": str(path)}}}))
    source = layer_image(images, "auth", 2 * MIB)
    with stratus_server(root, config=config) as upstream, relay(upstream, tmp_path / "state") as running:
        r = requests.get(running.url + "/v2/", timeout=10)
        assert r.status_code == 401
        assert r.headers["WWW-Authenticate"] == 'Basic realm="Stratus"'
        with pytest.raises(AssertionError, match=r"(?i)unauthorized|authentication required"):
            push(source.path, "auth", running.url, "private/app", "v1", "--dest-creds=alice:wrong")
        push(source.path, "auth", running.url, "private/app", "v1", f"--dest-creds=alice:{PASSWORD}")
        copy = tmp_path / "copy"
        pull(running.url, "private/app", "v1", copy, "v1", f"--src-creds=alice:{PASSWORD}")
        assert_same_image(source, "auth", Layout(copy), "v1")


@needs_tools
def test_bearer_tokens_from_the_upstreams_token_server(tmp_path: Path, images: Path) -> None:
    issuer = TokenIssuer(users={"pusher": ("push-pw", {"*": ["pull", "push"]}),
                                "reader": ("read-pw", {"*": ["pull"]})})
    root = tmp_path / "data"
    root.mkdir()
    source = layer_image(images, "token", 2 * MIB)
    with issuer.serve() as realm:
        config = tmp_path / "config.yml"
        config.write_text(yaml.safe_dump({"version": "0.1", "http": {"chunkmaxlength": CHUNK_MAX},
                                          "auth": issuer.auth_config(tmp_path, realm=realm)}))
        with stratus_server(root, config=config) as upstream, relay(upstream, tmp_path / "state") as running:
            r = requests.post(running.url + "/v2/tokens/app/blobs/uploads/", timeout=10)
            assert r.status_code == 401
            # the realm is the upstream's token server: the client asks it, not the relay
            assert r.headers["WWW-Authenticate"].startswith(f'Bearer realm="{realm}"')
            push(source.path, "token", running.url, "tokens/app", "v1", "--dest-creds=pusher:push-pw")
            copy = tmp_path / "copy"
            pull(running.url, "tokens/app", "v1", copy, "v1", "--src-creds=reader:read-pw")
            assert_same_image(source, "token", Layout(copy), "v1")
            with pytest.raises(AssertionError, match=r"(?i)unauthorized|authentication required|insufficient"):
                push(source.path, "token", running.url, "tokens/other", "v1", "--dest-creds=reader:read-pw")


# -- the reference registry upstream -------------------------------------------------------------


@needs_tools
@needs_reference
def test_reference_registry_upstream_takes_spec_chunks(tmp_path: Path, images: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    source = layer_image(images, "ref", 3 * MIB)
    with reference_registry(root) as upstream, relay(upstream, tmp_path / "state", "--chunk-size", "1") as running:
        push(source.path, "ref", running.url, "ref/app", "v1")
        copy = tmp_path / "copy"
        pull(running.url, "ref/app", "v1", copy, "v1")
        digest = assert_same_image(source, "ref", Layout(copy), "v1")
        assert_stored_like(source, digest, root)
        # the reference registry answers with relative Locations; they come back pointing at the relay
        r = _post(running.url, "ref/app")
        assert r.status_code == 202
        assert r.headers["Location"].startswith(running.url + "/v2/ref/app/blobs/uploads/")


# -- memory -----------------------------------------------------------------------------------------


def test_peak_memory_of_a_large_layer_stays_bounded(chunked_upstream, tmp_path: Path) -> None:
    """256 MiB streamed without a length (as docker sends a layer), then pulled back: the
    relay spools pieces to disk and keeps a few 1 MiB buffers, so its peak RSS stays far
    below the layer."""
    upstream, _ = chunked_upstream
    size = 256 * MIB
    block = os.urandom(MIB)
    hasher = hashlib.sha256()

    def body() -> Iterator[bytes]:
        for i in range(size // MIB):
            piece = i.to_bytes(8, "big") + block[8:]
            hasher.update(piece)
            yield piece

    with relay(upstream, tmp_path / "state") as running:
        r = _post(running.url, "memory/app")
        started = time.monotonic()
        r = requests.patch(r.headers["Location"], data=body(), timeout=300)
        assert r.status_code == 202, r.text
        r = requests.put(r.headers["Location"], params={"digest": "sha256:" + hasher.hexdigest()}, timeout=300)
        elapsed = time.monotonic() - started
        assert r.status_code == 201, r.text
        # and back: the filesystem upstream serves the bytes itself, through the relay
        pulled = hashlib.sha256()
        with requests.get(f"{running.url}/v2/memory/app/blobs/sha256:{hasher.hexdigest()}", stream=True,
                          timeout=300) as r:
            assert r.status_code == 200
            for piece in r.iter_content(MIB):
                pulled.update(piece)
        assert pulled.hexdigest() == hasher.hexdigest()
        peak = peak_rss(running.proc.pid)
    print(f"relay: 256 MiB in {elapsed:.1f} s ({size / elapsed / 1e6:.0f} MB/s) in chunks of 1 MiB, "
          f"peak RSS {peak / MIB:.0f} MiB after pushing and pulling it")
    assert 0 < peak < 150 * MIB


# -- resuming after the relay is killed ---------------------------------------------------------------


@needs_tools
def test_killed_relay_resumes_without_resending_what_the_upstream_has(
    chunked_upstream, images: Path, tmp_path: Path
) -> None:
    upstream, root = chunked_upstream
    size = 24 * MIB
    source = layer_image(images, "resume", size)
    state = tmp_path / "state"
    with tapped(upstream) as tap:
        # first push: cut off after 12 MiB reached the upstream, then the relay is killed
        tap.hold(12 * MIB)
        with relay(tap.url, state) as first:
            client = subprocess.Popen(
                ["skopeo", "--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false",
                 "--retry-times=0", f"oci:{source.path}:resume", f"docker://{first.host}/resume/app:v1"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            assert tap.holding.wait(120), "the push never reached 12 MiB"
            first.kill()
            tap.cut()
            tap.release()
            assert client.wait(60) != 0, "the push could not have finished"
        had = 12 * MIB - CHUNK_MAX  # at least every chunk before the cut one
        before = tap.sent

        with relay(tap.url, state) as second:
            push(source.path, "resume", second.url, "resume/app", "v1")
            resent = tap.sent - before
            log = second.log_text()
    assert "continuing interrupted upstream upload" in log
    print(f"second push: {resent / MIB:.1f} MiB sent again")
    layer = max(os.path.getsize(source.blob_path(d)) for d in source.closure(source.tagged("resume")["digest"]))
    assert layer > size
    # the second push sent the layer less what the upstream held (plus the small blobs and HTTP)
    assert resent < layer - had + MIB, f"{resent} bytes sent again for a {layer}-byte layer"
    copy = tmp_path / "copy"
    pull(upstream, "resume/app", "v1", copy, "v1")
    assert_same_image(source, "resume", Layout(copy), "v1")


def test_a_different_blob_is_not_glued_to_an_interrupted_upload(chunked_upstream, tmp_path: Path) -> None:
    """The journal of an interrupted upload in the repository must not capture a blob
    that shares only a prefix with it: the new blob ends up whole and correct."""
    upstream, _ = chunked_upstream
    state = tmp_path / "state"
    prefix = os.urandom(3 * MIB)
    old = prefix + os.urandom(5 * MIB)
    new = prefix + os.urandom(2 * MIB)  # same first 3 MiB, then different
    with tapped(upstream) as tap:
        tap.hold(5 * MIB)
        with relay(tap.url, state) as first:
            r = _post(first.url, "prefix/app")
            location = r.headers["Location"]
            patching = threading.Thread(
                target=lambda: _quietly(lambda: requests.patch(location, data=old, timeout=60)), daemon=True)
            patching.start()
            assert tap.holding.wait(60)
            first.kill()
            tap.cut()
            tap.release()
        with relay(tap.url, state) as second:
            assert upload_patch_stream(second.url, "prefix/app", new).status_code == 201
            assert _blob(second.url, "prefix/app", sha256(new)) == new
            log = second.log_text()
    # it was compared with the interrupted upload, and refused at the first differing boundary
    assert "1 interrupted upload(s) to compare with" in log
    assert "continuing interrupted upstream upload" not in log


def _quietly(call) -> None:
    try:
        call()
    except requests.RequestException:
        pass


# -- direct-to-storage uploads (S3 on moto) --------------------------------------------------------------


@pytest.fixture(scope="module")
def direct_upstream(tmp_path_factory: pytest.TempPathFactory, moto_s3: MotoS3) -> Iterator[tuple[str, MotoS3, str]]:
    """`stratus serve` over S3 with direct uploads on; skipped until the registry offers them."""
    bucket = moto_s3.create_bucket()
    base = tmp_path_factory.mktemp("relay-direct")
    env = {**moto_s3.environment(bucket), "REGISTRY_STORAGE_DIRECTUPLOAD_ENABLED": "true"}
    try:
        server = stratus_server(base / "data", env)
        url = server.__enter__()
    except RuntimeError as exc:  # an older registry refuses the unknown key
        pytest.skip(f"not applicable: the registry does not take storage.directupload ({exc})"[:300])
    try:
        r = requests.post(f"{url}/v2/probe/app/blobs/uploads/", timeout=10)
        if "Stratus-Direct-Upload" not in r.headers:
            pytest.skip("not applicable: the registry does not offer direct uploads yet")
        yield url, moto_s3, bucket
    finally:
        server.__exit__(None, None, None)


@needs_tools
def test_direct_uploads_push_parts_to_storage(direct_upstream, images: Path, tmp_path: Path) -> None:
    upstream, _, _ = direct_upstream
    source = layer_image(images, "direct", 40 * MIB)
    with tapped(upstream) as tap, relay(tap.url, tmp_path / "state", "--part-size", "8") as running:
        push(source.path, "direct", running.url, "direct/app", "v1")
        through_registry = tap.sent
        copy = tmp_path / "copy"
        pull(running.url, "direct/app", "v1", copy, "v1")
        assert_same_image(source, "direct", Layout(copy), "v1")
        # the layer's bytes went to the bucket, not through the registry
        assert through_registry < 4 * MIB, through_registry
        # pulls pass the registry's 307 to storage through unchanged
        layer = json.loads(source.blob(source.tagged("direct")["digest"]))["layers"][0]["digest"]
        r = requests.get(f"{running.url}/v2/direct/app/blobs/{layer}", allow_redirects=False, timeout=10)
        assert r.status_code == 307
        assert not r.headers["Location"].startswith(running.url)


def test_direct_upload_resumes_with_the_parts_storage_has(direct_upstream, tmp_path: Path) -> None:
    _, moto, bucket = direct_upstream
    part = 8 * MIB
    data = os.urandom(6 * part)
    state = tmp_path / "state"
    # the registry's S3 endpoint is a tap in front of moto, so its presigned part URLs
    # lead through the tap too: part bytes are counted on their way to storage
    with tapped(moto.endpoint) as s3:
        env = {**moto.environment(bucket, REGISTRY_STORAGE_S3_REGIONENDPOINT=s3.url),
               "REGISTRY_STORAGE_DIRECTUPLOAD_ENABLED": "true"}
        (tmp_path / "data").mkdir()
        with stratus_server(tmp_path / "data", env) as upstream:
            # first relay: one part at a time, cut off 2 MiB into the fourth part
            s3.hold(3 * part + 2 * MIB)
            with relay(upstream, state, "--part-size", "8", "--parallel", "1") as first:
                location = _post(first.url, "parts/app").headers["Location"]
                threading.Thread(target=lambda: _quietly(
                    lambda: requests.patch(location, data=data, timeout=120)), daemon=True).start()
                assert s3.holding.wait(120), "the parts never reached storage"
                first.kill()
                s3.cut()
                s3.release()
            before = s3.sent
            with relay(upstream, state, "--part-size", "8") as second:
                assert upload_patch_stream(second.url, "parts/app", data).status_code == 201
                resent = s3.sent - before
                log = second.log_text()
                assert _blob(second.url, "parts/app", sha256(data)) == data
    assert "continuing interrupted upstream upload" in log
    print(f"direct resume: {resent / MIB:.1f} MiB sent again of {len(data) / MIB:.0f} MiB")
    # parts 1-3 stayed in storage: only parts 4-6 went again (plus the registry's small writes)
    assert resent < len(data) - 3 * part + MIB, resent


# -- docker ----------------------------------------------------------------------------------------------


def test_docker_logs_in_pushes_and_pulls_through_the_relay(docker_daemon, tmp_path: Path) -> None:
    """`docker login <relay>` logs into the upstream (htpasswd), and a layer 24 times the
    upstream's chunk limit goes up and comes back with the same image ID."""
    from .test_clients_docker import push_then_pull_back

    root = tmp_path / "data"
    root.mkdir()
    path = htpasswd_file(tmp_path, {"alice": PASSWORD}, cost=6)
    config = tmp_path / "config.yml"
    config.write_text(yaml.safe_dump({"version": "0.1", "http": {"chunkmaxlength": CHUNK_MAX},
                                      "auth": {"htpasswd": {"realm": "Stratus", "path": str(path)}}}))
    image = docker_daemon.image_with_layer(24)
    docker_config = docker_daemon.fresh_config(tmp_path / "docker-config")
    with stratus_server(root, config=config) as upstream, relay(upstream, tmp_path / "state") as running:
        assert "Login Succeeded" in docker_daemon.login(running.host, "alice", PASSWORD, config_dir=docker_config)
        push_then_pull_back(docker_daemon, image, f"{running.host}/team/app:1", config_dir=docker_config)
        log = running.log_text()
    assert "complete" in log and "MB/s" in log


# -- the Lambda app behind API Gateway's limits -----------------------------------------------------------


@needs_tools
def test_skopeo_through_the_relay_into_lambda_behind_a_rest_api(moto_s3: MotoS3, images: Path, tmp_path: Path) -> None:
    """A REST API with its stage in the path, htpasswd auth, and a layer over the 6 MB an
    invocation carries: the relay restores the remapped challenge, strips the stage from
    the Locations it hands out, and sends the layer in pieces the platform lets through."""
    import bcrypt

    from .lambda_gateway import lambda_gateway

    bucket = moto_s3.create_bucket()
    entry = "alice:" + bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
    env = {**moto_s3.environment(bucket), "REGISTRY_HTTP_SECRET": "relay-lambda", "REGISTRY_AUTH": "htpasswd",
           "REGISTRY_AUTH_HTPASSWD_REALM": "Stratus", "REGISTRY_AUTH_HTPASSWD_ENV": "STRATUS_HTPASSWD",
           "STRATUS_HTPASSWD": entry}
    source = layer_image(images, "lambda", 12 * MIB)
    with lambda_gateway(env, "rest", stage_in_path=True, workdir=tmp_path) as gw, \
            relay(gw.url, tmp_path / "state", "--part-size", "5") as running:
        r = requests.get(running.url + "/v2/", timeout=30)
        assert r.status_code == 401
        assert r.headers["WWW-Authenticate"] == 'Basic realm="Stratus"'
        push(source.path, "lambda", running.url, "fn/app", "v1", f"--dest-creds=alice:{PASSWORD}")
        copy = tmp_path / "copy"
        pull(running.url, "fn/app", "v1", copy, "v1", f"--src-creds=alice:{PASSWORD}")
        assert_same_image(source, "lambda", Layout(copy), "v1")
        gw.assert_nothing_over_the_limit_reached_the_function()
        assert max(r.body_bytes for r in gw.records()) < 6 * MIB
        # tags page by page: the Link to the next page leads back to the relay
        push(source.path, "lambda", running.url, "fn/app", "v2", f"--dest-creds=alice:{PASSWORD}")
        r = requests.get(f"{running.url}/v2/fn/app/tags/list", params={"n": 1}, auth=("alice", PASSWORD), timeout=30)
        assert r.json()["tags"] == ["v1"]
        link = r.headers["Link"]
        assert link.startswith(f"<{running.url}/v2/fn/app/tags/list?") and link.endswith('>; rel="next"')
        r = requests.get(link[1:link.index(">")], auth=("alice", PASSWORD), timeout=30)
        assert r.json()["tags"] == ["v2"]
        offered = "Stratus-Direct-Upload" in requests.post(
            gw.url + "/v2/fn/app/blobs/uploads/", auth=("alice", PASSWORD), timeout=30).headers
        log = running.log_text()
    # the Lambda app offers direct uploads by default: then the layer went to S3 in parts of 5 MiB,
    # else in chunks of the 4 MiB the function advertises
    layer = json.loads(source.blob(source.tagged("lambda")["digest"]))["layers"][0]["digest"]
    line = next(line for line in log.splitlines() if f"{layer} complete" in line)
    assert ("as direct-upload parts of 5 MiB" if offered else "in chunked PATCHes of up to 4 MiB") in line


def test_upload_status_cancel_and_a_relay_restarted_between_post_and_patch(chunked_upstream, tmp_path: Path) -> None:
    upstream, _ = chunked_upstream
    data = os.urandom(3 * MIB)
    port = free_port()
    with relay(upstream, tmp_path / "state", port=port) as first:
        # GET of an upload answers from the relay's side: the bytes it took
        location = _post(first.url, "restart/app").headers["Location"]
        r = requests.patch(location, data=data[:MIB], headers={"Content-Range": f"0-{MIB - 1}"}, timeout=30)
        assert r.status_code == 202
        r = requests.get(r.headers["Location"], timeout=30)
        assert (r.status_code, r.headers["Range"]) == (204, f"0-{MIB - 1}")
        # DELETE cancels it upstream
        assert requests.delete(r.headers["Location"], timeout=30).status_code == 204
        assert requests.get(r.headers["Location"], timeout=30).status_code == 404
        # an upload opened through this relay...
        location = _post(first.url, "restart/app").headers["Location"]
        first.kill()
    # ...is carried on by the next one, which learns from the upstream where it stands
    with relay(upstream, tmp_path / "state", port=port) as second:
        r = requests.patch(location, data=data, timeout=60)
        assert r.status_code == 202, r.text
        r = requests.put(r.headers["Location"], params={"digest": sha256(data)}, timeout=60)
        assert r.status_code == 201, r.text
        assert _blob(second.url, "restart/app", sha256(data)) == data


def test_direct_uploads_to_azure_blocks(azurite, tmp_path: Path) -> None:
    """`stratus serve` over Azurite with direct uploads: parts go as Put Block with SAS URLs."""
    env = {**azurite.environment(azurite.new_container()), "REGISTRY_STORAGE_DIRECTUPLOAD_ENABLED": "true"}
    (tmp_path / "data").mkdir()
    data = os.urandom(10 * MIB + 4321)
    with stratus_server(tmp_path / "data", env) as upstream:
        if requests.post(f"{upstream}/v2/probe/app/blobs/uploads/", timeout=10).headers.get(
                "Stratus-Direct-Upload") != "azure-blocks":
            pytest.skip("not applicable: the registry does not offer direct uploads to Azure yet")
        with tapped(upstream) as tap, relay(tap.url, tmp_path / "state", "--part-size", "4") as running:
            assert upload_patch_stream(running.url, "azure/app", data).status_code == 201
            assert tap.sent < MIB, "the blob's bytes went to storage, not through the registry"
            r = requests.get(f"{running.url}/v2/azure/app/blobs/{sha256(data)}", allow_redirects=False, timeout=10)
            assert r.status_code == 307 and not r.headers["Location"].startswith(running.url)
            assert requests.get(r.headers["Location"], timeout=30).content == data
            assert "as direct-upload parts of 4 MiB (azure-blocks)" in running.log_text()


def test_a_blob_sent_whole_but_never_completed_is_not_sent_again(chunked_upstream, tmp_path: Path) -> None:
    """The relay dies between the last chunk and the PUT: the upstream has every byte, the
    journal's last boundary is the blob's end, and the next push only completes it."""
    upstream, _ = chunked_upstream
    data = os.urandom(3 * MIB + MIB // 2)  # the last chunk is a short one
    with tapped(upstream) as tap:
        with relay(tap.url, tmp_path / "state") as first:
            location = _post(first.url, "whole/app").headers["Location"]
            assert requests.patch(location, data=data, timeout=60).status_code == 202
            first.kill()
        before = tap.sent
        with relay(tap.url, tmp_path / "state") as second:
            assert upload_patch_stream(second.url, "whole/app", data).status_code == 201
            resent = tap.sent - before
            assert _blob(second.url, "whole/app", sha256(data)) == data
            assert "continuing interrupted upstream upload" in second.log_text()
    assert resent < 64 << 10, f"{resent} bytes sent again"


def test_docker_pushes_a_large_layer_through_the_relay_into_lambda(docker_daemon, moto_s3: MotoS3,
                                                                  tmp_path: Path) -> None:
    """Issue 12's acceptance: docker pushes an image with a 200 MiB layer through the relay
    into the Lambda app behind API Gateway's 6 MB limit, and pulls it back through that
    limit (blob GETs 307 to S3) with the same image ID."""
    from .lambda_gateway import lambda_gateway
    from .test_clients_docker import push_then_pull_back

    bucket = moto_s3.create_bucket()
    env = {**moto_s3.environment(bucket), "REGISTRY_HTTP_SECRET": "relay-acceptance"}
    image = docker_daemon.image_with_layer(200)
    with lambda_gateway(env, "http", workdir=tmp_path) as gw, relay(gw.url, tmp_path / "state") as running:
        push_then_pull_back(docker_daemon, image, f"{running.host}/team/app:1")
        gw.assert_nothing_over_the_limit_reached_the_function()
        log = running.log_text()
    # the layer (200 MiB of random bytes, a little more gzipped) went in parts straight to S3:
    # the Lambda app offers direct uploads by default
    assert re.search(r"complete, 200\.\d MiB sent as direct-upload parts of 16 MiB \(s3-multipart\)", log), log


def test_journal_skips_torn_lines_and_uploads_in_use(tmp_path: Path) -> None:
    from chalicelib.relay.journal import Journal

    journal = Journal(tmp_path / "journal")
    entry = journal.create("team/app", "u-1", "chunked", None, "http://up/v2/team/app/blobs/uploads/u-1?_state=a")
    entry.boundary(MIB, "aa" * 32)
    entry.location("http://up/v2/team/app/blobs/uploads/u-1?_state=b")
    # a sending relay holds the journal: nobody else sees it as a candidate
    assert journal.records("team/app") == []
    entry.close()
    with open(entry.path, "ab") as f:
        f.write(b'{"end": 2097152, "sha2')  # cut off by a crash mid-write
    [record] = journal.records("team/app")
    assert (record.uuid, record.boundaries, record.location) == (
        "u-1", {MIB: "aa" * 32}, "http://up/v2/team/app/blobs/uploads/u-1?_state=b")
    assert journal.records("team/other") == []
    # claimed by one session, it is no one else's
    claimed = journal.claim(record)
    assert claimed is not None and journal.claim(record) is None
    claimed.remove()
    assert journal.records("team/app") == []


@needs_tools
def test_skopeo_through_the_relay_into_the_functions_host(azurite, images: Path, tmp_path: Path) -> None:
    """The Functions app behind the stand-in host with its body limit lowered to 8 MiB, and
    a 12 MiB layer: only pieces the host lets through reach the function."""
    from .functions_host import functions_host

    limit = 8 * MIB
    env = azurite.environment(azurite.new_container(), REGISTRY_HTTP_SECRET="relay-functions",
                              PYTHON_ENABLE_INIT_INDEXING="1", FUNCTIONS_REQUEST_BODY_SIZE_LIMIT=str(limit))
    source = layer_image(images, "functions", 12 * MIB)
    with functions_host(env, tmp_path) as host, relay(host.url, tmp_path / "state", "--part-size", "4") as running:
        push(source.path, "functions", running.url, "fn/app", "v1")
        copy = tmp_path / "copy"
        pull(running.url, "fn/app", "v1", copy, "v1")
        assert_same_image(source, "functions", Layout(copy), "v1")
        records = host.records()
        offered = requests.post(f"{host.url}/v2/fn/app/blobs/uploads/", timeout=30).headers.get(
            "Stratus-Direct-Upload")
        log = running.log_text()
    assert not [r for r in records if r.body_bytes > limit and r.reached_function]
    assert max(r.body_bytes for r in records) <= limit
    layer = json.loads(source.blob(source.tagged("functions")["digest"]))["layers"][0]["digest"]
    line = next(line for line in log.splitlines() if f"{layer} complete" in line)
    assert ("as direct-upload parts of 4 MiB (azure-blocks)" if offered else "in chunked PATCHes") in line


def test_a_manifest_sent_without_a_length_is_forwarded(chunked_relay: RunningRelay) -> None:
    config = b"{}"
    layer = os.urandom(2 * MIB)
    for blob in (config, layer):
        assert upload_patch_stream(chunked_relay.url, "manifest/app", blob).status_code == 201
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha256(config), "size": 2},
        "layers": [{"mediaType": "application/octet-stream", "digest": sha256(layer), "size": len(layer)}],
    }).encode()
    # a generator body: requests sends it with Transfer-Encoding: chunked, no Content-Length
    r = requests.put(f"{chunked_relay.url}/v2/manifest/app/manifests/v1", data=iter([manifest[:100], manifest[100:]]),
                     headers={"Content-Type": OCI_MANIFEST}, timeout=30)
    assert r.status_code == 201, r.text
    assert r.headers["Location"].startswith(chunked_relay.url + "/v2/manifest/app/manifests/")
    r = requests.get(f"{chunked_relay.url}/v2/manifest/app/manifests/v1", headers={"Accept": OCI_MANIFEST}, timeout=30)
    assert r.content == manifest


def test_a_completion_the_gateway_gave_up_on_is_asked_again(moto_s3: MotoS3, tmp_path: Path) -> None:
    """API Gateway answers 504 after its timeout while the function goes on. The relay asks
    again (the registry continues the verification, or the blob is already in place) instead
    of failing a push the function is about to finish."""
    from .lambda_gateway import lambda_gateway

    env = {**moto_s3.environment(moto_s3.create_bucket()), "REGISTRY_HTTP_SECRET": "relay-timeout",
           # one completion PUT may verify for longer than the gateway waits
           "REGISTRY_STORAGE_DIRECTUPLOAD_VERIFYTIME": "60s",
           # and surely does: moto reads the whole 64 MiB object for each ranged GET, so a
           # read-back in 256 KiB reads takes seconds on any machine (in 16 MiB ones it took
           # under the 2 s below on an idle one, and nothing timed out)
           "REGISTRY_STORAGE_DIRECTUPLOAD_READSIZE": str(256 << 10)}
    data = os.urandom(64 * MIB)
    with lambda_gateway(env, "http", timeout=2.0, workdir=tmp_path) as gw, \
            relay(gw.url, tmp_path / "state", "--part-size", "8") as running:
        r = upload_patch_stream(running.url, "slow/app", data)
        assert r.status_code == 201, r.text
        assert r.headers["Docker-Content-Digest"] == sha256(data)
        assert _blob(running.url, "slow/app", sha256(data)) == data
        log = running.log_text()
        timeouts = [rec for rec in gw.records() if rec.outcome == "timeout"]
    assert timeouts and all(rec.method == "PUT" for rec in timeouts)
    assert "the upstream answered 504; asking again" in log


def test_a_relay_killed_while_the_registry_verifies_resumes_the_verification(direct_upstream,
                                                                             tmp_path: Path) -> None:
    """The relay dies between two completion PUTs of a direct upload (the registry has
    assembled the parts and verifies them a little per PUT): the next push of the same blob
    sends no part again; it repeats the PUT on the assembled upload."""
    _, moto, bucket = direct_upstream
    data = os.urandom(39 * MIB)  # four parts of 8 MiB and a last one of 7
    state = tmp_path / "state"
    with tapped(moto.endpoint) as s3:
        env = {**moto.environment(bucket, REGISTRY_STORAGE_S3_REGIONENDPOINT=s3.url),
               "REGISTRY_STORAGE_DIRECTUPLOAD_ENABLED": "true",
               # each completion PUT verifies as little as it may, so there are several
               "REGISTRY_STORAGE_DIRECTUPLOAD_VERIFYTIME": "1ms"}
        (tmp_path / "data").mkdir()
        with stratus_server(tmp_path / "data", env) as upstream, tapped(upstream) as registry:
            # the second completion PUT never reaches the registry: the first assembled the parts
            registry.hold_on(b"PUT /v2/verify/app/blobs/uploads/", 2)
            with relay(registry.url, state, "--part-size", "8") as first:
                location = _post(first.url, "verify/app").headers["Location"]
                threading.Thread(target=lambda: _quietly(lambda: requests.put(
                    location, params={"digest": sha256(data)}, data=data, timeout=120)), daemon=True).start()
                assert registry.holding.wait(120), "no second completion PUT"
                first.kill()
                registry.cut()
                registry.release()
            before = s3.sent
            with relay(registry.url, state, "--part-size", "8") as second:
                assert upload_patch_stream(second.url, "verify/app", data).status_code == 201
                resent = s3.sent - before
                log = second.log_text()
                assert _blob(second.url, "verify/app", sha256(data)) == data
    assert "(assembled already: its verification goes on)" in log
    assert resent < MIB, f"{resent} bytes went to storage again"


def test_a_port_in_use_is_said_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "chalicelib", "relay", "--upstream", "http://127.0.0.1:1",
             "--listen", f"127.0.0.1:{port}", "--state-dir", str(tmp_path / "state")],
            capture_output=True, text=True, timeout=60, cwd=ROOT, env=clean_env({"PYTHONPATH": str(ROOT)}))
    assert done.returncode != 0
    assert done.stderr.strip().endswith(f"stratus relay: cannot listen on 127.0.0.1:{port}: Address already in use")
