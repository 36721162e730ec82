"""One value of an enumerated parameter per subject and window: no walking the enumeration.

``household_in_district`` answers "is this citizen's household in district D?". A requester
that may ask it could try every district in turn and learn the household's district, an
attribute, from at most eight yes/no answers. So each enumerated parameter of a claim carries
a limit, declared in the claim catalog beside the claim (``gateway/claims.json``)::

    "param_limits": {"district": {"distinct_values": 1, "window_seconds": 2592000}}

Within ``window_seconds`` of asking one value about a subject, a requester may ask that same
value again (a re-check), and up to ``distinct_values`` values in all; the next value is
refused with 403 ``parameter-enumeration``, before any department is asked. A parameter the
catalog does not limit gets :data:`DEFAULT_LIMIT` (one value per 30 days): enumeration is
refused unless a claim says otherwise.

The record is a table of the gateway database, shared by every worker, that never holds an
ID number or a value: a row is keyed by HMAC-SM3-derived hashes of the requester, claim,
parameter and the audit log's pseudonym of the subject (itself keyed), and holds a hash of the
value under that key, its slot and its expiry. Two workers racing to record two values for one
subject collide on the primary key ``(key, slot)``, and the loser re-reads and is refused.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, Engine, Float, Integer, MetaData, String, Table, delete, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from tongban.primitives.db import make_engine
from tongban.primitives.errors import Forbidden, StoreUnavailable
from tongban.primitives.gm import sm3

__all__ = [
    "DEFAULT_LIMIT",
    "EnumerationGuard",
    "ParamLimit",
    "ParameterEnumeration",
    "metadata",
    "param_asks",
]

_CHUNK = 500  # keys per IN (...) list
_RETRIES = 5  # re-reads after losing a race on (key, slot)
_PURGE_EVERY = 3600.0


@dataclass(frozen=True, slots=True)
class ParamLimit:
    distinct_values: int
    window_seconds: float

    @classmethod
    def from_json(cls, doc: Any, where: str) -> ParamLimit:
        if not isinstance(doc, Mapping) or set(doc) != {"distinct_values", "window_seconds"}:
            raise ValueError(f"{where}: expected {{distinct_values, window_seconds}}")
        count, window = doc["distinct_values"], doc["window_seconds"]
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"{where}: distinct_values must be an integer >= 1")
        if isinstance(window, bool) or not isinstance(window, int | float) or window <= 0:
            raise ValueError(f"{where}: window_seconds must be > 0")
        return cls(count, float(window))

    def describe(self) -> dict[str, object]:
        return {"distinct_values": self.distinct_values, "window_seconds": self.window_seconds}


#: What an enumerated parameter the catalog does not limit gets: one value per 30 days.
DEFAULT_LIMIT = ParamLimit(1, 30 * 86400.0)


class ParameterEnumeration(Forbidden):
    """Another value of an enumerated parameter, about the same subject, inside the window."""

    slug = "parameter-enumeration"
    title = "Another value of this parameter was asked about this subject within its window"


metadata = MetaData()
param_asks = Table(
    "param_asks",
    metadata,
    Column("key", String(64), primary_key=True),  # hex HMAC-SM3-derived: no subject, no name
    Column("slot", Integer, primary_key=True),  # 0 .. distinct_values-1
    Column("value", String(64), nullable=False),  # hash of the value under the key
    Column("expires", Float, nullable=False, index=True),  # unix seconds
)


def _chunks(items: Sequence[str], size: int = _CHUNK) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class EnumerationGuard:
    """The shared record of which values were asked about whom (module docstring)."""

    def __init__(
        self,
        url_or_engine: str | Engine,
        *,
        pseudonym: Callable[[str], str],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = (
            make_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
        )
        self._pseudonym = pseudonym
        self._clock = clock
        self._next_purge = 0.0
        self._serial: AbstractContextManager[Any] = (
            threading.Lock() if self.engine.dialect.name == "sqlite" else nullcontext()
        )

    def create_schema(self) -> None:
        """The gateway chain's head revision (tongban.migrations), for tests and the demo;
        a deployment runs ``tongban db upgrade``."""
        from tongban.migrations import GATEWAY, upgrade

        try:
            upgrade(self.engine, GATEWAY)
        except SQLAlchemyError as exc:
            raise StoreUnavailable("the parameter record is unavailable") from exc

    def _key(self, requester: str, claim: str, param: str, subject: str) -> str:
        text = "\0".join(("tongban-param-ask", requester, claim, param, self._pseudonym(subject)))
        return sm3(text.encode("utf-8")).hex()

    @staticmethod
    def _value(key: str, value: str) -> str:
        return sm3(f"{key}\0{value}".encode()).hex()

    def admit(
        self,
        requester: str,
        claim: str,
        params: Mapping[str, str],
        limits: Mapping[str, ParamLimit],
        subjects: Sequence[str],
    ) -> set[int]:
        """Record each subject's asked values and return the positions refused (another
        value inside the window, beyond ``distinct_values``). A refused subject records
        nothing; an admitted one has every limited parameter recorded."""
        if not subjects:
            return set()
        asks = [
            ([self._key(requester, claim, name, s) for s in subjects], value, limits[name])
            for name, value in sorted(params.items())
            if name in limits
        ]
        if not asks:
            return set()
        return self._record(asks, self._clock())

    def check_one(
        self,
        requester: str,
        claim: str,
        params: Mapping[str, str],
        limits: Mapping[str, ParamLimit],
        subject: str,
    ) -> None:
        """:meth:`admit` for one subject: :class:`ParameterEnumeration` if refused."""
        if self.admit(requester, claim, params, limits, [subject]):
            limited = sorted(set(params) & set(limits))
            limit = limits[limited[0]]
            raise ParameterEnumeration(
                f"params: {limited[0]}: this requester asked another value about this subject "
                f"within {int(limit.window_seconds)} s; at most {limit.distinct_values} "
                "value(s) per subject in that window",
                parameter=limited[0],
                window_seconds=int(limit.window_seconds),
                distinct_values=limit.distinct_values,
            )

    def _record(self, asks: list[tuple[list[str], str, ParamLimit]], now: float) -> set[int]:
        """One transaction: decide every (subject, parameter), then record the admitted."""
        for _ in range(_RETRIES):
            try:
                with self._serial, self.engine.begin() as conn:
                    if now >= self._next_purge:
                        conn.execute(delete(param_asks).where(param_asks.c.expires <= now))
                        self._next_purge = now + _PURGE_EVERY
                    refused: set[int] = set()
                    fresh: dict[int, list[dict[str, object]]] = {}
                    for keys, value, limit in asks:
                        no, new = self._decide(conn, keys, value, limit, now)
                        refused |= no
                        for i, row in new:
                            fresh.setdefault(i, []).append(row)
                    rows = [r for i, rs in fresh.items() if i not in refused for r in rs]
                    self._insert(conn, rows, now)
                    return refused
            except IntegrityError:
                continue  # another worker recorded a value for one of these keys: re-read
            except SQLAlchemyError as exc:
                raise StoreUnavailable("the parameter record is unavailable") from exc
        raise StoreUnavailable("the parameter record is unavailable (contended)")

    def _decide(
        self, conn: Any, keys: list[str], value: str, limit: ParamLimit, now: float
    ) -> tuple[set[int], list[tuple[int, dict[str, object]]]]:
        held: dict[str, dict[int, str]] = {}
        for chunk in _chunks(sorted(set(keys))):
            rows = conn.execute(
                select(param_asks.c.key, param_asks.c.slot, param_asks.c.value).where(
                    param_asks.c.key.in_(chunk), param_asks.c.expires > now
                )
            )
            for key, slot, stored in rows:
                held.setdefault(key, {})[int(slot)] = stored
        refused: set[int] = set()
        fresh: list[tuple[int, dict[str, object]]] = []
        for i, key in enumerate(keys):
            slots = held.setdefault(key, {})
            digest = self._value(key, value)
            if digest in slots.values():
                continue  # the same value again: a re-check
            if len(slots) >= limit.distinct_values:
                refused.add(i)
                continue
            slot = next(n for n in range(limit.distinct_values) if n not in slots)
            slots[slot] = digest  # a duplicate subject in one batch takes this slot too
            fresh.append((i, {"key": key, "slot": slot, "value": digest,
                              "expires": now + limit.window_seconds}))  # fmt: skip
        return refused, fresh

    @staticmethod
    def _insert(conn: Any, rows: list[dict[str, object]], now: float) -> None:
        unique = list({(r["key"], r["slot"]): r for r in rows}.values())
        if not unique:
            return
        # An expired row in a slot is replaced: delete it first, then insert.
        for chunk in _chunks(sorted({str(r["key"]) for r in unique})):
            conn.execute(
                delete(param_asks).where(param_asks.c.key.in_(chunk), param_asks.c.expires <= now)
            )
        conn.execute(param_asks.insert(), unique)
