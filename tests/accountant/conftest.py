"""Fixtures for the accountant tests: ledgers in temporary directories, a reference mechanism, raw SQLite access.

No mocks: every test uses a real SQLite file; tampering and corruption are done with a second real connection or
by rewriting bytes of a copy.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from accountant_testlib import DELTA, MECH, N, budget_for

from accountant import Ledger


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    """Where a fresh ledger goes."""
    return tmp_path / "budget.sqlite"


@pytest.fixture
def ledger(ledger_path: Path) -> Iterator[Ledger]:
    """A fresh ledger with scope 'a' whose budget fits exactly 10 queries of MECH."""
    book = Ledger(ledger_path)
    book.create_scope("a", epsilon=budget_for(10), delta=DELTA, mechanism=MECH, records=N)
    yield book
    book.close()


@pytest.fixture(scope="module")
def sample_ledger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A closed ledger with two scopes and a few charges (copy it before damaging it)."""
    path = tmp_path_factory.mktemp("sample") / "budget.sqlite"
    with Ledger(path) as book:
        book.create_scope("a", epsilon=budget_for(50), delta=DELTA, mechanism=MECH, records=N)
        book.create_scope("b", epsilon=budget_for(50), delta=DELTA, mechanism=MECH, records=1000)
        for _ in range(3):
            book.charge(["a", "b"], caller="test", purpose="fixture")
        book.charge("a")
    return path


@pytest.fixture
def ledger_copy(sample_ledger: Path, tmp_path: Path) -> Path:
    """A private copy of the sample ledger (main file plus any WAL side files)."""
    target = tmp_path / "copy.sqlite"
    for suffix in ("", "-wal", "-shm"):
        source = Path(str(sample_ledger) + suffix)
        if source.exists():
            shutil.copyfile(source, str(target) + suffix)
    return target
