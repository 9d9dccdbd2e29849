"""Issue 15 honesty: the bundled digit models say so, in one line, when a corpus or a query is far from digits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from pipeline import domain
from pipeline.cli import app
from pipeline.data import load_digits_small


def test_far_corpus_warns_at_build_and_digits_do_not(tmp_path: Path, built_single: Path) -> None:
    uci = tmp_path / "uci"
    uci.mkdir()
    images, _ = load_digits_small()
    for row, pixels in enumerate(images[:40]):
        Image.fromarray((pixels / 16 * 255).astype(np.uint8)).resize((28, 28)).save(uci / f"{row}.png")
    runner = CliRunner()
    result = runner.invoke(app, ["index", "build", str(uci), "--index", str(tmp_path / "idx"), "--json"])
    assert result.exit_code == 0, result.stderr
    assert result.stderr.count("Warning: ") == 1 and "Using real models" in result.stderr
    digits = runner.invoke(app, ["index", "build", str(built_single.parent / "pngs"), "--index",
                                 str(tmp_path / "idx2"), "--json"])
    assert digits.exit_code == 0 and "Warning" not in digits.stderr


def test_prompt_check_reads_only_the_query(encoder) -> None:
    assert domain.uses_bundled_encoder(encoder.sha256)
    assert not domain.query_is_far(encoder, prompt="a handwritten digit 7")
    assert domain.query_is_far(encoder, prompt="a photo of a face")
