"""The dev provider: email and password of users listed in the config.

Invariants:
- Failed checks are counted per client in the store (FAILURE_WINDOW); from
  MAX_FAILURES on, the form answers 429 without checking the password.
  Behind a trusted proxy the client is the address it forwards for (by the
  proxy's own, one guesser would lock out everyone).
- An unknown email costs the same password hash as a known one (DUMMY_HASH),
  so the answer's timing does not tell which users exist; the hash runs in
  an executor, never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from edge.access.compile import Compiled
from edge.access.headers import X_FORWARDED_FOR
from edge.access.request import Request
from edge.access.responses import LocalResponse
from edge.access.session import new_person
from edge.access.subject import client_ip
from edge.config.schema import DevProvider
from edge.login.context import Context, Target
from edge.login.handoff import start_session
from edge.login.passwords import DUMMY_HASH, verify_password

log = logging.getLogger("edge.login")

# Failed password checks allowed per client address in a window, then 429.
MAX_FAILURES = 10
FAILURE_WINDOW = 300.0  # seconds


async def sign_in(
    ctx: Context,
    c: Compiled,
    provider: DevProvider,
    form: Mapping[str, str],
    req: Request,
    target: Target | None,
    now: float,
) -> LocalResponse:
    email = form.get("email", "").strip()
    ip = client_ip(req.client_ip, req.values(X_FORWARDED_FOR), c.trusted)
    client = req.client_ip if ip is None else str(ip)
    if await ctx.store.count(f"signin:{client}", FAILURE_WINDOW) >= MAX_FAILURES:
        return ctx.login_page(429, req, target, "Too many failed attempts; wait a few minutes.", email)
    user = ctx.dev_users.get(email.lower())
    if user is not None and user not in provider.users:
        user = None
    encoded = user.password if user is not None else DUMMY_HASH
    loop = asyncio.get_running_loop()
    ok = await loop.run_in_executor(None, verify_password, form.get("password", ""), encoded)
    if not ok or user is None:
        await ctx.store.add(f"signin:{client}", FAILURE_WINDOW)
        log.info("dev sign-in failed for %r from %s", email[:100], client)
        return ctx.login_page(401, req, target, "Wrong email or password.", email)
    return start_session(
        ctx, c, new_person(user.email, user.groups, provider.id, amr=user.amr), target, req, now
    )
