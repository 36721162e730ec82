"""``tongban department check FILE``: try a department file against its database.

It loads the file (every key checked, as the adapter does), connects, runs each predicate
once on a synthetic subject (never a number read from the database), each statistic and
feature set under ``EXPLAIN``, and each quality check's count, then prints a table. Every
statement runs read-only with the file's timeout, so the database is unchanged.

Exit 0 when all is well; otherwise exit 1 with one line naming the first problem as
``FILE:LINE: KEY: what`` (the database's own message, without statement or values).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from tongban.primitives.idnumber import make_id

from .boundary import CommandFailed, UsageError
from .config import Settings
from .parsing import command

if TYPE_CHECKING:
    from tongban.adapters.deptfile import DateBind, FilePredicate, QualityCheck
    from tongban.adapters.live import LiveSource

__all__ = ["SAMPLE_RELATED", "SAMPLE_SUBJECT", "Finding", "add_department", "check_file"]

#: The synthetic subjects predicates are tried on: valid numbers, not anyone's record.
SAMPLE_SUBJECT = "11010519491231002X"
SAMPLE_RELATED = make_id("110105", dt.date(2020, 1, 1), 1)


_SOURCE_FILE = re.compile(r"^\s*source_file\s*=", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Finding:
    """One line of the report: ``ok`` or the problem, at the key's line in the file."""

    key: str
    line: int
    what: str
    ok: bool
    detail: str


def add_department(sub: Any) -> None:
    dept = command(sub, "department", "department files (docs/departments.md)")
    dept_sub = dept.add_subparsers(dest="department_command", required=True, metavar="COMMAND")
    check = command(
        dept_sub,
        "check",
        "load a department file, connect and try every query read-only (exit 1: first "
        "problem, as FILE:LINE: KEY)",
    )
    check.add_argument("file", type=Path, metavar="FILE", help="the department file")
    check.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help='for source = "managed": the data directory of the generated store',
    )
    check.set_defaults(func=_check)


def _check(args: argparse.Namespace) -> int:
    if not args.debug:
        # The report says what the source's own warnings would: one place, not two.
        logging.getLogger("tongban.adapters.live").setLevel(logging.ERROR)
    findings = check_file(args.file, data_dir=args.data_dir)
    _print(args.file, findings)
    for f in findings:
        if not f.ok:
            raise CommandFailed(f"{args.file}:{f.line}: {f.key}: {f.detail}")
    return 0


def _print(path: Path, findings: list[Finding]) -> None:
    table = Table(title=f"department check — {path}")
    for column in ("key", "line", "check", "result"):
        table.add_column(column, overflow="fold")
    for f in findings:
        mark = "[green]ok[/green]" if f.ok else "[red]FAIL[/red]"
        table.add_row(f.key, str(f.line), f.what, f"{mark} {f.detail}")
    Console().print(table)


# --- the checks ----------------------------------------------------------------------


def check_file(path: Path, *, data_dir: Path | None = None) -> list[Finding]:
    """Every check of ``tongban department check``; a file that does not load raises its
    one-line :class:`~tongban.adapters.deptfile.DepartmentFileError`."""
    from tongban.adapters.deptfile import load_department_file

    dept = load_department_file(path)
    text_ = path.read_text(encoding="utf-8")

    def line(*key: str) -> int:
        return _key_line(text_, key)

    if dept.managed:
        if data_dir is None:
            raise UsageError(f'{path}: source = "managed": pass --data-dir with its store')
        from .wiring import open_file_source

        source, _, _ = open_file_source(Settings(data_dir=data_dir), dept)
        live = source.live
    else:
        from tongban.adapters.live import LiveSource

        live = LiveSource(dept)
    source_key = "source_file" if _SOURCE_FILE.search(text_) else "source"
    counts = (
        f"{len(dept.predicates)} predicates, {len(dept.quality)} quality checks, "
        f"{len(dept.statistics)} statistics, {len(dept.features)} feature sets"
    )
    findings = [Finding("(file)", 1, "keys", True, counts)]
    try:
        health = live.health()
        if not health.get("reachable"):
            detail = str(health.get("detail", "unreachable"))
            findings.append(Finding(source_key, line(source_key), "connect", False, detail))
            return findings
        findings.append(
            Finding(source_key, line(source_key), "connect", True, str(health.get("detail")))
        )
        runner = _Runner(live)
        for name, predicate in dept.predicates.items():
            key = ("predicates", name, "sql")
            values = runner.with_dates(predicate.dates, _first_values(predicate.params))
            findings.append(runner.predicate(".".join(key), line(*key), predicate, values))
        for name, statistic in dept.statistics.items():
            key = ("statistics", name, "sql")
            values = {
                **runner.with_dates(statistic.dates, _first_values(statistic.params)),
                "record_bound": statistic.record_bound,
            }
            findings.append(runner.explain(".".join(key), line(*key), statistic.sql, values))
        for name, features in dept.features.items():
            key = ("features", name, "sql")
            values = runner.with_dates(features.dates, {})
            findings.append(runner.explain(".".join(key), line(*key), features.sql, values))
        findings.extend(runner.quality(dept.quality, line))
    finally:
        live.dispose()
    return findings


def _first_values(params: Mapping[str, tuple[str, ...]]) -> dict[str, str]:
    return {name: values[0] for name, values in params.items()}


def _key_line(text_: str, key: tuple[str, ...]) -> int:
    """The line of ``key`` in the file, as the loader places keys in its refusals."""
    from tongban.adapters.deptfile import key_line

    return key_line(text_, key)


class _Runner:
    """Runs the file's statements through the source's read-only connections and turns a
    failure into the database's own message (described without statement or values)."""

    def __init__(self, live: LiveSource) -> None:
        from tongban.adapters.live import describe_error, fifteen, interpret

        self.live = live
        self.describe = describe_error
        self.interpret = interpret
        day = dt.date.today()
        self.dates: dict[str, object] = {
            "today": day.isoformat(),
            "today_yyyymmdd": day.strftime("%Y%m%d"),
        }
        self.persons: dict[str, object] = {
            "subject": SAMPLE_SUBJECT,
            "subject15": fifteen(SAMPLE_SUBJECT),
            "related": SAMPLE_RELATED,
            "related15": fifteen(SAMPLE_RELATED),
        }

    def with_dates(
        self, dates: Mapping[str, DateBind], params: dict[str, str]
    ) -> dict[str, object]:
        """``params`` and the date binds the query declares, computed for today."""
        from tongban.adapters.deptfile import date_binds

        return {**params, **date_binds(dates, dt.date.today(), params)}

    def _run(self, sql: str, values: Mapping[str, object], limit: int) -> tuple[int, list[Any]]:
        """One statement as the adapter runs it (read-only, with the file's timeout)."""
        return self.live.run(sql, values, limit)

    def _attempt(self, key: str, line: int, what: str, run: Callable[[], str]) -> Finding:
        try:
            return Finding(key, line, what, True, run())
        except Exception as exc:  # a database error, a timeout, a statement refused
            return Finding(key, line, what, False, self._message(exc))

    def _message(self, exc: BaseException) -> str:
        from tongban.adapters.live import SourceTimeout

        if isinstance(exc, SourceTimeout | _Defect):
            return str(exc)
        return str(self.describe(exc))

    def predicate(
        self, key: str, line: int, predicate: FilePredicate, params: dict[str, object]
    ) -> Finding:
        values = {**self.dates, **self.persons, **params}

        def run() -> str:
            width, rows = self._run(predicate.sql, values, 2)
            verdict, defect = self.interpret(width, rows)
            if defect is not None:
                raise _Defect(defect)
            shown = ", ".join(f"{k}={v}" for k, v in params.items() if k in predicate.params)
            word = {"true": "yes", "false": "no"}.get(verdict.value, verdict.value)
            return f"sample subject: {word}" + (f" ({shown})" if shown else "")

        return self._attempt(key, line, "run", run)

    def explain(self, key: str, line: int, sql: str, params: dict[str, object]) -> Finding:
        values = {**self.dates, **params}

        def run() -> str:
            try:
                plan = self.live.explain(sql, values)
            except Exception:
                # The source says only that it failed: ask again, for the database's words
                # (or the plan, when what failed was re-checking the already checked text).
                prefix = "EXPLAIN QUERY PLAN" if self.live.kind == "sqlite" else "EXPLAIN"
                _w, rows = self._run(f"{prefix} {sql}", values, 1000)
                plan = [" ".join(str(v) for v in row if v is not None) for row in rows]
            first = plan[0] if plan else "(no plan rows)"
            more = f" (+{len(plan) - 1} lines)" if len(plan) > 1 else ""
            return f"EXPLAIN: {first[:80]}{more}"

        return self._attempt(key, line, "explain", run)

    def quality(
        self, checks: Mapping[str, QualityCheck], line: Callable[..., int]
    ) -> list[Finding]:
        if not checks:
            return []
        try:
            report = self.live.quality_report()
        except Exception:
            report = None
        out: list[Finding] = []
        for name, check in checks.items():
            key = ("quality", name, "sql")
            at = line(*key)
            if report is not None and name in report:
                count, masked = report[name]
                named = f": {', '.join(masked)}" if masked else ""
                out.append(Finding(".".join(key), at, "count", True, f"{count} named{named}"))
                continue

            def run(sql: str = check.sql) -> str:
                # The file's checked SELECT, wrapped: no value is ever interpolated.
                counted = f"SELECT COUNT(*) FROM (\n{sql}\n) q WHERE q.subject IS NOT NULL"  # noqa: S608
                _w, rows = self._run(counted, self.dates, 1)
                return f"{rows[0][0]} named"

            out.append(self._attempt(".".join(key), at, "count", run))
        return out


class _Defect(Exception):
    """A predicate's result that is not one value (docs/departments.md, Results)."""
