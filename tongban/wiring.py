"""Builds the cores from settings: the one place that knows how the parts fit together."""

from __future__ import annotations

from adapters.client import DepartmentClient, HttpTransport
from adapters.departments import DEPARTMENTS
from adapters.evaluate import Evaluator
from adapters.protocol import AdapterCore, RequestSigner
from adapters.store import DepartmentStore
from adapters.witness import MetaWitnessState, Witness
from audit.log import AuditLog
from audit.vault import Pseudonymizer
from gateway.catalog import Catalog
from gateway.checkpoints import Checkpointer
from gateway.oauth import CitizenTokenVerifier, ClientRegistry, SqlReplayCache, TokenIssuer
from gateway.services import AuditEvents, Gateway

from .config import DEPARTMENTS as DEPARTMENT_NAMES
from .config import Settings
from .keys import KeyRing

__all__ = ["build_adapter", "build_gateway", "build_registry"]


def build_adapter(settings: Settings, department: str) -> tuple[AdapterCore, Witness]:
    dept = DEPARTMENTS[department]
    store = DepartmentStore(dept, settings.store_url(department))
    keys = KeyRing(settings.keys_dir)
    gateway_key = keys.public("gateway")
    own = keys.private(department)
    core = AdapterCore(
        Evaluator(store),
        own,
        {gateway_key.key_id: gateway_key},
        gateway_issuer=settings.gateway_issuer,
    )
    witness = Witness(
        department,
        own,
        origin=settings.origin,
        gateway_name=settings.gateway_issuer,
        gateway_key=gateway_key,
        state=MetaWitnessState(store),
    )
    return core, witness


def build_registry(settings: Settings) -> ClientRegistry:
    registry = ClientRegistry(settings.gateway_store_url())
    registry.create_schema()
    return registry


def build_gateway(settings: Settings, *, start: bool = True) -> Gateway:
    keys = KeyRing(settings.keys_dir)
    signing_key = keys.private("gateway")
    signer = RequestSigner(signing_key, issuer=settings.gateway_issuer)
    connected = [d for d in DEPARTMENT_NAMES if d in settings.adapter_urls]
    department_keys = {d: keys.public(d) for d in connected}
    transport = HttpTransport(settings.adapter_urls)
    client = DepartmentClient(signer, transport, department_keys, timeout=settings.adapter_timeout)
    pseudonyms = Pseudonymizer(keys.secret("pseudonym", 32), keys.secret("vault", 16))
    audit = AuditLog(settings.audit_store_url(), pseudonyms, origin=settings.origin).open()
    checkpointer = Checkpointer(
        audit,
        signing_key,
        name=settings.gateway_issuer,
        witnesses=department_keys,
        transport=transport,
        interval=settings.checkpoint_interval,
        timeout=settings.adapter_timeout,
    )
    registry = build_registry(settings)
    issuer = TokenIssuer(
        signing_key, issuer=settings.public_url, audience=settings.public_url + "/v1"
    )
    idp = keys.ensure("idp").public_key
    citizen = CitizenTokenVerifier(
        issuer=settings.idp_issuer, audience=settings.public_url, keys={idp.key_id: idp}
    )
    gateway = Gateway(
        catalog=Catalog.load(DEPARTMENTS),
        departments=client,
        audit=audit,
        checkpointer=checkpointer,
        name=settings.gateway_issuer,
        signing_key=signing_key,
        witness_keys=department_keys,
        extras={
            "oauth": {
                "registry": registry,
                "issuer": issuer,
                "token_endpoint": settings.public_url + "/oauth/token",
                "replay_cache": SqlReplayCache(registry.engine),
                "citizen_verifier": citizen,
            }
        },
    )
    if start:
        AuditEvents(audit).append(
            {"kind": "lifecycle", "event": "gateway_started", "origin": settings.origin}
        )
        checkpointer.start()
    return gateway
