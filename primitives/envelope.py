"""A national-cryptography envelope: any bytes (a signed JWS, a training message) sealed to
a recipient's SM2 public key, so that a TLS terminator, a proxy log or a capture sees
neither an ID number nor a result. docs/envelope.md has the design, the bytes and the
security argument; in short:

- **Seal** (:meth:`Sealer.seal`): a fresh 16-byte SM4 key is SM2-encrypted to the recipient
  (GB/T 32918.4, ``C1 || C3 || C2``, SM3 KDF) and the message is SM4-GCM encrypted under
  it, the header and the wrapped key as associated data. The sender reuses one wrapped key
  per recipient for at most ``max_messages`` messages or ``max_age`` seconds, each message
  with a fresh random nonce, so the SM2 cost is paid once per session, not per message.
- **Open** (:meth:`Opener.open`): the recipient unwraps a session key once and keeps it in a
  bounded LRU by its header (which names the random session id), committed only when the
  caller says the content authenticated (:meth:`Opener.remember`).
- **Reply** (:meth:`Opened.seal_reply`, :meth:`Sealed.open_reply`): the answer travels
  under the request's SM4 key with a fresh nonce and associated data that name the reply
  direction and the very request (its nonce and tag), so replies cost no SM2 operation and
  cannot be taken for a request or for the reply to another one.

Compact serialisation, JWE-like, ASCII only: ``header.wrapped_key.ciphertext`` (base64url
each; a reply has an empty ``wrapped_key``). ``ciphertext`` is ``nonce(12) || SM4-GCM
ciphertext || tag(16)``.

SM2 encryption runs on :class:`TongsuoCurve` (``EC_POINT_mul`` in Tongsuo's libcrypto, the
binding federation/psi.py uses) or on :class:`GmsslCurve` (pure-Python ``gmssl``, the
cross-check and no-C fallback); the KDF, C3 and all checks are this module's, so both
backends share one implementation of the scheme, and the tests prove it against gmssl's own
``CryptSM2.encrypt``/``decrypt``. Every failure raises
:class:`~tongban.primitives.errors.EnvelopeRefused` with a detail that names no content.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from tongban.primitives.errors import EnvelopeRefused
from tongban.primitives.gm import (
    SM2_N,
    SM2PrivateKey,
    SM2PublicKey,
    default_backend,
    is_on_curve,
    sm3,
    sm4_decrypt,
    sm4_encrypt,
)

__all__ = [
    "ALG",
    "ENC",
    "MAX_ENVELOPE",
    "REPLY_ALG",
    "WRAPPED_KEY_BYTES",
    "GmsslCurve",
    "Opened",
    "Opener",
    "SM2Curve",
    "Sealed",
    "Sealer",
    "TongsuoCurve",
    "default_curve",
    "get_curve",
    "sealed_length",
    "sm2_decrypt",
    "sm2_encrypt",
]

ALG = "SM2-ENC"  # the SM4 key is SM2-encrypted (GB/T 32918.4, C1C3C2) to the recipient
REPLY_ALG = "SM4-REPLY"  # a reply: under the request's SM4 key, nothing wrapped
ENC = "SM4-GCM"
SESSION_KEY_BYTES = 16
WRAPPED_KEY_BYTES = 65 + 32 + SESSION_KEY_BYTES  # C1 (04||x||y) || C3 (SM3) || C2
MAX_ENVELOPE = 16 * 1024 * 1024  # characters, unless the caller says less
_NONCE, _TAG = 12, 16
_VERSION = b"tongban-envelope/1"
_URL_TO_STANDARD = bytes.maketrans(b"-_", b"+/")
_SID = re.compile(r"[A-Za-z0-9_-]{22}")  # 16 random bytes, base64url
_KID = re.compile(r"[A-Za-z0-9_-]{16}")  # SM2PublicKey.key_id
_PURPOSE = re.compile(r"[a-z0-9][a-z0-9./+-]{0,63}")


# -- SM2 point multiplication: Tongsuo (C) or gmssl (pure Python) ---------------------------


class SM2Curve(Protocol):
    """``k·P`` on the SM2 curve for affine points; ``None`` is the generator."""

    name: str

    def multiply(self, k: int, point: tuple[int, int] | None = None) -> tuple[int, int]: ...


class TongsuoCurve:
    """The SM2 group from Tongsuo's libcrypto through tongsuopy's cffi binding (``_lib``).

    The same binding as federation/psi.py's ``_Curve`` (copied, not imported: primitives do
    not depend on federation), with uncompressed points: one ``BN_CTX`` and two points per
    thread; ``EC_POINT_mul`` releases the GIL and uses the generator's precomputation.
    """

    name = "tongsuo"
    _UNCOMPRESSED = 4

    def __init__(self) -> None:
        from tongsuopy.backends.tongsuo import backend

        self.lib: Any = backend._lib
        self.ffi: Any = backend._ffi
        group = self.lib.EC_GROUP_new_by_curve_name(self.lib.OBJ_sn2nid(b"SM2"))
        if group == self.ffi.NULL:
            raise RuntimeError("Tongsuo: the SM2 group is not available")
        self.group = self.ffi.gc(group, self.lib.EC_GROUP_free)
        self._local = threading.local()

    def _scratch(self) -> tuple[Any, Any, Any, Any]:
        local = self._local
        if not hasattr(local, "ctx"):
            lib, ffi = self.lib, self.ffi
            local.ctx = ffi.gc(lib.BN_CTX_new(), lib.BN_CTX_free)
            local.p = ffi.gc(lib.EC_POINT_new(self.group), lib.EC_POINT_free)
            local.q = ffi.gc(lib.EC_POINT_new(self.group), lib.EC_POINT_free)
            local.buf = ffi.new("unsigned char[65]")
        return local.ctx, local.p, local.q, local.buf

    def multiply(self, k: int, point: tuple[int, int] | None = None) -> tuple[int, int]:
        lib, ffi, group = self.lib, self.ffi, self.group
        ctx, p, q, buf = self._scratch()
        bn = lib.BN_bin2bn(k.to_bytes(32, "big"), 32, ffi.NULL)
        if bn == ffi.NULL:
            raise MemoryError("Tongsuo: BN_bin2bn failed")
        try:
            lib.BN_set_flags(bn, lib.BN_FLG_CONSTTIME)
            if point is None:
                ok = lib.EC_POINT_mul(group, q, bn, ffi.NULL, ffi.NULL, ctx)
            else:
                encoded = b"\x04" + point[0].to_bytes(32, "big") + point[1].to_bytes(32, "big")
                if lib.EC_POINT_oct2point(group, p, encoded, 65, ctx) != 1:
                    lib.ERR_clear_error()
                    raise ValueError("not a point of the SM2 curve")
                ok = lib.EC_POINT_mul(group, q, ffi.NULL, p, bn, ctx)
        finally:
            lib.BN_clear_free(bn)
        if ok != 1:
            lib.ERR_clear_error()
            raise RuntimeError("Tongsuo: EC_POINT_mul failed")
        if lib.EC_POINT_is_at_infinity(group, q) == 1:
            raise ValueError("the product is the point at infinity")
        if lib.EC_POINT_point2oct(group, q, self._UNCOMPRESSED, buf, 65, ctx) != 65:
            lib.ERR_clear_error()
            raise RuntimeError("Tongsuo: EC_POINT_point2oct failed")
        raw = bytes(ffi.buffer(buf, 65))
        return int.from_bytes(raw[1:33], "big"), int.from_bytes(raw[33:], "big")


class GmsslCurve:
    """Point multiplication through pure-Python ``gmssl`` (``CryptSM2._kg``): ~100x slower.

    Only the multiplication is gmssl's: ``CryptSM2.encrypt`` draws k from ``random`` (not a
    CSPRNG, and may give k >= n) and ``CryptSM2.decrypt`` never checks C3, so neither is
    used for sealing; the tests use them as the independent implementation to check against.
    """

    name = "gmssl"

    def __init__(self) -> None:
        from .extras import require_extra

        require_extra("gmssl", "gmssl", "the gmssl SM2 backend")
        from gmssl import sm2

        # No key material in the constructor: it would run public_key.lstrip("04").
        self._crypt = sm2.CryptSM2(private_key="", public_key="")
        self._g = sm2.default_ecc_table["g"]

    def multiply(self, k: int, point: tuple[int, int] | None = None) -> tuple[int, int]:
        if point is not None and not is_on_curve(*point):
            raise ValueError("not a point of the SM2 curve")
        hexed = self._g if point is None else f"{point[0]:064x}{point[1]:064x}"
        try:
            out: str | None = self._crypt._kg(k, hexed)
            if out is None or len(out) != 128:
                raise ValueError
            return int(out[:64], 16), int(out[64:], 16)
        except (ValueError, TypeError, ZeroDivisionError):  # infinity: gmssl divides by 0
            raise ValueError("the product is the point at infinity") from None


_CURVES: dict[str, SM2Curve] = {}
_CURVES_LOCK = threading.Lock()


def get_curve(name: str) -> SM2Curve:
    """The shared :class:`TongsuoCurve` (``"tongsuo"``) or :class:`GmsslCurve` (``"gmssl"``)."""
    with _CURVES_LOCK:
        if name not in _CURVES:
            if name == "tongsuo":
                _CURVES[name] = TongsuoCurve()
            elif name == "gmssl":
                _CURVES[name] = GmsslCurve()
            else:
                raise ValueError("unknown SM2 curve backend (expected 'tongsuo' or 'gmssl')")
        return _CURVES[name]


def default_curve() -> SM2Curve:
    """The curve of the process's SM2 backend (``gm.use_backend``), so the benchmark's gmssl
    baseline seals with gmssl too; Tongsuo otherwise."""
    return get_curve(default_backend().name)


# -- SM2 public-key encryption, GB/T 32918.4 (C1 || C3 || C2) -------------------------------


def _kdf(z: bytes, length: int) -> bytes:
    """GB/T 32918.4 KDF over SM3: SM3(Z || ct) for a 32-bit big-endian ct = 1, 2, ..."""
    out = b"".join(sm3(z + ct.to_bytes(4, "big")) for ct in range(1, -(-length // 32) + 1))
    return out[:length]


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def sm2_encrypt(recipient: SM2PublicKey, message: bytes, curve: SM2Curve | None = None) -> bytes:
    """SM2 encryption of ``message`` (non-empty) to ``recipient``: ``04 || x1 || y1 || C3 ||
    C2`` with C3 = SM3(x2 || M || y2), k from the OS CSPRNG. (gmssl's mode 1 is the same
    bytes without the leading ``04``.)"""
    if not message:
        raise ValueError("SM2 encryption needs a non-empty message")
    curve = curve or default_curve()
    point = (recipient.x, recipient.y)  # on the curve (SM2PublicKey checks); h = 1
    while True:
        k = secrets.randbelow(SM2_N - 1) + 1  # [1, n-1]
        x1, y1 = curve.multiply(k)
        x2, y2 = curve.multiply(k, point)
        xb, yb = x2.to_bytes(32, "big"), y2.to_bytes(32, "big")
        t = _kdf(xb + yb, len(message))
        if any(t):  # an all-zero t: pick another k (the standard's step A5)
            c1 = b"\x04" + x1.to_bytes(32, "big") + y1.to_bytes(32, "big")
            return c1 + sm3(xb + message + yb) + _xor(message, t)


def sm2_decrypt(key: SM2PrivateKey, ciphertext: bytes, curve: SM2Curve | None = None) -> bytes:
    """Inverse of :func:`sm2_encrypt`. C1 must be an uncompressed point of the curve (an
    off-curve C1 is the invalid-curve attack) and C3 must match; ValueError otherwise."""
    if len(ciphertext) < 65 + 32 + 1 or ciphertext[0] != 4:
        raise ValueError("SM2 decryption failed")
    x1, y1 = int.from_bytes(ciphertext[1:33], "big"), int.from_bytes(ciphertext[33:65], "big")
    if not is_on_curve(x1, y1):
        raise ValueError("SM2 decryption failed")
    c3, c2 = ciphertext[65:97], ciphertext[97:]
    try:
        x2, y2 = (curve or default_curve()).multiply(key.d, (x1, y1))
    except ValueError:
        raise ValueError("SM2 decryption failed") from None
    xb, yb = x2.to_bytes(32, "big"), y2.to_bytes(32, "big")
    t = _kdf(xb + yb, len(c2))
    if not any(t):
        raise ValueError("SM2 decryption failed")
    message = _xor(c2, t)
    if not hmac.compare_digest(sm3(xb + message + yb), c3):
        raise ValueError("SM2 decryption failed")
    return message


# -- the envelope ---------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(segment: str) -> bytes:
    """Strict base64url: URL alphabet, no padding, canonical (the unused bits of the last
    character zero). Strict decoding in C, then one look at the last group: a whole-text
    regex and re-encoding cost more than SM4-GCM on a batch."""
    tail = len(segment) % 4
    try:
        data = segment.encode("ascii")
    except UnicodeEncodeError:
        raise EnvelopeRefused("envelope: malformed") from None
    if tail == 1 or b"+" in data or b"/" in data or b"=" in data:
        raise EnvelopeRefused("envelope: malformed")
    try:
        padded = data.translate(_URL_TO_STANDARD) + b"=" * (-len(data) % 4)
        raw = binascii.a2b_base64(padded, strict_mode=True)
    except (binascii.Error, ValueError):
        raise EnvelopeRefused("envelope: malformed") from None
    if tail and _b64(raw[-(tail - 1) :]) != segment[-tail:]:
        raise EnvelopeRefused("envelope: malformed")
    return raw


def _header(members: dict[str, str]) -> str:
    return _b64(json.dumps(members, separators=(",", ":"), sort_keys=True).encode("ascii"))


def _reply_header(sid: str) -> str:
    return _header({"alg": REPLY_ALG, "enc": ENC, "sid": sid})


def _check_purpose(purpose: str) -> bytes:
    if not isinstance(purpose, str) or not _PURPOSE.fullmatch(purpose):
        raise ValueError("purpose: 1..64 of a-z 0-9 . / + -, starting with a letter or digit")
    return purpose.encode("ascii")


def _seal_aad(purpose: bytes, prefix: str) -> bytes:
    return _VERSION + b"/seal\x00" + purpose + b"\x00" + prefix.encode("ascii")


def _reply_aad(purpose: bytes, binding: bytes, header: str) -> bytes:
    return _VERSION + b"/reply\x00" + purpose + b"\x00" + binding + header.encode("ascii")


def _binding(ciphertext: bytes) -> bytes:
    """What a reply is bound to: the request's nonce and GCM tag (unique per request)."""
    return ciphertext[:_NONCE] + ciphertext[-_TAG:]


def _split(envelope: str, max_length: int) -> tuple[str, str, str]:
    if not isinstance(envelope, str):
        raise EnvelopeRefused("envelope: expected compact text")
    if len(envelope) > max_length:
        raise EnvelopeRefused("envelope: too long")
    parts = envelope.split(".")
    if len(parts) != 3:
        # A compact JWS has three parts too; its header does not name ALG (checked below).
        raise EnvelopeRefused("envelope: not sealed")
    return parts[0], parts[1], parts[2]


def _open_body(key: bytes, segment: str, aad: bytes) -> tuple[bytes, bytes]:
    body = _unb64(segment)
    if len(body) < _NONCE + _TAG:
        raise EnvelopeRefused("envelope: cannot be opened")
    try:
        return sm4_decrypt(key, body, aad), _binding(body)
    except ValueError:
        raise EnvelopeRefused("envelope: cannot be opened") from None


def sealed_length(plaintext_length: int) -> int:
    """The longest envelope a message of ``plaintext_length`` bytes seals to (a limit for
    whoever reads one off the wire)."""
    return 256 + 4 * ((plaintext_length + _NONCE + _TAG + 2) // 3)


@dataclass(slots=True)
class _Session:
    """Sender side: one wrapped SM4 key for one recipient."""

    sid: str
    key: bytes = field(repr=False)
    prefix: str  # header.wrapped_key
    created: float
    sent: int = 0


@dataclass(frozen=True, slots=True)
class Sealed:
    """A sealed message and what its sender needs to open the reply to it."""

    envelope: str
    purpose: str
    sid: str
    _key: bytes = field(repr=False)
    _binding: bytes = field(repr=False)

    def open_reply(self, envelope: str, *, max_length: int = MAX_ENVELOPE) -> bytes:
        """The recipient's reply to this very message (:meth:`Opened.seal_reply`)."""
        header, wrapped, body = _split(envelope, max_length)
        expected = _reply_header(self.sid)
        if wrapped or not hmac.compare_digest(header, expected):
            raise EnvelopeRefused("envelope: not a reply to this request")
        aad = _reply_aad(self.purpose.encode("ascii"), self._binding, header)
        return _open_body(self._key, body, aad)[0]


class Sealer:
    """Seals messages to recipients' SM2 keys; one instance per sender, thread-safe.

    A session key is wrapped once and reused for at most ``max_messages`` messages and
    ``max_age`` seconds per recipient, a fresh random 96-bit nonce each message (with the
    replies, at most ``2 * max_messages`` GCM encryptions per key: a nonce collision has
    probability below 2**-70 at the default). ``max_messages=1`` wraps a key per message.
    """

    def __init__(
        self,
        *,
        max_messages: int = 4096,
        max_age: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        curve: SM2Curve | None = None,
    ) -> None:
        if not 1 <= max_messages <= 1 << 20 or not 0 < max_age <= 86400:
            raise ValueError("max_messages in 1..2**20, max_age in (0, 86400] seconds")
        self.max_messages = max_messages
        self.max_age = max_age
        self.clock = clock
        self._curve = curve
        self._sessions: dict[tuple[int, int], _Session] = {}
        self._lock = threading.Lock()
        self.wrapped = 0  # session keys wrapped so far (SM2 encryptions)

    def _session(self, recipient: SM2PublicKey) -> _Session:
        now = self.clock()
        point = (recipient.x, recipient.y)
        with self._lock:
            session = self._sessions.get(point)
            if (
                session is not None
                and session.sent < self.max_messages
                and now - session.created < self.max_age
            ):
                session.sent += 1
                return session
        # Outside the lock: an SM2 encryption (two point multiplications) per new session.
        key = secrets.token_bytes(SESSION_KEY_BYTES)
        sid = _b64(secrets.token_bytes(16))
        wrapped = sm2_encrypt(recipient, key, self._curve)
        header = _header({"alg": ALG, "enc": ENC, "kid": recipient.key_id, "sid": sid})
        session = _Session(sid, key, f"{header}.{_b64(wrapped)}", now, 1)
        with self._lock:
            self._sessions[point] = session
            self.wrapped += 1
        return session

    def seal(self, recipient: SM2PublicKey, plaintext: bytes, *, purpose: str) -> Sealed:
        """``plaintext`` sealed to ``recipient`` for ``purpose`` (a label the opener must name
        too: a message sealed for one use never opens as another)."""
        label = _check_purpose(purpose)
        session = self._session(recipient)
        body = sm4_encrypt(session.key, plaintext, _seal_aad(label, session.prefix))
        envelope = f"{session.prefix}.{_b64(body)}"
        return Sealed(envelope, purpose, session.sid, session.key, _binding(body))

    def forget(self) -> None:
        """Drop every session (the next message to each recipient wraps a new key)."""
        with self._lock:
            self._sessions.clear()


@dataclass(slots=True)
class _Unwrapped:
    """Recipient side: an unwrapped session key, by its header."""

    wrapped: str
    sid: str
    key: bytes = field(repr=False)
    seen: float


@dataclass(slots=True)
class Opened:
    """An opened message; :meth:`seal_reply` answers it (once) under its session key."""

    plaintext: bytes
    purpose: str
    sid: str
    cached: bool  # the session key came from the cache (no SM2 decryption)
    _header: str = field(repr=False)
    _wrapped: str = field(repr=False)
    _key: bytes = field(repr=False)
    _binding: bytes = field(repr=False)
    _replied: bool = field(default=False, repr=False)

    def seal_reply(self, plaintext: bytes) -> str:
        """The reply, under the request's SM4 key, a fresh nonce, bound to this request."""
        if self._replied:
            raise RuntimeError("a message is replied to once")
        self._replied = True
        header = _reply_header(self.sid)
        aad = _reply_aad(self.purpose.encode("ascii"), self._binding, header)
        return f"{header}..{_b64(sm4_encrypt(self._key, plaintext, aad))}"


class Opener:
    """Opens messages sealed to ``key``; thread-safe. Unwrapped session keys are kept in a
    bounded LRU (``cache_size`` sessions, each at most ``max_age`` seconds) once the
    caller vouches for a message under them (:meth:`remember`, or ``remember=True``)."""

    def __init__(
        self,
        key: SM2PrivateKey,
        *,
        cache_size: int = 1024,
        max_age: float = 900.0,
        clock: Callable[[], float] = time.monotonic,
        curve: SM2Curve | None = None,
    ) -> None:
        if cache_size < 0 or max_age <= 0:
            raise ValueError("cache_size >= 0, max_age > 0")
        self._key = key
        self.kid = key.public_key.key_id
        self.cache_size = cache_size
        self.max_age = max_age
        self.clock = clock
        self._curve = curve
        self._cache: OrderedDict[str, _Unwrapped] = OrderedDict()
        self._lock = threading.Lock()
        self.unwrapped = 0  # SM2 decryptions so far

    def _cached(self, header: str, wrapped: str) -> tuple[bytes, str] | None:
        with self._lock:
            entry = self._cache.get(header)
            if entry is None:
                return None
            if self.clock() - entry.seen >= self.max_age:
                del self._cache[header]
                return None
            if not hmac.compare_digest(entry.wrapped, wrapped):
                # The session id of a key we hold, with another wrapped key: never ours.
                raise EnvelopeRefused("envelope: cannot be opened")
            self._cache.move_to_end(header)
            return entry.key, entry.sid

    def _unwrap(self, header: str, wrapped: str) -> tuple[bytes, str]:
        try:
            members = json.loads(_unb64(header))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise EnvelopeRefused("envelope: malformed") from None
        if not isinstance(members, dict) or members.get("alg") != ALG:
            raise EnvelopeRefused("envelope: not sealed")
        if set(members) != {"alg", "enc", "kid", "sid"} or members.get("enc") != ENC:
            raise EnvelopeRefused("envelope: malformed header")
        kid, sid = members["kid"], members["sid"]
        if not isinstance(kid, str) or not _KID.fullmatch(kid):
            raise EnvelopeRefused("envelope: malformed header")
        if not isinstance(sid, str) or not _SID.fullmatch(sid) or _header(members) != header:
            raise EnvelopeRefused("envelope: malformed header")
        if kid != self.kid:
            raise EnvelopeRefused("envelope: sealed to another key")
        raw = _unb64(wrapped)
        if len(raw) != WRAPPED_KEY_BYTES:
            raise EnvelopeRefused("envelope: malformed wrapped key")
        try:
            key = sm2_decrypt(self._key, raw, self._curve)
        except ValueError:
            raise EnvelopeRefused("envelope: cannot be opened") from None
        with self._lock:
            self.unwrapped += 1
        return key, sid

    def open(
        self,
        envelope: str,
        *,
        purpose: str,
        max_length: int = MAX_ENVELOPE,
        remember: bool = True,
    ) -> Opened:
        """The message sealed in ``envelope`` for ``purpose``; :class:`EnvelopeRefused` if it
        is not an envelope, is sealed to another key, or does not open."""
        label = _check_purpose(purpose)
        header, wrapped, body = _split(envelope, max_length)
        hit = self._cached(header, wrapped)
        key, sid = hit if hit is not None else self._unwrap(header, wrapped)
        plaintext, binding = _open_body(key, body, _seal_aad(label, f"{header}.{wrapped}"))
        opened = Opened(plaintext, purpose, sid, hit is not None, header, wrapped, key, binding)
        if remember:
            self.remember(opened)
        return opened

    def remember(self, opened: Opened) -> None:
        """Keep ``opened``'s session key for the next messages under it (call this once the
        content authenticated, so that nobody can fill the cache with keys of their own)."""
        if self.cache_size == 0 or opened.cached:
            return
        with self._lock:
            entry = _Unwrapped(opened._wrapped, opened.sid, opened._key, self.clock())
            self._cache[opened._header] = entry
            self._cache.move_to_end(opened._header)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)

    def forget(self) -> None:
        with self._lock:
            self._cache.clear()

    @property
    def cached_sessions(self) -> int:
        with self._lock:
            return len(self._cache)
