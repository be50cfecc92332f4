"""Which server should `stratus serve` run on? Measure the candidates side by side.

    python -m bench.compare_servers [--reps 5] [--candidates gunicorn,granian-2x8,...]

Every candidate serves the same Stratus app over its own fresh directory; pushes,
pulls, request rates and memory are measured in turns (the order alternating per
repetition), so load elsewhere on the machine hits all candidates alike. granian
is not a dependency: `pip install granian` to include it.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import sys
from contextlib import ExitStack

from . import client as registry_client
from . import loadgen, servers
from .cli import MB, MiB, Blob
from .memory import PeakRSS, tree_cpu_seconds, tree_rss


# candidates run as `stratus serve` with these variables (uvicorn is its default server)
STRATUS_SERVE = {
    "gunicorn": {"STRATUS_SERVER": "gunicorn"},
    "granian": {"STRATUS_SERVER": "granian"},
    "uvicorn": {"STRATUS_SERVER": "uvicorn"},
    "uvicorn-asyncio": {"STRATUS_SERVER": "uvicorn", "STRATUS_LOOP": "asyncio"},
}


def _argv(candidate: str, port: int) -> list[str]:
    """gunicorn (`stratus serve` with STRATUS_SERVER=gunicorn in its env) or granian-<workers>x<threads>."""
    if candidate in STRATUS_SERVE:
        return [sys.executable, "-m", "chalicelib", "serve", "--addr", f"127.0.0.1:{port}"]
    if candidate.startswith("granian-"):
        workers, threads = candidate.split("-", 1)[1].split("x")
        granian = shutil.which("granian", path=os.path.dirname(sys.executable)) or shutil.which("granian")
        if granian is None:
            raise SystemExit("granian is not installed (pip install granian)")
        return [
            granian, "--interface", "wsgi", "--host", "127.0.0.1", "--port", str(port),
            "--workers", workers, "--blocking-threads", threads, "--log-level", "error",
            "bench.granian_app:app",
        ]
    raise SystemExit(f"unknown candidate {candidate!r}")


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.compare_servers", description=__doc__)
    p.add_argument("--candidates", default="gunicorn,granian-2x8,granian-1x8")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--blob-mib", type=int, default=256)
    p.add_argument("--rss-push-mib", type=int, default=1024)
    p.add_argument("--wrk-seconds", type=float, default=3.0)
    p.add_argument("--measures", default="push,pull,rates,rss", help="comma-separated subset")
    args = p.parse_args()
    candidates = [c.strip() for c in args.candidates.split(",") if c.strip()]
    measures = set(args.measures.split(","))
    size = args.blob_mib * MiB
    results: dict[tuple[str, str], list[float]] = {}

    def record(key: str, candidate: str, value: float) -> None:
        results.setdefault((key, candidate), []).append(value)

    with servers.workspace() as workdir, ExitStack() as stack:
        running = {}
        for candidate in candidates:
            root = workdir / f"{candidate}-data"
            root.mkdir()
            port = servers.free_port()
            env = {
                "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": str(root),
                "REGISTRY_HTTP_SECRET": "bench-secret",
                "REGISTRY_LOG_LEVEL": "error",
                "PYTHONPATH": str(servers.ROOT),
                **STRATUS_SERVE.get(candidate, {}),
            }
            running[candidate] = stack.enter_context(
                servers._run(candidate, _argv(candidate, port), port, root, workdir, env)
            )
        clients = {c: stack.enter_context(registry_client.Client(s.url)) for c, s in running.items()}
        images = {c: clients[c].push_image("bench/app", "latest", os.urandom(4096)) for c in candidates}
        blob = Blob(size)
        buffer = memoryview(bytearray(size))
        accept = (("Accept", registry_client.MANIFEST_ACCEPT),)
        for rep in range(args.reps):
            order = candidates if rep % 2 == 0 else candidates[::-1]
            digest = blob.stamp(f"mono {rep}")
            for c in order:
                cpu = tree_cpu_seconds(running[c].pid)
                seconds = registry_client.timed(clients[c].push_monolithic, "bench/mono", blob.view, size, digest)
                record("push monolithic (MB/s)", c, size / seconds / MB)
                record("push monolithic, server CPU (ms/MB)", c, (tree_cpu_seconds(running[c].pid) - cpu) * 1000 / (size / MB))
            for c in order if "pull" in measures else ():
                cpu = tree_cpu_seconds(running[c].pid)
                seconds = registry_client.timed(clients[c].pull, "bench/mono", digest, buffer)
                record("pull (MB/s)", c, size / seconds / MB)
                record("pull, server CPU (ms/MB)", c, (tree_cpu_seconds(running[c].pid) - cpu) * 1000 / (size / MB))
            digest = blob.stamp(f"chunked {rep}")
            for c in order:
                seconds = registry_client.timed(clients[c].push_chunked, "bench/chunked", blob.view, digest, 8 * MiB)
                record("push chunked (MB/s)", c, size / seconds / MB)
            for c in order if "rates" in measures else ():
                image = images[c]
                for key, scenario in (
                    ("manifest GET by tag (req/s)", loadgen.Scenario(
                        "tag", "GET", f"/v2/{image.repository}/manifests/{image.tag}", accept)),
                    ("manifest GET by digest (req/s)", loadgen.Scenario(
                        "digest", "GET", f"/v2/{image.repository}/manifests/{image.manifest_digest}", accept)),
                    ("blob HEAD (req/s)", loadgen.Scenario(
                        "head", "HEAD", f"/v2/{image.repository}/blobs/{image.empty_digest}")),
                ):
                    cpu = tree_cpu_seconds(running[c].pid)
                    rate = loadgen.rate(running[c].url, scenario, workdir, seconds=args.wrk_seconds)
                    used = tree_cpu_seconds(running[c].pid) - cpu
                    record(key, c, rate)
                    record(key.replace("(req/s)", "server CPU (us/req)"), c, used * 1e6 / (rate * args.wrk_seconds))
            print(f"repetition {rep + 1}/{args.reps} done", file=sys.stderr, flush=True)
        copies = max(1, args.rss_push_mib * MiB // size)
        blob.stamp("rss")
        hasher = hashlib.sha256()
        for _ in range(copies):
            hasher.update(blob.view)
        digest = "sha256:" + hasher.hexdigest()
        for c in candidates if "rss" in measures else ():
            record("RSS idle (MB)", c, tree_rss(running[c].pid) / MB)
            with PeakRSS(running[c].pid) as peak:
                clients[c].push_monolithic("bench/big", [blob.view] * copies, copies * size, digest)
            record(f"RSS peak, {copies * size // MiB} MiB push (MB)", c, peak.peak / MB)

    keys = list(dict.fromkeys(k for k, _ in results))
    print("| Measure | " + " | ".join(candidates) + " |")
    print("|---|" + "---|" * len(candidates))
    for key in keys:
        cells = [f"{statistics.median(results[(key, c)]):.{1 if 'ms/MB' in key else 0}f}" for c in candidates]
        print(f"| {key} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
