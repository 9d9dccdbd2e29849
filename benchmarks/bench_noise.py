"""Latency OpenDP's exact Gaussian adds to one private query (issue 9), against numpy's float Gaussian.

``pipeline.mechanism.privatize`` draws the retrieval noise with OpenDP's Gaussian measurement on float vectors
(``accountant.gaussian_measurement``: exact sampling, then rounding to float; closes Mironov 2012's
floating-point attack). The baseline, measured in the same run, is the float Gaussian the project used before
(``numpy.random.Generator.normal`` seeded from the OS CSPRNG). Median over repeats, one thread.

    OMP_NUM_THREADS=1 python benchmarks/bench_noise.py [--repeats 200]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.mechanism import privatize, secure_rng  # noqa: E402


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "noise.md")
    args = parser.parse_args()
    rows = []
    for dim in (16, 64, 768, 1024):
        vector = np.full(dim, 1.0 / np.sqrt(dim), dtype=np.float32) / 10
        privatize(vector, 0.2)  # build (and cache) the measurement once
        opendp = _median_ms(lambda v=vector: privatize(v, 0.2), args.repeats)
        floats = _median_ms(lambda v=vector: privatize(v, 0.2, _rng=secure_rng()), args.repeats)
        rows.append((dim, opendp, floats))
        print(f"d={dim}: OpenDP {opendp:.3f} ms, numpy float {floats:.3f} ms", flush=True)
    lines = [
        "# Retrieval noise: OpenDP exact Gaussian vs numpy float Gaussian (one query, one thread)",
        "",
        f"`python benchmarks/bench_noise.py --repeats {args.repeats}`; median ms per query; sigma = 0.2.",
        "",
        "| d | OpenDP (ms) | numpy float Gaussian (ms) | added by OpenDP (ms) | ratio |",
        "|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {d} | {o:.3f} | {f:.3f} | {o - f:.3f} | {o / f:.1f}× |" for d, o, f in rows]
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
