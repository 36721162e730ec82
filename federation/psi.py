"""ECDH private set intersection on the SM2 curve, for two or more departments.

Each department ``i`` holds a set of ID numbers ``S_i`` and a secret scalar ``k_i``. An ID
is mapped to a curve point ``H(id)`` by try-and-increment on SM3 (never ``H(id)·G``: its
discrete log would be known and the blinding worthless). Blinding is commutative,
``k_a·(k_b·P) = k_b·(k_a·P)``, so an ID blinded by every department's key gets the same
*tag* whoever held it, and nobody can compute a tag alone.

The sets travel round a ring, through the coordinator (the gateway) as a relay:

1. every department shuffles its set (a secret permutation), hashes and blinds it with its
   own key (:meth:`PsiParty.offer`);
2. each blinded set visits the other departments in ring order; each applies its key and
   keeps the order (:meth:`PsiParty.relay`);
3. the last department on a set's round sends the finished tags to the coordinator, which
   intersects the tags of all sets (:func:`intersect_tags`) and tells each owner which of
   its *shuffled positions* are in the intersection, in one canonical order (sorted tags);
4. the owner maps positions back through its permutation (:meth:`PsiParty.accept`): every
   department ends with its own rows of the intersection, aligned row for row.

Who sees what (semi-honest, no collusion): a department sees other departments' sets only
as points blinded by a key set that never matches another set's key set on the ring, so
it cannot compare them; only finished tags are comparable, and no department sees the
finished tags of two sets. The coordinator sees every message but holds no key: it learns
the set sizes and the sizes of the intersections (the Venn regions), nothing else. A
department learns which of its own IDs are in the common intersection, nothing about IDs
the others hold outside it.

Points travel x-only (32 bytes). ``x(k·P) = x(k·(-P))``, so reading an x back as the
point with even ``y`` is consistent through every blinding. Scalar multiplications run in
C through Tongsuo's ``EC_POINT_mul`` (tongsuopy's cffi binding, which releases the GIL),
on ``workers`` threads.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import gmpy2
import numpy as np
import numpy.typing as npt

from tongban.primitives.errors import BadRequest
from tongban.primitives.gm import SM2_A, SM2_B, SM2_N, SM2_P

__all__ = [
    "POINT_BYTES",
    "InvalidPoint",
    "PsiError",
    "PsiKind",
    "PsiMessage",
    "PsiParty",
    "Transcript",
    "hash_to_curve",
    "intersect_tags",
    "run_psi",
]

POINT_BYTES = 32
_H2C_DOMAIN = b"tongban/psi/sm2/h2c/v1"
_EVEN = b"\x02"
_POINT_CONVERSION_COMPRESSED = 2


class PsiError(BadRequest, ValueError):
    """A PSI message of the wrong shape: duplicates, wrong lengths, positions out of range."""

    slug = "psi-invalid-message"
    title = "Invalid private set intersection message"


class InvalidPoint(PsiError):
    """Bytes that are not the x-coordinate of a point of the SM2 curve."""

    slug = "psi-invalid-point"
    title = "Not a point of the SM2 curve"


# -- the curve, through Tongsuo's C library ---------------------------------------------------


class _Curve:
    """The SM2 group from Tongsuo's libcrypto; one BN_CTX and two points per thread."""

    def __init__(self) -> None:
        from tongsuopy.backends.tongsuo import backend

        self.lib: Any = backend._lib
        self.ffi: Any = backend._ffi
        nid = self.lib.OBJ_sn2nid(b"SM2")
        group = self.lib.EC_GROUP_new_by_curve_name(nid)
        if group == self.ffi.NULL:
            raise RuntimeError("Tongsuo: the SM2 group is not available")
        self.group = self.ffi.gc(group, self.lib.EC_GROUP_free)
        self._local = threading.local()

    def scratch(self) -> tuple[Any, Any, Any, Any]:
        """This thread's ``(BN_CTX, point, point, 33-byte buffer)``."""
        local = self._local
        if not hasattr(local, "ctx"):
            lib, ffi = self.lib, self.ffi
            local.ctx = ffi.gc(lib.BN_CTX_new(), lib.BN_CTX_free)
            local.p = ffi.gc(lib.EC_POINT_new(self.group), lib.EC_POINT_free)
            local.q = ffi.gc(lib.EC_POINT_new(self.group), lib.EC_POINT_free)
            local.buf = ffi.new("unsigned char[33]")
        return local.ctx, local.p, local.q, local.buf

    def scalar(self, k: int) -> Any:
        """A BIGNUM for ``k``, cleared when freed, flagged for constant-time use."""
        lib, ffi = self.lib, self.ffi
        bn = lib.BN_bin2bn(k.to_bytes(32, "big"), 32, ffi.NULL)
        if bn == ffi.NULL:
            raise MemoryError("Tongsuo: BN_bin2bn failed")
        lib.BN_set_flags(bn, lib.BN_FLG_CONSTTIME)
        return ffi.gc(bn, lib.BN_clear_free)

    def multiply(self, scalar: Any, xs: bytes) -> bytes:
        """``x(k·P)`` for each 32-byte x in ``xs`` (read as the point with even y)."""
        lib, ffi, group = self.lib, self.ffi, self.group
        ctx, p, q, buf = self.scratch()
        count = len(xs) // POINT_BYTES
        out = bytearray(count * POINT_BYTES)
        view = memoryview(xs)
        for i in range(count):
            start = i * POINT_BYTES
            encoded = _EVEN + bytes(view[start : start + POINT_BYTES])
            if lib.EC_POINT_oct2point(group, p, encoded, 33, ctx) != 1:
                lib.ERR_clear_error()
                raise InvalidPoint(f"points[{i}]: not the x-coordinate of an SM2 point")
            if lib.EC_POINT_mul(group, q, ffi.NULL, p, scalar, ctx) != 1:
                lib.ERR_clear_error()
                raise RuntimeError("Tongsuo: EC_POINT_mul failed")
            if lib.EC_POINT_point2oct(group, q, _POINT_CONVERSION_COMPRESSED, buf, 33, ctx) != 33:
                lib.ERR_clear_error()
                raise RuntimeError("Tongsuo: EC_POINT_point2oct failed")
            out[start : start + POINT_BYTES] = ffi.buffer(buf, 33)[1:]
        return bytes(out)


_CURVE: _Curve | None = None
_CURVE_LOCK = threading.Lock()


def _curve() -> _Curve:
    global _CURVE  # noqa: PLW0603 - one group object per process, built on first use
    with _CURVE_LOCK:
        if _CURVE is None:
            _CURVE = _Curve()
        return _CURVE


# -- hashing and blinding ---------------------------------------------------------------------


def hash_to_curve(value: bytes, session: bytes) -> bytes:
    """The x-coordinate (32 bytes) of ``H(value)``, by try-and-increment on SM3.

    ``x = SM3(domain || len(session) || session || counter || value) mod p`` for counter
    0, 1, … until ``x^3 + a x + b`` is a square mod ``p`` (half of all x): the point with
    that x and even y is ``H(value)``. The session binds tags to one job, so tags from two
    jobs cannot be linked. Not constant time: the inputs are the caller's own IDs.
    """
    prefix = _H2C_DOMAIN + len(session).to_bytes(2, "big") + session
    for counter in range(256):
        digest = hashlib.new("sm3", prefix + bytes((counter,)) + value).digest()
        x = int.from_bytes(digest, "big") % SM2_P
        rhs = (x * x * x + SM2_A * x + SM2_B) % SM2_P
        if rhs and gmpy2.legendre(rhs, SM2_P) == 1:
            return x.to_bytes(POINT_BYTES, "big")
    raise RuntimeError("hash_to_curve: no point after 256 tries")  # probability 2**-256


def _check_points(name: str, points: bytes) -> int:
    if not isinstance(points, bytes) or len(points) % POINT_BYTES:
        raise PsiError(f"{name}: expected a multiple of {POINT_BYTES} bytes")
    return len(points) // POINT_BYTES


def _blind(scalar: Any, points: bytes, workers: int) -> bytes:
    """``x(k·P)`` for every point, split over ``workers`` threads (cffi drops the GIL)."""
    curve = _curve()
    count = len(points) // POINT_BYTES
    if workers <= 1 or count < 64:
        return curve.multiply(scalar, points)
    step = -(-count // workers)
    chunks = [
        points[i * POINT_BYTES : min(count, i + step) * POINT_BYTES] for i in range(0, count, step)
    ]
    with ThreadPoolExecutor(len(chunks)) as pool:
        return b"".join(pool.map(lambda chunk: curve.multiply(scalar, chunk), chunks))


# -- messages and the transcript --------------------------------------------------------------


class PsiKind(StrEnum):
    """What a PSI message carries (the rows of the "who sees what" table)."""

    BLINDED_SET = "psi.blinded_set"  # another department's set, blinded by 1..m-1 keys
    FINAL_TAGS = "psi.final_tags"  # a set blinded by every key (coordinator only)
    POSITIONS = "psi.positions"  # which of my shuffled positions are in the intersection


@dataclass(frozen=True)
class PsiMessage:
    kind: PsiKind
    sender: str
    recipient: str
    owner: str  # whose set the payload is about
    payload: bytes | npt.NDArray[np.int64]

    @property
    def size(self) -> int:
        """Elements carried (points or positions)."""
        if isinstance(self.payload, bytes):
            return len(self.payload) // POINT_BYTES
        return int(self.payload.shape[0])


@dataclass
class Transcript:
    """Every message, as its recipient received it: what the tests check the table against."""

    messages: list[PsiMessage] = field(default_factory=list)

    def record(self, message: PsiMessage) -> None:
        self.messages.append(message)

    def received_by(self, name: str) -> list[PsiMessage]:
        return [m for m in self.messages if m.recipient == name]


# -- the parties ------------------------------------------------------------------------------


class PsiParty:
    """One department's side: its IDs, its secret scalar and its secret shuffle."""

    def __init__(self, name: str, ids: Sequence[str], session: bytes, *, workers: int = 2) -> None:
        if len(set(ids)) != len(ids):
            raise PsiError(f"{name}: duplicate IDs in the input set")
        self.name = name
        self.session = session
        self.workers = workers
        self._ids = list(ids)
        self._key = _curve().scalar(secrets.randbelow(SM2_N - 1) + 1)
        # The shuffle hides the order of our rows from everyone who sees our blinded set.
        self._order = np.array(
            secrets.SystemRandom().sample(range(len(self._ids)), len(self._ids)), dtype=np.int64
        )
        self._rows: npt.NDArray[np.int64] | None = None

    @property
    def size(self) -> int:
        return len(self._ids)

    def offer(self) -> bytes:
        """My set, shuffled, hashed to the curve and blinded with my key."""
        hashed = b"".join(
            hash_to_curve(self._ids[row].encode(), self.session) for row in self._order
        )
        return _blind(self._key, hashed, self.workers)

    def relay(self, owner: str, points: bytes) -> bytes:
        """Another department's blinded set with my key applied, order kept."""
        _check_points(f"{owner}.points", points)
        return _blind(self._key, points, self.workers)

    def accept(self, positions: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """My rows in the intersection, in the canonical order shared by all departments."""
        positions = np.asarray(positions)
        if positions.ndim != 1 or positions.dtype.kind not in "iu":
            raise PsiError("positions: expected a 1-d integer array")
        if positions.size and (positions.min() < 0 or positions.max() >= self.size):
            raise PsiError("positions: out of range for my set")
        if np.unique(positions).size != positions.size:
            raise PsiError("positions: duplicates")
        self._rows = self._order[positions.astype(np.int64)]
        return self._rows

    @property
    def rows(self) -> npt.NDArray[np.int64]:
        if self._rows is None:
            raise RuntimeError("PSI not finished")
        return self._rows

    def intersection_ids(self) -> list[str]:
        """The IDs of my rows in the intersection (only IDs I hold myself)."""
        return [self._ids[row] for row in self.rows]


def intersect_tags(tags: Mapping[str, bytes]) -> dict[str, npt.NDArray[np.int64]]:
    """The coordinator's step: positions of the common tags in each set, in sorted-tag order."""
    if not tags:
        raise PsiError("tags: expected at least one set")
    indexed: dict[str, dict[bytes, int]] = {}
    for owner, blob in tags.items():
        count = _check_points(f"{owner}.tags", blob)
        index = {blob[i * POINT_BYTES : (i + 1) * POINT_BYTES]: i for i in range(count)}
        if len(index) != count:
            raise PsiError(f"{owner}.tags: duplicate tags")
        indexed[owner] = index
    owners = sorted(indexed, key=lambda o: len(indexed[o]))
    common = set(indexed[owners[0]])
    for owner in owners[1:]:
        common.intersection_update(indexed[owner])
    ordered = sorted(common)
    return {
        owner: np.fromiter((index[t] for t in ordered), dtype=np.int64, count=len(ordered))
        for owner, index in indexed.items()
    }


ProgressFn = Callable[[str], None]


def run_psi(
    parties: Sequence[PsiParty],
    *,
    coordinator: str = "gateway",
    transcript: Transcript | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, npt.NDArray[np.int64]]:
    """Run the ring protocol in process; returns each department's aligned rows.

    Every hop goes through the coordinator (``transcript`` records it twice: the
    coordinator relays it, the next department receives it), as it would over HTTP.
    """
    if len(parties) < 2:
        raise PsiError("parties: expected at least two departments")
    names = [p.name for p in parties]
    if len(set(names)) != len(names) or coordinator in names:
        raise PsiError("parties: names must be distinct and differ from the coordinator")
    log = transcript if transcript is not None else Transcript()
    m = len(parties)

    def hop(kind: PsiKind, sender: str, recipient: str, owner: str, payload: bytes) -> None:
        log.record(PsiMessage(kind, sender, coordinator, owner, payload))  # relayed
        log.record(PsiMessage(kind, coordinator, recipient, owner, payload))

    current: dict[str, bytes] = {}
    for party in parties:
        if progress:
            progress(f"{party.name}: hashing and blinding {party.size} IDs")
        current[party.name] = party.offer()
    for step in range(1, m):
        for i, owner in enumerate(parties):
            sender, holder = parties[(i + step - 1) % m], parties[(i + step) % m]
            hop(PsiKind.BLINDED_SET, sender.name, holder.name, owner.name, current[owner.name])
            if progress:
                progress(f"{holder.name}: blinding the set of {owner.name}")
            current[owner.name] = holder.relay(owner.name, current[owner.name])
    for i, owner in enumerate(parties):
        last = parties[(i + m - 1) % m]
        log.record(
            PsiMessage(PsiKind.FINAL_TAGS, last.name, coordinator, owner.name, current[owner.name])
        )
    positions = intersect_tags(current)
    rows: dict[str, npt.NDArray[np.int64]] = {}
    for party in parties:
        log.record(
            PsiMessage(
                PsiKind.POSITIONS, coordinator, party.name, party.name, positions[party.name]
            )
        )
        rows[party.name] = party.accept(positions[party.name])
    return rows
