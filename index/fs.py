"""File-system helpers of the whole project: the ONE atomic write, ``~`` expansion and private directories.

``atomic_write_bytes`` is the project's only atomic write (the pipeline imports it): write a temp file in the
target's directory, fsync it, ``os.replace`` it over the target, then fsync the directory, so a crash leaves
either the old or the new file, never a mix. Files are created with an explicit mode (0600 by default:
manifests, checkpoints and outputs of private data are private).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from index.errors import IndexInputError

__all__ = ["atomic_write_bytes", "atomic_write_json", "expand_user", "fsync_dir", "make_private_dir"]

DIR_MODE = 0o700
FILE_MODE = 0o600


def expand_user(path: str | os.PathLike[str]) -> Path:
    """``Path(path).expanduser()``, but an unknown ``~user`` (or no home directory) is bad input, not a crash.

    Raises:
        IndexInputError: ``~user`` names no user, or the home directory cannot be determined.
    """
    try:
        return Path(path).expanduser()
    except RuntimeError as err:  # pathlib raises RuntimeError for '~nosuchuser' and for an unknown home
        raise IndexInputError(
            f"cannot expand '{path}': no such user's home directory; give an absolute path"
        ) from err


def fsync_dir(path: Path) -> None:
    """Flush a directory entry (after a rename or a new file) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_private_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (and parents) with mode 0700 and tighten it if it already exists."""
    target = Path(path)
    target.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    os.chmod(target, DIR_MODE)
    return target


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, mode: int = FILE_MODE) -> None:
    """Replace ``path`` with ``data`` atomically: temp file + fsync + ``os.replace`` + directory fsync.

    The temp file (``mkstemp`` in the target's folder, so concurrent writers never share one) gets permission bits
    ``mode`` before any byte is written, and is removed on any failure (Ctrl-C included).
    """
    target = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(target.parent)


def atomic_write_json(path: str | os.PathLike[str], obj: dict[str, Any]) -> None:
    """Atomically write a JSON document (indented, sorted keys, so manifests diff cleanly), mode 0600."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())
