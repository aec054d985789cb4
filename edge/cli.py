"""The command line. The only module that exits the process.

Exit codes: 0 ok, 2 configuration error (one clear line, no traceback),
1 anything else.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from . import __version__
from .config import Config, ConfigError, load

DEFAULT_CONFIG = os.environ.get("EDGE_CONFIG", "conf/edge.toml")
EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2

log = logging.getLogger("edge")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge", description="A self-hosted Access edge.")
    parser.add_argument("--version", action="version", version=f"edge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    config_help = f"config file (default: {DEFAULT_CONFIG}; env EDGE_CONFIG)"
    serve = sub.add_parser("serve", help="run the edge")
    serve.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=config_help)
    check = sub.add_parser("check", help="validate the config and print a summary")
    check.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=config_help)
    return parser


def _load_checked(path: str) -> Config:
    """Load the config and everything it points at (TLS files)."""
    config = load(path)
    if config.server.tls is not None:
        from .server import make_ssl_context

        try:
            make_ssl_context(config.server.tls)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    return config


def summary(path: str, config: Config) -> str:
    s = config.server
    scheme = "https" if s.tls else "http"
    lines = [
        f"{path}: ok",
        f"  listen:     {', '.join(f'{scheme}://{a.display()}' for a in s.addresses)}",
        f"  workers:    {s.workers}",
        f"  tls:        {'min TLS ' + s.tls.min_version if s.tls else 'off'}",
        f"  limits:     header {s.max_header_bytes} B, target {s.max_target_bytes} B, "
        f"body {s.max_body_bytes} B, {s.max_connections} connections/worker",
        f"  timeouts:   header {s.header_timeout:g} s, body idle {s.body_idle_timeout:g} s, "
        f"keep-alive {s.keepalive_timeout:g} s, drain {s.drain_timeout:g} s",
        f"  access log: {s.access_log}",
        f"  server:     {s.server_header or '(no Server header)'}",
    ]
    return "\n".join(lines)


def _serve(config: Config) -> int:
    if config.server.workers > 1:
        from .workers import Supervisor

        return Supervisor(config).run()
    from .server import run

    run(config)
    return EXIT_OK


def _os_error_text(exc: OSError) -> str:
    """ "[Errno 98] ..." reads like a crash; say what failed, plainly."""
    if exc.strerror is None:
        return str(exc)
    return f"{exc.strerror}: {exc.filename}" if exc.filename is not None else exc.strerror


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from .server import setup_logging

    setup_logging()
    try:
        config = _load_checked(args.config)
        if args.command == "check":
            print(summary(args.config, config))
            return EXIT_OK
        return _serve(config)
    except ConfigError as exc:
        print(f"edge: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:
        print(f"edge: {_os_error_text(exc)}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_OK
