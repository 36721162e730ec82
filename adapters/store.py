"""A department's own database, through SQLAlchemy: SQLite by default, any URL works.

Bulk loads go through the DBAPI (``executemany`` on SQLite, ``COPY`` on PostgreSQL) because
ORM-level inserts are two orders of magnitude too slow for a million citizens.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, func, insert, literal, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.schema import CreateIndex, CreateTable

from tongban.primitives.db import make_engine
from tongban.primitives.errors import StoreUnavailable

from .at_rest import (
    META_EPOCH,
    PLAIN_INDEX,
    AtRest,
    AtRestKeyError,
    BlindIndex,
    KeyState,
    SealedTable,
    read_state,
    write_state,
)
from .department import Department

__all__ = ["DepartmentStore", "sqlite_url"]

_MAX_IDLE = 8
_MARKS = {"sqlite": "?", "postgresql": "%s"}
_EPOCH_SQL = "SELECT value FROM meta WHERE key = {}"


def sqlite_url(path: str) -> str:
    return f"sqlite:///{path}"


class DepartmentStore:
    """``kek``: the department's key-encryption key when its store is encrypted at rest
    (see :mod:`adapters.at_rest`); a store given one refuses to hold plaintext, and an
    encrypted store opened without it refuses to answer."""

    def __init__(self, department: Department, url: str, *, kek: bytes | None = None) -> None:
        self.department = department
        self.url = url
        self._kek = kek
        self._keys: AtRest | None = None
        self._keys_read = False
        self._keys_lock = threading.Lock()
        # NORMAL is durable across application crashes, which a read-mostly store needs.
        self.engine: Engine = make_engine(url, synchronous="NORMAL")
        self._as_of: dt.date | None = None
        self._as_of_read = False
        self._idle: list[Connection] = []
        self._idle_lock = threading.Lock()
        meta = department.table("meta")
        self._epoch = select(meta.c.value).where(meta.c.key == literal(META_EPOCH))

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    # --- schema ---------------------------------------------------------------------

    def create_schema(self, *, indexes: bool = True) -> None:
        """Create the department's tables; a bulk load creates indexes afterwards."""
        with self.engine.begin() as conn:
            for table in self.department.metadata.sorted_tables:
                conn.execute(CreateTable(table, if_not_exists=True))
            if self._kek is not None:
                self._start_encryption(conn, self._kek)
        self._forget_keys()
        if indexes:
            self.create_indexes()

    def _start_encryption(self, conn: Connection, kek: bytes) -> None:
        """A new store given a KEK gets its keys; an existing plaintext one is refused
        (``tongban keys encrypt`` converts it)."""
        meta = self.department.table("meta")
        if read_state(conn, meta) is not None:
            return
        for name in (*self.sealed_tables, "quarantine"):
            t = self.department.table(name)
            if conn.execute(select(literal(1)).select_from(t).limit(1)).first():
                raise AtRestKeyError(
                    f"{self.department.name} store holds plaintext rows; "
                    "convert it with 'tongban keys encrypt'"
                )
        write_state(conn, meta, KeyState.new(self.department.name, kek))

    def create_indexes(self) -> None:
        with self.engine.begin() as conn:
            for table in self.department.metadata.sorted_tables:
                for index in table.indexes:
                    conn.execute(CreateIndex(index, if_not_exists=True))
            if self.dialect == "sqlite":
                conn.exec_driver_sql("ANALYZE")

    def drop_schema(self) -> None:
        self.department.metadata.drop_all(self.engine)
        self._forget_keys()

    # --- encryption at rest ---------------------------------------------------------

    @property
    def sealed_tables(self) -> Mapping[str, SealedTable]:
        from .departments import SEALED_TABLES

        return SEALED_TABLES.get(self.department.name, {})

    def _forget_keys(self) -> None:
        with self._keys_lock:
            self._keys, self._keys_read = None, False

    def at_rest(self, *, reload: bool = False) -> AtRest | None:
        """The store's unwrapped keys, or None for a plaintext store. Fails closed with
        :class:`AtRestKeyError` when the KEK is missing, wrong, or given to a plaintext
        store. Read once; ``reload`` after a rotation."""
        with self._keys_lock:
            if self._keys_read and not reload:
                return self._keys
            with self.connect() as conn:
                state = read_state(conn, self.department.table("meta"))
            name = self.department.name
            if state is None:
                if self._kek is not None:
                    raise AtRestKeyError(
                        f"{name} store is not encrypted but a key-encryption key exists; "
                        "convert it with 'tongban keys encrypt'"
                    )
                keys = None
            elif self._kek is None:
                raise AtRestKeyError(
                    f"{name} store is encrypted at rest and no key-encryption key was given"
                )
            else:
                keys = state.unwrap(self._kek)
            self._keys, self._keys_read = keys, True
            return keys

    @property
    def kek(self) -> bytes | None:
        return self._kek

    def blind_index(self, *, reload: bool = False) -> BlindIndex:
        keys = self.at_rest(reload=reload)
        return PLAIN_INDEX if keys is None else keys.index

    def index_is_current(self, conn: Connection, index: BlindIndex) -> bool:
        """Whether ``index`` is still the store's index key: a reader that held it across
        an index-key rotation finds nothing and must not answer "no" from that."""
        if index.plain:
            return True
        if self.dialect not in _MARKS:
            return conn.execute(self._epoch).scalar() == str(index.epoch)
        # On the bare driver cursor: a third of the cost of a Core statement, and this
        # runs on every answer that is not TRUE.
        raw = conn.connection.dbapi_connection
        assert raw is not None
        cur = raw.cursor()
        try:
            cur.execute(_EPOCH_SQL.format(_MARKS[self.dialect]), (META_EPOCH,))
            row = cur.fetchone()
        except Exception as exc:
            raise StoreUnavailable(f"{self.department.name} store is unavailable") from exc
        finally:
            cur.close()
        return row is not None and row[0] == str(index.epoch)

    # --- data -----------------------------------------------------------------------

    def bulk_insert(
        self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]
    ) -> None:
        cols = ", ".join(columns)
        raw = self.engine.raw_connection()
        try:
            cur = raw.cursor()
            if self.dialect == "sqlite":
                marks = ", ".join("?" * len(columns))
                cur.executemany(f"INSERT INTO {table} ({cols}) VALUES ({marks})", rows)  # type: ignore[arg-type]  # noqa: S608
            elif self.dialect == "postgresql":
                with cur.copy(f"COPY {table} ({cols}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
            else:
                t = self.department.table(table)
                with self.engine.begin() as conn:
                    conn.execute(insert(t), [dict(zip(columns, r, strict=True)) for r in rows])
            raw.commit()
        finally:
            raw.close()

    def derive(self) -> None:
        with self.engine.begin() as conn:
            for statement in self.department.derive:
                conn.execute(text(statement))

    def set_meta(self, key: str, value: str) -> None:
        meta = self.department.table("meta")
        with self.engine.begin() as conn:
            conn.execute(meta.delete().where(meta.c.key == key))
            conn.execute(meta.insert().values(key=key, value=value))

    def get_meta(self, key: str) -> str | None:
        meta = self.department.table("meta")
        with self.connect() as conn:
            return conn.execute(select(meta.c.value).where(meta.c.key == key)).scalar()

    def as_of(self) -> dt.date:
        """The date predicates are evaluated at: a synthetic data set declares its own
        reference date so answers stay reproducible; real data uses today. Read once."""
        if not self._as_of_read:
            declared = self.get_meta("reference_date")
            self._as_of = dt.date.fromisoformat(declared) if declared else None
            self._as_of_read = True
        return self._as_of or dt.date.today()

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"{self.department.name} store is unavailable") from exc

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        """An open autocommit connection for hot read paths, reused across calls: a pool
        checkout plus BEGIN/ROLLBACK costs more than the indexed lookup itself. Servers
        may run each request on a new thread, so reuse goes through a free list, not a
        thread-local. A connection that fails is discarded, and the next call opens a new
        one, so a database restart heals without restarting the adapter."""
        with self._idle_lock:
            conn = self._idle.pop() if self._idle else None
        try:
            if conn is None:
                conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            yield conn
        except SQLAlchemyError as exc:
            if conn is not None:
                conn.invalidate()
                conn.close()
            raise StoreUnavailable(f"{self.department.name} store is unavailable") from exc
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        with self._idle_lock:
            if len(self._idle) < _MAX_IDLE:
                self._idle.append(conn)
                return
        conn.close()

    def count(self, table: str) -> int:
        t = self.department.table(table)
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(t)).scalar_one())

    def dispose(self) -> None:
        with self._idle_lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
        self.engine.dispose()
