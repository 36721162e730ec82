"""Configuration: one frozen value, built once from ``TONGBAN_*`` variables and flags."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tongban.adapters.builtin import builtin_names

__all__ = ["Settings"]

# The built-in departments, read from their files (adapters/departments/*.toml).
DEPARTMENTS = builtin_names()


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path("demo-data")
    # Department store URLs; a department absent here uses DIR/departments/<name>.db.
    store_urls: Mapping[str, str] = field(default_factory=dict)
    # Adapter service URLs, as the gateway reaches them.
    adapter_urls: Mapping[str, str] = field(default_factory=dict)
    # Department files replacing built-in departments (docs/departments.md): the gateway
    # validates claims against their predicates (TONGBAN_DEPARTMENT_FILES, os.pathsep
    # separated).
    department_files: tuple[Path, ...] = ()
    adapter_timeout: float = 2.0
    gateway_issuer: str = "tongban-gateway"
    public_url: str = "http://127.0.0.1:8080"
    # The audit log's name in checkpoints (TONGBAN_LOG_ORIGIN). Unset: derived from
    # public_url. A log keeps the origin it was created with (tongban.audit.log), so
    # witnesses of an existing log are configured with that one (the demo does so).
    log_origin: str | None = None
    audit_url: str | None = None  # default: DIR/audit.db
    gateway_db_url: str | None = None  # requesters, policies, consents; default DIR/gateway.db
    checkpoint_interval: float = 2.0
    # Cosignatures a checkpoint needs to count as witnessed (TONGBAN_WITNESS_QUORUM); 0:
    # a majority of the witnesses. A checkpoint below it is flagged, not refused.
    witness_quorum: int = 0
    # Entries, counted from the newest, that the gateway re-hashes from their own bytes at
    # start-up (TONGBAN_AUDIT_STARTUP_CHECK); 0: all of them. Older ones are checked
    # through their stored leaf hashes against the latest checkpoint only.
    audit_startup_check: int = 0
    # Seconds between a gunicorn worker's checks for a policy another worker approved.
    policy_poll_interval: float = 2.0
    idp_issuer: str = "https://idp.tongban.example"
    sm2_backend: str | None = None  # "tongsuo" or "gmssl"; None chooses automatically
    # Encrypted statistics: each analyst's lifetime differential-privacy budget (sum of the
    # epsilons of its DP jobs), and whether jobs without noise are refused.
    dp_budget: float = 10.0
    stats_require_dp: bool = False
    # Small-cell suppression threshold: the gateway's for jobs, an adapter's own floor.
    stats_threshold: int = 10
    # Rate limits of the check pipeline (gateway/ratelimit.py), token buckets shared by all
    # workers through the gateway database. A burst or rate of 0 turns that limit off.
    # Per requester: a check costs 1, a batch its subject count (capped at the burst).
    rate_requester_burst: float = 20_000
    rate_requester_per_second: float = 5_000
    # Per (requester, subject): a check or a batch costs 1 per distinct subject.
    rate_subject_burst: float = 30
    rate_subject_per_second: float = 0.5
    # Seconds a gunicorn thread may spend on one request before a slow client is cut off
    # (tongban/gunicorn_worker.py; only with that worker class).
    request_read_timeout: float = 10.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        parsers: dict[str, Any] = {
            "data_dir": Path,
            "adapter_timeout": float,
            "public_url": str,
            "log_origin": str,
            "audit_url": str,
            "gateway_db_url": str,
            "sm2_backend": str,
            "dp_budget": float,
            "stats_threshold": int,
            "stats_require_dp": lambda v: v.lower() in ("1", "true", "yes"),
            "checkpoint_interval": float,
            "witness_quorum": int,
            "audit_startup_check": int,
            "policy_poll_interval": float,
            "rate_requester_burst": float,
            "rate_requester_per_second": float,
            "rate_subject_burst": float,
            "rate_subject_per_second": float,
            "request_read_timeout": float,
            "department_files": lambda v: tuple(Path(p) for p in v.split(os.pathsep) if p),
        }
        aliases = {"gateway_db_url": "TONGBAN_GATEWAY_DB_URL"}
        for name, parse in parsers.items():
            var = aliases.get(name, f"TONGBAN_{name.upper()}")
            if var in env:
                values[name] = parse(env[var])
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
        """The audit log's name in checkpoints, as configured: ``log_origin``, else the
        gateway's host and path. A log created under another name keeps that one."""
        if self.log_origin:
            return self.log_origin
        return self.public_url.split("://", 1)[-1].rstrip("/") + "/audit"

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"
