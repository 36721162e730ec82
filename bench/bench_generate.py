"""Generation and load of N citizens (default 1,000,000) into five SQLite stores.

Baseline, measured in the same run: the naive loader — one SQLAlchemy insert per record
with per-record scalar validation — on a 20,000-record sample, extrapolated to the same
number of records.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

from bench.common import DATA, machine
from tongban.adapters.departments import DEPARTMENTS
from tongban.adapters.store import DepartmentStore, sqlite_url
from tongban.adapters.synthetic.generate import generate
from tongban.primitives.idnumber import validate

SAMPLE = 20_000


def _naive_rows_per_second(source: Path, tmp: Path) -> float:
    """Copy medins rows one at a time through SQLAlchemy, validating each in Python."""
    with sqlite3.connect(source) as src:
        rows = src.execute(
            "SELECT id, person_id, scheme, start_date, end_date, district "
            f"FROM insured_periods LIMIT {SAMPLE}"
        ).fetchall()
    target = tmp / "naive.db"
    target.unlink(missing_ok=True)
    store = DepartmentStore(DEPARTMENTS["medins"], sqlite_url(str(target)))
    store.create_schema()
    table = DEPARTMENTS["medins"].table("insured_periods")
    started = time.perf_counter()
    with store.engine.begin() as conn:
        for rid, person, scheme, start, end, district in rows:
            validate(person)
            conn.execute(
                table.insert().values(
                    id=rid,
                    person_id=person,
                    scheme=scheme,
                    start_date=_date(start),
                    end_date=_date(end),
                    district=district,
                )
            )
    elapsed = time.perf_counter() - started
    store.dispose()
    return len(rows) / elapsed


def _date(value: str | None) -> Any:
    import datetime as dt

    return None if value is None else dt.date.fromisoformat(value)


def run(population: int = 1_000_000, seed: int = 7, keep: bool = True) -> dict[str, Any]:
    out = DATA / f"gen-{population}"
    if out.exists():
        shutil.rmtree(out)
    result = generate(out, population, seed, truth=out / "truth.jsonl")
    rows = sum(t["received"] for report in result.reports.values() for t in report["tables"])
    naive_rps = _naive_rows_per_second(out / "departments" / "medins.db", DATA)
    load_and_model = result.seconds["model"] + result.seconds["load"]
    figures = {
        "population": population,
        "records": rows,
        "generate_and_load_s": round(load_and_model, 2),
        "truth_file_s": round(result.seconds.get("truth", 0.0), 2),
        "total_s": round(result.seconds["total"], 2),
        "records_per_s": round(rows / result.seconds["load"]),
        "seconds_by_stage": {k: round(v, 2) for k, v in result.seconds.items()},
    }
    baseline = {
        "method": f"one SQLAlchemy insert per record + scalar validation, {SAMPLE:,}-record sample",
        "records_per_s": round(naive_rps),
        "extrapolated_load_s": round(rows / naive_rps, 1),
    }
    if not keep:
        shutil.rmtree(out)
    return {
        "name": "generate",
        "machine": machine(),
        "figures": figures,
        "baseline": baseline,
        "speedup": round(baseline["extrapolated_load_s"] / result.seconds["load"], 1),
        "target": "1,000,000 citizens generated and loaded in < 120 s",
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--population", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    print(json.dumps(run(args.population, args.seed), indent=2))


if __name__ == "__main__":
    main()
