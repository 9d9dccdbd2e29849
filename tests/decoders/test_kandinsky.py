"""KandinskyV22Decoder knobs on a tiny random pipeline saved with save_pretrained: norm, negative branch, size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from decoder_folders import build_kandinsky_prior_stats

from pipeline.decoders import KandinskyV22Decoder, load_decoder
from pipeline.errors import PipelineInputError


def test_defaults(kandinsky_dir):
    decoder = load_decoder(kandinsky_dir)
    assert isinstance(decoder, KandinskyV22Decoder)
    assert decoder.embedding_norm == 1.0 and decoder.num_inference_steps == 50
    assert torch.count_nonzero(decoder.negative_image_embeds) == 0


def test_norm_from_prior_statistics_and_public_embeddings(kandinsky_dir, tmp_path):
    prior = build_kandinsky_prior_stats(tmp_path / "prior-pipe", dim=24, norm=5.0)
    assert load_decoder(kandinsky_dir, prior_dir=prior).embedding_norm == pytest.approx(5.0, rel=1e-6)
    assert load_decoder(kandinsky_dir, prior_dir=prior / "prior").embedding_norm == pytest.approx(5.0, rel=1e-6)
    embeddings = np.full((3, 24), 2.0 / 24**0.5)
    assert load_decoder(kandinsky_dir, public_embeddings=embeddings, prior_dir=prior).embedding_norm == \
        pytest.approx(2.0)
    with pytest.raises(PipelineInputError, match="clip_mean/clip_std"):
        load_decoder(kandinsky_dir, prior_dir=tmp_path)


def test_negative_embedding_steers_guided_samples(kandinsky_dir):
    cond = torch.nn.functional.normalize(torch.ones(1, 24), dim=1)
    zero, other = (np.asarray(load_decoder(kandinsky_dir, negative_image_embeds=neg).generate(
        cond, steps=2, guidance_scale=4.0, generator=torch.Generator().manual_seed(0))[0])
        for neg in (None, np.linspace(-1, 1, 24)))
    assert not np.array_equal(zero, other)


def test_refuses_a_negative_embedding_of_another_width(kandinsky_dir):
    with pytest.raises(PipelineInputError, match="negative_image_embeds must be one finite embedding of width 24"):
        load_decoder(kandinsky_dir, negative_image_embeds=np.zeros(23))


def test_output_size_knobs(kandinsky_dir):
    decoder = load_decoder(kandinsky_dir, height=32, width=16)
    assert decoder.generate(torch.ones(1, 24), steps=1)[0].size == (16, 32)


@pytest.mark.parametrize("guidance_scale", [0.0, 1.0, 4.0], ids=["zero", "no-cfg", "cfg"])
def test_guidance_modes(kandinsky_dir, guidance_scale):
    images = load_decoder(kandinsky_dir).generate(torch.ones(2, 24), steps=1, guidance_scale=guidance_scale,
                                                  num_images_per_condition=2)
    assert len(images) == 4


def test_array_knobs_from_npy_files(kandinsky_dir, tmp_path):
    np.save(tmp_path / "neg.npy", np.linspace(-1, 1, 24))
    np.save(tmp_path / "public.npy", np.full((2, 24), 3.0 / 24**0.5))
    decoder = load_decoder(kandinsky_dir, negative_image_embeds=tmp_path / "neg.npy",
                           public_embeddings=str(tmp_path / "public.npy"))
    assert decoder.embedding_norm == pytest.approx(3.0)
    assert decoder.negative_image_embeds[0, 0].item() == pytest.approx(-1.0)
    (tmp_path / "bad.npy").write_text("not numpy")
    with pytest.raises(PipelineInputError, match=r"negative_image_embeds: cannot read .*bad\.npy"):
        load_decoder(kandinsky_dir, negative_image_embeds=tmp_path / "bad.npy")
