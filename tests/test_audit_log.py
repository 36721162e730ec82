"""The durable audit log on SQLite and PostgreSQL: indexes, canonical stored entries,
pseudonyms and the vault, group commit under concurrency, several writers on one store,
failures and crashes mid-batch, restart, and the officers' entry search."""

from __future__ import annotations

import datetime as dt
import hmac
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import reset_chain
from tests.test_audit_merkle import ref_mth, sm3
from tongban.audit.canonical import canonical_json
from tongban.audit.log import AuditIntegrityError, AuditLog, PreparedEntry
from tongban.audit.merkle import verify_consistency, verify_inclusion
from tongban.audit.note import Checkpoint, SignedNote, sign_line
from tongban.audit.vault import Pseudonymizer
from tongban.audit.verify import verify_store
from tongban.primitives.errors import StoreUnavailable
from tongban.primitives.gm import SM2PrivateKey
from tongban.primitives.idnumber import make_id

ORIGIN = "gateway.test/audit"
GATEWAY = "tongban-gateway"
PSEUDONYM_KEY = bytes(range(32))
VAULT_KEY = bytes(range(100, 116))
ALICE = make_id("110105", dt.date(1985, 3, 14), 27)
BOB = make_id("440305", dt.date(1992, 11, 2), 318)
CAROL = make_id("310101", dt.date(1970, 1, 1), 5)
ROOT = Path(__file__).resolve().parent.parent


def pseudonymizer() -> Pseudonymizer:
    return Pseudonymizer(PSEUDONYM_KEY, VAULT_KEY)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def audit_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'audit.db'}"
    url: str = request.getfixturevalue("pg_scratch_url")
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS audit_entries CASCADE"))
        conn.execute(text("DROP FUNCTION IF EXISTS audit_test_trigger() CASCADE"))
    reset_chain(engine, "audit")
    engine.dispose()
    return url


@pytest.fixture
def open_log(audit_url: str) -> Iterator[Callable[..., AuditLog]]:
    """Open AuditLogs on the test's store; every one is closed at the end."""
    opened: list[AuditLog] = []

    def make(**kwargs: Any) -> AuditLog:
        log = AuditLog(audit_url, pseudonymizer(), origin=ORIGIN, **kwargs, create=True).open()
        opened.append(log)
        return log

    yield make
    for log in opened:
        log.close()


@pytest.fixture
def log(open_log: Callable[..., AuditLog]) -> AuditLog:
    return open_log()


def entry(n: int, **extra: Any) -> dict[str, Any]:
    return {"kind": "check", "time": f"2025-03-01T08:00:{n % 60:02d}.000Z", "n": n, **extra}


def rows(url: str, sql: str = "SELECT idx, entry, leaf_hash FROM audit_entries ORDER BY idx"):
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(text(sql)).all()
    finally:
        engine.dispose()


def execute(url: str, *statements: str, **params: Any) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            for sql in statements:
                conn.execute(text(sql), params)
    finally:
        engine.dispose()


def independent_root(url: str) -> tuple[int, bytes]:
    """Size and root recomputed from the stored entry texts alone."""
    stored = rows(url)
    assert [r.idx for r in stored] == list(range(len(stored)))
    return len(stored), ref_mth([sm3(b"\x00" + r.entry.encode()) for r in stored])


def stored(log: AuditLog, index: int) -> dict[str, Any]:
    found = log.get(index)
    assert found is not None
    return found.entry


def signed_checkpoint(log: AuditLog, key: SM2PrivateKey, size: int | None = None) -> SignedNote:
    size = log.size if size is None else size
    body = Checkpoint(log.origin, size, log.root(size)).body()
    return SignedNote(body, (sign_line(body, GATEWAY, key),))


# --- appending -------------------------------------------------------------------------


def test_append_returns_consecutive_indexes(log: AuditLog, audit_url: str):
    assert log.size == 0
    assert [log.append(entry(i)) for i in range(6)] == list(range(6))
    assert log.append_prepared([log.prepare(entry(i)) for i in range(6, 10)]) == [6, 7, 8, 9]
    assert log.append_prepared([]) == []
    assert log.size == 10
    assert independent_root(audit_url) == (10, log.root())


def test_stored_entry_embeds_its_index_and_is_canonical(log: AuditLog, audit_url: str):
    doc = {"kind": "check", "time": "2025-03-01T08:00:00.000Z", "a": 1, "z": "数据", "J": [1]}
    for i in range(3):
        assert log.append(doc) == i
    for r in rows(audit_url):
        expected = canonical_json({**doc, "index": r.idx})
        assert r.entry.encode() == expected
        assert bytes(r.leaf_hash) == sm3(b"\x00" + expected) == log.leaf(r.idx)
        assert stored(log, r.idx) == {**doc, "index": r.idx}
    assert log.get(3) is None


@pytest.mark.parametrize(
    "doc",
    [
        {"kind": "k", "time": "t"},
        {"kind": "k", "time": "t", "": 0, "A": 1, "Index": 2, "in": 3, "indexa": 4, "ind": 5},
        {"kind": "k", "time": "t", "hash": {"index_of": [1, {"b": None, "a": True}]}},
        {"kind": "k", "time": "t", "a": '引号"\\', "\u00e9": "é", "~": "~"},
    ],
)
def test_prepared_entry_renders_canonical_json(doc: dict[str, Any]):
    prepared = PreparedEntry.make(doc, None)
    for index in (0, 7, 123456789012):
        assert prepared.render(index) == canonical_json({**doc, "index": index})


@pytest.mark.parametrize(
    ("doc", "error"),
    [
        ({"kind": "k", "time": "t", "index": 3}, ValueError),
        ({"time": "t"}, ValueError),
        ({"kind": "k"}, ValueError),
        ({"kind": 1, "time": "t"}, ValueError),
        ({"kind": "k", "time": "t", "score": 0.5}, TypeError),
        ({"kind": "k", "time": "t", "x": {1: 2}}, TypeError),
    ],
)
def test_prepare_refuses_bad_entries(log: AuditLog, doc: dict[str, Any], error: type[Exception]):
    with pytest.raises(error):
        log.append(doc)
    assert log.size == 0


def test_append_needs_an_open_log(audit_url: str):
    log = AuditLog(audit_url, pseudonymizer(), origin=ORIGIN, create=True)
    with pytest.raises(StoreUnavailable):
        log.append(entry(0))
    log.open()
    assert log.append(entry(0)) == 0
    log.close()
    with pytest.raises(StoreUnavailable):
        log.append(entry(1))


def test_appended_entry_is_visible_to_a_fresh_connection(log: AuditLog, audit_url: str):
    """append() returns only after the commit: another connection sees the row at once."""
    for i in range(5):
        index = log.append(entry(i))
        (row,) = rows(audit_url, f"SELECT idx, entry FROM audit_entries WHERE idx = {index}")
        assert json.loads(row.entry)["n"] == i


# --- pseudonyms and the vault ----------------------------------------------------------


def test_subjects_appear_only_as_pseudonyms(log: AuditLog, audit_url: str, tmp_path: Path):
    pz = pseudonymizer()
    for i, who in enumerate([ALICE, BOB, ALICE, CAROL]):
        log.append(entry(i, requester="insurer-a", claim="alive"), subject_id=who)
    log.append(entry(9, note="no subject"))
    alice = pz.pseudonym(ALICE)
    # HMAC-SM3 under the pseudonym key, computed independently.
    assert alice == hmac.new(PSEUDONYM_KEY, ALICE.encode(), "sm3").hexdigest()
    assert [e.entry.get("subject") for e in log.entries({}, newest_first=False)[0]] == [
        alice,
        pz.pseudonym(BOB),
        alice,
        pz.pseudonym(CAROL),
        None,
    ]
    dumps = [
        rows(audit_url, f"SELECT * FROM {table}")
        for table in ("audit_entries", "pseudonym_vault", "audit_checkpoints")
    ]
    for table in dumps:
        for row in table:
            for value in row:
                raw = bytes(value) if isinstance(value, bytes | memoryview) else str(value).encode()
                for number in (ALICE, BOB, CAROL):
                    assert number.encode() not in raw
                    assert number[:17].encode() not in raw
    assert len(dumps[1]) == 3  # one vault row per person, not per entry
    if audit_url.startswith("sqlite"):
        blob = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("audit"))
        assert blob
        for number in (ALICE, BOB, CAROL):
            assert number[:17].encode() not in blob
    assert log.reveal(alice) == ALICE
    assert log.reveal(pz.pseudonym(CAROL)) == CAROL
    assert log.reveal("0" * 64) is None


def test_erasing_a_subject_keeps_every_proof(
    log: AuditLog, audit_url: str, party_keys: dict[str, SM2PrivateKey]
):
    for i in range(12):
        log.append(entry(i), subject_id=ALICE if i % 3 == 0 else BOB)
    log.store_checkpoint(signed_checkpoint(log, party_keys["gateway"]))
    before = (log.size, log.root(), rows(audit_url))
    alice = pseudonymizer().pseudonym(ALICE)

    assert log.erase_subject(ALICE) is True
    assert log.erase_subject(ALICE) is False
    assert log.reveal(alice) is None
    assert log.reveal(pseudonymizer().pseudonym(BOB)) == BOB
    # The entries are untouched: same rows, same root, every proof still verifies.
    assert (log.size, log.root(), rows(audit_url)) == before
    assert [e.index for e in log.entries({"subject": alice})[0]] == [9, 6, 3, 0]
    for i in range(log.size):
        assert verify_inclusion(
            i, log.size, log.leaf(i), log.inclusion_proof(i, log.size), before[1]
        )
    report = verify_store(
        audit_url, gateway=(GATEWAY, party_keys["gateway"].public_key), witnesses={}
    )
    assert report.ok, report.findings
    assert (report.entries, report.checkpoints) == (12, 1)
    log.close()
    reopened = AuditLog(audit_url, pseudonymizer(), origin=ORIGIN, create=True).open()
    try:
        assert reopened.root() == before[1]
        assert reopened.append(entry(12), subject_id=ALICE) == 12  # a new vault row is fine
        assert reopened.reveal(alice) == ALICE
    finally:
        reopened.close()


# --- concurrency -----------------------------------------------------------------------


def test_concurrent_appends_are_unique_contiguous_and_group_committed(
    log: AuditLog, audit_url: str
):
    threads, per_thread = 32, 40
    batches: list[int] = []
    original = log._write

    def counting(flat: list[PreparedEntry]) -> tuple[int, list[bytes]]:
        batches.append(len(flat))
        return original(flat)

    log._write = counting  # type: ignore[method-assign]
    got: dict[tuple[int, int], int] = {}
    lock = threading.Lock()
    barrier = threading.Barrier(threads)

    def work(t: int) -> None:
        barrier.wait()
        for s in range(per_thread):
            index = log.append(entry(s, thread=t, seq=s))
            with lock:
                got[(t, s)] = index

    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join(timeout=120)
    total = threads * per_thread
    assert sorted(got.values()) == list(range(total))
    assert log.size == total
    stored = {r.idx: json.loads(r.entry) for r in rows(audit_url)}
    for (t, s), index in got.items():
        assert (stored[index]["thread"], stored[index]["seq"], stored[index]["index"]) == (
            t,
            s,
            index,
        )
    # Each thread's entries keep its own order.
    for t in range(threads):
        mine = [got[(t, s)] for s in range(per_thread)]
        assert mine == sorted(mine)
    assert independent_root(audit_url) == (total, log.root())
    assert sum(batches) == total
    assert len(batches) < total and max(batches) > 1, "appends were not group-committed"


def test_two_logs_on_one_store_interleave_without_gaps(
    open_log: Callable[..., AuditLog], audit_url: str
):
    a, b = open_log(), open_log()
    order = []
    for i in range(10):
        order.append(a.append(entry(i, by="a")))
        order.append(b.append(entry(i, by="b")))
    assert order == list(range(20))
    # b caught up on a's entries before adding its own, so its tree is in index order.
    assert a.refresh() == b.refresh() == 20
    assert a.root() == b.root()

    got: list[int] = []
    lock = threading.Lock()

    def work(log: AuditLog, name: str) -> None:
        for i in range(25):
            index = log.append(entry(i, by=name))
            with lock:
                got.append(index)

    pool = [
        threading.Thread(target=work, args=(x, f"{n}{t}"))
        for t in range(4)
        for n, x in (("a", a), ("b", b))
    ]
    for th in pool:
        th.start()
    for th in pool:
        th.join(timeout=120)
    assert sorted(got) == list(range(20, 220))
    assert a.refresh() == b.refresh() == 220
    size, root = independent_root(audit_url)
    assert (size, root) == (220, a.root()) == (220, b.root())
    for i in (0, 19, 20, 150, 219):
        assert verify_inclusion(i, size, b.leaf(i), a.inclusion_proof(i, size), root)
    assert verify_consistency(20, 220, b.root(20), root, a.consistency_proof(20, 220))


def test_refresh_between_commit_and_tree_update_does_not_duplicate_leaves(
    log: AuditLog, audit_url: str
):
    original = log._write
    others: list[threading.Thread] = []

    def commit_then_someone_refreshes(flat: list[PreparedEntry]) -> tuple[int, list[bytes]]:
        result = original(flat)  # committed
        # Another thread (the Checkpointer, a proof request) runs refresh() right now; it
        # must wait for the writer to finish updating the tree, not add the leaves itself.
        other = threading.Thread(target=log.refresh)
        other.start()
        others.append(other)
        # Give it a head start (bounded): unprotected, it would finish well within this.
        other.join(timeout=0.5)
        return result

    log._write = commit_then_someone_refreshes  # type: ignore[method-assign]
    assert log.append(entry(0)) == 0
    for other in others:
        other.join(timeout=10)
    assert log.size == 1
    assert independent_root(audit_url) == (1, log.root())


# --- failures --------------------------------------------------------------------------


def test_write_failure_raises_store_unavailable_and_writer_recovers(
    log: AuditLog, audit_url: str, monkeypatch: pytest.MonkeyPatch
):
    for i in range(3):
        log.append(entry(i))
    dbapi = log.engine.dialect.loaded_dbapi

    def broken(flat: list[PreparedEntry]) -> tuple[int, list[bytes]]:
        raise dbapi.OperationalError("disk I/O error")

    monkeypatch.setattr(log, "_write", broken)
    with pytest.raises(StoreUnavailable):
        log.append(entry(3))
    with pytest.raises(StoreUnavailable):
        log.append_prepared([log.prepare(entry(4)), log.prepare(entry(5))])
    monkeypatch.undo()
    assert log.size == 3
    assert log.append(entry(6)) == 3
    assert independent_root(audit_url) == (4, log.root())


def _install_poison_trigger(url: str, kind: str) -> None:
    if url.startswith("sqlite"):
        execute(
            url,
            "CREATE TRIGGER audit_test_trigger BEFORE INSERT ON audit_entries "
            f"WHEN NEW.kind = '{kind}' BEGIN SELECT RAISE(ABORT, 'refused by trigger'); END",
        )
    else:
        execute(
            url,
            "CREATE FUNCTION audit_test_trigger() RETURNS trigger AS $$ BEGIN "
            f"IF NEW.kind = '{kind}' THEN RAISE EXCEPTION 'refused by trigger'; END IF; "
            "RETURN NEW; END $$ LANGUAGE plpgsql",
            "CREATE TRIGGER audit_test_trigger BEFORE INSERT ON audit_entries "
            "FOR EACH ROW EXECUTE FUNCTION audit_test_trigger()",
        )


def test_batch_failing_mid_insert_leaves_none_of_its_rows(
    log: AuditLog, audit_url: str, caplog: pytest.LogCaptureFixture
):
    for i in range(4):
        log.append(entry(i), subject_id=ALICE)
    _install_poison_trigger(audit_url, "poison")
    batch = [
        log.prepare(entry(10), subject_id=BOB),
        log.prepare(entry(11)),
        log.prepare({"kind": "poison", "time": "t"}),  # the third row of the batch fails
        log.prepare(entry(13), subject_id=CAROL),
    ]
    with pytest.raises(StoreUnavailable):
        log.append_prepared(batch)
    assert log.size == 4
    assert [r.idx for r in rows(audit_url)] == [0, 1, 2, 3]
    vault = rows(audit_url, "SELECT pseudonym FROM pseudonym_vault")
    assert [r.pseudonym for r in vault] == [pseudonymizer().pseudonym(ALICE)]
    # The writer survives and the next batch takes the next index.
    assert log.append_prepared([batch[0], batch[1], batch[3]]) == [4, 5, 6]
    assert independent_root(audit_url) == (7, log.root())


def test_crash_of_the_process_mid_batch_leaves_none_of_it(tmp_path: Path):
    """SQLite: the writer's process dies between two inserts of one batch."""
    db = tmp_path / "audit.db"
    child = f"""
import os, sys
sys.path.insert(0, {str(ROOT)!r})
from sqlalchemy import event
from tongban.audit.log import AuditLog
from tongban.audit.vault import Pseudonymizer
log = AuditLog("sqlite:///{db}", Pseudonymizer({PSEUDONYM_KEY!r}, {VAULT_KEY!r}), origin="o",
               create=True)
event.listen(log._writes, "connect", lambda c, r: c.create_function("die", 0, lambda: os._exit(9)))
log.open()
for i in range(5):
    log.append({{"kind": "ok", "time": "t", "n": i}})
with log._writes.begin() as conn:
    conn.exec_driver_sql(
        "CREATE TRIGGER crash AFTER INSERT ON audit_entries WHEN NEW.idx = 8 "
        "BEGIN SELECT die(); END"
    )
log.append_prepared([log.prepare({{"kind": "ok", "time": "t", "n": n}}) for n in range(5, 12)])
print("survived")
"""
    proc = subprocess.run(
        [sys.executable, "-c", child], capture_output=True, timeout=60, check=False
    )
    assert proc.returncode == 9, proc.stderr.decode()
    url = f"sqlite:///{db}"
    assert [r.idx for r in rows(url)] == [0, 1, 2, 3, 4]  # rows 5..7 were rolled back
    execute(url, "DROP TRIGGER crash")
    log = AuditLog(url, pseudonymizer(), origin="o", create=True).open()
    try:
        assert log.size == 5
        assert log.append({"kind": "ok", "time": "t"}) == 5
        assert independent_root(url) == (6, log.root())
    finally:
        log.close()


@pytest.mark.postgres
def test_connection_killed_mid_batch_postgresql(pg_scratch_url: str):
    """PostgreSQL: the server ends the writer's session in the middle of a batch."""
    url = pg_scratch_url
    execute(url, "DROP TABLE IF EXISTS audit_entries CASCADE")
    engine = create_engine(url)
    reset_chain(engine, "audit")
    engine.dispose()
    log = AuditLog(url, pseudonymizer(), origin=ORIGIN, create=True).open()
    try:
        for i in range(3):
            log.append(entry(i))
        execute(
            url,
            "CREATE FUNCTION audit_test_hang() RETURNS trigger AS $$ BEGIN "
            "IF NEW.kind = 'hang' THEN PERFORM pg_sleep(60); END IF; RETURN NEW; END $$ "
            "LANGUAGE plpgsql",
            "CREATE TRIGGER audit_test_hang BEFORE INSERT ON audit_entries "
            "FOR EACH ROW EXECUTE FUNCTION audit_test_hang()",
        )
        outcome: list[object] = []
        batch = [
            log.prepare(entry(3)),
            log.prepare(entry(4)),
            log.prepare({"kind": "hang", "time": "t"}),
        ]

        def append() -> None:
            try:
                outcome.append(log.append_prepared(batch))
            except StoreUnavailable as exc:
                outcome.append(exc)

        worker = threading.Thread(target=append)
        worker.start()
        pid = None
        deadline = time.monotonic() + 20
        while pid is None and time.monotonic() < deadline:
            found = rows(
                url,
                "SELECT pid FROM pg_stat_activity WHERE wait_event = 'PgSleep' "
                "AND datname = current_database()",
            )
            pid = found[0].pid if found else None
            if pid is None:
                time.sleep(0.02)
        assert pid is not None, "the writer never reached the hanging row"
        execute(url, "SELECT pg_terminate_backend(:pid)", pid=pid)
        worker.join(timeout=30)
        assert len(outcome) == 1 and isinstance(outcome[0], StoreUnavailable)
        assert [r.idx for r in rows(url)] == [0, 1, 2]
        execute(
            url, "DROP TRIGGER audit_test_hang ON audit_entries", "DROP FUNCTION audit_test_hang()"
        )
        assert log.append(entry(5)) == 3  # a fresh connection; the writer keeps going
        assert independent_root(url) == (4, log.root())
    finally:
        log.close()


def test_long_field_values_are_stored_on_every_backend(
    log: AuditLog, audit_url: str, request: pytest.FixtureRequest
):
    index = log.append({"kind": "consent_withdrawn_by_legal_guardian", "time": "t"})
    assert stored(log, index)["kind"] == "consent_withdrawn_by_legal_guardian"
    index = log.append({"kind": "check", "time": "t", "decision": "deny_negative_list_match"})
    assert stored(log, index)["decision"] == "deny_negative_list_match"


def test_a_bad_entry_does_not_fail_its_batch_neighbours(
    log: AuditLog, audit_url: str, request: pytest.FixtureRequest
):
    """Group commit couples appenders: an entry the database refuses must not take the
    other appenders' entries of the same batch down with it."""
    outcomes: dict[str, object] = {}

    def append(name: str, doc: dict[str, Any]) -> None:
        try:
            outcomes[name] = log.append(doc)
        except StoreUnavailable as exc:
            outcomes[name] = exc

    # Hold the writer inside its first batch so the next two appends share one batch.
    entered, release = threading.Event(), threading.Event()
    original = log._write

    def write(flat: list[PreparedEntry]) -> tuple[int, list[bytes]]:
        entered.set()
        release.wait(10)  # the writer is busy with its first batch
        return original(flat)

    log._write = write  # type: ignore[method-assign]
    first = threading.Thread(target=append, args=("first", entry(0)))
    first.start()
    assert entered.wait(10)
    deadline = time.monotonic() + 10
    long_kind = threading.Thread(target=append, args=("long", {"kind": "k" * 40, "time": "t"}))
    good = threading.Thread(target=append, args=("good", entry(1)))
    long_kind.start()
    good.start()
    while log._queue.qsize() < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert log._queue.qsize() == 2
    release.set()
    for th in (first, long_kind, good):
        th.join(timeout=30)
    assert outcomes["first"] == 0
    assert isinstance(outcomes["good"], int)


# --- restart ---------------------------------------------------------------------------


def _build(url: str, key: SM2PrivateKey, n: int = 30, checkpoint_at: int = 20) -> bytes:
    log = AuditLog(url, pseudonymizer(), origin=ORIGIN, create=True).open()
    try:
        for i in range(n):
            log.append(entry(i), subject_id=ALICE if i % 2 else None)
            if i + 1 == checkpoint_at:
                log.store_checkpoint(signed_checkpoint(log, key))
        return log.root()
    finally:
        log.close()


def test_restart_rebuilds_the_same_tree(audit_url: str, party_keys: dict[str, SM2PrivateKey]):
    root = _build(audit_url, party_keys["gateway"])
    log = AuditLog(audit_url, pseudonymizer(), origin=ORIGIN, create=True).open()
    try:
        assert (log.size, log.root()) == (30, root)
        cp = log.latest_checkpoint()
        assert cp is not None
        assert cp.checkpoint.size == 20 and cp.checkpoint.root == log.root(20)
        assert cp.verified_by({GATEWAY: party_keys["gateway"].public_key}) == {GATEWAY: True}
        assert log.append(entry(30)) == 30
        assert independent_root(audit_url) == (31, log.root())
    finally:
        log.close()


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        ("DELETE FROM audit_entries WHERE idx = 7", "entry 7 is missing"),
        ("DELETE FROM audit_entries WHERE idx = 0", "entry 0 is missing"),
        ("DELETE FROM audit_entries WHERE idx >= 15", "truncated: entry 15 is missing"),
        ("UPDATE audit_entries SET leaf_hash = :h WHERE idx = 3", "does not match"),
        ("UPDATE audit_checkpoints SET note = :note", "does not match"),
    ],
)
def test_reopening_a_tampered_store_is_refused(
    audit_url: str, party_keys: dict[str, SM2PrivateKey], tamper: str, message: str
):
    _build(audit_url, party_keys["gateway"])
    body = Checkpoint(ORIGIN, 20, sm3(b"another root")).body()
    forged = SignedNote(body, (sign_line(body, GATEWAY, party_keys["gateway"]),)).text()
    execute(audit_url, tamper, h=sm3(b"x"), note=forged)
    log = AuditLog(audit_url, pseudonymizer(), origin=ORIGIN, create=True)
    with pytest.raises(AuditIntegrityError, match=message):
        log.open()
    log.close()


def test_entries_above_the_checkpoint_may_be_lost_but_never_rewritten(
    audit_url: str, party_keys: dict[str, SM2PrivateKey]
):
    """Deleting entries beyond the last checkpoint cannot be detected at open (nothing
    signed covers them); that is why checkpoints are taken every few seconds."""
    _build(audit_url, party_keys["gateway"])
    execute(audit_url, "DELETE FROM audit_entries WHERE idx >= 25")
    log = AuditLog(audit_url, pseudonymizer(), origin=ORIGIN, create=True).open()
    try:
        assert log.size == 25
    finally:
        log.close()


# --- the officers' search --------------------------------------------------------------


def test_entries_filters_and_pagination(log: AuditLog):
    pz = pseudonymizer()
    docs: list[dict[str, Any]] = []
    for i in range(30):
        doc: dict[str, Any] = {
            "kind": ("check", "consent", "policy")[i % 3],
            "time": f"2025-03-01T08:{i:02d}:00.000Z",
            "requester": ("insurer-a", "insurer-b")[i % 2],
            "claim": "alive" if i % 4 else "insured",
            "purpose": "underwriting",
            "decision": {"allowed": i % 5 != 0},
            "result": i % 7 == 0,
        }
        subject = (ALICE, BOB, None)[i % 3]
        log.append(doc, subject_id=subject)
        docs.append({**doc, "subject": None if subject is None else pz.pseudonym(subject)})

    def expect(pred: Callable[[dict[str, Any]], bool]) -> list[int]:
        return [i for i, d in reversed(list(enumerate(docs))) if pred(d)]

    def got(filters: dict[str, str], **kw: Any) -> list[int]:
        return [e.index for e in log.entries(filters, limit=100, **kw)[0]]

    assert got({}) == expect(lambda d: True)
    assert got({"kind": "consent"}) == expect(lambda d: d["kind"] == "consent")
    assert got({"requester": "insurer-b", "kind": "check"}) == expect(
        lambda d: d["requester"] == "insurer-b" and d["kind"] == "check"
    )
    assert got({"claim": "insured"}) == expect(lambda d: d["claim"] == "insured")
    assert got({"purpose": "underwriting"}) == expect(lambda d: True)
    assert got({"subject": pz.pseudonym(BOB)}) == expect(
        lambda d: d["subject"] == pz.pseudonym(BOB)
    )
    assert got({"decision": "deny"}) == expect(lambda d: not d["decision"]["allowed"])
    assert got({"decision": "allow"}) == expect(lambda d: d["decision"]["allowed"])
    assert got({"result": "allow"}) == expect(lambda d: d["result"])
    since, until = "2025-03-01T08:10:00.000Z", "2025-03-01T08:20:00.000Z"
    assert got({"since": since, "until": until}) == expect(lambda d: since <= d["time"] < until)
    assert got({"requester": "nobody"}) == []
    assert got({}, newest_first=False) == list(range(30))
    with pytest.raises(ValueError, match="unknown filter"):
        log.entries({"id_number": ALICE})

    first, cursor = log.entries({}, limit=1)
    assert [e.index for e in first] == [29] and cursor == 29
    assert first[0].entry["index"] == 29 and first[0].leaf_hash == log.leaf(29)
    for newest_first in (True, False):
        for limit in (1, 4, 7, 30, 31):
            seen: list[int] = []
            cursor = None
            pages = 0
            while True:
                page, cursor = log.entries(
                    {"kind": "check"}, cursor=cursor, limit=limit, newest_first=newest_first
                )
                seen += [e.index for e in page]
                pages += 1
                assert len(page) <= limit
                if cursor is None:
                    break
            everything = expect(lambda d: d["kind"] == "check")
            assert seen == (everything if newest_first else everything[::-1])
            assert pages == max(1, -(-len(everything) // limit))


def test_close_drains_the_queue_and_stops_the_writer(log: AuditLog, audit_url: str):
    pool = [threading.Thread(target=log.append, args=(entry(i),)) for i in range(20)]
    for th in pool:
        th.start()
    for th in pool:
        th.join(timeout=30)
    writer = log._writer
    log.close()
    assert writer is not None and not writer.is_alive()
    assert independent_root(audit_url)[0] == 20


def test_append_racing_close_does_not_hang(audit_url: str):
    log = AuditLog(audit_url, pseudonymizer(), origin=ORIGIN, create=True).open()
    log.append(entry(0))
    outcome: list[object] = []

    def append() -> None:
        try:
            outcome.append(log.append(entry(1)))
        except StoreUnavailable as exc:
            outcome.append(exc)

    entered, release = threading.Event(), threading.Event()
    original = log._write

    def write(flat: list[PreparedEntry]) -> tuple[int, list[bytes]]:
        entered.set()
        release.wait(10)  # the writer is busy with a batch while close() begins
        return original(flat)

    log._write = write  # type: ignore[method-assign]
    late = threading.Thread(target=append, daemon=True)  # daemon: it may never return
    busy = threading.Thread(target=log.append, args=(entry(2),), daemon=True)
    busy.start()
    assert entered.wait(10)
    deadline = time.monotonic() + 10
    closer = threading.Thread(target=log.close)
    closer.start()
    while log._queue.qsize() < 1 and time.monotonic() < deadline:
        time.sleep(0.005)  # the stop marker is queued
    late.start()
    late.join(timeout=2)
    release.set()
    closer.join(timeout=15)
    late.join(timeout=1)
    assert not late.is_alive(), "append() is still blocked after close()"
    assert len(outcome) == 1
