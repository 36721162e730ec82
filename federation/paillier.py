"""Packed Paillier vectors: the pure cryptographic core of encrypted statistics.

Roles (wired to HTTP later; nothing here does I/O):

* the **analyst** makes a keypair (:func:`generate_keypair`), publishes the public key in
  python-paillier's JWK-style format (:func:`public_key_to_jwk`), and finally decrypts the
  summed vector (:func:`decrypt_vector`);
* each **department adapter** parses that key strictly (:func:`parse_public_key`), keeps an
  :class:`~federation.pool.ObfuscatorPool`, and encrypts its packed counters
  (:func:`encrypt_vector`);
* the **gateway** multiplies ciphertexts (:func:`add_vectors`, :func:`aggregate`) without
  any private key, so it never sees a department's numbers.

Keys and the wire format are phe's, so a ciphertext here is an ordinary phe ciphertext with
exponent 0 (:func:`to_encrypted_numbers`); the arithmetic is done with gmpy2 directly
because phe's per-value path converts between Python ints and ``mpz`` at every step.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import gmpy2
from phe import EncryptedNumber, PaillierPrivateKey, PaillierPublicKey, paillier, util

from tongban.primitives.errors import BadRequest

from .packing import GUARD_BITS, MIN_KEY_BITS, OutOfBounds, PackingLayout
from .pool import ObfuscatorPool, PoolClosed, random_obfuscator

__all__ = [
    "GUARD_BITS",
    "JWK_ALG",
    "JWK_KTY",
    "MAX_KEY_BITS",
    "MIN_KEY_BITS",
    "InvalidCiphertext",
    "InvalidPublicKey",
    "ObfuscatorPool",
    "OutOfBounds",
    "PackingLayout",
    "PoolClosed",
    "add_vectors",
    "aggregate",
    "decrypt_vector",
    "encrypt_vector",
    "from_encrypted_numbers",
    "generate_keypair",
    "key_fingerprint",
    "parse_public_key",
    "public_key_to_jwk",
    "random_obfuscator",
    "to_encrypted_numbers",
]

JWK_KTY = "DAJ"
JWK_ALG = "PAI-GN1"
#: Larger moduli are refused: a client-chosen 100,000-bit "key" would make every adapter
#: burn minutes of CPU per job.
MAX_KEY_BITS = 8192
_JWK_MEMBERS = frozenset({"kty", "alg", "key_ops", "n", "kid"})
_PRIVATE_MEMBERS = frozenset({"p", "q", "lambda", "mu"})
_B64URL = re.compile(r"[A-Za-z0-9_-]+")
_KID_MAX = 256
# Product of the primes below 10,000: one gcd rejects moduli with a small factor, which no
# product of two 1024-bit primes has.
_SMALL_PRIMES = gmpy2.primorial(10_000)


class InvalidPublicKey(BadRequest, ValueError):
    """A public key that is malformed, too small, or not a Paillier modulus."""

    slug = "invalid-public-key"
    title = "Invalid Paillier public key"


class InvalidCiphertext(BadRequest, ValueError):
    """A ciphertext that is not an element of ``Z*_{n^2}`` for the key, or of wrong shape."""

    slug = "invalid-ciphertext"
    title = "Invalid Paillier ciphertext"


# -- keys ----------------------------------------------------------------------------------


def generate_keypair(n_length: int = MIN_KEY_BITS) -> tuple[PaillierPublicKey, PaillierPrivateKey]:
    """An analyst keypair, 2048 bits by default.

    Not phe's 3072-bit default: 2048 is the issue's floor (~112-bit security), and every
    adapter's exponentiations get markedly slower with the key size (cost grows faster
    than quadratically). Smaller keys are refused.
    """
    if type(n_length) is not int or not MIN_KEY_BITS <= n_length <= MAX_KEY_BITS:
        raise ValueError(f"n_length: expected {MIN_KEY_BITS}..{MAX_KEY_BITS} bits")
    return paillier.generate_paillier_keypair(n_length=n_length)  # type: ignore[no-any-return]


def key_fingerprint(public_key: PaillierPublicKey) -> str:
    """A short stable id for a public key (SHA-256 of ``n``), for ``kid`` and audit lines."""
    n = int(public_key.n)
    digest = hashlib.sha256(n.to_bytes((n.bit_length() + 7) // 8, "big")).hexdigest()
    return "paillier-" + digest[:16]


def public_key_to_jwk(public_key: PaillierPublicKey, kid: str | None = None) -> dict[str, Any]:
    """The public key as phe's ``pheutil`` writes it: ``{"kty": "DAJ", "alg": "PAI-GN1", …}``."""
    return {
        "kty": JWK_KTY,
        "alg": JWK_ALG,
        "key_ops": ["encrypt"],
        "n": util.int_to_base64(int(public_key.n)),
        "kid": kid if kid is not None else key_fingerprint(public_key),
    }


def parse_public_key(data: Mapping[str, Any] | str | bytes) -> PaillierPublicKey:
    """Parse and strictly validate a JWK-style public key (a mapping or its JSON text).

    Refuses, naming the member: unknown members (and private-key members outright), a wrong
    ``kty``/``alg``, ``key_ops`` without ``"encrypt"`` or with ``"decrypt"``, a ``n`` that
    is not canonical unpadded base64url, even, outside 2048..8192 bits or with a small
    factor. Validation happens here, at the boundary, so adapters never exponentiate
    under a hostile modulus.
    """
    if isinstance(data, str | bytes):
        try:
            data = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidPublicKey("public_key: expected a JSON object") from exc
    if not isinstance(data, Mapping):
        raise InvalidPublicKey("public_key: expected a JSON object")
    _check_members(data)
    if data["kty"] != JWK_KTY:
        raise InvalidPublicKey(f"kty: expected {JWK_KTY!r}")
    if data["alg"] != JWK_ALG:
        raise InvalidPublicKey(f"alg: expected {JWK_ALG!r}")
    ops = data["key_ops"]
    if not isinstance(ops, list) or not all(isinstance(op, str) for op in ops):
        raise InvalidPublicKey("key_ops: expected a list of strings")
    if "encrypt" not in ops or "decrypt" in ops:
        raise InvalidPublicKey('key_ops: expected ["encrypt"]')
    kid = data.get("kid")
    if kid is not None and (not isinstance(kid, str) or len(kid) > _KID_MAX):
        raise InvalidPublicKey(f"kid: expected a string of at most {_KID_MAX} characters")
    return PaillierPublicKey(_parse_modulus(data["n"]))


def _check_members(data: Mapping[str, Any]) -> None:
    for member in data:
        if member in _PRIVATE_MEMBERS:
            raise InvalidPublicKey(f"{member}: private-key member; send the public key only")
        if member not in _JWK_MEMBERS:
            raise InvalidPublicKey(f"{member}: unexpected member")
    for member in ("kty", "alg", "key_ops", "n"):
        if member not in data:
            raise InvalidPublicKey(f"{member}: required")


def _parse_modulus(encoded: object) -> int:
    if not isinstance(encoded, str) or not _B64URL.fullmatch(encoded) or len(encoded) % 4 == 1:
        raise InvalidPublicKey("n: expected unpadded base64url")
    try:
        raw = util.base64url_decode(encoded)
    except ValueError as exc:
        raise InvalidPublicKey("n: expected unpadded base64url") from exc
    if raw[:1] == b"\x00" or util.base64url_encode(raw) != encoded:
        raise InvalidPublicKey("n: expected canonical base64url (no leading zero bytes)")
    n = int.from_bytes(raw, "big")
    if not MIN_KEY_BITS <= n.bit_length() <= MAX_KEY_BITS:
        raise InvalidPublicKey(f"n: expected a {MIN_KEY_BITS}..{MAX_KEY_BITS}-bit modulus")
    if n % 2 == 0 or gmpy2.gcd(n, _SMALL_PRIMES) != 1 or gmpy2.is_square(n):
        raise InvalidPublicKey("n: not a Paillier modulus")
    return n


# -- vectors -------------------------------------------------------------------------------


def _check_layout(layout: PackingLayout, n: int) -> None:
    if layout.n_bits != n.bit_length():
        raise OutOfBounds(f"layout: built for {layout.n_bits}-bit keys, key has {n.bit_length()}")


def _check_ciphertexts(name: str, ciphertexts: Sequence[int], n: int, nsquare: int) -> None:
    """Each ciphertext must be an int in ``Z*_{n^2}``; anything else is refused, not reduced."""
    for index, c in enumerate(ciphertexts):
        if type(c) is not int or not 0 < c < nsquare or gmpy2.gcd(c, n) != 1:
            raise InvalidCiphertext(f"{name}[{index}]: expected an element of Z*(n^2)")


def encrypt_vector(
    public_key: PaillierPublicKey,
    values: Sequence[int],
    layout: PackingLayout,
    pool: ObfuscatorPool,
) -> list[int]:
    """Pack ``values`` and encrypt each plaintext as ``(1 + m n) · r^n mod n^2``.

    The only online work is one multiplication and one reduction per ciphertext; ``r^n``
    comes precomputed from ``pool`` (which must be for the same key: obfuscators for
    another modulus would produce undecryptable garbage).
    """
    n = int(public_key.n)
    _check_layout(layout, n)
    if int(pool.public_key.n) != n:
        raise ValueError("pool: obfuscators were made for a different public key")
    packed = layout.pack(values)
    n_mpz, nsquare = gmpy2.mpz(n), gmpy2.mpz(public_key.nsquare)
    # m < 2**(n_bits - 1) < n, so 1 + m n < n^2 and needs no reduction before the product.
    return [int((n_mpz * m + 1) * pool.take_mpz() % nsquare) for m in packed]


def add_vectors(public_key: PaillierPublicKey, a: Sequence[int], b: Sequence[int]) -> list[int]:
    """Homomorphic sum of two encrypted vectors: the ciphertext-wise product mod ``n^2``.

    Knows nothing about party counts; use :func:`aggregate` when the layout's bound on the
    number of contributions must be enforced (it always must before decryption).
    """
    n, nsquare = int(public_key.n), int(public_key.nsquare)
    if len(a) != len(b):
        raise InvalidCiphertext("b: expected as many ciphertexts as a")
    _check_ciphertexts("a", a, n, nsquare)
    _check_ciphertexts("b", b, n, nsquare)
    mod = gmpy2.mpz(nsquare)
    return [int(gmpy2.mpz(x) * y % mod) for x, y in zip(a, b, strict=True)]


def aggregate(
    public_key: PaillierPublicKey, vectors: Sequence[Sequence[int]], layout: PackingLayout
) -> list[int]:
    """Sum up to ``layout.parties`` encrypted vectors; more would make overflow possible."""
    n, nsquare = int(public_key.n), int(public_key.nsquare)
    _check_layout(layout, n)
    if not vectors:
        raise OutOfBounds("vectors: expected at least one contribution")
    if len(vectors) > layout.parties:
        raise OutOfBounds(f"vectors: at most {layout.parties} contributions fit the layout")
    for index, vector in enumerate(vectors):
        if len(vector) != layout.ciphertexts:
            raise InvalidCiphertext(f"vectors[{index}]: expected {layout.ciphertexts} ciphertexts")
        _check_ciphertexts(f"vectors[{index}]", vector, n, nsquare)
    mod = gmpy2.mpz(nsquare)
    total = [gmpy2.mpz(c) for c in vectors[0]]
    for vector in vectors[1:]:
        total = [t * c % mod for t, c in zip(total, vector, strict=True)]
    return [int(t) for t in total]


def decrypt_vector(
    private_key: PaillierPrivateKey,
    ciphertexts: Sequence[int],
    layout: PackingLayout,
    count: int | None = None,
    workers: int = 2,
) -> list[int]:
    """Decrypt (CRT, gmpy2, ``workers`` threads) and unpack ``count`` counters.

    A wrong key or a tampered ciphertext yields plaintexts that violate the layout (bits
    above the slots, a slot above ``parties * value_bound``) with overwhelming
    probability, and :meth:`PackingLayout.unpack` refuses them; detection of tampering
    that stays inside the bounds is the job of the contributors' signatures.
    """
    n, nsquare = int(private_key.public_key.n), int(private_key.public_key.nsquare)
    _check_layout(layout, n)
    if len(ciphertexts) != layout.ciphertexts:
        raise InvalidCiphertext(f"ciphertexts: expected {layout.ciphertexts}")
    _check_ciphertexts("ciphertexts", ciphertexts, n, nsquare)
    decrypt = _crt_decryptor(private_key)
    if workers <= 1 or len(ciphertexts) < 2:
        plaintexts = [decrypt(c) for c in ciphertexts]
    else:
        with ThreadPoolExecutor(workers, initializer=_release_gil) as executor:
            plaintexts = list(executor.map(decrypt, ciphertexts))
    return layout.unpack(plaintexts, count)


def _release_gil() -> None:
    gmpy2.get_context().allow_release_gil = True


def _crt_decryptor(private_key: PaillierPrivateKey) -> Any:
    """phe's CRT decryption (``raw_decrypt``) on ``mpz`` values, so threads run in parallel."""
    p, q = gmpy2.mpz(private_key.p), gmpy2.mpz(private_key.q)
    psquare, qsquare = p * p, q * q
    hp, hq, p_inverse = (
        gmpy2.mpz(v) for v in (private_key.hp, private_key.hq, private_key.p_inverse)
    )

    def decrypt(ciphertext: int) -> int:
        c = gmpy2.mpz(ciphertext)
        mp = (gmpy2.powmod(c, p - 1, psquare) - 1) // p * hp % p
        mq = (gmpy2.powmod(c, q - 1, qsquare) - 1) // q * hq % q
        return int(mp + (mq - mp) * p_inverse % q * p)

    return decrypt


# -- phe interoperability -------------------------------------------------------------------


def to_encrypted_numbers(
    public_key: PaillierPublicKey, ciphertexts: Sequence[int]
) -> list[EncryptedNumber]:
    """Wrap raw ciphertexts as phe ``EncryptedNumber`` (exponent 0, i.e. integers).

    Read them back with ``private_key.raw_decrypt(x.ciphertext(be_secure=False))``:
    ``private_key.decrypt`` applies phe's signed encoding, which reads a packed plaintext
    above ``n/3`` as an overflow.
    """
    _check_ciphertexts("ciphertexts", ciphertexts, int(public_key.n), int(public_key.nsquare))
    return [EncryptedNumber(public_key, c, exponent=0) for c in ciphertexts]


def from_encrypted_numbers(
    public_key: PaillierPublicKey, numbers: Sequence[EncryptedNumber]
) -> list[int]:
    """Raw ciphertexts from phe numbers, refusing other keys and non-integer encodings."""
    out: list[int] = []
    for index, number in enumerate(numbers):
        if not isinstance(number, EncryptedNumber) or number.public_key != public_key:
            raise InvalidCiphertext(f"numbers[{index}]: expected an EncryptedNumber for this key")
        if number.exponent != 0:
            raise InvalidCiphertext(f"numbers[{index}]: expected exponent 0 (integer encoding)")
        out.append(int(number.ciphertext(be_secure=False)))
    _check_ciphertexts("numbers", out, int(public_key.n), int(public_key.nsquare))
    return out
