"""The per-request decision: router, CORS, token and policies -> one Action.

Invariants:
- `decide` is pure and synchronous: no I/O, no clock (the caller passes
  `now`, epoch seconds), no randomness (the login binding is passed in).
  Given the same Compiled, request, `now` and binding it returns equal
  actions. Its only side effects are on the compiled configuration's
  bounded caches (edge.access.cache), which never change an answer, and
  the key sets' "refetch wanted" flag. Building a Compiled is
  edge.access.compile's job.
- Every outcome is one of a few frozen types (edge.access.actions).
- A request never reaches an upstream unless an application covers it and a
  policy allowed it (or a preflight bypass applies): no match is a 404,
  no policy match is a 403 (deny by default).
"""

from __future__ import annotations

from urllib.parse import quote, quote_from_bytes

import msgspec

from edge.access.actions import (
    Action,
    Deny,
    Endpoint,
    Forward,
    NotFound,
    Preflight,
    Redirect,
    Reject,
    Unauthorized,
)
from edge.access.claims import EXPIRED, Identity, Refusal
from edge.access.compile import NO_STORE, Compiled, CompiledApp, PreflightKey
from edge.access.cors import is_preflight
from edge.access.endpoints import ACCESS_SEGMENT, APP_ENDPOINTS, CDN_CGI_SEGMENT, TEAM_ENDPOINTS, EndpointKind
from edge.access.headers import ACCESS_TOKEN, CLIENT_ID, CLIENT_SECRET, Header
from edge.access.policy import Policies, Trace
from edge.access.request import Index, Request
from edge.access.responses import LocalResponse
from edge.access.router import normalize_host, path_segments
from edge.access.session import binding_cookie
from edge.access.subject import Subject
from edge.access.tokens import NO_TOKEN, extract_token

# -- the decision ----------------------------------------------------------------


def decide(c: Compiled, req: Request, now: float, trace: Trace = None, *, binding: str = "") -> Action:
    """What to do with one request. Pure: see the module invariants.

    `binding` is a fresh random value (edge.access.session.new_binding_value)
    for the login this request may start when the team's own page binds
    logins; an action whose `binding` is set used it, and the caller must
    never pass that value again."""
    path = req.path
    if path[:1] != b"/":
        return NotFound(c.responses.not_found, None, "not found: target is not a path")
    segments = path_segments(path)
    if segments is None:
        return Reject(c.bad_path, None, "reject: ambiguous path (escaped '/' or '\\')")
    h = req.index
    key: PreflightKey | None = None
    if req.method == b"OPTIONS" and trace is None:
        key = (
            req.host,
            path,
            _one(h, b"origin"),
            _one(h, b"access-control-request-method"),
            _joined(h, b"access-control-request-headers"),
            _one(h, b"access-control-request-private-network"),
        )
        hit = c.preflights.get(key)
        if hit is not None:
            return hit
    host = normalize_host(req.host)
    if host == c.team_host:
        return _team(c, req, h, segments)
    if segments and segments[0] == CDN_CGI_SEGMENT and segments[1:2] == [ACCESS_SEGMENT]:
        return _endpoint(c, req, h, host, segments)
    route = c.router.match(host, segments)
    if route is None:
        return NotFound(c.responses.not_found, None, "not found: no application")
    app = route.app
    if trace is not None:
        trace.append(f'app "{app.name}" (pattern {route.pattern.display()}, aud {app.aud})')
    if req.method == b"OPTIONS" and is_preflight(
        req.method, _one(h, b"origin"), _one(h, b"access-control-request-method")
    ):
        action = _preflight(c, app, req, h, trace)
        if key is not None and isinstance(action, Preflight) and app.cors is not None:
            c.preflights.put(key, action)
        return action
    return _authorize(c, app, req, h, now, trace, binding)


def explain(c: Compiled, req: Request, now: float, binding: str = "") -> tuple[Action, list[str]]:
    """decide() with the evaluation trace, for `edge explain`."""
    trace: list[str] = []
    return decide(c, req, now, trace, binding=binding), trace


def _one(h: Index, name: bytes) -> bytes | None:
    """The header's value; b"" when repeated (which no allow-list matches)."""
    values = h.get(name)
    if values is None:
        return None
    return values[0].strip() if len(values) == 1 else b""


def _endpoint(c: Compiled, req: Request, h: Index, host: bytes, segments: list[bytes]) -> Action:
    if not c.router.knows(host):
        return NotFound(c.responses.not_found, None, "not found: no application")
    route = c.router.match(host, segments)
    app = None if route is None else route.app.name
    name = segments[2].decode("latin-1") if len(segments) > 2 else ""
    if is_preflight(req.method, _one(h, b"origin"), _one(h, b"access-control-request-method")):
        return Preflight(
            c.endpoint_refused, app, f"preflight: edge endpoint {name!r} allows no cross-site requests"
        )
    kind = APP_ENDPOINTS.get(name)
    if kind is None:
        return NotFound(c.responses.not_found, app, f"not found: no edge endpoint {name[:40]!r}")
    rest = b"/".join(segments[3:]).decode("latin-1")
    aud = None if route is None else route.app.aud
    return Endpoint(c.endpoint_pending, app, f"endpoint {name}", kind, False, aud, rest)


def _team(c: Compiled, req: Request, h: Index, segments: list[bytes]) -> Action:
    """The team host: the login service's pages; nothing is forwarded."""
    if is_preflight(req.method, _one(h, b"origin"), _one(h, b"access-control-request-method")):
        return Preflight(c.endpoint_refused, None, "preflight: the team host allows no cross-site requests")
    if not segments or segments == [b""]:
        name, rest = EndpointKind.LAUNCHER.value, ""
    elif segments[0] == CDN_CGI_SEGMENT and segments[1:2] == [ACCESS_SEGMENT] and len(segments) > 2:
        name, rest = segments[2].decode("latin-1"), b"/".join(segments[3:]).decode("latin-1")
    else:
        return NotFound(c.responses.not_found, None, "not found: team host")
    kind = TEAM_ENDPOINTS.get(name)
    if kind is None:
        return NotFound(c.responses.not_found, None, f"not found: no team endpoint {name[:40]!r}")
    return Endpoint(c.endpoint_pending, None, f"team {name}", kind, True, None, rest)


# -- preflights --------------------------------------------------------------------


def _preflight(c: Compiled, app: CompiledApp, req: Request, h: Index, trace: Trace) -> Action:
    """BEHAVIOUR.md section 4: answered at the edge, forwarded, or refused."""
    if app.cors is not None:
        origin = _one(h, b"origin") or b""
        method = _one(h, b"access-control-request-method") or b""
        pna = _one(h, b"access-control-request-private-network") == b"true"
        requested = _joined(h, b"access-control-request-headers")
        response, reason = app.cors.preflight(origin, method, requested, pna)
        if trace is not None and response.status == 200:
            # Explaining: say what the 200 does not allow (off the request path).
            notes = app.cors.unlisted(method, requested)
            if notes:
                reason = f"{reason} (origin), but {'; '.join(notes)}: the browser refuses the call"
        return Preflight(response, app.name, reason)
    if app.preflight_bypass:
        return _forward(app, "preflight: forwarded (options_preflight_bypass)")
    # A public path (a matching bypass policy) is not Access's to answer.
    subject = Subject.of(req, c.trusted)
    policy = app.policies.first_phase(subject, trace)
    if policy is not None:
        return _forward(app, f"{policy.reason} (preflight)", bypass=policy.bypass)
    return Preflight(app.preflight_refused, app.name, "preflight: no CORS settings")


def _joined(h: Index, name: bytes) -> bytes | None:
    values = h.get(name)
    return None if values is None else b", ".join(values)


# -- authorization -----------------------------------------------------------------


def _authorize(
    c: Compiled, app: CompiledApp, req: Request, h: Index, now: float, trace: Trace, binding: str
) -> Action:
    subject = Subject.of(req, c.trusted)
    policies = app.policies
    if policies.needs_service_token:
        subject.service_token = _service_token(c, h, trace)
    policy = policies.first_phase(subject, trace)
    if policy is not None:
        token = subject.service_token if policy.action == "service_auth" else None
        return _forward(app, policy.reason, service_token=token, bypass=policy.bypass)
    if not policies.second:
        return _deny(app, h, "deny: no policy matched", req.request_id)
    ident = _identity(c, app, h, now, trace)
    if isinstance(ident, Refusal):
        if ident.ambiguous:
            return Reject(c.ambiguous_token, app.name, f"reject: {ident.reason}")
        return _unauthenticated(c, app, req, h, ident, binding)
    subject.identity = ident
    return _second_phase(app, policies, subject, req, ident, trace)


def _second_phase(
    app: CompiledApp, policies: Policies, subject: Subject, req: Request, ident: Identity, trace: Trace
) -> Action:
    policy, first_miss = policies.second_phase(subject, trace)
    if policy is None:
        detail = f" ({first_miss})" if first_miss else ""
        return _deny(app, req.index, f"deny: no policy matched{detail}", req.request_id)
    if policy.action == "deny":
        return _deny(app, req.index, policy.reason, req.request_id)
    return _forward(app, policy.reason, ident)


def _service_token(c: Compiled, h: Index, trace: Trace) -> str | None:
    name, reason = c.service_tokens.check(_one(h, CLIENT_ID), _one(h, CLIENT_SECRET))
    if trace is not None:
        trace.append(f"service token: {reason}")
    return name


def _identity(c: Compiled, app: CompiledApp, h: Index, now: float, trace: Trace) -> Identity | Refusal:
    token = extract_token(
        h.get(b"cookie", ()), h.get(ACCESS_TOKEN, ()), h.get(b"authorization", ()), c.verifier.trusts
    )
    result = verify_token(c, token, now)
    if isinstance(result, Identity) and app.aud not in result.aud:
        result = Refusal("token is for another application (aud)")
    if trace is not None:
        trace.append(
            f"token: refused: {result.reason}"
            if isinstance(result, Refusal)
            else f"token: valid for {result.email or result.sub or '(no email)'} until exp {result.exp:.0f}"
        )
    return result


REVOKED = Refusal("session revoked (signed out)")


def verify_token(c: Compiled, token: bytes | Refusal, now: float) -> Identity | Refusal:
    """A token's identity, unless it is invalid or a logout revoked it (a
    cached token is checked against the revocations every time: those of its
    sign-in that cover its iat, edge.access.revocation)."""
    if isinstance(token, Refusal):
        return token
    result = c.verifier.verify(token, now)
    if (
        isinstance(result, Identity)
        and result.session
        and c.revoked.session_revoked(
            result.session, result.identity_nonce, now, result.iat, result.valid_until
        )
    ):
        return REVOKED
    return result


def _forward(
    app: CompiledApp,
    reason: str,
    ident: Identity | None = None,
    service_token: str | None = None,
    bypass: bool = False,
) -> Forward:
    return Forward(
        app=app.name,
        upstream=app.upstream,
        reason=reason,
        add_headers=() if ident is None else ident.add_headers,
        strip_auth_cookie=app.strip_auth_cookie,
        rewrite_host=app.rewrite_host,
        vary_origin=app.cors is not None,
        # A tunnel lives exactly as long as the token would be accepted.
        exp=None if ident is None else ident.valid_until,
        identity=ident,
        service_token=service_token,
        bypass=bypass,
    )


def _deny(app: CompiledApp, h: Index, reason: str, request_id: bytes) -> Deny:
    # custom_deny_message/url: a page or a redirect for a navigation only; a
    # fetch or an API client reads the plain 403 as before.
    page = app.deny_page
    if page is not None and is_navigation(h):
        return Deny(page if isinstance(page, LocalResponse) else page.response(request_id), app.name, reason)
    return Deny(app.deny_response(_one(h, b"origin")), app.name, reason)


# -- unauthenticated ---------------------------------------------------------------


def _unauthenticated(
    c: Compiled, app: CompiledApp, req: Request, h: Index, why: Refusal, binding: str
) -> Action:
    """302 to the login page for a navigation, else 401 a page can read."""
    login = login_url(c.login_url, app.aud, req)
    cookies: list[Header] = []
    if not c.binds_logins:
        binding = ""
    elif binding:
        # Each login is bound to the browser that starts it (see
        # edge.access.session.BINDING_COOKIE); the caller drew the value.
        login += "&b=" + binding
        cookies.append(binding_cookie(binding))
    if app.always_redirect or is_navigation(h):
        fields = [(b"location", login.encode("ascii")), NO_STORE, *cookies]
        response = c.responses.text(302, b"login required\n", fields)
        return Redirect(response, app.name, f"redirect: login ({why.reason})", login, binding)
    # The id names the access log line (edge.http.request_id: SAFE, ASCII).
    body = msgspec.json.encode(
        {"error": _public_error(why), "login_url": login, "request_id": req.request_id.decode("ascii")}
    )
    fields = [
        (b"content-type", b"application/json"),
        NO_STORE,
        (b"www-authenticate", b'Bearer realm="' + normalize_host(req.host) + b'"'),
        *cookies,
    ]
    if app.cors is not None:
        fields.extend(app.cors.courtesy(_one(h, b"origin")))
    response = LocalResponse(401, fields, body, c.responses.server)
    return Unauthorized(response, app.name, f"unauthenticated: {why.reason}", binding)


def _public_error(why: Refusal) -> str:
    """What a client is told: enough to act on, no verification details."""
    if why is NO_TOKEN:  # the one instance extract_token returns for "none sent"
        return "login required"
    if why is EXPIRED:  # claims.check_times' one instance for a token past its exp
        return "session expired"
    return "invalid token"


def login_url(template: str, aud: str, req: Request) -> str:
    """The login URL for a request, absolute (a page reading a 401 resolves
    relative URLs against its own origin, not ours)."""
    host = normalize_host(req.host)
    authority = req.host if _is_host_port(req.host, host) else host
    base = f"{req.scheme}://{authority.decode('ascii')}"
    original = base.encode("ascii") + req.target
    url = template.format(
        host=quote(host.decode("ascii"), safe="[]:"),
        aud=quote(aud, safe=""),
        redirect_url=quote_from_bytes(original, safe=""),
    )
    return base + url if url.startswith("/") else url


def _is_host_port(raw: bytes, host: bytes) -> bool:
    """Whether the Host header is exactly host[:digits] (safe to repeat)."""
    rest = raw.lower().removeprefix(host)
    return len(rest) < len(raw) and (rest == b"" or (rest[:1] == b":" and rest[1:].isdigit()))


def is_navigation(h: Index) -> bool:
    """A top-level navigation (BEHAVIOUR.md section 4): Sec-Fetch-Mode says
    so; without it, no XMLHttpRequest marker and Accept prefers HTML."""
    mode = _one(h, b"sec-fetch-mode")
    if mode is not None:
        return mode.lower() == b"navigate"
    if (_one(h, b"x-requested-with") or b"").lower() == b"xmlhttprequest":
        return False
    accept = _joined(h, b"accept")
    return accept is not None and prefers_html(accept)


def prefers_html(accept: bytes) -> bool:
    html = json = 0.0
    for item in accept.split(b","):
        media, _, params = item.partition(b";")
        media = media.strip().lower()
        q = _quality(params)
        if media in (b"text/html", b"application/xhtml+xml"):
            html = max(html, q)
        elif media == b"application/json" or media.endswith(b"+json"):
            json = max(json, q)
    return html > 0 and html >= json


def _quality(params: bytes) -> float:
    for param in params.split(b";"):
        name, _, value = param.partition(b"=")
        if name.strip().lower() == b"q":
            try:
                return min(1.0, max(0.0, float(value.strip())))
            except ValueError:
                return 0.0
    return 1.0
