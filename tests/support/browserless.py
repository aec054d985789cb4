"""A tiny cookie-keeping HTTP client for login-flow tests: what a browser does
between redirects, over real sockets to the edge on 127.0.0.1 (host names
like app.localhost go in the Host header, as a browser resolving *.localhost
to loopback would send them)."""

from __future__ import annotations

import http.client
import re
from dataclasses import dataclass, field
from urllib.parse import urlencode, urljoin, urlsplit

TIMEOUT = 10.0


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    url: str

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def form_field(self, name: str) -> str:
        m = re.search(rf'name="{name}" value="([^"]*)"', self.text)
        assert m is not None, f"no {name} field in {self.text[:500]}"
        return m.group(1).replace("&amp;", "&")


@dataclass
class Browser:
    """Follows redirects, keeps host-only cookies (by host, path ignored
    beyond prefix matching), sends Sec-Fetch-Mode: navigate like a browser."""

    port: int  # where the edge listens; every *.localhost URL goes there
    # host -> cookie name -> (value, path)
    cookies: dict[str, dict[str, tuple[str, str]]] = field(default_factory=dict)
    set_cookies: list[tuple[str, str]] = field(default_factory=list)  # (host, raw Set-Cookie)
    ports: dict[int, int] = field(default_factory=dict)  # URL port -> real port (other servers)

    def request(
        self, method: str, url: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> Reply:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = self.ports.get(parts.port or 80, self.port) if host.endswith("localhost") else parts.port or 80
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
        send = {"Host": parts.netloc, "Sec-Fetch-Mode": "navigate", "Accept": "text/html"}
        send.update(headers or {})
        jar = self.cookies.get(host, {})
        path = parts.path or "/"
        pairs = [f"{k}={v}" for k, (v, p) in jar.items() if path.startswith(p)]
        if pairs:
            send["Cookie"] = "; ".join(pairs)
        try:
            conn.request(method, (parts.path or "/") + (f"?{parts.query}" if parts.query else ""), body, send)
            r = conn.getresponse()
            reply = Reply(r.status, r.getheaders(), r.read(), url)
        finally:
            conn.close()
        for raw in reply.all("set-cookie"):
            self._store(host, raw)
        return reply

    def _store(self, host: str, raw: str) -> None:
        self.set_cookies.append((host, raw))
        name, _, rest = raw.partition("=")
        value = rest.split(";")[0]
        attrs = {a.split("=")[0].strip().lower(): a.partition("=")[2].strip() for a in rest.split(";")[1:]}
        jar = self.cookies.setdefault(host, {})
        if attrs.get("max-age") == "0":
            jar.pop(name, None)
        else:
            jar[name] = (value, attrs.get("path", "/"))

    def get(self, url: str, follow: bool = True, headers: dict[str, str] | None = None) -> Reply:
        reply = self.request("GET", url, headers=headers)
        hops = 0
        while follow and reply.status in (301, 302, 303, 307) and hops < 10:
            location = reply.header("location") or ""
            reply = self.request("GET", urljoin(reply.url, location), headers=headers)
            hops += 1
        return reply

    def post_form(self, url: str, fields: dict[str, str], follow: bool = True) -> Reply:
        body = urlencode(fields).encode()
        reply = self.request("POST", url, body, {"Content-Type": "application/x-www-form-urlencoded"})
        if follow and reply.status in (301, 302, 303):
            return self.get(urljoin(url, reply.header("location") or ""))
        return reply

    def cookie(self, host: str, name: str = "CF_Authorization") -> str | None:
        found = self.cookies.get(host, {}).get(name)
        return None if found is None else found[0]

    def sign_in(self, url: str, email: str, password: str) -> Reply:
        """Open `url`, get sent to the login page, submit the dev form."""
        page = self.get(url)
        assert page.status == 200 and "<form" in page.text, (page.status, page.text[:300])
        fields = {"csrf": page.form_field("csrf"), "provider": "dev", "email": email, "password": password}
        return self.post_form(page.url, fields)
