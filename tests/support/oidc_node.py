"""The certified OpenID provider in the tests: oidc-provider (npm) run by
tests/support/oidc_provider.mjs as a child process on 127.0.0.1, the
`certified_provider` fixture (module-scoped; import it into a test module to
use it), and a user agent that signs in at it with plain HTTP.

`NodeProvider(...)` starts it (bounded wait for its READY line), `stop()`
kills it; `restart()` starts it again on the same port with a fresh signing
key (a key rotation: same issuer, new kid). `requests` lists the paths it
served, in order, up to the moment it is read: the log comes through a pipe
read by a thread, so reading it first sends a marker request and waits for
its line (the provider logs in order); without that, a count taken just
after a request could miss it, and one taken later see it (it did, in CI).
`sign_in_at(url, login)` is the browser's visit: the
authorization URL, our interaction's form, back to the authorization
endpoint, and the redirect to the client: it returns that redirect's URL.

bin/test installs oidc-provider into var/npm (or $EDGE_TEST_NPM).
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.error import HTTPError
from urllib.parse import urlencode, urljoin, urlsplit
from urllib.request import HTTPCookieProcessor, HTTPRedirectHandler, HTTPSHandler, Request, build_opener

import pytest

CLIENT_ID = "edge-test"
CLIENT_SECRET = "edge-test-secret"
REDIRECT_URI = "http://127.0.0.1/cdn-cgi/access/callback"
ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("oidc_provider.mjs")
NODE_MODULES = Path(os.environ.get("EDGE_TEST_NPM", ROOT / "var" / "npm")) / "node_modules"
START_TIMEOUT = 30.0  # seconds for node to load oidc-provider and listen (about 0.5 s alone)
STOP_TIMEOUT = 10.0  # seconds after SIGTERM before SIGKILL
HTTP_TIMEOUT = 10.0  # seconds per request of the signing-in user agent
HOPS = 10  # redirects followed at most while signing in
MARK = "/__logged/"  # a path the provider does not serve: the marker of `requests`

# What the provider knows about each user (claims by scope: see oidc_provider.mjs).
USERS: dict[str, dict[str, Any]] = {
    "alice": {
        "sub": "u-alice",
        "email": "alice@example.com",
        "email_verified": True,
        "groups": ["staff", "admins"],
        "amr": ["pwd", "mfa"],  # signed in with a second factor
    },
    "bob": {"sub": "u-bob", "email": "bob@example.com", "email_verified": True},
    "eve": {"sub": "u-eve", "email": "eve@example.com", "email_verified": False},
    # Keycloak puts realm roles in a nested claim, not in "groups".
    "kim": {
        "sub": "u-kim",
        "email": "kim@example.com",
        "email_verified": True,
        "realm_access": {"roles": ["admins", "offline_access"]},
    },
    # Some providers (and some accounts) say nothing about verification.
    "sam": {"sub": "u-sam", "email": "sam@example.com", "groups": "admins"},
    "nomail": {"sub": "u-nomail"},
}


class NodeProvider:
    def __init__(
        self,
        *,
        redirect_uris: tuple[str, ...] = (REDIRECT_URI,),
        port: int = 0,
        code_ttl: int = 60,
        auth_methods: tuple[str, ...] = ("client_secret_basic", "client_secret_post"),
        tls: tuple[Path, Path] | None = None,
        users: Mapping[str, Mapping[str, Any]] = USERS,
    ) -> None:
        if not (NODE_MODULES / "oidc-provider" / "package.json").is_file():
            raise RuntimeError(f"oidc-provider is not installed in {NODE_MODULES}: run bin/test once")
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("node is not installed: run bin/test once")
        self.node = node
        self.port = port or _free_port()
        self.issuer = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.config = {
            "port": self.port,
            "redirect_uris": list(redirect_uris),
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "auth_methods": list(auth_methods),
            "code_ttl": code_ttl,
            "users": {name: dict(claims) for name, claims in users.items()},
        }
        if tls:
            self.config["tls"] = {"cert": str(tls[0]), "key": str(tls[1])}
        self._requests: list[str] = []
        self._marks = 0
        self.output: list[str] = []
        self._proc: subprocess.Popen[str] | None = None
        self._reader = threading.Thread()
        self._dir = tempfile.TemporaryDirectory(prefix="oidc-node-")

    def start(self) -> NodeProvider:
        config = Path(self._dir.name) / "config.json"
        config.write_text(json.dumps(self.config))
        env = {**os.environ, "NODE_PATH": str(NODE_MODULES), "NODE_ENV": "test"}
        proc = subprocess.Popen(
            [self.node, str(SCRIPT), str(config)],
            stdin=subprocess.PIPE,  # the provider exits when this closes, even if we die
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self._proc = proc
        ready = threading.Event()
        self._reader = threading.Thread(target=self._read, args=(proc, ready), daemon=True)
        self._reader.start()
        if not ready.wait(START_TIMEOUT) or proc.poll() is not None:
            self.stop()
            raise RuntimeError("oidc-provider did not start:\n" + "\n".join(self.output[-30:]))
        return self

    def _read(self, proc: subprocess.Popen[str], ready: threading.Event) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            if line.startswith("REQ "):
                self._requests.append(line.split(" ", 2)[2])
            else:
                self.output.append(line)
                if line.startswith("READY "):
                    ready.set()
        ready.set()  # it exited: start() sees poll() and says why

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT)
        # The pipe ends once the process is gone: read to the end, then close it.
        self._reader.join(STOP_TIMEOUT)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()

    @property
    def requests(self) -> list[str]:
        """The paths served so far, every one logged before this read (see
        the module's docstring); marker requests left out."""
        if self._proc is not None and self._proc.poll() is None:
            self._marks += 1
            mark = f"{MARK}{self._marks}"
            context = ssl._create_unverified_context()  # our own loopback test server
            try:
                opener = build_opener(HTTPSHandler(context=context))
                with opener.open(self.issuer + mark, timeout=HTTP_TIMEOUT):
                    pass
            except HTTPError:
                pass  # a 404: logged all the same
            except OSError:
                mark = ""  # gone meanwhile: what was read is all there is
            deadline = time.monotonic() + HTTP_TIMEOUT
            while mark and mark not in self._requests and time.monotonic() < deadline:
                time.sleep(0.005)
        return [path for path in self._requests if not path.startswith(MARK)]

    def restart(self) -> None:
        """Again on the same port, with a new signing key under a new kid."""
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        self._dir.cleanup()

    def __enter__(self) -> NodeProvider:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture(scope="module")
def certified_provider() -> Iterator[NodeProvider]:
    """oidc-provider with the default client and users, for a whole test module."""
    with NodeProvider() as provider:
        yield provider


def _free_port() -> int:
    from conftest import free_port

    return free_port()


# -- the user agent ---------------------------------------------------------------


class _NoRedirects(HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # every hop is taken (and checked) by sign_in_at


def sign_in_at(
    authorize_url: str, login: str = "alice", *, decline: bool = False, context: ssl.SSLContext | None = None
) -> str:
    """Visit the authorization URL as a fresh browser, sign in as `login` (or
    decline), and return the URL the provider sends the browser back to."""
    opener = build_opener(HTTPCookieProcessor(), _NoRedirects(), HTTPSHandler(context=context))
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(authorize_url))
    url, form = authorize_url, None
    for _ in range(HOPS):
        request = Request(url, data=None if form is None else urlencode(form).encode())
        try:
            with opener.open(request, timeout=HTTP_TIMEOUT) as response:
                status, location, body = response.status, response.headers.get("Location"), response.read()
        except HTTPError as answer:  # 3xx (not followed) and errors
            status, location, body = answer.code, answer.headers.get("Location"), answer.read()
        location = str(location or "")
        if status not in (302, 303) or not location:
            raise AssertionError(f"{url}: status {status}: {body[:300]!r}")
        url, form = urljoin(url, location), None
        if not url.startswith(origin + "/"):
            return url  # back to the client
        if url.startswith(origin + "/interaction/"):
            path = urlsplit(url).path
            url, form = f"{origin}{path}/{'abort' if decline else 'login'}", {"login": login}
    raise AssertionError(f"more than {HOPS} redirects signing in at {authorize_url}")
