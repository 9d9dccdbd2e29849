"""``dprdm finetune``: DP-SGD fine-tuning of the decoder on one shard (DP-LDM), charged to the shard's scope first.

The whole run is one pre-declared DP event, ``SelfComposed(PoissonSampled(q, Gaussian(z)), steps)`` under
add/remove-one adjacency (Opacus per-sample clipping at C, Gaussian noise z·C), charged to the shard's scope in
the index's one ledger in one transaction before the first gradient step (:mod:`pipeline.finetune`). The adapter
it writes is a DP release; gradients, per-sample norms and batch composition are never written or logged.

Exit codes: 0 ok; 2 bad input; 3 privacy refusal (the training does not fit the budget: nothing charged or
trained); 1 training failed after the charge (the charge stays).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline._cli_common import (
    DEFAULT_SHARD,
    EXIT_CODES,
    IndexOption,
    JsonOption,
    LedgerOption,
    ShardOption,
    ThreadsOption,
    emit,
)

HELP = f"""DP fine-tune the decoder on one shard's records (DP-SGD with Opacus); writes an adapter.

Charged once, before the first gradient step, to the shard's scope: --epsilon calibrates the noise multiplier so
the training alone costs that epsilon at the scope's delta (refused, exit 3, if it does not fit what is left).
Use the adapter with 'dprdm generate --adapter DIR'.

{EXIT_CODES}"""


def register(app: typer.Typer) -> None:
    """Add the ``finetune`` command to the root app."""
    app.command("finetune", help=HELP)(finetune)


def finetune(
    index: IndexOption,
    out: Annotated[Path, typer.Option("--out", metavar="ADAPTER_DIR", show_default=False,
                                      help="Adapter folder to create (must not exist or be empty).")],
    shard: ShardOption = DEFAULT_SHARD,
    epsilon: Annotated[float | None, typer.Option("--epsilon", metavar="EPS", show_default=False,
                                                  help="Epsilon of the training at the scope's delta.")] = None,
    sigma: Annotated[float | None, typer.Option("--sigma", metavar="Z", show_default=False,
                                                help="Noise multiplier z (instead of --epsilon).")] = None,
    trainable: Annotated[str, typer.Option("--trainable", metavar="MODE",
                                           help="attention | attention+conditioning | all | lora.")] = "attention",
    epochs: Annotated[int, typer.Option("--epochs", metavar="N", help="Passes over the shard (expected).")] = 10,
    batch_size: Annotated[int, typer.Option("--batch-size", metavar="B",
                                            help="Expected (Poisson) batch size; q = B / records.")] = 64,
    physical_batch_size: Annotated[int, typer.Option("--physical-batch-size", metavar="P",
                                                     help="Largest batch held in memory at once.")] = 32,
    max_grad_norm: Annotated[float, typer.Option("--max-grad-norm", metavar="C",
                                                 help="Per-sample gradient clipping norm.")] = 1e-2,
    lr: Annotated[float, typer.Option("--lr", metavar="LR", help="Learning rate (AdamW).")] = 1e-3,
    decoder: Annotated[Path | None, typer.Option("--decoder", metavar="DIR", show_default=False,
                                                 help="Base decoder (default: the bundled tiny decoder).")] = None,
    ledger: LedgerOption = None,
    threads: ThreadsOption = None,
    json_mode: JsonOption = False,
) -> None:
    """DP fine-tune the decoder on one shard."""
    from index import PrivateIndex
    from pipeline.finetune import finetune as run_finetune
    from pipeline.ledgers import index_ledger

    idx = PrivateIndex.open(index)
    book = index_ledger(idx, ledger)  # the index's one ledger; any other is refused (exit 3)
    base = None
    if decoder is not None:
        from pipeline.decoders import TinyDecoder

        base = TinyDecoder.from_pretrained(decoder)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    result = run_finetune(
        idx, shard, book, out, decoder=base, epsilon=epsilon, noise_multiplier=sigma, trainable=trainable,
        max_grad_norm=max_grad_norm, lr=lr, batch_size=batch_size, physical_batch_size=physical_batch_size,
        epochs=epochs, caller="dprdm finetune",
    )  # fmt: skip
    emit(result.to_dict(), json_mode=json_mode, human=_human)


def _human(p: dict[str, Any]) -> str:
    return (
        f"adapter {p['adapter']}: {p['trainable']} ({p['trainable_parameters']:,} of {p['total_parameters']:,} "
        f"parameters trained), {p['steps']} DP-SGD steps on {p['records']} records of shard {p['shard']}\n"
        f"epsilon {p['epsilon']:.4g} at delta={p['delta']:g} for this training (noise multiplier "
        f"{p['noise_multiplier']:.4g}, sample rate {p['sample_rate']:.4g}); see 'dprdm budget show'"
    )
