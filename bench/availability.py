"""Availability under hostile clients: which server holds up, measured side by side.

    python -m bench.availability [--stalled 1000] [--unread 200] [--candidates ...]

Each candidate (a `stratus serve` variant, or the reference registry) is started
over a fresh directory with its production defaults, given a small image and a
64 MiB blob, then measured:

- unloaded: p50/p99 of GET /v2/ and of a manifest GET by tag (sequential, one
  keep-alive connection), and wrk's manifest-GET rate (16 connections);
- loaded: the same with `--stalled` uploads open (a PATCH whose headers promise
  1 MiB, then nothing) and `--unread` downloads of the 64 MiB blob that read
  nothing; a request not answered in 2 s counts as unanswered (inf);
- wrk with 1000 keep-alive connections on the manifest GET, after the hostile
  clients are gone: req/s and errors.

Candidates run one after the other, in a fresh process each; each row is
printed as a Markdown table at the end. Not part of `make bench`.
"""
from __future__ import annotations

import argparse
import http.client
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator, Optional
from urllib.parse import urlsplit

from . import client as registry_client
from . import loadgen, servers
from .memory import concurrent_pushes, tree_rss

MiB = 1 << 20
MB = 1_000_000
BLOB = 64 * MiB
PROBES = 100  # requests per latency sample
PROBE_TIMEOUT = 2.0

CANDIDATES = {
    # name: STRATUS_SERVER for `stratus serve`, or a special runner
    "uvicorn": "uvicorn",
    "uvicorn-asyncio": "uvicorn",
    "granian": "granian",
    "gunicorn": "gunicorn",
    "granian-asgi": None,
    "reference": None,
}


@contextmanager
def _candidate(name: str, workdir: Path) -> Iterator[servers.RunningServer]:
    if name == "reference":
        with servers.reference(workdir, name=name) as server:
            yield server
        return
    if name == "granian-asgi":
        root = workdir / f"{name}-data"
        root.mkdir()
        port = servers.free_port()
        granian = shutil.which("granian", path=os.path.dirname(sys.executable)) or "granian"
        argv = [granian, "--interface", "asgi", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                "--log-level", "error", "bench.granian_asgi_app:app"]
        env = {"REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": str(root), "REGISTRY_HTTP_SECRET": "bench-secret",
               "REGISTRY_LOG_LEVEL": "error", "PYTHONPATH": str(servers.ROOT)}
        with servers._run(name, argv, port, root, workdir, env) as server:
            yield server
        return
    environment = {"STRATUS_SERVER": CANDIDATES[name]}
    if name == "uvicorn-asyncio":
        environment["STRATUS_LOOP"] = "asyncio"
    with servers.stratus(workdir, name=name, environment=environment) as server:
        yield server


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _probe(url: str, path: str, headers: dict, count: int) -> list[float]:
    """Milliseconds of each of `count` GETs (inf when not answered within PROBE_TIMEOUT)."""
    parts = urlsplit(url)
    conn: Optional[http.client.HTTPConnection] = None
    times = []
    unanswered = 0
    for _ in range(count):
        start = time.perf_counter()
        try:
            if conn is None:
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=PROBE_TIMEOUT)
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            response.read()
            ok = response.status == 200
        except (OSError, http.client.HTTPException):
            ok = False
            if conn is not None:
                conn.close()
            conn = None
        times.append((time.perf_counter() - start) * 1000 if ok else float("inf"))
        if not ok:
            unanswered += 1
            if unanswered >= 5:  # not answering: do not wait out every probe
                times += [float("inf")] * (count - len(times))
                break
    if conn is not None:
        conn.close()
    return times


_RATE = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_NON_2XX = re.compile(r"^\s+Non-2xx or 3xx responses:\s+(\d+)", re.M)
_SOCKET_ERRORS = re.compile(r"^\s+Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", re.M)


def _wrk(url: str, path: str, connections: int, seconds: int, workdir: Path) -> tuple[float, int]:
    """(req/s, failed requests) of wrk on a manifest GET; never raises on failures."""
    script = workdir / "wrk-avail.lua"
    script.write_text(f'wrk.method = "GET"\nwrk.headers["Accept"] = "{registry_client.MANIFEST_ACCEPT}"\n')
    argv = [loadgen.WRK, "-t", "2", "-c", str(connections), "-d", f"{seconds}s", "--timeout", "2s",
            "-s", str(script), url + path]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    text = out.stdout + out.stderr
    rate = _RATE.search(text)
    errors = sum(int(n) for n in (_NON_2XX.search(text) or [None, "0"])[1:2])
    sock = _SOCKET_ERRORS.search(text)
    if sock:
        errors += sum(int(n) for n in sock.groups())
    return (float(rate.group(1)) if rate else 0.0), errors


def _open_hostile(stack: ExitStack, server: servers.RunningServer, repo: str, blob: str,
                  stalled: int, unread: int) -> tuple[int, int]:
    """Open the stalled uploads and unread downloads; how many of each connected."""
    parts = urlsplit(server.url)
    addr = (parts.hostname, parts.port)
    opened_uploads = opened_downloads = 0
    with registry_client.Client(server.url) as client:
        locations = [client.start_upload(repo) for _ in range(min(stalled, 50))]
    for i in range(stalled):
        location = urlsplit(locations[i % len(locations)])
        try:
            sock = stack.enter_context(socket.create_connection(addr, timeout=5))
            sock.sendall((f"PATCH {location.path}?{location.query} HTTP/1.1\r\nHost: x\r\n"
                          f"Content-Type: application/octet-stream\r\nContent-Length: {1 << 20}\r\n\r\n").encode())
            opened_uploads += 1
        except OSError:
            pass
    for _ in range(unread):
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            stack.callback(sock.close)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.settimeout(5)
            sock.connect(addr)
            sock.sendall(f"GET /v2/{repo}/blobs/{blob} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            opened_downloads += 1
        except OSError:
            pass
    return opened_uploads, opened_downloads


def measure(name: str, workdir: Path, stalled: int, unread: int, seconds: int) -> dict[str, str]:
    row: dict[str, str] = {}
    with _candidate(name, workdir) as server, registry_client.Client(server.url) as client:
        image = client.push_image("bench/app", "latest", os.urandom(4096))
        data = os.urandom(BLOB)
        blob = registry_client.sha256_digest(data)
        client.push_monolithic("bench/app", memoryview(data), BLOB, blob)
        del data
        accept = {"Accept": registry_client.MANIFEST_ACCEPT}
        manifest = f"/v2/{image.repository}/manifests/{image.tag}"

        def latencies(label: str) -> None:
            for what, path, headers in (("GET /v2/", "/v2/", {}), ("manifest GET", manifest, accept)):
                times = _probe(server.url, path, headers, PROBES)
                answered = sum(t != float("inf") for t in times)
                row[f"{what} p50 / p99 (ms), {label}"] = (
                    f"{_fmt(statistics.median(times))} / {_fmt(_percentile(times, 0.99))}"
                    + ("" if answered == len(times) else f" ({len(times) - answered} of {len(times)} unanswered)")
                )

        latencies("unloaded")
        rate0, errors0 = _wrk(server.url, manifest, 16, seconds, workdir)
        row["manifest GET, wrk -c16 (req/s), unloaded"] = f"{rate0:.0f}" + (f" ({errors0} errors)" if errors0 else "")
        row["RSS idle (MB)"] = f"{tree_rss(server.pid) / MB:.0f}"
        with ExitStack() as stack:
            started = time.monotonic()
            uploads, downloads = _open_hostile(stack, server, image.repository, blob, stalled, unread)
            row["hostile connections opened"] = f"{uploads} uploads, {downloads} downloads in {time.monotonic() - started:.1f} s"
            time.sleep(1.0)
            latencies(f"{stalled} stalled + {unread} unread")
            rate1, errors1 = _wrk(server.url, manifest, 16, seconds, workdir)
            row[f"manifest GET, wrk -c16 (req/s), {stalled} stalled + {unread} unread"] = (
                f"{rate1:.0f} ({rate1 / rate0:.0%} of unloaded)" if rate0 else f"{rate1:.0f}"
            ) + (f", {errors1} errors" if errors1 else "")
            row["RSS with them open (MB)"] = f"{tree_rss(server.pid) / MB:.0f}"
        time.sleep(1.0)
        rate2, errors2 = _wrk(server.url, manifest, 1000, seconds, workdir)
        row["manifest GET, wrk -c1000 (req/s; errors)"] = f"{rate2:.0f}; {errors2}"
    return row


def _fmt(ms: float) -> str:
    return "∞" if ms == float("inf") else (f"{ms:.1f}" if ms < 100 else f"{ms:.0f}")


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.availability", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--candidates", default="uvicorn,granian,gunicorn,granian-asgi,reference")
    p.add_argument("--stalled", type=int, default=1000)
    p.add_argument("--unread", type=int, default=200)
    p.add_argument("--seconds", type=int, default=5, help="each wrk run")
    args = p.parse_args()
    candidates = [c.strip() for c in args.candidates.split(",") if c.strip()]
    for c in candidates:
        if c not in CANDIDATES:
            raise SystemExit(f"unknown candidate {c!r}: choose among {', '.join(CANDIDATES)}")
    rows: dict[str, dict[str, str]] = {}
    with servers.workspace() as workdir:
        for c in candidates:
            print(f"measuring {c}", file=sys.stderr, flush=True)
            rows[c] = measure(c, workdir, args.stalled, args.unread, args.seconds)
    keys = list(dict.fromkeys(k for r in rows.values() for k in r))
    print("| Measure | " + " | ".join(candidates) + " |")
    print("|---|" + "---|" * len(candidates))
    for key in keys:
        print(f"| {key} | " + " | ".join(rows[c].get(key, "—") for c in candidates) + " |")


if __name__ == "__main__":
    main()


# -- the rows of `make bench` (bench/cli.py, measure "avail") ---------------------------


@contextmanager
def fresh(name: str, workdir: Path, tree: Optional[Path] = None) -> Iterator[servers.RunningServer]:
    """A fresh `stratus serve` ("stratus") or reference registry, as bench/cli.py runs them."""
    if name == "reference":
        with servers.reference(workdir, name="reference-avail") as server:
            yield server
    else:
        with servers.stratus(workdir, tree=tree, name="stratus-avail") as server:
            yield server


def numbers(server: servers.RunningServer, workdir: Path, stalled: int, unread: int, seconds: int,
            pushes: int, push_size: int) -> dict[str, float]:
    """The availability rows for one registry: p99s in ms (inf when unanswered), the
    loaded rate as % of the unloaded one, wrk -c1000 req/s and errors, and the peak RSS
    (MB) during `pushes` concurrent monolithic pushes of `push_size` bytes, measured
    first, before any hostile client touched the server."""
    out: dict[str, float] = {}
    peak, failures = concurrent_pushes(server.url, server.pid, pushes, push_size)
    out["rss_concurrent_pushes"] = peak / MB
    if failures:
        print(f"{server.name}: {len(failures)} of {pushes} concurrent pushes failed: {failures[0]}", file=sys.stderr)
    with registry_client.Client(server.url) as client:
        image = client.push_image("bench/app", "latest", os.urandom(4096))
        data = os.urandom(BLOB)
        blob = registry_client.sha256_digest(data)
        client.push_monolithic("bench/app", memoryview(data), BLOB, blob)
        del data
    accept = {"Accept": registry_client.MANIFEST_ACCEPT}
    manifest = f"/v2/{image.repository}/manifests/{image.tag}"
    unloaded, _ = _wrk(server.url, manifest, 16, seconds, workdir)
    with ExitStack() as stack:
        _open_hostile(stack, server, image.repository, blob, stalled, unread)
        time.sleep(1.0)
        out["avail_root_p99"] = _percentile(_probe(server.url, "/v2/", {}, PROBES), 0.99)
        out["avail_manifest_p99"] = _percentile(_probe(server.url, manifest, accept, PROBES), 0.99)
        loaded, _ = _wrk(server.url, manifest, 16, seconds, workdir)
        out["avail_rate"] = 100.0 * loaded / unloaded if unloaded else 0.0
    time.sleep(1.0)
    out["avail_wrk1000"], out["avail_wrk1000_errors"] = _wrk(server.url, manifest, 1000, seconds, workdir)
    return out
