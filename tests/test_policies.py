"""Policies: the demo policy's decisions, the negative list, matched rule and version, legal
bases, and failing closed. Administration and the store are in test_policies_admin.py."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from tongban import policies
from tongban.gateway.catalog import Catalog
from tongban.policies import (
    FERTILITY_GROUP,
    Decision,
    InvalidPolicy,
    Policy,
    PolicyEnforcer,
    Reason,
    Rule,
    build_policy,
    compile_policy,
    default_legal_bases,
    default_model_text,
    default_rules,
)
from tongban.policies.rules import check_legal_basis, check_rule
from tongban.primitives.gm import sm3

DENY_RULE = ("insurer", "*", FERTILITY_GROUP, "underwriting", "deny")

ALLOWED = [
    ("edu-bureau", "birth_registered", "school_enrollment"),
    ("edu-bureau", "household_in_district", "school_enrollment"),
    ("edu-bureau", "low_income_household", "school_fee_waiver"),
    ("allowance-office", "birth_registered", "maternity_allowance"),
    ("allowance-office", "married", "maternity_allowance"),
    ("allowance-office", "maternity_insurance_active", "maternity_allowance"),
    ("subsidy-office", "third_child_subsidy_eligible", "childcare_subsidy"),
    ("insurer-a", "maternity_insurance_active", "insurance_claim"),
]

DENIED = [
    # (requester, claim, purpose, reason)
    ("insurer-a", "birth_registered", "underwriting", Reason.NEGATIVE_LIST),
    ("insurer-a", "third_child_subsidy_eligible", "underwriting", Reason.NEGATIVE_LIST),
    ("insurer-a", "maternity_insurance_active", "underwriting", Reason.NO_MATCHING_RULE),
    ("insurer-a", "maternity_insurance_active", "maternity_allowance", Reason.NO_MATCHING_RULE),
    ("insurer-a", "birth_registered", "school_enrollment", Reason.NO_MATCHING_RULE),
    ("edu-bureau", "birth_registered", "maternity_allowance", Reason.NO_MATCHING_RULE),
    ("edu-bureau", "married", "school_enrollment", Reason.NO_MATCHING_RULE),
    ("edu-bureau", "third_child_subsidy_eligible", "childcare_subsidy", Reason.NO_MATCHING_RULE),
    ("allowance-office", "low_income_household", "school_fee_waiver", Reason.NO_MATCHING_RULE),
    ("subsidy-office", "birth_registered", "maternity_allowance", Reason.NO_MATCHING_RULE),
    ("analyst", "birth_registered", "school_enrollment", Reason.NO_MATCHING_RULE),
    ("privacy-officer", "married", "maternity_allowance", Reason.NO_MATCHING_RULE),
    ("unregistered-client", "married", "maternity_allowance", Reason.NO_MATCHING_RULE),
    # A role name is not a requester: in Casbin it would hold its own permissions.
    ("insurer", "maternity_insurance_active", "insurance_claim", Reason.INVALID_REQUEST),
    ("education", "birth_registered", "school_enrollment", Reason.INVALID_REQUEST),
]


@pytest.fixture(scope="module")
def demo(claim_catalog: Catalog) -> Policy:
    return build_policy(default_rules(), default_legal_bases(), claim_catalog)


@pytest.fixture
def enforcer(demo: Policy) -> PolicyEnforcer:
    return PolicyEnforcer(demo)


def _decide(enf: PolicyEnforcer, catalog: Catalog, who: str, claim: str, purpose: str) -> Decision:
    return enf.decide(who, claim, catalog.claims[claim].departments, purpose)


def test_exports_are_complete() -> None:
    public = {n for n in dir(policies) if not n.startswith("_")}
    modules = {"admin", "change", "enforcer", "errors", "rules", "store"}
    assert set(policies.__all__) == public - modules


# --- the demo policy -------------------------------------------------------------------------


@pytest.mark.parametrize(("who", "claim", "purpose"), ALLOWED)
def test_demo_allows(enforcer, claim_catalog, who, claim, purpose):
    decision = _decide(enforcer, claim_catalog, who, claim, purpose)

    assert decision.allowed is True
    assert decision.reason == Reason.ALLOWED
    assert json.dumps(decision.reason) == '"allowed"'  # a plain string on the wire
    departments = claim_catalog.claims[claim].departments
    # One allow rule per department, each naming that department, the claim and the purpose.
    assert [r[1] for r in decision.matched_rules] == list(departments)
    assert all(r[2:] == (claim, purpose, "allow") for r in decision.matched_rules)
    assert decision.matched_rule == decision.matched_rules[0]


@pytest.mark.parametrize(("who", "claim", "purpose", "reason"), DENIED)
def test_demo_denies(enforcer, claim_catalog, who, claim, purpose, reason):
    decision = _decide(enforcer, claim_catalog, who, claim, purpose)

    assert decision.allowed is False
    assert decision.reason == reason
    if reason is Reason.NEGATIVE_LIST:
        assert decision.matched_rule == DENY_RULE
    else:
        assert decision.matched_rule is None


def test_shipped_policy_is_valid_for_the_catalog(demo, claim_catalog):
    groups = {r.values[1] for r in demo.stored if r.ptype == "g2"}
    for rule in demo.stored:
        check_rule(rule, claim_catalog, groups)
    for purpose, basis in demo.legal_bases.items():
        check_legal_basis(purpose, basis, claim_catalog)
    assert demo.derived == {
        Rule.of("g2", "birth_registered", FERTILITY_GROUP),
        Rule.of("g2", "third_child_subsidy_eligible", FERTILITY_GROUP),
    }


def test_every_fertility_derived_claim_is_on_the_negative_list(enforcer, claim_catalog):
    derived = [n for n, c in claim_catalog.claims.items() if c.fertility_derived]
    assert {"birth_registered", "third_child_subsidy_eligible"} <= set(derived)

    for claim in derived:
        for department in (*claim_catalog.claims[claim].departments, "civil", "medins"):
            decision = enforcer.enforce("insurer-a", department, claim, "underwriting")
            assert (decision.allowed, decision.reason) == (False, Reason.NEGATIVE_LIST)
            assert decision.matched_rule == DENY_RULE


def test_negative_list_overrides_explicit_allow(claim_catalog):
    explicit = {
        Rule.of("p", "insurer", "health", "birth_registered", "underwriting", "allow"),
        Rule.of("p", "insurer", "police", "birth_registered", "underwriting", "allow"),
        Rule.of("p", "insurer-a", "*", "birth_registered", "underwriting", "allow"),
    }
    allowing = build_policy(
        default_rules() - {Rule.parse(", ".join(("p", *DENY_RULE)))} | explicit,
        default_legal_bases(),
        claim_catalog,
    )
    overridden = build_policy(default_rules() | explicit, default_legal_bases(), claim_catalog)

    # Without the negative list the explicit rules do allow it ...
    assert _decide(
        PolicyEnforcer(allowing), claim_catalog, "insurer-a", "birth_registered", "underwriting"
    ).allowed
    # ... with it, the deny rule wins and is the rule recorded.
    decision = _decide(
        PolicyEnforcer(overridden), claim_catalog, "insurer-a", "birth_registered", "underwriting"
    )
    assert (decision.allowed, decision.reason) == (False, Reason.NEGATIVE_LIST)
    assert decision.matched_rule == DENY_RULE


def test_fertility_group_follows_the_catalog(claim_catalog):
    flagged = dict(claim_catalog.claims)
    flagged["married"] = dataclasses.replace(flagged["married"], fertility_derived=True)
    catalog = Catalog(flagged, claim_catalog.purposes)
    rules = default_rules() | {Rule.of("p", "insurer", "civil", "married", "underwriting", "allow")}

    before = PolicyEnforcer(build_policy(rules, {}, claim_catalog))
    after = PolicyEnforcer(build_policy(rules, {}, catalog))

    assert before.enforce("insurer-a", "civil", "married", "underwriting").allowed
    assert after.enforce("insurer-a", "civil", "married", "underwriting").reason == "negative_list"
    assert before.version != after.version


def test_claim_is_allowed_only_if_every_department_allows(enforcer):
    # Education may ask police about household_in_district but nothing of hrss.
    mixed = enforcer.decide(
        "edu-bureau", "household_in_district", ["police", "hrss"], "school_enrollment"
    )
    assert (mixed.allowed, mixed.reason) == (False, Reason.NO_MATCHING_RULE)
    no_list = enforcer.decide("edu-bureau", "household_in_district", None, "school_enrollment")
    assert no_list.reason == Reason.INVALID_REQUEST
    assert enforcer.decide("edu-bureau", "household_in_district", [], "school_enrollment") == (
        Decision(False, None, enforcer.version, Reason.NO_DEPARTMENTS)
    )


@pytest.mark.parametrize(
    "request_values",
    [
        ("edu-bureau", "*", "birth_registered", "school_enrollment"),
        ("*", "health", "birth_registered", "school_enrollment"),
        ("", "health", "birth_registered", "school_enrollment"),
        ("edu-bureau", "health", None, "school_enrollment"),
        ("edu-bureau", "health", "birth_registered", 7),
        ("edu-bureau,x", "health", "birth_registered", "school_enrollment"),
    ],
)
def test_malformed_requests_are_denied(enforcer, request_values):
    decision = enforcer.enforce(*request_values)
    assert (decision.allowed, decision.reason) == (False, Reason.INVALID_REQUEST)


# --- matched rule and version ----------------------------------------------------------------


def test_decisions_record_the_policy_version(enforcer, demo):
    assert re.fullmatch(r"[0-9a-f]{64}", enforcer.version)
    assert enforcer.version == demo.version
    for who, claim, purpose in ALLOWED[:2]:
        assert enforcer.decide(who, claim, ["police"], purpose).policy_version == demo.version
    assert enforcer.enforce("x", "health", "married", "underwriting").policy_version == demo.version


def test_version_is_sm3_of_the_canonical_serialisation(demo):
    doc = {
        "legal_bases": sorted([p, b] for p, b in demo.legal_bases.items()),
        "model": demo.model_text,
        "rules": sorted(r.as_list() for r in demo.rules),
    }
    canonical = json.dumps(doc, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    assert demo.version == sm3(canonical.encode()).hex()


def test_version_changes_iff_the_policy_changes(claim_catalog, demo):
    rules, bases = default_rules(), default_legal_bases()
    extra = Rule.of("p", "analyst", "civil", "married", "maternity_allowance", "allow")

    # Same content, different construction order: same version.
    shuffled = build_policy(
        sorted(rules, reverse=True), dict(reversed(bases.items())), claim_catalog
    )
    assert shuffled.version == demo.version
    # Each kind of change moves it; undoing the change restores it.
    added = build_policy(rules | {extra}, bases, claim_catalog)
    assert added.version != demo.version
    assert build_policy(added.stored - {extra}, bases, claim_catalog).version == demo.version
    fewer_bases = {k: v for k, v in bases.items() if k != "school_fee_waiver"}
    assert build_policy(rules, fewer_bases, claim_catalog).version != demo.version
    reworded = bases | {"school_fee_waiver": "PIPL art. 13(1)(3)"}
    assert build_policy(rules, reworded, claim_catalog).version != demo.version
    model = default_model_text() + "\n# note\n"
    assert build_policy(rules, bases, claim_catalog, model).version != demo.version


# --- legal bases -----------------------------------------------------------------------------


def test_legal_bases(enforcer, claim_catalog):
    assert enforcer.legal_basis("school_enrollment") == (
        "PIPL art. 13(1)(3); Compulsory Education Law art. 12"
    )
    statutory = {
        "school_enrollment",
        "maternity_allowance",
        "childcare_subsidy",
        "school_fee_waiver",
    }
    for purpose in claim_catalog.purposes:
        basis = enforcer.legal_basis(purpose)
        if purpose in statutory:
            assert basis is not None and basis.startswith("PIPL art. 13(1)(3); ")
        else:  # insurance_claim, underwriting: consent needed
            assert basis is None
    assert enforcer.legal_basis("no_such_purpose") is None
    assert enforcer.legal_basis(None) is None


# --- failing closed --------------------------------------------------------------------------


def test_empty_policy_denies(claim_catalog):
    enf = PolicyEnforcer(build_policy([], {}, claim_catalog))
    decision = _decide(enf, claim_catalog, "edu-bureau", "birth_registered", "school_enrollment")
    assert (decision.allowed, decision.reason) == (False, Reason.NO_MATCHING_RULE)
    assert enf.legal_basis("school_enrollment") is None


def test_empty_policy_with_eval_matcher_fails_closed(claim_catalog):
    # Casbin raises RuntimeError for an eval() matcher over an empty policy.
    model = default_model_text().replace("r.act == p.act", "eval(p.act)")
    enf = PolicyEnforcer(build_policy([], {}, claim_catalog, model))

    decision = enf.decide("edu-bureau", "married", ["civil"], "school_enrollment")

    assert decision == Decision(False, None, enf.version, Reason.EVALUATOR_ERROR)


def test_broken_matcher_fails_closed(claim_catalog):
    model = default_model_text().replace("r.act == p.act", "no_such_function(r.act)")
    enf = PolicyEnforcer(build_policy(default_rules(), {}, claim_catalog, model))

    decision = _decide(enf, claim_catalog, "edu-bureau", "birth_registered", "school_enrollment")

    assert (decision.allowed, decision.reason) == (False, Reason.EVALUATOR_ERROR)


def test_raising_enforcer_fails_closed(demo, claim_catalog, monkeypatch):
    compiled = compile_policy(demo)
    enf = PolicyEnforcer(compiled)
    calls = []

    def boom(*args: str) -> tuple[bool, list[str]]:
        calls.append(args)
        if args[1] == "police":
            raise ValueError("evaluator exploded")
        return True, ["education", "health", "birth_registered", "school_enrollment", "allow"]

    monkeypatch.setattr(compiled.casbin, "enforce_ex", boom)

    decision = _decide(enf, claim_catalog, "edu-bureau", "birth_registered", "school_enrollment")

    assert [c[1] for c in calls] == ["health", "police"]
    assert decision == Decision(False, None, demo.version, Reason.EVALUATOR_ERROR)


def test_unexplained_allow_fails_closed(demo):
    # A disabled Casbin enforcer answers "allow" with no rule; nothing we can act on.
    compiled = compile_policy(demo)
    compiled.casbin.enable_enforce(False)
    decision = PolicyEnforcer(compiled).enforce("x", "civil", "married", "underwriting")
    assert (decision.allowed, decision.reason) == (False, Reason.EVALUATOR_ERROR)


def test_unloadable_policy_is_refused_at_compile_time(claim_catalog):
    without_g2 = (
        default_model_text()
        .replace("g2 = _, _\n", "")
        .replace(" && (r.obj == p.obj || g2(r.obj, p.obj))", " && r.obj == p.obj")
    )
    # Dropping the claim groups would silently void the negative list.
    with pytest.raises(InvalidPolicy):
        compile_policy(build_policy(default_rules(), {}, claim_catalog, without_g2))
    with pytest.raises(InvalidPolicy):
        PolicyEnforcer(build_policy([], {}, claim_catalog, "[matchers]\nm = \n"))


def test_reload_swaps_the_snapshot(enforcer, claim_catalog, demo):
    revoked = build_policy(
        default_rules()
        - {Rule.parse("p, education, police, household_in_district, school_enrollment, allow")},
        default_legal_bases(),
        claim_catalog,
    )

    assert enforcer.load(revoked) == revoked.version == enforcer.version

    decision = enforcer.decide(
        "edu-bureau", "household_in_district", ["police"], "school_enrollment"
    )
    assert (decision.allowed, decision.policy_version) == (False, revoked.version)
    assert enforcer.load(demo) == demo.version
    assert enforcer.decide(
        "edu-bureau", "household_in_district", ["police"], "school_enrollment"
    ).allowed


# --- what loading a policy logs ---------------------------------------------------------


def _fresh_casbin_loggers() -> None:
    """As in a new process: Casbin's loggers neither disabled nor given a level yet."""
    import logging

    for name in ("casbin", "casbin.policy", "casbin.role", "casbin.enforcer"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.NOTSET)
        logger.disabled = False


def test_loading_logs_one_summary_line_and_never_the_rules(
    demo: Policy, claim_catalog: Catalog, caplog: pytest.LogCaptureFixture
):
    import logging

    _fresh_casbin_loggers()
    caplog.set_level(logging.DEBUG)
    enforcer = PolicyEnforcer(demo)
    other = build_policy([*demo.rules, Rule("p", ("analyst", "*", "married", "x", "allow"))],
                         default_legal_bases(), claim_catalog)  # fmt: skip
    enforcer.load(other)
    enforcer.load(other)  # the same version again: not news
    enforcer.enforce("edu-bureau", "health", "birth_registered", "school_enrollment")

    casbin = [r for r in caplog.records if r.name.startswith("casbin")]
    assert casbin == [], [r.getMessage()[:80] for r in casbin]
    info = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert [(r.name, r.levelname) for r in info] == [("tongban.policies.enforcer", "INFO")] * 2
    assert info[0].getMessage() == (
        f"policy {demo.version} loaded: {len(demo.rules)} rules, "
        f"{len(demo.legal_bases)} legal bases"
    )
    assert info[1].getMessage().startswith(f"policy {other.version} loaded: ")
    for rule in demo.rules:  # no rule, requester or role name in any line
        assert ", ".join(rule.values) not in caplog.text
    assert "edu-bureau" not in caplog.text and "fertility_derived" not in caplog.text


def test_casbin_warnings_still_reach_the_log(demo: Policy, caplog: pytest.LogCaptureFixture):
    import logging

    _fresh_casbin_loggers()
    caplog.set_level(logging.DEBUG)
    PolicyEnforcer(demo)  # Casbin disables its loggers after building an enforcer
    logging.getLogger("casbin.role").warning("a role link went wrong")
    logging.getLogger("casbin.policy").info("p : sub, dom, obj, act, eft : [...]")
    assert [r.getMessage() for r in caplog.records if r.name.startswith("casbin")] == [
        "a role link went wrong"
    ]
