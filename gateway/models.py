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

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tongban.primitives.bodies import Body, schema_ref

__all__ = [
    "MAX_BATCH_SUBJECTS",
    "BatchItem",
    "BatchRequest",
    "BatchResponse",
    "BatchSubject",
    "CheckRequest",
    "CheckResponse",
    "Subject",
]

MAX_BATCH_SUBJECTS = 10_000

IdNumber = Annotated[str, schema_ref("IdNumber")]
ClaimName = Annotated[str, schema_ref("ClaimName")]
PurposeName = Annotated[str, schema_ref("PurposeName")]
#: Values are checked against the claim's enumerations in the core (unknown-parameter).
ClaimParams = Annotated[dict[str, Any] | None, schema_ref("ClaimParams")]
AnswerAlg = Annotated[Literal["SM2", "ES256"], schema_ref("AnswerAlg")]
ConsentId = Annotated[
    str | None,
    Field(
        min_length=1,
        max_length=128,
        description="Needed when the purpose has no statutory legal basis.",
    ),
]
AuditIndex = Annotated[int, Field(ge=0, description="Audit log index (leaf number).")]


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
