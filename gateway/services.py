"""The gateway's parts, held together: what the views and the CLI work with."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from tongban.adapters.client import DepartmentClient
from tongban.audit.log import AuditLog
from tongban.primitives.errors import TongbanError
from tongban.primitives.gm import SM2PrivateKey, SM2PublicKey
from tongban.primitives.idnumber import parse
from tongban.primitives.metrics_auth import MetricsCredential

from .catalog import Catalog
from .checkpoints import Checkpointer

if TYPE_CHECKING:  # these modules import this one; types only
    from tongban.policies import PolicyAdmin
    from tongban.primitives.replay import ReplayCache

    from .answers import AnswerSigner
    from .checks import Checker
    from .consent import ConsentStore
    from .federation_jobs import FederationJobs
    from .jobs import JobPolicy
    from .oauth import CitizenTokenVerifier, ClientRegistry, TokenIssuer
    from .oauth.throttle import TokenThrottle
    from .pages.store import PageSessionStore
    from .statistics import StatisticsService

__all__ = ["AuditEvents", "Gateway", "OAuthParts", "utc_now"]


def utc_now() -> str:
    """Entry timestamps: UTC, millisecond precision, as text (no floats in entries)."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AuditEvents:
    """The audit sink handed to cores that emit events (policy changes, consents): it
    stamps the time and appends durably; if the append fails, the caller's change fails."""

    def __init__(self, log: AuditLog) -> None:
        self.log = log

    def append(self, event: Mapping[str, Any], subject_id: str | None = None) -> int:
        entry = dict(event)
        entry.setdefault("kind", "event")
        entry.setdefault("time", utc_now())
        return self.log.append(entry, subject_id)

    def officer_lookup(self, officer: str, id_number: str) -> str:
        """Record that ``officer`` looked a citizen up (an access to personal data in its
        own right, shown on the citizen's access log) and return the citizen's pseudonym,
        the key of the log's subject column. An invalid number raises, before anything is
        written."""
        number = parse(id_number).number
        self.append({"kind": "officer_lookup", "requester": officer}, subject_id=number)
        return self.log.pseudonyms.pseudonym(number)


@dataclass(frozen=True)
class OAuthParts:
    """What the OAuth token endpoint and the bearer checks need."""

    registry: ClientRegistry
    issuer: TokenIssuer
    token_endpoint: str
    replay_cache: ReplayCache | None = None
    citizen_verifier: CitizenTokenVerifier | None = None
    token_throttle: TokenThrottle | None = None  # None: init_oauth builds the default


@dataclass
class Gateway:
    """Every part is optional but the catalog and the department client, so tests can
    build only what they exercise; the app registers the endpoints of the parts present."""

    catalog: Catalog
    departments: DepartmentClient
    audit: AuditLog | None = None
    checkpointer: Checkpointer | None = None
    name: str = "tongban-gateway"
    signing_key: SM2PrivateKey | None = None
    witness_keys: dict[str, SM2PublicKey] = field(default_factory=dict)
    oauth: OAuthParts | None = None
    checker: Checker | None = None
    policy_admin: PolicyAdmin | None = None
    answers: AnswerSigner | None = None
    consents: ConsentStore | None = None
    statistics: StatisticsService | None = None
    jobs: JobPolicy | None = None  # policy for statistics and training jobs
    federation: FederationJobs | None = None  # federated training jobs
    # Who may read /metrics (the operator's metrics token); None: nobody.
    metrics: MetricsCredential | None = None
    # The pages' server-side sessions (the gateway database's page_sessions table).
    page_sessions: PageSessionStore | None = None
    # The gateway host's key directory, for key rotations approved through the API.
    keys_dir: Path | None = None
    # How a proposed client's jwks_uri is fetched (default: https, or loopback http).
    jwks_fetch: Callable[[str], Mapping[str, Any]] | None = None
    # The database engines the parts above opened, disposed of by close().
    engines: list[Engine] = field(default_factory=list)

    def _department_reports(self) -> dict[str, dict[str, object]]:
        names = self.departments.departments
        with ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:
            return dict(zip(names, pool.map(self.departments.health, names), strict=True))

    def _audit_status(self) -> dict[str, object] | None:
        if self.audit is None:
            return None
        audit: dict[str, object] = {"size": self.audit.size}
        if self.checkpointer is not None:
            audit["checkpoint"] = self.checkpointer.status()
        return audit

    def health(self) -> dict[str, object]:
        reports = self._department_reports()
        ready = all(r["reachable"] for r in reports.values())
        body: dict[str, object] = {"status": "ok" if ready else "degraded", "departments": reports}
        audit = self._audit_status()
        if audit is not None:
            checkpoint = audit.get("checkpoint")
            if isinstance(checkpoint, dict) and checkpoint["diverged"] is not None:
                body["status"] = "unavailable"
            body["audit"] = audit
        return body

    def readiness(self) -> dict[str, object]:
        """``/readyz``: the stores answer a query now, the log is not behind its witnesses;
        the departments are reported (one of them down only degrades answers)."""
        stores: dict[str, bool] = {}
        if self.oauth is not None:
            stores["gateway"] = _answers(self.oauth.registry.engine)
        if self.audit is not None:
            stores["audit"] = _answers(self.audit.engine)
        reasons = [f"store {name} does not answer" for name, ok in stores.items() if not ok]
        try:
            audit = self._audit_status()
        except (SQLAlchemyError, TongbanError):  # a store away: already a reason
            audit = None
        checkpoint = audit.get("checkpoint") if isinstance(audit, dict) else None
        if isinstance(checkpoint, dict) and checkpoint.get("diverged") is not None:
            reasons.append("the audit log is behind what a witness cosigned")
        body: dict[str, object] = {
            "status": "not_ready" if reasons else "ready",
            "stores": stores,
            "departments": self._department_reports(),
            "reasons": reasons,
        }
        if audit is not None:
            body["audit"] = audit
        return body

    def close(self) -> None:
        if self.checkpointer is not None:
            self.checkpointer.stop()
        if self.statistics is not None:
            self.statistics.close()
        if self.federation is not None:
            self.federation.close()
        if self.audit is not None:
            self.audit.close()
        if self.oauth is not None and self.oauth.token_throttle is not None:
            self.oauth.token_throttle.dispose()
        for engine in self.engines:
            engine.dispose()


def _answers(engine: Engine) -> bool:
    """Whether a store answers ``SELECT 1`` now (the error itself is not reported)."""
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError:
        return False
    return True
