"""Errors raised by ``index``. One base class; every class carries the CLI exit code it maps to.

Exit codes: 2 = bad input (fix the argument and retry), 3 = privacy refusal or unusable stored state
(nothing was released, nothing was changed).
"""

from __future__ import annotations


class IndexStoreError(Exception):
    """Base class of every error raised by the ``index`` package."""

    exit_code: int = 2


class IndexInputError(IndexStoreError, ValueError):
    """A bad argument, path, source or configuration given by the user."""

    exit_code = 2


class UnsafeIndexError(IndexStoreError):
    """An index type whose search would break the DP sensitivity bound (e.g. a quantiser trained on private data)."""

    exit_code = 3


class IndexCorruptError(IndexStoreError):
    """A stored index, manifest or embeddings file is missing, truncated or inconsistent; queries are refused."""

    exit_code = 3


class StaleShardError(IndexCorruptError):
    """A shard generation was replaced (add/remove/build) after this view was opened; reopen the index."""

    exit_code = 3


class LedgerBindingError(IndexStoreError):
    """The index is bound to another ledger (an index has exactly one ledger); nothing was changed."""

    exit_code = 3
