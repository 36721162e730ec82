"""A whole gateway for the hostile-input tests: built as ``tongban gateway serve`` builds it
(``build_gateway`` + ``create_app``), with no department connected (every answer is
``undetermined``), so every route can be hammered without a generated population."""

from __future__ import annotations

import base64
import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from tongban.config import Settings
from tongban.gateway.app import create_app
from tongban.gateway.client_changes import fetch_loopback_jwks
from tongban.gateway.consent import consents_table as consent_table
from tongban.gateway.oauth import mint_citizen_token
from tongban.gateway.services import Gateway
from tongban.keys import KeyRing
from tongban.primitives.gm import SM2PrivateKey
from tongban.primitives.idnumber import make_id
from tongban.provision import migrate
from tongban.wiring import build_gateway

PUBLIC_URL = "http://gw.test"
CLIENTS: dict[str, tuple[str, ...]] = {
    "edu-bureau": ("checks", "checks:batch"),
    "insurer-a": ("checks", "checks:batch"),
    "privacy-officer": ("audit:read",),
    "admin-1": ("admin",),
    "admin-2": ("admin",),
    "analyst": ("statistics",),
    "fed-admin": ("federation",),
}
ADULT = make_id("110105", dt.date(1990, 5, 17), 123)
OTHER_ADULT = make_id("150622", dt.date(1985, 1, 2), 456)


@dataclass
class Hostile:
    gateway: Gateway
    app: Flask
    client: FlaskClient
    settings: Settings
    idp: SM2PrivateKey
    secrets: dict[str, str]
    tokens: dict[str, str] = field(default_factory=dict)

    def basic(self, client_id: str, secret: str | None = None) -> dict[str, str]:
        raw = f"{client_id}:{secret or self.secrets[client_id]}".encode()
        return {"Authorization": "Basic " + base64.b64encode(raw).decode()}

    def token(self, client_id: str) -> str:
        if client_id not in self.tokens:
            resp = self.client.post(
                "/oauth/token",
                data={"grant_type": "client_credentials"},
                headers=self.basic(client_id),
            )
            assert resp.status_code == 200, resp.get_data(as_text=True)
            self.tokens[client_id] = resp.get_json()["access_token"]
        return self.tokens[client_id]

    def auth(self, client_id: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(client_id)}"}

    def citizen(self, id_number: str = ADULT) -> dict[str, str]:
        token = mint_citizen_token(
            self.idp, id_number, issuer=self.settings.idp_issuer, audience=PUBLIC_URL
        )
        return {"Authorization": f"Bearer {token}"}

    def audit_size(self) -> int:
        assert self.gateway.audit is not None
        return self.gateway.audit.refresh()

    def consent_rows(self) -> int:
        assert self.gateway.consents is not None
        with self.gateway.consents.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(consent_table)).scalar_one())

    def close(self) -> None:
        self.gateway.close()


def build_hostile(
    tmp: Path, *, clients: dict[str, tuple[str, ...]] = CLIENTS, **settings: Any
) -> Hostile:
    ring = KeyRing(tmp / "keys")
    ring.ensure("gateway")
    idp = ring.ensure("idp")
    # The demo identity provider, as `tongban demo` enables it: tests mint with its key.
    settings = {"citizen_idp_demo": True, **settings}
    config = Settings(data_dir=tmp, public_url=PUBLIC_URL, checkpoint_interval=3600, **settings)
    migrate(config)  # what `tongban db upgrade` does for a deployment
    gateway = build_gateway(config, start=False)
    gateway.jwks_fetch = fetch_loopback_jwks  # the fuzzer's jwks_uri never leaves the host
    app = create_app(gateway)
    assert gateway.oauth is not None
    registry = gateway.oauth.registry
    secrets = {
        cid: str(registry.register_client(cid, cid, scopes=scopes).secret)
        for cid, scopes in clients.items()
    }
    return Hostile(gateway, app, app.test_client(), config, idp, secrets)


def check_body(id_number: str = ADULT, **overrides: Any) -> dict[str, Any]:
    """A check the demo policy answers for ``edu-bureau`` (statutory purpose, no consent)."""
    body: dict[str, Any] = {
        "subject": {"id_number": id_number},
        "claim": "birth_registered",
        "purpose": "school_enrollment",
    }
    body.update(overrides)
    return body
