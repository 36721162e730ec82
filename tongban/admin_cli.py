"""``tongban admin clients …``: the operator registers and manages requesters on the
gateway host, without editing code.

Every change is recorded in the audit log (``kind: admin``, with the operator's OS user
and host), like the changes administrators make through the API. A secret is shown once,
when it is made (``add``, ``rotate-secret``), on standard output as JSON; it is stored only
as its keyed hash. A disabled client's tokens stop working at its next request.

    tongban admin clients add insurer-c --name "Insurer C" --scopes checks
    tongban admin clients add bank-sm --name "Bank" --scopes checks --jwks bank.jwks.json --alg SM2
    tongban admin clients list
    tongban admin clients show insurer-c
    tongban admin clients disable insurer-c
    tongban admin clients rotate-secret insurer-c
"""

from __future__ import annotations

import argparse
import getpass
import json
import socket
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from .boundary import UsageError
from .config import Settings
from .parsing import DATA_DIR_HELP, command

__all__ = ["add_admin"]


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.from_env(data_dir=args.data_dir)


def _operator() -> str:
    """Who ran the command, as the audit log records it: OS user at host."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _record(settings: Settings, event: str, client_id: str, **extra: Any) -> int:
    """Append the change to the audit log; the change is already made, and a log that is
    away fails the command loudly (the operator sees it and can retry the record)."""
    from tongban.gateway.services import AuditEvents

    from .wiring import open_audit_log

    audit = open_audit_log(settings)
    try:
        entry = {"kind": "admin", "event": event, "client_id": client_id,
                 "operator": _operator(), **extra}  # fmt: skip
        return AuditEvents(audit).append(entry)
    finally:
        audit.close()


def _registry(settings: Settings) -> Any:
    from .wiring import build_registry

    return build_registry(settings)


def _describe(client: Any) -> dict[str, Any]:
    """What ``show`` and ``list`` print: never the secret's hash."""
    return {
        "client_id": client.client_id,
        "name": client.display_name,
        "auth_method": str(client.auth_method.value),
        "scopes": sorted(client.scopes),
        "enabled": client.enabled,
        "alg": client.assertion_alg,
        "kids": sorted(client.jwks),
    }


def _print_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, ensure_ascii=False, indent=2) + "\n")


def _add(args: argparse.Namespace) -> int:
    from tongban.gateway.oauth import AuthMethod

    settings = _settings(args)
    scopes = [s for s in args.scopes.split(",") if s]
    jwks: dict[str, Any] | None = None
    if args.jwks is not None:
        try:
            jwks = json.loads(args.jwks.read_text("utf-8"))
        except OSError as exc:
            raise UsageError(f"--jwks: cannot read {args.jwks} ({exc.strerror})") from None
        except ValueError:
            raise UsageError(f"--jwks: {args.jwks} is not JSON") from None
        if args.alg is None:
            raise UsageError("--alg: a client with --jwks pins SM2 or ES256")
    elif args.alg is not None:
        raise UsageError("--alg: only with --jwks (private_key_jwt)")
    registry = _registry(settings)
    try:
        registration = registry.register_client(
            args.client_id,
            args.name,
            scopes=scopes,
            auth_method=AuthMethod.PRIVATE_KEY_JWT if jwks else AuthMethod.CLIENT_SECRET_BASIC,
            jwks=jwks,
            alg=args.alg,
        )
    finally:
        registry.engine.dispose()
    index = _record(settings, "client_added", args.client_id, scopes=sorted(scopes),
                    auth_method="private_key_jwt" if jwks else "client_secret_basic")  # fmt: skip
    out: dict[str, Any] = {**_describe(registration.client), "audit_index": index}
    if registration.secret is not None:
        out["client_secret"] = registration.secret
        Console(stderr=True).print(
            "[yellow]the secret is shown once; it is stored only as a keyed hash[/yellow]"
        )
    _print_json(out)
    return 0


def _list(args: argparse.Namespace) -> int:
    registry = _registry(_settings(args))
    try:
        rows = [_describe(c) for c in registry.clients()]
    finally:
        registry.engine.dispose()
    if args.json:
        _print_json(rows)
        return 0
    table = Table("client id", "name", "authentication", "scopes", "enabled")
    for row in rows:
        method = row["auth_method"] + (f" ({row['alg']})" if row["alg"] else "")
        table.add_row(row["client_id"], row["name"], method, " ".join(row["scopes"]),
                      "yes" if row["enabled"] else "[red]no[/red]")  # fmt: skip
    Console().print(table)
    return 0


def _show(args: argparse.Namespace) -> int:
    from tongban.primitives.errors import NotFound

    registry = _registry(_settings(args))
    try:
        client = registry.get(args.client_id)
    finally:
        registry.engine.dispose()
    if client is None:
        raise NotFound("client_id: no such client")
    _print_json(_describe(client))
    return 0


def _set_enabled(args: argparse.Namespace, enabled: bool) -> int:
    settings = _settings(args)
    registry = _registry(settings)
    try:
        registry.set_enabled(args.client_id, enabled)
    finally:
        registry.engine.dispose()
    event = "client_enabled" if enabled else "client_disabled"
    index = _record(settings, event, args.client_id)
    _print_json({"client_id": args.client_id, "enabled": enabled, "audit_index": index})
    return 0


def _rotate(args: argparse.Namespace) -> int:
    settings = _settings(args)
    registry = _registry(settings)
    try:
        secret = registry.rotate_secret(args.client_id)
    finally:
        registry.engine.dispose()
    index = _record(settings, "client_secret_rotated", args.client_id)
    Console(stderr=True).print("[yellow]the new secret is shown once; the old one no longer works")
    _print_json({"client_id": args.client_id, "client_secret": secret, "audit_index": index})
    return 0


def add_admin(sub: Any) -> None:
    admin = command(sub, "admin", "the operator's administration on the gateway host")
    admin_sub = admin.add_subparsers(dest="admin_command", required=True, metavar="COMMAND")
    clients = command(admin_sub, "clients", "requesters: add, list, show, disable, enable, rotate")
    verbs = clients.add_subparsers(dest="clients_command", required=True, metavar="COMMAND")

    def verb(name: str, summary: str, func: Any, *, with_id: bool = True) -> Any:
        parser = command(verbs, name, summary)
        if with_id:
            parser.add_argument("client_id", metavar="CLIENT_ID", help="the requester's client id")
        parser.add_argument(
            "--data-dir", type=Path, default=Path("demo-data"), metavar="DIR", help=DATA_DIR_HELP
        )
        parser.set_defaults(func=func)
        return parser

    add = verb("add", "register a requester (prints its secret once)", _add)
    add.add_argument("--name", required=True, help="its display name (shown to citizens)")
    add.add_argument(
        "--scopes", required=True, help="comma-separated: checks, checks:batch, audit:read, …"
    )
    add.add_argument(
        "--jwks", type=Path, metavar="FILE", help="its public keys: private_key_jwt, no secret"
    )
    add.add_argument("--alg", choices=("SM2", "ES256"), help="the one algorithm it signs with")
    listing = verb("list", "the requesters (no secrets)", _list, with_id=False)
    listing.add_argument("--json", action="store_true", help="JSON instead of a table")
    verb("show", "one requester (no secret)", _show)
    verb("disable", "stop a requester; its tokens stop at its next request",
         lambda a: _set_enabled(a, False))  # fmt: skip
    verb("enable", "let a disabled requester in again", lambda a: _set_enabled(a, True))
    verb("rotate-secret", "a new secret (printed once); the old one stops working", _rotate)
