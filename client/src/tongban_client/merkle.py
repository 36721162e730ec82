"""RFC 9162 (Certificate Transparency 2.0) proof verification over SM3, pure Python.

The gateway's audit log is an RFC 6962 Merkle tree with SM3 in place of SHA-256: leaf hash
``SM3(0x00 || entry)``, node hash ``SM3(0x01 || left || right)``, empty tree ``SM3("")``.
The two functions below are RFC 9162 sections 2.1.3.2 and 2.1.4.2, step by step.
"""

from __future__ import annotations

from collections.abc import Sequence

from ._gm import sm3
from .errors import ProofRejected

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "leaf_hash",
    "node_hash",
    "root_from_consistency",
    "root_from_inclusion",
]

HASH_SIZE = 32
EMPTY_ROOT = sm3(b"")


def leaf_hash(entry: bytes) -> bytes:
    return sm3(b"\x00" + entry)


def node_hash(left: bytes, right: bytes) -> bytes:
    return sm3(b"\x01" + left + right)


def root_from_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """The root implied by an inclusion proof of ``leaf`` at ``index`` in a tree of
    ``size`` leaves (RFC 9162 section 2.1.3.2); :class:`ProofRejected` if malformed."""
    if not 0 <= index < size:
        raise ProofRejected("index out of range")
    if len(leaf) != HASH_SIZE:
        raise ProofRejected("malformed leaf hash")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if len(p) != HASH_SIZE or sn == 0:
            raise ProofRejected("malformed inclusion proof")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofRejected("inclusion proof has the wrong length")
    return r


def root_from_consistency(  # noqa: PLR0912 -- RFC 9162 section 2.1.4.2, step by step
    first: int, second: int, first_root: bytes, proof: Sequence[bytes]
) -> bytes:
    """Check a consistency proof from a tree of ``first`` leaves with ``first_root`` to one
    of ``second`` leaves, and return the second root it implies (RFC 9162 section 2.1.4.2);
    :class:`ProofRejected` if it is malformed or does not lead back to ``first_root``."""
    if not 0 < first <= second:
        raise ProofRejected("need 0 < first <= second")
    if first == second:
        if proof:
            raise ProofRejected("proof must be empty for equal sizes")
        return first_root
    if not proof or any(len(p) != HASH_SIZE for p in proof):
        raise ProofRejected("malformed consistency proof")
    path = list(proof)
    if first & (first - 1) == 0:  # first is a power of two: its root starts the path
        path.insert(0, first_root)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofRejected("consistency proof too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofRejected("consistency proof too short")
    if fr != first_root:
        raise ProofRejected("consistency proof does not match the first root")
    return sr
