"""What the SDK raises. Every error is a :class:`TongbanClientError`.

    TongbanClientError
    ├── TransportError          the gateway could not be reached (connection, TLS, timeout)
    ├── ProtocolError           the gateway answered something that is not the documented shape
    ├── VerificationError       a signature, a checkpoint or a proof does not verify
    │   ├── AnswerRejected      verify_answer: the signed answer is not acceptable
    │   ├── CheckpointRejected  the checkpoint is malformed or not signed by the pinned key
    │   └── ProofRejected       an inclusion or consistency proof does not verify
    └── Problem                 the gateway refused: RFC 9457 problem+json (or an RFC 6749
        │                       token error), with .type, .slug, .status, .detail, .extra
        ├── Unauthenticated     401: token-*, unauthenticated, invalid_client
        ├── Forbidden           403 (insufficient-scope, ...)
        │   ├── PolicyDenied    policy-denied (the refusal is audited: .audit_index)
        │   └── ConsentRefused  consent-*, guardian-* (consent-required, -revoked, -expired...)
        │       └── ConsentRequired
        ├── InvalidIdNumber     invalid-id-number (422)
        ├── NotFound            404
        ├── RateLimited         rate-limited (429): .retry_after seconds, .limit
        └── Unavailable         503: department-unavailable, store-unavailable, ...

No message the SDK builds contains an ID number: problems are built from the gateway's own
``detail`` (which names fields, never values), with anything that looks like an ID or
phone number masked and the ID number of the request, if any, removed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

__all__ = [
    "AnswerRejected",
    "CheckpointRejected",
    "ConsentRefused",
    "ConsentRequired",
    "Forbidden",
    "InvalidIdNumber",
    "NotFound",
    "PolicyDenied",
    "Problem",
    "ProofRejected",
    "ProtocolError",
    "RateLimited",
    "TongbanClientError",
    "TransportError",
    "Unauthenticated",
    "Unavailable",
    "VerificationError",
    "scrub",
]

# An 18-character resident ID (17 digits and a digit or X), or any long run of digits.
_ID_LIKE = re.compile(r"[0-9]{17}[0-9Xx]|[0-9]{11,}")
_MAX_TEXT = 500


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every value of ``secrets`` and anything ID-like masked, bounded."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    text = _ID_LIKE.sub("[redacted]", text)
    text = " ".join(text.split())  # one line
    return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 3] + "..."


class TongbanClientError(Exception):
    """Root of everything the SDK raises."""


class TransportError(TongbanClientError):
    """The gateway could not be reached, or the connection failed (TLS, timeout, reset)."""


class ProtocolError(TongbanClientError):
    """The gateway's answer is not of the documented shape (not JSON, a member missing)."""


class VerificationError(TongbanClientError):
    """Something signed or proven does not verify. ``reason`` is a short fixed phrase."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class AnswerRejected(VerificationError):
    """:func:`verify_answer` refused the token (malformed, alg, typ, kid, signature, exp)."""


class CheckpointRejected(VerificationError):
    """The audit checkpoint is malformed, or no signature by the pinned key verifies."""


class ProofRejected(VerificationError):
    """An inclusion or consistency proof does not lead to the checkpoint's root."""


class Problem(TongbanClientError):
    """A refusal by the gateway. ``slug`` is the last segment of the ``type`` URI (for an
    RFC 6749 token error without a tongban ``type``: its ``error`` code); members beyond
    ``type``/``title``/``status``/``detail``/``instance`` are in ``extra``."""

    slugs: ClassVar[frozenset[str]] = frozenset()
    """The slugs :meth:`from_body` maps to this class."""

    def __init__(
        self,
        *,
        type: str,
        status: int,
        title: str = "",
        detail: str = "",
        instance: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        self.type = type
        self.slug = type.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]
        self.status = status
        self.title = title
        self.detail = detail
        self.instance = instance
        self.extra: dict[str, Any] = dict(extra or {})
        super().__init__(f"{status} {self.slug}: {detail or title or 'refused'}")

    @classmethod
    def from_body(
        cls, status: int, body: object, *, secrets: Iterable[str] = (), retry_after: str = ""
    ) -> Problem:
        """The typed problem for an error answer (problem+json, an RFC 6749 error object,
        or anything else), its text scrubbed of ``secrets`` and ID-like values."""
        hidden = tuple(secrets)

        def clean(value: Any) -> Any:
            if isinstance(value, str):
                return scrub(value, hidden)
            if isinstance(value, list):
                return [clean(v) for v in value]
            if isinstance(value, dict):
                return {str(k): clean(v) for k, v in value.items()}
            return value

        doc: dict[str, Any] = clean(body) if isinstance(body, dict) else {}
        error = doc.pop("error", None)
        description = doc.pop("error_description", None)
        type_ = doc.pop("type", None)
        if not isinstance(type_, str) or not type_:
            type_ = f"urn:ietf:params:oauth:error:{error}" if isinstance(error, str) else ""
        if not type_:
            type_ = f"about:blank#http-{status}"
        title = doc.pop("title", None)
        detail = doc.pop("detail", None)
        instance = doc.pop("instance", None)
        doc.pop("status", None)  # the HTTP status is the authority
        if isinstance(error, str):
            doc["error"] = error
        if not isinstance(detail, str):
            detail = description if isinstance(description, str) else ""
        if retry_after and "retry_after" not in doc and retry_after.isdigit():
            doc["retry_after"] = int(retry_after)
        slug = type_.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]
        problem_class = _class_for(slug, status)
        return problem_class(
            type=type_,
            status=status,
            title=title if isinstance(title, str) else "",
            detail=detail,
            instance=instance if isinstance(instance, str) else None,
            extra=doc,
        )


class Unauthenticated(Problem):
    """401: no token, a token refused, or the client's credentials refused."""

    slugs = frozenset({"unauthenticated", "invalid_client", "envelope-refused"})


class Forbidden(Problem):
    """403: authenticated, but not allowed (scope, policy, consent, own entries only)."""

    slugs = frozenset({"forbidden", "insufficient-scope", "unauthorized_client"})


class PolicyDenied(Forbidden):
    """The policy refuses this requester the claim for the purpose; the refusal itself is
    audited, and ``audit_index`` (if given) is its log entry."""

    slugs = frozenset({"policy-denied", "claim-not-for-purpose"})

    @property
    def audit_index(self) -> int | None:
        value = self.extra.get("audit_index")
        return value if isinstance(value, int) and not isinstance(value, bool) else None


class ConsentRefused(Forbidden):
    """The purpose needs the citizen's consent and none usable was given (missing, revoked,
    expired, used up, for another requester or claim, a guardian's consent needed...)."""

    slugs = frozenset({
        "consent-refused", "consent-expired", "consent-revoked", "consent-exhausted",
        "consent-not-found", "consent-mismatch", "consent-not-active", "consent-not-yet-valid",
        "guardian-consent-required", "guardian-undetermined", "not-a-guardian",
        "subject-not-a-minor",
    })  # fmt: skip


class ConsentRequired(ConsentRefused):
    """No ``consent_id`` was sent, and the purpose has no statutory legal basis."""

    slugs = frozenset({"consent-required"})


class InvalidIdNumber(Problem):
    """The ID number failed GB 11643 validation; ``detail`` says which rule, never the number."""

    slugs = frozenset({"invalid-id-number"})


class NotFound(Problem):
    slugs = frozenset({"not-found"})


class RateLimited(Problem):
    """Too many requests: try again in ``retry_after`` seconds; ``limit`` names the bucket."""

    slugs = frozenset({"rate-limited", "temporarily_unavailable"})

    @property
    def retry_after(self) -> int | None:
        value = self.extra.get("retry_after")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def limit(self) -> str | None:
        value = self.extra.get("limit")
        return value if isinstance(value, str) else None


class Unavailable(Problem):
    """503: a department or a store did not answer; the request may be retried."""

    slugs = frozenset({"department-unavailable", "store-unavailable", "audit-behind-witnesses"})


_BY_STATUS: dict[int, type[Problem]] = {
    401: Unauthenticated,
    403: Forbidden,
    404: NotFound,
    429: RateLimited,
    503: Unavailable,
}


def _class_for(slug: str, status: int) -> type[Problem]:
    stack: list[type[Problem]] = [Problem]
    while stack:
        cls = stack.pop()
        if slug in cls.slugs:
            return cls
        stack.extend(cls.__subclasses__())
    if slug.startswith("token-"):
        return Unauthenticated
    return _BY_STATUS.get(status, Problem)


def problem_from_response(
    status: int, content: bytes, *, secrets: Iterable[str] = (), retry_after: str = ""
) -> Problem:
    """:meth:`Problem.from_body` for a raw body that may not even be JSON."""
    try:
        body: object = json.loads(content.decode("utf-8")) if content else None
    except (UnicodeDecodeError, ValueError):
        body = None
    return Problem.from_body(status, body, secrets=secrets, retry_after=retry_after)
