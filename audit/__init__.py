"""The audit log: an append-only SM3 Merkle tree (RFC 6962/9162) with signed, witnessed
checkpoints, a pseudonym vault, and an offline verifier."""

__all__: list[str] = []
