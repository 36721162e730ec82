"""A department's own database, through SQLAlchemy: SQLite by default, any URL works.

Bulk loads go through the DBAPI (``executemany`` on SQLite, ``COPY`` on PostgreSQL) because
ORM-level inserts are two orders of magnitude too slow for a million citizens.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, func, insert, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.schema import CreateIndex, CreateTable

from primitives.db import make_engine
from primitives.errors import StoreUnavailable

from .department import Department

__all__ = ["DepartmentStore", "sqlite_url"]

_MAX_IDLE = 8


def sqlite_url(path: str) -> str:
    return f"sqlite:///{path}"


class DepartmentStore:
    def __init__(self, department: Department, url: str) -> None:
        self.department = department
        self.url = url
        # NORMAL is durable across application crashes, which a read-mostly store needs.
        self.engine: Engine = make_engine(url, synchronous="NORMAL")
        self._as_of: dt.date | None = None
        self._as_of_read = False
        self._idle: list[Connection] = []
        self._idle_lock = threading.Lock()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    # --- schema ---------------------------------------------------------------------

    def create_schema(self, *, indexes: bool = True) -> None:
        """Create the department's tables; a bulk load creates indexes afterwards."""
        with self.engine.begin() as conn:
            for table in self.department.metadata.sorted_tables:
                conn.execute(CreateTable(table, if_not_exists=True))
        if indexes:
            self.create_indexes()

    def create_indexes(self) -> None:
        with self.engine.begin() as conn:
            for table in self.department.metadata.sorted_tables:
                for index in table.indexes:
                    conn.execute(CreateIndex(index, if_not_exists=True))
            if self.dialect == "sqlite":
                conn.exec_driver_sql("ANALYZE")

    def drop_schema(self) -> None:
        self.department.metadata.drop_all(self.engine)

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
