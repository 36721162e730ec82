"""``tongban generate``: build the population, load every department's store, write truth.

The model is built once in the parent; departments are loaded in parallel worker processes
forked from it (copy-on-write, so the model is not pickled). Each department goes through
its adapter's own ingest path, so validation runs exactly as it would on real feeds.
"""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing as mp
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from ..departments import DEPARTMENTS
from ..ingest import ValidationReport, ingest
from ..store import DepartmentStore, sqlite_url
from .population import REFERENCE_DATE, Population, build_population
from .records import DEPARTMENT_ORDER, Injected, department_batches
from .truth import truth_lines

__all__ = ["GenerationResult", "department_url", "generate"]

_SHARED: dict[str, Any] = {}


@dataclass
class GenerationResult:
    out_dir: Path
    population: int
    seed: int
    reference_date: dt.date
    urls: dict[str, str]
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)
    injected: dict[str, dict[str, int]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def manifest(self) -> dict[str, Any]:
        return {
            "population": self.population,
            "seed": self.seed,
            "reference_date": self.reference_date.isoformat(),
            "departments": {
                name: {
                    "url": _redact(self.urls[name]),
                    "injected_errors": self.injected.get(name, {}),
                    "validation": self.reports.get(name, {}),
                }
                for name in DEPARTMENT_ORDER
            },
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }


def _redact(url: str) -> str:
    return url.rsplit("@", maxsplit=1)[-1] if "@" in url else url


def department_url(out_dir: Path, name: str) -> str:
    return sqlite_url(str(out_dir / "departments" / f"{name}.db"))


def _load_department(name: str) -> tuple[str, dict[str, Any], Injected, float]:
    started = time.perf_counter()
    population: Population = _SHARED["population"]
    seed: int = _SHARED["seed"]
    url: str = _SHARED["urls"][name]
    events = _SHARED.get("events")
    batches, injected = department_batches(population, name, seed)
    dept = DEPARTMENTS[name]
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    store = DepartmentStore(dept, url)
    try:
        store.drop_schema()
        store.create_schema(indexes=False)
        report = ValidationReport(name)
        as_of = population.reference.astype(object)
        for table, cols in batches.items():
            report.tables.append(ingest(store, table, cols, as_of))
            if events is not None:
                events.put((name, table, len(next(iter(cols.values())))))
        store.derive()
        store.create_indexes()
        store.set_meta("reference_date", as_of.isoformat())
        store.set_meta("generator", json.dumps({"seed": seed, "population": population.size}))
    finally:
        store.dispose()
    return name, report.to_json(), injected, time.perf_counter() - started


def generate(
    out_dir: Path,
    population: int,
    seed: int,
    *,
    truth: Path | None = None,
    urls: Mapping[str, str] | None = None,
    workers: int | None = None,
    console: Console | None = None,
    reference: dt.date = REFERENCE_DATE,
) -> GenerationResult:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "departments").mkdir(exist_ok=True)
    all_urls = {
        name: (urls or {}).get(name) or department_url(out_dir, name) for name in DEPARTMENT_ORDER
    }
    result = GenerationResult(out_dir, population, seed, reference, all_urls)
    workers = workers or min(len(DEPARTMENT_ORDER), os.cpu_count() or 1)
    console = console or Console(stderr=True)
    started = time.perf_counter()

    progress = Progress(
        TextColumn("{task.description:<28}"),
        BarColumn(),
        TextColumn("{task.completed:>9,.0f}/{task.total:,.0f}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
    with progress:
        model_task = progress.add_task("population model", total=population)
        pop = build_population(population, seed, reference)
        progress.update(model_task, completed=population)
        result.seconds["model"] = time.perf_counter() - started

        _SHARED.update(population=pop, seed=seed, urls=all_urls)
        tasks = {
            name: progress.add_task(f"load {name}", total=_expected_rows(pop, name))
            for name in DEPARTMENT_ORDER
        }
        load_started = time.perf_counter()
        injected = _load_all(pop, result, progress, tasks, workers)
        for name in DEPARTMENT_ORDER:
            progress.update(tasks[name], completed=progress.tasks[tasks[name]].total)
            result.injected[name] = injected[name].counts()
        result.seconds["load"] = time.perf_counter() - load_started
        if truth is not None:
            truth_started = time.perf_counter()
            _write_truth(truth, pop, injected, progress)
            result.seconds["truth"] = time.perf_counter() - truth_started
    _SHARED.clear()
    result.seconds["total"] = time.perf_counter() - started
    (out_dir / "generation.json").write_text(
        json.dumps(result.manifest(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    return result


def _load_all(
    pop: Population,
    result: GenerationResult,
    progress: Progress,
    tasks: dict[str, TaskID],
    workers: int,
) -> dict[str, Injected]:
    injected: dict[str, Injected] = {}
    if workers <= 1:
        for name in DEPARTMENT_ORDER:
            _, report, inj, secs = _load_department(name)
            result.reports[name], injected[name] = report, inj
            result.seconds[f"load_{name}"] = secs
        return injected
    ctx = mp.get_context("fork")
    events = ctx.SimpleQueue()
    _SHARED["events"] = events
    stop = threading.Event()

    def pump() -> None:
        while not stop.is_set() or not events.empty():
            if events.empty():
                time.sleep(0.05)
                continue
            name, _table, rows = events.get()
            progress.advance(tasks[name], rows)

    pumper = threading.Thread(target=pump, daemon=True)
    pumper.start()
    try:
        with ctx.Pool(workers) as pool:
            for name, report, inj, secs in pool.imap_unordered(
                _load_department, _largest_first(pop)
            ):
                result.reports[name], injected[name] = report, inj
                result.seconds[f"load_{name}"] = secs
    finally:
        stop.set()
        pumper.join()
        _SHARED.pop("events", None)
    return injected


def _write_truth(
    path: Path, pop: Population, injected: dict[str, Injected], progress: Progress
) -> None:
    task = progress.add_task("truth", total=pop.size)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        buffer: list[str] = []
        for i, line in enumerate(truth_lines(pop, injected)):
            buffer.append(line)
            if len(buffer) >= 50_000:
                fh.writelines(buffer)
                buffer.clear()
                progress.update(task, completed=min(i + 1, pop.size))
        fh.writelines(buffer)
    tmp.replace(path)
    progress.update(task, completed=pop.size)


def _expected_rows(p: Population, name: str) -> int:
    return {
        "health": len(p.child),
        "police": int((~_isnat(p.registered_since)).sum()),
        "civil": len(p.husband) + len(p.allowance_no) + len(p.member_person),
        "hrss": 3 * int((~_isnat(p.employed_since)).sum())
        + len(p.maternity_mother)
        + len(p.childcare_applicant),
        "medins": p.size,
    }[name]


def _isnat(a: Any) -> Any:
    import numpy as np

    return np.isnat(a)


def _largest_first(p: Population) -> list[str]:
    return sorted(DEPARTMENT_ORDER, key=lambda n: -_expected_rows(p, n))
