"""The messages of vertical training: kinds, the public plan, and the recording relay.

Parties never call each other: every message goes through :class:`Relay` (the gateway in a
deployment), which hands it to the recipient and records it twice, as the relay saw it and
as the recipient received it. Tests compare those records with the "who sees what" table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

import numpy as np

__all__ = ["Plan", "Relay", "VKind", "VMessage"]

T = TypeVar("T")


class VKind(StrEnum):
    """What a message carries: one row each in docs/federation.md, "What each party
    receives"."""

    PLAN = "vlr.plan"  # coordinator -> all: the public job parameters
    PUBLIC_KEY = "vlr.public_key"  # label holder -> feature holders: Paillier public key
    PAIRWISE_KEY = "vlr.pairwise_key"  # every party -> every other: SM2 point (x, 32 bytes)
    MASKED_LOGITS = "vlr.masked_logits"  # feature holder -> label holder: uint64[batch]
    ENCRYPTED_RESIDUALS = "vlr.encrypted_residuals"  # label -> feature holders: ciphertexts
    MASKED_GRADIENT = "vlr.masked_gradient"  # feature holder -> label holder: ciphertexts
    GRADIENT_SLOTS = "vlr.gradient_slots"  # label holder -> feature holder: masked ints
    MASKED_SCORES = "vlr.masked_scores"  # feature holder -> label holder: uint64[held-out]


@dataclass(frozen=True)
class Plan:
    """Public parameters every party agrees on before training (no data in here)."""

    session: bytes
    rows: int  # aligned rows (the PSI intersection)
    train: int
    held_out: int
    epochs: int
    batch_size: int
    learning_rate: float
    l2: float
    seed: int  # batch order; public
    feature_bits: int = 12  # width of the feature holders' fixed-point digits

    def batches(self, epoch: int, train_positions: np.ndarray[Any, Any]) -> list[Any]:
        """This epoch's minibatches of train positions (the same for every party)."""
        rng = np.random.default_rng([self.seed, epoch])
        order = train_positions[rng.permutation(len(train_positions))]
        return [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]


@dataclass(frozen=True)
class VMessage:
    kind: VKind
    sender: str
    recipient: str
    payload: Any

    def describe(self) -> tuple[str, str]:
        """``(type, shape)`` of the payload, for the table and the tests."""
        p = self.payload
        if isinstance(p, np.ndarray):
            return (str(p.dtype), "x".join(map(str, p.shape)))
        if isinstance(p, list):
            inner = {type(v).__name__ for v in p}
            return (f"list[{'|'.join(sorted(inner)) or 'empty'}]", str(len(p)))
        return (type(p).__name__, "1")


@dataclass
class Relay:
    """The in-process transport: delivers by returning the payload, records every hop."""

    name: str = "gateway"
    messages: list[VMessage] = field(default_factory=list)
    bytes_relayed: int = 0

    def send(self, kind: VKind, sender: str, recipient: str, payload: T) -> T:
        self.messages.append(VMessage(kind, sender, self.name, payload))
        self.messages.append(VMessage(kind, self.name, recipient, payload))
        self.bytes_relayed += _size(payload)
        return payload

    def received_by(self, name: str) -> list[VMessage]:
        return [m for m in self.messages if m.recipient == name]


def _size(payload: Any) -> int:
    if isinstance(payload, np.ndarray):
        return int(payload.nbytes)
    if isinstance(payload, bytes):
        return len(payload)
    if isinstance(payload, list):
        return sum((int(v).bit_length() + 7) // 8 for v in payload)
    return 0
