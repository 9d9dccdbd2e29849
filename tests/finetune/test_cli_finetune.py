"""``dprdm finetune`` end to end: one training charge in the index's own ledger, the adapter used by generate."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from accountant import Ledger
from pipeline.cli import app

RUNNER = CliRunner()


def _ok(args: list[str]) -> dict:
    result = RUNNER.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_finetune_then_generate_with_the_adapter(shared_index, decoder_dir: Path, tmp_path: Path) -> None:
    index = str(shared_index.path)
    _ok(["budget", "init", "--index", index, "--epsilon", "20", "--delta", "1e-5", "--k", "10", "--q", "0.5",
         "--sigma", "0.3", "--json"])
    result = _ok(["finetune", "--index", index, "--shard", "default", "--out", str(tmp_path / "adapter"),
                  "--epsilon", "3", "--epochs", "1", "--batch-size", "20", "--physical-batch-size", "20",
                  "--trainable", "attention", "--decoder", str(decoder_dir), "--threads", "1", "--json"])
    assert result["epsilon"] <= 3.0 and result["records"] == 200 and result["trainable"] == "attention"
    assert {"noise_multiplier", "sample_rate", "steps", "trainable_parameters", "total_parameters", "receipt",
            "adapter", "delta"} <= set(result)
    shown = _ok(["budget", "show", "--index", index, "--json"])["scopes"]["default"]
    assert shown["events_charged"] == 1 and shown["queries_charged"] == 0
    history = _ok(["budget", "history", "--index", index, "--json"])["charges"]
    assert len(history) == 1 and history[0]["purpose"].startswith("finetune attention")
    generated = _ok(["generate", "a handwritten digit 5", "--index", index, "--decoder", str(decoder_dir),
                     "--adapter", str(tmp_path / "adapter"), "--n-images", "1", "--steps", "1",
                     "--out", str(tmp_path / "out"), "--json"])
    assert generated["charged"] and len(generated["images"]) == 1


def test_finetune_over_budget_is_refused_with_nothing_charged(shared_index, decoder_dir: Path,
                                                              tmp_path: Path) -> None:
    index = str(shared_index.path)
    _ok(["budget", "init", "--index", index, "--epsilon", "2", "--delta", "1e-5", "--k", "10", "--q", "0.5",
         "--sigma", "1", "--json"])
    result = RUNNER.invoke(app, ["finetune", "--index", index, "--out", str(tmp_path / "adapter"), "--epsilon", "5",
                                 "--epochs", "1", "--batch-size", "20", "--decoder", str(decoder_dir)])
    assert result.exit_code == 3 and result.stderr.count("\n") == 1
    with Ledger(shared_index.path / "budget.sqlite", read_only=True) as ledger:
        assert ledger.history() == []
    assert not (tmp_path / "adapter").exists()
    other = RUNNER.invoke(app, ["finetune", "--index", index, "--out", str(tmp_path / "adapter"), "--epsilon", "1",
                                "--epochs", "1", "--decoder", str(decoder_dir), "--ledger", str(tmp_path / "x.sqlite")])
    assert other.exit_code == 3 and "exactly one ledger" in other.stderr
