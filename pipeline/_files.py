"""File helpers of the pipeline, each defined once: the ledger's file name, ``~`` expansion, the atomic write.

``expand_user`` and ``atomic_write_bytes`` are a local shim with the names and signatures of ``index.fs``
(CONTRACT.md: ``index/fs.py`` is the ONE atomic write of the project). Once ``index.fs`` exists, these two
functions become ``from index.fs import atomic_write_bytes, expand_user`` and nothing else in the pipeline
changes. They live here, not in ``index``, only because importing ``index`` today loads torch and faiss, which the
light commands (``dprdm budget show``, ``--version``) must not pay for.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from pipeline.errors import PipelineInputError

__all__ = ["LEDGER_NAME", "atomic_write_bytes", "default_ledger", "expand_user"]

LEDGER_NAME = "budget.sqlite"
"""File name of an index's budget ledger inside the index directory (``DIR/budget.sqlite``)."""


def expand_user(path: str | os.PathLike[str]) -> Path:
    """``Path(path).expanduser()``; an unknown ``~user`` (or no home directory) is bad input, not a crash.

    Raises:
        PipelineInputError: ``~user`` names no user, or the home directory cannot be determined.
    """
    try:
        return Path(path).expanduser()
    except RuntimeError:  # pathlib raises RuntimeError for '~nosuchuser' and for an unknown home
        raise PipelineInputError(f"cannot expand '{path}': no such user's home directory; give an absolute path") from None


def default_ledger(index_dir: str | os.PathLike[str]) -> Path:
    """The ledger of an index: ``<index_dir>/budget.sqlite``."""
    return expand_user(index_dir) / LEDGER_NAME


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` atomically: temp file in the same folder, fsync, ``os.replace``, fsync the folder.

    A reader sees the old file or the new one, never a partial one; the temp file is removed on any failure
    (Ctrl-C included). The file gets permission bits ``mode`` (owner-only by default).
    """
    path = Path(path)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
