"""Tombstones: the loss of records that leave a scope, carried into the scope they join (issue 9).

``retire_from``: tombstone(id) = max(tombstone(id), R) elementwise, R = the leaving scope's running RDP vector
(an upper bound, at every order, on the loss each of its records has accrued); tombstones only grow and keep
the grid of the scope that first wrote them. ``admit_into``: the joining scope's carried vector becomes
W = max(W, tombstone(id)), logged in the append-only admission table (with the last charge id before it) so
that verification replays W and the charge order exactly. See ``Ledger.admit`` for why this keeps each
record's whole history under the joining scope's fixed-order filter.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from accountant._rows import ScopeRow, on_grid, orders_from_json, vector_from_blob, vector_to_blob

_CHUNK = 500  # ids per IN (...) statement (below every engine's bound-parameter limit)


def _load_tombstones(conn: Any, ids: np.ndarray) -> dict[int, tuple[tuple[float, ...], np.ndarray]]:
    found: dict[int, tuple[tuple[float, ...], np.ndarray]] = {}
    for start in range(0, ids.size, _CHUNK):
        chunk = [int(i) for i in ids[start : start + _CHUNK]]
        marks = ", ".join("?" * len(chunk))
        for id_, orders, blob in conn.execute(
            f"SELECT id, orders, rdp FROM tombstones WHERE id IN ({marks})", chunk
        ):
            found[int(id_)] = (orders_from_json(orders), vector_from_blob(blob))
    return found


def admit_into(conn: Any, s: ScopeRow, ids: np.ndarray, now: float) -> ScopeRow:
    """W = max(W, tombstone(id)) over ``ids`` (on the scope's grid), logged; returns the updated scope."""
    carried_in = np.zeros_like(s.carried)
    stones = _load_tombstones(conn, ids)
    for orders, vector in stones.values():
        carried_in = np.maximum(carried_in, on_grid(vector, orders, s.orders))
    after_charge = conn.execute("SELECT COALESCE(MAX(id), 0) FROM charges").fetchone()[0]
    conn.execute(
        "INSERT INTO admissions (time, scope, after_charge, members, rdp) VALUES (?, ?, ?, ?, ?)",
        (now, s.name, after_charge, len(stones), vector_to_blob(carried_in)),
    )
    carried = np.maximum(s.carried, carried_in)
    after = s._replace(carried=carried)
    after = after._replace(rdp=after.total())
    conn.execute(
        "UPDATE spend SET carried = ?, rdp = ? WHERE scope = ?",
        (vector_to_blob(after.carried), vector_to_blob(after.rdp), s.name),
    )
    return after


def retire_from(conn: Any, s: ScopeRow, ids: np.ndarray, now: float) -> None:
    """tombstone(id) = max(tombstone(id), R) for ``ids`` (R = the scope's running vector, on the stone's grid)."""
    existing = _load_tombstones(conn, ids)
    updates, inserts = [], []
    own = json.dumps(list(s.orders))
    for id_ in (int(i) for i in ids):
        if id_ in existing:
            orders, vector = existing[id_]
            merged = np.maximum(vector, on_grid(s.rdp, s.orders, orders))
            updates.append((vector_to_blob(merged), now, id_))
        else:
            inserts.append((id_, own, vector_to_blob(s.rdp), now))
    conn.executemany("UPDATE tombstones SET rdp = ?, updated = ? WHERE id = ?", updates)
    conn.executemany("INSERT INTO tombstones (id, orders, rdp, updated) VALUES (?, ?, ?, ?)", inserts)
