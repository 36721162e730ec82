"""The outside test's tail truncation, against the production topology: a gunicorn gateway
(two workers) on PostgreSQL beside five adapter processes that witness its log.

The last entries are deleted together with the checkpoints that covered them while the
gateway is down. ``tongban audit verify`` (asking the witnesses over HTTP) reports the cut;
the restarted gateway's workers each find that the witnesses cosigned more, answer no
check and no token, and report not ready on ``/healthz``.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import create_engine, text

from tongban.audit.note import SignedNote

from .topology import DEPARTMENTS, STARTUP, Topology

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def topo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    topology = Topology(tmp_path_factory.mktemp("topology-audit"), workers=2)
    try:
        topology.setup().start()
        yield topology
    finally:
        topology.teardown()


def _fully_witnessed(topo: Topology, size: int) -> SignedNote:
    deadline = time.monotonic() + 30
    while True:
        notes = [SignedNote.parse(n) for n in topo.checkpoints()]
        latest = notes[-1] if notes else None
        if (
            latest is not None
            and latest.checkpoint.size >= size
            and {s.name for s in latest.signatures} >= set(DEPARTMENTS)
        ):
            return latest
        assert time.monotonic() < deadline, "no fully cosigned checkpoint covers the log"
        time.sleep(0.2)


def test_a_cut_tail_is_caught_by_verify_and_by_the_restarted_gateway(topo: Topology) -> None:
    token = topo.token("edu-bureau")
    for subject in topo.subjects(20):
        resp = httpx.post(
            topo.gateway_url + "/v1/checks",
            json={
                "subject": {"id_number": subject},
                "claim": "birth_registered",
                "purpose": "school_enrollment",
            },
            headers={"Authorization": f"Bearer {token}"},
            trust_env=False,
            timeout=10,
        )
        assert resp.status_code == 200, resp.text
    size = len(topo.audit_entries())
    _fully_witnessed(topo, size)
    clean = topo.verify()
    assert clean["ok"] is True, clean
    assert set(clean["witnessed"]) == set(DEPARTMENTS)  # each witness was asked over HTTP

    topo.kill("gateway", signal.SIGTERM)
    witnessed = max(clean["witnessed"].values())
    engine = create_engine(topo.pg_direct)
    with engine.begin() as conn:
        # The attack: the newest entries and every checkpoint that covered them go.
        conn.execute(text("DELETE FROM audit_entries WHERE idx >= :n"), {"n": witnessed - 2})
        conn.execute(text("DELETE FROM audit_checkpoints WHERE size > :n"), {"n": witnessed - 2})
    engine.dispose()

    cut = topo.verify()
    assert cut["exit_code"] == 1 and cut["ok"] is False
    assert cut["first_bad_index"] == witnessed - 2
    assert cut["cause"].startswith("log truncated: witness ")

    topo.spawn("gateway")
    deadline = time.monotonic() + STARTUP
    while True:
        try:
            health = httpx.get(topo.gateway_url + "/healthz", timeout=5, trust_env=False)
        except httpx.HTTPError:
            health = None
        if health is not None and health.status_code == 503:
            break
        assert health is None or health.status_code != 200, "a cut log was served as ready"
        assert time.monotonic() < deadline, topo.log_tail("gateway")
        time.sleep(0.2)
    body = health.json()
    assert body["status"] == "unavailable"
    assert "witness" in body["audit"]["checkpoint"]["diverged"]
    # Every worker refuses (new connections land on either).
    for _ in range(8):
        resp = httpx.post(
            topo.gateway_url + "/v1/checks",
            json={"claim": "birth_registered"},
            headers={"Authorization": f"Bearer {token}"},
            trust_env=False,
            timeout=10,
        )
        assert resp.status_code == 503
        assert resp.json()["type"].endswith("/audit-behind-witnesses")
        refused = httpx.post(
            topo.gateway_url + "/oauth/token",
            data={"grant_type": "client_credentials"},
            auth=("edu-bureau", topo.client_secrets["edu-bureau"]),
            trust_env=False,
            timeout=10,
        )
        assert refused.status_code == 503
    assert "refusing to serve" in topo.log_tail("gateway", 200_000)
