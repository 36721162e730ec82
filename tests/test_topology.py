"""The production topology (tests/topology.py): a gunicorn gateway whose workers share one
PostgreSQL store — one audit log and one Merkle tree, appended by group commit from every
worker; one replay cache — beside adapters that run as processes of their own."""

from __future__ import annotations

import fcntl
import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.conftest import reset_chain
from tongban.audit.log import AuditLog
from tongban.audit.note import SignedNote
from tongban.audit.vault import Pseudonymizer
from tongban.gateway.checkpoints import _PG_ROUND_LOCK, Checkpointer
from tongban.gateway.oauth import AuthMethod, ClientRegistry, sign_client_assertion
from tongban.keys import KeyRing
from tongban.primitives.errors import StoreUnavailable
from tongban.primitives.gm import SM2PrivateKey
from tongban.primitives.jws import jwks

from .topology import (
    DEPARTMENTS,
    Load,
    Topology,
    assert_every_answer_audited,
    connections_held,
)

ASSERTION = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@pytest.fixture(scope="module")
def topo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    topology = Topology(tmp_path_factory.mktemp("topology"), workers=2)
    try:
        topology.setup().start()
        yield topology
    finally:
        topology.teardown()


@pytest.mark.slow
def test_two_workers_append_to_one_signed_tree(topo: Topology) -> None:
    workers = topo.worker_pids()
    assert len(workers) == 2
    token = topo.token("edu-bureau")
    checks = [
        {"subject": {"id_number": s}, "claim": "birth_registered", "purpose": "school_enrollment"}
        for s in topo.subjects(300)
    ]
    serving: set[int] = set()
    with Load(topo.gateway_url, token, checks, threads=8, keepalive=False) as load:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (len(serving) < 2 or len(load.snapshot()) < 150):
            serving |= {w for w in workers if connections_held(w, topo.gateway_port)}
            time.sleep(0.05)
    outcomes = load.snapshot()
    assert serving == set(workers), "one worker never served a client"
    assert {o.status for o in outcomes} == {200}

    report = assert_every_answer_audited(topo, outcomes, "edu-bureau")
    entries = topo.audit_entries()
    started = [e for _, e in entries if e.get("event") == "gateway_started"]
    assert len(started) == 2  # each worker opened the one log and appended to it

    # The checkpointers of both workers catch up with the whole log, and every
    # checkpoint carries the gateway's signature and all five witnesses' cosignatures.
    deadline = time.monotonic() + 20
    while SignedNote.parse(topo.checkpoints()[-1]).checkpoint.size < len(entries):
        assert time.monotonic() < deadline, "no checkpoint covers the whole log"
        time.sleep(0.1)
    keys = KeyRing(topo.data / "keys")
    notes = [SignedNote.parse(n) for n in topo.checkpoints()]
    sizes = [n.checkpoint.size for n in notes]
    assert sizes == sorted(set(sizes))
    latest = notes[-1]
    names = {s.name: s for s in latest.signatures}
    assert set(names) == {"tongban-gateway", *DEPARTMENTS}
    assert names["tongban-gateway"].verifies(latest.body, keys.public("gateway"))
    for d in DEPARTMENTS:
        assert names[d].verifies(latest.body, keys.public(d))
    assert set(report["cosignatures"]) == set(DEPARTMENTS)
    # No witness ever saw a checkpoint older than one it had cosigned (a split view).
    logs = "".join(topo.log_tail(name, 200_000) for name in ("gateway", *DEPARTMENTS))
    assert "refused" not in logs


@pytest.mark.slow
def test_replay_cache_is_shared_by_the_workers(topo: Topology) -> None:
    """A private_key_jwt assertion is good for one token, whichever worker gets it next."""
    key = SM2PrivateKey.generate()
    registry = ClientRegistry(topo.pg_direct)
    registry.register_client("bank-sm", "Bank", scopes={"checks"},
                             auth_method=AuthMethod.PRIVATE_KEY_JWT,
                             jwks=jwks({"sm-1": key.public_key}), alg="SM2")  # fmt: skip
    registry.engine.dispose()
    endpoint = topo.gateway_url + "/oauth/token"
    assertion = sign_client_assertion(key, "bank-sm", endpoint, kid="sm-1")
    form = {"grant_type": "client_credentials", "client_assertion_type": ASSERTION,
            "client_assertion": assertion}  # fmt: skip
    replies = []
    for _ in range(12):  # a new connection each time, so both workers take some
        with httpx.Client(trust_env=False, timeout=10) as http:
            replies.append(http.post(endpoint, data=form))
    assert replies[0].status_code == 200
    assert {r.status_code for r in replies[1:]} == {400}
    assert {r.json()["error"] for r in replies[1:]} == {"invalid_client"}


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_a_checkpoint_round_waits_for_another_workers_round(
    store: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The lock that serialises rounds across processes: the background loop skips a round
    while another process holds it, and checkpoints again once it is released."""
    if store == "sqlite":
        db = tmp_path / "audit.db"
        url = f"sqlite:///{db}"
    else:
        url = request.getfixturevalue("pg_scratch_url")
        engine = create_engine(url)
        reset_chain(engine, "audit")
        engine.dispose()
    log = AuditLog(
        url, Pseudonymizer(b"p" * 32, b"v" * 16), origin="gw.test/audit", create=True
    ).open()
    try:
        checkpointer = Checkpointer(
            log, SM2PrivateKey.generate(), name="gw", witnesses={}, transport=None
        )
        log.append({"kind": "event", "time": "2026-01-01T00:00:00Z"})
        if store == "sqlite":
            with Path(f"{db}.checkpoint-lock").open("a") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)
                assert checkpointer._round(force=False, wait=False) is None
        else:
            other = create_engine(url)
            with other.connect() as conn, conn.begin():
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_ROUND_LOCK})
                assert checkpointer._round(force=False, wait=False) is None
            other.dispose()
        assert log.latest_checkpoint() is None
        note = checkpointer._round(force=False, wait=False)
        assert note is not None and note.checkpoint.size == 1
        assert log.latest_checkpoint() == note
    finally:
        log.close()


def test_an_appender_does_not_wait_forever_for_a_hung_store(tmp_path: Path) -> None:
    """A store that neither commits nor fails (here: another process holds SQLite's write
    lock) makes append() give up with 503 after ``wait_timeout``, so no request thread
    hangs; the entry may land later, which is allowed (an entry without an answer)."""
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    log = AuditLog(url, Pseudonymizer(b"p" * 32, b"v" * 16), origin="gw.test/audit",
                   wait_timeout=0.3, create=True).open()  # fmt: skip
    blocker = sqlite3.connect(tmp_path / "audit.db", isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            log.append({"kind": "event", "time": "2026-01-01T00:00:00Z"})
        assert time.monotonic() - started < 5
        blocker.execute("ROLLBACK")
        assert log.append({"kind": "event", "time": "2026-01-01T00:00:01Z"}) == 1
        assert [e.entry["time"] for e in log.entries({}, newest_first=False)[0]] == [
            "2026-01-01T00:00:00Z",
            "2026-01-01T00:00:01Z",
        ]
    finally:
        blocker.close()
        log.close()


@pytest.mark.slow
def test_a_policy_change_reaches_every_worker(topo: Topology) -> None:
    """Two administrators change the policy through whichever workers they reach; every
    worker enforces the new version shortly after, not only the one that approved it."""
    rule = ["p", "education", "police", "birth_registered", "school_enrollment", "allow"]
    admins = [{"Authorization": f"Bearer {topo.token(a)}"} for a in ("admin-1", "admin-2")]
    # A new subject each time: checks about one person are rate limited.
    subjects = iter(topo.subjects(1000))
    requester = {"Authorization": f"Bearer {topo.token('edu-bureau')}"}

    def change(op: str) -> str:
        proposed = httpx.post(
            topo.gateway_url + "/v1/admin/policy/changes", headers=admins[0],
            json={"rules": [{"op": op, "rule": rule}]}, trust_env=False,
        )  # fmt: skip
        assert proposed.status_code == 201, proposed.text
        approved = httpx.post(
            f"{topo.gateway_url}/v1/admin/policy/changes/{proposed.json()['id']}/approve",
            headers=admins[1], trust_env=False,
        )  # fmt: skip
        assert approved.status_code == 200, approved.text
        return str(approved.json()["policy_version"])

    def everywhere(version: str, status: int) -> bool:
        for _ in range(16):  # fresh connections, taken by both workers
            with httpx.Client(trust_env=False, timeout=10) as http:
                seen = http.get(topo.gateway_url + "/v1/admin/policy", headers=admins[0])
                check = {"subject": {"id_number": next(subjects)}, "claim": "birth_registered",
                         "purpose": "school_enrollment"}  # fmt: skip
                checked = http.post(topo.gateway_url + "/v1/checks", json=check,
                                    headers=requester)  # fmt: skip
            if seen.json()["version"] != version or checked.status_code != status:
                return False
        return True

    def converge(version: str, status: int) -> None:
        deadline = time.monotonic() + 15
        while not everywhere(version, status):
            assert time.monotonic() < deadline, "a worker kept enforcing the old policy"
            time.sleep(0.2)

    removed = change("remove")
    try:
        converge(removed, 403)
    finally:
        converge(change("add"), 200)


@pytest.mark.slow
def test_no_process_log_holds_an_id_number(topo: Topology) -> None:
    """Finding 5: ID numbers in URLs, bodies and failing requests, then every process log
    of the topology (the gateway's gunicorn and each adapter's, access lines included) is
    scanned for anything shaped like an ID number."""
    subjects = topo.subjects(20)
    checks_token = topo.token("edu-bureau")
    officer = {"Authorization": "Bearer " + topo.token("privacy-officer")}
    with httpx.Client(base_url=topo.gateway_url, trust_env=False, timeout=30) as http:
        auth = {"Authorization": "Bearer " + checks_token}
        for s in subjects[:5]:
            check = {"subject": {"id_number": s}, "claim": "birth_registered",
                     "purpose": "school_enrollment"}  # fmt: skip
            assert http.post("/v1/checks", json=check, headers=auth).status_code == 200
        batch = {"claim": "birth_registered", "purpose": "school_enrollment",
                 "subjects": [{"id_number": s} for s in subjects[5:15]]}  # fmt: skip
        assert http.post("/v1/checks/batch", json=batch, headers=auth).status_code == 200
        wrong_check = "1" if subjects[0][-1] == "0" else "0"  # a bad check character
        invalid = {"subject": {"id_number": subjects[0][:-1] + wrong_check},
                   "claim": "birth_registered", "purpose": "school_enrollment"}  # fmt: skip
        assert http.post("/v1/checks", json=invalid, headers=auth).status_code == 422
        # The officer's lookup: refused in a URL, answered from a body.
        refused = http.get(f"/v1/audit/entries?subject={subjects[0]}", headers=officer)
        assert refused.status_code == 400
        assert refused.json()["type"].endswith("/subject-in-url")
        found = http.post("/v1/audit/entries/search", json={"subject": subjects[0]},
                          headers=officer)  # fmt: skip
        assert found.status_code == 200 and found.json()["entries"]
        # An ID number in a path and in a query string of unknown routes.
        assert http.get(f"/v1/people/{subjects[1]}", headers=officer).status_code == 404
        assert http.get(f"/healthz?id={subjects[2]}").status_code in (200, 503)
        page = http.get(f"/me/?error={subjects[3]}")
        assert page.status_code in (200, 302, 404)
    logs = {p.name: p.read_text(encoding="utf-8", errors="replace")
            for p in sorted((topo.root / "logs").glob("*.log"))}  # fmt: skip
    assert set(logs) >= {"gateway.log", *(f"{d}.log" for d in DEPARTMENTS)}
    # The access log is on: the scan reads request lines, not an empty file.
    assert '"POST /v1/checks HTTP/1.1" 200' in logs["gateway.log"]
    assert '"GET /v1/people/[id] HTTP/1.1" 404' in logs["gateway.log"]
    assert '"GET /v1/audit/entries HTTP/1.1" 400' in logs["gateway.log"]
    assert '"POST /v1/evaluate HTTP/1.1" 200' in logs["health.log"]
    shaped = re.compile(r"(?<!\d)(?:\d{17}[\dXx]|\d{15})(?![\dXx])")
    for name, text_ in logs.items():
        hit = shaped.search(text_)
        assert hit is None, f"{name}: an ID-shaped number at offset {hit.start()}"
    everyone = topo.subjects(10_000)
    for name, text_ in logs.items():
        assert not [s for s in everyone if s in text_], name
