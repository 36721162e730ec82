"""Audit: the SM3 Merkle transparency log with signed, witnessed checkpoints (later issue)."""
