"""The `stratus` command: serve, and maintenance tasks over the configured storage."""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence


def _load(path: Optional[str]):
    from .config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        sys.exit(f"stratus: configuration error: {exc}")


def cmd_serve(args: argparse.Namespace) -> None:
    from .bootstrap import build_api, configure_logging
    from .server import serve

    config = _load(args.config)
    configure_logging(config)
    addr = args.addr or config.http.addr
    serve(build_api(config), addr, workers=args.workers)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="stratus", description="Stratus OCI registry")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the registry over HTTP")
    serve.add_argument("--config", "-c", help="YAML configuration (default: $REGISTRY_CONFIGURATION_PATH)")
    serve.add_argument("--addr", help="host:port to listen on (overrides http.addr)")
    serve.add_argument("--workers", type=int, help="worker processes (default: $STRATUS_WORKERS or 2)")
    serve.set_defaults(func=cmd_serve)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
