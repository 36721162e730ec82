"""Packed Paillier core: layout math, packing boundaries, keys, pool, wrong keys, tampering.

Keys are 2048-bit (the production floor) and generated once per session.
"""

from __future__ import annotations

import contextlib
import json
import random
from dataclasses import dataclass

import gmpy2
import pytest
from phe import EncryptedNumber, PaillierPrivateKey, PaillierPublicKey, util
from phe import command_line as phe_cli

from tongban.federation.paillier import (
    GUARD_BITS,
    InvalidCiphertext,
    InvalidPublicKey,
    ObfuscatorPool,
    OutOfBounds,
    PackingLayout,
    PoolClosed,
    add_vectors,
    aggregate,
    decrypt_vector,
    encrypt_vector,
    from_encrypted_numbers,
    generate_keypair,
    parse_public_key,
    public_key_to_jwk,
    to_encrypted_numbers,
)
from tongban.primitives.errors import BadRequest

WAIT = 60.0  # generous upper bound for pool fills on a loaded CI machine; never a sleep


@dataclass(frozen=True)
class Keys:
    pub: PaillierPublicKey
    priv: PaillierPrivateKey
    other_pub: PaillierPublicKey
    other_priv: PaillierPrivateKey


@pytest.fixture(scope="session")
def keys() -> Keys:
    pub, priv = generate_keypair(2048)
    other_pub, other_priv = generate_keypair(2048)
    return Keys(pub, priv, other_pub, other_priv)


@pytest.fixture(scope="module")
def pool(keys: Keys):
    with ObfuscatorPool(keys.pub, size=64, workers=2) as p:
        yield p


def small_layout(keys: Keys, parties: int = 5, counters: int = 250, bound: int = 1000):
    return PackingLayout.for_key(keys.pub.n, counters, bound, parties)


def encrypt_all(keys: Keys, pool, layout, vectors):
    return [encrypt_vector(keys.pub, v, layout, pool) for v in vectors]


# -- layout math -----------------------------------------------------------------------------


def test_bench_layout_math():
    layout = PackingLayout(counters=10_000, value_bound=100_000, parties=12, n_bits=2048)
    assert layout.max_sum == 1_200_000
    assert layout.slot_bits == 21 + GUARD_BITS == 22
    assert layout.slots_per_ciphertext == 2047 // 22 == 93
    assert layout.ciphertexts == 108


@pytest.mark.parametrize(
    ("bound", "parties"), [(1, 1), (1, 2), (255, 257), (100_000, 12), (2**40, 1000), (9, 10_000)]
)
def test_layout_invariants(bound, parties):
    layout = PackingLayout(counters=1000, value_bound=bound, parties=parties, n_bits=2048)
    assert layout.max_sum < 2 ** (layout.slot_bits - GUARD_BITS)
    assert layout.slots_per_ciphertext * layout.slot_bits <= 2047
    # Slots are as narrow as possible: one bit less could not hold max_sum.
    assert layout.max_sum >= 2 ** (layout.slot_bits - GUARD_BITS - 1)


def test_layout_refuses_what_cannot_fit():
    PackingLayout(counters=1, value_bound=2**2046 - 1, parties=1, n_bits=2048)  # one full slot
    with pytest.raises(OutOfBounds, match=r"^parties"):
        PackingLayout(counters=1, value_bound=2**2046, parties=1, n_bits=2048)
    with pytest.raises(OutOfBounds, match=r"^parties"):
        PackingLayout(counters=1, value_bound=2**2000, parties=2**46, n_bits=2048)
    with pytest.raises(OutOfBounds, match=r"^n_bits"):
        PackingLayout(counters=1, value_bound=1, parties=1, n_bits=1024)
    for field in ("counters", "value_bound", "parties"):
        args = {"counters": 1, "value_bound": 1, "parties": 1, "n_bits": 2048, field: 0}
        with pytest.raises(OutOfBounds, match=rf"^{field}"):
            PackingLayout(**args)


def test_pack_unpack_is_exact_and_little_endian():
    layout = PackingLayout(counters=5, value_bound=3, parties=1, n_bits=2048)  # 2+1 bit slots
    packed = layout.pack([1, 2, 3, 0, 3])
    assert packed == [1 | 2 << 3 | 3 << 6 | 0 << 9 | 3 << 12]
    assert layout.unpack(packed) == [1, 2, 3, 0, 3]
    assert layout.unpack(packed, 2) == [1, 2]


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ([0, 0, 0, 0, 4], "^values: expected every value in"),
        ([0, 0, -1, 0, 0], "^values: expected every value in"),
        ([0, 0, 1.0, 0, 0], "^values: expected integers"),
        ([0, True, 0, 0, 0], "^values: expected integers"),
        ([0, 0, 0, 0], "^values: expected 5"),
    ],
)
def test_pack_refuses_values_outside_bounds(bad, match):
    layout = PackingLayout(counters=5, value_bound=3, parties=1, n_bits=2048)
    with pytest.raises(OutOfBounds, match=match):
        layout.pack(bad)


def test_unpack_refuses_impossible_plaintexts():
    layout = PackingLayout(counters=5, value_bound=3, parties=2, n_bits=2048)  # max_sum 6
    with pytest.raises(OutOfBounds, match="slot exceeds"):
        layout.unpack([7])
    with pytest.raises(OutOfBounds, match="outside the slots"):
        layout.unpack([1 << 2047])
    with pytest.raises(OutOfBounds, match="padding"):
        layout.unpack([1 << (5 * layout.slot_bits)])


# -- encryption, aggregation, decryption -------------------------------------------------------


def test_round_trip(keys, pool):
    layout = small_layout(keys)
    values = [random.Random(1).randint(0, 1000) for _ in range(250)]
    (ciphertexts,) = encrypt_all(keys, pool, layout, [values])
    assert len(ciphertexts) == layout.ciphertexts
    assert decrypt_vector(keys.priv, ciphertexts, layout) == values
    assert decrypt_vector(keys.priv, ciphertexts, layout, count=7, workers=1) == values[:7]


def test_sum_of_parties_is_exact(keys, pool):
    layout = small_layout(keys, parties=5)
    rng = random.Random(2)
    vectors = [[rng.randint(0, 1000) for _ in range(250)] for _ in range(5)]
    total = aggregate(keys.pub, encrypt_all(keys, pool, layout, vectors), layout)
    assert decrypt_vector(keys.priv, total, layout) == [
        sum(col) for col in zip(*vectors, strict=True)
    ]


def test_add_vectors_matches_aggregate(keys, pool):
    layout = small_layout(keys, parties=2)
    a, b = encrypt_all(keys, pool, layout, [[1] * 250, [2] * 250])
    assert decrypt_vector(keys.priv, add_vectors(keys.pub, a, b), layout) == [3] * 250
    with pytest.raises(InvalidCiphertext, match=r"^b"):
        add_vectors(keys.pub, a, b[:-1])


def test_boundary_every_value_at_bound_for_max_parties(keys, pool):
    # 255 * 257 = 2**16 - 1: the sum fills every data bit of every slot.
    layout = PackingLayout.for_key(keys.pub.n, counters=200, value_bound=255, parties=257)
    assert layout.max_sum == 2 ** (layout.slot_bits - GUARD_BITS) - 1
    (one,) = encrypt_all(keys, pool, layout, [[255] * 200])
    # One encryption reused 257 times is the worst case for the bound (not for privacy).
    total = aggregate(keys.pub, [one] * 257, layout)
    assert decrypt_vector(keys.priv, total, layout) == [255 * 257] * 200


def test_boundary_single_slot_filling_the_plaintext(keys, pool):
    layout = PackingLayout.for_key(keys.pub.n, counters=1, value_bound=2**2044, parties=2)
    assert layout.slots_per_ciphertext == 1
    a, b = encrypt_all(keys, pool, layout, [[2**2044], [2**2044]])
    assert decrypt_vector(keys.priv, aggregate(keys.pub, [a, b], layout), layout) == [2**2045]


def test_one_more_party_or_value_is_refused(keys, pool):
    layout = small_layout(keys, parties=3, counters=10, bound=50)
    vectors = encrypt_all(keys, pool, layout, [[50] * 10] * 3)
    with pytest.raises(OutOfBounds, match=r"^vectors: at most 3"):
        aggregate(keys.pub, [*vectors, vectors[0]], layout)
    with pytest.raises(OutOfBounds, match=r"^values"):
        encrypt_vector(keys.pub, [51] + [0] * 9, layout, pool)
    with pytest.raises(OutOfBounds, match=r"^vectors"):
        aggregate(keys.pub, [], layout)


def test_layout_and_pool_must_match_the_key(keys, pool):
    layout = PackingLayout(counters=10, value_bound=1, parties=1, n_bits=3072)
    with pytest.raises(OutOfBounds, match=r"^layout"):
        encrypt_vector(keys.pub, [0] * 10, layout, pool)
    layout = small_layout(keys, counters=10)
    with pytest.raises(ValueError, match=r"^pool"):
        encrypt_vector(keys.other_pub, [0] * 10, layout, pool)


def test_wrong_private_key_never_yields_the_answer(keys, pool):
    layout = small_layout(keys, parties=2)
    rng = random.Random(3)
    vectors = [[rng.randint(0, 1000) for _ in range(250)] for _ in range(2)]
    total = aggregate(keys.pub, encrypt_all(keys, pool, layout, vectors), layout)
    with pytest.raises((InvalidCiphertext, OutOfBounds)):
        decrypt_vector(keys.other_priv, total, layout)
    # Even below the layout checks, the wrong key's raw plaintexts are unrelated numbers.
    assert all(
        keys.other_priv.raw_decrypt(c) != keys.priv.raw_decrypt(c)
        for c in total
        if c < keys.other_pub.nsquare
    )
    with pytest.raises(ValueError):  # phe itself refuses numbers of another key
        keys.other_priv.decrypt(to_encrypted_numbers(keys.pub, total)[0])


def test_tampered_ciphertext_changes_or_is_refused(keys, pool):
    layout = small_layout(keys, parties=2)
    values = [10] * 250
    (ciphertexts,) = encrypt_all(keys, pool, layout, [values])
    n, nsquare = keys.pub.n, keys.pub.nsquare
    # Homomorphic "+1" in slot 0 stays in bounds: decrypts, but differently. Only the
    # contributors' signatures (protocol layer) can catch this class of tampering.
    shifted = [ciphertexts[0] * (n + 1) % nsquare, *ciphertexts[1:]]
    out = decrypt_vector(keys.priv, shifted, layout)
    assert out != values and out[0] == 11
    # A flipped bit makes a random plaintext: refused by the layout checks, or different.
    flipped = [ciphertexts[0] ^ (1 << 1000), *ciphertexts[1:]]
    with contextlib.suppress(InvalidCiphertext, OutOfBounds):
        assert decrypt_vector(keys.priv, flipped, layout) != values
    for bad in (0, nsquare, nsquare + 5, n, -ciphertexts[0]):
        with pytest.raises(InvalidCiphertext, match=r"^ciphertexts\[0\]"):
            decrypt_vector(keys.priv, [bad, *ciphertexts[1:]], layout)
    with pytest.raises(InvalidCiphertext, match=r"^ciphertexts"):
        decrypt_vector(keys.priv, ciphertexts[:-1], layout)


# -- phe interoperability ----------------------------------------------------------------------


def test_phe_encrypted_numbers_interoperate(keys, pool):
    layout = small_layout(keys, parties=2)
    a, b = encrypt_all(keys, pool, layout, [[3] * 250, [4] * 250])
    summed = [
        x + y
        for x, y in zip(
            to_encrypted_numbers(keys.pub, a), to_encrypted_numbers(keys.pub, b), strict=True
        )
    ]
    assert all(isinstance(x, EncryptedNumber) and x.exponent == 0 for x in summed)
    raw = from_encrypted_numbers(keys.pub, summed)
    assert decrypt_vector(keys.priv, raw, layout) == [7] * 250
    with pytest.raises(InvalidCiphertext, match="exponent 0"):
        from_encrypted_numbers(keys.pub, [keys.pub.encrypt(1.5)])
    with pytest.raises(InvalidCiphertext, match="for this key"):
        from_encrypted_numbers(keys.pub, [keys.other_pub.encrypt(1)])


# -- keys and the JWK format -------------------------------------------------------------------


def test_key_format_round_trip_and_phe_compatibility(keys):
    jwk = public_key_to_jwk(keys.pub)
    assert set(jwk) == {"kty", "alg", "key_ops", "n", "kid"}
    assert (jwk["kty"], jwk["alg"], jwk["key_ops"]) == ("DAJ", "PAI-GN1", ["encrypt"])
    assert parse_public_key(json.dumps(jwk)).n == keys.pub.n
    assert parse_public_key(jwk).n == keys.pub.n
    assert phe_cli.load_public_key(jwk).n == keys.pub.n  # phe's own loader reads ours
    pheutil_style = {**jwk, "kid": "Paillier public key generated by pheutil on 2025-01-01"}
    assert parse_public_key(pheutil_style) == keys.pub


def _modulus_of_bits(bits: int) -> int:
    """A product of two primes near ``2**(bits/2 - 1)``: a ``bits - 1``-bit modulus."""
    p = gmpy2.next_prime(gmpy2.mpz(2) ** (bits // 2 - 1) + 12345)
    return int(p * gmpy2.next_prime(p + 2**40))


def _jwk_with_n(n: int) -> dict[str, object]:
    return {"kty": "DAJ", "alg": "PAI-GN1", "key_ops": ["encrypt"], "n": util.int_to_base64(n)}


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda j: j.pop("kty"), "kty"),
        (lambda j: j.pop("alg"), "alg"),
        (lambda j: j.pop("key_ops"), "key_ops"),
        (lambda j: j.pop("n"), "n"),
        (lambda j: j.update(kty="RSA"), "kty"),
        (lambda j: j.update(alg="PAI-GN2"), "alg"),
        (lambda j: j.update(key_ops=["decrypt"]), "key_ops"),
        (lambda j: j.update(key_ops=["encrypt", "decrypt"]), "key_ops"),
        (lambda j: j.update(key_ops="encrypt"), "key_ops"),
        (lambda j: j.update(kid=7), "kid"),
        (lambda j: j.update(kid="x" * 300), "kid"),
        (lambda j: j.update(use="enc"), "use"),
        (lambda j: j.update(p="AQAB"), "p"),
        (lambda j: j.update(n=j["n"] + "=="), "n"),
        (lambda j: j.update(n=j["n"].replace("-", "+").replace("_", "/") + "+/"), "n"),
        (lambda j: j.update(n="AAAA" + j["n"]), "n"),
        (lambda j: j.update(n=12345), "n"),
        (lambda j: j.update(n=""), "n"),
        (lambda j: j.update(n=util.int_to_base64(2**2047 + 2)), "n"),  # even
        (lambda j: j.update(n=util.int_to_base64(3 * (2**2046 + 1))), "n"),  # factor 3
        (lambda j: j.update(n=util.int_to_base64(_modulus_of_bits(1024))), "n"),
        (lambda j: j.update(n=util.int_to_base64(2**8200 + 1)), "n"),
    ],
)
def test_malformed_public_keys_are_refused_naming_the_field(keys, mutate, field):
    jwk = public_key_to_jwk(keys.pub)
    mutate(jwk)
    with pytest.raises(InvalidPublicKey, match=rf"^{field}:") as info:
        parse_public_key(jwk)
    assert isinstance(info.value, BadRequest) and isinstance(info.value, ValueError)
    problem = info.value.to_problem()
    assert problem["status"] == 400 and problem["type"].endswith("/invalid-public-key")


@pytest.mark.parametrize("text", ["not json", "[1, 2]", '"DAJ"', b"\xff"])
def test_non_object_keys_are_refused(text):
    with pytest.raises(InvalidPublicKey, match=r"^public_key"):
        parse_public_key(text)


def test_keys_below_2048_bits_are_refused():
    n = _modulus_of_bits(2048)
    assert n.bit_length() == 2047
    with pytest.raises(InvalidPublicKey, match=r"^n: expected a 2048"):
        parse_public_key(_jwk_with_n(n))
    for bits in (512, 1024, 2047):
        with pytest.raises(ValueError, match=r"^n_length"):
            generate_keypair(bits)


# -- the obfuscator pool -----------------------------------------------------------------------


def test_pool_obfuscators_are_valid_and_distinct(keys):
    with ObfuscatorPool(keys.pub, size=6, workers=2) as pool:
        assert pool.wait_full(WAIT)
        taken = [pool.take(WAIT) for _ in range(6)]
    assert len(set(taken)) == 6
    n, nsquare = keys.pub.n, keys.pub.nsquare
    for m, r_n in enumerate(taken):
        c = (1 + m * n) * r_n % nsquare
        assert c != 1 + m * n  # actually obfuscated
        assert keys.priv.decrypt(EncryptedNumber(keys.pub, c)) == m


def test_pool_refills_in_the_background(keys):
    with ObfuscatorPool(keys.pub, size=4, workers=2) as pool:
        assert pool.wait_full(WAIT)
        first = [pool.take(WAIT) for _ in range(4)]
        assert pool.wait_full(WAIT)  # refilled without anyone asking
        assert pool.produced >= 8 and pool.available() == 4
        assert set(first).isdisjoint(pool.take(WAIT) for _ in range(4))


def test_pool_close_and_arguments(keys):
    pool = ObfuscatorPool(keys.pub, size=2, workers=1)
    pool.close()
    for _ in range(pool.available()):
        pool.take()
    with pytest.raises(PoolClosed):
        pool.take(WAIT)
    assert not pool.wait_full(0)
    for kwargs in ({"size": 0}, {"size": 2, "workers": 0}):
        with pytest.raises(ValueError):
            ObfuscatorPool(keys.pub, **kwargs)
