"""Server-side page sessions: the browser holds a random id, the gateway database the rest.

The cookie (``tongban_pages``) carries 256 random bits and nothing else: no token, no ID
number, nothing signed that stays valid after logout. The row it names lives in the gateway
database (``page_sessions``), shared by every worker, and is useless without the cookie:

- its key is ``SM3("tongban page session id v1" ‖ sid)``, so the table does not hold the
  cookie's value, and a database reader cannot replay a session;
- its data (the officer's access token, or the citizen's token) is SM4-GCM sealed under
  ``HMAC-SM3(sid, "tongban page session key v1")``, with the row key as associated data,
  so a dump of the table yields neither a bearer token nor a citizen's ID number.

A session ends at logout (the row is deleted, and the old cookie then names nothing), after
:data:`IDLE_SECONDS` without a request, or :data:`LIFETIME_SECONDS` after login, whichever
comes first; each login starts a new id (no fixation). Expired rows are deleted when they
are next presented and swept at most once a minute on login.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Float,
    LargeBinary,
    MetaData,
    String,
    Table,
    delete,
    func,
    or_,
    select,
    update,
)

from tongban.primitives.db import make_engine, transaction
from tongban.primitives.gm import hmac_sm3, sm3, sm4_decrypt, sm4_encrypt

__all__ = [
    "IDLE_SECONDS",
    "LIFETIME_SECONDS",
    "PageSessionStore",
    "metadata",
    "new_session_id",
    "page_sessions",
    "valid_session_id",
]

IDLE_SECONDS = 30 * 60.0
LIFETIME_SECONDS = 8 * 3600.0
_TOUCH_EVERY = 60.0  # write "seen" at most this often per session
_SWEEP_EVERY = 60.0
_STORE = "the page session store"  # StoreUnavailable: "the page session store is unavailable"
_SID = re.compile(r"[A-Za-z0-9_-]{43}")  # secrets.token_urlsafe(32)

metadata = MetaData()
page_sessions = Table(
    "page_sessions",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("sealed", LargeBinary, nullable=False),
    Column("created", Float, nullable=False),
    Column("seen", Float, nullable=False),
    Column("expires", Float, nullable=False, index=True),
)


def new_session_id() -> str:
    return secrets.token_urlsafe(32)


def valid_session_id(value: str | None) -> bool:
    return value is not None and _SID.fullmatch(value) is not None


def _row_id(sid: str) -> str:
    return sm3(b"tongban page session id v1" + sid.encode()).hex()


def _key(sid: str) -> bytes:
    return hmac_sm3(sid.encode(), b"tongban page session key v1")[:16]


class PageSessionStore:
    """The ``page_sessions`` table; every failure of the database is StoreUnavailable
    (through :func:`~tongban.primitives.db.transaction`)."""

    def __init__(
        self,
        engine: Engine,
        *,
        idle: float = IDLE_SECONDS,
        lifetime: float = LIFETIME_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.idle = idle
        self.lifetime = lifetime
        self._clock = clock
        self._swept = 0.0
        self._lock = threading.Lock()

    @classmethod
    def in_memory(cls) -> PageSessionStore:
        """A store of this process only, for a gateway built without a database (tests of
        the pages alone); a deployed gateway gets its database's table from the wiring."""
        store = cls(make_engine("sqlite://"))
        store.create_schema()
        return store

    def create_schema(self) -> None:
        """The gateway chain's head revision (tongban.migrations), for tests and the demo;
        a deployment runs ``tongban db upgrade``."""
        from tongban.migrations import GATEWAY, upgrade

        upgrade(self.engine, GATEWAY)

    def create(self, data: Mapping[str, Any]) -> str:
        """A new session holding ``data``; returns the id for the cookie."""
        sid = new_session_id()
        row = _row_id(sid)
        sealed = sm4_encrypt(_key(sid), json.dumps(dict(data)).encode(), row.encode())
        now = self._clock()
        with transaction(self.engine, _STORE) as conn:
            self._sweep(conn, now)
            conn.execute(
                page_sessions.insert().values(
                    id=row, sealed=sealed, created=now, seen=now, expires=now + self.lifetime
                )
            )
        return sid

    def load(self, sid: str) -> dict[str, Any] | None:
        """The session's data, or None if the id names no live session (never existed,
        logged out, idle too long, past its lifetime, or altered in the table)."""
        if not valid_session_id(sid):
            return None
        row_id = _row_id(sid)
        now = self._clock()
        this = page_sessions.c.id == row_id
        with transaction(self.engine, _STORE) as conn:
            c = page_sessions.c
            row = conn.execute(select(c.sealed, c.seen, c.expires).where(this)).first()
            if row is None:
                return None
            if now >= row.expires or now - row.seen >= self.idle:
                conn.execute(delete(page_sessions).where(this))
                return None
            if now - row.seen >= _TOUCH_EVERY:
                conn.execute(update(page_sessions).where(this).values(seen=now))
        try:
            data = json.loads(sm4_decrypt(_key(sid), bytes(row.sealed), row_id.encode()))
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    def delete(self, sid: str) -> None:
        if not valid_session_id(sid):
            return
        with transaction(self.engine, _STORE) as conn:
            conn.execute(delete(page_sessions).where(page_sessions.c.id == _row_id(sid)))

    def count(self) -> int:
        """Live and not yet swept rows (for tests and operators)."""
        with transaction(self.engine, _STORE) as conn:
            return int(conn.execute(select(func.count()).select_from(page_sessions)).scalar_one())

    def _sweep(self, conn: Connection, now: float) -> None:
        with self._lock:
            if now - self._swept < _SWEEP_EVERY:
                return
            self._swept = now
        conn.execute(
            delete(page_sessions).where(
                or_(page_sessions.c.expires <= now, page_sessions.c.seen <= now - self.idle)
            )
        )
