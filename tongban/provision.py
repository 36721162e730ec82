"""``tongban keys init``: a data directory's key ring and the demo's requesters.

One function, :func:`init_data_dir`, used by ``tongban keys init`` and by ``tongban demo``:

* every SM2 key of a single-host deployment under ``DIR/keys`` (``keys.SIGNING_PARTIES``),
  created only when absent: an existing key is never overwritten; and the operator's
  metrics token ``DIR/keys/metrics.token`` (tongban.primitives.metrics_auth), likewise;
* the gateway and audit databases migrated to the code's revision (``tongban db upgrade``,
  tongban.migrations), as the requesters are registered in the gateway database;
* the demo requesters (:data:`DEMO_CLIENTS`) registered in the gateway database, their
  credentials written to ``DIR/clients.json`` (mode 0600). A secret already recorded
  there (or, for data directories from before that file, in ``DIR/demo.json``) that
  still opens its client is kept, so a restart changes nobody's credentials. Only a
  client whose secret is recorded nowhere (lost) gets a new one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tongban.primitives.metrics_auth import TOKEN_FILE, ensure_metrics_token

from .boundary import CommandFailed
from .config import Settings
from .keys import SIGNING_PARTIES, KeyRing

__all__ = [
    "CREDENTIALS_FILE",
    "DEMO_CLIENTS",
    "InitReport",
    "ensure_demo_clients",
    "ensure_keys",
    "init_data_dir",
    "known_secrets",
    "migrate",
    "read_credentials",
    "write_private_json",
]

CREDENTIALS_FILE = "clients.json"

# Demo requesters and what they may ask for (the policy decides which claims).
DEMO_CLIENTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "edu-bureau": ("Education bureau 教育局", ("checks", "checks:batch")),
    "allowance-office": ("Maternity allowance office 生育津贴经办", ("checks", "checks:batch")),
    "subsidy-office": ("Childcare subsidy office 育儿补贴经办", ("checks", "checks:batch")),
    "insurer-a": ("Insurer A 保险公司", ("checks",)),
    "analyst": ("Provincial analyst 统计分析", ("statistics", "federation")),
    "privacy-officer": ("Privacy officer 个人信息保护负责人", ("audit:read",)),
    "admin-1": ("Administrator 1", ("admin",)),
    "admin-2": ("Administrator 2", ("admin",)),
}

Credentials = dict[str, dict[str, str]]


@dataclass(frozen=True)
class InitReport:
    """What :func:`init_data_dir` did. ``clients`` holds the secrets (not in the repr)."""

    data_dir: Path
    credentials: Path
    keys_created: tuple[str, ...]
    clients_registered: tuple[str, ...]
    clients_reissued: tuple[str, ...]  # registered, but their secret was recorded nowhere
    clients: Credentials = field(repr=False)

    def summary(self) -> dict[str, Any]:
        """For printing: names and paths, never a secret."""
        return {
            "data_dir": str(self.data_dir),
            "keys": str(self.data_dir / "keys"),
            "keys_created": list(self.keys_created),
            # What a Prometheus scrape sends as its bearer token (credentials_file).
            "metrics_token": str(self.data_dir / "keys" / TOKEN_FILE),
            "credentials": str(self.credentials),
            "clients": sorted(self.clients),
            "clients_registered": list(self.clients_registered),
            "clients_reissued": list(self.clients_reissued),
        }


def write_private_json(path: Path, doc: Mapping[str, Any]) -> None:
    """Write ``doc`` atomically, readable by its owner only (it holds secrets)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    tmp.replace(path)


def ensure_keys(keys_dir: Path) -> list[str]:
    """Create each absent SM2 key of the key ring; return the parties created."""
    ring = KeyRing(keys_dir)
    created = [p for p in SIGNING_PARTIES if not (keys_dir / f"{p}.key").exists()]
    for party in SIGNING_PARTIES:
        ring.ensure(party)
    return created


def _clients_in(path: Path, *, strict: bool) -> Credentials:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        clients = doc["clients"]
        return {
            str(cid): {"client_id": str(cid), "client_secret": str(c["client_secret"])}
            for cid, c in clients.items()
        }
    except FileNotFoundError:
        return {}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        if strict:
            raise CommandFailed(
                f"{path}: not a credentials file ({type(exc).__name__}); move it away and "
                "run `tongban keys init` again"
            ) from None
        return {}


def read_credentials(data_dir: Path) -> Credentials:
    """The requesters' credentials of ``data_dir``: ``clients.json``, else the copy the
    demo writes into ``demo.json``."""
    return _clients_in(data_dir / CREDENTIALS_FILE, strict=True) or _clients_in(
        data_dir / "demo.json", strict=False
    )


def known_secrets(data_dir: Path) -> dict[str, str]:
    """Every secret recorded for ``data_dir``: ``clients.json`` over ``demo.json``."""
    legacy = _clients_in(data_dir / "demo.json", strict=False)
    current = _clients_in(data_dir / CREDENTIALS_FILE, strict=True)
    return {cid: c["client_secret"] for cid, c in {**legacy, **current}.items()}


def ensure_demo_clients(
    settings: Settings,
) -> tuple[Credentials, list[str], list[str]]:
    """Register the demo requesters that are missing, keep every recorded secret that
    still works; return the credentials and which clients were registered or reissued."""
    from .wiring import build_registry

    known = known_secrets(settings.data_dir)
    registry = build_registry(settings)
    out: Credentials = {}
    registered: list[str] = []
    reissued: list[str] = []
    try:
        for client_id, (name, scopes) in DEMO_CLIENTS.items():
            client = registry.get(client_id)
            secret = known.get(client_id)
            if client is None:
                secret = str(registry.register_client(client_id, name, scopes=scopes).secret)
                registered.append(client_id)
            elif secret is None or not registry.check_secret(client, client_id, secret):
                secret = registry.rotate_secret(client_id)
                reissued.append(client_id)
            out[client_id] = {"client_id": client_id, "client_secret": secret}
    finally:
        registry.engine.dispose()
    return out, registered, reissued


def migrate(settings: Settings) -> None:
    """Every store of ``settings`` at the code's revision (``tongban db upgrade``): the demo
    requesters are registered in the gateway database, which needs its tables."""
    from tongban.migrations import stores, upgrade

    for store in stores(settings):
        upgrade(store.url, store.chain, name=store.shown)


def init_data_dir(data_dir: Path, settings: Settings | None = None) -> InitReport:
    """Keys and demo requesters for ``data_dir``; safe to run any number of times."""
    settings = settings or Settings.from_env(data_dir=data_dir)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrate(settings)
    created = ensure_keys(settings.keys_dir)
    ensure_metrics_token(settings.keys_dir)
    clients, registered, reissued = ensure_demo_clients(settings)
    path = settings.data_dir / CREDENTIALS_FILE
    stale = not path.exists() or path.stat().st_mode & 0o077
    if stale or _clients_in(path, strict=True) != clients:
        write_private_json(path, {"clients": clients})
    return InitReport(
        settings.data_dir,
        path,
        tuple(created),
        tuple(registered),
        tuple(reissued),
        clients,
    )
