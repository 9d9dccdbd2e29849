"""The same decoder folders on CUDA (skipped without a GPU): shapes, determinism, width, fp16 for diffusers families."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.decoders import load_decoder

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("dtype", [None, "float16"], ids=["fp32", "fp16"])
def test_generates_on_cuda(family_dir, dtype):
    family, folder = family_dir
    if family == "tiny" and dtype is not None:
        pytest.skip("the tiny format has no torch_dtype knob")
    decoder = load_decoder(folder, device="cuda", torch_dtype=dtype)
    cond = torch.nn.functional.normalize(torch.randn(2, decoder.condition_dim), dim=1)
    a, b = (decoder.generate(cond, num_images_per_condition=2, steps=2, generator=torch.Generator().manual_seed(0))
            for _ in range(2))
    assert len(a) == 4
    np.testing.assert_array_equal(np.stack([np.asarray(im) for im in a]), np.stack([np.asarray(im) for im in b]))
    assert load_decoder(folder).sha256 == decoder.sha256  # the device does not change the identity
