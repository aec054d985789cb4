"""What the browser carries between the steps of a login, sealed
(session.Sealer): the one-time handoff code and the OIDC flow cookie, each a
typed Struct.

Invariants:
- A payload is encoded from its Struct and decoded into it with msgspec; a
  value that opens but is not of its shape (an old format, a value sealed by
  a bug) is refused like a forged one: SealError.
- The wire names are short (one letter) because the flow cookie must stay
  under FLOW_COOKIE_LIMIT bytes and the code rides in a URL; the code names
  fields in full. The wire names are what every edge of a team (and every
  code already issued when a worker reloads) reads, so they never change.
- Sealing adds the expiry (`exp`); `open_sealed` returns it beside the value.
"""

from __future__ import annotations

from typing import TypeVar

import msgspec

from edge.access.session import Person, Sealer, SealError

HANDOFF = "handoff"  # purpose (AEAD associated data) of a one-time code
FLOW = "flow"  # purpose of the OIDC flow cookie


class HandoffCode(msgspec.Struct, frozen=True):
    """The one-time code that carries a sign-in to an application's host."""

    host: str = msgspec.field(name="h")  # the application host it may be used on
    aud: str = msgspec.field(name="a")  # the application
    redirect_url: str = msgspec.field(name="r")  # where the browser goes next, on `host`
    person: Person = msgspec.field(name="p")  # its fields keep their names (session.Person)
    jti: str = msgspec.field(name="j")  # the single-use key in the store
    # The login binding cookie's value on `host` ("" when the login has none).
    binding: str = msgspec.field(default="", name="b")


class SavedTarget(msgspec.Struct, frozen=True, array_like=True):
    """Where an OIDC sign-in returns to (handoff.Target, by name)."""

    host: str
    aud: str
    redirect_url: str
    binding: str


class FlowState(msgspec.Struct, frozen=True):
    """An OpenID Connect sign-in in progress (the flow cookie, team host)."""

    provider: str = msgspec.field(name="i")
    state: str = msgspec.field(name="s")
    nonce: str = msgspec.field(name="n")
    verifier: str = msgspec.field(name="v")  # the PKCE code verifier
    target: SavedTarget | None = msgspec.field(default=None, name="t")


Payload = TypeVar("Payload", HandoffCode, FlowState)


def seal(sealer: Sealer, purpose: str, value: HandoffCode | FlowState, exp: float) -> str:
    return sealer.seal(purpose, msgspec.to_builtins(value), exp)


def open_sealed(
    sealer: Sealer, purpose: str, text: str, now: float, kind: type[Payload]
) -> tuple[Payload, float]:
    """The value and its expiry; SealError if it is not a live `kind`
    sealed by this team for `purpose`."""
    raw = sealer.open(purpose, text, now)
    try:
        return msgspec.convert(raw, kind), float(raw["exp"])
    except msgspec.ValidationError:
        raise SealError("not of the expected shape") from None
