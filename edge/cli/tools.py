"""What the operator commands print: `edge check` (apps), `edge explain`,
`edge keys generate`, `edge token`. Text in, text out; the CLI does exits."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from edge.access.actions import Action, Forward
from edge.access.compile import Compiled
from edge.access.cors import fetch_method
from edge.access.decide import explain
from edge.access.headers import Headers
from edge.access.lists import distinct_entries, entries
from edge.access.request import Request, build
from edge.access.responses import date_line
from edge.access.revocation import revoked_until
from edge.config.errors import key_path
from edge.config.problem import every_rule
from edge.config.schema import MAX_LEEWAY, TEMPLATE_PAGES, App, Branding, Config, DevProvider, Rule
from edge.config.syntax import is_loopback_host
from edge.login import keys as keylib


def apps_summary(compiled: Compiled) -> str:
    """One block per application, for `edge check`."""
    config = compiled.config
    lines = [f"  apps:       {len(compiled.apps)}"]
    for app in compiled.apps:
        cfg = app.config
        lines.append(f'  app "{app.name}" -> {app.upstream}')
        lines.append(f"    domains:  {', '.join(p.display() for p in cfg.patterns)}")
        lines.append(f"    aud:      {app.aud}{'' if cfg.aud else ' (derived from the name)'}")
        policies = ", ".join(f"{p.name} ({p.action})" for p in cfg.policies)
        lines.append(f"    policies: {policies}")
        if app.cors is not None:
            lines.append(f"    cors:     {app.cors.summary()}")
        elif app.preflight_bypass:
            lines.append("    cors:     preflights forwarded to the upstream (options_preflight_bypass)")
        else:
            lines.append("    cors:     none (preflights get 403)")
        pages = _pages_summary(cfg)
        if pages:
            lines.append(f"    sign-in:  {pages}")
    for issuer in config.issuers:
        source = issuer.jwks_file or issuer.jwks_url or "shared secret"
        lines.append(f"  issuer {issuer.iss}: {', '.join(issuer.algorithms)} via {source}")
        lines.append(f"    tokens:   up to {issuer.max_token_lifetime} s (max_token_lifetime)")
        lines.append(f"    logout:   {_logout_hold(issuer.max_token_lifetime, issuer.leeway)}")
    if config.service_tokens:
        lines.append(f"  service tokens: {', '.join(t.name for t in config.service_tokens)}")
    lines.extend(groups_and_lists_summary(config))
    team = config.team
    if team is not None:
        providers = ", ".join(
            f"{p.id} ({'dev' if isinstance(p, DevProvider) else 'oidc'})" for p in team.providers
        )
        lines.append(
            f"  team {team.hostname}: issuer {compiled.team_url}, {team.algorithm} keys in {team.key_dir}"
        )
        lines.append(f"    providers: {providers}")
        if compiled.builtin is not None:
            builtin = compiled.builtin
            lines.append(f"    tokens:    up to {builtin.max_lifetime:.0f} s (the longest session_duration)")
            lines.append(f"    logout:    {_logout_hold(builtin.max_lifetime, builtin.leeway)}")
        lines.append(
            f"    store:     {team.store}" + (f" ({team.redis_url})" if team.store == "redis" else "")
        )
        lines.append(
            f"    pages:     {_branding_summary(team.branding)}; app launcher at {compiled.team_url}/"
        )
    return "\n".join(lines)


def _logout_hold(max_lifetime: float, leeway: float) -> str:
    """How long a logout's revocation is kept: the hold the logout itself
    computes (revoked_until; the token presented cannot outlive it)."""
    hold = revoked_until(0.0, 0.0, max_lifetime, leeway)
    return (
        f"a revocation is kept {hold:.0f} s (the lifetime above + leeway {leeway:.0f} s"
        f" + {MAX_LEEWAY} s, the largest leeway a reload may set, + 1 s)"
    )


def _pages_summary(app: App) -> str:
    """An application's sign-in and deny settings, when not the defaults."""
    parts = []
    if app.allowed_idps is not None:
        parts.append(f"providers {', '.join(app.allowed_idps)}")
    if app.auto_redirect_to_identity:
        parts.append("straight to the provider")
    if app.custom_deny_url:
        parts.append(f"refused navigations to {app.custom_deny_url}")
    elif app.custom_deny_message:
        parts.append("custom deny message")
    if not app.app_launcher_visible:
        parts.append("not in the app launcher")
    return "; ".join(parts)


def _branding_summary(branding: Branding) -> str:
    parts = [f'"{branding.name}"' if branding.name else "no team name"]
    if branding.accent:
        parts.append(f"accent {branding.accent}")
    if branding.logo_url:
        parts.append("logo")
    templates = [page for page in TEMPLATE_PAGES if getattr(branding.templates, page)]
    if templates:
        parts.append(f"templates: {', '.join(templates)}")
    return ", ".join(parts)


def groups_and_lists_summary(config: Config) -> list[str]:
    """One line per group and per list: what it holds (a list: its distinct
    entries, as compiled, and how many lines repeated one) and who names it
    (policies as app/policy, and other groups); never a list's entries."""
    used: dict[tuple[str, str], list[str]] = {}
    holders: list[tuple[str, Sequence[Rule]]] = [
        (f"{app.name}/{policy.name}", [*policy.include, *policy.require, *policy.exclude])
        for app in config.apps
        for policy in app.policies
    ]
    holders += [(f"group {g.name}", [*g.include, *g.require, *g.exclude]) for g in config.groups]
    for holder, rules in holders:
        for rule in rules:
            for key in ("group", "email_list", "ip_list"):
                for name in getattr(rule, key) or ():
                    users = used.setdefault(("group" if key == "group" else "list", name), [])
                    if holder not in users:
                        users.append(holder)

    def where(kind: str, name: str) -> str:
        users = used.get((kind, name))
        return f"used by {', '.join(users)}" if users else "not used"

    lines = []
    for g in config.groups:
        counts = f"{len(g.include)} include, {len(g.require)} require, {len(g.exclude)} exclude"
        lines.append(f'  group "{g.name}": {counts}; {where("group", g.name)}')
    for x in config.lists:
        count = distinct_entries(x)
        repeated = len(x.items or ()) - count
        if repeated:
            count_text = f"{entries(count)} ({repeated} duplicate{'' if repeated == 1 else 's'})"
        else:
            count_text = entries(count)
        source = f", from {x.file}" if x.file is not None else ""
        lines.append(f'  list "{x.name}": {x.type}, {count_text}{source}; {where("list", x.name)}')
    return lines


def warnings(compiled: Compiled) -> list[str]:
    """Legal but probably unintended settings."""
    config = compiled.config
    out: list[str] = []
    plain_http = config.server.tls is None and not config.server.trusted_proxies
    for i, app in enumerate(config.apps):
        where = f'{key_path(("apps", i))} ("{app.name}")'
        cors = app.cors
        if cors is not None and cors.allow_all_headers:
            out.append(
                f"{where}: cors.allow_all_headers echoes every requested header, so Authorization is "
                "allowed only implicitly; list allowed_headers to say which ones you mean"
            )
        if cors is not None and not (cors.allow_all_origins or cors.allowed_origins):
            out.append(f"{where}: cors allows no origin: every preflight gets 403")
        if app.same_site == "none" and plain_http:
            out.append(
                f"{where}: same_site = 'none' needs a Secure cookie, which browsers keep only over "
                "https; the edge listens on plain http (no [server.tls], no trusted_proxies)"
            )
        if any(p.action in ("allow", "deny") for p in app.policies) and not (config.issuers or config.team):
            out.append(
                f"{where}: no [[issuers]] and no [team]: no user token can be verified, "
                "so allow policies never match"
            )
    metrics = config.metrics
    if metrics is not None and not is_loopback_host(metrics.address.host):
        out.append(
            f"{key_path(('metrics', 'listen'))}: metrics are served without authentication on "
            f"{metrics.address.display()}: anyone who reaches it reads the app names, issuers and "
            "traffic; keep it on loopback or let a firewall admit only Prometheus"
        )
    return out + _team_warnings(config, plain_http) + _login_method_warnings(config)


def _login_method_warnings(config: Config) -> list[str]:
    """login_method names no configured provider: legal (an external issuer's
    tokens may name their own), but a typo there silently never matches."""
    known = {p.id for p in config.team.providers} if config.team is not None else set()
    out: list[str] = []
    for path, rule in every_rule(config):  # policies' rules, then groups'
        for n, name in enumerate(rule.login_method or ()):
            if name not in known:
                out.append(
                    f"{key_path((*path, 'login_method', n))}: login_method {name!r} is not the id of a "
                    f"[[team.providers]] entry ({', '.join(sorted(known)) or 'none configured'}): only "
                    "tokens of another issuer naming that provider can match it"
                )
    return out


def _team_warnings(config: Config, plain_http: bool) -> list[str]:
    team = config.team
    if team is None:
        return []
    out: list[str] = []
    exposed = [a.display() for a in config.server.addresses if not is_loopback_host(a.host)]
    if exposed and any(isinstance(p, DevProvider) for p in team.providers):
        out.append(
            f"{key_path(('team', 'providers'))}: the dev provider is enabled and the edge listens on "
            f"{', '.join(exposed)} (not loopback): it is for trying the edge out, not for production"
        )
    hosts = [team.hostname, *(p.host for a in config.apps for p in a.patterns)]
    remote = sorted({h for h in hosts if not is_loopback_host(h.removeprefix("*."))})
    if plain_http and remote:
        out.append(
            f"{key_path(('team',))}: the edge's cookies are Secure, and browsers keep Secure cookies "
            f"over plain http only for localhost names; {', '.join(remote[:3])} need https "
            "([server.tls], or a TLS proxy listed in trusted_proxies)"
        )
    return out


def build_request(
    method: str, url: str, headers: Sequence[str], client_ip: str, client_cn: str | None = None
) -> Request:
    """The Request the connection would build for `METHOD URL` and -H lines
    (and, with `client_cn`, a client certificate it verified)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"Expected an http:// or https:// URL, got {url!r}")
    fields: Headers = []
    for line in headers:
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            raise ValueError(f"Expected -H 'Name: value', got {line!r}")
        fields.append((name.strip().lower().encode("latin-1"), value.strip().encode("latin-1")))
    host = next((v for k, v in fields if k == b"host"), parts.netloc.encode("idna"))
    if not any(k == b"host" for k, _ in fields):
        fields.insert(0, (b"host", host))
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    # As a browser would send it: methods are case-sensitive, only Fetch's
    # six are upper-cased (so `options` explains a preflight, `patch` stays).
    method_sent = fetch_method(method.encode("latin-1"))
    return build(
        method_sent, host, target.encode(), fields, client_ip, parts.scheme, client_cert_cn=client_cn
    )


def explain_text(compiled: Compiled, req: Request, now: float | None = None) -> str:
    when = time.time() if now is None else now
    action, trace = explain(compiled, req, when)
    lines = [f"request:  {req.method.decode()} {req.scheme}://{req.host.decode()}{req.target.decode()}"]
    lines.append(f"client:   {req.client_ip}")
    if req.client_cert_cn is not None:
        lines.append(f"cert:     verified against client_ca, CN {req.client_cert_cn!r}")
    if action.app is None:
        lines.append("app:      (none)")
    lines.extend(f"  {line}" if line.startswith(("policy", " ")) else line for line in trace)
    lines.append(f"decision: {type(action).__name__}: {action.reason}")
    lines.extend(_outcome(action, when))
    return "\n".join(lines)


def _outcome(action: Action, now: float) -> list[str]:
    if isinstance(action, Forward):
        lines = [f"upstream: {action.upstream}"]
        lines.extend(f"  add:    {k.decode()}: {_short(v)}" for k, v in action.add_headers)
        lines.append(f"  strip:  {', '.join(sorted(h.decode() for h in action.strip_headers))}")
        if action.strip_auth_cookie:
            lines.append("  strip:  the CF_Authorization cookie")
        if action.rewrite_host:
            lines.append("  host:   rewritten to the upstream's")
        if action.vary_origin:
            lines.append("  vary:   Origin merged into the response's Vary")
        return lines
    head = action.response.render(date_line(now), False, True).decode("latin-1")
    return ["response:", *(f"  {line}" for line in head.rstrip("\r\n").split("\r\n"))]


def _short(value: bytes) -> str:
    text = value.decode("latin-1")
    return text if len(text) <= 60 else f"{text[:40]}...({len(text)} bytes)"


def generate_keys(out: Path, alg: str) -> str:
    """Write <kid>.pem (private, 0600) and add the public key to jwks.json."""
    key = keylib.generate(alg)
    jwk = keylib.public_jwk(key)
    out.mkdir(parents=True, exist_ok=True)
    pem_path = out / f"{jwk['kid']}.pem"
    fd = os.open(pem_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(keylib.private_pem(key))
    jwks_path = out / "jwks.json"
    held: list[dict[str, object]] = []
    if jwks_path.exists():
        held = list(json.loads(jwks_path.read_bytes()).get("keys", []))
    # Newest first; older keys stay published so tokens they signed keep working.
    jwks_path.write_bytes(keylib.jwks([jwk, *held]))
    return (
        f"kid:     {jwk['kid']} ({alg})\nprivate: {pem_path}\njwks:    {jwks_path} ({len(held) + 1} key(s))"
    )


def mint_token(
    key_path: Path, kid: str | None, iss: str, aud: str, email: str, ttl: float, groups: Sequence[str]
) -> str:
    key = keylib.load_private(key_path.read_bytes())
    kid = kid or keylib.public_jwk(key)["kid"]
    return keylib.mint(key, kid, iss, aud, email, ttl=ttl, groups=groups)
