"""In-process predicate latency over the 1,000,000-citizen stores.

Uses the data set bench_generate leaves in bench/.data (generating it if absent).
Baseline, same run: the same predicate on a copy of the store without its indexes.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

from bench.common import DATA, machine, percentiles
from tongban.adapters.departments import DEPARTMENTS
from tongban.adapters.evaluate import Evaluator
from tongban.adapters.store import DepartmentStore, sqlite_url
from tongban.adapters.synthetic.generate import generate
from tongban.primitives.wire import PredicateCall

CASES: list[tuple[str, str, dict[str, str]]] = [
    ("health", "birth_certificate_issued", {}),
    (
        "health",
        "children_at_least_youngest_under",
        {"min_children": "3", "youngest_under_years": "3"},
    ),
    ("police", "registered_in_household", {}),
    ("police", "household_in_district", {"district": "150602"}),
    ("police", "household_in_province", {"province": "15"}),
    ("civil", "currently_married", {}),
    ("civil", "low_income_household_member", {}),
    ("hrss", "maternity_insurance_active", {}),
    ("hrss", "childcare_subsidy_paid_within_year", {}),
    ("medins", "medical_insurance_active", {}),
]


def _subjects(truth: Path, n: int, seed: int) -> list[str]:
    ids: list[str] = []
    with truth.open(encoding="utf-8") as fh:
        for line in fh:
            if not line.startswith('{"id_number"'):
                break
            ids.append(line[15:33])
    return random.Random(seed).sample(ids, n)


def _measure(ev: Evaluator, calls: list[PredicateCall]) -> list[float]:
    ev.evaluate(calls[0])  # warm the statement cache and the connection pool
    samples = []
    for call in calls:
        started = time.perf_counter()
        ev.evaluate(call)
        samples.append((time.perf_counter() - started) * 1e6)
    return samples


def _unindexed_copy(src: Path, dst: Path) -> None:
    shutil.copy(src, dst)
    with sqlite3.connect(dst) as conn:
        names = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type='index' AND sql IS NOT NULL"
        )]  # fmt: skip
        for name in names:
            conn.execute(f'DROP INDEX "{name}"')


def run(
    population: int = 1_000_000, samples: int = 5000, baseline_samples: int = 30
) -> dict[str, Any]:
    data = DATA / f"gen-{population}"
    if not (data / "truth.jsonl").exists():
        generate(data, population, 7, truth=data / "truth.jsonl")
    subjects = _subjects(data / "truth.jsonl", samples, 1)
    figures: dict[str, Any] = {}
    baseline: dict[str, Any] = {}
    for dept, predicate, params in CASES:
        store = DepartmentStore(
            DEPARTMENTS[dept], sqlite_url(str(data / "departments" / f"{dept}.db"))
        )
        ev = Evaluator(store)
        calls = [PredicateCall(predicate, s, params) for s in subjects]
        figures[f"{dept}.{predicate}"] = percentiles(_measure(ev, calls))
        store.dispose()
    # Naive baseline: the two most common predicates without indexes (full scans).
    for dept, predicate, params in (CASES[2], CASES[7]):
        copy = DATA / f"unindexed-{dept}.db"
        _unindexed_copy(data / "departments" / f"{dept}.db", copy)
        store = DepartmentStore(DEPARTMENTS[dept], sqlite_url(str(copy)))
        ev = Evaluator(store)
        calls = [PredicateCall(predicate, s, params) for s in subjects[:baseline_samples]]
        baseline[f"{dept}.{predicate}"] = percentiles(_measure(ev, calls))
        store.dispose()
        copy.unlink()
    worst_p50 = max(v["p50_us"] for v in figures.values())
    return {
        "name": "predicates",
        "machine": machine(),
        "population": population,
        "figures": figures,
        "baseline": {"method": "same predicate, store without indexes", **baseline},
        "worst_p50_us": worst_p50,
        "target": "well under 1 ms per in-process evaluation at 1M citizens",
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--population", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=5000)
    args = parser.parse_args()
    print(json.dumps(run(args.population, args.samples), indent=2))


if __name__ == "__main__":
    main()
