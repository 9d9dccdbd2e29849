"""The bundled tiny CLIP loads offline through open_clip's local-dir path and gives small unit embeddings."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline.train.encoder import default_encoder_dir, encode_image_array


@pytest.fixture(scope="module")
def bundled_clip():
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{default_encoder_dir()}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{default_encoder_dir()}")
    return model.eval(), preprocess, tokenizer


def test_bundled_encoder_gives_small_unit_embeddings(bundled_clip, split):
    model, preprocess, tokenizer = bundled_clip
    emb = encode_image_array(model, split.private_images[:8], preprocess)
    assert emb.shape[0] == 8 and 16 <= emb.shape[1] <= 32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    with torch.no_grad():
        text = model.encode_text(tokenizer(["a handwritten digit seven"]), normalize=True)
    assert text.shape == (1, emb.shape[1])


def test_bundled_encoder_separates_classes(bundled_clip, split):
    """Same-class private images are nearer than other-class ones (a coarse check of the recorded P@10)."""
    model, preprocess, _ = bundled_clip
    rows = np.concatenate([np.flatnonzero(split.private_labels == c)[:10] for c in range(10)])
    emb = encode_image_array(model, split.private_images[rows], preprocess)
    labels = split.private_labels[rows]
    sims = emb @ emb.T
    same = labels[:, None] == labels[None, :]
    np.fill_diagonal(same, False)
    other = labels[:, None] != labels[None, :]
    assert sims[same].mean() > sims[other].mean() + 0.2


def test_training_record_matches_split(split):
    record = json.loads((default_encoder_dir() / "training_settings.json").read_text())
    assert record["data_split"] == split.to_dict()
    assert record["settings"]["embed_dim"] == 16
    assert 0.0 <= record["metrics_on_private_half"]["zero_shot_accuracy"] <= 1.0
