"""``attribute``: JSON shape, the PNG strip (owner-only), query/training feature checks."""

from __future__ import annotations

import json
import stat

import numpy as np
import pytest
from PIL import Image

from pipeline.attribution import attribute, featurize, save_strip
from pipeline.attribution.model import RecordSet
from pipeline.errors import PipelineInputError


def test_attribute_json_and_strip(tiny, tmp_path):
    _, model, train, val, _ = tiny
    train = RecordSet(train.images, train.conditions, train.ids + 1000,
                      tuple(f"digits/{i}.png" for i in range(len(train))), train.labels)
    result = attribute(model, val.subset([0, 1]), train, method="das", timesteps=10, projection_dim=128, top=5)
    doc = json.loads(json.dumps(result.to_dict()))
    assert doc["method"] == "das" and doc["timesteps"] == 10 and doc["projection_dim"] == 128
    assert doc["lambda"] > 0 and doc["model_hash"] == model.model_hash and doc["n_train"] == 48
    top = doc["queries"][0]["top"]
    assert [r["rank"] for r in top] == [1, 2, 3, 4, 5]
    assert all(r["source"].startswith("digits/") and r["id"] >= 1000 for r in top)
    assert [r["score"] for r in top] == sorted((r["score"] for r in top), reverse=True)
    assert result.scores.shape == (2, 48)
    out = save_strip(result, tmp_path / "strips" / "q.png")
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    with Image.open(out) as im:
        assert im.mode == "L" and im.size[1] == 2 * 8 * 4 + 4 and im.size[0] > 6 * 32


def test_attribute_rejects_mismatched_train_features(tiny):
    _, model, train, val, _ = tiny
    feats = featurize(model, train.subset(range(5)), method="trak", timesteps=2, projection_dim=16)
    with pytest.raises(PipelineInputError, match="ids differ"):
        attribute(model, val.subset([0]), train, method="trak", train_features=feats)
    with pytest.raises(PipelineInputError, match="top"):
        attribute(model, val.subset([0]), train, method="trak", top=0)


def test_embed_conditions_self_and_neighbours():
    from pipeline.attribution import embed_conditions
    from pipeline.data import load_digits_small

    images = load_digits_small()[0][:12]
    own = embed_conditions(images)
    assert own.shape == (12, 16)
    np.testing.assert_allclose(np.linalg.norm(own, axis=1), 1.0, rtol=1e-4)
    mean3 = embed_conditions(images, neighbours=3)
    assert mean3.shape == (12, 16) and np.all(np.linalg.norm(mean3, axis=1) <= 1.0 + 1e-5)
    with pytest.raises(PipelineInputError, match="neighbours"):
        embed_conditions(images, neighbours=12)
