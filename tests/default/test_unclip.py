"""StableUnCLIPDecoder on tiny random components built from config, saved and loaded from a local folder."""

from __future__ import annotations

import pytest
import torch

from pipeline.decoders import Decoder, StableUnCLIPDecoder
from pipeline.errors import PipelineInputError


@pytest.fixture(scope="module")
def unclip(unclip_dir):
    return StableUnCLIPDecoder.from_pretrained(unclip_dir, noise_level=10)


def test_generates_from_aggregates(unclip):
    assert isinstance(unclip, Decoder) and unclip.embedding_dim == 32
    conditions = torch.nn.functional.normalize(torch.randn(2, 32), dim=1)
    images = unclip.generate(conditions, num_images_per_condition=2, steps=2,
                             generator=torch.Generator().manual_seed(0))
    assert len(images) == 4
    assert all(im.size == (16, 16) and im.mode == "RGB" for im in images)


def test_rescales_to_embedding_norm(unclip):
    rows = torch.tensor([[3.0] + [0.0] * 31, [0.0] * 32])
    out = unclip.rescale(rows)
    assert out[0].norm().item() == pytest.approx(unclip.embedding_norm, rel=1e-6)
    assert torch.count_nonzero(out[1]) == 0


def test_norm_from_public_images_and_explicit(unclip_dir, capfd):
    from PIL import Image

    images = [Image.new("RGB", (32, 32), color=(c, c, c)) for c in (0, 128, 255)]
    estimated = StableUnCLIPDecoder.from_pretrained(unclip_dir, public_images=images)
    assert estimated.embedding_norm > 0
    capfd.readouterr()
    given = StableUnCLIPDecoder.from_pretrained(unclip_dir, embedding_norm=7.5)
    assert given.embedding_norm == 7.5
    assert capfd.readouterr().err == ""  # loading prints nothing (no "accelerate not found" warning)


def test_refuses_bad_folder_and_noise_level(tmp_path, unclip):
    with pytest.raises(PipelineInputError, match="model_index.json"):
        StableUnCLIPDecoder.from_pretrained(tmp_path)
    with pytest.raises(PipelineInputError, match="noise_level"):
        StableUnCLIPDecoder(unclip.pipe, noise_level=1000)
