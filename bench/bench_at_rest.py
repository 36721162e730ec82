"""The cost of encryption at rest: ingest throughput, predicate latency and rotation rate.

Same run, same population, same SQLite files layout: every department is loaded twice
through its adapter's ingest path, once into a plaintext store (the baseline) and once
into a store encrypted at rest (blind indexes + SM4-GCM sealed rows), then the predicates
of bench_predicates are timed on both, then the encrypted stores' data key and index key
are rotated.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

from bench.bench_predicates import CASES
from bench.common import DATA, machine, percentiles
from tongban.adapters.departments import DEPARTMENTS
from tongban.adapters.evaluate import Evaluator
from tongban.adapters.ingest import ingest
from tongban.adapters.rekey import rotate_data_key, rotate_index_key
from tongban.adapters.store import DepartmentStore, sqlite_url
from tongban.adapters.synthetic.population import REFERENCE_DATE, Population, build_population
from tongban.adapters.synthetic.records import DEPARTMENT_ORDER, department_batches
from tongban.primitives.wire import PredicateCall

SEED = 7


def _load(store: DepartmentStore, model: Population) -> tuple[int, float]:
    """Rows loaded and seconds, as ``generate`` loads one department."""
    store.drop_schema()
    store.create_schema(indexes=False)
    as_of = model.reference.astype(object)
    batches, _ = department_batches(model, store.department.name, SEED)
    rows = 0
    started = time.perf_counter()
    for table, cols in batches.items():
        rows += ingest(store, table, cols, as_of).received
    store.derive()
    store.create_indexes()
    seconds = time.perf_counter() - started
    store.set_meta("reference_date", as_of.isoformat())
    return rows, seconds


def _measure(ev: Evaluator, calls: list[PredicateCall]) -> list[float]:
    ev.evaluate(calls[0])
    samples = []
    for call in calls:
        started = time.perf_counter()
        ev.evaluate(call)
        samples.append((time.perf_counter() - started) * 1e6)
    return samples


def run(population: int = 200_000, samples: int = 3000) -> dict[str, Any]:
    out_dir = DATA / f"at-rest-{population}"
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    model = build_population(population, SEED, REFERENCE_DATE)
    stores: dict[str, dict[str, DepartmentStore]] = {"plain": {}, "encrypted": {}}
    ingest_figures: dict[str, Any] = {}
    for name in DEPARTMENT_ORDER:
        figures: dict[str, Any] = {}
        for mode in ("plain", "encrypted"):
            path = Path(out_dir / f"{name}-{mode}.db")
            kek = secrets.token_bytes(16) if mode == "encrypted" else None
            store = DepartmentStore(DEPARTMENTS[name], sqlite_url(str(path)), kek=kek)
            rows, seconds = _load(store, model)
            stores[mode][name] = store
            figures[mode] = {"rows": rows, "seconds": round(seconds, 2)}
            figures[mode]["rows_per_s"] = round(rows / seconds)
            figures[mode]["db_mib"] = round(os.path.getsize(path) / 2**20, 1)
        figures["slowdown"] = round(
            figures["encrypted"]["seconds"] / figures["plain"]["seconds"], 2
        )
        ingest_figures[name] = figures
    total = {
        mode: sum(f[mode]["seconds"] for f in ingest_figures.values())
        for mode in ("plain", "encrypted")
    }
    rng = random.Random(1)
    subjects = rng.sample(model.id_number.tolist(), samples)
    predicates: dict[str, Any] = {}
    for dept, predicate, params in CASES:
        calls = [PredicateCall(predicate, s, params) for s in subjects]
        row: dict[str, Any] = {}
        for mode in ("plain", "encrypted"):
            row[mode] = percentiles(_measure(Evaluator(stores[mode][dept]), calls))
        row["p50_overhead_us"] = round(row["encrypted"]["p50_us"] - row["plain"]["p50_us"], 1)
        predicates[f"{dept}.{predicate}"] = row
    rotation: dict[str, Any] = {}
    for name in DEPARTMENT_ORDER:
        store = stores["encrypted"][name]
        started = time.perf_counter()
        report = rotate_data_key(store)
        data_s = time.perf_counter() - started
        started = time.perf_counter()
        rotate_index_key(store)
        index_s = time.perf_counter() - started
        rows = ingest_figures[name]["encrypted"]["rows"]
        rotation[name] = {
            "rows": report.rows,
            "data_key_rows_per_s": round(report.rows / data_s),
            "index_key_rows_per_s": round(rows / index_s),
        }
    for by_mode in stores.values():
        for store in by_mode.values():
            store.dispose()
    shutil.rmtree(out_dir, ignore_errors=True)
    worst = max(v["p50_overhead_us"] for v in predicates.values())
    return {
        "name": "at_rest",
        "machine": machine(),
        "population": population,
        "figures": {
            "ingest": ingest_figures,
            "ingest_total_seconds": {k: round(v, 1) for k, v in total.items()},
            "predicates": predicates,
            "rotation": rotation,
        },
        "baseline": {"method": "same run, same population, plaintext stores"},
        "ingest_slowdown": round(total["encrypted"] / total["plain"], 2),
        "worst_p50_overhead_us": worst,
        "target": "predicates stay well under 1 ms; ingest within ~2x of plaintext",
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--population", type=int, default=200_000)
    parser.add_argument("--samples", type=int, default=3000)
    args = parser.parse_args()
    print(json.dumps(run(args.population, args.samples), indent=2))


if __name__ == "__main__":
    main()
