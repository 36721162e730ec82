"""What the thin Flask views share."""

from __future__ import annotations

from typing import Any

from flask import request

__all__ = ["json_body"]


def json_body(*, force: bool = False) -> Any:
    """The request's JSON body (its size is bounded by the app's MAX_CONTENT_LENGTH, a 413
    before parsing). A body that does not parse is a ``malformed-json`` problem naming the
    line and column; one not sent as ``application/json`` (unless ``force``) is a
    ``bad-request``. Whether valid JSON has the right shape (an object, say; ``null`` is
    ``None``) is for the core to say."""
    return request.get_json(force=force)  # problems: tongban.http_shell.ProblemRequest
