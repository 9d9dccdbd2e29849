"""``make demo``: the bundled private digits → private index → privacy budget → a grid of private generations.

Steps (each printed as the command a user would type; the CLI steps run the real ``dprdm`` app in-process):

1. write the bundled private half (2,500 MNIST digits) as PNGs under ``demo-output/private``;
2. ``dprdm index build`` over them with the bundled tiny encoder;
3. ``dprdm budget init``: ε = 10, δ = 1e-6, σ calibrated so that 1,000 queries fit, k = 40, q = 0.2
   (chosen with ``benchmarks/bench_privacy_utility.py``: at N = 2,500 and ten classes, k ≈ 0.8·q·N/10 keeps the
   neighbours on-class);
4. one private query per prompt "a handwritten digit 0" … "9" (4 images each, one charge each), written like
   ``dprdm generate`` writes them, plus one 10 × 4 grid ``demo-output/demo_grid.png``;
5. ``dprdm budget show``.

Re-running reuses the index and its ledger, so the budget keeps counting down (it is never reset: the
guarantee covers every query ever answered); ``make clean`` removes ``demo-output``.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path

OUT = Path("demo-output")
EPSILON, DELTA, QUERIES, K, Q = 10.0, 1e-6, 1000, 40, 0.2
N_IMAGES, STEPS, GUIDANCE, SEED = 4, 25, 2.0, 0
PROMPTS = tuple(f"a handwritten digit {digit}" for digit in range(10))


def _step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def _dprdm(*args: str) -> None:
    """Run ``dprdm ARGS`` in this process (the same typer app, the same error lines); stop on failure."""
    from pipeline.cli import app

    print("$ dprdm " + shlex.join(args), flush=True)
    code = app(list(args), prog_name="dprdm", standalone_mode=False)  # errors come back as their exit code
    if isinstance(code, int) and code != 0:
        sys.exit(code)


def main() -> None:
    """Run the demo end to end (≈ 1–3 minutes on one CPU thread)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import index._torchvision_compat  # noqa: F401,I001  (first: must run before diffusers imports torchvision)
    import torch
    from diffusers.utils import logging as diffusers_logging

    torch.set_num_threads(1)
    diffusers_logging.set_verbosity_error()
    start = time.perf_counter()
    index_dir, private_dir, images_dir = OUT / "index", OUT / "private", OUT / "images"

    from pipeline._files import default_ledger

    _step("1. the bundled private half as a folder of PNGs")
    from pipeline.data import write_private_pngs

    if not (private_dir / "9").is_dir():
        write_private_pngs(private_dir)
    print(f"{sum(1 for _ in private_dir.rglob('*.png'))} PNGs in {private_dir}", flush=True)

    _step("2. private index (bundled tiny encoder, exact flat inner-product index)")
    if (index_dir / "manifest.json").is_file():
        print(f"reusing {index_dir} (delete {OUT} to rebuild it)")
    else:
        _dprdm("index", "build", str(private_dir), "--index", str(index_dir), "--threads", "1")

    _step("3. privacy budget: epsilon=10 at delta=1e-6 for 1,000 queries")
    if default_ledger(index_dir).is_file():
        print(f"reusing the ledger {default_ledger(index_dir)}: budgets are never reset")
    else:
        _dprdm("budget", "init", "--index", str(index_dir), "--epsilon", str(EPSILON), "--delta", str(DELTA),
               "--queries", str(QUERIES), "--k", str(K), "--q", str(Q))

    _step(f"4. ten private queries, {N_IMAGES} images each")
    grid = _generate_all(index_dir, images_dir)
    print(f"grid: {grid}")

    _step("5. budget after the demo")
    _dprdm("budget", "show", "--index", str(index_dir))
    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s; outputs in {OUT}/", flush=True)


def _generate_all(index_dir: Path, images_dir: Path) -> Path:
    """One charged query per prompt through the library (models loaded once); returns the 10 × 4 grid path."""
    import torch

    from pipeline.generate import DPRDMPipeline
    from pipeline.outputs import make_grid, save_generation, save_png

    generate = DPRDMPipeline.from_index_dir(index_dir, threads=1)
    print("$ dprdm generate " + shlex.join([PROMPTS[0], "--index", str(index_dir), "--n-images", str(N_IMAGES),
                                             "--out", str(images_dir)]) + "   # … and the other nine prompts")
    rows = []
    for prompt in PROMPTS:
        result = generate(prompt, num_images=N_IMAGES, steps=STEPS, guidance_scale=GUIDANCE,
                          generator=torch.Generator().manual_seed(SEED), caller="make demo")
        saved = save_generation(result, images_dir)
        rows.append(result.images)
        print(f"{prompt!r}: {saved.grid.name}  epsilon spent {result.epsilon_spent:.3f} of "
              f"{result.statuses[0].epsilon_budget:g}, {result.queries_remaining} queries left", flush=True)
    return save_png(make_grid(rows, scale=3), OUT / "demo_grid.png")


def _run_demo() -> None:
    """``python -m pipeline.demo``: errors become one line and an exit code in the CLI's one place."""
    import typer

    from pipeline.cli import errors_to_exit

    try:
        with errors_to_exit(argv=sys.argv[1:]):
            main()
    except typer.Exit as stop:  # carries the exit code errors_to_exit chose after printing the one line
        if stop.exit_code == 3:
            print("'make clean' starts the demo over on a fresh index", file=sys.stderr)
        sys.exit(stop.exit_code)


if __name__ == "__main__":
    _run_demo()
