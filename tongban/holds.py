"""Slow a refused flood down without spending a thread on it: connection holds.

A closed-loop flood (each attacker thread sends its next request as soon as the last is
answered) is answered as fast as it arrives, however cheap each refusal is: on a small
machine the refusals alone crowd out the requests that matter. So a refusal of the
token throttle asks the server to *hold* the connection it came on: the response goes
out at once, but the connection's next request is not read until the hold ends. The
attacker's thread waits on its own socket, and no gateway thread waits with it.

An attacker who notices would open a new connection for every request instead. So a
refusal of the *address* (not of a client id, which any address can name) also holds
that address: for as long as the hold lasts, a new connection from it is accepted but
not read. Other requesters' connections, and that address's connections already open,
are unaffected; only its new connections wait, at most :data:`MAX_HOLD_SECONDS` after
its last refusal.

The application says :func:`hold_connection`; the server that honours it
(:class:`tongban.gunicorn_worker.DeadlineThreadWorker`, the worker every deployment and
the demo run) calls :func:`take_hold` after the response, on the same thread. Any other
server ignores the request, which then only means no hold.
"""

from __future__ import annotations

import threading
import time

__all__ = ["MAX_HOLD_SECONDS", "hold_connection", "source_held_until", "take_hold"]

#: The longest hold: a refusal's Retry-After can be minutes, and a held connection still
#: counts against the worker's connection limit.
MAX_HOLD_SECONDS = 2.0

#: Held addresses this process remembers at most (expired ones are dropped first).
_MAX_SOURCES = 65_536

_local = threading.local()
_sources: dict[str, float] = {}
_sources_lock = threading.Lock()


def hold_connection(seconds: float, source: str | None = None) -> None:
    """Ask the server not to read this connection's next request for ``seconds`` (at
    most :data:`MAX_HOLD_SECONDS`) after the current response; with ``source`` (the
    peer address, as in ``REMOTE_ADDR``), hold that address's new connections as long."""
    hold = max(0.0, min(float(seconds), MAX_HOLD_SECONDS))
    _local.hold = hold
    if source and hold > 0:
        until = time.monotonic() + hold
        with _sources_lock:
            if len(_sources) >= _MAX_SOURCES:
                now = time.monotonic()
                for addr in [a for a, t in _sources.items() if t <= now]:
                    del _sources[addr]
                if len(_sources) >= _MAX_SOURCES:  # all live: forget the oldest
                    del _sources[min(_sources, key=_sources.__getitem__)]
            _sources[source] = until


def source_held_until(source: str) -> float:
    """The monotonic time until which a new connection from ``source`` is held (0.0 if
    it is not held)."""
    with _sources_lock:
        until = _sources.get(source, 0.0)
        if until and until <= time.monotonic():
            del _sources[source]
            return 0.0
        return until


def take_hold() -> float:
    """The hold the current request asked for (0.0 for none), cleared."""
    hold: float = getattr(_local, "hold", 0.0)
    _local.hold = 0.0
    return hold
