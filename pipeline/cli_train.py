"""``dprdm train encoder|decoder`` (also ``python -m pipeline.train ...``): reproduce the bundled default models.

Both train on the PUBLIC half of MNIST-5k only, with a fixed seed and one torch thread by default, and write a
``training_settings.json`` next to the weights. Progress bars go to stderr and are off with ``--json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline._cli_common import JsonOption, emit, user_errors

train_app = typer.Typer(
    name="train",
    help="Reproduce the bundled tiny encoder and decoder from scratch on CPU (public data only).",
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    pretty_exceptions_show_locals=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

OutOption = Annotated[Path | None, typer.Option("--out", help="Output folder (default: the bundled location).")]
ThreadsOption = Annotated[int, typer.Option("--threads", min=1, help="torch threads while training.")]
SeedOption = Annotated[int, typer.Option("--seed", help="Seed of initialisation, batches and noise.")]


def _human(report: dict) -> str:
    return "\n".join(f"{key}: {value}" for key, value in report.items())


@train_app.command("encoder")
def encoder_command(
    out: OutOption = None,
    epochs: Annotated[int, typer.Option("--epochs", min=1)] = 10,
    max_steps: Annotated[int | None, typer.Option("--max-steps", min=1, help="Stop early (smoke tests).")] = None,
    threads: ThreadsOption = 1,
    seed: SeedOption = 0,
    json_mode: JsonOption = False,
) -> None:
    """Train the tiny open_clip encoder (local-dir checkpoint, default index/models/tiny-clip)."""
    with user_errors(json_mode):
        from pipeline.train.encoder import EncoderSettings, train_encoder

        settings = EncoderSettings(epochs=epochs, max_steps=max_steps, seed=seed)
        report = train_encoder(out, settings=settings, num_threads=threads, progress=not json_mode)
    emit(report.to_dict(), json_mode=json_mode, human=_human)


@train_app.command("decoder")
def decoder_command(
    out: OutOption = None,
    encoder: Annotated[Path | None, typer.Option("--encoder", help="open_clip local-dir of the encoder.")] = None,
    steps: Annotated[int | None, typer.Option("--steps", min=1, help="Training steps (default: the shipped run's).")] = None,
    threads: ThreadsOption = 1,
    seed: SeedOption = 0,
    json_mode: JsonOption = False,
) -> None:
    """Train the tiny retrieval-conditioned decoder (default pipeline/models/tiny-decoder)."""
    with user_errors(json_mode):
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
