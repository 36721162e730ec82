"""Gateway side of the adapter protocol: sign, send through a transport, verify.

The transport is the seam: :class:`HttpTransport` talks to adapter services over HTTP,
:class:`InProcessTransport` calls an :class:`AdapterCore` directly (tests, embedded use).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any, Protocol

import httpx

from tongban.federation.paillier import key_fingerprint, parse_public_key
from tongban.primitives.errors import DepartmentUnavailable, TongbanError, Unauthenticated
from tongban.primitives.gm import SM2PublicKey
from tongban.primitives.wire import PredicateCall, Tri

from .protocol import (
    AdapterCore,
    Answer,
    RequestSigner,
    verify_answer,
    verify_batch_answer,
    verify_statistic_answer,
)
from .witness import Witness

__all__ = [
    "DepartmentClient",
    "DepartmentRefused",
    "HttpTransport",
    "InProcessTransport",
    "Reply",
    "Transport",
]

JOSE = "application/jose"


class DepartmentRefused(TongbanError):
    """The adapter answered with an error: the gateway asked something it should not have."""

    status = 502
    slug = "department-refused"
    title = "A department refused the request"


Reply = tuple[int, bytes]


class Transport(Protocol):
    def send(self, department: str, token: str, timeout: float) -> Reply: ...

    def health(self, department: str, timeout: float) -> dict[str, Any]: ...

    def cosign(self, department: str, request: Mapping[str, Any], timeout: float) -> Reply: ...


class InProcessTransport:
    def __init__(
        self, cores: Mapping[str, AdapterCore], witnesses: Mapping[str, Witness] | None = None
    ) -> None:
        self.cores = dict(cores)
        self.witnesses = dict(witnesses or {})

    def cosign(self, department: str, request: Mapping[str, Any], timeout: float) -> Reply:
        witness = self.witnesses.get(department)
        if witness is None:
            raise DepartmentUnavailable(f"department {department} is not a witness")
        try:
            proof = [bytes.fromhex(h) for h in request["consistency_path"]]
            line = witness.cosign(request["note"], request["from_size"], proof).line()
        except TongbanError as exc:
            return exc.status, json.dumps(exc.to_problem()).encode()
        return 200, json.dumps({"cosignature": line}).encode()

    def send(self, department: str, token: str, timeout: float) -> Reply:
        core = self.cores.get(department)
        if core is None:
            raise DepartmentUnavailable(f"department {department} is not connected")
        try:
            return 200, core.handle(token).encode("ascii")
        except TongbanError as exc:
            return exc.status, json.dumps(exc.to_problem()).encode()

    def health(self, department: str, timeout: float) -> dict[str, Any]:
        core = self.cores.get(department)
        if core is None:
            raise DepartmentUnavailable(f"department {department} is not connected")
        return core.health()


class HttpTransport:
    def __init__(self, urls: Mapping[str, str], *, max_connections: int = 64) -> None:
        self.urls = {name: url.rstrip("/") for name, url in urls.items()}
        limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        self.http = httpx.Client(limits=limits, trust_env=False)

    def _url(self, department: str, path: str) -> str:
        base = self.urls.get(department)
        if base is None:
            raise DepartmentUnavailable(f"department {department} is not configured")
        return base + path

    def send(self, department: str, token: str, timeout: float) -> Reply:
        try:
            resp = self.http.post(
                self._url(department, "/v1/evaluate"),
                content=token.encode("ascii"),
                headers={"Content-Type": JOSE, "Accept": JOSE},
                timeout=timeout,
            )
        except httpx.HTTPError as exc:
            raise DepartmentUnavailable(f"department {department} did not answer") from exc
        return resp.status_code, resp.content

    def cosign(self, department: str, request: Mapping[str, Any], timeout: float) -> Reply:
        try:
            resp = self.http.post(
                self._url(department, "/v1/witness/cosign"), json=dict(request), timeout=timeout
            )
        except httpx.HTTPError as exc:
            raise DepartmentUnavailable(f"department {department} did not answer") from exc
        return resp.status_code, resp.content

    def health(self, department: str, timeout: float) -> dict[str, Any]:
        """The adapter's health body; an adapter whose source is not ready answers 503
        with the same members (``"ready": false``), which is an answer too."""
        try:
            resp = self.http.get(self._url(department, "/healthz"), timeout=timeout)
            body = resp.json()
            if resp.status_code != 200 and not (
                resp.status_code == 503 and isinstance(body, dict) and "ready" in body
            ):
                resp.raise_for_status()
        except (httpx.HTTPError, ValueError) as exc:
            raise DepartmentUnavailable(f"department {department} did not answer") from exc
        return body if isinstance(body, dict) else {}

    def close(self) -> None:
        self.http.close()


class DepartmentClient:
    """Asks one department one predicate and returns its verified, signed answer."""

    def __init__(
        self,
        signer: RequestSigner,
        transport: Transport,
        department_keys: Mapping[str, SM2PublicKey],
        *,
        timeout: float = 2.0,
    ) -> None:
        self.signer = signer
        self.transport = transport
        self.keys = dict(department_keys)
        self.timeout = timeout

    @property
    def departments(self) -> list[str]:
        return sorted(self.keys)

    def _key(self, department: str) -> SM2PublicKey:
        key = self.keys.get(department)
        if key is None:
            raise DepartmentUnavailable(f"department {department} has no registered key")
        return key

    def _exchange(self, department: str, token: str, timeout: float) -> str:
        """Send a signed request; the department's signed answer, or the error it means."""
        status, body = self.transport.send(department, token, timeout)
        if status >= 500:
            raise DepartmentUnavailable(f"department {department} failed (HTTP {status})")
        if status != 200:
            raise DepartmentRefused(f"department {department} refused the request (HTTP {status})")
        try:
            return body.decode("ascii")
        except UnicodeDecodeError as exc:
            raise Unauthenticated("department answer is not a JWS") from exc

    def evaluate(self, department: str, call: PredicateCall) -> Answer:
        key = self._key(department)
        token, jti = self.signer.sign(department, call)
        return verify_answer(
            self._exchange(department, token, self.timeout),
            department=department,
            department_key=key,
            request_jti=jti,
            predicate=call.predicate,
            gateway_issuer=self.signer.issuer,
            now=time.time(),
        )

    def evaluate_batch(
        self, department: str, predicate: str, params: Mapping[str, str], subjects: list[str]
    ) -> list[Tri]:
        """One predicate over up to MAX_BATCH subjects in one signed round trip."""
        key = self._key(department)
        token, jti = self.signer.sign_batch(department, predicate, params, subjects)
        return verify_batch_answer(
            self._exchange(department, token, self.timeout * 5),
            department=department,
            department_key=key,
            request_jti=jti,
            predicate=predicate,
            count=len(subjects),
            gateway_issuer=self.signer.issuer,
        )

    def contribute(
        self,
        department: str,
        name: str,
        params: Mapping[str, str],
        job: str,
        key_jwk: Mapping[str, Any],
        parties: int,
        release: Mapping[str, Any] | None = None,
    ) -> list[int]:
        """A department's encrypted vector of one statistic, its signature verified.

        The ciphertexts are returned as integers; their count and membership in
        ``Z*_{n^2}`` are the aggregator's to check (it knows the layout).
        """
        key = self._key(department)
        fingerprint = key_fingerprint(parse_public_key(key_jwk))
        token, jti = self.signer.sign_statistic(
            department, name, params, job, key_jwk, parties, release
        )
        return verify_statistic_answer(
            self._exchange(department, token, self.timeout * 5),
            department=department,
            department_key=key,
            request_jti=jti,
            statistic=name,
            job=job,
            key_fingerprint=fingerprint,
            gateway_issuer=self.signer.issuer,
            release=release,
        )

    def health(self, department: str) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            body = self.transport.health(department, min(self.timeout, 1.0))
        except DepartmentUnavailable:
            return {"reachable": False}
        status = body.get("status")
        report: dict[str, Any] = {
            "reachable": True,
            "latency_ms": round((time.perf_counter() - started) * 1000, 2),
            "status": status if isinstance(status, str) else "unavailable",
            # An adapter that says nothing about readiness is ready when it is "ok".
            "ready": bool(body.get("ready", status == "ok")),
        }
        source = body.get("source")
        if isinstance(source, dict) and isinstance(source.get("kind"), str):
            report["source"] = source["kind"]
        return report
