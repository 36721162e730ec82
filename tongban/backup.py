"""Backups of a gateway host: ``tongban backup`` and ``tongban restore`` (docs/backups.md).

A backup is ONE uncompressed tar file, format ``tongban-backup/1``:

* ``tongban-backup`` (first member): the format's name, so a foreign file is told apart
  from a truncated one;
* ``gateway/<table>.<part>`` and ``audit/<table>.<part>``: every table of the two
  migration chains (tongban.migrations) as JSON lines of typed values (bytes, dates and
  JSON documents tagged, so a SQLite backup loads into PostgreSQL and back), at most
  :data:`PART_ROWS` rows a part, each part gzipped, then sealed with SM4-GCM;
* ``files``: the data directory's ``keys/`` (SM2 keys, the pseudonym and vault keys, the
  pepper) and ``pki/``, a tar sealed the same way;
* ``manifest.json`` (in clear, no secret in it): the format, the gateway's name and its
  log's origin, each chain's Alembic revision, every table's columns, row count and parts,
  the audit tree's size and root at the snapshot, the latest signed checkpoint note, the
  SM3 digest of every member, and the key derivation's parameters;
* ``manifest.mac``: the manifest's SM3 digest (corruption) and its HMAC-SM3 under a key
  derived from the passphrase (a wrong passphrase, or a manifest someone rewrote).

The sealing key and the MAC key come from the passphrase through scrypt (salt and cost in
the manifest); every sealed member's associated data is the backup's id and the member's
name, so members cannot be swapped between backups or positions. Nothing of a key, the
passphrase or a row is ever written in clear, nor printed in an error.

Consistency while the gateway serves: a PostgreSQL database is read in one SERIALIZABLE
READ ONLY DEFERRABLE transaction (both chains at once when they share the database); a
SQLite file is copied with sqlite3's online backup API (WAL: writers go on) and read from
the copy. The audit snapshot is then self-consistent: entries 0..N-1, checkpoints at most
N, checked before the backup is written (root recomputed, latest checkpoint matched).

A restore verifies everything before it writes anything (:func:`open_backup`), refuses a
log older than what a witness cosigned (:func:`witness_conflict`), and loads each database
in one transaction (PostgreSQL) or into a temporary file renamed at the end (SQLite).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import decimal
import gzip
import hashlib
import io
import json
import logging
import math
import os
import secrets
import shutil
import sqlite3
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Connection, MetaData, Table, create_engine, inspect, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

# tongban.migrations first: it quiets Alembic's logger before Alembic is imported.
from tongban import migrations
from tongban.audit import schema as audit_schema
from tongban.audit.log import stored_origin
from tongban.audit.merkle import MerkleTree
from tongban.audit.note import NoteError, SignedNote
from tongban.audit.rows import ROW_FIELDS, check_row
from tongban.migrations import CHAINS, head, model_metadata
from tongban.primitives.db import make_engine
from tongban.primitives.gm import SM2PrivateKey, SM2PublicKey, hmac_sm3, sm3, sm4_decrypt
from tongban.primitives.gm import sm4_encrypt as _sm4_encrypt

from .boundary import CommandFailed, MissingPrerequisite, UsageError, display_url
from .config import Settings

__all__ = [
    "FORMAT",
    "MIN_PASSPHRASE",
    "PASSPHRASE_ENV",
    "Backup",
    "BackupRefused",
    "BackupSummary",
    "RestoreSummary",
    "Seen",
    "create_backup",
    "open_backup",
    "read_passphrase",
    "restore_backup",
    "seen_in_notes",
    "witness_conflict",
]

log = logging.getLogger("tongban.backup")
FORMAT = "tongban-backup/1"
_MARKER = "tongban-backup"
MIN_PASSPHRASE = 12
PASSPHRASE_ENV = "TONGBAN_BACKUP_PASSPHRASE"  # noqa: S105 -- a variable's name
PART_ROWS = 20_000
_BATCH = 2_000
#: scrypt cost: ~0.1 s and 32 MiB on the 2-core test machine. A backup names its own cost;
#: a restore refuses one above _MAX_N (a crafted file must not exhaust memory).
SCRYPT_N = 2**15
_MAX_N = 2**20
_CHAINS = ("gateway", "audit")
#: What of the data directory a backup holds (sealed): every key, and the PKI.
_DIRS = ("keys", "pki")


class BackupRefused(CommandFailed):
    """A backup that cannot be taken or restored; ``detail`` is one line saying why."""

    slug = "backup-refused"
    title = "The backup or restore was refused"


# --- passphrase, keys, sealing -----------------------------------------------------------


def read_passphrase(path: Path | None, env: Mapping[str, str] | None = None) -> bytes:
    """The passphrase from ``path`` (its first line) or else ``TONGBAN_BACKUP_PASSPHRASE``;
    never a command-line argument (other users see those). At least MIN_PASSPHRASE
    characters."""
    env = os.environ if env is None else env
    if path is not None:
        try:
            raw = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise UsageError(
                f"{path}: the passphrase file cannot be read ({exc.strerror})"
            ) from None
        value = raw[0] if raw else ""
        where = str(path)
    elif env.get(PASSPHRASE_ENV):
        value, where = env[PASSPHRASE_ENV], PASSPHRASE_ENV
    else:
        raise UsageError(f"no passphrase: pass --passphrase-file FILE or set {PASSPHRASE_ENV}")
    if len(value) < MIN_PASSPHRASE:
        raise UsageError(f"{where}: the passphrase must have at least {MIN_PASSPHRASE} characters")
    return value.encode("utf-8")


@dataclass(frozen=True)
class _Keys:
    seal: bytes = field(repr=False)  # SM4, 16 bytes
    mac: bytes = field(repr=False)  # HMAC-SM3, 32 bytes

    @classmethod
    def derive(cls, passphrase: bytes, kdf: Mapping[str, Any]) -> _Keys:
        n, r, p = int(kdf["n"]), int(kdf["r"]), int(kdf["p"])
        salt = base64.b64decode(kdf["salt"])
        if (
            kdf.get("name") != "scrypt"
            or not (2 <= n <= _MAX_N)
            or not (1 <= r <= 8)
            or not (1 <= p <= 4)
        ):
            raise BackupRefused("the backup names a key derivation this code does not accept")
        out = hashlib.scrypt(passphrase, salt=salt, n=n, r=r, p=p, dklen=48, maxmem=2**31 - 1)
        return cls(out[:16], out[16:])


def _ad(backup_id: str, name: str) -> bytes:
    return f"{FORMAT}\n{backup_id}\n{name}".encode()


# --- typed values ------------------------------------------------------------------------


def _encode(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"$f": repr(value)}
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$b": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, dt.datetime):
        return {"$dt": value.isoformat()}
    if isinstance(value, dt.date):
        return {"$d": value.isoformat()}
    if isinstance(value, decimal.Decimal):
        return {"$n": str(value)}
    if isinstance(value, dict | list):
        return {"$j": value}
    raise TypeError(f"a value of type {type(value).__name__} cannot be backed up")


def _decode(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    ((tag, inner),) = value.items()
    if tag == "$b":
        return base64.b64decode(inner, validate=True)
    if tag == "$dt":
        return dt.datetime.fromisoformat(inner)
    if tag == "$d":
        return dt.date.fromisoformat(inner)
    if tag == "$n":
        return decimal.Decimal(inner)
    if tag == "$f":
        return float(inner)
    if tag == "$j":
        return inner
    raise ValueError("unknown value tag")


# --- snapshots ---------------------------------------------------------------------------


def _sqlite_file(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    if parsed.database in (None, "", ":memory:"):
        raise UsageError("an in-memory SQLite database cannot be backed up or restored")
    return Path(parsed.database)


@contextlib.contextmanager
def _snapshot(url: str) -> Iterator[Connection]:
    """A connection seeing one consistent state of the database at ``url``."""
    path = _sqlite_file(url)
    if path is not None:
        if not path.exists():
            raise BackupRefused(f"no database at {path}: nothing to back up")
        with tempfile.TemporaryDirectory(prefix="tongban-backup-") as tmp:
            copy = Path(tmp) / "copy.db"
            src = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
            dst = sqlite3.connect(copy)
            try:
                src.backup(dst)  # the online backup API: one consistent copy
            finally:
                dst.close()
                src.close()
            engine = create_engine(f"sqlite:///{copy}")
            try:
                with engine.connect() as conn:
                    yield conn
            finally:
                engine.dispose()
        return
    engine = make_engine(url)
    try:
        with engine.connect() as plain:
            conn = plain.execution_options(
                isolation_level="SERIALIZABLE", postgresql_readonly=True, postgresql_deferrable=True
            )
            with conn.begin():
                yield conn
    finally:
        engine.dispose()


def _revision(conn: Connection, chain: str) -> str | None:
    from alembic.migration import MigrationContext

    ctx = MigrationContext.configure(conn, opts={"version_table": CHAINS[chain].version_table})
    return ctx.get_current_revision()


# --- writing a backup --------------------------------------------------------------------


@dataclass(frozen=True)
class BackupSummary:
    path: Path
    bytes: int
    seconds: float
    entries: int
    checkpoint: int | None
    rows: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return {
            "backup": str(self.path),
            "format": FORMAT,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 2),
            "audit_entries": self.entries,
            "latest_checkpoint": self.checkpoint,
            "rows": self.rows,
        }


class _Writer:
    def __init__(self, fh: IO[bytes], keys: _Keys, backup_id: str) -> None:
        self.tar = tarfile.open(fileobj=fh, mode="w", format=tarfile.PAX_FORMAT)  # noqa: SIM115
        self.keys = keys
        self.backup_id = backup_id
        self.files: dict[str, dict[str, Any]] = {}

    def add(self, name: str, data: bytes, *, sealed: bool = True) -> None:
        if sealed:
            data = _sm4_encrypt(self.keys.seal, data, _ad(self.backup_id, name))
            self.files[name] = {"sm3": sm3(data).hex(), "bytes": len(data)}
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = 0o600
        info.mtime = int(time.time())
        self.tar.addfile(info, io.BytesIO(data))


def _progress(console: Any) -> Any:
    from rich.progress import Progress

    return Progress(console=console, transient=True, disable=console is None)


def create_backup(
    settings: Settings,
    out: Path,
    passphrase: bytes,
    *,
    console: Any = None,
    scrypt_n: int = SCRYPT_N,
) -> BackupSummary:
    """Write a backup of ``settings``' gateway and audit databases and key files to
    ``out`` (a new file, written beside it and renamed when complete)."""
    started = time.monotonic()
    if out.exists():
        raise UsageError(f"{out} exists: a backup never overwrites a file")
    if not settings.keys_dir.is_dir():
        raise MissingPrerequisite(
            f"no keys in {settings.keys_dir.absolute()}: not a gateway's data directory "
            "(pass the --data-dir the gateway serves from)"
        )
    for url in (settings.gateway_store_url(), settings.audit_store_url()):
        file = _sqlite_file(url)
        if file is not None and not file.exists():
            raise MissingPrerequisite(
                f"no database at {file.absolute()}: nothing to back up (run `tongban db "
                "upgrade` and start the gateway first)"
            )
    if not out.parent.is_dir():
        raise UsageError(f"{out.parent}: no such directory for the backup")
    salt = secrets.token_bytes(16)
    kdf = {"name": "scrypt", "salt": base64.b64encode(salt).decode(), "n": scrypt_n, "r": 8,
           "p": 1}  # fmt: skip
    keys = _Keys.derive(passphrase, kdf)
    backup_id = secrets.token_hex(16)
    urls = {"gateway": settings.gateway_store_url(), "audit": settings.audit_store_url()}
    partial = out.with_name(f".{out.name}.{secrets.token_hex(4)}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            writer = _Writer(fh, keys, backup_id)
            writer.add(_MARKER, (FORMAT + "\n").encode(), sealed=False)
            chains, audit_state, rows = _dump_databases(writer, urls, console)
            writer.add("files", _pack_files(settings.data_dir))
            manifest = {
                "format": FORMAT,
                "backup_id": backup_id,
                "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "tongban_version": _version(),
                "gateway": {
                    "name": _signer(audit_state.get("checkpoint"), settings),
                    "origin": audit_state["origin"],
                },
                "audit": {k: v for k, v in audit_state.items() if k != "origin"},
                "chains": chains,
                "files": writer.files,
                "kdf": kdf,
                "cipher": "SM4-GCM",
            }
            body = json.dumps(manifest, indent=1, sort_keys=True).encode()
            writer.add("manifest.json", body, sealed=False)
            mac = {"sm3": sm3(body).hex(), "hmac_sm3": hmac_sm3(keys.mac, body).hex()}
            writer.add("manifest.mac", json.dumps(mac).encode(), sealed=False)
            writer.tar.close()
            fh.flush()
            os.fsync(fh.fileno())
        os.link(partial, out)  # never replaces a file that appeared meanwhile
    except FileExistsError:
        raise UsageError(f"{out} exists: a backup never overwrites a file") from None
    except SQLAlchemyError as exc:
        raise BackupRefused(f"a database could not be read ({type(exc).__name__})") from exc
    finally:
        partial.unlink(missing_ok=True)
    cp = audit_state.get("checkpoint_size")
    return BackupSummary(
        out, out.stat().st_size, time.monotonic() - started, audit_state["size"], cp, rows
    )


def _dump_databases(
    writer: _Writer, urls: Mapping[str, str], console: Any
) -> tuple[dict[str, Any], dict[str, Any], dict[str, int]]:
    """Every table of both chains, one snapshot per database (chains sharing a URL share
    it); the chains' manifest entries, the audit snapshot's state, rows per table."""
    chains: dict[str, Any] = {}
    audit_state: dict[str, Any] = {}
    rows: dict[str, int] = {}
    with _progress(console) as progress:
        task = progress.add_task("backup", total=None)
        for url in dict.fromkeys(urls.values()):
            with _snapshot(url) as conn:
                for chain in (c for c in _CHAINS if urls[c] == url):
                    revision = _revision(conn, chain)
                    if revision != head(chain):
                        raise BackupRefused(
                            f"database {chain} ({display_url(url)}) is at revision "
                            f"{revision or 'none'}, the code needs {head(chain)}: run "
                            "`tongban db upgrade` first"
                        )
                    tables: dict[str, Any] = {}
                    for table in model_metadata(chain).sorted_tables:
                        progress.update(task, description=f"{chain}: {table.name}")
                        tables[table.name] = _dump(writer, chain, conn, table)
                        rows[f"{chain}.{table.name}"] = tables[table.name]["rows"]
                    chains[chain] = {"revision": revision, "tables": tables}
                    if chain == "audit":
                        audit_state = _audit_state(conn)
    return chains, audit_state, rows


def _signer(note_text: str | None, settings: Settings) -> str:
    """The name the gateway signs checkpoints with: the configured one, checked against the
    latest checkpoint with ``DIR/keys``' gateway key (a backup whose checkpoint that key
    did not sign would be refused at restore, so it is refused now)."""
    from .keys import KeyRing

    if note_text is None:
        return settings.gateway_issuer
    ring = KeyRing(settings.keys_dir)
    if ring.missing(private=["gateway"]):
        raise BackupRefused(f"no gateway key in {settings.keys_dir.absolute()}: not backed up")
    key = ring.private("gateway").public_key
    note = SignedNote.parse(note_text)
    names = [settings.gateway_issuer, *(sig.name for sig in note.signatures)]
    for name in dict.fromkeys(names):
        if note.verified_by({name: key})[name]:
            return name
    raise BackupRefused(
        f"the latest checkpoint is not signed by {settings.keys_dir.absolute()}/gateway.key: "
        "not backed up (is DIR the gateway's data directory?)"
    )


def _version() -> str:
    from .parsing import version

    return version()


def _dump(writer: _Writer, chain: str, conn: Connection, table: Table) -> dict[str, Any]:
    columns = [c.name for c in table.columns]
    stmt = select(table)
    if table.primary_key.columns:
        stmt = stmt.order_by(*table.primary_key.columns)
    parts: list[str] = []
    count = 0
    lines: list[bytes] = []

    def flush() -> None:
        name = f"{chain}/{table.name}.{len(parts):05d}"
        writer.add(name, gzip.compress(b"".join(lines), compresslevel=6, mtime=0))
        parts.append(name)
        lines.clear()

    result = conn.execution_options(yield_per=PART_ROWS).execute(stmt)
    try:
        for row in result:
            lines.append(json.dumps([_encode(v) for v in row], separators=(",", ":")).encode())
            lines.append(b"\n")
            count += 1
            if count % PART_ROWS == 0:
                flush()
    finally:
        result.close()
    if lines or not parts:
        flush()
    return {"columns": columns, "rows": count, "parts": parts}


def _audit_state(conn: Connection) -> dict[str, Any]:
    """The snapshot's tree (every entry re-hashed from its bytes) and latest checkpoint,
    checked against each other: a backup of a log that does not hold together is refused."""
    e = audit_schema.entries
    hashes = bytearray()
    result = conn.execution_options(yield_per=PART_ROWS).execute(
        select(e.c.idx, e.c.leaf_hash, e.c.entry, *(e.c[f] for f in ROW_FIELDS)).order_by(e.c.idx)
    )
    try:
        for expected, row in enumerate(result):
            if row[0] != expected:
                raise BackupRefused(f"the audit log lacks entry {expected}: not backed up")
            columns = dict(zip(ROW_FIELDS, row[3:], strict=True))
            leaf, _doc, problem = check_row(expected, row[2], row[1], columns)
            if problem is not None:
                raise BackupRefused(f"audit log: {problem}: not backed up (run audit verify)")
            hashes += leaf
    finally:
        result.close()
    tree = MerkleTree.from_leaf_hashes(hashes)
    origin = stored_origin(conn)
    note_text = conn.execute(
        select(audit_schema.checkpoints.c.note)
        .order_by(audit_schema.checkpoints.c.size.desc())
        .limit(1)
    ).scalar()
    state: dict[str, Any] = {"origin": origin, "size": tree.size, "root": tree.root().hex()}
    state["checkpoint"] = note_text
    state["checkpoint_size"] = None
    if note_text is not None:
        cp = SignedNote.parse(note_text).checkpoint
        if cp.size > tree.size or tree.root(cp.size) != cp.root:
            raise BackupRefused("the audit log does not match its latest checkpoint: not backed up")
        state["checkpoint_size"] = cp.size
    return state


def _pack_files(data_dir: Path) -> bytes:
    """``DIR/keys`` and ``DIR/pki`` as a gzipped tar (regular files only, modes kept)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for top in _DIRS:
            base = data_dir / top
            if not base.is_dir():
                continue
            for path in sorted(base.rglob("*")):
                if path.is_symlink() or not path.is_file() or path.name.endswith(".tmp"):
                    continue
                data = path.read_bytes()
                info = tarfile.TarInfo(path.relative_to(data_dir).as_posix())
                info.size = len(data)
                info.mode = path.stat().st_mode & 0o777
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# --- reading a backup --------------------------------------------------------------------


_WRONG = "wrong passphrase or not a tongban backup"


@dataclass
class Backup:
    """A backup file whose manifest, digests, MAC, audit tree and checkpoint verified.
    Rows and files are read again (and decrypted, authenticated) when loaded."""

    path: Path
    manifest: dict[str, Any]
    keys: _Keys = field(repr=False)
    files: dict[str, tuple[int, bytes]] = field(repr=False)
    tree: MerkleTree = field(repr=False)
    gateway_key: SM2PublicKey = field(repr=False)
    witness_keys: dict[str, SM2PublicKey] = field(repr=False)

    @property
    def size(self) -> int:
        return int(self.manifest["audit"]["size"])

    @property
    def origin(self) -> str:
        return str(self.manifest["gateway"]["origin"])

    @property
    def gateway_name(self) -> str:
        return str(self.manifest["gateway"]["name"])

    def rows(self, chain: str, table: str) -> Iterator[list[Any]]:
        with _open_tar(self.path) as tar:
            yield from _rows(tar, self, chain, table)


@contextlib.contextmanager
def _open_tar(path: Path) -> Iterator[tarfile.TarFile]:
    try:
        tar = tarfile.open(path, mode="r:")  # noqa: SIM115 -- closed below
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{path}: is a directory, not a backup") from None
    except (tarfile.TarError, EOFError, OSError):
        raise BackupRefused(f"{path}: not a tongban backup (not a tar file)") from None
    try:
        yield tar
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, ValueError) as exc:
        raise BackupRefused(
            f"{path}: the backup is truncated or corrupt ({type(exc).__name__})"
        ) from None
    finally:
        tar.close()


def _member(tar: tarfile.TarFile, name: str, path: Path) -> bytes:
    try:
        info = tar.getmember(name)
        fh = tar.extractfile(info)
    except KeyError:
        fh = None
    if fh is None:
        raise BackupRefused(f"{path}: the backup is truncated or corrupt ({name} is missing)")
    data = fh.read()
    if len(data) != info.size:
        raise BackupRefused(f"{path}: the backup is truncated ({name} is cut short)")
    return data


def _sealed(
    tar: tarfile.TarFile, manifest: Mapping[str, Any], keys: _Keys, name: str, path: Path
) -> bytes:
    data = _member(tar, name, path)
    want = manifest["files"].get(name)
    if want is None or sm3(data).hex() != want["sm3"]:
        raise BackupRefused(f"{path}: the backup is corrupt ({name} does not match its digest)")
    try:
        return sm4_decrypt(keys.seal, data, _ad(str(manifest["backup_id"]), name))
    except ValueError:
        raise BackupRefused(f"{path}: the backup is corrupt ({name} does not decrypt)") from None


def _rows(tar: tarfile.TarFile, backup: Backup, chain: str, table: str) -> Iterator[list[Any]]:
    meta = backup.manifest["chains"][chain]["tables"][table]
    width = len(meta["columns"])
    count = 0
    for part in meta["parts"]:
        raw = gzip.decompress(_sealed(tar, backup.manifest, backup.keys, part, backup.path))
        for line in raw.splitlines():
            values = [_decode(v) for v in json.loads(line)]
            if len(values) != width:
                raise BackupRefused(f"{backup.path}: the backup is corrupt ({part})")
            count += 1
            yield values
    if count != meta["rows"]:
        raise BackupRefused(f"{backup.path}: the backup is corrupt ({chain}.{table} row count)")


def _read_manifest(
    tar: tarfile.TarFile, path: Path, passphrase: bytes
) -> tuple[dict[str, Any], _Keys]:
    try:
        first = tar.next()
    except tarfile.TarError:
        first = None
    if first is None or first.name != _MARKER:
        raise BackupRefused(f"{path}: not a tongban backup")
    marker = _member(tar, _MARKER, path).decode("utf-8", "replace").strip()
    body = _member(tar, "manifest.json", path)
    try:
        mac = json.loads(_member(tar, "manifest.mac", path))
        intact = sm3(body).hex() == mac["sm3"]
    except (ValueError, KeyError, TypeError):
        intact = False
    if not intact:
        raise BackupRefused(
            f"{path}: the backup is corrupt (its manifest does not match its digest)"
        )
    manifest = json.loads(body)
    if not isinstance(manifest, dict):
        raise BackupRefused(f"{path}: not a tongban backup (its manifest is malformed)")
    shown = str(manifest.get("format", marker))[:40]
    if manifest.get("format") != FORMAT or marker != FORMAT:
        raise BackupRefused(
            f"{path}: backup format {shown} is not {FORMAT}, the one this code reads (a newer "
            "tongban wrote it?)"
        )
    if not _well_formed(manifest):
        raise BackupRefused(f"{path}: not a tongban backup (its manifest is malformed)")
    keys = _Keys.derive(passphrase, manifest["kdf"])
    if not secrets.compare_digest(hmac_sm3(keys.mac, body).hex(), str(mac.get("hmac_sm3"))):
        raise BackupRefused(_WRONG)
    return manifest, keys


def _well_formed(manifest: Any) -> bool:
    """The manifest has what a restore reads, of the right types (checked before the MAC,
    whose key derivation it names)."""
    try:
        kdf, files, audit = manifest["kdf"], manifest["files"], manifest["audit"]
        chains, gateway = manifest["chains"], manifest["gateway"]
        return (
            isinstance(manifest["backup_id"], str)
            and all(isinstance(kdf[k], int) for k in ("n", "r", "p"))
            and isinstance(kdf["salt"], str)
            and all(isinstance(f, dict) and isinstance(f.get("sm3"), str) for f in files.values())
            and isinstance(audit["size"], int)
            and isinstance(audit["root"], str)
            and isinstance(audit.get("checkpoint"), str | None)
            and isinstance(gateway["name"], str)
            and isinstance(gateway["origin"], str | None)
            and all(
                isinstance(chains[c]["revision"], str)
                and all(
                    isinstance(t["columns"], list)
                    and isinstance(t["rows"], int)
                    and isinstance(t["parts"], list)
                    for t in chains[c]["tables"].values()
                )
                for c in _CHAINS
            )
        )
    except (KeyError, TypeError, AttributeError):
        return False


def _unpack_files(data: bytes, path: Path) -> dict[str, tuple[int, bytes]]:
    out: dict[str, tuple[int, bytes]] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for info in tar:
            parts = Path(info.name).parts
            if (
                not info.isfile()
                or not parts
                or parts[0] not in _DIRS
                or Path(info.name).is_absolute()
                or ".." in parts
            ):
                raise BackupRefused(f"{path}: the backup is corrupt (an unexpected file)")
            fh = tar.extractfile(info)
            assert fh is not None
            out[Path(info.name).as_posix()] = (info.mode & 0o777, fh.read())
    return out


def open_backup(path: Path, passphrase: bytes) -> Backup:
    """Read and verify ``path`` completely: the format, the manifest's digest and MAC
    (the passphrase), every member's digest and decryption, every row, the audit entries
    against the recorded tree size and root, and the latest checkpoint's root and the
    gateway's signature on it (with the backed-up gateway key). Writes nothing."""
    with _open_tar(path) as tar:
        manifest, keys = _read_manifest(tar, path, passphrase)
        listed = set(manifest["files"])
        present = {m.name for m in tar.getmembers()} - {_MARKER, "manifest.json", "manifest.mac"}
        if present != listed:
            raise BackupRefused(
                f"{path}: the backup is corrupt (its members differ from its manifest)"
            )
        _check_revisions(manifest, path)
        files = _unpack_files(_sealed(tar, manifest, keys, "files", path), path)
        gateway_key, witness_keys = _keys_of(files, path)
        backup = Backup(path, manifest, keys, files, MerkleTree(), gateway_key, witness_keys)
        for chain in _CHAINS:
            for table in manifest["chains"][chain]["tables"]:
                if (chain, table) == ("audit", audit_schema.entries.name):
                    continue
                for _row in _rows(tar, backup, chain, table):
                    pass  # every part decrypts and parses
        backup.tree = _check_audit(tar, backup)
    return backup


def _check_revisions(manifest: Mapping[str, Any], path: Path) -> None:
    """A backup from code whose schema this code does not know is refused: it cannot be
    migrated, and loading it into this code's tables could drop what it holds."""
    from alembic.script import ScriptDirectory

    for chain in _CHAINS:
        revision = manifest["chains"][chain]["revision"]
        script = ScriptDirectory(str(CHAINS[chain].location))
        if revision not in {s.revision for s in script.walk_revisions()}:
            raise BackupRefused(
                f"{path}: the backup's {chain} database is at revision {str(revision)[:40]}, "
                f"which this code does not know (newer code made it; this code's head is "
                f"{script.get_current_head()})"
            )


def _keys_of(
    files: Mapping[str, tuple[int, bytes]], path: Path
) -> tuple[SM2PublicKey, dict[str, SM2PublicKey]]:
    from .config import DEPARTMENTS

    try:
        if "keys/gateway.jwk.json" in files:
            gateway = SM2PublicKey.from_jwk(json.loads(files["keys/gateway.jwk.json"][1]))
        else:
            gateway = SM2PrivateKey.from_pem(files["keys/gateway.key"][1]).public_key
    except (KeyError, ValueError):
        raise BackupRefused(f"{path}: the backup holds no usable gateway key") from None
    witnesses = {}
    for name in DEPARTMENTS:
        raw = files.get(f"keys/{name}.jwk.json")
        if raw is not None:
            with contextlib.suppress(ValueError, KeyError):
                witnesses[name] = SM2PublicKey.from_jwk(json.loads(raw[1]))
    return gateway, witnesses


def _check_audit(tar: tarfile.TarFile, backup: Backup) -> MerkleTree:
    path = backup.path
    cols = backup.manifest["chains"]["audit"]["tables"][audit_schema.entries.name]["columns"]
    position = {c: i for i, c in enumerate(cols)}
    hashes = bytearray()
    for expected, row in enumerate(_rows(tar, backup, "audit", audit_schema.entries.name)):
        idx = row[position["idx"]]
        columns = {f: row[position[f]] for f in ROW_FIELDS}
        leaf, _doc, problem = check_row(
            expected, row[position["entry"]], row[position["leaf_hash"]], columns
        )
        if idx != expected or problem is not None:
            raise BackupRefused(
                f"{path}: the backup's audit log does not verify at entry {expected}"
            )
        hashes += leaf
    tree = MerkleTree.from_leaf_hashes(hashes)
    audit = backup.manifest["audit"]
    if tree.size != audit["size"] or tree.root().hex() != audit["root"]:
        raise BackupRefused(f"{path}: the backup's audit entries do not recompute to its root")
    note_text = audit.get("checkpoint")
    if note_text is not None:
        try:
            note = SignedNote.parse(note_text)
        except NoteError:
            raise BackupRefused(f"{path}: the backup's checkpoint is malformed") from None
        cp = note.checkpoint
        name = backup.gateway_name
        if not note.verified_by({name: backup.gateway_key})[name]:
            raise BackupRefused(
                f"{path}: the backup's latest checkpoint is not signed by its gateway key"
            )
        if cp.origin != backup.origin or cp.size > tree.size or tree.root(cp.size) != cp.root:
            raise BackupRefused(f"{path}: the backup's latest checkpoint does not match its log")
    return tree


# --- witnesses ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """A checkpoint a witness cosigned: its size and root, and who says so."""

    witness: str
    size: int
    root: bytes
    source: str  # "the target's audit store", "the witness itself"


def witness_conflict(backup: Backup, seen: Sequence[Seen]) -> str | None:
    """Why restoring ``backup`` would show a witness a rollback or another log, or None.
    A witness that cosigned a larger tree refuses every checkpoint of a smaller one; one
    that cosigned another root at a size the backup holds has seen a different log."""
    for s in sorted(seen, key=lambda s: (-s.size, s.witness)):
        if s.size > backup.size:
            return (
                f"witness {s.witness} has cosigned {s.size} entries of the log ({s.source}), "
                f"the backup holds {backup.size}: restoring it would present the witnesses "
                f"with a rollback; restore a backup taken after that checkpoint"
            )
        if backup.tree.root(s.size) != s.root:
            return (
                f"witness {s.witness} cosigned a tree of {s.size} entries ({s.source}) that "
                f"the backup's first {s.size} entries do not match: not the same log"
            )
    return None


def seen_in_notes(
    backup: Backup, notes: Mapping[str, str], source: str
) -> tuple[list[Seen], dict[str, str]]:
    """The witnesses' own last checkpoints (``GET /v1/witness/checkpoint``): each must be
    signed by the backup's gateway key and, when the backup holds its key, the witness."""
    seen: list[Seen] = []
    bad: dict[str, str] = {}
    for name, text_ in sorted(notes.items()):
        try:
            note = SignedNote.parse(text_)
        except NoteError:
            bad[name] = "its checkpoint is malformed"
            continue
        keys = {backup.gateway_name: backup.gateway_key}
        if name in backup.witness_keys:
            keys[name] = backup.witness_keys[name]
        checks = note.verified_by(keys)
        if not all(checks.values()):
            bad[name] = "its checkpoint does not verify with the backup's keys"
            continue
        if note.checkpoint.origin != backup.origin:
            bad[name] = f"it witnesses another log ({note.checkpoint.origin[:80]})"
            continue
        seen.append(Seen(name, note.checkpoint.size, note.checkpoint.root, source))
    return seen, bad


def _seen_in_store(conn: Connection, backup: Backup) -> list[Seen]:
    """The largest checkpoint each witness cosigned, as the target's audit store records
    (a deployment restored over): only checkpoints of the backup's log."""
    if not inspect(conn).has_table(audit_schema.checkpoints.name):
        return []
    best: dict[str, Seen] = {}
    c = audit_schema.checkpoints.c
    for text_ in conn.execute(select(c.note).order_by(c.size.desc())).scalars():
        try:
            note = SignedNote.parse(text_)
        except NoteError:
            continue
        cp = note.checkpoint
        names = {s.name for s in note.signatures} - {backup.gateway_name} - set(best)
        if cp.origin != backup.origin or not names:
            continue
        known = {n: k for n, k in backup.witness_keys.items() if n in names}
        verified = note.verified_by(known) if known else {}
        for name in names:
            if verified.get(name, True):  # a forged cosignature proves nothing
                best[name] = Seen(name, cp.size, cp.root, "the target's audit store")
    return list(best.values())


# --- restoring ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RestoreSummary:
    data_dir: Path
    seconds: float
    entries: int
    root: str
    checkpoint: int | None
    rows: dict[str, int]
    witnesses_checked: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return {
            "restored": str(self.data_dir),
            "seconds": round(self.seconds, 2),
            "audit_entries": self.entries,
            "audit_root": self.root,
            "latest_checkpoint": self.checkpoint,
            "rows": self.rows,
            "witnesses_checked": self.witnesses_checked,
            "next": f"tongban audit verify --data-dir {self.data_dir}",
        }


def _has_tables(conn: Connection, chain: str) -> bool:
    names = set(inspect(conn).get_table_names())
    return bool(names & (set(model_metadata(chain).tables) | {CHAINS[chain].version_table}))


def _other_sessions(conn: Connection) -> int:
    return int(
        conn.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
            )
        ).scalar_one()
    )


def _open_elsewhere(path: Path) -> bool:
    """Whether a process of this host has ``path`` open (Linux: /proc/*/fd)."""
    target = path.resolve()
    candidates = {target, Path(f"{target}-wal"), Path(f"{target}-shm")}
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            for fd in fd_dir.iterdir():
                with contextlib.suppress(OSError):
                    if Path(os.readlink(fd)) in candidates:
                        return True
        except OSError:
            continue
    return False


def _check_target(
    settings: Settings, backup: Backup, *, force: bool
) -> tuple[dict[str, list[str]], list[Seen]]:
    """Refuse a target that holds anything (unless ``force``) or a running gateway's
    database (ever); return the databases to load (URL -> chains) and what the target's
    audit store says the witnesses cosigned."""
    data_dir = settings.data_dir
    if data_dir.exists() and not data_dir.is_dir():
        raise UsageError(f"{data_dir}: not a directory")
    if data_dir.is_dir() and any(data_dir.iterdir()) and not force:
        raise UsageError(
            f"{data_dir.absolute()} is not empty: restore into a fresh directory (or --force "
            "to replace a stopped deployment's data)"
        )
    urls = {"gateway": settings.gateway_store_url(), "audit": settings.audit_store_url()}
    groups: dict[str, list[str]] = {}
    for chain, url in urls.items():
        groups.setdefault(url, []).append(chain)
    seen: list[Seen] = []
    for url, chains in groups.items():
        seen += _check_database(url, chains, backup, force=force)
    return groups, seen


def _check_database(url: str, chains: Sequence[str], backup: Backup, *, force: bool) -> list[Seen]:
    path = _sqlite_file(url)
    shown = display_url(url)
    if path is not None:
        if not path.exists():
            return []
        if not force:
            raise UsageError(f"{path} exists: restore into a fresh directory (or --force)")
        if _open_elsewhere(path):
            raise BackupRefused(
                f"{path} is open in a running process: is a gateway running on it? stop it "
                "first (a restore never replaces a running gateway's database)"
            )
    engine = make_engine(url) if path is None else create_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            if not force and any(_has_tables(conn, c) for c in chains):
                raise UsageError(
                    f"database {shown} holds tongban tables: restore into an empty database "
                    "(or --force)"
                )
            if path is None and _other_sessions(conn):
                raise BackupRefused(
                    f"database {shown} has other sessions: is a gateway running on it? stop "
                    "it first (a restore never replaces a running gateway's database)"
                )
            return _seen_in_store(conn, backup) if "audit" in chains else []
    except SQLAlchemyError as exc:
        raise BackupRefused(f"database {shown} is unavailable ({type(exc).__name__})") from exc
    finally:
        engine.dispose()


def _load_chain(conn: Connection, backup: Backup, chain: str, rows: dict[str, int]) -> None:
    """Create ``chain``'s schema at the backup's revision, load every row, then migrate
    to the code's head: all on ``conn``, inside its transaction."""
    revision = backup.manifest["chains"][chain]["revision"]
    migrations.upgrade_on(conn, chain, revision)
    tables = backup.manifest["chains"][chain]["tables"]
    meta = MetaData()
    meta.reflect(conn, only=list(tables))
    for name, info in tables.items():
        table = meta.tables[name]
        if {c.name for c in table.columns} != set(info["columns"]):
            raise BackupRefused(
                f"{chain}.{name}: the backup's columns are not revision {revision}'s"
            )
        batch: list[dict[str, Any]] = []
        for values in backup.rows(chain, name):
            batch.append(dict(zip(info["columns"], values, strict=True)))
            if len(batch) >= _BATCH:
                conn.execute(table.insert(), batch)
                batch = []
        if batch:
            conn.execute(table.insert(), batch)
        rows[f"{chain}.{name}"] = info["rows"]
        if conn.dialect.name == "postgresql":
            for column in table.primary_key.columns:
                seq = conn.execute(
                    text("SELECT pg_get_serial_sequence(:t, :c)"), {"t": name, "c": column.name}
                ).scalar()
                if seq is not None:
                    conn.execute(
                        text(
                            f'SELECT setval(:s, coalesce(max("{column.name}"), 1), '  # noqa: S608
                            f'max("{column.name}") IS NOT NULL) FROM "{name}"'
                        ),
                        {"s": seq},
                    )
    migrations.upgrade_on(conn, chain, "head")


def _drop_chain(conn: Connection, chain: str) -> None:
    model_metadata(chain).drop_all(conn)
    conn.execute(text(f"DROP TABLE IF EXISTS {CHAINS[chain].version_table}"))


def _sqlite_sidecars(path: Path) -> list[Path]:
    return [Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-journal")]


def _ask_witnesses(
    backup: Backup, witnessed: Callable[[Backup], tuple[dict[str, str], dict[str, str]]]
) -> list[Seen]:
    """What each witness says it cosigned last; a witness that cannot be asked, or whose
    answer does not verify, refuses the restore (the operator asked for the check)."""
    notes, unreachable = witnessed(backup)
    if unreachable:
        name, why = sorted(unreachable.items())[0]
        raise BackupRefused(f"witness {name} could not be asked what it cosigned: {why}")
    asked, bad = seen_in_notes(backup, notes, "the witness itself")
    if bad:
        name, why = sorted(bad.items())[0]
        raise BackupRefused(f"witness {name}: {why}")
    return asked


def _load_postgresql(
    stack: contextlib.ExitStack, url: str, chains: Sequence[str], backup: Backup,
    rows: dict[str, int],
) -> Any:  # fmt: skip
    """Load ``chains`` into the database at ``url`` in one transaction, left open (the
    caller commits once everything is loaded; ``stack`` rolls it back otherwise)."""
    engine = make_engine(url)
    stack.callback(engine.dispose)
    conn = stack.enter_context(engine.connect())
    txn = conn.begin()
    stack.callback(lambda: txn.rollback() if txn.is_active else None)
    for chain in chains:
        _drop_chain(conn, chain)  # only with --force does it hold any
        _load_chain(conn, backup, chain, rows)
    return txn


def _load_sqlite(
    stack: contextlib.ExitStack, file: Path, chains: Sequence[str], backup: Backup,
    rows: dict[str, int], tag: str,
) -> tuple[Path, Path]:  # fmt: skip
    """Load ``chains`` into a new SQLite file beside ``file``: ``(temporary, file)``, for
    the caller to rename once everything is loaded (``stack`` removes it otherwise)."""
    temp = file.with_name(f".{file.name}.restore-{tag}")
    file.parent.mkdir(parents=True, exist_ok=True)
    for leftover in (temp, *_sqlite_sidecars(temp)):
        stack.callback(leftover.unlink, missing_ok=True)
    engine = create_engine(f"sqlite:///{temp}")
    try:
        with engine.begin() as conn:
            for chain in chains:
                _load_chain(conn, backup, chain, rows)
    finally:
        engine.dispose()
    return temp, file


def _write_files(staging: Path, backup: Backup) -> None:
    for rel, (mode, data) in backup.files.items():
        target = staging / rel
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode or 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)


def _swap_in(
    pending: Sequence[Any], renames: Sequence[tuple[Path, Path]], staging: Path, data_dir: Path
) -> None:
    """Everything is loaded and verified: only now does the target change. Transactions
    commit, SQLite files are renamed over their targets, key directories swapped."""
    for txn in pending:
        txn.commit()
    for temp, file in renames:
        for side in _sqlite_sidecars(file):
            side.unlink(missing_ok=True)  # a stale WAL must never meet the new file
        os.replace(temp, file)
    for top in _DIRS:
        old = data_dir / top
        if old.exists():
            old.rename(staging / f"old-{top}")
        if (staging / top).exists():
            (staging / top).rename(old)


def restore_backup(
    path: Path,
    settings: Settings,
    passphrase: bytes,
    *,
    force: bool = False,
    witnessed: Callable[[Backup], tuple[dict[str, str], dict[str, str]]] | None = None,
    console: Any = None,
) -> RestoreSummary:
    """Restore the backup at ``path`` into ``settings``' data directory and databases.

    Everything is verified first (:func:`open_backup`; the target: :func:`_check_target`;
    the witnesses: the target's recorded cosignatures and, with ``witnessed``, each
    witness's own last checkpoint, ``(notes, unreachable)``, asked knowing the verified
    backup (whose PKI may be what reaches the witnesses)). Then each database is loaded
    in one transaction (PostgreSQL) or into a temporary file (SQLite), the key files into a
    temporary directory, and only then are the transactions committed and the files renamed
    into place. A failure before that leaves the target as it was."""
    started = time.monotonic()
    backup = open_backup(path, passphrase)
    groups, seen = _check_target(settings, backup, force=force)
    checked: dict[str, int] = {}
    if witnessed is not None:
        asked = _ask_witnesses(backup, witnessed)
        seen += asked
        checked = {s.witness: s.size for s in asked}
    conflict = witness_conflict(backup, seen)
    if conflict is not None:
        raise BackupRefused(f"not restored: {conflict}")
    if settings.gateway_issuer != backup.gateway_name:
        log.warning(
            "the backed-up gateway signed its checkpoints as %r, this configuration names "
            "%r: set gateway_issuer (TONGBAN_GATEWAY_ISSUER) to the former, or the witnesses "
            "refuse the restored gateway's checkpoints",
            backup.gateway_name,
            settings.gateway_issuer,
        )
    data_dir = settings.data_dir
    created = not data_dir.exists()
    data_dir.mkdir(parents=True, exist_ok=True)
    tag = secrets.token_hex(4)
    staging = data_dir / f".restore-{tag}"
    staging.mkdir(mode=0o700)
    rows: dict[str, int] = {}
    done = False
    try:
        with contextlib.ExitStack() as stack, _progress(console) as progress:
            task = progress.add_task("restore", total=None)
            pending: list[Any] = []
            renames: list[tuple[Path, Path]] = []
            for url, chains in groups.items():
                progress.update(task, description=f"loading {', '.join(chains)}")
                file = _sqlite_file(url)
                if file is None:
                    pending.append(_load_postgresql(stack, url, chains, backup, rows))
                else:
                    renames.append(_load_sqlite(stack, file, chains, backup, rows, tag))
            progress.update(task, description="key files")
            _write_files(staging, backup)
            _swap_in(pending, renames, staging, data_dir)
            done = True
    except SQLAlchemyError as exc:
        raise BackupRefused(
            f"a database could not be loaded ({type(exc).__name__}): nothing was restored"
        ) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not done and created:
            shutil.rmtree(data_dir, ignore_errors=True)
    cp = backup.manifest["audit"].get("checkpoint")
    return RestoreSummary(
        data_dir,
        time.monotonic() - started,
        backup.size,
        backup.manifest["audit"]["root"],
        SignedNote.parse(cp).checkpoint.size if cp else None,
        rows,
        checked,
    )
