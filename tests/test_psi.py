"""ECDH-PSI on SM2: correctness, alignment, and what each party's view contains."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tongban.federation.psi import (
    POINT_BYTES,
    InvalidPoint,
    PsiError,
    PsiKind,
    PsiParty,
    Transcript,
    _blind,
    _curve,
    hash_to_curve,
    intersect_tags,
    run_psi,
)
from tongban.primitives.gm import SM2_A, SM2_B, SM2_P

SESSION = b"test-session"


def _ids(start: int, stop: int) -> list[str]:
    return [f"11010519900101{i:04d}" for i in range(start, stop)]


def _three_parties() -> tuple[list[PsiParty], dict[str, set[str]]]:
    sets = {
        "hrss": _ids(0, 300),
        "health": _ids(100, 420),
        "civil": _ids(50, 260) + _ids(500, 540),
    }
    parties = [PsiParty(name, ids, SESSION) for name, ids in sets.items()]
    return parties, {name: set(ids) for name, ids in sets.items()}


def test_hash_to_curve_lands_on_the_curve_and_is_session_bound():
    for i in range(50):
        x = int.from_bytes(hash_to_curve(f"id{i}".encode(), SESSION), "big")
        rhs = (x**3 + SM2_A * x + SM2_B) % SM2_P
        assert pow(rhs, (SM2_P - 1) // 2, SM2_P) == 1  # a square: the point exists
    assert hash_to_curve(b"id", b"job-1") != hash_to_curve(b"id", b"job-2")
    assert hash_to_curve(b"id", SESSION) == hash_to_curve(b"id", SESSION)


def test_blinding_commutes_and_is_x_only_consistent():
    curve = _curve()
    a, b = curve.scalar(0xA11CE), curve.scalar(0xB0B)
    points = b"".join(hash_to_curve(f"{i}".encode(), SESSION) for i in range(100))
    ab = _blind(b, _blind(a, points, 2), 1)
    ba = _blind(a, _blind(b, points, 1), 2)
    assert ab == ba
    assert len(ab) == len(points)
    assert ab != points


def test_blinding_refuses_non_points():
    curve = _curve()
    x = 0
    while True:  # an x with no point on the curve
        rhs = (x**3 + SM2_A * x + SM2_B) % SM2_P
        if pow(rhs, (SM2_P - 1) // 2, SM2_P) == SM2_P - 1:
            break
        x += 1
    with pytest.raises(InvalidPoint):
        _blind(curve.scalar(7), x.to_bytes(POINT_BYTES, "big"), 1)
    party = PsiParty("hrss", _ids(0, 3), SESSION)
    with pytest.raises(PsiError):
        party.relay("health", b"\x01" * 31)


def test_three_party_intersection_is_exact_and_aligned():
    parties, sets = _three_parties()
    rows = run_psi(parties)
    expected = sets["hrss"] & sets["health"] & sets["civil"]
    views = [p.intersection_ids() for p in parties]
    assert set(views[0]) == expected
    assert views[0] == views[1] == views[2]  # the same order everywhere: rows align
    for party in parties:
        assert len(rows[party.name]) == len(expected)


def test_two_party_intersection():
    a = PsiParty("hrss", _ids(0, 200), SESSION)
    b = PsiParty("health", _ids(150, 260), SESSION)
    run_psi([a, b])
    assert a.intersection_ids() == b.intersection_ids()
    assert set(a.intersection_ids()) == set(_ids(150, 200))


def test_empty_intersection():
    a = PsiParty("hrss", _ids(0, 10), SESSION)
    b = PsiParty("health", _ids(10, 20), SESSION)
    run_psi([a, b])
    assert a.intersection_ids() == [] == b.intersection_ids()


def test_different_sessions_do_not_intersect():
    a = PsiParty("hrss", _ids(0, 10), b"job-1")
    b = PsiParty("health", _ids(0, 10), b"job-2")
    run_psi([a, b])
    assert a.intersection_ids() == []


def test_a_partys_view_holds_no_ids_or_unkeyed_hashes_outside_the_intersection():
    parties, sets = _three_parties()
    transcript = Transcript()
    run_psi(parties, transcript=transcript)
    common = sets["hrss"] & sets["health"] & sets["civil"]
    everyone = set().union(*sets.values())
    for party in parties:
        others_only = everyone - sets[party.name]
        foreign = {i.encode() for i in others_only} | {
            hash_to_curve(i.encode(), SESSION) for i in others_only
        }
        received = transcript.received_by(party.name)
        assert {m.kind for m in received} == {PsiKind.BLINDED_SET, PsiKind.POSITIONS}
        for message in received:
            if isinstance(message.payload, bytes):
                chunks = {
                    message.payload[i : i + POINT_BYTES]
                    for i in range(0, len(message.payload), POINT_BYTES)
                }
                assert not chunks & foreign
                assert message.owner != party.name  # only others' sets, blinded
            else:
                assert message.owner == party.name
                assert message.size == len(common)
        # What the party ends with: only IDs it already held, exactly the intersection.
        assert set(party.intersection_ids()) == common


def test_coordinator_can_only_match_final_tags():
    parties, sets = _three_parties()
    transcript = Transcript()
    run_psi(parties, transcript=transcript)
    seen = transcript.received_by("gateway")
    assert {m.kind for m in seen} == {PsiKind.BLINDED_SET, PsiKind.FINAL_TAGS}
    relayed = [m for m in seen if m.kind is PsiKind.BLINDED_SET]

    def chunks(payload: bytes) -> set[bytes]:
        return {payload[i : i + POINT_BYTES] for i in range(0, len(payload), POINT_BYTES)}

    # No two intermediate sets of different owners share a value: nothing to compare.
    for m1, m2 in itertools.combinations(relayed, 2):
        if m1.owner != m2.owner:
            assert not chunks(m1.payload) & chunks(m2.payload)  # type: ignore[arg-type]
    finals = [m for m in seen if m.kind is PsiKind.FINAL_TAGS]
    assert sorted(m.size for m in finals) == sorted(len(s) for s in sets.values())


def test_coordinator_refuses_duplicates_and_parties_refuse_bad_positions():
    tag = b"\x07" * POINT_BYTES
    with pytest.raises(PsiError):
        intersect_tags({"a": tag + tag, "b": tag})
    party = PsiParty("hrss", _ids(0, 5), SESSION)
    with pytest.raises(PsiError):
        party.accept(np.array([0, 5], dtype=np.int64))
    with pytest.raises(PsiError):
        party.accept(np.array([1, 1], dtype=np.int64))
    with pytest.raises(PsiError):
        PsiParty("hrss", ["x", "x"], SESSION)
