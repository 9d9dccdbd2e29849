"""Fixtures for the service tests: a small two-shard digit index with its ledger, keys, and the app in-process.

The index is built once per session (digits 0-4 in shard 'low', 5-9 in 'high', 10 per class, bundled encoder);
each test gets a copy, so its ledger and key store are its own. The decoder is the bundled tiny one at steps=1.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from digit_folders import write_digit_classes  # noqa: E402
from serve_testlib import DELTA, MECH  # noqa: E402

from accountant import ScopeSpec  # noqa: E402
from index import PrivateIndex, build_index  # noqa: E402
from pipeline.ledgers import index_ledger  # noqa: E402
from pipeline.serve import KeyStore, ServeConfig  # noqa: E402


@pytest.fixture(scope="session")
def built_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("serve")
    build_index(write_digit_classes(root / "low", range(5), 10), root / "index", shard="low", progress=False, num_threads=1)
    build_index(write_digit_classes(root / "high", range(5, 10), 10), root / "index", shard="high", progress=False, num_threads=1)
    return root / "index"


def budget_for(queries: int) -> float:
    """The epsilon after exactly ``queries`` queries of MECH: as a budget it admits exactly that many."""
    from accountant import epsilon_for

    return epsilon_for(MECH, queries=queries, delta=DELTA)


@pytest.fixture()
def make_index(tmp_path: Path, built_index: Path) -> Callable[..., Path]:
    """``make_index(low=10, high=10)``: a per-test copy of the index whose shards' budgets fit that many queries."""

    def make(**queries: int) -> Path:
        folder = Path(shutil.copytree(built_index, tmp_path / "index"))
        idx = PrivateIndex.open(folder)
        ledger = index_ledger(idx, create=True)
        specs = [
            ScopeSpec(name=name, epsilon=budget_for(count), delta=DELTA, mechanism=MECH,
                      records=idx.shard(name).load().num_records)
            for name, count in queries.items()
        ]  # fmt: skip
        statuses = ledger.create_scopes(specs)
        for status, count in zip(statuses, queries.values(), strict=True):
            assert status.queries_remaining == count
        ledger.close()
        return folder

    return make


@pytest.fixture()
def index_dir(make_index: Callable[..., Path]) -> Path:
    return make_index(low=10, high=10)


@pytest.fixture()
def add_key() -> Callable[..., str]:
    def add(index: Path, name: str, *, shards: tuple[str, ...] = ("low", "high"), max_queries: int | None = None) -> str:
        return KeyStore.for_index(index, create=True).add(name, shards=shards, max_queries=max_queries)[1]

    return add


@pytest.fixture()
def client_for() -> Iterator[Callable[..., object]]:
    """``client_for(index, **config)``: a FastAPI TestClient over the app of that index (closed afterwards)."""
    from fastapi.testclient import TestClient

    from pipeline.serve import create_app

    clients = []

    def make(index: Path, **settings: object) -> TestClient:
        app = create_app(ServeConfig(index_dir=index, **settings))
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)
