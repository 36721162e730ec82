"""Policies: Casbin model, fail-closed enforcer, legal bases, two-person change approval."""

from .admin import ChangeKind as ChangeKind
from .admin import PolicyAdmin as PolicyAdmin
from .admin import change_kind as change_kind
from .admin import open_enforcer as open_enforcer
from .change import BasisEdit as BasisEdit
from .change import BasisOp as BasisOp
from .change import Change as Change
from .change import RuleEdit as RuleEdit
from .change import RuleOp as RuleOp
from .enforcer import CompiledPolicy as CompiledPolicy
from .enforcer import Decision as Decision
from .enforcer import PolicyEnforcer as PolicyEnforcer
from .enforcer import Reason as Reason
from .enforcer import compile_policy as compile_policy
from .errors import AuditFailed as AuditFailed
from .errors import ChangeConflict as ChangeConflict
from .errors import ChangeNotPending as ChangeNotPending
from .errors import InvalidPolicy as InvalidPolicy
from .errors import TwoPersonRule as TwoPersonRule
from .errors import UnknownChange as UnknownChange
from .rules import FERTILITY_GROUP as FERTILITY_GROUP
from .rules import ClaimCatalog as ClaimCatalog
from .rules import Policy as Policy
from .rules import Rule as Rule
from .rules import build_policy as build_policy
from .rules import default_legal_bases as default_legal_bases
from .rules import default_model_text as default_model_text
from .rules import default_rules as default_rules
from .rules import policy_version as policy_version
from .store import ChangeRecord as ChangeRecord
from .store import ChangeStatus as ChangeStatus
from .store import PolicyStore as PolicyStore

__all__ = [
    "FERTILITY_GROUP",
    "AuditFailed",
    "BasisEdit",
    "BasisOp",
    "Change",
    "ChangeConflict",
    "ChangeKind",
    "ChangeNotPending",
    "ChangeRecord",
    "ChangeStatus",
    "ClaimCatalog",
    "CompiledPolicy",
    "Decision",
    "InvalidPolicy",
    "Policy",
    "PolicyAdmin",
    "PolicyEnforcer",
    "PolicyStore",
    "Reason",
    "Rule",
    "RuleEdit",
    "RuleOp",
    "TwoPersonRule",
    "UnknownChange",
    "build_policy",
    "change_kind",
    "compile_policy",
    "default_legal_bases",
    "default_model_text",
    "default_rules",
    "open_enforcer",
    "policy_version",
]
