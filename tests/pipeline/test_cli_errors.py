"""The CLI's one error path (root group in ``pipeline.cli``) and the small CLI fixes of issues 10 and 15.

* dprdm errors -> one line and their exit code; an OSError about a path the user typed -> 2; any other error,
  including a FileNotFoundError raised inside the library, -> 1 (a bug), with the traceback only under --debug;
  Ctrl-C -> 130 with one line, or exit 0 and a clear line when it lands after a commit.
* ``--help`` shows no Python types; ``budget plot --shard``; ``history --json`` times are the table's ISO times;
  ``index add`` defaults ``--shard``; ``generate --lambda 0`` works once the budget is spent.
* The light commands do not import torch, diffusers, faiss or open_clip.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from accountant import Ledger, Mechanism, epsilon_for
from pipeline import cli_budget, cli_index
from pipeline.cli import app

RUNNER = CliRunner()
SCOPE = {"k": 5, "q": 0.2, "sigma": 0.5}
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def ledger_path(tmp_path: Path) -> Path:
    path = tmp_path / "budget.sqlite"
    with Ledger(path) as ledger:
        ledger.create_scope("s", epsilon=10.0, delta=1e-6, mechanism=Mechanism(**SCOPE), records=1000)
        ledger.charge(["s"], caller="test")
    return path


def _one_line(result) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


# ----------------------------------------------------------------------------------------- the one error path


def test_an_internal_file_not_found_is_exit_1_not_2(ledger_path: Path, monkeypatch) -> None:
    """A FileNotFoundError about a path the user never typed comes from inside dprdm: a bug, exit 1."""

    def broken(index, ledger):
        raise FileNotFoundError(2, "No such file or directory", "/nonexistent/internal/part.bin")

    monkeypatch.setattr(cli_budget, "_open_read_only", broken)
    result = RUNNER.invoke(app, ["budget", "show", "--ledger", str(ledger_path)])
    assert result.exit_code == 1
    line = _one_line(result)
    assert line.startswith("Error: unexpected internal error (FileNotFoundError") and "--debug" in line
    as_json = RUNNER.invoke(app, ["budget", "show", "--ledger", str(ledger_path), "--json"])
    assert as_json.exit_code == 1 and json.loads(_one_line(as_json))["error"]["type"] == "InternalError"


def test_debug_shows_the_traceback_of_an_internal_error(ledger_path: Path, monkeypatch) -> None:
    def broken(index, ledger):
        raise KeyError("bug")

    monkeypatch.setattr(cli_budget, "_open_read_only", broken)
    result = RUNNER.invoke(app, ["--debug", "budget", "show", "--ledger", str(ledger_path)])
    assert result.exit_code == 1 and isinstance(result.exception, KeyError)


def test_an_os_error_on_a_path_the_user_typed_is_exit_2(ledger_path: Path, monkeypatch) -> None:
    def denied(index, ledger):
        raise PermissionError(13, "Permission denied", str(ledger))

    monkeypatch.setattr(cli_budget, "_open_read_only", denied)
    result = RUNNER.invoke(app, ["budget", "show", "--ledger", str(ledger_path)])
    assert result.exit_code == 2
    assert _one_line(result) == f"Error: {ledger_path}: Permission denied; check the path and its permissions"


def test_ctrl_c_is_one_line_and_exit_130(ledger_path: Path, monkeypatch) -> None:
    def interrupted(index, ledger):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_budget, "_open_read_only", interrupted)
    result = RUNNER.invoke(app, ["budget", "show", "--ledger", str(ledger_path)])
    assert result.exit_code == 130 and _one_line(result).startswith("Error: interrupted")


def test_commands_raise_typed_errors_and_never_translate_them() -> None:
    """No per-command error translation is left: no fail(), no user_errors, no private typer._click import."""
    sources = {path.name: path.read_text() for path in (REPO / "pipeline").glob("*.py")}
    for name, text in sources.items():
        assert "user_errors" not in text and "fail(" not in text, name
        assert "typer._click" not in text.replace("(typer._click)", ""), name
        assert "except ValueError" not in text or name == "mechanism.py", name


# ----------------------------------------------------------------------------------------- issue 15 fixes


@pytest.mark.parametrize(
    "command",
    [[], ["index", "build"], ["index", "add"], ["index", "remove"], ["index", "info"], ["budget", "init"],
     ["budget", "plot"], ["budget", "history"], ["generate"], ["audit"], ["train", "decoder"]],
    ids=lambda c: "-".join(c) or "root",
)  # fmt: skip
def test_help_shows_no_python_types(command) -> None:
    result = RUNNER.invoke(app, [*command, "--help"])
    assert result.exit_code == 0
    for pattern in (r"\{[A-Z_]+\}", r"<[a-z]+(\[[a-z]+\])?>", r"list\[", r"\b(INTEGER|FLOAT|TEXT)\b"):
        assert not re.search(pattern, result.stdout), (pattern, result.stdout)


def test_plot_takes_shard_like_the_rest(ledger_path: Path, tmp_path: Path) -> None:
    for flag in ("--shard", "--scope"):  # --scope stays as the same option's alias
        png = tmp_path / f"plot{flag}.png"
        result = RUNNER.invoke(app, ["budget", "plot", "--ledger", str(ledger_path), flag, "s", "--out", str(png),
                                     "--json"])  # fmt: skip
        assert result.exit_code == 0, result.stderr
        assert json.loads(result.stdout)["scope"] == "s" and png.read_bytes().startswith(b"\x89PNG")


def test_history_json_uses_the_iso_times_of_its_table(ledger_path: Path) -> None:
    as_json = RUNNER.invoke(app, ["budget", "history", "--ledger", str(ledger_path), "--json"])
    table = RUNNER.invoke(app, ["budget", "history", "--ledger", str(ledger_path)])
    assert as_json.exit_code == 0 and table.exit_code == 0
    (charge,) = json.loads(as_json.stdout)["charges"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", charge["time"])
    assert charge["time"] in table.stdout


def test_ctrl_c_after_a_build_committed_says_so_and_exits_0(tmp_path: Path, monkeypatch) -> None:
    from PIL import Image

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(3):
        Image.new("L", (28, 28), 40 * i).save(corpus / f"{i}.png")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_index, "emit", interrupted)  # Ctrl-C while printing the report of a committed build
    result = RUNNER.invoke(app, ["index", "build", str(corpus), "--index", str(tmp_path / "idx"), "--threads", "1"])
    assert result.exit_code == 0
    # blank images are far from the bundled digits: the build's one warning line comes first, then the interrupt
    warning, line = result.stderr.splitlines()
    assert warning.startswith("Warning: ") and "Using real models" in warning
    assert line.startswith("interrupted after the commit: the build of shard 'default' committed")
    assert (tmp_path / "idx" / "manifest.json").is_file()


def test_index_add_defaults_the_shard_like_build(private_copy: Path, tmp_path: Path) -> None:
    from PIL import Image

    extra = tmp_path / "extra"
    extra.mkdir()
    Image.new("L", (28, 28), 7).save(extra / "new.png")
    before = json.loads(RUNNER.invoke(app, ["index", "info", "--index", str(private_copy), "--json"]).stdout)
    result = RUNNER.invoke(app, ["index", "add", str(extra), "--index", str(private_copy), "--threads", "1",
                                 "--json"])  # fmt: skip
    assert result.exit_code == 0, result.stderr
    after = json.loads(RUNNER.invoke(app, ["index", "info", "--index", str(private_copy), "--json"]).stdout)
    assert list(after["shards"]) == ["default"]
    assert after["shards"]["default"]["records"] == before["shards"]["default"]["records"] + 1


def test_lambda_zero_works_once_the_budget_is_spent(private_copy: Path, make_ledger, decoder_dir, tmp_path) -> None:
    one = epsilon_for(Mechanism(**SCOPE), queries=1, delta=1e-6)
    two = epsilon_for(Mechanism(**SCOPE), queries=2, delta=1e-6)
    make_ledger(private_copy / "budget.sqlite", default=SCOPE | {"epsilon": (one + two) / 2})
    args = ["generate", "a handwritten digit 4", "--index", str(private_copy), "--n-images", "1", "--steps", "1",
            "--decoder", str(decoder_dir)]  # fmt: skip
    assert RUNNER.invoke(app, [*args, "--out", str(tmp_path / "first")]).exit_code == 0  # the one query that fits
    refused = RUNNER.invoke(app, [*args, "--out", str(tmp_path / "second")])
    assert refused.exit_code == 3 and "--lambda 0" in _one_line(refused)
    free = RUNNER.invoke(app, [*args, "--lambda", "0", "--out", str(tmp_path / "free"), "--json"])
    assert free.exit_code == 0, free.stderr
    payload = json.loads(free.stdout)
    assert payload["charged"] is False and payload["queries_remaining"] == 0
    with Ledger(private_copy / "budget.sqlite", create=False, read_only=True) as ledger:
        assert len(ledger.history()) == 1


# ----------------------------------------------------------------------------------------- lazy imports

HEAVY = ("torch", "diffusers", "faiss", "open_clip")
_PROBE = """
import sys
from pipeline.cli import app
try:
    app(sys.argv[1:], prog_name="dprdm")
except SystemExit as stop:
    code = stop.code
print("HEAVY=" + ",".join(m for m in {heavy!r} if m in sys.modules), file=sys.stderr)
"""


def _heavy_modules(*args: str) -> set[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", _PROBE.format(heavy=HEAVY), *args], capture_output=True, text=True,
                          env=env, timeout=300, check=False)  # fmt: skip
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("HEAVY=")]
    return {name for name in line.removeprefix("HEAVY=").split(",") if name}


@pytest.mark.parametrize(
    "args",
    [["--help"], ["--version"], ["budget", "show"], ["budget", "history"], ["budget", "verify"],
     ["budget", "plan", "--sigma", "1", "--k", "4", "--q", "0.1", "--queries", "5", "--delta", "1e-6"]],
    ids=["help", "version", "show", "history", "verify", "plan"],
)  # fmt: skip
def test_light_commands_import_no_model_code(args, ledger_path: Path) -> None:
    if args[0] == "budget" and args[1] != "plan":
        args = [*args, "--ledger", str(ledger_path)]
    assert _heavy_modules(*args) == set()


def test_index_info_imports_no_model_code(index_dir: Path) -> None:
    assert _heavy_modules("index", "info", "--index", str(index_dir)) == set()


def _loaded_after(code: str) -> set[str]:
    """The HEAVY modules a fresh interpreter has loaded after running ``code``."""
    probe = f"import sys\n{code}\nprint(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=300,
                          check=True)  # fmt: skip
    return {name for name in done.stdout.strip().split(",") if name}


def test_importing_the_packages_loads_no_model_code() -> None:
    assert _loaded_after("import index, index.fs, pipeline, accountant") == set()
    names = "PrivateIndex, MemoryShard, IndexKind, Shard, content_id, expand_user, build_index, load_encoder"
    assert _loaded_after(f"from index import {names}") == set()  # the names resolve; nothing heavy yet


def test_reading_an_index_manifest_loads_no_model_code(index_dir: Path) -> None:
    code = f"from index import PrivateIndex\nPrivateIndex.open({str(index_dir)!r}).verify().info()"
    assert _loaded_after(code) == set()


def test_the_demo_reports_errors_through_the_same_path(monkeypatch, capsys) -> None:
    from pipeline import demo
    from pipeline.errors import PrivacyRefusal

    def refused() -> None:
        raise PrivacyRefusal("no budget left in the demo's ledger")

    monkeypatch.setattr(demo, "main", refused)
    monkeypatch.setattr(sys, "argv", ["pipeline.demo"])
    with pytest.raises(SystemExit) as stop:
        demo._run_demo()
    assert stop.value.code == 3
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "Error: no budget left in the demo's ledger" and "make clean" in lines[1]
