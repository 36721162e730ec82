"""GB 11643-1999 citizen identity numbers: parse, validate, mask and generate.

Layout of the 18 characters: 6-digit region code (GB/T 2260), 8-digit birth date
(YYYYMMDD), 3-digit sequence whose parity gives the sex (odd = male), and an
ISO 7064 MOD 11-2 check character (0-9 or X).

The scalar functions serve requests; the ``*_many`` functions work on NumPy arrays so the
generator and the ingest validator handle a million numbers in well under a second.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .errors import InvalidIdNumber
from .regions import PROVINCES, district_name, province_of

__all__ = [
    "WEIGHTS",
    "IdNumber",
    "Reason",
    "birth_yyyymmdd_many",
    "check_char",
    "check_chars_many",
    "make_id",
    "make_ids_many",
    "mask",
    "parse",
    "validate",
    "validate_many",
]

# W_i = 2^(17-i) mod 11 for positions 1..17.
WEIGHTS = np.array([pow(2, 17 - i, 11) for i in range(17)], dtype=np.int64)
# Check character indexed by (sum of weighted digits) mod 11.
_CHECK = "10X98765432"
_CHECK_CODES = np.frombuffer(_CHECK.encode("ascii"), dtype=np.uint8)
_MIN_BIRTH = dt.date(1900, 1, 1)
_PROVINCE_CODES = np.array(sorted(int(p) for p in PROVINCES), dtype=np.int64)


class Reason(enum.IntEnum):
    """Why a number is invalid; the value is stable and used in vectorised results."""

    OK = 0
    BAD_LENGTH = 1
    BAD_FORMAT = 2
    BAD_REGION = 3
    BAD_DATE = 4
    BAD_CHECK_DIGIT = 5

    @property
    def text(self) -> str:
        return _REASON_TEXT[self]


_REASON_TEXT = {
    Reason.OK: "valid",
    Reason.BAD_LENGTH: "bad length: expected 18 characters",
    Reason.BAD_FORMAT: "bad format: expected 17 digits and a digit or X",
    Reason.BAD_REGION: "bad region: unknown province code",
    Reason.BAD_DATE: "bad date: the birth date is not a real past date",
    Reason.BAD_CHECK_DIGIT: "bad check digit",
}


@dataclass(frozen=True, slots=True)
class IdNumber:
    number: str
    region: str
    birth_date: dt.date
    sequence: int
    check: str

    @property
    def sex(self) -> str:
        return "male" if self.sequence % 2 else "female"

    @property
    def province(self) -> str | None:
        return province_of(self.region)

    @property
    def region_name(self) -> str | None:
        return district_name(self.region)

    def masked(self) -> str:
        return mask(self.number)


_WEIGHTS_PY = tuple(int(w) for w in WEIGHTS)  # plain ints: the scalar path serves requests


def check_char(body17: str) -> str:
    total = sum(int(c) * w for c, w in zip(body17, _WEIGHTS_PY, strict=True))
    return _CHECK[total % 11]


def validate(number: str, *, today: dt.date | None = None) -> Reason:
    """Return why ``number`` is invalid, or ``Reason.OK``. Never raises."""
    if len(number) != 18:
        return Reason.BAD_LENGTH
    body, last = number[:17], number[17].upper()
    if not (body.isascii() and body.isdigit()) or last not in "0123456789X":
        return Reason.BAD_FORMAT
    if body[:2] not in PROVINCES:
        return Reason.BAD_REGION
    try:
        born = dt.date(int(body[6:10]), int(body[10:12]), int(body[12:14]))
    except ValueError:
        return Reason.BAD_DATE
    if not _MIN_BIRTH <= born <= (today or dt.date.today()):
        return Reason.BAD_DATE
    if check_char(body) != last:
        return Reason.BAD_CHECK_DIGIT
    return Reason.OK


def parse(number: str, *, today: dt.date | None = None) -> IdNumber:
    """Parse a valid number; raise :class:`InvalidIdNumber` naming the reason, not the value."""
    number = number.strip()
    reason = validate(number, today=today)
    if reason is not Reason.OK:
        raise InvalidIdNumber(f"id_number: {reason.text}", reason=reason.name.lower())
    number = number[:17] + number[17].upper()
    born = dt.date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
    return IdNumber(number, number[:6], born, int(number[14:17]), number[17])


def mask(number: str) -> str:
    """Keep the region and the last four characters: ``110105********002X``."""
    if len(number) < 10:
        return "*" * len(number)
    return number[:6] + "*" * (len(number) - 10) + number[-4:]


def make_id(region: str, birth_date: dt.date, sequence: int) -> str:
    body = f"{region}{birth_date:%Y%m%d}{sequence:03d}"
    if len(body) != 17 or not body.isdigit():
        raise ValueError("region must be 6 digits and sequence 0..999")
    return body + check_char(body)


# --- vectorised -------------------------------------------------------------------------

U8Matrix = npt.NDArray[np.uint8]


def _digits(values: npt.NDArray[np.int64], width: int) -> U8Matrix:
    """ASCII digit matrix (n, width) of non-negative integers, zero padded."""
    powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
    return ((values[:, None] // powers) % 10 + 48).astype(np.uint8)


def check_chars_many(body: U8Matrix) -> U8Matrix:
    """Check characters (ASCII codes) for an (n, 17) matrix of ASCII digits."""
    total = (body.astype(np.int64) - 48) @ WEIGHTS
    return np.asarray(_CHECK_CODES[total % 11], dtype=np.uint8)


def make_ids_many(
    region: npt.NDArray[np.int64],
    birth_yyyymmdd: npt.NDArray[np.int64],
    sequence: npt.NDArray[np.int64],
) -> npt.NDArray[np.str_]:
    """Build many numbers at once; inputs are equal-length integer arrays."""
    n = len(region)
    chars = np.empty((n, 18), dtype=np.uint8)
    chars[:, 0:6] = _digits(region, 6)
    chars[:, 6:14] = _digits(birth_yyyymmdd, 8)
    chars[:, 14:17] = _digits(sequence, 3)
    chars[:, 17] = check_chars_many(chars[:, :17])
    return chars.view("S18").ravel().astype("U18")


def validate_many(
    numbers: Sequence[str] | npt.NDArray[np.str_], *, today: dt.date | None = None
) -> npt.NDArray[np.int8]:
    """Vectorised :func:`validate`: one :class:`Reason` value per input."""
    # NumPy's fixed-width strings drop trailing NULs, so find those first and judge them
    # with the scalar validator (they are rare and always invalid).
    nul: list[int] = []
    if not isinstance(numbers, np.ndarray):
        nul = [i for i, s in enumerate(numbers) if "\x00" in s]
    arr = np.asarray(numbers, dtype="U")
    n = arr.shape[0]
    out = np.zeros(n, dtype=np.int8)
    if n == 0:
        return out
    out[nul] = [validate(str(numbers[i]), today=today) for i in nul]
    lengths = np.char.str_len(arr)
    lengths[nul] = -1  # already judged
    out[(lengths != 18) & (lengths >= 0)] = Reason.BAD_LENGTH
    ok = (out == 0) & (lengths >= 0)
    # UCS-4 code points, so non-ASCII characters stay distinguishable from digits.
    codes = np.zeros((n, 18), dtype=np.uint32)
    fixed = arr[ok].astype("U18")
    codes[ok] = fixed.view(np.uint32).reshape(-1, 18)
    body = codes[:, :17]
    last = codes[:, 17]
    last = np.where(last == ord("x"), ord("X"), last)
    is_digit = (body >= 48) & (body <= 57)
    last_ok = ((last >= 48) & (last <= 57)) | (last == ord("X"))
    bad_format = ok & ~(is_digit.all(axis=1) & last_ok)
    out[bad_format] = Reason.BAD_FORMAT
    ok &= ~bad_format
    digits = np.where(is_digit, body.astype(np.int64) - 48, 0)
    province = digits[:, 0] * 10 + digits[:, 1]
    bad_region = ok & ~np.isin(province, _PROVINCE_CODES)
    out[bad_region] = Reason.BAD_REGION
    ok &= ~bad_region
    year = digits[:, 6] * 1000 + digits[:, 7] * 100 + digits[:, 8] * 10 + digits[:, 9]
    month = digits[:, 10] * 10 + digits[:, 11]
    day = digits[:, 12] * 10 + digits[:, 13]
    bad_date = ok & ~_real_dates(year, month, day, today or dt.date.today())
    out[bad_date] = Reason.BAD_DATE
    ok &= ~bad_date
    expected = _CHECK_CODES[(digits @ WEIGHTS) % 11]
    bad_check = ok & (expected != last)
    out[bad_check] = Reason.BAD_CHECK_DIGIT
    return out


def _real_dates(
    year: npt.NDArray[np.int64],
    month: npt.NDArray[np.int64],
    day: npt.NDArray[np.int64],
    today: dt.date,
) -> npt.NDArray[np.bool_]:
    leap = ((year % 4 == 0) & (year % 100 != 0)) | (year % 400 == 0)
    month_len = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], dtype=np.int64)
    safe_month = np.clip(month, 0, 12)
    days_in = month_len[safe_month] + ((safe_month == 2) & leap)
    real = (month >= 1) & (month <= 12) & (day >= 1) & (day <= days_in)
    ymd = year * 10000 + month * 100 + day
    limit = today.year * 10000 + today.month * 100 + today.day
    return np.asarray(real & (ymd >= 19000101) & (ymd <= limit), dtype=bool)


def birth_yyyymmdd_many(numbers: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """The birth date field as an integer YYYYMMDD; 0 where the number is not 18 characters
    of digits. Meant to be combined with :func:`validate_many`."""
    arr = np.asarray(numbers, dtype="U")
    n = arr.shape[0]
    out = np.zeros(n, dtype=np.int64)
    if n == 0:
        return out
    ok = np.char.str_len(arr) == 18
    codes = arr[ok].astype("U18").view(np.uint32).reshape(-1, 18)[:, 6:14].astype(np.int64) - 48
    digits_ok = ((codes >= 0) & (codes <= 9)).all(axis=1)
    values = codes @ (10 ** np.arange(7, -1, -1, dtype=np.int64))
    out[ok] = np.where(digits_ok, values, 0)
    return out
