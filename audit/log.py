"""The durable audit log: group-committed appends, an in-memory Merkle tree, proofs.

Appenders hand their entry to one writer thread and wait. The writer takes everything
queued, writes it in ONE transaction, and only after the commit adds the leaves to the
tree and releases the waiters — so ``append()`` returns an index only for an entry that
is durable, and a crash leaves the whole batch or none of it. Each entry carries its own
index inside the hashed bytes, so a reordering is caught at the exact position.
Several processes may share one store: PostgreSQL serialises writers with an advisory
lock, SQLite with its write lock plus a retry, and each process catches up on the
others' entries before adding its own leaves.

The log's origin (the name in every checkpoint, which witnesses and verifiers check) is
fixed when the log is created: the first :meth:`AuditLog.open` stores it in
``audit_meta``, and every later open uses the stored one. A different configured origin
(a gateway restarted on another host or port) is ignored with a warning rather than
refused, so a restart keeps serving and every checkpoint keeps naming one log; a log from
before the origin was stored takes the origin its first checkpoint names.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, event, func, insert, inspect, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from tongban.primitives.db import is_memory_sqlite, make_engine
from tongban.primitives.errors import StoreUnavailable, TongbanError

from . import schema
from .canonical import canonical_bytes, check_values
from .merkle import MerkleTree, leaf_hash
from .note import NoteError, SignedNote
from .rows import FILTER_FIELDS, ROW_FIELDS, check_row, field_value
from .vault import Pseudonymizer

__all__ = [
    "ORIGIN_KEY",
    "AuditBehindWitnesses",
    "AuditIntegrityError",
    "AuditLog",
    "PreparedEntry",
    "StoredEntry",
    "read_origin",
    "stored_origin",
]

log = logging.getLogger("tongban.audit")
_FILTER_FIELDS = FILTER_FIELDS
_ROW_FIELDS = ROW_FIELDS
_PG_LOCK = 0x7B_A0D17  # advisory lock id shared by every gateway process
_SQLITE_RETRIES = 20
ORIGIN_KEY = "origin"  # audit_meta key of the log's origin


class AuditIntegrityError(TongbanError):
    """The stored log does not match what was signed: refuse to serve from it."""

    status = 500
    slug = "audit-integrity"
    title = "The audit log failed its integrity check"


class AuditBehindWitnesses(AuditIntegrityError):
    """A witness cosigned a larger tree, or another root, than this log holds: entries
    were cut or rewritten. The gateway answers nothing until an operator restores the log
    (docs/operations.md, "The audit log behind its witnesses")."""

    status = 503
    slug = "audit-behind-witnesses"
    title = "The audit log is behind what its witnesses cosigned"


@dataclass(frozen=True, slots=True)
class PreparedEntry:
    """An entry encoded canonically, with a slot for the index the writer assigns: the
    appender does the JSON work, the single writer only splices in a number."""

    before: bytes
    after: bytes
    fields: Mapping[str, str | None]
    vault: tuple[str, bytes] | None

    @classmethod
    def make(cls, entry: Mapping[str, Any], vault: tuple[str, bytes] | None) -> PreparedEntry:
        if "index" in entry:
            raise ValueError("entry: 'index' is assigned by the log")
        if not isinstance(entry.get("kind"), str) or not isinstance(entry.get("time"), str):
            raise ValueError("entry: 'kind' and 'time' strings are required")
        check_values(entry)  # no floats, string keys
        # Sorted keys put "index" between the keys below and above it: encode both halves
        # canonically now and leave only the number for the writer.
        below = {k: v for k, v in entry.items() if k < "index"}
        above = {k: v for k, v in entry.items() if k > "index"}
        fields = {f: field_value(entry.get(f)) for f in _ROW_FIELDS}
        return cls(_inner(below), _inner(above), fields, vault)

    def render(self, index: int) -> bytes:
        middle = b'"index":%d' % index
        parts = [p for p in (self.before, middle, self.after) if p]
        return b"{" + b",".join(parts) + b"}"


def _inner(part: Mapping[str, Any]) -> bytes:
    """Canonical JSON of an object, without its braces."""
    return canonical_bytes(part)[1:-1]


@dataclass(frozen=True, slots=True)
class StoredEntry:
    index: int
    leaf_hash: bytes
    entry: dict[str, Any]


_STOP = object()


class _Waiter:
    """A one-shot hand-off between an appender and the writer. A bare lock is the
    cheapest blocking primitive CPython has; a Future's Condition costs several times
    more per wake-up, which matters with hundreds of appenders."""

    __slots__ = ("error", "indexes", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lock.acquire()
        self.indexes: list[int] = []
        self.error: BaseException | None = None

    def set(self, indexes: list[int] | None = None, error: BaseException | None = None) -> None:
        self.indexes = indexes or []
        self.error = error
        self.lock.release()

    def wait(self, timeout: float | None = None) -> list[int]:
        if not self.lock.acquire(timeout=-1 if timeout is None else timeout):
            # The store neither confirmed nor refused (a hung connection): answer nothing.
            # The write may still land later: an entry without an answer is allowed, an
            # answer without an entry never.
            raise StoreUnavailable("the audit store did not confirm the write in time")
        if self.error is not None:
            raise self.error
        return self.indexes


def stored_origin(conn: Connection) -> str | None:
    """The origin the log on ``conn`` was created with: the stored one, else (a log from
    before origins were stored) the origin of its first checkpoint; None for a new log."""
    tables = inspect(conn)
    if tables.has_table(schema.meta.name):
        value = conn.execute(
            select(schema.meta.c.value).where(schema.meta.c.key == ORIGIN_KEY)
        ).scalar()
        if value is not None:
            return str(value)
    if not tables.has_table(schema.checkpoints.name):
        return None
    first = conn.execute(
        select(schema.checkpoints.c.note).order_by(schema.checkpoints.c.size).limit(1)
    ).scalar()
    if first is None:
        return None
    try:
        return SignedNote.parse(first).checkpoint.origin
    except NoteError:  # a damaged note: the verifier reports it; the log names itself anew
        return None


def read_origin(url: str) -> str | None:
    """The origin of the log stored at ``url``, or None if there is no log there yet.
    Read-only: a SQLite file that does not exist is not created."""
    parsed = make_url(url)
    if (
        parsed.get_backend_name() == "sqlite"
        and parsed.database not in (None, "", ":memory:")
        and not Path(parsed.database).exists()
    ):
        return None
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return stored_origin(conn)
    except SQLAlchemyError as exc:
        raise StoreUnavailable("the audit store is unavailable") from exc
    finally:
        engine.dispose()


def _driver_sql(dialect: str) -> dict[str, str]:
    mark = "?" if dialect == "sqlite" else "%s"
    cols = ("idx", "leaf_hash", "entry", *_ROW_FIELDS)
    values = ", ".join([mark] * len(cols))
    entries = f"INSERT INTO audit_entries ({', '.join(cols)}) VALUES ({values})"  # noqa: S608
    if dialect == "sqlite":
        vault = "INSERT OR IGNORE INTO pseudonym_vault (pseudonym, id_number) VALUES (?, ?)"
    else:
        vault = (
            "INSERT INTO pseudonym_vault (pseudonym, id_number) VALUES (%s, %s) "
            "ON CONFLICT (pseudonym) DO NOTHING"
        )
    return {"entries": entries, "vault": vault}


def _manual_transactions(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # let SQLAlchemy's "begin" event issue BEGIN itself


def _begin_immediate(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


class AuditLog:
    def __init__(
        self,
        url: str,
        pseudonymizer: Pseudonymizer,
        *,
        origin: str,
        max_batch: int = 2000,
        wait_timeout: float | None = 30.0,
        startup_check: int | None = None,
        on_append: Callable[[int], None] | None = None,
        create: bool = False,
    ) -> None:
        self.url = url
        # create: open() migrates the store to the audit chain's head revision (tests and
        # the demo); otherwise it refuses a store that is not there (``tongban db upgrade``).
        self.create = create
        # Told how many entries each commit made durable (the gateway counts them in
        # tongban_audit_appends_total): every kind of entry, whoever appended it.
        self.on_append = on_append
        # Entries (newest first) re-hashed from their own bytes when the log opens; None
        # for all. The rest count through their stored leaf hashes (the checkpoint still
        # covers them; ``tongban audit verify`` re-hashes everything).
        self.startup_check = startup_check
        self.origin = origin  # as configured; open() replaces it by the stored one
        self.pseudonyms = pseudonymizer
        self.max_batch = max_batch
        self.wait_timeout = wait_timeout  # how long an appender waits for its commit
        # synchronous=FULL: an answer leaves only after its entry is on disk.
        self.engine: Engine = make_engine(url, synchronous="FULL", busy_ms=10_000)
        self.dialect = self.engine.dialect.name
        self._writes = self.engine
        if self.dialect == "sqlite":
            # Writers take SQLite's write lock when they begin, so two processes never both
            # read the same next index; readers keep their own engine and never wait.
            self._writes = make_engine(url, synchronous="FULL", busy_ms=10_000)
            event.listen(self._writes, "connect", _manual_transactions)
            event.listen(self._writes, "begin", _begin_immediate)
        self._tree = MerkleTree()
        self._tree_lock = threading.RLock()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._sql = _driver_sql(self.dialect)
        self._writer: threading.Thread | None = None
        self._state = threading.Lock()  # orders "is the log open?" with queueing

    # --- lifecycle --------------------------------------------------------------------

    def open(self) -> AuditLog:
        """Check the store's schema revision (or, made with ``create``, migrate it), fix or
        read the log's origin, rebuild the tree from the store, check it against the latest
        signed checkpoint, and start the writer."""
        from tongban.migrations import AUDIT, require_head, upgrade

        try:
            if self.create:
                upgrade(self.engine, AUDIT)
            else:  # by URL: a SQLite file that does not exist is refused, not made
                require_head(self.engine if is_memory_sqlite(self.url) else self.url, AUDIT)
            self._pin_origin()
            with self.engine.connect() as conn:
                self._load(conn)
        except SQLAlchemyError as exc:
            self._dispose()
            raise StoreUnavailable("the audit store is unavailable") from exc
        except TongbanError:  # refused (integrity, schema revision): no connection kept
            self._dispose()
            raise
        self._writer = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._writer.start()
        return self

    def _pin_origin(self) -> None:
        """Store the configured origin if the log has none yet (the first open of several
        racing processes wins), then use whatever is stored."""
        configured = self.origin
        with self._writes.begin() as conn:
            known = stored_origin(conn) or configured
            conn.execute(self._insert_ignore(schema.meta).values(key=ORIGIN_KEY, value=known))
            stored = str(
                conn.execute(
                    select(schema.meta.c.value).where(schema.meta.c.key == ORIGIN_KEY)
                ).scalar_one()
            )
        if stored != configured:
            log.warning(
                "audit log origin is %r, fixed when the log was created; the configured "
                "origin %r is ignored (witnesses must be configured with the stored one)",
                stored,
                configured,
            )
        self.origin = stored

    def close(self) -> None:
        with self._state:
            writer, self._writer = self._writer, None  # new appends are refused from here on
        if writer is not None:
            self._queue.put(_STOP)
            writer.join(timeout=10)
        # Anyone who queued behind the stop marker gets an answer, not a hang.
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                self._fail([item])
        self._dispose()

    def _dispose(self) -> None:
        self._writes.dispose()
        self.engine.dispose()

    def _load(self, conn: Connection) -> None:
        """Rebuild the tree from the entries' own bytes, checking every row (rows.py: the
        entry's index, its leaf hash, its query columns), then the latest checkpoint. Any
        fault refuses the open: a gateway never serves from a log it cannot vouch for."""
        t = schema.entries
        rows = conn.execution_options(yield_per=20_000).execute(
            select(t.c.idx, t.c.leaf_hash, t.c.entry, *(t.c[f] for f in _ROW_FIELDS)).order_by(
                t.c.idx
            )
        )
        count = int(conn.execute(select(func.count()).select_from(t)).scalar_one())
        full_from = 0 if self.startup_check is None else max(0, count - self.startup_check)
        hashes = bytearray()
        problem: str | None = None
        try:
            for expected, row in enumerate(rows):
                idx = row[0]
                if idx != expected:
                    problem = f"audit entry {expected} is missing"
                    break
                if idx < full_from:
                    hashes += row[1]
                    continue
                columns = dict(zip(_ROW_FIELDS, row[3:], strict=True))
                leaf, _doc, fault = check_row(idx, row[2], row[1], columns)
                if fault is not None:
                    problem = f"audit log: {fault}"
                    break
                hashes += leaf
        finally:
            rows.close()  # a server-side cursor (PostgreSQL) is closed before raising
        if problem is not None:
            raise AuditIntegrityError(problem)
        tree = MerkleTree.from_leaf_hashes(hashes)
        latest = self.latest_checkpoint(conn)
        if latest is not None:
            cp = latest.checkpoint
            if cp.size > tree.size:
                raise AuditIntegrityError(f"audit log truncated: entry {tree.size} is missing")
            if tree.root(cp.size) != cp.root:
                raise AuditIntegrityError("audit log does not match its latest checkpoint")
        with self._tree_lock:
            self._tree = tree

    # --- appending --------------------------------------------------------------------

    def prepare(self, entry: Mapping[str, Any], subject_id: str | None = None) -> PreparedEntry:
        """Replace the subject's ID number by its pseudonym and encode the entry."""
        vault = None
        if subject_id is not None:
            pseudonym = self.pseudonyms.pseudonym(subject_id)
            entry = {**entry, "subject": pseudonym}
            vault = (pseudonym, self.pseudonyms.seal(pseudonym, subject_id))
        return PreparedEntry.make(entry, vault)

    def append(self, entry: Mapping[str, Any], subject_id: str | None = None) -> int:
        """Append one entry; return its index once it is durable."""
        return self.append_prepared([self.prepare(entry, subject_id)])[0]

    def append_prepared(self, prepared: Sequence[PreparedEntry]) -> list[int]:
        """Append entries as consecutive indexes in one transaction (a batch check)."""
        done = _Waiter()
        with self._state:
            if self._writer is None:
                raise StoreUnavailable("the audit log is not open")
            self._queue.put((list(prepared), done))
        indexes = done.wait(self.wait_timeout)
        if self.on_append is not None:
            self.on_append(len(indexes))
        return indexes

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            batch = [item]
            stop = False
            while sum(len(p) for p, _ in batch) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                batch.append(nxt)
            try:
                self._commit(batch)
            except BaseException:  # the writer must outlive any single failure
                log.exception("audit writer failed a batch")
                self._fail(batch)
            if stop:
                return

    def _commit(self, batch: list[tuple[list[PreparedEntry], _Waiter]]) -> None:
        # The tree lock spans commit and tree update: a refresh() in between would add
        # the just-committed leaves itself, and then the writer would add them again.
        with self._tree_lock:
            self._commit_locked(batch)

    def _commit_locked(self, batch: list[tuple[list[PreparedEntry], _Waiter]]) -> None:
        flat = [p for prepared, _ in batch for p in prepared]
        integrity = (IntegrityError, self.engine.dialect.loaded_dbapi.IntegrityError)
        for attempt in range(_SQLITE_RETRIES):
            try:
                start, hashes = self._write(flat)
                break
            except integrity:
                # Another process took these indexes first: read its leaves and retry.
                if attempt == _SQLITE_RETRIES - 1:
                    self._fail(batch)
                    return
            except (SQLAlchemyError, self.engine.dialect.loaded_dbapi.Error):
                self._fail(batch)
                return
        with self._tree_lock:
            self._tree.extend(hashes)
        position = start
        for prepared, done in batch:
            done.set(list(range(position, position + len(prepared))))
            position += len(prepared)

    def _fail(self, batch: list[tuple[list[PreparedEntry], _Waiter]]) -> None:
        for _, done in batch:
            done.set(error=StoreUnavailable("the audit store refused the write"))

    def _write(self, flat: list[PreparedEntry]) -> tuple[int, list[bytes]]:
        with self._writes.begin() as conn:
            if self.dialect == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK})
            start = int(
                conn.execute(
                    select(func.coalesce(func.max(schema.entries.c.idx) + 1, 0))
                ).scalar_one()
            )
            self._catch_up(conn, start)
            rows: list[tuple[Any, ...]] = []
            hashes: list[bytes] = []
            vault_rows: list[tuple[str, bytes]] = []
            for offset, p in enumerate(flat):
                body = p.render(start + offset)
                h = leaf_hash(body)
                hashes.append(h)
                f = p.fields
                rows.append((start + offset, h, body.decode(), *(f[c] for c in _ROW_FIELDS)))
                if p.vault is not None:
                    vault_rows.append(p.vault)
            # Straight to the driver: per-row parameter processing in the SQL layer would
            # cost more than the insert itself.
            cur = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            cur.executemany(self._sql["entries"], rows)
            if vault_rows:
                cur.executemany(self._sql["vault"], vault_rows)
            cur.close()
        return start, hashes

    def _insert_ignore(self, table: Any) -> Any:
        if self.dialect == "postgresql":
            return pg_insert(table).on_conflict_do_nothing()
        if self.dialect == "sqlite":
            return sqlite_insert(table).on_conflict_do_nothing()
        return insert(table)

    def _catch_up(self, conn: Connection, upto: int) -> None:
        """Add leaves other processes committed, so our tree stays in index order."""
        with self._tree_lock:
            have = self._tree.size
            if have >= upto:
                return
            rows = conn.execute(
                select(schema.entries.c.idx, schema.entries.c.leaf_hash)
                .where(schema.entries.c.idx >= have, schema.entries.c.idx < upto)
                .order_by(schema.entries.c.idx)
            ).all()
            for idx, h in rows:
                if idx != self._tree.size:
                    raise AuditIntegrityError(f"audit entry {self._tree.size} is missing")
                self._tree.append(h)

    def refresh(self) -> int:
        """Catch up on entries other processes appended; return the tree size."""
        try:
            with self.engine.connect() as conn:
                upto = int(
                    conn.execute(
                        select(func.coalesce(func.max(schema.entries.c.idx) + 1, 0))
                    ).scalar_one()
                )
                self._catch_up(conn, upto)
        except SQLAlchemyError as exc:
            raise StoreUnavailable("the audit store is unavailable") from exc
        return self.size

    # --- reading ----------------------------------------------------------------------

    @property
    def size(self) -> int:
        with self._tree_lock:
            return self._tree.size

    def root(self, size: int | None = None) -> bytes:
        with self._tree_lock:
            return self._tree.root(size)

    def leaf(self, index: int) -> bytes:
        with self._tree_lock:
            return self._tree.leaf(index)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        with self._tree_lock:
            return self._tree.inclusion_proof(index, size)

    def consistency_proof(self, first: int, second: int) -> list[bytes]:
        with self._tree_lock:
            return self._tree.consistency_proof(first, second)

    def latest_checkpoint(self, conn: Connection | None = None) -> SignedNote | None:
        stmt = select(schema.checkpoints.c.note).order_by(schema.checkpoints.c.size.desc()).limit(1)
        if conn is None:
            with self.engine.connect() as c:
                note = c.execute(stmt).scalar()
        else:
            note = conn.execute(stmt).scalar()
        return None if note is None else SignedNote.parse(note)

    def store_checkpoint(self, note: SignedNote) -> None:
        """Store a checkpoint; for a size already stored, keep the note with more
        signatures (a witness that was down may cosign later). Checkpoints are not
        entries: they are evidence about the tree, each verifiable on its own."""
        cp = note.checkpoint
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        t = schema.checkpoints
        with self._writes.begin() as conn:
            existing = conn.execute(select(t.c.root, t.c.note).where(t.c.size == cp.size)).first()
            if existing is None:
                conn.execute(
                    insert(t),
                    [{"size": cp.size, "root": cp.root, "note": note.text(), "created": now}],
                )
            elif existing.root == cp.root and len(note.signatures) > len(
                SignedNote.parse(existing.note).signatures
            ):
                conn.execute(t.update().where(t.c.size == cp.size).values(note=note.text()))

    def entries(
        self,
        filters: Mapping[str, str],
        *,
        cursor: int | None = None,
        limit: int = 50,
        newest_first: bool = True,
    ) -> tuple[list[StoredEntry], int | None]:
        t = schema.entries
        stmt = select(t.c.idx, t.c.leaf_hash, t.c.entry, *(t.c[f] for f in _ROW_FIELDS))
        for name, value in filters.items():
            if name == "since":
                stmt = stmt.where(t.c.time >= value)
            elif name == "until":
                stmt = stmt.where(t.c.time < value)
            elif name in _FILTER_FIELDS:
                stmt = stmt.where(t.c[name] == value)
            else:
                raise ValueError(f"unknown filter {name}")
        if cursor is not None:
            stmt = stmt.where(t.c.idx < cursor if newest_first else t.c.idx > cursor)
        order = t.c.idx.desc() if newest_first else t.c.idx.asc()
        stmt = stmt.order_by(order).limit(limit + 1)
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(stmt).all()
        except SQLAlchemyError as exc:
            raise StoreUnavailable("the audit store is unavailable") from exc
        out = [self._checked(r) for r in rows[:limit]]
        nxt = out[-1].index if len(rows) > limit else None
        return out, nxt

    def get(self, index: int) -> StoredEntry | None:
        t = schema.entries
        try:
            with self.engine.connect() as conn:
                row = conn.execute(
                    select(t.c.idx, t.c.leaf_hash, t.c.entry, *(t.c[f] for f in _ROW_FIELDS)).where(
                        t.c.idx == index
                    )
                ).first()
        except SQLAlchemyError as exc:
            raise StoreUnavailable("the audit store is unavailable") from exc
        return None if row is None else self._checked(row)

    def _checked(self, row: Any) -> StoredEntry:
        """A row as served: checked against its own entry and against the tree this
        process holds, so an entry edited after start-up is refused rather than served
        with a proof it no longer matches. The leaf hash returned is the entry's own."""
        idx = int(row[0])
        columns = dict(zip(_ROW_FIELDS, row[3:], strict=True))
        with self._tree_lock:
            size = self._tree.size
            expected = self._tree.leaf(idx) if idx < size else bytes(row[1])
        leaf, doc, problem = check_row(idx, row[2], expected, columns)
        if problem is None and bytes(row[1]) != leaf:
            problem = f"entry {idx} does not match its leaf hash"
        if problem is not None or doc is None:
            log.error("audit log integrity: %s", problem)
            raise AuditIntegrityError(f"audit log: {problem}")
        return StoredEntry(idx, leaf, doc)

    def reveal(self, pseudonym: str) -> str | None:
        """The ID number behind a pseudonym, or None once the vault row is erased."""
        with self.engine.connect() as conn:
            sealed = conn.execute(
                select(schema.vault.c.id_number).where(schema.vault.c.pseudonym == pseudonym)
            ).scalar()
        return None if sealed is None else self.pseudonyms.open(pseudonym, sealed)

    def erase_subject(self, id_number: str) -> bool:
        """Unlink a person from the log: delete their vault row, never an entry."""
        pseudonym = self.pseudonyms.pseudonym(id_number)
        with self.engine.begin() as conn:
            deleted = conn.execute(
                schema.vault.delete().where(schema.vault.c.pseudonym == pseudonym)
            ).rowcount
        return bool(deleted)
