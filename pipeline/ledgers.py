"""An index has exactly one ledger: open it, create it, and keep the index and its ledger in step.

Invariants (issue 9, "the budget belongs to the records"):

* The index manifest records its ledger's identity (``Ledger.ledger_id``, a uuid4 written into the ledger when
  it is created) and location. Every command over an index opens that ledger and checks the id; any other
  ledger — a fresh file at the same path, another ``--ledger`` — is refused (exit 3). Creating a second ledger
  for an index that has one is refused. A ledger without an index (``--ledger PATH`` alone) stays possible for
  API users, but a query over an index only ever charges that index's own ledger.
* Spent budget follows the record. Before records leave a shard (remove, drop-shard, a rebuild that drops
  them) the ledger writes a tombstone per content id holding the loss its scope had accrued
  (:meth:`accountant.Ledger.retire`); before records join a shard whose scope exists they bring their
  tombstoned loss back (:meth:`accountant.Ledger.admit`), and a new scope starts from the worst carried loss of
  its members. Both run in the index's ``before_commit`` hook, i.e. *before* the index commits, so a crash in
  between can only over-count (a tombstone for a record still present, a carried loss for a record never
  added), never let a record spend again.
* Legacy indexes (built before ledgers were bound) with a ledger at ``DIR/budget.sqlite`` adopt it on first use.

What this cannot catch: a near-duplicate image has another content id and is another record; an index rebuilt
from scratch in a new folder with a new ledger is a new index (the corpus owner can always do that; the
guarantee covers what one index releases).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline._files import LEDGER_NAME, expand_user
from pipeline.errors import PrivacyRefusal

if TYPE_CHECKING:
    from accountant import Ledger
    from index import PrivateIndex

__all__ = ["bound_ledger_path", "index_ledger", "membership_hook", "require_own_ledger"]


Location = Path | str  # a ledger file, or a postgresql:// URL (accountant's PostgreSQL backend)


def _location(value: str | os.PathLike[str]) -> Location:
    """A ledger location given by a user: a ``postgresql://`` URL as is, a path with ``~`` expanded."""
    from accountant.backends import is_postgres_url

    return value if is_postgres_url(value) else expand_user(value)


def bound_ledger_path(index: PrivateIndex) -> Location | None:
    """Where the index's bound ledger lives: a path, a URL (without password), or None when unbound."""
    binding = index.ledger_binding
    if binding is None:
        return None
    location = _location(binding["location"])
    return location if isinstance(location, str) or location.is_absolute() else index.path / location


def _same_file(a: Location, b: Location) -> bool:
    """Whether two locations name the same ledger (URLs compared without their passwords)."""
    if isinstance(a, str) or isinstance(b, str):
        if not (isinstance(a, str) and isinstance(b, str)):
            return False
        from accountant.backends.postgres import public_url

        return public_url(a) == public_url(b)
    return a.absolute().resolve() == b.absolute().resolve()


def _exists(location: Location) -> bool:
    """A file must exist; a database ledger is checked by opening it (a missing one is refused there)."""
    return True if isinstance(location, str) else location.exists()


def index_ledger(
    index: PrivateIndex,
    ledger: str | os.PathLike[str] | None = None,
    *,
    create: bool = False,
    read_only: bool = False,
) -> Ledger:
    """Open the one ledger of ``index`` (creating and binding it when ``create`` and the index has none).

    Args:
        index: the opened index.
        ledger: an explicit ledger path; it must be the index's bound ledger (same id), or, for an unbound index
            with ``create``, where to create it. Default: the bound location, else ``DIR/budget.sqlite``.
        create: create and bind a ledger when the index has none (``dprdm budget init``).
        read_only: open read-only (never creates, never writes, never binds).

    Returns:
        The ledger, whose ``ledger_id`` equals the index's binding.

    Raises:
        PrivacyRefusal: the index has no ledger (and ``create`` is False), the bound ledger is missing or has
            another id (replaced), or ``ledger`` names another ledger than the index's (exit 3).
        accountant.LedgerUnavailable: the ledger file is damaged (exit 3).
    """
    from accountant import Ledger

    requested = None if ledger is None else _location(ledger)
    bound = bound_ledger_path(index)
    if bound is None:
        default = index.path / LEDGER_NAME
        path = requested or default
        if not _exists(path) and not create:
            raise PrivacyRefusal(
                f"index '{index.path}' has no budget ledger; create its one ledger with "
                f"'dprdm budget init --index {index.path}'"
            )
        if default.exists() and not _same_file(path, default):
            raise PrivacyRefusal(
                f"index '{index.path}' uses the ledger {default}; {path} is another ledger; an index has exactly "
                "one ledger and only that one is charged"
            )
        if _exists(path) and not _same_file(path, default) and not create:
            raise PrivacyRefusal(
                f"index '{index.path}' is not bound to ledger {path}; only 'dprdm budget init --index DIR "
                "--ledger PATH' binds an index to a ledger outside its folder"
            )
        book = Ledger(path, create=create and not read_only, read_only=read_only)
        if create:
            try:
                index.bind_ledger(book.ledger_id, book.location)
            except BaseException:
                book.discard()  # removes the file only if this call created it
                raise
        elif not read_only:
            _adopt(index, book)
        return book
    binding = index.ledger_binding
    path = bound
    moved = False
    if requested is not None and _same_file(requested, bound):
        path = requested  # the same ledger; a URL given with its password (the binding stores none)
    elif requested is not None:
        if not _exists(requested) or _exists(bound):
            raise PrivacyRefusal(
                f"index '{index.path}' is bound to ledger {binding['id']} at {bound}; {requested} is another "
                "ledger; an index has exactly one ledger and only that one is charged"
            )
        path, moved = requested, True  # the bound file is gone: accepted only if it IS the bound ledger (same id)
    if not _exists(path):
        raise PrivacyRefusal(
            f"the ledger of index '{index.path}' (id {binding['id']}) is missing at {path}; every query is refused; "
            "restore that ledger from a backup (a new ledger would reset spent budgets, so none is created)"
        )
    book = Ledger(path, create=False, read_only=read_only)
    if book.ledger_id != binding["id"]:
        book.close()
        raise PrivacyRefusal(
            f"ledger {path} (id {book.ledger_id}) is not the ledger of index '{index.path}' (id {binding['id']}, "
            f"at {binding['location']}); an index has exactly one ledger: use it, or restore it from a backup"
        )
    if moved and not read_only and not index.mmap:
        index.bind_ledger(book.ledger_id, book.location)  # the same ledger moved: record its new location
    return book


def require_own_ledger(index: PrivateIndex, ledger: Ledger) -> None:
    """Refuse ``ledger`` for queries over ``index`` unless it is the index's bound ledger.

    An unbound index adopts its conventional ``DIR/budget.sqlite`` here (legacy indexes); any other ledger is
    refused.

    Raises:
        PrivacyRefusal: another ledger (exit 3).
    """
    binding = index.ledger_binding
    if binding is None:
        if ledger.path is not None and _same_file(ledger.path, index.path / LEDGER_NAME):
            _adopt(index, ledger)
            return
        raise PrivacyRefusal(
            f"index '{index.path}' has no bound ledger and {ledger.location} is not its own; create the index's ledger "
            f"with 'dprdm budget init --index {index.path}'"
        )
    if ledger.ledger_id != binding["id"]:
        raise PrivacyRefusal(
            f"ledger {ledger.location} (id {ledger.ledger_id}) is not the ledger of index '{index.path}' "
            f"(id {binding['id']}); a query over an index can only charge that index's own ledger"
        )


def _adopt(index: PrivateIndex, ledger: Ledger) -> None:
    """Bind a legacy (unbound) index to its conventional ``DIR/budget.sqlite`` ledger, best effort.

    Until the binding is written, that path is the only ledger accepted for the index; a concurrent writer holding
    the index lock (or a read-only index) only postpones the binding to the next use.
    """
    from index import IndexInputError

    if index.mmap:
        return
    with suppress(IndexInputError):  # another process holds the index's writer lock (it may be binding it now)
        index.bind_ledger(ledger.ledger_id, ledger.location)


def membership_hook(ledger: Ledger | None, *, joining: bool) -> Callable[[str, np.ndarray], None] | None:
    """The index ``before_commit`` hook that keeps the ledger in step with a shard's members.

    ``joining=True``: records entering a shard bring their tombstoned loss into its scope (``admit``);
    ``joining=False``: records leaving a shard get a tombstone with the loss its scope accrued (``retire``).
    Shards without a scope are skipped: nothing was ever charged there, and a scope created later starts from
    its members' tombstones (``create_scope(members=...)``).
    """
    if ledger is None:
        return None
    scopes = set(ledger.scopes())

    def hook(shard: str, ids: np.ndarray) -> None:
        if shard in scopes and len(ids):
            (ledger.admit if joining else ledger.retire)(shard, ids)

    return hook
