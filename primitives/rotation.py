"""Signing keys that rotate with an overlap, followed on disk by every process.

A rotated key's private half is gone the moment it is replaced; its public half stays
published (in ``/.well-known/jwks.json``) for as long as something it signed may still be
presented: an answer until it expires, a consent artefact until it does, an access token
until its lifetime ends. The history of retired keys is a file beside the key,
``NAME.history.json``:

    {"retired": [{"kid": ..., "jwk": {...}, "retired_at": 1733300000,
                  "publish_until": 1733300700}]}

:func:`rotate_key` writes the history first and the new key second, each atomically (a
temporary file renamed over the old one), under a lock file, so that at no moment is a
signature made by a key nobody publishes. :class:`FollowedKey` is what a gateway holds:
the current key and the published retired ones, re-read when the files change (at most
one ``stat`` a second), so every worker of a running gateway signs with the new key within
a second or two of a rotation and keeps verifying with the old one during the overlap.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import TongbanError
from .gm import SM2PrivateKey, SM2PublicKey, load_private_key, save_private_key
from .locks import exclusive_lock

__all__ = [
    "FixedKey",
    "FollowedKey",
    "KeyRotationError",
    "KeySource",
    "RetiredKey",
    "Rotation",
    "key_source",
    "read_history",
    "rotate_key",
]

_MAX_RETIRED = 64


class KeyRotationError(TongbanError):
    """A rotation that cannot be made (no key to rotate, a history file that is not ours);
    nothing was changed. Raised on the gateway host (the CLI), never over HTTP."""


@dataclass(frozen=True, slots=True)
class RetiredKey:
    kid: str
    jwk: Mapping[str, str]
    retired_at: float
    publish_until: float

    @property
    def public_key(self) -> SM2PublicKey:
        return SM2PublicKey.from_jwk(dict(self.jwk))


@dataclass(frozen=True, slots=True)
class Rotation:
    """What :func:`rotate_key` did."""

    name: str
    old_kid: str
    new_kid: str
    new_jwk: Mapping[str, str]
    publish_old_until: float


def _history_path(key_path: Path) -> Path:
    return key_path.with_name(key_path.name.removesuffix(".key") + ".history.json")


def read_history(key_path: Path) -> list[RetiredKey]:
    """The retired keys recorded beside ``key_path`` (none if there is no history)."""
    path = _history_path(key_path)
    try:
        doc = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise KeyRotationError(f"{path.name}: not a key history ({type(exc).__name__})") from None
    items = doc.get("retired") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise KeyRotationError(f"{path.name}: not a key history")
    out: list[RetiredKey] = []
    for item in items:
        try:
            retired = RetiredKey(
                str(item["kid"]),
                {str(k): str(v) for k, v in dict(item["jwk"]).items()},
                float(item["retired_at"]),
                float(item["publish_until"]),
            )
            retired.public_key  # noqa: B018 - a key that does not parse is refused here
        except (KeyError, TypeError, ValueError):
            raise KeyRotationError(f"{path.name}: a retired key is malformed") from None
        out.append(retired)
    return out


def _write_json(path: Path, doc: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=2, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


def rotate_key(
    key_path: Path,
    *,
    publish_old_for: float,
    new_key: SM2PrivateKey | None = None,
    now: float | None = None,
) -> Rotation:
    """Replace the key at ``key_path`` by ``new_key`` (a fresh one by default), keeping the
    old public key published for ``publish_old_for`` seconds. The public JWK beside it
    (``NAME.jwk.json``) follows. Expired history entries are dropped."""
    if publish_old_for < 0:
        raise ValueError("publish_old_for: expected seconds >= 0")
    name = key_path.name.removesuffix(".key")
    with exclusive_lock(key_path.with_name(key_path.name + ".rotate.lock")):
        try:
            old = load_private_key(key_path)
        except FileNotFoundError:
            raise KeyRotationError(f"{key_path.name}: no key to rotate") from None
        new = new_key if new_key is not None else SM2PrivateKey.generate()
        if new.public_key.key_id == old.public_key.key_id:
            raise KeyRotationError(f"{name}: the new key is the current key")
        when = time.time() if now is None else now
        old_kid = old.public_key.key_id
        history = [r for r in read_history(key_path) if r.publish_until > when]
        history.append(
            RetiredKey(old_kid, old.public_key.to_jwk(kid=old_kid), when, when + publish_old_for)
        )
        doc = {
            "retired": [
                {"kid": r.kid, "jwk": dict(r.jwk), "retired_at": r.retired_at,
                 "publish_until": r.publish_until}
                for r in history[-_MAX_RETIRED:]
            ]
        }  # fmt: skip
        # The old key is published as retired before the new one signs anything.
        _write_json(_history_path(key_path), doc)
        save_private_key(new, key_path)
        new_jwk = new.public_key.to_jwk(kid=new.public_key.key_id)
        _write_json(key_path.with_name(f"{name}.jwk.json"), new_jwk)
    return Rotation(name, old_kid, new.public_key.key_id, new_jwk, when + publish_old_for)


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _parsed(retired: list[RetiredKey]) -> dict[str, tuple[SM2PublicKey, float]]:
    """The retired keys parsed once per change of the history, not at every request."""
    return {r.kid: (r.public_key, r.publish_until) for r in retired}


class FollowedKey:
    """A signing key and its published retired predecessors, followed on disk.

    :meth:`current` and :meth:`published` look at the files at most once per ``interval``
    seconds (one ``stat`` each) and reload what changed. A key file that cannot be read
    at that moment (being replaced) keeps the key already loaded until the next look."""

    def __init__(
        self,
        key_path: Path,
        *,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.path = key_path
        self._history_path = _history_path(key_path)
        self._interval = interval
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        self._key = load_private_key(key_path)
        self._stamps = (_stamp(key_path), _stamp(self._history_path))
        self._retired = _parsed(read_history(key_path))
        self._checked = clock()

    def _refresh(self) -> None:
        now = self._clock()
        if now - self._checked < self._interval:
            return
        with self._lock:
            if now - self._checked < self._interval:
                return
            self._checked = now
            stamps = (_stamp(self.path), _stamp(self._history_path))
            if stamps == self._stamps:
                return
            try:
                retired = read_history(self.path)
                key = load_private_key(self.path, convert=False)
            except (OSError, ValueError, TongbanError):
                return  # mid-replacement: look again at the next interval
            self._key, self._retired, self._stamps = key, _parsed(retired), stamps

    def current(self) -> SM2PrivateKey:
        """The key to sign with now."""
        self._refresh()
        return self._key

    def published(self) -> dict[str, SM2PublicKey]:
        """``kid`` -> public key: the current key and every retired one still published."""
        self._refresh()
        wall = self._wall()
        out: dict[str, SM2PublicKey] = {
            kid: public for kid, (public, until) in self._retired.items() if until > wall
        }
        out[self._key.public_key.key_id] = self._key.public_key
        return out


class FixedKey:
    """A key that does not rotate (tests, a key given in code)."""

    def __init__(self, key: SM2PrivateKey) -> None:
        self._key = key

    def current(self) -> SM2PrivateKey:
        return self._key

    def published(self) -> dict[str, SM2PublicKey]:
        return {self._key.public_key.key_id: self._key.public_key}


KeySource = FollowedKey | FixedKey


def key_source(key: SM2PrivateKey | KeySource) -> KeySource:
    """``key`` as a source: a plain key is one that never rotates."""
    return FixedKey(key) if isinstance(key, SM2PrivateKey) else key
