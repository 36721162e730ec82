"""A department served from its department file (docs/departments.md).

:class:`FileSource` is the file-backed twin of the managed
:class:`~tongban.adapters.evaluate.Evaluator`: both are a
:class:`~tongban.adapters.evaluate.PredicateSource`, so the same
:class:`~tongban.adapters.protocol.AdapterCore` and HTTP service answer for either. It
checks every call against the file (predicate known, parameters enumerated, ``related``
present iff declared, ID numbers valid) before any SQL runs, then asks the department's
database through :class:`~tongban.adapters.live.LiveSource`, which answers ``unknown``
whenever the source cannot be read.

:func:`catalog_department` gives the gateway what its claim catalog validates against:
the file's predicates and their enumerations, as a :class:`Department` with no tables.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NotRequired, cast

from sqlalchemy import Connection, MetaData

from tongban.federation.paillier import (
    InvalidPublicKey,
    OutOfBounds,
    encrypt_vector,
    key_fingerprint,
    parse_public_key,
)
from tongban.federation.statistics import (
    DEFAULT_THRESHOLD,
    REGISTRY,
    Release,
    Statistic,
    StatisticsRegistry,
    UnknownStatistic,
)
from tongban.primitives.errors import UnknownParameter
from tongban.primitives.idnumber import parse
from tongban.primitives.wire import PredicateCall, Tri

from .department import Department, Param, Predicate
from .deptfile import DepartmentFile, DepartmentFileError, FilePredicate, key_line
from .evaluate import SourceHealth
from .live import LiveSource
from .statistics import LocalStatistics, PoolCache

__all__ = [
    "FileSource",
    "FileSourceHealth",
    "FileStatistics",
    "JsonWitnessState",
    "catalog_department",
    "referenced_variables",
]

_ID_SHAPED = re.compile(r"(?<![0-9])(?:[0-9]{17}[0-9Xx]|[0-9]{15})(?![0-9Xx])")
_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class FileSourceHealth(SourceHealth):
    #: Answers so far that the file's queries returned in an undeclared shape.
    defects: NotRequired[int]


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


class FileSource:
    """A department file's predicates, answered live from its database.

    ``kind``: what ``/healthz`` calls the source (default: the database's dialect;
    ``managed`` for a file over the generated store). ``reference``: the date the
    answers are evaluated at, for a managed store (its reference date, which is then the
    answers' ``as_of``); live sources are evaluated at today and their ``as_of`` is the
    time of reading.
    """

    def __init__(
        self,
        dept: DepartmentFile,
        live: LiveSource,
        *,
        kind: str | None = None,
        reference: Callable[[], dt.date] | None = None,
        clock: Callable[[], str] = _now,
    ) -> None:
        self.dept = dept
        self.live = live
        self._kind = kind or live.kind
        self._reference = reference
        self._clock = clock

    @property
    def name(self) -> str:
        return self.dept.name

    @property
    def title(self) -> str:
        return self.dept.title

    @property
    def kind(self) -> str:
        return self._kind

    @property
    def defects(self) -> int:
        return self.live.defects

    def describe(self) -> list[dict[str, object]]:
        return [p.describe() for p in self.dept.predicates.values()]

    def _today(self) -> dt.date | None:
        return self._reference() if self._reference is not None else None

    def answer_as_of(self) -> str:
        if self._reference is not None:
            return self._reference().isoformat()
        return self._clock()

    # --- the calls ------------------------------------------------------------------

    def check(self, call: PredicateCall) -> tuple[FilePredicate, dict[str, str], str, str | None]:
        """The call as the file allows it, in the Evaluator's order: the predicate and its
        parameters before the subject is looked at, so a malformed request reveals
        nothing about anyone. Raises the usual 4xx problems; reads nothing."""
        predicate = self.dept.predicate(call.predicate)
        params = predicate.check_params(call.params)
        if (call.related is None) == predicate.related:
            need = "needs" if predicate.related else "takes no"
            raise UnknownParameter(f"related: {predicate.name} {need} related person")
        subject = parse(call.subject).number
        related = parse(call.related).number if call.related is not None else None
        return predicate, params, subject, related

    def evaluate(self, call: PredicateCall) -> Tri:
        predicate, params, subject, related = self.check(call)
        return self.live.evaluate(predicate.name, subject, params, related, today=self._today())

    def evaluate_many(
        self, predicate_name: str, params: Mapping[str, str], subjects: list[str]
    ) -> list[Tri]:
        predicate = self.dept.predicate(predicate_name)
        if predicate.related:
            raise UnknownParameter(f"related: {predicate.name} cannot be batched")
        clean = predicate.check_params(params)
        numbers = [parse(s).number for s in subjects]
        return self.live.evaluate_many(predicate.name, numbers, clean, today=self._today())

    # --- operations -----------------------------------------------------------------

    def health(self) -> FileSourceHealth:
        """A live probe of the source. The detail names the source with its password
        masked and the driver's error without statement or parameters."""
        probe = self.live.health()
        detail = _ID_SHAPED.sub("<ID number>", str(probe.get("detail", "")))
        return FileSourceHealth(
            kind=self.kind,
            reachable=bool(probe.get("reachable")),
            detail=detail,
            defects=self.live.defects,
        )

    def dispose(self) -> None:
        self.live.dispose()


# --- statistics ------------------------------------------------------------------------


class FileStatistics:
    """A department file's contribution to the registered encrypted statistics: its
    ``[statistics.NAME]`` query gives the rows ``(cell, value, records)``; everything else
    (validation before any SQL, bounds, small-cell suppression or noise, encryption) is as
    for a managed store (:class:`LocalStatistics`). A statistic the file does not declare,
    or one this department is not a party to, is refused as unknown.

    The file's ``record_bound`` is bound as ``:record_bound`` (for the query to clip each
    record's amount): it may not exceed the registered statistic's own bound, the
    sensitivity its noise is scaled to.
    """

    def __init__(
        self,
        dept: DepartmentFile,
        live: LiveSource,
        *,
        registry: StatisticsRegistry = REGISTRY,
        pools: PoolCache | None = None,
        min_threshold: int = DEFAULT_THRESHOLD,
    ) -> None:
        self.dept = dept
        self.live = live
        self.registry = registry
        self.min_threshold = min_threshold
        self.pools = pools if pools is not None else PoolCache()
        for name, declared in dept.statistics.items():
            try:
                statistic = registry.get(name)
            except UnknownStatistic:
                continue  # declared for the department's own use: never requested
            if declared.record_bound > statistic.record_bound:
                raise self._refuse(
                    ("statistics", name, "record_bound"),
                    f"at most {statistic.record_bound}, the bound {name} is registered with",
                )

    def _refuse(self, key: tuple[str, ...], what: str) -> DepartmentFileError:
        path = self.dept.path
        text = path.read_text(encoding="utf-8") if path is not None else ""
        name = str(path) if path is not None else self.dept.name
        return DepartmentFileError(name, key_line(text, key), ".".join(key), what)

    def contribute(
        self,
        name: object,
        params: object,
        key_jwk: object,
        parties: object,
        release: object = None,
    ) -> tuple[Statistic, dict[str, str], str, list[int], Release]:
        """Validate everything before touching data; the encrypted vector and the release
        rules applied (the threshold raised to this department's floor)."""
        statistic = self.registry.get(name)
        declared = self.dept.statistics.get(statistic.name)
        if self.dept.name not in statistic.departments or declared is None:
            raise UnknownStatistic(f"statistic: {self.dept.name} does not contribute to it")
        clean = statistic.check_params(params)
        declared.check_params(clean)  # the file may enumerate fewer values
        count = statistic.check_parties(parties)
        rules = Release() if release is None else Release.from_json(release)
        rules = Release(max(rules.threshold, self.min_threshold), rules.epsilon)
        if not isinstance(key_jwk, Mapping):
            raise InvalidPublicKey("key: expected a JWK object")
        key = parse_public_key(key_jwk)
        layout = statistic.layout(key.n, count, rules)
        values = self.vector(statistic, clean)
        # The release rules are the managed store's, exactly (they read nothing of self).
        protected = LocalStatistics.protect(
            cast(LocalStatistics, self), statistic, values, rules, count
        )
        ciphertexts = encrypt_vector(key, protected, layout, self.pools.get(key))
        return statistic, clean, key_fingerprint(key), ciphertexts, rules

    def vector(self, statistic: Statistic, params: Mapping[str, str]) -> list[int]:
        """The plaintext vector: one value per declared cell (zero where the query has no
        row; rows of other cells are not released), then the record counts for a
        statistic with a count companion."""
        sums = dict.fromkeys(statistic.cells, 0)
        counts = dict.fromkeys(statistic.cells, 0)
        for cell, value, records in self.live.statistic_rows(statistic.name, params):
            if cell in sums:
                sums[cell] += value
                counts[cell] += records
        values = [sums[c] for c in statistic.cells]
        if not statistic.counts_records:
            values += [counts[c] for c in statistic.cells]
        if any(v < 0 or v > statistic.value_bound for v in values):
            raise OutOfBounds(f"{statistic.name}: a local value exceeds the declared bound")
        return values


# --- the gateway's view ----------------------------------------------------------------


def _never(conn: Connection, subject: str, params: Mapping[str, str], as_of: dt.date) -> bool:
    raise RuntimeError("a catalog department's predicates are declarations, never evaluated")


def _never_related(conn: Connection, subject: str, related: str, as_of: dt.date) -> bool:
    raise RuntimeError("a catalog department's predicates are declarations, never evaluated")


def catalog_department(dept: DepartmentFile) -> Department:
    """The file's predicates as the claim catalog reads declarations: names, enumerated
    parameters and whether they relate two people. No tables, nothing to evaluate."""
    predicates = {
        name: Predicate(
            name,
            p.description,
            _never,
            (),
            tuple(Param(k, tuple(v)) for k, v in p.params.items()),
            _never_related if p.related else None,
        )
        for name, p in dept.predicates.items()
    }
    return Department(dept.name, dept.title, MetaData(), {}, (), predicates)


def referenced_variables(path: Path) -> list[str]:
    """The environment variables a department file's ``${VAR}`` names (for a supervisor
    that hands its children only the variables they need)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []
    return sorted(set(_ENV_REFERENCE.findall(text)))


# --- witness state -----------------------------------------------------------------------


class JsonWitnessState:
    """The last checkpoint a file department's witness cosigned, in a JSON file of the
    adapter's own: the department's database is read-only to tongban."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> tuple[int, bytes] | None:
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        return int(doc["size"]), bytes.fromhex(doc["root"])

    def save(self, size: int, root: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".witness-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump({"size": size, "root": root.hex()}, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
