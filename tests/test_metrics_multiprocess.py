"""/metrics under several gunicorn workers (tongban/gunicorn_conf.py): the deployment's
totals whichever worker takes the scrape, gauges merged without a pid label, a dead
worker's live gauges dropped and its counters kept; and the multiprocess directory the
master prepares (private, emptied, one per master)."""

from __future__ import annotations

import base64
import datetime as dt
import os
import runpy
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tongban import gunicorn_conf
from tongban.config import Settings
from tongban.metrics_dir import MULTIPROC_VAR, prepare_metrics_dir
from tongban.primitives.idnumber import make_id
from tongban.primitives.metrics_auth import TOKEN_FILE
from tongban.provision import init_data_dir, known_secrets

from .gunicorn_gateway import gunicorn_gateway_process

ROOT = Path(__file__).resolve().parent.parent
CHECKS = 24  # at first, over fresh connections and 6 at a time: both workers take some
MAX_CHECKS = 40
CHILD = make_id("110105", dt.date(2018, 3, 4), 12)
pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Gateway:
    url: str
    master: subprocess.Popen[bytes]
    metrics_dir: Path
    scrape_auth: dict[str, str]
    check_auth: dict[str, str]
    log: Path


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    data = tmp_path_factory.mktemp("multiproc")
    settings = Settings(data_dir=data)
    init_data_dir(data, settings)  # `tongban keys init`: keys, stores, the demo requesters
    secret = known_secrets(data)["edu-bureau"]
    config = "python:tongban.gunicorn_conf"
    with gunicorn_gateway_process(data, threads=4, workers=2, config=config) as (port, proc):
        url = f"http://127.0.0.1:{port}"
        # /healthz answered from the first worker; the second builds its gateway after it.
        # The shipped configuration logs tongban's INFO lines, "ready" among them.
        log = data / "gunicorn.log"
        deadline = time.monotonic() + 60
        while log.read_text().count("gateway ready (pid") < 2:
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
        token = (settings.keys_dir / TOKEN_FILE).read_text(encoding="utf-8").strip()
        basic = base64.b64encode(f"edu-bureau:{secret}".encode()).decode()
        resp = httpx.post(
            url + "/oauth/token",
            data={"grant_type": "client_credentials", "scope": "checks"},
            headers={"Authorization": f"Basic {basic}"},
            trust_env=False,
        )
        assert resp.status_code == 200, resp.text
        access = resp.json()["access_token"]
        yield Gateway(
            url,
            proc,
            data / "run" / f"metrics-{proc.pid}",
            {"Authorization": f"Bearer {token}"},
            {"Authorization": f"Bearer {access}"},
            data / "gunicorn.log",
        )
    # The master removes the directory it made when it stops.
    assert not (data / "run" / f"metrics-{proc.pid}").exists()


def _fresh() -> httpx.Client:
    """A client that opens a new connection for every request: a kept-alive connection
    would stay with the worker that accepted it."""
    return httpx.Client(
        limits=httpx.Limits(max_keepalive_connections=0), timeout=30, trust_env=False
    )


def _scrape(gw: Gateway, http: httpx.Client, accept: str | None = None) -> str:
    headers = {**gw.scrape_auth, **({"Accept": accept} if accept else {})}
    resp = http.get(gw.url + "/metrics", headers=headers)
    assert resp.status_code == 200, resp.text
    return resp.text


def _samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    return [
        (dict(s.labels), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    ]


def _total(text: str, name: str) -> float:
    return sum(value for _, value in _samples(text, name))


def _per_worker(path: Path, name: str, **labels: str) -> dict[int, float]:
    """Each worker's own value of ``name`` (summed over other labels), from its file."""
    out: dict[int, float] = {}
    for f in sorted(path.glob("counter_*.db")):
        pid = int(f.stem.removeprefix("counter_"))
        metrics: list[Metric] = list(
            MultiProcessCollector.merge([str(f)], accumulate=False)  # type: ignore[no-untyped-call]
        )
        out[pid] = sum(
            s.value
            for metric in metrics
            for s in metric.samples
            if s.name == name and labels.items() <= s.labels.items()
        )
    return out


def _check(gw: Gateway, http: httpx.Client) -> int:
    body = {
        "subject": {"id_number": CHILD},
        "claim": "birth_registered",
        "purpose": "school_enrollment",
    }
    return http.post(gw.url + "/v1/checks", json=body, headers=gw.check_auth).status_code


@pytest.fixture(scope="module")
def checked(gateway: Gateway) -> int:
    """How many checks were made: CHECKS, more (up to MAX_CHECKS) if the kernel gave
    every connection to one worker, so that both workers' counts are in the totals."""
    statuses: list[int] = []
    with _fresh() as http, ThreadPoolExecutor(6) as pool:
        batch = CHECKS
        while batch:
            statuses += pool.map(lambda _: _check(gateway, http), range(batch))
            by_worker = _per_worker(gateway.metrics_dir, "tongban_checks_total")
            spread = len([n for n in by_worker.values() if n > 0]) == 2
            batch = 0 if spread else min(6, MAX_CHECKS - len(statuses))
    # Answered, or refused by the shared rate limit past its burst: counted either way.
    assert set(statuses) <= {200, 429} and statuses.count(200) >= CHECKS, statuses
    return len(statuses)


def _scrapes_by_both(gw: Gateway, http: httpx.Client) -> tuple[list[str], set[int]]:
    """Scrapes until both workers have answered some: rounds of two at once on fresh
    connections (one after the other, the kernel may give one worker every connection),
    at least 3 rounds, at most 20. The texts, and the pids that answered (whose own file
    counted a scrape during a round)."""
    texts: list[str] = []
    answered_by: set[int] = set()
    with ThreadPoolExecutor(2) as pool:
        for rounds in range(1, 21):
            before = _per_worker(gw.metrics_dir, "tongban_http_requests_total", route="/metrics")
            texts += pool.map(lambda _: _scrape(gw, http), range(2))
            after = _per_worker(gw.metrics_dir, "tongban_http_requests_total", route="/metrics")
            answered_by |= {pid for pid, n in after.items() if n > before.get(pid, 0.0)}
            if len(answered_by) >= 2 and rounds >= 3:
                break
    return texts, answered_by


def test_every_scrape_counts_every_workers_checks(gateway: Gateway, checked: int):
    """Whichever worker takes the scrape, the check counter is the deployment's: the
    checks both workers made. (Without multiprocess mode a scrape sees one worker's.)"""
    with _fresh() as http:
        texts, answered_by = _scrapes_by_both(gateway, http)
        openmetrics = _scrape(gateway, http, "application/openmetrics-text; version=1.0.0")
    assert [_total(text, "tongban_checks_total") for text in texts] == [checked] * len(texts)
    assert _total(openmetrics, "tongban_checks_total") == checked
    assert openmetrics.rstrip().endswith("# EOF")
    # The totals really are two processes' sums: both workers checked, both scraped.
    checks_by_worker = _per_worker(gateway.metrics_dir, "tongban_checks_total")
    assert len([n for n in checks_by_worker.values() if n > 0]) == 2, checks_by_worker
    assert sum(checks_by_worker.values()) == checked
    assert len(answered_by) == 2, answered_by
    # The request counter and the latency histogram are summed too.
    checks_route = {"method": "POST", "route": "/v1/checks"}
    requests = _samples(texts[-1], "tongban_http_requests_total")
    assert sum(v for lb, v in requests if checks_route.items() <= lb.items()) == checked
    counts = _samples(texts[-1], "tongban_http_request_duration_seconds_count")
    assert sum(v for lb, v in counts if lb == checks_route) == checked


def test_gauges_are_merged_not_per_worker(gateway: Gateway, checked: int):
    with _fresh() as http:
        texts, answered_by = _scrapes_by_both(gateway, http)
    assert len(answered_by) == 2, answered_by
    text = texts[-1]
    for name in ("tongban_audit_tree_size", "tongban_audit_checkpoint_size"):
        samples = _samples(text, name)
        assert len(samples) == 1 and "pid" not in samples[0][0], samples
    # Every check appended to the one log. The worker that appended last saw every entry
    # (it caught up first), and both have answered a scrape since: the largest view
    # holds them all.
    appended = _total(text, "tongban_audit_appends_total")
    assert appended >= checked
    assert _samples(text, "tongban_audit_tree_size")[0][1] >= appended


def test_a_dead_workers_gauges_go_and_its_counts_stay(gateway: Gateway, checked: int):
    path = gateway.metrics_dir
    victim = max(_per_worker(path, "tongban_checks_total").items(), key=lambda kv: kv[1])[0]
    live = sorted(p.name for p in path.glob(f"gauge_live*_{victim}.db"))
    assert live == [f"gauge_livemax_{victim}.db", f"gauge_livemostrecent_{victim}.db"]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while list(path.glob(f"gauge_live*_{victim}.db")):  # child_exit: mark_process_dead
        assert time.monotonic() < deadline, gateway.log.read_text()[-3000:]
        time.sleep(0.1)
    assert (path / f"counter_{victim}.db").exists()
    with _fresh() as http:
        for _ in range(4):  # the survivor or the replacement: the same totals
            text = _scrape(gateway, http)
            assert _total(text, "tongban_checks_total") == checked


# --- the directory the master prepares ------------------------------------------------


def test_one_worker_keeps_metrics_in_the_process(tmp_path: Path):
    env: dict[str, str] = {}
    assert prepare_metrics_dir(1, tmp_path, env) is None
    assert env == {} and not (tmp_path / "run").exists()


def test_the_masters_directory_is_private_fresh_and_its_own(tmp_path: Path):
    run = tmp_path / "run"
    run.mkdir(mode=0o755)
    dead = subprocess.Popen(["true"])
    dead.wait()
    (run / f"metrics-{dead.pid}").mkdir()  # left by a master that was killed
    (run / f"metrics-{os.getppid()}").mkdir()  # another live master's (an adapter's)
    mine = run / f"metrics-{os.getpid()}"
    mine.mkdir()
    (mine / "counter_1.db").write_bytes(b"old")
    env: dict[str, str] = {}
    path = prepare_metrics_dir(2, tmp_path, env)
    assert path == mine.resolve() and env == {MULTIPROC_VAR: str(path)}
    assert list(path.iterdir()) == []
    assert path.stat().st_mode & 0o777 == 0o700
    assert not (run / f"metrics-{dead.pid}").exists()
    assert (run / f"metrics-{os.getppid()}").exists()


def test_an_operators_directory_is_emptied_or_refused(tmp_path: Path):
    named = tmp_path / "prom"
    named.mkdir(mode=0o700)
    (named / "counter_7.db").write_bytes(b"old")
    (named / "keep.txt").write_text("not ours to remove")
    env = {MULTIPROC_VAR: str(named)}
    assert prepare_metrics_dir(1, tmp_path, env) == named
    assert sorted(p.name for p in named.iterdir()) == ["keep.txt"]
    named.chmod(0o777)
    with pytest.raises(RuntimeError, match="written by others"):
        prepare_metrics_dir(2, tmp_path, env)


def test_the_operators_file_is_the_shipped_configuration():
    """docs/deploy/gunicorn.conf.py takes everything from tongban.gunicorn_conf (the hooks
    included) and only adds the host's settings, all of them gunicorn's."""
    from gunicorn.config import Config  # type: ignore[import-untyped]

    ns = runpy.run_path(str(ROOT / "docs" / "deploy" / "gunicorn.conf.py"))
    for name in gunicorn_conf.__all__:
        assert ns[name] is getattr(gunicorn_conf, name), name
    cfg = Config()
    own = {k: v for k, v in ns.items() if not k.startswith("__")}
    assert own.keys() <= cfg.settings.keys(), own.keys() - cfg.settings.keys()
    for key, value in own.items():
        cfg.set(key, value)
    assert cfg.worker_class_str == "tongban.gunicorn_worker.DeadlineThreadWorker"
    assert cfg.workers >= 2 and cfg.wsgi_app == "tongban.wsgi:gateway()"


_TWO_WORKERS = """
import os, sys
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import generate_latest
from tongban.http_metrics import exposition, multiprocess_dir

class ReadAtScrape:
    def collect(self):
        yield GaugeMetricFamily("t_source_ready", "Read at the scrape.", value=1.0)

registry = CollectorRegistry()
requests = Counter("t_requests", "Requests.", registry=registry)
registry.register(ReadAtScrape())
assert multiprocess_dir() == os.environ["PROMETHEUS_MULTIPROC_DIR"]
if os.fork() == 0:  # another worker
    requests.inc(2)
    os._exit(0)
os.wait()
requests.inc(3)
sys.stdout.write(generate_latest(exposition(registry)).decode())
"""


def test_what_no_file_holds_is_served_as_this_worker_reads_it(tmp_path: Path):
    """An adapter's registry under several workers: its counter is the workers' sum, and
    a collector that reads its value at the scrape (the source's readiness) is kept."""
    env = {**os.environ, MULTIPROC_VAR: str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", _TWO_WORKERS], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert _total(out, "t_requests_total") == 5
    assert _total(out, "t_source_ready") == 1
