"""Helpers and fork-server child entry points shared by the failure drills (importable: no fixtures here).

Child entry points run inside processes forked from the drill fork server; they report through files and
their exit code, because a SIGKILLed child cannot report anything else.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_corpus(folder: Path, count: int, *, seed: int) -> Path:
    """``count`` distinct 28×28 grayscale PNGs (random strokes), deterministic in ``seed``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        pixels = np.zeros((28, 28), dtype=np.uint8)
        rows, cols = rng.integers(4, 24, size=2)
        pixels[rows - 3 : rows + 3, 2:26] = rng.integers(100, 255)
        pixels[2:26, cols - 2 : cols + 2] = rng.integers(100, 255)
        pixels = np.maximum(pixels, rng.integers(0, 60, size=(28, 28), dtype=np.uint8))
        Image.fromarray(pixels, mode="L").save(folder / f"img_{seed}_{i:03d}.png")
    return folder


def add_scope(index_dir: Path, *, queries_fit: int, k: int = 3, q: float = 1.0, sigma: float = 0.5) -> Path:
    """Create the default shard's scope with a budget that fits exactly ``queries_fit`` queries."""
    from accountant import Ledger, Mechanism, epsilon_for
    from index import PrivateIndex

    mechanism = Mechanism(k=k, q=q, sigma=sigma)
    records = PrivateIndex.open(index_dir).shard("default").num_records
    epsilon = epsilon_for(mechanism, queries=queries_fit, delta=1e-3)
    path = index_dir / "budget.sqlite"
    with Ledger(path) as ledger:
        ledger.create_scope("default", epsilon=epsilon, delta=1e-3, mechanism=mechanism, records=records)
        assert ledger.status("default").queries_remaining == queries_fit
        PrivateIndex.open(index_dir).bind_ledger(ledger.ledger_id, ledger.location)  # as 'dprdm budget init' does
    return path


def generate_args(index_dir: Path, out: Path, decoder_dir: Path, prompt: str = "a digit") -> list[str]:
    """``dprdm generate`` arguments for one cheap private query (1 image, 2 DDIM steps)."""
    return ["generate", prompt, "--index", str(index_dir), "--out", str(out), "--decoder", str(decoder_dir),
            "--steps", "2", "--n-images", "1", "--json"]  # fmt: skip


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path → bytes), to prove nothing was overwritten."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def run_cli(args: list[str], result_path: Path | None = None) -> int:
    """Run one ``dprdm`` command in-process (the real CLI code); optionally save exit code and output."""
    import json

    result = run_cli_result(args)
    if result_path is not None:
        payload = {"exit_code": result.exit_code, "stdout": result.stdout, "stderr": result.stderr}
        Path(result_path).write_text(json.dumps(payload))
    return result.exit_code


def race_child(barrier, args: list[str], result_path: Path) -> None:
    """Wait for every racer, then run one command; the exit code is the command's."""
    barrier.wait()
    raise SystemExit(run_cli(args, result_path))


def generate_forever(args: list[str], out_root: Path, start: int) -> None:
    """Run ``dprdm generate`` again and again, each into its own ``out_root/NNNNN`` (until killed)."""
    out_at = args.index("--out") + 1
    for number in range(start, start + 100_000):
        call = list(args)
        call[out_at] = str(Path(out_root) / f"{number:05d}")
        run_cli(call)


def build_forever(sources: list[str], index_dir: Path) -> None:
    """Rebuild the default shard from alternating sources (until killed)."""
    for number in range(100_000):
        run_cli(["index", "build", sources[number % len(sources)], "--index", str(index_dir), "--json"])


def assert_one_error_line(stderr: str, fragment: str = "") -> str:
    """The command's own error is exactly one line (the last), with no traceback; return it.

    Third-party load-time warnings (diffusers) may precede it; they are not dprdm's error message.
    """
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    errors = [line for line in lines if line.startswith(("Error: ", '{"error"'))]
    assert len(errors) == 1 and lines[-1] == errors[0], stderr
    assert fragment in errors[0], errors[0]
    return errors[0]


def run_cli_result(args: list[str]):
    """Run one ``dprdm`` command in-process and return typer's ``Result`` (exit_code, stdout, stderr)."""
    from typer.testing import CliRunner

    from pipeline.cli import app

    return CliRunner().invoke(app, args)
