"""GB 11643-1999 identity numbers: the standard's example, every rejection reason, masking,
generation, and agreement between the scalar and the vectorised validators."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest

from tongban.primitives.errors import InvalidIdNumber
from tongban.primitives.idnumber import (
    Reason,
    birth_yyyymmdd_many,
    check_char,
    check_chars_many,
    make_id,
    make_ids_many,
    mask,
    parse,
    validate,
    validate_many,
)
from tongban.primitives.regions import PROVINCES

EXAMPLE = "11010519491231002X"  # the example printed in GB 11643-1999
TODAY = dt.date(2026, 6, 30)
# The standard's weights W_i = 2^(i-1) mod 11, written out for positions 1..17 (left to right).
STANDARD_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
CHECK_ALPHABET = "0123456789X"
# Look-alikes that str.isdigit() or a careless upper() might let through.
FW_ONE = "\N{FULLWIDTH DIGIT ONE}"
FW_X = "\N{FULLWIDTH LATIN CAPITAL LETTER X}"
ARABIC_ZERO = "\N{ARABIC-INDIC DIGIT ZERO}"
ARABIC_THREE = "\N{ARABIC-INDIC DIGIT THREE}"


def iso7064_check(body17: str) -> str:
    """Independent oracle: the check character makes sum(a_i * W_i) ≡ 1 (mod 11) over all
    18 positions, where the check position has weight 1 and X stands for 10."""
    total = sum(int(c) * w for c, w in zip(body17, STANDARD_WEIGHTS, strict=True))
    value = (1 - total) % 11
    return "X" if value == 10 else str(value)


def with_check(body17: str) -> str:
    return body17 + iso7064_check(body17)


# --- the standard's example --------------------------------------------------------------


def test_standard_example_is_valid():
    assert validate(EXAMPLE) is Reason.OK
    assert iso7064_check(EXAMPLE[:17]) == "X"
    assert check_char(EXAMPLE[:17]) == "X"


def test_standard_example_parses():
    parsed = parse(EXAMPLE)

    assert parsed.number == EXAMPLE
    assert parsed.region == "110105"
    assert parsed.birth_date == dt.date(1949, 12, 31)
    assert parsed.sequence == 2
    assert parsed.sex == "female"
    assert parsed.check == "X"
    assert parsed.province == "北京市"
    assert parsed.region_name == "北京市朝阳区"
    assert parsed.masked() == "110105********002X"


def test_odd_sequence_is_male():
    number = make_id("110105", dt.date(1949, 12, 31), 1)

    assert parse(number).sex == "male"


def test_lowercase_x_is_accepted_and_normalised():
    lower = EXAMPLE.lower()

    assert validate(lower) is Reason.OK
    assert validate_many([lower])[0] == Reason.OK
    parsed = parse(lower)
    assert parsed.number == EXAMPLE
    assert parsed.check == "X"


def test_parse_strips_surrounding_whitespace():
    assert parse(f"  {EXAMPLE}\n").number == EXAMPLE


# --- each rejection reason -----------------------------------------------------------------


@pytest.mark.parametrize(
    "number",
    [
        pytest.param("", id="empty"),
        pytest.param(EXAMPLE[:6] + EXAMPLE[8:17], id="legacy-15"),
        pytest.param(EXAMPLE[:17], id="17-chars"),
        pytest.param(EXAMPLE + "0", id="19-chars"),
        pytest.param("1", id="1-char"),
        pytest.param(" " + EXAMPLE, id="leading-space-19"),
    ],
)
def test_bad_length(number):
    assert validate(number) is Reason.BAD_LENGTH
    assert validate_many([number])[0] == Reason.BAD_LENGTH


@pytest.mark.parametrize(
    "number",
    [
        pytest.param("A1010519491231002X", id="letter-in-region"),
        pytest.param("1101051949123100AX", id="letter-in-sequence"),
        pytest.param("11010519491231002Y", id="check-Y"),
        pytest.param("11010519491231002 ", id="check-space"),
        pytest.param("1101 519491231002X", id="space-in-body"),
        pytest.param(FW_ONE * 2 + EXAMPLE[2:], id="full-width-digits"),
        pytest.param(EXAMPLE[:17] + FW_X, id="full-width-X"),
        pytest.param(EXAMPLE[:17] + FW_ONE, id="full-width-check-digit"),
        pytest.param("-1010519491231002X", id="minus-sign"),
        pytest.param(EXAMPLE[:15] + ARABIC_ZERO + EXAMPLE[16:], id="arabic-indic-digit"),
    ],
)
def test_bad_format(number):
    assert len(number) == 18
    assert validate(number) is Reason.BAD_FORMAT
    assert validate_many([number])[0] == Reason.BAD_FORMAT


@pytest.mark.parametrize("province", ["99", "00", "10", "16", "47", "90"])
def test_bad_region(province):
    assert province not in PROVINCES
    number = with_check(province + EXAMPLE[2:17])  # check digit right: only the region is off

    assert validate(number) is Reason.BAD_REGION
    assert validate_many([number])[0] == Reason.BAD_REGION


def test_every_listed_province_is_accepted():
    for province in PROVINCES:
        number = with_check(province + EXAMPLE[2:17])
        assert validate(number) is Reason.OK, province


@pytest.mark.parametrize(
    "yyyymmdd",
    [
        "19490230",  # 30 February
        "19491301",  # month 13
        "19490001",  # month 0
        "19491200",  # day 0
        "19490431",  # 31 April
        "19000229",  # 1900 is not a leap year (divisible by 100)
        "21000229",  # nor 2100
        "18991231",  # before 1900
        "00000101",  # year 0
    ],
)
def test_bad_date(yyyymmdd):
    number = with_check("110105" + yyyymmdd + "002")

    assert validate(number, today=TODAY) is Reason.BAD_DATE
    assert validate_many([number], today=TODAY)[0] == Reason.BAD_DATE
    with pytest.raises(InvalidIdNumber):
        parse(number, today=TODAY)


@pytest.mark.parametrize("yyyymmdd", ["20000229", "19000101", "19960229", "20260630"])
def test_edge_dates_that_are_real(yyyymmdd):
    number = with_check("110105" + yyyymmdd + "002")

    assert validate(number, today=TODAY) is Reason.OK
    assert validate_many([number], today=TODAY)[0] == Reason.OK


def test_future_date_is_relative_to_today():
    today = dt.date(2020, 1, 1)
    born_today = make_id("110105", today, 2)
    born_tomorrow = make_id("110105", today + dt.timedelta(days=1), 2)

    assert validate(born_today, today=today) is Reason.OK
    assert validate(born_tomorrow, today=today) is Reason.BAD_DATE
    assert validate(born_tomorrow, today=today + dt.timedelta(days=1)) is Reason.OK
    assert validate_many([born_today, born_tomorrow], today=today).tolist() == [
        Reason.OK,
        Reason.BAD_DATE,
    ]


def test_future_date_defaults_to_the_real_today():
    far_future = with_check("110105" + "29991231" + "002")

    assert validate(far_future) is Reason.BAD_DATE
    assert validate_many([far_future])[0] == Reason.BAD_DATE


def test_every_wrong_check_character_is_rejected():
    body = EXAMPLE[:17]
    wrong = [c for c in CHECK_ALPHABET if c != "X"]
    assert len(wrong) == 10

    for c in wrong:
        assert validate(body + c) is Reason.BAD_CHECK_DIGIT, c
    assert validate_many([body + c for c in wrong]).tolist() == [Reason.BAD_CHECK_DIGIT] * 10


def test_wrong_check_characters_for_a_digit_check():
    number = make_id("150102", dt.date(1990, 1, 1), 3)
    right = number[17]
    assert right != "X"
    candidates = [c for c in CHECK_ALPHABET + "x" if c.upper() != right]

    for c in candidates:
        assert validate(number[:17] + c) is Reason.BAD_CHECK_DIGIT, c
    assert set(validate_many([number[:17] + c for c in candidates]).tolist()) == {
        Reason.BAD_CHECK_DIGIT
    }


def test_reasons_are_reported_in_a_fixed_order():
    # Region and check digit both wrong: the region is reported.
    assert validate("99010519491231002" + "0") is Reason.BAD_REGION
    # Date and check digit both wrong: the date.
    assert validate("11010519491331002" + "0") is Reason.BAD_DATE
    # Format beats region.
    assert validate("9901051949123100AX") is Reason.BAD_FORMAT


# --- parse errors do not echo the number -----------------------------------------------------


@pytest.mark.parametrize(
    ("number", "reason"),
    [
        (EXAMPLE[:17] + "1", "bad_check_digit"),
        (EXAMPLE[:15], "bad_length"),
        ("99" + EXAMPLE[2:], "bad_region"),
        (EXAMPLE[:10] + "13" + EXAMPLE[12:], "bad_date"),
        (EXAMPLE[:16] + "AX", "bad_format"),
    ],
)
def test_parse_error_names_the_reason_not_the_number(number, reason):
    with pytest.raises(InvalidIdNumber) as info:
        parse(number)

    err = info.value
    problem = err.to_problem()
    assert problem["reason"] == reason
    assert problem["status"] == 422
    assert problem["type"].endswith("/invalid-id-number")
    rendered = json.dumps(problem, ensure_ascii=False) + str(err) + err.detail
    assert number not in rendered
    assert number[:10] not in rendered  # not even the region and birth year
    assert "id_number" in err.detail


# --- masking -------------------------------------------------------------------------------


def test_mask_keeps_region_and_last_four():
    assert mask(EXAMPLE) == "110105********002X"


def test_mask_of_other_lengths():
    assert mask("") == ""
    assert mask("123456789") == "*********"
    assert mask(EXAMPLE[:6] + EXAMPLE[8:17]) == "110105*****1002"  # 15-digit legacy number
    assert len(mask(EXAMPLE + "9")) == 19


# --- generation ----------------------------------------------------------------------------


def test_make_id_round_trip():
    rng = np.random.default_rng(20260630)
    regions = ["110105", "150102", "150622", "650102", "820000"]
    start = dt.date(1900, 1, 1).toordinal()
    for _ in range(500):
        region = regions[int(rng.integers(len(regions)))]
        born = dt.date.fromordinal(start + int(rng.integers(0, 46_000)))
        sequence = int(rng.integers(0, 1000))
        number = make_id(region, born, sequence)

        parsed = parse(number, today=TODAY)
        assert (parsed.region, parsed.birth_date, parsed.sequence) == (region, born, sequence)
        assert parsed.check == iso7064_check(number[:17])


def test_make_id_rejects_bad_parts():
    for region, sequence in [("11010", 1), ("1101050", 1), ("11010a", 1), ("110105", 1000)]:
        with pytest.raises(ValueError, match="region must be 6 digits"):
            make_id(region, dt.date(1990, 1, 1), sequence)
    with pytest.raises(ValueError, match="region must be 6 digits"):
        make_id("110105", dt.date(1990, 1, 1), -1)


def test_check_char_covers_every_residue():
    """Find bodies whose weighted sum hits each residue mod 11: every check character
    (X and 0..9) must appear, each matching the ISO 7064 oracle."""
    weights = np.array(STANDARD_WEIGHTS)
    by_residue: dict[int, str] = {}
    base = EXAMPLE[:16]
    for last in range(10):
        for second_last in range(10):
            body = base[:15] + str(second_last) + str(last)
            residue = int(np.dot([int(c) for c in body], weights)) % 11
            by_residue.setdefault(residue, body)
    assert sorted(by_residue) == list(range(11))

    checks = {}
    for residue, body in by_residue.items():
        checks[residue] = check_char(body)
        assert checks[residue] == iso7064_check(body)
        assert checks[residue] == "10X98765432"[residue]
        assert validate(body + checks[residue]) is Reason.OK
    assert sorted(checks.values()) == sorted(CHECK_ALPHABET)

    matrix = np.frombuffer("".join(by_residue.values()).encode(), dtype=np.uint8).reshape(-1, 17)
    assert check_chars_many(matrix).tobytes().decode() == "".join(checks[r] for r in by_residue)


def test_make_ids_many_matches_make_id():
    rng = np.random.default_rng(7)
    n = 2000
    regions = rng.choice(np.array([110105, 150102, 150622, 130102, 510104, 820000]), n)
    start = dt.date(1900, 1, 1).toordinal()
    days = rng.integers(0, 46_000, n)
    births = [dt.date.fromordinal(start + int(d)) for d in days]
    yyyymmdd = np.array([int(f"{b:%Y%m%d}") for b in births], dtype=np.int64)
    sequences = rng.integers(0, 1000, n)

    many = make_ids_many(regions.astype(np.int64), yyyymmdd, sequences.astype(np.int64))

    assert many.dtype == np.dtype("U18")
    expected = [
        make_id(str(r), b, int(s))
        for r, b, s in zip(regions.tolist(), births, sequences.tolist(), strict=True)
    ]
    assert many.tolist() == expected
    assert set(validate_many(many, today=TODAY).tolist()) == {Reason.OK}


def test_make_ids_many_pads_small_values():
    out = make_ids_many(
        np.array([150102], dtype=np.int64),
        np.array([19000101], dtype=np.int64),
        np.array([7], dtype=np.int64),
    )
    assert out.tolist() == [make_id("150102", dt.date(1900, 1, 1), 7)]
    assert out[0][14:17] == "007"


def test_birth_yyyymmdd_many():
    numbers = [
        EXAMPLE,
        EXAMPLE.lower(),
        make_id("150102", dt.date(2000, 2, 29), 1),
        "99" + EXAMPLE[2:],  # wrong region: the date field is still read
        EXAMPLE[:10] + "13" + EXAMPLE[12:],  # not a real date, but digits
        EXAMPLE[:15],  # wrong length
        "",
        EXAMPLE[:8] + "A" + EXAMPLE[9:],  # letter in the birth field
        FW_ONE + EXAMPLE[1:],  # full-width digit outside the birth field
    ]

    out = birth_yyyymmdd_many(numbers)

    assert out.dtype == np.int64
    assert out.tolist() == [
        19491231,
        19491231,
        20000229,
        19491231,
        19491331,
        0,
        0,
        0,
        19491231,
    ]


def test_vectorised_functions_accept_empty_input():
    assert validate_many([]).tolist() == []
    assert birth_yyyymmdd_many([]).tolist() == []


# --- deterministic fuzz: vectorised and scalar validators agree ------------------------------

_FUZZ_CHARS = [
    *"0123456789Xx aAZ-",
    FW_ONE,
    FW_X,
    ARABIC_THREE,
    "\N{LATIN SMALL LETTER E WITH ACUTE}",
    "中",
]


def _fuzz_corpus(rng: np.random.Generator, n: int) -> list[str]:
    # Bodies: plausible and implausible regions, real and unreal dates, any sequence.
    regions = np.concatenate(
        [
            rng.choice(np.array([110105, 150102, 150622, 130102, 650102, 820000]), n // 2),
            rng.integers(0, 1_000_000, n - n // 2),
        ]
    )
    years = rng.integers(1890, 2040, n)
    months = rng.integers(0, 14, n)
    days = rng.integers(0, 33, n)
    real_dates = rng.random(n) < 0.6
    start = dt.date(1895, 1, 1).toordinal()
    real = np.array(
        [
            int(f"{dt.date.fromordinal(start + int(d)):%Y%m%d}")
            for d in rng.integers(0, 50_000, n).tolist()
        ],
        dtype=np.int64,
    )
    yyyymmdd = np.where(real_dates, real, years * 10000 + months * 100 + days)
    sequences = rng.integers(0, 1000, n)
    numbers = make_ids_many(regions.astype(np.int64), yyyymmdd, sequences.astype(np.int64)).tolist()

    out: list[str] = []
    for number in numbers:
        s = number
        for _ in range(int(rng.integers(0, 3))):
            op = int(rng.integers(0, 7))
            pos = int(rng.integers(0, max(len(s), 1)))
            char = _FUZZ_CHARS[int(rng.integers(len(_FUZZ_CHARS)))]
            if op == 0 and s:  # replace one character
                s = s[:pos] + char + s[pos + 1 :]
            elif op == 1:  # insert
                s = s[:pos] + char + s[pos:]
            elif op == 2 and s:  # delete
                s = s[:pos] + s[pos + 1 :]
            elif op == 3 and len(s) > 1:  # swap neighbours
                pos = min(pos, len(s) - 2)
                s = s[:pos] + s[pos + 1] + s[pos] + s[pos + 2 :]
            elif op == 4 and s:  # change the check character
                s = s[:-1] + CHECK_ALPHABET[int(rng.integers(11))]
            elif op == 5:  # lowercase
                s = s.lower()
            else:  # truncate
                s = s[: int(rng.integers(0, len(s) + 1))]
        out.append(s)
    return out


def test_validate_many_agrees_with_validate_on_fuzzed_numbers():
    rng = np.random.default_rng(11643)
    corpus = [*_fuzz_corpus(rng, 4000), "", EXAMPLE, EXAMPLE.lower()]

    scalar = [int(validate(s, today=TODAY)) for s in corpus]
    vector = validate_many(corpus, today=TODAY).tolist()

    mismatches = [(s, a, b) for s, a, b in zip(corpus, scalar, vector, strict=True) if a != b]
    assert mismatches == []
    # The corpus exercises every reason, not just one or two.
    assert set(scalar) == {int(r) for r in Reason}


def test_validate_many_agrees_with_validate_on_today():
    rng = np.random.default_rng(5)
    corpus = _fuzz_corpus(rng, 1000)
    for today in (dt.date(1950, 1, 1), dt.date(2000, 2, 29), dt.date(2030, 12, 31)):
        scalar = [int(validate(s, today=today)) for s in corpus]
        assert validate_many(corpus, today=today).tolist() == scalar


def test_validate_many_agrees_with_validate_on_trailing_nul():
    corpus = [EXAMPLE + "\x00", EXAMPLE[:17] + "\x00"]

    scalar = [int(validate(s)) for s in corpus]

    assert scalar == [Reason.BAD_LENGTH, Reason.BAD_FORMAT]
    assert validate_many(corpus).tolist() == scalar
