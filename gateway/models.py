"""The requester endpoints' bodies (``POST /v1/checks``, ``POST /v1/checks/batch``) and
their answers, as typed models (:mod:`tongban.primitives.bodies`).

The views parse into these and :class:`~tongban.gateway.checks.Checker` takes them; the
OpenAPI components of the same names are generated from them. What a model cannot know
stays declared in :mod:`gateway.openapi_schemas`: the claim and purpose enumerations
(fields annotated with :func:`schema_ref`) and the per-claim parameter rules. An ID
number is a string here; its checksum, date and region are checked by
:mod:`tongban.primitives.idnumber` in the core, which answers 422 with the reason.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, model_validator
from pydantic.json_schema import SkipJsonSchema

from tongban.federation.dp import MAX_EPSILON, MIN_EPSILON
from tongban.policies import BasisEdit, BasisOp, Change, Rule, RuleEdit, RuleOp
from tongban.primitives.bodies import Body, component_ref, schema_ref
from tongban.primitives.errors import PROBLEM_BASE

from .jobs import declared_jobs
from .oauth.registry import KNOWN_SCOPES

__all__ = [
    "ANSWER_ALGS",
    "BATCH_RESULTS",
    "MAX_BATCH_SUBJECTS",
    "MAX_CLIENT_KEYS",
    "MAX_ROUNDS",
    "AccessLog",
    "AccessLogItem",
    "AccessLogQuery",
    "AnswerClaims",
    "AuditEntries",
    "AuditEntry",
    "AuditFilters",
    "AuditSearch",
    "AuthorizationServerMetadata",
    "BasisEditBody",
    "BatchAnswerClaims",
    "BatchAnswerItem",
    "BatchItem",
    "BatchRequest",
    "BatchResponse",
    "BatchSubject",
    "ChangeApproved",
    "ChangeDecided",
    "ChangeList",
    "ChangePending",
    "ChangeProposed",
    "ChangeRejected",
    "CheckRequest",
    "CheckResponse",
    "ClaimDescription",
    "ClaimPurpose",
    "ClaimsResponse",
    "ClientDisabled",
    "ClientInfo",
    "ClientList",
    "ClientProposal",
    "Consent",
    "ConsentArtefactClaims",
    "ConsentGrant",
    "ConsentList",
    "ConsistencyProof",
    "ConsistencyQuery",
    "DepartmentHealth",
    "DpRequest",
    "FederationJob",
    "FederationJobRequest",
    "Health",
    "HealthAudit",
    "HealthCheckpoint",
    "InclusionProof",
    "InclusionQuery",
    "Jwk",
    "JwkSetIn",
    "Jwks",
    "Liveness",
    "LoggedEntry",
    "OAuthError",
    "ParamLimit",
    "PendingChange",
    "Policy",
    "PolicyChange",
    "Problem",
    "PurposeTitles",
    "Readiness",
    "Reply",
    "RuleEditBody",
    "StatisticJob",
    "StatisticRequest",
    "StatisticUnavailableItem",
    "StatisticsListing",
    "Subject",
    "TokenRequest",
    "TokenResponse",
]

CLIENT_ID_PATTERN = "^[A-Za-z0-9][A-Za-z0-9._-]{2,63}$"  # gateway.oauth.registry
MAX_BATCH_SUBJECTS = 10_000
MAX_ROUNDS = 200
MAX_CONSENT_ITEMS = 32  # purposes or claims in one consent
MAX_CONSENT_USES = 10_000

IdNumber = Annotated[str, schema_ref("IdNumber")]
ClaimName = Annotated[str, schema_ref("ClaimName")]
PurposeName = Annotated[str, schema_ref("PurposeName")]
#: Values are checked against the claim's enumerations in the core (unknown-parameter).
ClaimParams = Annotated[dict[str, Any] | None, schema_ref("ClaimParams")]
AnswerAlg = Annotated[Literal["SM2", "ES256"], schema_ref("AnswerAlg")]
ANSWER_ALGS = ("SM2", "ES256")
#: A batch item's result: a check's, or why it was not checked.
BATCH_RESULTS = ("yes", "no", "undetermined", "denied", "invalid")
ConsentId = Annotated[
    str | None,
    Field(
        min_length=1,
        max_length=128,
        description="Needed when the purpose has no statutory legal basis.",
    ),
]
AuditIndex = Annotated[int, Field(ge=0, description="Audit log index (leaf number).")]


def _doc(description: str, **schema: Any) -> ConfigDict:
    """The text (and any other keywords) the OpenAPI document gives a model; its docstring
    is for developers. The rest of the config comes from the model's base."""
    return ConfigDict(json_schema_extra={"description": description, **schema})


class Reply(BaseModel):
    """An answer body: its schema is closed, as the requests' are."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Subject(Body):
    id_number: IdNumber


class CheckRequest(Body):
    subject: Subject
    claim: ClaimName
    purpose: PurposeName
    params: ClaimParams = None
    consent_id: ConsentId = None
    answer_alg: AnswerAlg = "SM2"


class BatchSubject(Body):
    id_number: IdNumber
    consent_id: ConsentId = None


class BatchRequest(Body):
    claim: ClaimName
    purpose: PurposeName
    params: ClaimParams = None
    subjects: Annotated[list[BatchSubject], Field(min_length=1, max_length=MAX_BATCH_SUBJECTS)]
    answer_alg: AnswerAlg = "SM2"


class CheckResponse(Reply):
    result: Annotated[str, schema_ref("Result")]
    answer: Annotated[str, schema_ref("CompactJws")] = Field(description="Signed AnswerClaims.")
    audit_index: AuditIndex


class BatchItem(Reply):
    index: Annotated[int, Field(ge=0)]
    result: Annotated[str, schema_ref("BatchResult")]
    audit_index: AuditIndex
    reason: str | None = Field(
        default=None,
        description="Why `denied` or `invalid`: a problem slug or a bad-ID reason.",
    )


class BatchResponse(Reply):
    results: list[BatchItem]
    answer: Annotated[str, schema_ref("CompactJws")] = Field(
        description="Signed BatchAnswerClaims."
    )


def _involved() -> str:
    declared = declared_jobs()
    return "; ".join(
        f"{kind}: {', '.join(sorted(declared[f'federation:{kind}'].departments))}"
        for kind in ("horizontal", "vertical")
    )


class FederationJobRequest(Body):
    """``POST /v1/federation/jobs``. Members of the other kind are refused (a rule across
    fields, in :meth:`gateway.federation_jobs.FederationRequest.parse`, which also checks
    ``departments``): what a member is given as is known from ``model_fields_set``."""

    kind: Literal["horizontal", "vertical"] = Field(
        default="horizontal",
        description="horizontal: FedAvg among county bureaus on Flower; vertical: ECDH-PSI "
        "then Paillier-protected logistic regression across health, hrss (labels) and "
        "civil. Rounds are epochs for vertical.",
    )
    rounds: Annotated[int, Field(ge=1, le=MAX_ROUNDS)]
    secagg: bool = Field(default=False, description="SecAgg+ secure aggregation (horizontal only).")
    batch_size: int = Field(
        default=1024, ge=64, le=65536, description="Mini-batch size (vertical only)."
    )
    dp_noise: float = Field(
        default=0.0,
        ge=0,
        le=100,
        description="Gaussian noise multiplier z (0: no differential privacy).",
    )
    dp_clip: float = Field(
        default=0.5, gt=0, le=100, description="L2 clipping norm of each bureau's update."
    )
    local_epochs: int = Field(default=20, ge=1, le=1000)
    departments: list[Annotated[str, Field(min_length=1)]] | None = Field(
        default=None,
        min_length=1,
        description="Optional, and if given exactly the departments the job's kind involves "
        f"({_involved()}): the departments the policy decides on. The job's document names "
        "who trained: `bureaus` (horizontal) or `departments` (vertical).",
    )


class DpRequest(Body):
    #: The range is the core's to check (``invalid-epsilon``, tongban.federation.dp); the
    #: model checks that it is a number.
    epsilon: float = Field(
        json_schema_extra={"minimum": MIN_EPSILON, "maximum": MAX_EPSILON},
        description="Differential privacy: each department adds its share of discrete "
        "Laplace noise (total scale sensitivity/epsilon); epsilon is charged to the "
        "analyst's budget before the job runs.",
    )


_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}


class StatisticRequest(Body):
    """``POST /v1/statistics/jobs``. The statistic, its parameters (each from its
    enumeration) and the key are checked by the statistics service."""

    statistic: str = Field(description="A statistic from the registry (GET /v1/statistics).")
    params: Annotated[
        dict[str, Any],
        WithJsonSchema({"type": "object", "additionalProperties": {"type": "string"}}),
    ]
    public_key: dict[str, Any] = Field(
        description="The analyst's Paillier public key in phe's JWK form (kty DAJ, alg "
        "PAI-GN1, n), at least 2048 bits."
    )
    dp: DpRequest | None = None


_DATE_TIME: dict[str, Any] = {"format": "date-time"}


class ConsentGrant(Body):
    """``POST /v1/me/consents``. The model checks shapes; the consent store checks the
    meaning (the requester exists, names do not repeat and belong to the catalog, every
    claim serves one of the purposes, the times are RFC 3339 with a zone and in range, a
    guardian's consent ends by the subject's 18th birthday)."""

    model_config = _doc(
        "Every claim must serve one of the purposes, and every purpose must "
        "be served by one of the claims (`claim-not-for-purpose`)."
    )

    requester: str = Field(min_length=1, description="Client id of the requester allowed to ask.")
    purposes: list[PurposeName] = Field(
        min_length=1, max_length=MAX_CONSENT_ITEMS, json_schema_extra={"uniqueItems": True}
    )
    claims: list[ClaimName] = Field(
        min_length=1, max_length=MAX_CONSENT_ITEMS, json_schema_extra={"uniqueItems": True}
    )
    not_before: str | SkipJsonSchema[None] = Field(
        default=None,
        max_length=40,
        description="Default now; not in the past.",
        json_schema_extra=_DATE_TIME,
    )
    expires_at: str = Field(
        max_length=40,
        description="After not_before, at most a year ahead; a guardian's consent ends by the "
        "subject's 18th birthday.",
        json_schema_extra=_DATE_TIME,
    )
    max_uses: int = Field(default=1, ge=1, le=MAX_CONSENT_USES)
    subject: Annotated[str, schema_ref("IdNumber")] | SkipJsonSchema[None] = Field(
        default=None, description="A minor the caller is a guardian of; default the caller."
    )


# --- what the gateway signs ----------------------------------------------------------------

Pairwise = Annotated[str, Field(pattern="^[0-9a-f]{32}$")]
PolicyVersion = Annotated[str, Field(pattern="^[0-9a-f]{64}$")]  # SM3, lowercase hex


class _Open(BaseModel):
    """An open object: a reader ignores members it does not know (signed payloads, job
    documents, log entries)."""

    model_config = ConfigDict(extra="allow", frozen=True)


class _AnswerCommon(_Open):
    iss: str = Field(description="The gateway's public URL.")
    aud: str = Field(description="The requester's client id.")
    iat: int
    exp: int = Field(description="NumericDate, minutes after iat.")
    jti: str
    claim: ClaimName
    purpose: PurposeName
    params: Annotated[dict[str, str], schema_ref("ClaimParams")]
    policy_version: PolicyVersion
    legal_basis: str | SkipJsonSchema[None] = None


class AnswerClaims(_AnswerCommon):
    model_config = _doc(
        "Payload of a signed answer (`typ: tongban-answer+jwt`; alg SM2 or "
        "ES256; verify with /.well-known/jwks.json). Carries `consent_id` or "
        "`legal_basis`."
    )

    sub: Pairwise = Field(description="Pairwise pseudonym of the subject for this requester.")
    result: Annotated[str, schema_ref("Result")]
    consent_id: str | SkipJsonSchema[None] = None
    audit_index: AuditIndex


class BatchAnswerItem(Reply):
    sub: Annotated[str | None, Field(pattern="^[0-9a-f]{32}$")]
    result: Annotated[str, schema_ref("BatchResult")]
    audit_index: AuditIndex


class BatchAnswerClaims(_AnswerCommon):
    model_config = _doc("Payload of the one signed answer over a batch, in subject order.")

    results: list[BatchAnswerItem]


class ConsentArtefactClaims(_Open):
    model_config = _doc("Payload of a consent artefact (`typ: tongban-consent+jwt`).")

    iss: str
    jti: str = Field(pattern="^[A-Za-z0-9_-]{22}$", description="The consent id.")
    sub: str = Field(description="The subject's pairwise pseudonym for the requester.")
    granted_by: str = Field(description="Who granted it, as the requester's pairwise pseudonym.")
    aud: str = Field(description="The requester.")
    purposes: list[PurposeName]
    claims: list[ClaimName]
    nbf: int
    exp: int
    iat: int
    max_uses: int


# --- the officers' audit search ---------------------------------------------------------

_OPTIONAL_TEXT = Annotated[str, Field(max_length=256)] | SkipJsonSchema[None]
#: A count or index in a query string: at most 18 digits (primitives.bodies.parse_query).
_COUNT = Annotated[int, Field(ge=0, le=999_999_999_999_999_999)]
_OPTIONAL_TIME = (
    Annotated[str, Field(max_length=40, json_schema_extra=_DATE_TIME)] | SkipJsonSchema[None]
)


class AuditFilters(Body):
    """The filters of ``GET /v1/audit/entries`` (query parameters) and of the search body.
    ``since`` and ``until`` are checked as RFC 3339 date-times with a zone by the view."""

    requester: _OPTIONAL_TEXT = Field(default=None, description="Requester client id.")
    claim: _OPTIONAL_TEXT = Field(default=None, description="Claim name.")
    purpose: _OPTIONAL_TEXT = Field(default=None, description="Purpose name.")
    decision: Literal["allow", "deny"] | SkipJsonSchema[None] = Field(
        default=None, description="Policy decision."
    )
    result: _OPTIONAL_TEXT = Field(
        default=None, description="yes, no, undetermined, denied, invalid."
    )
    kind: _OPTIONAL_TEXT = Field(
        default=None, description="Entry kind, e.g. check, consent_granted."
    )
    since: _OPTIONAL_TIME = Field(default=None, description="Entry time, inclusive.")
    until: _OPTIONAL_TIME = Field(default=None, description="Entry time, exclusive.")
    limit: int = Field(default=50, ge=1, le=10**6, description="Page size (max 500).")
    cursor: _COUNT | SkipJsonSchema[None] = Field(
        default=None, description="The `next` of the previous page."
    )
    order: Literal["asc", "desc"] = Field(default="desc", description="Order.")


class AuditSearch(AuditFilters):
    model_config = _doc(
        "Filters of the officers' search; `subject` is a citizen's ID "
        "number, which is why it travels in a body."
    )

    subject: IdNumber


class InclusionQuery(Body):
    index: _COUNT = Field(description="Leaf index.")
    size: Annotated[_COUNT, Field(ge=1)] = Field(description="Tree size.")


class ConsistencyQuery(Body):
    first: _COUNT = Field(description="Older tree size.")
    second: _COUNT = Field(description="Newer tree size.")


class AccessLogQuery(Body):
    limit: int = Field(default=50, ge=1, le=200, description="Page size.")
    cursor: _COUNT | SkipJsonSchema[None] = Field(
        default=None, description="The `next` of the previous page."
    )


# --- policy administration ---------------------------------------------------------------

MAX_POLICY_EDITS = 200
_RULE_LINE = {
    "prefixItems": [{"type": "string", "enum": ["p", "g", "g2"]}],
    "description": "A Casbin line: ptype then values, e.g. "
    '["p", "insurer", "*", "fertility_derived", "underwriting", "deny"].',
}
PolicyRule = Annotated[
    list[Annotated[str, Field(max_length=128)]],
    Field(min_length=2, json_schema_extra=_RULE_LINE),
    schema_ref("PolicyRule"),
]


class RuleEditBody(Body):
    op: Literal["add", "remove"]
    rule: PolicyRule


class BasisEditBody(Body):
    op: Literal["set", "unset"]
    purpose: PurposeName
    basis: str | SkipJsonSchema[None] = Field(
        default=None, description="Required for set, absent for unset."
    )


class PolicyChange(Body):
    """``POST /v1/admin/policy/changes``: the edits' shapes. Whether they apply (a rule
    well-formed for its ptype, names in the catalog, no duplicate, a basis for ``set``) is
    the policy administration's to check, as ``invalid-policy``."""

    model_config = _doc(
        "At most 200 edits in all, at least one.",
        anyOf=[
            {"required": ["rules"], "properties": {"rules": {"minItems": 1}}},
            {"required": ["legal_bases"], "properties": {"legal_bases": {"minItems": 1}}},
        ],
    )

    rules: list[RuleEditBody] = Field(default_factory=list, max_length=MAX_POLICY_EDITS)
    legal_bases: list[BasisEditBody] = Field(default_factory=list, max_length=MAX_POLICY_EDITS)

    @model_validator(mode="after")
    def _at_least_one(self) -> PolicyChange:
        if not self.rules and not self.legal_bases:
            raise ValueError("expected at least one edit in rules or legal_bases")
        return self

    def to_change(self) -> Change:
        """The change as policy administration takes it."""
        return Change(
            tuple(RuleEdit(RuleOp(e.op), Rule(e.rule[0], tuple(e.rule[1:]))) for e in self.rules),
            tuple(BasisEdit(BasisOp(e.op), e.purpose, e.basis) for e in self.legal_bases),
        )


# --- answers of the audit, citizen and key endpoints ----------------------------------------

Hex = Annotated[str, Field(pattern="^[0-9a-f]{64}$")]  # SM3, lowercase hex
_TIME_OUT = Annotated[str, Field(json_schema_extra=_DATE_TIME)]


class ConsistencyProof(Reply):
    first: Annotated[int, Field(ge=0)]
    second: Annotated[int, Field(ge=0)]
    consistency_path: list[Hex]


class InclusionProof(Reply):
    index: AuditIndex
    tree_size: Annotated[int, Field(ge=1)]
    leaf_hash: Hex
    audit_path: list[Hex]


class LoggedEntry(_Open):
    model_config = _doc("The canonical JSON entry; subjects appear as pseudonyms.")

    index: AuditIndex
    kind: str
    time: _TIME_OUT


class AuditEntry(Reply):
    index: AuditIndex
    leaf_hash: Hex = Field(description="SM3(0x00 || entry bytes), hex.")
    entry: LoggedEntry


class AuditEntries(Reply):
    entries: list[AuditEntry]
    next: int | None = Field(description="Cursor of the next page.")


class ConsentList(Reply):
    model_config = _doc(
        "Consents the caller is the subject of or granted as a guardian, newest first."
    )

    consents: Annotated[
        list[Annotated[dict[str, Any], schema_ref("Consent")]], Field(max_length=1000)
    ]


class AccessLogItem(Reply):
    model_config = _doc(
        "One access to the caller's data. Checks carry claim, purpose, "
        "decision, result and their legal basis or consent."
    )

    index: AuditIndex
    time: _TIME_OUT
    kind: Literal["check", "officer_lookup"]
    requester: str | None
    requester_name: str | None
    claim: str | SkipJsonSchema[None] = None
    purpose: str | SkipJsonSchema[None] = None
    result: Literal["yes", "no", "undetermined", "denied", "invalid"] | SkipJsonSchema[None] = None
    decision: Literal["allowed", "denied"] | SkipJsonSchema[None] = None
    params: dict[str, str] | SkipJsonSchema[None] = None
    legal_basis: str | SkipJsonSchema[None] = None
    consent_id: str | SkipJsonSchema[None] = None
    reason: str | SkipJsonSchema[None] = Field(
        default=None, description="For a refused check: the problem slug it was refused with."
    )


class AccessLog(Reply):
    entries: list[AccessLogItem]
    next: Annotated[int, Field(ge=0)] | None = Field(
        description="Pass as `cursor` for the next (older) page."
    )


class TokenResponse(Reply):
    access_token: Annotated[str, schema_ref("CompactJws")] = Field(
        description="RFC 9068 JWT (`typ: at+jwt`)."
    )
    token_type: Literal["Bearer"]
    expires_in: Annotated[int, Field(ge=1)]
    scope: str


_B64_COORDINATE = Annotated[str, Field(pattern="^[A-Za-z0-9_-]{43}$")]


class Jwk(Reply):
    kty: Literal["EC"]
    crv: Literal["SM2", "P-256"]
    x: _B64_COORDINATE
    y: _B64_COORDINATE
    kid: str
    alg: Literal["SM2", "ES256"] | SkipJsonSchema[None] = None
    use: Literal["sig"] | SkipJsonSchema[None] = None


class Jwks(Reply):
    keys: list[Jwk]


# --- /healthz ---------------------------------------------------------------------------


class DepartmentHealth(Reply):
    reachable: bool
    latency_ms: Annotated[float, Field(ge=0)] | SkipJsonSchema[None] = None
    status: str | SkipJsonSchema[None] = None
    ready: bool | SkipJsonSchema[None] = Field(
        default=None, description="the department's source can be read now"
    )
    source: str | SkipJsonSchema[None] = Field(
        default=None,
        description="where the department's answers come from: `managed` (the generated "
        "store) or its database's kind (`sqlite`, `postgresql`, `mysql`, ...)",
    )


class HealthCheckpoint(Reply):
    size: Annotated[int, Field(ge=0)]
    cosigners: list[str]
    quorum: Annotated[int, Field(ge=1)]
    witnessed: bool = Field(description="the latest checkpoint has the quorum")
    diverged: str | None = Field(
        description="why the log is behind what a witness cosigned (then nothing is "
        "served), or null"
    )


class HealthAudit(Reply):
    size: Annotated[int, Field(ge=0)]
    checkpoint: HealthCheckpoint | SkipJsonSchema[None] = None


class Health(Reply):
    model_config = _doc(
        "`degraded` when a department is unreachable or its source is not "
        "ready: answers become `undetermined`, the gateway itself stays up. "
        "`unavailable` (with status 503) when the audit log is behind what a witness "
        "cosigned: every other endpoint but /metrics and /.well-known answers 503 "
        "`audit-behind-witnesses`."
    )

    status: Literal["ok", "degraded", "unavailable"]
    departments: dict[str, DepartmentHealth]
    audit: HealthAudit | SkipJsonSchema[None] = None


# --- claims, consents, policy --------------------------------------------------------------

ChangeId = Annotated[str, Field(pattern="^[0-9a-f]{32}$")]  # uuid4().hex


class ParamLimit(Reply):
    distinct_values: Annotated[int, Field(ge=1)]
    window_seconds: Annotated[float, Field(gt=0)]


class ClaimPurpose(Reply):
    name: PurposeName
    consent_required: bool
    legal_basis: str | None = Field(
        description="Statutory basis (PIPL art. 13); null when consent is needed."
    )


class ClaimDescription(Reply):
    name: ClaimName
    title: str
    title_zh: str
    params: dict[str, list[str]] = Field(description="Parameter name to its allowed values.")
    param_limits: dict[str, ParamLimit] = Field(
        description="Parameter name to how many of its values one requester may ask about one "
        "subject within `window_seconds` (a further value is 403 `parameter-enumeration`)."
    )
    purposes: list[ClaimPurpose]
    departments: list[Annotated[str, schema_ref("DepartmentName")]]


class PurposeTitles(Reply):
    title: str
    title_zh: str


class ClaimsResponse(Reply):
    claims: list[ClaimDescription] = Field(
        description="Only the claims and purposes the caller's policy allows."
    )
    purposes: Annotated[
        dict[str, PurposeTitles],
        Field(json_schema_extra={"propertyNames": component_ref("PurposeName")}),
    ]


class Consent(Reply):
    id: Annotated[str, Field(pattern="^[A-Za-z0-9_-]{22}$")]
    subject_masked: Annotated[str, Field(pattern="^[0-9]{6}[*]{8}[0-9]{3}[0-9X]$")]
    granted_by: Literal["subject", "guardian"]
    requester: str
    purposes: list[str] = Field(description="Purpose names (of the catalog at grant).")
    claims: list[str] = Field(description="Claim names (of the catalog at grant).")
    not_before: _TIME_OUT
    expires_at: _TIME_OUT
    max_uses: Annotated[int, Field(ge=1, le=MAX_CONSENT_USES)]
    uses: Annotated[int, Field(ge=0)]
    status: Literal["ACTIVE", "REVOKED", "EXPIRED", "EXHAUSTED"] = Field(
        description="Effective status when read: EXPIRED and EXHAUSTED are derived."
    )
    created: _TIME_OUT
    revoked_at: _TIME_OUT | None
    artefact: Annotated[str, schema_ref("CompactJws")] = Field(
        description="The consent signed by the gateway at grant (`typ: tongban-consent+jwt`; "
        "payload: ConsentArtefactClaims)."
    )


class PendingChange(Reply):
    id: ChangeId
    kind: str = Field(description="`policy` (then `change` is a PolicyChange), `client`, ...")
    proposer: str
    status: Literal["pending"]
    change: dict[str, Any] = Field(
        description="For `policy`, the PolicyChange; else `{kind, spec}`, the proposal."
    )
    base_version: PolicyVersion


class Policy(Reply):
    version: PolicyVersion = Field(description="SM3 over model, rules and legal bases.")
    rules: list[Annotated[list[str], schema_ref("PolicyRule")]]
    legal_bases: Annotated[
        dict[str, str],
        Field(json_schema_extra={"propertyNames": component_ref("PurposeName")}),
    ]
    pending: list[PendingChange]


class ChangeProposed(Reply):
    id: ChangeId
    status: Literal["pending"]


class ChangeApproved(Reply):
    id: ChangeId
    status: Literal["approved"]
    policy_version: PolicyVersion


class ChangeRejected(Reply):
    id: ChangeId
    status: Literal["rejected"]


# --- jobs -------------------------------------------------------------------------------


class StatisticJob(_Open):
    model_config = _doc(
        "A job: when done, the summed ciphertexts, the packing layout and "
        "the cells; the gateway never sees a plaintext value or holds a private key."
    )

    id: str
    status: Literal["running", "done", "failed"]


class StatisticUnavailableItem(Reply):
    name: str
    detail: str


class StatisticsListing(_Open):
    model_config = _doc(
        "Cells below the threshold are suppressed: by a sole contributing "
        "department, otherwise by the analyst."
    )

    statistics: list[dict[str, Any]]
    unavailable: list[StatisticUnavailableItem] = Field(
        description="Registered statistics a contributing department's file does not "
        "declare: refused at submission (statistic-unavailable)."
    )
    threshold: int
    budget: dict[str, Any]


class FederationJob(_Open):
    model_config = _doc(
        "A horizontal training job: per-round held-out loss and AUC while "
        "it runs; when done, the federated and centralised AUC, epsilon (null without DP) "
        "and the SM3 hash of the final model. The gateway sees only aggregated parameters."
    )

    id: str
    status: Literal["queued", "running", "done", "failed"]


# --- RFC 8414 ---------------------------------------------------------------------------


class AuthorizationServerMetadata(Reply):
    """What a client library needs to find the token endpoint and the keys (RFC 8414)."""

    model_config = _doc(
        "OAuth 2.0 authorization server metadata (RFC 8414): client "
        "credentials only, at the token endpoint, with client_secret_basic or "
        "private_key_jwt (SM2 or ES256)."
    )

    issuer: str
    token_endpoint: str
    jwks_uri: str
    grant_types_supported: list[Literal["client_credentials"]]
    response_types_supported: list[str] = Field(
        description="Empty: there is no authorization endpoint."
    )
    token_endpoint_auth_methods_supported: list[Literal["client_secret_basic", "private_key_jwt"]]
    token_endpoint_auth_signing_alg_values_supported: list[Literal["SM2", "ES256"]]
    scopes_supported: list[str]
    service_documentation: str

    @classmethod
    def of(
        cls, issuer: str, token_endpoint: str, scopes: Iterable[str]
    ) -> AuthorizationServerMetadata:
        base = issuer.rstrip("/")
        return cls(
            issuer=issuer,
            token_endpoint=token_endpoint,
            jwks_uri=base + "/.well-known/jwks.json",
            grant_types_supported=["client_credentials"],
            response_types_supported=[],
            token_endpoint_auth_methods_supported=["client_secret_basic", "private_key_jwt"],
            token_endpoint_auth_signing_alg_values_supported=["SM2", "ES256"],
            scopes_supported=sorted(scopes),
            service_documentation=base + "/docs",
        )


# --- requesters and two-person changes -----------------------------------------------------

_ROLE = "^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
MAX_CLIENT_KEYS = 8


class JwkSetIn(Body):
    model_config = _doc(
        "Public keys only (SM2 as `{kty: EC, crv: SM2}`, or P-256), each with a `kid`; "
        "one kind for the client, which pins its algorithm (SM2 or ES256)."
    )

    keys: Annotated[list[dict[str, str]], Field(min_length=1, max_length=MAX_CLIENT_KEYS)]


class ClientProposal(Body):
    model_config = _doc(
        "A requester to register with `private_key_jwt`: its public keys inline (`jwks`) or "
        "at an https URL (`jwks_uri`, fetched now, so that the second administrator reviews "
        "the very keys that will be trusted), never both; no secret travels. Its `role` must "
        "be one the policy grants something to."
    )

    client_id: Annotated[str, Field(pattern=CLIENT_ID_PATTERN)]
    display_name: Annotated[str, Field(min_length=1, max_length=200)] | SkipJsonSchema[None] = None
    role: Annotated[str, Field(pattern=_ROLE)]
    scopes: Annotated[
        list[Literal["checks", "checks:batch", "audit:read", "admin", "statistics", "federation"]],
        Field(min_length=1, max_length=6),
    ]
    jwks: JwkSetIn | SkipJsonSchema[None] = None
    jwks_uri: (
        Annotated[str, Field(pattern="^https?://", max_length=2048)] | SkipJsonSchema[None]
    ) = None

    @model_validator(mode="after")
    def _one_source(self) -> ClientProposal:
        if (self.jwks is None) == (self.jwks_uri is None):
            raise ValueError("expected exactly one of jwks and jwks_uri")
        return self


class ChangePending(Reply):
    change_id: ChangeId
    status: Literal["pending"]


class ChangeDecided(Reply):
    model_config = _doc("A two-person change, decided.")

    id: ChangeId
    kind: str = Field(description="`policy`, `client`, `client-enable`, ...")
    status: Literal["approved", "rejected"]
    policy_version: PolicyVersion | SkipJsonSchema[None] = Field(
        default=None, description="For an approval: the policy version now enforced."
    )


class ClientInfo(Reply):
    client_id: str
    display_name: str
    auth_method: Literal["client_secret_basic", "private_key_jwt"]
    scopes: list[str]
    enabled: bool
    alg: Literal["SM2", "ES256"] | None
    kids: list[str]


class ClientList(Reply):
    clients: list[ClientInfo]


class ClientDisabled(Reply):
    client_id: str
    enabled: Literal[False]
    audit_index: AuditIndex


class ChangeList(Reply):
    changes: list[PendingChange]


# --- errors and the token request ------------------------------------------------------

_TOKEN_REFUSALS = ("token-invalid", "token-expired", "token-not-yet-valid", "token-wrong-type",
                   "token-wrong-audience", "token-replayed", "rate-limited")  # fmt: skip
_TOKEN_PROBLEMS = [PROBLEM_BASE + s for s in sorted(_TOKEN_REFUSALS)]
_TokenProblem = Annotated[str, Field(json_schema_extra={"enum": _TOKEN_PROBLEMS})]
_SCOPE = "(" + "|".join(sorted(s.replace(":", "[:]") for s in KNOWN_SCOPES)) + ")"


class Problem(_Open):
    model_config = _doc("RFC 9457 problem details. Extension members may be added.")

    type: str = Field(
        description="Stable URI naming the kind of problem; see `x-problem-types`.",
        json_schema_extra={"format": "uri"},
    )
    title: str = Field(
        description="Short summary of the problem type; the same for every occurrence."
    )
    status: Annotated[int, Field(ge=400, le=599)]
    detail: str = Field(
        description="Names the field at fault and what was expected; never repeats personal data."
    )
    instance: str = Field(description="The request id (also in the `X-Request-Id` header).")
    audit_index: AuditIndex | SkipJsonSchema[None] = Field(
        default=None, description="For refused checks: the audit entry recording the refusal."
    )
    reason: (
        Literal["bad_length", "bad_format", "bad_region", "bad_date", "bad_check_digit"]
        | SkipJsonSchema[None]
    ) = Field(default=None, description="For `invalid-id-number`: which GB 11643 rule failed.")
    required_scope: str | SkipJsonSchema[None] = Field(
        default=None, description="For `insufficient-scope`: the scope the operation needs."
    )
    retry_after: Annotated[int, Field(ge=1)] | SkipJsonSchema[None] = Field(
        default=None, description="For `rate-limited`: seconds to wait, as in `Retry-After`."
    )
    limit: Literal["requester", "subject"] | SkipJsonSchema[None] = Field(
        default=None, description="For `rate-limited`: which limit."
    )
    parameter: str | SkipJsonSchema[None] = Field(
        default=None, description="For `unknown-parameter`: the enumerated parameter at fault."
    )
    allowed: list[str] | SkipJsonSchema[None] = Field(
        default=None,
        description="For `unknown-parameter` and `unknown-purpose`: every value the parameter "
        "or purpose may take (the caller's own value is never repeated).",
    )
    claims: str | SkipJsonSchema[None] = Field(
        default=None,
        description="For `unknown-claim` and `unknown-purpose`: where the claims and purposes "
        "are listed (`/v1/claims`).",
        json_schema_extra={"format": "uri-reference"},
    )
    statistics: str | SkipJsonSchema[None] = Field(
        default=None,
        description="For `unknown-statistic`: where the statistics are listed (`/v1/statistics`).",
        json_schema_extra={"format": "uri-reference"},
    )


class OAuthError(_Open):
    model_config = _doc("Token endpoint error (RFC 6749 section 5.2), not problem+json.")

    error: Literal["invalid_request", "invalid_client", "invalid_grant", "unauthorized_client",
                   "unsupported_grant_type", "invalid_scope", "temporarily_unavailable"] = Field(
        description="RFC 6749 section 5.2 error code."
    )  # fmt: skip
    error_description: str | SkipJsonSchema[None] = Field(
        default=None, description="ASCII, without quotes or backslashes."
    )
    error_uri: str | SkipJsonSchema[None] = Field(default=None, json_schema_extra={"format": "uri"})
    type: _TokenProblem | SkipJsonSchema[None] = Field(
        default=None,
        description="When a client assertion was refused: the tongban problem type of the "
        "reason; `rate-limited` for a throttled request (429).",
    )
    limit: Literal["client", "source"] | SkipJsonSchema[None] = Field(
        default=None, description="For a 429: the bucket that ran dry."
    )
    retry_after: Annotated[int, Field(ge=1)] | SkipJsonSchema[None] = Field(
        default=None, description="As `Retry-After`."
    )


class TokenRequest(Body):
    model_config = _doc(
        "Authenticate with HTTP Basic (client_secret_basic) OR a client assertion "
        "(private_key_jwt), never both."
    )

    grant_type: Literal["client_credentials"]
    scope: Annotated[str, Field(pattern=f"^{_SCOPE}( {_SCOPE})*$")] | SkipJsonSchema[None] = Field(
        default=None, description="Space-separated; default: every scope the client holds."
    )
    client_assertion_type: (
        Literal["urn:ietf:params:oauth:client-assertion-type:jwt-bearer"] | SkipJsonSchema[None]
    ) = None
    client_assertion: Annotated[str, schema_ref("CompactJws")] | SkipJsonSchema[None] = Field(
        default=None,
        description="private_key_jwt (RFC 7523): iss = sub = client id, aud = the token "
        "endpoint URL, short exp, single-use jti; alg as registered.",
    )
    client_id: Annotated[str, Field(pattern=CLIENT_ID_PATTERN)] | SkipJsonSchema[None] = None


# --- /livez and /readyz ----------------------------------------------------------------


class Liveness(Reply):
    status: Literal["ok"]


class Readiness(Reply):
    model_config = _doc(
        "Whether to send this gateway traffic. Not ready (503) when one of "
        "its stores does not answer or its audit log is behind what a witness cosigned. "
        "A department that is down does not make it unready (its checks answer "
        "`undetermined`); it is listed."
    )

    status: Literal["ready", "not_ready"]
    stores: dict[str, bool] = Field(description="Each store of the gateway: does it answer now.")
    departments: dict[str, DepartmentHealth]
    audit: HealthAudit | SkipJsonSchema[None] = None
    reasons: list[str] = Field(description="Why not ready (store or audit), empty when ready.")
