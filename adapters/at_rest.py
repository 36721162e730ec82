"""Encryption at rest for a department store: blind indexes for lookups, SM4-GCM for values.

A sensitive column keeps its name but holds a *blind index* instead of the value: the first
16 bytes of ``HMAC-SM3(index key, domain || value)``, base64url (22 characters). Equality
lookups and joins (``child_id = :s``, ``household_no = household_no``) work unchanged on
the token, through the same indexes, once the evaluator maps the subject to its token. The
values themselves go, per row, into one ``sealed`` column: SM4-GCM over the row's sensitive
values, with the department, table, column list, primary key and key id as associated data,
so a ciphertext moved to another row, table or column list fails to open.

Keys are enveloped. Each department has a key-encryption key (KEK), a file in the key
directory (``keys/at-rest/<department>.kek``, mode 0600), never in the database. The store's
``meta`` table holds the data keys and the index key *wrapped* under the KEK, each with a
numeric id; every ciphertext starts with the id of the data key that sealed it. A wrong or
missing KEK fails closed: :class:`AtRestKeyError`, no rows read.

Sealed blob: ``key id (4 bytes, big-endian) || nonce (12) || ciphertext || tag (16)``.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import json
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from sqlalchemy import Connection, Table, select

from tongban.primitives.errors import StoreUnavailable
from tongban.primitives.gm import sm4_decrypt, sm4_encrypt

__all__ = [
    "META_EPOCH",
    "META_STATE",
    "PLAIN_INDEX",
    "SEALED",
    "AtRest",
    "AtRestKeyError",
    "BlindIndex",
    "KeyState",
    "SealedTable",
    "create_kek",
    "kek_path",
    "key_id",
    "load_kek",
    "read_state",
    "text_key_id",
    "write_key_file",
    "write_state",
]

SEALED = "sealed"
META_STATE = "at_rest"  # the key state (wrapped keys, rotation progress), JSON
META_EPOCH = "at_rest.index"  # the index key id alone: one cheap read tells a stale reader
TOKEN_BYTES = 16
TOKEN_CHARS = 22
_NONCE = 12
_TAG = 16
_KID = 4
_NONE = "\x1e"  # a NULL value inside a sealed row
_SEP = "\x1f"
_AD = b"tongban/at-rest/v1"


class AtRestKeyError(StoreUnavailable):
    """The store's keys cannot be used: missing, wrong or unreadable key-encryption key, or
    an encrypted store opened without one. Never names a key or a value."""

    slug = "store-keys"
    title = "The store's encryption keys are unavailable"


@dataclass(frozen=True, slots=True)
class SealedTable:
    """A table with sensitive columns: ``columns`` maps each to its token domain (``id``,
    ``household``, ``certificate``); equal strings in different domains get unrelated
    tokens. ``key`` is the single-column primary key bound into each row's ciphertext."""

    name: str
    key: str
    columns: tuple[str, ...]
    domains: tuple[str, ...]

    @classmethod
    def of(cls, table: Table, columns: Mapping[str, str]) -> SealedTable:
        pk = [c.name for c in table.primary_key.columns]
        if len(pk) != 1:
            raise ValueError(f"{table.name}: a sealed table needs a single-column primary key")
        if SEALED not in table.c:
            raise ValueError(f"{table.name}: a sealed table needs a {SEALED!r} column")
        for name in columns:
            if name not in table.c or name == pk[0]:
                raise ValueError(f"{table.name}.{name}: not a sealable column")
        return cls(table.name, pk[0], tuple(columns), tuple(columns.values()))


# --- key files -------------------------------------------------------------------------


def kek_path(keys_dir: Path, department: str) -> Path:
    return keys_dir / "at-rest" / f"{department}.kek"


def write_key_file(path: Path, key: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        path.parent.chmod(0o700)
    tmp = path.with_suffix(f".{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key.hex() + "\n")
    try:
        os.link(tmp, path)  # atomic, and never overwrites a key another process made
    except FileExistsError:
        raise AtRestKeyError(f"{path.name}: a key-encryption key already exists") from None
    finally:
        tmp.unlink()


def create_kek(keys_dir: Path, department: str) -> bytes:
    """A new 16-byte SM4 KEK for the department; refuses to replace an existing one."""
    key = secrets.token_bytes(16)
    write_key_file(kek_path(keys_dir, department), key)
    return key


def load_kek(keys_dir: Path, department: str) -> bytes | None:
    """The department's KEK, or None when it has none (its store is not encrypted)."""
    path = kek_path(keys_dir, department)
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != 16:
        raise AtRestKeyError(f"{path.name}: not a 16-byte key")
    return key


# --- blind index -----------------------------------------------------------------------


class BlindIndex:
    """Value → token under one index key. ``epoch`` is the key's id (0: plaintext store,
    where the token is the value itself)."""

    __slots__ = ("_bases", "epoch")

    def __init__(self, key: bytes | None, epoch: int) -> None:
        self.epoch = epoch
        self._bases: dict[str, Any] = {}
        if key is not None:
            for domain in ("id", "household", "certificate"):
                self._bases[domain] = hmac.new(key, domain.encode() + b"\0", "sm3")

    @property
    def plain(self) -> bool:
        return not self._bases

    def __repr__(self) -> str:
        return f"BlindIndex(epoch={self.epoch})"

    def token(self, value: str, domain: str = "id") -> str:
        if not self._bases:
            return value
        h = self._bases[domain].copy()
        h.update(value.encode())
        return base64.urlsafe_b64encode(h.digest()[:TOKEN_BYTES]).decode()[:TOKEN_CHARS]

    def tokens(self, values: Sequence[str | None], domain: str = "id") -> list[str | None]:
        """Tokens for a column; each distinct value is hashed once (a mother's ID number
        recurs in every birth record she has)."""
        if not self._bases:
            return list(values)
        memo: dict[str, str] = {}
        out: list[str | None] = []
        for value in values:
            if value is None:
                out.append(None)
                continue
            t = memo.get(value)
            if t is None:
                t = memo[value] = self.token(value, domain)
            out.append(t)
        return out


PLAIN_INDEX = BlindIndex(None, 0)


# --- key state -------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _wrap_ad(department: str, purpose: str, kid: int) -> bytes:
    return b"|".join((_AD, b"wrap", department.encode(), purpose.encode(), str(kid).encode()))


@dataclass
class KeyState:
    """What the store keeps about its keys (``meta.at_rest``): wrapped keys only.

    ``data``: key id → {"wrapped": base64, "state": "current" | "active" | "retired"}; a
    retired key's wrapped bytes are deleted (crypto-shredded) once no row uses it.
    ``rotation``: the progress of a running data-key rotation, for resuming after a crash.
    """

    department: str
    index_id: int
    index_wrapped: str
    data: dict[int, dict[str, str]] = field(default_factory=dict)
    rotation: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return (
            f"KeyState({self.department!r}, index_id={self.index_id}, "
            f"data={ {k: v['state'] for k, v in self.data.items()} })"
        )

    @property
    def current(self) -> int:
        return next(k for k, v in self.data.items() if v["state"] == "current")

    def live(self) -> list[int]:
        return sorted(k for k, v in self.data.items() if v["state"] != "retired")

    def next_id(self) -> int:
        return max(self.data, default=0) + 1

    @classmethod
    def new(cls, department: str, kek: bytes) -> KeyState:
        state = cls(department, 0, "")
        state.new_index_key(kek)
        state.add_data_key(kek, current=True)
        return state

    def add_data_key(self, kek: bytes, *, current: bool) -> int:
        kid = self.next_id()
        wrapped = sm4_encrypt(kek, secrets.token_bytes(16), _wrap_ad(self.department, "data", kid))
        if current:
            for v in self.data.values():
                if v["state"] == "current":
                    v["state"] = "active"
        self.data[kid] = {"wrapped": _b64(wrapped), "state": "current" if current else "active"}
        return kid

    def new_index_key(self, kek: bytes) -> None:
        self.index_id += 1
        self.index_wrapped = _b64(
            sm4_encrypt(
                kek, secrets.token_bytes(32), _wrap_ad(self.department, "index", self.index_id)
            )
        )

    def retire(self, kid: int) -> None:
        self.data[kid] = {"state": "retired"}

    def rewrap(self, old: bytes, new: bytes) -> KeyState:
        """The same keys wrapped under a new KEK (KEK rotation: no row changes)."""
        keys = self.unwrap(old)
        out = KeyState(self.department, self.index_id, "", {}, self.rotation)
        out.index_wrapped = _b64(
            sm4_encrypt(new, keys.index_key, _wrap_ad(self.department, "index", self.index_id))
        )
        for kid, v in self.data.items():
            if v["state"] == "retired":
                out.data[kid] = dict(v)
                continue
            wrapped = sm4_encrypt(new, keys.data[kid], _wrap_ad(self.department, "data", kid))
            out.data[kid] = {"wrapped": _b64(wrapped), "state": v["state"]}
        return out

    def unwrap(self, kek: bytes) -> AtRest:
        try:
            index_key = sm4_decrypt(
                kek,
                base64.b64decode(self.index_wrapped),
                _wrap_ad(self.department, "index", self.index_id),
            )
            data = {
                kid: sm4_decrypt(
                    kek, base64.b64decode(v["wrapped"]), _wrap_ad(self.department, "data", kid)
                )
                for kid, v in self.data.items()
                if v["state"] != "retired"
            }
        except ValueError:
            raise AtRestKeyError(
                f"{self.department} store: the key-encryption key does not open its keys"
            ) from None
        return AtRest(self.department, index_key, self.index_id, data, self.current)

    def to_json(self) -> str:
        return json.dumps(
            {
                "v": 1,
                "department": self.department,
                "index": {"id": self.index_id, "wrapped": self.index_wrapped},
                "data": {str(k): v for k, v in sorted(self.data.items())},
                "rotation": self.rotation,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> KeyState:
        raw = json.loads(text)
        return cls(
            raw["department"],
            int(raw["index"]["id"]),
            raw["index"]["wrapped"],
            {int(k): dict(v) for k, v in raw["data"].items()},
            raw.get("rotation"),
        )


def read_state(conn: Connection, meta: Table) -> KeyState | None:
    text = conn.execute(select(meta.c.value).where(meta.c.key == META_STATE)).scalar()
    return None if text is None else KeyState.from_json(text)


def write_state(conn: Connection, meta: Table, state: KeyState) -> None:
    """Inside the caller's transaction, so key state and rows change together."""
    for key, value in ((META_STATE, state.to_json()), (META_EPOCH, str(state.index_id))):
        conn.execute(meta.delete().where(meta.c.key == key))
        conn.execute(meta.insert().values(key=key, value=value))


# --- sealing ---------------------------------------------------------------------------


class AtRest:
    """Unwrapped keys of one store, held in memory only. Its repr names key ids, never keys."""

    __slots__ = ("_algs", "current", "data", "department", "index", "index_key")

    def __init__(
        self,
        department: str,
        index_key: bytes,
        index_id: int,
        data: Mapping[int, bytes],
        current: int,
    ) -> None:
        self.department = department
        self.index_key = index_key
        self.index = BlindIndex(index_key, index_id)
        self.data = dict(data)
        self.current = current
        self._algs = {kid: algorithms.SM4(k) for kid, k in self.data.items()}

    def __repr__(self) -> str:
        return f"AtRest({self.department!r}, index={self.index.epoch}, data={sorted(self.data)})"

    def _ad(self, table: str, columns: Sequence[str], row_key: str, kid: int) -> bytes:
        return b"|".join(
            (
                _AD,
                self.department.encode(),
                table.encode(),
                ",".join(columns).encode(),
                row_key.encode(),
                str(kid).encode(),
            )
        )

    def seal_rows(
        self,
        table: SealedTable,
        keys: Sequence[object],
        columns: Sequence[Sequence[str | None]],
        *,
        kid: int | None = None,
    ) -> list[bytes]:
        """One SM4-GCM ciphertext per row over its sensitive values (NULL kept as NULL)."""
        kid = self.current if kid is None else kid
        alg = self._algs[kid]
        prefix = kid.to_bytes(_KID, "big")
        nonces = os.urandom(_NONCE * len(keys))  # one syscall for the batch
        out: list[bytes] = []
        for i, (row_key, *values) in enumerate(zip(keys, *columns, strict=True)):
            nonce = nonces[_NONCE * i : _NONCE * (i + 1)]
            plain = _SEP.join(_NONE if v is None else v for v in values).encode()
            enc = Cipher(alg, modes.GCM(nonce)).encryptor()
            enc.authenticate_additional_data(self._ad(table.name, table.columns, str(row_key), kid))
            body = enc.update(plain) + enc.finalize()
            out.append(prefix + nonce + body + enc.tag)
        return out

    def open_row(self, table: SealedTable, row_key: object, blob: bytes) -> dict[str, str | None]:
        """The row's sensitive values; ValueError (nothing echoed) if the blob was altered,
        moved from another row or sealed under a key this store no longer has."""
        kid = key_id(blob)
        key = self.data.get(kid)
        if key is None:
            raise ValueError("sealed value: unknown or retired key id")
        ad = self._ad(table.name, table.columns, str(row_key), kid)
        plain = sm4_decrypt(key, blob[_KID:], ad)
        values = plain.decode().split(_SEP)
        if len(values) != len(table.columns):
            raise ValueError("sealed value: wrong number of columns")
        return {c: None if v == _NONE else v for c, v in zip(table.columns, values, strict=True)}

    def seal_text(self, table: str, row_key: object, text: str) -> str:
        """A whole text field (a quarantined record), as ``sm4gcm:<base64>``."""
        kid = self.current
        ad = self._ad(table, ("*",), str(row_key), kid)
        body = sm4_encrypt(self.data[kid], text.encode(), ad)
        return "sm4gcm:" + _b64(kid.to_bytes(_KID, "big") + body)

    def open_text(self, table: str, row_key: object, sealed: str) -> str:
        if not sealed.startswith("sm4gcm:"):
            raise ValueError("sealed text: not sealed")
        blob = base64.b64decode(sealed.removeprefix("sm4gcm:"))
        kid = key_id(blob)
        key = self.data.get(kid)
        if key is None:
            raise ValueError("sealed text: unknown or retired key id")
        return sm4_decrypt(key, blob[_KID:], self._ad(table, ("*",), str(row_key), kid)).decode()


def key_id(blob: bytes) -> int:
    return int.from_bytes(blob[:_KID], "big")


def text_key_id(sealed: str) -> int:
    return key_id(base64.b64decode(sealed.removeprefix("sm4gcm:")[:8]))
