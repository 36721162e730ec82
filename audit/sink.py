"""The one protocol of an audit sink: where a core's events go.

Every core that records something (checks, consents, policy and job administration,
statistics and training jobs) takes an :class:`AuditSink`. The gateway hands them
:class:`tongban.gateway.services.AuditEvents` over the :class:`~tongban.audit.log.AuditLog`;
tests hand them the one fake, ``tests.conftest.RecordingAudit``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

__all__ = ["AuditSink"]


class AuditSink(Protocol):
    """``append`` records ``event`` (about ``subject_id``, an ID number the log turns into
    its pseudonym, if any) and returns the entry's index once it is durable; it raises if
    the event was not recorded, and the caller's change then fails with it."""

    def append(self, event: Mapping[str, Any], subject_id: str | None = None) -> int: ...
