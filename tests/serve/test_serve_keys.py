"""``dprdm keys add|list|revoke`` and the key store: token shown once, only a salted scrypt hash kept, 0600."""

from __future__ import annotations

import json
import sqlite3
import stat

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.serve import KeyStore
from pipeline.serve.errors import KeyRevoked, KeyStoreUnavailable, QuotaExhausted, Unauthorized


def _run(*args: str):
    return CliRunner().invoke(app, list(args))


def test_keys_add_prints_the_token_once_and_stores_only_a_hash(index_dir):
    result = _run("keys", "add", "alice", "--index", str(index_dir), "--shard", "low", "--max-queries", "3", "--json")
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    token = payload["token"]
    assert payload["name"] == "alice" and payload["shards"] == ["low"] and payload["max_queries"] == 3
    path = index_dir / "keys.sqlite"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    secret = token.rsplit("_", 1)[1]
    assert len(bytes.fromhex(secret)) == 32  # 256 random bits
    raw = b"".join(p.read_bytes() for p in index_dir.glob("keys.sqlite*"))
    assert secret.encode() not in raw and bytes.fromhex(secret) not in raw
    with sqlite3.connect(path) as conn:
        columns = [r[1] for r in conn.execute("PRAGMA table_info(keys)")]
    assert columns == ["key_id", "name", "salt", "hash", "shards", "max_queries", "max_epsilon", "used", "revoked", "created"]
    listed = _run("keys", "list", "--index", str(index_dir), "--json")
    assert listed.exit_code == 0
    rows = json.loads(listed.stdout)
    assert [r["name"] for r in rows] == ["alice"] and "token" not in rows[0]
    assert token not in listed.stdout
    assert KeyStore.for_index(index_dir).authenticate(token).name == "alice"


def test_keys_default_to_every_shard_and_revoke(index_dir):
    assert _run("keys", "add", "bob", "--index", str(index_dir)).exit_code == 0
    store = KeyStore.for_index(index_dir)
    assert store.list()[0].shards == ("low", "high") or store.list()[0].shards == ("high", "low")
    revoked = _run("keys", "revoke", "bob", "--index", str(index_dir), "--json")
    assert revoked.exit_code == 0 and json.loads(revoked.stdout)["revoked"] is True
    human = _run("keys", "list", "--index", str(index_dir))
    assert "revoked" in human.stdout


def test_max_epsilon_becomes_the_query_count_that_fits(index_dir):
    from serve_testlib import DELTA, MECH

    from accountant import max_queries

    result = _run("keys", "add", "eve", "--index", str(index_dir), "--max-epsilon", "2.0", "--json")
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["max_epsilon"] == 2.0
    assert payload["max_queries"] == max_queries(MECH, epsilon=2.0, delta=DELTA)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [(["--max-queries", "1", "--max-epsilon", "1"], "at most one of"),
     (["--shard", "nosuch"], "shard 'nosuch' is not in index"),
     (["--max-epsilon", "-1"], "must be a finite number > 0")],
    ids=["both-quotas", "unknown-shard", "bad-epsilon"],
)  # fmt: skip
def test_keys_add_input_errors_exit_2(index_dir, args, fragment):
    result = _run("keys", "add", "x", "--index", str(index_dir), *args)
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: ") and fragment in result.stderr
    assert not (index_dir / "keys.sqlite").exists()


def test_duplicate_name_and_unknown_revoke_exit_2(index_dir):
    assert _run("keys", "add", "a", "--index", str(index_dir)).exit_code == 0
    again = _run("keys", "add", "a", "--index", str(index_dir))
    assert again.exit_code == 2 and "already exists" in again.stderr
    missing = _run("keys", "revoke", "zz", "--index", str(index_dir))
    assert missing.exit_code == 2 and "no key named" in missing.stderr


def test_reserve_release_and_refusals(index_dir):
    store = KeyStore.for_index(index_dir, create=True)
    key, token = store.add("q", shards=["low"], max_queries=2)
    assert store.reserve(key.key_id).used == 1
    assert store.reserve(key.key_id).queries_remaining == 0
    with pytest.raises(QuotaExhausted, match="used its quota of 2"):
        store.reserve(key.key_id)
    store.release(key.key_id)
    assert store.get(key.key_id).used == 1
    store.revoke("q")
    with pytest.raises(KeyRevoked):
        store.authenticate(token)
    with pytest.raises(KeyRevoked):
        store.reserve(key.key_id)
    with pytest.raises(Unauthorized):
        store.authenticate(None)


def test_damaged_key_store_fails_closed(index_dir):
    path = index_dir / "keys.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE other (x)")
    with pytest.raises(KeyStoreUnavailable, match="not a dprdm key store"):
        KeyStore(path)
    path.write_bytes(b"garbage" * 100)
    with pytest.raises(KeyStoreUnavailable):
        KeyStore(path)
    assert path.read_bytes() == b"garbage" * 100
    with pytest.raises(KeyStoreUnavailable, match="no key store"):
        KeyStore(index_dir / "missing.sqlite")


def test_serve_help_binds_loopback_by_default_and_refuses_without_keys(index_dir):
    help_text = _run("serve", "--help").stdout
    assert "127.0.0.1" in help_text and "--max-batch" in help_text and "--workers" in help_text
    result = _run("serve", "--index", str(index_dir), "--json")
    assert result.exit_code == 3
    assert json.loads(result.stderr)["error"]["type"] == "KeyStoreUnavailable"
    assert "dprdm keys add" in result.stderr


def test_keys_list_without_a_key_store_is_empty_and_creates_nothing(index_dir):
    result = _run("keys", "list", "--index", str(index_dir), "--json")
    assert result.exit_code == 0 and json.loads(result.stdout) == []
    assert not (index_dir / "keys.sqlite").exists()
