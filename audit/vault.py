"""Keyed pseudonyms for subjects, and the vault that can turn them back into ID numbers.

Entries name a subject only by ``HMAC-SM3(pseudonym_key, ID number)``. The vault row
(encrypted with SM4-GCM) is what links a pseudonym to a person for an officer's review;
erasing it unlinks the person without touching a single hashed byte of the log.

Vault keys are versioned (:class:`VaultKeys`): ``vault.secret`` is key 0, whose rows carry
no header (the format before rotation existed); ``vault-<n>.secret`` is key n, whose rows
start with ``TBV1`` and the key id. :func:`rotate_vault` re-seals every row under a new
key and deletes an old key file only once no row uses it. The pseudonym key is not
rotated: entries are hashed into the Merkle tree, so their pseudonyms cannot change.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, inspect, select, update

from tongban.primitives.db import make_engine
from tongban.primitives.gm import hmac_sm3, sm4_decrypt, sm4_encrypt

from . import schema

__all__ = [
    "Pseudonymizer",
    "VaultKeys",
    "VaultRotation",
    "rotate_vault",
    "seal_with",
    "sealed_key_id",
    "vault_key_usage",
]

_MAGIC = b"TBV1"
_HEADER = len(_MAGIC) + 4
_FILE = re.compile(r"vault-(\d+)\.secret")


def _write_secret(path: Path, key: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key.hex())
    try:
        os.link(tmp, path)  # atomic; never overwrites a key another process made
    finally:
        tmp.unlink()


class VaultKeys:
    """The vault's SM4 keys by id: fixed (``keys``) or read from a key ``directory``,
    re-read at most every ``refresh`` seconds so a running gateway picks up a rotation.
    Its repr names key ids only."""

    def __init__(
        self,
        directory: Path | None = None,
        *,
        keys: Mapping[int, bytes] | None = None,
        refresh: float = 5.0,
    ) -> None:
        self.directory = directory
        self.refresh = refresh
        self._keys: dict[int, bytes] = dict(keys or {})
        self._read_at = -float("inf")
        self._lock = threading.Lock()
        if directory is not None:
            if not (directory / "vault.secret").exists() and not self._files():
                with contextlib.suppress(FileExistsError):
                    _write_secret(directory / "vault.secret", secrets.token_bytes(16))
            self._read()
        if not self._keys or any(len(k) != 16 for k in self._keys.values()):
            raise ValueError("vault keys: at least one, each exactly 16 bytes (SM4)")

    def __repr__(self) -> str:
        return f"VaultKeys(ids={sorted(self._keys)})"

    def _files(self) -> dict[int, Path]:
        assert self.directory is not None
        found: dict[int, Path] = {}
        if (self.directory / "vault.secret").exists():
            found[0] = self.directory / "vault.secret"
        with contextlib.suppress(FileNotFoundError):
            for path in self.directory.iterdir():
                m = _FILE.fullmatch(path.name)
                if m:
                    found[int(m.group(1))] = path
        return found

    def _read(self) -> None:
        keys: dict[int, bytes] = {}
        for kid, path in self._files().items():
            with contextlib.suppress(FileNotFoundError):
                keys[kid] = bytes.fromhex(path.read_text().strip())
        with self._lock:
            self._keys = keys
            self._read_at = time.monotonic()

    def _fresh(self, force: bool = False) -> dict[int, bytes]:
        if self.directory is not None and (
            force or time.monotonic() - self._read_at >= self.refresh
        ):
            self._read()
        return self._keys

    def current(self) -> tuple[int, bytes]:
        keys = self._fresh()
        kid = max(keys)
        return kid, keys[kid]

    def get(self, kid: int) -> bytes | None:
        key = self._keys.get(kid)
        if key is None:  # sealed by a newer key than we have read: look again
            key = self._fresh(force=True).get(kid)
        return key

    def ids(self) -> list[int]:
        return sorted(self._fresh(force=True))

    def add(self) -> int:
        """A new key, current from now on (for readers as they refresh)."""
        if self.directory is None:
            raise ValueError("vault keys: fixed keys cannot be rotated")
        kid = max(self._fresh(force=True)) + 1
        _write_secret(self.directory / f"vault-{kid}.secret", secrets.token_bytes(16))
        self._fresh(force=True)
        return kid

    def retire(self, kid: int) -> None:
        """Delete a key file: rows still sealed under it could never be opened again."""
        if self.directory is None:
            raise ValueError("vault keys: fixed keys cannot be retired")
        path = self._files().get(kid)
        if path is not None:
            path.unlink()
        self._fresh(force=True)


class Pseudonymizer:
    def __init__(self, pseudonym_key: bytes, vault_key: bytes | VaultKeys) -> None:
        if len(pseudonym_key) < 16 or (isinstance(vault_key, bytes) and len(vault_key) != 16):
            raise ValueError("pseudonym key ≥ 16 bytes, vault key exactly 16 (SM4)")
        keys = vault_key if isinstance(vault_key, VaultKeys) else VaultKeys(keys={0: vault_key})
        self._key = pseudonym_key
        self.vault_keys = keys

    def __repr__(self) -> str:
        return f"Pseudonymizer({self.vault_keys!r})"

    def pseudonym(self, id_number: str) -> str:
        return hmac_sm3(self._key, id_number.encode("ascii")).hex()

    def seal(self, pseudonym: str, id_number: str) -> bytes:
        kid, key = self.vault_keys.current()
        return seal_with(kid, key, pseudonym, id_number)

    def open(self, pseudonym: str, sealed: bytes) -> str:
        kid = sealed_key_id(sealed)
        key = self.vault_keys.get(kid)
        if kid != 0 and key is not None:
            with contextlib.suppress(ValueError):
                return sm4_decrypt(key, sealed[_HEADER:], _ad(pseudonym, kid)).decode("ascii")
        legacy = self.vault_keys.get(0)  # a key-0 row whose nonce happens to look like a header
        if legacy is None:
            raise ValueError("vault row sealed under an unknown or retired key")
        return sm4_decrypt(legacy, sealed, _ad(pseudonym, 0)).decode("ascii")


def _ad(pseudonym: str, kid: int) -> bytes:
    return pseudonym.encode() if kid == 0 else f"{pseudonym}|{kid}".encode()


def seal_with(kid: int, key: bytes, pseudonym: str, id_number: str) -> bytes:
    body = sm4_encrypt(key, id_number.encode("ascii"), _ad(pseudonym, kid))
    return body if kid == 0 else _MAGIC + kid.to_bytes(4, "big") + body


def sealed_key_id(sealed: bytes) -> int:
    """The key id a vault row names; a row without the header is key 0's. (A key-0 row's
    random nonce starts with the magic once in 2**32: :meth:`Pseudonymizer.open` then
    falls back to key 0.)"""
    if len(sealed) > _HEADER and sealed[: len(_MAGIC)] == _MAGIC:
        return int.from_bytes(sealed[len(_MAGIC) : _HEADER], "big")
    return 0


@dataclass
class VaultRotation:
    key_id: int
    rows: int = 0
    batches: int = 0
    resumed: bool = False
    retired: list[int] = field(default_factory=list)
    remaining: dict[int, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "rows_resealed": self.rows,
            "batches": self.batches,
            "resumed": self.resumed,
            "retired_key_ids": self.retired,
            "rows_under_old_keys": self.remaining,
        }


def vault_key_usage(url: str) -> dict[int, int]:
    engine = make_engine(url, busy_ms=10_000)
    usage: dict[int, int] = {}
    try:
        if not inspect(engine).has_table(schema.vault.name):
            return usage
        with engine.connect() as conn:
            for (sealed,) in conn.execute(select(schema.vault.c.id_number)):
                kid = sealed_key_id(bytes(sealed))
                usage[kid] = usage.get(kid, 0) + 1
    finally:
        engine.dispose()
    return usage


def rotate_vault(
    url: str,
    keys: VaultKeys,
    *,
    batch: int = 5000,
    on_batch: Callable[[int], None] | None = None,
    progress: Any = None,
) -> VaultRotation:
    """Re-seal every vault row under the current key, adding a new key first unless a
    previous rotation was left unfinished (some row is not under the current key). Each
    batch commits on its own; a crash loses at most one batch, and running it again
    resumes. Old key files are deleted only when a final scan finds no row under them,
    after gateways have had ``keys.refresh`` seconds to start sealing with the new key."""
    pseudonymizer = Pseudonymizer(b"\0" * 16, keys)  # seals and opens only; never hashes
    usage = vault_key_usage(url)
    if not usage:
        raise ValueError("the audit store has no vault rows to rotate")
    kid, _ = keys.current()
    resumed = any(k != kid for k in usage)
    if not resumed:
        kid = keys.add()
    added = time.monotonic()
    report = VaultRotation(kid, resumed=resumed)
    engine = make_engine(url, busy_ms=10_000)
    v = schema.vault
    stmt = update(v).where(v.c.pseudonym == bindparam("_p")).values(id_number=bindparam("_v"))
    total = sum(usage.values())
    task = None if progress is None else progress.add_task("re-seal vault", total=total)
    try:
        after: str | None = None
        with engine.connect() as conn:
            while True:
                with conn.begin():
                    q = select(v.c.pseudonym, v.c.id_number).order_by(v.c.pseudonym).limit(batch)
                    if after is not None:
                        q = q.where(v.c.pseudonym > after)
                    rows = conn.execute(q).all()
                    if not rows:
                        break
                    after = rows[-1][0]
                    changes = [
                        {"_p": p, "_v": pseudonymizer.seal(p, pseudonymizer.open(p, bytes(s)))}
                        for p, s in rows
                        if sealed_key_id(bytes(s)) != kid
                    ]
                    if changes:
                        conn.execute(stmt, changes)
                report.rows += len(changes)
                report.batches += 1
                if task is not None:
                    progress.advance(task, len(rows))
                if on_batch is not None:
                    on_batch(len(rows))
    finally:
        engine.dispose()
    # A gateway that read the keys just before the new one appeared may still seal with
    # the old key until its next refresh: wait that out before counting.
    time.sleep(max(0.0, keys.refresh - (time.monotonic() - added)))
    usage = vault_key_usage(url)
    report.remaining = {k: n for k, n in usage.items() if k != kid}
    if not report.remaining:
        for old in keys.ids():
            if old != kid:
                keys.retire(old)
                report.retired.append(old)
    return report
