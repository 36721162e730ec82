"""Anomaly flags (gateway/anomaly.py): pure functions over entry dicts."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from tongban.gateway.anomaly import Thresholds, detect, iso

# A Wednesday, 10:00 in Beijing (UTC+8): inside working hours.
NOON = dt.datetime(2026, 3, 4, 2, 0, tzinfo=dt.UTC)


def check(
    minutes: float, requester: str = "edu-bureau", subject: str = "s", **extra: Any
) -> dict[str, Any]:
    when = NOON + dt.timedelta(minutes=minutes)
    return {"kind": "check", "time": iso(when), "requester": requester, "subject": subject,
            "result": "yes", **extra}  # fmt: skip


def kinds(flags: list[Any]) -> list[tuple[str, str]]:
    return [(f.kind, f.requester) for f in flags]


def test_quiet_traffic_raises_nothing():
    entries = [check(i * 30, subject=f"s{i % 3}") for i in range(12)]
    assert detect(entries) == []


def test_burst_of_distinct_subjects_is_one_merged_flag():
    th = Thresholds(burst_subjects=5, burst_minutes=10)
    entries = [check(i, "insurer-a", f"s{i}") for i in range(8)] + [check(200, "insurer-a")]

    flags = detect(entries, th)

    assert kinds(flags) == [("burst", "insurer-a")]
    f = flags[0]
    assert f.count == 8
    assert f.since == entries[0]["time"]
    # `until` is exclusive and just after the last entry of the burst.
    assert entries[7]["time"] < f.until < entries[8]["time"]
    assert f.filters == {"requester": "insurer-a", "since": f.since, "until": f.until}


def test_the_same_subject_over_and_over_is_not_a_burst():
    th = Thresholds(burst_subjects=5)
    assert detect([check(i / 10, subject="same") for i in range(50)], th) == []


def test_spread_out_subjects_are_not_a_burst():
    th = Thresholds(burst_subjects=5, burst_minutes=10)
    assert detect([check(i * 11, subject=f"s{i}") for i in range(10)], th) == []


def test_off_hours_and_weekends_are_flagged_per_stretch():
    th = Thresholds(off_hours_checks=3)
    night = [check(16 * 60 + i, subject=f"n{i}") for i in range(3)]  # 02:00 Thursday local
    saturday = [check(3 * 24 * 60 + i, subject=f"w{i}") for i in range(3)]  # Saturday 10:00
    daytime = [check(i, subject=f"d{i}") for i in range(5)]

    flags = detect(night + saturday + daytime, th)

    assert [(f.kind, f.count) for f in flags] == [("off_hours", 3), ("off_hours", 3)]
    assert "early" in flags[0].detail and "weekend" in flags[1].detail


def test_repeated_denials_link_to_denied_entries():
    th = Thresholds(denials=3, denial_minutes=30)
    entries = [check(i, "insurer-a", f"s{i}", result="denied") for i in range(3)]
    entries += [check(5, "insurer-a", "ok")]

    flags = detect(entries, th)

    assert kinds(flags) == [("denials", "insurer-a")]
    assert flags[0].filters["result"] == "denied" and flags[0].count == 3


def test_volume_jump_against_own_baseline():
    th = Thresholds(volume_factor=3.0, volume_min=10, baseline_hours=4, burst_subjects=10_000)
    steady = [check(h * 60 + m, subject=f"b{h}-{m}") for h in range(4) for m in range(0, 60, 20)]
    jump = [check(4 * 60 + m / 2, subject=f"j{m}") for m in range(30)]

    flags = detect(steady + jump, th)

    assert kinds(flags) == [("volume_jump", "edu-bureau")]
    assert flags[0].count == 30
    assert flags[0].since == iso(NOON + dt.timedelta(hours=4))


def test_a_requester_with_a_steady_high_volume_is_not_a_jump():
    th = Thresholds(volume_min=10, burst_subjects=10_000)
    entries = [check(h * 60 + m, subject=f"{h}-{m}") for h in range(5) for m in range(30)]
    assert detect(entries, th) == []


def test_other_kinds_and_malformed_entries_are_ignored():
    entries: list[dict[str, Any]] = [
        {"kind": "officer_lookup", "time": iso(NOON), "requester": "privacy-officer"},
        {"kind": "check", "time": "not a time", "requester": "x"},
        {"kind": "check", "requester": "x"},
    ]
    assert detect(entries, Thresholds(off_hours_checks=1, burst_subjects=1)) == []


@pytest.mark.parametrize(
    "bad",
    [
        {"burst_subjects": 0},
        {"work_start_hour": 18, "work_end_hour": 8},
        {"volume_factor": 1.0},
        {"utc_offset_hours": 20},
    ],
)
def test_thresholds_are_validated(bad):
    with pytest.raises(ValueError):
        Thresholds(**bad)
