"""``dprdm serve`` benchmark: durable charges/s with and without group commit, and HTTP requests/s and p50/p99
latency at 1, 4 and 16 concurrent clients with and without dynamic batching and group commit, in one run.

1. **Ledger, durable charges/s.** 16 (and 64) threads charge one scope of one ledger (WAL, ``synchronous=FULL``) for a
   fixed time: (a) ``Ledger.charge``, one ``BEGIN IMMEDIATE`` transaction and one fsync per charge; (b) the
   service's :class:`pipeline.serve.batching.GroupCommitLedger` over the same kind of ledger: concurrent charges
   committed together with ``Ledger.charge_many`` (one transaction, one fsync per group). Every charge returns
   only after its commit in both cases.
2. **HTTP.** A real ``dprdm serve`` subprocess on 127.0.0.1 (bundled tiny decoder, ``steps=1``, one image per
   request, one torch thread) over a small digit index, for each of four settings: one-at-a-time baseline
   (``--max-batch 1 --no-group-commit``), group commit only, dynamic batching only (``--max-batch 16``), both. A
   closed-loop httpx load generator in this process runs C = 1, 4, 16 clients for a fixed time each; requests/s
   (all 200), p50 and p99 latency. The four servers run side by side and the settings are interleaved in
   ``BENCH_ROUNDS`` rounds (median per cell), so drifting background load hits every setting alike. Every request is one private query charged and committed before its response;
   the charges/s the ledger committed under that load equal the requests/s.

3. **Engines** (``--engines``, a separate run): the same HTTP load against two servers side by side over the same
   index, ``--engine local`` and ``--engine ray`` (one Ray actor per shard, a local Ray started by the server), both
   with the default batching and group commit, interleaved; p50/p99 latency and requests/s, i.e. the cost of the
   Ray fan-out as seen by an HTTP caller. It replaces (or appends) only its own section of the results file.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_serve.py`` (about 6 min; needs the ``serve`` extra), and
``... bench_serve.py --engines`` (about 3 min; needs the ``scale`` extra too). Writes
``benchmarks/results/serve.md``. Figures are from a shared 2-core machine: read the ratios, not the absolutes.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import platform  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "serve"))

import httpx  # noqa: E402
from server_process import ServerProcess  # noqa: E402

from accountant import Ledger, Mechanism, ScopeSpec, epsilon_for  # noqa: E402
from pipeline.serve.batching import GroupCommitLedger  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "serve.md"
MECH = Mechanism(k=3, q=0.5, sigma=0.4)
LEDGER_SECONDS = float(os.environ.get("BENCH_LEDGER_SECONDS", 3))
HTTP_SECONDS = float(os.environ.get("BENCH_HTTP_SECONDS", 5))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", 3))
CLIENTS = (1, 4, 16)
SETTINGS = {
    "one at a time": ("--max-batch", "1", "--no-group-commit"),
    "group commit": ("--max-batch", "1"),
    "dynamic batching": ("--max-batch", "16", "--no-group-commit"),
    "both": ("--max-batch", "16"),
}


def _ledger(path: Path) -> Ledger:
    book = Ledger(path)
    book.create_scope("s", epsilon=epsilon_for(MECH, queries=10**7, delta=1e-6), delta=1e-6, mechanism=MECH,
                      records=1000)  # fmt: skip
    return book


def durable_charges_per_second(book, threads: int = 16) -> tuple[float, int]:
    stop, counts = threading.Event(), [0] * threads
    barrier = threading.Barrier(threads + 1)

    def worker(i: int) -> None:
        barrier.wait()
        while not stop.is_set():
            book.charge("s")
            counts[i] += 1

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    time.sleep(LEDGER_SECONDS)
    stop.set()
    for t in pool:
        t.join()
    return sum(counts) / (time.perf_counter() - start), sum(counts)


def build_index(root: Path) -> Path:
    from index import PrivateIndex, build_index
    from pipeline.data import load_mnist_split, to_pil
    from pipeline.ledgers import index_ledger

    split = load_mnist_split()
    folder = root / "pngs"
    for label in range(10):
        (folder / str(label)).mkdir(parents=True)
        for row in np.flatnonzero(split.private_labels == label)[:30]:
            to_pil(split.private_images[row]).save(folder / str(label) / f"{row:04d}.png")
    build_index(folder, root / "index", shard="default", progress=False, num_threads=1)
    idx = PrivateIndex.open(root / "index")
    book = index_ledger(idx, create=True)
    book.create_scopes([ScopeSpec(name="default", epsilon=epsilon_for(MECH, queries=10**7, delta=1e-6), delta=1e-6,
                                  mechanism=MECH, records=300)])  # fmt: skip
    book.close()
    return root / "index"


def load(url: str, token: str, clients: int, *, seconds: float | None = None) -> dict[str, float]:
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = threading.Event()
    barrier = threading.Barrier(clients + 1)
    body = {"prompt": "a handwritten digit", "n": 1, "steps": 1}

    def client() -> None:
        with httpx.Client(base_url=url, timeout=120, headers={"Authorization": f"Bearer {token}"}) as http:
            http.get("/healthz")
            barrier.wait()
            while not stop.is_set():
                start = time.perf_counter()
                response = http.post("/v1/generations", json=body)
                elapsed = time.perf_counter() - start
                with lock:
                    if response.status_code == 200:
                        latencies.append(elapsed)
                    else:
                        errors[0] += 1

    pool = [threading.Thread(target=client) for _ in range(clients)]
    for t in pool:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    time.sleep(HTTP_SECONDS if seconds is None else seconds)
    stop.set()
    for t in pool:
        t.join()
    wall = time.perf_counter() - start
    lat = np.asarray(latencies) * 1000
    if not len(lat):
        lat = np.asarray([float("nan")])
    return {"rps": len(latencies) / wall, "p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
            "n": len(latencies), "errors": errors[0]}  # fmt: skip


def _median(values: list[float]) -> float:
    return float(np.median(values))


def table_rows(results: dict[str, dict[int, dict[str, float]]]) -> list[str]:
    """One markdown row per (setting, clients) cell: requests/s, p50, p99, requests, errors."""
    return [f"| {name} | {c} | {r['rps']:.1f} | {r['p50']:.0f} | {r['p99']:.0f} | {r['n']} | {r['errors']} |"
            for name, by_clients in results.items() for c, r in by_clients.items()]  # fmt: skip


def interleaved(index: Path, servers: dict[str, ServerProcess], token: str, clients: tuple[int, ...], *,
                kill: bool = True) -> tuple[dict[str, dict[int, dict[str, float]]], int]:
    """Load every server at every client count, settings interleaved in ``ROUNDS`` rounds; medians per cell.

    The servers are ended afterwards (kill -9, or SIGINT with ``kill=False``). Returns the cells and the charges
    the ledger of ``index`` (the servers' index) committed, verified.
    """
    samples: dict[str, dict[int, list[dict[str, float]]]] = {name: {c: [] for c in clients} for name in servers}
    try:
        for server in servers.values():
            load(server.url, token, 1, seconds=2)  # warm-up (first decode, caches)
        for _ in range(ROUNDS):
            for c in clients:
                for name, server in servers.items():
                    samples[name][c].append(load(server.url, token, c))
                    print(name, c, samples[name][c][-1], flush=True)
    finally:
        for server in servers.values():
            server.kill() if kill else server.stop()
    with Ledger(index / "budget.sqlite") as book:
        assert book.verify().ok
        committed = book.status("default").queries_charged
    results = {
        name: {c: {key: _median([s[key] for s in runs]) for key in ("rps", "p50", "p99")} | {
            "n": sum(s["n"] for s in runs), "errors": sum(s["errors"] for s in runs)} for c, runs in by_c.items()}
        for name, by_c in samples.items()
    }  # fmt: skip
    return results, committed


def main() -> None:
    from pipeline.serve import KeyStore

    lines = ["# `dprdm serve` benchmark", "", f"Machine: {platform.machine()}, {os.cpu_count()} CPUs shared with other "
             f"jobs, Python {platform.python_version()}. Settings are interleaved in {ROUNDS} rounds and each cell is "
             "the median over the rounds, so drifting background load hits every setting alike; read the ratios.", ""]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ledger_rows = []
        for threads in (16, 64):
            plain, grouped, sizes = [], [], []
            for r in range(ROUNDS):
                single = _ledger(tmp / f"single-{threads}-{r}.sqlite")
                plain.append(durable_charges_per_second(single, threads)[0])
                book = _ledger(tmp / f"grouped-{threads}-{r}.sqlite")
                wrapped = GroupCommitLedger(book)
                rate, count = durable_charges_per_second(wrapped, threads)
                grouped.append(rate)
                sizes.append(count / max(wrapped.groups_committed, 1))
                wrapped.close()
                assert book.verify().ok and single.verify().ok
                single.close()
                book.close()
            ledger_rows.append((threads, _median(plain), _median(grouped), _median(sizes)))
        lines += [
            f"## Ledger: durable charges/s (one scope, WAL + synchronous=FULL, {LEDGER_SECONDS:g} s per cell)", "",
            "| threads | one transaction per charge (`Ledger.charge`) | group commit (`Ledger.charge_many`) | ratio "
            "| mean group |", "|---:|---:|---:|---:|---:|",
        ]  # fmt: skip
        for threads, plain, grouped, size in ledger_rows:
            lines.append(f"| {threads} | {plain:,.0f}/s | {grouped:,.0f}/s | **{grouped / plain:.1f}x** | {size:.1f} |")
        lines.append("")
        print("\n".join(lines), flush=True)

        index = build_index(tmp / "bench")
        token = KeyStore.for_index(index, create=True).add("bench", shards=["default"])[1]
        servers = {name: ServerProcess(index, *args) for name, args in SETTINGS.items()}
        results, committed = interleaved(index, servers, token, CLIENTS)
        shutil.rmtree(tmp / "bench", ignore_errors=True)
    lines += [
        "## HTTP: requests/s and latency (tiny decoder, steps=1, 1 image, loopback)", "",
        f"Each sample: {HTTP_SECONDS:g} s closed loop; every request is one private query charged and committed "
        "(fsync) before its response, so the ledger's durable charges/s under the load equal the requests/s "
        f"({committed} charges committed and verified in all). Server: 1 process, 1 torch thread.", "",
        "| setting | clients | requests/s | p50 ms | p99 ms | requests | errors |", "|---|---:|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    lines += table_rows(results)
    base = results["one at a time"]
    lines += ["", "Requests/s relative to the one-at-a-time baseline, same run:", "",
              "| setting | 1 client | 4 clients | 16 clients |", "|---|---:|---:|---:|"]  # fmt: skip
    for name, by_clients in results.items():
        cells = " | ".join(f"{by_clients[c]['rps'] / base[c]['rps']:.2f}x" for c in CLIENTS)
        lines.append(f"| {name} | {cells} |")
    lines.append("")
    kept = OUT.read_text().partition(ENGINES_TITLE) if OUT.exists() else ("", "", "")
    OUT.write_text("\n".join(lines) + ("\n" + kept[1] + kept[2] if kept[1] else ""))  # keep the --engines section
    print("\n".join(lines))


ENGINES_TITLE = "## HTTP: local vs Ray engine"


def engines() -> None:
    """Section 3 of the module docstring: ``--engine local`` vs ``--engine ray``, same run, same index."""
    from pipeline.serve import KeyStore

    clients = (1, 4)
    with tempfile.TemporaryDirectory() as tmp:
        index = build_index(Path(tmp) / "bench")
        token = KeyStore.for_index(index, create=True).add("bench", shards=["default"])[1]
        servers = {"local": ServerProcess(index), "ray": ServerProcess(index, "--engine", "ray")}
        res, committed = interleaved(index, servers, token, clients, kill=False)  # SIGINT: the Ray server shuts Ray down
    lines = [
        ENGINES_TITLE, "",
        f"`python benchmarks/bench_serve.py --engines`: two servers side by side over one index (1 shard, 300 "
        f"records), default settings (batching + group commit), tiny decoder at steps=1, 1 image per request, "
        f"{HTTP_SECONDS:g} s closed loop per sample, settings interleaved in {ROUNDS} rounds (medians); "
        f"{committed} charges committed and verified. `ray`: one shard actor in a local Ray started by the server "
        f"on this machine's {os.cpu_count()} shared CPUs.", "",
        "| engine | clients | requests/s | p50 ms | p99 ms | requests | errors |", "|---|---:|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    lines += table_rows(res)
    lines += ["", "Ray relative to local, same run:", "", "| clients | p50 | requests/s |", "|---:|---:|---:|"]
    for c in clients:
        lines.append(f"| {c} | {res['ray'][c]['p50'] / res['local'][c]['p50']:.2f}x "
                     f"| {res['ray'][c]['rps'] / res['local'][c]['rps']:.2f}x |")  # fmt: skip
    lines.append("")
    text = OUT.read_text() if OUT.exists() else ""
    head = text.split(ENGINES_TITLE)[0].rstrip("\n")
    OUT.write_text((head + "\n\n" if head else "") + "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    engines() if "--engines" in sys.argv[1:] else main()
