"""Training data = exactly the shard's current records, read from their recorded sources."""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import torch
from finetune_testlib import PER_CLASS

from index import PrivateIndex, build_index
from pipeline.data import load_mnist_split, to_pil
from pipeline.finetune import images_to_tensor, read_shard_records


def test_all_records_read_with_their_embeddings(shared_index: PrivateIndex) -> None:
    recs = read_shard_records(shared_index, "default")
    shard = shared_index.shard("default")
    assert len(recs) == recs.shard_records == 10 * PER_CLASS and not recs.skipped
    assert np.array_equal(recs.ids, shard.ids)
    assert np.array_equal(recs.embeddings, shard.embeddings)
    x = images_to_tensor(recs.images, 16)
    assert x.shape == (len(recs), 1, 16, 16) and float(x.min()) >= -1 and float(x.max()) <= 1


def test_gone_and_changed_sources_are_skipped_and_reported(corpus: Path) -> None:
    pngs = sorted((corpus / "pngs").rglob("*.png"))
    pngs[0].unlink()
    to_pil(np.full((28, 28), 200, dtype=np.uint8)).save(pngs[1])  # same path, other pixels
    recs = read_shard_records(PrivateIndex.open(corpus / "index"), "default")
    assert len(recs) == recs.shard_records - 2
    reasons = {Path(s["source"]).name: s["reason"] for s in recs.skipped}
    assert reasons == {pngs[0].name: "source is gone (file or dataset row missing)",
                       pngs[1].name: "source changed since it was indexed (different pixels)"}


def test_removed_records_are_never_read(corpus: Path) -> None:
    index = PrivateIndex.open(corpus / "index")
    drop = sorted((corpus / "pngs" / "3").glob("*.png"))
    index.remove(sources=[str(p) for p in drop])
    recs = read_shard_records(PrivateIndex.open(corpus / "index"), "default")
    assert len(recs) == recs.shard_records == 10 * PER_CLASS - len(drop) and not recs.skipped
    assert not {str(p) for p in drop} & {s["source"] for s in recs.skipped}


def test_dataset_row_sources(tmp_path: Path) -> None:
    split = load_mnist_split()
    images = [to_pil(split.private_images[i]).convert("RGB") for i in range(12)]
    ds = datasets.Dataset.from_dict({"image": images}, features=datasets.Features({"image": datasets.Image()}))
    ds.to_parquet(str(tmp_path / "digits.parquet"))
    build_index(tmp_path / "digits.parquet", tmp_path / "ix", progress=False, num_threads=1)
    recs = read_shard_records(PrivateIndex.open(tmp_path / "ix"), "default")
    assert len(recs) == 12 and not recs.skipped
    got = images_to_tensor(recs.images, 28)
    want = torch.from_numpy(split.private_images[:12].astype(np.float32) / 127.5 - 1)[:, None]
    assert torch.allclose(torch.sort(got.flatten(1).sum(1)).values, torch.sort(want.flatten(1).sum(1)).values)
