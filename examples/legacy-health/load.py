"""Write a generated population's health records into a legacy-style database.

    python examples/legacy-health/load.py --from DIR --to URL

``DIR`` is a ``tongban generate`` output directory; its managed health store is read with
tongban's own schema and written into the table ``CSYXZM`` (``schema.py``) at ``URL``, any
SQLAlchemy URL (SQLite, PostgreSQL, MariaDB/MySQL), the way a provincial health commission
keeps it: dates as ``YYYYMMDD`` strings, some parents under their first-generation 15-digit
number, a lower-case ``x`` now and then, township codes, voided and soft-deleted rows,
certificates not issued yet. ``CSYXZM`` is dropped and re-created.

None of it changes an answer: ``health.toml`` beside this file declares the predicates over
this table, and ``tests/test_legacy_example.py`` checks that they answer exactly what the
managed store answers, for every citizen, on SQLite, PostgreSQL and MariaDB.

The records the managed store quarantined at ingest (a wrong check digit, a mother under 14
at the birth, a certificate dated before the birth) are written too, defects included, as a
real system holds them: the department file's ``[quality]`` checks find them again.

Everything is drawn from one seeded stream over the store's rows in order, so the same
store and ``--seed`` give the same database.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import random
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy import Engine, create_engine, func, insert, select
from sqlalchemy.engine import make_url
from sqlalchemy.schema import CreateTable

from tongban.adapters.departments.health import births
from tongban.adapters.departments.health import metadata as managed_metadata
from tongban.primitives.idnumber import Reason, validate

__all__ = ["LegacyRows", "load", "main"]

BATCH = 10_000
FIFTEEN_DIGIT = 0.30  # of the parents born 1900-1999 in valid records, per record
LOWER_X = 0.25  # of the numbers ending in X
TOWNSHIP = 0.30  # of the records, a 9- or 12-digit township code instead of the district
UNREGISTERED = 0.50  # of the certificates not issued, the child's number not yet entered
VOIDED = 0.01  # of the records, an earlier voided version (ZT='0') with a typo
DELETED = 0.005  # of the records, an extra certificate entered by mistake and deleted

_SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾萧田董袁潘蒋蔡余杜叶程苏魏吕丁任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃武戴莫孔向汤"  # noqa: E501
_GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉兰萍鹏辉建文晨宇浩然子轩梓涵一诺欣怡思雨佳琪雨桐可馨俊熙"  # noqa: E501
_ANALYZE = {"mysql": "ANALYZE TABLE CSYXZM", "mariadb": "ANALYZE TABLE CSYXZM"}
_CHECK_ROTATE = str.maketrans("0123456789X", "123456789X0")


def _schema() -> Any:
    """``schema.py`` beside this file (this directory is not a package)."""
    path = Path(__file__).with_name("schema.py")
    spec = importlib.util.spec_from_file_location("legacy_health_schema", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fifteen(number: str) -> str:
    """The first-generation form: no century, no check digit."""
    return number[:6] + number[8:17]


def _ymd(value: dt.date | str | None) -> str:
    if value is None:
        return ""
    if isinstance(value, str):  # a quarantined record keeps its dates as ISO strings
        return value.replace("-", "")
    return f"{value.year:04d}{value.month:02d}{value.day:02d}"


class LegacyRows:
    """Managed birth records → legacy CSYXZM rows, with the legacy system's habits."""

    def __init__(self, seed: int, today: dt.date) -> None:
        self.rng = random.Random(seed)  # noqa: S311 -- reproducible synthetic data, no secret
        self.today = today
        self.parents: list[tuple[str, str]] = []  # (mother, father) seen so far, managed form
        self.deleted = 0
        self.voided = 0

    def _number(self, number: str, *, parent: bool) -> str:
        if not number:
            return ""
        if (
            parent
            and number[6:8] == "19"
            and self.rng.random() < FIFTEEN_DIGIT
            and validate(number, today=self.today) is Reason.OK
        ):
            return fifteen(number)
        if number.endswith("X") and self.rng.random() < LOWER_X:
            return number[:17] + "x"
        return number

    def _district(self, district: str) -> str:
        if self.rng.random() >= TOWNSHIP:
            return district
        digits = 3 if self.rng.random() < 0.5 else 6
        return district + f"{self.rng.randrange(1, 10**digits):0{digits}d}"

    def _name(self) -> str:
        given = "".join(self.rng.choice(_GIVEN) for _ in range(self.rng.choice((1, 2))))
        return self.rng.choice(_SURNAMES) + given

    def _hospital(self, district: str) -> str:
        h = self.rng.randrange(1, 40)
        return f"12{district}MB{h:07d}{'0123456789X'[h % 11]}"

    def rows(self, record: Mapping[str, Any], *, quarantined: bool) -> list[dict[str, Any]]:
        """The row for one managed record, and now and then a voided earlier version of it
        or an unrelated certificate entered by mistake and soft-deleted."""
        issued = _ymd(record["certificate_issued"])
        child = record["child_id"]
        if not issued and not quarantined and self.rng.random() < UNREGISTERED:
            child = ""  # registered only once the certificate is issued
        district = record["district"]
        row = {
            "ZMBH": record["certificate_no"],
            "XSESFZH": self._number(child, parent=False),
            "XSEXM": self._name(),
            "MQSFZH": self._number(record["mother_id"], parent=True),
            "FQSFZH": self._number(record["father_id"] or "", parent=True),
            "CSRQ": _ymd(record["birth_date"]),
            "TC": int(record["birth_order"]),
            "QFRQ": issued,
            "JGDM": self._hospital(district),
            "XZQH": self._district(district),
            "ZT": "1",
            "SCBZ": "0",
        }
        out = [row]
        if self.rng.random() < VOIDED:
            out.append(self._voided(row, record))
        if self.parents and self.rng.random() < DELETED:
            out.append(self._deleted(district))
        self.parents.append((record["mother_id"], record["father_id"] or ""))
        return out

    def _voided(self, row: dict[str, Any], record: Mapping[str, Any]) -> dict[str, Any]:
        """A certificate replaced by a reissue. The voided version names the child, claims
        to be issued on the day of the birth, and carries the error that got it replaced (a
        mistyped check digit, or a birth date after the issue date): a query or a quality
        check that forgot ``ZT`` would answer differently."""
        self.voided += 1
        born = record["birth_date"]
        if isinstance(born, str):
            born = dt.date.fromisoformat(born)
        old = dict(row, ZMBH=row["ZMBH"] + "-0", ZT="0", QFRQ=_ymd(born))
        old["XSESFZH"] = record["child_id"]
        if self.rng.random() < 0.5 and len(old["MQSFZH"]) == 18:
            old["MQSFZH"] = old["MQSFZH"][:17] + old["MQSFZH"][17].upper().translate(_CHECK_ROTATE)
        else:
            old["CSRQ"] = _ymd(born + dt.timedelta(days=self.rng.randrange(1, 30)))
        return old

    def _deleted(self, district: str) -> dict[str, Any]:
        """An extra certificate naming real people (an adult as the newborn, another
        couple as parents), recent and issued: entered by mistake, soft-deleted."""
        self.deleted += 1
        mother, father = self.rng.choice(self.parents)
        newborn = self.rng.choice(self.rng.choice(self.parents))
        born = self.today - dt.timedelta(days=self.rng.randrange(1, 900))
        return {
            "ZMBH": f"SC{self.deleted:09d}",
            "XSESFZH": newborn,
            "XSEXM": self._name(),
            "MQSFZH": mother,
            "FQSFZH": father,
            "CSRQ": _ymd(born),
            "TC": 1,
            "QFRQ": _ymd(born + dt.timedelta(days=self.rng.randrange(0, 20))),
            "JGDM": self._hospital(district),
            "XZQH": district,
            "ZT": "1",
            "SCBZ": "1",
        }


def managed_health_db(source: Path) -> Path:
    """The managed health store of a ``tongban generate`` output directory."""
    for candidate in (source / "departments" / "health.db", source / "health.db"):
        if candidate.is_file():
            return candidate
    raise SystemExit(f"{source}: no departments/health.db; run 'tongban generate --out {source}'")


def _managed(engine: Engine) -> tuple[dt.date, int, int]:
    meta = managed_metadata.tables["meta"]
    quarantine = managed_metadata.tables["quarantine"]
    with engine.connect() as conn:
        values = {k: v for k, v in conn.execute(select(meta.c.key, meta.c.value))}
        if "at_rest" in values:
            raise SystemExit("the health store is encrypted at rest: load it before encrypting")
        count = conn.execute(select(func.count()).select_from(births)).scalar_one()
        held = conn.execute(
            select(func.count()).select_from(quarantine).where(quarantine.c.table_name == "births")
        ).scalar_one()
    declared = values.get("reference_date")
    today = dt.date.fromisoformat(declared) if declared else dt.date.today()
    return today, int(count), int(held)


def _records(engine: Engine) -> Iterator[tuple[Mapping[Any, Any], bool]]:
    """The managed records in order, then the quarantined ones (as they were received)."""
    quarantine = managed_metadata.tables["quarantine"]
    with engine.connect() as conn:
        result = conn.execution_options(yield_per=BATCH).execute(
            select(births).order_by(births.c.id)
        )
        for row in result.mappings():
            yield row, False
        result = conn.execute(
            select(quarantine.c.record)
            .where(quarantine.c.table_name == "births")
            .order_by(quarantine.c.id)
        )
        for (text,) in result:
            yield json.loads(text), True


def load(
    source: Path, url: str, *, seed: int = 7, console: Console | None = None
) -> dict[str, Any]:
    """Replace ``CSYXZM`` at ``url`` with the legacy form of ``source``'s health store."""
    console = console or Console(stderr=True)
    legacy = _schema()
    table = legacy.CSYXZM
    started = time.perf_counter()
    reader = create_engine(f"sqlite:///{managed_health_db(source)}")
    writer = create_engine(url)
    try:
        today, count, held = _managed(reader)
        with writer.begin() as conn:
            # Not metadata.drop_all: its existence check looks for the upper-case name,
            # which PostgreSQL stores folded.
            conn.exec_driver_sql("DROP TABLE IF EXISTS CSYXZM")
            conn.execute(CreateTable(table))
        shape = LegacyRows(seed, today)
        written = 0
        progress = Progress(
            TextColumn("{task.description:<22}"),
            BarColumn(),
            TextColumn("{task.completed:>9,.0f}/{task.total:,.0f}"),
            TimeElapsedColumn(),
            console=console,
        )
        with progress:
            task = progress.add_task("certificates", total=count + held)
            batch: list[dict[str, Any]] = []
            for record, quarantined in _records(reader):
                batch.extend(shape.rows(record, quarantined=quarantined))
                if len(batch) >= BATCH:
                    written += _write(writer, table, batch)
                    progress.update(task, completed=written - shape.voided - shape.deleted)
                    batch = []
            written += _write(writer, table, batch)
            progress.update(task, completed=count + held)
            index_task = progress.add_task("indexes", total=len(table.indexes))
            with writer.begin() as conn:
                for index in sorted(table.indexes, key=lambda i: str(i.name)):
                    index.create(conn)  # skips those this database has no use for
                    progress.advance(index_task)
                # Statistics for the planner, as a live database has them.
                conn.exec_driver_sql(_ANALYZE.get(writer.dialect.name, "ANALYZE CSYXZM"))
    finally:
        reader.dispose()
        writer.dispose()
    return {
        "to": make_url(url).render_as_string(hide_password=True),
        "reference_date": today.isoformat(),
        "records": count,
        "quarantined": held,
        "voided": shape.voided,
        "deleted": shape.deleted,
        "rows": written,
        "seconds": round(time.perf_counter() - started, 1),
    }


def _write(engine: Engine, table: Any, rows: list[dict[str, Any]]) -> int:
    """One executemany per batch (multi-row INSERTs on MariaDB and PostgreSQL)."""
    if rows:
        with engine.begin() as conn:
            conn.execute(insert(table), rows)
    return len(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Write a generated population's health records as a legacy database."
    )
    parser.add_argument(
        "--from", dest="source", type=Path, required=True, help="a 'tongban generate' output dir"
    )
    parser.add_argument("--to", dest="url", required=True, help="SQLAlchemy URL to write to")
    parser.add_argument("--seed", type=int, default=7, help="the legacy habits' stream")
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    summary = load(args.source, args.url, seed=args.seed, console=console)
    console.print(
        f"{summary['rows']:,} rows → {summary['to']}: {summary['records']:,} certificates, "
        f"{summary['quarantined']:,} defective (quarantined by the managed store), "
        f"{summary['voided']:,} voided, {summary['deleted']:,} deleted; "
        f"reference date {summary['reference_date']}; {summary['seconds']} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
