"""One audit-sink protocol (tongban.audit.sink.AuditSink) and one fake
(tests.conftest.RecordingAudit), and the append metric counted inside the log, so it
counts every kind of entry and not only the check pipeline's."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tongban.gateway.metrics import REGISTRY

from .hostile_harness import ADULT, Hostile, build_hostile

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gateway", "adapters", "tongban", "policies", "audit", "federation", "primitives")


def _appenders(tree: ast.AST) -> Iterator[ast.ClassDef]:
    """Classes that define ``append(self, event, ...)``: sinks or fakes of one."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if (
                    isinstance(item, ast.FunctionDef)
                    and item.name == "append"
                    and [a.arg for a in item.args.args[:2]] == ["self", "event"]
                ):
                    yield node


def test_one_protocol_and_one_fake() -> None:
    protocols, fakes = [], []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            for cls in _appenders(ast.parse(path.read_text("utf-8"))):
                bases = {ast.unparse(b) for b in cls.bases}
                if "Protocol" in bases:
                    protocols.append(f"{path.relative_to(ROOT)}:{cls.name}")
    for path in sorted((ROOT / "tests").glob("*.py")):
        fakes += [f"{path.name}:{c.name}" for c in _appenders(ast.parse(path.read_text("utf-8")))]
    assert protocols == ["audit/sink.py:AuditSink"]
    assert fakes == ["conftest.py:RecordingAudit"]


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[Hostile]:
    h = build_hostile(tmp_path)
    yield h
    h.close()


def _appends() -> float:
    return REGISTRY.get_sample_value("tongban_audit_appends_total") or 0.0


def test_the_append_metric_counts_every_kind_of_entry(gw: Hostile) -> None:
    before, size = _appends(), gw.audit_size()
    # An officer's lookup (an officer_lookup entry), not a check.
    resp = gw.client.post(
        "/v1/audit/entries/search", json={"subject": ADULT}, headers=gw.auth("privacy-officer")
    )
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert gw.audit_size() == size + 1
    assert _appends() == before + 1
    # And a check's entry, through the same count.
    body = {"subject": {"id_number": ADULT}, "claim": "birth_registered",
            "purpose": "school_enrollment"}  # fmt: skip
    assert gw.client.post("/v1/checks", json=body, headers=gw.auth("edu-bureau")).status_code == 200
    assert gw.audit_size() == size + 2
    assert _appends() == before + 2
