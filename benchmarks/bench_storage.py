"""Bytes per query (issue 14): float32 vs float16 vs fixed-range int8 rows, and threaded scoring at q = 0.01/0.1.

Setting: N = 100,000 synthetic unit rows at d = 768 (clustered: 1,000 random unit centres, each row
``normalise(centre + g)``, ``g ~ N(0, I/d)``, so a row's cosine to its centre is ~0.7 and the top-20 of a query
are real neighbours, not noise); queries drawn the same way; k = 20, q ∈ {0.01, 0.1}. The three storages hold the
same rows (``index.MemoryShard(..., storage=...)``: the primitives a shard built with ``--storage`` uses).

Per storage and q, all from one run:

* **recall@k**: |top-k(compressed) ∩ top-k(float32)| / |top-k(float32)| over the SAME Poisson subsample (one
  seeded generator per query, reused for every storage);
* **aggregate error**: ‖mean_c − mean_f32‖ of :func:`pipeline.mechanism.aggregate` (before noise), against
  σ = 1/√d (the "c = 1" setting of README "Choosing k, q and σ": noise norm σ√d ≈ 1) and against the
  sensitivity 2/k;
* **bytes per query**: kept rows × d × bytes per value;
* **latency** (3 rounds; the median of the rounds' medians, and the range of the 2-thread/1-thread ratio): median
  wall time of the mechanism's search (fresh Poisson subsample, score, exact top-k with the id
  tie-break: ``pipeline.mechanism._subsample_search``) with 1 and 2 scoring threads, against the **floor** =
  bytes read / the bandwidth of a one-thread sequential read (a float32 matrix–vector product over 64 MB at a
  random offset of a 307 MB array, measured interleaved with the queries in the same run).

Configurations are interleaved query by query so machine-load drift hits all of them alike; the machine is shared
(2 cores, other jobs running), so read the ratios, not the absolute times.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_storage.py`` → ``benchmarks/results/storage.md`` and ``.json``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from index import MemoryShard  # noqa: E402
from pipeline.mechanism import _subsample_search, aggregate, poisson_subsample  # noqa: E402

N = int(os.environ.get("DPRDM_BENCH_STORAGE_N", "100000"))  # a multiple of 10,000 (smaller: a smoke run)
D, K = 768, 20
RATES = (0.01, 0.1)
STORAGES = ("float32", "float16", "int8")
BYTES = {"float32": 4, "float16": 2, "int8": 1}
THREADS = (1, 2)
ROUNDS = 3  # latency rounds: the load of the shared machine drifts between them
SMOKE = N < 100_000
QUALITY_QUERIES = 20 if SMOKE else 200
TIMED = {0.01: 10, 0.1: 5} if SMOKE else {0.01: 200, 0.1: 60}
SIGMA = 1.0 / np.sqrt(D)
OUT = Path(tempfile.gettempdir()) / "storage_smoke.md" if SMOKE else ROOT / "benchmarks" / "results" / "storage.md"


def _clustered(count: int, centres: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    rows = centres[rng.integers(0, len(centres), count)]
    rows += rng.standard_normal((count, D), dtype=np.float32) / np.float32(np.sqrt(D))
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((1_000, D), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    rows = np.concatenate([_clustered(10_000, centres, rng) for _ in range(N // 10_000)])
    return rows, _clustered(QUALITY_QUERIES, centres, rng)


def quality(shards: dict[str, MemoryShard], queries: np.ndarray) -> dict:
    """recall@k and aggregate error of each storage against float32 on the same subsample."""
    out: dict = {}
    for q in RATES:
        recall: dict[str, list[float]] = {s: [] for s in STORAGES}
        error: dict[str, list[float]] = {s: [] for s in STORAGES}
        for number, query in enumerate(queries):
            found = {}
            for storage, shard in shards.items():
                rng = np.random.default_rng([7, number, int(q * 1000)])  # the same subsample for every storage
                ids, _, positions = _subsample_search(shard, query, K, q, rng)
                found[storage] = (set(ids.tolist()), aggregate(shard.rows(positions), K))
            reference_ids, reference_mean = found["float32"]
            for storage, (ids, mean) in found.items():
                recall[storage].append(len(ids & reference_ids) / max(len(reference_ids), 1))
                error[storage].append(float(np.linalg.norm(mean.astype(np.float64) - reference_mean)))
        out[q] = {
            s: {
                "recall_at_k": float(np.mean(recall[s])),
                "recall_min": float(np.min(recall[s])),
                "agg_error_mean": float(np.mean(error[s])),
                "agg_error_max": float(np.max(error[s])),
            }
            for s in STORAGES
        }
    return out


def latency(shards: dict[str, MemoryShard], queries: np.ndarray, sequential: np.ndarray) -> dict:
    """Median search ms per (q, storage, threads) and the sequential-read bandwidth, interleaved."""
    rng = np.random.default_rng(11)
    block = min((64 << 20) // (D * 4), N // 2)  # rows in a 64 MB float32 block
    out: dict = {}
    for q in RATES:
        times: dict[tuple[str, int], list[float]] = {(s, t): [] for s in STORAGES for t in THREADS}
        bandwidth: list[float] = []
        kept: list[int] = []
        for number in range(TIMED[q] + 3):
            query = queries[number % len(queries)]
            for (storage, threads), samples in times.items():
                shard = shards[storage]
                shard.threads = threads
                generator = np.random.default_rng([3, number])
                start = time.perf_counter()
                _subsample_search(shard, query, K, q, generator)
                if number >= 3:  # warm-up
                    samples.append(time.perf_counter() - start)
            kept.append(poisson_subsample(N, q, np.random.default_rng([3, number])).size)  # the rows that were read
            if number % 4 == 0:
                offset = int(rng.integers(0, N - block))
                start = time.perf_counter()
                sequential[offset : offset + block] @ query
                bandwidth.append(block * D * 4 / (time.perf_counter() - start))
        gbps = float(np.median(bandwidth))
        mean_kept = float(np.mean(kept))
        entry: dict = {"sequential_read_GBps": gbps / 1e9, "rows_kept_mean": mean_kept}
        for (storage, threads), samples in times.items():
            ms = 1e3 * float(np.median(samples))
            read = mean_kept * D * BYTES[storage]
            floor_ms = 1e3 * read / gbps
            entry[f"{storage}/{threads}"] = {"ms": ms, "bytes_per_query": read, "floor_ms": floor_ms,
                                             "vs_floor": ms / floor_ms}  # fmt: skip
        out[q] = entry
    return out


def _combine(rounds: list[dict]) -> dict:
    """Median over rounds of each configuration's median, plus the range over rounds of 2 threads / 1 thread."""
    out: dict = {}
    for q in RATES:
        entry: dict = {
            "sequential_read_GBps": float(np.median([r[q]["sequential_read_GBps"] for r in rounds])),
            "rows_kept_mean": float(np.mean([r[q]["rows_kept_mean"] for r in rounds])),
        }
        for s in STORAGES:
            for t in THREADS:
                name = f"{s}/{t}"
                entry[name] = {key: float(np.median([r[q][name][key] for r in rounds]))
                               for key in ("ms", "bytes_per_query", "floor_ms", "vs_floor")}  # fmt: skip
            ratios = [r[q][f"{s}/2"]["ms"] / r[q][f"{s}/1"]["ms"] for r in rounds]
            entry[f"{s}/2_over_1_range"] = [float(min(ratios)), float(max(ratios))]
        entry["rounds"] = [r[q] for r in rounds]
        out[q] = entry
    return out


def main() -> None:
    started, load_start = time.perf_counter(), os.getloadavg()[0]
    rows, queries = _data()
    shards = {s: MemoryShard(rows, storage=s) for s in STORAGES}
    quality_results = quality(shards, queries)
    rounds = [latency(shards, queries, shards["float32"]._embeddings) for _ in range(ROUNDS)]
    latency_results = _combine(rounds)
    seconds = time.perf_counter() - started
    load = os.getloadavg()
    lines = [
        "# Bytes per query: compressed storage and threaded scoring (issue 14)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, {'**loaded**' if max(load_start, load[0]) > 1.5 else 'mostly idle'} "
        f"(load average {load_start:.1f} at the start and {load[0]:.1f} at the end of the run), Python {platform.python_version()}, numpy {np.__version__}. "
        f"One run ({seconds:.0f} s): `OMP_NUM_THREADS=1 python benchmarks/bench_storage.py`.",
        "",
        f"N = {N:,} synthetic clustered unit rows, d = {D}, k = {K} (data and method: the module docstring). "
        f"recall@k and aggregate error over {QUALITY_QUERIES} queries on the same Poisson subsample as float32; "
        f"σ = 1/√d = {SIGMA:.4f} (noise norm σ√d ≈ 1); 2/k = {2 / K:.2f} is the mechanism's sensitivity.",
        "",
        "| q | storage | recall@k (min) | ‖mean − mean_f32‖ mean (max) | / σ | / (2/k) | bytes per query |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for q in RATES:
        for s in STORAGES:
            r = quality_results[q][s]
            read = latency_results[q][f"{s}/1"]["bytes_per_query"]
            lines.append(
                f"| {q} | {s} | {r['recall_at_k']:.4f} ({r['recall_min']:.2f}) | {r['agg_error_mean']:.2e} "
                f"({r['agg_error_max']:.2e}) | {r['agg_error_mean'] / SIGMA:.3f} | {r['agg_error_mean'] / (2 / K):.3f} "
                f"| {read / 1e6:.2f} MB |"
            )
    lines += [
        "",
        f"Latency of the search (subsample, score, exact top-k), median ms (median over {ROUNDS} rounds of "
        "interleaved queries); floor = bytes read / one-thread "
        "sequential read bandwidth measured in the same run; `vs float32` = time / float32's one-thread time; "
        "`2 threads / 1 thread` < 1 means the second scoring thread helped.",
        "",
        "| q | seq. read GB/s | storage | 1 thread ms | × floor | vs float32 | 2 threads ms | × floor "
        "| 2 threads / 1 thread (range over rounds) |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for q in RATES:
        entry = latency_results[q]
        base = entry["float32/1"]["ms"]
        for s in STORAGES:
            one, two = entry[f"{s}/1"], entry[f"{s}/2"]
            lines.append(
                f"| {q} | {entry['sequential_read_GBps']:.1f} | {s} | {one['ms']:.2f} | {one['vs_floor']:.2f}× "
                f"| {one['ms'] / base:.2f}× | {two['ms']:.2f} | {two['vs_floor']:.2f}× | {two['ms'] / one['ms']:.2f}× "
                f"({entry[f'{s}/2_over_1_range'][0]:.2f}–{entry[f'{s}/2_over_1_range'][1]:.2f}) |"
            )
    lines.append("")
    OUT.write_text("\n".join(lines))
    OUT.with_suffix(".json").write_text(json.dumps(
        {"N": N, "d": D, "k": K, "sigma": SIGMA, "loadavg_start": load_start, "loadavg_end": load, "seconds": seconds,
         "quality": {str(q): v for q, v in quality_results.items()},
         "latency": {str(q): v for q, v in latency_results.items()}}, indent=2))  # fmt: skip
    print("\n".join(lines))


if __name__ == "__main__":
    main()
