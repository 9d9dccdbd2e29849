"""Recognise a decoder folder and load the matching ``Decoder`` (``dprdm generate --decoder DIR``).

Three layouts are recognised, from their JSON configs alone (this module imports neither torch nor diffusers, so
:func:`describe_decoder` is cheap and a caller can refuse an encoder/decoder width mismatch before loading weights
or charging any budget):

- the dprdm tiny format: ``unet/`` + ``scheduler/`` written by ``dprdm train decoder`` (no ``model_index.json``);
  None means the bundled one;
- a diffusers ``StableUnCLIPImg2ImgPipeline`` folder (``model_index.json``; width = ``image_normalizer``'s
  ``embedding_dim``, the UNet's class projection taking twice that with the noise-level embedding);
- a diffusers ``KandinskyV22Pipeline`` folder (``model_index.json``; width = the UNet's ``encoder_hid_dim`` with
  ``encoder_hid_dim_type="image_proj"``).
"""

from __future__ import annotations

import enum
import inspect
import json
import os
from dataclasses import dataclass
from pathlib import Path

from index.fs import expand_user
from pipeline.errors import PipelineInputError

_SUPPORTED = (
    "supported: the dprdm tiny format (unet/ + scheduler/), a diffusers StableUnCLIPImg2ImgPipeline folder, "
    "a diffusers KandinskyV22Pipeline folder"
)


# The bundled tiny decoder (same folder as ``pipeline.decoders.tiny.BUNDLED_DECODER_DIR``, repeated here so that
# describing it imports no torch; a test keeps the two equal).
_BUNDLED_DIR = Path(__file__).resolve().parents[1] / "models" / "tiny-decoder"


class DecoderFamily(enum.Enum):
    """The decoder families ``load_decoder`` knows."""

    TINY = "tiny"
    STABLE_UNCLIP = "stable-unclip"
    KANDINSKY_V22 = "kandinsky-2.2"


_PIPELINE_CLASSES = {
    "StableUnCLIPImg2ImgPipeline": DecoderFamily.STABLE_UNCLIP,
    "KandinskyV22Pipeline": DecoderFamily.KANDINSKY_V22,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class DecoderInfo:
    """What a decoder folder is, read from its configs.

    Attributes:
        family: the decoder family.
        folder: the folder (absolute; the bundled one for None).
        condition_dim: width of the embeddings it is conditioned on (must equal the index's embedding width).
    """

    family: DecoderFamily
    folder: Path
    condition_dim: int


def _read_json(folder: Path, relative: str) -> dict:
    path = folder / relative
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise PipelineInputError(f"decoder folder {folder} lacks {relative}; copy the complete model folder") from None
    except (OSError, ValueError) as err:
        raise PipelineInputError(f"cannot read {path} ({type(err).__name__}); copy the model folder again") from err
    if not isinstance(data, dict):
        raise PipelineInputError(f"{path} is not a JSON object; copy the model folder again")
    return data


def _positive_int(value, what: str, folder: Path) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise PipelineInputError(f"decoder folder {folder}: {what} must be a positive integer; found {value!r}")
    return value


def _condition_dim(family: DecoderFamily, folder: Path) -> int:
    """Embedding width from the family's configs, checking the UNet takes it the way the family needs."""
    unet = _read_json(folder, "unet/config.json")
    if family is DecoderFamily.TINY:
        return _positive_int(unet.get("projection_class_embeddings_input_dim"),
                             "unet projection_class_embeddings_input_dim", folder)
    if family is DecoderFamily.STABLE_UNCLIP:
        dim = _positive_int(_read_json(folder, "image_normalizer/config.json").get("embedding_dim"),
                            "image_normalizer embedding_dim", folder)
        if unet.get("class_embed_type") != "projection" or unet.get("projection_class_embeddings_input_dim") != 2 * dim:
            raise PipelineInputError(
                f"decoder folder {folder}: the unet does not take {dim}-d image embeddings plus their noise-level "
                f"embedding (class projection input {unet.get('projection_class_embeddings_input_dim')!r}, "
                f"expected {2 * dim}); copy a matching Stable unCLIP snapshot"
            )
        return dim
    if unet.get("encoder_hid_dim_type") != "image_proj" or unet.get("addition_embed_type") != "image":
        raise PipelineInputError(
            f"decoder folder {folder}: the unet is not conditioned on image embeddings (encoder_hid_dim_type "
            f"{unet.get('encoder_hid_dim_type')!r}, addition_embed_type {unet.get('addition_embed_type')!r}); "
            "pass the kandinsky-2-2-decoder snapshot"
        )
    return _positive_int(unet.get("encoder_hid_dim"), "unet encoder_hid_dim", folder)


def _found(folder: Path) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    shown = ", ".join(names[:6]) + (f", … ({len(names)} entries)" if len(names) > 6 else "")
    return f"no model_index.json and no unet/ + scheduler/ (found: {shown or 'an empty folder'})"


def describe_decoder(path: str | os.PathLike | None, *, expect: DecoderFamily | None = None) -> DecoderInfo:
    """Say which decoder family a folder holds and its condition width, from its JSON configs only.

    Args:
        path: the folder; None = the bundled tiny decoder.
        expect: if given, refuse a folder of another family.

    Raises:
        PipelineInputError: a missing folder, an unknown layout (one line naming what was found and what is
            supported), inconsistent configs, or a family other than ``expect``.
    """
    folder = _BUNDLED_DIR if path is None else expand_user(path).resolve()
    if not folder.is_dir():
        raise PipelineInputError(f"decoder folder {folder} does not exist or is not a folder; {_SUPPORTED}")
    if (folder / "model_index.json").is_file():
        name = _read_json(folder, "model_index.json").get("_class_name")
        family = _PIPELINE_CLASSES.get(name)
        if family is None:
            raise PipelineInputError(
                f"decoder folder {folder} is not a decoder dprdm can load: model_index.json names {name!r}; "
                f"{_SUPPORTED}"
            )
    elif (folder / "unet" / "config.json").is_file() and (folder / "scheduler").is_dir():
        family = DecoderFamily.TINY
    else:
        raise PipelineInputError(f"decoder folder {folder} is not a decoder dprdm can load: {_found(folder)}; "
                                 f"{_SUPPORTED}")
    if expect is not None and family is not expect:
        raise PipelineInputError(
            f"decoder folder {folder} holds a {family.value} decoder, not {expect.value}; use load_decoder(path)"
        )
    return DecoderInfo(family=family, folder=folder, condition_dim=_condition_dim(family, folder))


def _loader(family: DecoderFamily):
    """The family's loading callable (imports torch/diffusers only now)."""
    if family is DecoderFamily.STABLE_UNCLIP:
        from pipeline.decoders.unclip import StableUnCLIPDecoder

        return StableUnCLIPDecoder.from_pretrained
    if family is DecoderFamily.KANDINSKY_V22:
        from pipeline.decoders.kandinsky import KandinskyV22Decoder

        return KandinskyV22Decoder.from_pretrained
    return _load_tiny


def _load_tiny(local_dir: Path, *, device: str | None = None):
    """``TinyDecoder.from_pretrained``, then moved to ``device``; the bundled folder is labelled ``tiny@bundled``."""
    from pipeline.decoders.tiny import TinyDecoder

    decoder = TinyDecoder.from_pretrained(local_dir)
    if device is not None:
        decoder.unet.to(device)
    return decoder


def family_knobs(family: DecoderFamily) -> tuple[str, ...]:
    """Names of the keyword knobs ``load_decoder`` accepts for ``family``."""
    params = list(inspect.signature(_loader(family)).parameters.values())[1:]
    return tuple(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)


def load_decoder(path: str | os.PathLike | None = None, **knobs):
    """Load the decoder in ``path`` (None = bundled tiny) with its family's knobs; never downloads.

    Knobs whose value is None are ignored (so a CLI can pass every option through). Per family:

    - tiny: ``device``;
    - stable-unclip: ``noise_level``, ``embedding_norm``, ``embedding_scaling``, ``public_images``,
      ``public_embeddings``, ``prompt``, ``num_inference_steps``, ``height``, ``width``, ``torch_dtype``,
      ``variant``, ``device``;
    - kandinsky-2.2: ``embedding_norm``, ``embedding_scaling``, ``public_embeddings``, ``prior_dir``,
      ``negative_image_embeds``, ``num_inference_steps``, ``height``, ``width``, ``torch_dtype``, ``variant``,
      ``device``.

    Returns:
        a :class:`~pipeline.decoders.base.Decoder` with ``condition_dim``, ``model_id`` and ``sha256``.

    Raises:
        PipelineInputError: an unknown or damaged folder, or a knob the family does not take (named, with the
            family's knobs).
    """
    info = describe_decoder(path)
    given = {name: value for name, value in knobs.items() if value is not None}
    accepted = family_knobs(info.family)
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        raise PipelineInputError(
            f"{', '.join(unknown)} does not apply to the {info.family.value} decoder in {info.folder}; "
            f"it takes: {', '.join(accepted)}"
        )
    return _loader(info.family)(info.folder, **given)
