"""`stratus relay`: a local registry endpoint in front of a (serverless) upstream registry."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

MIB = 1 << 20
DEFAULT_LISTEN = "127.0.0.1:5000"


def _default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "stratus-relay"


def _mib(text: str) -> int:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return int(value * MIB)


def add_relay_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    relay = commands.add_parser(
        "relay", help="relay a local endpoint that any client can push to into an upstream registry",
        description="Serve a registry endpoint (plain HTTP, loopback by default) that forwards every "
                    "request to --upstream, sending blob uploads as direct-to-storage parts or chunks the "
                    "upstream accepts. See docs/relay.md.",
    )
    relay.add_argument("--upstream", required=True, help="the registry to relay to, e.g. https://registry.example.com")
    relay.add_argument("--listen", default=DEFAULT_LISTEN, help=f"host:port to serve on (default {DEFAULT_LISTEN})")
    relay.add_argument("--state-dir", type=Path, default=None,
                       help="journal and spooled pieces (default $XDG_STATE_HOME/stratus-relay)")
    relay.add_argument("--part-size", type=_mib, default=16 * MIB, metavar="MIB",
                       help="direct-upload part size in MiB (default 16; S3 needs 5 to 5120)")
    relay.add_argument("--chunk-size", type=_mib, default=16 * MIB, metavar="MIB",
                       help="largest chunked PATCH in MiB (default 16; the upstream's OCI-Chunk-Max-Length caps it)")
    relay.add_argument("--parallel", type=int, default=4, help="parts of one blob sent at once (default 4)")
    relay.add_argument("--threads", type=int, default=8, help="client requests served at once (default 8)")
    relay.add_argument("--insecure", action="store_true", help="do not verify the upstream's TLS certificate")
    relay.add_argument("--ca-file", help="CA bundle to verify the upstream's TLS certificate with")
    relay.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    try:
        import urllib3  # noqa: F401  (every install with boto3 or requests has it)
    except ImportError:
        sys.exit("stratus relay: needs urllib3 (pip install urllib3)")
    from .app import Relay
    from .serving import serve
    from .upstream import Upstream
    from .uploads import RelaySettings, Uploads

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    try:
        upstream = Upstream(args.upstream, verify_tls=not args.insecure, ca_file=args.ca_file)
    except ValueError as exc:
        sys.exit(f"stratus relay: {exc}")
    if args.parallel < 1 or args.threads < 1:
        sys.exit("stratus relay: --parallel and --threads must be at least 1")
    settings = RelaySettings(
        state_dir=(args.state_dir or _default_state_dir()).expanduser(),
        part_size=args.part_size, chunk_size=args.chunk_size, parallel=args.parallel,
        senders=max(16, args.parallel * 4),
    )
    relay = Relay(upstream, Uploads(upstream, settings))
    logging.getLogger("stratus.relay").info(
        "relaying http://%s to %s (state in %s)", args.listen, upstream.display, settings.state_dir)
    serve(relay, args.listen, threads=args.threads)
