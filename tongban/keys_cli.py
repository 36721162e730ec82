"""``tongban keys``: encryption-at-rest keys of the department stores and the audit vault.

    tongban keys status  --data-dir DIR
    tongban keys encrypt --data-dir DIR (--department NAME | --all)
    tongban keys rotate  --data-dir DIR --department NAME [--index | --kek]
    tongban keys rotate  --data-dir DIR --vault

Output is JSON on stdout (key ids, states and row counts, never key material); progress
goes to stderr.
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

from .config import DEPARTMENTS, Settings

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
    out: dict[str, Any] = {"departments": {}}
    for department in DEPARTMENTS:
        try:
            out["departments"][department] = _department_status(settings, department)
        except TongbanError as exc:
            out["departments"][department] = {"problem": exc.type, "detail": exc.detail}
    keys = VaultKeys(settings.keys_dir)
    out["vault"] = {
        "key_ids": keys.ids(),
        "rows_by_key_id": {
            str(k): n for k, n in sorted(vault_key_usage(settings.audit_store_url()).items())
        },
    }
    print(json.dumps(out, indent=2))
    return 0


def _encrypt(args: argparse.Namespace) -> int:
    from tongban.adapters.rekey import encrypt_store

    settings = Settings.from_env(data_dir=args.data_dir)
    departments = DEPARTMENTS if args.all else (args.department,)
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


def _rotate(args: argparse.Namespace) -> int:
    settings = Settings.from_env(data_dir=args.data_dir)
    if args.vault:
        from tongban.audit.vault import VaultKeys, rotate_vault

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
        except TongbanError as exc:  # key problems: the stable type and a detail, no data
            print(f"{exc.type}: {exc.detail}", file=sys.stderr)
            return 1

    return run


def add_keys(sub: Any) -> None:
    keys = sub.add_parser("keys", help="encryption-at-rest keys: status, encrypt, rotate")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)

    status = keys_sub.add_parser("status", help="key ids, states and rows per key")
    status.add_argument("--data-dir", type=Path, required=True)
    status.set_defaults(func=_guarded(_status))

    encrypt = keys_sub.add_parser(
        "encrypt", help="encrypt plaintext department stores at rest (creates the KEK)"
    )
    which = encrypt.add_mutually_exclusive_group(required=True)
    which.add_argument("--department", choices=DEPARTMENTS)
    which.add_argument("--all", action="store_true")
    encrypt.add_argument("--data-dir", type=Path, required=True)
    encrypt.add_argument("--batch", type=int, default=5000)
    encrypt.set_defaults(func=_guarded(_encrypt))

    rotate = keys_sub.add_parser(
        "rotate", help="re-seal a store under a new data key (or --index, --kek), or the vault"
    )
    target = rotate.add_mutually_exclusive_group(required=True)
    target.add_argument("--department", choices=DEPARTMENTS)
    target.add_argument("--vault", action="store_true", help="the audit log's pseudonym vault")
    kind = rotate.add_mutually_exclusive_group()
    kind.add_argument("--index", action="store_true", help="the blind-index key (re-index)")
    kind.add_argument("--kek", action="store_true", help="the key-encryption key (re-wrap)")
    rotate.add_argument("--data-dir", type=Path, required=True)
    rotate.add_argument("--batch", type=int, default=5000)
    rotate.set_defaults(func=_guarded(_rotate))
