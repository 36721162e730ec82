"""Gateway side of the adapter protocol: sign, send through a transport, verify.

The transport is the seam: :class:`HttpTransport` talks to adapter services over HTTP
(mutual TLS 1.3 with ``https://`` URLs and the gateway's certificate, tongban/tls.py),
:class:`InProcessTransport` calls an :class:`AdapterCore` directly (tests, embedded use).
"""

from __future__ import annotations

import json
import logging
import math
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from urllib3 import BaseHTTPResponse, HTTPConnectionPool, HTTPSConnectionPool, Timeout
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import HTTPError, SSLError
from urllib3.util import parse_url
from werkzeug.test import Client as WerkzeugClient

from tongban.federation.paillier import key_fingerprint, parse_public_key
from tongban.primitives.envelope import Sealer
from tongban.primitives.errors import DepartmentUnavailable, TongbanError, Unauthenticated
from tongban.primitives.gm import SM2PublicKey
from tongban.primitives.wire import PredicateCall, Tri
from tongban.tls import (
    CertificateRefused,
    ReloadingContext,
    TLSFiles,
    describe_tls_error,
    reloading_client_context,
)

from .protocol import (
    AdapterCore,
    Answer,
    RequestSigner,
    open_answer,
    seal_request,
    verify_answer,
    verify_batch_answer,
    verify_statistic_answer,
)
from .witness import Witness

__all__ = [
    "KEEPALIVE_EXPIRY",
    "DepartmentClient",
    "DepartmentRefused",
    "HttpTransport",
    "InProcessTransport",
    "Reply",
    "Transport",
    "WireRequest",
    "WireResponse",
    "cosign",
    "health",
    "send",
    "witnessed",
]

JOSE = "application/jose"
#: Seconds a kept-alive connection to an adapter may sit idle before it is closed rather
#: than reused: below the adapters' server keep-alive (tongban.serve.KEEPALIVE_TIMEOUT,
#: 5 s; gunicorn's default is 2 s), so the client never writes into a connection the
#: server is closing (a reused connection was once reset that way).
KEEPALIVE_EXPIRY = 1.5
_LOG_EVERY = 60.0
log = logging.getLogger("tongban.gateway.departments")


class DepartmentRefused(TongbanError):
    """The adapter answered with an error: the gateway asked something it should not have."""

    status = 502
    slug = "department-refused"
    title = "A department refused the request"


Reply = tuple[int, bytes]


@dataclass(frozen=True)
class WireRequest:
    """One HTTP request to a department's adapter (its path, without the URL's prefix)."""

    method: str
    path: str
    body: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class WireResponse:
    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


class Transport(Protocol):
    """How the gateway reaches a department: one method, shaped like httpx's
    ``BaseTransport.handle_request``. :class:`HttpTransport` sends it over the network;
    :class:`InProcessTransport` hands it to the adapter's own WSGI app. What the gateway
    asks of an adapter (:func:`send`, :func:`cosign`, :func:`witnessed`, :func:`health`)
    is written once, over this method. A department that cannot be reached raises
    :class:`DepartmentUnavailable`; any HTTP answer is returned, whatever its status."""

    def handle_request(
        self, department: str, request: WireRequest, timeout: float
    ) -> WireResponse: ...


def send(transport: Transport, department: str, token: str, timeout: float) -> Reply:
    """``POST /v1/evaluate``: a signed (and sealed) request, the adapter's answer."""
    request = WireRequest(
        "POST", "/v1/evaluate", token.encode("ascii"), {"Content-Type": JOSE, "Accept": JOSE}
    )
    resp = transport.handle_request(department, request, timeout)
    return resp.status, resp.body


def cosign(
    transport: Transport, department: str, request: Mapping[str, Any], timeout: float
) -> Reply:
    """``POST /v1/witness/cosign``: ask a witness to cosign a checkpoint."""
    body = json.dumps(dict(request)).encode()
    wire = WireRequest("POST", "/v1/witness/cosign", body, {"Content-Type": "application/json"})
    resp = transport.handle_request(department, wire, timeout)
    return resp.status, resp.body


def witnessed(transport: Transport, department: str, timeout: float) -> Reply:
    """``GET /v1/witness/checkpoint``: the witness's last cosigned checkpoint."""
    resp = transport.handle_request(
        department, WireRequest("GET", "/v1/witness/checkpoint"), timeout
    )
    return resp.status, resp.body


def health(transport: Transport, department: str, timeout: float) -> dict[str, Any]:
    """``GET /healthz``: the adapter's health body. An adapter whose source is not ready
    answers 503 with the same members (``"ready": false``), which is an answer too."""
    resp = transport.handle_request(department, WireRequest("GET", "/healthz"), timeout)
    try:
        body = json.loads(resp.body)
    except ValueError as exc:
        raise DepartmentUnavailable(f"department {department} did not answer") from exc
    if resp.status != 200 and not (
        resp.status == 503 and isinstance(body, dict) and "ready" in body
    ):
        raise DepartmentUnavailable(f"department {department} did not answer")
    return body if isinstance(body, dict) else {}


class InProcessTransport:
    """The adapters' own WSGI apps (``adapters.service.create_app``), called in this
    process through werkzeug's test client: the same routes, checks, size limits and
    problem responses as over HTTP, without a socket (tests, benchmarks, one-process
    setups). A witness without a core of the same name gets a witness-only app.
    ``cores`` and ``witnesses`` may change afterwards (a department taken away, another
    core put in): each app is built for the core and witness it serves."""

    def __init__(
        self, cores: Mapping[str, AdapterCore], witnesses: Mapping[str, Witness] | None = None
    ) -> None:
        self.cores = dict(cores)
        self.witnesses = dict(witnesses or {})
        self._apps: dict[str, tuple[tuple[int, int], Any]] = {}
        self._lock = threading.Lock()

    def _app(self, department: str) -> Any:
        core, witness = self.cores.get(department), self.witnesses.get(department)
        if core is None and witness is None:
            raise DepartmentUnavailable(f"department {department} is not connected")
        key = (id(core), id(witness))
        with self._lock:
            built = self._apps.get(department)
            if built is None or built[0] != key:
                from .service import create_app  # Flask: only where an adapter app is built

                built = (key, create_app(core, witness=witness))
                self._apps[department] = built
        return built[1]

    def handle_request(self, department: str, request: WireRequest, timeout: float) -> WireResponse:
        resp = WerkzeugClient(self._app(department)).open(
            request.path, method=request.method, data=request.body, headers=dict(request.headers)
        )
        return WireResponse(resp.status_code, resp.get_data(), dict(resp.headers))


class _IdleSince:
    """A pooled connection that remembers since when it has been idle."""

    idle_since: float | None = None


class _Connection(_IdleSince, HTTPConnection):
    pass


class _TLSConnection(_IdleSince, HTTPSConnection):
    pass


def _expire_idle(conn: Any, expiry: float) -> None:
    """Close ``conn`` if it sat idle for ``expiry`` seconds or more: the pool then opens a
    new one, instead of writing into a socket the server is about to close."""
    since = getattr(conn, "idle_since", None)
    if since is not None and conn.sock is not None and time.monotonic() - since >= expiry:
        conn.close()


class _Pool(HTTPConnectionPool):
    ConnectionCls = _Connection
    keepalive_expiry = KEEPALIVE_EXPIRY

    def _get_conn(self, timeout: float | None = None) -> Any:
        conn = super()._get_conn(timeout)
        _expire_idle(conn, self.keepalive_expiry)
        return conn

    def _put_conn(self, conn: Any) -> None:
        if conn is not None:
            conn.idle_since = time.monotonic()
        super()._put_conn(conn)


class _TLSPool(HTTPSConnectionPool):
    ConnectionCls = _TLSConnection
    keepalive_expiry = KEEPALIVE_EXPIRY

    def _get_conn(self, timeout: float | None = None) -> Any:
        conn = super()._get_conn(timeout)
        _expire_idle(conn, self.keepalive_expiry)
        return conn

    def _put_conn(self, conn: Any) -> None:
        if conn is not None:
            conn.idle_since = time.monotonic()
        super()._put_conn(conn)


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str
    port: int
    prefix: str  # the URL's path, without the trailing slash


def _target(department: str, url: str) -> _Target:
    parsed = parse_url(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"{department}: expected an http:// or https:// URL, got {url!r}")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return _Target(parsed.scheme, parsed.host.strip("[]"), port, (parsed.path or "").rstrip("/"))


class HttpTransport:
    """The adapters over HTTP(S): one urllib3 connection pool per department.

    With ``tls`` (the gateway's :class:`~tongban.tls.TLSFiles`, followed on disk: a
    replaced certificate is used for new connections; or a fixed ``ssl.SSLContext`` from
    :func:`tongban.tls.client_context`), an ``https://`` department is reached with mutual
    TLS 1.3: the gateway's certificate presented, the adapter's verified against the CA
    and against the department's NAME (``server_hostname``), whatever host the URL names.
    ``https://`` without ``tls`` verifies against the system's CAs and the URL's host;
    ``http://`` stays plain (tests, a loopback-only setup).

    Kept-alive connections idle for ``keepalive_expiry`` seconds are closed before reuse
    (below the adapters' server keep-alive, tongban.serve.KEEPALIVE_TIMEOUT, and below
    gunicorn's default of 2 s); TLS sessions are resumed on new connections.
    """

    def __init__(
        self,
        urls: Mapping[str, str],
        *,
        max_connections: int = 64,
        tls: TLSFiles | ssl.SSLContext | ReloadingContext | None = None,
        keepalive_expiry: float = KEEPALIVE_EXPIRY,
    ) -> None:
        self.urls = {name: url.rstrip("/") for name, url in urls.items()}
        self._targets = {name: _target(name, url) for name, url in self.urls.items()}
        self.max_connections = max_connections
        self.keepalive_expiry = keepalive_expiry
        self._tls: ssl.SSLContext | ReloadingContext | None = (
            reloading_client_context(tls) if isinstance(tls, TLSFiles) else tls
        )
        self._pools: dict[str, tuple[HTTPConnectionPool, ssl.SSLContext | None]] = {}
        self._lock = threading.Lock()
        self._logged: dict[tuple[str, str], float] = {}

    def _context(self) -> ssl.SSLContext | None:
        if isinstance(self._tls, ReloadingContext):
            return self._tls.current()
        return self._tls

    def _pool(self, department: str) -> tuple[HTTPConnectionPool, str]:
        target = self._targets.get(department)
        if target is None:
            raise DepartmentUnavailable(f"department {department} is not configured")
        context = self._context() if target.scheme == "https" else None
        entry = self._pools.get(department)
        if entry is not None and entry[1] is context:
            return entry[0], target.prefix
        with self._lock:
            entry = self._pools.get(department)
            if entry is not None and entry[1] is context:
                return entry[0], target.prefix
            pool: HTTPConnectionPool
            common: dict[str, Any] = {
                "maxsize": self.max_connections,
                "block": True,
                "retries": False,
            }
            if target.scheme == "http":
                pool = _Pool(target.host, target.port, **common)
            elif context is None:
                pool = _TLSPool(target.host, target.port, **common)
            else:
                pool = _TLSPool(
                    target.host,
                    target.port,
                    ssl_context=context,
                    server_hostname=department,
                    **common,
                )
            pool.keepalive_expiry = self.keepalive_expiry
            self._pools[department] = (pool, context)
        if entry is not None:
            # The certificate changed: idle connections close now, busy ones when released.
            entry[0].close()
        return pool, target.prefix

    def _log_failure(self, department: str, exc: BaseException) -> None:
        """A TLS refusal, once a minute per department and reason (a broken certificate
        would otherwise log every request); other failures are the caller's to count."""
        reason = describe_tls_error(exc, whose=f"department {department}'s certificate")
        if not _is_tls_failure(exc):
            log.debug("department %s: %s", department, reason)
            return
        key = (department, reason)
        now = time.monotonic()
        if now - self._logged.get(key, -_LOG_EVERY) >= _LOG_EVERY:
            self._logged[key] = now
            log.warning("refused the TLS connection to department %s: %s", department, reason)

    def _request(
        self,
        department: str,
        method: str,
        path: str,
        body: bytes | None,
        headers: Mapping[str, str],
        timeout: float,
    ) -> BaseHTTPResponse:
        pool, prefix = self._pool(department)
        try:
            return pool.urlopen(
                method,
                prefix + path,
                body=body,
                headers=dict(headers),
                timeout=Timeout(connect=timeout, read=timeout),
                pool_timeout=max(1, math.ceil(timeout)),
                retries=False,
                redirect=False,
                assert_same_host=False,
                preload_content=True,
            )
        except (HTTPError, OSError) as exc:
            self._log_failure(department, exc)
            raise DepartmentUnavailable(f"department {department} did not answer") from exc

    def handle_request(self, department: str, request: WireRequest, timeout: float) -> WireResponse:
        resp = self._request(
            department, request.method, request.path, request.body, request.headers, timeout
        )
        return WireResponse(resp.status, resp.data, dict(resp.headers))

    def close(self) -> None:
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool, _ in pools:
            pool.close()


def _is_tls_failure(exc: BaseException) -> bool:
    todo: list[BaseException] = [exc]
    seen: set[int] = set()
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ssl.SSLError | SSLError | CertificateRefused):
            return True
        todo += [e for e in (current.__cause__, current.__context__) if e is not None]
        todo += [a for a in current.args if isinstance(a, BaseException)]
    return False


class DepartmentClient:
    """Asks one department one predicate and returns its verified, signed answer."""

    def __init__(
        self,
        signer: RequestSigner,
        transport: Transport,
        department_keys: Mapping[str, SM2PublicKey],
        *,
        timeout: float = 2.0,
        envelope: bool = True,
        envelope_keys: Mapping[str, SM2PublicKey] | None = None,
    ) -> None:
        """``envelope``: seal every request to the department's ``envelope_keys`` entry (by
        default its ``department_keys`` one) and open its sealed answer (docs/envelope.md);
        ``False`` for the benchmark's comparison only."""
        self.signer = signer
        self.transport = transport
        self.keys = dict(department_keys)
        self.timeout = timeout
        self.sealer = Sealer() if envelope else None
        self.envelope_keys = self.keys if envelope_keys is None else dict(envelope_keys)

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
        sealed = None
        if self.sealer is not None:
            key = self.envelope_keys.get(department)
            if key is None:
                raise DepartmentUnavailable(f"department {department} has no registered key")
            sealed = seal_request(self.sealer, key, token)
            token = sealed.envelope
        status, body = send(self.transport, department, token, timeout)
        if status >= 500:
            raise DepartmentUnavailable(f"department {department} failed (HTTP {status})")
        if status != 200:
            raise DepartmentRefused(f"department {department} refused the request (HTTP {status})")
        if sealed is not None:
            return open_answer(sealed, body)
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
            body = health(self.transport, department, min(self.timeout, 1.0))
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
