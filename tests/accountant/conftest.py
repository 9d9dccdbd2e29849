"""Fixtures for the accountant tests: one contract suite over every ledger backend (SQLite and PostgreSQL).

``backend`` is parametrised over ``sqlite`` and ``postgres`` (the dp-accounting habit: one suite, every
implementation); ``location`` is a fresh ledger of that backend (a file path, or a new schema on a real
PostgreSQL server started once per session on loopback, see ``tests/pg_cluster.py``). The postgres cases are
skipped, with the reason, only when no PostgreSQL binaries exist. ``ledger_path`` stays a SQLite file for the
tests about files (permissions, WAL copies, the v1 file format, the CLI).

No mocks: every test uses a real database; tampering and corruption are done with a second real connection or
by rewriting bytes of a copy.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from accountant_testlib import DELTA, MECH, Backend, N, budget_for, build_sample, pg_server_or_skip

from accountant import Ledger


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """The ledger backend under test."""
    server = pg_server_or_skip() if request.param == "postgres" else None
    return Backend(name=request.param, tmp=tmp_path, server=server)


@pytest.fixture
def location(backend: Backend) -> Path | str:
    """Where a fresh ledger of the backend under test goes (nothing exists there yet)."""
    return backend.new("budget")


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    """Where a fresh SQLite ledger file goes."""
    return tmp_path / "budget.sqlite"


@pytest.fixture
def ledger(location: Path | str) -> Iterator[Ledger]:
    """A fresh ledger (every backend) with scope 'a' whose budget fits exactly 10 queries of MECH."""
    book = Ledger(location)
    book.create_scope("a", epsilon=budget_for(10), delta=DELTA, mechanism=MECH, records=N)
    yield book
    book.close()


@pytest.fixture(scope="module")
def sample_ledger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A closed SQLite ledger with two scopes and a few charges (copy it before damaging it)."""
    return build_sample(tmp_path_factory.mktemp("sample") / "budget.sqlite")


def _copy_sqlite(source_path: Path, target: Path) -> Path:
    for suffix in ("", "-wal", "-shm"):
        source = Path(str(source_path) + suffix)
        if source.exists():
            shutil.copyfile(source, str(target) + suffix)
    return target


@pytest.fixture
def ledger_copy(sample_ledger: Path, tmp_path: Path) -> Path:
    """A private copy of the sample SQLite ledger (main file plus any WAL side files)."""
    return _copy_sqlite(sample_ledger, tmp_path / "copy.sqlite")


@pytest.fixture
def sample_copy(backend: Backend, sample_ledger: Path, tmp_path: Path) -> Path | str:
    """A private sample ledger of the backend under test (SQLite: a file copy; PostgreSQL: a fresh schema)."""
    if backend.name == "sqlite":
        return _copy_sqlite(sample_ledger, tmp_path / "copy.sqlite")
    return build_sample(backend.new("sample"))
