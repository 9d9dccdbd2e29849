"""``dprdm budget init --index``: one scope per shard with N read from the index, delta < 1/N per shard."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from pipeline.cli import app

TINY_CLIP = {
    "embed_dim": 8,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 8, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def two_shard_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An index with shards 'big' (6 images) and 'small' (3 images), built with a random-init tiny open_clip."""
    import open_clip
    from safetensors.torch import save_file

    from index import build_index

    root = tmp_path_factory.mktemp("budget-index")
    model_dir = root / "tiny-clip"
    model_dir.mkdir()
    torch.manual_seed(0)
    save_file(open_clip.CLIP(**TINY_CLIP).state_dict(), str(model_dir / "open_clip_model.safetensors"))
    (model_dir / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": TINY_CLIP, "preprocess_cfg": {}})
    )
    rng = np.random.default_rng(0)
    index_dir = root / "index"
    for shard, count in (("big", 6), ("small", 3)):
        folder = root / f"images-{shard}"
        folder.mkdir()
        for i in range(count):
            pixels = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
            Image.fromarray(pixels, "RGB").save(folder / f"{shard}{i}.png")
        build_index(
            folder, index_dir, shard=shard, model=f"local-dir:{model_dir}", progress=False, num_threads=1
        )
    return index_dir


def test_init_creates_one_scope_per_shard_with_records_from_the_index(two_shard_index):
    runner = CliRunner()
    args = ["budget", "init", "--index", str(two_shard_index), "--epsilon", "1", "--k", "2", "--q", "0.5"]
    refused = runner.invoke(app, [*args, "--delta", "0.2", "--sigma", "3", "--json"])
    assert refused.exit_code == 2 and "scope 'big' with N=6 records" in refused.stderr
    assert not (two_shard_index / "budget.sqlite").exists()  # nothing written for any shard

    created = runner.invoke(app, [*args, "--delta", "0.1", "--sigma", "3", "--json"])
    assert created.exit_code == 0, created.stderr
    scopes = json.loads(created.stdout)["scopes"]
    assert {name: s["records"] for name, s in scopes.items()} == {"big": 6, "small": 3}
    assert all(s["sigma"] == 3.0 and s["k"] == 2 and s["q"] == 0.5 for s in scopes.values())

    again = runner.invoke(app, [*args, "--delta", "0.01", "--sigma", "3", "--shard", "small"])
    assert again.exit_code == 2 and "already exist" in again.stderr
    unknown = runner.invoke(app, [*args, "--delta", "0.01", "--sigma", "3", "--shard", "nope"])
    assert unknown.exit_code == 2 and "shard 'nope' is not in index" in unknown.stderr

    shown = runner.invoke(app, ["budget", "show", "--index", str(two_shard_index), "--json"])
    assert shown.exit_code == 0 and sorted(json.loads(shown.stdout)["scopes"]) == ["big", "small"]
    from index import PrivateIndex

    # the ledger file inside the index directory does not upset the index
    assert PrivateIndex.open(two_shard_index).info()["records"] == 9
