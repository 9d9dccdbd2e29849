"""Compartments in an index: DP adapters + DP classifier, public mark, storage, access sets, forgetting."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from index import PrivateIndex
from pipeline.compartments.decoder import ComposedDecoder
from pipeline.compartments.store import Compartments, CompartmentsDamaged, mark_public
from pipeline.compartments.train import forget, train_compartments
from pipeline.errors import PipelineInputError, PrivacyRefusal

FAST_ADAPTER = {"batch_size": 10, "physical_batch_size": 10, "steps": 2, "trainable": "attention+conditioning"}
FAST_CLF = {"batch_size": 20, "steps": 5, "hidden": 16}


def _train(corpus: Path, ledger, decoder, **kw):
    return train_compartments(corpus / "index", ledger, epsilon=kw.pop("epsilon", 8.0), decoder=decoder,
                              adapter=FAST_ADAPTER, classifier=FAST_CLF, _seed=kw.pop("_seed", 0), **kw)


def test_train_stores_private_checksummed_compartments_and_charges(corpus, ledger, decoder):
    out = _train(corpus, ledger, decoder)
    root = corpus / "index" / "compartments"
    assert stat.S_IMODE(os.stat(root).st_mode) == 0o700
    for path in root.rglob("*"):
        assert stat.S_IMODE(os.stat(path).st_mode) == (0o700 if path.is_dir() else 0o600), path
    info = out["info"]
    assert set(info["shards"]) == {"a", "b"} and all(s["guarantee"] == "dp" for s in info["shards"].values())
    assert info["classifier"]["dp"]["scopes"] == ["a", "b"]
    # each scope: its adapter's training + the classifier's one event
    for name in ("a", "b"):
        assert ledger.status(name).events_charged == 2
    Compartments(corpus / "index").verify()


def test_non_private_refused_unless_marked_public(corpus, ledger, decoder):
    with pytest.raises(PrivacyRefusal, match="not marked public"):
        train_compartments(corpus / "index", ledger, non_private=True, decoder=decoder, adapter=FAST_ADAPTER,
                           classifier=FAST_CLF, _seed=0)
    assert not (corpus / "index" / "compartments" / "manifest.json").exists()
    with pytest.raises(PipelineInputError):
        mark_public(corpus / "index", "a", note=" ")
    mark_public(corpus / "index", "a", note="CC0 digits, consent on file")
    mark_public(corpus / "index", "b", note="CC0 digits, consent on file")
    out = train_compartments(corpus / "index", None, non_private=True, decoder=decoder, adapter=FAST_ADAPTER,
                             classifier=FAST_CLF, _seed=0)
    assert {s["guarantee"] for s in out["info"]["shards"].values()} == {"none (public/consented shard)"}
    assert out["classifier"]["dp"] is None
    assert ledger.status("a").events_charged == 0


def test_damaged_store_refused_before_any_charge(corpus, ledger, decoder):
    _train(corpus, ledger, decoder)
    store = Compartments(corpus / "index")
    adapter = store.adapter_dir("a") / "adapter.safetensors"
    data = bytearray(adapter.read_bytes())
    data[-1] ^= 1
    adapter.chmod(0o600)
    adapter.write_bytes(bytes(data))
    spent = {n: ledger.status(n).epsilon_spent for n in ("a", "b")}
    with pytest.raises(CompartmentsDamaged):
        _train(corpus, ledger, decoder, shards=["b"])
    with pytest.raises(CompartmentsDamaged):
        forget(corpus / "index", "b", ledger, ids=[next(PrivateIndex.open(corpus / "index").records("b"))[1]],
               decoder=decoder)
    with pytest.raises(CompartmentsDamaged):
        ComposedDecoder.from_index(corpus / "index", decoder=decoder)
    assert {n: ledger.status(n).epsilon_spent for n in ("a", "b")} == spent
    assert PrivateIndex.open(corpus / "index").num_records == 100  # nothing removed
    manifest = corpus / "index" / "compartments" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"a"', '"z"', 1))
    with pytest.raises(CompartmentsDamaged, match="checksum"):
        Compartments(corpus / "index")


def test_access_set_never_loads_a_non_allowed_adapter(corpus, ledger, decoder):
    import shutil

    _train(corpus, ledger, decoder)
    store = Compartments(corpus / "index")
    shutil.rmtree(store.adapter_dir("b"))  # b's adapter is absent
    composed = ComposedDecoder.from_index(corpus / "index", decoder=decoder, allowed=["a"])
    assert list(composed.decoders) == ["a"]
    cond = torch.nn.functional.normalize(torch.randn(2, decoder.condition_dim), dim=1)
    images = composed.generate(cond, steps=3, generator=torch.Generator().manual_seed(0))
    assert len(images) == 2 and composed.shard_weights == {"a": pytest.approx(1.0)}
    with pytest.raises(CompartmentsDamaged):
        ComposedDecoder.from_index(corpus / "index", decoder=decoder)  # all shards: b's adapter is missing
    both = ComposedDecoder.from_index(corpus / "index", decoder=decoder, allowed=["a"], weights="naive")
    assert both.weights(torch.zeros(3, 1, 8, 8), torch.zeros(3, dtype=torch.long)).shape == (3, 1)


def test_composed_generate_reports_shard_weights(corpus, ledger, decoder):
    _train(corpus, ledger, decoder)
    for mode in ("posterior", "naive"):
        composed = ComposedDecoder.from_index(corpus / "index", decoder=decoder, weights=mode)
        composed.generate(torch.zeros(1, decoder.condition_dim), num_images_per_condition=2, steps=3,
                          generator=torch.Generator().manual_seed(0))
        assert set(composed.shard_weights) == {"a", "b"}
        assert sum(composed.shard_weights.values()) == pytest.approx(1.0)
    assert composed.shard_weights == {"a": pytest.approx(0.5), "b": pytest.approx(0.5)}  # naive: λ = 50/50
    from pipeline.decoders.base import Decoder

    assert isinstance(composed, Decoder) and composed.model_id.startswith("cdm[") and len(composed.sha256) == 64
    only_a = ComposedDecoder.from_index(corpus / "index", decoder=decoder, allowed=["a"])
    assert only_a.sha256 != composed.sha256


def test_forget_retrains_only_that_shard_and_never_refunds(corpus, ledger, decoder):
    _train(corpus, ledger, decoder)
    index = PrivateIndex.open(corpus / "index")
    victim = next(index.records("a"))
    spent = {n: ledger.status(n).epsilon_spent for n in ("a", "b")}
    b_files = {p: p.read_bytes() for p in Compartments(corpus / "index").adapter_dir("b").rglob("*") if p.is_file()}
    out = forget(corpus / "index", "a", ledger, ids=[victim[1]], decoder=decoder, _seed=0)
    assert out["shard"] == "a" and out["removed"] == 1
    assert out["retrained"] == ["a", "classifier"] and out["unchanged"] == ["b"]
    assert out["adapter_sha256"]["before"]["b"] == out["adapter_sha256"]["after"]["b"]
    assert out["adapter_sha256"]["before"]["a"] != out["adapter_sha256"]["after"]["a"]
    assert out["full_retrain_seconds_estimate"] > 0 and out["seconds"] > 0
    assert {p: p.read_bytes() for p in b_files} == b_files  # byte-identical
    index = PrivateIndex.open(corpus / "index")
    assert victim[1] not in {rid for _, rid, _ in index.records("a")}
    assert Compartments(corpus / "index").shards["a"]["records"] == 49
    for name in ("a", "b"):  # never refunded: retraining charges more
        assert ledger.status(name).epsilon_spent > spent[name]
    with pytest.raises(PipelineInputError, match="not records of shard"):
        forget(corpus / "index", "b", ledger, ids=[next(index.records("a"))[1]], decoder=decoder)


def test_forget_equals_fresh_training_without_the_record(tmp_path, corpus, ledger, decoder):
    """Retraining the shard with the same seed on D minus x gives the same adapter as a fresh training on it."""
    import shutil

    from accountant import Ledger
    from index import build_index

    _train(corpus, ledger, decoder)
    index = PrivateIndex.open(corpus / "index")
    _, rid, source = next(index.records("a"))
    forget(corpus / "index", "a", ledger, ids=[rid], decoder=decoder, _seed=0)
    # fresh: a new index built from the sources without x, trained once with the same seed
    fresh = tmp_path / "fresh"
    shutil.copytree(corpus / "a", fresh / "a")
    shutil.copytree(corpus / "b", fresh / "b")
    (fresh / Path(source).relative_to(corpus)).unlink()
    build_index(fresh / "a", fresh / "index", shard="a", progress=False, num_threads=1)
    PrivateIndex.open(fresh / "index").add(fresh / "b", shard="b", num_threads=1)
    book = Ledger(fresh / "index" / "budget.sqlite")
    for name in ("a", "b"):
        book.create_scope(name, epsilon=50.0, delta=1e-5, k=10, q=0.5, sigma=0.3, records=50)
    _train(fresh, book, decoder)
    got = Compartments(corpus / "index").adapter_dir("a") / "adapter.safetensors"
    want = Compartments(fresh / "index").adapter_dir("a") / "adapter.safetensors"
    assert got.read_bytes() == want.read_bytes()


def test_forget_refused_before_removal_when_retraining_does_not_fit(corpus, ledger, decoder):
    from accountant.errors import BudgetExceeded

    _train(corpus, ledger, decoder)
    while ledger.fits("a", records={"a": 50}):  # spend scope a down to what no retraining fits
        ledger.charge("a", records={"a": 50})
    spent = {n: ledger.status(n).epsilon_spent for n in ("a", "b")}
    hashes = Compartments(corpus / "index").adapter_hashes()
    rid = next(PrivateIndex.open(corpus / "index").records("a"))[1]
    with pytest.raises(BudgetExceeded, match="nothing was removed"):
        forget(corpus / "index", "a", ledger, ids=[rid], decoder=decoder, _seed=0)
    assert rid in {r for _, r, _ in PrivateIndex.open(corpus / "index").records("a")}
    assert {n: ledger.status(n).epsilon_spent for n in ("a", "b")} == spent
    assert Compartments(corpus / "index").adapter_hashes() == hashes


def test_single_allowed_compartment_samples_exactly_like_its_adapted_decoder(corpus, ledger, decoder):
    """w = 1 for a one-shard access set: the composed sampler (CFG on the composed ε) equals the adapter's own."""
    import numpy as np

    from pipeline.finetune import load_adapter

    _train(corpus, ledger, decoder)
    composed = ComposedDecoder.from_index(corpus / "index", decoder=decoder, allowed=["b"])
    own = load_adapter(decoder, Compartments(corpus / "index").adapter_dir("b"))
    cond = torch.nn.functional.normalize(torch.randn(2, decoder.condition_dim, generator=torch.Generator()
                                                     .manual_seed(3)), dim=1)
    got = composed.generate(cond, steps=4, guidance_scale=2.0, generator=torch.Generator().manual_seed(1))
    want = own.generate(cond, steps=4, guidance_scale=2.0, generator=torch.Generator().manual_seed(1))
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(got, want, strict=True))


def test_public_shard_beside_a_dp_one_needs_the_classifier_epsilon_before_anything(corpus, ledger, decoder):
    _train(corpus, ledger, decoder)
    mark_public(corpus / "index", "b", note="consented")
    spent = {n: ledger.status(n).epsilon_spent for n in ("a", "b")}
    with pytest.raises(PipelineInputError, match="covers DP shard"):
        train_compartments(corpus / "index", ledger, shards=["b"], non_private=True, decoder=decoder,
                           adapter=FAST_ADAPTER, classifier=FAST_CLF, _seed=0)
    assert {n: ledger.status(n).epsilon_spent for n in ("a", "b")} == spent
    out = train_compartments(corpus / "index", ledger, shards=["b"], non_private=True, classifier_epsilon=8.0,
                             decoder=decoder, adapter=FAST_ADAPTER, classifier=FAST_CLF, _seed=0)
    assert out["info"]["shards"]["b"]["guarantee"].startswith("none")
    assert out["info"]["shards"]["a"]["guarantee"] == "dp"
    assert out["classifier"]["dp"]["scopes"] == ["a"]  # the public shard is pooled but not charged
    assert ledger.status("b").epsilon_spent == spent["b"]


def test_sampler_options_base_guidance_and_eta(corpus, ledger, decoder):
    """g > 1 evaluates the public base and applies ε_base + g (ε̂ − ε_base); η > 0 is seeded; bad values refused."""
    import numpy as np

    _train(corpus, ledger, decoder)
    plain = ComposedDecoder.from_index(corpus / "index", decoder=decoder, allowed=["a"])
    guided = ComposedDecoder.from_index(corpus / "index", decoder=decoder, allowed=["a"], eta=1.0, base_guidance=2.0)
    calls = []
    hook = decoder.unet.register_forward_hook(lambda *_: calls.append(1))
    try:
        cond = torch.zeros(1, decoder.condition_dim)
        plain.generate(cond, steps=3, generator=torch.Generator().manual_seed(0))
        assert calls == []  # g = 1: the base decoder is never evaluated
        runs = [guided.generate(cond, num_images_per_condition=2, steps=3, guidance_scale=1.0,
                                generator=torch.Generator().manual_seed(s)) for s in (0, 0, 1)]
        assert len(calls) == 9
    finally:
        hook.remove()
    pixels = [np.stack([np.asarray(im) for im in run]) for run in runs]
    assert np.array_equal(pixels[0], pixels[1]) and not np.array_equal(pixels[0], pixels[2])
    eps = [torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    w = torch.ones(2, 1)
    assert torch.allclose(guided._compose(eps, w), eps[1] + 2.0 * (eps[0] - eps[1]))
    assert guided.sha256 != plain.sha256
    for kwargs, match in (({"eta": 1.5}, "--eta must be in"), ({"base_guidance": 0.5}, "--base-guidance must be")):
        with pytest.raises(PipelineInputError, match=match):
            ComposedDecoder.from_index(corpus / "index", decoder=decoder, allowed=["a"], **kwargs)
