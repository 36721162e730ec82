"""Policies: Casbin model and enforcer, negative list, two-person change approval (later issue)."""
