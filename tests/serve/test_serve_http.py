"""A real uvicorn server on 127.0.0.1 in a subprocess: the HTTP budget race and the kill -9 drill."""

from __future__ import annotations

import threading

import httpx
import pytest
from server_process import ServerProcess

from accountant import Ledger
from pipeline.serve import KeyStore

GEN = {"prompt": "a digit", "n": 1, "steps": 1, "shards": ["low"]}


@pytest.fixture()
def servers():
    started: list[ServerProcess] = []

    def start(index, *args):
        server = ServerProcess(index, *args)
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()


def test_http_budget_race_exactly_m_succeed_across_two_keys(make_index, add_key, servers):
    m = 5
    index_dir = make_index(low=m, high=10)
    tokens = {"a": add_key(index_dir, "a", max_queries=4), "b": add_key(index_dir, "b", max_queries=4)}  # 8 > m
    server = servers(index_dir, "--max-batch", "4", "--workers", "2")  # two processes share the ledger and keys
    barrier = threading.Barrier(12)
    results: list[tuple[str, int, str | None]] = []
    lock = threading.Lock()

    def client(name: str) -> None:
        with httpx.Client(base_url=server.url, timeout=120) as http:
            barrier.wait()
            response = http.post("/v1/generations", json=GEN, headers={"Authorization": f"Bearer {tokens[name]}"})
            body = response.json()
            kind = body["error"]["type"] if response.status_code != 200 else body["receipt"]["group_id"]
            with lock:
                results.append((name, response.status_code, kind))

    threads = [threading.Thread(target=client, args=(name,)) for name in ("a", "b") * 6]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ok = [r for r in results if r[1] == 200]
    assert len(ok) == m, results
    assert {(code, kind) for _, code, kind in results if code != 200} <= {(409, "budget_exhausted"), (429, "quota_exhausted")}
    assert all(sum(1 for r in ok if r[0] == name) <= 4 for name in "ab")
    with Ledger(index_dir / "budget.sqlite", read_only=True) as ledger:
        assert ledger.status("low").queries_charged == m
        assert {row.group_id for row in ledger.history("low")} == {r[2] for r in ok}
        assert ledger.verify().ok
    assert sum(k.used for k in KeyStore.for_index(index_dir).list()) == m  # refused charges released their quota


def test_kill_minus_9_under_load_then_restart(make_index, add_key, servers):
    index_dir = make_index(low=200, high=10)
    tokens = {"a": add_key(index_dir, "a", max_queries=500), "b": add_key(index_dir, "b")}
    server = servers(index_dir, "--max-batch", "4")
    received: dict[str, list[str]] = {"a": [], "b": []}
    lock = threading.Lock()
    enough = threading.Event()

    def client(name: str) -> None:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            while True:
                try:
                    response = http.post("/v1/generations", json=GEN, headers={"Authorization": f"Bearer {tokens[name]}"})
                except httpx.HTTPError:
                    return  # the server is gone
                if response.status_code == 200:
                    with lock:
                        received[name].append(response.json()["receipt"]["group_id"])
                        if sum(len(v) for v in received.values()) >= 12:
                            enough.set()

    threads = [threading.Thread(target=client, args=(name,)) for name in ("a", "b") * 3]
    for t in threads:
        t.start()
    assert enough.wait(300), "".join(server.log[-20:])
    server.kill()  # kill -9 while the other clients' requests are in flight
    for t in threads:
        t.join()
    with Ledger(index_dir / "budget.sqlite") as ledger:
        assert ledger.verify().ok
        committed = {row.group_id for row in ledger.history("low")}
        charged = ledger.status("low").queries_charged
    for name in "ab":
        assert set(received[name]) <= committed  # every response a client received has a committed charge
    keys = {k.name: k for k in KeyStore.for_index(index_dir).list()}
    assert set(keys) == {"a", "b"} and not any(k.revoked for k in keys.values())
    assert keys["a"].used >= len(received["a"]) and keys["b"].used >= len(received["b"])
    assert keys["a"].used + keys["b"].used >= charged  # a crash only over-counts the quota
    restarted = servers(index_dir, "--max-batch", "4")
    with httpx.Client(base_url=restarted.url, timeout=60) as http:
        response = http.post("/v1/generations", json=GEN, headers={"Authorization": f"Bearer {tokens['a']}"})
        assert response.status_code == 200, response.text
        assert response.json()["shard_queries_remaining"] == 200 - charged - 1
