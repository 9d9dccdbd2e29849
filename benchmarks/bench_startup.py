"""Start-up time of the light commands: ``dprdm --version``, ``budget show`` and ``index info`` (wall time).

Each command runs in a fresh interpreter (``python -c 'from pipeline.cli import main; main()' ARGS``, the same
code path as the console script), 5 times after one warm-up run; the medians of the wall time and of the child's
CPU time (user + system, steadier on a shared machine) are reported. ``budget show`` reads
a small ledger and ``index info`` a 12-image index (bundled tiny encoder), both created once in a temporary
folder. Goal: < 0.5 s (issue 15); the figure is dominated by what the command imports (torch, diffusers, faiss and
open_clip must not be among them). For reference it also times bare imports in a fresh interpreter: ``pass``
(the interpreter itself), ``import dp_accounting`` (what ``budget show`` pays for the accountant: its package
``__init__`` imports the PLD module and so scipy.stats) and ``import faiss``.

Usage: ``PYTHONPATH=. python benchmarks/bench_startup.py [--repeat 5] [--json]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENTRY = "from pipeline.cli import main; main()"


def _run_timed(command: list[str], env: dict[str, str], repeat: int) -> tuple[float, float]:
    """Median (wall, CPU) seconds of ``command`` over ``repeat`` runs after one warm-up run.

    CPU = the child's user + system time: on a shared machine it moves far less than the wall time.
    """
    subprocess.run(command, env=env, capture_output=True, check=True)
    walls, cpus = [], []
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(command, env=env, capture_output=True, check=True)
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return statistics.median(walls), statistics.median(cpus)


def _time(args: list[str], env: dict[str, str], repeat: int) -> tuple[float, float]:
    """Median (wall, CPU) seconds of ``dprdm ARGS``."""
    return _run_timed([sys.executable, "-c", ENTRY, *args], env, repeat)


def _time_import(code: str, env: dict[str, str], repeat: int) -> tuple[float, float]:
    """Median (wall, CPU) seconds of ``python -c CODE`` in a fresh interpreter."""
    return _run_timed([sys.executable, "-c", code], env, repeat)


def _tiny_index(folder: Path, env: dict[str, str]) -> Path:
    """A 12-image index built with the bundled encoder (the build's own start-up is not timed)."""
    from PIL import Image

    images = folder / "images"
    images.mkdir()
    for i in range(12):
        Image.new("L", (28, 28), 20 * i).save(images / f"{i}.png")
    subprocess.run([sys.executable, "-c", ENTRY, "index", "build", str(images), "--index", str(folder / "ix")],
                   env=env, capture_output=True, check=True)  # fmt: skip
    return folder / "ix"


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
        index_dir = _tiny_index(Path(folder), env)
        figures = {
            "dprdm --version": _time(["--version"], env, options.repeat),
            "dprdm budget show": _time(["budget", "show", "--ledger", str(ledger)], env, options.repeat),
            "dprdm index info": _time(["index", "info", "--index", str(index_dir)], env, options.repeat),
            "python -c pass": _time_import("pass", env, options.repeat),
            "import dp_accounting": _time_import("import dp_accounting", env, options.repeat),
            "import faiss": _time_import("import faiss", env, options.repeat),
        }
    if options.json:
        print(json.dumps({name: {"wall_s": round(w, 3), "cpu_s": round(c, 3)} for name, (w, c) in figures.items()},
                         indent=2))  # fmt: skip
    else:
        for name, (wall, cpu) in figures.items():
            print(f"{name:<22} {wall:.3f} s wall, {cpu:.3f} s CPU (median of {options.repeat})")


if __name__ == "__main__":
    main()
