"""Builds the cores from settings: the one place that knows how the parts fit together."""

from __future__ import annotations

from adapters.client import DepartmentClient, HttpTransport
from adapters.departments import DEPARTMENTS
from adapters.evaluate import Evaluator
from adapters.protocol import AdapterCore, RequestSigner
from adapters.store import DepartmentStore
from gateway.app import Gateway
from gateway.catalog import Catalog

from .config import DEPARTMENTS as DEPARTMENT_NAMES
from .config import Settings
from .keys import KeyRing

__all__ = ["build_adapter", "build_gateway"]


def build_adapter(settings: Settings, department: str) -> AdapterCore:
    dept = DEPARTMENTS[department]
    store = DepartmentStore(dept, settings.store_url(department))
    keys = KeyRing(settings.keys_dir)
    gateway_key = keys.public("gateway")
    return AdapterCore(
        Evaluator(store),
        keys.private(department),
        {gateway_key.key_id: gateway_key},
        gateway_issuer=settings.gateway_issuer,
    )


def build_gateway(settings: Settings) -> Gateway:
    keys = KeyRing(settings.keys_dir)
    signer = RequestSigner(keys.private("gateway"), issuer=settings.gateway_issuer)
    department_keys = {d: keys.public(d) for d in DEPARTMENT_NAMES if d in settings.adapter_urls}
    client = DepartmentClient(
        signer,
        HttpTransport(settings.adapter_urls),
        department_keys,
        timeout=settings.adapter_timeout,
    )
    return Gateway(catalog=Catalog.load(DEPARTMENTS), departments=client)
