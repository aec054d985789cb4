"""A login service as a worker holds it, for the pure login tests: built
from a config with a team (its key directory under the test's tmp_path), a
real MemoryStore, the compiled config that decide() reads, and the clock
pinned at NOW. No sockets, no server."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from edge.access.actions import Endpoint
from edge.access.compile import Compiled, compile_config
from edge.access.decide import decide
from edge.access.request import Request, build
from edge.config.load import loads
from edge.config.schema import Config
from edge.login.context import Context
from edge.login.service import LoginService, ensure_keys
from edge.login.store import MemoryStore

NOW = 1_700_000_000.0


class LoginSite:
    """The login service of `config`, a config with a team whose `key_dir`
    is the placeholder `{key_dir}`."""

    def __init__(self, tmp_path: Path, config: str) -> None:
        self.config: Config = loads(config.format(key_dir=tmp_path / "keys"))
        ensure_keys(self.config)
        self.store = MemoryStore(clock=lambda: NOW)
        self.service = LoginService(self.config, self.store, b"edge")
        self.c: Compiled = compile_config(
            self.config, team_keys=self.service.verify_keys(), revoked=self.store.revocations
        )

    @property
    def ctx(self) -> Context:
        return self.service.context

    def endpoint(
        self, method: str, url: str, headers: Sequence[tuple[str, str]] = ()
    ) -> tuple[Endpoint, Request]:
        """What decide() hands the login service for this request."""
        parts = urlsplit(url)
        target = (parts.path + ("?" + parts.query if parts.query else "")).encode()
        host = parts.netloc.encode()
        fields = [(b"host", host), *((k.lower().encode(), v.encode()) for k, v in headers)]
        req = build(method.encode(), host, target, fields, "127.0.0.1")
        action = decide(self.c, req, NOW)
        assert isinstance(action, Endpoint), action
        return action, req
