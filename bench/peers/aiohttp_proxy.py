"""The Python user's obvious alternative to edge: an aiohttp reverse proxy
that checks the same token the same way.

- The token comes from the ``CF_Authorization`` cookie (aiohttp's cookie
  parsing); no token is a 401, a token that fails verification a 403, an
  email outside the allowed domains a 403.
- Verification is PyJWT with the issuer's public key chosen by ``kid`` from
  the JWKS file, the algorithm pinned, and ``aud``, ``iss``, ``exp`` checked
  (``exp``, ``iat``, ``iss`` and ``aud`` required), with the edge's leeway.
  Verified tokens sit in a small dict until their ``exp`` (+ leeway), oldest
  evicted first when it is full: the same cache the edge keeps.
- The request goes upstream through one ``aiohttp.ClientSession`` with
  keep-alive: hop-by-hop fields and the auth cookie removed, X-Forwarded-*
  and the two identity headers (``cf-access-jwt-assertion``,
  ``cf-access-authenticated-user-email``) added, as the edge does. Bodies
  stream both ways; nothing is buffered whole.
- uvloop, one process, no access log.

Run: python bench/peers/aiohttp_proxy.py --port 8083 --upstream http://127.0.0.1:9000 \
        --jwks conf/example-jwks.json --iss https://auth.example.com --aud example-api \
        --email-domain example.com
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
from pathlib import Path

import aiohttp
import jwt
import uvloop
from aiohttp import web
from multidict import CIMultiDict

COOKIE = "CF_Authorization"
CACHE_ENTRIES = 10_000  # as edge/access/tokens.py
CHUNK = 64 * 1024  # bytes per upload read
# RFC 9110 7.6.1, as edge/proxy/forwarding.py (plus the framing aiohttp redoes).
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade", "proxy-connection"}
)
DROP_REQUEST = HOP_BY_HOP | {
    "cf-access-jwt-assertion",
    "cf-access-authenticated-user-email",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "expect",
    "content-length",
    "cookie",
}


class Verifier:
    """PyJWT verification with a dict cache of verified tokens."""

    def __init__(self, jwks: Path, iss: str, aud: str, algorithm: str, leeway: float) -> None:
        self.keys = {k.key_id: k for k in jwt.PyJWKSet.from_json(jwks.read_text()).keys if k.key_id}
        self.iss = iss
        self.aud = aud
        self.algorithm = algorithm
        self.leeway = leeway
        self.cache: dict[str, tuple[float, str]] = {}  # token -> (valid until, email)

    def email(self, token: str) -> str | None:
        """The verified email of `token`, or None when it is not acceptable."""
        now = time.time()
        hit = self.cache.get(token)
        if hit is not None:
            if hit[0] > now:
                return hit[1]
            del self.cache[token]
        try:
            key = self.keys[str(jwt.get_unverified_header(token).get("kid"))]
            claims = jwt.decode(
                token,
                key,
                algorithms=[self.algorithm],
                audience=self.aud,
                issuer=self.iss,
                leeway=self.leeway,
                options={"require": ["exp", "iat", "iss", "aud"]},
            )
        except (jwt.PyJWTError, KeyError):
            return None
        email = claims.get("email")
        if not isinstance(email, str):
            return None
        while len(self.cache) >= CACHE_ENTRIES:
            del self.cache[next(iter(self.cache))]
        self.cache[token] = (float(claims["exp"]) + self.leeway, email)
        return email


class Proxy:
    def __init__(self, upstream: str, verifier: Verifier, domains: frozenset[str]) -> None:
        self.upstream = upstream.rstrip("/")
        self.verifier = verifier
        self.domains = domains
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
            timeout=aiohttp.ClientTimeout(total=None, connect=5, sock_read=60),
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        token = request.cookies.get(COOKIE)
        if not token:
            return web.Response(status=401, text="no token\n")
        email = self.verifier.email(token)
        if email is None or email.rpartition("@")[2].lower() not in self.domains:
            return web.Response(status=403, text="forbidden\n")
        headers = upstream_headers(request, token, email)
        body = request.content.iter_chunked(CHUNK) if request.body_exists else None
        assert self.session is not None
        async with self.session.request(
            request.method,
            self.upstream + request.raw_path,
            headers=headers,
            data=body,
            allow_redirects=False,
        ) as up:
            response = web.StreamResponse(status=up.status, reason=up.reason)
            for name, value in up.headers.items():
                if name.lower() not in HOP_BY_HOP:
                    response.headers.add(name, value)
            await response.prepare(request)
            async for chunk in up.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response


def upstream_headers(request: web.Request, token: str, email: str) -> CIMultiDict[str]:
    named = {t.strip().lower() for v in request.headers.getall("Connection", []) for t in v.split(",")}
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in request.headers.items():
        lower = name.lower()
        if lower not in DROP_REQUEST and lower not in named:
            out.add(name, value)
    # Every cookie but the token, as sent (edge/proxy/forwarding.py strip_cookie).
    kept = [
        pair
        for value in request.headers.getall("Cookie", [])
        for pair in (p.strip() for p in value.split(";"))
        if pair and pair.partition("=")[0].strip() != COOKIE
    ]
    if kept:
        out["Cookie"] = "; ".join(kept)
    out["X-Forwarded-For"] = request.remote or ""
    out["X-Forwarded-Proto"] = request.scheme
    out["X-Forwarded-Host"] = request.host
    out["Cf-Access-Jwt-Assertion"] = token
    out["Cf-Access-Authenticated-User-Email"] = email
    return out


async def serve(args: argparse.Namespace) -> None:
    verifier = Verifier(args.jwks, args.iss, args.aud, args.alg, args.leeway)
    proxy = Proxy(args.upstream, verifier, frozenset(d.lower() for d in args.email_domain))
    await proxy.start()
    app = web.Application(client_max_size=0)
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, args.host, args.port, backlog=1024).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        await proxy.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="http://host:port")
    parser.add_argument("--jwks", type=Path, required=True, help="JWKS file of the issuer")
    parser.add_argument("--iss", required=True)
    parser.add_argument("--aud", required=True)
    parser.add_argument("--alg", default="ES256", help="the one algorithm accepted")
    parser.add_argument("--leeway", type=float, default=60.0, help="seconds, as the edge's issuer")
    parser.add_argument("--email-domain", action="append", required=True, help="allowed (repeatable)")
    uvloop.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
