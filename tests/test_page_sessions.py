"""Finding 11, sessions: page sessions live server-side behind a random id.

The attack that used to work: copy the ``tongban_pages`` cookie, log out, and replay the
copy (a signed client-side session stays valid after logout), or decode the cookie and read
the officer's bearer token and the citizen's token, whose ``sub`` is the raw ID number.
Each test runs on SQLite and PostgreSQL (the gateway database holds the sessions).
"""

from __future__ import annotations

import base64
import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select, update

from tongban.gateway.app import create_app
from tongban.gateway.pages.session import COOKIE, SESSIONS
from tongban.gateway.pages.store import PageSessionStore, page_sessions
from tongban.primitives.db import make_engine
from tongban.primitives.errors import StoreUnavailable

from .conftest import Generated
from .gateway_harness import Harness, build_harness

SID = re.compile(r"[A-Za-z0-9_-]{43}")


@pytest.fixture
def harness(
    small_population: Generated,
    party_keys: Any,
    tmp_path: Path,
    gateway_stores: dict[str, str],
) -> Iterator[Harness]:
    h = build_harness(tmp_path, small_population.urls, party_keys, **gateway_stores)
    yield h
    h.close()


def _csrf(client: FlaskClient, path: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', client.get(path).get_data(as_text=True))
    assert found
    return found.group(1)


def _cookie(client: FlaskClient) -> str:
    cookie = client.get_cookie(COOKIE)
    assert cookie is not None
    return cookie.value


def _officer(harness: Harness, client: FlaskClient | None = None) -> FlaskClient:
    client = client or harness.app.test_client()
    form = {"csrf": _csrf(client, "/officer/login"), "client_id": "privacy-officer",
            "secret": harness.secrets["privacy-officer"]}  # fmt: skip
    assert client.post("/officer/login", data=form).status_code == 302
    return client


def _citizen(harness: Harness, id_number: str) -> tuple[FlaskClient, str]:
    client = harness.app.test_client()
    bearer = harness.citizen(id_number)["Authorization"].removeprefix("Bearer ")
    form = {"csrf": _csrf(client, "/me/login"), "token": bearer}
    assert client.post("/me/login", data=form).status_code == 302
    return client, bearer


def _store(harness: Harness) -> PageSessionStore:
    assert harness.gateway.page_sessions is not None
    return harness.gateway.page_sessions


def _replay(harness: Harness, sid: str, path: str) -> int:
    thief = harness.app.test_client()
    thief.set_cookie(COOKIE, sid)
    return thief.get(path).status_code


def test_the_cookie_is_a_random_id_and_login_issues_a_new_one(harness: Harness) -> None:
    client = harness.app.test_client()
    client.get("/officer/login")
    before = _cookie(client)
    assert SID.fullmatch(before)
    _officer(harness, client)
    after = _cookie(client)
    assert SID.fullmatch(after) and after != before  # no session fixation
    # Nothing in the cookie decodes to a token: it is 32 random bytes, not a signed payload.
    raw = base64.urlsafe_b64decode(after + "=")
    assert len(raw) == 32 and b"eyJ" not in raw and b"." not in after.encode()
    assert client.get("/officer/").status_code == 200


def test_logout_kills_the_session_for_whoever_copied_the_cookie(harness: Harness) -> None:
    client = _officer(harness)
    stolen = _cookie(client)
    assert _replay(harness, stolen, "/officer/") == 200  # a copy works while logged in
    rows = _store(harness).count()
    form = {"csrf": _csrf(client, "/officer/")}
    assert client.post("/officer/logout", data=form).status_code == 302
    assert _store(harness).count() == rows - 1
    assert _cookie(client) != stolen
    resp = harness.app.test_client()
    resp.set_cookie(COOKIE, stolen)
    out = resp.get("/officer/")
    assert out.status_code == 302 and "/officer/login" in out.headers["Location"]
    assert resp.get("/officer/api/proof/0").status_code == 401


def test_citizen_logout_as_well(harness: Harness, small_population: Generated) -> None:
    number = str(small_population.subjects()[0]["id_number"])
    client, _ = _citizen(harness, number)
    stolen = _cookie(client)
    assert _replay(harness, stolen, "/me/") == 200
    assert client.post("/me/logout", data={"csrf": _csrf(client, "/me/")}).status_code == 302
    assert _replay(harness, stolen, "/me/") == 302


def test_the_table_holds_no_token_no_id_number_and_not_the_cookie(
    harness: Harness, small_population: Generated
) -> None:
    number = str(small_population.subjects()[1]["id_number"])
    client, bearer = _citizen(harness, number)
    officer = _officer(harness)
    officer_token = harness.token("privacy-officer")
    sids = [_cookie(client), _cookie(officer)]
    with _store(harness).engine.connect() as conn:
        rows = conn.execute(select(page_sessions)).all()
    assert len(rows) == 2
    dump = repr([tuple(r) for r in rows]).encode()
    for secret in (number, bearer, bearer.split(".")[1], *sids):
        assert secret.encode() not in dump
    assert officer_token.split(".")[1].encode() not in dump
    for row in rows:
        assert number.encode() not in bytes(row.sealed)


def test_an_anonymous_visit_writes_no_row(harness: Harness) -> None:
    anon = harness.app.test_client()
    for _ in range(20):
        anon.get("/officer/login")
        anon.get("/me/login")
    assert _store(harness).count() == 0
    # A forged id in the cookie names nothing and is replaced; the login form still works.
    anon.set_cookie(COOKIE, "A" * 43)
    assert anon.get("/officer/").status_code == 302
    _officer(harness, anon)
    assert _store(harness).count() == 1


def test_a_csrf_token_is_bound_to_its_session(harness: Harness) -> None:
    victim = harness.app.test_client()
    attacker = harness.app.test_client()
    token = _csrf(attacker, "/officer/login")
    form = {"csrf": token, "client_id": "privacy-officer",
            "secret": harness.secrets["privacy-officer"]}  # fmt: skip
    victim.get("/officer/login")
    assert victim.post("/officer/login", data=form).status_code == 403


def test_a_second_worker_sees_the_session(harness: Harness) -> None:
    """Another process on the same database (a second gunicorn worker) honours the
    session and its logout: nothing lives in one process's memory."""
    url = harness.settings.gateway_store_url()
    second_store = PageSessionStore(make_engine(url))
    second = create_app(dataclasses.replace(harness.gateway, page_sessions=second_store))
    try:
        client = _officer(harness)
        sid = _cookie(client)
        other = second.test_client()
        other.set_cookie(COOKIE, sid)
        assert other.get("/officer/").status_code == 200
        form = {"csrf": _csrf(other, "/officer/")}
        assert other.post("/officer/logout", data=form).status_code == 302
        assert client.get("/officer/").status_code == 302  # logged out everywhere
    finally:
        second_store.engine.dispose()


def test_idle_and_lifetime_limits(harness: Harness) -> None:
    now = [1_000_000.0]
    store = PageSessionStore(_store(harness).engine, idle=600, lifetime=3600, clock=lambda: now[0])
    sid = store.create({"officer": "t"})
    now[0] += 599
    assert store.load(sid) == {"officer": "t"}  # and "seen" moves on
    now[0] += 599
    assert store.load(sid) == {"officer": "t"}
    now[0] += 601
    assert store.load(sid) is None  # idle too long: gone
    assert store.count() == 0
    sid = store.create({"officer": "t"})
    for _ in range(6):
        now[0] += 590
        assert store.load(sid) is not None
    now[0] += 590  # 4,130 s after login
    assert store.load(sid) is None


def test_an_altered_row_opens_nothing(harness: Harness) -> None:
    store = _store(harness)
    a = store.create({"officer": "a"})
    b = store.create({"officer": "b"})
    with store.engine.begin() as conn:
        rows = {r.id: bytes(r.sealed) for r in conn.execute(select(page_sessions))}
        first, second = list(rows)
        # Swap the sealed data of the two rows: each is bound to its own row key.
        conn.execute(update(page_sessions).where(page_sessions.c.id == first)
                     .values(sealed=rows[second]))  # fmt: skip
        conn.execute(update(page_sessions).where(page_sessions.c.id == second)
                     .values(sealed=rows[first]))  # fmt: skip
    assert store.load(a) is None and store.load(b) is None
    assert store.load("not an id") is None


def test_a_session_store_that_is_down_is_a_503_problem(harness: Harness) -> None:
    pages = _pages_app(harness)
    down = PageSessionStore(make_engine("postgresql+psycopg://tongban@127.0.0.1:9/none"))
    saved = pages.extensions[SESSIONS]
    pages.extensions[SESSIONS] = down
    try:
        client = harness.app.test_client()
        client.set_cookie(COOKIE, "B" * 43)
        resp = client.get("/officer/")
        assert resp.status_code == 503
        assert resp.mimetype == "application/problem+json"
        assert resp.get_json()["type"].endswith("/store-unavailable")
        assert "Traceback" not in resp.get_data(as_text=True)
    finally:
        pages.extensions[SESSIONS] = saved
        down.engine.dispose()
    with pytest.raises(StoreUnavailable):
        down.create({"officer": "x"})


def _pages_app(harness: Harness) -> Any:
    dispatch = harness.app.wsgi_app
    return dispatch.pages  # type: ignore[attr-defined]
