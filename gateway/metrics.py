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

Several processes (gunicorn workers, :mod:`tongban.gunicorn_conf`): the master sets
``PROMETHEUS_MULTIPROC_DIR`` before any worker imports prometheus_client, every worker
writes its values to files there, and ``/metrics`` serves the deployment's totals whichever
worker answers (:func:`tongban.http_metrics.exposition`): counters and histograms summed
over the workers, dead ones included; each gauge merged by its ``multiprocess_mode``
(beside it below), over the live workers only (gunicorn's ``child_exit`` drops a dead
worker's gauges). A gauge read at the scrape writes the answering worker's reading to its
file as it is read, so a worker's reading is as fresh as the last scrape it answered. In
one process (the Flask test client, ``tongban gateway serve``) the registry is served as
it is and nothing is written anywhere.
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
    multiprocess_dir,
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
# The gauges are read at the scrape (_read_at_scrape). Under several workers each is
# merged over the live workers' latest readings, by what the value is:
# - the tree size is each worker's in-memory view of one shared, append-only log, and a
#   worker sees the entries others appended only when it next appends: the largest view
#   is the freshest one ("livemax"). Not "max": a dead worker's reading stays in its file,
#   and after a restore to a smaller log it would outvote every live worker until the
#   master restarts.
#   Not a sum ("livesum" would count the one log once per worker).
# - the latest checkpoint's size, cosignatures and quorum are read from the shared store:
#   the newest reading is the deployment's value ("livemostrecent", as one process reads
#   it at the scrape). Not "max": a new checkpoint has fewer cosignatures than the last
#   until the witnesses answer, and "witnessed" must be able to fall back to 0.
# - divergence is each worker's own checkpointer's finding: the alarm is up while any
#   live worker holds it ("livemax"); the most recent reading would let a worker that
#   found nothing hide another's finding.
AUDIT_TREE_SIZE = Gauge(
    "tongban_audit_tree_size",
    "Audit Merkle tree size as this process sees it (several workers: the largest view).",
    registry=REGISTRY,
    multiprocess_mode="livemax",
)
AUDIT_CHECKPOINT_SIZE = Gauge(
    "tongban_audit_checkpoint_size",
    "Tree size of the latest signed checkpoint.",
    registry=REGISTRY,
    multiprocess_mode="livemostrecent",
)
AUDIT_CHECKPOINT_COSIGNATURES = Gauge(
    "tongban_audit_checkpoint_cosignatures",
    "Witness cosignatures on the latest checkpoint.",
    registry=REGISTRY,
    multiprocess_mode="livemostrecent",
)
AUDIT_CHECKPOINT_WITNESSED = Gauge(
    "tongban_audit_checkpoint_witnessed",
    "1 if the latest checkpoint has the quorum of cosignatures, else 0.",
    registry=REGISTRY,
    multiprocess_mode="livemostrecent",
)
AUDIT_DIVERGED = Gauge(
    "tongban_audit_diverged",
    "1 if a witness cosigned more, or another tree, than this log holds (nothing is served).",
    registry=REGISTRY,
    multiprocess_mode="livemax",
)


def _read_at_scrape(gauge: Gauge, read: Callable[[], float]) -> None:
    """``gauge`` is ``read()`` at each scrape. Under several workers a function's value is
    in no file, so the answering worker also writes its reading to its own file as it
    reads it, before the files are merged (:func:`tongban.http_metrics.exposition`)."""

    def value() -> float:
        reading = read()
        if multiprocess_dir() is not None:
            gauge.set(reading)
        return reading

    gauge.set_function(value)


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
            _read_at_scrape(gauge, lambda: math.nan)
        return

    def cosignatures() -> float:
        cosigners = checkpointer.status()["cosigners"]
        return float(len(cosigners)) if isinstance(cosigners, list) else math.nan

    _read_at_scrape(AUDIT_CHECKPOINT_COSIGNATURES, _guarded(cosignatures))
    _read_at_scrape(
        AUDIT_CHECKPOINT_WITNESSED,
        _guarded(lambda: 1.0 if checkpointer.status()["witnessed"] else 0.0),
    )
    _read_at_scrape(
        AUDIT_DIVERGED,
        _guarded(lambda: 0.0 if checkpointer.status()["diverged"] is None else 1.0),
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
        _read_at_scrape(AUDIT_TREE_SIZE, lambda: math.nan)
        _read_at_scrape(AUDIT_CHECKPOINT_SIZE, lambda: math.nan)
        return

    def checkpoint_size() -> float:
        note = audit.latest_checkpoint()
        return math.nan if note is None else float(note.checkpoint.size)

    _read_at_scrape(AUDIT_TREE_SIZE, _guarded(lambda: audit.size))
    _read_at_scrape(AUDIT_CHECKPOINT_SIZE, _guarded(checkpoint_size))


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
