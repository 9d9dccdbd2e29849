"""``dprdm data export uci-digits|mnist-thick OUT_DIR``: the bundled private domains as image folders.

The export is an ImageFolder (``OUT_DIR/<label>/<row>.png``), so it is also a plain ``dprdm index build`` source.
It is deterministic (same files, same bytes, same recorded split on every run), owner-only (folders 0700, files
0600: this is a private corpus) and atomic per file. A non-empty OUT_DIR that is not a previous export of the same
domain and split is refused (exit 2, nothing written). Errors are raised, never printed: the root group in
:mod:`pipeline.cli` turns them into one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline._cli_common import JsonOption, emit, make_typer

DOMAIN_HELP = (
    "uci-digits: scikit-learn's UCI optical digits (1,797, 8x8) framed as MNIST (ink box bilinear to 20x20, centred in "
    "28x28); mnist-thick: the bundled private MNIST half with thick strokes (3x3 grey dilation)."
)

data_app = make_typer(name="data", help="The bundled private-domain corpora of the routes benchmark (export).")


def _human(payload: dict[str, Any]) -> str:
    classes = ", ".join(f"{label}: {count}" for label, count in payload["classes"].items())
    return "\n".join([
        f"wrote {payload['files']} PNGs of {payload['dataset']} ({payload['split']} split) to {payload['out']}",
        f"classes: {classes}",
        f"split record: pipeline/data/{payload['record']} (rows sha256 {payload['rows_sha256'][:16]}...)",
        f"index it with: dprdm index build {payload['out']} --index DIR",
    ])  # fmt: skip


@data_app.command("export")
def export(
    dataset: Annotated[str, typer.Argument(metavar="DATASET", show_default=False, help=DOMAIN_HELP)],
    out_dir: Annotated[Path, typer.Argument(metavar="OUT_DIR", show_default=False,
                                            help="New or empty folder (or a previous export of the same thing).")],
    split: Annotated[str, typer.Option("--split", metavar="train|test|all",
                                       help="train: the private retrieval/training set; test: the held-out set.")] = "train",
    json_mode: JsonOption = False,
) -> None:
    """Write a bundled private domain as an owner-only ImageFolder (one subfolder per class, PNGs)."""
    from pipeline.private_domain import export_domain

    emit(export_domain(dataset, out_dir, split=split), json_mode=json_mode, human=_human)


def register(app: typer.Typer) -> None:
    """Add the ``data`` command group to the root app."""
    app.add_typer(data_app, name="data")
