"""Decoders behind one seam: the bundled ``TinyDecoder`` (default) and ``StableUnCLIPDecoder`` for real weights."""

from pipeline.decoders.base import Decoder
from pipeline.decoders.tiny import BUNDLED_DECODER_DIR, TinyDecoder
from pipeline.decoders.unclip import StableUnCLIPDecoder

__all__ = ["BUNDLED_DECODER_DIR", "Decoder", "StableUnCLIPDecoder", "TinyDecoder"]
