"""Issue 9: the budget belongs to the records, not to a ledger file; issue 10: one query reads its ledger once.

Each bypass the privacy review found is driven through the real CLI (in-process) on a real index and ledger:
a fresh ledger, moving records to a new shard, a scope without N, an index that grows past 1/delta. Then the
refusals that must cost nothing (decoder width of every family) and a counting wrapper over the ledger.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from accountant import Ledger
from index import PrivateIndex
from pipeline.cli import app
from pipeline.data import load_mnist_split, to_pil

SCOPE = ["--k", "5", "--q", "0.2", "--delta", "1e-6"]


@pytest.fixture()
def runner() -> CliRunner:
    return CliRunner()


def _ok(result) -> dict:
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout) if result.stdout.strip().startswith(("{", "[")) else {}


def _init(runner, index: Path, *extra: str, queries: int = 2, epsilon: float = 2.0):
    return runner.invoke(app, ["budget", "init", "--index", str(index), "--epsilon", str(epsilon),
                               "--queries", str(queries), *SCOPE, "--json", *extra])


def _generate(runner, index: Path, decoder_dir: Path, out: Path, *extra: str):
    return runner.invoke(app, ["generate", "a handwritten digit 3", "--index", str(index), "--n-images", "1",
                               "--steps", "1", "--decoder", str(decoder_dir), "--out", str(out), "--json", *extra])


def _charges(path: Path) -> int:
    with Ledger(path, create=False, read_only=True) as ledger:
        return len(ledger.history())


def _spend_all(runner, index: Path, decoder_dir: Path, tmp_path: Path) -> None:
    """Generate until the scope refuses (exit 3)."""
    for attempt in range(20):
        result = _generate(runner, index, decoder_dir, tmp_path / f"out{attempt}")
        if result.exit_code == 3:
            return
        assert result.exit_code == 0, result.stderr
    raise AssertionError("the budget never ran out")


def test_fresh_ledger_cannot_reset_a_spent_index(runner, index_dir: Path, decoder_dir: Path, tmp_path: Path) -> None:
    _ok(_init(runner, index_dir))
    _spend_all(runner, index_dir, decoder_dir, tmp_path)
    bound = PrivateIndex.open(index_dir).ledger_binding
    assert bound is not None and bound["location"] == "budget.sqlite"
    fresh = tmp_path / "fresh.sqlite"
    # a second ledger for the same index is refused, and nothing is created
    result = _init(runner, index_dir, "--ledger", str(fresh))
    assert result.exit_code == 3 and "exactly one ledger" in result.stderr and not fresh.exists()
    assert "new --ledger" not in result.stderr
    # a ledger made elsewhere (without the index) is never charged for a query over the index
    _ok(runner.invoke(app, ["budget", "init", "--ledger", str(fresh), "--shard", "default", "--records", "300",
                            "--epsilon", "2", "--queries", "2", *SCOPE, "--json"]))
    result = _generate(runner, index_dir, decoder_dir, tmp_path / "again", "--ledger", str(fresh))
    assert result.exit_code == 3 and "exactly one ledger" in result.stderr
    assert _charges(fresh) == 0 and not (tmp_path / "again").exists()
    # replacing the bound ledger file by a new one (same path, new id) is refused too
    (index_dir / "budget.sqlite").rename(tmp_path / "moved-away.sqlite")
    for side in ("-wal", "-shm"):
        Path(f"{index_dir / 'budget.sqlite'}{side}").unlink(missing_ok=True)
    Ledger(index_dir / "budget.sqlite").close()
    result = _generate(runner, index_dir, decoder_dir, tmp_path / "replaced")
    assert result.exit_code == 3 and "is not the ledger of index" in result.stderr


def _digit_folder(index: Path, digit: int) -> str:
    return next(src for _, _, src in PrivateIndex.open(index).records() if f"/{digit}/" in src).rsplit("/", 1)[0]


def test_moved_records_carry_their_spent_budget(runner, index_dir: Path, decoder_dir: Path, tmp_path: Path) -> None:
    _ok(_init(runner, index_dir))
    _spend_all(runner, index_dir, decoder_dir, tmp_path)
    spent = Ledger(index_dir / "budget.sqlite", read_only=True).status("default")
    folder = _digit_folder(index_dir, 3)
    removed = _ok(runner.invoke(app, ["index", "remove", "--index", str(index_dir), "--source", folder, "--json"]))
    assert removed["removed"] == 30
    _ok(runner.invoke(app, ["index", "build", folder, "--index", str(index_dir), "--shard", "moved", "--json"]))
    created = _ok(_init(runner, index_dir, "--shard", "moved"))["scopes"]["moved"]
    # the new scope starts from the loss its members carried: exhausted, so a query is refused, nothing charged
    assert created["rdp_carried"] >= spent.rdp_spent * (1 - 1e-12)
    assert created["queries_remaining"] == 0
    before = _charges(index_dir / "budget.sqlite")
    result = _generate(runner, index_dir, decoder_dir, tmp_path / "moved-out", "--shard", "moved")
    assert result.exit_code == 3
    assert _charges(index_dir / "budget.sqlite") == before and not (tmp_path / "moved-out").exists()


def test_records_added_back_raise_their_scope(runner, index_dir: Path, decoder_dir: Path, tmp_path: Path) -> None:
    """A record that left a spent shard and comes back into a fresh scope brings its loss along (admit)."""
    _ok(_init(runner, index_dir, queries=4, epsilon=4.0))
    _ok(_generate(runner, index_dir, decoder_dir, tmp_path / "one"))
    folder = _digit_folder(index_dir, 7)
    _ok(runner.invoke(app, ["index", "remove", "--index", str(index_dir), "--source", folder, "--json"]))
    _ok(runner.invoke(app, ["index", "build", folder, "--index", str(index_dir), "--shard", "other", "--json"]))
    _ok(_init(runner, index_dir, "--shard", "other", queries=4, epsilon=4.0))
    with Ledger(index_dir / "budget.sqlite", read_only=True) as ledger:
        assert ledger.status("other").queries_remaining == ledger.status("default").queries_remaining
        assert ledger.status("other").rdp_carried > 0


def test_delta_is_checked_against_the_current_record_count(runner, index_dir: Path, decoder_dir: Path,
                                                           tmp_path: Path) -> None:
    # delta = 0.003 < 1/300 is accepted for the 300-record shard ...
    _ok(runner.invoke(app, ["budget", "init", "--index", str(index_dir), "--epsilon", "5", "--queries", "5",
                            "--k", "5", "--q", "0.2", "--delta", "0.003", "--json"]))
    _ok(_generate(runner, index_dir, decoder_dir, tmp_path / "first"))
    # ... until the shard grows past 1/delta: the next query is refused (exit 3), nothing charged or written
    split = load_mnist_split()
    extra = tmp_path / "extra"
    extra.mkdir()
    for row in range(len(split.private_labels) - 60, len(split.private_labels)):
        to_pil(split.private_images[row]).save(extra / f"x{row}.png")
    added = _ok(runner.invoke(app, ["index", "add", str(extra), "--index", str(index_dir), "--json"]))
    assert added["shards"]["default"]["records"] > 1 / 0.003
    before = _charges(index_dir / "budget.sqlite")
    result = _generate(runner, index_dir, decoder_dir, tmp_path / "second")
    assert result.exit_code == 3 and "delta" in result.stderr.lower()
    assert _charges(index_dir / "budget.sqlite") == before and not (tmp_path / "second").exists()


def test_scope_without_record_count_cannot_be_charged(make_ledger, index_dir: Path, encoder) -> None:
    """A scope created with a delta that is too large for the shard (no N given at creation) is refused."""
    from accountant import DeltaRefused
    from pipeline.retrieve import PrivateRetriever

    ledger = make_ledger(default={"k": 5, "q": 0.2, "sigma": 0.5, "delta": 0.1})
    query = encoder.encode_text(["a handwritten digit 3"])[0]
    with pytest.raises(DeltaRefused):
        PrivateRetriever(PrivateIndex.open(index_dir), ledger).retrieve(query / np.linalg.norm(query))
    assert ledger.history() == []


@pytest.mark.parametrize("family", ["tiny", "unclip", "kandinsky"])
def test_decoder_width_mismatch_is_refused_before_the_charge(runner, index_dir: Path, tmp_path: Path,
                                                            family: str) -> None:
    from decoder_folders import build_kandinsky_folder, build_tiny_folder, build_unclip_folder

    builders = {"tiny": build_tiny_folder, "unclip": build_unclip_folder, "kandinsky": build_kandinsky_folder}
    folder = builders[family](tmp_path / family, dim=32)  # the index's width is 16
    _ok(_init(runner, index_dir))
    result = _generate(runner, index_dir, folder, tmp_path / "out")
    assert result.exit_code == 2 and "decoder condition width 32" in result.stderr
    assert _charges(index_dir / "budget.sqlite") == 0 and not (tmp_path / "out").exists()


class _Counting:
    """A ledger proxy that counts every method call (the real ledger does the work)."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self.calls: list[str] = []

    def __getattr__(self, name: str):
        attr = getattr(self._ledger, name)
        if not callable(attr):
            return attr
        def counted(*args, **kwargs):
            self.calls.append(name)
            return attr(*args, **kwargs)
        return counted


def test_one_generate_reads_its_ledger_once(make_ledger, index_dir: Path, encoder, decoder) -> None:
    from pipeline import DPRDMPipeline, PrivateRetriever

    ledger = _Counting(make_ledger(default={"k": 5, "q": 0.2, "sigma": 0.5}))
    pipe = DPRDMPipeline(PrivateRetriever(PrivateIndex.open(index_dir), ledger), encoder, decoder)
    result = pipe("a handwritten digit 3", num_images=1, steps=1)
    # one mechanism resolution (scopes + mechanism per shard), no status read before the charge, one charge, and
    # the post-charge statuses come from the receipt (no status read after it either)
    assert ledger.calls == ["scopes", "mechanism", "charge"]
    assert result.charged and result.statuses == result.receipt.statuses
