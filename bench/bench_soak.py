"""Soak: the production topology held at its highest rate with p99 < 100 ms, then verified.

The topology is the one the fault tests run (tests/topology.py): gunicorn with several
gthread workers for the gateway, its gateway store, audit log and replay cache in one
PostgreSQL database, one gunicorn process per department adapter over SQLite. wrk drives
``POST /v1/checks`` from a separate process on loopback.

1. Ramp: wrk at 1, 2, 4, 8, ... connections for a few seconds each; the rate to hold is
   the highest connection count whose p99 stays under the target (wrk2 is not packaged
   here, so the load is a fixed connection count rather than a fixed request rate).
2. Hold it for ``--minutes``. Access tokens live 5 minutes, so the hold runs as segments
   of at most 4 minutes, each with a fresh token; wrk dumps its full latency histogram
   after each, and the histograms are merged, so p50/p99/p99.9 are over the whole hold.
3. Report checks/s, latency, errors (must be 0), the RSS of each gateway worker at the
   start and end of the hold, then verify the whole audit log and time the verification.

    python -m bench.bench_soak --minutes 10        # the benchmark (not a CI test)
    python -m bench.bench_soak --minutes 1         # a quick check that it works
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress

from bench.common import DATA, machine
from tests.topology import Topology

TARGET_P99_MS = 100.0
#: A ramp step lasts seconds; a ten-minute hold has a longer tail (measured: a level at
#: p99 89 ms in the ramp held at 104 ms), so the ramp keeps this margin under the target.
RAMP_MARGIN = 0.85
SEGMENT_SECONDS = 240  # below the 300 s access-token lifetime
RAMP_LEVELS = (1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64)

# Requests cycle through real subjects; done() prints one JSON line with the summary and
# the latency histogram (microseconds -> count), so segments merge exactly.
_WRK_LUA = """
local subjects = {%(subjects)s}
local token = "%(token)s"
local i = 0
request = function()
  i = i + 1
  local id = subjects[(i %% #subjects) + 1]
  local body = '{"subject":{"id_number":"' .. id .. '"},"claim":"birth_registered",' ..
               '"purpose":"school_enrollment"}'
  return wrk.format("POST", "/v1/checks", {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. token}, body)
end
done = function(summary, latency, requests)
  local hist = {}
  for k = 1, #latency do
    local value, count = latency(k)
    hist[#hist + 1] = string.format('"%%d":%%d', value, count)
  end
  local e = summary.errors
  io.write(string.format(
    'SOAK {"requests":%%d,"duration_us":%%d,"connect":%%d,"read":%%d,"write":%%d,' ..
    '"status":%%d,"timeout":%%d,"histogram":{%%s}}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    table.concat(hist, ",")))
end
"""


def _wrk(
    topo: Topology, script: Path, connections: int, seconds: int, timeout_s: int = 10
) -> dict[str, Any]:
    out = subprocess.run(
        ["wrk", "-t", str(min(connections, 2)), "-c", str(connections), "-d", f"{seconds}s",
         "--timeout", f"{timeout_s}s", "-s", str(script), topo.gateway_url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    line = next(x for x in out.splitlines() if x.startswith("SOAK "))
    doc: dict[str, Any] = json.loads(line[5:])
    doc["histogram"] = Counter({int(k): int(v) for k, v in doc["histogram"].items()})
    return doc


def _merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    hist: Counter[int] = Counter()
    for r in runs:
        hist.update(r["histogram"])
    total = sum(hist.values())
    ordered = sorted(hist.items())

    def pct(q: float) -> float:
        need = q * total
        seen = 0
        for value, count in ordered:
            seen += count
            if seen >= need:
                return round(value / 1000, 2)
        return round(ordered[-1][0] / 1000, 2) if ordered else 0.0

    seconds = sum(r["duration_us"] for r in runs) / 1e6
    errors = {k: sum(int(r[k]) for r in runs) for k in ("connect", "read", "write", "timeout")}
    errors["non_2xx"] = sum(int(r["status"]) for r in runs)
    requests = sum(int(r["requests"]) for r in runs)
    return {
        "requests": requests,
        "seconds": round(seconds, 1),
        "checks_per_s": round(requests / seconds, 1) if seconds else 0.0,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "p999_ms": pct(0.999),
        "max_ms": round(ordered[-1][0] / 1000, 2) if ordered else 0.0,
        "errors": errors,
        "error_total": sum(errors.values()),
    }


def _script(topo: Topology, subjects: list[str]) -> Path:
    script = topo.root / "soak.lua"
    quoted = ",".join(f'"{s}"' for s in subjects)
    script.write_text(_WRK_LUA % {"subjects": quoted, "token": topo.token("edu-bureau")})
    return script


def _rss_mb(pids: list[int]) -> dict[str, float]:
    out = {}
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                out[str(pid)] = round(int(line.split()[1]) / 1024, 1)
    return out


def run(
    minutes: float = 10.0,
    *,
    workers: int = 2,
    threads: int = 16,
    population: int = 20_000,
    ramp_seconds: int = 10,
    connections: int | None = None,
) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        raise SystemExit("bench_soak needs wrk (Debian package 'wrk') to drive the load")
    console = Console(stderr=True)
    root = DATA / "soak"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    topo = Topology(root, population=population, workers=workers, threads=threads,
                    adapter_timeout=2.0, checkpoint_interval=2.0, via_proxy=False)  # fmt: skip
    out: dict[str, Any] = {
        "name": "soak",
        "machine": machine(),
        "topology": {
            "gateway_workers": workers,
            "threads_per_worker": threads,
            "adapters": 5,
            "store": "PostgreSQL (gateway, audit, replay cache)",
            "population": population,
        },
        "target_p99_ms": TARGET_P99_MS,
    }
    try:
        console.print(f"starting the topology ({workers} gateway workers, 5 adapters)")
        topo.setup().start()
        subjects = topo.subjects(5000)

        # Warm up (connection pools, caches, first checkpoints), then ramp. A level that
        # misses the target once may be noise on a shared machine: stop after two misses
        # in a row and hold the highest level that met it.
        _wrk(topo, _script(topo, subjects), 4, min(ramp_seconds, 5))
        ramp = []
        if connections is None:
            connections, misses = 0, 0
            for level in RAMP_LEVELS:
                result = _merge([_wrk(topo, _script(topo, subjects), level, ramp_seconds)])
                result["connections"] = level
                ramp.append(result)
                console.print(
                    f"ramp {level:>3} connections: {result['checks_per_s']:>7} checks/s, "
                    f"p99 {result['p99_ms']} ms, errors {result['error_total']}"
                )
                if result["p99_ms"] < RAMP_MARGIN * TARGET_P99_MS and not result["error_total"]:
                    connections, misses = level, 0
                else:
                    misses += 1
                    if misses == 2:
                        break
            if connections == 0:
                out["target_met_in_ramp"] = False
                connections = 1
        out["ramp"] = ramp

        total = int(minutes * 60)
        segments = []
        rss_start = _rss_mb(topo.worker_pids())
        entries_before = len(topo.audit_entries())
        with Progress(console=console) as progress:
            task = progress.add_task(f"hold {connections} connections", total=total)
            done = 0
            while done < total:
                seconds = min(SEGMENT_SECONDS, total - done)
                segments.append(_wrk(topo, _script(topo, subjects), connections, seconds))
                done += seconds
                progress.update(task, completed=done)
        rss_end = _rss_mb(topo.worker_pids())
        hold = _merge(segments)
        hold["connections"] = connections
        hold["p99_target_met"] = hold["p99_ms"] < TARGET_P99_MS
        out["hold"] = hold
        # Other work on the machine shows here (a quiet 2-core box stays below ~2).
        out["load_average_1m_end"] = round(os.getloadavg()[0], 2)
        out["rss_mb"] = {
            "start": rss_start,
            "end": rss_end,
            "growth": {p: round(rss_end.get(p, 0.0) - v, 1) for p, v in rss_start.items()},
        }
        entries = len(topo.audit_entries())
        out["audit_entries_added"] = entries - entries_before

        console.print(f"verifying the audit log ({entries:,} entries)")
        started = time.perf_counter()
        report = topo.verify()
        out["audit_verify"] = {
            "ok": report["ok"],
            "entries": report["entries"],
            "checkpoints": report["checkpoints"],
            "cosignatures": report["cosignatures"],
            "seconds": round(time.perf_counter() - started, 2),
        }
    finally:
        topo.teardown()
    out["ok"] = bool(out.get("hold", {}).get("error_total") == 0 and
                     out.get("audit_verify", {}).get("ok"))  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn gateway workers")
    parser.add_argument("--threads", type=int, default=16, help="threads per gateway worker")
    parser.add_argument("--population", type=int, default=20_000)
    parser.add_argument("--ramp-seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, help="skip the ramp and hold this many")
    args = parser.parse_args()
    result = run(
        args.minutes,
        workers=args.workers,
        threads=args.threads,
        population=args.population,
        ramp_seconds=args.ramp_seconds,
        connections=args.connections,
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
