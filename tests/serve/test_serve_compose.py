"""``"compose": true`` over real HTTP on loopback (issue 12): compartments composed per request, checked before
any charge, the key's access set as the compose access set, ``shard_weights`` in the response.

The compartments are trained once per module, without DP on shards marked public (``mark_public``; the test
corpus is MNIST digits), with the compartments tests' random tiny UNet as the base decoder, tiny step counts.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import httpx
import pytest
from server_process import ThreadServer

from accountant import Ledger
from pipeline.serve import KeyStore, ServeConfig, create_app

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "finetune"))
from finetune_testlib import tiny_unet  # noqa: E402

GEN = {"prompt": "a handwritten digit", "n": 1, "steps": 2, "compose": True}


@pytest.fixture(scope="module")
def decoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny UNet decoder of the index's width (the compartments tests' base decoder)."""
    from diffusers import DDIMScheduler

    from pipeline.decoders import TinyDecoder, describe_decoder

    folder = tmp_path_factory.mktemp("decoder") / "tiny"
    dim = describe_decoder(None).condition_dim  # the bundled encoder's width, hence the index's
    TinyDecoder(tiny_unet(dim), DDIMScheduler(num_train_timesteps=50)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def built_index(built_index: Path, decoder_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The serve index (low = digits 0-4, high = 5-9) with trained compartments (overrides conftest's)."""
    from pipeline.compartments import mark_public, train_compartments
    from pipeline.decoders import TinyDecoder

    folder = Path(shutil.copytree(built_index, tmp_path_factory.mktemp("compose") / "index"))
    for shard in ("low", "high"):
        mark_public(folder, shard, note="MNIST test digits, public")
    train_compartments(folder, None, non_private=True, decoder=TinyDecoder.from_pretrained(decoder_dir),
                       adapter={"steps": 1}, classifier={"steps": 3, "hidden": 16}, _seed=0)  # fmt: skip
    return folder


@pytest.fixture()
def serve(decoder_dir: Path):
    """``serve(index)``: the real app of that index on 127.0.0.1 in a thread; an httpx client to it."""
    servers: list[ThreadServer] = []

    def start(index: Path) -> httpx.Client:
        server = ThreadServer(create_app(ServeConfig(index_dir=index, decoder=decoder_dir, threads=1)))
        servers.append(server.__enter__())
        return httpx.Client(base_url=server.url, timeout=120)

    yield start
    for server in servers:
        server.__exit__(None, None, None)


def _post(client: httpx.Client, token: str, **fields: object) -> httpx.Response:
    return client.post("/v1/generations", json=GEN | fields, headers={"Authorization": f"Bearer {token}"})


def _charged(index: Path) -> dict[str, int]:
    with Ledger(index / "budget.sqlite", read_only=True) as ledger:
        return {name: ledger.status(name).queries_charged for name in ("low", "high")}


def _used(index: Path) -> dict[str, int]:
    return {key.name: key.used for key in KeyStore.for_index(index).list()}


def test_compose_shard_weights_cover_the_keys_shards_only(index_dir, add_key, serve):
    both, only_high = add_key(index_dir, "both"), add_key(index_dir, "high-only", shards=("high",))
    client = serve(index_dir)
    body = _post(client, both).json()
    assert len(body["images"]) == 1 and body["charged"] is True and body["shards"] == ["low", "high"]
    weights = body["shard_weights"]
    assert set(weights) == {"low", "high"} and abs(sum(weights.values()) - 1.0) < 1e-6
    assert all(0.0 <= w <= 1.0 for w in weights.values())
    narrowed = _post(client, both, shards=["low"], weights="naive").json()
    assert narrowed["shard_weights"] == pytest.approx({"low": 1.0})
    assert _post(client, only_high).json()["shard_weights"] == pytest.approx({"high": 1.0})
    refused = _post(client, only_high, shards=["low"])
    assert refused.status_code == 403 and refused.json()["error"]["type"] == "shard_forbidden"
    plain = _post(client, both, compose=False).json()
    assert "shard_weights" not in plain and len(plain["images"]) == 1
    assert _charged(index_dir) == {"low": 3, "high": 3}
    assert _used(index_dir) == {"both": 3, "high-only": 1}


def test_compose_key_limited_to_low_needs_no_adapter_of_high(index_dir, add_key, serve):
    from pipeline.compartments import Compartments

    low, both = add_key(index_dir, "low-only", shards=("low",)), add_key(index_dir, "both")
    shutil.rmtree(Compartments(index_dir).adapter_dir("high"))  # nothing of high's compartment is left
    client = serve(index_dir)
    response = _post(client, low)
    assert response.status_code == 200, response.text
    assert response.json()["shard_weights"] == pytest.approx({"low": 1.0})
    refused = _post(client, both)  # the key's access set includes high: its adapter is checked, and missing
    assert refused.status_code == 503 and refused.json()["error"]["type"] == "compartments_damaged"
    assert "nothing was charged" in refused.json()["error"]["message"]
    assert _charged(index_dir) == {"low": 1, "high": 0} and _used(index_dir) == {"low-only": 1, "both": 0}


def test_compose_damaged_store_is_refused_before_any_charge(index_dir, add_key, serve):
    from pipeline.compartments import Compartments

    token = add_key(index_dir, "alice")
    client = serve(index_dir)
    assert _post(client, token).status_code == 200  # builds and keeps the composed decoder
    store = Compartments(index_dir)
    victim = next(p for p in sorted(store.adapter_dir("low").rglob("*")) if p.is_file())
    victim.write_bytes(victim.read_bytes()[:-8] + b"\x00" * 8)  # same size, other bytes
    for weights in ("posterior", "naive"):
        refused = _post(client, token, weights=weights)
        assert refused.status_code == 503 and refused.json()["error"]["type"] == "compartments_damaged"
    manifest = store.root / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"low"', '"lov"', 1))  # fails the manifest's own checksum
    damaged = _post(client, token, shards=["high"])
    assert damaged.status_code == 503 and damaged.json()["error"]["type"] == "compartments_damaged"
    assert _charged(index_dir) == {"low": 1, "high": 1} and _used(index_dir) == {"alice": 1}


def test_compose_errors_without_compartments_and_bad_fields(make_index, add_key, serve):
    from pipeline.compartments.store import COMPARTMENTS_DIR

    index = make_index(low=10, high=10)
    shutil.rmtree(index / COMPARTMENTS_DIR)
    token = add_key(index, "alice")
    client = serve(index)
    response = _post(client, token)
    assert response.status_code == 409 and response.json()["error"]["type"] == "compartments_unavailable"
    for fields in ({"compose": False, "weights": "naive"}, {"weights": "median"}, {"compose": "maybe"}):
        bad = _post(client, token, **fields)
        assert bad.status_code == 422 and bad.json()["error"]["type"] == "invalid_request", fields
    assert _charged(index) == {"low": 0, "high": 0} and _used(index) == {"alice": 0}


def test_compose_sampler_options_reach_the_composed_decoder_and_are_checked_before_any_charge(
    index_dir, add_key, serve, decoder_dir
):
    from pipeline.decoders import TinyDecoder
    from pipeline.serve.compose import ComposedDecoders

    token = add_key(index_dir, "alice")
    client = serve(index_dir)
    ok = _post(client, token, eta=1.0, base_guidance=1.5)
    assert ok.status_code == 200, ok.text
    assert set(ok.json()["shard_weights"]) == {"low", "high"}
    for fields, says in (({"compose": False, "eta": 1.0}, "eta needs \"compose\""),
                         ({"compose": False, "base_guidance": 2.0}, "base_guidance needs \"compose\""),
                         ({"eta": 1.5}, "eta must be in [0, 1]"), ({"base_guidance": 0.5}, "base_guidance must be in")):
        bad = _post(client, token, **fields)
        assert bad.status_code == 422 and bad.json()["error"]["type"] == "invalid_request", fields
        assert says in bad.json()["error"]["message"], bad.json()
        assert all(str(v) not in bad.json()["error"]["message"] for v in fields.values() if isinstance(v, float))
    assert _charged(index_dir) == {"low": 1, "high": 1} and _used(index_dir) == {"alice": 1}
    decoders = ComposedDecoders(index_dir, TinyDecoder.from_pretrained(decoder_dir))
    plain, tuned = (decoders.for_request(["low"], "naive", sampler) for sampler in ((0.0, 1.0), (1.0, 1.5)))
    assert (plain.eta, plain.base_guidance) == (0.0, 1.0) and (tuned.eta, tuned.base_guidance) == (1.0, 1.5)
    assert plain.sha256 != tuned.sha256  # a distinct decoder per sampler, its settings in the decoder's hash
