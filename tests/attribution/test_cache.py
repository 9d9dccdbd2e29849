"""The feature cache: owner-only files, hits, invalidation by a model change, shrinking on removal."""

from __future__ import annotations

import copy
import stat

import numpy as np
import torch

from pipeline.attribution import AttributionModel, FeatureCache, featurize


def test_cache_hit_invalidation_and_drop(tiny, tmp_path):
    _, model, train, _, _ = tiny
    recs = train.subset(range(10))
    cache = FeatureCache(tmp_path / "feats", model.model_hash)
    first = featurize(model, recs, method="dtrak-squared", timesteps=5, projection_dim=64, cache=cache)
    assert first.seconds > 0 and first.method == "dtrak-squared"
    [entry] = cache.entries()
    assert entry.name == "dtrak-K5-P64-s0.npz"
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "feats").stat().st_mode) == 0o700
    again = featurize(model, recs, method="dtrak", timesteps=5, projection_dim=64, cache=cache)
    assert again.seconds == 0.0  # read, not computed
    np.testing.assert_array_equal(again.phi, first.phi)
    sub = featurize(model, recs.subset([4, 2]), method="dtrak", timesteps=5, projection_dim=64, cache=cache)
    np.testing.assert_array_equal(sub.phi, first.phi[[4, 2]])

    # a removal drops the removed records' rows
    gone = [int(recs.ids[1]), int(recs.ids[6])]
    assert cache.drop(gone) == 2
    assert cache.rows() == 8
    left = cache.get("dtrak", 5, 64, 0)
    assert len(left) == 8 and not set(gone) & set(left.ids.tolist())
    assert stat.S_IMODE(cache.entries()[0].stat().st_mode) == 0o600

    # a model change invalidates the cache: the stale entry is deleted, then recomputed under the new hash
    changed = copy.deepcopy(model.unet)
    with torch.no_grad():
        next(changed.parameters()).add_(1e-3)
    new_model = AttributionModel(changed, model.scheduler)
    assert new_model.model_hash != model.model_hash
    new_cache = FeatureCache(tmp_path / "feats", new_model.model_hash)
    assert new_cache.get("dtrak", 5, 64, 0) is None
    assert new_cache.entries() == []
    fresh = featurize(new_model, recs, method="dtrak", timesteps=5, projection_dim=64, cache=new_cache)
    assert fresh.seconds > 0 and fresh.model_hash == new_model.model_hash
    assert FeatureCache(tmp_path / "feats", model.model_hash).get("dtrak", 5, 64, 0) is None
