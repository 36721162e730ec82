"""Predicates answered live from a department's own MariaDB, at 1,000,000 citizens.

    python -m bench.bench_live_source [--population 1000000] [--samples 2000]
                                      [--mariadb mysql+pymysql://root@127.0.0.1:3306/bench_legacy]

Uses the data set bench_generate leaves in bench/.data (generating it if absent), loads its
health store into a fresh MariaDB database in the legacy birth-certificate schema
(examples/legacy-health/load.py; the load is timed) and serves it through the department
file examples/legacy-health/health.toml: FileSource over LiveSource, one pooled connection,
every call in a read-only transaction with the file's quality checks asked first, as the
adapter answers. The database is dropped at the end, whatever happens.

Per predicate, on one sample of subjects from the truth file (half answering yes, half not,
found by asking the managed store), these paths are timed call by call, interleaved
subject by subject so that a change in the machine's load hits all of them alike:

- ``live``: FileSource.evaluate over the live MariaDB source (pooled connection), the
  department file as shipped;
- ``managed``: the managed Evaluator over the generated SQLite health store, the path
  the live source replaces (baseline, same subjects);
- ``live_fresh_connection``: the live file's query, the pool disposed after every call,
  so each call connects (and sets its session up) and disconnects: a naive adapter with
  no pool (baseline).

Each path has its own time budget (``--budget`` seconds of timed calls, at least
``MIN_SUBJECTS`` calls): a path that has spent it stops, the others go on through the
sample, so a slow path still finishes and does not shorten the fast paths' samples.

Also the throughput of a batch on one connection (``evaluate_many``, on at most a quarter
of the budget's worth of subjects), live and managed, and whether the live answers equal
the managed ones (the file promises they do).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import random
import re
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from bench.common import DATA, ROOT, machine, percentiles
from tongban.adapters.departments import DEPARTMENTS
from tongban.adapters.deptfile import DepartmentFile, load_department_file
from tongban.adapters.evaluate import Evaluator
from tongban.adapters.file_source import FileSource
from tongban.adapters.live import LiveSource
from tongban.adapters.store import DepartmentStore, sqlite_url
from tongban.adapters.synthetic.generate import generate
from tongban.primitives.wire import PredicateCall, Tri

EXAMPLE = ROOT / "examples" / "legacy-health"
MARIADB = "mysql+pymysql://root@127.0.0.1:3306/bench_legacy"
CASES: list[tuple[str, dict[str, str]]] = [
    ("birth_certificate_issued", {}),
    ("children_at_least_youngest_under", {"min_children": "3", "youngest_under_years": "3"}),
]
WARMUP = 50  # untimed calls per path before each predicate, on subjects outside the sample
MIN_SUBJECTS = 20  # timed calls of a path before its time budget may end its run
# The MariaDB/MySQL tweak health.toml's comments describe (tests/test_legacy_example.py
# runs it): the quality checks select the bare number, so each lookup uses IX_*SFZH.
_CHUNK = 5000  # subjects asked of the managed store at a time while drawing the sample
_DB_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def _loader() -> ModuleType:
    """examples/legacy-health/load.py (the directory is not a package)."""
    spec = importlib.util.spec_from_file_location("legacy_health_load", EXAMPLE / "load.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _ids(truth: Path) -> list[str]:
    ids: list[str] = []
    with truth.open(encoding="utf-8") as fh:
        for line in fh:
            if not line.startswith('{"id_number"'):
                break
            ids.append(line[15:33])
    return ids


def _sample(
    managed: Evaluator, predicate: str, params: dict[str, str], pool: list[str], n: int
) -> tuple[list[str], dict[str, int]]:
    """``n`` subjects from ``pool`` (in its random order): half that the managed store
    answers yes about, the rest not (no, or unknown at its natural rate), shuffled."""
    want_yes = n // 2
    yes: list[str] = []
    other: list[str] = []
    for start in range(0, len(pool), _CHUNK):
        chunk = pool[start : start + _CHUNK]
        for subject, answer in zip(
            chunk, managed.evaluate_many(predicate, params, chunk), strict=True
        ):
            if answer is Tri.TRUE:
                yes.append(subject)
            else:
                other.append(subject)
        if len(yes) >= want_yes and len(other) >= n - want_yes:
            break
    yes = yes[:want_yes]  # a small population may hold fewer: the rest are "not yes"
    chosen = yes + other[: n - len(yes)]
    random.Random(2).shuffle(chosen)
    return chosen, {"yes": len(yes), "not_yes": len(chosen) - len(yes)}


def _timed(evaluate: Callable[[PredicateCall], Tri], call: PredicateCall) -> tuple[float, Tri]:
    started = time.perf_counter()
    answer = evaluate(call)
    return (time.perf_counter() - started) * 1e6, answer


def department(url: str) -> DepartmentFile:
    """examples/legacy-health/health.toml over ``url``."""
    return load_department_file(EXAMPLE / "health.toml", env={"TONGBAN_LEGACY_HEALTH_URL": url})


def _server_url(url: str) -> tuple[str, str]:
    parsed = make_url(url)
    name = parsed.database or ""
    if not _DB_NAME.fullmatch(name):
        raise SystemExit(f"--mariadb: the URL must name a plain database, not {name!r}")
    return parsed.set(database="").render_as_string(hide_password=False), name


def _database(server: str, name: str, sql: str) -> None:
    engine = create_engine(server)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(sql.format(name=name))
    finally:
        engine.dispose()


def _measure(
    predicate: str,
    params: dict[str, str],
    subjects: list[str],
    warmup: list[str],
    paths: dict[str, Callable[[PredicateCall], Tri]],
    progress: Progress,
    budget_s: float,
) -> tuple[dict[str, list[float]], dict[str, list[Tri]]]:
    """Each subject through every path, the order rotating. A path stops once it has spent
    ``budget_s`` of timed calls (after at least ``MIN_SUBJECTS``), so a slow path still
    finishes; it has then answered a prefix of ``subjects``."""
    for evaluate in paths.values():  # at most a tenth of the budget per path
        started = time.perf_counter()
        for subject in warmup:
            evaluate(PredicateCall(predicate, subject, params))
            if time.perf_counter() - started > budget_s / 10:
                break
    times: dict[str, list[float]] = {p: [] for p in paths}
    answers: dict[str, list[Tri]] = {p: [] for p in paths}
    spent = dict.fromkeys(paths, 0.0)
    order = list(paths)
    task = progress.add_task(predicate, total=len(subjects))
    for i, subject in enumerate(subjects):
        active = {p for p in order if i < MIN_SUBJECTS or spent[p] <= budget_s * 1e6}
        if not active:
            break
        call = PredicateCall(predicate, subject, params)
        rotated = order[i % len(order) :] + order[: i % len(order)]
        for path in rotated:
            if path in active:
                took, answer = _timed(paths[path], call)
                spent[path] += took
                times[path].append(took)
                answers[path].append(answer)
        progress.advance(task)
    return times, answers


def _per_second(call: Callable[[list[str]], list[Tri]], subjects: list[str]) -> dict[str, float]:
    started = time.perf_counter()
    call(subjects)
    return {"n": len(subjects), "per_s": round(len(subjects) / (time.perf_counter() - started), 1)}


def _agree(got: list[Tri], managed: list[Tri]) -> str:
    """How many of a path's answers (a prefix of the sample) equal the managed ones."""
    return f"{sum(a == b for a, b in zip(got, managed[: len(got)], strict=True))}/{len(got)}"


def _many_subjects(subjects: list[str], times_us: list[float], budget_s: float) -> list[str]:
    """The first of the path's subjects that one batch gets through in about a quarter of
    the budget, at the path's mean time per call (at least 5)."""
    mean_s = sum(times_us) / len(times_us) / 1e6
    return subjects[: max(5, min(len(times_us), int(budget_s / 4 / max(mean_s, 1e-9))))]


def run(
    population: int = 1_000_000,
    samples: int = 2000,
    mariadb: str = MARIADB,
    budget_s: float = 180.0,
) -> dict[str, Any]:
    console = Console(stderr=True)
    load_average = [round(x, 2) for x in os.getloadavg()]
    data = DATA / f"gen-{population}"
    generated_seconds = None
    if not (data / "truth.jsonl").exists():
        started = time.perf_counter()
        generate(data, population, 7, truth=data / "truth.jsonl", console=console)
        generated_seconds = round(time.perf_counter() - started, 1)
    ids = _ids(data / "truth.jsonl")
    pool = random.Random(1).sample(ids, len(ids))
    warmup, pool = pool[-WARMUP:], pool[:-WARMUP]

    server, name = _server_url(mariadb)
    store = DepartmentStore(
        DEPARTMENTS["health"], sqlite_url(str(data / "departments" / "health.db"))
    )
    managed = Evaluator(store)
    sources: list[FileSource] = []
    figures: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    defects = 0
    try:
        _database(server, name, "DROP DATABASE IF EXISTS `{name}`")
        _database(server, name, "CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        summary = _loader().load(data, mariadb, seed=7, console=console)
        files = {"live": department(mariadb)}
        fastest = "live"
        lives = {
            path: FileSource(dept, LiveSource(dept), reference=managed.as_of)
            for path, dept in files.items()
        }
        fresh = FileSource(files[fastest], LiveSource(files[fastest]), reference=managed.as_of)
        sources += [*lives.values(), fresh]
        if not lives["live"].health()["reachable"]:
            raise SystemExit(f"{lives['live'].live.masked_source}: not reachable")

        def unpooled(call: PredicateCall) -> Tri:
            try:
                return fresh.evaluate(call)
            finally:
                fresh.live.engine.dispose()  # closes the connection: the next call connects

        paths: dict[str, Callable[[PredicateCall], Tri]] = {
            **{path: source.evaluate for path, source in lives.items()},
            "managed": managed.evaluate,
            "live_fresh_connection": unpooled,
        }
        progress = Progress(
            TextColumn("{task.description:<34}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        )
        with progress:
            for predicate, params in CASES:
                task = progress.add_task(f"sample {predicate}", total=None)
                subjects, _mix = _sample(managed, predicate, params, pool, samples)
                progress.remove_task(task)
                times, answers = _measure(
                    predicate, params, subjects, warmup, paths, progress, budget_s
                )
                # Every path answered a prefix of the sample (the managed one all of it
                # unless every path ran out of budget).
                n = len(times["managed"])
                throughput: dict[str, Any] = {}
                batches: dict[str, Callable[..., list[Tri]]] = {
                    **{path: source.evaluate_many for path, source in lives.items()},
                    "managed": managed.evaluate_many,
                }
                for path, evaluate_many in batches.items():
                    many = _many_subjects(subjects, times[path], budget_s)
                    throughput[f"{path}_evaluate_many"] = _per_second(
                        partial(evaluate_many, predicate, params), many
                    )
                for path in (*lives, "live_fresh_connection"):
                    throughput[f"{path}_evaluate"] = round(
                        len(times[path]) / (sum(times[path]) / 1e6), 1
                    )
                figures[predicate] = {
                    "params": params,
                    "subjects": {
                        "n": n,
                        "drawn": samples,
                        **{t.name.lower(): answers["managed"].count(t) for t in Tri},
                    },
                    **{path: percentiles(us) for path, us in times.items()},
                    "answers_equal_managed": {
                        path: _agree(got, answers["managed"])
                        for path, got in answers.items()
                        if path != "managed"
                    },
                    "throughput_per_s": throughput,
                }
        defects = sum(source.defects for source in (*lives.values(), fresh))
    finally:
        for source in sources:
            source.dispose()
        store.dispose()
        _database(server, name, "DROP DATABASE IF EXISTS `{name}`")
    return {
        "name": "live_source",
        "machine": {**machine(), "load_average_at_start": load_average},
        "population": population,
        "generated_seconds": generated_seconds,
        "source": {
            "url": summary["to"],
            "department_file": "examples/legacy-health/health.toml",
            "rows": summary["rows"],
            "certificates": summary["records"],
        },
        "load_seconds": summary["seconds"],
        "reference_date": managed.as_of().isoformat(),
        "warmup_calls_per_path": WARMUP,
        "budget_seconds_per_path_and_predicate": budget_s,
        "paths": {
            "live": "the department file as shipped, pooled connection",
        },
        "figures": figures,
        "defects": defects,
        "baseline": {
            "managed": "managed Evaluator over the generated SQLite health store, same subjects",
            "live_fresh_connection": ("the file's live query, a new connection per call (no pool)"),
        },
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--population", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--mariadb", default=MARIADB, help="a database the bench creates and drops")
    parser.add_argument(
        "--budget",
        type=float,
        default=180.0,
        help="seconds of timed calls per path and predicate at most",
    )
    args = parser.parse_args()
    print(json.dumps(run(args.population, args.samples, args.mariadb, args.budget), indent=2))


if __name__ == "__main__":
    main()
