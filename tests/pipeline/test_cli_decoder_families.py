"""Issue 15: every decoder family driven through ``dprdm generate`` end to end, offline, from tiny random
components saved in the real diffusers layout; knobs reach the family; a wrong knob costs nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from accountant import Ledger
from pipeline.cli import app


@pytest.fixture(scope="module")
def family_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from decoder_folders import build_kandinsky_folder, build_unclip_folder

    root = tmp_path_factory.mktemp("families")
    return {
        "unclip": build_unclip_folder(root / "unclip", dim=16),  # the bundled encoder's width
        "kandinsky": build_kandinsky_folder(root / "kandinsky", dim=16),
    }


def _init(runner: CliRunner, index: Path) -> None:
    result = runner.invoke(app, ["budget", "init", "--index", str(index), "--epsilon", "5", "--delta", "1e-6",
                                 "--queries", "10", "--k", "5", "--q", "0.2", "--json"])
    assert result.exit_code == 0, result.stderr


@pytest.mark.parametrize(("family", "knobs"), [("unclip", ["--noise-level", "10"]),
                                               ("kandinsky", ["--embedding-norm", "3.0"])])
def test_generate_with_each_diffusers_family(index_dir: Path, family_folders, tmp_path: Path, family: str,
                                             knobs: list[str]) -> None:
    runner = CliRunner()
    _init(runner, index_dir)
    result = runner.invoke(app, ["generate", "a handwritten digit 4", "--index", str(index_dir), "--n-images", "2",
                                 "--num-inference-steps", "2", "--decoder", str(family_folders[family]), *knobs,
                                 "--seed", "0", "--out", str(tmp_path / "out"), "--json"])
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["charged"] and len(payload["images"]) == 2
    assert all(Path(image).is_file() for image in payload["images"])
    with Ledger(index_dir / "budget.sqlite", read_only=True) as ledger:
        assert len(ledger.history()) == 1


def test_knob_of_another_family_is_refused_before_the_charge(index_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    _init(runner, index_dir)
    result = runner.invoke(app, ["generate", "a handwritten digit 4", "--index", str(index_dir), "--noise-level", "5",
                                 "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1 and "noise_level" in result.stderr
    with Ledger(index_dir / "budget.sqlite", read_only=True) as ledger:
        assert ledger.history() == []
    assert not (tmp_path / "out").exists()


def test_plan_recommends_delta_and_warns(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["budget", "plan", "--epsilon", "1", "--delta", "1e-6", "--queries", "1000",
                                 "--k", "40", "--q", "0.01", "--records", "5000", "--dim", "768", "--json"])
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["recommended_delta"] == pytest.approx(1e-5)
    assert len(payload["warnings"]) == 2  # noise norm sigma*sqrt(768) >> 1, and k=40 >~ q*N = 50
    assert [line.startswith("Warning: ") for line in result.stderr.splitlines()] == [True, True]
    result = runner.invoke(app, ["budget", "plan", "--epsilon", "1", "--delta", "1e-3", "--queries", "10",
                                 "--k", "4", "--q", "0.5", "--records", "5000"])
    assert result.exit_code == 2 and "below 1/N" in result.stderr
    # the dp-accounting calibration failure of issue 15 is one line, exit 2 (was a 58-line traceback)
    result = runner.invoke(app, ["budget", "plan", "--epsilon", "0.01", "--delta", "1e-9", "--queries", "100000",
                                 "--k", "2", "--q", "1"])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1 and result.stderr.startswith("Error: ")
