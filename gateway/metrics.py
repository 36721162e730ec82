"""Prometheus metrics of the gateway, on a registry of their own.

What is measured, and the only labels used::

    tongban_http_requests_total{method, route, status}        every request
    tongban_http_request_duration_seconds{method, route}       its latency (histogram)
    tongban_checks_total{claim, purpose, outcome}              checks, from the pipeline
    tongban_department_calls_total{department, outcome}        calls to department adapters
    tongban_audit_appends_total                                entries appended
    tongban_audit_tree_size                                    gauge, read at scrape time
    tongban_audit_checkpoint_size                              gauge, read at scrape time

**No metric carries a predicate's answer.** Whoever can scrape twice can diff the two
scrapes around one request, so a label that is an answer (``yes``/``no``/``undetermined``
of a check, ``true``/``false``/``unknown`` of a department) is that person's answer. A check
that was answered is counted as ``answered`` whatever the answer was (:func:`count_check`),
and a department call that returned an answer as ``answered`` whatever it said
(:func:`count_department_call`); only refusals and failures, which say nothing about the
subject's records, keep their own outcome. No metric is labelled by requester either.
docs/operations.md lists what each metric can still reveal.

``GET /metrics`` answers only the operator's metrics token
(:mod:`tongban.primitives.metrics_auth`); without it, 401 ``metrics-unauthenticated``.

No label ever carries personal data. ``route`` is the URL rule's template
(``/v1/consents/<consent_id>``), never the path a client sent; an unmatched path is
``<unmatched>``. Every label value the pipeline passes goes through :func:`safe_label`,
which refuses anything but a short identifier and anything with a run of 11 or more digits
(an ID or phone number): such a value becomes ``redacted``. This also bounds cardinality
when a caller passes garbage.

The metrics live in :data:`REGISTRY`, not the process-global default registry, so tests and
several apps in one process do not collide with other libraries' collectors.

Several processes (gunicorn workers): each worker has its own counters, and a scrape
reaches one worker at random. For correct totals, run with ``PROMETHEUS_MULTIPROC_DIR``
set to an empty directory (before this module is imported, cleared at each deployment),
declare the two gauges with ``multiprocess_mode="max"`` (or ``"livemax"``), serve
``/metrics`` from a fresh ``CollectorRegistry`` with
``prometheus_client.multiprocess.MultiProcessCollector(registry)``, and call
``multiprocess.mark_process_dead(worker.pid)`` from gunicorn's ``child_exit`` hook. Not
done here: the demo and tests are single-process.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Protocol

from flask import Blueprint, Flask
from prometheus_client import CollectorRegistry, Counter, Gauge

from tongban.audit.note import SignedNote
from tongban.http_metrics import (
    RequestMetrics,
    install_request_metrics,
    metrics_blueprint,
)
from tongban.primitives.metrics_auth import MetricsCredential

__all__ = [
    "AUDIT_APPENDS",
    "AUDIT_CHECKPOINT_SIZE",
    "AUDIT_TREE_SIZE",
    "CHECKS",
    "CHECK_OUTCOMES",
    "DEPARTMENT_CALLS",
    "DEPARTMENT_OUTCOMES",
    "HTTP_LATENCY",
    "HTTP_REQUESTS",
    "REDACTED",
    "REGISTRY",
    "SafeCounter",
    "count_check",
    "count_department_call",
    "install_metrics",
    "metrics_blueprint",
    "safe_label",
    "track_audit",
    "track_checkpoints",
]

REGISTRY = CollectorRegistry(auto_describe=True)
REDACTED = "redacted"

_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,63}")
_LONG_DIGITS = re.compile(r"[0-9]{11,}")


def safe_label(value: object) -> str:
    """``value`` as a label value if it is a short identifier without a long digit run,
    else ``redacted``: no ID number, phone number or free text can become a label."""
    text = str(value) if isinstance(value, str | int) and not isinstance(value, bool) else ""
    if not _LABEL.fullmatch(text) or _LONG_DIGITS.search(text):
        return REDACTED
    return text


class _Child(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class SafeCounter:
    """A labelled :class:`Counter` whose :meth:`labels` passes every value through
    :func:`safe_label`. Use it exactly like the counter: ``CHECKS.labels(...).inc()``."""

    def __init__(self, counter: Counter) -> None:
        self.counter = counter

    def labels(self, *values: object) -> _Child:
        child: _Child = self.counter.labels(*(safe_label(v) for v in values))
        return child


_HTTP = RequestMetrics.on(REGISTRY)
HTTP_REQUESTS = _HTTP.requests
HTTP_LATENCY = _HTTP.latency
# The outcomes a check is counted under. The three answers are one outcome: a label that
# told them apart would be the answer of whichever check a scraper diffed around.
CHECK_OUTCOMES = frozenset({"answered", "denied", "invalid", "rate_limited"})
_ANSWERS = frozenset({"yes", "no", "undetermined"})
# A department's true, false and unknown are one outcome too (unknown: a quarantined or
# missing record). Failures to get an answer at all say nothing about the subject.
DEPARTMENT_OUTCOMES = frozenset({"answered", "unavailable", "timeout", "refused"})

CHECKS = SafeCounter(
    Counter(
        "tongban_checks",
        "Checks by claim, purpose and outcome: answered (yes, no and undetermined alike), "
        "denied, invalid or rate_limited. Never the answer, never the requester.",
        ["claim", "purpose", "outcome"],
        registry=REGISTRY,
    )
)
DEPARTMENT_CALLS = SafeCounter(
    Counter(
        "tongban_department_calls",
        "Predicate calls to department adapters by outcome: answered (whatever the answer), "
        "unavailable, timeout or refused.",
        ["department", "outcome"],
        registry=REGISTRY,
    )
)
AUDIT_APPENDS = Counter(
    "tongban_audit_appends",
    "Entries this process appended durably to the audit log.",
    registry=REGISTRY,
)
AUDIT_TREE_SIZE = Gauge(
    "tongban_audit_tree_size",
    "Audit Merkle tree size as this process sees it.",
    registry=REGISTRY,
)
AUDIT_CHECKPOINT_SIZE = Gauge(
    "tongban_audit_checkpoint_size",
    "Tree size of the latest signed checkpoint.",
    registry=REGISTRY,
)
AUDIT_CHECKPOINT_COSIGNATURES = Gauge(
    "tongban_audit_checkpoint_cosignatures",
    "Witness cosignatures on the latest checkpoint.",
    registry=REGISTRY,
)
AUDIT_CHECKPOINT_WITNESSED = Gauge(
    "tongban_audit_checkpoint_witnessed",
    "1 if the latest checkpoint has the quorum of cosignatures, else 0.",
    registry=REGISTRY,
)
AUDIT_DIVERGED = Gauge(
    "tongban_audit_diverged",
    "1 if a witness cosigned more, or another tree, than this log holds (nothing is served).",
    registry=REGISTRY,
)


def count_check(claim: str, purpose: str, result: str, count: int = 1) -> None:
    """Count ``count`` checks of ``claim`` for ``purpose`` that ended in ``result`` (a
    pipeline word: ``yes``, ``no``, ``undetermined``, ``denied``, ``invalid``,
    ``rate_limited``). An answer is counted as ``answered``; a word this module does not
    know is counted as ``answered`` too, so no new word can become a label by accident."""
    outcome = result if result in CHECK_OUTCOMES and result not in _ANSWERS else "answered"
    CHECKS.labels(claim, purpose, outcome).inc(count)


def count_department_call(department: str, outcome: str) -> None:
    """Count one call to ``department``: a :class:`~tongban.primitives.wire.Tri` value
    (``true``, ``false``, ``unknown``) or anything else not a failure is ``answered``."""
    label = outcome if outcome in DEPARTMENT_OUTCOMES else "answered"
    DEPARTMENT_CALLS.labels(department, label).inc()


class _CheckpointView(Protocol):
    """What the checkpoint gauges read: :class:`gateway.checkpoints.Checkpointer`."""

    def status(self) -> Mapping[str, object]: ...


def track_checkpoints(checkpointer: _CheckpointView | None) -> None:
    """The latest checkpoint's cosignatures and quorum, and divergence, at each scrape."""
    if checkpointer is None:
        for gauge in (AUDIT_CHECKPOINT_COSIGNATURES, AUDIT_CHECKPOINT_WITNESSED, AUDIT_DIVERGED):
            gauge.set_function(lambda: math.nan)
        return

    def cosignatures() -> float:
        cosigners = checkpointer.status()["cosigners"]
        return float(len(cosigners)) if isinstance(cosigners, list) else math.nan

    AUDIT_CHECKPOINT_COSIGNATURES.set_function(_guarded(cosignatures))
    AUDIT_CHECKPOINT_WITNESSED.set_function(
        _guarded(lambda: 1.0 if checkpointer.status()["witnessed"] else 0.0)
    )
    AUDIT_DIVERGED.set_function(
        _guarded(lambda: 0.0 if checkpointer.status()["diverged"] is None else 1.0)
    )


class _AuditView(Protocol):
    """What the gauges read: :class:`audit.log.AuditLog` satisfies it."""

    @property
    def size(self) -> int: ...

    def latest_checkpoint(self) -> SignedNote | None: ...


def _guarded(read: Callable[[], float]) -> Callable[[], float]:
    """A scrape must not fail because the audit store is briefly unreachable: NaN then."""

    def value() -> float:
        try:
            return float(read())
        except Exception:
            return math.nan

    return value


def track_audit(audit: _AuditView | None) -> None:
    """Read the audit gauges from ``audit`` at each scrape (the last log given wins)."""
    if audit is None:
        AUDIT_TREE_SIZE.set_function(lambda: math.nan)
        AUDIT_CHECKPOINT_SIZE.set_function(lambda: math.nan)
        return

    def checkpoint_size() -> float:
        note = audit.latest_checkpoint()
        return math.nan if note is None else float(note.checkpoint.size)

    AUDIT_TREE_SIZE.set_function(_guarded(lambda: audit.size))
    AUDIT_CHECKPOINT_SIZE.set_function(_guarded(checkpoint_size))


def install_metrics(
    app: Flask,
    *,
    audit: _AuditView | None = None,
    checkpointer: _CheckpointView | None = None,
    endpoint: bool = True,
    credential: MetricsCredential | None = None,
) -> Blueprint | None:
    """Count and time every request of ``app`` by route template and status; read the
    audit gauges from ``audit``; and, with ``endpoint``, register ``GET /metrics`` for the
    holder of ``credential`` (no credential: every scrape is refused) and return its
    blueprint (``None`` otherwise, e.g. when a separate port serves it)."""

    install_request_metrics(app, _HTTP)
    if audit is not None:
        track_audit(audit)
        track_checkpoints(checkpointer)
    if not endpoint:
        return None
    bp = metrics_blueprint(credential or MetricsCredential(None), REGISTRY)
    app.register_blueprint(bp)
    return bp
