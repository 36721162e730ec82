"""A department's own database, read live and read-only, through its department file.

Every answer is read from the source when it is asked for, so it is as fresh as the
source's last committed change. The source is opened read-only on every connection and in
every transaction (PostgreSQL, MySQL/MariaDB) or by ``mode=ro`` (SQLite), and each
statement has the file's timeout.

A predicate never fails: a source that is down, a renamed table, a revoked grant or a
timeout answers ``unknown`` (never ``no``) and marks the source not ready; the next call
tries again, so the source recovers by itself. A query whose result is not one value is a
*defect* of the file: ``unknown``, counted and logged. Nothing logged or raised here
carries a subject, a parameter value or a password.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from decimal import Decimal, InvalidOperation
from typing import Any, cast
from urllib.parse import quote

from sqlalchemy import Connection, Engine, Row, TextClause, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.pool import QueuePool

from tongban.federation.statistics import UnknownStatistic
from tongban.primitives.errors import NotFound, StoreUnavailable, UnknownParameter
from tongban.primitives.extras import require_extra
from tongban.primitives.idnumber import Reason, check_char, mask, parse, validate
from tongban.primitives.wire import Tri

from .deptfile import (
    MANAGED,
    DateBind,
    DepartmentFile,
    FilePredicate,
    QualityCheck,
    check_select,
    date_binds,
    mask_url,
)

__all__ = [
    "CONNECT_TIMEOUT_S",
    "LiveSource",
    "SourceDefect",
    "SourceTimeout",
    "StatisticRows",
    "checks_statement",
    "describe_error",
    "fifteen",
    "interpret",
    "person_binds",
    "statistic_cells",
]

log = logging.getLogger("tongban.adapters.live")

#: Seconds a new connection may take before the source counts as unreachable.
CONNECT_TIMEOUT_S = 5
_SAMPLE = 5  # masked numbers a quality report shows per check
_CHUNK = 500  # feature rows fetched at a time
_BATCH_FAILURES = 2  # failed statements after which a batch answers unknown for the rest


class SourceDefect(StoreUnavailable):
    """A statistic or feature query returned rows of a shape the file does not declare."""

    slug = "source-defect"
    title = "A department source answered in an unexpected shape"


class SourceTimeout(Exception):
    """A statement took the whole timeout: its result is not trusted (MySQL's ``SLEEP``,
    interrupted, returns 1 instead of failing)."""


_SOURCE_ERRORS = (SQLAlchemyError, SourceTimeout, OSError)
_Person = tuple[str, str | None]
_NUMERIC_RE = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
# Quoted text in a driver's message (not the apostrophe of "Can't").
_QUOTED_RE = re.compile(r"(?<![A-Za-z])'[^']*'|\"[^\"]*\"")
_LONG_DIGITS_RE = re.compile(r"\d[\dXx]{5,}")


# --- values --------------------------------------------------------------------------


def fifteen(number18: str) -> str | None:
    """The first-generation 15-digit form of a normalised 18-digit number, for people born
    1900-1999 (the 15-digit form has a two-digit year and no check character)."""
    if number18[6:8] != "19":
        return None
    return number18[:6] + number18[8:17]


def _eighteen(number15: str) -> str:
    body = number15[:6] + "19" + number15[6:15]
    return body + check_char(body)


def _stored_number(value: object) -> str | None:
    """An ID number as a source stores it (15 digits, lower-case x, padding) in its
    normalised 18-digit form; None when it is not one."""
    if not isinstance(value, str):
        return None
    number = value.strip().upper()
    if len(number) == 15 and number.isascii() and number.isdigit():
        number = _eighteen(number)
    return number if validate(number) is Reason.OK else None


def _truth(value: object) -> tuple[Tri, str | None]:
    """One returned value as an answer, or a defect description."""
    if value is None:
        return Tri.UNKNOWN, None
    if isinstance(value, bool):
        return Tri.of(value), None
    if isinstance(value, int):
        return Tri.of(value != 0), None
    if isinstance(value, float | Decimal):
        if math.isnan(value):
            return Tri.UNKNOWN, "returned NaN (expected a number or a boolean)"
        return Tri.of(value != 0), None
    if isinstance(value, str) and _NUMERIC_RE.fullmatch(value.strip()):
        return Tri.of(Decimal(value.strip()) != 0), None
    return Tri.UNKNOWN, f"returned {_kind(value)} (expected a number or a boolean)"


def _kind(value: object) -> str:
    if isinstance(value, str):
        return "text"
    if isinstance(value, bytes | bytearray | memoryview):
        return "bytes"
    return type(value).__name__


def interpret(width: int, rows: Sequence[Sequence[object]]) -> tuple[Tri, str | None]:
    """A predicate's result as an answer (docs/departments.md, Results): one row of 0 or
    false is no, non-zero or true is yes, NULL is unknown, no row is no. Anything else is a
    defect: unknown, with a description that names no value."""
    if width != 1:
        return Tri.UNKNOWN, f"returned {width} columns (expected one)"
    if not rows:
        return Tri.FALSE, None
    if len(rows) > 1:
        return Tri.UNKNOWN, "returned several rows (expected one)"
    return _truth(rows[0][0])


def _integer(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    try:
        number = Decimal(str(value).strip()) if isinstance(value, str) else value
        if isinstance(number, float | Decimal) and number == int(number):
            return int(number)
    except (InvalidOperation, ValueError, OverflowError):
        return None
    return None


def _number(value: object) -> float | None:
    if value is None:
        return math.nan
    if isinstance(value, int | float | Decimal):
        return float(value)
    if isinstance(value, str) and _NUMERIC_RE.fullmatch(value.strip()):
        return float(value)
    return None


def describe_error(exc: BaseException) -> str:
    """What went wrong, for a log line or a health detail: the driver's error class, its
    code and the first line of its message with anything quoted and any long digit run
    removed (a driver may echo a bound value: "invalid input syntax: '110105...'"). Never
    SQLAlchemy's own rendering, which appends the statement and its parameters."""
    orig: BaseException = exc
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        orig = exc.orig
    code = getattr(orig, "sqlstate", None)
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int):  # PyMySQL: (errno, message)
        code, message = args[0], str(args[1]) if len(args) > 1 else ""
    elif isinstance(orig, SQLAlchemyError):  # its message alone, not str() with the SQL
        message = str(args[0]) if args else ""
    else:
        message = str(orig)
    first = message.strip().splitlines()[0] if message.strip() else ""
    first = _LONG_DIGITS_RE.sub("...", _QUOTED_RE.sub("'...'", first))[:160]
    name = type(orig).__name__ + (f" {code}" if code is not None else "")
    return f"{name}: {first}" if first else name


# --- engines -------------------------------------------------------------------------


def _sqlite_engine(url: str, timeout_ms: int) -> Engine:
    """``mode=ro``: SQLite itself refuses every write; ``query_only`` on top."""
    database = make_url(url).database or ""
    uri = f"file:{quote(os.path.abspath(database))}?mode=ro"

    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(uri, uri=True, timeout=timeout_ms / 1000, check_same_thread=False)
        conn.execute("PRAGMA query_only = ON")
        return conn

    return create_engine(
        "sqlite+pysqlite://", creator=connect, poolclass=QueuePool, pool_pre_ping=True
    )


def _pg_engine(url: str, timeout_ms: int) -> Engine:
    """Every session starts read-only with the timeout; every transaction says so again
    (:meth:`LiveSource.reading`), so a statement cannot talk its session out of it."""
    if make_url(url).get_driver_name() == "psycopg":
        require_extra("psycopg", "postgres", "a PostgreSQL department source")
    options = f"-c default_transaction_read_only=on -c statement_timeout={timeout_ms}"
    return create_engine(
        url,
        pool_pre_ping=True,
        connect_args={"connect_timeout": CONNECT_TIMEOUT_S, "options": options},
    )


def _mysql_engine(url: str, timeout_ms: int, flavours: dict[str, str]) -> Engine:
    """Sessions read-only with the statement timeout: MariaDB's ``max_statement_time``
    (seconds) or MySQL's ``max_execution_time`` (milliseconds), whichever the server is.
    A socket read timeout a little past it catches a server that stops answering."""
    if make_url(url).get_driver_name() == "pymysql":
        require_extra("pymysql", "mysql", "a MySQL or MariaDB department source")
    backstop = math.ceil(timeout_ms / 1000) + 5
    engine = create_engine(
        url,
        pool_pre_ping=True,
        connect_args={
            "connect_timeout": CONNECT_TIMEOUT_S,
            "read_timeout": backstop,
            "write_timeout": backstop,
        },
    )

    def session(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        try:
            cur.execute("SELECT VERSION()")
            version = str(cur.fetchone()[0])
            if "mariadb" in version.lower():
                flavours["server"] = "mariadb"
                cur.execute(f"SET SESSION max_statement_time = {timeout_ms / 1000:.3f}")
            else:
                flavours["server"] = "mysql"
                cur.execute(f"SET SESSION max_execution_time = {int(timeout_ms)}")
            cur.execute("SET SESSION TRANSACTION READ ONLY")
        finally:
            cur.close()

    event.listen(engine, "connect", session)
    return engine


# --- the source ----------------------------------------------------------------------


class LiveSource:
    """``url`` overrides the file's source (and is required for ``source = "managed"``).

    ``subject_form`` maps a normalised 18-digit number to what the source stores: a sealed
    managed store passes its blind index, and then ``:subject15``/``:related15`` are
    NULL (tokens have no 15-digit form)."""

    def __init__(
        self,
        dept: DepartmentFile,
        url: str | None = None,
        *,
        subject_form: Callable[[str], str] | None = None,
    ) -> None:
        resolved = dept.source if url is None else url
        if resolved == MANAGED:
            raise ValueError(f"{dept.name}: a managed source needs the store's URL")
        self.dept = dept
        self._url = resolved
        self.kind = make_url(resolved).get_backend_name()
        self.timeout_ms = dept.statement_timeout_ms
        self.defects = 0
        self.ready = True
        self._subject_form = subject_form
        self._lock = threading.Lock()
        self._flavours: dict[str, str] = {}
        self._read_at: dt.datetime | None = None
        self.engine = self._engine()
        self._predicates = {n: text(p.sql) for n, p in dept.predicates.items()}
        self._checks = {
            n: checks_statement(dept.checks_for(n), related=p.related)
            for n, p in dept.predicates.items()
        }

    def _engine(self) -> Engine:
        if self.kind == "sqlite":
            return _sqlite_engine(self._url, self.timeout_ms)
        if self.kind == "postgresql":
            return _pg_engine(self._url, self.timeout_ms)
        if self.kind in ("mysql", "mariadb"):
            return _mysql_engine(self._url, self.timeout_ms, self._flavours)
        raise ValueError(f"{self.dept.name}: no read-only guard for a {self.kind} source")

    def __repr__(self) -> str:
        return f"LiveSource({self.dept.name}, {self.masked_source})"

    @property
    def masked_source(self) -> str:
        return mask_url(self._url)

    # --- connections ----------------------------------------------------------------

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        """A connection in a read-only transaction with the statement timeout, rolled back
        afterwards. Database errors propagate as SQLAlchemy's."""
        with self.engine.connect() as conn:
            trans = conn.begin()
            try:
                self._guard(conn)
                yield conn
            finally:
                try:
                    trans.rollback()
                except SQLAlchemyError:
                    conn.invalidate()

    def _guard(self, conn: Connection) -> None:
        if self.kind == "postgresql":
            conn.exec_driver_sql("SET TRANSACTION READ ONLY")
            conn.exec_driver_sql(f"SET LOCAL statement_timeout = {int(self.timeout_ms)}")
        elif self.kind in ("mysql", "mariadb"):
            conn.exec_driver_sql("START TRANSACTION READ ONLY")

    @contextmanager
    def deadline(self, conn: Connection) -> Iterator[None]:
        """SQLite has no statement timeout: a progress handler interrupts the statement
        once the deadline passes (it runs every thousand virtual-machine steps)."""
        if self.kind != "sqlite":
            yield
            return
        raw = cast(sqlite3.Connection, conn.connection.dbapi_connection)
        limit = time.monotonic() + self.timeout_ms / 1000
        raw.set_progress_handler(lambda: int(time.monotonic() > limit), 1000)
        try:
            yield
        finally:
            raw.set_progress_handler(None, 0)

    def run(
        self, sql: str | TextClause, values: Mapping[str, object], limit: int
    ) -> tuple[int, list[Row[Any]]]:
        """One statement in a read-only transaction of its own, with the timeout: the width
        of its result and up to ``limit`` rows. ``sql`` is a statement the file's check
        passed (a ``.sql`` of the file). Errors propagate: SQLAlchemy's, or
        :class:`SourceTimeout`."""
        statement = text(sql) if isinstance(sql, str) else sql
        with self.reading() as conn:
            return self._rows(conn, statement, values, limit)

    def _rows(
        self, conn: Connection, statement: TextClause, values: Mapping[str, object], limit: int
    ) -> tuple[int, list[Row[Any]]]:
        """Run one statement: its width and up to ``limit`` rows. A statement that took the
        whole timeout raises :class:`SourceTimeout` whatever it returned."""
        start = time.monotonic()
        with self.deadline(conn):
            result = conn.execute(statement, dict(values))
            width = len(result.keys())
            rows = list(result.fetchmany(limit))
            result.close()
        if (time.monotonic() - start) * 1000 >= self.timeout_ms:
            raise SourceTimeout(f"a statement ran into its {self.timeout_ms} ms timeout")
        self._read_at = dt.datetime.now(dt.UTC)
        return width, rows

    # --- state ----------------------------------------------------------------------

    def _unavailable(self, what: str, exc: BaseException) -> None:
        with self._lock:
            was, self.ready = self.ready, False
        level = logging.WARNING if was else logging.DEBUG
        log.log(level, "%s source: %s: unavailable (%s)", self.dept.name, what, describe_error(exc))

    def _recovered(self) -> None:
        with self._lock:
            was, self.ready = self.ready, True
        if not was:
            log.info("%s source: answering again", self.dept.name)

    def _defect(self, what: str, why: str, count: int = 1) -> None:
        with self._lock:
            self.defects += count
        log.warning("%s source: %s: defect: %s", self.dept.name, what, why)

    # --- predicates -----------------------------------------------------------------

    def _person(self, number: str) -> _Person:
        normal = parse(number).number
        if self._subject_form is not None:
            return self._subject_form(normal), None
        return normal, fifteen(normal)

    @staticmethod
    def binds(
        today: dt.date | None,
        dates: Mapping[str, DateBind] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> dict[str, object]:
        """The adapter's date binds: ``:today``, ``:today_yyyymmdd`` and the query's
        declared ``dates`` (with its checked ``params``)."""
        day = today or dt.date.today()
        values: dict[str, object] = {
            "today": day.isoformat(),
            "today_yyyymmdd": day.strftime("%Y%m%d"),
        }
        if dates:
            values |= date_binds(dates, day, params or {})
        return values

    def _check_call(
        self, predicate: str, params: Mapping[str, str] | None, related: bool
    ) -> tuple[FilePredicate, dict[str, str]]:
        pred = self.dept.predicate(predicate)
        clean = pred.check_params(params)
        if related != pred.related:
            need = "needs" if pred.related else "takes no"
            raise UnknownParameter(f"related: {pred.name} {need} related person")
        return pred, clean

    def evaluate(
        self,
        predicate: str,
        subject18: str,
        params: Mapping[str, str] | None = None,
        related18: str | None = None,
        *,
        today: dt.date | None = None,
    ) -> Tri:
        """The answer about ``subject18`` (and ``related18`` for a related predicate).
        The predicate, its parameters and the numbers are checked first and refused with
        the usual 4xx problems; from then on every failure of the source is ``unknown``."""
        pred, clean = self._check_call(predicate, params, related18 is not None)
        persons = [self._person(subject18)]
        if related18 is not None:
            persons.append(self._person(related18))
        values = self.binds(today, pred.dates, clean) | clean
        try:
            with self.reading() as conn:
                verdict = self._answer(conn, pred, values, persons)
        except _SOURCE_ERRORS as exc:
            self._unavailable(f"predicate {pred.name}", exc)
            return Tri.UNKNOWN
        self._recovered()
        return verdict

    def evaluate_many(
        self,
        predicate: str,
        subjects: Sequence[str],
        params: Mapping[str, str] | None = None,
        *,
        today: dt.date | None = None,
    ) -> list[Tri]:
        """One predicate over many subjects on one connection. A failed statement answers
        ``unknown`` for its subject and the batch goes on in a new transaction; after
        two failures (a source that is down, or a query that times out) the rest are
        ``unknown`` without asking."""
        pred, clean = self._check_call(predicate, params, related=False)
        persons = [self._person(s) for s in subjects]
        values = self.binds(today, pred.dates, clean) | clean
        out: list[Tri] = []
        failures = 0
        try:
            with self.engine.connect() as conn:
                while len(out) < len(persons) and failures < _BATCH_FAILURES:
                    try:
                        self._batch(conn, pred, values, persons, out)
                    except _SOURCE_ERRORS as exc:
                        failures += 1
                        out.append(Tri.UNKNOWN)
                        self._unavailable(f"predicate {pred.name} (batch)", exc)
                        if conn.invalidated:
                            break
        except _SOURCE_ERRORS as exc:
            self._unavailable(f"predicate {pred.name} (batch)", exc)
            failures += 1
        if persons and not failures:
            self._recovered()
        return out + [Tri.UNKNOWN] * (len(persons) - len(out))

    def _batch(
        self,
        conn: Connection,
        pred: FilePredicate,
        values: dict[str, object],
        persons: list[_Person],
        out: list[Tri],
    ) -> None:
        trans = conn.begin()
        try:
            self._guard(conn)
            while len(out) < len(persons):
                out.append(self._answer(conn, pred, values, [persons[len(out)]]))
        finally:
            try:
                trans.rollback()
            except SQLAlchemyError:
                conn.invalidate()

    def _answer(
        self,
        conn: Connection,
        pred: FilePredicate,
        values: dict[str, object],
        persons: list[_Person],
    ) -> Tri:
        binds = values | person_binds(persons, lower_x=self._subject_form is None)
        checks = self._checks[pred.name]
        if checks is not None:
            _width, named = self._rows(conn, checks, binds, 1)
            if named and _truth(named[0][0])[0] is not Tri.FALSE:
                return Tri.UNKNOWN
        width, rows = self._rows(conn, self._predicates[pred.name], binds, 2)
        verdict, defect = interpret(width, rows)
        if defect is not None:
            self._defect(f"predicate {pred.name}", defect)
        return verdict

    # --- statistics, features, quality ----------------------------------------------

    def statistic_rows(
        self,
        name: str,
        params: Mapping[str, str] | None = None,
        *,
        today: dt.date | None = None,
        record_bound: int | None = None,
    ) -> StatisticRows:
        """The statistic's rows ``(cell, value, records)``, with ``:record_bound`` bound to
        ``record_bound`` (default: the file's). A source error is a 503
        :class:`StoreUnavailable`; rows of another shape a :class:`SourceDefect`."""
        stat = self.dept.statistics.get(name)
        if stat is None:
            raise UnknownStatistic(f"statistic: {self.dept.name} does not compute it")
        checked = stat.check_params(params)
        values = self.binds(today, stat.dates, checked) | checked
        values["record_bound"] = stat.record_bound if record_bound is None else record_bound
        what = f"statistic {name}"
        try:
            with self.reading() as conn, self.deadline(conn):
                result = conn.execute(text(stat.sql), values)
                width, rows = len(result.keys()), result.fetchall()
        except _SOURCE_ERRORS as exc:
            self._unavailable(what, exc)
            raise StoreUnavailable(f"{self.dept.name} source is unavailable") from None
        self._read_at = dt.datetime.now(dt.UTC)
        cells, defect = statistic_cells(width, rows)
        if defect is not None:
            raise self._shape(what, defect)
        return cells

    def _shape(self, what: str, why: str) -> SourceDefect:
        self._defect(what, why)
        return SourceDefect(f"{self.dept.name}: {what} {why}")

    def feature_rows(
        self, name: str, *, today: dt.date | None = None
    ) -> Iterator[tuple[str, tuple[float, ...]]]:
        """``(subject, values)`` per row, streamed. Subjects are normalised to 18 digits
        (a source may store 15-digit numbers or a lower-case x); a row whose subject is not
        a valid number, or whose value is not numeric, is skipped and counted as a defect.
        NULL values are NaN. ``:today`` (default: today) and the set's declared ``dates``
        are bound."""
        features = self.dept.features.get(name)
        if features is None:
            raise NotFound(f"features: {self.dept.name} declares no such feature set")
        width = 1 + len(features.columns)
        skipped = 0
        try:
            with self.reading() as conn:
                streaming = conn.execution_options(stream_results=True)
                with self.deadline(conn):
                    result = streaming.execute(
                        text(features.sql), self.binds(today, features.dates)
                    )
                if len(result.keys()) != width:
                    raise self._shape(f"features {name}", f"expected {width} columns")
                while True:
                    with self.deadline(conn):
                        chunk = result.fetchmany(_CHUNK)
                    if not chunk:
                        break
                    for row in chunk:
                        item = self._feature(row)
                        if item is None:
                            skipped += 1
                        else:
                            yield item
        except _SOURCE_ERRORS as exc:
            self._unavailable(f"features {name}", exc)
            raise StoreUnavailable(f"{self.dept.name} source is unavailable") from None
        finally:
            if skipped:
                self._defect(f"features {name}", f"{skipped} unusable rows skipped", skipped)
        self._read_at = dt.datetime.now(dt.UTC)

    def _feature(self, row: Sequence[object]) -> tuple[str, tuple[float, ...]] | None:
        if self._subject_form is not None:
            subject = row[0] if isinstance(row[0], str) else None
        else:
            subject = _stored_number(row[0])
        values = tuple(_number(v) for v in row[1:])
        if subject is None or any(v is None for v in values):
            return None
        return subject, cast(tuple[float, ...], values)

    def quality_report(self, *, today: dt.date | None = None) -> dict[str, tuple[int, list[str]]]:
        """Per quality check: how many subjects it names and up to five of them, masked."""
        report: dict[str, tuple[int, list[str]]] = {}
        values = self.binds(today)
        try:
            with self.reading() as conn:
                for name, check in self.dept.quality.items():
                    count = _around("SELECT COUNT(*) FROM", check.sql, "")
                    sample = _around("SELECT q.subject FROM", check.sql, f"LIMIT {_SAMPLE}")
                    _w, counted = self._rows(conn, count, values, 1)
                    _w, named = self._rows(conn, sample, values, _SAMPLE)
                    report[name] = (int(counted[0][0]), [mask(str(r[0])) for r in named])
        except _SOURCE_ERRORS as exc:
            self._unavailable("quality report", exc)
            raise StoreUnavailable(f"{self.dept.name} source is unavailable") from None
        return report

    # --- operations -----------------------------------------------------------------

    def health(self) -> dict[str, object]:
        """Whether the source answers now (a live probe), with a detail naming the source
        with its password masked and never an error's statement or parameters."""
        out: dict[str, object] = {"kind": self.kind, "ready": self.ready, "defects": self.defects}
        try:
            with self.reading() as conn, self.deadline(conn):
                server = self._server(conn)
        except _SOURCE_ERRORS as exc:
            self._unavailable("health probe", exc)
            out.update(reachable=False, ready=False)
            out["detail"] = f"{self.masked_source}: unreachable ({describe_error(exc)})"
            return out
        out.update(reachable=True, detail=f"{self.masked_source}: {server}")
        return out

    def _server(self, conn: Connection) -> str:
        if self.kind == "sqlite":
            sql = "SELECT sqlite_version(), (SELECT COUNT(*) FROM sqlite_master)"
            return f"SQLite {conn.exec_driver_sql(sql).scalar()}"
        if self.kind == "postgresql":
            return f"PostgreSQL {conn.exec_driver_sql('SHOW server_version').scalar()}"
        version = conn.exec_driver_sql("SELECT VERSION()").scalar()
        server = "MariaDB" if "mariadb" in str(version).lower() else "MySQL"
        return f"{server} {version}"

    def explain(
        self, sql: str, params: Mapping[str, object] | None = None, *, today: dt.date | None = None
    ) -> list[str]:
        """The source's plan for ``sql`` (checked like a file's statement first), one line
        per plan row: ``EXPLAIN`` on PostgreSQL and MySQL/MariaDB, ``EXPLAIN QUERY PLAN`` on
        SQLite. ``:today``/``:today_yyyymmdd`` default to today."""
        checked = check_select(sql)
        prefix = "EXPLAIN QUERY PLAN" if self.kind == "sqlite" else "EXPLAIN"
        values = self.binds(today) | dict(params or {})
        try:
            with self.reading() as conn, self.deadline(conn):
                result = conn.execute(text(f"{prefix} {checked.text}"), values)
                keys, rows = list(result.keys()), result.fetchall()
        except _SOURCE_ERRORS as exc:
            self._unavailable("explain", exc)
            raise StoreUnavailable(f"{self.dept.name} source is unavailable") from None
        return [_plan_line(self.kind, keys, row) for row in rows]

    def as_of(self) -> str:
        """When the last answer was read (ISO 8601, UTC): a live source has no staleness
        beyond that, so before any read it is now."""
        return (self._read_at or dt.datetime.now(dt.UTC)).isoformat(timespec="milliseconds")

    def dispose(self) -> None:
        self.engine.dispose()


def checks_statement(checks: Sequence[QualityCheck], *, related: bool) -> TextClause | None:
    """One statement asking whether any of ``checks`` names the subject (or, for a
    related predicate, either person): 1 if one does, else 0; None without checks.

    Each check is its own ``EXISTS`` over the check's query filtered to the person, so
    the database pushes the filter into the check as it would for that check alone (an
    index lookup where the check allows it), and all of them cost one round trip. A
    person matches as ``:subject`` (18 digits, upper-case X), ``:subject_x`` (the same
    with a lower-case x, as some systems store it: a check can then name bare columns and
    keep their indexes, even where comparisons are case-sensitive) or ``:subject15``.
    Each query is on its own lines, so a trailing comment in it cannot swallow the filter.
    """
    if not checks:
        return None
    people = ":subject, :subject_x, :subject15"
    if related:
        people += ", :related, :related_x, :related15"
    # Only statements the file's check passed, and bind names: nothing from a request.
    tests = "\n    OR ".join(
        f"EXISTS (SELECT 1 FROM (\n{c.sql}\n) q WHERE q.subject IN ({people}))"  # noqa: S608
        for c in checks
    )
    return text(f"SELECT CASE WHEN {tests}\n  THEN 1 ELSE 0 END")


def person_binds(persons: Sequence[_Person], *, lower_x: bool = True) -> dict[str, object]:
    """The binds of a subject (and a related person): ``:subject``, ``:subject15`` and
    ``:subject_x`` (the lower-case-x spelling of a number ending in X; the same value
    when ``lower_x`` is off, for tokens)."""
    out: dict[str, object] = {}
    for role, (number, number15) in zip(("subject", "related"), persons, strict=False):
        out[role] = number
        out[f"{role}15"] = number15
        out[f"{role}_x"] = number[:-1] + "x" if lower_x and number.endswith("X") else number
    return out


def _around(head: str, sql: str, tail: str) -> TextClause:
    """``sql`` (a statement the file's check passed) as the derived table ``q``."""
    return text(f"{head} (\n{sql}\n) q {tail}")


StatisticRows = list[tuple[str, int, int]]


def statistic_cells(
    width: int, rows: Sequence[Sequence[object]]
) -> tuple[StatisticRows, str | None]:
    """A statistic query's rows as ``(cell, value, records)``, or a defect description
    (naming no value) when they have another shape."""
    if width != 3:
        return [], f"returned {width} columns (expected cell, value, records)"
    out = [_cell(row) for row in rows]
    cells = [r for r in out if r is not None]
    if len(cells) != len(out):
        return [], "a row is not (text, integer, non-negative integer)"
    return cells, None


def _cell(row: Sequence[object]) -> tuple[str, int, int] | None:
    cell, value, records = row[0], _integer(row[1]), _integer(row[2])
    if cell is None or value is None or records is None or records < 0:
        return None
    return str(cell), value, records


def _plan_line(kind: str, keys: list[str], row: Sequence[object]) -> str:
    if kind == "sqlite":
        return str(row[-1])
    if len(row) == 1:
        return str(row[0])
    return " ".join(f"{k}={v}" for k, v in zip(keys, row, strict=True) if v is not None)
