"""Issue 14: a PostgreSQL ledger URL works wherever a ledger path does, end to end through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli import app

pg_cluster = pytest.importorskip("pg_cluster")


@pytest.fixture()
def pg_url() -> str:
    server = pg_cluster.shared_server()
    if server is None:
        pytest.skip(pg_cluster.SKIP_REASON)
    return server.ledger_url("pipe")


def test_index_bound_to_a_postgres_ledger(index_dir: Path, decoder_dir: Path, tmp_path: Path, pg_url: str) -> None:
    runner = CliRunner()
    init = runner.invoke(app, ["budget", "init", "--index", str(index_dir), "--ledger", pg_url, "--epsilon", "2",
                               "--delta", "1e-6", "--queries", "2", "--k", "5", "--q", "0.2", "--json"])
    assert init.exit_code == 0, init.stderr
    assert json.loads(init.stdout)["ledger"].startswith("postgresql://")
    assert not (index_dir / "budget.sqlite").exists()
    args = ["generate", "a handwritten digit 1", "--index", str(index_dir), "--ledger", pg_url, "--n-images", "1",
            "--steps", "1", "--decoder", str(decoder_dir), "--json"]
    codes = [runner.invoke(app, [*args, "--out", str(tmp_path / f"o{i}")]).exit_code for i in range(3)]
    assert codes == [0, 0, 3]
    shown = json.loads(runner.invoke(app, ["budget", "show", "--index", str(index_dir), "--ledger", pg_url,
                                           "--json"]).stdout)
    assert shown["scopes"]["default"]["queries_charged"] == 2
    # a second (file) ledger for the PostgreSQL-bound index is refused
    other = runner.invoke(app, [*args, "--ledger", str(tmp_path / "other.sqlite"), "--out", str(tmp_path / "x")])
    assert other.exit_code == 3 and "exactly one ledger" in other.stderr
