"""Training smoke tests: a few steps into a temporary folder (never over the shipped weights)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.train import DecoderSettings, EncoderSettings, train_decoder, train_encoder
from pipeline.train.encoder import default_encoder_dir


@pytest.fixture(scope="module")
def smoke_encoder(tmp_path_factory, small_split):
    out = tmp_path_factory.mktemp("enc")
    report = train_encoder(out, settings=EncoderSettings(max_steps=2, batch_size=16), progress=False,
                           split=small_split)
    return out, report


def test_encoder_smoke_writes_a_local_dir_checkpoint(smoke_encoder):
    import open_clip

    out, report = smoke_encoder
    assert report.steps == 2 and out != default_encoder_dir()
    record = json.loads((out / "training_settings.json").read_text())
    assert record["settings"]["max_steps"] == 2 and record["steps"] == 2
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{out}")
    assert model.text_projection.shape[1] == EncoderSettings().embed_dim


def test_decoder_smoke(smoke_encoder, small_split, tmp_path):
    from pipeline.decoders import TinyDecoder

    enc_dir, _ = smoke_encoder
    settings = DecoderSettings(image_size=8, block_out_channels=(8, 16), attention_head_dim=4, steps=2,
                               batch_size=8, k_min=2, k_max=4)
    report = train_decoder(tmp_path / "dec", encoder_dir=enc_dir, settings=settings, progress=False,
                           split=small_split)
    assert report.steps == 2
    decoder = TinyDecoder.from_pretrained(tmp_path / "dec")
    assert decoder.image_size == 8 and decoder.embedding_dim == EncoderSettings().embed_dim
    record = json.loads((tmp_path / "dec" / "training_settings.json").read_text())
    assert record["settings"]["k_max"] == 4


def test_cli_train_encoder_json(tmp_path):
    result = CliRunner().invoke(app, ["train", "encoder", "--out", str(tmp_path / "enc"), "--max-steps", "1",
                                      "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["steps"] == 1 and payload["out_dir"] == str(tmp_path / "enc")
    assert (tmp_path / "enc" / "open_clip_model.safetensors").is_file()
