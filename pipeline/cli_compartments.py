"""``dprdm compartments train|info|mark-public`` and ``dprdm forget`` (CDM compartments, issue 12).

Exit codes: 0 ok; 2 bad input; 3 privacy refusal (budget, --non-private on a shard not marked public, a damaged
compartments store: nothing charged); 1 training failed after its charge (the charge stays).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline._cli_common import EXIT_CODES, IndexOption, JsonOption, LedgerOption, ThreadsOption, emit

app = typer.Typer(help=f"Per-shard decoder adapters composed at sampling time (CDM).\n\n{EXIT_CODES}",
                  no_args_is_help=True)

DecoderOption = Annotated[Path | None, typer.Option("--decoder", metavar="DIR", show_default=False,
                                                    help="Base decoder (default: the bundled tiny decoder).")]


def register(root: typer.Typer) -> None:
    """Add ``compartments`` (group) and ``forget`` to the root app."""
    root.add_typer(app, name="compartments")
    root.command("forget", help=f"Remove records from a shard and retrain only its compartment and the shard "
                                f"classifier (never refunds).\n\n{EXIT_CODES}")(forget_cmd)


def _decoder(path: Path | None):
    from pipeline.decoders import TinyDecoder

    return TinyDecoder.from_pretrained(path)


def _threads(threads: int | None) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


@app.command("train")
def train_cmd(
    index: IndexOption,
    shard: Annotated[list[str] | None, typer.Option("--shard", metavar="NAME", show_default=False,
                                                    help="Shard to (re)train (repeatable; default all).")] = None,
    epsilon: Annotated[float | None, typer.Option("--epsilon", metavar="EPS", show_default=False,
                                                  help="Epsilon of each DP adapter's training and of the classifier's"
                                                       " at every DP scope.")] = None,
    non_private: Annotated[bool, typer.Option("--non-private",
                                              help="No noise: only for shards marked public/consented.")] = False,
    trainable: Annotated[str | None, typer.Option("--trainable", metavar="MODE", show_default=False,
                                                  help="Adapter parameters: attention, attention+conditioning, all or "
                                                       "lora (default: attention+conditioning with --epsilon, all with "
                                                       "--non-private).")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", metavar="N", show_default=False,
                                               help="Adapter epochs over each shard (default 3 with --epsilon, 20 with "
                                                    "--non-private).")] = None,
    decoder: DecoderOption = None,
    ledger: LedgerOption = None,
    threads: ThreadsOption = None,
    json_mode: JsonOption = False,
) -> None:
    """Train the compartments (adapters + shard classifier) of an index."""
    from index import PrivateIndex
    from pipeline.compartments import train_compartments
    from pipeline.ledgers import index_ledger

    idx = PrivateIndex.open(index)
    _threads(threads)
    book = None if (non_private and ledger is None and idx.ledger_binding is None) else index_ledger(idx, ledger)
    adapter = {k: v for k, v in (("trainable", trainable), ("epochs", epochs)) if v is not None}
    out = train_compartments(idx, book, shards=shard or None, epsilon=epsilon, non_private=non_private,
                             decoder=_decoder(decoder), adapter=adapter)
    emit(out, json_mode=json_mode, human=lambda p: _human_info(p["info"]))


@app.command("info")
def info_cmd(index: IndexOption, json_mode: JsonOption = False) -> None:
    """Which shards have a compartment and which carry a DP guarantee."""
    from pipeline.compartments import Compartments

    store = Compartments(index).verify()
    emit(store.info(), json_mode=json_mode, human=_human_info)


@app.command("mark-public")
def mark_public_cmd(
    index: IndexOption,
    shard: Annotated[str, typer.Option("--shard", metavar="NAME", help="The public/consented shard.")],
    note: Annotated[str, typer.Option("--note", metavar="TEXT", help="Who consented, or why it is public.")],
    json_mode: JsonOption = False,
) -> None:
    """Mark a shard public/consented (allows --non-private training of its adapter)."""
    from pipeline.compartments import mark_public

    store = mark_public(index, shard, note=note)
    emit({"public": store.public}, json_mode=json_mode, human=lambda p: f"shard {shard} marked public/consented")


def forget_cmd(
    index: IndexOption,
    shard: Annotated[str, typer.Option("--shard", metavar="NAME", help="The shard to forget records of.")],
    ids: Annotated[list[int] | None, typer.Option("--id", metavar="ID", show_default=False,
                                                  help="Content id (repeatable).")] = None,
    sources: Annotated[list[str] | None, typer.Option("--source", metavar="PATH", show_default=False,
                                                      help="Source path (repeatable).")] = None,
    decoder: DecoderOption = None,
    ledger: LedgerOption = None,
    threads: ThreadsOption = None,
    json_mode: JsonOption = False,
) -> None:
    """Forget records: remove them from the index, retrain only their compartment and the classifier."""
    from index import PrivateIndex
    from pipeline.compartments import forget
    from pipeline.ledgers import index_ledger

    idx = PrivateIndex.open(index)
    _threads(threads)
    book = index_ledger(idx, ledger) if (ledger is not None or idx.ledger_binding is not None) else None
    out = forget(idx, shard, book, ids=ids or None, sources=sources or None, decoder=_decoder(decoder))
    emit(out, json_mode=json_mode, human=lambda p: (
        f"forgot {p['removed']} record(s) of shard {p['shard']}; retrained {', '.join(p['retrained'])}; "
        f"unchanged (byte-identical): {', '.join(p['unchanged']) or '-'}; {p['seconds']:.1f} s "
        f"(retraining everything: ~{p['full_retrain_seconds_estimate']:.1f} s)"))


def _human_info(p: dict[str, Any]) -> str:
    lines = []
    for name, s in p["shards"].items():
        guarantee = (f"DP (epsilon {s['epsilon']:.3g} at delta={s['delta']:g})" if s["guarantee"] == "dp"
                     else "no DP guarantee (public/consented shard)")
        lines.append(f"{name}: {s['records']} records, {s['trainable']} adapter, {guarantee}")
    clf = p.get("classifier")
    if clf:
        dp = clf.get("dp")
        lines.append("classifier: " + (f"DP (epsilon {dp['epsilon']:.3g}) charged to {', '.join(dp['scopes'])}"
                                       if dp else "no DP guarantee (public/consented shards only)"))
    return "\n".join(lines) or "no compartments"
