"""One request to an edge endpoint (/cdn-cgi/access/*, the team host): the
cycle between a client connection and the login service.

Invariants:
- The request body (a login form) is read whole but bounded: more than
  MAX_FORM_BYTES is a 413, and the connection closes (the rest is not read).
- The handler runs as one task; its answer is a LocalResponse. A handler
  that fails unexpectedly becomes a 500 with nothing of the error shown; one
  that takes longer than the connection's deadline becomes a 504.
- A client that goes away cancels the handler: nothing is answered to no one.
- The cycle sees its client connection only as edge.http.cycle.Client; the
  error responses it may answer with are handed in (those of the
  configuration in force when the request arrived).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass

from edge.access.responses import LocalResponse, Responses
from edge.config.schema import KIB
from edge.http.cycle import Client

log = logging.getLogger("edge.login")

MAX_FORM_BYTES = 16 * KIB  # a login form is a few hundred bytes
# Seconds: covers a sign-in through an identity provider (discovery, token,
# JWKS and one refetch: 4 calls of at most 5 s each).
ENDPOINT_TIMEOUT = 25.0

Handler = Callable[[bytes], Coroutine[None, None, "LocalResponse"]]


@dataclass(frozen=True, slots=True)
class EndpointCall:
    """What dispatch returns for an endpoint: the handler, called with the body."""

    handler: Handler


class EndpointCycle:
    __slots__ = ("body", "call", "client", "done", "errors", "task")

    def __init__(self, client: Client, call: EndpointCall, errors: Responses) -> None:
        self.client = client
        self.call = call
        self.errors = errors
        self.body = bytearray()
        self.task: asyncio.Task[LocalResponse] | None = None
        self.done = False

    def start(self) -> None:
        self.client.arm(ENDPOINT_TIMEOUT)
        self.client.send_continue()

    def client_data(self, data: bytes) -> None:
        if self.done:
            return
        self.body += data
        if len(self.body) > MAX_FORM_BYTES:
            self._finish(self.errors.error(413))

    def client_end(self) -> None:
        if self.done or self.task is not None:
            return
        self.client.arm(ENDPOINT_TIMEOUT)
        self.task = asyncio.get_running_loop().create_task(self.call.handler(bytes(self.body)))
        self.task.add_done_callback(self._answered)

    def _answered(self, task: asyncio.Task[LocalResponse]) -> None:
        if task.cancelled() or self.done:
            return
        exc = task.exception()
        if exc is not None:
            log.error("login service error", exc_info=exc)
            self._finish(self.errors.error(500))
            return
        self._finish(task.result())

    def _finish(self, response: LocalResponse) -> None:
        self.done = True
        self.client.answer(response)

    def client_write_paused(self, paused: bool) -> None:
        pass  # a local answer is written in one piece; the transport buffers it

    def client_lost(self) -> None:
        self.done = True
        if self.task is not None:
            self.task.cancel()

    def client_raw(self, data: bytes) -> None:
        pass  # no upgrade on an endpoint

    def timeout(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if not self.done:
            self._finish(self.errors.error(504))
