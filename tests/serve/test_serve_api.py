"""Endpoint tests of ``dprdm serve`` in-process (FastAPI TestClient): auth, access sets, quotas, budgets, limits."""

from __future__ import annotations

import base64
import io
import logging

import pytest
from PIL import Image

from accountant import Ledger
from pipeline.serve import KeyStore

GEN = {"prompt": "a handwritten digit", "n": 2, "steps": 1}


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _png(size: tuple[int, int] = (16, 16)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, (120, 30, 200)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_generation_charges_then_returns_images_and_budget(index_dir, add_key, client_for):
    token = add_key(index_dir, "alice", max_queries=5)
    client = client_for(index_dir)
    response = client.post("/v1/generations", json=GEN | {"shards": ["low"]}, headers=_auth(token))
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["images"]) == 2
    assert Image.open(io.BytesIO(base64.b64decode(body["images"][0]))).format == "PNG"
    assert body["charged"] is True and body["shards"] == ["low"]
    assert body["shard_queries_remaining"] == 9 and body["key_queries_remaining"] == 4
    assert body["queries_remaining"] == 4 and body["epsilon_spent"] > 0
    with Ledger(index_dir / "budget.sqlite", read_only=True) as ledger:
        history = ledger.history("low")
        assert [row.group_id for row in history] == [body["receipt"]["group_id"]]
        assert history[0].caller == "alice"
        assert ledger.status("high").queries_charged == 0
    budget = client.get("/v1/budget", headers=_auth(token)).json()
    assert budget["key"]["used"] == 1 and budget["key"]["queries_remaining"] == 4
    assert {s["shard"]: s["queries_charged"] for s in budget["shards"]} == {"low": 1, "high": 0}
    assert response.headers["x-request-id"]


def test_lambda_zero_is_not_charged(index_dir, add_key, client_for):
    token = add_key(index_dir, "alice", max_queries=1)
    client = client_for(index_dir)
    for _ in range(2):
        body = client.post("/v1/generations", json=GEN | {"lambda": 0.0}, headers=_auth(token)).json()
        assert body["charged"] is False and body["receipt"] is None
    assert KeyStore.for_index(index_dir).list()[0].used == 0


def test_image_query_and_decompression_bomb(index_dir, add_key, client_for):
    token = add_key(index_dir, "alice")
    client = client_for(index_dir, max_pixels=10_000)
    ok = client.post("/v1/generations", json={"image": _png(), "n": 1, "steps": 1}, headers=_auth(token))
    assert ok.status_code == 200, ok.text
    bomb = client.post("/v1/generations", json={"image": _png((200, 200)), "n": 1, "steps": 1}, headers=_auth(token))
    assert bomb.status_code == 422
    assert bomb.json()["error"]["type"] == "invalid_request"
    assert "decompression-bomb" in bomb.json()["error"]["message"]
    junk = client.post("/v1/generations", json={"image": "bm90IGFuIGltYWdl", "steps": 1}, headers=_auth(token))
    assert junk.status_code == 422
    with Ledger(index_dir / "budget.sqlite", read_only=True) as ledger:
        assert ledger.status("low").queries_charged == 1  # only the good upload was charged


@pytest.mark.parametrize(
    ("headers", "kind"),
    [({}, "unauthorized"), ({"Authorization": "Bearer nope"}, "unauthorized"),
     ({"Authorization": "Bearer dprdm_000000000000_" + "0" * 64}, "unauthorized")],
    ids=["missing", "malformed", "unknown"],
)  # fmt: skip
def test_unauthenticated_requests_are_401(index_dir, add_key, client_for, headers, kind):
    add_key(index_dir, "alice")
    client = client_for(index_dir)
    for method, path in (("post", "/v1/generations"), ("get", "/v1/budget"), ("get", "/v1/shards")):
        response = getattr(client, method)(path, headers=headers, **({"json": GEN} if method == "post" else {}))
        assert response.status_code == 401
        assert response.json()["error"]["type"] == kind
    with Ledger(index_dir / "budget.sqlite", read_only=True) as ledger:
        assert ledger.history() == []


def test_wrong_secret_of_a_real_key_is_401(index_dir, add_key, client_for):
    token = add_key(index_dir, "alice")
    forged = token[:-4] + ("0000" if not token.endswith("0000") else "1111")
    response = client_for(index_dir).get("/v1/budget", headers=_auth(forged))
    assert response.status_code == 401 and response.json()["error"]["type"] == "unauthorized"


def test_access_set_refusals_are_403_and_shards_lists_only_the_callers(index_dir, add_key, client_for):
    token = add_key(index_dir, "lowonly", shards=("low",))
    client = client_for(index_dir)
    shards = client.get("/v1/shards", headers=_auth(token)).json()["shards"]
    assert [s["name"] for s in shards] == ["low"]
    assert set(shards[0]) == {"name", "k", "q", "sigma", "epsilon_budget", "delta"}
    for requested in (["high"], ["low", "high"], ["nosuch"]):
        response = client.post("/v1/generations", json=GEN | {"shards": requested}, headers=_auth(token))
        assert response.status_code == 403, requested
        assert response.json()["error"]["type"] == "shard_forbidden"
    assert [s["shard"] for s in client.get("/v1/budget", headers=_auth(token)).json()["shards"]] == ["low"]
    with Ledger(index_dir / "budget.sqlite", read_only=True) as ledger:
        assert ledger.history() == []
    assert KeyStore.for_index(index_dir).list()[0].used == 0


def test_revocation_takes_effect_on_the_next_request(index_dir, add_key, client_for):
    token = add_key(index_dir, "alice")
    client = client_for(index_dir)
    assert client.post("/v1/generations", json=GEN, headers=_auth(token)).status_code == 200
    KeyStore.for_index(index_dir).revoke("alice")
    response = client.post("/v1/generations", json=GEN, headers=_auth(token))
    assert response.status_code == 401 and response.json()["error"]["type"] == "key_revoked"
    with Ledger(index_dir / "budget.sqlite", read_only=True) as ledger:
        assert len(ledger.history()) == 2  # the first request charged both shards, the refused one nothing


def test_key_quota_429_and_global_budget_409(make_index, add_key, client_for):
    index_dir = make_index(low=3, high=10)
    small = add_key(index_dir, "small", max_queries=1)
    big = add_key(index_dir, "big", max_queries=10)
    client = client_for(index_dir)
    request = GEN | {"shards": ["low"]}
    assert client.post("/v1/generations", json=request, headers=_auth(small)).status_code == 200
    quota = client.post("/v1/generations", json=request, headers=_auth(small))
    assert quota.status_code == 429 and quota.json()["error"]["type"] == "quota_exhausted"
    assert [client.post("/v1/generations", json=request, headers=_auth(big)).status_code for _ in range(3)] == [200, 200, 409]
    refused = client.post("/v1/generations", json=request, headers=_auth(big))
    assert refused.status_code == 409
    error = refused.json()["error"]
    assert error["type"] == "budget_exhausted" and "nothing was charged" in error["message"]
    assert "epsilon=" not in error["message"] and "queries" not in error["message"]
    keys = {k.name: k.used for k in KeyStore.for_index(index_dir).list()}
    assert keys == {"small": 1, "big": 2}  # refused charges gave their reservation back
    with Ledger(index_dir / "budget.sqlite", read_only=True) as ledger:
        assert ledger.status("low").queries_charged == 3 and ledger.verify().ok


@pytest.mark.parametrize(
    "body",
    [{"n": 2}, GEN | {"image": "abcd"}, GEN | {"n": 0}, GEN | {"lambda": 1.5}, GEN | {"steps": 0},
     GEN | {"unknown": 1}, GEN | {"n": 17}, {"prompt": ""}],
    ids=["no-query", "both", "n0", "lambda", "steps", "extra-field", "n-over-server-cap", "empty-prompt"],
)  # fmt: skip
def test_bad_parameters_are_422_and_never_echo_the_input(index_dir, add_key, client_for, body):
    token = add_key(index_dir, "alice")
    response = client_for(index_dir).post("/v1/generations", json=body, headers=_auth(token))
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["type"] == "invalid_request"
    assert "handwritten" not in error["message"]
    with Ledger(index_dir / "budget.sqlite", read_only=True) as ledger:
        assert ledger.history() == []


def test_oversized_body_is_413(index_dir, add_key, client_for):
    token = add_key(index_dir, "alice")
    client = client_for(index_dir, max_body_bytes=4096)
    response = client.post("/v1/generations", json={"image": "A" * 8000, "steps": 1}, headers=_auth(token))
    assert response.status_code == 413 and response.json()["error"]["type"] == "payload_too_large"


def test_health_docs_page_and_no_cors_by_default(index_dir, add_key, client_for):
    add_key(index_dir, "alice")
    client = client_for(index_dir)
    assert client.get("/healthz").json() == {"status": "ok"}
    schema = client.get("/openapi.json").json()
    assert {"/v1/generations", "/v1/budget", "/v1/shards", "/healthz"} <= set(schema["paths"])
    assert client.get("/docs").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and "<html" in page.text.lower()
    preflight = client.options("/v1/budget", headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "GET"})
    assert "access-control-allow-origin" not in preflight.headers
    assert client.get("/nope").json()["error"]["type"] == "not_found"


def test_cors_only_for_configured_origins(index_dir, add_key, client_for):
    add_key(index_dir, "alice")
    client = client_for(index_dir, cors_origins=("http://app.example",))
    ok = client.get("/healthz", headers={"Origin": "http://app.example"})
    assert ok.headers.get("access-control-allow-origin") == "http://app.example"
    other = client.get("/healthz", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_access_log_has_id_key_status_timing_only(index_dir, add_key, client_for, caplog):
    token = add_key(index_dir, "alice")
    client = client_for(index_dir)
    with caplog.at_level(logging.INFO, logger="pipeline.serve.access"):
        client.post("/v1/generations", json=GEN | {"prompt": "secret prompt words"}, headers=_auth(token))
        client.get("/v1/budget")
    lines = [r.getMessage() for r in caplog.records if r.name == "pipeline.serve.access"]
    assert len(lines) == 2
    assert lines[0].startswith("request=") and " key=alice status=200 ms=" in lines[0]
    assert " key=- status=401 " in lines[1]
    assert not any("secret" in line or "Bearer" in line or "dprdm_" in line for line in lines)


def test_server_refuses_to_start_without_keys_or_ledger(make_index, built_index, tmp_path):
    from pipeline.serve import ServeConfig, create_app
    from pipeline.serve.errors import KeyStoreUnavailable

    with pytest.raises(KeyStoreUnavailable, match="dprdm keys add"):
        create_app(ServeConfig(index_dir=make_index(low=2)))


def test_shard_without_a_budget_scope_is_409_and_charges_nothing(make_index, add_key, client_for):
    index_dir = make_index(low=3)  # "high" has records but no scope in the ledger
    token = add_key(index_dir, "analyst")
    client = client_for(index_dir)
    refused = client.post("/v1/generations", json=GEN | {"shards": ["high"]}, headers=_auth(token))
    assert refused.status_code == 409
    error = refused.json()["error"]
    assert error["type"] == "budget_not_configured" and "budget init" in error["message"]
    assert client.post("/v1/generations", json=GEN | {"shards": ["low"]}, headers=_auth(token)).status_code == 200
    assert {k.name: k.used for k in KeyStore.for_index(index_dir).list()} == {"analyst": 1}
    with Ledger(index_dir / "budget.sqlite", read_only=True) as ledger:
        assert len(ledger.history()) == 1 and ledger.verify().ok
