"""Expansion of ``~`` in user-given paths, with a one-line error instead of a traceback."""

from __future__ import annotations

import os
from pathlib import Path

from index.errors import IndexInputError

__all__ = ["expand_user"]


def expand_user(path: str | os.PathLike[str]) -> Path:
    """``Path(path).expanduser()``, but an unknown ``~user`` (or no home directory) is bad input, not a crash.

    Raises:
        IndexInputError: ``~user`` names no user, or the home directory cannot be determined.
    """
    try:
        return Path(path).expanduser()
    except RuntimeError as err:  # pathlib raises RuntimeError for '~nosuchuser' and for an unknown home
        raise IndexInputError(f"cannot expand '{path}': no such user; give an absolute path") from err
