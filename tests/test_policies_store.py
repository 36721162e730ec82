"""The policy store on SQLite and PostgreSQL: seeding, other processes catching up, the
change format, and decisions staying consistent while changes are applied concurrently."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from tests.conftest import RecordingAudit
from tongban.policies import (
    BasisEdit,
    BasisOp,
    Change,
    InvalidPolicy,
    PolicyAdmin,
    PolicyEnforcer,
    PolicyStore,
    Reason,
    Rule,
    RuleEdit,
    RuleOp,
    default_rules,
    open_enforcer,
)

LI, WANG = "admin-li", "admin-wang"
EDU_POLICE = "p, education, police, birth_registered, school_enrollment, allow"
REVOKE = Change.remove(EDU_POLICE)
RESTORE = Change.add(EDU_POLICE)
EDU_ASK = ("edu-bureau", "birth_registered", ("health", "police"), "school_enrollment")


def _allowed(enforcer: PolicyEnforcer) -> bool:
    return enforcer.decide(*EDU_ASK).allowed


# --- store -----------------------------------------------------------------------------------


def test_store_is_seeded_once(policy_env):
    rules, bases = policy_env.store.load()
    assert rules == default_rules()
    assert bases["school_enrollment"].startswith("PIPL art. 13(1)(3)")
    assert policy_env.store.head_version() == policy_env.enforcer.version
    # A second start on the same store neither reseeds nor changes the version.
    assert policy_env.fresh_version() == policy_env.enforcer.version
    assert policy_env.store.load() == (rules, bases)


def test_in_memory_sqlite_is_shared_across_threads(claim_catalog):
    store = PolicyStore.from_url("sqlite://", create=True)
    version = open_enforcer(store, claim_catalog).version
    seen: list[str | None] = []
    thread = threading.Thread(target=lambda: seen.append(store.head_version()))
    thread.start()
    thread.join()
    assert seen == [version]


def test_stored_claim_groups_cover_a_class_of_claims(policy_env):
    group = Change.add(
        "g2, married, family_status",
        "g2, household_in_district, family_status",
        "p, analyst, *, family_status, school_enrollment, allow",
    )
    version = policy_env.admin.approve(policy_env.admin.propose(LI, group), WANG)

    stored, _ = policy_env.store.load()
    assert Rule.parse("g2, married, family_status") in stored
    fresh = open_enforcer(policy_env.store, policy_env.catalog)
    assert fresh.version == version
    for claim, department in (("married", "civil"), ("household_in_district", "police")):
        decision = fresh.decide("analyst", claim, [department], "school_enrollment")
        assert decision.allowed
        assert decision.matched_rule == (
            "analyst",
            "*",
            "family_status",
            "school_enrollment",
            "allow",
        )
    assert not fresh.decide(
        "analyst", "low_income_household", ["civil"], "school_enrollment"
    ).allowed


def test_other_processes_see_the_change_after_reload(policy_env):
    elsewhere = open_enforcer(policy_env.store, policy_env.catalog)
    other = PolicyAdmin(policy_env.store, elsewhere, policy_env.catalog, RecordingAudit())
    before = elsewhere.version
    version = policy_env.admin.approve(policy_env.admin.propose(LI, REVOKE), WANG)

    # The other process still enforces what it loaded; the head row tells it to reload.
    assert elsewhere.version == before != version == policy_env.store.head_version()
    assert other.reload() == version == elsewhere.version
    assert not _allowed(elsewhere)


def test_change_json_round_trip():
    change = Change(
        (RuleEdit(RuleOp.ADD, Rule.parse("g2, married, household")), *REVOKE.rules),
        (
            BasisEdit(BasisOp.SET, "underwriting", "PIPL art. 13(1)(2)"),
            BasisEdit(BasisOp.UNSET, "school_enrollment"),
        ),
    )
    doc = json.loads(json.dumps(change.to_json()))
    assert Change.from_json(doc) == change
    bad: Any
    for bad in (
        None,
        [],
        {"rules": {}},
        {"rules": [{"op": "drop", "rule": ["p"]}]},
        {"rules": [{"op": "add", "rule": ["p", 1]}]},
        {"extra": []},
        {"legal_bases": [{"op": "set", "purpose": 3}]},
    ):
        with pytest.raises(InvalidPolicy):
            Change.from_json(bad)


# --- concurrency -----------------------------------------------------------------------------


def test_decisions_stay_consistent_while_changes_apply(policy_env):
    original = policy_env.enforcer.version
    expected = {original: True}
    results: list[tuple[str, bool, str]] = []
    errors: list[BaseException] = []
    stop, progress = threading.Event(), threading.Event()

    def decide_forever() -> None:
        try:
            while not stop.is_set():
                d = policy_env.enforcer.decide(*EDU_ASK)
                results.append((d.policy_version, d.allowed, d.reason))
                n = policy_env.enforcer.decide(
                    "insurer-a", "birth_registered", ("health", "police"), "underwriting"
                )
                results.append((n.policy_version, n.allowed, n.reason))
                progress.set()
        except BaseException as exc:
            errors.append(exc)

    def completions(count: int) -> None:
        # Distinct completions after this point; with four threads, at most four of them
        # can have started before it, so the fifth saw the current policy.
        for _ in range(count):
            progress.clear()
            assert progress.wait(10)

    threads = [threading.Thread(target=decide_forever) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        completions(5)
        for _ in range(3):
            revoked = policy_env.admin.approve(policy_env.admin.propose(LI, REVOKE), WANG)
            expected[revoked] = False
            completions(5)
            assert policy_env.admin.approve(policy_env.admin.propose(WANG, RESTORE), LI) == original
            completions(5)
    finally:
        stop.set()
        for t in threads:
            t.join()

    assert errors == []
    assert Reason.EVALUATOR_ERROR not in {reason for _, _, reason in results}
    assert len(expected) == 2
    negative = [r for r in results if r[2] == Reason.NEGATIVE_LIST]
    education = [r for r in results if r[2] != Reason.NEGATIVE_LIST]
    assert len(negative) == len(education)
    for version, allowed, reason in education:
        assert allowed is expected[version]
        assert reason == (Reason.ALLOWED if allowed else Reason.NO_MATCHING_RULE)
    assert {v for v, _, _ in education} == set(expected)  # both versions were observed
