"""What the thin Flask views share."""

from __future__ import annotations

from typing import Any

from flask import request
from tongban.primitives.errors import BadRequest

__all__ = ["json_body"]


def json_body(*, force: bool = False) -> Any:
    """The request's JSON body (its size is bounded by the app's MAX_CONTENT_LENGTH, a 413
    before parsing). A body that does not parse is a ``malformed-json`` problem naming the
    line and column; one not sent as ``application/json`` (unless ``force``) is a
    ``bad-request``, as is ``null``. Whether the JSON has the right shape (an object, say)
    is for the core to say."""
    body = request.get_json(force=force)  # problems: adapters.service.ProblemRequest
    if body is None:
        raise BadRequest("body: expected a JSON object, not null")
    return body
