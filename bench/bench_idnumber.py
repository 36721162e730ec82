"""GB 11643 validation: vectorised NumPy validator vs the scalar one, same numbers."""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np

from bench.common import machine
from tongban.primitives.idnumber import make_ids_many, validate, validate_many


def run(n: int = 1_000_000, baseline_n: int = 100_000) -> dict[str, Any]:
    rng = np.random.default_rng(3)
    region = rng.choice(np.array([110105, 150622, 150403]), n)
    days = np.datetime64("1950-01-01") + rng.integers(0, 25000, n).astype("timedelta64[D]")
    ymd = np.array([int(d.replace("-", "")) for d in np.datetime_as_string(days).tolist()])
    ids = make_ids_many(region, ymd, rng.integers(0, 1000, n))
    started = time.perf_counter()
    make_ids_many(region, ymd, rng.integers(0, 1000, n))
    build_s = time.perf_counter() - started
    started = time.perf_counter()
    reasons = validate_many(ids)
    vec_s = time.perf_counter() - started
    sample = ids[:baseline_n].tolist()
    started = time.perf_counter()
    for number in sample:
        validate(number)
    scalar_s = time.perf_counter() - started
    assert not reasons.any()
    return {
        "name": "idnumber",
        "machine": machine(),
        "figures": {
            "validate_many_per_s": round(n / vec_s),
            "make_ids_many_per_s": round(n / build_s),
            "n": n,
        },
        "baseline": {"scalar_validate_per_s": round(baseline_n / scalar_s), "n": baseline_n},
        "speedup": round((n / vec_s) / (baseline_n / scalar_s), 1),
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
