"""``dprdm budget`` through the real root CLI (typer CliRunner): JSON shapes, human output, exit codes 0/2/3."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from accountant_testlib import DELTA, MECH, budget_for, raw
from typer.testing import CliRunner

from accountant import Ledger, calibrate_sigma
from pipeline.cli import app

RUNNER = CliRunner()
SHOW_KEYS = {
    "epsilon_budget": float,
    "delta": float,
    "epsilon_spent": float,
    "queries_charged": int,
    "queries_remaining": int,
    "k": int,
    "q": float,
    "sigma": float,
}


def run(*args: str):
    return RUNNER.invoke(app, ["budget", *args])


def ok_json(*args: str) -> dict:
    result = run(*args, "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def charged_ledger(tmp_path: Path) -> Path:
    path = tmp_path / "budget.sqlite"
    with Ledger(path) as book:
        book.create_scope("s", epsilon=budget_for(20), delta=DELTA, mechanism=MECH, records=1000)
        for i in range(3):
            book.charge("s", caller="cli-test", purpose=f"q{i}")
    return path


def test_plan_sigma_to_epsilon_regression_vector():
    out = ok_json(
        "plan", "--sigma", "0.2", "--k", "18", "--q", "0.01", "--queries", "1000", "--delta", "1e-7"
    )
    assert out["epsilon"] == pytest.approx(0.99688, abs=5e-6) and out["optimal_order"] == 25.0
    assert out["noise_multiplier"] == pytest.approx(1.8) and out["sigma"] == 0.2
    assert set(out) >= {"sigma", "noise_multiplier", "epsilon"}


def test_plan_epsilon_to_sigma_never_overshoots():
    out = ok_json("plan", "--epsilon", "2", "--delta", "1e-6", "--queries", "500", "--k", "16", "--q", "0.02")
    assert out["sigma"] == calibrate_sigma(k=16, q=0.02, queries=500, epsilon=2.0, delta=1e-6)
    assert out["epsilon"] <= 2.0 and out["epsilon_target"] == 2.0
    assert out["noise_multiplier"] == pytest.approx(out["sigma"] * 8)
    human = run(
        "plan",
        "--sigma",
        str(out["sigma"]),
        "--delta",
        "1e-6",
        "--queries",
        "500",
        "--k",
        "16",
        "--q",
        "0.02",
    )
    assert human.exit_code == 0 and "noise multiplier" in human.stdout and "add/remove-one" in human.stdout


@pytest.mark.parametrize(
    "args,message",
    [
        (["--k", "4", "--q", "0.1", "--queries", "5", "--delta", "1e-6"], "pass exactly one of --epsilon"),
        (["--epsilon", "1", "--sigma", "1", "--k", "4", "--q", "0.1", "--queries", "5", "--delta", "1e-6"],
         "pass exactly one of --epsilon"),
        (["--sigma", "1", "--k", "4", "--q", "0.1", "--queries", "5"], "missing --delta"),
        (["--sigma", "1", "--k", "4", "--q", "2", "--queries", "5", "--delta", "1e-6"], r"q must be in \(0, 1\]"),
        (["--sigma", "-1", "--k", "4", "--q", "0.5", "--queries", "5", "--delta", "1e-6"], "sigma must be > 0"),
        (["--sigma", "1", "--k", "4", "--q", "0.5", "--queries", "5", "--delta", "1"], r"delta must be in \(0, 1\)"),
    ],
    ids=["neither", "both", "no-delta", "bad-q", "bad-sigma", "bad-delta"],
)  # fmt: skip
def test_plan_input_errors_exit_2_with_one_line(args, message):
    result = run("plan", *args)
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1
    assert re.search(message, result.stderr)


def test_init_show_history_verify_plot_round_trip(tmp_path):
    path = tmp_path / "budget.sqlite"
    created = ok_json(
        "init", "--ledger", str(path), "--shard", "s", "--records", "5000", "--epsilon", "1.5",
        "--delta", "1e-6", "--queries", "200", "--k", "18", "--q", "0.01",
    )  # fmt: skip
    scope = created["scopes"]["s"]
    assert scope["queries_remaining"] >= 200 and scope["records"] == 5000 and scope["epsilon_spent"] == 0.0
    with Ledger(path) as book:
        book.charge("s", caller="svc", purpose="demo")
    shown = ok_json("show", "--ledger", str(path))
    assert list(shown["scopes"]) == ["s"]
    for key, kind in SHOW_KEYS.items():
        assert isinstance(shown["scopes"]["s"][key], kind), key
    assert shown["scopes"]["s"]["queries_charged"] == 1
    history = ok_json("history", "--ledger", str(path), "--scope", "s")
    assert [(c["caller"], c["purpose"], c["count"]) for c in history["charges"]] == [("svc", "demo", 1)]
    assert history["charges"][0]["event"]["class_name"] == "PoissonSampledDpEvent"
    report = ok_json("verify", "--ledger", str(path))
    assert report["ok"] and report["scopes"]["s"]["queries_logged"] == 1
    png = tmp_path / "eps.png"
    plotted = ok_json("plot", "--ledger", str(path), "--scope", "s", "--out", str(png))
    assert plotted["queries_charged"] == 1 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    human = run("show", "--ledger", str(path))
    assert human.exit_code == 0 and "eps spent" in human.stdout and "remaining" in human.stdout
    assert "OK" in run("verify", "--ledger", str(path)).stdout
    assert "svc" in run("history", "--ledger", str(path)).stdout


def test_init_refusals_exit_2_and_write_nothing(tmp_path, charged_ledger):
    fresh = tmp_path / "new.sqlite"
    common = ["--epsilon", "1", "--k", "18", "--q", "0.01", "--sigma", "0.2"]
    result = run(
        "init", "--ledger", str(fresh), "--shard", "x", "--records", "1000", "--delta", "1e-3", *common
    )
    assert result.exit_code == 2 and "must be below 1/N" in result.stderr and not fresh.exists()
    result = run("init", "--ledger", str(fresh), "--shard", "x", "--delta", "1e-6", "--queries", "9", *common)
    assert result.exit_code == 2 and "pass exactly one of --sigma or --queries" in result.stderr
    result = run("init", "--ledger", str(charged_ledger), "--shard", "s", "--delta", "1e-6", *common)
    assert result.exit_code == 2 and "already exist" in result.stderr
    result = run("init", "--ledger", str(fresh), "--delta", "1e-6", *common)
    assert result.exit_code == 2 and "pass --shard NAME" in result.stderr and not fresh.exists()
    result = run("init", "--index", str(tmp_path / "nope"), "--delta", "1e-6", *common)
    assert result.exit_code == 2 and "is not a directory" in result.stderr


def test_read_only_commands_on_a_missing_ledger_exit_3_and_create_nothing(tmp_path):
    for command in (
        ["show"],
        ["history"],
        ["verify"],
        ["plot", "--scope", "s", "--out", str(tmp_path / "p.png")],
    ):
        result = run(*command, "--index", str(tmp_path))
        assert result.exit_code == 3, command
        assert result.stderr.startswith("Error: no ledger at") and "budget init" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_tampered_ledger_exits_3_everywhere(charged_ledger, tmp_path):
    conn = raw(charged_ledger)
    conn.execute("DROP TRIGGER charges_append_only_delete")
    conn.execute("DELETE FROM charges WHERE id = 1")
    conn.close()
    for command in (["show"], ["history"], ["verify"]):
        result = run(*command, "--ledger", str(charged_ledger))
        assert result.exit_code == 3, command
        assert "scope 's' is inconsistent" in result.stderr and result.stderr.count("\n") == 1
    result = run("verify", "--ledger", str(charged_ledger), "--json")
    error = json.loads(result.stderr)["error"]
    assert result.exit_code == 3 and error["type"] == "LedgerUnavailable" and result.stdout == ""
    png = tmp_path / "p.png"
    assert run("plot", "--ledger", str(charged_ledger), "--scope", "s", "--out", str(png)).exit_code == 3
    assert not png.exists()


def test_unknown_scope_and_missing_location_exit_2(charged_ledger, tmp_path):
    result = run("history", "--ledger", str(charged_ledger), "--scope", "zzz")
    assert result.exit_code == 2 and "scope 'zzz' is not in ledger" in result.stderr
    png = tmp_path / "p.png"
    result = run("plot", "--ledger", str(charged_ledger), "--scope", "zzz", "--out", str(png))
    assert result.exit_code == 2 and not png.exists()
    result = run(
        "plot", "--ledger", str(charged_ledger), "--scope", "s", "--out", str(tmp_path / "no" / "p.png")
    )
    assert result.exit_code == 2 and "does not exist" in result.stderr
    result = run("show")
    assert result.exit_code == 2 and "pass --index DIR" in result.stderr


def _one_error_line(result) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


INIT = ["init", "--shard", "s", "--records", "1000", "--k", "1", "--q", "0.5", "--delta", "1e-6"]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--sigma", "1", "--epsilon", "0"], "epsilon must be finite and > 0"),
        (["--sigma", "1", "--epsilon", "1"], "one query with k=1"),  # not even one query fits
        (["--sigma", "6.4e155", "--epsilon", "1"], "noise multiplier"),  # used to overflow: exit 1
        (["--queries", "10", "--epsilon", "1e-9"], "need a noise multiplier"),
    ],
    ids=["epsilon-zero", "first-query-over-budget", "huge-sigma", "calibration-beyond-limit"],
)
def test_refused_init_creates_no_ledger_file(tmp_path, args, fragment):
    path = tmp_path / "budget.sqlite"
    result = run(*INIT, "--ledger", str(path), *args)
    assert result.exit_code == 2
    assert fragment in _one_error_line(result)
    assert list(tmp_path.iterdir()) == []


def test_init_failing_midway_removes_only_the_file_it_created(tmp_path, charged_ledger):
    folder = tmp_path / "new"
    folder.mkdir()
    (
        folder / "budget.sqlite-wal"
    ).mkdir()  # SQLite cannot create its WAL: creation fails after the file exists
    result = run(*INIT, "--ledger", str(folder / "budget.sqlite"), "--sigma", "100", "--epsilon", "1")
    assert result.exit_code == 3 and _one_error_line(result).startswith("Error: ledger")
    assert sorted(p.name for p in folder.iterdir()) == ["budget.sqlite-wal"]
    # an existing ledger is never removed by a refused init, and keeps its charges
    result = run(*INIT, "--ledger", str(charged_ledger), "--sigma", "100", "--epsilon", "1")
    assert result.exit_code == 2 and "already exist" in _one_error_line(result)
    assert ok_json("show", "--ledger", str(charged_ledger))["scopes"]["s"]["queries_charged"] == 3


def test_unknown_home_directory_is_an_input_error():
    for command in ("show", "history", "verify"):
        result = run(command, "--ledger", "~nosuchuser/budget.sqlite")
        assert result.exit_code == 2 and "home directory" in _one_error_line(result)
    result = run(*INIT, "--ledger", "~nosuchuser/budget.sqlite", "--sigma", "100", "--epsilon", "1", "--json")
    assert result.exit_code == 2
    assert json.loads(_one_error_line(result))["error"]["type"] == "AccountantInputError"


def test_unparseable_values_are_one_line_usage_errors(tmp_path):
    path = tmp_path / "budget.sqlite"
    result = run(
        *INIT[:5], "--k", "abc", "--q", "0.5", "--sigma", "1", "--epsilon", "1", "--ledger", str(path)
    )
    assert result.exit_code == 2 and result.stdout == ""
    line = _one_error_line(result)
    assert line.startswith("Error: Invalid value for '--k'") and "dprdm budget init --help" in line
    result = run("plan", "--sigma", "x", "--json")
    assert result.exit_code == 2 and result.stdout == ""
    assert json.loads(_one_error_line(result))["error"]["type"] == "UsageError"
    assert list(tmp_path.iterdir()) == []
