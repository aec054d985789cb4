"""The checks of the listeners: [server], [server.tls], [demo], [metrics],
and the rules between tables that depend on them (metrics never on a public
listener; a certificate selector needs a listener that asks for certificates).
"""

from __future__ import annotations

from edge.config.problem import Problem, Problems, every_rule
from edge.config.schema import CERT_SELECTORS, TLS, Config, Demo, Metrics, Server
from edge.config.syntax import cidr_problem, parse_listen

# -- [server], [server.tls], [demo], [metrics] ----------------------------------


def check_tls(tls: TLS) -> Problems:
    if tls.min_version not in ("1.2", "1.3"):
        yield Problem(("min_version",), f"Expected '1.2' or '1.3', got {tls.min_version!r}")


def check_server(server: Server) -> Problems:
    for i, cidr in enumerate(server.trusted_proxies):
        problem = cidr_problem(cidr)
        if problem is not None:
            yield Problem(("trusted_proxies", i), problem)
    if not server.listen:
        yield Problem(("listen",), "Expected at least one address")
    seen: set[tuple[str, int]] = set()
    for i, item in enumerate(server.listen):
        try:
            addr = parse_listen(item)
        except ValueError as exc:
            yield Problem(("listen", i), str(exc))
            continue
        if (addr.host, addr.port) in seen and addr.port != 0:
            yield Problem(("listen", i), f"{item!r} is listed twice")
        seen.add((addr.host, addr.port))
    if server.max_target_bytes >= server.max_header_bytes:
        yield Problem(
            ("max_target_bytes",),
            f"Expected less than max_header_bytes ({server.max_header_bytes}), got {server.max_target_bytes}",
        )


def check_demo(demo: Demo) -> Problems:
    for key in ("listen", "web_listen"):
        try:
            parse_listen(getattr(demo, key))
        except ValueError as exc:
            yield Problem((key,), str(exc))


def check_metrics(metrics: Metrics) -> Problems:
    try:
        parse_listen(metrics.listen)
    except ValueError as exc:
        yield Problem(("listen",), str(exc))


# -- rules between top-level tables (every table passed its own checks) -----------


_WILDCARDS = {"0.0.0.0", "::"}


def check_metrics_listener(config: Config) -> Problems:
    """Metrics on a public listener would be served to whoever reaches it
    (a wildcard address covers every host on its port)."""
    if config.metrics is None:
        return
    addr = parse_listen(config.metrics.listen)
    for item in config.server.listen:
        public = parse_listen(item)
        hosts = {public.host, addr.host}
        if addr.port != 0 and public.port == addr.port and (len(hosts) == 1 or hosts & _WILDCARDS):
            yield Problem(
                ("metrics", "listen"),
                f"{config.metrics.listen!r} is a public listener ($.server.listen: {item!r})",
            )


def check_client_certs(config: Config) -> Problems:
    """A certificate selector needs a listener that asks for certificates:
    without [server.tls] client_ca no request ever has one, and the rule
    could never match."""
    tls = config.server.tls
    if tls is not None and tls.client_ca:
        return
    for path, rule in every_rule(config):
        if rule.selector in CERT_SELECTORS:
            yield Problem(
                (*path, rule.selector),
                "Expected [server.tls] client_ca to be set: without it no client "
                "certificate is asked for, so this rule could never match",
            )
