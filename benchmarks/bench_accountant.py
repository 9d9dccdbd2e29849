"""Accountant benchmark: cost of one ledger charge against composing with dp-accounting once per query.

1. **Ledger charge**, 1 process: ``Ledger.charge`` on one scope (the DP-RDM mechanism k=18, q=0.01, sigma=0.2,
   156 RDP orders), each a ``BEGIN IMMEDIATE`` transaction with WAL + ``synchronous=FULL`` (fsync per commit):
   read the running RDP vector, check it against n * c, ``compute_epsilon``, refuse-or-commit. Also a 2-scope
   (2-shard) charge and ``Ledger.status`` (epsilon spent + exact queries remaining).
2. **Ledger charge, 4 processes** racing on the same scope (start on a Barrier): per-charge latency including
   lock waits, and aggregate charges/s.
3. **Baseline, same run**: an in-memory ``RdpAccountant`` that calls ``compose(event)`` once per query and then
   ``get_epsilon`` (no persistence at all), i.e. what a ledger costs without the cached per-event RDP vector.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_accountant.py`` (about 1 min). Writes
``benchmarks/results/accountant.md``. The ledger lives in a temporary directory on the system temp disk.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import multiprocessing as mp  # noqa: E402
import platform  # noqa: E402
import sqlite3  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from importlib.metadata import version  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from dp_accounting import rdp  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from accountant import ADJACENCY, DEFAULT_ORDERS, Ledger, Mechanism, epsilon_for  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "accountant.md"
MECH = Mechanism(k=18, q=0.01, sigma=0.2)
DELTA = 1e-7
SINGLE = 2000  # charges from one process
PER_PROCESS = 500  # charges from each of 4 processes
BASELINE = 200  # queries composed one by one (about 30 ms each)
STATUS = 200


def _stats(latencies_s: list[float], wall_s: float) -> dict[str, float]:
    ms = np.asarray(latencies_s) * 1e3
    return {
        "n": len(ms),
        "p50": float(np.percentile(ms, 50)),
        "p99": float(np.percentile(ms, 99)),
        "per_s": len(ms) / wall_s,
    }


def _timed(call, repeats: int) -> dict[str, float]:
    latencies = []
    start = time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - t0)
    return _stats(latencies, time.perf_counter() - start)


def _new_ledger(directory: Path, name: str, scopes: tuple[str, ...]) -> Path:
    path = directory / name
    budget = epsilon_for(MECH, queries=10**7, delta=DELTA)  # never exhausted during the run
    with Ledger(path) as book:
        for scope in scopes:
            book.create_scope(scope, epsilon=budget, delta=DELTA, mechanism=MECH)
    return path


def _racer(path: str, barrier, results) -> None:
    book = Ledger(path, create=False)
    book.charge("s")  # warm: connection, caches
    latencies = []
    barrier.wait()
    for _ in range(PER_PROCESS):
        t0 = time.perf_counter()
        book.charge("s", caller="bench")
        latencies.append(time.perf_counter() - t0)
    results.put((latencies, time.perf_counter()))
    book.close()


def bench_four_processes(directory: Path) -> dict[str, float]:
    path = _new_ledger(directory, "race.sqlite", ("s",))
    ctx = mp.get_context("fork")
    barrier, results = ctx.Barrier(5), ctx.Queue()
    procs = [ctx.Process(target=_racer, args=(str(path), barrier, results)) for _ in range(4)]
    for p in procs:
        p.start()
    barrier.wait()
    start = time.perf_counter()
    outs = [results.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    wall = max(end for _, end in outs) - start
    stats = _stats([x for lat, _ in outs for x in lat], wall)
    with Ledger(path, create=False, read_only=True) as book:
        stats["charged"] = book.status("s").queries_charged - 4  # minus the warm-up charges
    return stats


def bench_baseline() -> dict[str, float]:
    accountant = rdp.RdpAccountant(list(DEFAULT_ORDERS), ADJACENCY)
    event = MECH.dp_event()

    def one_query() -> None:
        accountant.compose(event)
        accountant.get_epsilon(DELTA)

    return _timed(one_query, BASELINE)


def bench_components() -> dict[str, float]:
    vector = np.asarray(rdp.RdpAccountant(list(DEFAULT_ORDERS), ADJACENCY).compose(MECH.dp_event()).rdp)
    eps = _timed(lambda: rdp.compute_epsilon(DEFAULT_ORDERS, 1000 * vector, DELTA), 500)["p50"]
    with tempfile.TemporaryDirectory() as tmp:
        conn = sqlite3.connect(str(Path(tmp) / "c.sqlite"), isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE t (x)")

        def commit() -> None:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t VALUES (1)")
            conn.execute("COMMIT")

        sql = _timed(commit, 500)["p50"]
        conn.close()
    return {"compute_epsilon": eps, "commit": sql}


def _machine() -> str:
    try:
        fs = subprocess.run(["df", "-T", tempfile.gettempdir()], capture_output=True, text=True, check=False)
        fstype = fs.stdout.splitlines()[1].split()[1]
    except (OSError, IndexError):
        fstype = "unknown"
    return (
        f"{platform.machine()}, {os.cpu_count()} cores (shared with other jobs; single-run timings vary), "
        f"Python {platform.python_version()}, dp-accounting {version('dp-accounting')}, "
        f"SQLite {sqlite3.sqlite_version}, ledger on {fstype} ({tempfile.gettempdir()})"
    )


def main() -> None:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        one = Ledger(_new_ledger(directory, "one.sqlite", ("s", "t")), create=False)
        one.charge("s")  # warm-up (per-event RDP vector is cached after the first use)
        single = _timed(lambda: one.charge("s", caller="bench"), SINGLE)
        double = _timed(lambda: one.charge(["s", "t"], caller="bench"), SINGLE // 4)
        status = _timed(lambda: one.status("s"), STATUS)
        # Same code path with the fsync switched off on this connection only (bench-only, private handle):
        # separates the CPU cost of a charge from the disk's fsync latency.
        one._store.conn().execute("PRAGMA synchronous=OFF")
        no_fsync = _timed(lambda: one.charge("s", caller="bench"), SINGLE)
        one.close()
        four = bench_four_processes(directory)
    baseline = bench_baseline()
    parts = bench_components()
    total = time.perf_counter() - started

    def row(name: str, s: dict[str, float]) -> str:
        ratio = baseline["p50"] / s["p50"]
        return (
            f"| {name} | {s['n']:,} | {s['p50']:.3f} | {s['p99']:.3f} | {s['per_s']:,.0f} | {ratio:,.0f}× |"
        )

    lines = [
        "# Accountant benchmarks",
        "",
        f"`OMP_NUM_THREADS=1 python benchmarks/bench_accountant.py` on {_machine()}; total {total:.0f} s.",
        "",
        f"Mechanism: k={MECH.k}, q={MECH.q}, sigma={MECH.sigma} (noise multiplier {MECH.noise_multiplier:g}), "
        f"delta={DELTA:g}, {len(DEFAULT_ORDERS)} RDP orders. Latency per call in ms; `speed-up` = baseline p50 / "
        "row p50, measured in the same run.",
        "",
        "| path | calls | p50 ms | p99 ms | calls/s | speed-up |",
        "|---|---:|---:|---:|---:|---:|",
        row("ledger charge, 1 scope, 1 process (commit + fsync)", single),
        row("ledger charge, 2 scopes in one transaction, 1 process", double),
        row(f"ledger charge, 1 scope, 4 processes racing (aggregate {four['charged']:,} charges)", four),
        row("ledger charge, 1 scope, 1 process, fsync off (bench only: CPU cost)", no_fsync),
        row("ledger status (epsilon spent + exact queries remaining)", status),
        row("baseline: in-memory RdpAccountant.compose + get_epsilon per query", baseline),
        "",
        f"Components (p50): `rdp.compute_epsilon` over {len(DEFAULT_ORDERS)} orders {parts['compute_epsilon']:.3f} ms; "
        f"an empty SQLite WAL `BEGIN IMMEDIATE`/INSERT/`COMMIT` with `synchronous=FULL` {parts['commit']:.3f} ms.",
        "",
        "The baseline keeps no ledger at all (nothing persisted, no lock), so the speed-up understates the gap to",
        "a persistent ledger that recomposes per query. 4-process calls/s is aggregate throughput (charges are",
        "serialised by SQLite's write lock; p50/p99 include the wait for it). On this shared VM the fsync of a",
        "WAL commit varies from ~0.2 to ~6 ms between runs (other jobs write to the same disk), so the rows with",
        "fsync move together; the fsync-off row is the CPU cost of a charge (read state, n * c check,",
        "compute_epsilon, insert, update).",
        "",
    ]
    OUT.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
