"""Per-thread database connections that survive ``fork`` (both backends; diskcache's habit, style.md §5.5).

Each thread of each process gets its own connection, opened on first use. A connection made by another process
(inherited through ``fork``) is never used or closed by the child, which could disturb the parent's session (a
SQLite WAL, a PostgreSQL session); it is parked in a module list for the process lifetime instead.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from contextlib import suppress
from typing import Any, Generic, TypeVar

from accountant.errors import LedgerUnavailable

C = TypeVar("C")

_PARKED: list[Any] = []  # connections inherited through fork: never used, never closed


class PerThread(Generic[C]):
    """The connections of one backend object: one per (process, thread), all closed by :meth:`close`.

    Args:
        location: the ledger location (for the "closed" message).
        usable: whether this thread's existing connection may still be used (e.g. not broken).
    """

    def __init__(self, location: str, *, usable: Callable[[C], bool] = lambda conn: True) -> None:
        self._location = location
        self._usable = usable
        self._local = threading.local()
        self._lock = threading.Lock()
        self._owned: list[tuple[int, Any]] = []
        self.closed = False

    def get(self, connect: Callable[[], C]) -> C:
        """This thread's connection; ``connect()`` makes a new one on first use, after fork, or if unusable."""
        if self.closed:
            raise LedgerUnavailable(f"ledger {self._location} was closed; open it again with Ledger(...)")
        local = self._local
        pid = os.getpid()
        current = getattr(local, "conn", None)
        if getattr(local, "pid", None) != pid:
            if current is not None:
                _PARKED.append(current)
            current = None
        elif current is not None and not self._usable(current):
            self._close_one(current)
            current = None
        if current is None:
            local.conn = None
            local.conn = connect()
            local.pid = pid
            with self._lock:
                self._owned.append((pid, local.conn))
        return local.conn

    def current(self) -> C | None:
        """This thread's connection if it has one (of this process)."""
        return (
            getattr(self._local, "conn", None) if getattr(self._local, "pid", None) == os.getpid() else None
        )

    def take_inherited(self) -> list[C]:
        """In a forked child: remove and park the parent's connections, returning them (to neuter them)."""
        with self._lock:
            owned, self._owned = self._owned, []
        inherited = [conn for _, conn in owned]
        _PARKED.extend(inherited)
        return inherited

    @staticmethod
    def _close_one(conn: Any) -> None:
        with suppress(Exception):
            conn.close()

    def close(self) -> None:
        """Close this process's connections (inherited ones stay parked); later :meth:`get` calls refuse."""
        self.closed = True
        pid = os.getpid()
        with self._lock:
            owned, self._owned = self._owned, []
        for owner, conn in owned:
            if owner == pid:
                self._close_one(conn)
            else:
                _PARKED.append(conn)
