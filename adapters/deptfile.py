"""Department files: one TOML file per department, read and checked once at load.

The format is documented in ``docs/departments.md``. Loading refuses anything that is not
exactly what the format allows, with one line ``FILE:LINE: KEY: what is wrong``: unknown
keys, wrong types, bad names, an unresolvable source, bind parameters the query cannot
have, and any statement that is not one read-only ``SELECT`` (or ``WITH … SELECT``).

No refusal repeats a value that could be personal data or a secret: keys and keywords are
named, SQL text and URLs never are, and anything shaped like an ID number is masked.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, Protocol

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from tongban.primitives.errors import TongbanError, UnknownPredicate
from tongban.primitives.params import check_enumerated

__all__ = [
    "DEFAULT_TIMEOUT_MS",
    "MAX_TIMEOUT_MS",
    "SUPPORTED_DIALECTS",
    "CheckedSql",
    "DateBind",
    "Declarations",
    "DepartmentFile",
    "DepartmentFileError",
    "FeatureSet",
    "FilePredicate",
    "FileStatistic",
    "QualityCheck",
    "SqlRefused",
    "check_select",
    "date_binds",
    "key_line",
    "load_department_file",
    "mask_url",
    "parse_department_file",
]

DEFAULT_TIMEOUT_MS = 2000
MAX_TIMEOUT_MS = 60000
MANAGED = "managed"
SUPPORTED_DIALECTS = ("sqlite", "postgresql", "mysql", "mariadb")
NAME_RE = re.compile(r"[a-z][a-z0-9_]*")
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_ID_SHAPED = re.compile(r"\d{17}[\dXx]|\d{15}")

# Bind parameters the adapter supplies, by the kind of query.
_COMMON_BINDS = frozenset({"today", "today_yyyymmdd"})
_SUBJECT_BINDS = frozenset({"subject", "subject15"})
_RELATED_BINDS = frozenset({"related", "related15"})
# Bound by the adapter where it wraps a file's queries (quality checks), never by a file.
_INTERNAL_BINDS = frozenset({"subject_x", "related_x"})
_RESERVED = _COMMON_BINDS | _SUBJECT_BINDS | _RELATED_BINDS | _INTERNAL_BINDS | {"record_bound"}


class DepartmentFileError(TongbanError):
    """A department file the adapter refuses to load. The message is one line,
    ``FILE:LINE: KEY: what is wrong``."""

    status: ClassVar[int] = 500
    slug: ClassVar[str] = "department-file"
    title: ClassVar[str] = "Invalid department file"

    def __init__(self, filename: str, line: int, key: str, what: str) -> None:
        message = _one_line(f"{filename}:{line}: {key}: {what}")
        super().__init__(message)
        self.filename = filename
        self.line = line
        self.key = key


def _one_line(text: str) -> str:
    flat = " ".join(text.split())
    return _ID_SHAPED.sub(lambda m: _mask_digits(m.group(0)), flat)


def _mask_digits(number: str) -> str:
    return number[:6] + "*" * (len(number) - 10) + number[-4:]


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***``: the only way a source is named."""
    if url == MANAGED:
        return url
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return "(not a database URL)"


# --- SQL checking --------------------------------------------------------------------

_FORBIDDEN = frozenset(
    {
        "INSERT", "UPDATE", "DELETE", "MERGE", "REPLACE", "UPSERT", "DROP", "ALTER",
        "CREATE", "TRUNCATE", "GRANT", "REVOKE", "CALL", "EXEC", "EXECUTE", "COPY", "INTO",
        "LOCK", "SET", "HANDLER", "LOAD", "PRAGMA", "ATTACH", "DETACH", "VACUUM",
        # Functions that change the session (and with it the read-only guard) or open a
        # second, unguarded connection.
        "SET_CONFIG", "DBLINK", "DBLINK_EXEC",
    }
)  # fmt: skip
_WORD_RE = re.compile(r"\w+")
# Exactly the pattern sqlalchemy.text() binds by: the two must find the same names.
_BIND_RE = re.compile(r"(?<![:\w\x5c]):(\w+)(?![:\w])")
_CAST_BIND_RE = re.compile(r"(?<![:\w\x5c]):(\w+)::")


class SqlRefused(ValueError):
    """A statement :func:`check_select` refuses; ``line`` counts from 0 within the SQL."""

    def __init__(self, line: int, what: str) -> None:
        super().__init__(what)
        self.line = line
        self.what = what


@dataclass(frozen=True, slots=True)
class CheckedSql:
    """A statement that passed :func:`check_select`: ``text`` is ready for
    ``sqlalchemy.text()`` (colons in strings and comments escaped, a trailing ``;``
    removed) and ``binds`` are the parameters it uses, with the line each first appears."""

    text: str
    binds: Mapping[str, int]


@dataclass
class _Scan:
    sql: str
    pos: int = 0
    out: list[str] = field(default_factory=list)
    words: list[tuple[str, int, int]] = field(default_factory=list)  # (WORD, pos, depth)
    depth: int = 0
    end: int | None = None  # where a trailing ';' cut the statement

    def line(self, pos: int | None = None) -> int:
        return self.sql.count("\n", 0, self.pos if pos is None else pos)

    def refuse(self, what: str, pos: int | None = None) -> SqlRefused:
        return SqlRefused(self.line(pos), what)


def check_select(sql: str) -> CheckedSql:
    """Check that ``sql`` is exactly one read-only ``SELECT`` or ``WITH … SELECT``.

    Strings, quoted identifiers and comments are skipped, so a keyword inside a string is
    fine and a keyword hidden behind one is not. Constructs different databases read
    differently (backslashes, ``--x``, nested or executable comments) are refused rather
    than guessed at."""
    scan = _Scan(sql)
    while scan.pos < len(sql):
        _step(scan)
    text = "".join(scan.out)
    _check_words(scan)
    for match in _CAST_BIND_RE.finditer(text):
        raise scan.refuse(
            f":{match.group(1)}:: is not bound; write CAST(:{match.group(1)} AS ...)",
            match.start(),
        )
    binds: dict[str, int] = {}
    for match in _BIND_RE.finditer(text):
        binds.setdefault(match.group(1), text.count("\n", 0, match.start()))
    return CheckedSql(text.strip(), MappingProxyType(binds))


def _step(scan: _Scan) -> None:
    sql, i = scan.sql, scan.pos
    ch = sql[i]
    two = sql[i : i + 2]
    if ch == "'":
        _quoted(scan, "'", "a string")
    elif ch == '"':
        _quoted(scan, '"', "a quoted identifier")
    elif ch == "`":
        _quoted(scan, "`", "a quoted identifier")
    elif two == "--":
        _line_comment(scan)
    elif two == "/*":
        _block_comment(scan)
    elif ch == ";":
        _semicolon(scan)
    elif ch == "\\":
        raise scan.refuse("a backslash outside a comment reads differently on each database")
    elif ch.isalnum() or ch == "_":
        _word(scan)
    else:
        if ch == "(":
            scan.depth += 1
        elif ch == ")":
            scan.depth -= 1
        scan.out.append(ch)
        scan.pos += 1


def _quoted(scan: _Scan, quote: str, what: str) -> None:
    sql, start = scan.sql, scan.pos
    i = start + 1
    while True:
        j = sql.find(quote, i)
        if j < 0:
            raise scan.refuse(f"{what} is not closed", start)
        if sql[j + 1 : j + 2] == quote:  # a doubled quote stands for itself
            i = j + 2
            continue
        break
    body = sql[start : j + 1]
    if "\\" in body:
        raise scan.refuse(f"a backslash in {what} reads differently on MySQL and PostgreSQL", start)
    scan.out.append(_escape_colons(body))
    scan.pos = j + 1


def _escape_colons(text: str) -> str:
    return text.replace(":", "\\:")


def _line_comment(scan: _Scan) -> None:
    sql, start = scan.sql, scan.pos
    after = sql[start + 2 : start + 3]
    if after and not after.isspace():
        raise scan.refuse("'--' must be followed by a space (MySQL reads --x as minus minus x)")
    end = sql.find("\n", start)
    end = len(sql) if end < 0 else end
    scan.out.append(_escape_colons(sql[start:end]))
    scan.pos = end


def _block_comment(scan: _Scan) -> None:
    sql, start = scan.sql, scan.pos
    if sql[start + 2 : start + 3] == "!" or sql[start + 2 : start + 4] == "M!":
        raise scan.refuse("an executable comment (/*! ... */) is refused")
    end = sql.find("*/", start + 2)
    if end < 0:
        raise scan.refuse("a comment is not closed")
    if "/*" in sql[start + 2 : end]:
        raise scan.refuse("a nested comment reads differently on each database", start)
    scan.out.append(_escape_colons(sql[start : end + 2]))
    scan.pos = end + 2


def _semicolon(scan: _Scan) -> None:
    rest = _Scan(scan.sql, scan.pos + 1)
    while rest.pos < len(rest.sql):
        ch = rest.sql[rest.pos]
        if ch.isspace():
            rest.pos += 1
        elif rest.sql.startswith("--", rest.pos):
            _line_comment(rest)
        elif rest.sql.startswith("/*", rest.pos):
            _block_comment(rest)
        else:
            raise scan.refuse("more than one statement: a ';' is allowed only at the end")
    scan.end = scan.pos
    scan.pos = len(scan.sql)


def _word(scan: _Scan) -> None:
    match = _WORD_RE.match(scan.sql, scan.pos)
    assert match is not None
    word = match.group(0)
    scan.words.append((word.upper(), scan.pos, scan.depth))
    # MySQL lets a keyword follow a number with no space (SELECT 1INTO ...): judge the
    # letters after leading digits as a word of their own too.
    stripped = word.lstrip("0123456789")
    if stripped and stripped != word and not stripped.isdigit():
        scan.words.append((stripped.upper(), scan.pos, scan.depth))
    scan.out.append(word)
    scan.pos = match.end()


def _check_words(scan: _Scan) -> None:
    words = scan.words
    if not words:
        raise scan.refuse("expected a SELECT, found no statement", 0)
    first, pos, _depth = words[0]
    leading = _strip_comments(scan.sql[:pos])
    if first not in ("SELECT", "WITH") or leading.replace("(", "").strip():
        shown = f", found {first}" if first.isalpha() and len(first) <= 20 else ""
        raise scan.refuse(f"expected one SELECT or WITH ... SELECT{shown}", pos)
    for index, (word, at, _d) in enumerate(words):
        _check_word(scan, words, index, word, at)
    if first == "WITH":
        _check_with(scan)


def _check_word(
    scan: _Scan, words: list[tuple[str, int, int]], index: int, word: str, at: int
) -> None:
    before = words[index - 1][0] if index else ""
    if word in ("UPDATE", "SHARE") and before in ("FOR", "KEY"):
        raise scan.refuse(f"FOR {word} takes row locks; a predicate only reads", at)
    if word not in _FORBIDDEN:
        return
    end = at + len(word)
    if word == "REPLACE" and scan.sql[end:].lstrip().startswith("("):
        return  # REPLACE(text, from, to), the string function
    raise scan.refuse(f"{word} is not allowed: a query here is one read-only SELECT", at)


def _check_with(scan: _Scan) -> None:
    """The statement a WITH list leads to must be a SELECT: after each CTE body closes,
    the next word is AS (a column list came first), ',' (another CTE) or SELECT."""
    text = scan.sql if scan.end is None else scan.sql[: scan.end]
    depth = 0
    i = 0
    while i < len(text):
        ch = text[i]
        if ch in "'\"`":
            i = _skip_quoted(text, i)
            continue
        if text.startswith("--", i):
            i = _skip_to(text, "\n", i)
            continue
        if text.startswith("/*", i):
            i = _skip_to(text, "*/", i) + 1
            continue
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0 and _after_cte(scan, text, i + 1):
                return
        i += 1


def _after_cte(scan: _Scan, text: str, i: int) -> bool:
    """Judge what follows a parenthesis closing at depth 0: True once the main statement
    is reached (nothing after it needs judging here)."""
    rest = _strip_comments(text[i:]).lstrip()
    if rest.startswith(","):
        return False
    if rest.startswith("(") or not rest:
        return True
    word = _WORD_RE.match(rest)
    name = word.group(0).upper() if word else ""
    if name == "AS":
        return False
    if name == "SELECT":
        return True
    raise scan.refuse("WITH must lead to a SELECT", i)


def _strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.DOTALL)
    return re.sub(r"--[^\n]*", " ", text)


def _skip_quoted(text: str, i: int) -> int:
    quote = text[i]
    j = i + 1
    while j < len(text):
        if text[j] == quote:
            if text[j + 1 : j + 2] == quote:
                j += 2
                continue
            return j + 1
        j += 1
    return j


def _skip_to(text: str, end: str, i: int) -> int:
    j = text.find(end, i + 2)
    return len(text) if j < 0 else j + len(end) - 1


# --- the file's shape ----------------------------------------------------------------

_DATE_RE = re.compile(
    r"\s*(?P<base>[a-z][a-z0-9_]*)\s*"
    r"(?:(?P<sign>[+-])\s*(?P<amount>\d+|[a-z][a-z0-9_]*)\s+(?P<unit>days?|years?)\s*)?"
)
_YEAR_RE = re.compile(r"\d{4}")


@dataclass(frozen=True, slots=True)
class DateBind:
    """A date bind parameter the file derives from ``today`` or a declared parameter,
    ``dates = { since = "today - 365 days" }``: bound as ``:since`` (ISO 8601,
    ``YYYY-MM-DD``) and ``:since_yyyymmdd``, so a query needs no date arithmetic of its
    dialect. A year-valued parameter as the base is 1 January of that year; years
    are calendar years (29 February falls back to the 28th)."""

    name: str
    base: str  # "today" or a parameter whose values are years (YYYY) or ISO dates
    sign: int  # +1, -1 (0: no offset)
    amount: int | str  # a number, or a parameter whose values are integers
    unit: str  # "days" or "years"

    def value(self, today: dt.date, params: Mapping[str, str]) -> dt.date:
        if self.base == "today":
            day = today
        else:
            raw = params[self.base]
            day = dt.date(int(raw), 1, 1) if _YEAR_RE.fullmatch(raw) else dt.date.fromisoformat(raw)
        n = self.amount if isinstance(self.amount, int) else int(params[self.amount])
        if self.sign == 0 or n == 0:
            return day
        if self.unit == "days":
            return day + dt.timedelta(days=self.sign * n)
        year = day.year + self.sign * n
        try:
            return day.replace(year=year)
        except ValueError:  # 29 February
            return day.replace(year=year, day=28)


def date_binds(
    dates: Mapping[str, DateBind], today: dt.date, params: Mapping[str, str]
) -> dict[str, str]:
    """The bind values of a query's declared ``dates`` on ``today`` with ``params``."""
    out: dict[str, str] = {}
    for name, bind in dates.items():
        day = bind.value(today, params)
        out[name] = day.isoformat()
        out[f"{name}_yyyymmdd"] = day.strftime("%Y%m%d")
    return out


@dataclass(frozen=True, slots=True)
class FilePredicate:
    name: str
    description: str
    sql: str  # checked, ready for sqlalchemy.text()
    params: Mapping[str, tuple[str, ...]]
    related: bool
    binds: frozenset[str]
    dates: Mapping[str, DateBind] = field(default_factory=dict)

    def check_params(self, params: object) -> dict[str, str]:
        """``params`` as exactly the declared parameters, each an enumerated value;
        :class:`UnknownParameter` otherwise (before any SQL runs)."""
        return check_enumerated(self.name, params, self.params)

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "description": self.description,
            "params": {k: list(v) for k, v in self.params.items()},
            "related": self.related,
        }


@dataclass(frozen=True, slots=True)
class QualityCheck:
    name: str
    description: str
    sql: str
    predicates: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class FileStatistic:
    name: str
    sql: str
    params: Mapping[str, tuple[str, ...]]
    record_bound: int
    binds: frozenset[str] = frozenset()
    dates: Mapping[str, DateBind] = field(default_factory=dict)

    def check_params(self, params: object) -> dict[str, str]:
        return check_enumerated(self.name, params, self.params)


@dataclass(frozen=True, slots=True)
class FeatureSet:
    name: str
    sql: str
    columns: tuple[str, ...]
    binds: frozenset[str] = frozenset()
    dates: Mapping[str, DateBind] = field(default_factory=dict)


class Declarations(Protocol):
    """What a claim catalog validates against: a department's declared predicates (a
    :class:`DepartmentFile`, or a built-in department over its file)."""

    @property
    def predicates(self) -> Mapping[str, FilePredicate]: ...

    @property
    def statistics(self) -> Mapping[str, FileStatistic]: ...


@dataclass(frozen=True)
class DepartmentFile:
    name: str
    title: str
    # The resolved URL (it may hold a password: never log it, use ``masked_source``) or
    # "managed".
    source: str = field(repr=False)
    source_kind: str  # "managed" or the dialect: sqlite, postgresql, mysql, mariadb
    statement_timeout_ms: int
    predicates: Mapping[str, FilePredicate]
    quality: Mapping[str, QualityCheck]
    statistics: Mapping[str, FileStatistic]
    features: Mapping[str, FeatureSet]
    path: Path | None

    @property
    def masked_source(self) -> str:
        return mask_url(self.source)

    @property
    def managed(self) -> bool:
        return self.source_kind == MANAGED

    def predicate(self, name: str) -> FilePredicate:
        try:
            return self.predicates[name]
        except KeyError:
            raise UnknownPredicate(
                f"predicate: not one {self.name} evaluates; GET /v1/predicates lists them"
            ) from None

    def checks_for(self, predicate: str) -> tuple[QualityCheck, ...]:
        """The quality checks whose subjects answer ``unknown`` for ``predicate``."""
        return tuple(q for q in self.quality.values() if predicate in q.predicates)


# --- where keys are ------------------------------------------------------------------


Path_ = tuple[str, ...]
_HEADER_RE = re.compile(r"\s*\[(?!\[)\s*(.+?)\s*\]\s*(#.*)?$")
_KEY_RE = re.compile(r"""\s*((?:"(?:[^"\\]|\\.)*"|'[^']*'|[A-Za-z0-9_\-.\s])+?)\s*=(.*)$""")
_KEY_PART_RE = re.compile(r"""\s*("(?:[^"\\]|\\.)*"|'[^']*'|[A-Za-z0-9_\-]+)\s*(?:\.|$)""")


@dataclass(frozen=True, slots=True)
class _Where:
    line: int  # the key's line (1-based)
    first: int  # the line the value's text starts on
    last: int  # the line it ends on


class _Locator:
    """Lines of table headers and ``key =`` lines, from the text itself (tomllib keeps no
    positions). Good enough for files people write; anything it cannot place falls back
    to the nearest enclosing table's header."""

    def __init__(self, text: str) -> None:
        self.keys: dict[Path_, _Where] = {}
        table: Path_ = ()
        closing: str | None = None
        start: tuple[Path_, int, int] | None = None
        for number, line in enumerate(text.splitlines(), 1):
            if closing is not None:
                if closing in line:
                    closing = None
                    if start is not None:
                        self._value_ended(start, number)
                continue
            header = _HEADER_RE.match(line)
            if header and not line.lstrip().startswith("[["):
                table = _split_key(header.group(1))
                self.keys.setdefault(table, _Where(number, number, number))
                continue
            key = _KEY_RE.match(line)
            if not key:
                continue
            path = table + _split_key(key.group(1))
            value = key.group(2).strip()
            first = number + 1 if value in ('"""', "'''") else number
            self.keys.setdefault(path, _Where(number, first, number))
            closing = _opens_multiline(value)
            start = (path, number, first)

    def _value_ended(self, start: tuple[Path_, int, int], last: int) -> None:
        path, line, first = start
        if self.keys[path].line == line:
            self.keys[path] = _Where(line, first, last)

    def find(self, path: Path_) -> _Where:
        for n in range(len(path), 0, -1):
            where = self.keys.get(path[:n])
            if where is not None:
                return where
        return _Where(1, 1, 1)


def key_line(text: str, key: Sequence[str]) -> int:
    """The line of ``key`` (a path such as ``("predicates", "x", "sql")``) in a department
    file's text, as refusals place it: its own line, else its nearest enclosing table's."""
    return _Locator(text).find(tuple(key)).line


def _split_key(text: str) -> Path_:
    parts: list[str] = []
    pos = 0
    while pos < len(text):
        match = _KEY_PART_RE.match(text, pos)
        if not match or match.end() == pos:
            break
        part = match.group(1)
        parts.append(part[1:-1] if part[:1] in "\"'" else part)
        pos = match.end()
    return tuple(parts)


def _opens_multiline(value: str) -> str | None:
    for delim in ('"""', "'''"):
        if value.startswith(delim) and value.count(delim) % 2 == 1:
            return delim
    return None


# --- reading -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Ctx:
    filename: str
    where: _Locator
    env: Mapping[str, str]
    base: Path

    def fail(self, path: Path_, what: str) -> DepartmentFileError:
        return DepartmentFileError(self.filename, self.where.find(path).line, _key(path), what)

    def fail_sql(self, path: Path_, sql: str, refused: SqlRefused) -> DepartmentFileError:
        """Point at the line inside a multi-line ``sql`` when the text maps line for line
        onto the file (no line continuations); at the key's line otherwise."""
        where = self.where.find(path)
        lines = where.last - where.first + 1
        exact = where.last > where.line and lines == sql.count("\n") + 1
        line = where.first + refused.line if exact else where.line
        return DepartmentFileError(self.filename, line, _key(path), refused.what)


def _key(path: Path_) -> str:
    return ".".join(path) if path else "(file)"


_TYPE_NAMES = {
    str: "a string",
    int: "an integer",
    bool: "true or false",
    list: "a list",
    dict: "a table",
}


def _type_name(value: object) -> str:
    if isinstance(value, bool):
        return "true or false"
    for kind, name in _TYPE_NAMES.items():
        if isinstance(value, kind):
            return name
    return type(value).__name__


def _expect(ctx: _Ctx, path: Path_, value: object, kind: type) -> Any:
    if (kind is int and isinstance(value, bool)) or not isinstance(value, kind):
        raise ctx.fail(path, f"expected {_TYPE_NAMES[kind]}, found {_type_name(value)}")
    return value


def _known_keys(
    ctx: _Ctx, path: Path_, table: Mapping[str, Any], allowed: set[str], required: set[str]
) -> None:
    for key in table:
        if key not in allowed:
            raise ctx.fail((*path, key), f"unknown key; expected one of {_listing(allowed)}")
    for key in sorted(required - set(table)):
        raise ctx.fail(path, f"missing required key {key}")


def _listing(names: set[str]) -> str:
    return ", ".join(sorted(names))


def _name(ctx: _Ctx, path: Path_, name: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise ctx.fail(path, "a name is lower-case letters, digits and _, starting with a letter")
    return name


def load_department_file(path: Path, *, env: Mapping[str, str] | None = None) -> DepartmentFile:
    """Read and check one department file; :class:`DepartmentFileError` on any problem."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DepartmentFileError(str(path), 1, "(file)", f"cannot read: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DepartmentFileError(str(path), line, "(file)", "not UTF-8") from None
    return parse_department_file(text, str(path), env=env, path=path)


def parse_department_file(
    text: str,
    filename: str,
    *,
    env: Mapping[str, str] | None = None,
    path: Path | None = None,
) -> DepartmentFile:
    """Check the text of a department file. ``filename`` names it in refusals; ``path``
    (when it was read from one) anchors a relative ``source_file``; ``env`` replaces
    ``os.environ`` for ``${VAR}``."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _toml_error(filename, text, exc) from None
    base = path.parent if path is not None else Path.cwd()
    ctx = _Ctx(filename, _Locator(text), os.environ if env is None else env, base)
    return _department(ctx, doc, path)


def _toml_error(filename: str, text: str, exc: tomllib.TOMLDecodeError) -> DepartmentFileError:
    """tomllib says where parsing stopped in its message (and never what it read)."""
    message = str(exc)
    found = re.search(r"\(at line (\d+), column (\d+)\)", message)
    what = "invalid TOML: " + re.sub(r"\s*\(at [^)]*\)\s*$", "", message)
    if found:
        line = int(found.group(1))
        return DepartmentFileError(filename, line, "(toml)", f"{what} at column {found.group(2)}")
    return DepartmentFileError(filename, text.count("\n") + 1, "(toml)", what)


_TOP_KEYS = {
    "name",
    "title",
    "source",
    "source_file",
    "statement_timeout_ms",
    "predicates",
    "quality",
    "statistics",
    "features",
}


def _department(ctx: _Ctx, doc: dict[str, Any], path: Path | None) -> DepartmentFile:
    _known_keys(ctx, (), doc, _TOP_KEYS, {"name", "title"})
    name = _name(ctx, ("name",), _expect(ctx, ("name",), doc["name"], str))
    title = _expect(ctx, ("title",), doc["title"], str)
    source, kind = _source(ctx, doc)
    timeout = _timeout(ctx, doc.get("statement_timeout_ms", DEFAULT_TIMEOUT_MS))
    predicates = {n: _predicate(ctx, n, t) for n, t in _section(ctx, doc, "predicates").items()}
    quality = {n: _quality(ctx, n, t, predicates) for n, t in _section(ctx, doc, "quality").items()}
    statistics = {n: _statistic(ctx, n, t) for n, t in _section(ctx, doc, "statistics").items()}
    features = {n: _features(ctx, n, t) for n, t in _section(ctx, doc, "features").items()}
    return DepartmentFile(
        name=name,
        title=title,
        source=source,
        source_kind=kind,
        statement_timeout_ms=timeout,
        predicates=MappingProxyType(predicates),
        quality=MappingProxyType(quality),
        statistics=MappingProxyType(statistics),
        features=MappingProxyType(features),
        path=path,
    )


def _section(ctx: _Ctx, doc: dict[str, Any], section: str) -> dict[str, dict[str, Any]]:
    tables = _expect(ctx, (section,), doc.get(section, {}), dict)
    for name, table in tables.items():
        _name(ctx, (section, name), name)
        _expect(ctx, (section, name), table, dict)
    return tables  # type: ignore[no-any-return]


def _timeout(ctx: _Ctx, value: object) -> int:
    path = ("statement_timeout_ms",)
    ms: int = _expect(ctx, path, value, int)
    if not 1 <= ms <= MAX_TIMEOUT_MS:
        raise ctx.fail(path, f"expected milliseconds from 1 to {MAX_TIMEOUT_MS}")
    return ms


def _source(ctx: _Ctx, doc: dict[str, Any]) -> tuple[str, str]:
    if ("source" in doc) == ("source_file" in doc):
        which = "both" if "source" in doc else "neither"
        raise ctx.fail(("source",), f"give exactly one of source and source_file, not {which}")
    if "source" in doc:
        raw = _expect(ctx, ("source",), doc["source"], str)
        url = _substitute(ctx, raw)
        key: Path_ = ("source",)
    else:
        url = _read_source_file(ctx, _expect(ctx, ("source_file",), doc["source_file"], str))
        key = ("source_file",)
    if url == MANAGED:
        return url, MANAGED
    return url, _dialect(ctx, key, url)


def _substitute(ctx: _Ctx, raw: str) -> str:
    def value(match: re.Match[str]) -> str:
        var = match.group(1)
        if var not in ctx.env:
            raise ctx.fail(("source",), f"environment variable {var} is not set")
        return ctx.env[var]

    return _ENV_RE.sub(value, raw).strip()


def _read_source_file(ctx: _Ctx, name: str) -> str:
    path = Path(name)
    if not path.is_absolute():
        path = ctx.base / path
    try:
        with path.open(encoding="utf-8") as fh:
            first = fh.readline().strip()
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
        raise ctx.fail(("source_file",), f"cannot read {path}: {why}") from None
    if not first:
        raise ctx.fail(("source_file",), f"{path} has no URL on its first line")
    return first


def _dialect(ctx: _Ctx, key: Path_, url: str) -> str:
    try:
        parsed = make_url(url)
        dialect = parsed.get_backend_name()
    except (ArgumentError, ValueError):
        raise ctx.fail(key, "not a database URL (dialect+driver://user@host/database)") from None
    if dialect not in SUPPORTED_DIALECTS:
        raise ctx.fail(
            key, f"no read-only guard for this dialect; expected {', '.join(SUPPORTED_DIALECTS)}"
        )
    if dialect == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise ctx.fail(key, "an in-memory SQLite database holds no department data")
    return dialect


def _params(ctx: _Ctx, path: Path_, value: object) -> dict[str, tuple[str, ...]]:
    table = _expect(ctx, path, value, dict)
    out: dict[str, tuple[str, ...]] = {}
    for name, values in table.items():
        at = (*path, name)
        _name(ctx, at, name)
        if name in _RESERVED:
            raise ctx.fail(at, "this name is a bind parameter the adapter supplies")
        if not isinstance(values, list) or not values:
            raise ctx.fail(at, "expected a non-empty list of strings")
        if not all(isinstance(v, str) for v in values):
            raise ctx.fail(at, "expected a non-empty list of strings")
        if len(set(values)) != len(values):
            raise ctx.fail(at, "a value is listed twice")
        out[name] = tuple(values)
    return out


def _sql(ctx: _Ctx, path: Path_, value: object, available: frozenset[str]) -> CheckedSql:
    sql: str = _expect(ctx, path, value, str)
    try:
        checked = check_select(sql)
    except SqlRefused as refused:
        raise ctx.fail_sql(path, sql, refused) from None
    for bind, line in checked.binds.items():
        if bind not in available:
            why = _unavailable(bind, available)
            raise ctx.fail_sql(path, sql, SqlRefused(line, why))
    return checked


def _unavailable(bind: str, available: frozenset[str]) -> str:
    if bind in _RELATED_BINDS:
        return f":{bind} needs related = true"
    if bind == "record_bound":
        return ":record_bound is bound only in statistics"
    names = ", ".join(f":{b}" for b in sorted(available))
    return f":{bind} is not a parameter here (this query can use {names})"


def _unused(
    ctx: _Ctx,
    path: Path_,
    params: Mapping[str, object],
    binds: Mapping[str, int],
    dates: Mapping[str, DateBind] | None = None,
) -> None:
    dates = dates or {}
    in_dates = {d.base for d in dates.values()} | {
        d.amount for d in dates.values() if isinstance(d.amount, str)
    }
    for name in params:
        if name not in binds and name not in in_dates:
            raise ctx.fail((*path, "params", name), "declared but not used in sql")
    for name in dates:
        if name not in binds and f"{name}_yyyymmdd" not in binds:
            raise ctx.fail((*path, "dates", name), "declared but not used in sql")


def _dates(
    ctx: _Ctx, path: Path_, value: object, params: Mapping[str, tuple[str, ...]]
) -> dict[str, DateBind]:
    """``dates = { NAME = "BASE [+|- AMOUNT days|years]" }``: BASE is ``today`` or a
    parameter whose every value is a year or an ISO date; AMOUNT a number or a parameter
    whose every value is an integer."""
    table = _expect(ctx, path, value, dict)
    out: dict[str, DateBind] = {}
    for name, expr in table.items():
        at = (*path, name)
        _name(ctx, at, name)
        if name in _RESERVED or name in params or name.endswith("_yyyymmdd"):
            raise ctx.fail(at, "this name is taken (a parameter, or one the adapter supplies)")
        text_ = _expect(ctx, at, expr, str)
        match = _DATE_RE.fullmatch(text_)
        if match is None:
            raise ctx.fail(at, 'expected "today" or a parameter, then "+ N days" or "- N years"')
        base = match["base"]
        if base != "today":
            values = params.get(base)
            if values is None:
                raise ctx.fail(at, f"{base} is neither today nor a parameter declared here")
            if not all(_YEAR_RE.fullmatch(v) or _iso_date(v) for v in values):
                raise ctx.fail(at, f"every value of {base} must be a year (YYYY) or a date")
        amount: int | str = 0
        if match["amount"] is not None:
            raw = match["amount"]
            if raw.isdigit():
                amount = int(raw)
            elif raw not in params:
                raise ctx.fail(at, f"{raw} is not a parameter declared here")
            elif not all(v.isdigit() for v in params[raw]):
                raise ctx.fail(at, f"every value of {raw} must be a whole number")
            else:
                amount = raw
        sign = {"+": 1, "-": -1, None: 0}[match["sign"]]
        unit = "years" if (match["unit"] or "").startswith("year") else "days"
        out[name] = DateBind(name, base, sign, amount, unit)
    return out


def _iso_date(value: str) -> bool:
    try:
        dt.date.fromisoformat(value)
    except ValueError:
        return False
    return True


def _date_names(dates: Mapping[str, DateBind]) -> set[str]:
    return set(dates) | {f"{n}_yyyymmdd" for n in dates}


_PREDICATE_KEYS = {"sql", "params", "related", "description", "dates"}


def _predicate(ctx: _Ctx, name: str, table: dict[str, Any]) -> FilePredicate:
    path = ("predicates", name)
    _known_keys(ctx, path, table, _PREDICATE_KEYS, {"sql"})
    params = _params(ctx, (*path, "params"), table.get("params", {}))
    related: bool = _expect(ctx, (*path, "related"), table.get("related", False), bool)
    description: str = _expect(ctx, (*path, "description"), table.get("description", ""), str)
    dates = _dates(ctx, (*path, "dates"), table.get("dates", {}), params)
    available = _COMMON_BINDS | _SUBJECT_BINDS | set(params) | _date_names(dates)
    if related:
        available |= _RELATED_BINDS
    checked = _sql(ctx, (*path, "sql"), table["sql"], frozenset(available))
    _unused(ctx, path, params, checked.binds, dates)
    if not _SUBJECT_BINDS & set(checked.binds):
        raise ctx.fail((*path, "sql"), "never binds :subject or :subject15")
    if related and not _RELATED_BINDS & set(checked.binds):
        raise ctx.fail((*path, "sql"), "related = true but never binds :related or :related15")
    return FilePredicate(
        name=name,
        description=description,
        sql=checked.text,
        params=MappingProxyType(params),
        related=related,
        binds=frozenset(checked.binds),
        dates=MappingProxyType(dates),
    )


def _quality(
    ctx: _Ctx, name: str, table: dict[str, Any], predicates: Mapping[str, FilePredicate]
) -> QualityCheck:
    path = ("quality", name)
    _known_keys(ctx, path, table, {"sql", "description", "predicates"}, {"sql"})
    description: str = _expect(ctx, (*path, "description"), table.get("description", ""), str)
    checked = _sql(ctx, (*path, "sql"), table["sql"], _COMMON_BINDS)
    covered = tuple(predicates)
    if "predicates" in table:
        names = _expect(ctx, (*path, "predicates"), table["predicates"], list)
        if not names or not all(isinstance(n, str) for n in names):
            raise ctx.fail((*path, "predicates"), "expected a non-empty list of predicate names")
        for n in names:
            if n not in predicates:
                raise ctx.fail((*path, "predicates"), f"no predicate {n} in this file")
        covered = tuple(dict.fromkeys(names))
    return QualityCheck(name, description, checked.text, covered)


def _statistic(ctx: _Ctx, name: str, table: dict[str, Any]) -> FileStatistic:
    path = ("statistics", name)
    _known_keys(ctx, path, table, {"sql", "params", "record_bound", "dates"}, {"sql"})
    params = _params(ctx, (*path, "params"), table.get("params", {}))
    bound: int = _expect(ctx, (*path, "record_bound"), table.get("record_bound", 1), int)
    if bound < 1:
        raise ctx.fail((*path, "record_bound"), "expected a positive integer")
    dates = _dates(ctx, (*path, "dates"), table.get("dates", {}), params)
    available = frozenset(_COMMON_BINDS | {"record_bound"} | set(params) | _date_names(dates))
    checked = _sql(ctx, (*path, "sql"), table["sql"], available)
    _unused(ctx, path, params, checked.binds, dates)
    return FileStatistic(
        name,
        checked.text,
        MappingProxyType(params),
        bound,
        frozenset(checked.binds),
        MappingProxyType(dates),
    )


def _features(ctx: _Ctx, name: str, table: dict[str, Any]) -> FeatureSet:
    path = ("features", name)
    _known_keys(ctx, path, table, {"sql", "columns", "dates"}, {"sql", "columns"})
    columns = _expect(ctx, (*path, "columns"), table["columns"], list)
    if not columns or not all(isinstance(c, str) for c in columns):
        raise ctx.fail((*path, "columns"), "expected a non-empty list of column names")
    for column in columns:
        _name(ctx, (*path, "columns"), column)
    if len(set(columns)) != len(columns):
        raise ctx.fail((*path, "columns"), "a column is listed twice")
    dates = _dates(ctx, (*path, "dates"), table.get("dates", {}), {})
    available = frozenset(_COMMON_BINDS | _date_names(dates))
    checked = _sql(ctx, (*path, "sql"), table["sql"], available)
    _unused(ctx, path, {}, checked.binds, dates)
    return FeatureSet(
        name, checked.text, tuple(columns), frozenset(checked.binds), MappingProxyType(dates)
    )
