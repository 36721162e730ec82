"""The gateway under load, in the deployment topology, driven from another process.

gunicorn runs the gateway (1 worker x 32 threads: SQLite has one writer) and each
department adapter (1 worker
x 8 threads) as separate processes over SQLite stores and a durable SQLite audit log;
wrk drives POST /v1/checks from a separate process on loopback at 1, 16 and 64
connections. Then 100,000 subjects go through POST /v1/checks/batch, a py-spy profile is
taken of a gateway worker under load, and the baseline — the same pipeline with every
SM2 signature made and checked by pure-Python gmssl — is measured in the same run.
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
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from bench.common import DATA, ROOT, machine

POPULATION = 20_000
DEPARTMENTS = ("health", "police", "civil", "hrss", "medins")
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


def _wait(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=1, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


class Topology:
    def __init__(self, data: Path, backend: str) -> None:
        self.data = data
        self.backend = backend
        self.procs: list[subprocess.Popen[bytes]] = []
        self.gateway_url = ""

    def start(self) -> None:
        gunicorn = str(Path(sys.executable).parent / "gunicorn")
        gateway_port = _port()
        self.gateway_url = f"http://127.0.0.1:{gateway_port}"
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
            urls[dept] = f"http://127.0.0.1:{port}"
            self._spawn([gunicorn, "--log-level", "warning", "-b", f"127.0.0.1:{port}",
                         "-w", "1", "--threads", "8",
                         "-k", "gthread", f'tongban.wsgi:adapter("{dept}")'], env)  # fmt: skip
        for url in urls.values():
            _wait(url)
        env.update({f"TONGBAN_ADAPTER_URL_{d.upper()}": u for d, u in urls.items()})
        gateway_argv = [gunicorn, "--log-level", "warning", "-b", f"127.0.0.1:{gateway_port}",
                        "-w", os.environ.get("BENCH_GATEWAY_WORKERS", "1"),
                        "--threads", "32", "-k", "gthread", "--timeout", "120"]  # fmt: skip
        self._spawn([*gateway_argv, "tongban.wsgi:gateway()"], env)
        _wait(self.gateway_url)

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


def _token(url: str, client: dict[str, str]) -> str:
    basic = base64.b64encode(f"{client['client_id']}:{client['client_secret']}".encode()).decode()
    resp = httpx.post(url + "/oauth/token", data={"grant_type": "client_credentials"},
                      headers={"Authorization": f"Basic {basic}"}, trust_env=False)  # fmt: skip
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


def _batch(url: str, token: str, subjects: list[str], total: int) -> dict[str, Any]:
    started = time.perf_counter()
    done = 0
    results: Counter[str] = Counter()
    with httpx.Client(trust_env=False, timeout=300) as http:
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


def _prepare(data: Path) -> tuple[dict[str, Any], list[str]]:
    from tongban.demo import needs_generation, register_demo_clients
    from tongban.keys import KeyRing

    if needs_generation(data, POPULATION, 7):
        from tongban.adapters.synthetic.generate import generate

        generate(data, POPULATION, 7, truth=data / "truth.jsonl")
    keys = KeyRing(data / "keys")
    for party in ("gateway", "idp", *DEPARTMENTS):
        keys.ensure(party)
    clients = register_demo_clients(data)
    subjects = [json.loads(line)["id_number"] for line in (data / "truth.jsonl").open()
                if line.startswith('{"id_number"')][:5000]  # fmt: skip
    return clients, subjects


def run(seconds: int = 15, batch_total: int = 100_000) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        raise SystemExit("bench_gateway needs wrk (Debian package 'wrk') to drive the load")
    data = DATA / "gateway"
    clients, subjects = _prepare(data)
    out: dict[str, Any] = {"name": "gateway", "machine": machine(), "population": POPULATION}
    for backend, key in (("tongsuo", "figures"), ("gmssl", "baseline")):
        (data / "audit.db").unlink(missing_ok=True)
        topo = Topology(data, backend)
        topo.start()
        try:
            token = _token(topo.gateway_url, clients["edu-bureau"])
            script = DATA / "wrk-checks.lua"
            script.write_text(_WRK_LUA % (",".join(f'"{s}"' for s in subjects), token))
            runs = []
            levels = (1, 16, 64) if backend == "tongsuo" else (16,)
            for connections in levels:
                if connections == 16 and backend == "tongsuo":
                    with ThreadPoolExecutor(1) as pool:
                        workers = topo.gateway_workers()
                        profiled = (
                            pool.submit(_profile, workers[0], seconds - 3) if workers else None
                        )
                        runs.append(_wrk(topo.gateway_url, script, connections, seconds))
                        if profiled is not None:
                            out["profile_top_inclusive_pct"] = profiled.result()
                else:
                    runs.append(_wrk(topo.gateway_url, script, connections, seconds))
            section: dict[str, Any] = {"sm2_backend": backend, "checks": runs}
            if backend == "tongsuo":
                batch_token = _token(topo.gateway_url, clients["edu-bureau"])
                section["batch"] = _batch(topo.gateway_url, batch_token, subjects, batch_total)
            out[key] = section
        finally:
            topo.stop()
    out["goal"] = "1,000 checks/s with p99 < 50 ms at 16 clients; 100,000 batch checks < 30 s"
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--batch", type=int, default=100_000)
    args = parser.parse_args()
    print(json.dumps(run(args.seconds, args.batch), indent=2))


if __name__ == "__main__":
    main()
