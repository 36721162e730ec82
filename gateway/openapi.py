"""The gateway's OpenAPI 3.1 document, its problem-type registry, and the docs pages.

:func:`build_openapi` writes the document from the operations every view module declares
(:data:`OPERATIONS`, see :mod:`gateway.operations`) and the components of the models they
name (:mod:`gateway.openapi_schemas`); :func:`problem_types` walks the one error tree
(``TongbanError.__subclasses__()``, recursively, after importing every module that defines
errors) so a new error class appears in ``x-problem-types`` without anyone listing it;
:func:`docs_blueprint` serves ``/openapi.json`` and ``/docs``, Swagger UI vendored from npm
with its scripts and style sheet (no CDN, nothing fetched from elsewhere).
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata, resources
from typing import Any

from flask import Blueprint, Response, request
from pydantic import BaseModel

from tongban.primitives.errors import PROBLEM_BASE, NotFound, TongbanError

from . import (
    views_admin,
    views_audit,
    views_checks,
    views_citizen,
    views_federation,
    views_statistics,
)
from .catalog import Catalog
from .models import AnswerClaims, BatchAnswerClaims, ConsentArtefactClaims, Problem
from .oauth.registry import KNOWN_SCOPES
from .openapi_schemas import Json, component_schemas
from .operations import Operation, Out, paths
from .views_operations import OPERATIONS as SERVICE_OPERATIONS

__all__ = [
    "DOCS_ASSETS",
    "ERROR_MODULES",
    "OPENAPI_VERSION",
    "OPERATIONS",
    "ProblemType",
    "build_openapi",
    "docs_blueprint",
    "error_classes",
    "problem_types",
]

OPENAPI_VERSION = "3.1.0"

# The /docs page's files under gateway/static: our script that starts Swagger UI, and
# Swagger UI itself (swagger-ui-dist from npm, vendored: gateway/static/README.md).
DOCS_ASSETS = {
    "docs-init.js": "text/javascript",
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
}
_TEXT = {"type": "string"}
_NOT_MODIFIED = Out(None, "Not modified (If-None-Match).", 304)
_OPENAPI = Operation(
    "GET",
    "/openapi.json",
    "openapi",
    "docs",
    "This document",
    (Out({"type": "object"}, "OpenAPI 3.1."), _NOT_MODIFIED),
)
_DOCS = Operation(
    "GET",
    "/docs",
    "docs",
    "docs",
    "This document in Swagger UI, with try-it-out",
    (
        Out(
            _TEXT,
            "Swagger UI (vendored, served from /docs/{asset}; no CDN) on /openapi.json. "
            "Authorize with OAuth 2.0 client credentials (client id and secret), then try "
            "operations against this gateway. Content-Security-Policy: scripts, styles and "
            "requests same-origin only, no inline script, no eval.",
            media=("text/html",),
        ),
        _NOT_MODIFIED,
    ),
)
_DOCS_ASSET = Operation(
    "GET", "/docs/{asset}", "docsAsset", "docs", "Script and style sheet of the docs page",
    (Out(_TEXT, "JavaScript or CSS.", media=tuple(sorted(set(DOCS_ASSETS.values())))),
     _NOT_MODIFIED),
    (NotFound,), path_params={"asset": ("^(" + "|".join(sorted(DOCS_ASSETS)) + ")$",
                                        "One of the page's files.")},
)  # fmt: skip
OPERATIONS: tuple[Operation, ...] = (
    *SERVICE_OPERATIONS,
    *views_checks.OPERATIONS,
    *views_admin.OPERATIONS,
    *views_citizen.OPERATIONS,
    *views_audit.OPERATIONS,
    *views_statistics.OPERATIONS,
    *views_federation.OPERATIONS,
    _OPENAPI,
    _DOCS,
    _DOCS_ASSET,
)
"""Every operation of the gateway's contract."""
#: Components that no operation names: the payloads of what the gateway signs.
_SIGNED = (AnswerClaims, BatchAnswerClaims, ConsentArtefactClaims)

ERROR_MODULES = (
    "tongban.primitives.errors",
    "tongban.primitives.metrics_auth",
    "tongban.gateway.oauth.errors",
    "tongban.gateway.catalog",
    "tongban.gateway.checks",
    "tongban.gateway.enumeration",
    "tongban.gateway.consent",
    "tongban.policies.errors",
    "tongban.adapters.client",
    "tongban.adapters.witness",
    "tongban.audit.log",
    "tongban.audit.verify",
    "tongban.gateway.views_audit",
    "tongban.federation.statistics",
    "tongban.federation.paillier",
    "tongban.federation.dp",
    "tongban.federation.psi",
    "tongban.gateway.jobs",
    "tongban.gateway.statistics",
    "tongban.gateway.statistics_store",
    "tongban.adapters.at_rest",
    "tongban.federation.packing",
    "tongban.gateway.pages.session",
    "tongban.adapters.deptfile",
    "tongban.adapters.live",
)
"""Every module that defines a :class:`TongbanError` subclass. A test greps the sources for
``slug = "`` and fails if a module is missing here."""

_SCOPES = {
    "checks": "Ask single yes/no checks (POST /v1/checks).",
    "checks:batch": "Ask batches of checks (POST /v1/checks/batch).",
    "audit:read": "Privacy officer: search audit entries, inclusion proofs for any entry.",
    "admin": "Propose, approve and reject policy changes.",
    "statistics": "Request Paillier cross-department statistics.",
    "federation": "Run federated training jobs.",
}

_TAGS = [
    ("oauth", "OAuth 2.0 token endpoint and public keys"),
    ("checks", "Requesters: claims, single and batch checks (signed yes/no answers)"),
    ("consent", "Citizens: grant, read and revoke consent"),
    ("citizen", "Citizens: my consents and who asked about me"),
    ("audit", "The tamper-evident log: checkpoints, proofs, officers' search"),
    ("admin", "Policy administration with two-person approval"),
    ("operations", "Health and metrics"),
    ("docs", "This document and its page"),
]

_DESCRIPTION = """\
通办 tongban: a privacy-preserving cross-department data-sharing gateway. Requesters ask \
consent- and policy-checked yes/no questions about one citizen and receive a signed answer \
(compact JWS, `typ: tongban-answer+jwt`, SM2 by default, ES256 selectable) and nothing \
more: never an attribute, a date or a count. Every check, refused or answered, is \
appended durably to an SM3 Merkle audit log before the answer leaves.

Every error is RFC 9457 `application/problem+json` with a stable `type` URI (listed, with \
title and status, in `x-problem-types`), a `detail` that never repeats personal data, and \
`instance` set to the request id (`X-Request-Id`). The token endpoint alone answers in \
RFC 6749 form. Any path answers 404 `not-found` if unknown and 405 `method-not-allowed` \
(with `Allow`) for a method it does not take.
"""


@dataclass(frozen=True, slots=True)
class ProblemType:
    """One stable problem ``type``: what ``x-problem-types`` lists."""

    slug: str
    type: str
    title: str
    status: int
    extends: str | None
    module: str

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": self.type,
            "slug": self.slug,
            "title": self.title,
            "status": self.status,
        }
        if self.extends is not None:
            out["extends"] = PROBLEM_BASE + self.extends
        return out


def _walk(cls: type[TongbanError]) -> Iterable[type[TongbanError]]:
    yield cls
    for sub in cls.__subclasses__():
        yield from _walk(sub)


def error_classes() -> list[type[TongbanError]]:
    """Every error class of tongban's own packages, root first. Classes defined elsewhere
    (a test's fake error) are left out: they are not part of the contract."""
    for name in ERROR_MODULES:
        importlib.import_module(name)
    seen: dict[type[TongbanError], None] = {}
    for cls in _walk(TongbanError):
        # Only the listed modules: the document must not depend on what else happens to be
        # imported (the CLI's own errors, a test's fake).
        if cls.__module__ in ERROR_MODULES:
            seen.setdefault(cls, None)
    return list(seen)


def _defining(cls: type[TongbanError]) -> type[TongbanError]:
    """The class (``cls`` or an ancestor) whose ``slug`` ``cls`` reports."""
    for klass in cls.__mro__:
        if "slug" in vars(klass):
            return klass
    return TongbanError


def problem_types() -> list[ProblemType]:
    """The problem types of the error tree, sorted by slug. A class that inherits its
    parent's slug but changes its status or title is a contradiction (one ``type`` with
    two meanings) and raises ``ValueError``, as does one slug defined twice."""
    found: dict[str, ProblemType] = {}
    for cls in error_classes():
        owner = _defining(cls)
        if owner is not cls:
            if (cls.status, cls.title) != (owner.status, owner.title):
                raise ValueError(f"{cls.__qualname__}: changes status or title, so needs a slug")
            continue
        # What it refines: the nearest ancestor with a slug of its own, unless that is the
        # root (every problem "refines" internal; saying so tells a client nothing).
        bases = [b for b in cls.__bases__ if issubclass(b, TongbanError)]
        parent = _defining(bases[0]) if bases else TongbanError
        extends = None if parent is TongbanError else parent.slug
        problem = ProblemType(
            cls.slug, PROBLEM_BASE + cls.slug, cls.title, cls.status, extends, cls.__module__
        )
        if cls.slug in found:
            raise ValueError(f"problem slug {cls.slug!r} defined twice")
        found[cls.slug] = problem
    return [found[s] for s in sorted(found)]


def _version() -> str:
    try:
        return metadata.version("tongban")
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return "0.0.0"


def _default_catalog() -> Catalog:
    from tongban.adapters.departments import DEPARTMENTS

    return Catalog.load(DEPARTMENTS)


def build_openapi(server_url: str, *, catalog: Catalog | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the gateway at ``server_url`` (its public URL, e.g.
    ``Settings.public_url``; empty for a document with relative URLs). Claim, purpose and
    parameter enumerations come from ``catalog`` (default: the shipped catalog), so pass
    the one the gateway enforces."""
    base = server_url.rstrip("/")
    catalog = catalog if catalog is not None else _default_catalog()
    scopes = sorted(KNOWN_SCOPES)
    security_schemes: Json = {
        "oauth2": {
            "type": "oauth2",
            "description": "Requester systems: client credentials (RFC 6749 section 4.4); "
            "access tokens are RFC 9068 JWTs (`typ: at+jwt`), a few minutes long.",
            "flows": {
                "clientCredentials": {
                    "tokenUrl": f"{base}/oauth/token",
                    "scopes": {s: _SCOPES.get(s, s) for s in scopes},
                }
            },
        },
        "clientSecretBasic": {
            "type": "http",
            "scheme": "basic",
            "description": "Token endpoint client authentication `client_secret_basic`.",
        },
        "metricsToken": {
            "type": "http",
            "scheme": "bearer",
            "description": "The operator's metrics token: the text of "
            "`DIR/keys/metrics.token` (Prometheus: `authorization.credentials_file`).",
        },
        "citizenToken": {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "Citizens: a short JWT (`typ: tongban-citizen+jwt`) signed by the "
            "configured identity provider, `sub` = the citizen's ID number.",
        },
    }
    headers: Json = {
        "X-Request-Id": {
            "description": "The caller's id if it is a plain token, else a fresh one; equals "
            "a problem's `instance`.",
            "required": True,
            "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{8,64}$"},
        },
        "WWW-Authenticate": {
            "description": "RFC 6750 section 3 bearer challenge (RFC 7617 for Basic).",
            "required": True,
            "schema": {"type": "string"},
        },
    }
    return {
        "openapi": OPENAPI_VERSION,
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "info": {
            "title": "tongban gateway 通办",
            "version": _version(),
            "summary": "Consent-checked, signed yes/no answers across government departments.",
            "description": _DESCRIPTION,
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "servers": [{"url": base or "/"}],
        "tags": [{"name": n, "description": d} for n, d in _TAGS],
        "paths": paths(OPERATIONS),
        "components": {
            "schemas": component_schemas(catalog, _models()),
            "securitySchemes": security_schemes,
            "headers": headers,
        },
        "x-problem-types": [p.to_json() for p in problem_types()],
    }


def _models() -> list[type[BaseModel]]:
    found: list[type[BaseModel]] = [Problem, *_SIGNED]
    for op in OPERATIONS:
        found += [m for m in (op.body, op.form) if m is not None]
        found += [o.schema for o in op.replies if isinstance(o.schema, type)]
    return found


# --- the docs blueprint -----------------------------------------------------------------

# /docs is Swagger UI (gateway/static/README.md): its bundle, its style sheet and our
# docs-init.js, all same-origin files, no inline script or style element and no eval; it
# needs data: images (its icons) and fetch to this origin only (the document, the token
# endpoint, "Try it out").
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _static(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


def _etag(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class _File:
    """A file served as is, its ETag computed once (the Swagger UI bundle is 1.7 MB)."""

    data: bytes
    mimetype: str
    etag: str

    @classmethod
    def of(cls, data: bytes, mimetype: str) -> _File:
        return cls(data, mimetype, _etag(data))


def _conditional(file: _File, cache: str) -> Response:
    resp = Response(file.data, 200, mimetype=file.mimetype)
    resp.headers["Cache-Control"] = cache
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.set_etag(file.etag)
    resp.make_conditional(request)
    return resp


def docs_blueprint(spec_provider: Callable[[], Mapping[str, Any]]) -> Blueprint:
    """``GET /openapi.json``, ``GET /docs`` and ``GET /docs/<asset>``.

    ``spec_provider`` is called once, on the first request for the document, and its
    result is served from then on (with an ``ETag``; the document does not change while
    the process runs). The page and its assets (:data:`DOCS_ASSETS`) are read from
    ``gateway/static`` now, so a missing file fails at start-up rather than on a request.
    """
    bp = Blueprint("docs", __name__)
    page = _File.of(_static("docs.html"), "text/html")
    assets = {name: _File.of(_static(name), mimetype) for name, mimetype in DOCS_ASSETS.items()}
    cached: list[_File] = []

    @_OPENAPI.route(bp)
    def openapi_json() -> Response:
        if not cached:
            data = json.dumps(spec_provider(), ensure_ascii=False).encode("utf-8")
            cached.append(_File.of(data, "application/json"))
        resp = _conditional(cached[0], "public, max-age=300")
        resp.headers["Access-Control-Allow-Origin"] = "*"
        return resp

    @_DOCS.route(bp)
    def docs() -> Response:
        # The page changes with a deployment; let browsers revalidate (ETag) every time.
        resp = _conditional(page, "no-cache")
        resp.headers["Content-Security-Policy"] = _CSP
        resp.headers["Referrer-Policy"] = "no-referrer"
        return resp

    @_DOCS_ASSET.route(bp)
    def docs_asset(asset: str) -> Response:
        found = assets.get(asset)
        if found is None:
            raise NotFound("no such asset")
        return _conditional(found, "public, max-age=3600")

    return bp
