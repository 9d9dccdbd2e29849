"""The public/private split: recorded, deterministic, disjoint, stratified."""

from __future__ import annotations

import json

import numpy as np

from pipeline.data import (
    SPLIT_PATH,
    SPLIT_SEED,
    DigitSplit,
    captions_for,
    load_digits_small,
    load_mnist_split,
    make_split,
    write_private_pngs,
)


def test_recorded_split_is_the_seeded_split(split):
    record = json.loads(SPLIT_PATH.read_text())
    assert record["seed"] == SPLIT_SEED
    all_labels = np.empty(5000, dtype=np.int64)
    all_labels[split.private_rows] = split.private_labels
    public_rows = np.setdiff1d(np.arange(5000), split.private_rows)
    all_labels[public_rows] = split.public_labels
    np.testing.assert_array_equal(make_split(all_labels, seed=SPLIT_SEED), split.private_rows)
    np.testing.assert_array_equal(record["private_rows"], split.private_rows)


def test_split_is_deterministic(split):
    again = load_mnist_split()
    np.testing.assert_array_equal(again.private_rows, split.private_rows)
    np.testing.assert_array_equal(again.public_images, split.public_images)
    assert again.to_dict() == split.to_dict()


def test_halves_are_disjoint_and_stratified(split):
    assert len(split.public_labels) == len(split.private_labels) == 2500
    assert np.bincount(split.public_labels).tolist() == [250] * 10
    assert np.bincount(split.private_labels).tolist() == [250] * 10
    pub = {im.tobytes() for im in split.public_images}
    overlap = sum(im.tobytes() in pub for im in split.private_images)
    assert overlap == 0  # no image appears in both halves
    assert len(set(split.private_rows.tolist())) == 2500


def test_digits_small_and_captions():
    images, labels = load_digits_small()
    assert images.shape == (1797, 8, 8) and images.dtype == np.uint8 and labels.max() == 9
    assert "a handwritten digit seven" in captions_for(7)
    assert all("7" in c or "seven" in c for c in captions_for(7))


def test_write_private_pngs(tmp_path, small_split: DigitSplit):
    from PIL import Image

    out = write_private_pngs(tmp_path / "corpus", split=small_split)
    files = sorted(out.rglob("*.png"))
    assert len(files) == len(small_split.private_labels)
    first = Image.open(files[0])
    assert first.size == (28, 28) and first.mode == "L"
    assert {p.parent.name for p in files} == {str(c) for c in range(10)}
    # the private corpus is owner-only on disk, like the index built from it
    assert (out.stat().st_mode & 0o777) == 0o700
    assert all((p.parent.stat().st_mode & 0o777) == 0o700 for p in files)
    assert all((p.stat().st_mode & 0o777) == 0o600 for p in files)
