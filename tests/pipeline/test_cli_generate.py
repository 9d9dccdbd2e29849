"""``dprdm generate``: exit codes, the --json document, and the refusal path that writes and charges nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from accountant import Ledger
from pipeline.cli import app

SCOPE = {"k": 5, "q": 0.2, "sigma": 0.5}
FORBIDDEN = ("ids", "scores", "distances", "neighbour", "neighbor", "seed", "aggregate", "vector")


@pytest.fixture()
def runner() -> CliRunner:
    return CliRunner()


def _generate(runner: CliRunner, *args: str):
    return runner.invoke(app, ["generate", *args])


def _ledger_rows(path: Path) -> int:
    with Ledger(path, create=False, read_only=True) as ledger:
        return len(ledger.history())


def test_generate_json_writes_images_and_reports_the_budget(runner, private_copy: Path, make_ledger, decoder_dir, tmp_path) -> None:
    make_ledger(private_copy / "budget.sqlite", default=SCOPE | {"epsilon": 10.0})
    out = tmp_path / "out"
    result = _generate(runner, "a handwritten digit 2", "--index", str(private_copy), "--n-images", "2", "--steps", "2",
                       "--decoder", str(decoder_dir), "--out", str(out), "--seed", "1", "--json")
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert {"images", "grid", "epsilon_spent", "queries_remaining", "record", "k", "q", "sigma", "lambda"} <= set(payload)
    assert len(payload["images"]) == 2 and all(Path(p).is_file() for p in payload["images"])
    assert Path(payload["grid"]).is_file()
    assert payload["epsilon_spent"] > 0 and isinstance(payload["queries_remaining"], int)
    record = json.loads(Path(payload["record"]).read_text())
    assert record["prompt"] == "a handwritten digit 2" and record["epsilon_spent"] == payload["epsilon_spent"]
    for text in (result.stdout, Path(payload["record"]).read_text()):
        assert not any(word in text for word in FORBIDDEN), text
    assert _ledger_rows(private_copy / "budget.sqlite") == 1


def test_human_output_and_two_shards(runner, two_shard_dir: Path, make_ledger, decoder_dir, tmp_path) -> None:
    ledger = two_shard_dir / "budget.sqlite"  # the index's own ledger, named explicitly
    make_ledger(ledger, low=SCOPE | {"epsilon": 10.0}, high=SCOPE | {"epsilon": 10.0})
    result = _generate(runner, "a handwritten digit 8", "--index", str(two_shard_dir), "--shard", "low", "--shard", "high",
                       "--ledger", str(ledger), "--n-images", "1", "--steps", "1", "--decoder", str(decoder_dir),
                       "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.stderr
    assert "queries remaining" in result.stdout
    with Ledger(ledger, create=False, read_only=True) as opened:
        assert {row.scope for row in opened.history()} == {"low", "high"}


def test_image_query(runner, private_copy: Path, make_ledger, decoder_dir, tmp_path, built_single) -> None:
    make_ledger(private_copy / "budget.sqlite", default=SCOPE | {"epsilon": 10.0})
    png = next((built_single.parent / "pngs").rglob("*.png"))
    result = _generate(runner, "--image", str(png), "--index", str(private_copy), "--n-images", "1", "--steps", "1",
                       "--decoder", str(decoder_dir), "--out", str(tmp_path / "out"), "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["query_kind"] == "image"


def test_exhausted_budget_exits_3_and_releases_nothing(runner, private_copy: Path, make_ledger, decoder_dir, tmp_path) -> None:
    from accountant import Mechanism, epsilon_for

    one = epsilon_for(Mechanism(**SCOPE), queries=1, delta=1e-6)
    two = epsilon_for(Mechanism(**SCOPE), queries=2, delta=1e-6)
    make_ledger(private_copy / "budget.sqlite", default=SCOPE | {"epsilon": (one + two) / 2})
    args = ["a handwritten digit 4", "--index", str(private_copy), "--n-images", "1", "--steps", "1",
            "--decoder", str(decoder_dir)]
    assert _generate(runner, *args, "--out", str(tmp_path / "first")).exit_code == 0
    rows = _ledger_rows(private_copy / "budget.sqlite")
    refused = _generate(runner, *args, "--out", str(tmp_path / "second"))
    assert refused.exit_code == 3
    line = refused.stderr.strip()
    assert line.startswith("Error: privacy budget of shard 'default' is exhausted: epsilon spent") and "\n" not in line
    assert "nothing was retrieved or written" in line
    assert not (tmp_path / "second").exists()
    assert _ledger_rows(private_copy / "budget.sqlite") == rows


def test_missing_ledger_is_a_refusal_that_says_how_to_create_it(runner, private_copy: Path, decoder_dir, tmp_path) -> None:
    result = _generate(runner, "a digit", "--index", str(private_copy), "--out", str(tmp_path / "out"), "--json")
    assert result.exit_code == 3
    error = json.loads(result.stderr)["error"]
    assert error["type"] == "PrivacyRefusal" and "dprdm budget init" in error["message"]
    assert not (tmp_path / "out").exists() and not (private_copy / "budget.sqlite").exists()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ([], "exactly one query"),
        (["a digit", "--lambda", "2"], "lambda must be a number in [0, 1]"),
        (["a digit", "--n-images", "0"], "num_images must be an integer"),
        (["a digit", "--shard", "nope"], "unknown shard 'nope'"),
        (["a digit", "--image", "missing.png"], "exactly one query"),
    ],
    ids=["no-query", "lambda", "n-images", "unknown-shard", "prompt-and-image"],
)
def test_bad_input_exits_2_with_one_line(runner, private_copy: Path, make_ledger, decoder_dir, tmp_path, args, fragment) -> None:
    make_ledger(private_copy / "budget.sqlite", default=SCOPE | {"epsilon": 10.0})
    result = _generate(runner, *args, "--index", str(private_copy), "--decoder", str(decoder_dir),
                       "--out", str(tmp_path / "out"))
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("Error: ") and fragment in result.stderr and result.stderr.count("\n") == 1
    assert _ledger_rows(private_copy / "budget.sqlite") == 0 and not (tmp_path / "out").exists()


def test_end_to_end_on_the_bundled_default(runner, private_copy: Path, tmp_path) -> None:
    """Bundled encoder (index) and bundled decoder: budget init, two prompts, budget show, through the CLI."""
    init = runner.invoke(app, ["budget", "init", "--index", str(private_copy), "--epsilon", "10", "--delta", "1e-6",
                               "--queries", "100", "--k", "10", "--q", "0.2", "--json"])
    assert init.exit_code == 0, init.stderr
    remaining = []
    for digit in (1, 7):
        result = _generate(runner, f"a handwritten digit {digit}", "--index", str(private_copy), "--n-images", "2",
                           "--steps", "2", "--out", str(tmp_path / "out"), "--seed", "0", "--json")
        assert result.exit_code == 0, result.stderr
        payload = json.loads(result.stdout)
        assert len(payload["images"]) == 2 and Path(payload["grid"]).is_file()
        remaining.append(payload["queries_remaining"])
    assert remaining == [99, 98]
    show = runner.invoke(app, ["budget", "show", "--index", str(private_copy), "--json"])
    assert show.exit_code == 0 and "default" in show.stdout
