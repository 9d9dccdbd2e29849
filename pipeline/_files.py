"""File names of the pipeline: the ledger's file name inside an index, and where an index's ledger lives.

The project's one atomic write and one ``~`` expansion are :func:`index.fs.atomic_write_bytes` and
:func:`index.fs.expand_user`, re-exported here for the pipeline's modules (``import index.fs`` loads neither torch
nor faiss, so the light commands ``dprdm budget show`` and ``--version`` stay light).
"""

from __future__ import annotations

import os
from pathlib import Path

from index.fs import atomic_write_bytes, expand_user

__all__ = ["LEDGER_NAME", "atomic_write_bytes", "default_ledger", "expand_user"]

LEDGER_NAME = "budget.sqlite"
"""File name of an index's budget ledger inside the index directory (``DIR/budget.sqlite``)."""


def default_ledger(index_dir: str | os.PathLike[str]) -> Path:
    """The ledger of an index: ``<index_dir>/budget.sqlite``.

    Raises:
        IndexInputError: ``~user`` in ``index_dir`` names no user (bad input, exit 2).
    """
    return expand_user(index_dir) / LEDGER_NAME
