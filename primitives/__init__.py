"""Shared building blocks: national crypto, GB 11643 ID numbers, errors, canonical JSON."""

__all__: list[str] = []
