"""Deterministic synthetic population: coherent families across the five departments."""
