"""Adapters: only trained tensors, private atomic writes, round trip, base-decoder hash check."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
import torch
from finetune_testlib import tiny_unet
from safetensors.torch import load_file

from pipeline.decoders import TinyDecoder
from pipeline.errors import PipelineInputError
from pipeline.finetune import DPFineTuner, decoder_sha256, load_adapter, read_manifest, save_adapter
from pipeline.finetune.adapter import ADAPTER_FILE, MANIFEST_FILE


def _train(decoder: TinyDecoder, mode: str = "attention"):
    gen = torch.Generator().manual_seed(0)
    n, dim = 60, decoder.embedding_dim
    images = torch.rand(n, 1, 8, 8, generator=gen) * 2 - 1
    emb = torch.nn.functional.normalize(torch.randn(n, dim, generator=gen), dim=1)
    tuner = DPFineTuner(decoder, trainable=mode, batch_size=6, physical_batch_size=4, steps=2, lr=1e-2)
    return tuner.fit(images, emb, noise_multiplier=1.0, condition_sigma=0.2, delta=1e-5, _seed=0)


def _manifest(decoder: TinyDecoder, outcome) -> dict:
    sel = outcome.selection
    return {
        "base_decoder": {"sha256": decoder_sha256(decoder)},
        "trainable": sel.mode.value,
        "parameters": list(sel.parameters),
        "lora": {"rank": sel.lora_rank, "alpha": sel.lora_alpha} if sel.lora_rank else None,
    }


def _eps(decoder: TinyDecoder) -> torch.Tensor:
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(3, 1, decoder.image_size, decoder.image_size, generator=gen)
    c = torch.randn(3, decoder.embedding_dim, generator=gen)
    with torch.no_grad():
        return decoder.unet(x, torch.tensor([1, 20, 40]), encoder_hidden_states=c[:, None], class_labels=c).sample


@pytest.mark.parametrize("mode", ["attention", "attention+conditioning", "all", "lora"])
def test_round_trip_same_outputs(decoder: TinyDecoder, tmp_path: Path, mode: str) -> None:
    outcome = _train(decoder, mode)
    out = save_adapter(tmp_path / "adapter", outcome.state, _manifest(decoder, outcome))
    loaded = decoder.load_adapter(out)
    assert torch.equal(_eps(loaded), _eps(outcome.decoder))
    assert not torch.equal(_eps(loaded), _eps(decoder))  # the adapter changes the model
    images_a = loaded.generate(torch.ones(1, decoder.embedding_dim), steps=3, generator=torch.Generator().manual_seed(1))
    images_b = outcome.decoder.generate(torch.ones(1, decoder.embedding_dim), steps=3,
                                        generator=torch.Generator().manual_seed(1))
    assert [im.tobytes() for im in images_a] == [im.tobytes() for im in images_b]
    # the input decoder is untouched by loading
    assert decoder_sha256(decoder) == read_manifest(out)["base_decoder"]["sha256"]


def test_only_trained_tensors_written_private_and_atomic(decoder: TinyDecoder, tmp_path: Path) -> None:
    outcome = _train(decoder, "attention")
    out = save_adapter(tmp_path / "adapter", outcome.state, _manifest(decoder, outcome))
    assert set(load_file(out / ADAPTER_FILE)) == set(outcome.selection.parameters)
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    for name in (ADAPTER_FILE, MANIFEST_FILE):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o600
    assert sorted(p.name for p in out.iterdir()) == sorted([ADAPTER_FILE, MANIFEST_FILE])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_existing_output_refused(decoder: TinyDecoder, tmp_path: Path) -> None:
    outcome = _train(decoder)
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "x").write_text("keep")
    with pytest.raises(PipelineInputError, match="already exists"):
        save_adapter(tmp_path / "adapter", outcome.state, _manifest(decoder, outcome))
    assert (tmp_path / "adapter" / "x").read_text() == "keep"
    (tmp_path / "empty").mkdir()
    save_adapter(tmp_path / "empty", outcome.state, _manifest(decoder, outcome))  # an empty folder is fine


def test_adapter_for_another_decoder_refused(decoder: TinyDecoder, tmp_path: Path) -> None:
    outcome = _train(decoder)
    out = save_adapter(tmp_path / "adapter", outcome.state, _manifest(decoder, outcome))
    other = TinyDecoder(tiny_unet(decoder.embedding_dim, seed=1), decoder.scheduler)
    with pytest.raises(PipelineInputError, match="was trained for decoder sha256") as err:
        load_adapter(other, out)
    assert "\n" not in str(err.value)


def test_damaged_adapter_refused(decoder: TinyDecoder, tmp_path: Path) -> None:
    outcome = _train(decoder)
    out = save_adapter(tmp_path / "adapter", outcome.state, _manifest(decoder, outcome))
    blob = bytearray((out / ADAPTER_FILE).read_bytes())
    blob[-1] ^= 0xFF
    (out / ADAPTER_FILE).write_bytes(bytes(blob))
    with pytest.raises(PipelineInputError, match="checksum mismatch"):
        load_adapter(decoder, out)


def test_not_an_adapter_refused(decoder: TinyDecoder, tmp_path: Path) -> None:
    with pytest.raises(PipelineInputError, match="is not an adapter"):
        load_adapter(decoder, tmp_path)
    (tmp_path / MANIFEST_FILE).write_text(json.dumps({"format": "dprdm-adapter", "format_version": 99}))
    with pytest.raises(PipelineInputError, match="format version 99"):
        load_adapter(decoder, tmp_path)


def test_decoder_hash_is_content_based(decoder: TinyDecoder, decoder_dir: Path) -> None:
    again = TinyDecoder.from_pretrained(decoder_dir)
    assert decoder_sha256(again) == decoder_sha256(decoder)
    with torch.no_grad():
        next(again.unet.parameters()).view(-1)[0] += 1e-3
    assert decoder_sha256(again) != decoder_sha256(decoder)
