"""The gateway ↔ adapter protocol, both ends, without any HTTP.

A request is a compact JWS signed by the gateway (``typ: tongban-predicate-request+jwt``)
whose payload carries one :class:`PredicateCall`, the department as audience, a short
lifetime and a unique ``jti``. The answer is a compact JWS signed by the department's own
SM2 key (``typ: tongban-predicate-answer+jwt``) that names the request it answers, so the
gateway can neither be fed an old answer nor one meant for another question.

On the wire both travel sealed (primitives/envelope.py, docs/envelope.md): the gateway seals
each signed request to the department's SM2 key (:func:`seal_request`), the adapter opens
it, refuses anything else (``envelope-refused``) and seals its signed answer back under the
request's SM4 key (:meth:`AdapterCore.handle`), which the gateway opens
(:func:`open_answer`). ``envelope=False`` on :class:`AdapterCore` and on the
:class:`~tongban.adapters.client.DepartmentClient` turns it off, for the benchmark only.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol

from typing_extensions import TypeVar

from tongban.federation.statistics import Release, Statistic, UnknownStatistic
from tongban.primitives.envelope import Opener, Sealed, Sealer, sealed_length
from tongban.primitives.errors import EnvelopeRefused, Unauthenticated
from tongban.primitives.gm import SM2PrivateKey, SM2PublicKey
from tongban.primitives.jws import check_audience, check_time_claims, sign_compact, verify_compact
from tongban.primitives.replay import MemoryReplayCache, ReplayCache
from tongban.primitives.wire import (
    MAX_BATCH,
    BatchCall,
    Message,
    PredicateCall,
    StatisticCall,
    Tri,
    parse_message,
)

from .evaluate import Evaluator, PredicateSource
from .statistics import LocalStatistics

__all__ = [
    "ANSWER_TYP",
    "ENVELOPE_PURPOSE",
    "GATEWAY_ISSUER",
    "MAX_BATCH",
    "MAX_SEALED_ANSWER",
    "MAX_SEALED_REQUEST",
    "REQUEST_TYP",
    "AdapterCore",
    "Answer",
    "RequestSigner",
    "StatisticsContributor",
    "open_answer",
    "seal_request",
    "verify_answer",
    "verify_batch_answer",
    "verify_statistic_answer",
]

REQUEST_TYP = "tongban-predicate-request+jwt"
ANSWER_TYP = "tongban-predicate-answer+jwt"
GATEWAY_ISSUER = "tongban-gateway"
REQUEST_LIFETIME = 30  # seconds: a request is used at once or never
MAX_ANSWER = 64 * 1024  # characters of a predicate or batch answer
#: A statistic answer carries the ciphertexts: ~1 KiB of hex per 2048-bit ciphertext, ~93
#: counters each; 8 MiB covers 700,000 counters.
MAX_STATISTIC_ANSWER = 8 * 1024 * 1024
#: The envelope purpose of the gateway <-> adapter exchange (requests and their answers).
ENVELOPE_PURPOSE = "tongban-predicate"
MAX_SEALED_REQUEST = 64 * 1024  # the adapter's MAX_BODY: a sealed batch of 500 is ~35 KiB
MAX_SEALED_ANSWER = sealed_length(MAX_STATISTIC_ANSWER)
_ALGS = ("SM2",)
log = logging.getLogger("tongban.adapter")
_HEX = re.compile(r"[0-9a-f]{1,4096}")
# What an answer's ``as_of`` may be: an ISO 8601 date, or a date and time with an offset.
_AS_OF = re.compile(r"\d{4}-\d{2}-\d{2}(?:T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?(?:Z|[+-]\d{2}:\d{2}))?")


@dataclass(frozen=True, slots=True)
class Answer:
    department: str
    predicate: str
    result: Tri
    token: str  # the department's signed answer, kept as evidence
    #: What the answer reflects (ISO 8601): a managed store's reference date, or the time
    #: a live department database was read. None from an adapter that does not say.
    as_of: str | None = None


class StatisticsContributor(Protocol):
    """A department's side of an encrypted statistic (:class:`LocalStatistics`)."""

    def contribute(
        self,
        name: object,
        params: object,
        key_jwk: object,
        parties: object,
        release: object = None,
    ) -> tuple[Statistic, dict[str, str], str, list[int], Release]: ...


class RequestSigner:
    """Gateway side: signs predicate requests with the gateway's SM2 key."""

    def __init__(self, key: SM2PrivateKey, *, issuer: str = GATEWAY_ISSUER) -> None:
        self.key = key
        self.issuer = issuer
        self.kid = key.public_key.key_id

    def sign_message(
        self, department: str, message: Message, *, now: float | None = None
    ) -> tuple[str, str]:
        """A signed request carrying ``message`` under its kind, and the request's jti."""
        return self._sign(department, {message.kind: message.to_json()}, now)

    def sign(
        self, department: str, call: PredicateCall, *, now: float | None = None
    ) -> tuple[str, str]:
        return self.sign_message(department, call, now=now)

    def sign_batch(
        self, department: str, predicate: str, params: Mapping[str, str], subjects: list[str]
    ) -> tuple[str, str]:
        if not 0 < len(subjects) <= MAX_BATCH:
            raise ValueError(f"a batch request carries 1..{MAX_BATCH} subjects")
        return self.sign_message(department, BatchCall(predicate, dict(params), tuple(subjects)))

    def sign_statistic(
        self,
        department: str,
        name: str,
        params: Mapping[str, str],
        job: str,
        key_jwk: Mapping[str, Any],
        parties: int,
        release: Mapping[str, Any] | None = None,
    ) -> tuple[str, str]:
        """Ask a department for its encrypted vector of one statistic, for one job."""
        message = StatisticCall(
            job, name, dict(params), dict(key_jwk), parties,
            dict(release) if release is not None else None,
        )  # fmt: skip
        return self.sign_message(department, message)

    def _sign(self, department: str, body: dict[str, Any], now: float | None) -> tuple[str, str]:
        now = time.time() if now is None else now
        jti = secrets.token_urlsafe(16)
        payload = {
            "iss": self.issuer,
            "aud": department,
            "iat": int(now),
            "exp": int(now) + REQUEST_LIFETIME,
            "jti": jti,
            **body,
        }
        return sign_compact(payload, self.key, typ=REQUEST_TYP, kid=self.kid), jti


def _resolver(keys: Mapping[str, SM2PublicKey]) -> Callable[[str], SM2PublicKey | None]:
    return keys.get


#: The core's source of answers; a bare ``AdapterCore`` is over any source.
S_co = TypeVar("S_co", bound=PredicateSource, default=PredicateSource, covariant=True)


class AdapterCore(Generic[S_co]):
    """Department side: authenticate, evaluate, sign. Raises :class:`TongbanError`s."""

    def __init__(
        self,
        evaluator: S_co,
        key: SM2PrivateKey,
        gateway_keys: Mapping[str, SM2PublicKey],
        *,
        replay: ReplayCache | None = None,
        gateway_issuer: str = GATEWAY_ISSUER,
        clock: Callable[[], float] = time.time,
        statistics: StatisticsContributor | None = None,
        envelope: bool = True,
        envelope_key: SM2PrivateKey | None = None,
    ) -> None:
        """``evaluator`` answers the predicates (a managed :class:`Evaluator` or a
        department file's source). ``statistics``: how this department contributes to
        encrypted statistics; a managed store's by default, none for any other source
        (every statistic request is then refused as one it does not contribute to).
        ``envelope``: requests must come sealed to ``envelope_key`` (by default ``key``)
        and answers go back sealed; ``False`` for the benchmark's comparison only."""
        self.evaluator = evaluator
        self.name = evaluator.name
        self.key = key
        self.kid = key.public_key.key_id
        self.gateway_keys = dict(gateway_keys)
        self.replay = replay or MemoryReplayCache()
        self.gateway_issuer = gateway_issuer
        self.clock = clock
        if statistics is None and isinstance(evaluator, Evaluator):
            statistics = LocalStatistics(evaluator.store)
        self.statistics = statistics
        self.opener = Opener(envelope_key or key) if envelope else None

    def health(self) -> dict[str, Any]:
        """The adapter's health: where its answers come from and whether that source can
        be read now (``ready``). Never raises: an unreachable source is reported."""
        source = self.evaluator.health()
        ready = bool(source["reachable"])
        body: dict[str, Any] = {
            "status": "ok" if ready else "unavailable",
            "ready": ready,
            "department": self.name,
            "source": dict(source),
        }
        if ready:
            body["as_of"] = self.evaluator.answer_as_of()
        return body

    def authenticate(self, token: str) -> tuple[dict[str, Any], str]:
        _, payload = verify_compact(
            token, _resolver(self.gateway_keys), typ=REQUEST_TYP, algorithms=_ALGS
        )
        now = self.clock()
        check_time_claims(payload, now=now)
        check_audience(payload, self.name)
        if payload.get("iss") != self.gateway_issuer:
            raise Unauthenticated("unexpected issuer")
        if payload["exp"] - payload["iat"] > REQUEST_LIFETIME:
            raise Unauthenticated("request lifetime too long")
        jti = payload.get("jti")
        if not isinstance(jti, str) or not 16 <= len(jti) <= 64:
            raise Unauthenticated("missing or malformed jti")
        if not self.replay.first_use(jti, float(payload["exp"])):
            raise Unauthenticated("request replayed")
        return payload, jti

    def handle(self, body: str) -> str:
        """A request as it comes off the wire: sealed to this department (unless the
        envelope is off), then :meth:`handle_jws`; the signed answer goes back sealed."""
        if self.opener is None:
            return self.handle_jws(body)
        try:
            opened = self.opener.open(
                body, purpose=ENVELOPE_PURPOSE, max_length=MAX_SEALED_REQUEST, remember=False
            )
            try:
                token = opened.plaintext.decode("ascii")
            except UnicodeDecodeError:
                raise EnvelopeRefused("envelope: the sealed request is not a JWS") from None
        except EnvelopeRefused as exc:
            # The detail names the fault, never the content (there is none to name).
            log.warning("%s: %s: %s", self.name, exc.slug, exc.detail)
            raise
        answer = self.handle_jws(token)
        self.opener.remember(opened)  # only a key that carried a gateway-signed request
        return opened.seal_reply(answer.encode("ascii"))

    def handle_jws(self, token: str) -> str:
        """The signed request in clear, its signed answer in clear (inside the envelope;
        the whole exchange when it is off)."""
        payload, jti = self.authenticate(token)
        now = int(self.clock())
        answer: dict[str, Any] = {
            "iss": self.name,
            "aud": self.gateway_issuer,
            "iat": now,
            "exp": now + REQUEST_LIFETIME,
            "in_reply_to": jti,
        }
        message = parse_message(payload)
        handlers: dict[type, Callable[[Any], dict[str, Any]]] = {
            PredicateCall: self._answer_call,
            BatchCall: self._answer_batch,
            StatisticCall: self._answer_statistic,
        }
        answer.update(handlers[type(message)](message))
        return sign_compact(answer, self.key, typ=ANSWER_TYP, kid=self.kid)

    def _answer_call(self, call: PredicateCall) -> dict[str, Any]:
        as_of = self.evaluator.answer_as_of()  # before reading: all it reflects
        result = self.evaluator.evaluate(call)
        return {"predicate": call.predicate, "result": result.value, "as_of": as_of}

    def _answer_batch(self, batch: BatchCall) -> dict[str, Any]:
        as_of = self.evaluator.answer_as_of()
        results = self.evaluator.evaluate_many(
            batch.predicate, dict(batch.params), list(batch.subjects)
        )
        return {"predicate": batch.predicate, "results": [r.value for r in results], "as_of": as_of}

    def _answer_statistic(self, ask: StatisticCall) -> dict[str, Any]:
        if self.statistics is None:
            raise UnknownStatistic(f"statistic: {self.name} does not contribute to it")
        statistic, clean, fingerprint, ciphertexts, applied = self.statistics.contribute(
            ask.name, ask.params, ask.key, ask.parties, ask.release
        )
        return {
            "job": ask.job,
            "statistic": statistic.name,
            "params": clean,
            "department": self.name,
            "key": fingerprint,
            "release": applied.to_json(),
            "ciphertexts": [format(c, "x") for c in ciphertexts],
        }


def seal_request(sealer: Sealer, department_key: SM2PublicKey, token: str) -> Sealed:
    """Gateway side: a signed request sealed to the department's SM2 key."""
    return sealer.seal(department_key, token.encode("ascii"), purpose=ENVELOPE_PURPOSE)


def open_answer(sealed: Sealed, body: bytes) -> str:
    """Gateway side: the department's signed answer out of its sealed reply to ``sealed``;
    :class:`EnvelopeRefused` for anything else (a check then counts it as undetermined)."""
    try:
        envelope = body.decode("ascii")
    except UnicodeDecodeError:
        raise EnvelopeRefused("envelope: the answer is not sealed") from None
    try:
        return sealed.open_reply(envelope, max_length=MAX_SEALED_ANSWER).decode("ascii")
    except UnicodeDecodeError:
        raise EnvelopeRefused("envelope: the sealed answer is not a JWS") from None


def _verified_answer(
    token: str,
    department: str,
    department_key: SM2PublicKey,
    request_jti: str,
    predicate: str,
    gateway_issuer: str,
    now: float,
    *,
    kind: str = "predicate",
) -> dict[str, Any]:
    """The answer must be signed by this department and answer this very request."""
    kid = department_key.key_id
    _, payload = verify_compact(
        token,
        {kid: department_key}.get,
        typ=ANSWER_TYP,
        algorithms=_ALGS,
        max_length=MAX_STATISTIC_ANSWER if kind == "statistic" else MAX_ANSWER,
    )
    check_time_claims(payload, now=now)
    check_audience(payload, gateway_issuer)
    if payload.get("iss") != department or payload.get("in_reply_to") != request_jti:
        raise Unauthenticated("answer does not match the request")
    if payload.get(kind) != predicate:
        raise Unauthenticated("answer does not match the request")
    return payload


def verify_answer(
    token: str,
    *,
    department: str,
    department_key: SM2PublicKey,
    request_jti: str,
    predicate: str,
    gateway_issuer: str = GATEWAY_ISSUER,
    now: float | None = None,
) -> Answer:
    payload = _verified_answer(
        token,
        department,
        department_key,
        request_jti,
        predicate,
        gateway_issuer,
        time.time() if now is None else now,
    )
    try:
        result = Tri(str(payload.get("result")))
    except ValueError as exc:
        raise Unauthenticated("answer carries no valid result") from exc
    return Answer(department, predicate, result, token, _as_of(payload))


def _as_of(payload: Mapping[str, Any]) -> str | None:
    """The answer's ``as_of``, signed with it: absent (an adapter that does not say), or an
    ISO 8601 date or date-time."""
    as_of = payload.get("as_of")
    if as_of is None:
        return None
    if not isinstance(as_of, str) or not _AS_OF.fullmatch(as_of):
        raise Unauthenticated("answer carries a malformed as_of")
    return as_of


def verify_batch_answer(
    token: str,
    *,
    department: str,
    department_key: SM2PublicKey,
    request_jti: str,
    predicate: str,
    count: int,
    gateway_issuer: str = GATEWAY_ISSUER,
) -> list[Tri]:
    payload = _verified_answer(
        token, department, department_key, request_jti, predicate, gateway_issuer, time.time()
    )
    _as_of(payload)
    results = payload.get("results")
    if not isinstance(results, list) or len(results) != count:
        raise Unauthenticated("answer does not match the request")
    try:
        return [Tri(str(r)) for r in results]
    except ValueError as exc:
        raise Unauthenticated("answer carries no valid result") from exc


def verify_statistic_answer(
    token: str,
    *,
    department: str,
    department_key: SM2PublicKey,
    request_jti: str,
    statistic: str,
    job: str,
    key_fingerprint: str,
    gateway_issuer: str = GATEWAY_ISSUER,
    release: Mapping[str, Any] | None = None,
) -> list[int]:
    """The department's signed, encrypted vector for this job: the signature covers the
    ciphertexts, so any change to them on the way is detected here. With ``release``, the
    department must have applied exactly those rules (a raised threshold is accepted:
    it only suppresses more)."""
    payload = _verified_answer(
        token,
        department,
        department_key,
        request_jti,
        statistic,
        gateway_issuer,
        time.time(),
        kind="statistic",
    )
    if (
        payload.get("job") != job
        or payload.get("department") != department
        or payload.get("key") != key_fingerprint
    ):
        raise Unauthenticated("answer does not match the request")
    if release is not None:
        applied = payload.get("release")
        if (
            not isinstance(applied, Mapping)
            or applied.get("epsilon") != release.get("epsilon")
            or not isinstance(applied.get("threshold"), int)
            or applied["threshold"] < release.get("threshold", 0)
        ):
            raise Unauthenticated("answer did not apply the requested release rules")
    hexes = payload.get("ciphertexts")
    if not isinstance(hexes, list) or not hexes:
        raise Unauthenticated("answer carries no ciphertexts")
    out: list[int] = []
    for h in hexes:
        if not isinstance(h, str) or not _HEX.fullmatch(h):
            raise Unauthenticated("answer carries a malformed ciphertext")
        out.append(int(h, 16))
    return out
