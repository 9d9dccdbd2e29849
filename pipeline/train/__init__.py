"""Training scripts that reproduce the bundled default models from scratch on CPU (public half only)."""

from pipeline.train.decoder import DecoderReport, DecoderSettings, build_unet, train_decoder
from pipeline.train.encoder import EncoderReport, EncoderSettings, train_encoder

__all__ = [
    "DecoderReport",
    "DecoderSettings",
    "EncoderReport",
    "EncoderSettings",
    "build_unet",
    "train_decoder",
    "train_encoder",
]
