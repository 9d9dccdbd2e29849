"""Ledger backends benchmark: durable charges/s and p50/p99 latency, SQLite vs PostgreSQL, 1/4/16 processes.

Every charge is one committed, durable transaction: SQLite WAL with ``synchronous=FULL`` (``BEGIN IMMEDIATE``,
one writer at a time); PostgreSQL 15 with ``fsync=on`` and ``synchronous_commit=on`` (each charge locks its
scope's row with ``SELECT ... FOR UPDATE``). Two patterns:

* **one scope**: every process charges the same scope (the budget race: writers of one scope are serialised
  by both backends);
* **own scope**: each process charges its own scope (shards): PostgreSQL lets them commit in parallel (and
  group-commits their WAL flushes), SQLite still has one write lock for the whole file.

Processes are forked, open their own ``Ledger``, start together on a Barrier and each run a fixed number of
charges; latency is per ``Ledger.charge`` call (including lock waits), charges/s is the aggregate over the wall
time from the Barrier to the last finish. Both ledgers live in the system temp directory (same disk); the
PostgreSQL server is a fresh one started for the run on loopback (``tests/pg_cluster.py``), connected over TCP.

Run: ``nice -n 10 python benchmarks/bench_ledger_backends.py`` (about 2-3 min). Writes
``benchmarks/results/ledger_backends.md``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import multiprocessing as mp  # noqa: E402
import platform  # noqa: E402
import sqlite3  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from importlib.metadata import version  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
import pg_cluster  # noqa: E402

from accountant import Ledger, Mechanism, epsilon_for  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "ledger_backends.md"
MECH = Mechanism(k=18, q=0.01, sigma=0.2)
DELTA = 1e-7
CHARGES = {1: 800, 4: 250, 16: 80}  # per process
CTX = mp.get_context("fork")


def _worker(location: str, scope: str, count: int, barrier, results) -> None:
    book = Ledger(location, create=False, timeout=120)
    book.charge(scope)  # warm: connection, statement cache, per-query RDP vector
    barrier.wait()
    start = time.monotonic()
    latencies = []
    for _ in range(count):
        t0 = time.perf_counter()
        book.charge(scope)
        latencies.append(time.perf_counter() - t0)
    results.put((start, time.monotonic(), latencies))
    book.close()


def _run(location: str, processes: int, shared: bool) -> dict[str, float]:
    count = CHARGES[processes]
    scopes = ["shared"] if shared else [f"p{i}" for i in range(processes)]
    with Ledger(location) as book:
        for name in scopes:
            book.create_scope(
                name,
                epsilon=epsilon_for(MECH, queries=10**7, delta=DELTA),
                delta=DELTA,
                mechanism=MECH,
                records=1000,
            )
    barrier, results = CTX.Barrier(processes), CTX.Queue()
    procs = [
        CTX.Process(target=_worker, args=(location, scopes[0 if shared else i], count, barrier, results))
        for i in range(processes)
    ]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        if p.exitcode != 0:
            raise RuntimeError(f"a benchmark process failed (exit {p.exitcode})")
    start = min(o[0] for o in outcomes)
    end = max(o[1] for o in outcomes)
    ms = np.concatenate([np.asarray(o[2]) for o in outcomes]) * 1e3
    with Ledger(location, create=False) as book:
        charged = sum(book.status(name).queries_charged for name in scopes)
        if charged != len(ms) + processes or not book.verify().ok:
            raise RuntimeError(f"ledger holds {charged} charges, expected {len(ms) + processes}")
    return {
        "n": len(ms),
        "p50": float(np.percentile(ms, 50)),
        "p99": float(np.percentile(ms, 99)),
        "per_s": len(ms) / (end - start),
    }


def _pg_settings(url: str) -> str:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        names = ("server_version", "fsync", "synchronous_commit", "wal_sync_method", "full_page_writes")
        return ", ".join(f"{n}={conn.execute(f'SHOW {n}').fetchone()[0]}" for n in names)


def main() -> None:
    begun = time.monotonic()
    server = pg_cluster.start_server(max_connections=60)
    if server is None:
        raise SystemExit(pg_cluster.SKIP_REASON)
    settings = _pg_settings(server.url)
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="dprdm-bench-") as tmp:
            for shared in (True, False):
                for processes in (1, 4, 16):
                    if processes == 1 and not shared:
                        continue  # the same as one scope
                    pattern = "one scope" if shared else "own scope"
                    tag = f"{'one' if shared else 'own'}_{processes}"
                    sqlite = _run(str(Path(tmp) / f"{tag}.sqlite"), processes, shared)
                    postgres = _run(server.ledger_url(f"bench_{tag}"), processes, shared)
                    rows.append((pattern, processes, sqlite, postgres))
                    print(pattern, processes, sqlite, postgres, flush=True)
    finally:
        pg_cluster.stop_server(server)
    total = time.monotonic() - begun
    _write(rows, settings, total)


def _write(rows, settings: str, total: float) -> None:
    lines = [
        "# Ledger backends: SQLite vs PostgreSQL",
        "",
        f"`nice -n 10 python benchmarks/bench_ledger_backends.py` on {platform.machine()}, {os.cpu_count()} cores "
        f"(shared with other jobs; single-run timings vary), Python {platform.python_version()}, "
        f"SQLite {sqlite3.sqlite_version}, psycopg {version('psycopg')}, PostgreSQL ({settings}); both ledgers "
        f"on the same disk (/tmp); total {total:.0f} s.",
        "",
        "Every charge is durable: SQLite WAL `synchronous=FULL`; PostgreSQL `fsync=on`, `synchronous_commit=on`. "
        f"Mechanism k=18, q=0.01, sigma=0.2, 156 RDP orders. Charges per process: "
        f"{', '.join(f'{p} process(es): {c}' for p, c in CHARGES.items())}. Latency per `Ledger.charge` call "
        "(lock waits included); charges/s = aggregate over the wall time. `PG/SQLite` = ratio of charges/s "
        "(> 1: PostgreSQL faster) and of p50/p99 latency (< 1: PostgreSQL faster), measured in the same run.",
        "",
        "| scopes | processes | SQLite charges/s | SQLite p50 ms | SQLite p99 ms | PostgreSQL charges/s "
        "| PostgreSQL p50 ms | PostgreSQL p99 ms | PG/SQLite charges/s | PG/SQLite p50 | PG/SQLite p99 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for pattern, processes, s, p in rows:
        lines.append(
            f"| {pattern} | {processes} | {s['per_s']:,.0f} | {s['p50']:.2f} | {s['p99']:.2f} | {p['per_s']:,.0f} "
            f"| {p['p50']:.2f} | {p['p99']:.2f} | {p['per_s'] / s['per_s']:.2f}× | {p['p50'] / s['p50']:.2f}× "
            f"| {p['p99'] / s['p99']:.2f}× |"
        )
    lines += [
        "",
        "One scope: both backends serialise the writers of a scope (SQLite's file write lock, PostgreSQL's row "
        "lock), so aggregate throughput is one commit at a time. They queue differently: PostgreSQL grants the "
        "row lock first-come first-served, so a charge waits for the writers ahead of it (p50 ~ waiters x one "
        "commit) and p99 stays bounded; SQLite's busy handler polls with sleeps, so a lucky writer commits "
        "at once (low p50) while others starve for seconds (p99). Own scope: PostgreSQL commits charges of "
        "different scopes concurrently (row locks, WAL group commit), SQLite still serialises every writer of "
        "the file. A PostgreSQL charge is 6 loopback round trips (BEGIN, FOR UPDATE, read, insert, update, "
        "COMMIT); across hosts add the network RTT per round trip. On this shared 2-core VM the processes also "
        "compete with the server for CPU, so the 16-process rows measure contention more than either engine's "
        "capacity.",
        "",
    ]
    OUT.write_text("\n".join(lines))
    print(OUT.read_text())


if __name__ == "__main__":
    main()
