"""Issue 12's rows: a 1 GiB push through `stratus relay` into the Lambda app behind the
API Gateway stand-in (tests/lambda_gateway.py) over S3 on moto, in direct mode and in
chunked mode, beside the same push straight to `stratus serve` on moto; the relay's
peak RSS during the push; and the direct-upload verification rate.

- **Push**: POST, then one PUT carrying the whole blob (containerd's way; the relay
  streams it whatever way the client sends it), MB/s from the POST to the 201. Through
  the relay that includes everything the relay waits for: part URLs, parts sent
  straight to moto, and the completion PUTs (assembly, the registry's read-back and
  the move into place, repeated when the gateway gives up at 30 s). Direct mode is what
  the Lambda app offers by default; chunked mode is the same app with
  `storage.directupload` off, where the relay sends PATCHes of the 4 MiB the function
  advertises. The yardstick ("Reference" column) is `stratus serve` over moto taking
  the same PUT itself.
- Every push goes to a moto_server of its own (moto keeps each object in memory), with
  `storage.s3.multipartcopychunksize: 128MiB` for all (docs/direct-uploads.md: moto
  copies the whole object for every UploadPartCopy, so the move of 1 GiB into place
  takes 93 s with the default 32 MiB copy parts).
- **Relay RSS**: VmRSS summed over the relay's process tree, sampled every 10 ms
  during the push (bench/memory.PeakRSS).
- **Verification**: the read-back of a completion PUT alone. A `stratus serve` over moto
  with direct uploads and `verifytime: 1ms` takes the parts and assembles them on the
  first PUT (answering 202: nothing verified yet); a second `stratus serve` on the same
  bucket and secret, with `verifytime: 10m`, gets the next PUT with a wrong digest, so it
  reads back and hashes the whole blob and refuses it (400 DIGEST_INVALID) without the
  move: MB/s of the blob over that PUT.

Runs once (each 1 GiB push takes minutes on moto); `--quick` pushes 12 MiB in 5 MiB parts.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

from . import client as registry_client
from . import servers
from .memory import PeakRSS

MiB = 1 << 20
MB = 1e6
COPY_CHUNK = str(128 * MiB)  # see the module docstring


@dataclass(frozen=True)
class RelaySettings:
    size: int  # bytes pushed
    part_size: int  # direct-upload part size, for the relay and the verification
    label: str  # the size, for the row labels


def relay_settings(quick: bool) -> RelaySettings:
    if quick:
        return RelaySettings(12 * MiB, 5 * MiB, "12 MiB")
    return RelaySettings(1024 * MiB, 16 * MiB, "1 GiB")


@dataclass
class Results:
    relay_direct: float = 0.0  # MB/s
    relay_chunked: float = 0.0
    serve: float = 0.0
    rss_direct: float = 0.0  # MB
    rss_chunked: float = 0.0
    verify: float = 0.0  # MB/s


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- the pieces -----------------------------------------------------------------------------


@contextmanager
def moto(workdir: Path, name: str) -> Iterator[tuple[object, str]]:
    """A fresh moto_server and a bucket on it."""
    from tests.moto_server import moto_s3_server

    with moto_s3_server(workdir / f"moto-{name}.log") as s3:
        yield s3, s3.create_bucket()


@contextmanager
def relay(workdir: Path, upstream: str, name: str, part_size: int) -> Iterator[servers.RunningServer]:
    """`stratus relay --upstream` as a user starts it, its state under workdir."""
    from tests.servers import free_port, process

    port = free_port()
    state = workdir / f"relay-{name}"
    argv = [sys.executable, "-m", "chalicelib", "relay", "--upstream", upstream, "--listen", f"127.0.0.1:{port}",
            "--state-dir", str(state), "--part-size", str(part_size // MiB)]
    log_path = workdir / f"relay-{name}.log"
    env = {"PYTHONPATH": str(servers.ROOT), "PATH": "/usr/bin:/bin", "HOME": str(workdir)}
    with process(argv, port, env, log_path=log_path, cwd=servers.ROOT, inherit_env=False) as proc:
        yield servers.RunningServer(f"relay-{name}", f"http://127.0.0.1:{port}", proc.pid, state, log_path)


def push(url: str, repository: str, blob: "Blob", rss_of: Optional[int] = None) -> tuple[float, float]:
    """One PUT of the whole blob; (MB/s, peak RSS in MB of the process tree rss_of)."""
    with registry_client.Client(url, timeout=1800) as c, ExitStack() as stack:
        peak = stack.enter_context(PeakRSS(rss_of)) if rss_of else None
        seconds = registry_client.timed(c.push_monolithic, repository, blob.pieces, blob.size, blob.digest)
    return blob.size / seconds / MB, (peak.peak / MB if peak else 0.0)


class Blob:
    """`size` bytes: a random buffer of up to 256 MiB repeated (moto and the registry store
    what they get; nothing here compresses or deduplicates), stamped to be new each time."""

    def __init__(self, size: int):
        import os

        self.size = size
        unit = min(size, 256 * MiB)
        assert size % unit == 0
        self.data = bytearray(os.urandom(unit))
        self.copies = size // unit
        self.digest = ""

    @property
    def pieces(self) -> list[memoryview]:
        return [memoryview(self.data)] * self.copies

    def stamp(self, label: str) -> str:
        tag = f"stratus-bench relay {label} {time.time_ns()}".encode()[:64].ljust(64, b".")
        self.data[:len(tag)] = tag
        hasher = hashlib.sha256()
        for piece in self.pieces:
            hasher.update(piece)
        self.digest = "sha256:" + hasher.hexdigest()
        return self.digest


# moto reads the whole object for every ranged GET, so the read-back of a direct upload
# costs one whole-object read per ranged read: 64 MiB reads (2 in flight) instead of the
# default 16 MiB (8 in flight), which suits S3, where a ranged GET reads only its range
MOTO_READ_SIZE = str(64 << 20)

# -- measures -------------------------------------------------------------------------------


def through_relay(workdir: Path, blob: Blob, s: RelaySettings, direct: bool) -> tuple[float, float]:
    from tests.lambda_gateway import lambda_gateway

    mode = "direct" if direct else "chunked"
    blob.stamp(mode)
    with moto(workdir, f"relay-{mode}") as (s3, bucket):
        env = {**s3.environment(bucket), "REGISTRY_HTTP_SECRET": "bench-relay",
               "REGISTRY_STORAGE_S3_MULTIPARTCOPYCHUNKSIZE": COPY_CHUNK,
               "REGISTRY_STORAGE_DIRECTUPLOAD_READSIZE": MOTO_READ_SIZE}
        if not direct:
            env["REGISTRY_STORAGE_DIRECTUPLOAD_ENABLED"] = "false"
        gateway_dir = workdir / f"gateway-{mode}"
        gateway_dir.mkdir()
        with lambda_gateway(env, "http", workdir=gateway_dir) as gw, \
                relay(workdir, gw.url, mode, s.part_size) as running:
            rate, rss = push(running.url, f"bench/relay-{mode}", blob, rss_of=running.pid)
            gw.assert_nothing_over_the_limit_reached_the_function()
            sent = [line for line in running.log.read_text(errors="replace").splitlines()
                    if f"{blob.digest} complete" in line]
            expected = "as direct-upload parts" if direct else "in chunked PATCHes"
            if not sent or expected not in sent[-1]:
                raise RuntimeError(f"the relay did not send the blob {expected}: {sent}")
    return rate, rss


def straight_to_serve(workdir: Path, blob: Blob) -> float:
    blob.stamp("serve")
    with moto(workdir, "serve") as (s3, bucket):
        storage = s3.environment(bucket, REGISTRY_STORAGE_S3_MULTIPARTCOPYCHUNKSIZE=COPY_CHUNK)
        with servers.stratus(workdir, storage=storage, name="stratus-moto") as server:
            rate, _ = push(server.url, "bench/serve", blob)
    return rate


def verification(workdir: Path, blob: Blob, s: RelaySettings) -> float:
    """MB/s of a completion PUT that only reads back and hashes (see the module docstring)."""
    import requests

    blob.stamp("verify")
    with moto(workdir, "verify") as (s3, bucket):
        base = s3.environment(bucket, REGISTRY_STORAGE_DIRECTUPLOAD_ENABLED="true",
                              REGISTRY_STORAGE_DIRECTUPLOAD_PARTSIZE=str(s.part_size),
                              REGISTRY_STORAGE_DIRECTUPLOAD_READSIZE=MOTO_READ_SIZE)
        with servers.stratus(workdir, storage={**base, "REGISTRY_STORAGE_DIRECTUPLOAD_VERIFYTIME": "1ms"},
                             name="stratus-assemble") as first, \
                servers.stratus(workdir, storage={**base, "REGISTRY_STORAGE_DIRECTUPLOAD_VERIFYTIME": "10m"},
                                name="stratus-verify") as second:
            call = _caller(requests)
            started = call("POST", f"{first.url}/v2/bench/verify/blobs/uploads/", expect=202)
            location = _absolute(first.url, started.headers["Location"])
            count = -(-blob.size // s.part_size)
            parts = []
            for low in range(1, count + 1, 100):
                high = min(count, low + 99)
                granted = call("POST", f"{location}&parts={low}-{high}&partsize={s.part_size}", expect=200)
                parts += json.loads(granted.content)["parts"]
            whole = b"".join(bytes(p) for p in blob.pieces) if blob.copies == 1 else None
            for part in parts:
                start = (part["number"] - 1) * s.part_size
                body = _slice(blob, whole, start, min(s.part_size, blob.size - start))
                r = requests.request(part["method"], part["url"], headers=part["headers"], data=body, timeout=600)
                if r.status_code not in (200, 201):
                    raise RuntimeError(f"part {part['number']}: {r.status_code} {r.text[:300]}")
            assembled = call("PUT", f"{location}&digest={blob.digest}", expect=202)
            if assembled.headers.get("Stratus-Verify-Offset") != "0":
                raise RuntimeError(f"the first PUT verified already: {dict(assembled.headers)}")
            path = _absolute(first.url, assembled.headers["Location"]).removeprefix(first.url)
            wrong = "sha256:" + hashlib.sha256(blob.digest.encode()).hexdigest()
            began = time.perf_counter()
            refused = call("PUT", f"{second.url}{path}&digest={wrong}", expect=400)
            seconds = time.perf_counter() - began
            if json.loads(refused.content)["errors"][0]["code"] != "DIGEST_INVALID":
                raise RuntimeError(f"unexpected refusal: {refused.content[:300]!r}")
    return blob.size / seconds / MB


def _caller(requests) -> Callable:
    def call(method: str, url: str, expect: int):
        r = requests.request(method, url, timeout=1800, allow_redirects=False)
        if r.status_code != expect:
            raise RuntimeError(f"{method} {url}: {r.status_code} {r.text[:300]}")
        return r

    return call


def _absolute(base: str, location: str) -> str:
    return location if location.startswith("http") else base + location


def _slice(blob: Blob, whole: Optional[bytes], start: int, length: int) -> bytes:
    if whole is not None:
        return whole[start:start + length]
    unit = len(blob.data)
    out = bytearray()
    while length:
        offset = start % unit
        take = min(length, unit - offset)
        out += blob.data[offset:offset + take]
        start, length = start + take, length - take
    return bytes(out)


def measure(workdir: Path, quick: bool) -> tuple[RelaySettings, Results]:
    s = relay_settings(quick)
    blob = Blob(s.size)
    results = Results()
    results.relay_direct, results.rss_direct = through_relay(workdir, blob, s, direct=True)
    log(f"relay direct: {results.relay_direct:.1f} MB/s, relay peak RSS {results.rss_direct:.1f} MB")
    results.serve = straight_to_serve(workdir, blob)
    log(f"stratus serve on moto: {results.serve:.1f} MB/s")
    results.relay_chunked, results.rss_chunked = through_relay(workdir, blob, s, direct=False)
    log(f"relay chunked: {results.relay_chunked:.1f} MB/s, relay peak RSS {results.rss_chunked:.1f} MB")
    results.verify = verification(workdir, blob, s)
    log(f"direct-upload verification: {results.verify:.1f} MB/s")
    return s, results
