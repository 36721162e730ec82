"""The population model: people, couples, births and households, as NumPy columns.

Everything is drawn from one seeded generator in a fixed order, so (seed, size) fully
determines the output. The model is the oracle: department records and the ground truth
are both derived from it, independently of the adapters' SQL.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tongban.primitives.idnumber import make_ids_many
from tongban.primitives.regions import DISTRICTS

from ..columns import yyyymmdd

__all__ = [
    "OTHER_BIRTH_REGIONS",
    "PROVINCE",
    "REFERENCE_DATE",
    "URBAN_DISTRICTS",
    "Population",
    "build_population",
]

REFERENCE_DATE = dt.date(2026, 6, 30)
PROVINCE = "15"  # the synthetic deployment serves Inner Mongolia
# Real region codes elsewhere, for adults born outside the districts they now live in.
OTHER_BIRTH_REGIONS = ("130102", "140105", "410102", "510104", "150121", "152502")

Days = npt.NDArray[np.datetime64]
Ints = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]
Strs = npt.NDArray[np.str_]

_DISTRICT_CODES = np.array(list(DISTRICTS), dtype="U6")
_DISTRICT_WEIGHTS = np.array([0.2, 0.16, 0.16, 0.1, 0.12, 0.09, 0.1, 0.07])
_NAT = np.datetime64("NaT", "D")


def _day(s: str) -> np.datetime64:
    return np.datetime64(s, "D")


@dataclass
class Population:
    """Struct of arrays. Person-level arrays are indexed by person; couple- and birth-level
    arrays refer to people by index."""

    reference: np.datetime64
    # people
    id_number: Strs
    male: Bools
    birth: Days
    district: Strs  # household district
    household_no: Strs
    relation: Strs
    registered_since: Days  # NaT: not registered in any household
    employed_since: Days  # NaT: never employed
    employed_until: Days
    employer_code: Strs
    maternity_until: Days  # end of maternity insurance (NaT: still active)
    medins_start: Days
    medins_end: Days
    # couples (all registered marriages)
    husband: Ints
    wife: Ints
    married: Days
    divorced: Days
    couple_district: Strs
    # births
    child: Ints
    mother: Ints
    father: Ints
    birth_order: Ints
    certificate_no: Strs
    certificate_issued: Days
    birth_district: Strs
    # hrss payments
    maternity_mother: Ints
    maternity_birth: Days
    maternity_paid: Days
    maternity_amount: Ints
    maternity_district: Strs
    childcare_applicant: Ints
    childcare_child: Ints
    childcare_paid: Days
    # civil low-income allowance
    allowance_no: Strs
    allowance_applicant: Ints
    allowance_district: Strs
    allowance_start: Days
    allowance_end: Days
    allowance_monthly: Ints
    member_allowance: Ints  # index into allowance arrays
    member_person: Ints

    @property
    def size(self) -> int:
        return len(self.id_number)


def _uniform_days(rng: np.random.Generator, lo: np.datetime64, hi: np.datetime64, n: int) -> Days:
    span = int((hi - lo).astype(np.int64))
    return lo + rng.integers(0, span + 1, n).astype("timedelta64[D]")


def _gamma_days(
    rng: np.random.Generator, shape: float, scale: float, n: int
) -> npt.NDArray[np.timedelta64]:
    return rng.gamma(shape, scale, n).astype(np.int64).astype("timedelta64[D]")


def build_population(size: int, seed: int, reference: dt.date = REFERENCE_DATE) -> Population:
    if size < 10:
        raise ValueError("population: at least 10 people")
    rng = np.random.default_rng(seed)
    ref = np.datetime64(reference, "D")

    # --- couples -----------------------------------------------------------------------
    n0 = max(1, int(size * 0.25))
    wife_birth = _uniform_days(rng, _day("1966-01-01"), ref - np.timedelta64(8800, "D"), n0)
    gap = np.clip(rng.normal(2.5, 3.0, n0), -5, 12)
    husband_birth = wife_birth + (gap * 365.25).astype(np.int64).astype("timedelta64[D]")
    # 7307 and 8037 days always reach the 20th/22nd birthday: the legal marriage ages.
    earliest = np.maximum(
        wife_birth + np.timedelta64(7307, "D"), husband_birth + np.timedelta64(8037, "D")
    )
    married = earliest + _gamma_days(rng, 2.0, 700.0, n0)
    k = rng.choice(5, size=n0, p=[0.12, 0.36, 0.30, 0.15, 0.07])
    divorce_draw = rng.random(n0)
    divorce_frac = rng.random(n0)
    first_gap = 280 + rng.gamma(2.0, 250.0, n0)
    later_gap = 300 + rng.gamma(2.5, 380.0, (n0, 3))
    twins = rng.random((n0, 3)) < 0.012
    later_gap[twins] = 0
    family_district = rng.choice(_DISTRICT_CODES, size=n0, p=_DISTRICT_WEIGHTS)

    keep = married <= ref
    length = (ref - married).astype(np.int64)
    divorced = np.where(
        keep & (divorce_draw < 0.07) & (length > 800),
        married + (400 + divorce_frac * (length - 400)).astype(np.int64).astype("timedelta64[D]"),
        _NAT,
    )
    offsets = np.cumsum(np.column_stack([first_gap, later_gap]), axis=1).astype(np.int64)
    slot_dates = married[:, None] + offsets.astype("timedelta64[D]")
    end_of_fertility = wife_birth + np.timedelta64(16436, "D")  # 45th birthday
    limit = np.minimum(ref, end_of_fertility)
    limit = np.where(np.isnat(divorced), limit, np.minimum(limit, divorced))
    slot_ok = (np.arange(4)[None, :] < k[:, None]) & (slot_dates <= limit[:, None]) & keep[:, None]
    # A slot after a missing one must not exist: births are cumulative in time.
    slot_ok = np.cumprod(slot_ok, axis=1).astype(bool)
    n_children = slot_ok.sum(axis=1)

    # Trim couples (with their children) so that couples + children fit in 88% of the size.
    persons_per_couple = np.where(keep, 2 + n_children, 0)
    fits = np.cumsum(persons_per_couple) <= int(size * 0.88)
    keep &= fits
    slot_ok &= keep[:, None]
    couples = np.flatnonzero(keep)
    n_couples = len(couples)

    # --- people ------------------------------------------------------------------------
    fam_of_slot, order_of_slot = np.nonzero(slot_ok)
    n_kids = len(fam_of_slot)
    n_single = size - 2 * n_couples - n_kids
    couple_pos = np.full(n0, -1, dtype=np.int64)
    couple_pos[couples] = np.arange(n_couples)

    husband = np.arange(n_couples, dtype=np.int64)
    wife = n_couples + np.arange(n_couples, dtype=np.int64)
    child = 2 * n_couples + np.arange(n_kids, dtype=np.int64)
    single = 2 * n_couples + n_kids + np.arange(n_single, dtype=np.int64)

    birth = np.empty(size, dtype="datetime64[D]")
    birth[husband] = husband_birth[couples]
    birth[wife] = wife_birth[couples]
    birth[child] = slot_dates[fam_of_slot, order_of_slot]
    birth[single] = _uniform_days(
        rng, _day("1950-01-01"), ref - np.timedelta64(6000, "D"), n_single
    )
    male = np.empty(size, dtype=bool)
    male[husband] = True
    male[wife] = False
    male[child] = rng.random(n_kids) < 0.51
    male[single] = rng.random(n_single) < 0.5

    family_of_person = np.full(size, -1, dtype=np.int64)
    family_of_person[husband] = husband
    family_of_person[wife] = husband
    family_of_person[child] = couple_pos[fam_of_slot]

    district = np.empty(size, dtype="U6")
    c_district = family_district[couples]
    district[husband] = c_district
    district[wife] = c_district
    district[child] = c_district[couple_pos[fam_of_slot]]
    district[single] = rng.choice(_DISTRICT_CODES, size=n_single, p=_DISTRICT_WEIGHTS)

    # ID numbers: adults were often born elsewhere; children in their family's district.
    born_region = district.copy()
    adults = np.concatenate([husband, wife, single])
    elsewhere = adults[rng.random(len(adults)) < 0.2]
    born_region[elsewhere] = rng.choice(np.array(OTHER_BIRTH_REGIONS), size=len(elsewhere))
    id_number = _unique_ids(born_region, birth, male)

    # --- households (公安) ---------------------------------------------------------------
    c_married = married[couples]
    c_divorced = divorced[couples]
    household_no = np.empty(size, dtype="U16")
    relation = np.empty(size, dtype="U8")
    since = np.full(size, _NAT, dtype="datetime64[D]")
    serial = np.arange(size, dtype=np.int64)
    household_no[:] = np.char.add(district, np.char.zfill(serial.astype("U10"), 10))
    household_no[wife] = household_no[husband]
    relation[husband] = "head"
    relation[wife] = "spouse"
    since[husband] = c_married
    since[wife] = c_married
    split = ~np.isnat(c_divorced)
    # After a divorce the wife heads her own household, and the children live with her.
    household_no[wife[split]] = np.char.add(
        district[wife[split]], np.char.zfill(serial[wife[split]].astype("U10"), 10)
    )
    relation[wife[split]] = "head"
    since[wife[split]] = c_divorced[split]
    kid_family = couple_pos[fam_of_slot]
    kid_parent = np.where(split[kid_family], wife[kid_family], husband[kid_family])
    household_no[child] = household_no[kid_parent]
    relation[child] = "child"
    kid_since = birth[child] + rng.integers(3, 61, n_kids).astype("timedelta64[D]")
    kid_since = np.maximum(kid_since, since[kid_parent])
    unregistered = (rng.random(n_kids) < 0.03) | (kid_since > ref)
    since[child] = np.where(unregistered, _NAT, kid_since)
    relation[single] = "head"
    since[single] = birth[single] + np.timedelta64(6575, "D")  # 18th birthday, roughly
    since[single] = np.minimum(since[single], ref)

    # --- employment and insurance (人社, 医保) --------------------------------------------
    age_days = (ref - birth).astype(np.int64)
    working_age = (age_days >= 6575) & (age_days <= 21915)
    employed = working_age & (rng.random(size) < np.where(male, 0.78, 0.68))
    start = np.maximum(birth + np.timedelta64(6575, "D"), _day("2005-01-01")) + _gamma_days(
        rng, 1.5, 500.0, size
    )
    employed &= start <= ref
    employed_since = np.where(employed, start, _NAT)
    left = employed & (rng.random(size) < 0.08)
    left_frac = rng.random(size)
    span = np.maximum((ref - employed_since).astype(np.int64), 2)
    employed_until = np.where(
        left,
        employed_since + (1 + left_frac * (span - 1)).astype(np.int64).astype("timedelta64[D]"),
        _NAT,
    )
    employed_until = np.where(employed_until > ref, _NAT, employed_until)
    lapsed = employed & (rng.random(size) < 0.05)
    lapse_frac = rng.random(size)
    maternity_until = np.where(
        lapsed,
        employed_since + (1 + lapse_frac * (span - 1)).astype(np.int64).astype("timedelta64[D]"),
        employed_until,
    )
    maternity_until = np.where(maternity_until > ref, _NAT, maternity_until)
    employer_code = np.char.add(
        "91", np.char.add(district, np.char.zfill(rng.integers(0, 10**10, size).astype("U10"), 10))
    )
    medins_start = np.maximum(birth, _day("2012-01-01")) + rng.integers(0, 90, size).astype(
        "timedelta64[D]"
    )
    medins_start = np.minimum(medins_start, ref - np.timedelta64(1, "D"))
    medins_lapsed = rng.random(size) < 0.03
    medins_end = np.where(
        medins_lapsed,
        medins_start
        + ((ref - medins_start).astype(np.int64) * 0.5).astype(np.int64).astype("timedelta64[D]")
        + np.timedelta64(1, "D"),
        _NAT,
    )

    # --- births (卫健) ---------------------------------------------------------------------
    b_mother = wife[kid_family]
    b_father = husband[kid_family]
    b_birth = birth[child]
    issued = b_birth + rng.integers(0, 31, n_kids).astype("timedelta64[D]")
    not_issued = (rng.random(n_kids) < 0.02) | (issued > ref)
    certificate_issued = np.where(not_issued, _NAT, issued)
    letters = np.array(list("ABCDEFGHJKLMNOPQRSTUVWXYZ"))
    certificate_no = np.char.add(
        letters[rng.integers(0, len(letters), n_kids)],
        np.char.zfill(np.arange(n_kids).astype("U9"), 9),
    )

    # --- maternity allowance: mothers insured at the birth, mostly paid ----------------------
    m_start = employed_since[b_mother]
    m_end = maternity_until[b_mother]
    insured_at_birth = (
        ~np.isnat(m_start) & (m_start <= b_birth) & (np.isnat(m_end) | (m_end > b_birth))
    )
    paid = b_birth + rng.integers(20, 121, n_kids).astype("timedelta64[D]")
    gets = insured_at_birth & (rng.random(n_kids) < 0.95) & (paid <= ref)
    daily_wage = rng.integers(100, 401, n_kids)
    # Twins share one allowance: keep the first birth record of each (mother, date).
    first_of_day = np.ones(n_kids, dtype=bool)
    first_of_day[1:] = ~((b_mother[1:] == b_mother[:-1]) & (b_birth[1:] == b_birth[:-1]))
    gets &= first_of_day

    # --- childcare subsidy: about half of families with a child under 3 have been paid ------
    under3_since = ref - np.timedelta64(1095, "D")
    youngest = np.full(n_couples, _NAT, dtype="datetime64[D]")
    youngest_child = np.full(n_couples, -1, dtype=np.int64)
    np.maximum.at(youngest.view(np.int64), kid_family, b_birth.view(np.int64))
    is_youngest = b_birth == youngest[kid_family]
    youngest_child[kid_family[is_youngest]] = child[is_youngest]
    has_young = ~np.isnat(youngest) & (youngest > under3_since)
    # Who claims depends on the family (a noisy logistic model the federated training
    # learns); exactly one draw per couple, so the draws after it do not shift.
    claimed = has_young & (rng.random(n_couples) < _claim_probability(
        employed_since[wife], employed_until[wife], maternity_until[wife], birth[wife],
        c_divorced, c_district, youngest, np.bincount(kid_family, minlength=n_couples),
        np.bincount(kid_family[gets & is_youngest], minlength=n_couples) > 0, ref,
    ))  # fmt: skip
    first_day = np.maximum(youngest + np.timedelta64(30, "D"), _day("2025-01-01"))
    pay_frac = rng.random(n_couples)
    window = (ref - first_day).astype(np.int64)
    claimed &= window > 0
    cc_paid = first_day + (pay_frac * np.maximum(window, 0)).astype(np.int64).astype(
        "timedelta64[D]"
    )

    # --- low-income allowance (民政) -------------------------------------------------------
    intact = np.isnat(c_divorced)
    fam_kids = np.bincount(kid_family, minlength=n_couples)
    poor = intact & (rng.random(n_couples) < 0.03 + 0.03 * (fam_kids >= 3))
    poor_single = rng.random(n_single) < 0.02
    a_fam = np.flatnonzero(poor)
    a_single = single[poor_single]
    n_allow = len(a_fam) + len(a_single)
    a_applicant = np.concatenate([husband[a_fam], a_single])
    a_start = _uniform_days(rng, _day("2016-01-01"), ref - np.timedelta64(30, "D"), n_allow)
    ended = rng.random(n_allow) < 0.3
    end_frac = rng.random(n_allow)
    a_end = np.where(
        ended,
        a_start
        + (1 + end_frac * ((ref - a_start).astype(np.int64) - 1))
        .astype(np.int64)
        .astype("timedelta64[D]"),
        _NAT,
    )
    a_district = district[a_applicant]
    a_no = np.char.add(
        "DB", np.char.add(a_district, np.char.zfill(np.arange(n_allow).astype("U8"), 8))
    )
    # Members: the applicant's family (both spouses and their children), or the single.
    allow_of_family = np.full(n_couples, -1, dtype=np.int64)
    allow_of_family[a_fam] = np.arange(len(a_fam))
    kid_allow = allow_of_family[kid_family]
    kid_in = kid_allow >= 0
    member_allowance = np.concatenate(
        [
            np.arange(len(a_fam)),
            np.arange(len(a_fam)),
            kid_allow[kid_in],
            len(a_fam) + np.arange(len(a_single)),
        ]
    )
    member_person = np.concatenate([husband[a_fam], wife[a_fam], child[kid_in], a_single])
    members_count = np.bincount(member_allowance, minlength=n_allow)
    a_monthly = 800 * members_count + rng.integers(-50, 51, n_allow)

    return Population(
        reference=ref,
        id_number=id_number,
        male=male,
        birth=birth,
        district=district,
        household_no=household_no,
        relation=relation,
        registered_since=since,
        employed_since=employed_since,
        employed_until=employed_until,
        employer_code=employer_code,
        maternity_until=maternity_until,
        medins_start=medins_start,
        medins_end=medins_end,
        husband=husband,
        wife=wife,
        married=c_married,
        divorced=c_divorced,
        couple_district=c_district,
        child=child,
        mother=b_mother,
        father=b_father,
        birth_order=order_of_slot.astype(np.int64) + 1,
        certificate_no=certificate_no,
        certificate_issued=certificate_issued,
        birth_district=district[child],
        maternity_mother=b_mother[gets],
        maternity_birth=b_birth[gets],
        maternity_paid=paid[gets],
        maternity_amount=(daily_wage * 98)[gets],
        maternity_district=district[b_mother[gets]],
        childcare_applicant=wife[claimed],
        childcare_child=youngest_child[claimed],
        childcare_paid=cc_paid[claimed],
        allowance_no=a_no,
        allowance_applicant=a_applicant,
        allowance_district=a_district,
        allowance_start=a_start,
        allowance_end=a_end,
        allowance_monthly=a_monthly,
        member_allowance=member_allowance,
        member_person=member_person,
    )


def _unique_ids(region: Strs, birth: Days, male: Bools) -> Strs:
    """GB 11643 numbers, unique: the sequence counts people sharing (region, birth date)
    and its parity encodes the sex (odd = male)."""
    region_int = region.astype(np.int64)
    ymd = yyyymmdd(birth)
    key = region_int * 100_000_000 + ymd
    order = np.lexsort((~male, key))
    sorted_key = key[order]
    sorted_male = male[order]
    starts = np.r_[True, sorted_key[1:] != sorted_key[:-1]]
    group_start = np.maximum.accumulate(np.where(starts, np.arange(len(key)), 0))
    # Count males and females separately within each group so parity is free to choose.
    rank = np.empty(len(key), dtype=np.int64)
    for sex in (True, False):
        sel = sorted_male == sex
        idx = np.flatnonzero(sel)
        g = group_start[idx]
        first = np.r_[True, g[1:] != g[:-1]]
        first_pos = np.maximum.accumulate(np.where(first, np.arange(len(idx)), 0))
        rank[idx] = np.arange(len(idx)) - first_pos
    seq = np.where(sorted_male, 2 * rank + 1, 2 * rank + 2)
    if seq.max(initial=0) > 999:
        raise ValueError("too many people share a region and birth date for GB 11643")
    out = np.empty(len(key), dtype="U18")
    out[order] = make_ids_many(region_int[order], ymd[order], seq)
    return out


# City districts; 元宝山区 (a mining district) and 准格尔旗 (a banner) count as rural.
URBAN_DISTRICTS = ("150102", "150105", "150203", "110105", "110108")


def _claim_probability(
    employed_since: Days,
    employed_until: Days,
    maternity_until: Days,
    mother_birth: Days,
    divorced: Days,
    district: Strs,
    youngest: Days,
    n_children: Ints,
    allowance_for_youngest: Bools,
    ref: np.datetime64,
) -> npt.NDArray[np.float64]:
    """P(a family with a child under 3 has claimed the childcare subsidy): employed,
    insured, urban families who already dealt with the maternity office claim more; divorced
    mothers and large families less; the longer the youngest has been born, the likelier."""
    employed = ~np.isnat(employed_since) & np.isnat(employed_until)
    insured = ~np.isnat(employed_since) & np.isnat(maternity_until)
    months = np.where(np.isnat(youngest), 0, (ref - youngest).astype(np.int64)) / 30.44
    age = (ref - mother_birth).astype(np.int64) / 365.25
    logit = (
        -1.3
        + 0.9 * employed
        + 0.5 * insured
        + 0.7 * allowance_for_youngest
        + 0.6 * np.isin(district, URBAN_DISTRICTS)
        - 1.0 * ~np.isnat(divorced)
        - 0.6 * (n_children >= 3)
        + 0.05 * np.minimum(months, 18.0)
        - 0.03 * (age - 32.0)
    )
    return np.asarray(1.0 / (1.0 + np.exp(-logit)), dtype=np.float64)
