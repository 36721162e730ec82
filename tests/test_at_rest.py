"""Encryption at rest: the raw databases hold no ID number, answers do not change, a wrong
key fails closed, rotation survives a crash and resumes, ciphertexts are bound to their row,
and neither keys nor ID numbers reach the logs. On SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import logging
import re
import secrets
import shutil
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from sqlalchemy import create_engine, select, text, update
from sqlalchemy.engine import make_url

from tests.conftest import PG_URL, SMALL_POPULATION, SMALL_SEED, Generated, reset_chain
from tongban.adapters.at_rest import SEALED, AtRestKeyError, KeyState, kek_path, read_state
from tongban.adapters.departments import DEPARTMENTS, SEALED_TABLES
from tongban.adapters.evaluate import Evaluator
from tongban.adapters.ingest import ingest
from tongban.adapters.rekey import (
    encrypt_store,
    key_usage,
    rotate_data_key,
    rotate_index_key,
    rotate_kek,
)
from tongban.adapters.store import DepartmentStore
from tongban.adapters.synthetic.population import REFERENCE_DATE, Population, build_population
from tongban.adapters.synthetic.records import DEPARTMENT_ORDER, department_batches
from tongban.audit.log import AuditLog
from tongban.audit.vault import Pseudonymizer, VaultKeys, rotate_vault, vault_key_usage
from tongban.primitives.wire import PredicateCall, Tri

ID = re.compile(r"\d{17}[\dX]")
SAMPLE = 400


class Crash(Exception):
    pass


@dataclass
class Encrypted:
    dialect: str
    urls: dict[str, str]
    keks: dict[str, bytes]
    plain: Generated

    def store(self, name: str, kek: bytes | str | None = "own") -> DepartmentStore:
        key = self.keks[name] if kek == "own" else kek
        assert not isinstance(key, str)
        return DepartmentStore(DEPARTMENTS[name], self.urls[name], kek=key)


@pytest.fixture(scope="module")
def model() -> Population:
    return build_population(SMALL_POPULATION, SMALL_SEED, REFERENCE_DATE)


def _load(url: str, name: str, kek: bytes | None, model: Population) -> None:
    """What ``generate`` does for one department, through an encrypted store (or, without
    a KEK, a plaintext one)."""
    store = DepartmentStore(DEPARTMENTS[name], url, kek=kek)
    try:
        store.drop_schema()
        store.create_schema(indexes=False)
        as_of = model.reference.astype(object)
        batches, _ = department_batches(model, name, SMALL_SEED)
        for table, cols in batches.items():
            ingest(store, table, cols, as_of)
        store.derive()
        store.create_indexes()
        store.set_meta("reference_date", as_of.isoformat())
    finally:
        store.dispose()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def encrypted(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    model: Population,
) -> Iterator[Encrypted]:
    """The small population again, ingested into stores encrypted at rest, beside the
    plaintext stores of the same population."""
    dialect = request.param
    plain: Generated = request.getfixturevalue(
        "small_population" if dialect == "sqlite" else "pg_population"
    )
    names: dict[str, str] = {}
    admin = None
    if dialect == "sqlite":
        out = tmp_path_factory.mktemp("encrypted")
        urls = {d: f"sqlite:///{out / f'{d}.db'}" for d in DEPARTMENT_ORDER}
    else:
        admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
        tag = secrets.token_hex(4)
        names = {d: f"tongban_test_{tag}_enc_{d}" for d in DEPARTMENT_ORDER}
        with admin.connect() as conn:
            for db in names.values():
                conn.execute(text(f'CREATE DATABASE "{db}"'))
        base = make_url(PG_URL)
        urls = {
            d: base.set(database=db).render_as_string(hide_password=False)
            for d, db in names.items()
        }
    keks = {d: secrets.token_bytes(16) for d in DEPARTMENT_ORDER}
    for d in DEPARTMENT_ORDER:
        _load(urls[d], d, keks[d], model)
    try:
        yield Encrypted(dialect, urls, keks, plain)
    finally:
        if admin is not None:
            with admin.connect() as conn:
                for db in names.values():
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
            admin.dispose()


def _calls(model: Population) -> dict[str, list[PredicateCall]]:
    """Every predicate over a sample of people (valid and quarantined alike), and
    guardian_of over real and mismatched parent/child pairs."""
    rng = np.random.default_rng(5)
    ids = model.id_number[rng.choice(model.size, SAMPLE, replace=False)].tolist()
    calls: dict[str, list[PredicateCall]] = {}
    for name, dept in DEPARTMENTS.items():
        out = calls.setdefault(name, [])
        for p in dept.predicates.values():
            if p.related:
                mothers = model.id_number[model.mother[:60]].tolist()
                children = model.id_number[model.child[:60]].tolist()
                out += [
                    PredicateCall(p.name, m, {}, c) for m, c in zip(mothers, children, strict=True)
                ]
                out += [
                    PredicateCall(p.name, m, {}, c)
                    for m, c in zip(mothers, children[1:], strict=False)
                ]
                continue
            params = {k: v[0] for k, v in p.params.items()}
            out += [PredicateCall(p.name, s, params) for s in ids]
    return calls


def _answers(store: DepartmentStore, calls: list[PredicateCall]) -> list[Tri]:
    ev = Evaluator(store)
    return [ev.evaluate(c) for c in calls]


@pytest.fixture(scope="module")
def expected(encrypted: Encrypted, model: Population) -> dict[str, list[Tri]]:
    calls = _calls(model)
    out = {}
    for name in DEPARTMENT_ORDER:
        plain = DepartmentStore(DEPARTMENTS[name], encrypted.plain.urls[name])
        try:
            out[name] = _answers(plain, calls[name])
        finally:
            plain.dispose()
    return out


def _raw_values(dialect: str, url: str) -> Iterator[tuple[str, str, Any]]:
    """Every value of every table, read with the bare driver, not through tongban."""
    if dialect == "sqlite":
        with sqlite3.connect(make_url(url).database or "") as conn:
            tables = [
                r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            ]
            for t in tables:
                cur = conn.execute(f'SELECT * FROM "{t}"')
                cols = [d[0] for d in cur.description]
                for row in cur:
                    yield from ((t, c, v) for c, v in zip(cols, row, strict=True))
        return
    u = make_url(url)
    with psycopg.connect(
        host=u.host, port=u.port, user=u.username or "postgres", dbname=u.database
    ) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        )]  # fmt: skip
        for t in tables:
            pg_cur = conn.execute(f'SELECT * FROM "{t}"')
            cols = [d.name for d in pg_cur.description or ()]
            for row in pg_cur:
                yield from ((t, c, v) for c, v in zip(cols, row, strict=True))


def test_no_id_number_in_the_raw_databases(encrypted: Encrypted, model: Population) -> None:
    people = set(model.id_number.tolist())
    households = set(model.household_no.tolist())
    certificates = set(model.certificate_no.tolist())
    seen_sealed = 0
    for name in DEPARTMENT_ORDER:
        for table, column, raw in _raw_values(encrypted.dialect, encrypted.urls[name]):
            value = raw
            if isinstance(raw, bytes | memoryview):
                value = bytes(raw).decode("latin-1")
                seen_sealed += 1
            if not isinstance(value, str):
                continue
            found = set(ID.findall(value)) & people
            assert not found, f"{name}.{table}.{column} holds an ID number"
            assert value not in households, f"{name}.{table}.{column} holds a household no."
            assert value not in certificates, f"{name}.{table}.{column} holds a certificate no."
    assert seen_sealed > SMALL_POPULATION  # the values are there, sealed


def test_answers_are_those_of_the_plaintext_store(
    encrypted: Encrypted, model: Population, expected: dict[str, list[Tri]]
) -> None:
    calls = _calls(model)
    for name in DEPARTMENT_ORDER:
        store = encrypted.store(name)
        try:
            assert _answers(store, calls[name]) == expected[name], name
        finally:
            store.dispose()
    # Not trivially equal: every kind of answer occurs.
    assert {Tri.TRUE, Tri.FALSE, Tri.UNKNOWN} <= {a for v in expected.values() for a in v}


def test_batch_evaluation_uses_the_blind_index(
    encrypted: Encrypted, model: Population, expected: dict[str, list[Tri]]
) -> None:
    calls = [c for c in _calls(model)["medins"]]
    store = encrypted.store("medins")
    try:
        got = Evaluator(store).evaluate_many(
            calls[0].predicate, dict(calls[0].params), [c.subject for c in calls]
        )
    finally:
        store.dispose()
    assert got == expected["medins"]


@pytest.mark.parametrize("kek", ["wrong", "missing"])
def test_a_wrong_or_missing_key_fails_closed(
    encrypted: Encrypted, model: Population, kek: str
) -> None:
    store = encrypted.store("police", secrets.token_bytes(16) if kek == "wrong" else None)
    subject = str(model.id_number[0])
    try:
        with pytest.raises(AtRestKeyError) as caught:
            Evaluator(store).evaluate(PredicateCall("registered_in_household", subject, {}))
    finally:
        store.dispose()
    problem = caught.value.to_problem("req-1")
    assert problem["type"].endswith("/store-keys")
    assert problem["status"] == 503
    assert subject not in str(problem)
    assert encrypted.keks["police"].hex() not in str(problem)


def test_a_key_given_to_a_plaintext_store_fails_closed(encrypted: Encrypted) -> None:
    url = encrypted.plain.urls["civil"]
    store = DepartmentStore(DEPARTMENTS["civil"], url, kek=secrets.token_bytes(16))
    try:
        with pytest.raises(AtRestKeyError, match="not encrypted"):
            store.blind_index()
        with pytest.raises(AtRestKeyError, match="plaintext rows"):
            store.create_schema()
    finally:
        store.dispose()


def _swap(store: DepartmentStore, table: str, a: Any, b: Any) -> None:
    t = store.department.table(table)
    key = SEALED_TABLES[store.department.name][table].key
    with store.engine.begin() as conn:
        blob_a = conn.execute(select(t.c[SEALED]).where(t.c[key] == a)).scalar_one()
        blob_b = conn.execute(select(t.c[SEALED]).where(t.c[key] == b)).scalar_one()
        conn.execute(update(t).where(t.c[key] == a).values({SEALED: blob_b}))
        conn.execute(update(t).where(t.c[key] == b).values({SEALED: blob_a}))


def _open(store: DepartmentStore, table: str, row_key: Any) -> dict[str, str | None]:
    keys = store.at_rest()
    assert keys is not None
    sealed = SEALED_TABLES[store.department.name][table]
    t = store.department.table(table)
    with store.connect() as conn:
        blob = conn.execute(select(t.c[SEALED]).where(t.c[sealed.key] == row_key)).scalar_one()
    return keys.open_row(sealed, row_key, bytes(blob))


def test_ciphertexts_are_bound_to_their_row(encrypted: Encrypted, model: Population) -> None:
    store = encrypted.store("health")
    try:
        first, second = _open(store, "births", 1), _open(store, "births", 2)
        assert first["child_id"] == model.id_number[model.child[0]]
        assert first["child_id"] != second["child_id"]
        _swap(store, "births", 1, 2)
        for row in (1, 2):
            with pytest.raises(ValueError, match="decryption failed"):
                _open(store, "births", row)
        _swap(store, "births", 1, 2)  # swapped back, both open again
        assert _open(store, "births", 1) == first
    finally:
        store.dispose()


def test_a_ciphertext_moved_to_another_table_fails(encrypted: Encrypted) -> None:
    """employment and social_insurance seal the same column list under the same key."""
    store = encrypted.store("hrss")
    try:
        employment = store.department.table("employment")
        insurance = store.department.table("social_insurance")
        with store.engine.begin() as conn:
            blob = conn.execute(
                select(employment.c[SEALED]).where(employment.c.id == 1)
            ).scalar_one()
            saved = conn.execute(
                select(insurance.c[SEALED]).where(insurance.c.id == 1)
            ).scalar_one()
            conn.execute(update(insurance).where(insurance.c.id == 1).values({SEALED: blob}))
        with pytest.raises(ValueError):
            _open(store, "social_insurance", 1)
        with store.engine.begin() as conn:
            conn.execute(update(insurance).where(insurance.c.id == 1).values({SEALED: saved}))
        assert _open(store, "social_insurance", 1)["person_id"]
    finally:
        store.dispose()


@pytest.mark.slow
def test_rotation_crashes_midway_and_resumes(
    encrypted: Encrypted, model: Population, expected: dict[str, list[Tri]]
) -> None:
    calls = _calls(model)["police"]
    store = encrypted.store("police")
    reader = encrypted.store("police")  # an adapter running through the rotation
    batches = 0

    def crash_after_two(table: str, rows: int) -> None:
        nonlocal batches
        batches += 1
        if batches == 2:
            raise Crash

    try:
        before = key_usage(store)
        (old,) = before
        with pytest.raises(Crash):
            rotate_data_key(store, batch=500, on_batch=crash_after_two)
        mixed = key_usage(store)
        assert set(mixed) == {old, old + 1}, "half-rotated: rows under both keys"
        assert sum(mixed.values()) == sum(before.values())
        assert _answers(reader, calls) == expected["police"]
        for row_key in (1, 700, 1500):  # every row opens, whichever key it names
            assert _open(reader, "registrations", row_key)["person_id"]

        resumer = encrypted.store("police")  # a new process: nothing carried over
        try:
            report = rotate_data_key(resumer, batch=500)
        finally:
            resumer.dispose()
        assert report.resumed and report.to_key == old + 1
        assert report.retired == [old] and report.remaining == {}
        assert key_usage(store) == {old + 1: sum(before.values())}
        with store.connect() as conn:
            state = read_state(conn, store.department.table("meta"))
        assert state is not None and state.rotation is None
        assert state.data[old] == {"state": "retired"}  # wrapped key destroyed
        assert _answers(reader, calls) == expected["police"]
        assert _open(reader, "registrations", 1500)["person_id"]
    finally:
        store.dispose()
        reader.dispose()


def test_index_key_rotation_keeps_answers_even_for_a_stale_reader(
    encrypted: Encrypted, model: Population, expected: dict[str, list[Tri]]
) -> None:
    calls = _calls(model)["health"]
    stale = encrypted.store("health")
    stale_index = stale.blind_index()  # loaded before the rotation, kept in memory
    store = encrypted.store("health")
    try:
        epoch = rotate_index_key(store, batch=300)
        assert epoch == stale_index.epoch + 1
        assert stale.blind_index() is stale_index  # still the old key in memory ...
        assert _answers(stale, calls) == expected["health"]  # ... yet right answers
        assert stale.blind_index().epoch == epoch
    finally:
        stale.dispose()
        store.dispose()


def test_kek_rotation_rewraps_and_the_old_kek_stops_working(
    encrypted: Encrypted, tmp_path: Path
) -> None:
    name = "medins"
    path = kek_path(tmp_path, name)
    path.parent.mkdir(parents=True)
    path.write_text(encrypted.keks[name].hex())
    store = encrypted.store(name)
    try:
        rotate_kek(store, tmp_path)
    finally:
        store.dispose()
    new = bytes.fromhex(path.read_text())
    assert new != encrypted.keks[name]
    assert path.stat().st_mode & 0o777 == 0o600
    assert not path.with_suffix(".kek.next").exists()
    old_store = encrypted.store(name)
    new_store = encrypted.store(name, new)
    try:
        with pytest.raises(AtRestKeyError):
            old_store.at_rest()
        assert new_store.at_rest() is not None
    finally:
        old_store.dispose()
        new_store.dispose()
    encrypted.keks[name] = new


def test_keys_and_id_numbers_stay_out_of_logs_and_reprs(
    encrypted: Encrypted, model: Population, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.INFO, logger="sqlalchemy.engine")  # SQL echo with parameters
    url = (
        encrypted.urls["civil"].replace("civil", "civil_logs")
        if encrypted.dialect == "sqlite"
        else None
    )
    store = encrypted.store("civil")
    try:
        if url is not None:  # a fresh ingest, logged
            _load(url, "civil", encrypted.keks["civil"], model)
        _answers(store, _calls(model)["civil"][:50])
        rotate_data_key(store, batch=200)
        rotate_index_key(store)
        keys = store.at_rest()
        assert keys is not None
        with store.connect() as conn:
            state = read_state(conn, store.department.table("meta"))
        secrets_hex = [encrypted.keks["civil"].hex(), keys.index_key.hex()]
        secrets_hex += [k.hex() for k in keys.data.values()]
        shown = caplog.text + repr(keys) + repr(state) + repr(keys.index) + repr(store)
        for secret in secrets_hex:
            assert secret not in shown and secret.upper() not in shown
        assert not set(ID.findall(shown)) & set(model.id_number.tolist())
        assert "SELECT" in caplog.text and "UPDATE" in caplog.text  # the echo was on
        assert isinstance(state, KeyState)
    finally:
        store.dispose()


def test_encrypting_a_plaintext_store_in_place(
    small_population: Generated, model: Population, tmp_path: Path
) -> None:
    """Conversion in place (SQLite: a file copy of the generated store; the conversion's
    SQL is dialect-neutral and PostgreSQL stores are encrypted by ``_load`` above)."""
    plain = DepartmentStore(DEPARTMENTS["hrss"], small_population.urls["hrss"])
    try:
        want = _answers(plain, _calls(model)["hrss"])
    finally:
        plain.dispose()
    source = Path(make_url(small_population.urls["hrss"]).database or "")
    with sqlite3.connect(source) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    copy = tmp_path / "hrss.db"
    shutil.copy(source, copy)
    kek = secrets.token_bytes(16)
    store = DepartmentStore(DEPARTMENTS["hrss"], f"sqlite:///{copy}", kek=kek)
    try:
        assert encrypt_store(store) is True
        assert encrypt_store(store) is False  # once
        assert _answers(store, _calls(model)["hrss"]) == want
    finally:
        store.dispose()
    people = set(model.id_number.tolist())
    for _, _, value in _raw_values("sqlite", f"sqlite:///{copy}"):
        if isinstance(value, str):
            assert not set(ID.findall(value)) & people


# --- the audit vault ---------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def audit_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'audit.db'}"
    url: str = request.getfixturevalue("pg_scratch_url")
    engine = create_engine(url)
    reset_chain(engine, "audit")
    engine.dispose()
    return url


def test_vault_rotation_crashes_midway_and_resumes(audit_url: str, tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    keys = VaultKeys(keys_dir, refresh=0.0)
    log = AuditLog(audit_url, Pseudonymizer(b"p" * 32, keys), origin="o", create=True).open()
    people = [f"11010519900101{i:03d}X" for i in range(60)]
    try:
        for person in people:
            log.append(
                {"kind": "check", "time": "2026-06-30T00:00:00Z", "claim": "c"}, subject_id=person
            )
        pseudonyms = [log.pseudonyms.pseudonym(p) for p in people]
        assert vault_key_usage(audit_url) == {0: 60}  # the original, header-less format
        batches = 0

        def crash(rows: int) -> None:
            nonlocal batches
            batches += 1
            if batches == 2:
                raise Crash

        with pytest.raises(Crash):
            rotate_vault(audit_url, keys, batch=20, on_batch=crash)
        assert vault_key_usage(audit_url) == {0: 20, 1: 40}
        log.append(
            {"kind": "check", "time": "2026-06-30T00:00:00Z", "claim": "c"},
            subject_id="110105199001010999",
        )
        assert [log.reveal(p) for p in pseudonyms] == people

        report = rotate_vault(audit_url, VaultKeys(keys_dir, refresh=0.0), batch=20)
        assert report.resumed and report.key_id == 1
        assert report.retired == [0] and report.remaining == {}
        assert vault_key_usage(audit_url) == {1: 61}
        assert not (keys_dir / "vault.secret").exists()
        assert (keys_dir / "vault-1.secret").stat().st_mode & 0o777 == 0o600
        assert [log.reveal(p) for p in pseudonyms] == people
        key = bytes.fromhex((keys_dir / "vault-1.secret").read_text())
        assert key.hex() not in repr(log.pseudonyms) + repr(keys)
    finally:
        log.close()


# --- the command line --------------------------------------------------------------------


def test_keys_cli_encrypts_rotates_and_fails_closed(
    small_population: Generated, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tongban.cli import main

    data = tmp_path / "data"
    (data / "departments").mkdir(parents=True)
    source = Path(make_url(small_population.urls["medins"]).database or "")
    with sqlite3.connect(source) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    shutil.copy(source, data / "departments" / "medins.db")
    args = ["--data-dir", str(data)]
    assert main(["keys", "encrypt", "--department", "medins", *args]) == 0
    kek = kek_path(data / "keys", "medins")
    assert kek.stat().st_mode & 0o777 == 0o600
    assert kek.parent.stat().st_mode & 0o777 == 0o700
    assert main(["keys", "rotate", "--department", "medins", *args]) == 0
    capsys.readouterr()
    assert main(["keys", "status", *args]) == 0
    status = json.loads(capsys.readouterr().out)["departments"]["medins"]
    assert status["data_keys"] == {"1": "retired", "2": "current"}
    assert status["rows_by_key_id"] == {"2": SMALL_POPULATION}
    secret = kek.read_text().strip()
    kek.write_text(secrets.token_hex(16))
    assert main(["keys", "rotate", "--department", "medins", *args]) == 1
    err = capsys.readouterr().err
    assert "/problems/store-keys" in err and secret not in err
