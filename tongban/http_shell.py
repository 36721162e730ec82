"""The HTTP shell every tongban Flask app shares (gateway, its pages, adapters): request
ids, RFC 9457 problem responses, and JSON bodies that fail as problems.

:func:`problem_response` is the one place a :class:`~tongban.primitives.errors.
TongbanError` becomes a response: the body from :func:`~tongban.primitives.problem.
problem_body`, the status, and the headers the error itself asks for
(:meth:`~tongban.primitives.errors.TongbanError.response_headers`: ``Retry-After`` of a
429 or a 503, ``WWW-Authenticate`` of a refused bearer token). No view or hook builds a
problem response by hand.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from flask import Flask, Response, g, request
from flask import Request as FlaskRequest
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import HTTPException

from tongban.primitives.errors import BadRequest, TongbanError
from tongban.primitives.problem import (
    PROBLEM_JSON,
    from_http_status,
    malformed_json,
    problem_body,
    request_id,
)

__all__ = [
    "MAX_JSON_DEPTH",
    "ProblemRequest",
    "install_problem_handlers",
    "json_depth",
    "problem_response",
]


def problem_response(exc: TongbanError) -> Response:
    """``exc`` as its problem+json response, with the headers it asks for."""
    resp = Response(problem_body(exc, g.get("request_id", "")), exc.status, mimetype=PROBLEM_JSON)
    resp.headers.update(exc.response_headers())
    return resp


MAX_JSON_DEPTH = 32  # the deepest body tongban reads (a policy change) nests 4 levels
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_BRACKET = re.compile(r"[\[\]{}]")


def json_depth(text: str) -> int:
    """How deeply the arrays and objects of a JSON text nest, without parsing it (strings
    are skipped, so brackets inside them do not count)."""
    depth = deepest = 0
    for bracket in _BRACKET.findall(_STRING.sub("", text)):
        if bracket in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


class _DepthLimitedJSON(DefaultJSONProvider):
    """Refuses deeply nested bodies before parsing: the stdlib parser recurses per level and
    a 64 KiB body of brackets would otherwise end in RecursionError, a 500."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        # latin-1 maps bytes 1:1, and brackets, quotes and backslashes are ASCII.
        text = s if isinstance(s, str) else s.decode("latin-1")
        if text.count("[") + text.count("{") > MAX_JSON_DEPTH and json_depth(text) > MAX_JSON_DEPTH:
            raise BadRequest(f"body: JSON nested deeper than {MAX_JSON_DEPTH} levels")
        return super().loads(s, **kwargs)


class ProblemRequest(FlaskRequest):
    """``get_json()`` failures as problems: ``malformed-json`` for a body that does not
    parse (with where, never what), ``bad-request`` for one not sent as JSON."""

    def on_json_loading_failed(self, e: ValueError | None) -> Any:
        raise malformed_json(e, self.get_data(cache=True))


def install_problem_handlers(app: Flask, max_body: int, logger: logging.Logger) -> None:
    """Request ids and RFC 9457 errors for a tongban HTTP shell (adapter or gateway), the
    JSON nesting limit (400 ``bad-request`` beyond :data:`MAX_JSON_DEPTH` levels), and
    ``request.get_json()`` failures as problems (:class:`ProblemRequest`)."""
    app.json = _DepthLimitedJSON(app)
    app.request_class = ProblemRequest

    @app.before_request
    def _request_id() -> None:
        g.request_id = request_id(request.headers.get("X-Request-Id"))

    @app.after_request
    def _tag(resp: Response) -> Response:
        resp.headers["X-Request-Id"] = g.get("request_id", "")
        resp.headers.setdefault("Cache-Control", "no-store")
        return resp

    def problem(exc: TongbanError) -> Response:
        if exc.status >= 500:
            logger.warning("%s: %s", exc.slug, exc.detail)
        return problem_response(exc)

    app.register_error_handler(TongbanError, problem)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        resp = problem(from_http_status(exc.code, max_body))
        allowed = getattr(exc, "valid_methods", None)
        if allowed:  # RFC 9110 §15.5.6: a 405 names the methods that are allowed
            resp.headers["Allow"] = ", ".join(allowed)
        return resp

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        logger.exception("unexpected error")
        return problem(TongbanError("internal error"))
