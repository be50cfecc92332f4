"""`python -m bench`: run every measure against both registries and report."""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from . import client as registry_client
from . import availability, coldstart, descriptor_cache, hashing, loadgen, machine, rados, report, servers, token_auth
from . import cost, lambda_cold
from . import relay as relay_bench
from .memory import PeakRSS, available_memory, tree_rss, warm_guest_memory

MiB = 1 << 20
MB = 1e6
MEASURES = ("push", "pull", "rates", "token", "rss", "import", "hash", "cache", "rados", "avail", "relay",
            "lambda", "cost")
# the first pull after each push, then this many more (the blob is cached by then on
# both registries: see "Pull, first after push" in docs/benchmarks.md)
PULLS_PER_REP = 3
HASH_RUNS_PER_REP = 3
# issue 14's load: stalled uploads and unread downloads open at once; concurrent pushes
AVAIL_STALLED, AVAIL_UNREAD, AVAIL_PUSHES = 1000, 200, 32
DEFAULT_OUTPUT = servers.ROOT / "docs" / "benchmarks.md"


@dataclass(frozen=True)
class Settings:
    blob: int
    chunk: int
    rss_push: int
    reps: int
    wrk_seconds: float
    connections: int
    wrk_threads: int
    measures: tuple[str, ...]
    registries: tuple[str, ...]
    workers: Optional[int]
    cache_ops: int = 50
    tree: Optional[Path] = None
    warm_memory: bool = True

    def describe(self) -> list[tuple[str, str]]:
        return [
            ("Blob", f"{self.blob // MiB} MiB random, chunked push in {self.chunk // MiB} MiB PATCHes"),
            ("Memory push", f"{self.rss_push // MiB} MiB monolithic, tree RSS sampled every 10 ms"),
            ("Repetitions", f"{self.reps} (median reported)"),
            ("Pulls", f"1 right after each registry's own push, then {PULLS_PER_REP} more, per repetition and "
                      "registry, alternating; timed from the request to the last byte, the digest checked after"),
            ("Writeback", "dirty pages written out (sync, untimed) before every push"),
            ("Request rates", f"wrk -t{self.wrk_threads} -c{self.connections} -d{self.wrk_seconds:g}s, keep-alive"),
            ("Hashing", f"{HASH_RUNS_PER_REP} runs per repetition, timed in thread CPU time (immune to preemption)"),
            ("Bearer token", "ES256 JWT with its x5c chain (leaf, intermediate) under a root both registries "
             "trust; one token on every request, as a client sends it"),
            ("Stratus workers", str(self.workers or "default")),
            ("Stratus served from", str(self.tree) if self.tree else "this checkout"),
            ("Guest memory", "touched and freed right before each push, for both registries "
             "(a fresh VM's first-touch faults excluded; --cold-memory keeps them)"
             if self.warm_memory else "cold: first-touch faults of a fresh VM included"),
            ("Descriptor cache", f"{self.cache_ops} in-process operations per run over moto S3 and redis-server"),
            ("Ceph RADOS", "one monitor and one memstore OSD on loopback (tests/ceph_cluster.py), pool size 1"),
            ("MB", "10^6 bytes"),
        ]


def parse_args(argv: Optional[Sequence[str]]) -> tuple[Settings, argparse.Namespace]:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="tiny sizes, one repetition, no docs written")
    p.add_argument("--reps", type=int, help="repetitions per measure (default 3, quick 1)")
    p.add_argument("--blob-mib", type=int, help="pushed/pulled blob size (default 256)")
    p.add_argument("--chunk-mib", type=int, help="PATCH size of the chunked push (default 8)")
    p.add_argument("--rss-push-mib", type=int, help="size of the push sampled for memory (default 1024)")
    p.add_argument("--wrk-seconds", type=float, help="duration of each wrk run (default 5, quick 1)")
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--wrk-threads", type=int, default=2)
    p.add_argument("--only", help=f"comma-separated measures among {','.join(MEASURES)}")
    p.add_argument("--registries", default="stratus,reference", help="which registries to run")
    p.add_argument("--workers", type=int, help="stratus serve --workers (default: its own default)")
    p.add_argument("--stratus-tree", type=Path, help="serve Stratus from another checkout (before/after runs)")
    p.add_argument("--cold-memory", action="store_true",
                   help="do not touch guest memory before measuring (see bench.memory.warm_guest_memory)")
    p.add_argument("--cache-ops", type=int, help="operations per descriptor-cache run (default 50, quick 10)")
    p.add_argument("--output", type=Path, help=f"markdown file to write (default {DEFAULT_OUTPUT}, not with --quick)")
    p.add_argument("--no-write", action="store_true", help="print the table only")
    p.add_argument("--keep", action="store_true", help="keep the work directory (data and logs)")
    args = p.parse_args(argv)
    quick = args.quick
    # --quick leaves out the Lambda cold starts unless named: building the package
    # (`make package`, wheels from PyPI) takes longer than the rest of a quick run
    measures = tuple(m.strip() for m in args.only.split(",")) if args.only else (
        tuple(m for m in MEASURES if m not in ("lambda", "cost")) if quick else MEASURES)
    unknown = set(measures) - set(MEASURES)
    if unknown:
        p.error(f"unknown measure(s): {', '.join(sorted(unknown))}")
    registries = tuple(r.strip() for r in args.registries.split(",") if r.strip())
    if set(registries) - {"stratus", "reference"} or "stratus" not in registries:
        p.error("--registries takes stratus and optionally reference")
    settings = Settings(
        blob=(args.blob_mib or (4 if quick else 256)) * MiB,
        chunk=(args.chunk_mib or (1 if quick else 8)) * MiB,
        rss_push=(args.rss_push_mib or (16 if quick else 1024)) * MiB,
        reps=args.reps or (1 if quick else 3),
        wrk_seconds=args.wrk_seconds or (1.0 if quick else 5.0),
        connections=args.connections,
        wrk_threads=args.wrk_threads,
        measures=measures,
        registries=registries,
        workers=args.workers,
        cache_ops=args.cache_ops or (10 if quick else 50),
        tree=args.stratus_tree,
        warm_memory=not args.cold_memory,
    )
    if settings.rss_push % settings.blob and settings.rss_push > settings.blob:
        p.error("--rss-push-mib must be a multiple of --blob-mib")
    return settings, args


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Blob:
    """A random buffer made unique per use by stamping its first bytes."""

    def __init__(self, size: int):
        self.data = bytearray(os.urandom(size))
        self.view = memoryview(self.data)

    def stamp(self, label: str) -> str:
        tag = f"stratus-bench {label} {time.time_ns()}".encode()[:64].ljust(64, b".")
        self.view[: len(tag)] = tag
        return registry_client.sha256_digest(self.view)


def rows_template() -> dict[str, report.Row]:
    ratio = report.ratio_at_least
    return {
        "push_mono": report.Row("Push, monolithic", "MB/s", target=ratio(1.5), target_text="≥ 1.5×"),
        "push_chunked": report.Row("Push, chunked", "MB/s", target=ratio(1.5), target_text="≥ 1.5×"),
        "pull": report.Row("Pull", "MB/s", target=ratio(1.0), target_text="≥ 1.0×"),
        # Stratus writes uploads with O_DIRECT and reads each piece back into the page
        # cache as it lands (storage/filesystem/direct.py), so a first read finds it
        # cached, as the reference's does after writing through the page cache
        "pull_first": report.Row("Pull, first after push", "MB/s", target=ratio(1.0), target_text="≥ 1.0×"),
        "manifest_tag": report.Row("Manifest GET by tag", "req/s", target=ratio(1.5), target_text="≥ 1.5×"),
        "manifest_digest": report.Row("Manifest GET by digest", "req/s", target=ratio(1.5), target_text="≥ 1.5×"),
        "blob_head": report.Row("Blob HEAD (empty blob)", "req/s", target=ratio(1.5), target_text="≥ 1.5×"),
        # not an issue-3 target: what a bearer token adds to the commonest request
        "token_manifest_tag": report.Row("Manifest GET by tag, bearer token (x5c chain)", "req/s"),
        "rss_idle": report.Row("Server RSS, idle", "MB", fmt="{:.1f}"),
        "rss_peak": report.Row("Server RSS, peak during push", "MB", fmt="{:.1f}",
                               target=report.below(150), target_text="< 150 MB"),
        "import_time": report.Row("Import app.py", "ms", target=report.below(250), target_text="< 250 ms"),
        "import_rss": report.Row("RSS after importing app.py", "MB", fmt="{:.1f}"),
        "hash": report.Row("SHA-256, state saved every chunk (ref: hashlib)", "MB/s",
                           target=ratio(0.95), target_text="≥ 0.95×"),
        # Stratus alone (the reference has no S3 here): the S3 requests per operation
        # are added to the label once measured
        "cache_head_cold": report.Row("Blob HEAD on S3, cold descriptor cache", "req/s"),
        "cache_head_warm": report.Row("Blob HEAD on S3, warm Redis", "req/s"),
        "cache_put_cold": report.Row("Manifest PUT verifying 5 blobs on S3, cold descriptor cache", "req/s"),
        "cache_put_warm": report.Row("Manifest PUT verifying 5 blobs on S3, warm Redis", "req/s"),
        # Stratus alone: the reference registry 2.8 has no RADOS driver
        "rados_push_mono": report.Row("Push on Ceph RADOS, monolithic", "MB/s"),
        "rados_push_chunked": report.Row("Push on Ceph RADOS, chunked", "MB/s"),
        "rados_pull": report.Row("Pull from Ceph RADOS", "MB/s"),
        # issue 14: fresh servers with hostile clients open (bench/availability.py)
        **availability_rows(),
        **relay_rows(),
        **lambda_cold_rows(),
        **cost.rows(),
    }


def lambda_cold_rows() -> dict[str, report.Row]:
    """Issue 13 (bench/lambda_cold.py): a new instance's first request, from the deployment
    package alone; the network calls (loopback moto and Redis) are in the number."""
    where = "new Lambda instance (package only + runtime SDK, moto S3, secret in SSM)"
    target = report.below(100)
    return {
        "lambda_cold_base": report.Row(f"First GET /v2/ of a {where}", "ms", target=target,
                                       target_text="< 100 ms + network"),
        "lambda_cold_manifest": report.Row(f"First manifest GET by digest, warm Redis, of a {where}", "ms",
                                           target=target, target_text="< 100 ms + network"),
        "lambda_cold_blob": report.Row(f"First blob GET (307), warm Redis, of a {where}", "ms",
                                       target=target, target_text="< 100 ms + network"),
    }


def relay_rows() -> dict[str, report.Row]:
    """Issue 12 (bench/relay.py): the "Reference" column is `stratus serve` on moto."""
    via = "via stratus relay → Lambda stand-in → moto (Reference: stratus serve on moto)"
    return {
        "relay_direct": report.Row(f"Push {via}, direct mode", "MB/s", fmt="{:.1f}",
                                   target=report.ratio_at_least(0.5), target_text="≥ 0.5×"),
        "relay_chunked": report.Row(f"Push {via}, chunked mode", "MB/s", fmt="{:.1f}"),
        "relay_rss": report.Row("Relay peak RSS during the push, direct mode", "MB", fmt="{:.1f}",
                                target=report.below(100), target_text="< 100 MB"),
        "relay_rss_chunked": report.Row("Relay peak RSS during the push, chunked mode", "MB", fmt="{:.1f}"),
        "relay_verify": report.Row("Direct-upload verification on moto (completion PUT read-back)", "MB/s",
                                   fmt="{:.1f}"),
    }


def availability_rows() -> dict[str, report.Row]:
    load = f"{AVAIL_STALLED} stalled uploads + {AVAIL_UNREAD} unread downloads open"
    return {
        "avail_root_p99": report.Row(f"With {load}: GET /v2/ p99", "ms", fmt="{:.1f}",
                                     target=report.below(50), target_text="< 50 ms"),
        "avail_manifest_p99": report.Row(f"With {load}: manifest GET p99", "ms", fmt="{:.1f}",
                                         target=report.below(50), target_text="< 50 ms"),
        "avail_rate": report.Row(f"With {load}: manifest GET rate, of unloaded", "%",
                                 target=lambda s, r: s >= 80, target_text="≥ 80%"),
        "avail_wrk1000": report.Row("Manifest GET, wrk 1000 connections", "req/s"),
        "avail_wrk1000_errors": report.Row("Manifest GET, wrk 1000 connections, errors", "requests",
                                           target=lambda s, r: s == 0, target_text="0"),
        "rss_concurrent_pushes": report.Row(f"Server RSS, peak in {AVAIL_PUSHES} concurrent 64 MiB pushes", "MB",
                                            fmt="{:.1f}", target=report.below(100), target_text="≤ 100 MB"),
    }


class Bench:
    def __init__(self, settings: Settings, workdir: Path):
        self.settings = settings
        self.workdir = workdir
        self.rows = rows_template()
        self.servers: dict[str, servers.RunningServer] = {}
        self.clients: dict[str, registry_client.Client] = {}

    def record(self, key: str, registry: str, value: float) -> None:
        row = self.rows[key]
        (row.stratus if registry == "stratus" else row.reference).append(value)

    def order(self, rep: int) -> list[str]:
        """Alternate who goes first, so drift during a run hits both alike."""
        names = list(self.servers)
        return names if rep % 2 == 0 else names[::-1]

    # -- measures --------------------------------------------------------------------

    def measure_push_pull(self, blob: Blob) -> None:
        s = self.settings
        pull_buffer = memoryview(bytearray(s.blob))
        for rep in range(s.reps):
            digest = blob.stamp(f"mono {rep}")
            for name in self.order(rep):
                # Each registry's push, then its first pull at once. Dirty pages left by
                # the one before (the reference writes through the page cache and leaves
                # writeback to the kernel) are written out first, untimed, so they land
                # on no one's measurement: with both pushes before both first pulls, the
                # second push's writeback ran under the first registry's first pull.
                os.sync()
                # the guest-memory warm-up (see warm) also when only the pulls are measured:
                # the first pull reads pages the push's read-back filled
                self.warm(s.blob)
                if "push" in s.measures:
                    seconds = registry_client.timed(
                        self.clients[name].push_monolithic, "bench/mono", blob.view, s.blob, digest
                    )
                    self.record("push_mono", name, s.blob / seconds / MB)
                    log(f"push monolithic {name}: {s.blob / seconds / MB:.0f} MB/s")
                else:
                    self.clients[name].push_monolithic("bench/mono", blob.view, s.blob, digest)
                if "pull" in s.measures:
                    seconds = self.clients[name].pull("bench/mono", digest, pull_buffer)
                    self.record("pull_first", name, s.blob / seconds / MB)
                    log(f"first pull {name}: {s.blob / seconds / MB:.0f} MB/s")
            if "pull" in s.measures:
                # pulls are short and noisy: several per repetition, alternating
                for turn in range(1, 1 + PULLS_PER_REP):
                    for name in self.order(rep + turn):
                        seconds = self.clients[name].pull("bench/mono", digest, pull_buffer)
                        self.record("pull", name, s.blob / seconds / MB)
                        log(f"pull {name}: {s.blob / seconds / MB:.0f} MB/s")
            if "push" in s.measures:
                digest = blob.stamp(f"chunked {rep}")
                for name in self.order(rep):
                    os.sync()
                    self.warm(s.blob)
                    seconds = registry_client.timed(
                        self.clients[name].push_chunked, "bench/chunked", blob.view, digest, s.chunk
                    )
                    self.record("push_chunked", name, s.blob / seconds / MB)
                    log(f"push chunked {name}: {s.blob / seconds / MB:.0f} MB/s")

    def warm(self, nbytes: int) -> None:
        """Touch and free memory for the next push's page cache (see warm_guest_memory).

        Done right before each push, for both registries alike: the guest hands
        freed pages back to the hypervisor within seconds, so a single warm-up at
        the start only helped the first repetition."""
        if self.settings.warm_memory:
            warm_guest_memory(min(nbytes + nbytes // 2, available_memory() // 2))

    def measure_rates(self) -> None:
        s = self.settings
        images = {name: c.push_image("bench/app", "latest", os.urandom(4096)) for name, c in self.clients.items()}
        for c in self.clients.values():
            c.close()  # wrk brings its own connections
        accept = (("Accept", registry_client.MANIFEST_ACCEPT),)

        def scenarios(image: registry_client.Image) -> dict[str, loadgen.Scenario]:
            return {
                "manifest_tag": loadgen.Scenario(
                    "manifest-tag", "GET", f"/v2/{image.repository}/manifests/{image.tag}", accept),
                "manifest_digest": loadgen.Scenario(
                    "manifest-digest", "GET", f"/v2/{image.repository}/manifests/{image.manifest_digest}", accept),
                "blob_head": loadgen.Scenario(
                    "blob-head", "HEAD", f"/v2/{image.repository}/blobs/{image.empty_digest}"),
            }

        # registries alternate within each scenario, so a burst of load elsewhere
        # on the machine lands on both rather than on one registry's whole block
        for rep in range(s.reps):
            for index, key in enumerate(("manifest_tag", "manifest_digest", "blob_head")):
                for name in self.order(rep + index):
                    scenario = scenarios(images[name])[key]
                    rate = loadgen.rate(
                        self.servers[name].url, scenario, self.workdir,
                        connections=s.connections, threads=s.wrk_threads, seconds=s.wrk_seconds,
                    )
                    self.record(key, name, rate)
                    log(f"{scenario.name} {name}: {rate:.0f} req/s")

    def measure_token(self) -> None:
        """Manifest GET by tag with the same bearer token on every request, both
        registries configured for token auth (bench/token_auth.py)."""
        s = self.settings
        tokens = token_auth.BenchTokens(self.workdir)
        token = tokens.token("bench/token")
        headers = (("Accept", registry_client.MANIFEST_ACCEPT), ("Authorization", f"Bearer {token}"))
        with token_auth.registries(self.workdir, tokens, "reference" in s.registries, s.workers, s.tree) as running:
            paths = {}
            for name, server in running.items():
                with registry_client.Client(server.url, headers={"Authorization": f"Bearer {token}"}) as c:
                    image = c.push_image("bench/token", "latest", os.urandom(4096))
                paths[name] = f"/v2/{image.repository}/manifests/{image.tag}"
            for rep in range(s.reps):
                for name in list(running)[:: 1 if rep % 2 == 0 else -1]:
                    scenario = loadgen.Scenario("manifest-tag-token", "GET", paths[name], headers)
                    rate = loadgen.rate(
                        running[name].url, scenario, self.workdir,
                        connections=s.connections, threads=s.wrk_threads, seconds=s.wrk_seconds,
                    )
                    self.record("token_manifest_tag", name, rate)
                    log(f"{scenario.name} {name}: {rate:.0f} req/s")

    def measure_rss(self, blob: Blob) -> None:
        s = self.settings
        copies = max(1, s.rss_push // s.blob)
        size = copies * s.blob
        for rep in range(s.reps):
            blob.stamp(f"rss {rep}")
            hasher = hashlib.sha256()
            for _ in range(copies):
                hasher.update(blob.view)
            digest = "sha256:" + hasher.hexdigest()
            for name in self.order(rep):
                server = self.servers[name]
                self.record("rss_idle", name, tree_rss(server.pid) / MB)
                self.warm(size)
                with PeakRSS(server.pid) as peak:
                    self.clients[name].push_monolithic("bench/big", [blob.view] * copies, size, digest)
                self.record("rss_peak", name, peak.peak / MB)
                log(f"rss during {size // MiB} MiB push {name}: peak {peak.peak / MB:.1f} MB ({peak.samples} samples)")

    def measure_import(self) -> None:
        for _ in range(self.settings.reps):
            cost = coldstart.import_app(root=self.settings.tree or servers.ROOT)
            self.record("import_time", "stratus", cost.seconds * 1000)
            self.record("import_rss", "stratus", cost.rss / MB)
            log(f"import app.py: {cost.seconds * 1000:.0f} ms, {cost.rss / MB:.1f} MB")

    def measure_hash(self, blob: Blob) -> None:
        s = self.settings
        row = self.rows["hash"]
        hashing.hashlib_seconds(blob.view[:MiB], MiB)  # load libcrypto and warm both up
        hashing.resumable_seconds(blob.view[:MiB], MiB)
        for run in range(s.reps * HASH_RUNS_PER_REP):
            first, second = (hashing.hashlib_seconds, hashing.resumable_seconds)[:: 1 if run % 2 else -1]
            results = {fn: fn(blob.view, s.chunk) for fn in (first, second)}
            (base, expected), (resumed, got) = results[hashing.hashlib_seconds], results[hashing.resumable_seconds]
            if got != expected:
                raise RuntimeError(f"resumable hasher gave {got}, hashlib {expected}")
            row.stratus.append(s.blob / resumed / MB)
            row.reference.append(s.blob / base / MB)
            log(f"hash: resumable {s.blob / resumed / MB:.0f} MB/s, hashlib {s.blob / base / MB:.0f} MB/s (CPU time)")

    def measure_cache(self) -> None:
        if not descriptor_cache.available():
            log("descriptor cache: needs redis-server and moto_server; skipped")
            return
        s = self.settings
        for run in descriptor_cache.measure(self.workdir, s.cache_ops, s.reps):
            for key, result in run.items():
                row = self.rows[f"cache_{key}"]
                row.stratus.append(result.rate)
                if "S3 requests" not in row.label:
                    row.label += f", {result.s3_requests:g} S3 requests/op"
                log(f"descriptor cache {key}: {result.rate:.0f} req/s, {result.s3_requests:g} S3 requests/op")

    def measure_rados(self, blob: Blob) -> None:
        reason = rados.unavailable_reason()
        if reason:
            log(f"rados: {reason}; skipped")
            return
        s = self.settings
        pull_buffer = memoryview(bytearray(s.blob))
        # memstore keeps every object in memory: room for all the pushes and then some
        memstore = 4 * s.blob * s.reps + (256 << 20)
        with rados.stratus_on_rados(self.workdir, s.workers, memstore) as server:
            with registry_client.Client(server.url) as client:
                for rep in range(s.reps):
                    digest = blob.stamp(f"rados mono {rep}")
                    seconds = registry_client.timed(client.push_monolithic, "bench/rados", blob.view, s.blob, digest)
                    self.record("rados_push_mono", "stratus", s.blob / seconds / MB)
                    for _ in range(PULLS_PER_REP):
                        pulled = client.pull("bench/rados", digest, pull_buffer)
                        self.record("rados_pull", "stratus", s.blob / pulled / MB)
                    digest = blob.stamp(f"rados chunked {rep}")
                    chunked = registry_client.timed(client.push_chunked, "bench/rados", blob.view, digest, s.chunk)
                    self.record("rados_push_chunked", "stratus", s.blob / chunked / MB)
                    log(f"rados: push {s.blob / seconds / MB:.0f} MB/s, chunked {s.blob / chunked / MB:.0f} MB/s, "
                        f"pull {s.blob / pulled / MB:.0f} MB/s")

    def run(self) -> None:
        s = self.settings
        blob = Blob(s.blob)
        with ExitStack() as stack:
            needs_servers = set(s.measures) & {"push", "pull", "rates", "rss"}
            if needs_servers:
                self.servers["stratus"] = stack.enter_context(servers.stratus(self.workdir, s.workers, s.tree))
                if "reference" in s.registries:
                    self.servers["reference"] = stack.enter_context(servers.reference(self.workdir))
                for name, server in self.servers.items():
                    self.clients[name] = stack.enter_context(registry_client.Client(server.url))
                    log(f"{name} at {server.url} (pid {server.pid}, data in {server.root})")
            if {"push", "pull"} & set(s.measures):
                self.measure_push_pull(blob)
            if "rss" in s.measures:
                self.measure_rss(blob)
            if "rates" in s.measures:
                self.measure_rates()
        if "token" in s.measures:
            self.measure_token()
        if "import" in s.measures:
            self.measure_import()
        if "hash" in s.measures:
            self.measure_hash(blob)
        if "cache" in s.measures:
            self.measure_cache()
        if "rados" in s.measures:
            self.measure_rados(blob)
        if "avail" in s.measures:
            self.measure_availability()
        if "relay" in s.measures:
            self.measure_relay()
        if "lambda" in s.measures:
            self.measure_lambda_cold()
        if "cost" in s.measures:  # issue 13, item 5 (bench/cost.py)
            cost.measure(self.workdir, s.blob < 64 * MiB, self.record, self.rows.__getitem__)

    def measure_lambda_cold(self) -> None:
        found = lambda_cold.measure(self.workdir, self.settings.reps, log=log)
        for key, cold in (found or {}).items():
            row = self.rows[f"lambda_cold_{key}"]
            for value in cold.total_ms:
                self.record(f"lambda_cold_{key}", "stratus", value)
            row.label += f" [imports: {', '.join(cold.sdks) or 'no SDK'}]"

    def measure_relay(self) -> None:
        """Once: 1 GiB pushes take minutes on moto; --quick pushes 12 MiB."""
        size, found = relay_bench.measure(self.workdir, quick=self.settings.blob < 64 * MiB)
        for key in ("relay_direct", "relay_chunked"):
            self.rows[key].label = self.rows[key].label.replace("Push ", f"Push of {size.label} ", 1)
            self.record(key, "reference", found.serve)
        for key, value in (("relay_direct", found.relay_direct), ("relay_chunked", found.relay_chunked),
                           ("relay_rss", found.rss_direct), ("relay_rss_chunked", found.rss_chunked),
                           ("relay_verify", found.verify)):
            self.record(key, "stratus", value)
        self.rows["relay_verify"].label += f", {size.label}"

    def measure_availability(self) -> None:
        """Once per registry, on fresh servers (hostile clients would disturb the
        other measures); --quick opens a fiftieth of the load and pushes 4 MiB."""
        s = self.settings
        quick = s.blob < 64 * MiB
        stalled, unread = (AVAIL_STALLED // 50, AVAIL_UNREAD // 50) if quick else (AVAIL_STALLED, AVAIL_UNREAD)
        push_size = 4 * MiB if quick else 64 * MiB
        for name in ("stratus", "reference") if "reference" in s.registries else ("stratus",):
            with availability.fresh(name, self.workdir, s.tree) as server:
                found = availability.numbers(server, self.workdir, stalled, unread, max(1, round(s.wrk_seconds)),
                                             AVAIL_PUSHES, push_size)
            for key, value in found.items():
                self.record(key, name, value)
                row = self.rows[key]
                row.label = row.label.replace(f"{AVAIL_STALLED} stalled", f"{stalled} stalled").replace(
                    f"{AVAIL_UNREAD} unread", f"{unread} unread").replace(" 64 MiB ", f" {push_size // MiB} MiB ")
            log(f"availability {name}: " + ", ".join(f"{k} {v:.1f}" for k, v in found.items()))

    def table_rows(self) -> list[report.Row]:
        return [row for row in self.rows.values() if row.stratus or row.reference]


def main(argv: Optional[Sequence[str]] = None) -> None:
    settings, args = parse_args(argv)
    if "reference" in settings.registries and not servers.reference_available():
        sys.exit("bench: docker-registry is not installed; run scripts/install-system-deps.sh "
                 "or pass --registries stratus")
    if {"rates", "avail"} & set(settings.measures) and not loadgen.available():
        sys.exit("bench: wrk is not installed; run scripts/install-system-deps.sh or leave out rates")
    with servers.workspace(keep=args.keep) as workdir:
        bench = Bench(settings, workdir)
        bench.run()
        rows = bench.table_rows()
        print(report.table(rows))
        output = args.output or (None if args.quick else DEFAULT_OUTPUT)
        if output is not None and not args.no_write:
            section = report.section(rows, machine.describe(str(workdir)), settings.describe())
            report.write(output, section)
            log(f"wrote {output}")
        if args.keep:
            log(f"work directory kept: {workdir}")
