"""Warnings about faults that repeat: the first at once, the rest as counts.

An upstream that is down fails every request sent to it, and a listener at
`max_connections` sheds every new connection; a line each would bury the log
(and cost a write each) exactly when someone needs to read it. Each subject
(an upstream URL, a listener address) gets instead:

- its first fault logged at once, in full;
- the faults that follow counted by kind, and logged as one line when the
  interval the first one opened ends: "upstream http://127.0.0.1:9000: 37
  requests failed in the last 10 s (connect refused: 30, reset: 7)";
- while faults keep coming, one such line per interval; after an interval
  without any, the next fault is again logged at once.

Invariants:
- Bookkeeping only: callers pass `now` (the loop's clock); nothing here reads
  a clock, and the only I/O is the logger's.
- A window is open for a subject exactly while its faults are not all
  logged; `flush` (the server's sweep, and the drain with `final`) closes the
  windows whose interval has ended, so counts are never lost on a clean stop.
"""

from __future__ import annotations

import logging

from edge.config.syntax import ListenAddress

# Long enough that a dead upstream under load costs a line per 10 s instead of
# one per request; short enough that the log follows an outage as it goes.
INTERVAL = 10.0  # seconds

log = logging.getLogger("edge.faults")


class _Window:
    __slots__ = ("counts", "logged", "noun", "start")

    def __init__(self, start: float, noun: str, logged: int) -> None:
        self.start = start
        self.noun = noun  # what the count is of: "requests failed", "connections shed"
        self.counts: dict[str, int] = {}
        self.logged = logged  # of the counted faults, how many already have their own line


class FaultLog:
    """Rate-limited fault warnings for one worker."""

    def __init__(self, interval: float = INTERVAL) -> None:
        self.interval = interval
        self.windows: dict[str, _Window] = {}
        # Every upstream failure by kind, and every connection shed, since the
        # worker started (the metrics).
        self.upstream_totals: dict[str, int] = {}
        self.shed_total = 0

    def record(self, subject: str, kind: str, now: float, detail: str, noun: str) -> None:
        """One fault of `subject`: logged at once (`detail`) when it opens a
        window, else counted under `kind`."""
        window = self.windows.get(subject)
        if window is None:
            window = self.windows[subject] = _Window(now, noun, logged=1)
            log.warning("%s: %s", subject, detail)
        window.counts[kind] = window.counts.get(kind, 0) + 1

    def upstream_failed(self, url: str, kind: str, now: float, detail: str) -> None:
        self.upstream_totals[kind] = self.upstream_totals.get(kind, 0) + 1
        self.record(f"upstream {url}", kind, now, detail, "requests failed")

    def shed(self, sockname: object, limit: int, now: float) -> None:
        """A connection refused at `max_connections` on the listener `sockname`."""
        self.shed_total += 1
        where = "-"
        if isinstance(sockname, tuple):
            where = ListenAddress(host=str(sockname[0]), port=int(sockname[1])).display()
        detail = f"{limit} connections open (max_connections): new connections get 503 and are closed"
        self.record(f"listener {where}", "max_connections", now, detail, "connections shed")

    def flush(self, now: float, final: bool = False) -> None:
        """Log the counts of every window whose interval has ended (all of
        them when `final`); a window that counted more keeps going, a quiet
        one closes."""
        for subject, window in list(self.windows.items()):
            if not final and now < window.start + self.interval:
                continue
            total = sum(window.counts.values())
            if total <= window.logged:
                del self.windows[subject]
                continue
            kinds = ", ".join(f"{kind}: {n}" for kind, n in sorted(window.counts.items()))
            elapsed = max(1, round(now - window.start))  # a final flush may come within a second
            log.warning("%s: %d %s in the last %d s (%s)", subject, total, window.noun, elapsed, kinds)
            if final:
                del self.windows[subject]
            else:
                self.windows[subject] = _Window(now, window.noun, logged=0)
