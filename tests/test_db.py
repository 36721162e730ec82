"""Engines: a PostgreSQL that accepts connections and then says nothing (hung server, or a
network dropping replies) fails a new connection after PG_CONNECT_TIMEOUT, not after TCP
gives up, so the request becomes a 503 in seconds."""

from __future__ import annotations

import socket
import time

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from tongban.primitives.db import PG_CONNECT_TIMEOUT, PG_IDLE_IN_TX_MS, make_engine


@pytest.mark.slow
def test_a_silent_postgresql_fails_within_the_connect_timeout():
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # the kernel completes handshakes; nobody ever answers
    port = silent.getsockname()[1]
    engine = make_engine(f"postgresql+psycopg://tongban@127.0.0.1:{port}/test")
    started = time.monotonic()
    try:
        with pytest.raises(OperationalError), engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    finally:
        engine.dispose()
        silent.close()
    assert time.monotonic() - started < PG_CONNECT_TIMEOUT + 3


def test_a_live_postgresql_still_connects(pg_scratch_url: str):
    engine = make_engine(pg_scratch_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()


def test_postgresql_sessions_end_a_transaction_left_idle(pg_scratch_url: str):
    """A session whose client vanished inside a transaction must not hold its locks for
    ever: the server ends it after PG_IDLE_IN_TX_MS."""
    engine = make_engine(pg_scratch_url)
    try:
        with engine.connect() as conn:
            shown = conn.execute(text("SHOW idle_in_transaction_session_timeout")).scalar()
        assert shown == f"{PG_IDLE_IN_TX_MS // 1000}s"
    finally:
        engine.dispose()
