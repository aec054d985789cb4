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
from typing import TYPE_CHECKING

from edge import __version__
from edge.config.errors import ConfigError
from edge.config.load import load
from edge.config.schema import Config

if TYPE_CHECKING:
    from edge.login.keyring import KeyRing

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
    _add_tool_parsers(sub, config_help)
    return parser


def _add_tool_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser], config_help: str) -> None:
    explain = sub.add_parser("explain", help="show how a request would be decided")
    explain.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=config_help)
    explain.add_argument("method", help="request method, e.g. GET or OPTIONS")
    explain.add_argument("url", help="full URL, e.g. https://app.example.com/api/x")
    explain.add_argument("-H", "--header", action="append", default=[], help="'Name: value' (repeatable)")
    explain.add_argument("--client-ip", default="127.0.0.1", help="the peer address (default 127.0.0.1)")
    explain.add_argument(
        "--client-cn",
        default=None,
        metavar="NAME",
        help="as if the client presented a certificate that verified against "
        "[server.tls] client_ca, with subject CN NAME (default: no certificate)",
    )
    token = sub.add_parser("token", help="mint a signed user token (for trying the edge)")
    token.add_argument("--key", required=True, help="private key PEM (from `edge keys generate`)")
    token.add_argument("--kid", help="key id (default: the key's RFC 7638 thumbprint)")
    token.add_argument("--iss", required=True, help="issuer, as in [[issuers]].iss")
    token.add_argument("--aud", required=True, help="the application's aud tag (`edge check` shows it)")
    token.add_argument("--email", required=True)
    token.add_argument("--ttl", type=float, default=3600.0, help="seconds until exp (default 3600)")
    token.add_argument("--groups", default="", help="comma-separated groups claim")
    keys = sub.add_parser("keys", help="signing keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    generate = keys_sub.add_parser("generate", help="write a private key PEM and add it to DIR/jwks.json")
    generate.add_argument("--out", required=True, help="directory")
    generate.add_argument("--alg", default="ES256", choices=["ES256", "RS256", "EdDSA"])
    rotate = keys_sub.add_parser(
        "rotate", help="make a new current signing key for the built-in issuer ([team].key_dir)"
    )
    rotate.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=config_help)
    sub.add_parser(
        "password",
        help="hash a password for a [[team.providers]] dev user (reads it from stdin, or asks)",
    )


def _run_tool(args: argparse.Namespace) -> int:
    """explain, token, keys: commands that print and exit."""
    try:
        return _tool(args)
    except ValueError as exc:  # a bad URL, header, key file: the user's input
        print(f"edge: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def _tool(args: argparse.Namespace) -> int:
    from pathlib import Path

    from edge.cli import tools

    if args.command == "password":
        print(_password_hash())
        return EXIT_OK
    if args.command == "token":
        groups = [g.strip() for g in args.groups.split(",") if g.strip()]
        print(tools.mint_token(Path(args.key), args.kid, args.iss, args.aud, args.email, args.ttl, groups))
        return EXIT_OK
    if args.command == "keys":
        if args.keys_command == "rotate":
            return _rotate_keys(args.config)
        print(tools.generate_keys(Path(args.out), args.alg))
        return EXIT_OK
    from edge.access.compile import compile_config
    from edge.login.service import existing_team_keys

    config = load(args.config)
    compiled = compile_config(config, args.config, team_keys=existing_team_keys(config, args.config))
    req = tools.build_request(args.method, args.url, args.header, args.client_ip, args.client_cn)
    print(tools.explain_text(compiled, req))
    return EXIT_OK


def _rotate_keys(path: str) -> int:
    """`edge keys rotate`: a new current key in [team].key_dir. Running workers
    notice the new manifest on their own; no process is signalled."""
    import time

    from edge.login import keydir

    team = load(path).team
    if team is None:
        print(f"edge: {path}: no [team] table, so no key directory to rotate", file=sys.stderr)
        return EXIT_CONFIG
    now = time.time()
    try:
        first = keydir.fingerprint(team.key_dir) is None  # nothing to rotate yet: make the first key
        if first:
            keydir.ensure(team.key_dir, team.algorithm, now)
        else:
            keydir.rotate(team.key_dir, team.algorithm, team.key_overlap, now)
        ring = keydir.load(team.key_dir, team.key_overlap, now)
    except keydir.KeyDirError as exc:
        print(f"edge: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(_rotation_text(ring, team.key_overlap, created=team.key_dir if first else None))
    return EXIT_OK


def _rotation_text(ring: KeyRing, overlap: float, created: str | None) -> str:
    from datetime import UTC, datetime

    current = ring.current
    lines = [f"created {created}"] if created else []
    lines.append(f"kid:      {current.kid} ({current.alg}), signing from now on")
    for key in ring.keys[1:]:
        until = datetime.fromtimestamp((key.retired or 0) + overlap, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        lines.append(f"previous: {key.kid} ({key.alg}) still verifies until {until}")
    if not created and len(ring.keys) == 1:
        lines.append("previous: none kept (key_overlap = 0): tokens it signed no longer verify")
    return "\n".join(lines)


def _load_checked(path: str) -> Config:
    """Load the config and everything it points at (TLS files)."""
    config = load(path)
    from edge.runtime.server import check_config, make_ssl_context

    if config.server.tls is not None:
        try:
            make_ssl_context(config.server.tls)
        except ConfigError as exc:
            raise exc.named(path) from None
    check_config(config, path)  # key files: exit 2 here
    return config


def summary(path: str, config: Config) -> str:
    s = config.server
    scheme = "https" if s.tls else "http"
    lines = [
        f"{path}: ok",
        f"  listen:     {', '.join(f'{scheme}://{a.display()}' for a in s.addresses)}",
        f"  workers:    {s.workers}",
        f"  tls:        {'min TLS ' + s.tls.min_version if s.tls else 'off'}",
        *(
            [f"  client_ca:  {s.tls.client_ca} (client certificates asked for, optional)"]
            if s.tls and s.tls.client_ca
            else []
        ),
        f"  limits:     header {s.max_header_bytes} B, target {s.max_target_bytes} B, "
        f"body {s.max_body_bytes} B, {s.max_connections} connections/worker",
        f"  timeouts:   header {s.header_timeout:g} s, body idle {s.body_idle_timeout:g} s, "
        f"keep-alive {s.keepalive_timeout:g} s, drain {s.drain_timeout:g} s"
        + (f", shutdown delay {s.shutdown_delay:g} s (readiness 503 first)" if s.shutdown_delay else ""),
        f"  access log: {s.access_log}",
        f"  server:     {s.server_header or '(no Server header)'}",
        f"  metrics:    {_metrics_line(config)}",
    ]
    return "\n".join(lines)


def _metrics_line(config: Config) -> str:
    if config.metrics is None:
        return "off (no [metrics] table)"
    where = f"http://{config.metrics.address.display()}/metrics"
    if config.server.workers > 1:
        return f"{where} (the supervisor sums the {config.server.workers} workers)"
    return where


def _check(path: str, config: Config) -> int:
    from edge.access.compile import compile_config
    from edge.cli.tools import apps_summary, warnings

    compiled = compile_config(config, path)
    print(summary(path, config))
    if compiled.apps or config.issuers or config.team:
        print(apps_summary(compiled))
    for warning in warnings(compiled):
        print(f"edge: warning: {warning}", file=sys.stderr)
    return EXIT_OK


def _serve(path: str, config: Config) -> int:
    from edge.login.keydir import KeyDirError
    from edge.login.service import ensure_keys

    try:
        if ensure_keys(config):  # before any worker starts, so all share one first key
            log.info("created the signing key directory %s", config.team.key_dir if config.team else "")
    except KeyDirError as exc:
        raise ConfigError.at(("team", "key_dir"), str(exc), path) from None
    if config.demo is not None:
        _start_demo(config)
    if config.server.workers > 1:
        from edge.runtime.workers import Supervisor

        return Supervisor(config, path).run()
    from edge.runtime.server import run

    run(config, source=path)
    return EXIT_OK


def _password_hash() -> str:
    import getpass

    from edge.login.passwords import hash_password

    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            raise ValueError("the two passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if len(password) < 4:
        raise ValueError("expected a password of at least 4 characters")
    return hash_password(password)


def _start_demo(config: Config) -> None:
    """The demo origin, in a child process of its own (it exits with us); it
    prints the banner once the edge answers, after the edge's startup lines."""
    import multiprocessing

    from edge.runtime import demo

    child = multiprocessing.get_context("fork").Process(
        target=demo.run, args=(config,), daemon=True, name="demo"
    )
    child.start()


def _os_error_text(exc: OSError) -> str:
    """ "[Errno 98] ..." reads like a crash; say what failed, plainly."""
    if exc.strerror is None:
        return str(exc)
    return f"{exc.strerror}: {exc.filename}" if exc.filename is not None else exc.strerror


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from edge.runtime.server import setup_logging

    setup_logging()
    try:
        if args.command in ("explain", "token", "keys", "password"):
            return _run_tool(args)
        config = _load_checked(args.config)
        if args.command == "check":
            return _check(args.config, config)
        return _serve(args.config, config)
    except ConfigError as exc:
        print(f"edge: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:
        print(f"edge: {_os_error_text(exc)}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_OK
