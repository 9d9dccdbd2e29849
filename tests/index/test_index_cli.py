"""``dprdm index build|add|remove|info`` through the in-process CliRunner: JSON shapes, errors, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from index_corpora import noise_image, write_good_images
from typer.testing import CliRunner

from index import PrivateIndex
from index.sources import content_id
from pipeline.cli import app

runner = CliRunner()


def _run(*args: str | Path):
    return runner.invoke(app, ["index", *map(str, args)])


def _ok_json(result) -> dict:
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)




def test_build_add_remove_info_json(tmp_path: Path, tiny_model: str, messy_corpus) -> None:
    folder, _ = messy_corpus
    ix = tmp_path / "ix"
    built = _ok_json(
        _run("build", folder, "--index", ix, "--model", tiny_model, "--batch-size", "8", "--json")
    )
    assert {"records", "dim", "index_type", "shards", "skipped"} <= set(built)
    assert built["dim"] == 16 and built["index_type"] == "flat" and built["records"] > 0
    assert all(set(s) >= {"source", "reason"} for s in built["skipped"]) and built["skipped"]
    assert _ok_json(_run("info", "--index", ix, "--json")) == built == PrivateIndex.open(ix).info()

    write_good_images(tmp_path / "extra", 3, start=50)
    added = _ok_json(_run("add", tmp_path / "extra", "--index", ix, "--shard", "extra", "--json"))
    assert added["shards"]["extra"] == {"records": 3, "skipped": 0, "empty": False, "storage": "float32"}
    assert added["records"] == built["records"] + 3

    victim = content_id(noise_image(51))
    removed = _ok_json(_run("remove", "--index", ix, "--id", str(victim), "--json"))
    assert removed["removed"] == 1 and removed["records"] == built["records"] + 2
    removed = _ok_json(_run("remove", "--index", ix, "--source", tmp_path / "extra", "--json"))
    assert removed["removed"] == 2 and removed["shards"]["extra"]["records"] == 0
    assert removed["unmatched_ids"] == [] and removed["unmatched_sources"] == []
    nothing = _run("remove", "--index", ix, "--id", "7")
    assert nothing.exit_code == 2 and "no record matches --id 7" in nothing.stderr


def test_human_output(tmp_path: Path, tiny_model: str, corpus: Path) -> None:
    result = _run("build", corpus, "--index", tmp_path / "ix", "--model", tiny_model)
    assert result.exit_code == 0 and "24 records, dim 16, index type flat" in result.stdout
    assert "shard default: 24 records" in _run("info", "--index", tmp_path / "ix").stdout


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["info", "--index", "{tmp}/missing"], 2, "is not a dprdm index"),
        (["build", "{tmp}/nope", "--index", "{tmp}/ix"], 2, "does not exist"),
        (["build", "{corpus}", "--index", "{tmp}/ix", "--index-type", "hnsw"], 3, "sensitivity 2/k"),
        (["build", "{corpus}", "--index", "{tmp}/ix", "--index-type", "ivf-flat"], 3, "--public-train"),
        (
            ["build", "{corpus}", "--index", "{tmp}/ix", "--model", "local-dir:{tmp}/none"],
            2,
            "never downloads",
        ),
        (["remove", "--index", "{tmp}/ix"], 2, "exactly one of them"),
        (["remove", "--index", "{tmp}/ix", "--id", "1", "--source", "x"], 2, "exactly one of them"),
    ],
    ids=["info-missing", "bad-source", "hnsw", "ivf-no-public", "no-model", "remove-nothing", "remove-both"],
)
def test_errors_are_one_line_with_exit_codes(
    tmp_path: Path, corpus: Path, args, code: int, fragment: str
) -> None:
    argv = [a.format(tmp=tmp_path, corpus=corpus) for a in args]
    result = runner.invoke(app, ["index", *argv])
    assert result.exit_code == code
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1
    assert fragment in result.stderr and result.stdout == ""
    json_result = runner.invoke(app, ["index", *argv, "--json"])
    assert json_result.exit_code == code
    assert fragment in json.loads(json_result.stderr)["error"]["message"]


def test_corrupt_index_exits_3(tmp_path: Path, tiny_model: str, corpus: Path) -> None:
    ix = tmp_path / "ix"
    _ok_json(_run("build", corpus, "--index", ix, "--model", tiny_model, "--json"))
    (ix / "manifest.json").write_text("{")
    result = _run("info", "--index", ix)
    assert result.exit_code == 3 and "unreadable" in result.stderr
