"""Packing many bounded counters into one Paillier plaintext, with overflow made impossible.

A 2048-bit Paillier plaintext holds ~2047 usable bits, but a district count needs ~20. One
ciphertext per counter would cost one modular exponentiation per counter; packing ``k``
counters per plaintext divides that cost by ``k``. Packing is only sound if adding the
ciphertexts of all parties can never carry one slot into its neighbour nor wrap the
plaintext modulo ``n``. :class:`PackingLayout` makes both impossible by construction:

* every party's value lies in ``[0, value_bound]`` (checked by :meth:`PackingLayout.pack`),
* at most ``parties`` vectors are summed (checked by the caller that aggregates), so each
  slot of the sum is at most ``max_sum = value_bound * parties``;
* a slot is ``bits(max_sum) + GUARD_BITS`` wide, so ``max_sum < 2**(slot_bits - GUARD_BITS)``
  and no slot ever carries;
* ``slots * slot_bits <= n_bits - 1``, and an ``n_bits``-bit modulus is at least
  ``2**(n_bits - 1)``, so every packed plaintext and every packed sum is ``< n``.

The guard bit is not needed for correctness; it makes a bound violation that slipped past
the checks (a buggy or hostile party, a tampered or wrongly decrypted ciphertext) land in
its own slot, where :meth:`PackingLayout.unpack` sees it and refuses, instead of carrying
silently into the neighbouring counter.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass

from tongban.primitives.errors import BadRequest

__all__ = ["GUARD_BITS", "MIN_KEY_BITS", "OutOfBounds", "PackingLayout"]

#: Keys below this are refused everywhere (the issue's floor; ~112-bit security).
MIN_KEY_BITS = 2048
#: Spare high bits per slot, always zero in a correct sum; see the module docstring.
GUARD_BITS = 1


class OutOfBounds(BadRequest, ValueError):
    """A value, a party count or a layout outside what the packing can carry exactly.

    Also a ``ValueError`` so that pure-Python callers can catch it without knowing the
    tongban error tree; the HTTP shell renders it as a 400 problem like any ``BadRequest``.
    """

    slug = "out-of-bounds"
    title = "Value outside the packing bounds"


@dataclass(frozen=True)
class PackingLayout:
    """How ``counters`` values in ``[0, value_bound]`` from ``parties`` parties are packed.

    Built for one key size (``n_bits``, the bit length of the Paillier modulus ``n``). The
    derived fields are computed in ``__post_init__`` and the no-overflow invariants asserted
    there, so an instance that exists is a layout whose sums cannot overflow.
    """

    counters: int
    value_bound: int
    parties: int
    n_bits: int

    @classmethod
    def for_key(cls, n: int, counters: int, value_bound: int, parties: int) -> PackingLayout:
        """The layout for the modulus ``n`` of an analyst's public key."""
        return cls(
            counters=counters, value_bound=value_bound, parties=parties, n_bits=n.bit_length()
        )

    def __post_init__(self) -> None:
        for name in ("counters", "value_bound", "parties", "n_bits"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise OutOfBounds(f"{name}: expected a positive integer")
        if self.n_bits < MIN_KEY_BITS:
            raise OutOfBounds(f"n_bits: expected at least {MIN_KEY_BITS}")
        if self.slot_bits > self.capacity_bits:
            raise OutOfBounds(
                "parties: parties * value_bound does not fit one slot of a "
                f"{self.n_bits}-bit plaintext"
            )
        # The two invariants the module docstring proves; kept as executable checks.
        assert self.max_sum < 1 << (self.slot_bits - GUARD_BITS)
        assert self.slots_per_ciphertext * self.slot_bits <= self.n_bits - 1

    @property
    def max_sum(self) -> int:
        """The largest value any slot of a correct sum can hold."""
        return self.value_bound * self.parties

    @property
    def slot_bits(self) -> int:
        """Width of one slot: enough for ``max_sum`` plus the guard bit(s)."""
        return self.max_sum.bit_length() + GUARD_BITS

    @property
    def capacity_bits(self) -> int:
        """Plaintext bits usable for slots: one below ``n_bits`` keeps packed values ``< n``."""
        return self.n_bits - 1

    @property
    def slots_per_ciphertext(self) -> int:
        """Counters carried by one ciphertext."""
        return self.capacity_bits // self.slot_bits

    @property
    def ciphertexts(self) -> int:
        """Ciphertexts per party vector (and modular exponentiations per party)."""
        return -(-self.counters // self.slots_per_ciphertext)

    def pack(self, values: Sequence[int]) -> list[int]:
        """Pack one party's ``counters`` values into ``ciphertexts`` plaintext integers.

        Slot ``i`` of plaintext ``j`` holds ``values[j * slots + i]`` at bit ``i * slot_bits``
        (little-endian slots); the last plaintext is padded with zero slots.
        """
        if len(values) != self.counters:
            raise OutOfBounds(f"values: expected {self.counters} counters")
        checked: list[int] = []
        for value in values:
            if isinstance(value, bool):
                raise OutOfBounds("values: expected integers, not booleans")
            try:
                checked.append(operator.index(value))
            except TypeError as exc:
                raise OutOfBounds("values: expected integers") from exc
        # min/max run in C; checking here is what makes "overflow impossible" hold.
        if min(checked) < 0 or max(checked) > self.value_bound:
            raise OutOfBounds(f"values: expected every value in [0, {self.value_bound}]")
        width, per = self.slot_bits, self.slots_per_ciphertext
        packed: list[int] = []
        for start in range(0, self.counters, per):
            acc = 0
            for value in reversed(checked[start : start + per]):
                acc = (acc << width) | value
            packed.append(acc)
        return packed

    def unpack(self, plaintexts: Sequence[int], count: int | None = None) -> list[int]:
        """Unpack (summed) plaintexts into ``count`` counters, refusing anything impossible.

        A correct sum has every slot ``<= max_sum`` and no bit set above the last slot. A
        wrong private key, a tampered ciphertext or more than ``parties`` contributions
        break that with overwhelming probability, and we refuse rather than return garbage.
        """
        count = self.counters if count is None else count
        if not 0 < count <= self.counters:
            raise OutOfBounds(f"count: expected 1..{self.counters}")
        if len(plaintexts) != self.ciphertexts:
            raise OutOfBounds(f"plaintexts: expected {self.ciphertexts} plaintexts")
        width, per, max_sum = self.slot_bits, self.slots_per_ciphertext, self.max_sum
        mask = (1 << width) - 1
        limit = 1 << (width * per)
        out: list[int] = []
        for index, packed in enumerate(plaintexts):
            if not 0 <= packed < limit:
                raise OutOfBounds(f"plaintexts[{index}]: bits set outside the slots")
            slots, plain = min(per, self.counters - index * per), packed
            for _ in range(slots):
                slot = plain & mask
                if slot > max_sum:
                    raise OutOfBounds(f"plaintexts[{index}]: a slot exceeds parties * value_bound")
                out.append(slot)
                plain >>= width
            if plain:
                raise OutOfBounds(f"plaintexts[{index}]: padding slots are not zero")
        return out[:count]
