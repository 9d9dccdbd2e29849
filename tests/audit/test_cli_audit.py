"""``dprdm audit`` in-process: JSON shape, verdict exit codes, one-line input errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from pipeline.cli import app

runner = CliRunner()


def _audit(*args: str):
    return runner.invoke(app, ["audit", *args])


def test_json_shape_of_a_passing_audit():
    result = _audit(
        "--k",
        "10",
        "--q",
        "1",
        "--sigma",
        "1.0",
        "--delta",
        "1e-5",
        "--trials",
        "200",
        "--queries",
        "100",
        "--json",
    )
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["claimed_epsilon"] == pytest.approx(0.794522033, rel=1e-6)
    assert payload["empirical_epsilon_lower_bound"] <= payload["claimed_epsilon"]
    assert payload["passed"] is True
    assert payload["trials"] == 200 and payload["queries"] == 100
    assert payload["delta"] == 1e-5 and payload["confidence"] == 0.95
    assert payload["claimed_epsilon_queries"] > payload["claimed_epsilon"]
    assert payload["mechanism_rng"] == "secure"
    assert result.stderr == ""


def test_sigma_zero_fails_with_exit_3_and_still_reports():
    result = _audit("--k", "5", "--q", "1", "--sigma", "0", "--trials", "300", "--json")
    assert result.exit_code == 3
    payload = json.loads(result.stdout)
    assert payload["claimed_epsilon"] is None and payload["passed"] is False
    assert payload["empirical_epsilon_lower_bound"] > 3.0
    error = json.loads(result.stderr)["error"]
    assert error["type"] == "AuditFailed" and "sigma = 0" in error["message"]


def test_human_output_names_claim_bound_and_verdict():
    result = _audit("--k", "10", "--q", "1", "--sigma", "1.0", "--trials", "50")
    assert result.exit_code == 0, result.stderr
    for fragment in ("claimed eps", "empirical eps  >=", "verdict        PASS", "add/remove-one"):
        assert fragment in result.stdout


def test_human_failure_is_one_error_line():
    result = _audit("--k", "5", "--q", "1", "--sigma", "0", "--trials", "50")
    assert result.exit_code == 3
    assert "verdict        FAIL" in result.stdout
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: audit failed")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--k", "0", "--q", "0.5", "--sigma", "1"], "k must be an integer >= 1"),
        (["--k", "-2", "--q", "0.5", "--sigma", "1"], "k must be"),
        (["--k", "5", "--q", "0", "--sigma", "1"], "q must be in (0, 1]"),
        (["--k", "5", "--q", "1.5", "--sigma", "1"], "q must be in (0, 1]"),
        (["--k", "5", "--q", "0.5", "--sigma", "-1"], "sigma must be a finite number >= 0"),
        (["--k", "5", "--q", "0.5", "--sigma", "1", "--delta", "0"], "delta must be in (0, 1)"),
        (["--k", "5", "--q", "0.5", "--sigma", "1", "--delta", "1"], "delta must be in (0, 1)"),
        (["--k", "5", "--q", "0.5", "--sigma", "1", "--trials", "0"], "trials must be"),
        (["--k", "5", "--q", "0.5", "--sigma", "1", "--trials", "-5"], "trials must be"),
        (["--k", "5", "--q", "0.5"], "missing --sigma"),
        ([], "missing --k, --q, --sigma"),
        (["--index", "/nonexistent", "--k", "5"], "drop --k"),
        (["--shard", "x", "--k", "5", "--q", "0.5", "--sigma", "1"], "--shard needs --index"),
    ],
    ids=[
        "k0",
        "k-neg",
        "q0",
        "q-big",
        "sigma-neg",
        "delta0",
        "delta1",
        "trials0",
        "trials-neg",
        "no-sigma",
        "nothing",
        "index-and-k",
        "shard-alone",
    ],
)
def test_bad_inputs_exit_2_with_one_line(args, fragment):
    result = _audit(*args)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1
    assert fragment in result.stderr


def test_bad_input_json_error():
    result = _audit("--k", "0", "--q", "0.5", "--sigma", "1", "--json")
    assert result.exit_code == 2
    assert json.loads(result.stderr)["error"]["type"] == "PipelineInputError"


def test_index_audit_reads_the_scope_and_changes_nothing(audited_index):
    ledger = audited_index / "budget.sqlite"
    before = ledger.read_bytes()
    result = _audit("--index", str(audited_index), "--shard", "default", "--trials", "100", "--json")
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert (payload["k"], payload["q"], payload["sigma"], payload["delta"]) == (3, 1.0, 2.0, 1e-3)
    # operator-only (issue 9): the private shard's size N is withheld, the output says who it is for
    assert payload["records"] is None and payload["dim"] == 16
    assert payload["operator_only"] is True and "operator-only" in payload["note"]
    assert 12 not in [value for key, value in payload.items() if isinstance(value, int) and key != "seconds"]
    assert payload["queries"] > 1  # the scope's plan: charged + remaining
    assert payload["claimed_epsilon_queries"] <= 8.0 < payload["claimed_epsilon_queries"] + 1.0
    assert ledger.read_bytes() == before
    from accountant import Ledger

    with Ledger(ledger, create=False, read_only=True) as book:
        assert book.status("default").queries_charged == 0


def test_index_audit_defaults_to_the_only_shard(audited_index):
    result = _audit("--index", str(audited_index), "--trials", "20", "--json")
    assert result.exit_code == 0, result.stderr


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["--shard", "nope"], 2, "unknown shard 'nope'"),
        (["--k", "3"], 2, "drop --k"),
    ],
    ids=["unknown-shard", "conflicting-flags"],
)
def test_index_audit_refusals(audited_index, args, code, fragment):
    result = _audit("--index", str(audited_index), *args)
    assert result.exit_code == code
    assert result.stderr.count("\n") == 1 and fragment in result.stderr


def test_index_audit_without_ledger_fails_closed(audited_index, tmp_path):
    import shutil

    copy = tmp_path / "idx"
    shutil.copytree(audited_index, copy)
    for path in copy.glob("budget.sqlite*"):
        path.unlink()
    result = _audit("--index", str(copy), "--trials", "20")
    assert result.exit_code == 3
    assert result.stderr.count("\n") == 1 and not (copy / "budget.sqlite").exists()


def test_index_audit_is_labelled_operator_only_in_help_and_output(audited_index):
    """Issue 9: the uncharged run on the private shard is an operator-only check, in --help and in the output."""
    help_text = " ".join(_audit("--help").stdout.split())
    assert "OPERATOR-ONLY" in help_text and "direct read access to the index files" in help_text
    result = _audit("--index", str(audited_index), "--trials", "20")
    assert result.exit_code == 0, result.stderr
    assert "operator-only check" in result.stdout and "size withheld" in result.stdout
    assert "12 records" not in result.stdout
    synthetic = _audit("--k", "10", "--q", "1", "--sigma", "1.0", "--trials", "20", "--json")
    assert json.loads(synthetic.stdout)["records"] == 1000 and "operator_only" not in json.loads(synthetic.stdout)
