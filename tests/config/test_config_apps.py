"""edge.config, applications part: [[apps]], [[issuers]], [[service_tokens]],
[login], and the load-time errors, each with its file and exact key path."""

from __future__ import annotations

import hashlib
from pathlib import Path

import msgspec
import pytest

from edge.access.compile import compile_config
from edge.config.errors import ConfigError
from edge.config.load import load, loads
from edge.config.schema import SELECTORS, Config
from edge.config.syntax import origin_problem, parse_domain

ROOT = Path(__file__).resolve().parents[2]
SOURCE = "edge.toml"
SHA = hashlib.sha256(b"x").hexdigest()

ISSUER = """
[[issuers]]
iss = "https://auth.example.com"
jwks_url = "https://auth.example.com/certs"
"""
TOKENS = f"""
[[service_tokens]]
name = "ci"
client_id = "ci.example"
secret_sha256 = "{SHA}"
"""


def app(
    extra: str = "", cors: str = "", policy: str = "include = [{ everyone = true }]", name: str = "api"
) -> str:
    text = f"""
[[apps]]
name = "{name}"
domains = ["api.example.com"]
upstream = "http://127.0.0.1:9000"
{extra}
"""
    if cors:
        text += f"[apps.cors]\n{cors}\n"
    return text + f'[[apps.policies]]\nname = "p"\naction = "allow"\n{policy}\n'


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        loads(text, SOURCE)
    message = str(info.value)
    assert "\n" not in message
    return message.removeprefix(f"{SOURCE}: ")


def test_a_full_application_loads() -> None:
    config = loads(
        ISSUER + TOKENS + app(cors='allowed_origins = ["https://web.example.com"]\nallowed_methods = ["GET"]')
    )
    (a,) = config.apps
    assert a.tag == hashlib.sha256(b"api").hexdigest()
    assert a.cors is not None and a.cors.allowed_origins == ["https://web.example.com"]
    assert (a.unauthenticated, a.same_site, a.http_only, a.session_duration) == ("auto", "lax", True, 86400)
    assert not (a.keep_auth_cookie or a.rewrite_host or a.path_scoped or a.options_preflight_bypass)
    assert config.issuers[0].algorithms == ["RS256"] and config.issuers[0].leeway == 60


CORS_ERRORS = [
    (
        "allow_all_origins = true\nallowed_methods = ['GET']\nallow_credentials = true",
        "$.apps[0].cors.allow_credentials: Expected false with allow_all_origins = true: any site could read "
        "your users' data (list the origins in allowed_origins instead)",
    ),
    (
        "allowed_origins = ['https://web.example.com']",
        "$.apps[0].cors.allowed_methods: Expected at least one method (or allow_all_methods = true) when "
        "origins are allowed",
    ),
    (
        "allow_all_origins = true",
        "$.apps[0].cors.allowed_methods: Expected at least one method (or allow_all_methods = true) when "
        "origins are allowed",
    ),
    ("max_age = 86401", "$.apps[0].cors.max_age: Expected int <= 86400, got 86401"),
    ("max_age = -2", "$.apps[0].cors.max_age: Expected int >= -1, got -2"),
    (
        "allowed_origins = ['https://web.example.com/app']\nallowed_methods = ['GET']",
        "$.apps[0].cors.allowed_origins[0]: Expected an origin without a path, got 'https://web.example.com/app'",
    ),
    (
        "allowed_origins = ['https://a.example', 'https://web.example.com/']\nallowed_methods = ['GET']",
        "$.apps[0].cors.allowed_origins[1]: Expected an origin without a trailing slash "
        "('https://web.example.com'), got 'https://web.example.com/'",
    ),
    (
        "allowed_origins = ['https://*.example.com']\nallowed_methods = ['GET']",
        "$.apps[0].cors.allowed_origins[0]: Expected an exact origin (use allow_all_origins for any), "
        "got 'https://*.example.com'",
    ),
    (
        "allowed_origins = ['*']\nallowed_methods = ['GET']",
        "$.apps[0].cors.allowed_origins[0]: Expected an exact origin (use allow_all_origins for any), "
        "got '*'",
    ),
    (
        "allowed_origins = ['web.example.com']\nallowed_methods = ['GET']",
        "$.apps[0].cors.allowed_origins[0]: Expected scheme://host[:port], got 'web.example.com'",
    ),
    (
        "allowed_origins = ['https://Web.Example.com']\nallowed_methods = ['GET']",
        "$.apps[0].cors.allowed_origins[0]: Expected lower case, as browsers send it "
        "('https://web.example.com'), got 'https://Web.Example.com'",
    ),
    (
        "allowed_origins = ['https://web.example.com:443']\nallowed_methods = ['GET']",
        "$.apps[0].cors.allowed_origins[0]: Expected no default port (browsers omit it: "
        "'https://web.example.com'), got 'https://web.example.com:443'",
    ),
    (
        "allowed_origins = ['https://bücher.example']\nallowed_methods = ['GET']",
        "$.apps[0].cors.allowed_origins[0]: Expected an ASCII origin (write the host in punycode, xn--...), "
        "got 'https://bücher.example'",
    ),
    (
        "allowed_origins = ['null']\nallowed_methods = ['GET']\nallow_credentials = true",
        "$.apps[0].cors.allowed_origins[0]: Expected no 'null' origin with allow_credentials = true: "
        "sandboxed and file: pages all send 'null', so it identifies no site",
    ),
    (
        "allowed_origins = ['https://a.example', 'https://a.example']\nallowed_methods = ['GET']",
        "$.apps[0].cors.allowed_origins[1]: 'https://a.example' is listed twice",
    ),
    (
        "allowed_origins = ['https://a.example']\nallowed_methods = ['*']",
        "$.apps[0].cors.allowed_methods[0]: Expected a name; for any, set allow_all_methods = true",
    ),
    (
        "allowed_origins = ['https://a.example']\nallowed_methods = ['GET']\nallowed_headers = ['X A']",
        "$.apps[0].cors.allowed_headers[0]: Expected a method or header name (an HTTP token), got 'X A'",
    ),
    (
        # A trailing newline is no part of a token (a `$` match let it through
        # to the compiled response, where h11 refused the value).
        "allowed_origins = ['https://a.example']\nallowed_methods = [\"GET\\n\"]",
        "$.apps[0].cors.allowed_methods[0]: Expected a method or header name (an HTTP token), got 'GET\\n'",
    ),
    (
        "allowed_origins = ['https://a.example']\nallowed_methods = ['GET']\n"
        "allowed_headers = ['x-a', 'X-A']",
        "$.apps[0].cors.allowed_headers[1]: 'X-A' is listed twice",
    ),
    (
        "allow_origins = true",
        "$.apps[0].cors: unknown key 'allow_origins' (did you mean 'allowed_origins'?)",
    ),
]


@pytest.mark.parametrize(("cors", "message"), CORS_ERRORS)
def test_cors_errors(cors: str, message: str) -> None:
    assert error_of(app(cors=cors)) == message


@pytest.mark.parametrize(
    "origin",
    ["null", "https://a.example", "http://localhost:8080", "https://[::1]:8443", "chrome-extension://abcdef"],
)
def test_valid_origins(origin: str) -> None:
    assert origin_problem(origin) is None


APP_ERRORS = [
    (
        app(
            extra="options_preflight_bypass = true",
            cors="allowed_origins = ['https://a.example']\nallowed_methods = ['GET']",
        ),
        "$.apps[0].options_preflight_bypass: Expected false with cors settings: preflights are "
        "either answered at the edge (cors) or forwarded to the upstream (options_preflight_bypass), "
        "not both",
    ),
    (app() + app(), "$.apps[1].name: 'api' is already the name of $.apps[0]"),
    (
        app() + app(name="other"),
        "$.apps[1].domains[0]: 'api.example.com' is already covered by $.apps[0].domains[0] ('api'); "
        "one pattern, one application",
    ),
    (
        app() + app(name="other").replace('["api.example.com"]', '["API.example.com/"]'),
        "$.apps[1].domains[0]: 'API.example.com/' is already covered by $.apps[0].domains[0] ('api'); "
        "one pattern, one application",
    ),
    (
        app().replace('["api.example.com"]', '["a.example.com/x", "a.example.com/x/*"]'),
        "$.apps[0].domains[1]: 'a.example.com/x/*' is already covered by $.apps[0].domains[0] ('api'); "
        "one pattern, one application",
    ),
    (
        app(extra='aud = "t"') + app(name="b", extra='aud = "t"').replace("api.example.com", "b.example.com"),
        "$.apps[1].aud: 't' is already the aud of $.apps[0]",
    ),
    (
        app().replace('["api.example.com"]', '["api.example.com:8443"]'),
        "$.apps[0].domains[0]: Expected no port (ports are ignored when matching), "
        "got 'api.example.com:8443'",
    ),
    (
        app().replace('["api.example.com"]', '["a.*.example.com"]'),
        "$.apps[0].domains[0]: Expected '*' only as a whole first label ('*.example.com'), "
        "got 'a.*.example.com'",
    ),
    (
        app().replace('["api.example.com"]', '["*.*.example.com"]'),
        "$.apps[0].domains[0]: Expected '*' only as a whole first label ('*.example.com'), "
        "got '*.*.example.com'",
    ),
    (
        app().replace('["api.example.com"]', '["example.com/a/*/b"]'),
        "$.apps[0].domains[0]: Expected '*' in a path only as a trailing '/*', got 'example.com/a/*/b'",
    ),
    (
        app().replace('["api.example.com"]', '["example.com/a/../b"]'),
        "$.apps[0].domains[0]: Expected a plain path (no '.', '..', '?', '#', '%', '\\'), "
        "got 'example.com/a/../b'",
    ),
    (app().replace('["api.example.com"]', "[]"), "$.apps[0].domains: Expected at least one domain"),
    (
        app().replace("http://127.0.0.1:9000", "ftp://x"),
        "$.apps[0].upstream: Expected an http:// or https:// URL with a host, got 'ftp://x'",
    ),
    (
        app().replace("http://127.0.0.1:9000", "http://x/?q=1"),
        "$.apps[0].upstream: Expected no query, fragment or user info in an upstream URL, got 'http://x/?q=1'",
    ),
    (app(extra='aud = "a b"'), "$.apps[0].aud: Expected 1-128 characters of A-Z a-z 0-9 . _ ~ -, got 'a b'"),
    (
        app(extra='unauthenticated = "login"'),
        "$.apps[0].unauthenticated: Expected one of auto, redirect, got 'login'",
    ),
    (app(extra='same_site = "Lax"'), "$.apps[0].same_site: Expected one of lax, strict, none, got 'Lax'"),
    (app(extra="session_duration = 10"), "$.apps[0].session_duration: Expected int >= 60, got 10"),
    (
        app(name="a!b"),
        "$.apps[0].name: Expected letters, digits, ' ', '.', '_' or '-' (1-128, starting with a "
        "letter or digit), got 'a!b'",
    ),
    (
        app().split("[[apps.policies]]")[0] + "policies = []",
        "$.apps[0].policies: Expected at least one policy (with none, every request is denied)",
    ),
    (
        app() + '[[apps.policies]]\nname = "p"\naction = "deny"\ninclude = [{ everyone = true }]\n',
        "$.apps[0].policies[1].name: 'p' is already used by policies[0]",
    ),
    (
        app(extra='zzz = "red"'),
        "$.apps[0]: unknown key 'zzz' (known keys: name, domains, upstream, policies, "
        "aud, cors, options_preflight_bypass, unauthenticated, same_site, http_only, path_scoped, "
        "session_duration, keep_auth_cookie, rewrite_host, allowed_idps, auto_redirect_to_identity, "
        "custom_deny_message, custom_deny_url, app_launcher_visible, logo_url)",
    ),
]


@pytest.mark.parametrize(("text", "message"), APP_ERRORS)
def test_app_errors(text: str, message: str) -> None:
    assert error_of(text) == message


# Every selector, in the order the schema declares them (the message lists them all).
ALL_SELECTORS = ", ".join(SELECTORS)
assert ALL_SELECTORS.startswith("everyone, emails, email_domains, groups, ip_ranges, service_tokens")

POLICY_ERRORS = [
    ("include = []", "$.apps[0].policies[0].include: Expected at least one rule"),
    (
        "include = [{}]",
        f"$.apps[0].policies[0].include[0]: Expected exactly one selector ({ALL_SELECTORS}), got none",
    ),
    (
        "include = [{ everyone = true, emails = ['a@b.c'] }]",
        f"$.apps[0].policies[0].include[0]: Expected exactly one selector ({ALL_SELECTORS}), "
        "got everyone, emails",
    ),
    (
        "include = [{ everyone = false }]",
        "$.apps[0].policies[0].include[0].everyone: Expected true (leave the rule out instead of false)",
    ),
    ("include = [{ emails = [] }]", "$.apps[0].policies[0].include[0].emails: Expected at least one value"),
    (
        "include = [{ emails = ['alice'] }]",
        "$.apps[0].policies[0].include[0].emails[0]: Expected an email address, got 'alice'",
    ),
    (
        "include = [{ email_domains = ['a@example.com'] }]",
        "$.apps[0].policies[0].include[0].email_domains[0]: Expected an email domain like 'example.com', "
        "got 'a@example.com'",
    ),
    (
        "include = [{ everyone = true }]\nrequire = [{ ip_ranges = ['10.0.0.1/8'] }]",
        "$.apps[0].policies[0].require[0].ip_ranges[0]: Expected an IP network like '10.0.0.0/8' or "
        "'2001:db8::/32', got '10.0.0.1/8' (10.0.0.1/8 has host bits set)",
    ),
    (
        "include = [{ everyone = true }]\nexclude = [{ ip_ranges = ['10.0.0.0/8', 'nope'] }]",
        "$.apps[0].policies[0].exclude[0].ip_ranges[1]: Expected an IP network like '10.0.0.0/8' or "
        "'2001:db8::/32', got 'nope' ('nope' does not appear to be an IPv4 or IPv6 network)",
    ),
    (
        # The client's address is compared as IPv4 (a dual-stack socket's
        # ::ffff:a.b.c.d is unmapped): a mapped network would never match.
        "include = [{ everyone = true }]\nexclude = [{ ip_ranges = ['::ffff:203.0.113.0/120'] }]",
        "$.apps[0].policies[0].exclude[0].ip_ranges[0]: Expected an IPv4 network written as one "
        "('203.0.113.0/24'), got the IPv4-mapped '::ffff:203.0.113.0/120'",
    ),
    (
        "include = [{ service_tokens = ['ci'] }]",
        "$.apps[0].policies[0].include[0].service_tokens: Expected service token selectors only in "
        "service_auth policies (elsewhere a user login is needed)",
    ),
    (
        "include = [{ everyone = true }]\nrequire = [{ any_service_token = true }]",
        "$.apps[0].policies[0].require[0].any_service_token: Expected service token selectors only in "
        "service_auth policies (elsewhere a user login is needed)",
    ),
    (
        "include = [{ groups = ['a'] }]\ncolor = 1",
        "$.apps[0].policies[0]: unknown key 'color' (known keys: name, action, include, require, exclude)",
    ),
    (
        "include = [{ email = ['a@b.c'] }]",
        "$.apps[0].policies[0].include[0]: unknown key 'email' (did you mean 'emails'?)",
    ),
]


@pytest.mark.parametrize(("policy", "message"), POLICY_ERRORS)
def test_policy_errors(policy: str, message: str) -> None:
    assert error_of(TOKENS + app(policy=policy)) == message


@pytest.mark.parametrize(
    ("action", "rule", "message"),
    [
        ("bypass", "{ emails = ['a@b.c'] }", "Expected no identity selector in a bypass policy"),
        ("service_auth", "{ groups = ['g'] }", "Expected no identity selector in a service_auth policy"),
        (
            "allow",
            "{ service_tokens = ['ci'] }",
            "Expected service token selectors only in service_auth policies",
        ),
        ("Allow", "{ everyone = true }", "Expected one of bypass, service_auth, allow, deny, got 'Allow'"),
    ],
)
def test_policy_action_fits_its_rules(action: str, rule: str, message: str) -> None:
    text = TOKENS + app().replace('action = "allow"', f'action = "{action}"').replace(
        "{ everyone = true }", rule
    )
    assert message in error_of(text)


def test_unknown_service_token_name() -> None:
    policy = "include = [{ service_tokens = ['ci', 'deploy'] }]"
    text = TOKENS + app(policy=policy).replace('action = "allow"', 'action = "service_auth"')
    assert error_of(text) == (
        "$.apps[0].policies[0].include[0].service_tokens[1]: Expected the name of a [[service_tokens]] "
        "entry, got 'deploy' (known: ci)"
    )
    text = app(policy=policy).replace('action = "allow"', 'action = "service_auth"')
    assert error_of(text).endswith("got 'ci' (none are configured)")


ISSUER_ERRORS = [
    (
        'iss = "i"\nalgorithms = ["RS256"]',
        "$.issuers[0]: Expected exactly one of jwks_file, jwks_url or secret, got none",
    ),
    (
        'iss = "i"\njwks_file = "a"\njwks_url = "https://x/certs"',
        "$.issuers[0]: Expected exactly one of jwks_file, jwks_url or secret, got jwks_file and jwks_url",
    ),
    (
        'iss = "i"\njwks_file = "a"\nalgorithms = ["RS512"]',
        "$.issuers[0].algorithms[0]: Expected one of RS256, ES256, EdDSA, HS256, got 'RS512'",
    ),
    (
        'iss = "i"\njwks_file = "a"\nalgorithms = ["ES256", "none"]',
        "$.issuers[0].algorithms[1]: Expected one of RS256, ES256, EdDSA, HS256, got 'none'",
    ),
    (
        'iss = "i"\njwks_file = "a"\nalgorithms = ["RS256", "HS256"]',
        "$.issuers[0].algorithms[1]: Expected HS256 only with a secret (a public JWKS key must never "
        "serve as an HMAC key)",
    ),
    (
        f'iss = "i"\nsecret = "{"s" * 32}"\nalgorithms = ["HS256", "RS256"]',
        "$.issuers[0].algorithms[1]: Expected only HS256 with a secret",
    ),
    (
        f'iss = "i"\nsecret = "{"s" * 32}"',
        "$.issuers[0].algorithms[0]: Expected only HS256 with a secret",
    ),
    (
        'iss = "i"\nsecret = "short"\nalgorithms = ["HS256"]',
        "$.issuers[0].secret: Expected at least 32 bytes (RFC 7518 3.2)",
    ),
    (
        'iss = "i"\njwks_file = "a"\nalgorithms = []',
        "$.issuers[0].algorithms: Expected at least one algorithm",
    ),
    ('iss = "i"\njwks_file = "a"\nleeway = 601', "$.issuers[0].leeway: Expected int <= 600, got 601"),
    (
        'iss = "i"\njwks_file = "a"\nmax_token_lifetime = 59',
        "$.issuers[0].max_token_lifetime: Expected int >= 60, got 59",
    ),
    (
        'iss = "i"\njwks_file = "a"\nmax_token_lifetime = 2592001',
        "$.issuers[0].max_token_lifetime: Expected int <= 2592000, got 2592001",
    ),
    (
        'iss = "i"\njwks_file = "a"\nmax_token_lifetime = 1.5',
        "$.issuers[0].max_token_lifetime: Expected int, got float",
    ),
    ('iss = ""\njwks_file = "a"', "$.issuers[0].iss: Expected a non-empty printable string, got ''"),
    (
        'iss = "i"\njwks_url = "file:///etc/jwks"',
        "$.issuers[0].jwks_url: Expected an http:// or https:// URL, got 'file:///etc/jwks'",
    ),
]


@pytest.mark.parametrize(("issuer", "message"), ISSUER_ERRORS)
def test_issuer_errors(issuer: str, message: str) -> None:
    assert error_of(f"[[issuers]]\n{issuer}\n") == message


def test_duplicate_issuer() -> None:
    assert (
        error_of(ISSUER + ISSUER)
        == "$.issuers[1].iss: 'https://auth.example.com' is already used by $.issuers[0]"
    )


@pytest.mark.parametrize(
    ("token", "message"),
    [
        (
            f'name = "ci"\nclient_id = "a b"\nsecret_sha256 = "{SHA}"',
            "$.service_tokens[0].client_id: Expected a header-safe token (no spaces), got 'a b'",
        ),
        (
            f'name = "ci"\nclient_id = "ci\\n"\nsecret_sha256 = "{SHA}"',
            "$.service_tokens[0].client_id: Expected a header-safe token (no spaces), got 'ci\\n'",
        ),
        (
            'name = "ci"\nclient_id = "ci"\nsecret_sha256 = "abc"',
            "$.service_tokens[0].secret_sha256: Expected 64 lower-case hex digits (sha256 of the secret)",
        ),
        (
            f'name = "ci"\nclient_id = "ci"\nsecret_sha256 = "{SHA.upper()}"',
            "$.service_tokens[0].secret_sha256: Expected 64 lower-case hex digits (sha256 of the secret)",
        ),
        (
            f'name = "ci"\nclient_id = "ci"\nsecret = "x"\nsecret_sha256 = "{SHA}"',
            "$.service_tokens[0]: unknown key 'secret' (did you mean 'secret_sha256'?)",
        ),
    ],
)
def test_service_token_errors(token: str, message: str) -> None:
    assert error_of(f"[[service_tokens]]\n{token}\n") == message


def test_duplicate_service_tokens() -> None:
    assert (
        error_of(TOKENS + TOKENS) == "$.service_tokens[1].name: 'ci' is already used by $.service_tokens[0]"
    )
    other = TOKENS.replace('name = "ci"', 'name = "cd"')
    assert (
        error_of(TOKENS + other)
        == "$.service_tokens[1].client_id: 'ci.example' is already used by $.service_tokens[0]"
    )


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("login", "$.login.url: Expected an http(s) URL or an absolute path, got 'login'"),
        (
            "/login?u={user}",
            "$.login.url: Expected placeholders among {host}, {aud}, {redirect_url}, got {user}",
        ),
        (
            "/login?u={",
            "$.login.url: Expected a template with {host}, {aud}, {redirect_url}: "
            "Single '{' encountered in format string",
        ),
        ("/a b", "$.login.url: Expected no spaces, got '/a b'"),
    ],
)
def test_login_errors(url: str, message: str) -> None:
    assert error_of(f'[login]\nurl = "{url}"\n') == message


def test_trusted_proxies_errors() -> None:
    assert error_of('[server]\ntrusted_proxies = ["10.0.0.0/8", "10.0.0.0/33"]\n') == (
        "$.server.trusted_proxies[1]: Expected an IP network like '10.0.0.0/8' or '2001:db8::/32', "
        "got '10.0.0.0/33' ('10.0.0.0/33' does not appear to be an IPv4 or IPv6 network)"
    )


@pytest.mark.parametrize(
    ("text", "host", "segments"),
    [
        ("App.Example.com", "app.example.com", ()),
        ("example.com/api/*", "example.com", ("api",)),
        ("example.com/api/", "example.com", ("api",)),
        ("example.com//a//b", "example.com", ("a", "b")),
        ("*.example.com/x", "*.example.com", ("x",)),
        ("example.com.", "example.com", ()),
    ],
)
def test_parse_domain(text: str, host: str, segments: tuple[str, ...]) -> None:
    pattern = parse_domain(text)
    assert (pattern.host, pattern.segments) == (host, segments)


# -- the shipped example -----------------------------------------------------------------


def test_default_config_runs_the_example_apps() -> None:
    config = load(ROOT / "conf" / "edge.toml")
    assert [a.name for a in config.apps] == ["demo", "docs", "api", "api-public", "api-internal"]
    # Only the access log differs (a file, for the demo: tests/config/test_config.py NOT_DEFAULT).
    assert msgspec.structs.replace(config.server, access_log="stdout") == Config().server
    assert config.proxy == Config().proxy


def test_the_example_runs_as_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # jwks_file is relative to the working directory, like tls.cert
    config = load(ROOT / "conf" / "edge.toml")
    compiled = compile_config(config, "conf/edge.toml")
    assert [a.name for a in compiled.apps] == ["demo", "docs", "api", "api-public", "api-internal"]
    assert hashlib.sha256(b"demo-secret-change-me").hexdigest() == config.service_tokens[0].secret_sha256
