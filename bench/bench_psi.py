"""ECDH-PSI on SM2: 100,000 x 100,000 IDs with 80% overlap, two departments.

Product path (``federation.psi``): try-and-increment hashing on SM3, blinding with
Tongsuo's C ``EC_POINT_mul`` on two threads, the ring through an in-process relay, the
coordinator's tag intersection, and the owners' mapping back to aligned rows. Both
departments run in this one process on this machine's cores (in a deployment each has its
own), so the wall time is the *sum* of both sides' work on 2 cores.

Work: each department hashes its 100,000 IDs and performs 200,000 scalar multiplications
(its own set and the other's), 400,000 in all.

Baseline in the same run: the same scalar multiplication in pure Python (``gmssl``'s
SM2 ``_kg``, the library ``primitives.gm`` keeps as its no-C fallback), timed on a
sample and **extrapolated** to 400,000 multiplications.

Anchor: SecretFlow reports about 73-110 s for ECDH-PSI on 10M x 10M rows on 32 cores.
Scaled linearly in rows and cores (x100 rows, x16 cores) our figure becomes
``seconds * 100 * 2 / 32``; that assumes perfect parallel scaling, which favours us.

Run: ``python -m bench.bench_psi [--rows N]`` (prints JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine
from tongban.federation.psi import PsiParty, Transcript, _blind, _curve, hash_to_curve, run_psi
from tongban.primitives.gm import SM2_N

OVERLAP = 0.8
SAMPLE = 20
SECRETFLOW_10M_32_CORES_S = (73.0, 110.0)


def _ids(rows: int) -> tuple[list[str], list[str]]:
    common = int(OVERLAP * rows)
    a = [f"A{i:012d}" for i in range(rows)]
    b = a[:common] + [f"B{i:012d}" for i in range(rows - common)]
    return a, b


def _naive_mult_seconds(sample: int) -> float:
    """Seconds per scalar multiplication in pure Python (gmssl), on ``sample`` points."""
    from gmssl import sm2

    crypt = sm2.CryptSM2(private_key="", public_key="")
    g = sm2.default_ecc_table["g"]
    k = secrets.randbelow(SM2_N - 1) + 1
    started = time.perf_counter()
    for _ in range(sample):
        crypt._kg(k, g)
    return (time.perf_counter() - started) / sample


def _c_mult_seconds(count: int, workers: int) -> float:
    curve = _curve()
    scalar = curve.scalar(secrets.randbelow(SM2_N - 1) + 1)
    points = b"".join(hash_to_curve(f"{i}".encode(), b"bench") for i in range(count))
    started = time.perf_counter()
    _blind(scalar, points, workers)
    return (time.perf_counter() - started) / count


def run(rows: int = 100_000) -> dict[str, Any]:
    """The benchmark as one JSON-ready dict (``bench/run.py`` calls this)."""
    a_ids, b_ids = _ids(rows)
    session = secrets.token_bytes(16)
    started = time.perf_counter()
    a = PsiParty("hrss", a_ids, session)
    b = PsiParty("health", b_ids, session)
    transcript = Transcript()
    run_psi([a, b], transcript=transcript)
    seconds = time.perf_counter() - started
    common = a.intersection_ids()
    assert common == b.intersection_ids(), "rows must align"
    assert len(common) == int(OVERLAP * rows)
    assert set(common) == set(a_ids) & set(b_ids)

    multiplications = 4 * rows
    c_one = _c_mult_seconds(2000, 1)
    c_two = _c_mult_seconds(2000, 2)
    naive = _naive_mult_seconds(SAMPLE)
    scaled = seconds * (10_000_000 / rows) * (2 / 32)
    result: dict[str, Any] = {
        "benchmark": "psi",
        "machine": machine(),
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "rows_per_party": rows,
        "overlap": OVERLAP,
        "intersection": len(common),
        "product": {
            "seconds": round(seconds, 2),
            "scalar_multiplications": multiplications,
            "us_per_multiplication_1_thread": round(c_one * 1e6, 1),
            "us_per_multiplication_2_threads": round(c_two * 1e6, 1),
            "bytes_relayed": sum(
                len(m.payload) if isinstance(m.payload, bytes) else m.payload.nbytes
                for m in transcript.messages
                if m.recipient != "gateway"
            ),
        },
        "baseline_pure_python": {
            "how": f"gmssl _kg timed on {SAMPLE} multiplications, extrapolated",
            "ms_per_multiplication": round(naive * 1e3, 2),
            "extrapolated_seconds": round(naive * multiplications, 1),
        },
        "speedup_vs_baseline": round(naive * multiplications / seconds, 1),
        "secretflow_anchor": {
            "reported_seconds_10M_x_10M_32_cores": list(SECRETFLOW_10M_32_CORES_S),
            "ours_scaled_linearly_to_10M_on_32_cores_s": round(scaled, 1),
            "scaling": "seconds * (10M / rows) * (2 cores / 32 cores); assumes perfect "
            "parallel scaling",
        },
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    print(json.dumps(run(args.rows), indent=2))


if __name__ == "__main__":
    main()
