"""Vectorised helpers over record batches (NumPy columns)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping

import numpy as np
import numpy.typing as npt

__all__ = ["dates", "end_not_after_start", "in_future", "precedes", "years_before", "yyyymmdd"]


def yyyymmdd(dates: npt.NDArray[np.datetime64]) -> npt.NDArray[np.int64]:
    """datetime64[D] → integer YYYYMMDD (NaT becomes a very large number)."""
    days = dates.astype("datetime64[D]")
    months = days.astype("datetime64[M]")
    year = months.astype("datetime64[Y]").astype(np.int64) + 1970
    month = months.astype(np.int64) % 12 + 1
    day = (days - months).astype(np.int64) + 1
    out: npt.NDArray[np.int64] = year * 10000 + month * 100 + day
    out[np.isnat(dates)] = 99_999_999
    return out


def dates(values: npt.NDArray[np.generic]) -> npt.NDArray[np.datetime64]:
    """A batch column as datetime64[D] (batches are loosely typed)."""
    return np.asarray(values, dtype="datetime64[D]")


def _mask(values: object) -> npt.NDArray[np.bool_]:
    return np.asarray(values, dtype=bool)


def years_before(as_of: dt.date, years: int) -> dt.date:
    """The date ``years`` before ``as_of`` (29 February falls back to the 28th)."""
    try:
        return as_of.replace(year=as_of.year - years)
    except ValueError:
        return as_of.replace(year=as_of.year - years, day=28)


Batch = Mapping[str, npt.NDArray[np.generic]]
Check = Callable[[Batch, dt.date], npt.NDArray[np.bool_]]


def end_not_after_start(start: str, end: str) -> Check:
    """A period whose (optional) end is on or before its start."""

    def check(cols: Batch, as_of: dt.date) -> npt.NDArray[np.bool_]:
        e = dates(cols[end])
        return _mask(~np.isnat(e) & (e <= dates(cols[start])))

    return check


def in_future(column: str) -> Check:
    """A date after the data set's reference date."""

    def check(cols: Batch, as_of: dt.date) -> npt.NDArray[np.bool_]:
        return _mask(dates(cols[column]) > np.datetime64(as_of, "D"))

    return check


def precedes(earlier: str, later: str) -> Check:
    """``earlier`` (when present) falls strictly before ``later``."""

    def check(cols: Batch, as_of: dt.date) -> npt.NDArray[np.bool_]:
        a = dates(cols[earlier])
        return _mask(~np.isnat(a) & (a < dates(cols[later])))

    return check
