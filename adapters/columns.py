"""Vectorised helpers over record batches (NumPy columns)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import numpy.typing as npt

__all__ = ["as_of_days", "yyyymmdd", "years_before"]


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


def as_of_days(as_of: dt.date) -> np.datetime64:
    return np.datetime64(as_of.isoformat(), "D")


def years_before(as_of: dt.date, years: int) -> dt.date:
    """The date ``years`` before ``as_of`` (29 February falls back to the 28th)."""
    try:
        return as_of.replace(year=as_of.year - years)
    except ValueError:
        return as_of.replace(year=as_of.year - years, day=28)
