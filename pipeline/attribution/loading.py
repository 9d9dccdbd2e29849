"""Load the model to attribute: a decoder folder in the dprdm tiny format, optionally with a fine-tuned adapter.

Adapters come from the fine-tuning extra (``pipeline.finetune``, issue 11). This module finds its loader at call
time, so it works as soon as that package lands: ``pipeline.finetune.load_adapter(decoder, adapter_dir)`` if it
exists (its return value replaces the decoder when it returns one), else ``decoder.load_adapter(adapter_dir)``.
Attribution then differentiates the adapter's tensors only (the names its safetensors file stores; the rest of the
UNet is frozen).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from pipeline.errors import PipelineInputError

ADAPTER_EXTRA = "pipeline.finetune"


def _finetune_module():
    """``pipeline.finetune``, or None when the fine-tuning extra is not installed."""
    try:
        return importlib.import_module(ADAPTER_EXTRA)
    except ModuleNotFoundError as err:
        if err.name in (ADAPTER_EXTRA, "pipeline"):
            return None
        raise


def adapters_available() -> bool:
    """True when the fine-tuning extra (``pipeline.finetune``) can be imported."""
    return _finetune_module() is not None


def check_adapter_support(adapter: str | os.PathLike | None) -> None:
    """Refuse ``--adapter`` early (before loading anything) when the fine-tuning extra is missing.

    Raises:
        PipelineInputError: an adapter was given but ``pipeline.finetune`` does not exist, or the folder is missing.
    """
    if adapter is None:
        return
    if not adapters_available():
        raise PipelineInputError(
            "--adapter needs the fine-tuning extra (pipeline.finetune, 'dprdm finetune'), which this install lacks; "
            "drop --adapter to attribute the decoder itself"
        )
    if not Path(adapter).expanduser().is_dir():
        raise PipelineInputError(f"adapter folder '{adapter}' does not exist; pass a folder written by 'dprdm finetune'")


def load_decoder_with_adapter(decoder: str | os.PathLike | None = None, adapter: str | os.PathLike | None = None):
    """The ``TinyDecoder`` at ``decoder`` (None = bundled), with ``adapter`` loaded into it.

    Raises:
        PipelineInputError: the folder is not a decoder in the dprdm tiny format (attribution needs its UNet and
            training schedule), or the adapter cannot be loaded.
    """
    from pipeline.decoders import DecoderFamily, TinyDecoder, describe_decoder

    info = describe_decoder(decoder)
    if info.family is not DecoderFamily.TINY:
        raise PipelineInputError(
            f"decoder folder {info.folder} is a {info.family.value} decoder; attribution supports the dprdm tiny "
            "format (unet/ + scheduler/, from 'dprdm train decoder')"
        )
    check_adapter_support(adapter)
    model = TinyDecoder.from_pretrained(info.folder)
    if adapter is None:
        return model
    module = _finetune_module()
    folder = Path(adapter).expanduser()
    loader = getattr(module, "load_adapter", None)
    if loader is not None:
        loaded = loader(model, folder)
    elif hasattr(model, "load_adapter"):
        loaded = model.load_adapter(folder)
    else:
        raise PipelineInputError(
            "the installed fine-tuning extra offers no adapter loader (pipeline.finetune.load_adapter or "
            "TinyDecoder.load_adapter); update dprdm"
        )
    adapted = loaded if loaded is not None and hasattr(loaded, "unet") else model
    _train_only_the_adapter(adapted, folder)
    return adapted


def adapter_parameter_names(folder: str | os.PathLike) -> set[str] | None:
    """Names of the tensors an adapter folder stores (its safetensors file), or None if it has no such file."""
    from safetensors import safe_open

    files = sorted(Path(folder).expanduser().glob("*.safetensors"))
    if not files:
        return None
    names: set[str] = set()
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            names.update(handle.keys())
    return names


def _train_only_the_adapter(decoder, folder: Path) -> None:
    """Attribution differentiates the parameters with ``requires_grad``: make those the adapter's tensors.

    ``pipeline.finetune.load_adapter`` returns a frozen UNet (``requires_grad_(False)``); the adapter's tensors are
    the ones its safetensors file stores. Without that file, the loader's own ``requires_grad`` flags are kept.

    Raises:
        PipelineInputError: the adapter leaves no parameter to attribute.
    """
    names = adapter_parameter_names(folder)
    params = dict(decoder.unet.named_parameters())
    if names:
        for name, param in params.items():
            param.requires_grad_(name in names)
    if not any(p.requires_grad for p in params.values()):
        raise PipelineInputError(f"adapter '{folder}' holds no tensor of this decoder's UNet; nothing to attribute")


def load_attribution_model(decoder: str | os.PathLike | None = None, adapter: str | os.PathLike | None = None):
    """``(AttributionModel, decoder)`` for ``decoder`` (None = bundled) with ``adapter`` (None = none)."""
    from pipeline.attribution.model import AttributionModel

    dec = load_decoder_with_adapter(decoder, adapter)
    name = Path(decoder).name if decoder is not None else "bundled"
    if adapter is not None:
        name += f"+{Path(adapter).name}"
    return AttributionModel.from_decoder(dec, name=name), dec


__all__ = ["adapter_parameter_names", "adapters_available", "check_adapter_support", "load_attribution_model", "load_decoder_with_adapter"]
