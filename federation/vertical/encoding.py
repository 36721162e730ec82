"""Fixed-point encodings and the diagonal packing of residuals.

**Why a diagonal.** A feature holder needs ``g_j = sum_i x_ij r_i`` from encrypted residuals.
Paillier gives ``[[a]]^k = [[k a]]`` and ``[[a]][[b]] = [[a + b]]``, so one ciphertext per
residual works but costs one fresh obfuscator (a 2048-bit exponentiation) per sample per
batch. Packing ``K`` residuals into one plaintext divides that by ``K``, but a scalar
multiplies every slot alike, while each slot needs its own feature value. The fix is a
polynomial product: with slot width ``s``,

    R_b = sum_k r'_(b,k) 2^(k s)            (the label holder's block b, K samples)
    E_bj = sum_k x'_(b,k,j) 2^((K-1-k) s)    (the feature holder's exponent for feature j)

``R_b * E_bj`` has ``2K - 1`` coefficients; the middle one (index ``K - 1``) is exactly
``sum_k r'_(b,k) x'_(b,k,j)``, the block's share of the inner product, and it adds up over
blocks: ``prod_b [[R_b]]^E_bj`` carries the whole batch's inner product in one slot. The
other ``2K - 2`` coefficients are cross terms (residuals times *other* samples' features).
The feature holder masks every coefficient before the label holder decrypts, so the label
holder sees only masked slots and returns the masked middle one; the feature holder
removes its mask and learns its gradient and nothing else.

**Negative numbers.** Packed slots must stay non-negative, or a borrow would corrupt the
neighbour. Residuals ``r in [-1, 1]`` travel as ``r' = round(r 2^12) + 2^12 in [0, 2^13]``;
features are clipped to ``[-8, 8)`` (they are standardised) and used as
``x' = round(x 2^8) + 2^11 in [0, 2^12)`` (``feature_bits = 12``, the default; 8 bits keep
a step of 1/16 and halve the feature holders' work). The feature offset is removed homomorphically:
the feature holder subtracts ``[[c * sum r']]`` (computed from the ciphertexts, never seen),
so the middle slot holds ``sum r' x~`` with ``x~ = x' - c``; the residual offset is then
removed in the clear, as ``2^12 sum x~`` involves the holder's own features only. Every
coefficient stays in ``(-2^v, 2^v)``; the mask adds ``[2^v, 2^v + 2^(v+lambda))`` per slot,
so each masked coefficient lies in ``(0, 2^(v+lambda+1))``: the slot width ``s`` is
``v + lambda + 1``, no slot can borrow or carry, and the whole plaintext is below
``2^((2K-1) s) <= 2^(n_bits-1) < n``, so nothing wraps modulo ``n``. ``lambda = 40`` bits
of statistical hiding.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tongban.federation.packing import MIN_KEY_BITS, OutOfBounds

__all__ = [
    "FEATURE_BITS",
    "FEATURE_CLIP",
    "LOGIT_FRAC",
    "LOGIT_LIMIT",
    "RESIDUAL_FRAC",
    "RESIDUAL_OFFSET",
    "STAT_BITS",
    "DiagonalLayout",
    "decode_logits",
    "encode_features",
    "encode_logits",
    "encode_residuals",
    "feature_frac",
    "feature_offset",
    "feature_values",
]

RESIDUAL_FRAC = 12
RESIDUAL_OFFSET = 1 << RESIDUAL_FRAC  # r' = r~ + 2^12, r~ in [-2^12, 2^12]
RESIDUAL_MAX = 2 * RESIDUAL_OFFSET  # largest r'
FEATURE_CLIP = 8.0  # features are clipped to [-8, 8): 4 bits of range
FEATURE_BITS = 12  # default digit width: 8 fractional bits (x' = x~ + 2^11)
MIN_FEATURE_BITS, MAX_FEATURE_BITS = 6, 16
STAT_BITS = 40
LOGIT_FRAC = 24
LOGIT_LIMIT = float(1 << 30)  # |partial logit| bound; far above any sane model

Ints = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]


def feature_frac(bits: int) -> int:
    """Fractional bits of a ``bits``-wide feature digit (4 bits go to the range +-8)."""
    if type(bits) is not int or not MIN_FEATURE_BITS <= bits <= MAX_FEATURE_BITS:
        raise OutOfBounds(f"feature_bits: expected {MIN_FEATURE_BITS}..{MAX_FEATURE_BITS}")
    return bits - 4


def feature_offset(bits: int) -> int:
    """``c = 8 * 2^frac = 2^(bits-1)``: ``x' = x~ + c`` is in ``[0, 2^bits)``."""
    return 1 << (bits - 1)


def encode_features(x: Floats, bits: int = FEATURE_BITS) -> Ints:
    """``x' = round(clip(x) 2^frac) + 2^(bits-1)``: non-negative ``bits``-bit digits."""
    frac = feature_frac(bits)
    clipped = np.clip(x, -FEATURE_CLIP, FEATURE_CLIP - 2.0**-frac)
    return np.rint(clipped * (1 << frac)).astype(np.int64) + feature_offset(bits)


def feature_values(encoded: Ints, bits: int = FEATURE_BITS) -> Floats:
    """The features as the model sees them (what the encoding keeps of them)."""
    scale = float(1 << feature_frac(bits))
    return np.asarray((encoded - feature_offset(bits)) / scale, dtype=np.float64)


def encode_residuals(r: Floats) -> Ints:
    """``r' = round(r 2^12) + 2^12`` for residuals ``sigma(z) - y`` in ``[-1, 1]``."""
    if r.size and (not np.all(np.isfinite(r)) or np.abs(r).max() > 1.0):
        raise OutOfBounds("residuals: expected values in [-1, 1]")
    return np.rint(r * RESIDUAL_OFFSET).astype(np.int64) + RESIDUAL_OFFSET


def encode_logits(u: Floats) -> npt.NDArray[np.uint64]:
    """Partial logits as 64-bit fixed point (two's complement, so masks add mod 2^64)."""
    if u.size and (not np.all(np.isfinite(u)) or np.abs(u).max() >= LOGIT_LIMIT):
        raise OutOfBounds("logits: partial logit outside the fixed-point range (diverged?)")
    return np.rint(u * (1 << LOGIT_FRAC)).astype(np.int64).view(np.uint64)


def decode_logits(total: npt.NDArray[np.uint64]) -> Floats:
    return np.asarray(total.view(np.int64) / float(1 << LOGIT_FRAC), dtype=np.float64)


@dataclass(frozen=True)
class DiagonalLayout:
    """How a batch of up to ``batch`` residuals is packed for an ``n_bits``-bit key."""

    batch: int
    n_bits: int
    feature_bits: int = FEATURE_BITS

    def __post_init__(self) -> None:
        if type(self.batch) is not int or self.batch < 1:
            raise OutOfBounds("batch: expected a positive integer")
        feature_frac(self.feature_bits)  # validates
        if type(self.n_bits) is not int or self.n_bits < MIN_KEY_BITS:
            raise OutOfBounds(f"n_bits: expected at least {MIN_KEY_BITS}")
        if self.slots < 1:
            raise OutOfBounds("batch: too large for one slot of the key")
        # The invariants of the module docstring, as executable checks.
        assert self.batch * RESIDUAL_MAX * self.feature_max < 1 << self.value_bits
        assert self.feature_offset <= self.feature_max
        assert (2 * self.slots - 1) * self.slot_bits <= self.n_bits - 1

    @property
    def feature_max(self) -> int:
        """The largest digit ``x'``."""
        return (1 << self.feature_bits) - 1

    @property
    def feature_offset(self) -> int:
        return feature_offset(self.feature_bits)

    @property
    def feature_frac(self) -> int:
        return feature_frac(self.feature_bits)

    @property
    def value_bits(self) -> int:
        """``v``: every coefficient of ``P - Q`` is in ``(-2^v, 2^v)``."""
        return (self.batch * RESIDUAL_MAX * self.feature_max).bit_length()

    @property
    def slot_bits(self) -> int:
        return self.value_bits + STAT_BITS + 1

    @property
    def slots(self) -> int:
        """``K``: residuals per ciphertext (``2K - 1`` coefficients must fit)."""
        return ((self.n_bits - 1) // self.slot_bits + 1) // 2

    @property
    def coefficients(self) -> int:
        return 2 * self.slots - 1

    @property
    def middle_shift(self) -> int:
        return (self.slots - 1) * self.slot_bits

    def blocks(self, count: int) -> int:
        return -(-count // self.slots)

    def pack_residuals(self, encoded: Ints) -> list[int]:
        """Blocks ``R_b = sum_k r'_(b,k) 2^(k s)`` (the last block padded with zeros)."""
        if encoded.ndim != 1 or len(encoded) > self.batch:
            raise OutOfBounds(f"residuals: expected at most {self.batch} values")
        if encoded.size and (encoded.min() < 0 or encoded.max() > RESIDUAL_MAX):
            raise OutOfBounds(f"residuals: expected encoded values in [0, {RESIDUAL_MAX}]")
        width, per = self.slot_bits, self.slots
        values = encoded.tolist()
        out: list[int] = []
        for start in range(0, len(values), per):
            acc = 0
            for value in reversed(values[start : start + per]):
                acc = (acc << width) | value
            out.append(acc)
        return out

    def block_digits(self, encoded_column: Ints) -> Ints:
        """One feature's ``x'`` as a ``(blocks, K)`` array, zero-padded like the residuals."""
        count = len(encoded_column)
        if count > self.batch:
            raise OutOfBounds(f"features: expected at most {self.batch} rows")
        if count and (encoded_column.min() < 0 or encoded_column.max() > self.feature_max):
            raise OutOfBounds(f"features: expected encoded values in [0, {self.feature_max}]")
        padded = np.zeros(self.blocks(count) * self.slots, dtype=np.int64)
        padded[:count] = encoded_column
        return padded.reshape(-1, self.slots)

    def offset_exponent(self) -> int:
        """``E_const = sum_k c 2^((K-1-k) s)``: the exponent that yields ``c sum r'``."""
        return sum(self.feature_offset << (k * self.slot_bits) for k in range(self.slots))

    def draw_mask(self) -> tuple[int, int]:
        """A fresh mask (every coefficient in ``[2^v, 2^v + 2^(v+lambda))``) and its middle."""
        low = 1 << self.value_bits
        mask, middle = 0, 0
        for m in range(self.coefficients):
            slot = low + secrets.randbits(self.value_bits + STAT_BITS)
            mask |= slot << (m * self.slot_bits)
            if m == self.slots - 1:
                middle = slot
        return mask, middle

    def middle(self, plaintext: int) -> int:
        """The middle coefficient of a decrypted, masked product, refusing impossible ones."""
        if not 0 < plaintext < 1 << (self.coefficients * self.slot_bits):
            raise OutOfBounds("plaintext: bits set outside the coefficients (tampered?)")
        return (plaintext >> self.middle_shift) & ((1 << self.slot_bits) - 1)
