"""Two-person policy administration: propose, approve by a second administrator, reject,
validation of proposals, audit events, and an audit failure blocking the change. Each test
runs on SQLite and on PostgreSQL (the ``policy_env`` fixture)."""

from __future__ import annotations

import pytest

from tongban.policies import (
    AuditFailed,
    BasisEdit,
    BasisOp,
    Change,
    ChangeConflict,
    ChangeNotPending,
    ChangeStatus,
    InvalidPolicy,
    PolicyEnforcer,
    Reason,
    Rule,
    TwoPersonRule,
    UnknownChange,
)
from tongban.primitives.errors import PROBLEM_BASE, BadRequest, StoreUnavailable

LI, WANG, ZHAO = "admin-li", "admin-wang", "admin-zhao"
EDU_POLICE = "p, education, police, birth_registered, school_enrollment, allow"
REVOKE = Change.remove(EDU_POLICE)
RESTORE = Change.add(EDU_POLICE)
EDU_ASK = ("edu-bureau", "birth_registered", ("health", "police"), "school_enrollment")


def _allowed(enforcer: PolicyEnforcer) -> bool:
    return enforcer.decide(*EDU_ASK).allowed


# --- two-person rule -------------------------------------------------------------------------


def test_pending_change_has_no_effect(policy_env):
    before = policy_env.enforcer.version
    change_id = policy_env.admin.propose(LI, REVOKE)

    assert _allowed(policy_env.enforcer)
    assert policy_env.enforcer.version == policy_env.fresh_version() == before
    assert [c.id for c in policy_env.admin.pending()] == [change_id]
    record = policy_env.admin.change(change_id)
    assert (record.status, record.proposer, record.base_version) == (
        ChangeStatus.PENDING,
        LI,
        before,
    )


def test_changes_may_be_proposed_as_json(policy_env):
    change_id = policy_env.admin.propose(LI, REVOKE.to_json())
    assert policy_env.admin.change(change_id).body == REVOKE.to_json()
    with pytest.raises(InvalidPolicy):
        policy_env.admin.propose(LI, {"rules": "all of them"})


def test_proposer_cannot_approve(policy_env):
    before = policy_env.enforcer.version
    change_id = policy_env.admin.propose(LI, REVOKE)

    with pytest.raises(TwoPersonRule) as err:
        policy_env.admin.approve(change_id, LI)

    problem = err.value.to_problem()
    assert (problem["status"], problem["type"]) == (403, PROBLEM_BASE + "two-person-rule")
    assert policy_env.admin.change(change_id).status is ChangeStatus.PENDING
    assert policy_env.enforcer.version == policy_env.fresh_version() == before
    assert _allowed(policy_env.enforcer)


def test_second_admin_applies_the_change(policy_env):
    before = policy_env.enforcer.version
    change_id = policy_env.admin.propose(LI, REVOKE)

    after = policy_env.admin.approve(change_id, WANG)

    assert after != before
    assert (
        policy_env.enforcer.version
        == after
        == policy_env.store.head_version()
        == policy_env.fresh_version()
    )
    decision = policy_env.enforcer.decide(*EDU_ASK)
    assert (decision.allowed, decision.reason, decision.policy_version) == (
        False,
        Reason.NO_MATCHING_RULE,
        after,
    )
    record = policy_env.admin.change(change_id)
    assert (record.status, record.decided_by, record.result_version) == (
        ChangeStatus.APPROVED,
        WANG,
        after,
    )
    assert policy_env.admin.pending() == []
    # Undoing the change restores the original version: it is a function of the policy.
    assert policy_env.admin.approve(policy_env.admin.propose(WANG, RESTORE), LI) == before
    assert _allowed(policy_env.enforcer)


def test_change_is_approved_only_once(policy_env):
    change_id = policy_env.admin.propose(LI, REVOKE)
    version = policy_env.admin.approve(change_id, WANG)

    for approver in (WANG, ZHAO):
        with pytest.raises(ChangeNotPending):
            policy_env.admin.approve(change_id, approver)
    with pytest.raises(ChangeNotPending):
        policy_env.admin.reject(change_id, ZHAO)
    assert policy_env.enforcer.version == version


def test_reject(policy_env):
    before = policy_env.enforcer.version
    change_id = policy_env.admin.propose(LI, REVOKE)
    withdrawn = policy_env.admin.propose(LI, Change.remove("g, analyst, analyst, *"))

    policy_env.admin.reject(change_id, WANG)
    policy_env.admin.reject(withdrawn, LI)  # withdrawing one's own change needs no second admin

    assert policy_env.admin.change(change_id).status is ChangeStatus.REJECTED
    assert policy_env.admin.change(change_id).decided_by == WANG
    with pytest.raises(ChangeNotPending):
        policy_env.admin.approve(change_id, ZHAO)
    assert policy_env.enforcer.version == policy_env.fresh_version() == before
    assert policy_env.admin.pending() == []


def test_unknown_change_and_bad_admin_ids(policy_env):
    with pytest.raises(UnknownChange):
        policy_env.admin.approve("no-such-change", WANG)
    with pytest.raises(UnknownChange):
        policy_env.admin.reject("", WANG)
    for bad in ("", "a b", "x" * 200, None):
        with pytest.raises(BadRequest):
            policy_env.admin.propose(bad, REVOKE)


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (Change(), InvalidPolicy),
        (Change.add("p2, education, police, married, school_enrollment, allow"), InvalidPolicy),
        (Change.add("p, education, police, married, school_enrollment"), InvalidPolicy),
        (
            Change.add("p, education, police, no_such_claim, school_enrollment, allow"),
            InvalidPolicy,
        ),
        (Change.add("p, education, police, married, no_such_purpose, allow"), InvalidPolicy),
        (Change.add("p, education, mars, married, school_enrollment, allow"), InvalidPolicy),
        (Change.add("p, education, police, married, school_enrollment, maybe"), InvalidPolicy),
        (Change.add("p, *, police, married, school_enrollment, allow"), InvalidPolicy),
        (Change.add("p, edu bureau, police, married, school_enrollment, allow"), InvalidPolicy),
        (Change.add("g, *, insurer, *"), InvalidPolicy),
        (Change.add("g2, married, fertility_derived"), InvalidPolicy),  # derived, reserved
        (Change.add("g2, no_such_claim, family"), InvalidPolicy),
        (
            Change.add(
                EDU_POLICE.replace("police", "health"), EDU_POLICE.replace("police", "health")
            ),
            InvalidPolicy,
        ),
        (Change.add(EDU_POLICE), ChangeConflict),  # already present
        (Change.remove("p, education, civil, married, school_enrollment, allow"), ChangeConflict),
        (
            Change(legal_bases=(BasisEdit(BasisOp.SET, "underwriting", "PIPL art. 13(1)(1)"),)),
            InvalidPolicy,
        ),
        (
            Change(legal_bases=(BasisEdit(BasisOp.SET, "no_such_purpose", "PIPL art. 13(1)(3)"),)),
            InvalidPolicy,
        ),
        (Change(legal_bases=(BasisEdit(BasisOp.SET, "underwriting"),)), InvalidPolicy),
        (Change(legal_bases=(BasisEdit(BasisOp.UNSET, "underwriting"),)), ChangeConflict),
    ],
)
def test_invalid_proposals_are_refused(policy_env, change, error):
    with pytest.raises(error):
        policy_env.admin.propose(LI, change)
    assert policy_env.admin.pending() == []
    assert policy_env.audit.events == []


def test_change_that_no_longer_applies_is_refused(policy_env):
    first = policy_env.admin.propose(LI, REVOKE)
    second = policy_env.admin.propose(ZHAO, REVOKE)
    version = policy_env.admin.approve(first, WANG)

    with pytest.raises(ChangeConflict):
        policy_env.admin.approve(second, WANG)

    assert policy_env.admin.change(second).status is ChangeStatus.PENDING
    assert policy_env.enforcer.version == policy_env.fresh_version() == version


def test_negative_list_overrides_an_approved_explicit_allow(policy_env):
    explicit = [
        f"p, insurer, {d}, birth_registered, underwriting, allow" for d in ("health", "police")
    ]
    policy_env.admin.approve(policy_env.admin.propose(LI, Change.add(*explicit)), WANG)

    decision = policy_env.enforcer.decide(
        "insurer-a", "birth_registered", ("health", "police"), "underwriting"
    )
    assert (decision.allowed, decision.reason) == (False, Reason.NEGATIVE_LIST)
    assert decision.matched_rule == ("insurer", "*", "fertility_derived", "underwriting", "deny")

    # Lifting the negative list takes two administrators too; then the allow holds.
    deny = "p, insurer, *, fertility_derived, underwriting, deny"
    policy_env.admin.approve(policy_env.admin.propose(ZHAO, Change.remove(deny)), LI)
    assert policy_env.enforcer.decide(
        "insurer-a", "birth_registered", ("health", "police"), "underwriting"
    ).allowed


def test_legal_basis_changes(policy_env):
    before = policy_env.enforcer.version
    basis = "PIPL art. 13(1)(2); Insurance Law art. 22"
    declare = Change(legal_bases=(BasisEdit(BasisOp.SET, "insurance_claim", basis),))

    declared = policy_env.admin.approve(policy_env.admin.propose(LI, declare), WANG)

    assert policy_env.enforcer.legal_basis("insurance_claim") == basis
    assert declared != before
    assert policy_env.store.load()[1]["insurance_claim"] == basis
    undeclare = Change(legal_bases=(BasisEdit(BasisOp.UNSET, "insurance_claim"),))
    assert policy_env.admin.approve(policy_env.admin.propose(WANG, undeclare), LI) == before
    assert policy_env.enforcer.legal_basis("insurance_claim") is None


# --- audit -----------------------------------------------------------------------------------


def test_every_step_is_audited(policy_env):
    before = policy_env.enforcer.version
    approved = policy_env.admin.propose(LI, REVOKE)
    rejected = policy_env.admin.propose(LI, Change.remove("g, analyst, analyst, *"))
    after = policy_env.admin.approve(approved, WANG)
    policy_env.admin.reject(rejected, ZHAO)

    kinds = [(e["kind"], e["change_id"], e["admin"]) for e in policy_env.audit.events]
    assert kinds == [
        ("policy.change.proposed", approved, LI),
        ("policy.change.proposed", rejected, LI),
        ("policy.change.approved", approved, WANG),
        ("policy.change.rejected", rejected, ZHAO),
    ]
    proposed, _, approval, rejection = policy_env.audit.events
    assert proposed == {
        "kind": "policy.change.proposed",
        "change_id": approved,
        "admin": LI,
        "change": {
            "rules": [{"op": "remove", "rule": Rule.parse(EDU_POLICE).as_list()}],
            "legal_bases": [],
        },
        "policy_version": before,
    }
    assert approval == {
        "kind": "policy.change.approved",
        "change_id": approved,
        "admin": WANG,
        "proposer": LI,
        "change": REVOKE.to_json(),
        "old_policy_version": before,
        "new_policy_version": after,
    }
    assert rejection["proposer"] == LI
    assert rejection["policy_version"] == after


@pytest.mark.parametrize("failure", [RuntimeError("disk full"), StoreUnavailable("down")])
def test_audit_failure_blocks_the_change(policy_env, failure):
    before = policy_env.enforcer.version
    change_id = policy_env.admin.propose(LI, REVOKE)
    policy_env.audit.failure = failure

    with pytest.raises(StoreUnavailable) as err:
        policy_env.admin.approve(change_id, WANG)
    with pytest.raises(StoreUnavailable):
        policy_env.admin.propose(LI, Change.remove("g, analyst, analyst, *"))
    with pytest.raises(StoreUnavailable):
        policy_env.admin.reject(change_id, WANG)

    if isinstance(failure, RuntimeError):  # foreign errors are translated, from the original
        assert isinstance(err.value, AuditFailed) and err.value.__cause__ is failure
    else:  # the audit package's own errors pass through as they are
        assert err.value is failure
    assert (
        policy_env.enforcer.version
        == policy_env.fresh_version()
        == policy_env.store.head_version()
        == before
    )
    assert [c.id for c in policy_env.admin.pending()] == [change_id]
    assert _allowed(policy_env.enforcer)

    policy_env.audit.failure = None
    assert policy_env.admin.approve(change_id, WANG) != before
    assert not _allowed(policy_env.enforcer)
