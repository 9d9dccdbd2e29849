"""Recognising decoder folders: the bundled default, each family, unknown and damaged folders, knobs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pipeline.decoders import DecoderFamily, StableUnCLIPDecoder, describe_decoder, family_knobs, load_decoder
from pipeline.decoders.loading import _BUNDLED_DIR
from pipeline.decoders.tiny import BUNDLED_DECODER_DIR
from pipeline.errors import PipelineInputError


def _copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / folder.name))


def _edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_none_is_the_bundled_tiny_decoder():
    assert _BUNDLED_DIR == BUNDLED_DECODER_DIR
    info = describe_decoder(None)
    assert info.family is DecoderFamily.TINY and info.folder == BUNDLED_DECODER_DIR and info.condition_dim == 16
    decoder = load_decoder(None)
    assert decoder.model_id == "tiny@bundled" and decoder.condition_dim == 16


def test_accepts_a_path_with_a_tilde(tiny_dir, monkeypatch):
    monkeypatch.setenv("HOME", str(tiny_dir.parent))
    assert describe_decoder(f"~/{tiny_dir.name}").folder == tiny_dir.resolve()


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda d: d, "an empty folder"),
        (lambda d: (d / "weights.ckpt").write_bytes(b"x"), r"found: weights\.ckpt"),
        (lambda d: (d / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}'),
         "model_index.json names 'StableDiffusionPipeline'"),
        (lambda d: (d / "model_index.json").write_text('{"_class_name": "StableUnCLIPPipeline"}'),
         "names 'StableUnCLIPPipeline'"),
    ],
    ids=["empty", "stray-file", "text-to-image-sd", "unclip-text-to-image"],
)
def test_unknown_folder_is_one_line_naming_found_and_supported(tmp_path, make, match):
    make(tmp_path)
    with pytest.raises(PipelineInputError, match=match) as err:
        load_decoder(tmp_path)
    message = str(err.value)
    assert "\n" not in message
    assert "supported: the dprdm tiny format" in message and "KandinskyV22Pipeline" in message


def test_missing_folder(tmp_path):
    with pytest.raises(PipelineInputError, match="does not exist"):
        load_decoder(tmp_path / "absent")


def test_family_constructor_refuses_another_family(kandinsky_dir):
    with pytest.raises(PipelineInputError, match="holds a kandinsky-2.2 decoder, not stable-unclip"):
        StableUnCLIPDecoder.from_pretrained(kandinsky_dir)


def test_knob_of_another_family_is_refused_and_none_knobs_ignored(tiny_dir, kandinsky_dir):
    with pytest.raises(PipelineInputError, match="noise_level does not apply to the tiny decoder.*takes: device"):
        load_decoder(tiny_dir, noise_level=5)
    with pytest.raises(PipelineInputError, match="noise_level does not apply to the kandinsky-2.2 decoder"):
        load_decoder(kandinsky_dir, noise_level=5)
    assert load_decoder(tiny_dir, noise_level=None, embedding_norm=None).condition_dim == 16


def test_family_knobs_use_diffusers_names():
    assert family_knobs(DecoderFamily.TINY) == ("device",)
    assert {"noise_level", "num_inference_steps", "embedding_norm", "embedding_scaling", "torch_dtype"} <= set(
        family_knobs(DecoderFamily.STABLE_UNCLIP))
    assert {"negative_image_embeds", "prior_dir", "num_inference_steps", "embedding_scaling"} <= set(
        family_knobs(DecoderFamily.KANDINSKY_V22))


def test_unclip_whose_unet_does_not_take_the_normaliser_width(unclip_dir, tmp_path):
    folder = _copy(unclip_dir, tmp_path)
    _edit_json(folder / "image_normalizer" / "config.json", embedding_dim=48)
    with pytest.raises(PipelineInputError, match="class projection input 64, expected 96"):
        describe_decoder(folder)


def test_kandinsky_whose_unet_takes_no_image_embeddings(kandinsky_dir, tmp_path):
    folder = _copy(kandinsky_dir, tmp_path)
    _edit_json(folder / "unet" / "config.json", encoder_hid_dim_type="text_proj")
    with pytest.raises(PipelineInputError, match="not conditioned on image embeddings"):
        describe_decoder(folder)


def test_missing_component_config(kandinsky_dir, tmp_path):
    folder = _copy(kandinsky_dir, tmp_path)
    (folder / "unet" / "config.json").unlink()
    with pytest.raises(PipelineInputError, match="lacks unet/config.json"):
        describe_decoder(folder)


def test_missing_weights_is_a_one_line_input_error(kandinsky_dir, tmp_path):
    folder = _copy(kandinsky_dir, tmp_path)
    for weights in (folder / "movq").glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(PipelineInputError, match="does not load as KandinskyV22Pipeline") as err:
        load_decoder(folder)
    assert "\n" not in str(err.value)


def test_sha256_follows_the_weight_files(tiny_dir, tmp_path):
    folder = _copy(tiny_dir, tmp_path)
    before = load_decoder(folder).sha256
    (folder / "unet" / "config.json").write_text((folder / "unet" / "config.json").read_text() + " ")
    assert load_decoder(folder).sha256 == before  # configs are not weights
    from decoder_folders import build_tiny_folder

    other = build_tiny_folder(tmp_path / "other", seed=1)
    assert load_decoder(other).sha256 != before


def test_in_memory_decoder_has_a_state_dict_identity(tiny_dir):
    from pipeline.decoders import TinyDecoder

    loaded = load_decoder(tiny_dir)
    built = TinyDecoder(loaded.unet, loaded.scheduler)
    assert built.model_id == "tiny@memory"
    assert len(built.sha256) == 64 and built.sha256 != loaded.sha256


def test_sha256_reads_the_requested_variant(tmp_path):
    from pipeline.decoders.base import weights_sha256

    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"fp32")
    plain = weights_sha256(tmp_path)
    for shard in ("diffusion_pytorch_model.fp16-00001-of-00002.safetensors",
                  "diffusion_pytorch_model.fp16-00002-of-00002.safetensors"):
        (tmp_path / "unet" / shard).write_bytes(shard.encode())
    assert weights_sha256(tmp_path) == plain  # variant files are not what a plain load reads
    fp16 = weights_sha256(tmp_path, variant="fp16")
    assert fp16 != plain
    (tmp_path / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"ignored: safetensors wins")
    assert weights_sha256(tmp_path) == plain
