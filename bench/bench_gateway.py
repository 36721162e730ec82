"""The gateway under load, in the deployment topology, driven from another process.

gunicorn runs the gateway (1 worker x 32 threads: SQLite has one writer) and each
department adapter (1 worker
x 8 threads) as separate processes over SQLite stores and a durable SQLite audit log;
wrk drives POST /v1/checks from a separate process on loopback at 1, 16 and 64
connections. Then 100,000 subjects go through POST /v1/checks/batch, a py-spy profile is
taken of a gateway worker under load, and the baseline — the same pipeline with every
SM2 signature made and checked by pure-Python gmssl — is measured in the same run.

``--live-health mariadb`` (issue 14: departments connect their own databases) adds a run
in the same topology with one department live: the health department's records are
written into a MariaDB database in the legacy birth-certificate schema
(examples/legacy-health/load.py, as bench_live_source does) and its adapter serves
examples/legacy-health/health.toml over it (FileSource over LiveSource, built by
``build_file_adapter`` as ``tongban adapter serve --department-file`` builds it). The other four
departments stay managed. The same checks (1, 16, 64 connections) and batches of the
``--live-batch`` sizes run against it; the all-managed run does the same batch sizes too
(compare the ``undetermined`` counts: a chunk of 500 subjects the live department does not
answer within the gateway's batch timeout, 5 x TONGBAN_ADAPTER_TIMEOUT + 1 s, is
undetermined). The database is dropped at the end. ``--population`` sets the generated
population (default 20,000).

The wire (issue 15, docs/transport.md and docs/envelope.md): every section runs as a
deployment does, with the requester side on HTTPS (gunicorn with the gateway's
certificate of the run's PKI; wrk speaks TLS), mutual TLS 1.3 between the gateway and each
adapter (gunicorn with the department's certificate and ``tongban.tls.gunicorn_ssl_context``
pinning the gateway's client certificate) and every request and answer sealed in the
SM2/SM4 envelope. The ``wire_off`` section is the same topology with both off, measured in
the same run: plain HTTP everywhere and the envelope switched off through
``plain_gateway``/``plain_adapter`` below, which exist for this comparison only (no setting,
option or environment variable turns the envelope off). ``wire_ratio_16`` is the checks/s
with TLS and the envelope on at 16 connections over the same figure with both off.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from bench.common import DATA, ROOT, machine
from tongban.adapters.builtin import builtin_names

if TYPE_CHECKING:
    from flask import Flask

POPULATION = 20_000
LIVE_CHOICES = ("mariadb",)
MARIADB = "mysql+pymysql://root@127.0.0.1:3306/bench_gateway_legacy"
LIVE_DEPARTMENT = "health"
DEPARTMENTS = builtin_names()
_WRK_LUA = """
local subjects = {%s}
local i = 0
request = function()
  i = i + 1
  local id = subjects[(i %% #subjects) + 1]
  local body = '{"subject":{"id_number":"' .. id .. '"},"claim":"birth_registered",' ..
               '"purpose":"school_enrollment"}'
  return wrk.format("POST", "/v1/checks", {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer %s"}, body)
end
"""


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str, verify: ssl.SSLContext | str | bool = True, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            resp = httpx.get(url + "/healthz", timeout=1, trust_env=False, verify=verify)
            if resp.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


def live_adapter(choice: str) -> Flask:
    """gunicorn factory for the live department: examples/legacy-health/health.toml over
    the database ``TONGBAN_LEGACY_HEALTH_URL`` names (``choice`` as ``--live-health``),
    built as ``tongban adapter serve --department-file`` builds it."""
    from bench.bench_live_source import department
    from tongban.adapters.service import create_app
    from tongban.config import Settings
    from tongban.wiring import build_file_adapter

    if choice not in LIVE_CHOICES:
        raise ValueError(f"live_adapter: {choice!r} is not one of {', '.join(LIVE_CHOICES)}")
    dept = department(os.environ["TONGBAN_LEGACY_HEALTH_URL"])
    core, witness = build_file_adapter(Settings.from_env(), dept)
    return create_app(core, witness)


def plain_adapter(department: str) -> Flask:
    """gunicorn factory for ``wire_off`` only: built-in ``department`` taking and giving
    unsealed messages (the same adapter as ``tongban.wsgi:adapter`` otherwise)."""
    from tongban.adapters.service import create_app
    from tongban.config import Settings
    from tongban.wiring import build_adapter

    core, witness = build_adapter(Settings.from_env(), department, envelope=False)
    return create_app(core, witness)


def plain_gateway() -> Flask:
    """gunicorn factory for ``wire_off`` only: the gateway sending unsealed requests (the
    same gateway as ``tongban.wsgi:gateway`` otherwise)."""
    from tongban.config import Settings
    from tongban.gateway.app import create_app
    from tongban.wiring import build_gateway

    return create_app(build_gateway(Settings.from_env(), envelope=False))


_ADAPTER_TLS_CONF = """\
from pathlib import Path

from tongban import pki
from tongban.tls import gunicorn_ssl_context

_files = pki.files(Path({pki!r}), {name!r})
certfile, keyfile = str(_files.cert), str(_files.key)
ssl_context = gunicorn_ssl_context(_files, pinned_client="gateway")
"""


class Topology:
    def __init__(
        self,
        data: Path,
        backend: str,
        live: str | None = None,
        live_url: str = "",
        *,
        wire: bool = True,
    ) -> None:
        self.data = data
        self.backend = backend
        self.live = live  # a --live-health choice: the health adapter serves the legacy DB
        self.live_url = live_url
        self.wire = wire  # TLS on both sides and the envelope; False: both off (wire_off)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.gateway_url = ""
        #: What a requester verifies the gateway with (the run's CA when TLS is on).
        self.verify: str | bool = True

    def start(self) -> None:
        from tongban import pki
        from tongban.tls import client_context

        gunicorn = str(Path(sys.executable).parent / "gunicorn")
        gateway_port = _port()
        certs = pki.pki_dir(self.data)
        pki.ensure(certs, ["gateway", *DEPARTMENTS])
        own = pki.files(certs, "gateway")
        scheme = "https" if self.wire else "http"
        self.gateway_url = f"{scheme}://127.0.0.1:{gateway_port}"
        self.verify = str(own.ca) if self.wire else True
        # The supervisor's view of an adapter: the gateway's client certificate.
        adapter_verify = client_context(own.cert, own.key, own.ca) if self.wire else True
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("TONGBAN_") or k.startswith("TONGBAN_RATE_")}  # fmt: skip
        env.update(
            TONGBAN_DATA_DIR=str(self.data),
            TONGBAN_PUBLIC_URL=self.gateway_url,
            TONGBAN_SM2_BACKEND=self.backend,
            TONGBAN_ADAPTER_TIMEOUT="5",
        )
        urls = {}
        for dept in DEPARTMENTS:
            port = _port()
            urls[dept] = f"{scheme}://127.0.0.1:{port}"
            app = f'tongban.wsgi:adapter("{dept}")'
            if not self.wire:
                app = f'bench.bench_gateway:plain_adapter("{dept}")'
            dept_env = env
            if self.live is not None and dept == LIVE_DEPARTMENT:
                app = f'bench.bench_gateway:live_adapter("{self.live}")'
                dept_env = {**env, "TONGBAN_LEGACY_HEALTH_URL": self.live_url}
            tls: list[str] = []
            if self.wire:
                conf = DATA / f"gunicorn-tls-{dept}.py"
                conf.write_text(_ADAPTER_TLS_CONF.format(pki=str(certs), name=dept))
                tls = ["-c", str(conf)]
            self._spawn([gunicorn, *tls, "--log-level", "warning", "-b", f"127.0.0.1:{port}",
                         "-w", "1", "--threads", "8",
                         "-k", "gthread", app], dept_env)  # fmt: skip
        for url in urls.values():
            _wait(url, adapter_verify)
        env.update({f"TONGBAN_ADAPTER_URL_{d.upper()}": u for d, u in urls.items()})
        gateway_argv = [gunicorn, "--log-level", "warning", "-b", f"127.0.0.1:{gateway_port}",
                        "-w", os.environ.get("BENCH_GATEWAY_WORKERS", "1"),
                        "--threads", "32", "-k", "gthread", "--timeout", "120"]  # fmt: skip
        if self.wire:
            gateway_argv += ["--certfile", str(own.cert), "--keyfile", str(own.key)]
        app = "tongban.wsgi:gateway()" if self.wire else "bench.bench_gateway:plain_gateway()"
        self._spawn([*gateway_argv, app], env)
        _wait(self.gateway_url, self.verify)

    def _spawn(self, argv: list[str], env: dict[str, str]) -> None:
        self.procs.append(subprocess.Popen(argv, env=env, cwd=ROOT, start_new_session=True))

    def gateway_workers(self) -> list[int]:
        parent = self.procs[-1].pid
        out = subprocess.run(
            ["pgrep", "-P", str(parent)], capture_output=True, text=True, check=False
        )
        return [int(p) for p in out.stdout.split()]

    def stop(self) -> None:
        for proc in self.procs:
            with_suppress(lambda p=proc: os.killpg(p.pid, signal.SIGTERM))
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with_suppress(lambda p=proc: os.killpg(p.pid, signal.SIGKILL))


def with_suppress(fn: Any) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        fn()


def _token(url: str, client: dict[str, str], verify: str | bool = True) -> str:
    basic = base64.b64encode(f"{client['client_id']}:{client['client_secret']}".encode()).decode()
    resp = httpx.post(url + "/oauth/token", data={"grant_type": "client_credentials"},
                      headers={"Authorization": f"Basic {basic}"}, trust_env=False,
                      verify=verify)  # fmt: skip
    resp.raise_for_status()
    return str(resp.json()["access_token"])


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def _wrk(url: str, script: Path, connections: int, seconds: int) -> dict[str, Any]:
    out = subprocess.run(
        ["wrk", "-t", str(min(connections, 2)), "-c", str(connections), "-d", f"{seconds}s",
         "--latency", "-s", str(script), url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = dict(re.findall(r"\s+(50|75|90|99)%\s+([\d.]+\w+)", out))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: (.*)", out)
    return {
        "connections": connections,
        "checks_per_s": round(rps, 1),
        "p50_ms": round(_ms(lat["50"]), 2),
        "p99_ms": round(_ms(lat["99"]), 2),
        "non_2xx": int(errors.group(1)) if errors else 0,
        "socket_errors": sock.group(1) if sock else None,
    }


def _batch(
    url: str, token: str, subjects: list[str], total: int, verify: str | bool = True
) -> dict[str, Any]:
    started = time.perf_counter()
    done = 0
    results: Counter[str] = Counter()
    with httpx.Client(trust_env=False, timeout=300, verify=verify) as http:
        while done < total:
            chunk = [subjects[(done + i) % len(subjects)] for i in range(min(10_000, total - done))]
            resp = http.post(url + "/v1/checks/batch", json={
                "claim": "birth_registered", "purpose": "school_enrollment",
                "subjects": [{"id_number": s} for s in chunk]},
                headers={"Authorization": f"Bearer {token}"})  # fmt: skip
            resp.raise_for_status()
            results.update(r["result"] for r in resp.json()["results"])
            done += len(chunk)
    seconds = time.perf_counter() - started
    return {"subjects": total, "seconds": round(seconds, 2),
            "checks_per_s": round(total / seconds, 1), "results": dict(results)}  # fmt: skip


def _profile(pid: int, seconds: int) -> list[tuple[str, float]]:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return []
    raw = DATA / "gateway-profile.txt"
    subprocess.run([spy, "record", "--pid", str(pid), "--duration", str(seconds), "--gil",
                    "-f", "raw", "-o", str(raw)], capture_output=True, check=False)  # fmt: skip
    if not raw.exists():
        return []
    own: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        count = int(n)
        total += count
        for frame in {f.split(" (")[0] for f in frames}:
            own[frame] += count
    return [(f, round(100 * c / total, 1)) for f, c in own.most_common(25)]


def _prepare(data: Path, population: int = POPULATION) -> tuple[dict[str, Any], list[str]]:
    from tongban.demo import needs_generation, register_demo_clients
    from tongban.keys import KeyRing

    if needs_generation(data, population, 7):
        from tongban.adapters.synthetic.generate import generate

        generate(data, population, 7, truth=data / "truth.jsonl")
    keys = KeyRing(data / "keys")
    for party in ("gateway", "idp", *DEPARTMENTS):
        keys.ensure(party)
    clients = register_demo_clients(data)
    subjects = [json.loads(line)["id_number"] for line in (data / "truth.jsonl").open()
                if line.startswith('{"id_number"')][:5000]  # fmt: skip
    return clients, subjects


def _load_live(data: Path, url: str) -> dict[str, Any]:
    """The health store of ``data`` into a fresh database at ``url``, legacy-shaped."""
    from bench.bench_live_source import _database, _loader, _server_url

    server, name = _server_url(url)
    _database(server, name, "DROP DATABASE IF EXISTS `{name}`")
    _database(server, name, "CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    summary: dict[str, Any] = _loader().load(data, url, seed=7)
    return {
        "url": summary["to"],
        "department_file": "examples/legacy-health/health.toml",
        "rows": summary["rows"],
        "certificates": summary["records"],
        "load_seconds": summary["seconds"],
    }


def _drop_live(url: str) -> None:
    from bench.bench_live_source import _database, _server_url

    server, name = _server_url(url)
    _database(server, name, "DROP DATABASE IF EXISTS `{name}`")


def run(
    seconds: int = 15,
    batch_total: int = 100_000,
    *,
    population: int = POPULATION,
    live: str | None = None,
    live_batch: tuple[int, ...] = (2_000, 10_000),
    mariadb: str = MARIADB,
) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        raise SystemExit("bench_gateway needs wrk (Debian package 'wrk') to drive the load")
    if live is not None and live not in LIVE_CHOICES:
        raise SystemExit(f"--live-health: one of {', '.join(LIVE_CHOICES)}")
    data = DATA / ("gateway" if population == POPULATION else f"gateway-{population}")
    clients, subjects = _prepare(data, population)
    load_average = [round(x, 2) for x in os.getloadavg()]
    out: dict[str, Any] = {"name": "gateway", "machine": machine(), "population": population}
    # (SM2 backend, section, live department, wire on): all managed with TLS and the
    # envelope, the same with both off, then one live, then gmssl.
    plan: list[tuple[str, str, str | None, bool]] = [
        ("tongsuo", "figures", None, True),
        ("tongsuo", "wire_off", None, False),
    ]
    if live is not None:
        out["machine"]["load_average_at_start"] = load_average
        out["live_source"] = _load_live(data, mariadb)
        plan.append(("tongsuo", "live_health", live, True))
    plan.append(("gmssl", "baseline", None, True))
    try:
        for backend, key, live_run, wire in plan:
            out[key] = _section(
                data, clients, subjects, out, backend, live_run, mariadb,
                seconds, batch_total, live_batch if live is not None else (), wire=wire,
            )  # fmt: skip
    finally:
        if live is not None:
            _drop_live(mariadb)
    on = next(r for r in out["figures"]["checks"] if r["connections"] == 16)
    off = next(r for r in out["wire_off"]["checks"] if r["connections"] == 16)
    out["wire_ratio_16"] = round(on["checks_per_s"] / off["checks_per_s"], 3)
    if live is not None:
        out["live_health"]["department"] = (
            f"{LIVE_DEPARTMENT} served live from MariaDB through "
            f"examples/legacy-health/health.toml ({live}); police, civil, hrss, medins managed"
        )
    out["goal"] = "1,000 checks/s with p99 < 50 ms at 16 clients; 100,000 batch checks < 30 s"
    return out


def _section(
    data: Path,
    clients: dict[str, Any],
    subjects: list[str],
    out: dict[str, Any],
    backend: str,
    live: str | None,
    live_url: str,
    seconds: int,
    batch_total: int,
    live_batch: tuple[int, ...],
    *,
    wire: bool = True,
) -> dict[str, Any]:
    """One topology started, measured and stopped: checks at 1/16/64 connections (16 with
    gmssl) and batches: ``batch_total`` subjects (not in the live run), then one batch
    of each ``live_batch`` size. ``wire``: TLS on both sides and the envelope (else both
    off)."""
    (data / "audit.db").unlink(missing_ok=True)
    topo = Topology(data, backend, live, live_url, wire=wire)
    topo.start()
    try:
        token = _token(topo.gateway_url, clients["edu-bureau"], topo.verify)
        script = DATA / "wrk-checks.lua"
        script.write_text(_WRK_LUA % (",".join(f'"{s}"' for s in subjects), token))
        runs = []
        levels = (1, 16, 64) if backend == "tongsuo" else (16,)
        profile = backend == "tongsuo" and live is None and wire
        for connections in levels:
            if connections == 16 and profile:
                with ThreadPoolExecutor(1) as pool:
                    workers = topo.gateway_workers()
                    profiled = pool.submit(_profile, workers[0], seconds - 3) if workers else None
                    runs.append(_wrk(topo.gateway_url, script, connections, seconds))
                    if profiled is not None:
                        out["profile_top_inclusive_pct"] = profiled.result()
            else:
                runs.append(_wrk(topo.gateway_url, script, connections, seconds))
        section: dict[str, Any] = {
            "sm2_backend": backend,
            "wire": "mutual TLS 1.3 + SM2/SM4 envelope, HTTPS to the requester"
            if wire
            else "plain HTTP, no envelope (benchmark comparison only)",
            "checks": runs,
        }
        if backend == "tongsuo":
            batch_token = _token(topo.gateway_url, clients["edu-bureau"], topo.verify)
            if live is None:
                section["batch"] = _batch(
                    topo.gateway_url, batch_token, subjects, batch_total, topo.verify
                )
            if live_batch:
                section["batches_live_sizes"] = [
                    _batch(topo.gateway_url, batch_token, subjects, n, topo.verify)
                    for n in live_batch
                ]
        return section
    finally:
        topo.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--batch", type=int, default=100_000)
    parser.add_argument("--population", type=int, default=POPULATION)
    parser.add_argument(
        "--live-health",
        choices=LIVE_CHOICES,
        help="also run with the health department served live from a legacy MariaDB "
        "through examples/legacy-health/health.toml (mariadb: with its MariaDB tweak)",
    )
    parser.add_argument(
        "--live-batch",
        type=lambda text: tuple(int(n) for n in text.split(",")),
        default=(2_000, 10_000),
        help="with --live-health: batch sizes, comma-separated (default 2000,10000)",
    )
    parser.add_argument(
        "--mariadb", default=MARIADB, help="with --live-health: a database created and dropped"
    )
    args = parser.parse_args()
    result = run(
        args.seconds,
        args.batch,
        population=args.population,
        live=args.live_health,
        live_batch=args.live_batch,
        mariadb=args.mariadb,
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
