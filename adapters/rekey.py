"""Key changes on a department store encrypted at rest: rotation, conversion, KEK rollover.

- :func:`rotate_data_key` re-seals every row under a new data key, in batches. Each batch
  and the cursor that says how far it got commit together, so a crash loses at most one
  batch of work and :func:`rotate_data_key` called again resumes there. Every row stays
  readable throughout: it names the key it was sealed with, and no key is retired until a
  full pass finds no row still under it.
- :func:`rotate_index_key` recomputes every blind index under a new index key. Lookups
  need all tokens from one key, so this runs in one transaction: readers see the old index
  until it commits, then the new one (the evaluator notices the epoch change).
- :func:`encrypt_store` converts a plaintext store in place, also in one transaction.
- :func:`rotate_kek` re-wraps the store's keys under a new KEK; no row changes.

Each of them ends with :func:`scrub` (:func:`tongban.primitives.db.scrub_free_space`): the
rewritten rows' old bytes, plaintext after a conversion, ciphertexts and wrapped keys after a
rotation, would otherwise stay in the files' free pages, where a raw-byte scan finds them.

Progress is reported through ``progress`` (a :class:`rich.progress.Progress`), never the
keys or the values.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.progress import Progress, TaskID
from sqlalchemy import Connection, Table, bindparam, func, select, text, update

from tongban.primitives.db import INCOMPLETE, scrub_free_space

from .at_rest import (
    SEALED,
    AtRest,
    AtRestKeyError,
    KeyState,
    SealedTable,
    kek_path,
    key_id,
    load_kek,
    read_state,
    text_key_id,
    write_key_file,
    write_state,
)
from .store import DepartmentStore

__all__ = [
    "RotationReport",
    "encrypt_store",
    "key_usage",
    "rotate_data_key",
    "rotate_index_key",
    "rotate_kek",
    "scrub",
    "store_count",
]

log = logging.getLogger("tongban.keys")
_QUARANTINE = "quarantine"
_INSERT_INTO = re.compile(r"INSERT INTO (\w+)", re.IGNORECASE)


@dataclass
class RotationReport:
    department: str
    to_key: int
    rows: int = 0
    batches: int = 0
    resumed: bool = False
    retired: list[int] = field(default_factory=list)
    remaining: dict[int, int] = field(default_factory=dict)
    scrubbed: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "department": self.department,
            "key_id": self.to_key,
            "rows_resealed": self.rows,
            "batches": self.batches,
            "resumed": self.resumed,
            "retired_key_ids": self.retired,
            "rows_under_old_keys": self.remaining,
        }


def _keys(store: DepartmentStore) -> tuple[bytes, AtRest]:
    kek = store.kek
    keys = store.at_rest(reload=True)
    if kek is None or keys is None:
        raise AtRestKeyError(f"{store.department.name} store is not encrypted at rest")
    return kek, keys


def _tables(store: DepartmentStore) -> list[str]:
    return [*store.sealed_tables, _QUARANTINE]


def _total(store: DepartmentStore) -> int:
    return sum(store.count(t) for t in _tables(store))


def _task(progress: Progress | None, description: str, total: int) -> TaskID | None:
    return None if progress is None else progress.add_task(description, total=total)


def _advance(progress: Progress | None, task: TaskID | None, n: int) -> None:
    if progress is not None and task is not None:
        progress.advance(task, n)


def _batches(
    conn: Connection, t: Table, key: str, value: str, after: Any, size: int
) -> Iterator[Sequence[Any]]:
    """Rows (key, value) in key order after ``after``, ``size`` at a time."""
    while True:
        stmt = select(t.c[key], t.c[value]).order_by(t.c[key]).limit(size)
        if after is not None:
            stmt = stmt.where(t.c[key] > after)
        rows = conn.execute(stmt).all()
        if not rows:
            return
        yield rows
        after = rows[-1][0]


def _row_kid(table: str, value: Any) -> int | None:
    if value is None:
        return None
    if table == _QUARANTINE:
        return text_key_id(value) if value.startswith("sm4gcm:") else None
    return key_id(bytes(value))


def key_usage(store: DepartmentStore) -> dict[int, int]:
    """How many rows each data key seals (a full scan, no decryption)."""
    usage: dict[int, int] = {}
    with store.connect() as conn:
        for name in _tables(store):
            t = store.department.table(name)
            sealed = store.sealed_tables.get(name)
            key, value = ("id", "record") if sealed is None else (sealed.key, SEALED)
            for rows in _batches(conn, t, key, value, None, 20_000):
                for _, v in rows:
                    kid = _row_kid(name, v)
                    if kid is not None:
                        usage[kid] = usage.get(kid, 0) + 1
    return usage


def rotate_data_key(
    store: DepartmentStore,
    *,
    batch: int = 5000,
    progress: Progress | None = None,
    on_batch: Callable[[str, int], None] | None = None,
) -> RotationReport:
    """Re-seal every row under a new data key (or resume the rotation under way), then
    retire the old keys once no row uses them. ``on_batch(table, rows)`` runs after each
    committed batch (tests use it to crash in the middle)."""
    kek, _ = _keys(store)
    meta = store.department.table("meta")
    with store.engine.begin() as conn:
        state = read_state(conn, meta)
        assert state is not None
        resumed = state.rotation is not None
        if state.rotation is None:
            kid = state.add_data_key(kek, current=True)
            state.rotation = {"to": kid, "table": None, "after": None}
            write_state(conn, meta, state)
    rotation = dict(state.rotation or {})
    to = int(rotation["to"])
    keys = store.at_rest(reload=True)
    assert keys is not None
    report = RotationReport(store.department.name, to, resumed=resumed)
    task = _task(progress, f"re-seal {store.department.name} → key {to}", _total(store))
    tables = _tables(store)
    start = tables.index(rotation["table"]) if rotation["table"] in tables else 0
    for name in tables[:start]:
        _advance(progress, task, store.count(name))
    for i, name in enumerate(tables[start:], start):
        after = rotation["after"] if i == start else None
        _reseal_table(store, keys, name, to, after, batch, report, progress, task, on_batch)
    usage = key_usage(store)
    report.remaining = {k: n for k, n in usage.items() if k != to}
    with store.engine.begin() as conn:
        state = read_state(conn, meta)
        assert state is not None
        if not report.remaining:
            # No row names an old key: destroy the wrapped copies (crypto-shredding).
            for kid in state.live():
                if kid != to:
                    state.retire(kid)
                    report.retired.append(kid)
            state.rotation = None
        else:  # rows sealed meanwhile by a writer with old keys: the next run goes again
            state.rotation = {"to": to, "table": None, "after": None}
        write_state(conn, meta, state)
    store.at_rest(reload=True)
    report.scrubbed = scrub(store)
    return report


def scrub(store: DepartmentStore) -> str:
    """Compact the store so that no rewritten row's old bytes remain in its files."""
    tables = [t.name for t in store.department.metadata.sorted_tables]
    done = scrub_free_space(store.engine, tables)
    if done == INCOMPLETE:
        log.warning("%s store: %s", store.department.name, done)
    return done


def _reseal_table(
    store: DepartmentStore,
    keys: AtRest,
    name: str,
    to: int,
    after: Any,
    batch: int,
    report: RotationReport,
    progress: Progress | None,
    task: TaskID | None,
    on_batch: Callable[[str, int], None] | None,
) -> None:
    t = store.department.table(name)
    meta = store.department.table("meta")
    sealed = store.sealed_tables.get(name)
    key, column = ("id", "record") if sealed is None else (sealed.key, SEALED)
    stmt = update(t).where(t.c[key] == bindparam("_k")).values({column: bindparam("_v")})
    with store.engine.connect() as conn:
        if after is not None:
            done = select(func.count()).select_from(t).where(t.c[key] <= after)
            _advance(progress, task, int(conn.execute(done).scalar_one()))
            conn.commit()
        while True:
            with conn.begin():
                q = select(t.c[key], t.c[column]).order_by(t.c[key]).limit(batch)
                if after is not None:
                    q = q.where(t.c[key] > after)
                rows = conn.execute(q).all()
                if not rows:
                    return
                after = rows[-1][0]
                todo = [(k, v) for k, v in rows if v is not None and _row_kid(name, v) != to]
                changes = _reseal(keys, name, sealed, todo)
                if changes:
                    conn.execute(stmt, changes)
                state = read_state(conn, meta)
                assert state is not None
                state.rotation = {"to": to, "table": name, "after": after}
                write_state(conn, meta, state)
            report.rows += len(changes)
            report.batches += 1
            _advance(progress, task, len(rows))
            if on_batch is not None:
                on_batch(name, len(rows))


def _reseal(
    keys: AtRest, name: str, sealed: SealedTable | None, rows: list[tuple[Any, Any]]
) -> list[dict[str, Any]]:
    if sealed is None:  # the quarantine: one sealed text per record
        return [
            {"_k": k, "_v": keys.seal_text(name, k, keys.open_text(name, k, v))} for k, v in rows
        ]
    opened = [keys.open_row(sealed, k, bytes(v)) for k, v in rows]
    blobs = keys.seal_rows(
        sealed,
        [k for k, _ in rows],
        [[o[c] for o in opened] for c in sealed.columns],
    )
    return [{"_k": k, "_v": b} for (k, _), b in zip(rows, blobs, strict=True)]


# --- index key and conversion: one transaction each -------------------------------------


def rotate_index_key(
    store: DepartmentStore, *, batch: int = 5000, progress: Progress | None = None
) -> int:
    """Recompute every blind index under a new index key; returns the new index key id.
    All or nothing: a crash leaves the old index in place, and running it again starts
    over."""
    kek, old = _keys(store)
    meta = store.department.table("meta")
    task = _task(progress, f"re-index {store.department.name}", _total(store))
    with store.engine.begin() as conn:
        state = read_state(conn, meta)
        assert state is not None
        state.new_index_key(kek)
        new = state.unwrap(kek)
        _retokenize(store, conn, old, new, batch, progress, task)
        write_state(conn, meta, state)
    store.at_rest(reload=True)
    scrub(store)
    return state.index_id


def encrypt_store(
    store: DepartmentStore, *, batch: int = 5000, progress: Progress | None = None
) -> bool:
    """Convert a plaintext store to encryption at rest under ``store.kek``, in one
    transaction. False (nothing done) if it is encrypted already."""
    kek = store.kek
    if kek is None:
        raise AtRestKeyError(f"{store.department.name}: no key-encryption key to encrypt with")
    meta = store.department.table("meta")
    task = _task(progress, f"encrypt {store.department.name}", _total(store))
    with store.engine.begin() as conn:
        if read_state(conn, meta) is not None:
            return False
        state = KeyState.new(store.department.name, kek)
        new = state.unwrap(kek)
        _retokenize(store, conn, None, new, batch, progress, task)
        write_state(conn, meta, state)
    store.at_rest(reload=True)
    scrub(store)  # the plaintext rows' old bytes: freed pages, dead tuples, the WAL
    return True


def _retokenize(
    store: DepartmentStore,
    conn: Connection,
    old: AtRest | None,
    new: AtRest,
    batch: int,
    progress: Progress | None,
    task: TaskID | None,
) -> None:
    """Tokens under ``new.index`` for every sensitive column, from the sealed values (or,
    with ``old`` None, from the plaintext, which is sealed on the way)."""
    dept = store.department
    for sealed in store.sealed_tables.values():
        _retokenize_table(conn, dept.table(sealed.name), sealed, old, new, batch)
        _advance(progress, task, store_count(conn, dept.table(sealed.name)))
    _requarantine(store, conn, old, new, progress, task)
    for statement in dept.derive:  # derived tables copy tokens: build them again
        target = _INSERT_INTO.search(statement)
        if target:
            conn.execute(dept.table(target.group(1)).delete())
        conn.execute(text(statement))


def store_count(conn: Connection, t: Table) -> int:
    return int(conn.execute(select(func.count()).select_from(t)).scalar_one())


def _retokenize_table(
    conn: Connection,
    t: Table,
    sealed: SealedTable,
    old: AtRest | None,
    new: AtRest,
    batch: int,
) -> None:
    values: dict[str, Any] = {c: bindparam(f"_{c}") for c in sealed.columns}
    if old is None:
        values[SEALED] = bindparam("_sealed")
    stmt = update(t).where(t.c[sealed.key] == bindparam("_k")).values(values)
    cols = [t.c[sealed.key], t.c[SEALED], *(t.c[c] for c in sealed.columns)]
    after = None
    while True:
        q = select(*cols).order_by(t.c[sealed.key]).limit(batch)
        if after is not None:
            q = q.where(t.c[sealed.key] > after)
        rows = conn.execute(q).all()
        if not rows:
            return
        after = rows[-1][0]
        keys = [r[0] for r in rows]
        params: list[dict[str, Any]] = [{"_k": k} for k in keys]
        if old is None:
            plain = [[r[2 + i] for r in rows] for i in range(len(sealed.columns))]
            for p, b in zip(params, new.seal_rows(sealed, keys, plain), strict=True):
                p["_sealed"] = b
        else:
            opened = [old.open_row(sealed, r[0], bytes(r[1])) for r in rows]
            plain = [[o[c] for o in opened] for c in sealed.columns]
        for c, domain, column in zip(sealed.columns, sealed.domains, plain, strict=True):
            for p, token in zip(params, new.index.tokens(column, domain), strict=True):
                p[f"_{c}"] = token
        conn.execute(stmt, params)


def _requarantine(
    store: DepartmentStore,
    conn: Connection,
    old: AtRest | None,
    new: AtRest,
    progress: Progress | None,
    task: TaskID | None,
) -> None:
    """The quarantine index (``quarantine_subjects``) rebuilt from the quarantined records,
    the way ingest wrote it."""
    dept = store.department
    q, qs = dept.table(_QUARANTINE), dept.table("quarantine_subjects")
    subjects: list[dict[str, Any]] = []
    sealed_records: list[dict[str, Any]] = []
    records = conn.execute(select(q.c.id, q.c.table_name, q.c.record)).all()
    for qid, table, record in records:
        plain = record if old is None else old.open_text(_QUARANTINE, qid, record)
        if old is None:
            sealed_records.append({"_k": qid, "_v": new.seal_text(_QUARANTINE, qid, plain)})
        fields = json.loads(plain)
        for column in dept.id_columns.get(table, ()):
            value = fields.get(column)
            if value:
                subjects.append(
                    {"quarantine_id": qid, "table_name": table, "id_number": new.index.token(value)}
                )
    _advance(progress, task, len(records))
    if sealed_records:
        conn.execute(
            update(q).where(q.c.id == bindparam("_k")).values(record=bindparam("_v")),
            sealed_records,
        )
    conn.execute(qs.delete())
    if subjects:
        conn.execute(qs.insert(), subjects)


# --- the key-encryption key --------------------------------------------------------------


def rotate_kek(store: DepartmentStore, keys_dir: Path) -> None:
    """Wrap the store's keys under a new KEK. The new KEK is written beside the old one
    first (``.kek.next``), the store re-wrapped, then the new file replaces the old: a crash
    at any point leaves a KEK that opens the store, and running this again finishes."""
    name = store.department.name
    current = kek_path(keys_dir, name)
    following = current.with_suffix(".kek.next")
    old = load_kek(keys_dir, name)
    if old is None:
        raise AtRestKeyError(f"{name}: no key-encryption key to rotate")
    nxt = _read_next(following)
    if nxt is None:
        nxt = os.urandom(16)
        write_key_file(following, nxt)
    meta = store.department.table("meta")
    with store.engine.begin() as conn:
        state = read_state(conn, meta)
        if state is None:
            raise AtRestKeyError(f"{name} store is not encrypted at rest")
        try:
            state.unwrap(nxt)  # a previous run got as far as the store already
        except AtRestKeyError:
            write_state(conn, meta, state.rewrap(old, nxt))
    scrub(store)  # the keys wrapped under the old KEK, in the meta table's old pages
    os.replace(following, current)


def _read_next(path: Path) -> bytes | None:
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        return None
