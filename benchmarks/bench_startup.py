"""Start-up time of the light commands: ``dprdm --version`` and ``dprdm budget show`` (wall time, subprocess).

Each command runs in a fresh interpreter (``python -c 'from pipeline.cli import main; main()' ARGS``, the same
code path as the console script), 5 times after one warm-up run; the median is reported. ``budget show`` reads
a small ledger created once in a temporary folder. Goal: < 0.5 s (issue 15); the figure is dominated by what the
command imports (torch, diffusers, faiss and open_clip must not be among them).

Usage: ``PYTHONPATH=. python benchmarks/bench_startup.py [--repeat 5] [--json]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENTRY = "from pipeline.cli import main; main()"


def _time(args: list[str], env: dict[str, str], repeat: int) -> float:
    """Median wall seconds of ``dprdm ARGS`` over ``repeat`` runs (one warm-up run first)."""
    command = [sys.executable, "-c", ENTRY, *args]
    subprocess.run(command, env=env, capture_output=True, check=True)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(command, env=env, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    options = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory() as folder:
        ledger = Path(folder) / "budget.sqlite"
        subprocess.run(
            [sys.executable, "-c", ENTRY, "budget", "init", "--ledger", str(ledger), "--shard", "s", "--records",
             "1000", "--epsilon", "10", "--delta", "1e-6", "--sigma", "1", "--k", "10", "--q", "0.1"],
            env=env, capture_output=True, check=True,
        )  # fmt: skip
        figures = {
            "dprdm --version": _time(["--version"], env, options.repeat),
            "dprdm budget show": _time(["budget", "show", "--ledger", str(ledger)], env, options.repeat),
        }
    if options.json:
        print(json.dumps({name: round(seconds, 3) for name, seconds in figures.items()}, indent=2))
    else:
        for name, seconds in figures.items():
            print(f"{name:<20} {seconds:.3f} s (median of {options.repeat})")


if __name__ == "__main__":
    main()
