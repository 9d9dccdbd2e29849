"""StableUnCLIPDecoder knobs on a tiny random pipeline saved with save_pretrained: norm, scaling, noise level."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.decoders import EmbeddingScaling, StableUnCLIPDecoder, load_decoder
from pipeline.decoders.unclip import normalizer_embedding_norm
from pipeline.errors import PipelineInputError


@pytest.fixture(scope="module")
def unclip(unclip_dir):
    return load_decoder(unclip_dir, noise_level=10)


def test_default_norm_comes_from_the_image_normalizer(unclip):
    assert unclip.noise_level == 10
    assert unclip.embedding_norm == pytest.approx(normalizer_embedding_norm(unclip.pipe))
    assert unclip.embedding_scaling is EmbeddingScaling.NORMALIZE


def test_rescales_to_embedding_norm(unclip):
    rows = torch.tensor([[3.0] + [0.0] * 31, [0.0] * 32])
    out = unclip.rescale(rows)
    assert out[0].norm().item() == pytest.approx(unclip.embedding_norm, rel=1e-6)
    assert torch.count_nonzero(out[1]) == 0


@pytest.mark.parametrize(("scaling", "expected"), [("multiply", 0.5 * 7.5), ("none", 0.5)], ids=["multiply", "none"])
def test_other_scalings(unclip_dir, scaling, expected):
    decoder = load_decoder(unclip_dir, embedding_norm=7.5, embedding_scaling=scaling)
    row = torch.tensor([[0.5] + [0.0] * 31])
    assert decoder.rescale(row).norm().item() == pytest.approx(expected)


def test_norm_from_public_images_embeddings_and_explicit(unclip_dir):
    images = [Image.new("RGB", (32, 32), color=(c, c, c)) for c in (0, 128, 255)]
    estimated = StableUnCLIPDecoder.from_pretrained(unclip_dir, public_images=images)
    assert estimated.embedding_norm > 0
    embeddings = np.stack([np.full(32, 2.0 / 32**0.5), np.full(32, 4.0 / 32**0.5)])
    assert load_decoder(unclip_dir, public_embeddings=embeddings).embedding_norm == pytest.approx(3.0)
    assert load_decoder(unclip_dir, embedding_norm=7.5, public_embeddings=embeddings).embedding_norm == 7.5


def test_noise_level_changes_the_images(unclip_dir):
    cond = torch.nn.functional.normalize(torch.ones(1, 32), dim=1)
    low, high = (np.asarray(load_decoder(unclip_dir, noise_level=level).generate(
        cond, steps=2, generator=torch.Generator().manual_seed(0))[0]) for level in (0, 900))
    assert not np.array_equal(low, high)


def test_output_size_knobs(unclip_dir):
    decoder = load_decoder(unclip_dir, height=24, width=32)
    assert decoder.generate(torch.ones(1, 32), steps=1)[0].size == (32, 24)


@pytest.mark.parametrize(
    ("knobs", "match"),
    [
        ({"noise_level": 1000}, "noise_level"),
        ({"embedding_norm": -1.0}, "embedding_norm"),
        ({"embedding_scaling": "cube"}, "embedding_scaling must be one of normalize, multiply, none"),
        ({"public_embeddings": np.ones((2, 31))}, r"\(n, 32\)"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"torch_dtype": "float8"}, "torch_dtype"),
    ],
    ids=["noise-level", "norm", "scaling", "public-width", "steps", "dtype"],
)
def test_refuses_bad_knobs(unclip_dir, knobs, match):
    with pytest.raises(PipelineInputError, match=match):
        load_decoder(unclip_dir, **knobs)


def test_built_in_memory_is_identified_by_its_state_dicts(unclip):
    built = StableUnCLIPDecoder(unclip.pipe)
    assert built.model_id == "stable-unclip@memory"
    assert len(built.sha256) == 64 and built.sha256 != unclip.sha256
