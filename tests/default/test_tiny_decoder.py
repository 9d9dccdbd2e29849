"""TinyDecoder: the bundled weights and a tiny decoder built from config."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.decoders import Decoder, TinyDecoder
from pipeline.errors import PipelineInputError


def _pixels(images) -> np.ndarray:
    return np.stack([np.asarray(im) for im in images])


def test_bundled_decoder_generates_grouped_images(bundled_decoder):
    assert isinstance(bundled_decoder, Decoder)
    conditions = torch.nn.functional.normalize(torch.randn(2, bundled_decoder.embedding_dim), dim=1)
    images = bundled_decoder.generate(conditions, num_images_per_condition=3, steps=4,
                                      generator=torch.Generator().manual_seed(0))
    size = bundled_decoder.image_size
    assert len(images) == 6
    assert all(im.size == (size, size) and im.mode == "L" for im in images)


def test_same_generator_same_images_different_generator_different(tiny_decoder):
    cond = torch.randn(2, 16)
    a = tiny_decoder.generate(cond, steps=3, generator=torch.Generator().manual_seed(1))
    b = tiny_decoder.generate(cond, steps=3, generator=torch.Generator().manual_seed(1))
    c = tiny_decoder.generate(cond, steps=3, generator=torch.Generator().manual_seed(2))
    np.testing.assert_array_equal(_pixels(a), _pixels(b))
    assert not np.array_equal(_pixels(a), _pixels(c))


@pytest.mark.parametrize("guidance_scale", [0.0, 1.0, 2.0], ids=["unconditional", "no-cfg", "cfg"])
def test_tiny_decoder_guidance_modes(tiny_decoder, guidance_scale):
    images = tiny_decoder.generate(torch.randn(3, 16), steps=2, guidance_scale=guidance_scale,
                                   generator=torch.Generator().manual_seed(0))
    assert len(images) == 3 and images[0].size == (8, 8)


def test_batch_matches_single_row(tiny_decoder):
    """Row 0 of a batch equals row 0 alone: same initial noise, and rows do not interact (DDIM, eta = 0)."""
    cond = torch.randn(2, 16)
    batch = tiny_decoder.generate(cond, steps=2, generator=torch.Generator().manual_seed(3))
    single = tiny_decoder.generate(cond[:1], steps=2, generator=torch.Generator().manual_seed(3))
    diff = np.abs(_pixels(batch[:1]).astype(int) - _pixels(single).astype(int))
    assert diff.max() <= 1


@pytest.mark.parametrize(
    ("conditions", "kwargs", "match"),
    [
        (torch.randn(2, 8), {}, r"shape \(B, 16\)"),
        (torch.full((1, 16), float("nan")), {}, "NaN"),
        (torch.randn(1, 16), {"num_images_per_condition": 0}, "num_images_per_condition"),
        (torch.randn(1, 16), {"steps": 0}, "steps"),
    ],
    ids=["wrong-dim", "nan", "zero-images", "zero-steps"],
)
def test_bad_inputs_raise(tiny_decoder, conditions, kwargs, match):
    with pytest.raises(PipelineInputError, match=match):
        tiny_decoder.generate(conditions, **kwargs)


def test_save_and_load_round_trip(tiny_decoder, tmp_path, capfd):
    tiny_decoder.save_pretrained(tmp_path / "dec")
    capfd.readouterr()
    loaded = TinyDecoder.from_pretrained(tmp_path / "dec")
    assert capfd.readouterr().err == ""  # no multi-line "accelerate not found" warning (CLI: one stderr line)
    cond = torch.randn(1, 16)
    a = tiny_decoder.generate(cond, steps=2, generator=torch.Generator().manual_seed(0))
    b = loaded.generate(cond, steps=2, generator=torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(_pixels(a), _pixels(b))


def test_missing_folder_is_an_input_error(tmp_path):
    with pytest.raises(PipelineInputError, match="no 'unet/' subfolder"):
        TinyDecoder.from_pretrained(tmp_path)
