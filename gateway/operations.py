"""Each HTTP operation declared once: the route, its authentication, its typed body and
query, and its OpenAPI operation all come from one :class:`Operation`.

A view module declares its operations next to its views and registers each view with
:meth:`Operation.route`, which adds the Flask rule, applies :func:`require_token` (with the
declared scopes) or :func:`require_citizen`, and parses the declared body or query model
into the view's ``body`` or ``query`` argument. :func:`paths` writes the same declarations
as OpenAPI path items, so a route, its scope or its body model cannot differ from what the
document says. What no declaration can know stays listed per operation: the problem types
the core raises (those that follow from the declaration, such as the bearer-token errors of
an authenticated operation or ``malformed-json`` for a JSON body, are added here).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from flask import Blueprint, Flask, request
from pydantic import BaseModel

from tongban.audit.log import AuditBehindWitnesses, AuditIntegrityError
from tongban.primitives.bodies import Body, component_schema, parse_body, parse_query
from tongban.primitives.errors import (
    PROBLEM_BASE,
    BadRequest,
    MalformedJson,
    PayloadTooLarge,
    StoreUnavailable,
    TongbanError,
)

from .oauth.errors import (
    CitizenLoginNotConfigured,
    IdentityProviderUnavailable,
    InsufficientScope,
    InvalidToken,
    TokenExpired,
    TokenMissing,
    TokenNotYetValid,
    TokenRevoked,
    TokenWrongAudience,
    TokenWrongIssuer,
    TokenWrongType,
)
from .oauth.flask import require_citizen, require_token
from .views_common import json_body

__all__ = [
    "AUDIT_WRITE",
    "Errors",
    "Json",
    "Operation",
    "Out",
    "open_when_diverged",
    "paths",
    "problem_responses",
]

Json = dict[str, Any]
Errors = tuple[type[TongbanError], ...]
V = TypeVar("V", bound=Callable[..., Any])

_BEARER: Errors = (
    TokenMissing,
    InvalidToken,
    TokenExpired,
    TokenNotYetValid,
    TokenWrongType,
    TokenWrongIssuer,
    TokenWrongAudience,
    TokenRevoked,
)
#: A citizen's token: an IdP's ID token, so also the two ways the IdP can be missing.
_CITIZEN: Errors = (
    *(e for e in _BEARER if e is not TokenRevoked),
    IdentityProviderUnavailable,
    CitizenLoginNotConfigured,
)
#: What an operation that appends to the audit log can fail with.
AUDIT_WRITE: Errors = (StoreUnavailable, AuditIntegrityError)
_REQUEST_ID = {"X-Request-Id": {"$ref": "#/components/headers/X-Request-Id"}}
_RETRY_AFTER = {
    "description": "Whole seconds until the request would be admitted (RFC 9110).",
    "required": True,
    "schema": {"type": "string", "pattern": "^[0-9]{1,9}$"},
}


@dataclass(frozen=True, slots=True)
class Out:
    """One documented response: a model (its component), a schema, or nothing (a 304)."""

    schema: type[BaseModel] | Json | None
    description: str
    status: int = 200
    media: tuple[str, ...] = ("application/json",)
    headers: Mapping[str, Json] = field(default_factory=dict)

    def document(self) -> Json:
        out: Json = {"description": self.description}
        if self.schema is None:
            return out
        schema = (
            {"$ref": f"#/components/schemas/{self.schema.__name__}"}
            if isinstance(self.schema, type)
            else self.schema
        )
        out["headers"] = {**_REQUEST_ID, **self.headers}
        out["content"] = {media: {"schema": schema} for media in self.media}
        return out


@dataclass(frozen=True, slots=True)
class Operation:
    """An HTTP operation: ``path`` is the OpenAPI template (``/v1/consents/{consent_id}``).

    ``scopes`` (a tuple, possibly empty) makes it a requester operation behind
    :func:`require_token`; ``citizen`` one behind :func:`require_citizen`. ``body`` is
    parsed from the JSON body (``body_root`` names it in errors, ``body_error`` is the
    problem a bad one is) and ``query`` from the query string; the view receives them as
    ``body`` and ``query``. ``path_params`` maps each path parameter to its pattern and
    description. ``always_open`` operations are answered while the audit log is behind its
    witnesses. ``form`` documents a form body that the view reads itself (the token
    endpoint: Authlib does), ``security`` replaces the one the authentication implies.
    """

    method: str
    path: str
    id: str
    tag: str
    summary: str
    replies: tuple[Out, ...]
    problems: Errors = ()
    scopes: tuple[str, ...] | None = None
    citizen: bool = False
    body: type[Body] | None = None
    body_root: str = "body"
    body_error: type[BadRequest] = BadRequest
    force_json: bool = False
    query: type[Body] | None = None
    path_params: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    description: str = ""
    always_open: bool = False
    form: type[BaseModel] | None = None
    security: list[dict[str, list[str]]] | None = None

    @property
    def rule(self) -> str:
        """The Flask rule of :attr:`path`."""
        return re.sub(r"\{([a-z_]+)\}", r"<\1>", self.path)

    def route(self, app: Blueprint | Flask) -> Callable[[V], V]:
        """Register the decorated view as this operation (see the class)."""

        def decorate(view: V) -> V:
            handler: Callable[..., Any] = view
            if self.body is not None or self.query is not None:
                handler = self._parsing(view)
            if self.scopes is not None:
                handler = require_token(*self.scopes)(handler)
            elif self.citizen:
                handler = require_citizen(handler)
            app.add_url_rule(self.rule, view.__name__, handler, methods=[self.method])
            return view

        return decorate

    def _parsing(self, view: Callable[..., Any]) -> Callable[..., Any]:
        body, query = self.body, self.query

        @functools.wraps(view)
        def parsed(*args: Any, **kwargs: Any) -> Any:
            if body is not None:
                data = json_body(force=self.force_json)
                kwargs["body"] = parse_body(body, data, self.body_root, error=self.body_error)
            if query is not None:
                kwargs["query"] = parse_query(query, request.args)
            return view(*args, **kwargs)

        return parsed

    def problem_types(self) -> Errors:
        """The declared problems, those the declaration implies, and ``internal``."""
        implied: list[type[TongbanError]] = []
        if self.scopes is not None:
            implied += [*_BEARER, *((InsufficientScope,) if self.scopes else ())]
        if self.citizen:
            implied += _CITIZEN
        if self.body is not None:
            implied += [BadRequest, MalformedJson, PayloadTooLarge]
        if self.query is not None:
            implied.append(BadRequest)
        if not self.always_open:
            implied.append(AuditBehindWitnesses)
        found = dict.fromkeys((*implied, *self.problems, TongbanError))
        return tuple(found)

    def document(self) -> Json:
        """This operation as an OpenAPI operation object."""
        responses = problem_responses(*self.problem_types())
        for out in self.replies:
            mine = out.document()
            problem = responses.get(str(out.status))
            if problem is not None:  # a status both as a problem and as something else
                mine["description"] = f"{problem['description']} Or: {out.description}"
                mine["headers"] = {**problem["headers"], **mine.get("headers", {})}
                mine["content"] = {**problem["content"], **mine.get("content", {})}
            responses[str(out.status)] = mine
        op: Json = {"operationId": self.id, "tags": [self.tag], "summary": self.summary}
        if self.description:
            op["description"] = self.description
        params = [_path_param(n, p, d) for n, (p, d) in self.path_params.items()]
        if self.query is not None:
            params += _query_params(self.query)
        if params:
            op["parameters"] = params
        if self.body is not None or self.form is not None:
            model, media = (
                (self.body, "application/json")
                if self.body is not None
                else (self.form, "application/x-www-form-urlencoded")
            )
            assert model is not None
            schema = {"$ref": f"#/components/schemas/{model.__name__}"}
            op["requestBody"] = {"required": True, "content": {media: {"schema": schema}}}
        op["security"] = self.security if self.security is not None else self._security()
        op["responses"] = dict(sorted(responses.items()))
        return op

    def _security(self) -> list[dict[str, list[str]]]:
        if self.scopes is not None:
            return [{"oauth2": list(self.scopes)}]
        return [{"citizenToken": []}] if self.citizen else []


def _path_param(name: str, pattern: str, description: str) -> Json:
    schema = {"type": "string", "pattern": pattern}
    return {"name": name, "in": "path", "required": True, "schema": schema,
            "description": description}  # fmt: skip


def _query_params(model: type[Body]) -> list[Json]:
    """One query parameter per field of ``model``, its schema from the model."""
    schema = component_schema(model)
    required = set(schema.get("required", ()))
    out: list[Json] = []
    for name, declared in schema["properties"].items():
        prop = dict(declared)
        description = prop.pop("description", "")
        param: Json = {"name": name, "in": "query", "required": name in required}
        param["schema"] = prop
        param["description"] = description
        out.append(param)
    return out


def problem_responses(*errors: type[TongbanError]) -> dict[str, Json]:
    """OpenAPI responses, one per status, each a Problem whose ``type`` is one of the
    given classes' URIs. Classes are taken as declared: a base class lists its own type
    only, so name each subclass an operation can raise."""
    by_status: dict[int, dict[str, str]] = {}
    for cls in errors:
        by_status.setdefault(cls.status, {})[PROBLEM_BASE + cls.slug] = cls.title
    out: dict[str, Json] = {}
    for status in sorted(by_status):
        types = dict(sorted(by_status[status].items()))
        headers: Json = dict(_REQUEST_ID)
        if status == 401:
            headers["WWW-Authenticate"] = {"$ref": "#/components/headers/WWW-Authenticate"}
        elif status == 429:
            headers["Retry-After"] = _RETRY_AFTER
        elif status == 403 and PROBLEM_BASE + "insufficient-scope" in types:
            headers["WWW-Authenticate"] = {
                "description": 'For `insufficient-scope`: `Bearer error="insufficient_scope"`, '
                "naming the scope (RFC 6750 section 3.1).",
                "schema": {"type": "string"},
            }
        listed = "; ".join(f"`{t.removeprefix(PROBLEM_BASE)}` ({n})" for t, n in types.items())
        only = {"properties": {"type": {"enum": list(types)}, "status": {"const": status}}}
        schema = {"allOf": [{"$ref": "#/components/schemas/Problem"}, only]}
        out[str(status)] = {
            "description": f"Problem: {listed}.",
            "headers": headers,
            "content": {"application/problem+json": {"schema": schema}},
        }
    return out


def paths(operations: Iterable[Operation]) -> Json:
    """The operations as OpenAPI path items, sorted by path."""
    out: Json = {}
    for op in operations:
        item = out.setdefault(op.path, {})
        if op.method.lower() in item:
            raise ValueError(f"{op.method} {op.path} declared twice")
        item[op.method.lower()] = op.document()
    return dict(sorted(out.items()))


def open_when_diverged(operations: Iterable[Operation]) -> frozenset[str]:
    """The Flask rules answered while the audit log is behind its witnesses."""
    return frozenset(op.rule for op in operations if op.always_open)
