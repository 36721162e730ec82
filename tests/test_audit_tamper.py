"""The outside test's attacks on the audit log, repeated: each is caught.

- a citizen's rows hidden by editing only their ``subject`` column (finding 2);
- the tail cut together with the checkpoint that covered it (finding 3);
- an entry's text edited, before and after the gateway started (finding 4);
- one edited entry reported as one first bad index and a one-line cause (finding 11).

On SQLite and PostgreSQL, with real witnesses (``adapters/witness.py``) behind the
in-process transport, and the real gateway app for the refusals.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import reset_chain
from tongban.adapters.client import InProcessTransport, witnessed
from tongban.adapters.witness import MemoryWitnessState, Witness
from tongban.audit.log import AuditIntegrityError, AuditLog
from tongban.audit.vault import Pseudonymizer
from tongban.audit.verify import ask_witnesses, verify_store
from tongban.gateway.app import create_app
from tongban.gateway.checkpoints import Checkpointer
from tongban.primitives.gm import SM2PrivateKey
from tongban.primitives.idnumber import make_id
from tongban.wiring import build_gateway

from .gateway_harness import build_harness

ORIGIN = "gateway.test/audit"
GATEWAY = "gateway.test"
WITNESSES = ("health", "police", "civil")
VICTIM = make_id("110105", dt.date(1990, 5, 17), 42)
OTHER = make_id("110105", dt.date(1988, 1, 2), 7)
CHECKS = 48


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def audit_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'audit.db'}"
    url: str = request.getfixturevalue("pg_scratch_url")
    engine = create_engine(url)
    reset_chain(engine, "audit")
    engine.dispose()
    return url


class World:
    """One log with three witnesses that remember what they cosigned."""

    def __init__(self, url: str, keys: dict[str, SM2PrivateKey]) -> None:
        self.url = url
        self.keys = keys
        gateway = keys["gateway"].public_key
        self.witnesses = {
            w: Witness(
                w, keys[w], origin=ORIGIN, gateway_name=GATEWAY, gateway_key=gateway,
                state=MemoryWitnessState(),
            )
            for w in WITNESSES
        }  # fmt: skip
        self.transport = InProcessTransport({}, self.witnesses)
        self.pseudonyms = Pseudonymizer(b"p" * 32, b"v" * 16)
        self.opened: list[AuditLog] = []

    def open(self) -> AuditLog:
        log = AuditLog(self.url, self.pseudonyms, origin=ORIGIN, create=True).open()
        self.opened.append(log)
        return log

    def checkpointer(self, log: AuditLog, **kwargs: Any) -> Checkpointer:
        return Checkpointer(
            log,
            self.keys["gateway"],
            name=GATEWAY,
            witnesses={w: self.keys[w].public_key for w in WITNESSES},
            transport=self.transport,
            **kwargs,
        )

    def verify(self, *, ask: bool = True) -> Any:
        notes: dict[str, str] = {}
        if ask:
            notes, missing = ask_witnesses(
                WITNESSES, lambda name: witnessed(self.transport, name, 1.0)
            )
            assert missing == {}
        return verify_store(
            self.url,
            gateway=(GATEWAY, self.keys["gateway"].public_key),
            witnesses={w: self.keys[w].public_key for w in WITNESSES},
            witnessed=notes,
        )

    def sql(self, statement: str, **params: Any) -> int:
        engine = create_engine(self.url)
        try:
            with engine.begin() as conn:
                return int(conn.execute(text(statement), params).rowcount)
        finally:
            engine.dispose()

    def close(self) -> None:
        for log in self.opened:
            log.close()


@pytest.fixture
def world(audit_url: str, party_keys: dict[str, SM2PrivateKey]) -> Iterator[World]:
    w = World(audit_url, party_keys)
    yield w
    w.close()


def _check(i: int) -> dict[str, Any]:
    return {
        "kind": "check",
        "time": f"2026-03-01T08:{i // 60:02d}:{i % 60:02d}.000Z",
        "requester": "edu-bureau",
        "claim": "birth_registered",
        "purpose": "school_enrolment",
        "decision": {"allowed": True, "reason": "ok"},
    }


def _fill(world: World) -> tuple[AuditLog, list[int]]:
    """100 entries, 48 of them checks about the victim; checkpointed and cosigned."""
    log = world.open()
    victim: list[int] = []
    for i in range(100):
        if i % 2 == 0 and len(victim) < CHECKS:
            victim.append(log.append(_check(i), subject_id=VICTIM))
        else:
            log.append(_check(i), subject_id=OTHER)
    note = world.checkpointer(log).checkpoint()
    assert len(note.signatures) == 1 + len(WITNESSES)
    return log, victim


# --- finding 2: the query columns ----------------------------------------------------------


def test_hiding_a_citizens_rows_by_their_subject_column_is_caught(world: World) -> None:
    log, victim = _fill(world)
    pseudonym = world.pseudonyms.pseudonym(VICTIM)
    assert len(log.entries({"subject": pseudonym}, limit=100)[0]) == CHECKS
    log.close()
    world.opened.remove(log)
    # The attack: only the denormalised column changes; the entries stay intact.
    changed = world.sql(
        "UPDATE audit_entries SET subject = :other WHERE subject = :victim",
        other=world.pseudonyms.pseudonym(OTHER),
        victim=pseudonym,
    )
    assert changed == CHECKS
    report = world.verify()
    assert not report.ok
    assert report.first_bad_index == victim[0]
    assert report.cause == f"entry {victim[0]}: its subject column differs from the entry"
    # The gateway does not start on it.
    with pytest.raises(AuditIntegrityError, match="subject column differs"):
        world.open()


def test_a_row_pulled_into_another_citizens_access_log_is_refused_when_read(
    world: World,
) -> None:
    """Edited while the gateway runs: the query finds the row, and the read refuses it."""
    log, victim = _fill(world)
    other_rows = [i for i in range(100) if i not in victim]
    world.sql(
        "UPDATE audit_entries SET subject = :victim WHERE idx = :idx",
        victim=world.pseudonyms.pseudonym(VICTIM),
        idx=other_rows[0],
    )
    with pytest.raises(AuditIntegrityError, match=f"entry {other_rows[0]}: its subject"):
        log.entries({"subject": world.pseudonyms.pseudonym(VICTIM)}, limit=100)


# --- finding 3: the tail cut with its checkpoint ------------------------------------------


def _cut_tail(world: World) -> tuple[AuditLog, int]:
    """The attack: an officer lookup appended and checkpointed, then deleted together with
    the checkpoint that covered it."""
    log, _ = _fill(world)
    last = log.append({"kind": "officer_lookup", "time": "2026-03-01T09:00:00.000Z"})
    world.checkpointer(log).checkpoint()
    log.close()
    world.opened.remove(log)
    assert world.sql("DELETE FROM audit_entries WHERE idx = :i", i=last) == 1
    assert world.sql("DELETE FROM audit_checkpoints WHERE size = :s", s=last + 1) == 1
    return world.open(), last


def test_verify_catches_a_cut_tail_through_the_witnesses(world: World) -> None:
    log, last = _cut_tail(world)
    assert log.size == last  # the log itself is consistent with what is left
    # What the store holds proves nothing: offline, the cut is invisible...
    assert world.verify(ask=False).ok
    # ...and the witnesses remember the larger tree.
    report = world.verify()
    assert not report.ok and report.first_bad_index == last
    assert (
        report.cause
        == f"log truncated: witness civil cosigned {last + 1} entries, the log has {last}"
    )
    assert report.witnessed == dict.fromkeys(WITNESSES, last + 1)


def test_a_gateway_behind_its_witnesses_knows_it(world: World) -> None:
    log, last = _cut_tail(world)
    checkpointer = world.checkpointer(log)
    checkpointer.start()
    try:
        status = checkpointer.status()
        assert (
            status["diverged"] == f"witness health cosigned {last + 1} entries, the log has {last}"
        )
        from tongban.gateway.metrics import REGISTRY, track_checkpoints

        track_checkpoints(checkpointer)
        assert REGISTRY.get_sample_value("tongban_audit_diverged") == 1
        track_checkpoints(None)
    finally:
        checkpointer.stop()


def test_a_checkpoint_below_the_quorum_is_flagged(world: World) -> None:
    log = world.open()
    log.append(_check(0))
    down = Checkpointer(
        log,
        world.keys["gateway"],
        name=GATEWAY,
        witnesses={w: world.keys[w].public_key for w in WITNESSES},
        transport=InProcessTransport({}, {"health": world.witnesses["health"]}),
    )
    down.checkpoint()
    status = down.status()
    assert status["cosigners"] == ["health"] and status["quorum"] == 2
    assert status["witnessed"] is False and status["diverged"] is None
    # The operator's metrics show it too.
    from tongban.gateway.metrics import REGISTRY, track_checkpoints

    track_checkpoints(down)
    assert REGISTRY.get_sample_value("tongban_audit_checkpoint_cosignatures") == 1
    assert REGISTRY.get_sample_value("tongban_audit_checkpoint_witnessed") == 0
    assert REGISTRY.get_sample_value("tongban_audit_diverged") == 0
    track_checkpoints(None)
    world.checkpointer(log).checkpoint(force=True)
    assert world.checkpointer(log).status()["witnessed"] is True


# --- finding 4 and the noisy report: an edited entry ----------------------------------------


def test_an_edited_entry_is_one_finding_with_its_index(world: World) -> None:
    log, _ = _fill(world)
    log.close()
    world.opened.remove(log)
    world.sql(
        "UPDATE audit_entries SET entry = replace(entry, 'edu-bureau', 'edu-bureaX') WHERE idx = 37"
    )
    report = world.verify()
    assert report.first_bad_index == 37
    assert [f.problem for f in report.findings] == ["entry 37 does not match its leaf hash"]
    assert report.cause == "entry 37 does not match its leaf hash"
    with pytest.raises(AuditIntegrityError, match="entry 37 does not match its leaf hash"):
        world.open()


def test_an_edited_and_rehashed_entry_does_not_open(world: World) -> None:
    """Rehashed, so the row is self-consistent: the latest checkpoint catches it."""
    from tongban.audit.merkle import leaf_hash

    log, _ = _fill(world)
    log.close()
    world.opened.remove(log)
    engine = create_engine(world.url)
    with engine.begin() as conn:
        body = conn.execute(text("SELECT entry FROM audit_entries WHERE idx = 5")).scalar_one()
        forged = body.replace("edu-bureau", "edu-bureaX")
        conn.execute(
            text(
                "UPDATE audit_entries SET entry = :e, leaf_hash = :h, requester = :r WHERE idx = 5"
            ),
            {"e": forged, "h": leaf_hash(forged.encode()), "r": "edu-bureaX"},
        )
    engine.dispose()
    with pytest.raises(AuditIntegrityError, match="does not match its latest checkpoint"):
        world.open()
    assert not world.verify().ok


# --- the gateway, end to end --------------------------------------------------------------


@pytest.fixture
def harness_parts(
    tmp_path: Path, small_population: Any, party_keys: dict[str, SM2PrivateKey]
) -> Iterator[Any]:
    h = build_harness(tmp_path / "gw", small_population.urls, party_keys)
    yield h
    h.close()


def _problem(resp: Any) -> dict[str, Any]:
    assert resp.mimetype == "application/problem+json", resp.get_data(as_text=True)
    body: dict[str, Any] = resp.get_json()
    return body


def test_an_entry_edited_while_serving_gets_no_inclusion_proof(harness_parts: Any) -> None:
    h = harness_parts
    assert h.gateway.audit is not None
    for i in range(5):
        h.gateway.audit.append(_check(i))
    size = h.gateway.audit.size
    officer = h.auth("privacy-officer")
    ok = h.client.get(f"/v1/audit/proofs/inclusion?index=2&size={size}", headers=officer)
    assert ok.status_code == 200
    engine = create_engine(h.settings.audit_store_url())
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE audit_entries SET entry = replace(entry, 'edu', 'EDU') WHERE idx = 2")
        )
    engine.dispose()
    resp = h.client.get(f"/v1/audit/proofs/inclusion?index=2&size={size}", headers=officer)
    assert resp.status_code == 500
    assert _problem(resp)["type"].endswith("/audit-integrity")


def test_a_gateway_restarted_on_a_cut_log_serves_nothing_and_is_not_ready(
    harness_parts: Any, party_keys: dict[str, SM2PrivateKey]
) -> None:
    h = harness_parts
    gateway = h.gateway
    assert gateway.audit is not None and gateway.checkpointer is not None
    for i in range(20):
        gateway.audit.append(_check(i))
    gateway.checkpointer.checkpoint()
    size = gateway.audit.size
    transport = gateway.departments.transport
    edu = h.auth("edu-bureau")
    gateway.close()
    # The tail and the checkpoint covering it go, as in the outside test.
    engine = create_engine(h.settings.audit_store_url())
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_entries WHERE idx = :i"), {"i": size - 1})
        conn.execute(text("DELETE FROM audit_checkpoints WHERE size = :s"), {"s": size})
    engine.dispose()
    restarted = build_gateway(
        h.settings,
        transport=transport,
        department_keys={d: k.public_key for d, k in party_keys.items() if d in h.stores},
        start=True,
    )
    h.gateway = restarted  # closed by the fixture
    client = create_app(restarted).test_client()
    health = client.get("/healthz")
    assert health.status_code == 503
    body = health.get_json()
    assert body["status"] == "unavailable"
    # Its start-up entry took the cut entry's place: same size, another root.
    assert "cosigned another tree" in body["audit"]["checkpoint"]["diverged"]
    # Alive, but not ready, and /readyz says why.
    assert client.get("/livez").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.get_json()["reasons"] == ["the audit log is behind what a witness cosigned"]
    resp = client.post("/v1/checks", json={"claim": "birth_registered"}, headers=edu)
    assert resp.status_code == 503
    problem = _problem(resp)
    assert problem["type"].endswith("/audit-behind-witnesses")
    assert "cosigned" in problem["detail"]
    token = client.post("/oauth/token", data={"grant_type": "client_credentials"})
    assert token.status_code == 503
