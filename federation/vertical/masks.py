"""Pairwise-cancelling masks for the partial logits, from SM2 key agreement.

Every pair of parties agrees on a seed by x-only ECDH on SM2 (each sends ``x(a·G)``
through the relay; both compute ``x(a·b·G)``). A party's mask for a label is
``sum over peers of ±SHAKE256(seed_pair || label)`` read as uint64, with ``+`` towards
peers whose name sorts after its own: summed over *all* parties, every mask cancels modulo
``2^64``. Feature holders send ``logits + mask``; the label holder adds its own mask to the
sum of what it received and gets ``sum of the feature holders' partial logits``, while each
single message, and the sum the relay could form, stays uniformly random. With two or more
feature holders the label holder cannot split the sum.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

from tongban.federation.psi import POINT_BYTES, InvalidPoint, _curve
from tongban.primitives.gm import SM2_GX, SM2_N

__all__ = ["PairwiseMasks"]

_DOMAIN = b"tongban/vertical/pairwise-mask/v1"


class PairwiseMasks:
    """One party's side of the key agreement and its masks."""

    def __init__(self, name: str, session: bytes) -> None:
        self.name = name
        self.session = session
        self._scalar = _curve().scalar(secrets.randbelow(SM2_N - 1) + 1)
        self._seeds: dict[str, bytes] = {}

    def public(self) -> bytes:
        """``x(a·G)``; the generator has even y, so the x-only encoding reads it back."""
        return _curve().multiply(self._scalar, SM2_GX.to_bytes(POINT_BYTES, "big"))

    def agree(self, peer: str, peer_public: bytes) -> None:
        if peer == self.name or peer in self._seeds:
            raise ValueError(f"{peer}: expected a new peer")
        if not isinstance(peer_public, bytes) or len(peer_public) != POINT_BYTES:
            raise InvalidPoint(f"{peer}.pairwise_key: expected {POINT_BYTES} bytes")
        shared = _curve().multiply(self._scalar, peer_public)
        low, high = sorted((self.name, peer))
        label = f"{low}\x00{high}".encode()
        self._seeds[peer] = hashlib.new(
            "sm3", _DOMAIN + len(self.session).to_bytes(2, "big") + self.session + label + shared
        ).digest()

    @property
    def peers(self) -> Iterable[str]:
        return tuple(self._seeds)

    def mask(self, label: str, length: int) -> npt.NDArray[np.uint64]:
        """``sum_peers ±PRG(seed, label)`` modulo 2^64."""
        total = np.zeros(length, dtype=np.uint64)
        for peer, seed in self._seeds.items():
            stream = hashlib.shake_256(seed + label.encode()).digest(8 * length)
            values = np.frombuffer(stream, dtype="<u8").astype(np.uint64)
            if self.name < peer:
                total += values
            else:
                total -= values
        return total
