"""``tongban keys``: a data directory's keys.

    tongban keys init    --data-dir DIR
    tongban keys convert --data-dir DIR
    tongban keys status  --data-dir DIR
    tongban keys encrypt --data-dir DIR (--department NAME | --all)
    tongban keys rotate  --data-dir DIR --department NAME [--index | --kek]
    tongban keys rotate  --data-dir DIR --vault
    tongban keys rotate  --data-dir DIR --signing gateway-answers|gateway-tokens

``init`` creates the SM2 key ring and registers the demo requesters (credentials in
``DIR/clients.json``, mode 0600), never overwriting a key or rotating a known secret.
``convert`` rewrites SM2 private keys still in an old format (tongban's JSON, SEC1) as
PKCS#8 PEM, which loading a key also does; it is for key directories the services cannot
write, run by someone who can. The others manage encryption at rest of the department
stores and the audit vault; ``rotate --signing`` replaces a signing key, keeping the old
public key published for as long as what it signed may be presented (a running gateway,
every worker, signs with the new key within seconds; see docs/security.md). Output is
JSON on stdout (key ids, states and row counts, never key material); progress goes to
stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from tongban.primitives.errors import TongbanError

from .boundary import MissingPrerequisite, missing_sqlite_file
from .config import DEPARTMENTS, Settings
from .parsing import DATA_DIR_HELP, command

if TYPE_CHECKING:
    from tongban.adapters.store import DepartmentStore

__all__ = ["add_keys"]


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description:<32}"),
        BarColumn(),
        TextColumn("{task.completed:>9,.0f}/{task.total:,.0f}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
    )


def _generate_hint(settings: Settings) -> str:
    return f"run `tongban generate --population 1000 --seed 7 --out {settings.data_dir.absolute()}`"


def _require_stores(settings: Settings, departments: tuple[str, ...]) -> None:
    """Refuse before creating anything (a KEK, an empty database) for absent stores."""
    absent = [d for d in departments if missing_sqlite_file(settings.store_url(d)) is not None]
    if absent:
        where = settings.data_dir.absolute() / "departments"
        raise MissingPrerequisite(
            f"no store for {', '.join(absent)} in {where}: {_generate_hint(settings)}"
        )


def _require_audit(settings: Settings) -> None:
    absent = missing_sqlite_file(settings.audit_store_url())
    if absent is not None:
        raise MissingPrerequisite(
            f"no audit log at {absent}: start the gateway on {settings.data_dir.absolute()} once"
        )


def _init(args: argparse.Namespace) -> int:
    from .provision import init_data_dir

    report = init_data_dir(args.data_dir)
    print(json.dumps(report.summary(), indent=2))
    return 0


#: Where a data directory keeps SM2 private keys: the key ring, and the Flower envelope
#: keys (``tongban.federation.horizontal.sealing.envelope_dir``; not imported here, it
#: needs the federation extra).
_SM2_KEY_FILES = (("keys", "*.key"), ("federation/envelope", "*.sm2"))


def _convert(args: argparse.Namespace) -> int:
    from tongban.primitives.gm import convert_private_key

    converted: list[str] = []
    unchanged: list[str] = []
    refused: dict[str, str] = {}
    for folder, pattern in _SM2_KEY_FILES:
        for path in sorted((args.data_dir / folder).glob(pattern)):
            try:
                (converted if convert_private_key(path) else unchanged).append(str(path))
            except TongbanError as exc:  # KeyFileError: the file and the reason, no key
                refused[str(path)] = exc.detail
            except OSError as exc:
                refused[str(path)] = exc.strerror or type(exc).__name__
    if not (converted or unchanged or refused):
        raise MissingPrerequisite(f"no SM2 key files in {args.data_dir.absolute()}/keys")
    for detail in refused.values():
        print(f"tongban: {detail}", file=sys.stderr)
    report = {"converted": converted, "unchanged": unchanged, "refused": sorted(refused)}
    print(json.dumps(report, indent=2))
    return 1 if refused else 0


def _store(settings: Settings, department: str, *, create_kek: bool = False) -> DepartmentStore:
    from tongban.adapters.at_rest import create_kek as new_kek
    from tongban.adapters.at_rest import load_kek
    from tongban.adapters.departments import DEPARTMENTS as REGISTRY
    from tongban.adapters.store import DepartmentStore

    kek = load_kek(settings.keys_dir, department)
    if kek is None and create_kek:
        kek = new_kek(settings.keys_dir, department)
    return DepartmentStore(REGISTRY[department], settings.store_url(department), kek=kek)


def _department_status(settings: Settings, department: str) -> dict[str, Any]:
    from tongban.adapters.at_rest import read_state
    from tongban.adapters.rekey import key_usage

    store = _store(settings, department)
    try:
        with store.connect() as conn:
            state = read_state(conn, store.department.table("meta"))
        if state is None:
            return {"encrypted": False, "kek_file": store.kek is not None}
        store.at_rest()  # fails closed on a wrong or missing KEK
        return {
            "encrypted": True,
            "index_key_id": state.index_id,
            "data_keys": {str(k): v["state"] for k, v in sorted(state.data.items())},
            "rotation_in_progress": state.rotation is not None,
            "rows_by_key_id": {str(k): n for k, n in sorted(key_usage(store).items())},
        }
    finally:
        store.dispose()


def _status(args: argparse.Namespace) -> int:
    from tongban.audit.vault import VaultKeys, vault_key_usage

    settings = Settings.from_env(data_dir=args.data_dir)
    present = tuple(d for d in DEPARTMENTS if missing_sqlite_file(settings.store_url(d)) is None)
    if not present:
        _require_stores(settings, DEPARTMENTS)
    out: dict[str, Any] = {"departments": {}}
    for department in DEPARTMENTS:
        if department not in present:
            out["departments"][department] = {"problem": "missing", "detail": "no store"}
            continue
        try:
            out["departments"][department] = _department_status(settings, department)
        except TongbanError as exc:
            out["departments"][department] = {"problem": exc.type, "detail": exc.detail}
    has_audit = missing_sqlite_file(settings.audit_store_url()) is None
    out["vault"] = {
        # Reading the vault's keys creates the first one; status only looks.
        "key_ids": VaultKeys(settings.keys_dir).ids() if has_audit else [],
        "rows_by_key_id": {
            str(k): n for k, n in sorted(vault_key_usage(settings.audit_store_url()).items())
        }
        if has_audit
        else {},
    }
    print(json.dumps(out, indent=2))
    return 0


def _encrypt(args: argparse.Namespace) -> int:
    from tongban.adapters.rekey import encrypt_store

    settings = Settings.from_env(data_dir=args.data_dir)
    departments = DEPARTMENTS if args.all else (args.department,)
    _require_stores(settings, departments)
    done: dict[str, bool] = {}
    with _progress() as progress:
        for department in departments:
            store = _store(settings, department, create_kek=True)
            try:
                done[department] = encrypt_store(store, batch=args.batch, progress=progress)
            finally:
                store.dispose()
    print(json.dumps({"encrypted": done}, indent=2))
    return 0


def _rotate_signing(settings: Settings, name: str) -> int:
    """Rotate the signing key ``name``: recorded in the audit log first (who, the old and
    the new key id), then made; a log that refuses the entry leaves the key as it was."""
    import getpass
    import socket

    from tongban.gateway.services import AuditEvents
    from tongban.primitives.gm import SM2PrivateKey, load_private_key
    from tongban.primitives.rotation import rotate_key

    from .keys import ROTATABLE
    from .wiring import open_audit_log

    path = settings.keys_dir / f"{name}.key"
    if not path.exists():
        raise MissingPrerequisite(f"no key {path.name} in {settings.keys_dir.absolute()}")
    old_kid = load_private_key(path).public_key.key_id
    new = SM2PrivateKey.generate()
    overlap = ROTATABLE[name]
    try:
        operator = f"{getpass.getuser()}@{socket.gethostname()}"
    except (KeyError, OSError):
        operator = f"unknown@{socket.gethostname()}"
    audit = open_audit_log(settings)
    try:
        index = AuditEvents(audit).append(
            {
                "kind": "lifecycle",
                "event": "key.rotated",
                "key": name,
                "old_kid": old_kid,
                "new_kid": new.public_key.key_id,
                "publish_old_for": overlap,
                "operator": operator,
            }
        )
    finally:
        audit.close()
    done = rotate_key(path, publish_old_for=overlap, new_key=new)
    report = {"key": name, "old_kid": done.old_kid, "new_kid": done.new_kid,
              "old_published_until": int(done.publish_old_until), "audit_index": index}  # fmt: skip
    print(json.dumps(report, indent=2))
    return 0


def _rotate(args: argparse.Namespace) -> int:
    settings = Settings.from_env(data_dir=args.data_dir)
    if args.signing is not None:
        return _rotate_signing(settings, args.signing)
    if args.vault:
        from tongban.audit.vault import VaultKeys, rotate_vault

        _require_audit(settings)
        with _progress() as progress:
            vault = rotate_vault(
                settings.audit_store_url(),
                VaultKeys(settings.keys_dir),
                batch=args.batch,
                progress=progress,
            )
        print(json.dumps({"vault": vault.to_json()}, indent=2))
        return 0 if not vault.remaining else 2
    if args.department is None:
        print("keys rotate: name --department or --vault", file=sys.stderr)
        return 1
    _require_stores(settings, (args.department,))
    from tongban.adapters.rekey import rotate_data_key, rotate_index_key, rotate_kek

    store = _store(settings, args.department)
    try:
        if args.kek:
            rotate_kek(store, settings.keys_dir)
            print(json.dumps({"department": args.department, "kek_rotated": True}))
            return 0
        with _progress() as progress:
            if args.index:
                index_id = rotate_index_key(store, batch=args.batch, progress=progress)
                print(json.dumps({"department": args.department, "index_key_id": index_id}))
                return 0
            report = rotate_data_key(store, batch=args.batch, progress=progress)
        print(json.dumps(report.to_json(), indent=2))
        return 0 if not report.remaining else 2
    finally:
        store.dispose()


def _guarded(func: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return int(func(args))
        except MissingPrerequisite:
            raise  # the command line's boundary names it and how to get it
        except TongbanError as exc:  # key problems: the stable type and a detail, no data
            print(f"tongban: {exc.detail} ({exc.type})", file=sys.stderr)
            return 1

    return run


def add_keys(sub: Any) -> None:
    keys = command(
        sub, "keys", "keys: init (signing keys, demo requesters); status, encrypt, rotate at rest"
    )
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")

    init = command(
        keys_sub,
        "init",
        "create DIR/keys and register the demo requesters (DIR/clients.json); idempotent",
    )
    init.add_argument("--data-dir", type=Path, required=True, metavar="DIR", help=DATA_DIR_HELP)
    init.set_defaults(func=_init)

    convert = command(
        keys_sub,
        "convert",
        "rewrite SM2 private keys in an old format (JSON, SEC1) as PKCS#8 PEM; idempotent",
    )
    convert.add_argument("--data-dir", type=Path, required=True, metavar="DIR", help=DATA_DIR_HELP)
    convert.set_defaults(func=_convert)

    status = command(keys_sub, "status", "key ids, states and rows per key")
    status.add_argument("--data-dir", type=Path, required=True, metavar="DIR", help=DATA_DIR_HELP)
    status.set_defaults(func=_guarded(_status))

    encrypt = command(
        keys_sub, "encrypt", "encrypt plaintext department stores at rest (creates the KEK)"
    )
    which = encrypt.add_mutually_exclusive_group(required=True)
    which.add_argument("--department", choices=DEPARTMENTS, help="one department's store")
    which.add_argument("--all", action="store_true", help="every department's store")
    encrypt.add_argument("--data-dir", type=Path, required=True, metavar="DIR", help=DATA_DIR_HELP)
    encrypt.add_argument("--batch", type=int, default=5000, help="rows per transaction")
    encrypt.set_defaults(func=_guarded(_encrypt))

    rotate = command(
        keys_sub,
        "rotate",
        "re-seal a store under a new data key (or --index, --kek), the vault, or a signing key",
    )
    target = rotate.add_mutually_exclusive_group(required=True)
    target.add_argument("--department", choices=DEPARTMENTS, help="a department's store")
    target.add_argument("--vault", action="store_true", help="the audit log's pseudonym vault")
    target.add_argument(
        "--signing",
        choices=("gateway-answers", "gateway-tokens"),
        metavar="NAME",
        help="a signing key: gateway-answers (answers, consent artefacts) or gateway-tokens",
    )
    kind = rotate.add_mutually_exclusive_group()
    kind.add_argument("--index", action="store_true", help="the blind-index key (re-index)")
    kind.add_argument("--kek", action="store_true", help="the key-encryption key (re-wrap)")
    rotate.add_argument("--data-dir", type=Path, required=True, metavar="DIR", help=DATA_DIR_HELP)
    rotate.add_argument("--batch", type=int, default=5000, help="rows per transaction")
    rotate.set_defaults(func=_guarded(_rotate))
