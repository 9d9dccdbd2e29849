"""``dprdm index build|add|remove|info``: a thin shell over :mod:`index` (the library does the work).

stdout carries the result (one JSON document with ``--json``); progress bars go to stderr, only when stderr
is a terminal and ``--json`` is off. Errors are one ``Error:`` line on stderr with exit code 2 (bad input)
or 3 (unsafe index type or damaged index: nothing was changed).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from index import PrivateIndex, build_index
from pipeline._cli_common import JsonOption, emit, fail, user_errors

app = typer.Typer(
    help="Build and maintain a private, DP-safe image index (dprdm index build|add|remove|info).",
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    pretty_exceptions_show_locals=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

IndexDir = Annotated[Path, typer.Option("--index", help="Index directory (created 0700 by build).")]
Source = Annotated[
    str, typer.Argument(help="Image folder (recursive), datasets save_to_disk dir, or .parquet/.arrow file.")
]
BatchSize = Annotated[
    int, typer.Option("--batch-size", help="Images per encoder batch and resume checkpoint.")
]
ImageColumn = Annotated[str | None, typer.Option("--image-column", help="Dataset column holding the images.")]
Threads = Annotated[int | None, typer.Option("--threads", help="Torch threads for the encoder.")]


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
    index: IndexDir,
    shard: Annotated[str, typer.Option("--shard", help="Shard (compartment) to (re)build.")] = "default",
    model: Annotated[
        str | None,
        typer.Option("--model", help="open_clip NAME or local-dir:DIR (default: bundled tiny encoder)."),
    ] = None,
    pretrained: Annotated[
        str | None, typer.Option("--pretrained", help="Weights file or locally cached tag.")
    ] = None,
    batch_size: BatchSize = 64,
    image_column: ImageColumn = None,
    index_type: Annotated[
        str | None,
        typer.Option("--index-type", help="flat (exact, default) or ivf-flat (needs --public-train)."),
    ] = None,
    public_train: Annotated[
        Path | None,
        typer.Option("--public-train", help="PUBLIC embeddings .npy to train the ivf-flat quantiser."),
    ] = None,
    threads: Threads = None,
    json_mode: JsonOption = False,
) -> None:
    """Build (or rebuild) a shard from SOURCE; re-running an interrupted build resumes it."""
    if public_train is not None and index_type is None:
        index_type = "ivf-flat"
    with user_errors(json_mode):
        report = build_index(
            source, index, shard=shard, model=model, pretrained=pretrained, batch_size=batch_size,
            public_train=public_train, image_column=image_column, num_threads=threads,
            progress=_show_progress(json_mode), index_type=index_type,
        )  # fmt: skip
    emit(report.to_dict(), json_mode=json_mode, human=lambda _: _human_report(report))


@app.command("add")
def add(
    source: Source,
    index: IndexDir,
    shard: Annotated[str, typer.Option("--shard", help="Shard to append to (created if new).")],
    batch_size: BatchSize = 64,
    image_column: ImageColumn = None,
    threads: Threads = None,
    json_mode: JsonOption = False,
) -> None:
    """Append the images of SOURCE to a shard, with the index's own encoder."""
    with user_errors(json_mode):
        report = PrivateIndex.open(index).add(
            source, shard=shard, batch_size=batch_size, image_column=image_column, num_threads=threads,
            progress=_show_progress(json_mode),
        )  # fmt: skip
    emit(report.to_dict(), json_mode=json_mode, human=lambda _: _human_report(report))


@app.command("remove")
def remove(
    index: IndexDir,
    ids: Annotated[list[int] | None, typer.Option("--id", help="Record id to remove (repeatable).")] = None,
    sources: Annotated[
        list[str] | None,
        typer.Option("--source", help="Source path, folder or dataset file to remove (repeatable)."),
    ] = None,
    json_mode: JsonOption = False,
) -> None:
    """Remove records by id or by source from vectors, metadata and id map (no re-encoding)."""
    if bool(ids) == bool(sources):
        raise fail("pass either --id ID ... or --source PATH ... (exactly one of them)", json_mode=json_mode)
    with user_errors(json_mode):
        idx = PrivateIndex.open(index)
        removed = idx.remove(ids=ids, sources=sources)
        payload = dict(idx.info(), removed=removed)
    emit(payload, json_mode=json_mode, human=lambda p: f"removed {p['removed']} records\n" + _human_info(p))


@app.command("info")
def info(index: IndexDir, json_mode: JsonOption = False) -> None:
    """Show records, dimension, index type, shards and skipped inputs (read-only)."""
    with user_errors(json_mode):
        payload = PrivateIndex.open(index, mmap=True).info()
    emit(payload, json_mode=json_mode, human=_human_info)
