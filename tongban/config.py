"""Configuration: one frozen value, built once from ``TONGBAN_*`` variables and flags."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

__all__ = ["Settings"]

DEPARTMENTS = ("health", "police", "civil", "hrss", "medins")


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path("demo-data")
    # Department store URLs; a department absent here uses DIR/departments/<name>.db.
    store_urls: Mapping[str, str] = field(default_factory=dict)
    # Adapter service URLs, as the gateway reaches them.
    adapter_urls: Mapping[str, str] = field(default_factory=dict)
    adapter_timeout: float = 2.0
    gateway_issuer: str = "tongban-gateway"
    public_url: str = "http://127.0.0.1:8080"
    audit_url: str | None = None  # default: DIR/audit.db
    gateway_db_url: str | None = None  # requesters, policies, consents; default DIR/gateway.db
    checkpoint_interval: float = 2.0
    idp_issuer: str = "https://idp.tongban.example"
    sm2_backend: str | None = None  # "tongsuo" or "gmssl"; None chooses automatically

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        if "TONGBAN_DATA_DIR" in env:
            values["data_dir"] = Path(env["TONGBAN_DATA_DIR"])
        if "TONGBAN_ADAPTER_TIMEOUT" in env:
            values["adapter_timeout"] = float(env["TONGBAN_ADAPTER_TIMEOUT"])
        if "TONGBAN_PUBLIC_URL" in env:
            values["public_url"] = env["TONGBAN_PUBLIC_URL"]
        if "TONGBAN_AUDIT_URL" in env:
            values["audit_url"] = env["TONGBAN_AUDIT_URL"]
        if "TONGBAN_GATEWAY_DB_URL" in env:
            values["gateway_db_url"] = env["TONGBAN_GATEWAY_DB_URL"]
        if "TONGBAN_SM2_BACKEND" in env:
            values["sm2_backend"] = env["TONGBAN_SM2_BACKEND"]
        if "TONGBAN_CHECKPOINT_INTERVAL" in env:
            values["checkpoint_interval"] = float(env["TONGBAN_CHECKPOINT_INTERVAL"])
        stores = {
            d: env[f"TONGBAN_STORE_URL_{d.upper()}"]
            for d in DEPARTMENTS
            if f"TONGBAN_STORE_URL_{d.upper()}" in env
        }
        adapters = {
            d: env[f"TONGBAN_ADAPTER_URL_{d.upper()}"]
            for d in DEPARTMENTS
            if f"TONGBAN_ADAPTER_URL_{d.upper()}" in env
        }
        if stores:
            values["store_urls"] = stores
        if adapters:
            values["adapter_urls"] = adapters
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    def store_url(self, department: str) -> str:
        url = self.store_urls.get(department)
        if url:
            return url
        return f"sqlite:///{self.data_dir / 'departments' / f'{department}.db'}"

    def audit_store_url(self) -> str:
        return self.audit_url or f"sqlite:///{self.data_dir / 'audit.db'}"

    def gateway_store_url(self) -> str:
        return self.gateway_db_url or f"sqlite:///{self.data_dir / 'gateway.db'}"

    @property
    def origin(self) -> str:
        """The audit log's name in checkpoints: the gateway's host and path."""
        return self.public_url.split("://", 1)[-1].rstrip("/") + "/audit"

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"
