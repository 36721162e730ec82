"""Vertical federated training: PSI-aligned, Paillier-protected logistic regression."""

from .data import DEPARTMENTS, LABEL_HOLDER, DepartmentView, split_departments, synthetic_table
from .messages import Plan, Relay, VKind, VMessage
from .parties import FeatureHolder, LabelHolder
from .runner import Job, run_on_table, run_vertical, setup_job, train

__all__ = [
    "DEPARTMENTS",
    "LABEL_HOLDER",
    "DepartmentView",
    "FeatureHolder",
    "Job",
    "LabelHolder",
    "Plan",
    "Relay",
    "VKind",
    "VMessage",
    "run_on_table",
    "run_vertical",
    "setup_job",
    "split_departments",
    "synthetic_table",
    "train",
]
