"""``dprdm index build|add|remove|info``: a thin shell over :mod:`index` (the library does the work).

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
    help="Build and maintain a private, DP-safe image index (dprdm index build|add|remove|info).",
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
    lines = [
        f"{info['records']} records, dim {info['dim']}, index type {info['index_type']} "
        f"(quantiser: {info['quantizer']}), encoder {info['encoder']['model_id']}"
    ]
    lines += [f"  shard {name}: {s['records']} records" for name, s in info["shards"].items()]
    if info["skipped"]:
        lines.append(f"skipped {len(info['skipped'])} inputs:")
        lines += [f"  {s['source']}: {s['reason']}" for s in info["skipped"]]
    return "\n".join(lines)


def _human_report(report: Any) -> str:
    return (
        f"shard {report.shard}: {report.added} records from the source ({report.encoded} encoded, "
        f"{report.reused} reused, {report.duplicates} duplicates, {report.skipped} skipped)\n"
        + _human_info(report.to_dict())
    )


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
) -> None:
    """Build (or rebuild) a shard from SOURCE; re-running an interrupted build resumes it."""
    from index import build_index

    if public_train is not None and index_type is None:
        index_type = "ivf-flat"
    report = build_index(
        source, index, shard=shard, model=model, pretrained=pretrained, batch_size=batch_size,
        public_train=public_train, image_column=image_column, num_threads=threads,
        progress=_show_progress(json_mode), index_type=index_type,
    )  # fmt: skip
    with after_commit(f"the build of shard '{shard}' committed; see 'dprdm index info --index {index}'"):
        emit(report.to_dict(), json_mode=json_mode, human=lambda _: _human_report(report))


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
    from index import PrivateIndex

    report = PrivateIndex.open(index).add(
        source, shard=shard, batch_size=batch_size, image_column=image_column, num_threads=threads,
        progress=_show_progress(json_mode),
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
    """Remove records by id or by source from vectors, metadata and id map (no re-encoding)."""
    if bool(ids) == bool(sources):
        raise PipelineInputError("pass either --id ID ... or --source PATH ... (exactly one of them)")
    from index import PrivateIndex

    idx = PrivateIndex.open(index)
    removed = idx.remove(ids=ids, sources=sources)
    with after_commit(f"{removed} records were removed from index {index}"):
        payload = dict(idx.info(), removed=removed)
        emit(payload, json_mode=json_mode, human=lambda p: f"removed {p['removed']} records\n" + _human_info(p))


@app.command("info")
def info(index: IndexOption, json_mode: JsonOption = False) -> None:
    """Show records, dimension, index type, shards and skipped inputs (read-only)."""
    from index import PrivateIndex

    payload = PrivateIndex.open(index, mmap=True).info()
    emit(payload, json_mode=json_mode, human=_human_info)
