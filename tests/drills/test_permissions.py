"""Permissions: the index directory, every file in it and the ledger are private to their owner (0700 / 0600)."""

from __future__ import annotations

import stat

from drill_support import add_scope, generate_args, run_cli_result


def _group_or_other_bits(path) -> int:
    return stat.S_IMODE(path.stat().st_mode) & 0o077


def test_index_and_ledger_are_not_readable_by_others(corpus, decoder_dir, tmp_path, drill_counts):
    index_dir = tmp_path / "idx"
    build = run_cli_result(["index", "build", str(corpus), "--index", str(index_dir), "--json"])
    assert build.exit_code == 0, build.stderr
    ledger_path = add_scope(index_dir, queries_fit=3)
    query = run_cli_result(generate_args(index_dir, tmp_path / "out", decoder_dir))
    assert query.exit_code == 0, query.stderr  # the ledger's WAL side files exist now too

    checked = [index_dir, *sorted(index_dir.rglob("*"))]
    assert ledger_path in checked
    loose = [str(p.relative_to(tmp_path)) for p in checked if _group_or_other_bits(p)]
    assert loose == [], f"readable by group/others: {loose}"
    assert stat.S_IMODE(index_dir.stat().st_mode) == 0o700
    drill_counts["permission checks (paths, 0700/0600, after build + budget + query)"] += len(checked)


def test_budget_init_ledger_is_private(tmp_path, drill_counts):
    ledger_path = tmp_path / "budget.sqlite"
    result = run_cli_result(
        ["budget", "init", "--ledger", str(ledger_path), "--shard", "s", "--records", "1000", "--k", "8",
         "--q", "0.1", "--queries", "100", "--epsilon", "5", "--delta", "1e-6"]
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    files = sorted(tmp_path.glob("budget.sqlite*"))
    assert files and all(_group_or_other_bits(path) == 0 for path in files), [
        oct(p.stat().st_mode) for p in files
    ]
    drill_counts["permission checks (paths, 0700/0600, after build + budget + query)"] += len(files)
