"""The consent store: grant, read, revoke, spend; on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import datetime as dt
import json
import threading
from typing import Any

import pytest
from sqlalchemy import text

from tests.conftest import ConsentEnv, pairwise_for_tests
from tongban.audit.log import AuditLog
from tongban.audit.vault import Pseudonymizer
from tongban.gateway.consent import (
    CONSENT_TOKEN_TYPE,
    Consent,
    ConsentRefused,
    ConsentStatus,
    ConsentStore,
)
from tongban.gateway.models import ConsentGrant
from tongban.gateway.services import AuditEvents
from tongban.primitives.bodies import parse_body
from tongban.primitives.errors import PROBLEM_BASE, BadRequest, StoreUnavailable, TongbanError
from tongban.primitives.idnumber import make_id, mask
from tongban.primitives.jws import verify_compact
from tongban.primitives.wire import Tri

ADULT = make_id("150622", dt.date(1985, 3, 9), 42)
OTHER_ADULT = make_id("110105", dt.date(1990, 7, 1), 17)
CHILD = make_id("150403", dt.date(2016, 5, 20), 31)  # 9 on the test date
TEEN = make_id("150102", dt.date(2010, 1, 2), 8)  # 16
NEARLY_ADULT = make_id("150102", dt.date(2008, 6, 1), 12)  # 18 on 2026-06-01
ALL_IDS = (ADULT, OTHER_ADULT, CHILD, TEEN, NEARLY_ADULT)


def _body(**changes: object) -> dict[str, object]:
    body: dict[str, object] = {
        "requester": "insurer-a",
        "purposes": ["insurance_claim"],
        "claims": ["maternity_insurance_active"],
        "expires_at": "2026-09-01T00:00:00Z",
        "max_uses": 2,
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


def _grant(store: Any, citizen: str, body: object) -> Any:
    """What the view does: the body parsed into its model, then the store's grant."""
    return store.grant(citizen, parse_body(ConsentGrant, body))


def _at(when: str) -> dt.datetime:
    return dt.datetime.fromisoformat(when)


def _use(store: ConsentStore, consent_id: object, **changes: object) -> Consent:
    kwargs: dict[str, object] = {
        "subject_id": ADULT,
        "requester": "insurer-a",
        "purpose": "insurance_claim",
        "claim": "maternity_insurance_active",
    }
    kwargs.update(changes)
    return store.use(consent_id, **kwargs)  # type: ignore[arg-type]


def _refusal(call, *args, **kwargs) -> TongbanError:
    with pytest.raises(TongbanError) as info:
        call(*args, **kwargs)
    problem = json.dumps(info.value.to_problem())
    assert not any(n in problem for n in ALL_IDS), "a problem detail echoed an ID number"
    return info.value


# --- grant, read, list, revoke -------------------------------------------------------------


def test_grant_read_list_revoke(consent_env: ConsentEnv):
    store = consent_env.store

    granted = _grant(store, ADULT, _body())

    assert granted.status is ConsentStatus.ACTIVE and granted.uses == 0
    assert granted.subject == granted.granted_by == store.pseudonyms.pseudonym(ADULT)
    rendered = granted.to_json()
    assert rendered["subject_masked"] == mask(ADULT) and rendered["granted_by"] == "subject"
    assert rendered["not_before"] == "2026-03-01T08:00:00Z"
    assert rendered["expires_at"] == "2026-09-01T00:00:00Z"
    assert rendered["purposes"] == ["insurance_claim"] and rendered["max_uses"] == 2
    assert ADULT not in json.dumps(rendered) and granted.subject not in json.dumps(
        {k: v for k, v in rendered.items() if k != "artefact"}
    )
    assert store.get(granted.id, ADULT) == granted
    assert [c.id for c in store.list_for(ADULT)] == [granted.id]

    consent_env.clock.now += dt.timedelta(minutes=1)
    revoked = store.revoke(granted.id, ADULT)

    assert revoked.status is ConsentStatus.REVOKED
    assert revoked.to_json()["revoked_at"] == "2026-03-01T08:01:00Z"
    assert store.get(granted.id, ADULT).status is ConsentStatus.REVOKED
    again = _refusal(store.revoke, granted.id, ADULT)
    assert (again.status, again.slug) == (409, "consent-not-active")


def test_someone_else_cannot_see_or_revoke(consent_env: ConsentEnv):
    store = consent_env.store
    granted = _grant(store, ADULT, _body())

    for call in (store.get, store.revoke):
        refusal = _refusal(call, granted.id, OTHER_ADULT)
        assert (refusal.status, refusal.slug) == (404, "not-found")
    assert store.list_for(OTHER_ADULT) == []
    assert _refusal(store.get, "not-an-id", ADULT).status == 404
    assert store.get(granted.id, ADULT).status is ConsentStatus.ACTIVE


def test_list_is_newest_first_and_shows_derived_status(consent_env: ConsentEnv):
    store = consent_env.store
    first = _grant(store, ADULT, _body(expires_at="2026-03-02T00:00:00Z"))
    consent_env.clock.now += dt.timedelta(hours=1)
    second = _grant(store, ADULT, _body(max_uses=1))
    _use(store, second.id, now=consent_env.clock.now)
    consent_env.clock.now = _at("2026-03-03T00:00:00+00:00")

    listed = store.list_for(ADULT)

    assert [c.id for c in listed] == [second.id, first.id]
    assert [c.status for c in listed] == [ConsentStatus.EXHAUSTED, ConsentStatus.EXPIRED]
    assert _refusal(store.revoke, first.id, ADULT).slug == "consent-not-active"


def test_artefact_is_signed_and_names_no_one(consent_env: ConsentEnv):
    granted = _grant(consent_env.store, ADULT, _body())
    public = consent_env.key.public_key

    header, payload = verify_compact(
        granted.artefact,
        {public.key_id: public}.get,
        typ=CONSENT_TOKEN_TYPE,
        algorithms=["SM2"],
    )

    assert header["typ"] == "tongban-consent+jwt" and header["alg"] == "SM2"
    assert payload["jti"] == granted.id and payload["aud"] == "insurer-a"
    # The requester's pairwise subject, as in its answers: not the log's pseudonym.
    assert payload["sub"] == payload["granted_by"] == pairwise_for_tests("insurer-a", ADULT)
    assert granted.subject not in granted.artefact
    assert payload["purposes"] == ["insurance_claim"]
    assert payload["claims"] == ["maternity_insurance_active"]
    assert (payload["nbf"], payload["exp"], payload["max_uses"]) == (
        granted.not_before,
        granted.expires_at,
        2,
    )
    decoded = base64.urlsafe_b64decode(granted.artefact.split(".")[1] + "==").decode()
    assert ADULT not in decoded and ADULT[:17] not in decoded and mask(ADULT) not in decoded


# --- validation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "slug", "field"),
    [
        ({"surprise": 1}, "bad-request", "surprise: unexpected field"),
        ({ADULT: 1}, "bad-request", "…: unexpected field"),
        ({"requester": None}, "bad-request", "requester"),
        ({"requester": 7}, "bad-request", "requester"),
        ({"requester": "nobody-at-all"}, "unknown-requester", "requester"),
        ({"requester": "retired-client"}, "unknown-requester", "requester"),
        ({"purposes": []}, "bad-request", "purposes"),
        ({"purposes": "insurance_claim"}, "bad-request", "purposes"),
        ({"purposes": ["insurance_claim", "insurance_claim"]}, "bad-request", "purposes"),
        ({"purposes": ["astrology"]}, "unknown-purpose", "purpose"),
        ({"claims": None}, "bad-request", "claims"),
        ({"claims": ["shoe_size"]}, "unknown-claim", "claim"),
        ({"claims": ["married"]}, "claim-not-for-purpose", "claims"),
        (
            {"purposes": ["insurance_claim", "school_enrollment"]},
            "claim-not-for-purpose",
            "purposes",
        ),
        ({"expires_at": None}, "bad-request", "expires_at"),
        ({"expires_at": "next tuesday"}, "bad-request", "expires_at"),
        ({"expires_at": "2026-09-01T00:00:00"}, "bad-request", "time zone"),
        ({"expires_at": 1_800_000_000}, "bad-request", "expires_at"),
        ({"expires_at": "2027-03-02T08:00:00Z"}, "bad-request", "expires_at"),
        ({"expires_at": "2026-03-01T07:00:00Z"}, "bad-request", "expires_at"),
        ({"not_before": "2026-10-01T00:00:00Z"}, "bad-request", "expires_at"),
        ({"not_before": "2026-02-01T00:00:00Z"}, "bad-request", "not_before"),
        ({"max_uses": 0}, "bad-request", "max_uses"),
        ({"max_uses": 10_001}, "bad-request", "max_uses"),
        ({"max_uses": True}, "bad-request", "max_uses"),
        ({"max_uses": "3"}, "bad-request", "max_uses"),
        ({"subject": 150622}, "bad-request", "subject"),
        ({"subject": ADULT[:17] + "0" if ADULT[17] != "0" else ADULT[:17] + "1"},
         "invalid-id-number", "id_number"),
    ],
)  # fmt: skip
def test_grant_validation(consent_env: ConsentEnv, changes, slug, field):
    body = _body()
    body.update(changes)
    body = {k: v for k, v in body.items() if v is not None}

    refusal = _refusal(_grant, consent_env.store, ADULT, body)

    assert isinstance(refusal, BadRequest)  # 400, or 422 for an impossible ID number
    assert refusal.type == PROBLEM_BASE + slug
    assert field in refusal.detail
    assert consent_env.store.list_for(ADULT) == [] and consent_env.audit.events == []


def test_grant_body_must_be_an_object(consent_env: ConsentEnv):
    bodies: tuple[object, ...] = (None, [], "consent")
    for body in bodies:
        assert _refusal(_grant, consent_env.store, ADULT, body).slug == "bad-request"


def test_optional_fields_and_defaults(consent_env: ConsentEnv):
    granted = _grant(
        consent_env.store,
        ADULT,
        _body(max_uses=None, not_before="2026-04-01T10:00:00+08:00", subject=ADULT.lower()),
    )

    assert granted.max_uses == 1 and granted.by_guardian is False
    assert granted.to_json()["not_before"] == "2026-04-01T02:00:00Z"


def _payload(env: ConsentEnv, artefact: str) -> dict[str, object]:
    public = env.key.public_key
    _, payload = verify_compact(
        artefact, {public.key_id: public}.get, typ=CONSENT_TOKEN_TYPE, algorithms=["SM2"]
    )
    return payload


def test_artefacts_for_two_requesters_cannot_be_linked(consent_env: ConsentEnv):
    """Finding 8: two requesters comparing the artefacts one citizen gave them (or a child's
    guardian gave them) find no common identifier."""
    store = consent_env.store
    pseudonym = store.pseudonyms.pseudonym(ADULT)
    seen: dict[str, dict[str, object]] = {}
    for requester in ("insurer-a", "edu-bureau"):
        granted = _grant(store, ADULT, _body(requester=requester))
        seen[requester] = _payload(consent_env, granted.artefact)
        assert seen[requester]["sub"] == pairwise_for_tests(requester, ADULT)
        assert pseudonym not in json.dumps(seen[requester]) and ADULT not in granted.artefact
    a, b = seen["insurer-a"], seen["edu-bureau"]
    assert a["sub"] != b["sub"] and a["granted_by"] != b["granted_by"]
    assert not {str(a["sub"]), str(a["granted_by"])} & {str(b["sub"]), str(b["granted_by"])}
    # A guardian's grants: the child and the guardian are pairwise too, and distinct.
    for requester in ("insurer-a", "edu-bureau"):
        by_guardian = _grant(store, ADULT, _body(requester=requester, subject=CHILD))
        child = _payload(consent_env, by_guardian.artefact)
        assert child["sub"] == pairwise_for_tests(requester, CHILD)
        assert child["granted_by"] == pairwise_for_tests(requester, ADULT)
    # The store still finds every consent by the log's pseudonym (a citizen's own list).
    assert len(store.list_for(ADULT)) == 4


# --- guardians ----------------------------------------------------------------------------


def test_guardian_consents_for_a_minor(consent_env: ConsentEnv):
    store = consent_env.store

    granted = _grant(store, ADULT, _body(subject=CHILD))

    assert consent_env.guardians.calls == [(ADULT, CHILD)]
    assert granted.to_json()["granted_by"] == "guardian"
    assert granted.to_json()["subject_masked"] == mask(CHILD)
    assert granted.subject == store.pseudonyms.pseudonym(CHILD)
    assert granted.granted_by == store.pseudonyms.pseudonym(ADULT)
    for viewer in (ADULT, CHILD):  # the guardian who granted it, and the subject
        assert store.get(granted.id, viewer).id == granted.id
        assert [c.id for c in store.list_for(viewer)] == [granted.id]
    assert _use(store, granted.id, subject_id=CHILD).uses == 1
    assert _refusal(_use, store, granted.id).slug == "consent-mismatch"  # not the guardian's
    assert store.revoke(granted.id, ADULT).status is ConsentStatus.REVOKED


@pytest.mark.parametrize(
    ("verdict", "slug"),
    [(Tri.FALSE, "not-a-guardian"), (Tri.UNKNOWN, "guardian-undetermined")],
)
def test_only_a_confirmed_guardian_may_consent(consent_env: ConsentEnv, verdict, slug):
    consent_env.guardians.verdict = verdict

    refusal = _refusal(_grant, consent_env.store, ADULT, _body(subject=TEEN))

    assert (refusal.status, refusal.slug) == (403, slug)
    assert consent_env.store.list_for(TEEN) == [] and consent_env.audit.events == []


def test_without_a_guardian_check_nobody_consents_for_others(consent_env: ConsentEnv):
    consent_env.store.guardian_check = None

    assert _refusal(_grant, consent_env.store, ADULT, _body(subject=CHILD)).slug == "not-a-guardian"


def test_nobody_consents_for_an_adult(consent_env: ConsentEnv):
    refusal = _refusal(_grant, consent_env.store, ADULT, _body(subject=OTHER_ADULT))

    assert (refusal.status, refusal.slug) == (403, "subject-not-a-minor")
    assert consent_env.guardians.calls == []  # decided from the ID number alone


def test_guardian_consent_ends_by_the_18th_birthday(consent_env: ConsentEnv):
    store = consent_env.store
    late = _body(subject=NEARLY_ADULT, expires_at="2026-06-01T00:00:00+08:00")

    assert _grant(store, ADULT, late).by_guardian
    too_late = _body(subject=NEARLY_ADULT, expires_at="2026-06-01T00:00:01+08:00")
    assert "18th" in _refusal(_grant, store, ADULT, too_late).detail


def test_young_children_cannot_consent_themselves(consent_env: ConsentEnv):
    refusal = _refusal(_grant, consent_env.store, CHILD, _body())

    assert (refusal.status, refusal.slug) == (403, "guardian-consent-required")
    assert _grant(consent_env.store, TEEN, _body()).by_guardian is False


# --- use ---------------------------------------------------------------------------------


def test_use_spends_one_use_at_a_time(consent_env: ConsentEnv):
    store = consent_env.store
    granted = _grant(store, ADULT, _body(max_uses=2))

    first = _use(store, granted.id)
    second = _use(store, granted.id)

    assert (first.uses, first.status) == (1, ConsentStatus.ACTIVE)
    assert (second.uses, second.status) == (2, ConsentStatus.EXHAUSTED)
    assert _refusal(_use, store, granted.id).slug == "consent-exhausted"
    assert store.get(granted.id, ADULT).uses == 2


@pytest.mark.parametrize(
    ("consent_id", "changes", "slug"),
    [
        (None, {}, "consent-required"),
        ("", {}, "consent-required"),
        ("A" * 22, {}, "consent-not-found"),
        ("../../etc/passwd", {}, "consent-not-found"),
        ("granted", {"requester": "edu-bureau"}, "consent-not-found"),
        ("granted", {"subject_id": OTHER_ADULT}, "consent-mismatch"),
        ("granted", {"purpose": "underwriting"}, "consent-mismatch"),
        ("granted", {"claim": "married"}, "consent-mismatch"),
        ("granted", {"now": _at("2026-09-01T00:00:00+00:00")}, "consent-expired"),
        ("granted", {"now": _at("2026-03-01T07:59:59+00:00")}, "consent-not-yet-valid"),
    ],
)
def test_use_refusals(consent_env: ConsentEnv, consent_id, changes, slug):
    granted = _grant(consent_env.store, ADULT, _body())
    cid = granted.id if consent_id == "granted" else consent_id

    refusal = _refusal(_use, consent_env.store, cid, **changes)

    assert isinstance(refusal, ConsentRefused)
    assert (refusal.status, refusal.type) == (403, PROBLEM_BASE + slug)
    assert consent_env.store.get(granted.id, ADULT).uses == 0


def test_use_of_a_malformed_consent_id_is_a_bad_request(consent_env: ConsentEnv):
    assert _refusal(_use, consent_env.store, 12345).slug == "bad-request"


def test_not_before_opens_the_window(consent_env: ConsentEnv):
    store = consent_env.store
    granted = _grant(store, ADULT, _body(not_before="2026-04-01T00:00:00Z"))

    assert _refusal(_use, store, granted.id).slug == "consent-not-yet-valid"
    assert _use(store, granted.id, now=_at("2026-04-01T00:00:00+00:00")).uses == 1


def test_revocation_takes_effect_on_the_next_use(consent_env: ConsentEnv):
    store = consent_env.store
    granted = _grant(store, ADULT, _body(max_uses=100))
    assert _use(store, granted.id).uses == 1

    store.revoke(granted.id, ADULT)

    assert _refusal(_use, store, granted.id).slug == "consent-revoked"


def test_concurrent_uses_never_exceed_max_uses(consent_env: ConsentEnv):
    store = consent_env.store
    granted = _grant(store, ADULT, _body(max_uses=3))
    start = threading.Barrier(8)
    outcomes: list[str] = []
    lock = threading.Lock()

    def race() -> None:
        start.wait()
        try:
            _use(store, granted.id)
            outcome = "ok"
        except TongbanError as exc:
            outcome = exc.slug
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=race) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)

    assert sorted(outcomes) == ["consent-exhausted"] * 5 + ["ok"] * 3
    after = store.get(granted.id, ADULT)
    assert (after.uses, after.status) == (3, ConsentStatus.EXHAUSTED)


# --- audit -------------------------------------------------------------------------------


def test_grant_and_revoke_are_audited(consent_env: ConsentEnv):
    store = consent_env.store
    granted = _grant(store, ADULT, _body(subject=TEEN))
    store.revoke(granted.id, ADULT)

    (grant_event, grant_subject), (revoke_event, revoke_subject) = consent_env.audit.records

    assert grant_subject == TEEN  # the log pseudonymises it itself
    assert grant_event["kind"] == "consent_granted"
    assert grant_event["consent_id"] == granted.id and grant_event["requester"] == "insurer-a"
    assert grant_event["purposes"] == ["insurance_claim"]
    assert grant_event["claims"] == ["maternity_insurance_active"]
    assert grant_event["granted_by"] == store.pseudonyms.pseudonym(ADULT)
    assert revoke_event["kind"] == "consent_revoked" and revoke_event["consent_id"] == granted.id
    # The guardian's revocation names the subject by pseudonym: no ID number is held.
    assert revoke_subject is None and revoke_event["subject"] == granted.subject
    assert revoke_event["revoked_by"] == store.pseudonyms.pseudonym(ADULT)
    text_of_events = json.dumps(consent_env.audit.events)
    assert not any(n in text_of_events for n in ALL_IDS)


def test_self_revocation_passes_the_subject_to_the_log(consent_env: ConsentEnv):
    granted = _grant(consent_env.store, ADULT, _body())
    consent_env.store.revoke(granted.id, ADULT)

    assert [s for _, s in consent_env.audit.records] == [ADULT, ADULT]


@pytest.mark.parametrize(
    ("failure", "slug"),
    [(RuntimeError("disk full"), "audit-failed"), (StoreUnavailable("down"), "store-unavailable")],
)
def test_no_change_without_its_audit_event(consent_env: ConsentEnv, failure, slug):
    store = consent_env.store
    kept = _grant(store, ADULT, _body())
    consent_env.audit.failure = failure

    assert _refusal(_grant, store, ADULT, _body()).slug == slug
    assert _refusal(store.revoke, kept.id, ADULT).slug == slug

    assert [(c.id, c.status) for c in store.list_for(ADULT)] == [(kept.id, ConsentStatus.ACTIVE)]
    assert _use(store, kept.id).uses == 1


def test_real_audit_log_stores_no_id_number(tmp_path, claim_catalog, party_keys):
    from tests.conftest import make_consent_env

    env = make_consent_env(f"sqlite:///{tmp_path / 'gw.db'}", claim_catalog, party_keys["gateway"])
    pseudonyms = Pseudonymizer(b"p" * 32, b"v" * 16)
    log = AuditLog(
        f"sqlite:///{tmp_path / 'audit.db'}", pseudonyms, origin="test/audit", create=True
    ).open()
    try:
        env.store.audit = AuditEvents(log)
        granted = _grant(env.store, ADULT, _body(subject=CHILD))
        env.store.revoke(granted.id, CHILD)

        entries, _ = log.entries({}, newest_first=False)
        assert [e.entry["kind"] for e in entries] == ["consent_granted", "consent_revoked"]
        assert {e.entry["subject"] for e in entries} == {pseudonyms.pseudonym(CHILD)}
        assert all("time" in e.entry for e in entries)
        with log.engine.connect() as conn:
            stored = " ".join(conn.execute(text("SELECT entry FROM audit_entries")).scalars())
        assert not any(n in stored for n in ALL_IDS)
        assert log.reveal(pseudonyms.pseudonym(CHILD)) == CHILD  # the vault links it
    finally:
        log.close()
        env.store.engine.dispose()


# --- surface -----------------------------------------------------------------------------


def test_exported_names_are_complete_and_slugs_distinct():
    import inspect

    import tongban.gateway.views_citizen as views
    from tongban.gateway import consent

    for module in (consent, views):
        defined = {
            name
            for name, value in vars(module).items()
            if not name.startswith("_")
            and (inspect.isclass(value) or inspect.isfunction(value))
            and value.__module__ == module.__name__
        }
        assert defined <= set(module.__all__)
        assert all(hasattr(module, name) for name in module.__all__)
    errors = [
        v for v in vars(consent).values() if inspect.isclass(v) and issubclass(v, TongbanError)
    ]
    ours = [e for e in errors if e.__module__ == consent.__name__]
    assert len({e.slug for e in ours}) == len(ours) == 15
    assert all(e.status == 403 for e in ours if issubclass(e, ConsentRefused))
    assert all(e.slug.startswith("consent-") for e in ours if issubclass(e, ConsentRefused))


def test_consent_id_shape(consent_env: ConsentEnv):
    from tongban.gateway.consent import is_consent_id

    granted = _grant(consent_env.store, ADULT, _body())

    assert is_consent_id(granted.id)
    assert not any(is_consent_id(v) for v in (None, 7, "", ADULT, granted.id + "x", "a/b" * 8))
