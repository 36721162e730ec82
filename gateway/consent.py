"""Consent, modelled on the DEPA consent artefact: a citizen (or a minor's guardian on
record) lets one requester ask named claims for named purposes, within a window, a bounded
number of times.

Why it looks like this:

- The store holds the subject's keyed pseudonym (the audit log's), never the ID number, so
  a copy of the consent table does not name anyone. The masked form (region and last four
  characters) is kept so a guardian can tell their children's consents apart.
- Every grant is signed by the gateway on creation (``typ: tongban-consent+jwt``): the
  citizen and the requester hold evidence of exactly what was agreed, verifiable with
  ``/.well-known/jwks.json`` alone.
- ``REVOKED`` is the only status ever written besides ``ACTIVE``; ``EXPIRED`` and
  ``EXHAUSTED`` are derived at read time from the window and the use count, so they can
  never disagree with them.
- :meth:`ConsentStore.use` spends one use with a single conditional ``UPDATE`` (status
  active, inside the window, ``uses < max_uses``): concurrent checks cannot exceed
  ``max_uses`` and a committed revocation stops the very next check.
- Grants and revocations append an audit event inside the same database transaction,
  before the commit: if the log refuses the event, nothing changed.

Error tree (all render as problem+json through the app's one handler)::

    Forbidden (403)
    ├── ConsentRefused            consent-refused: base of the check-time refusals
    │   ├── ConsentRequired       consent-required
    │   ├── ConsentNotFound       consent-not-found
    │   ├── ConsentMismatch       consent-mismatch
    │   ├── ConsentRevoked        consent-revoked
    │   ├── ConsentExpired        consent-expired
    │   ├── ConsentNotYetValid    consent-not-yet-valid
    │   └── ConsentExhausted      consent-exhausted
    ├── NotAGuardian              not-a-guardian
    ├── GuardianUndetermined      guardian-undetermined
    ├── SubjectNotAMinor          subject-not-a-minor
    └── GuardianConsentRequired   guardian-consent-required
    BadRequest (400)
    ├── UnknownRequester          unknown-requester
    ├── ClaimNotForPurpose        claim-not-for-purpose
    ├── UnknownClaim, UnknownPurpose   (from gateway.catalog, as for checks)
    └── InvalidIdNumber           (from primitives.errors; 422)
    Conflict (409)
    └── ConsentNotActive          consent-not-active (revoking what is no longer active)
"""

from __future__ import annotations

import datetime as dt
import json
import re
import secrets
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Connection,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import SQLAlchemyError

from tongban.audit.sink import AuditSink
from tongban.audit.vault import Pseudonymizer
from tongban.policies.errors import AuditFailed
from tongban.primitives.db import make_engine, transaction
from tongban.primitives.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    StoreUnavailable,
    TongbanError,
)
from tongban.primitives.gm import SM2PrivateKey
from tongban.primitives.idnumber import mask, parse
from tongban.primitives.jws import PrivateKey, sign_compact
from tongban.primitives.rotation import FixedKey, FollowedKey, KeySource
from tongban.primitives.wire import Tri

from .catalog import Catalog
from .models import MAX_CONSENT_USES, ConsentGrant
from .oauth.registry import ClientRegistry

__all__ = [
    "ADULT_AGE",
    "CONSENT_TOKEN_TYPE",
    "MAX_LIFETIME",
    "MAX_USES",
    "SELF_CONSENT_AGE",
    "ClaimNotForPurpose",
    "Consent",
    "ConsentExhausted",
    "ConsentExpired",
    "ConsentMismatch",
    "ConsentNotActive",
    "ConsentNotFound",
    "ConsentNotYetValid",
    "ConsentRefused",
    "ConsentRequired",
    "ConsentRevoked",
    "ConsentStatus",
    "ConsentStore",
    "GuardianCheck",
    "GuardianConsentRequired",
    "GuardianUndetermined",
    "NotAGuardian",
    "SubjectNotAMinor",
    "UnknownRequester",
    "consents_table",
    "is_consent_id",
    "metadata",
]

CONSENT_TOKEN_TYPE = "tongban-consent+jwt"  # noqa: S105  # a media type, not a secret
MAX_USES = MAX_CONSENT_USES
MAX_LIFETIME = dt.timedelta(days=365)
ADULT_AGE = 18  # a guardian may consent until the subject's 18th birthday
SELF_CONSENT_AGE = 14  # PIPL art. 31: below this, only a guardian may consent
_NOT_BEFORE_SKEW = dt.timedelta(minutes=5)  # clients' clocks differ a little from ours
_MAX_LIST = 1000
_ID = re.compile(r"[A-Za-z0-9_-]{22}")  # secrets.token_urlsafe(16)
# Ages count in China Standard Time: a birthday begins at local midnight, not UTC's.
_CST = dt.timezone(dt.timedelta(hours=8), "CST")


def is_consent_id(value: object) -> bool:
    """Whether ``value`` has the shape of a consent id. The pipeline records a caller's
    ``consent_id`` in the audit log only if it does, so free text (perhaps an ID number
    pasted in the wrong field) never reaches the log."""
    return isinstance(value, str) and _ID.fullmatch(value) is not None


GuardianCheck = Callable[[str, str], Tri]
"""``guardian_check(guardian_id, child_id)``: police ``guardian_of`` (subject = guardian,
related = child). Only ``Tri.TRUE`` lets a guardian consent."""


# --- errors -------------------------------------------------------------------------


class ConsentRefused(Forbidden):
    """A check that needs consent did not get it; the pipeline catches this one base."""

    slug = "consent-refused"
    title = "Consent does not allow this check"


class ConsentRequired(ConsentRefused):
    slug = "consent-required"
    title = "This purpose needs the subject's consent"


class ConsentNotFound(ConsentRefused):
    slug = "consent-not-found"
    title = "No such consent"


class ConsentMismatch(ConsentRefused):
    slug = "consent-mismatch"
    title = "The consent does not cover this check"


class ConsentRevoked(ConsentRefused):
    slug = "consent-revoked"
    title = "The consent was revoked"


class ConsentExpired(ConsentRefused):
    slug = "consent-expired"
    title = "The consent has expired"


class ConsentNotYetValid(ConsentRefused):
    slug = "consent-not-yet-valid"
    title = "The consent is not valid yet"


class ConsentExhausted(ConsentRefused):
    slug = "consent-exhausted"
    title = "The consent has no uses left"


class NotAGuardian(Forbidden):
    slug = "not-a-guardian"
    title = "Not a guardian on record of the subject"


class GuardianUndetermined(Forbidden):
    slug = "guardian-undetermined"
    title = "Guardianship could not be confirmed"


class SubjectNotAMinor(Forbidden):
    slug = "subject-not-a-minor"
    title = "Only a minor's guardian may consent for someone else"


class GuardianConsentRequired(Forbidden):
    slug = "guardian-consent-required"
    title = "A child under 14 needs a guardian's consent"


class UnknownRequester(BadRequest):
    slug = "unknown-requester"
    title = "Unknown requester"


class ClaimNotForPurpose(BadRequest):
    slug = "claim-not-for-purpose"
    title = "Claims and purposes do not match"


class ConsentNotActive(Conflict):
    slug = "consent-not-active"
    title = "The consent is no longer active"


# --- schema -------------------------------------------------------------------------

metadata = MetaData()

consents_table = Table(
    "consents",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("subject", String(64), nullable=False, index=True),  # keyed pseudonym
    Column("subject_masked", String(18), nullable=False),
    Column("granted_by", String(64), nullable=False, index=True),  # keyed pseudonym
    Column("requester", String(64), nullable=False),
    Column("purposes", Text, nullable=False),  # JSON array, sorted
    Column("claims", Text, nullable=False),  # JSON array, sorted
    # Times are UTC epoch seconds: compared in SQL identically on SQLite and PostgreSQL.
    Column("not_before", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Column("max_uses", Integer, nullable=False),
    Column("uses", Integer, nullable=False),
    Column("status", String(16), nullable=False),  # ACTIVE or REVOKED; the rest is derived
    Column("created", BigInteger, nullable=False),
    Column("revoked_at", BigInteger, nullable=True),
    Column("artefact", Text, nullable=False),
    # The database itself refuses an over-spent consent, whatever a future caller does.
    CheckConstraint("uses >= 0 AND uses <= max_uses", name="ck_consents_uses"),
    CheckConstraint("status IN ('ACTIVE', 'REVOKED')", name="ck_consents_status"),
)


class ConsentStatus(StrEnum):
    ACTIVE = "ACTIVE"
    REVOKED = "REVOKED"
    EXPIRED = "EXPIRED"
    EXHAUSTED = "EXHAUSTED"


def _iso(seconds: int | None) -> str | None:
    if seconds is None:
        return None
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat().replace("+00:00", "Z")


def _epoch(when: dt.datetime) -> int:
    if when.tzinfo is None:
        raise ValueError("now: expected a timezone-aware datetime")
    return int(when.timestamp())


@dataclass(frozen=True, slots=True)
class Consent:
    """A consent as read at one instant: ``status`` is the effective status then."""

    id: str
    subject: str  # pseudonym
    subject_masked: str
    granted_by: str  # pseudonym
    requester: str
    purposes: tuple[str, ...]
    claims: tuple[str, ...]
    not_before: int
    expires_at: int
    max_uses: int
    uses: int
    status: ConsentStatus
    created: int
    revoked_at: int | None
    artefact: str

    @property
    def by_guardian(self) -> bool:
        return self.granted_by != self.subject

    def to_json(self) -> dict[str, Any]:
        """The API form: no pseudonyms outside the signed artefact, no ID number at all."""
        return {
            "id": self.id,
            "subject_masked": self.subject_masked,
            "granted_by": "guardian" if self.by_guardian else "subject",
            "requester": self.requester,
            "purposes": list(self.purposes),
            "claims": list(self.claims),
            "not_before": _iso(self.not_before),
            "expires_at": _iso(self.expires_at),
            "max_uses": self.max_uses,
            "uses": self.uses,
            "status": self.status.value,
            "created": _iso(self.created),
            "revoked_at": _iso(self.revoked_at),
            "artefact": self.artefact,
        }


def _effective(stored: str, uses: int, max_uses: int, expires_at: int, now: int) -> ConsentStatus:
    if stored == ConsentStatus.REVOKED:
        return ConsentStatus.REVOKED
    if now >= expires_at:
        return ConsentStatus.EXPIRED
    if uses >= max_uses:
        return ConsentStatus.EXHAUSTED
    return ConsentStatus.ACTIVE


def _consent(row: Mapping[Any, Any], now: int) -> Consent:
    """A stored row (or the values just inserted) as read at ``now``."""
    uses, max_uses, expires_at = int(row["uses"]), int(row["max_uses"]), int(row["expires_at"])
    revoked_at = row["revoked_at"]
    return Consent(
        id=row["id"],
        subject=row["subject"],
        subject_masked=row["subject_masked"],
        granted_by=row["granted_by"],
        requester=row["requester"],
        purposes=tuple(json.loads(row["purposes"])),
        claims=tuple(json.loads(row["claims"])),
        not_before=int(row["not_before"]),
        expires_at=expires_at,
        max_uses=max_uses,
        uses=uses,
        status=_effective(row["status"], uses, max_uses, expires_at, now),
        created=int(row["created"]),
        revoked_at=None if revoked_at is None else int(revoked_at),
        artefact=row["artefact"],
    )


# --- parsing a grant ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Grant:
    requester: str
    purposes: tuple[str, ...]
    claims: tuple[str, ...]
    not_before: int
    expires_at: int
    max_uses: int
    subject: str | None


def _names(value: list[str], field: str) -> tuple[str, ...]:
    if len(set(value)) != len(value):
        raise BadRequest(f"{field}: names must not repeat")
    return tuple(sorted(value))


def _time(value: str | None, field: str) -> int | None:
    if value is None:
        return None
    expected = f"{field}: expected an RFC 3339 date-time with a time zone"
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise BadRequest(expected) from None
    if when.tzinfo is None:
        raise BadRequest(expected)
    return _epoch(when)


def _parse_grant(body: ConsentGrant, now: int, max_lifetime: dt.timedelta) -> _Grant:
    """The rules the model cannot state: times, their order and range, repeats."""
    purposes, claims = _names(body.purposes, "purposes"), _names(body.claims, "claims")
    not_before = _time(body.not_before, "not_before")
    if not_before is None:
        not_before = now
    elif not_before < now - int(_NOT_BEFORE_SKEW.total_seconds()):
        raise BadRequest("not_before: must not be in the past")
    expires_at = _time(body.expires_at, "expires_at")
    assert expires_at is not None  # required by the model
    if expires_at <= not_before:
        raise BadRequest("expires_at: must be after not_before")
    if expires_at > now + int(max_lifetime.total_seconds()):
        raise BadRequest(f"expires_at: at most {max_lifetime.days} days from now")
    return _Grant(
        body.requester, purposes, claims, not_before, expires_at, body.max_uses, body.subject
    )


def _age(birth: dt.date, today: dt.date) -> int:
    return today.year - birth.year - ((today.month, today.day) < (birth.month, birth.day))


def _birthday(birth: dt.date, years: int) -> dt.date:
    try:
        return birth.replace(year=birth.year + years)
    except ValueError:  # born on 29 February: the birthday falls on 1 March
        return dt.date(birth.year + years, 3, 1)


# --- the store ----------------------------------------------------------------------


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class ConsentStore:
    """Grant, read, revoke and spend consents. Plain Python: no Flask.

    ``pseudonyms`` must be the audit log's (``AuditLog.pseudonyms``), so a consent's subject
    and the subject of the checks made under it are the same pseudonym. Database failures
    become :class:`StoreUnavailable` (503). Every write transaction starts with its write,
    so SQLite's busy timeout (not a stale read snapshot) decides who waits.
    """

    def __init__(
        self,
        engine_or_url: Engine | str,
        *,
        pseudonyms: Pseudonymizer,
        catalog: Catalog,
        registry: ClientRegistry,
        signing_key: PrivateKey | KeySource,
        audit: AuditSink | None,
        pairwise: Callable[[str, str], str],
        guardian_check: GuardianCheck | None = None,
        issuer: str = "tongban-gateway",
        kid: str | None = None,
        max_lifetime: dt.timedelta = MAX_LIFETIME,
        clock: Callable[[], dt.datetime] = _utc_now,
    ) -> None:
        self.engine = (
            make_engine(engine_or_url) if isinstance(engine_or_url, str) else engine_or_url
        )
        self.pseudonyms = pseudonyms
        self.catalog = catalog
        self.registry = registry
        self.audit = audit
        self.guardian_check = guardian_check
        # The artefact names the citizen as the answers do: the requester's pairwise
        # subject (AnswerSigner.pairwise), never the log's global pseudonym.
        self.pairwise = pairwise
        self.issuer = issuer
        self.max_lifetime = max_lifetime
        self.clock = clock
        # A rotating key (FollowedKey): artefacts are signed with its current key.
        self._source: KeySource | None = None
        if isinstance(signing_key, FollowedKey | FixedKey):
            self._source = signing_key
            self._key: PrivateKey = signing_key.current()
        else:
            self._key = signing_key
        if kid is None:
            if not isinstance(self._key, SM2PrivateKey):
                raise ValueError("kid: required for a P-256 signing key")
            kid = self._key.public_key.key_id  # as /.well-known/jwks.json publishes it
        self._kid = kid

    def _signing(self) -> tuple[PrivateKey, str]:
        if self._source is None:
            return self._key, self._kid
        key = self._source.current()
        return key, key.public_key.key_id

    @property
    def kid(self) -> str:
        return self._signing()[1]

    def create_schema(self) -> None:
        """The gateway chain's head revision (tongban.migrations), which holds the consent
        table, for tests and the demo; a deployment runs ``tongban db upgrade``."""
        from tongban.migrations import GATEWAY, upgrade

        try:
            upgrade(self.engine, GATEWAY)
        except SQLAlchemyError as exc:
            raise StoreUnavailable("the consent store is unavailable") from exc

    def _begin(self) -> AbstractContextManager[Connection]:
        return transaction(self.engine, "the consent store")

    def _now(self, now: dt.datetime | None = None) -> int:
        return _epoch(self.clock() if now is None else now)

    def _emit(self, event: dict[str, Any], subject_id: str | None) -> None:
        """Append inside the caller's open transaction; any failure aborts the change."""
        if self.audit is None:
            return
        try:
            self.audit.append(event, subject_id=subject_id)
        except TongbanError:
            raise
        except Exception as exc:
            raise AuditFailed("audit: the consent event was not recorded") from exc

    # --- granting -----------------------------------------------------------------

    def grant(self, citizen_id: str, body: ConsentGrant) -> Consent:
        """Record the consent ``body`` given by the authenticated citizen,
        for themselves or, with ``subject``, for a minor they are a guardian of."""
        now_dt = self.clock()
        now = _epoch(now_dt)
        req = _parse_grant(body, now, self.max_lifetime)
        grantor = parse(citizen_id).number
        subject_id = grantor if req.subject is None else parse(req.subject).number
        today = now_dt.astimezone(_CST).date()
        self._check_grantor(grantor, subject_id, req, today)
        self._check_scope(req)
        consent_id = secrets.token_urlsafe(16)
        subject = self.pseudonyms.pseudonym(subject_id)
        granted_by = self.pseudonyms.pseudonym(grantor)
        key, kid = self._signing()
        artefact = sign_compact(
            {
                "iss": self.issuer,
                "jti": consent_id,
                # Pairwise for the requester: two requesters holding artefacts of one
                # citizen cannot tell that they are about the same person (finding 8).
                "sub": self.pairwise(req.requester, subject_id),
                "granted_by": self.pairwise(req.requester, grantor),
                "aud": req.requester,
                "purposes": list(req.purposes),
                "claims": list(req.claims),
                "nbf": req.not_before,
                "exp": req.expires_at,
                "iat": now,
                "max_uses": req.max_uses,
            },
            key,
            typ=CONSENT_TOKEN_TYPE,
            kid=kid,
        )
        row = {
            "id": consent_id,
            "subject": subject,
            "subject_masked": mask(subject_id),
            "granted_by": granted_by,
            "requester": req.requester,
            "purposes": json.dumps(list(req.purposes)),
            "claims": json.dumps(list(req.claims)),
            "not_before": req.not_before,
            "expires_at": req.expires_at,
            "max_uses": req.max_uses,
            "uses": 0,
            "status": ConsentStatus.ACTIVE.value,
            "created": now,
            "revoked_at": None,
            "artefact": artefact,
        }
        with self._begin() as conn:
            conn.execute(insert(consents_table).values(**row))
            self._emit(
                {
                    "kind": "consent_granted",
                    "consent_id": consent_id,
                    "requester": req.requester,
                    "purposes": list(req.purposes),
                    "claims": list(req.claims),
                    "granted_by": granted_by,
                    "not_before": _iso(req.not_before),
                    "expires_at": _iso(req.expires_at),
                    "max_uses": req.max_uses,
                },
                subject_id,
            )
        return _consent(row, now)

    def _check_grantor(self, grantor: str, subject_id: str, req: _Grant, today: dt.date) -> None:
        birth = parse(subject_id).birth_date
        age = _age(birth, today)
        if subject_id == grantor:
            if age < SELF_CONSENT_AGE:
                raise GuardianConsentRequired("subject: a guardian must consent for this subject")
            return
        if age >= ADULT_AGE:
            raise SubjectNotAMinor("subject: only a minor's guardian may consent for them")
        adulthood = dt.datetime.combine(_birthday(birth, ADULT_AGE), dt.time(), _CST)
        if req.expires_at > _epoch(adulthood):
            raise BadRequest("expires_at: a guardian's consent must end by the subject's 18th")
        if self.guardian_check is None:
            raise NotAGuardian("subject: guardianship cannot be verified on this gateway")
        verdict = self.guardian_check(grantor, subject_id)
        if verdict is Tri.UNKNOWN:
            raise GuardianUndetermined("subject: the household registry could not confirm it")
        if verdict is not Tri.TRUE:
            raise NotAGuardian("subject: you are not a guardian on record of this subject")

    def _check_scope(self, req: _Grant) -> None:
        client = self.registry.get(req.requester)
        if client is None or not client.enabled:
            raise UnknownRequester("requester: not a registered, enabled requester")
        for name in req.purposes:
            self.catalog.purpose(name)
        served: set[str] = set()
        for name in req.claims:
            claim = self.catalog.claim(name)
            covered = claim.purposes.intersection(req.purposes)
            if not covered:
                raise ClaimNotForPurpose(f"claims: {name} serves none of the given purposes")
            served |= covered
        idle = sorted(set(req.purposes) - served)
        if idle:
            raise ClaimNotForPurpose(f"purposes: {idle[0]} is served by none of the claims")

    # --- reading ------------------------------------------------------------------

    def _visible(self, citizen_id: str) -> tuple[str, Any]:
        me = self.pseudonyms.pseudonym(parse(citizen_id).number)
        t = consents_table
        return me, or_(t.c.subject == me, t.c.granted_by == me)

    def get(self, consent_id: str, citizen_id: str) -> Consent:
        """The consent if the citizen is its subject or the guardian who granted it; a
        plain 404 otherwise, so nobody learns that someone else's consent exists."""
        if not is_consent_id(consent_id):
            raise NotFound("consent: no such consent")
        _, mine = self._visible(citizen_id)
        t = consents_table
        with self._begin() as conn:
            row = conn.execute(select(t).where(t.c.id == consent_id, mine)).first()
        if row is None:
            raise NotFound("consent: no such consent")
        return _consent(row._mapping, self._now())

    def list_for(self, citizen_id: str) -> list[Consent]:
        """Consents the citizen is the subject of or granted as a guardian, newest first
        (at most 1000)."""
        _, mine = self._visible(citizen_id)
        t = consents_table
        stmt = select(t).where(mine).order_by(t.c.created.desc(), t.c.id).limit(_MAX_LIST)
        with self._begin() as conn:
            rows = conn.execute(stmt).all()
        now = self._now()
        return [_consent(r._mapping, now) for r in rows]

    # --- revoking -----------------------------------------------------------------

    def revoke(self, consent_id: str, citizen_id: str) -> Consent:
        """Revoke an active consent (by its subject or the guardian who granted it). The
        next :meth:`use` sees it: the update and its audit event commit together."""
        if not is_consent_id(consent_id):
            raise NotFound("consent: no such consent")
        number = parse(citizen_id).number
        me, mine = self._visible(number)
        now = self._now()
        t = consents_table
        with self._begin() as conn:
            done = conn.execute(
                update(t)
                .where(
                    t.c.id == consent_id,
                    mine,
                    t.c.status == ConsentStatus.ACTIVE.value,
                    t.c.expires_at > now,
                    t.c.uses < t.c.max_uses,
                )
                .values(status=ConsentStatus.REVOKED.value, revoked_at=now)
            ).rowcount
            row = conn.execute(select(t).where(t.c.id == consent_id, mine)).first()
            if row is None:
                raise NotFound("consent: no such consent")
            consent = _consent(row._mapping, now)
            if done != 1:
                raise ConsentNotActive(f"consent: already {consent.status.value.lower()}")
            event = {
                "kind": "consent_revoked",
                "consent_id": consent.id,
                "requester": consent.requester,
                "purposes": list(consent.purposes),
                "claims": list(consent.claims),
                "granted_by": consent.granted_by,
                "revoked_by": me,
                # A guardian's revocation: we hold no ID number for the subject, only the
                # pseudonym, which the grant's entry already linked in the vault.
                "subject": consent.subject,
            }
            self._emit(event, number if consent.subject == me else None)
        return consent

    # --- spending -----------------------------------------------------------------

    def use(
        self,
        consent_id: object,
        *,
        subject_id: str,
        requester: str,
        purpose: str,
        claim: str,
        now: dt.datetime | None = None,
    ) -> Consent:
        """Spend one use of ``consent_id`` for this check, or raise a :class:`ConsentRefused`
        naming why. ``None`` means the request carried no consent: ``consent-required``.

        A consent issued to another requester is reported as not found, so a requester
        cannot probe for consents that are not theirs. The use is spent when the check is
        admitted, whatever the departments answer later: the consent bounds the number
        of questions asked, not of answers delivered.
        """
        if consent_id is None or consent_id == "":
            raise ConsentRequired("consent_id: this purpose needs the subject's consent")
        if not isinstance(consent_id, str):
            raise BadRequest("consent_id: expected a string")
        if not is_consent_id(consent_id):
            raise ConsentNotFound("consent_id: no such consent")
        at = self._now(now)
        t = consents_table
        with self._begin() as conn:
            row = conn.execute(select(t).where(t.c.id == consent_id)).first()
        if row is None or row.requester != requester:
            raise ConsentNotFound("consent_id: no such consent")
        current = _consent(row._mapping, at)
        if current.subject != self.pseudonyms.pseudonym(subject_id):
            raise ConsentMismatch("consent_id: given for a different subject")
        if purpose not in current.purposes:
            raise ConsentMismatch("purpose: not covered by the consent")
        if claim not in current.claims:
            raise ConsentMismatch("claim: not covered by the consent")
        self._refuse_unless_active(current, at)
        # The read above only explains refusals; this UPDATE alone decides, atomically.
        with self._begin() as conn:
            uses = conn.execute(
                update(t)
                .where(
                    t.c.id == consent_id,
                    t.c.status == ConsentStatus.ACTIVE.value,
                    t.c.not_before <= at,
                    t.c.expires_at > at,
                    t.c.uses < t.c.max_uses,
                )
                .values(uses=t.c.uses + 1)
                .returning(t.c.uses)
            ).scalar()
            latest = (
                None
                if uses is not None
                else conn.execute(select(t).where(t.c.id == consent_id)).first()
            )
        if uses is None:  # lost a race since the read: revoked or spent meanwhile
            self._refuse_unless_active(_consent(latest._mapping, at) if latest else current, at)
            raise ConsentRefused("consent_id: not usable now")
        return replace(
            current,
            uses=int(uses),
            status=_effective("ACTIVE", int(uses), current.max_uses, current.expires_at, at),
        )

    @staticmethod
    def _refuse_unless_active(consent: Consent, now: int) -> None:
        if consent.status is ConsentStatus.REVOKED:
            raise ConsentRevoked("consent_id: revoked by the subject")
        if consent.status is ConsentStatus.EXPIRED:
            raise ConsentExpired("consent_id: the validity window has ended")
        if consent.status is ConsentStatus.EXHAUSTED:
            raise ConsentExhausted("consent_id: no uses left")
        if now < consent.not_before:
            raise ConsentNotYetValid("consent_id: the validity window has not started")
