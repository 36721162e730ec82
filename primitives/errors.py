"""The one error tree every tongban component raises.

    TongbanError                      500 internal
    ├── BadRequest                    400 (wrong shape: valid JSON, not what was expected)
    │   ├── MalformedJson             400 (the body does not parse as JSON)
    │   ├── InvalidIdNumber           422 (GB 11643 validation failed)
    │   ├── UnknownPredicate          400
    │   ├── UnknownParameter          400 (name or value outside the enumeration)
    │   └── PayloadTooLarge           413
    ├── Unauthenticated               401 (missing, forged, expired, replayed, wrong audience)
    │   └── EnvelopeRefused           401 (not sealed, sealed to another key, altered)
    ├── Forbidden                     403
    ├── NotFound                      404
    ├── MethodNotAllowed              405
    ├── Conflict                      409
    ├── RateLimited                   429 (a requester or subject went over its rate limit)
    ├── DepartmentUnavailable         503 (an adapter did not answer in time)
    └── StoreUnavailable              503 (a database could not be reached)

Each error renders itself to RFC 9457 problem+json with a stable ``type`` URI. ``detail``
names the field and what was expected, and never repeats personal data: callers must pass
field names, not values.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "PROBLEM_BASE",
    "BadRequest",
    "Conflict",
    "DepartmentUnavailable",
    "EnvelopeRefused",
    "Forbidden",
    "InvalidIdNumber",
    "MalformedJson",
    "MethodNotAllowed",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "StoreUnavailable",
    "TongbanError",
    "Unauthenticated",
    "UnknownParameter",
    "UnknownPredicate",
]

PROBLEM_BASE = "https://tongban.example/problems/"


class TongbanError(Exception):
    """Root of the tree. ``slug`` becomes the last segment of the problem ``type`` URI."""

    status: ClassVar[int] = 500
    slug: ClassVar[str] = "internal"
    title: ClassVar[str] = "Internal error"

    def __init__(self, detail: str = "", **extra: Any) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.extra = extra

    @property
    def type(self) -> str:
        return PROBLEM_BASE + self.slug

    def to_problem(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance is not None:
            body["instance"] = instance
        body.update(self.extra)
        return body

    def response_headers(self) -> dict[str, str]:
        """HTTP headers the problem response must carry besides its body (none by default)."""
        return {}


class BadRequest(TongbanError):
    status = 400
    slug = "bad-request"
    title = "Malformed request"


class MalformedJson(BadRequest):
    """The body is not JSON at all (as opposed to JSON of the wrong shape, a
    ``bad-request``). ``detail`` says where parsing stopped, never what it read."""

    slug = "malformed-json"
    title = "Request body is not valid JSON"


class InvalidIdNumber(BadRequest):
    status = 422  # well-formed request, impossible value: never answered as "no"
    slug = "invalid-id-number"
    title = "Invalid ID number"


class UnknownPredicate(BadRequest):
    slug = "unknown-predicate"
    title = "Unknown predicate"


class UnknownParameter(BadRequest):
    slug = "unknown-parameter"
    title = "Unknown or unenumerated parameter"


class PayloadTooLarge(BadRequest):
    status = 413
    slug = "payload-too-large"
    title = "Request body too large"


class Unauthenticated(TongbanError):
    status = 401
    slug = "unauthenticated"
    title = "Authentication failed"


class EnvelopeRefused(Unauthenticated):
    """A message that should be sealed (primitives/envelope.py) is not, is sealed to another
    key, or does not open (altered, truncated, wrong direction). ``detail`` says which,
    never anything of the content."""

    slug = "envelope-refused"
    title = "The message is not sealed to this recipient, or does not open"


class Forbidden(TongbanError):
    status = 403
    slug = "forbidden"
    title = "Not allowed"


class NotFound(TongbanError):
    status = 404
    slug = "not-found"
    title = "Not found"


class MethodNotAllowed(TongbanError):
    status = 405
    slug = "method-not-allowed"
    title = "Method not allowed"


class Conflict(TongbanError):
    status = 409
    slug = "conflict"
    title = "Conflict"


class RateLimited(TongbanError):
    """Too many requests: ``retry_after`` whole seconds until the request would be admitted
    (RFC 9110 ``Retry-After``); ``limit`` names which bucket ran dry, never its key."""

    status = 429
    slug = "rate-limited"
    title = "Too many requests"

    def __init__(self, detail: str = "", *, retry_after: int, limit: str) -> None:
        super().__init__(detail, retry_after=retry_after, limit=limit)
        self.retry_after = retry_after
        self.limit = limit

    def response_headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class DepartmentUnavailable(TongbanError):
    status = 503
    slug = "department-unavailable"
    title = "A department did not answer"


class StoreUnavailable(TongbanError):
    status = 503
    slug = "store-unavailable"
    title = "A database is unavailable"

    def response_headers(self) -> dict[str, str]:
        return {"Retry-After": "1"}  # a database that is away is usually back soon
