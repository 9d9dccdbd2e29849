"""Usage errors of every ``dprdm`` command: exactly one stderr line (``Error: ...`` or JSON with --json), exit 2.

Click's default (``Usage: ...`` / ``Try ... --help`` / blank line / ``Error: ...``) is replaced by one line in
the root group, for ``CliRunner().invoke(app, ...)`` and the console script alike; ``--help`` is unchanged.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli import app

RUNNER = CliRunner()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["budget", "init", "--k", "abc"], "Invalid value for '--k'"),
        (["budget", "plan", "--q", "half"], "Invalid value for '--q'"),
        (["budget", "show", "--bogus"], "No such option: --bogus"),
        (["budget", "plot", "--ledger", "x.sqlite"], "Missing option '--shard'"),
        (["audit", "--trials", "many"], "Invalid value for '--trials'"),
        (["generate", "a digit", "--n-images", "two"], "Invalid value for '--n-images'"),
        (["index", "info", "--index"], "requires an argument"),
        (["nosuch"], "No such command 'nosuch'"),
        (["budget", "nosuch"], "No such command 'nosuch'"),
    ],
    ids=["init-k", "plan-q", "unknown-option", "missing-option", "audit-trials", "generate-n-images",
         "missing-value", "unknown-command", "unknown-subcommand"],
)  # fmt: skip
def test_usage_errors_are_one_line_exit_2(args, fragment, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = RUNNER.invoke(app, args)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [result.stderr.rstrip("\n")], result.stderr
    assert result.stderr.startswith("Error: ") and fragment in result.stderr
    assert "Usage:" not in result.stderr and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_usage_error_with_json_is_one_json_line():
    result = RUNNER.invoke(app, ["budget", "plan", "--k", "abc", "--json"])
    assert result.exit_code == 2 and result.stdout == ""
    (line,) = result.stderr.splitlines()
    error = json.loads(line)["error"]
    assert error["type"] == "UsageError" and "Invalid value for '--k'" in error["message"]
    assert "see 'dprdm budget plan --help'" in error["message"]


def test_help_and_bare_groups_still_print_help():
    result = RUNNER.invoke(app, ["budget", "init", "--help"])
    assert result.exit_code == 0 and result.stdout.startswith("Usage: ") and "--epsilon" in result.stdout
    for args in ([], ["budget"]):
        result = RUNNER.invoke(app, args)
        assert result.exit_code == 2 and "Usage: " in result.output and "Commands" in result.output


def test_console_script_prints_one_line(tmp_path):
    """The installed entry point (``pipeline.cli:main``), in a real process."""
    script = Path(sys.executable).with_name("dprdm")
    command = [str(script)] if script.exists() else [sys.executable, "-c", "from pipeline.cli import main; main()"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [*command, "budget", "init", "--ledger", str(tmp_path / "l.sqlite"), "--k", "abc"],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [done.stderr.rstrip("\n")], done.stderr
    assert done.stderr.startswith("Error: Invalid value for '--k'")
    assert list(tmp_path.iterdir()) == []
