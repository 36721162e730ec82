"""Anomaly flags over audit entries: plain Python, no Flask, no database.

Four patterns a privacy officer asks about, each with a configurable threshold:

- ``burst``: one requester checking many *distinct* subjects within a short window
  (a fishing expedition looks like this; a batch run for a statutory programme does too,
  which is why a person reviews the flag rather than a rule blocking it);
- ``off_hours``: checks outside working hours (local time, weekends included);
- ``denials``: repeated refusals for one requester within a window (probing the policy);
- ``volume_jump``: a requester's hourly volume far above its own recent baseline.

Each :class:`Flag` carries the filters (requester, since, until, result) that select the
entries behind it, so the page can link to exactly those.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Flag", "Thresholds", "detect", "iso"]


@dataclass(frozen=True, slots=True)
class Thresholds:
    burst_subjects: int = 20  # distinct subjects ...
    burst_minutes: int = 10  # ... within this many minutes
    work_start_hour: int = 8  # local working day [start, end), Monday to Friday
    work_end_hour: int = 18
    utc_offset_hours: int = 8  # China Standard Time
    off_hours_checks: int = 5  # checks in one off-hours stretch
    denials: int = 5  # refusals ...
    denial_minutes: int = 60  # ... within this many minutes
    volume_factor: float = 3.0  # an hour above factor x baseline ...
    volume_min: int = 20  # ... with at least this many checks ...
    baseline_hours: int = 24  # ... against the mean of this many preceding hours

    def __post_init__(self) -> None:
        for name in ("burst_subjects", "burst_minutes", "off_hours_checks", "denials",
                     "denial_minutes", "volume_min", "baseline_hours"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected at least 1")
        if not 0 <= self.work_start_hour < self.work_end_hour <= 24:
            raise ValueError("work hours: expected 0 <= start < end <= 24")
        if not -12 <= self.utc_offset_hours <= 14:
            raise ValueError("utc_offset_hours: expected -12 to 14")
        if self.volume_factor <= 1:
            raise ValueError("volume_factor: expected more than 1")


@dataclass(frozen=True, slots=True)
class Flag:
    kind: str  # burst | off_hours | denials | volume_jump
    requester: str
    since: str  # first entry's time (inclusive)
    until: str  # just after the last entry's time (exclusive, as the log's filter)
    count: int  # entries behind the flag (distinct subjects for a burst)
    detail: str
    extra_filters: Mapping[str, str] = field(default_factory=dict)

    @property
    def filters(self) -> dict[str, str]:
        """The entry filters that select what raised the flag."""
        return {"requester": self.requester, "since": self.since, "until": self.until,
                **self.extra_filters}  # fmt: skip


def iso(when: dt.datetime) -> str:
    """The log's time format: UTC, milliseconds, ``Z``."""
    return when.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class _Row:
    time: dt.datetime
    requester: str
    subject: str | None
    denied: bool


def _rows(entries: Iterable[Mapping[str, Any]]) -> dict[str, list[_Row]]:
    by_requester: dict[str, list[_Row]] = defaultdict(list)
    for e in entries:
        if e.get("kind", "check") != "check":
            continue
        requester, when = e.get("requester"), e.get("time")
        if not isinstance(requester, str) or not isinstance(when, str):
            continue
        try:
            t = dt.datetime.fromisoformat(when)
        except ValueError:
            continue
        if t.tzinfo is None:
            t = t.replace(tzinfo=dt.UTC)
        subject = e.get("subject")
        by_requester[requester].append(
            _Row(t, requester, subject if isinstance(subject, str) else None,
                 e.get("result") == "denied")
        )  # fmt: skip
    for rows in by_requester.values():
        rows.sort(key=lambda r: r.time)
    return by_requester


_MS = dt.timedelta(milliseconds=1)


def _windows(
    rows: Sequence[_Row], window: dt.timedelta, enough: int, *, distinct: bool
) -> list[tuple[dt.datetime, dt.datetime, int]]:
    """Stretches where some ``window`` holds at least ``enough`` rows (or distinct
    subjects), merged when they overlap: (first time, last time, count in the stretch)."""
    out: list[tuple[dt.datetime, dt.datetime, set[str | int]]] = []
    live: deque[tuple[int, _Row]] = deque()
    seen: Counter[str | int] = Counter()
    for i, row in enumerate(rows):
        key: str | int = row.subject if distinct and row.subject is not None else i
        live.append((i, row))
        seen[key] += 1
        while live[0][1].time < row.time - window:
            j, old = live.popleft()
            old_key: str | int = old.subject if distinct and old.subject is not None else j
            seen[old_key] -= 1
            if not seen[old_key]:
                del seen[old_key]
        if len(seen) >= enough:
            start = live[0][1].time
            keys = set(seen)
            if out and start <= out[-1][1]:
                first, _, had = out[-1]
                out[-1] = (first, row.time, had | keys)
            else:
                out.append((start, row.time, keys))
    return [(a, b, len(k)) for a, b, k in out]


def _bursts(rows: Sequence[_Row], th: Thresholds) -> list[Flag]:
    window = dt.timedelta(minutes=th.burst_minutes)
    return [
        Flag("burst", rows[0].requester, iso(a), iso(b + _MS), n,
             f"{n} distinct subjects within {th.burst_minutes} min windows")
        for a, b, n in _windows(rows, window, th.burst_subjects, distinct=True)
    ]  # fmt: skip


def _denials(rows: Sequence[_Row], th: Thresholds) -> list[Flag]:
    denied = [r for r in rows if r.denied]
    if not denied:
        return []
    window = dt.timedelta(minutes=th.denial_minutes)
    return [
        Flag("denials", denied[0].requester, iso(a), iso(b + _MS), n,
             f"{n} refused checks within {th.denial_minutes} min windows",
             {"result": "denied"})
        for a, b, n in _windows(denied, window, th.denials, distinct=False)
    ]  # fmt: skip


def _off_hours(rows: Sequence[_Row], th: Thresholds) -> list[Flag]:
    tz = dt.timezone(dt.timedelta(hours=th.utc_offset_hours))
    stretches: dict[tuple[dt.date, str], list[_Row]] = defaultdict(list)
    for r in rows:
        local = r.time.astimezone(tz)
        if local.weekday() >= 5:
            stretches[(local.date(), "weekend")].append(r)
        elif local.hour < th.work_start_hour:
            stretches[(local.date(), "early")].append(r)
        elif local.hour >= th.work_end_hour:
            stretches[(local.date(), "late")].append(r)
    flags = []
    for (day, part), found in sorted(stretches.items()):
        if len(found) >= th.off_hours_checks:
            flags.append(
                Flag("off_hours", found[0].requester, iso(found[0].time),
                     iso(found[-1].time + _MS), len(found),
                     f"{len(found)} checks outside working hours ({day.isoformat()}, {part})")
            )  # fmt: skip
    return flags


def _volume(rows: Sequence[_Row], th: Thresholds) -> list[Flag]:
    def hour(t: dt.datetime) -> dt.datetime:
        return t.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)

    counts = Counter(hour(r.time) for r in rows)
    first = min(counts)
    flags = []
    for h, n in sorted(counts.items()):
        if h == first or n < th.volume_min:
            continue  # no baseline before a requester's first hour
        start = max(first, h - dt.timedelta(hours=th.baseline_hours))
        span = int((h - start) / dt.timedelta(hours=1))
        before = sum(c for k, c in counts.items() if start <= k < h)
        baseline = before / span
        if n > th.volume_factor * max(baseline, 1.0):
            flags.append(
                Flag("volume_jump", rows[0].requester, iso(h), iso(h + dt.timedelta(hours=1)), n,
                     f"{n} checks in one hour against a baseline of {baseline:.1f}/h")
            )  # fmt: skip
    return flags


def detect(
    entries: Iterable[Mapping[str, Any]], thresholds: Thresholds | None = None
) -> list[Flag]:
    """Every flag the entries raise, grouped by requester, earliest first."""
    th = thresholds or Thresholds()
    flags: list[Flag] = []
    for _requester, rows in sorted(_rows(entries).items()):
        for rule in (_bursts, _off_hours, _denials, _volume):
            flags.extend(rule(rows, th))
    return flags
