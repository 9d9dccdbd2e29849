"""``dprdm serve --engine ray`` (issue 14): shards answered by Ray actors, one per shard shared by every request.

The HTTP test runs a real ``dprdm serve --engine ray`` subprocess on 127.0.0.1 (it starts its own local Ray and
shuts it down on exit); the equality test runs the service in-process on Ray's local mode
(``ray.init(num_cpus=2)``). Skipped without Ray (the ``scale`` extra), except the install-hint test.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from server_process import ServerProcess
from typer.testing import CliRunner

from accountant import Ledger
from pipeline.cli import app
from pipeline.serve import KeyStore, ServeConfig

GEN = {"prompt": "a handwritten digit 7", "n": 1, "steps": 1}


def _session(sid: int) -> list[str]:
    """Names of the live processes of session ``sid`` (the server was started in its own session)."""
    names = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        if int(fields[3]) == sid and fields[0] != "Z":
            names.append(text[text.index("(") + 1 : text.rindex(")")])
    return names


def _history(index) -> dict[str, int]:
    with Ledger(index / "budget.sqlite", read_only=True) as ledger:
        return {name: len(ledger.history(name)) for name in ("low", "high")}


@pytest.mark.slow
def test_http_generation_through_ray_actors_charges_once_and_shuts_ray_down(index_dir, add_key):
    pytest.importorskip("ray")
    token = add_key(index_dir, "alice", max_queries=5)
    server = ServerProcess(index_dir, "--engine", "ray", "--ledger", str(index_dir / "budget.sqlite"))
    try:
        with httpx.Client(base_url=server.url, timeout=120) as http:
            response = http.post("/v1/generations", json=GEN, headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == 200, response.text
            body = response.json()
            assert len(body["images"]) == 1 and body["charged"] is True and body["shards"] == ["low", "high"]
            narrowed = http.post("/v1/generations", json=GEN | {"shards": ["high"]},
                                 headers={"Authorization": f"Bearer {token}"})  # fmt: skip
            assert narrowed.status_code == 200, narrowed.text
        with Ledger(index_dir / "budget.sqlite", read_only=True) as ledger:
            assert [row.group_id for row in ledger.history("low")] == [body["receipt"]["group_id"]]
            assert ledger.status("high").queries_charged == 2
        assert KeyStore.for_index(index_dir).list()[0].used == 2
    finally:
        server.stop()
    assert server.process.returncode == 0, "".join(server.log[-20:])
    deadline = time.monotonic() + 30  # no Ray process (gcs, raylet, actors, workers) of its session is left
    while _session(server.process.pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _session(server.process.pid) == []


@pytest.mark.slow
def test_service_ray_engine_releases_the_local_vector_with_one_actor_set(ray_local, index_dir, add_key):
    from pipeline.serve.service import Service

    add_key(index_dir, "alice")  # the service opens the index's key store
    remote = Service.open(ServeConfig(index_dir=index_dir, engine="ray", threads=1))
    local = Service.open(ServeConfig(index_dir=index_dir, threads=1))
    try:
        selections = [("low", "high"), ("high",), ("low", "high")]
        for seed, shards in enumerate(selections):  # the pipelines' seeded test hook (_rng), per selection
            got, want = (
                svc.pipeline(shards)("a handwritten digit 4", num_images=1, steps=1, _rng=np.random.default_rng(seed))
                for svc in (remote, local)
            )
            np.testing.assert_array_equal(got.release.vector, want.release.vector)
        ids = {shards: [a._actor_id for a in remote.pipeline(shards).retriever._actors] for shards in selections}
        assert ids[("high",)] == ids[("low", "high")][1:]  # one actor per shard, shared by every selection
        actors = list(remote.pool._actors.values())
        assert len(actors) == 2
    finally:
        remote.close()
        local.close()
    assert _history(index_dir) == {"low": 4, "high": 6}
    for actor in actors:  # the service killed its actors; Ray itself (started by the test) stays up
        with pytest.raises(ray_local.exceptions.RayActorError):
            ray_local.get(actor.describe.remote(), timeout=60)
    assert ray_local.is_initialized()


@pytest.mark.slow
def test_ray_engine_with_a_postgres_ledger_admits_exactly_the_budget(ray_local, built_index, tmp_path, add_key):
    """``dprdm serve --index DIR --ledger postgresql://... --engine ray`` (the issue's command), in-process on
    loopback: 4 concurrent requests against a budget of 2 → exactly 2 images, 2 refusals, 2 charges."""
    import shutil
    import threading

    from serve_testlib import DELTA, MECH
    from server_process import ThreadServer

    from accountant import ScopeSpec, epsilon_for
    from index import PrivateIndex
    from pipeline.ledgers import index_ledger
    from pipeline.serve import create_app

    pg_cluster = pytest.importorskip("pg_cluster")
    server = pg_cluster.shared_server()
    if server is None:
        pytest.skip(pg_cluster.SKIP_REASON)
    url = server.ledger_url("serve")
    index_dir = Path(shutil.copytree(built_index, tmp_path / "index"))
    idx = PrivateIndex.open(index_dir)
    book = index_ledger(idx, url, create=True)
    book.create_scopes([ScopeSpec(name=name, epsilon=epsilon_for(MECH, queries=2, delta=DELTA), delta=DELTA,
                                  mechanism=MECH, records=idx.shard(name).load().num_records)
                        for name in ("low", "high")])  # fmt: skip
    book.close()
    token = add_key(index_dir, "alice")
    config = ServeConfig(index_dir=index_dir, ledger=url, engine="ray", threads=1)
    codes: list[int] = []
    with ThreadServer(create_app(config)) as live, httpx.Client(base_url=live.url, timeout=120) as http:
        barrier = threading.Barrier(4)

        def client() -> None:
            barrier.wait()
            response = http.post("/v1/generations", json=GEN | {"shards": ["low"]},
                                 headers={"Authorization": f"Bearer {token}"})  # fmt: skip
            codes.append(response.status_code)

        threads = [threading.Thread(target=client) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sorted(codes) == [200, 200, 409, 409]
    with index_ledger(PrivateIndex.open(index_dir), url) as ledger:
        assert ledger.status("low").queries_charged == 2 and ledger.status("high").queries_charged == 0
        assert ledger.verify().ok
    assert KeyStore.for_index(index_dir).list()[0].used == 2  # refused charges gave the reservations back


@pytest.mark.slow
def test_service_ray_engine_refuses_a_damaged_shard_at_start_up(ray_local, index_dir, add_key):
    from index import IndexCorruptError, PrivateIndex
    from pipeline.serve.service import Service

    add_key(index_dir, "alice")
    path = PrivateIndex.open(index_dir).shard("high").path / "embeddings.npy"
    path.write_bytes(b"\xde\xad\xbe\xef" * 16 + path.read_bytes()[64:])  # same size, wrong checksum
    with pytest.raises(IndexCorruptError, match="checksum mismatch") as err:
        Service.open(ServeConfig(index_dir=index_dir, engine="ray", threads=1))
    assert err.value.exit_code == 3 and _history(index_dir) == {"low": 0, "high": 0}
    assert ray_local.is_initialized()  # the test's Ray: the failed start-up killed only its own actors


def test_serve_engine_ray_without_ray_says_how_to_install(index_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    result = CliRunner().invoke(app, ["serve", "--index", str(index_dir), "--engine", "ray", "--port", "0"])
    assert result.exit_code == 2 and "pip install 'dprdm[scale]'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and _history(index_dir) == {"low": 0, "high": 0}


def test_serve_engine_ray_refuses_several_workers(index_dir):
    result = CliRunner().invoke(app, ["serve", "--index", str(index_dir), "--engine", "ray", "--workers", "2"])
    assert result.exit_code == 2 and "--engine ray runs one server process" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    bad = CliRunner().invoke(app, ["serve", "--index", str(index_dir), "--ray-address", "auto"])
    assert bad.exit_code == 2 and "--ray-address needs --engine ray" in bad.stderr
