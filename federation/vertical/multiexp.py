"""Multi-exponentiation ``prod_b c_b^(E_b)`` for the diagonal exponents, by buckets.

Each ``E_b = sum_k d_(b,k) 2^(o_k)`` has one small digit (12 bits) per slot ``k`` at a known
bit offset ``o_k``; the bits between are zero. Computing each ``c_b^(E_b)`` with ``powmod``
would pay ~1,000 squarings per block; the bucket method (Pippenger) pays them once per
feature instead: for every ``w``-bit window position ``p`` it multiplies each base into
the bucket of its digit (one multiplication per non-zero digit), folds the buckets with
two running products (``2^(w+1)`` multiplications), and Horner's rule combines the
windows from the top down with one squaring per bit of the longest exponent. About
``ceil(12 / w)`` multiplications per sample and feature remain.

gmpy2 releases the GIL in big multiplications when the thread's context allows it, so
:func:`multiexp_columns` spreads features over ``workers`` threads.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import gmpy2
import numpy as np
import numpy.typing as npt

__all__ = ["best_window", "multiexp", "multiexp_columns"]

Ints = npt.NDArray[np.int64]


def best_window(blocks: int, slots: int, digit_bits: int) -> int:
    """The window width minimising ``blocks*slots*ceil(bits/w) + slots*ceil(bits/w)*2^(w+1)``."""

    def cost(w: int) -> int:
        windows = slots * -(-digit_bits // w)
        return blocks * windows + windows * (1 << (w + 1))

    return min(range(1, digit_bits + 1), key=cost)


def multiexp(
    bases: Sequence[Any],
    digits: Ints,
    offsets: Sequence[int],
    digit_bits: int,
    modulus: Any,
    window: int | None = None,
) -> Any:
    """``prod_b bases[b]^(sum_k digits[b, k] 2^offsets[k]) mod modulus`` (an ``mpz``).

    ``digits`` is ``(len(bases), len(offsets))`` with entries in ``[0, 2^digit_bits)``.
    """
    count, slots = digits.shape
    if count != len(bases) or slots != len(offsets):
        raise ValueError("digits: expected one row per base and one column per offset")
    w = window or best_window(count, slots, digit_bits)
    mask = (1 << w) - 1
    # Window positions, each (bit position, slot, shift inside the digit).
    positions = sorted(
        ((offsets[k] + t, k, t) for k in range(slots) for t in range(0, digit_bits, w)),
        reverse=True,
    )
    one = gmpy2.mpz(1)
    acc = one
    previous: int | None = None
    for position, k, t in positions:
        column = ((digits[:, k] >> t) & mask).tolist()
        buckets: list[Any] = [one] * (mask + 1)
        for base, digit in zip(bases, column, strict=True):
            if digit:
                buckets[digit] = buckets[digit] * base % modulus
        running, window_sum = one, one
        for digit in range(mask, 0, -1):
            if buckets[digit] is not one:
                running = running * buckets[digit] % modulus
            if running is not one:
                window_sum = window_sum * running % modulus
        if previous is not None and acc is not one:
            acc = gmpy2.powmod(acc, 1 << (previous - position), modulus)
        acc = acc * window_sum % modulus
        previous = position
    if previous and acc is not one:
        acc = gmpy2.powmod(acc, 1 << previous, modulus)
    return acc


def multiexp_columns(
    bases: Sequence[Any],
    columns: Sequence[Ints],
    offsets: Sequence[int],
    digit_bits: int,
    modulus: Any,
    workers: int = 2,
) -> list[Any]:
    """:func:`multiexp` for several digit arrays over the same bases, on ``workers`` threads."""
    mpz_bases = [gmpy2.mpz(b) for b in bases]
    mod = gmpy2.mpz(modulus)

    def one(column: Ints) -> Any:
        gmpy2.get_context().allow_release_gil = True  # per-thread flag
        return multiexp(mpz_bases, column, offsets, digit_bits, mod)

    if workers <= 1 or len(columns) < 2:
        return [one(c) for c in columns]
    with ThreadPoolExecutor(min(workers, len(columns))) as pool:
        return list(pool.map(one, columns))
