"""Finding 7: no plaintext left in the files of a store encrypted in place.

The attack: a raw-byte scan of the database files (not a query: the bytes on disk, free
pages, dead tuples and the SQLite write-ahead log included) for the ID numbers of the
population, after ``encrypt_store`` converted a plaintext store in place, and for the old
ciphertexts after a data-key rotation. Before the fix the demo's stores held 13 ID numbers
in freed b-tree pages. On SQLite (the file and its ``-wal``) and on PostgreSQL (every file
of the database's directory; the server-wide WAL is a documented residual).
"""

from __future__ import annotations

import re
import secrets
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from tongban.adapters.at_rest import SEALED
from tongban.adapters.departments import DEPARTMENTS
from tongban.adapters.rekey import encrypt_store, rotate_data_key
from tongban.adapters.store import DepartmentStore
from tongban.adapters.synthetic.population import REFERENCE_DATE, Population, build_population

from .conftest import PG_URL, SMALL_POPULATION, SMALL_SEED
from .test_at_rest import _load

ID_SHAPED = re.compile(rb"\d{17}[\dX]")
# The departments the outside tester found plaintext in, and police (the most rows).
SCANNED = ("health", "civil", "medins", "police")


@dataclass
class Site:
    dialect: str
    url: str
    files: list[Path]  # what a raw-byte scan reads, found again after each step


@pytest.fixture(scope="module")
def model() -> Population:
    return build_population(SMALL_POPULATION, SMALL_SEED, REFERENCE_DATE)


def _pg_files(url: str) -> list[Path]:
    engine = create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            # Every dirty page on disk first: the scan reads what the files hold, not
            # what the server has not written yet.
            conn.execute(text("CHECKPOINT"))
            data = Path(conn.execute(text("SHOW data_directory")).scalar_one())
            oid = conn.execute(
                text("SELECT oid FROM pg_database WHERE datname = current_database()")
            ).scalar_one()
    finally:
        engine.dispose()
    return sorted(p for p in (data / "base" / str(oid)).iterdir() if p.is_file())


def _files(site: Site) -> list[Path]:
    if site.dialect == "sqlite":
        db = Path(make_url(site.url).database or "")
        return [p for p in (db, db.with_name(db.name + "-wal")) if p.exists()]
    return _pg_files(site.url)


def _scan(site: Site, needles: set[bytes]) -> set[bytes]:
    """The needles found anywhere in the site's files, read as bytes."""
    found: set[bytes] = set()
    for path in _files(site):
        data = path.read_bytes()
        found |= {m for m in ID_SHAPED.findall(data) if m in needles}
        found |= {n for n in needles if not ID_SHAPED.fullmatch(n) and n in data}
    return found


@pytest.fixture(params=["sqlite", "postgresql"])
def sites(
    request: pytest.FixtureRequest, tmp_path: Path, model: Population
) -> Iterator[dict[str, Site]]:
    admin = None
    names: list[str] = []
    out: dict[str, Site] = {}
    if request.param == "postgresql":
        admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    tag = secrets.token_hex(3)
    try:
        for dept in SCANNED:
            if admin is None:
                url = f"sqlite:///{tmp_path / f'{dept}.db'}"
            else:
                name = f"tongban_test_{tag}_bytes_{dept}"
                with admin.connect() as conn:
                    conn.execute(text(f'CREATE DATABASE "{name}"'))
                names.append(name)
                url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
            _load(url, dept, None, model)
            out[dept] = Site(request.param, url, [])
        yield out
    finally:
        if admin is not None:
            with admin.connect() as conn:
                for name in names:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()


def test_encrypting_in_place_leaves_no_id_number_on_disk(
    sites: dict[str, Site], model: Population
) -> None:
    people = {n.encode("ascii") for n in model.id_number.tolist()}
    for dept, site in sites.items():
        before = _scan(site, people)
        assert len(before) > 100, f"{dept}: the scan finds the plaintext store's numbers"
        store = DepartmentStore(DEPARTMENTS[dept], site.url, kek=secrets.token_bytes(16))
        try:
            assert encrypt_store(store) is True
        finally:
            store.dispose()
        left = _scan(site, people)
        assert not left, f"{dept}: {len(left)} ID numbers left in the files' bytes"


def test_a_rotation_leaves_no_old_ciphertext_on_disk(sites: dict[str, Site]) -> None:
    site = sites["police"]
    kek = secrets.token_bytes(16)
    store = DepartmentStore(DEPARTMENTS["police"], site.url, kek=kek)
    try:
        encrypt_store(store)
        sealed = next(iter(store.sealed_tables.values()))
        table = store.department.table(sealed.name)
        with store.engine.connect() as conn:
            old = [bytes(b) for (b,) in conn.execute(select(table.c[SEALED]).limit(40))]
        assert old and all(len(b) >= 32 for b in old)
        # Long enough to be unique: a slice from the middle of each sealed row.
        needles = {b[8:40] for b in old}
        assert _scan(site, needles) == needles, "the scan finds the current ciphertexts"
        report = rotate_data_key(store)
        assert report.rows > 0 and not report.remaining
        assert report.scrubbed
    finally:
        store.dispose()
    assert not _scan(site, needles), "old ciphertexts (under a retired key) left on disk"


def test_sqlite_scrub_empties_the_write_ahead_log(sites: dict[str, Site]) -> None:
    site = sites["civil"]
    if site.dialect != "sqlite":
        pytest.skip("SQLite's write-ahead log")
    store = DepartmentStore(DEPARTMENTS["civil"], site.url, kek=secrets.token_bytes(16))
    try:
        encrypt_store(store)
    finally:
        store.dispose()
    db = Path(make_url(site.url).database or "")
    wal = db.with_name(db.name + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    with sqlite3.connect(db) as conn:  # the file is a sound database after the VACUUM
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("PRAGMA freelist_count").fetchone() == (0,)
