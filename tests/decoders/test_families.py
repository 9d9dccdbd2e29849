"""Every decoder family through ``load_decoder``: width, identity, shapes, determinism, batch vs single."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from pipeline.decoders import Decoder, describe_decoder, load_decoder
from pipeline.errors import PipelineInputError

MODES = {"tiny": "L", "stable-unclip": "RGB", "kandinsky-2.2": "RGB"}
SIDES = {"tiny": 8, "stable-unclip": 16, "kandinsky-2.2": 16}
WIDTHS = {"tiny": 16, "stable-unclip": 32, "kandinsky-2.2": 24}


@pytest.fixture(scope="module")
def loaded(family_dir):
    family, folder = family_dir
    return family, load_decoder(folder)


def _pixels(images) -> np.ndarray:
    return np.stack([np.asarray(im, dtype=np.int16) for im in images])


def _conditions(n: int, dim: int, seed: int = 0) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)), dim=1)


def test_reports_family_width_and_identity(loaded, family_dir):
    family, decoder = loaded
    _, folder = family_dir
    assert isinstance(decoder, Decoder)
    assert decoder.condition_dim == WIDTHS[family] == describe_decoder(folder).condition_dim
    assert describe_decoder(folder).family.value == family
    assert decoder.model_id == f"{family}@{folder.resolve()}"
    assert re.fullmatch(r"[0-9a-f]{64}", decoder.sha256)
    assert load_decoder(folder).sha256 == decoder.sha256  # a property of the files, not of the load


def test_families_hash_differently(family_dirs):
    hashes = {load_decoder(folder).sha256 for folder in family_dirs.values()}
    assert len(hashes) == 3


def test_generates_grouped_images_of_the_family_size(loaded):
    family, decoder = loaded
    images = decoder.generate(_conditions(2, decoder.condition_dim), num_images_per_condition=2, steps=2,
                              generator=torch.Generator().manual_seed(0))
    assert len(images) == 4
    assert all(im.size == (SIDES[family], SIDES[family]) and im.mode == MODES[family] for im in images)


def test_same_generator_same_images_different_generator_different(loaded):
    _, decoder = loaded
    cond = _conditions(2, decoder.condition_dim)
    a, b, c = (decoder.generate(cond, steps=2, generator=torch.Generator().manual_seed(s)) for s in (1, 1, 2))
    np.testing.assert_array_equal(_pixels(a), _pixels(b))
    assert not np.array_equal(_pixels(a), _pixels(c))


def test_batch_with_one_generator_per_image_matches_single_calls(loaded):
    """Image i depends only on generator i: a batch reproduces single calls (up to batched-kernel rounding)."""
    _, decoder = loaded
    cond = _conditions(2, decoder.condition_dim, seed=3)
    batch = decoder.generate(cond, steps=2, generator=[torch.Generator().manual_seed(s) for s in (5, 6)])
    singles = [decoder.generate(cond[i:i + 1], steps=2, generator=[torch.Generator().manual_seed(s)])[0]
               for i, s in enumerate((5, 6))]
    assert np.abs(_pixels(batch) - _pixels(singles)).max() <= 1


def test_refuses_conditions_of_another_width(loaded):
    _, decoder = loaded
    dim = decoder.condition_dim
    with pytest.raises(PipelineInputError, match=rf"shape \(B, {dim}\)"):
        decoder.generate(torch.randn(1, dim + 1), steps=1)


@pytest.mark.parametrize("family", ["stable-unclip", "kandinsky-2.2"])
def test_diffusers_families_refuse_a_generator_list_of_the_wrong_length(family_dirs, family):
    decoder = load_decoder(family_dirs[family])
    with pytest.raises(PipelineInputError, match=r"one per generated image \(4\); found 3"):
        decoder.generate(_conditions(2, decoder.condition_dim), num_images_per_condition=2, steps=1,
                         generator=[torch.Generator() for _ in range(3)])


@pytest.mark.parametrize("family", ["stable-unclip", "kandinsky-2.2"])
def test_diffusers_families_default_steps_from_the_knob(family_dirs, family):
    decoder = load_decoder(family_dirs[family], num_inference_steps=1)
    assert decoder.num_inference_steps == 1
    assert len(decoder.generate(_conditions(1, decoder.condition_dim))) == 1


def test_loading_prints_nothing_on_stderr(family_dir, capfd):
    _, folder = family_dir
    capfd.readouterr()
    load_decoder(folder)
    assert capfd.readouterr().err == ""  # CLI rule: errors are one line, loading is silent


@pytest.mark.parametrize("family", ["stable-unclip", "kandinsky-2.2"])
def test_builders_take_the_bundled_encoder_width(tmp_path, family):
    """The fixture builders at d = 16 (the bundled tiny CLIP's width), so a CLI test can pair them with a real index."""
    from decoder_folders import build_kandinsky_folder, build_unclip_folder

    build = build_unclip_folder if family == "stable-unclip" else build_kandinsky_folder
    folder = build(tmp_path / family, dim=describe_decoder(None).condition_dim)
    decoder = load_decoder(folder)
    assert decoder.condition_dim == 16
    assert len(decoder.generate(_conditions(1, 16), steps=1)) == 1
