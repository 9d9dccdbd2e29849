"""API keys of ``dprdm serve``: a small SQLite file ``DIR/keys.sqlite`` (0600) next to the index.

Invariants:

* A token is ``dprdm_<key id>_<secret>``: the key id (48 random bits, hex) only finds the row; the secret is 256
  random bits (``secrets.token_bytes(32)``), shown once by ``dprdm keys add`` and stored only as a salted
  ``hashlib.scrypt`` hash (n=2^14, r=8, p=1), compared with ``hmac.compare_digest``. A process keeps the
  SHA-256 of tokens it has verified in memory (never on disk) so the slow hash runs once per token and process;
  the key's row (revoked flag, access set, quota) is still read on every request, so a revocation takes effect
  on the next request.
* The file holds only: key id, name, salt, hash, access set (shard names), quota (``max_queries``, and
  ``max_epsilon`` it was derived from), usage, revoked, creation time. WAL, ``synchronous=FULL``; every change is
  one ``BEGIN IMMEDIATE`` transaction. Created with mode 0600 (SQLite gives its WAL files the same mode).
* **Quota order.** The per-key quota lives here, the ledger charge in the index's ledger (another file), so
  the two cannot share a transaction. A request first *reserves* one query of its key's quota (committed,
  fsynced), then charges the ledger. A crash between the two only over-counts the key's usage (a reserved query
  that was never charged); it can never release a query that the quota did not count. A charge refused by the
  ledger (budget exhausted, delta refused) releases the reservation again.
* Fail closed: a damaged, foreign or newer-schema file raises :class:`KeyStoreUnavailable`; it is never
  recreated.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.serve.errors import (
    KeyRevoked,
    KeyStoreInputError,
    KeyStoreUnavailable,
    QuotaExhausted,
    Unauthorized,
)

__all__ = ["KEYS_NAME", "ApiKey", "KeyStore"]

KEYS_NAME = "keys.sqlite"
_SCHEMA_VERSION = 1
_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}
_TOKEN = re.compile(r"^dprdm_([0-9a-f]{12})_([0-9a-f]{64})$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_CACHE_LIMIT = 4096
_SCHEMA = """
CREATE TABLE keys (
    key_id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    salt BLOB NOT NULL,
    hash BLOB NOT NULL,
    shards TEXT NOT NULL,
    max_queries INTEGER,
    max_epsilon REAL,
    used INTEGER NOT NULL DEFAULT 0 CHECK (used >= 0),
    revoked INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL
)"""
_COLUMNS = "key_id, name, shards, max_queries, max_epsilon, used, revoked, created"


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiKey:
    """One key as stored (never its secret or hash).

    Attributes:
        key_id: public lookup id (part of the token). name: the operator's label (logged with each request).
        shards: the access set. max_queries: the quota (None = only the shard budgets limit it).
        max_epsilon: the ε the quota was derived from (None when given as a query count). used: queries counted.
        revoked: refused from the next request on. created: Unix time.
    """

    key_id: str
    name: str
    shards: tuple[str, ...]
    max_queries: int | None
    max_epsilon: float | None
    used: int
    revoked: bool
    created: float

    @property
    def queries_remaining(self) -> int | None:
        """Queries left in the key's own quota (None = no per-key limit)."""
        return None if self.max_queries is None else max(0, self.max_queries - self.used)

    def to_dict(self) -> dict[str, Any]:
        """JSON form for ``dprdm keys list --json`` (no secret, no hash)."""
        return {
            "name": self.name,
            "key_id": self.key_id,
            "shards": list(self.shards),
            "max_queries": self.max_queries,
            "max_epsilon": self.max_epsilon,
            "used": self.used,
            "queries_remaining": self.queries_remaining,
            "revoked": self.revoked,
            "created": self.created,
        }


def _row_to_key(row: tuple) -> ApiKey:
    return ApiKey(
        key_id=row[0],
        name=row[1],
        shards=tuple(json.loads(row[2])),
        max_queries=row[3],
        max_epsilon=row[4],
        used=int(row[5]),
        revoked=bool(row[6]),
        created=float(row[7]),
    )


def _hash(secret: bytes, salt: bytes) -> bytes:
    return hashlib.scrypt(secret, salt=salt, maxmem=64 * 1024 * 1024, **_SCRYPT)


class KeyStore:
    """The API keys of one index (``DIR/keys.sqlite``); thread- and process-safe.

    Args:
        path: the key file.
        create: create it (mode 0600) when missing; otherwise a missing file refuses.
        timeout: seconds to wait for another writer's lock.

    Raises:
        KeyStoreUnavailable: missing (``create=False``), damaged, foreign or newer-schema file.
    """

    def __init__(self, path: str | os.PathLike[str], *, create: bool = False, timeout: float = 30.0) -> None:
        self.path = Path(path).absolute()
        self.timeout = float(timeout)
        self._local = threading.local()
        self._verified: dict[bytes, str] = {}
        self._verified_lock = threading.Lock()
        if not self.path.exists():
            if not create:
                raise KeyStoreUnavailable(
                    f"no key store at {self.path}; create a key with 'dprdm keys add NAME --index DIR'"
                )
            with suppress(FileExistsError):  # another process created it first: its schema is checked below
                os.close(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        self._check_or_initialise()

    @classmethod
    def for_index(cls, index_dir: str | os.PathLike[str], *, create: bool = False) -> KeyStore:
        """The key store of an index folder: ``DIR/keys.sqlite``."""
        return cls(Path(index_dir) / KEYS_NAME, create=create)

    # -- connections and transactions ----------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            with self._guard("opening"):
                conn = sqlite3.connect(self.path, isolation_level=None, timeout=self.timeout, check_same_thread=False)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
            local.conn, local.pid = conn, os.getpid()
        return local.conn

    @contextmanager
    def _guard(self, action: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as err:
            text = " ".join(str(err).split())
            raise KeyStoreUnavailable(
                f"key store {self.path} unavailable while {action} ({text}); nothing was charged; restore it from a "
                "backup or retry when the lock is free"
            ) from err

    @contextmanager
    def _transaction(self, action: str) -> Iterator[sqlite3.Connection]:
        # The same BEGIN IMMEDIATE pattern as accountant/backends/sqlite.py; not imported from there because any
        # accountant import loads dp_accounting (~0.8 s), which `dprdm keys` never needs.
        conn = self._conn()
        with self._guard(action):
            conn.execute("BEGIN IMMEDIATE")
        try:
            with self._guard(action):
                yield conn
                conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise

    def _check_or_initialise(self) -> None:
        with self._transaction("opening") as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if version == 0 and not tables:
                conn.execute(_SCHEMA)
                conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
                return
            if version > _SCHEMA_VERSION:
                raise KeyStoreUnavailable(
                    f"key store {self.path} has schema {version}, newer than this dprdm ({_SCHEMA_VERSION}); upgrade dprdm"
                )
            if version != _SCHEMA_VERSION or tables != {"keys"}:
                raise KeyStoreUnavailable(
                    f"{self.path} is not a dprdm key store (schema {version}, tables {sorted(tables)}); restore it "
                    "from a backup"
                )

    # -- administration -------------------------------------------------------------------------------------
    def add(
        self,
        name: str,
        *,
        shards: Sequence[str],
        max_queries: int | None = None,
        max_epsilon: float | None = None,
    ) -> tuple[ApiKey, str]:
        """Create a key; return it and its token (the only time the token exists outside the caller).

        Raises:
            KeyStoreInputError: bad or existing name, no shard, a negative quota.
        """
        if not isinstance(name, str) or not _NAME.match(name):
            raise KeyStoreInputError(
                f"key name must be 1-64 letters, digits, '.', '_', '@' or '-'; found {name!r}; pick another name"
            )
        chosen = tuple(dict.fromkeys(str(s) for s in shards))
        if not chosen:
            raise KeyStoreInputError("a key needs at least one shard in its access set; pass --shard NAME")
        if max_queries is not None and (isinstance(max_queries, bool) or int(max_queries) < 0):
            raise KeyStoreInputError(f"--max-queries must be an integer >= 0; found {max_queries!r}")
        key_id, secret, salt = secrets.token_hex(6), secrets.token_bytes(32), secrets.token_bytes(16)
        digest = _hash(secret, salt)
        with self._transaction("adding a key") as conn:
            if conn.execute("SELECT 1 FROM keys WHERE name = ?", (name,)).fetchone():
                raise KeyStoreInputError(
                    f"key '{name}' already exists in {self.path}; revoke it and add a key with another name"
                )
            conn.execute(
                "INSERT INTO keys (key_id, name, salt, hash, shards, max_queries, max_epsilon, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (key_id, name, salt, digest, json.dumps(list(chosen)), max_queries, max_epsilon, time.time()),
            )
            row = conn.execute(f"SELECT {_COLUMNS} FROM keys WHERE key_id = ?", (key_id,)).fetchone()
        return _row_to_key(row), f"dprdm_{key_id}_{secret.hex()}"

    def list(self) -> list[ApiKey]:
        """Every key (revoked ones too), by name."""
        conn = self._conn()
        with self._guard("listing keys"):
            rows = conn.execute(f"SELECT {_COLUMNS} FROM keys ORDER BY name").fetchall()
        return [_row_to_key(r) for r in rows]

    def revoke(self, name: str) -> ApiKey:
        """Revoke a key by name (durable; every later request with it gets 401 ``key_revoked``).

        Raises:
            KeyStoreInputError: no key of that name.
        """
        with self._transaction("revoking a key") as conn:
            if conn.execute("UPDATE keys SET revoked = 1 WHERE name = ?", (name,)).rowcount != 1:
                raise KeyStoreInputError(f"no key named {name!r} in {self.path}; see 'dprdm keys list --index DIR'")
            row = conn.execute(f"SELECT {_COLUMNS} FROM keys WHERE name = ?", (name,)).fetchone()
        return _row_to_key(row)

    # -- the request path -----------------------------------------------------------------------------------
    def get(self, key_id: str) -> ApiKey:
        """The key's current row (read on every request). Raises Unauthorized for an unknown id."""
        conn = self._conn()
        with self._guard("reading a key"):
            row = conn.execute(f"SELECT {_COLUMNS} FROM keys WHERE key_id = ?", (key_id,)).fetchone()
        if row is None:
            raise Unauthorized("unknown API key; ask the operator for a key ('dprdm keys add')")
        return _row_to_key(row)

    def authenticate(self, token: str | None) -> ApiKey:
        """The key a bearer token belongs to.

        Raises:
            Unauthorized: no token, a malformed token, or one that matches no key (401).
            KeyRevoked: the key was revoked (401).
        """
        if not token:
            raise Unauthorized("missing API key; send 'Authorization: Bearer TOKEN'")
        match = _TOKEN.match(token)
        if match is None:
            raise Unauthorized("unknown API key; send the token printed by 'dprdm keys add'")
        fingerprint = hashlib.sha256(token.encode()).digest()
        with self._verified_lock:
            known = self._verified.get(fingerprint)
        key_id = match.group(1)
        if known is None:
            conn = self._conn()
            with self._guard("reading a key"):
                row = conn.execute("SELECT salt, hash FROM keys WHERE key_id = ?", (key_id,)).fetchone()
            if row is None or not hmac.compare_digest(_hash(bytes.fromhex(match.group(2)), row[0]), row[1]):
                raise Unauthorized("unknown API key; send the token printed by 'dprdm keys add'")
            with self._verified_lock:
                if len(self._verified) >= _CACHE_LIMIT:
                    self._verified.clear()
                self._verified[fingerprint] = key_id
        key = self.get(key_id)
        if key.revoked:
            raise KeyRevoked(f"API key '{key.name}' was revoked; ask the operator for a new key")
        return key

    def reserve(self, key_id: str, count: int = 1) -> ApiKey:
        """Count ``count`` queries against the key's quota, durably (committed before the ledger is charged).

        Raises:
            KeyRevoked: revoked meanwhile. QuotaExhausted: the quota has fewer than ``count`` queries left.
        """
        with self._transaction("reserving quota") as conn:
            row = conn.execute(f"SELECT {_COLUMNS} FROM keys WHERE key_id = ?", (key_id,)).fetchone()
            if row is None:
                raise Unauthorized("unknown API key; ask the operator for a key ('dprdm keys add')")
            key = _row_to_key(row)
            if key.revoked:
                raise KeyRevoked(f"API key '{key.name}' was revoked; ask the operator for a new key")
            if key.max_queries is not None and key.used + count > key.max_queries:
                raise QuotaExhausted(
                    f"API key '{key.name}' has used its quota of {key.max_queries} queries; nothing was charged; ask "
                    "the operator for more"
                )
            conn.execute("UPDATE keys SET used = used + ? WHERE key_id = ?", (count, key_id))
        return _row_to_key((*row[:5], key.used + count, *row[6:]))

    def release(self, key_id: str, count: int = 1) -> None:
        """Give back a reservation whose ledger charge was refused (nothing was charged, nothing released)."""
        with self._transaction("releasing quota") as conn:
            conn.execute("UPDATE keys SET used = MAX(used - ?, 0) WHERE key_id = ?", (count, key_id))

    def close(self) -> None:
        """Close this thread's connection."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
            self._local.pid = None
