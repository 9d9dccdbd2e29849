"""``dprdm index build|add|remove|drop-shard|ls|info|set-encoder``: a thin shell over :mod:`index`.

Spent budget follows the record: when the index has a ledger, records leaving a shard (remove, drop-shard, a
rebuild that drops them) are tombstoned with their scope's loss, and records joining a shard with a scope bring
their tombstoned loss back, both in the index's ``before_commit`` hook, before the index commits
(:mod:`pipeline.ledgers`).

stdout carries the result (one JSON document with ``--json``); progress bars go to stderr, only when stderr
is a terminal and ``--json`` is off. Errors become one ``Error:`` line on stderr in the root group
(:mod:`pipeline.cli`): exit code 2 (bad input) or 3 (unsafe index type or damaged index: nothing was changed).
``index`` is imported inside the commands, so ``dprdm --help`` and ``index --help`` load no model code.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline._cli_common import (
    DEFAULT_SHARD,
    IndexOption,
    JsonOption,
    ShardOption,
    ThreadsOption,
    after_commit,
    emit,
    make_typer,
)
from pipeline.errors import PipelineInputError

app = make_typer(
    help="Build and maintain a private, DP-safe image index (build, add, remove, drop-shard, ls, info, set-encoder).",
)

Source = Annotated[
    str,
    typer.Argument(metavar="SOURCE", show_default=False,
                   help="Image folder (recursive), datasets save_to_disk dir, or .parquet/.arrow file."),
]  # fmt: skip
BatchSize = Annotated[
    int, typer.Option("--batch-size", metavar="N", help="Images per encoder batch and resume checkpoint.")
]
ImageColumn = Annotated[
    str | None,
    typer.Option("--image-column", metavar="NAME", show_default=False, help="Dataset column holding the images."),
]


def _show_progress(json_mode: bool) -> bool:
    return not json_mode and sys.stderr.isatty()


def _human_info(info: dict[str, Any]) -> str:
    """Counts only; the list of skipped inputs is printed by ``build`` (and always in ``--json``)."""
    lines = [
        f"{info['records']} records, dim {info['dim']}, index type {info['index_type']} "
        f"(quantiser: {info['quantizer']}), encoder {info['encoder']['model_id']}"
    ]
    for name, shard in info["shards"].items():
        empty = " (empty: all its images are stored in other shards)" if shard.get("empty") else ""
        lines.append(
            f"  shard {name}: {shard['records']} records ({shard.get('storage', 'float32')}), "
            f"{shard['skipped']} inputs skipped{empty}"
        )
    return "\n".join(lines)


def _human_report(report: Any) -> str:
    info = report.to_dict()
    lines = [
        f"shard {report.shard}: {report.added} records from the source ({report.encoded} encoded, "
        f"{report.reused} reused, {report.duplicates} duplicates, {report.skipped} skipped)",
        _human_info(info),
    ]
    skipped = [s for s in info["skipped"] if s.get("shard") == report.shard]
    if skipped:
        lines.append(f"skipped {len(skipped)} inputs of shard {report.shard}:")
        lines += [f"  {s['source']}: {s['reason']}" for s in skipped]
    return "\n".join(lines)


def _open_with_ledger(index: Path, *, must_exist: bool = True) -> tuple[Any, Any]:
    """The index (None if ``index`` is not one yet and ``must_exist`` is False) and its ledger (None if none yet).

    A bound ledger that is missing or replaced is refused (exit 3): records cannot move without their tombstones.
    """
    from index import IndexInputError, PrivateIndex
    from pipeline._files import LEDGER_NAME
    from pipeline.ledgers import index_ledger

    try:
        idx = PrivateIndex.open(index)
    except IndexInputError:
        if must_exist or (Path(index) / "manifest.json").exists():
            raise
        return None, None
    if idx.ledger_binding is None and not (idx.path / LEDGER_NAME).exists():
        return idx, None
    return idx, index_ledger(idx)


@app.command("build")
def build(
    source: Source,
    index: IndexOption,
    shard: ShardOption = DEFAULT_SHARD,
    model: Annotated[
        str | None,
        typer.Option("--model", metavar="NAME", show_default=False,
                     help="open_clip NAME or local-dir:DIR (default: bundled tiny encoder)."),
    ] = None,
    pretrained: Annotated[
        str | None,
        typer.Option("--pretrained", metavar="PATH", show_default=False, help="Weights file or locally cached tag."),
    ] = None,
    batch_size: BatchSize = 64,
    image_column: ImageColumn = None,
    index_type: Annotated[
        str | None,
        typer.Option("--index-type", metavar="KIND", show_default=False,
                     help="flat (exact, default) or ivf-flat (needs --public-train)."),
    ] = None,
    public_train: Annotated[
        Path | None,
        typer.Option("--public-train", metavar="NPY", show_default=False,
                     help="PUBLIC embeddings .npy to train the ivf-flat quantiser."),
    ] = None,
    threads: ThreadsOption = None,
    json_mode: JsonOption = False,
    engine: Annotated[
        str,
        typer.Option("--engine", metavar="ENGINE",
                     help="local (encode in this process) or ray (Ray Data encoder actors; pip install 'dprdm[scale]')."),
    ] = "local",
    ray_address: Annotated[
        str | None,
        typer.Option("--ray-address", metavar="ADDR", show_default=False,
                     help="Ray cluster to join with --engine ray (e.g. auto); default: start a local Ray."),
    ] = None,
    workers: Annotated[
        int, typer.Option("--workers", metavar="N", help="Encoder actors with --engine ray.")
    ] = 1,
    storage: Annotated[
        str | None,
        typer.Option("--storage", metavar="FORMAT", show_default=False,
                     help="Row storage of a new shard: float32 (default), float16 or int8 (fixed range [-1, 1]); "
                          "flat only; fixed at creation."),
    ] = None,
) -> None:
    """Build (or rebuild) a shard from SOURCE; re-running an interrupted build resumes it."""
    from index import build_index
    from pipeline.attribution import forget_hook
    from pipeline.ledgers import membership_hook

    if public_train is not None and index_type is None:
        index_type = "ivf-flat"
    _, ledger = _open_with_ledger(index, must_exist=False)
    report = build_index(
        source, index, shard=shard, model=model, pretrained=pretrained, batch_size=batch_size,
        public_train=public_train, image_column=image_column, num_threads=threads,
        progress=_show_progress(json_mode), index_type=index_type,
        before_commit=membership_hook(ledger, joining=True),
        before_drop=forget_hook(index, membership_hook(ledger, joining=False)),
        engine=engine, workers=workers, ray_address=ray_address, storage=storage,
    )  # fmt: skip
    with after_commit(f"the build of shard '{shard}' committed; see 'dprdm index info --index {index}'"):
        _warn_if_far_from_bundled(index, shard)
        emit(report.to_dict(), json_mode=json_mode, human=lambda _: _human_report(report))


def _warn_if_far_from_bundled(index: Path, shard: str) -> None:
    """Owner-side, build time only: one stderr line when the bundled digit models do not fit this corpus."""
    from index import PrivateIndex
    from pipeline import domain

    idx = PrivateIndex.open(index)
    if not domain.uses_bundled_encoder(idx.manifest["encoder"]["sha256"]) or idx.shard(shard).num_records == 0:
        return
    far = domain.corpus_far_fraction(idx.shard(shard).embeddings)
    if far > domain.FAR_FRACTION:
        typer.echo(
            f"Warning: {far:.0%} of shard '{shard}' is far from the digits the bundled models were trained on "
            f"(they only draw 16x16 digits); {domain.HINT}",
            err=True,
        )


@app.command("add")
def add(
    source: Source,
    index: IndexOption,
    shard: ShardOption = DEFAULT_SHARD,
    batch_size: BatchSize = 64,
    image_column: ImageColumn = None,
    threads: ThreadsOption = None,
    json_mode: JsonOption = False,
) -> None:
    """Append the images of SOURCE to a shard (created if new), with the index's own encoder."""
    from pipeline.ledgers import membership_hook

    idx, ledger = _open_with_ledger(index)
    report = idx.add(
        source, shard=shard, batch_size=batch_size, image_column=image_column, num_threads=threads,
        progress=_show_progress(json_mode), before_commit=membership_hook(ledger, joining=True),
    )  # fmt: skip
    with after_commit(f"the records were added to shard '{shard}'; see 'dprdm index info --index {index}'"):
        emit(report.to_dict(), json_mode=json_mode, human=lambda _: _human_report(report))


@app.command("remove")
def remove(
    index: IndexOption,
    ids: Annotated[
        list[int] | None,
        typer.Option("--id", metavar="ID", show_default=False, help="Record id to remove (repeatable)."),
    ] = None,
    sources: Annotated[
        list[str] | None,
        typer.Option("--source", metavar="PATH", show_default=False,
                     help="Source path, folder or dataset file to remove (repeatable)."),
    ] = None,
    json_mode: JsonOption = False,
) -> None:
    """Remove records by id or by source from vectors, metadata and id map (no re-encoding).

    Their spent budget stays with them (a tombstone in the index's ledger) and follows them if they come back.
    Exit 2 when nothing matched (nothing changed); selectors that matched nothing are listed.
    """
    if bool(ids) == bool(sources):
        raise PipelineInputError("pass either --id ID ... or --source PATH ... (exactly one of them)")
    from pipeline.attribution import forget_hook  # light: no torch unless attribution features are cached
    from pipeline.ledgers import membership_hook

    idx, ledger = _open_with_ledger(index)
    report = idx.remove(ids=ids, sources=sources, before_commit=forget_hook(idx.path, membership_hook(ledger, joining=False)))
    with after_commit(f"{report.removed} records were removed from index {index}"):
        removal = report.to_dict()
        payload = dict(idx.info(), removed=removal["removed"], removed_per_shard=removal["shards"],
                       unmatched_ids=removal["unmatched_ids"], unmatched_sources=removal["unmatched_sources"])
        emit(payload, json_mode=json_mode, human=_human_removed)


def _human_removed(payload: dict[str, Any]) -> str:
    lines = [f"removed {payload['removed']} records"]
    unmatched = [str(i) for i in payload["unmatched_ids"]] + list(payload["unmatched_sources"])
    if unmatched:
        lines.append(f"matched nothing: {', '.join(unmatched)}")
    return "\n".join(lines + [_human_info(payload)])


@app.command("drop-shard")
def drop_shard(
    index: IndexOption,
    name: Annotated[str, typer.Option("--shard", metavar="NAME", show_default=False, help="Shard to delete.")],
    json_mode: JsonOption = False,
) -> None:
    """Delete a shard and its records (e.g. one left empty because all its images are in other shards).

    Its records are tombstoned with their scope's loss first; the scope's charges stay in the ledger.
    """
    from pipeline.attribution import forget_hook
    from pipeline.ledgers import membership_hook

    idx, ledger = _open_with_ledger(index)
    dropped = idx.drop_shard(name, before_commit=forget_hook(idx.path, membership_hook(ledger, joining=False)))
    with after_commit(f"shard '{name}' was dropped from index {index}"):
        payload = dict(idx.info(), dropped_shard=name, removed=dropped)
        emit(payload, json_mode=json_mode, human=lambda p: f"dropped shard {name} ({dropped} records)\n" + _human_info(p))


@app.command("ls")
def ls(
    index: IndexOption,
    shard: Annotated[
        str | None, typer.Option("--shard", metavar="NAME", show_default=False, help="Only this shard.")
    ] = None,
    json_mode: JsonOption = False,
) -> None:
    """List every record as shard, id and source (the owner's view: private metadata, never for analysts)."""
    from index import PrivateIndex

    rows = [{"shard": s, "id": i, "source": src} for s, i, src in PrivateIndex.open(index).records(shard)]
    emit(rows, json_mode=json_mode, human=lambda r: "\n".join(f"{x['shard']}\t{x['id']}\t{x['source']}" for x in r))


@app.command("set-encoder")
def set_encoder(
    index: IndexOption,
    model: Annotated[
        str, typer.Option("--model", metavar="NAME", show_default=False, help="open_clip NAME or local-dir:DIR.")
    ],
    pretrained: Annotated[
        str | None,
        typer.Option("--pretrained", metavar="PATH", show_default=False, help="Weights file or locally cached tag."),
    ] = None,
    json_mode: JsonOption = False,
) -> None:
    """Re-point the index at its encoder after the model files moved (the weights' sha256 must be the same)."""
    from index import PrivateIndex

    idx = PrivateIndex.open(index)
    idx.set_encoder(model, pretrained)
    emit(idx.info(), json_mode=json_mode, human=_human_info)


@app.command("info")
def info(index: IndexOption, json_mode: JsonOption = False) -> None:
    """Show records, dimension, index type, shards and skipped inputs (read-only)."""
    from index import PrivateIndex

    payload = PrivateIndex.open(index).verify().info()
    emit(payload, json_mode=json_mode, human=_human_info)
