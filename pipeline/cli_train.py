"""``dprdm train encoder|decoder`` (also ``python -m pipeline.train ...``): reproduce the bundled default models.

Both train on the PUBLIC half of MNIST-5k only, with a fixed seed and one torch thread by default, and write a
``training_settings.json`` next to the weights. Progress bars go to stderr and are off with ``--json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline._cli_common import JsonOption, ThreadsOption, emit, make_typer

train_app = make_typer(
    name="train", help="Reproduce the bundled tiny encoder and decoder from scratch on CPU (public data only)."
)

OutOption = Annotated[
    Path | None,
    typer.Option("--out", metavar="DIR", show_default=False, help="Output folder (default: the bundled location)."),
]
SeedOption = Annotated[int, typer.Option("--seed", metavar="INT", help="Seed of initialisation, batches and noise.")]


def _human(report: dict) -> str:
    return "\n".join(f"{key}: {value}" for key, value in report.items())


@train_app.command("encoder")
def encoder_command(
    out: OutOption = None,
    epochs: Annotated[int, typer.Option("--epochs", metavar="N", min=1)] = 10,
    max_steps: Annotated[
        int | None, typer.Option("--max-steps", metavar="N", min=1, show_default=False, help="Stop early (smoke tests).")
    ] = None,
    threads: ThreadsOption = 1,
    seed: SeedOption = 0,
    json_mode: JsonOption = False,
) -> None:
    """Train the tiny open_clip encoder (local-dir checkpoint, default index/models/tiny-clip)."""
    from pipeline.train.encoder import EncoderSettings, train_encoder

    settings = EncoderSettings(epochs=epochs, max_steps=max_steps, seed=seed)
    report = train_encoder(out, settings=settings, num_threads=threads, progress=not json_mode)
    emit(report.to_dict(), json_mode=json_mode, human=_human)


@train_app.command("decoder")
def decoder_command(
    out: OutOption = None,
    encoder: Annotated[
        Path | None,
        typer.Option("--encoder", metavar="DIR", show_default=False, help="open_clip local-dir of the encoder."),
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option("--steps", metavar="N", min=1, show_default=False, help="Training steps (default: the shipped run's)."),
    ] = None,
    threads: ThreadsOption = 1,
    seed: SeedOption = 0,
    json_mode: JsonOption = False,
) -> None:
    """Train the tiny retrieval-conditioned decoder (default pipeline/models/tiny-decoder)."""
    import dataclasses

    from pipeline.train.decoder import DecoderSettings, train_decoder

    settings = DecoderSettings(seed=seed)
    if steps is not None:
        settings = dataclasses.replace(settings, steps=steps)
    report = train_decoder(out, encoder_dir=encoder, settings=settings, num_threads=threads,
                           progress=not json_mode)
    emit(report.to_dict(), json_mode=json_mode, human=_human)


def register(app: typer.Typer) -> None:
    """Add the ``train`` command group to the root app."""
    app.add_typer(train_app, name="train")
