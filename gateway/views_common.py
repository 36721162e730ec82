"""What the thin Flask views share."""

from __future__ import annotations

from typing import Any

from flask import request
from tongban.primitives.errors import BadRequest

__all__ = ["json_body"]


def json_body() -> Any:
    """The request's JSON body (its size is bounded by the app's MAX_CONTENT_LENGTH, a 413
    before parsing), or a 400 problem when it is missing or not JSON."""
    body = request.get_json(silent=True)
    if body is None:
        raise BadRequest("body: expected a JSON object (Content-Type: application/json)")
    return body
