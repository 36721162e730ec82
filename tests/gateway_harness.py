"""A whole gateway over real adapter cores, in-process: shared by the pipeline tests."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from tongban.adapters.client import InProcessTransport
from tongban.adapters.departments import DEPARTMENTS
from tongban.adapters.evaluate import Evaluator
from tongban.adapters.protocol import AdapterCore
from tongban.adapters.statistics import LocalStatistics
from tongban.adapters.store import DepartmentStore
from tongban.adapters.witness import MemoryWitnessState, Witness
from tongban.config import Settings
from tongban.gateway.app import create_app
from tongban.gateway.client_changes import fetch_loopback_jwks
from tongban.gateway.oauth import mint_citizen_token
from tongban.gateway.services import Gateway
from tongban.keys import KeyRing
from tongban.primitives.gm import SM2PrivateKey, save_private_key
from tongban.provision import migrate
from tongban.wiring import build_gateway

PUBLIC_URL = "http://gw.test"
CLIENTS: dict[str, tuple[str, ...]] = {
    "edu-bureau": ("checks", "checks:batch"),
    "allowance-office": ("checks", "checks:batch"),
    "subsidy-office": ("checks", "checks:batch"),
    "insurer-a": ("checks",),
    "analyst": ("statistics",),
    "privacy-officer": ("audit:read",),
    "admin-1": ("admin",),
    "admin-2": ("admin",),
}


@dataclass
class Harness:
    gateway: Gateway
    app: Flask
    client: FlaskClient
    settings: Settings
    idp: SM2PrivateKey
    secrets: dict[str, str]
    stores: dict[str, DepartmentStore]
    tokens: dict[str, str] = field(default_factory=dict)

    def token(self, client_id: str) -> str:
        if client_id not in self.tokens:
            basic = base64.b64encode(f"{client_id}:{self.secrets[client_id]}".encode()).decode()
            resp = self.client.post(
                "/oauth/token",
                data={"grant_type": "client_credentials"},
                headers={"Authorization": f"Basic {basic}"},
            )
            assert resp.status_code == 200, resp.get_data(as_text=True)
            self.tokens[client_id] = resp.get_json()["access_token"]
        return self.tokens[client_id]

    def auth(self, client_id: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(client_id)}"}

    def citizen(self, id_number: str) -> dict[str, str]:
        token = mint_citizen_token(
            self.idp, id_number, issuer=self.settings.idp_issuer, audience=PUBLIC_URL
        )
        return {"Authorization": f"Bearer {token}"}

    def check(self, client_id: str, body: dict[str, Any]) -> Any:
        return self.client.post("/v1/checks", json=body, headers=self.auth(client_id))

    def close(self) -> None:
        self.gateway.close()
        for store in self.stores.values():
            store.dispose()


def in_process_departments(
    config: Settings, stores: dict[str, DepartmentStore], party_keys: dict[str, SM2PrivateKey]
) -> InProcessTransport:
    """Every department's real adapter core over its store, and its witness, in process:
    what the gateway reaches through the transport in these tests."""
    gateway_public = party_keys["gateway"].public_key
    cores = {
        d: AdapterCore(
            Evaluator(stores[d]),
            party_keys[d],
            {gateway_public.key_id: gateway_public},
            gateway_issuer=config.gateway_issuer,
            statistics=LocalStatistics(stores[d], min_threshold=config.stats_threshold),
        )
        for d in DEPARTMENTS
    }
    witnesses = {
        d: Witness(
            d,
            party_keys[d],
            origin=config.origin,
            gateway_name=config.gateway_issuer,
            gateway_key=gateway_public,
            state=MemoryWitnessState(),
        )
        for d in DEPARTMENTS
    }
    return InProcessTransport(cores, witnesses)


def build_harness(
    tmp: Path,
    urls: dict[str, str],
    party_keys: dict[str, SM2PrivateKey],
    **settings: Any,
) -> Harness:
    keys_dir = tmp / "keys"
    keys_dir.mkdir(parents=True, exist_ok=True)
    save_private_key(party_keys["gateway"], keys_dir / "gateway.key")
    ring = KeyRing(keys_dir)
    idp = ring.ensure("idp")
    # The demo identity provider, as `tongban demo` enables it: tests mint with its key.
    settings = {"citizen_idp_demo": True, **settings}
    config = Settings(data_dir=tmp, public_url=PUBLIC_URL, checkpoint_interval=3600, **settings)
    stores = {d: DepartmentStore(DEPARTMENTS[d], urls[d]) for d in DEPARTMENTS}
    migrate(config)  # what `tongban db upgrade` does for a deployment
    gateway = build_gateway(
        config,
        transport=in_process_departments(config, stores, party_keys),
        department_keys={d: party_keys[d].public_key for d in DEPARTMENTS},
        start=False,
    )
    gateway.jwks_fetch = fetch_loopback_jwks  # a test's jwks_uri never leaves the host
    app = create_app(gateway)
    assert gateway.oauth is not None
    registry = gateway.oauth.registry
    secrets = {}
    for client_id, scopes in CLIENTS.items():
        secrets[client_id] = str(
            registry.register_client(client_id, client_id, scopes=scopes).secret
        )
    return Harness(gateway, app, app.test_client(), config, idp, secrets, stores)


def jws_parts(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes]:
    head, body, sig = token.split(".")

    def dec(s: str) -> bytes:
        return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))

    return json.loads(dec(head)), json.loads(dec(body)), dec(sig)
