"""The `stratus` command: serve, and maintenance tasks over the configured storage.

Each command loads the process's owner (bootstrap.Stratus) and turns its arguments
into calls on it; a configuration error ends the command with the key named."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Optional, Sequence


def _load(path: Optional[str]) -> Any:
    """The Stratus of the configuration at path (else $REGISTRY_CONFIGURATION_PATH)."""
    from ..bootstrap import Stratus
    from ..config import ConfigError

    try:
        return Stratus.load(path)
    except ConfigError as exc:
        sys.exit(f"stratus: configuration error: {exc}")


def cmd_serve(args: argparse.Namespace) -> None:
    from ..config import CONFIG_PATH_ENV
    from ..debug_server import start_debug_server
    from .server import serve

    if args.config:
        # a server that spawns its workers (granian under Python 3.14's default start
        # method) has them load the configuration again: from the same file
        os.environ[CONFIG_PATH_ENV] = os.path.abspath(args.config)
    owner = _load(args.config)
    config = owner.config
    addr = args.addr or config.http.addr
    try:
        api = owner.api
    except ValueError as exc:  # driver and auth parameters are checked here (ConfigError is one)
        sys.exit(f"stratus: configuration error: {exc}")
    api = start_debug_server(config, api)  # health checks, http.debug.addr (/debug/health, /metrics)
    owner.start_upload_purger()
    try:
        serve(api, addr, workers=args.workers, http=config.http, accesslog_disabled=config.log.accesslog_disabled)
    except ValueError as exc:  # http.tls files that do not load, a TLS setting the server cannot apply
        sys.exit(f"stratus: configuration error: {exc}")
    except OSError as exc:  # the address is taken, the socket's directory is missing ...
        sys.exit(f"stratus: cannot listen on {addr}: {exc.strerror or exc}")


def cmd_purge_uploads(args: argparse.Namespace) -> None:
    from datetime import timedelta

    from ..config import parse_duration
    from ..context import background
    from ..registry.maintenance import purge_uploads

    owner = _load(args.config)
    age = parse_duration(args.age) if args.age else owner.config.storage.upload_purging.age
    removed = purge_uploads(background(), owner.storage()[0], timedelta(seconds=age), dry_run=args.dry_run)
    for path in removed:
        print(path)
    print(f"{len(removed)} upload(s) {'would be ' if args.dry_run else ''}removed", file=sys.stderr)


def _gc_grace(args: argparse.Namespace, config) -> float:
    """--grace, else storage.maintenance.gc.graceperiod (default 1h)."""
    from ..config import parse_duration

    if args.grace is None:
        return config.storage.gc_graceperiod
    try:
        grace = parse_duration(args.grace)
    except ValueError as exc:
        sys.exit(f"stratus: --grace: {exc}")
    if grace < 0:
        sys.exit("stratus: --grace: must not be negative")
    return grace


def _gc_budget(args: argparse.Namespace):
    """--budget: stop after this long and save progress (the scheduled functions' way)."""
    from ..config import parse_duration

    if args.budget is None:
        return None
    try:
        budget = parse_duration(args.budget)
    except ValueError as exc:
        sys.exit(f"stratus: --budget: {exc}")
    if budget <= 0:
        sys.exit("stratus: --budget: must be positive")
    return budget


def cmd_gc(args: argparse.Namespace) -> None:
    from ..context import background
    from ..registry.maintenance import CHECKPOINT, GCError, collect_garbage, recover

    owner = _load(args.config)
    config = owner.config
    driver, cache = owner.storage()
    if args.recover:
        restored = recover(background(), driver)
        for digest in restored:
            print(f"blob put back: {digest}")
        print(f"{len(restored)} blob(s) put back", file=sys.stderr)
        return
    try:
        report = collect_garbage(
            background(), driver, dry_run=args.dry_run, remove_untagged=args.delete_untagged,
            cache=cache, grace=_gc_grace(args, config),
            retention=() if args.no_retention else config.storage.retention,
            immutable=config.storage.tag_immutable, budget=_gc_budget(args),
        )
    except GCError as exc:
        sys.exit(f"stratus gc: {exc}; nothing unproven was deleted")
    verb = "would delete" if args.dry_run else "deleted"
    if not report.finished:
        print(f"stratus gc: budget spent; progress saved in {CHECKPOINT}, the next gc continues", file=sys.stderr)
    for name in report.tags_deleted:
        print(f"tag {verb}: {name}")
    for name in report.manifests_deleted:
        print(f"manifest {verb}: {name}")
    for digest in report.deleted:
        print(f"blob {verb}: {digest}")
    print(
        f"{report.manifests_marked} manifest(s) and {len(report.marked)} blob(s) marked in "
        f"{report.repositories} repositories; {len(report.tags_deleted)} tag(s), {len(report.manifests_deleted)} manifest(s) and "
        f"{len(report.deleted)} blob(s) {verb}; {len(report.kept_young)} unreferenced blob(s) inside "
        f"the grace period; {len(report.rescued)} found in use on the re-check",
        file=sys.stderr,
    )


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="stratus", description="Stratus OCI registry")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the registry over HTTP")
    serve.add_argument("--config", "-c", help="YAML configuration (default: $REGISTRY_CONFIGURATION_PATH)")
    serve.add_argument("--addr", help="host:port to listen on, a socket path with http.net unix (overrides http.addr)")
    serve.add_argument("--workers", type=int, help="worker processes (default: $STRATUS_WORKERS, else 1 for granian, 2 for gunicorn)")
    serve.set_defaults(func=cmd_serve)
    purge = commands.add_parser("purge-uploads", help="remove uploads older than an age")
    purge.add_argument("--config", "-c")
    purge.add_argument("--age", help="Go duration, default storage.maintenance.uploadpurging.age (168h)")
    purge.add_argument("--dry-run", action="store_true")
    purge.set_defaults(func=cmd_purge_uploads)
    gc = commands.add_parser(
        "garbage-collect", aliases=["gc"], help="delete blobs no manifest references (safe while serving)"
    )
    gc.add_argument("--config", "-c")
    gc.add_argument("--dry-run", action="store_true", help="print the plan, delete nothing")
    gc.add_argument("--delete-untagged", "-m", action="store_true", help="also delete untagged manifests")
    gc.add_argument(
        "--grace", help="Go duration: never delete what is younger (default storage.maintenance.gc.graceperiod, 1h)"
    )
    gc.add_argument("--recover", action="store_true", help="put back blobs an interrupted gc moved aside")
    gc.add_argument(
        "--budget", help="Go duration: stop after this long, progress saved in storage (the next gc continues)"
    )
    gc.add_argument(
        "--no-retention", action="store_true", help="ignore storage.maintenance.retention.policies this run"
    )
    gc.set_defaults(func=cmd_gc)
    from ..relay.cli import add_relay_command

    add_relay_command(commands)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
