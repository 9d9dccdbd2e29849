"""Per-sample gradient features: determinism, the projector, the decoder's UNet, self-retrieval ≫ random."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.attribution import METHODS, GaussianProjector, RecordSet, attribute, featurize
from pipeline.errors import PipelineInputError


def test_projector_is_seeded_and_blockwise_equals_whole():
    x = torch.randn(3, 1000)
    whole = GaussianProjector(1000, 16, seed=3)  # small: kept whole
    blocks = GaussianProjector(1000, 16, seed=3, block_rows=64)
    blocks._full = None  # force the blockwise path with the same blocks
    whole_same_blocks = GaussianProjector(1000, 16, seed=3, block_rows=64)
    np.testing.assert_allclose(blocks.project(x), whole_same_blocks.project(x), rtol=1e-5, atol=1e-5)
    assert torch.equal(whole.project(x), GaussianProjector(1000, 16, seed=3).project(x))
    assert not torch.allclose(whole.project(x), GaussianProjector(1000, 16, seed=4).project(x))


def test_features_match_a_loop_of_plain_gradients(tiny):
    """vmap(grad) + projection = the published φ = Pᵀ (1/K) Σ_t ∇ computed with autograd one item at a time."""
    from pipeline.attribution.features import noise_for

    _, model, train, _, _ = tiny
    recs = train.subset([0, 1])
    feats = featurize(model, recs, method="trak", timesteps=4, projection_dim=32, seed=5)
    params = dict(model.unet.named_parameters())
    proj = GaussianProjector(model.num_parameters, 32, seed=5)
    for i in range(2):
        total = torch.zeros(model.num_parameters)
        for t in model.timestep_grid(4):
            e = noise_for(recs.ids[i:i + 1], int(t), tuple(recs.images.shape[1:]), stream="features-train", seed=5)
            tt = torch.tensor([int(t)])
            out = model.eps(model.add_noise(recs.images[i:i + 1], e, tt), tt, recs.conditions[i:i + 1])
            grads = torch.autograd.grad((out - e).pow(2).mean(), list(params.values()))
            total += torch.cat([g.flatten() for g in grads])
        np.testing.assert_allclose(feats.phi[i], proj.project(total[None] / 4)[0].numpy(), rtol=1e-3, atol=1e-5)


def test_features_are_deterministic_and_per_record(tiny):
    _, model, train, _, _ = tiny
    a = featurize(model, train.subset(range(6)), method="das", timesteps=5, projection_dim=64, seed=1)
    b = featurize(model, train.subset([3, 4, 5]), method="das", timesteps=5, projection_dim=64, seed=1)
    np.testing.assert_allclose(a.phi[3:], b.phi, rtol=1e-5, atol=1e-6)  # a record's noise depends on its id only
    assert a.residual is not None and a.residual.shape == (6,)
    assert np.all((a.residual >= 1 / 5 - 1e-9) & (a.residual <= 1 / np.sqrt(5) + 1e-9))
    c = featurize(model, train.subset(range(6)), method="das", timesteps=5, projection_dim=64, seed=2)
    assert not np.allclose(a.phi, c.phi)


def test_rejects_unknown_method_and_bad_k(tiny):
    _, model, train, _, _ = tiny
    with pytest.raises(PipelineInputError, match="method"):
        featurize(model, train, method="influence")
    with pytest.raises(PipelineInputError, match="timesteps"):
        featurize(model, train, method="trak", timesteps=0)


def test_decoder_unet_features_run_under_vmap(tiny_unet_model):
    """The decoder's UNet2DConditionModel (cross-attention + class projection) goes through vmap(grad)."""
    torch.manual_seed(0)
    recs = RecordSet.from_arrays(torch.rand(3, 1, 8, 8) * 2 - 1, torch.randn(3, 4))
    f = featurize(tiny_unet_model, recs, method="dtrak", timesteps=2, projection_dim=16, seed=0)
    assert f.phi.shape == (3, 16) and np.isfinite(f.phi).all()


@pytest.mark.parametrize("method", METHODS)
def test_duplicated_record_ranks_itself_near_the_top(tiny, method):
    """A query that IS a training record (fresh feature noise) ranks itself in the top 3 of 48; random: 3/48."""
    _, model, train, _, _ = tiny
    picks = [0, 7, 19, 33]
    queries = train.subset(picks)
    result = attribute(model, queries, train, method=method, timesteps=20, projection_dim=512, top=3)
    hits = sum(int(train.ids[p]) in [r.id for r in rows] for p, rows in zip(picks, result.top, strict=True))
    assert hits >= 3, (method, [[r.id for r in rows] for rows in result.top])


def test_bundled_decoder_features_and_plain_image_input():
    """The bundled 16×16 decoder (1.41 M parameters) through featurize, given plain uint8 images + conditions."""
    from pipeline.attribution import AttributionModel
    from pipeline.data import load_digits_small

    model = AttributionModel.from_pretrained()
    assert model.num_parameters > 1_000_000 and model.image_size == 16
    images = load_digits_small()[0][:2]  # 8×8, resized to the decoder's 16×16
    conditions = torch.nn.functional.normalize(torch.randn(2, 16, generator=torch.Generator().manual_seed(0)))
    f = featurize(model, images, conditions, method="das", timesteps=2, projection_dim=8)
    assert f.phi.shape == (2, 8) and np.isfinite(f.phi).all() and f.model_hash == model.model_hash
    assert AttributionModel.from_pretrained().model_hash == model.model_hash
    with pytest.raises(PipelineInputError, match="conditions"):
        featurize(model, images, method="das")
