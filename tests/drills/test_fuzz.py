"""Fuzz the CLI and the Python entry points (hypothesis, bounded examples, in-process ``CliRunner``).

Invariant for every input: the command either succeeds (and then charged exactly one query and wrote its
outputs) or ends in a clear error (exit 2 or 3, exactly one ``Error:`` line, no traceback) having charged
nothing and written nothing (a temporary working directory must stay empty).
"""

from __future__ import annotations

import itertools
import math
import os

import numpy as np
import pytest
from drill_support import add_scope, assert_one_error_line, generate_args, run_cli_result, snapshot
from hypothesis import Phase, example, given, settings
from hypothesis import strategies as st

from accountant import Ledger
from pipeline.errors import PipelineInputError

_numbers = itertools.count()

PROMPTS = st.one_of(
    st.just(""),
    st.text(max_size=80),
    st.text(alphabet=st.characters(codec="utf-8", categories=["Cc", "Co", "Zs", "So"]), max_size=40),
    st.binary(max_size=120).filter(lambda raw: b"\0" not in raw).map(os.fsdecode),  # what argv can carry
    st.builds(
        lambda piece, times: piece * times, st.text(min_size=1, max_size=4), st.integers(2_000, 30_000)
    ),
)
ANY_FLOAT = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, -1.0, 1.0, 1.0000001, 2.0, 1e-12]),
    st.floats(-2.0, 2.0),
    st.floats(1e-6, 1e3),
)
# Bounded runs: no shrinking phase (a failure is reported as found), fixed example counts.
FAST = {"phases": (Phase.explicit, Phase.generate), "deadline": None}


def _charged(ledger_path) -> int:
    with Ledger(ledger_path, create=False) as ledger:
        return ledger.status("default").queries_charged


@pytest.mark.timeout(300)
def test_fuzz_generate_prompts(index_dir, decoder_dir, tmp_path, monkeypatch, drill_counts):
    ledger_path = add_scope(index_dir, queries_fit=10_000, q=0.5, sigma=2.0)
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)

    @settings(max_examples=15, **FAST)
    @given(prompt=PROMPTS)
    def case(prompt):
        out = tmp_path / f"out{next(_numbers)}"
        before = _charged(ledger_path)
        result = run_cli_result(generate_args(index_dir, out, decoder_dir, prompt=prompt))
        after = _charged(ledger_path)
        drill_counts["fuzz: generate prompts tried"] += 1
        if result.exit_code == 0:
            assert after == before + 1 and any(out.glob("*.png")) and any(out.glob("*.json"))
        else:
            assert result.exit_code in (2, 3), (result.exit_code, result.stderr)
            assert_one_error_line(result.stderr)
            assert after == before and not out.exists()
            drill_counts["fuzz: generate prompts refused"] += 1
        assert not any(workdir.iterdir())

    case()


@pytest.mark.timeout(180)
def test_fuzz_budget_init_parameters(tmp_path, monkeypatch, drill_counts):
    monkeypatch.chdir(tmp_path)

    @settings(max_examples=40, **FAST)
    @given(k=st.integers(-3, 40), q=ANY_FLOAT, sigma=ANY_FLOAT, epsilon=ANY_FLOAT, delta=ANY_FLOAT)
    @example(k=10, q=0.01, sigma=1.0, epsilon=2.0, delta=1e-6)  # valid: the success path is always exercised
    @example(k=1, q=0.5, sigma=1.0, epsilon=1.0, delta=1e-6)  # valid, but not even one query fits
    def case(k, q, sigma, epsilon, delta):
        ledger = tmp_path / f"ledger{next(_numbers)}.sqlite"
        args = ["budget", "init", "--ledger", str(ledger), "--shard", "s", "--records", "1000", "--k", str(k),
                "--q", repr(q), "--sigma", repr(sigma), "--epsilon", repr(epsilon), "--delta", repr(delta)]  # fmt: skip
        result = run_cli_result(args)
        drill_counts["fuzz: budget init parameter sets tried"] += 1
        valid = k >= 1 and 0 < q <= 1 and 0 < sigma < math.inf and 0 < epsilon < math.inf and 0 < delta < 1e-3
        if not valid:
            assert result.exit_code == 2, (args, result.stdout, result.stderr)
        if result.exit_code == 0:
            assert ledger.is_file()
            drill_counts["fuzz: budget init accepted"] += 1
        else:
            assert result.exit_code == 2, (args, result.exit_code, result.stderr)  # bad input, never a crash
            assert_one_error_line(result.stderr)
            assert not ledger.exists(), "a refused init left a ledger file"
            drill_counts["fuzz: budget init refused"] += 1

    case()


@pytest.mark.parametrize(
    ("sigma", "epsilon", "fragment"),
    [("1.0", "0.0", "epsilon"), ("1.0", "1.0", "one query"), ("6.4e155", "1.0", "noise multiplier")],
    ids=["epsilon-zero", "first-query-over-budget", "huge-sigma"],
)
def test_refused_budget_init_writes_nothing(sigma, epsilon, fragment, tmp_path):
    ledger = tmp_path / "ledger.sqlite"
    result = run_cli_result(
        ["budget", "init", "--ledger", str(ledger), "--shard", "s", "--records", "1000", "--k", "1", "--q", "0.5",
         "--sigma", sigma, "--epsilon", epsilon, "--delta", "1e-6"]
    )  # fmt: skip
    assert result.exit_code == 2
    assert_one_error_line(result.stderr, fragment)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.timeout(120)
def test_fuzz_audit_parameters(tmp_path, monkeypatch, drill_counts):
    monkeypatch.chdir(tmp_path)

    @settings(max_examples=40, **FAST)
    @given(k=st.integers(-3, 40), q=ANY_FLOAT, sigma=ANY_FLOAT, delta=ANY_FLOAT, trials=st.integers(-5, 30))
    def case(k, q, sigma, delta, trials):
        args = ["audit", "--k", str(k), "--q", repr(q), "--sigma", repr(sigma), "--delta", repr(delta),
                "--trials", str(trials), "--json"]  # fmt: skip
        result = run_cli_result(args)
        drill_counts["fuzz: audit parameter sets tried"] += 1
        valid = k >= 1 and 0 < q <= 1 and 0 <= sigma < math.inf and 0 < delta < 1 and trials >= 4
        assert result.exit_code == (0 if valid else 2) or (valid and result.exit_code == 3), result.stderr
        if result.exit_code == 2:
            assert_one_error_line(result.stderr)
            assert result.stdout == ""
        assert not any(tmp_path.iterdir())

    case()


@pytest.mark.timeout(120)
def test_fuzz_query_embeddings_are_refused_before_the_charge(index_dir, drill_counts):
    from index import PrivateIndex
    from pipeline.retrieve import PrivateRetriever

    ledger_path = add_scope(index_dir, queries_fit=10)
    index = PrivateIndex.open(index_dir)
    dim = index.dim
    bad_vectors = st.one_of(
        st.integers(1, 40).filter(lambda n: n != dim).map(lambda n: np.ones(n) / math.sqrt(n)),
        st.sampled_from([np.nan, np.inf, -np.inf]).map(lambda v: np.full(dim, v)),
        st.floats(0.0, 0.9).map(lambda s: np.full(dim, s / math.sqrt(dim))),  # not unit norm (incl. zero)
        st.just(np.ones((2, dim)) / math.sqrt(dim)),
        st.just(np.array([], dtype=np.float32)),
    )
    with Ledger(ledger_path, create=False) as ledger:
        retriever = PrivateRetriever(index, ledger)

        @settings(max_examples=40, **FAST)
        @given(vector=bad_vectors)
        def case(vector):
            drill_counts["fuzz: bad query embeddings tried"] += 1
            with pytest.raises(PipelineInputError) as info:
                retriever.retrieve(vector)
            assert "\n" not in str(info.value)
            assert ledger.status("default").queries_charged == 0

        case()


def test_fuzz_audit_embeddings(drill_counts):
    from pipeline.audit import run_audit

    shapes = st.tuples(st.integers(1, 5), st.integers(2, 6))
    bad = st.one_of(
        shapes.map(lambda s: np.full(s, np.nan)),
        shapes.map(lambda s: np.full(s, -np.inf)),
        shapes.map(np.zeros),
        st.integers(0, 5).map(np.ones),
        st.integers(0, 3).map(lambda n: np.ones((n, 0))),
        st.just(np.array([["x", "y"]])),
    )

    @settings(max_examples=40, **FAST)
    @given(embeddings=bad)
    def case(embeddings):
        drill_counts["fuzz: bad audit embeddings tried"] += 1
        with pytest.raises(PipelineInputError) as info:
            run_audit(k=2, q=0.5, sigma=0.1, delta=1e-5, trials=8, embeddings=embeddings)
        assert "\n" not in str(info.value)

    case()


ARGV_TEXT = st.binary(min_size=1, max_size=40).filter(lambda raw: b"\0" not in raw).map(os.fsdecode)


@pytest.mark.timeout(120)
def test_fuzz_paths(index_dir, tmp_path, monkeypatch, drill_counts):
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    before = snapshot(index_dir)

    @settings(max_examples=25, **FAST)
    @given(path=ARGV_TEXT, shard=ARGV_TEXT)
    def case(path, shard):
        commands = [
            ["index", "info", "--index", path],
            ["audit", "--index", path, "--trials", "8"],
            ["audit", "--index", str(index_dir), "--shard", shard, "--trials", "8"],
            ["budget", "show", "--ledger", path],
            ["generate", "a digit", "--index", path, "--out", "out"],
            ["generate", "a digit", "--index", str(index_dir), "--shard", shard, "--out", "out"],
        ]
        for args in commands:
            result = run_cli_result(args)
            drill_counts["fuzz: path/shard commands tried"] += 1
            assert result.exit_code in (2, 3), (args, result.exit_code, result.stdout, result.stderr)
            assert_one_error_line(result.stderr)
        assert not any(workdir.iterdir()), "a refused command wrote into the working directory"

    case()
    assert snapshot(index_dir) == before


@pytest.mark.parametrize(
    "make_args",
    [
        lambda idx, tmp, dec: generate_args(idx, tmp / "afile" / "sub", dec),
        lambda idx, tmp, dec: generate_args(idx, tmp / "afile", dec),
        lambda idx, tmp, dec: [*generate_args(idx, tmp / "out", dec), "--shard", "nope"],
        lambda idx, tmp, dec: ["index", "build", str(tmp / "cwd"), "--index", "/proc/dprdm-not-writable"],
        lambda idx, tmp, dec: ["index", "build", str(tmp / "cwd"), "--index", str(tmp / "afile")],
        lambda idx, tmp, dec: ["budget", "init", "--ledger", "/proc/dprdm.sqlite", "--shard", "s", "--records",
                               "100", "--k", "3", "--q", "0.5", "--sigma", "1", "--epsilon", "1", "--delta", "1e-5"],
        lambda idx, tmp, dec: ["budget", "init", "--ledger", str(tmp / "no" / "such" / "dir.sqlite"), "--shard",
                               "s", "--records", "100", "--k", "3", "--q", "0.5", "--sigma", "1", "--epsilon", "1",
                               "--delta", "1e-5"],
        lambda idx, tmp, dec: ["audit", "--index", str(idx), "--shard", "nope", "--trials", "8"],
        lambda idx, tmp, dec: ["audit", "--index", str(tmp / "afile"), "--trials", "8"],
    ],
    ids=["out-under-a-file", "out-is-a-file", "unknown-shard", "index-in-proc", "index-is-a-file",
         "ledger-in-proc", "ledger-dir-missing", "audit-unknown-shard", "audit-index-is-a-file"],
)  # fmt: skip
def test_unwritable_or_unknown_targets(
    make_args, index_dir, decoder_dir, tmp_path, monkeypatch, drill_counts
):
    ledger_path = add_scope(index_dir, queries_fit=5)
    (tmp_path / "afile").write_text("not a folder")
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    before = snapshot(tmp_path)
    result = run_cli_result(make_args(index_dir, tmp_path, decoder_dir))
    drill_counts["fuzz: unwritable/unknown target cases tried"] += 1
    assert result.exit_code in (2, 3), (result.exit_code, result.stdout, result.stderr)
    assert_one_error_line(result.stderr)
    assert _charged(ledger_path) == 0
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before
    assert {k for k in set(after) - set(before) if not k.endswith(("-wal", "-shm"))} == set()


@pytest.mark.parametrize(
    "args",
    [["index", "info", "--index", "~nosuchuser/idx"], ["budget", "show", "--ledger", "~nosuchuser/l.sqlite"],
     ["generate", "a digit", "--index", "~nosuchuser/idx"],
     ["budget", "init", "--ledger", "~nosuchuser/l.sqlite", "--shard", "s", "--records", "100", "--k", "3",
      "--q", "0.5", "--sigma", "1", "--epsilon", "5", "--delta", "1e-5"]],
    ids=["index-info", "budget-show", "generate", "budget-init"],
)  # fmt: skip
def test_unknown_home_directory_is_an_input_error(args):
    result = run_cli_result(args)
    assert result.exit_code == 2, repr(result.exception)
    assert_one_error_line(result.stderr, "~nosuchuser")


def test_audit_unknown_home_directory_is_an_input_error():
    result = run_cli_result(["audit", "--index", "~nosuchuser/idx"])
    assert result.exit_code == 2
    assert_one_error_line(result.stderr, "home directory")
