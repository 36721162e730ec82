"""The audit log: durable append throughput, inclusion-proof latency and full verification.

(a) Durable appends: many concurrent appenders (threads, and several processes of threads)
    through ``AuditLog.append`` — group commit — on SQLite and PostgreSQL. Baseline, measured
    in the same run: the naive log, one transaction and commit per entry, single appender,
    doing the same work per entry (pseudonym, vault row, canonical JSON, SM3 leaf hash, tree).
(b) Inclusion-proof latency at 1,000,000 entries: the in-memory tree built from leaf hashes,
    and a real SQLite-backed ``AuditLog`` reopened on a million entries; that open checks
    every row against its entry (audit/rows.py), beside an open from the stored leaf hashes
    only (the baseline, ``startup_check=1``).
(c) Full verification of that million-entry store with ``verify_store`` (every entry
    re-canonicalised and re-hashed, the tree rebuilt, every checkpoint's signature and
    cosignatures checked).

``python bench/bench_audit.py [--entries N] [--no-postgres]`` prints the JSON.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing as mp
import os
import random
import secrets
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # also runnable as ``python bench/bench_audit.py``
    sys.path.insert(0, str(ROOT))

from sqlalchemy import Engine, create_engine, event, func, insert, select, text  # noqa: E402
from sqlalchemy.dialects.postgresql import insert as pg_insert  # noqa: E402
from sqlalchemy.dialects.sqlite import insert as sqlite_insert  # noqa: E402

from bench.common import DATA, machine, percentiles  # noqa: E402
from tongban.adapters.client import InProcessTransport  # noqa: E402
from tongban.adapters.witness import MemoryWitnessState, Witness  # noqa: E402
from tongban.audit import schema  # noqa: E402
from tongban.audit.log import AuditLog, PreparedEntry  # noqa: E402
from tongban.audit.merkle import MerkleTree, leaf_hash, verify_inclusion  # noqa: E402
from tongban.audit.vault import Pseudonymizer  # noqa: E402
from tongban.audit.verify import verify_store  # noqa: E402
from tongban.gateway.checkpoints import Checkpointer  # noqa: E402
from tongban.primitives.gm import SM2PrivateKey  # noqa: E402
from tongban.primitives.idnumber import make_id  # noqa: E402

ORIGIN = "bench.tongban.example/audit"
GATEWAY = "tongban-gateway"
WITNESSES = ("health", "police")
PG_ADMIN_URL = os.environ.get(
    "TONGBAN_BENCH_PG_URL",
    os.environ.get("TONGBAN_TEST_PG_URL", "postgresql+psycopg://127.0.0.1:5432/test"),
)
PSEUDONYM_KEY = bytes(range(32))
VAULT_KEY = bytes(range(16))
SUBJECTS = [
    make_id("110105", dt.date(1950, 1, 1) + dt.timedelta(days=37 * i), i % 1000)
    for i in range(1000)
]


def _pseudonymizer() -> Pseudonymizer:
    return Pseudonymizer(PSEUDONYM_KEY, VAULT_KEY)


def _entry(i: int) -> dict[str, Any]:
    """A check entry as the gateway writes one: who asked what, for which purpose, and the
    decision; the subject is added as a pseudonym by the log."""
    return {
        "kind": "check",
        "time": f"2025-03-01T08:{(i // 60) % 60:02d}:{i % 60:02d}.000Z",
        "requester": ("insurer-a", "bank-b", "employer-c")[i % 3],
        "claim": ("alive", "insured", "no_criminal_record")[i % 3],
        "purpose": "underwriting",
        "decision": {"allowed": i % 11 != 0, "reason": "consent"},
        "departments": ["civil", "police"],
        "request_id": f"req-{i:010d}",
    }


def _subject(i: int) -> str:
    return SUBJECTS[i % len(SUBJECTS)]


# --- stores ----------------------------------------------------------------------------


def _sqlite_url(name: str) -> str:
    folder = DATA / "audit"
    folder.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        (folder / f"{name}.db{suffix}").unlink(missing_ok=True)
    return f"sqlite:///{folder / name}.db"


@contextmanager
def _postgres() -> Iterator[str | None]:
    """A scratch PostgreSQL database for the run, or None when the server is not there."""
    from sqlalchemy.engine import make_url

    try:
        admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        name = f"tongban_bench_audit_{secrets.token_hex(4)}"
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # any failure means "no PostgreSQL here"
        print(f"bench_audit: PostgreSQL unavailable ({exc.__class__.__name__})", file=sys.stderr)
        yield None
        return
    try:
        yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _reset(url: str) -> str:
    if url.startswith("sqlite"):
        return _sqlite_url(Path(url.removeprefix("sqlite:///")).stem)
    engine = create_engine(url)
    schema.metadata.drop_all(engine)
    engine.dispose()
    return url


# --- (a) durable appends ---------------------------------------------------------------


def _naive(url: str, count: int, seconds: float) -> dict[str, Any]:
    """One transaction and commit per entry, one appender: what a log without group
    commit does. Same durability (SQLite WAL with synchronous=FULL) and same work per
    entry as the real log, written the straightforward way with SQLAlchemy Core."""
    url = _reset(url)
    engine: Engine = create_engine(url)
    if engine.dialect.name == "sqlite":

        def pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.close()

        event.listen(engine, "connect", pragmas)
        upsert: Any = sqlite_insert(schema.vault).on_conflict_do_nothing()
    else:
        upsert = pg_insert(schema.vault).on_conflict_do_nothing()
    schema.metadata.create_all(engine)
    pz = _pseudonymizer()
    tree = MerkleTree()
    e = schema.entries
    done = 0
    started = time.perf_counter()
    while done < count and time.perf_counter() - started < seconds:
        pseudonym = pz.pseudonym(_subject(done))
        prepared = PreparedEntry.make({**_entry(done), "subject": pseudonym}, None)
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(1)"))
            index = int(conn.execute(select(func.coalesce(func.max(e.c.idx) + 1, 0))).scalar_one())
            body = prepared.render(index)
            h = leaf_hash(body)
            conn.execute(
                insert(e),
                [{"idx": index, "leaf_hash": h, "entry": body.decode(), **prepared.fields}],
            )
            conn.execute(
                upsert,
                [{"pseudonym": pseudonym, "id_number": pz.seal(pseudonym, _subject(done))}],
            )
        tree.append(h)
        done += 1
    elapsed = time.perf_counter() - started
    engine.dispose()
    return {"entries": done, "seconds": round(elapsed, 2), "entries_per_s": round(done / elapsed)}


def _threads(log: AuditLog, threads: int, per_thread: int, offset: int = 0) -> float:
    """Start ``threads`` appenders together; return the seconds until the last is done."""
    barrier = threading.Barrier(threads + 1)
    errors: list[BaseException] = []

    def work(t: int) -> None:
        barrier.wait()
        base = offset + t * per_thread
        try:
            for i in range(base, base + per_thread):
                log.append(_entry(i), _subject(i))
        except BaseException as exc:  # reported below, never silently lost
            errors.append(exc)

    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    barrier.wait()
    started = time.perf_counter()
    for th in pool:
        th.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{len(errors)} appenders failed") from errors[0]
    return elapsed


def _group_commit(url: str, threads: int, total: int) -> dict[str, Any]:
    url = _reset(url)
    log = AuditLog(url, _pseudonymizer(), origin=ORIGIN, create=True).open()
    batches: list[int] = []
    write = log._write

    def counting(flat: list[PreparedEntry]) -> tuple[int, list[bytes]]:
        batches.append(len(flat))
        return write(flat)

    log._write = counting  # type: ignore[method-assign]
    per_thread = max(1, total // threads)
    try:
        cpu0 = time.process_time()
        elapsed = _threads(log, threads, per_thread)
        cpu = time.process_time() - cpu0
        assert log.size == threads * per_thread
    finally:
        log.close()
    count = threads * per_thread
    return {
        "appenders": f"1 process x {threads} threads",
        "entries": count,
        "seconds": round(elapsed, 2),
        "entries_per_s": round(count / elapsed),
        "commits": len(batches),
        "mean_batch": round(count / len(batches), 1),
        "process_cpu_s": round(cpu, 2),
        "cpu_us_per_entry": round(cpu / count * 1e6),
    }


def _child(url: str, threads: int, per_thread: int, offset: int, ready: Any, go: Any) -> None:
    log = AuditLog(url, _pseudonymizer(), origin=ORIGIN, create=True).open()
    try:
        ready.put(os.getpid())
        go.wait()
        _threads(log, threads, per_thread, offset)
    finally:
        log.close()


def _processes(url: str, processes: int, threads: int, total: int) -> dict[str, Any]:
    url = _reset(url)
    AuditLog(
        url, _pseudonymizer(), origin=ORIGIN, create=True
    ).open().close()  # create the tables once
    ctx = mp.get_context("spawn")
    ready, go = ctx.Queue(), ctx.Event()
    per_thread = max(1, total // (processes * threads))
    procs = [
        ctx.Process(
            target=_child,
            args=(url, threads, per_thread, p * threads * per_thread, ready, go),
        )
        for p in range(processes)
    ]
    for proc in procs:
        proc.start()
    for _ in procs:
        ready.get(timeout=60)
    started = time.perf_counter()
    go.set()
    for proc in procs:
        proc.join()
    elapsed = time.perf_counter() - started
    if any(proc.exitcode != 0 for proc in procs):
        raise RuntimeError("an appender process failed")
    count = processes * threads * per_thread
    check = AuditLog(url, _pseudonymizer(), origin=ORIGIN, create=True).open()  # rebuilds: no gaps
    try:
        assert check.size == count
    finally:
        check.close()
    return {
        "appenders": f"{processes} processes x {threads} threads",
        "entries": count,
        "seconds": round(elapsed, 2),
        "entries_per_s": round(count / elapsed),
    }


def _raw_writer(url: str, total: int, batch: int = 2000) -> dict[str, Any]:
    """The writer alone: pre-prepared entries handed over in large batches."""
    url = _reset(url)
    log = AuditLog(url, _pseudonymizer(), origin=ORIGIN, create=True).open()
    try:
        prepared = [log.prepare(_entry(i), _subject(i)) for i in range(batch)]
        started = time.perf_counter()
        for _ in range(total // batch):
            log.append_prepared(prepared)
        elapsed = time.perf_counter() - started
    finally:
        log.close()
    count = (total // batch) * batch
    return {"batch": batch, "entries_per_s": round(count / elapsed)}


def _prepare_cost(samples: int = 5_000) -> dict[str, float]:
    """Uncontended CPU per entry on the appender's side (canonical JSON, pseudonym, seal)."""
    log = AuditLog("sqlite://", _pseudonymizer(), origin=ORIGIN, create=True)
    started = time.perf_counter()
    for i in range(samples):
        log.prepare(_entry(i), _subject(i))
    with_subject = time.perf_counter() - started
    started = time.perf_counter()
    for i in range(samples):
        log.prepare(_entry(i))
    without = time.perf_counter() - started
    log.close()
    return {
        "prepare_us_with_subject": round(with_subject / samples * 1e6, 1),
        "prepare_us_without_subject": round(without / samples * 1e6, 1),
    }


def _appends(url: str, *, scale: float) -> dict[str, Any]:
    n = int(20_000 * scale)
    results: dict[str, Any] = {
        "baseline_one_commit_per_entry": _naive(url, n, seconds=4.0),
        "group_commit": [
            _group_commit(url, 64, n),
            _group_commit(url, 256, n),
            _processes(url, 2, 64, n),
            _processes(url, 4, 32, n),
        ],
        "raw_writer": _raw_writer(url, n),
    }
    best = max(r["entries_per_s"] for r in results["group_commit"])
    results["raw_writer"]["us_per_entry"] = round(1e6 / results["raw_writer"]["entries_per_s"], 1)
    results["uncontended_costs"] = _prepare_cost()
    results["best_entries_per_s"] = best
    results["speedup_vs_baseline"] = round(
        best / results["baseline_one_commit_per_entry"]["entries_per_s"], 1
    )
    return results


# --- (b) and (c): a million entries ----------------------------------------------------


def _build_million(
    url: str, entries: int, keys: Mapping[str, SM2PrivateKey], *, checkpoints: int = 4
) -> dict[str, Any]:
    """Bulk-load prepared entries in large batches through the real writer, with signed and
    cosigned checkpoints along the way."""
    log = AuditLog(url, _pseudonymizer(), origin=ORIGIN, create=True).open()
    witnesses = {
        w: Witness(
            w,
            keys[w],
            origin=ORIGIN,
            gateway_name=GATEWAY,
            gateway_key=keys["gateway"].public_key,
            state=MemoryWitnessState(),
        )
        for w in WITNESSES
    }
    checkpointer = Checkpointer(
        log,
        keys["gateway"],
        name=GATEWAY,
        witnesses={w: keys[w].public_key for w in WITNESSES},
        transport=InProcessTransport({}, witnesses),
    )
    batch = 20_000
    templates = [log.prepare(_entry(i), _subject(i)) for i in range(2_000)]
    every = max(batch, entries // checkpoints)
    due = every
    started = time.perf_counter()
    try:
        while log.size < entries:
            take = min(batch, entries - log.size)
            log.append_prepared([templates[(log.size + j) % len(templates)] for j in range(take)])
            if log.size >= due or log.size == entries:
                note = checkpointer.checkpoint()
                assert len(note.signatures) == 1 + len(WITNESSES)
                due += every
        elapsed = time.perf_counter() - started
    finally:
        log.close()
    return {
        "entries": entries,
        "seconds": round(elapsed, 1),
        "entries_per_s": round(entries / elapsed),
    }


def _latencies(fn: Callable[[int], object], indexes: list[int]) -> dict[str, float]:
    samples = []
    clock = time.perf_counter_ns
    for i in indexes:
        t0 = clock()
        fn(i)
        samples.append((clock() - t0) / 1000)
    return percentiles(samples)


def _proofs_in_memory(entries: int, samples: int) -> dict[str, Any]:
    leaves = os.urandom(32 * entries)
    started = time.perf_counter()
    tree = MerkleTree.from_leaf_hashes(leaves)
    built = time.perf_counter() - started
    rng = random.Random(7)
    indexes = [rng.randrange(entries) for _ in range(samples)]
    root = tree.root()
    proof = _latencies(lambda i: tree.inclusion_proof(i, entries), indexes)

    def prove_and_verify(i: int) -> None:
        assert verify_inclusion(i, entries, tree.leaf(i), tree.inclusion_proof(i, entries), root)

    older = [rng.randrange(1, entries) for _ in range(samples)]
    return {
        "build_from_leaf_hashes_s": round(built, 2),
        "inclusion_proof": proof,
        "inclusion_proof_and_verify": _latencies(prove_and_verify, indexes),
        "consistency_proof": _latencies(lambda m: tree.consistency_proof(m, entries), older),
        "root_at_random_size": _latencies(tree.root, older),
    }


def _proofs_from_store(url: str, entries: int, samples: int) -> dict[str, Any]:
    # Baseline, same run: the open before start-up row checks (stored leaf hashes only,
    # the tree against the latest checkpoint) is what startup_check=1 leaves.
    started = time.perf_counter()
    AuditLog(url, _pseudonymizer(), origin=ORIGIN, startup_check=1, create=True).open().close()
    stored_only = time.perf_counter() - started
    started = time.perf_counter()
    log = AuditLog(url, _pseudonymizer(), origin=ORIGIN, create=True).open()
    opened = time.perf_counter() - started
    try:
        assert log.size == entries
        rng = random.Random(11)
        indexes = [rng.randrange(entries) for _ in range(samples)]

        def as_the_endpoint(i: int) -> None:
            size = log.refresh()  # the endpoint checks the size against the store
            log.leaf(i)
            log.inclusion_proof(i, size)

        return {
            # Every row re-hashed from its entry and its columns checked (rows.py).
            "open_and_rebuild_s": round(opened, 2),
            "open_stored_hashes_only_s": round(stored_only, 2),
            "startup_check_us_per_entry": round((opened - stored_only) / entries * 1e6, 1),
            "inclusion_proof": _latencies(lambda i: log.inclusion_proof(i, entries), indexes),
            "with_refresh_as_the_endpoint": _latencies(as_the_endpoint, indexes[: samples // 4]),
        }
    finally:
        log.close()


def _verify(url: str, keys: Mapping[str, SM2PrivateKey]) -> dict[str, Any]:
    started = time.perf_counter()
    report = verify_store(
        url,
        gateway=(GATEWAY, keys["gateway"].public_key),
        witnesses={w: keys[w].public_key for w in WITNESSES},
    )
    elapsed = time.perf_counter() - started
    return {
        "ok": report.ok,
        "entries": report.entries,
        "checkpoints": report.checkpoints,
        "cosignatures": report.cosignatures,
        "seconds": round(elapsed, 2),
        "entries_per_s": round(report.entries / elapsed),
    }


# --- the run ---------------------------------------------------------------------------


def run(entries: int = 1_000_000, postgres: bool = True, keep: bool = False) -> dict[str, Any]:
    scale = max(0.1, min(1.0, entries / 1_000_000))  # smaller runs for quick checks
    appends: dict[str, Any] = {"sqlite": _appends(_sqlite_url("append"), scale=scale)}
    if postgres:
        with _postgres() as pg_url:
            appends["postgresql"] = (
                _appends(pg_url, scale=scale) if pg_url else {"skipped": "PostgreSQL unavailable"}
            )
    keys = {p: SM2PrivateKey.generate() for p in ("gateway", *WITNESSES)}
    store = _sqlite_url(f"million-{entries}")
    build = _build_million(store, entries, keys)
    samples = 20_000
    proofs = {
        "in_memory": _proofs_in_memory(entries, samples),
        "sqlite_store": _proofs_from_store(store, entries, samples),
    }
    verification = _verify(store, keys)
    if not keep:
        shutil.rmtree(DATA / "audit", ignore_errors=True)
    return {
        "name": "audit",
        "machine": machine(),
        "figures": {
            "append": appends,
            "bulk_load_for_1m": build,
            "proofs_at_size": entries,
            "proofs": proofs,
            "verify": verification,
        },
        "targets": {
            "append_sqlite_entries_per_s": 20_000,
            "append_postgresql_entries_per_s": 10_000,
            "inclusion_proof_p50_us_at_1m": 1_000,
            "verify_1m_s": 30,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep bench/.data/audit")
    args = parser.parse_args()
    result = run(args.entries, postgres=not args.no_postgres, keep=args.keep)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
