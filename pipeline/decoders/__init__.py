"""Decoders behind one seam: the bundled ``TinyDecoder`` (default), Stable unCLIP and Kandinsky 2.2 for real weights.

``load_decoder(path, **knobs)`` recognises the folder and returns the matching decoder; ``describe_decoder(path)``
reads only its configs (family and ``condition_dim``). Names are imported on first use, so importing this package
(or calling ``describe_decoder``) does not import torch or diffusers.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "BUNDLED_DECODER_DIR": "pipeline.decoders.tiny",
    "Decoder": "pipeline.decoders.base",
    "DecoderFamily": "pipeline.decoders.loading",
    "DecoderInfo": "pipeline.decoders.loading",
    "EmbeddingScaling": "pipeline.decoders.base",
    "KandinskyV22Decoder": "pipeline.decoders.kandinsky",
    "StableUnCLIPDecoder": "pipeline.decoders.unclip",
    "TinyDecoder": "pipeline.decoders.tiny",
    "describe_decoder": "pipeline.decoders.loading",
    "family_knobs": "pipeline.decoders.loading",
    "load_decoder": "pipeline.decoders.loading",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pipeline.decoders' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
