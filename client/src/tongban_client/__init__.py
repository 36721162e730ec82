"""tongban-client: the requester's SDK for a tongban gateway.

    from tongban_client import Client, verify_answer

    with Client("https://gateway.example", "edu-bureau", client_secret=secret) as gw:
        result = gw.check("birth_registered", "school_enrollment", id_number)
        payload = verify_answer(result.answer, gw.jwks())

It depends on httpx, Authlib, cryptography and tongsuopy only: none of the server. Inside
the server's environment it is also importable as ``tongban.client``.
"""

from __future__ import annotations

from ._gm import SM2PrivateKey, SM2PublicKey, sm3
from .checkpoint import Checkpoint, parse_note, verify_note
from .client import Client, NotCheckpointedYet
from .errors import (
    AnswerRejected,
    CheckpointRejected,
    ConsentRefused,
    ConsentRequired,
    Forbidden,
    InvalidIdNumber,
    NotFound,
    PolicyDenied,
    Problem,
    ProofRejected,
    ProtocolError,
    RateLimited,
    TongbanClientError,
    TransportError,
    Unauthenticated,
    Unavailable,
    VerificationError,
)
from .jose import ANSWER_TYP, client_assertion, verify_answer
from .keys import jwks_keys, load_private_key, load_public_key, public_jwk
from .merkle import leaf_hash, node_hash, root_from_consistency, root_from_inclusion
from .results import (
    BatchItem,
    BatchResult,
    CheckResult,
    ClaimInfo,
    ConsistencyResult,
    InclusionResult,
    PurposeInfo,
    Subject,
)

__version__ = "0.1.0"

__all__ = [
    "ANSWER_TYP",
    "AnswerRejected",
    "BatchItem",
    "BatchResult",
    "CheckResult",
    "Checkpoint",
    "CheckpointRejected",
    "ClaimInfo",
    "Client",
    "ConsentRefused",
    "ConsentRequired",
    "ConsistencyResult",
    "Forbidden",
    "InclusionResult",
    "InvalidIdNumber",
    "NotCheckpointedYet",
    "NotFound",
    "PolicyDenied",
    "Problem",
    "ProofRejected",
    "ProtocolError",
    "PurposeInfo",
    "RateLimited",
    "SM2PrivateKey",
    "SM2PublicKey",
    "Subject",
    "TongbanClientError",
    "TransportError",
    "Unauthenticated",
    "Unavailable",
    "VerificationError",
    "__version__",
    "client_assertion",
    "jwks_keys",
    "leaf_hash",
    "load_private_key",
    "load_public_key",
    "node_hash",
    "parse_note",
    "public_jwk",
    "root_from_consistency",
    "root_from_inclusion",
    "sm3",
    "verify_answer",
    "verify_note",
]
