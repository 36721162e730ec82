"""A department served from its department file (docs/departments.md).

:class:`FileSource` is the file-backed twin of the managed
:class:`~tongban.adapters.evaluate.Evaluator`: both are a
:class:`~tongban.adapters.evaluate.PredicateSource`, so the same
:class:`~tongban.adapters.protocol.AdapterCore` and HTTP service answer for either. It
checks every call against the file (predicate known, parameters enumerated, ``related``
present iff declared, ID numbers valid) before any SQL runs, then asks the department's
database through :class:`~tongban.adapters.live.LiveSource`, which answers ``unknown``
whenever the source cannot be read.

"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NotRequired

from tongban.federation.statistics import (
    DEFAULT_THRESHOLD,
    REGISTRY,
    StatisticsRegistry,
)
from tongban.primitives.errors import UnknownParameter
from tongban.primitives.idnumber import parse
from tongban.primitives.wire import PredicateCall, Tri

from .deptfile import DepartmentFile, FilePredicate, FileStatistic
from .evaluate import SourceHealth
from .live import LiveSource, StatisticRows
from .statistics import Contribution, PoolCache

__all__ = [
    "FileSource",
    "FileSourceHealth",
    "FileStatistics",
    "JsonWitnessState",
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


class FileStatistics(Contribution):
    """A department file's contribution to the registered encrypted statistics, its
    rows read from the department's own database (:meth:`LiveSource.statistic_rows`);
    everything else is a managed store's (:class:`Contribution`)."""

    def __init__(
        self,
        dept: DepartmentFile,
        live: LiveSource,
        *,
        registry: StatisticsRegistry = REGISTRY,
        pools: PoolCache | None = None,
        min_threshold: int = DEFAULT_THRESHOLD,
    ) -> None:
        super().__init__(dept, registry=registry, pools=pools, min_threshold=min_threshold)
        self.dept = dept
        self.live = live

    def rows(self, declared: FileStatistic, params: Mapping[str, str], bound: int) -> StatisticRows:
        return self.live.statistic_rows(declared.name, params, record_bound=bound)


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

    def note(self) -> str | None:
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        note = doc.get("note")
        return note if isinstance(note, str) else None

    def save(self, size: int, root: bytes, note: str | None = None) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        doc: dict[str, object] = {"size": size, "root": root.hex()}
        if note is not None:
            doc["note"] = note
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".witness-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(doc, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
