"""Fault tests on the production topology (tests/topology.py), each under load: the gateway
killed with SIGKILL and restarted, an adapter hung and killed, PostgreSQL taken away and
given back, and a store that refuses writes. Whatever happens, every answer a client
received has its audit entry, the log verifies, and no index repeats or goes missing."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import statistics
import subprocess
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from tongban.primitives.errors import PROBLEM_BASE

from .topology import Load, Outcome, Topology, assert_every_answer_audited

pytestmark = pytest.mark.slow

STORE_UNAVAILABLE = PROBLEM_BASE + "store-unavailable"


@pytest.fixture(scope="module")
def topo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    topology = Topology(tmp_path_factory.mktemp("faults"), adapter_timeout=1.0)
    try:
        topology.setup().start()
        yield topology
    finally:
        topology.teardown()


@pytest.fixture(scope="module")
def subjects(topo: Topology) -> list[str]:
    # People with definite answers, so `undetermined` can only mean a department is away.
    return topo.subjects(300, determined=("birth_registered", "married"))


def _checks(subjects: Sequence[str], claim: str, purpose: str) -> list[dict[str, Any]]:
    return [{"subject": {"id_number": s}, "claim": claim, "purpose": purpose} for s in subjects]


def _is_store_unavailable(o: Outcome) -> bool:
    return (
        o.status == 503
        and o.content_type.startswith("application/problem+json")
        and o.body is not None
        and o.body.get("type") == STORE_UNAVAILABLE
    )


def _wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_kill_9_gateway_under_load_loses_no_answer(topo: Topology, subjects: list[str]) -> None:
    token = topo.token("edu-bureau")
    with Load(topo.gateway_url, token, _checks(subjects, "birth_registered",
              "school_enrollment"), threads=6) as load:  # fmt: skip
        load.wait_for(40)
        topo.kill("gateway", signal.SIGKILL)  # master and every worker, mid-flight
        killed = len(load.snapshot())
        topo.restart("gateway")
        _wait_until(lambda: sum(o.status == 200 for o in load.snapshot()[killed:]) >= 20,
                    30, "answers after the restart")  # fmt: skip
    outcomes = load.snapshot()

    statuses = Counter(o.status for o in outcomes)
    assert statuses[None] >= 1, "the kill did not interrupt any request"
    assert set(statuses) <= {200, None}, statuses
    assert sum(1 for o in outcomes[killed:] if o.status == 200) >= 20
    assert_every_answer_audited(topo, outcomes, "edu-bureau")


def test_adapter_hung_or_killed_makes_only_its_checks_undetermined(
    topo: Topology, subjects: list[str]
) -> None:
    token = topo.token("allowance-office")
    births = _checks(subjects[:100], "birth_registered", "maternity_allowance")
    marriages = _checks(subjects[:100], "married", "maternity_allowance")  # civil only
    mixed = [check for pair in zip(births, marriages, strict=True) for check in pair]
    limit = topo.adapter_timeout + 1.5  # the configured timeout, plus a loaded machine's slack
    with Load(topo.gateway_url, token, mixed, threads=4) as load:
        load.wait_for(30)
        healthy = load.snapshot()
        topo.kill("civil", signal.SIGSTOP)  # hung: connections open, no answer
        hung_at = time.monotonic()
        load.wait_for(len(healthy) + 30)
        topo.kill("civil", signal.SIGCONT)
        topo.kill("civil", signal.SIGKILL)  # dead: connections refused
        dead_at = time.monotonic()
        load.wait_for(len(load.snapshot()) + 30)
        down_until = time.monotonic()
    outcomes = load.snapshot()
    topo.restart("civil")

    def during(o: Outcome, since: float) -> bool:
        return since + 0.2 < o.started and o.started + o.seconds < down_until

    assert all(o.status == 200 for o in outcomes), Counter(o.status for o in outcomes)
    before = [o for o in healthy if o.claim == "birth_registered"]
    assert {o.body["result"] for o in healthy if o.body} <= {"yes", "no"}
    for since in (hung_at, dead_at):
        window = [o for o in outcomes if during(o, since)]
        married = [o for o in window if o.claim == "married"]
        others = [o for o in window if o.claim == "birth_registered"]
        assert married and others
        assert {o.body["result"] for o in married if o.body} == {"undetermined"}
        assert max(o.seconds for o in married) < limit
        # Checks that do not need the civil department keep their answers and their pace.
        assert {o.body["result"] for o in others if o.body} <= {"yes", "no"}
        p50_before = statistics.median(o.seconds for o in before)
        p50_during = statistics.median(o.seconds for o in others)
        assert p50_during < max(3 * p50_before, p50_before + 0.5)

    # Back up: its checks are answered again, without touching the gateway.
    again = httpx.post(topo.gateway_url + "/v1/checks", json=mixed[1],
                       headers={"Authorization": f"Bearer {token}"}, trust_env=False,
                       timeout=10).json()  # fmt: skip
    assert again["result"] in ("yes", "no")
    assert_every_answer_audited(topo, outcomes, "allowance-office")


def test_postgresql_away_and_back_503_then_recovers_without_restart(
    topo: Topology, subjects: list[str]
) -> None:
    assert topo.proxy is not None
    token = topo.token("edu-bureau")
    pids = (topo.procs["gateway"].popen.pid, sorted(topo.worker_pids()))
    with Load(topo.gateway_url, token, _checks(subjects, "birth_registered",
              "school_enrollment"), threads=4) as load:  # fmt: skip
        load.wait_for(20)
        topo.proxy.cut()
        cut_at = time.monotonic()
        _wait_until(lambda: sum(o.started > cut_at + 0.3 for o in load.snapshot()) >= 30,
                    30, "requests while PostgreSQL is away")  # fmt: skip
        # Alive, not ready, and saying which store (no driver text, no person).
        assert (
            httpx.get(topo.gateway_url + "/livez", trust_env=False, timeout=10).status_code == 200
        )
        unready = httpx.get(topo.gateway_url + "/readyz", trust_env=False, timeout=30)
        assert unready.status_code == 503, unready.text
        assert "store gateway does not answer" in unready.json()["reasons"]
        topo.proxy.restore()
        restored_at = time.monotonic()
        _wait_until(lambda: any(o.status == 200 and o.started > restored_at
                                for o in load.snapshot()), 20, "recovery")  # fmt: skip
        recovered = len(load.snapshot())
        load.wait_for(recovered + 20)
        ready = httpx.get(topo.gateway_url + "/readyz", trust_env=False, timeout=30)
        assert ready.status_code == 200 and ready.json()["reasons"] == [], ready.text
    outcomes = load.snapshot()

    away = [o for o in outcomes if cut_at + 0.3 < o.started and o.started + o.seconds < restored_at]
    assert len(away) >= 20
    assert all(_is_store_unavailable(o) for o in away), Counter(o.status for o in away)
    for o in away:  # the problem names no person
        assert o.body is not None and all(s not in str(o.body) for s in subjects)
    after = outcomes[recovered:]
    assert after and all(o.status == 200 for o in after), Counter(o.status for o in after)
    assert (topo.procs["gateway"].popen.pid, sorted(topo.worker_pids())) == pids
    assert_every_answer_audited(topo, outcomes, "edu-bureau")


def test_worker_respawned_while_postgresql_is_away_waits_for_it(topo: Topology) -> None:
    """gunicorn halts when a worker fails to boot: a worker that crashes while PostgreSQL
    is away must not take the whole gateway down. Its replacement waits for the store."""
    assert topo.proxy is not None
    master = topo.procs["gateway"].popen
    victim, *survivors = topo.worker_pids()
    started = topo.starts()
    topo.proxy.cut()
    try:
        os.kill(victim, signal.SIGKILL)
        _wait_until(lambda: len(set(topo.worker_pids()) - {victim}) == topo.workers, 20,
                    "the master to respawn the worker")  # fmt: skip
        time.sleep(2)  # the replacement is now retrying against the missing store
        assert master.poll() is None, topo.log_tail("gateway")
        assert set(survivors) <= set(topo.worker_pids())
    finally:
        topo.proxy.restore()
    _wait_until(lambda: topo.starts() == started + 1, 30, "the new worker to boot")
    assert master.poll() is None
    assert len(topo.worker_pids()) == topo.workers
    token = topo.token("edu-bureau")
    check = _checks(topo.subjects(1), "birth_registered", "school_enrollment")[0]
    reply = httpx.post(topo.gateway_url + "/v1/checks", json=check, trust_env=False,
                       headers={"Authorization": f"Bearer {token}"}, timeout=10)  # fmt: skip
    assert reply.status_code == 200


_REFUSE = """
CREATE OR REPLACE FUNCTION tongban_test_disk_full() RETURNS trigger AS $$
BEGIN
  RAISE EXCEPTION 'could not extend file: No space left on device' USING ERRCODE = '53100';
END $$ LANGUAGE plpgsql;
CREATE TRIGGER tongban_test_disk_full BEFORE INSERT ON audit_entries
  FOR EACH STATEMENT EXECUTE FUNCTION tongban_test_disk_full();
"""


def test_store_that_refuses_writes_gets_no_answer_out(topo: Topology, subjects: list[str]) -> None:
    """PostgreSQL answering every audit insert with SQLSTATE 53100 (disk_full), as it does
    when its volume is full: the gateway refuses with 503 instead of answering unaudited,
    and answers again once space is back."""
    token = topo.token("edu-bureau")
    engine = create_engine(topo.pg_direct, isolation_level="AUTOCOMMIT")
    try:
        with Load(topo.gateway_url, token, _checks(subjects, "birth_registered",
                  "school_enrollment"), threads=4) as load:  # fmt: skip
            load.wait_for(20)
            with engine.connect() as conn:
                conn.execute(text(_REFUSE))
            full_at = time.monotonic()
            _wait_until(lambda: sum(o.started > full_at + 0.3 for o in load.snapshot()) >= 30,
                        30, "requests while the store is full")  # fmt: skip
            with engine.connect() as conn:
                conn.execute(text("DROP TRIGGER tongban_test_disk_full ON audit_entries"))
            freed_at = time.monotonic()
            _wait_until(lambda: any(o.status == 200 and o.started > freed_at
                                    for o in load.snapshot()), 20, "recovery")  # fmt: skip
    finally:
        engine.dispose()
    outcomes = load.snapshot()

    full = [o for o in outcomes if full_at + 0.3 < o.started and o.started + o.seconds < freed_at]
    assert len(full) >= 20
    assert all(_is_store_unavailable(o) for o in full), Counter(o.status for o in full)
    assert_every_answer_audited(topo, outcomes, "edu-bureau")


def test_logs_carry_no_id_numbers(topo: Topology, subjects: list[str]) -> None:
    """After all the faults above, nothing the gateway or an adapter logged names a person."""
    logs = "".join(p.log.read_text(encoding="utf-8", errors="replace")
                   for p in topo.procs.values())  # fmt: skip
    assert not [s for s in subjects if s in logs]
    assert Path(topo.procs["gateway"].log).exists()


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A 6 MiB tmpfs for the audit store (root only: it is a real mount)."""
    where = tmp_path_factory.mktemp("small-disk")
    if shutil.which("mount") is None:
        pytest.skip("no mount command here")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(where)],
                             capture_output=True, text=True, check=False)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(filler: Path) -> Path:
    """Append to ``filler`` (created while there was room: creating a file on a file
    system the load has already filled fails) until the file system is full; return it.
    Unbuffered: a buffered file would try the refused bytes again when closed, and raise
    ENOSPC a second time, out of the ``with``."""
    with filler.open("ab", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def test_full_disk_under_the_audit_store_gets_no_answer_out(
    tmp_path_factory: pytest.TempPathFactory, small_disk: Path
) -> None:
    """A real ENOSPC: the SQLite audit store of a one-worker gateway sits on a small
    tmpfs that the test fills. Commits that still fit in space SQLite already holds may
    succeed (and are answered); the rest are refused with 503 — never answered unaudited —
    and answering resumes once space is freed, without a restart."""
    topology = Topology(tmp_path_factory.mktemp("disk"), workers=1,
                        audit_url=f"sqlite:///{small_disk / 'audit.db'}")  # fmt: skip
    try:
        topology.setup().start()
        token = topology.token("edu-bureau")
        checks = _checks(topology.subjects(300), "birth_registered", "school_enrollment")
        filler = small_disk / "filler"
        filler.touch()
        with Load(topology.gateway_url, token, checks, threads=4) as load:
            load.wait_for(20)
            _fill(filler)
            full_at = time.monotonic()
            _wait_until(lambda: any(_is_store_unavailable(o) and o.started > full_at
                                    for o in load.snapshot()), 30, "a refusal")  # fmt: skip
            refused = len(load.snapshot())
            filler.unlink()
            freed_at = time.monotonic()
            _wait_until(lambda: any(o.status == 200 and o.started > freed_at
                                    for o in load.snapshot()), 20, "recovery")  # fmt: skip
            load.wait_for(len(load.snapshot()) + 10)
        outcomes = load.snapshot()
        assert all(o.status == 200 or _is_store_unavailable(o) for o in outcomes), Counter(
            o.status for o in outcomes
        )
        assert all(o.status == 200 for o in outcomes[refused:] if o.started > freed_at + 1)
        assert_every_answer_audited(topology, outcomes, "edu-bureau")
    finally:
        topology.teardown()
