"""The gateway's audit endpoints, on a gateway built the way ``tongban gateway serve``
builds it: the signed checkpoint, consistency and inclusion proofs (with who may ask for
which), and the officers' entry search, including search by ID number."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.test_audit_merkle import ref_mth, sm3
from tongban.audit.canonical import canonical_json
from tongban.audit.log import AuditLog
from tongban.audit.merkle import verify_consistency, verify_inclusion
from tongban.audit.note import SignedNote
from tongban.audit.vault import Pseudonymizer
from tongban.config import DEPARTMENTS, Settings
from tongban.gateway.app import create_app
from tongban.gateway.services import Gateway
from tongban.keys import KeyRing
from tongban.primitives.gm import SM2PublicKey
from tongban.primitives.idnumber import make_id
from tongban.primitives.problem import PROBLEM_JSON
from tongban.provision import migrate
from tongban.wiring import build_gateway

ALICE = make_id("110105", dt.date(1985, 3, 14), 27)
BOB = make_id("440305", dt.date(1992, 11, 2), 318)
ENTRIES = 12


def _id_ending_in_x() -> str:
    for seq in range(1000):
        number = make_id("320102", dt.date(1979, 8, 30), seq)
        if number.endswith("X"):
            return number
    raise AssertionError("no check character X")


XAVIER = _id_ending_in_x()


def _basic(client_id: str, secret: str) -> dict[str, str]:
    raw = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


@dataclass
class Env:
    gateway: Gateway
    client: FlaskClient
    settings: Settings
    gateway_key: SM2PublicKey
    tokens: dict[str, str]
    checkpoint_size: int

    def bearer(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    @property
    def audit(self) -> AuditLog:
        assert self.gateway.audit is not None
        return self.gateway.audit


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    data_dir = tmp_path_factory.mktemp("gateway") / "data"
    settings = Settings(data_dir=data_dir, public_url="http://gateway.test")
    keys = KeyRing(settings.keys_dir)
    for party in ("gateway", "idp", *DEPARTMENTS):
        keys.ensure(party)
    migrate(settings)
    gateway = build_gateway(settings, start=False)
    app = create_app(gateway)
    client = app.test_client()
    assert gateway.oauth is not None
    registry = gateway.oauth.registry
    clients = {
        "officer-a": {"audit:read"},
        "insurer-a": {"checks"},
        "insurer-b": {"checks"},
    }
    tokens = {}
    for client_id, scopes in clients.items():
        secret = str(registry.register_client(client_id, client_id.title(), scopes=scopes).secret)
        resp = client.post(
            "/oauth/token",
            data={"grant_type": "client_credentials", "scope": " ".join(sorted(scopes))},
            headers=_basic(client_id, secret),
        )
        assert resp.status_code == 200, resp.get_data(as_text=True)
        tokens[client_id] = resp.get_json()["access_token"]
    assert gateway.audit is not None and gateway.checkpointer is not None
    for i in range(ENTRIES):
        gateway.audit.append(
            {
                "kind": "check" if i % 4 else "consent",
                "time": f"2025-03-01T08:{i:02d}:00.000Z",
                "requester": "insurer-a" if i % 2 == 0 else "insurer-b",
                "claim": "alive",
                "decision": {"allowed": i != 5},
            },
            subject_id=(ALICE, BOB, XAVIER)[i % 3],
        )
    note = gateway.checkpointer.checkpoint()
    yield Env(gateway, client, settings, keys.public("gateway"), tokens, note.checkpoint.size)
    gateway.close()
    assert gateway.oauth is not None
    gateway.oauth.registry.engine.dispose()
    transport = gateway.departments.transport
    if hasattr(transport, "http"):
        transport.http.close()


def problem(resp: Any, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.mimetype == PROBLEM_JSON
    body: dict[str, Any] = resp.get_json()
    assert body["status"] == status
    return body


def all_entries(env: Env) -> list[dict[str, Any]]:
    resp = env.client.get("/v1/audit/entries?order=asc&limit=500", headers=env.bearer("officer-a"))
    assert resp.status_code == 200
    rows: list[dict[str, Any]] = resp.get_json()["entries"]
    return rows


def leaf_of(row: dict[str, Any]) -> bytes:
    """The leaf hash, recomputed from the entry as served."""
    return sm3(b"\x00" + canonical_json(row["entry"]))


# --- the checkpoint --------------------------------------------------------------------


def test_checkpoint_is_the_signed_note(env: Env):
    resp = env.client.get("/v1/audit/checkpoint")
    assert resp.status_code == 200
    assert resp.mimetype == "text/plain"
    text = resp.get_data(as_text=True)
    note = SignedNote.parse(text)
    assert note.text() == text
    assert text.startswith(f"{env.settings.origin}\n{env.checkpoint_size}\n")
    assert env.settings.origin == "gateway.test/audit"
    name = env.settings.gateway_issuer
    assert note.verified_by({name: env.gateway_key}) == {name: True}
    rows = all_entries(env)[: env.checkpoint_size]
    for row in rows:
        assert bytes.fromhex(row["leaf_hash"]) == leaf_of(row)
        assert row["leaf_hash"] == row["leaf_hash"].lower()
    assert note.checkpoint.root == ref_mth([leaf_of(r) for r in rows])


def test_checkpoint_before_any_and_without_a_log(tmp_path: Path):
    log = AuditLog(
        f"sqlite:///{tmp_path / 'a.db'}",
        Pseudonymizer(b"p" * 32, b"v" * 16),
        origin="o",
        create=True,
    ).open()
    try:
        for audit in (log, None):
            app = create_app(Gateway(catalog=None, departments=None, audit=audit))  # type: ignore[arg-type]
            body = problem(app.test_client().get("/v1/audit/checkpoint"), 404)
            assert ("no checkpoint" if audit else "no audit log") in body["detail"]
    finally:
        log.close()


# --- consistency proofs ----------------------------------------------------------------


def test_consistency_proofs_verify(env: Env):
    note = SignedNote.parse(env.client.get("/v1/audit/checkpoint").get_data(as_text=True))
    n = note.checkpoint.size
    leaves = [leaf_of(r) for r in all_entries(env)]
    for first in range(n + 1):
        resp = env.client.get(f"/v1/audit/proofs/consistency?first={first}&second={n}")
        assert resp.status_code == 200
        body = resp.get_json()
        assert (body["first"], body["second"]) == (first, n)
        path = [bytes.fromhex(h) for h in body["consistency_path"]]
        assert all(h == h.lower() for h in body["consistency_path"])
        if first in (0, n):
            assert path == []
        assert verify_consistency(first, n, ref_mth(leaves[:first]), note.checkpoint.root, path)


@pytest.mark.parametrize(
    "query",
    [
        "",
        "?first=3",
        "?second=3",
        "?first=5&second=3",
        "?first=1&second=100000",
        "?first=-1&second=3",
        "?first=a&second=3",
        "?first=1.5&second=3",
        "?first=1&second=" + "9" * 19,
    ],
)
def test_consistency_bad_parameters(env: Env, query: str):
    problem(env.client.get("/v1/audit/proofs/consistency" + query), 400)


@pytest.mark.parametrize(
    "url",
    [
        "/v1/audit/proofs/consistency?first=%C2%B2&second=3",
        "/v1/audit/entries?limit=%C2%B2",
    ],
)
def test_non_ascii_digits_are_a_bad_request(env: Env, url: str):
    problem(env.client.get(url, headers=env.bearer("officer-a")), 400)


# --- inclusion proofs ------------------------------------------------------------------


def test_inclusion_needs_a_token(env: Env):
    resp = env.client.get("/v1/audit/proofs/inclusion?index=0&size=1")
    problem(resp, 401)
    assert resp.headers.get("WWW-Authenticate", "").startswith("Bearer")
    problem(
        env.client.get(
            "/v1/audit/proofs/inclusion?index=0&size=1",
            headers={"Authorization": "Bearer not.a.token"},
        ),
        401,
    )


def test_officer_gets_any_inclusion_proof(env: Env):
    note = SignedNote.parse(env.client.get("/v1/audit/checkpoint").get_data(as_text=True))
    n, root = note.checkpoint.size, note.checkpoint.root
    rows = all_entries(env)
    for i in range(n):
        resp = env.client.get(
            f"/v1/audit/proofs/inclusion?index={i}&size={n}", headers=env.bearer("officer-a")
        )
        assert resp.status_code == 200
        body = resp.get_json()
        assert (body["index"], body["tree_size"]) == (i, n)
        assert bytes.fromhex(body["leaf_hash"]) == leaf_of(rows[i])
        path = [bytes.fromhex(h) for h in body["audit_path"]]
        assert verify_inclusion(i, n, leaf_of(rows[i]), path, root)
        assert not verify_inclusion(i, n, leaf_of(rows[(i + 1) % n]), path, root)


def test_requester_gets_proofs_only_for_its_own_entries(env: Env):
    n = env.checkpoint_size
    rows = all_entries(env)
    for i in range(n):
        owner = rows[i]["entry"]["requester"]
        for who in ("insurer-a", "insurer-b"):
            resp = env.client.get(
                f"/v1/audit/proofs/inclusion?index={i}&size={n}", headers=env.bearer(who)
            )
            if who == owner:
                assert resp.status_code == 200
                assert bytes.fromhex(resp.get_json()["leaf_hash"]) == leaf_of(rows[i])
            else:
                problem(resp, 403)


@pytest.mark.parametrize(
    "query", ["", "?index=0", "?size=3", "?index=3&size=3", "?index=0&size=0", "?index=0&size=999"]
)
def test_inclusion_bad_parameters(env: Env, query: str):
    problem(
        env.client.get("/v1/audit/proofs/inclusion" + query, headers=env.bearer("officer-a")), 400
    )


# --- the officers' entry search --------------------------------------------------------


def test_entries_need_the_audit_read_scope(env: Env):
    problem(env.client.get("/v1/audit/entries"), 401)
    body = problem(env.client.get("/v1/audit/entries", headers=env.bearer("insurer-a")), 403)
    assert "audit:read" in body["detail"]


def test_entries_filters_and_pagination(env: Env):
    officer = env.bearer("officer-a")
    everything = all_entries(env)
    assert [r["index"] for r in everything] == list(range(len(everything)))
    for r in everything:
        assert r["entry"]["index"] == r["index"]

    def indexes(query: str) -> list[int]:
        resp = env.client.get("/v1/audit/entries?" + query, headers=officer)
        assert resp.status_code == 200, resp.get_data(as_text=True)
        return [r["index"] for r in resp.get_json()["entries"]]

    mine = [r["index"] for r in everything if r["entry"].get("requester") == "insurer-a"]
    assert indexes("requester=insurer-a") == mine[::-1]
    assert indexes("requester=insurer-a&order=asc") == mine
    consents = [r["index"] for r in everything if r["entry"]["kind"] == "consent"]
    assert indexes("kind=consent&order=asc") == consents
    assert indexes("decision=deny") == [5]
    assert indexes("claim=alive&requester=insurer-b&kind=consent") == []
    window = "since=2025-03-01T08:03:00.000Z&until=2025-03-01T08:06:00.000Z&order=asc"
    assert indexes(window) == [3, 4, 5]

    seen: list[int] = []
    cursor = None
    while True:
        query = "limit=5&requester=insurer-b" + (f"&cursor={cursor}" if cursor is not None else "")
        body = env.client.get("/v1/audit/entries?" + query, headers=officer).get_json()
        assert len(body["entries"]) <= 5
        seen += [r["index"] for r in body["entries"]]
        cursor = body["next"]
        if cursor is None:
            break
    expected = [r["index"] for r in everything if r["entry"].get("requester") == "insurer-b"]
    assert seen == expected[::-1]


def test_entries_by_id_number_records_the_lookup(env: Env):
    officer = env.bearer("officer-a")
    pseudonym = env.audit.pseudonyms.pseudonym(ALICE)
    size = env.audit.size
    resp = env.client.post(
        "/v1/audit/entries/search", json={"subject": ALICE, "order": "asc"}, headers=officer
    )
    assert resp.status_code == 200
    rows = resp.get_json()["entries"]
    found = [r["index"] for r in rows if r["entry"]["kind"] != "officer_lookup"]
    assert found == [i for i in range(ENTRIES) if i % 3 == 0]
    assert all(r["entry"]["subject"] == pseudonym for r in rows)
    text = resp.get_data(as_text=True)
    assert ALICE not in text and ALICE[:17] not in text
    # The lookup itself is an audited access to personal data.
    assert env.audit.size == size + 1
    lookup = env.audit.get(size)
    assert lookup is not None
    assert lookup.entry["kind"] == "officer_lookup"
    assert lookup.entry["requester"] == "officer-a"
    assert lookup.entry["subject"] == pseudonym
    assert ALICE not in canonical_json(lookup.entry).decode()
    assert rows[-1]["index"] == size  # and it is already visible to the search

    # ID numbers are normalised: a lower-case check character finds the same person.
    lower = env.client.post(
        "/v1/audit/entries/search",
        json={"subject": XAVIER.lower(), "kind": "check"},
        headers=officer,
    ).get_json()["entries"]
    upper = env.client.post(
        "/v1/audit/entries/search", json={"subject": XAVIER, "kind": "check"}, headers=officer
    ).get_json()["entries"]
    assert lower == upper and lower
    assert {r["entry"]["subject"] for r in lower} == {env.audit.pseudonyms.pseudonym(XAVIER)}


def test_an_id_number_in_the_url_is_refused_and_not_looked_up(env: Env):
    """The outside test found the number in werkzeug's log line of this very request."""
    officer = env.bearer("officer-a")
    size = env.audit.size
    resp = env.client.get(f"/v1/audit/entries?subject={ALICE}", headers=officer)
    assert resp.status_code == 400
    problem = resp.get_json()
    assert problem["type"].endswith("/subject-in-url")
    assert "POST /v1/audit/entries/search" in problem["detail"]
    assert ALICE not in resp.get_data(as_text=True)
    assert env.audit.size == size  # nothing looked up, nothing recorded
    for body in ({"subject": 1}, {"subject": ALICE, "limit": "x"}, {"who": ALICE}, [ALICE], {}):
        bad = env.client.post("/v1/audit/entries/search", json=body, headers=officer)
        assert bad.status_code == 400, body
        assert ALICE not in bad.get_data(as_text=True)
    wrong_digit = ALICE[:17] + ("1" if ALICE[17] == "0" else "0")
    for number in ("123", wrong_digit):
        bad = env.client.post("/v1/audit/entries/search", json={"subject": number}, headers=officer)
        assert bad.status_code == 422 and bad.get_json()["type"].endswith("/invalid-id-number")
        assert number not in bad.get_data(as_text=True)
    assert env.audit.size == size


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=abc",
        "limit=-3",
        "cursor=-1",
        "cursor=x",
        "order=sideways",
    ],
)
def test_entries_bad_parameters(env: Env, query: str):
    size = env.audit.size
    resp = env.client.get("/v1/audit/entries?" + query, headers=env.bearer("officer-a"))
    if query.startswith("subject"):
        # The project answers an impossible ID number with 422 (invalid-id-number).
        assert problem(resp, 422)["type"].endswith("/invalid-id-number")
        assert env.audit.size == size  # an invalid number is no lookup
    else:
        problem(resp, 400)


def test_entries_page_size_is_capped(env: Env):
    while env.audit.size < 520:
        env.audit.append_prepared(
            [env.audit.prepare({"kind": "filler", "time": "2025-03-02T00:00:00.000Z"})] * 100
        )
    resp = env.client.get("/v1/audit/entries?limit=100000", headers=env.bearer("officer-a"))
    body = resp.get_json()
    assert len(body["entries"]) == 500 and body["next"] is not None
