"""Finding 6: can a flood of wrong client secrets at POST /oauth/token slow the checks?

The gateway runs as deployed (gunicorn, 1 deadline worker x 32 threads, ``tongban.wsgi``
over SQLite in a fresh data directory; no department connected, so every check is
answered ``undetermined`` after policy and the audit log). A measuring client in this
process gets one access token, then times sequential ``POST /v1/checks``: first alone,
then while a separate process floods the token endpoint from ``--threads`` threads with
wrong secrets for another client. Each mode is a fresh gateway:

- ``old``: the behaviour before the fix, as the baseline: the flooded client's secret is
  a scrypt row and the token endpoint has no throttle (``old_gateway`` below removes it;
  it exists for this comparison only, no setting turns the throttle off).
- ``scrypt_throttled``: a scrypt row (a client not yet migrated) behind the throttle.
- ``hmac_throttled``: what a deployment now runs: an HMAC-SM3 row behind the throttle.
- ``hmac_throttled_32_sources``: the same, each flood thread from its own loopback
  address (127.0.0.2-33): past the per-address bursts every request is refused by the
  client id's bucket, in the view (a registry look-up and one HMAC each) rather than
  before Flask.
- ``hmac_throttled_new_connections``: the same flood from one address, but a new
  connection for every request (``Connection: close``), which no connection hold can
  slow: what an attacker who noticed the holds would do.
- ``hmac_unthrottled``: the HMAC row alone, to separate the two remedies.
- ``control_404``: the same threads flooding a path that does not exist (a 404 from
  Flask, no database): what *any* closed-loop HTTP flood costs the checks on this
  machine, the floor no change to the token endpoint can go below.
- ``demo``: the finding's own setting: ``tongban demo`` (gunicorn gateway, five adapters
  on mutual TLS and the envelope, ``--demo-population`` citizens), checks of real
  subjects that reach the departments, and the same wrong-secret flood from one address.
- ``demo_attacker_apart``: the same, with the attacker on a CPU of its own and the demo
  and the measuring client on the others, in both phases: on a two-core machine the
  flooding client (32 Python threads of httpx) otherwise takes about a core from the
  gateway, which an attacker on another host does not. What remains is the cost of
  *answering* the flood.

Figures per mode: check latency p50/p99 alone and under the flood, their ratio, and the
flood's rate and status codes. ``within_2x`` compares the p50 under the flood with the p50
alone in the same mode; ``p50_added_ms`` is the difference, which is what a check that
takes longer for reasons of its own (departments answering) would see added.

    python -m bench.bench_token_flood            # prints JSON
    python -m bench.bench_token_flood --seconds 4 --modes old,hmac_throttled
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from bench.common import ROOT, machine, percentiles

MODES = (
    "old",
    "scrypt_throttled",
    "hmac_throttled",
    "hmac_throttled_32_sources",
    "hmac_throttled_new_connections",
    "hmac_unthrottled",
    "control_404",
    "demo",
    "demo_attacker_apart",
)
CHECK = {
    "claim": "birth_registered",
    "purpose": "school_enrollment",
}
FLOODED = "insurer-a"
MEASURED = "edu-bureau"


def old_gateway() -> Any:
    """``tongban.wsgi:gateway()`` with the token throttle taken out again: the baseline."""
    from tongban.gateway.oauth.flask import EXTENSION
    from tongban.wsgi import gateway

    app = gateway()
    app.extensions[EXTENSION] = replace(app.extensions[EXTENSION], throttle=None)
    return app


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _basic(client_id: str, secret: str) -> dict[str, str]:
    raw = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


def _subjects(n: int = 20_000) -> list[str]:
    """Distinct synthetic ID numbers, so the per-subject limit never trips."""
    import datetime as dt

    from tongban.primitives.idnumber import make_id

    day = dt.date(1980, 1, 1)
    return [make_id("110105", day + dt.timedelta(days=i // 900), i % 900) for i in range(n)]


SUBJECTS = _subjects()
_next = iter(range(10**9))


def _prepare(data: Path, mode: str) -> dict[str, str]:
    """Keys and clients in a fresh data directory; the flooded client's row is scrypt or
    HMAC-SM3 as the mode says (the measured client's too: it authenticates once)."""
    from tongban.config import Settings
    from tongban.gateway.oauth import ClientRegistry
    from tongban.keys import KeyRing
    from tongban.wiring import build_registry

    settings = Settings(data_dir=data)
    KeyRing(settings.keys_dir).ensure("gateway")
    peppered = build_registry(settings)
    registry = peppered if mode.startswith("hmac") else ClientRegistry(peppered.engine)
    secrets = {
        cid: str(registry.register_client(cid, cid, scopes=("checks",)).secret)
        for cid in (MEASURED, FLOODED)
    }
    peppered.engine.dispose()
    return secrets


def _serve(data: Path, port: int, mode: str) -> subprocess.Popen[bytes]:
    unthrottled = mode in ("old", "hmac_unthrottled")
    app = "bench.bench_token_flood:old_gateway()" if unthrottled else "tongban.wsgi:gateway()"
    env = {
        **os.environ,
        "TONGBAN_DATA_DIR": str(data),
        "TONGBAN_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "TONGBAN_CHECKPOINT_INTERVAL": "3600",
        "PYTHONPATH": str(ROOT),
    }
    argv = [sys.executable, "-m", "gunicorn", "--workers", "1", "--threads", "32",
            "--worker-class", "tongban.gunicorn_worker.DeadlineThreadWorker",
            "--bind", f"127.0.0.1:{port}", "--log-level", "warning", app]  # fmt: skip
    log = (data / "gunicorn.log").open("wb")
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code < 600:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError((data / "gunicorn.log").read_text()[-2000:])


def _checks(url: str, token: str, seconds: float, subjects: list[str]) -> list[float]:
    samples: list[float] = []
    with httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            body = {**CHECK, "subject": {"id_number": subjects[next(_next) % len(subjects)]}}
            started = time.perf_counter()
            resp = http.post(url + "/v1/checks", json=body)
            samples.append((time.perf_counter() - started) * 1e6)
            if resp.status_code != 200:
                raise RuntimeError(f"check answered {resp.status_code}: {resp.text[:300]}")
    return samples


def flood(
    url: str,
    secret_for: str,
    threads: int,
    seconds: float,
    path: str = "/oauth/token",
    spread: bool = False,
    reconnect: bool = False,
) -> dict[str, Any]:
    """The attacker (run in its own process): wrong secrets, as fast as answered."""
    statuses: Counter[int] = Counter()
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def run(n: int) -> None:
        local: Counter[int] = Counter()
        local_address = f"127.0.0.{2 + n}" if spread else None
        transport = httpx.HTTPTransport(local_address=local_address)
        with httpx.Client(timeout=30, transport=transport) as http:
            i = 0
            while time.monotonic() < stop:
                i += 1
                headers = _basic(secret_for, f"wrong-{n}-{i}")
                if reconnect:
                    headers["Connection"] = "close"
                resp = http.post(url + path, data={"grant_type": "client_credentials"},
                                 headers=headers)  # fmt: skip
                local[resp.status_code] += 1
        with lock:
            statuses.update(local)

    workers = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    total = sum(statuses.values())
    return {"requests": total, "per_second": round(total / seconds, 1),
            "statuses": {str(k): v for k, v in sorted(statuses.items())}}  # fmt: skip


def _cpus(apart: bool) -> tuple[set[int] | None, set[int] | None]:
    """(the gateway side's CPUs, the attacker's): the last CPU for the attacker, the rest
    for everything else, when ``apart`` and there are two or more; else no pinning."""
    cpus = sorted(os.sched_getaffinity(0))
    if not apart or len(cpus) < 2:
        return None, None
    return set(cpus[:-1]), {cpus[-1]}


def _pin(proc: subprocess.Popen[bytes], cpus: set[int] | None) -> subprocess.Popen[bytes]:
    """Pin a child just started (it has no children or threads yet) to ``cpus``."""
    if cpus is not None:
        os.sched_setaffinity(proc.pid, cpus)
    return proc


def _demo(
    data: Path, port: int, population: int, cpus: set[int] | None
) -> tuple[subprocess.Popen[bytes], list[str]]:
    """``tongban demo`` in ``data``, up; its subjects (the generator's truth file)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TONGBAN_")}
    argv = [sys.executable, "-m", "tongban", "demo", "--data-dir", str(data), "--port",
            str(port), "--population", str(population)]  # fmt: skip
    log = (data.parent / f"{data.name}.log").open("wb")
    proc = _pin(subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT),
                cpus)  # fmt: skip
    deadline = time.monotonic() + 600
    while not (data / "demo.json").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError((data.parent / f"{data.name}.log").read_text()[-2000:])
        time.sleep(0.5)
    with (data / "truth.jsonl").open() as fh:
        subjects = [json.loads(line)["id_number"] for line in fh if line.startswith('{"id_number"')]
    return proc, subjects


def _mode(mode: str, seconds: float, threads: int, population: int) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix=f"tongban-flood-{mode}-"))
    data = root / "data"
    data.mkdir()
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    gateway_cpus, attacker_cpus = _cpus(mode == "demo_attacker_apart")
    everywhere = os.sched_getaffinity(0)
    if gateway_cpus is not None:
        os.sched_setaffinity(0, gateway_cpus)  # the measuring client: with the gateway
    if mode.startswith("demo"):
        server, subjects = _demo(data, port, population, gateway_cpus)
        clients = json.loads((data / "demo.json").read_text())["clients"]
        secrets = {cid: clients[cid]["client_secret"] for cid in (MEASURED, FLOODED)}
    else:
        secrets = _prepare(data, mode)
        server = _serve(data, port, mode)
        subjects = SUBJECTS
    try:
        resp = httpx.post(url + "/oauth/token", data={"grant_type": "client_credentials"},
                          headers=_basic(MEASURED, secrets[MEASURED]), timeout=30)  # fmt: skip
        resp.raise_for_status()
        token = resp.json()["access_token"]
        _checks(url, token, 1.0, subjects)  # warm-up
        alone = percentiles(_checks(url, token, seconds, subjects))
        attacker = _pin(subprocess.Popen(
            [sys.executable, "-m", "bench.bench_token_flood", "--flood", url,
             "--threads", str(threads), "--seconds", str(seconds + 1.5),
             "--flood-path", "/v1/no-such-path" if mode == "control_404" else "/oauth/token",
             *(["--spread"] if mode.endswith("_sources") else []),
             *(["--reconnect"] if mode.endswith("_new_connections") else [])],
            cwd=ROOT, stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)},
        ), attacker_cpus)  # fmt: skip
        time.sleep(1.0)  # let the flood reach its rate (and the throttle its budget)
        flooded = percentiles(_checks(url, token, seconds, subjects))
        out, _ = attacker.communicate(timeout=120)
        flood_stats = json.loads(out)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        shutil.rmtree(root, ignore_errors=True)
        os.sched_setaffinity(0, everywhere)
    ratio = flooded["p50_us"] / alone["p50_us"]
    return {
        "checks_alone": alone,
        "checks_under_flood": flooded,
        "p50_ratio": round(ratio, 2),
        "p50_added_ms": round((flooded["p50_us"] - alone["p50_us"]) / 1000, 1),
        "p99_ratio": round(flooded["p99_us"] / alone["p99_us"], 2),
        "within_2x": ratio <= 2.0,
        "cpus": {
            "gateway": sorted(gateway_cpus or everywhere),
            "attacker": sorted(attacker_cpus or everywhere),
        },
        "flood": flood_stats,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--demo-population", type=int, default=2_000)
    parser.add_argument("--flood", help=argparse.SUPPRESS)  # the attacker process
    parser.add_argument("--flood-path", default="/oauth/token", help=argparse.SUPPRESS)
    parser.add_argument("--spread", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--reconnect", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.flood:
        stats = flood(args.flood, FLOODED, args.threads, args.seconds, args.flood_path,
                      args.spread, args.reconnect)  # fmt: skip
        print(json.dumps(stats))
        return
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"unknown mode(s): {sorted(unknown)}; expected {list(MODES)}")
    results = {
        "bench": "token_flood",
        "machine": machine(),
        "setup": {"gunicorn": "1 deadline worker x 32 threads, SQLite",
                  "flood_threads": args.threads, "seconds_per_phase": args.seconds},
        "modes": {mode: _mode(mode, args.seconds, args.threads, args.demo_population)
                  for mode in modes},
    }  # fmt: skip
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
