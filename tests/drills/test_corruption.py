"""Corrupt or truncated ledger, manifests, index, ids and embeddings files: clear refusal, nothing overwritten.

Every case damages one file of a private copy (truncated to half, emptied, or its first 64 bytes replaced)
and then runs the commands that read it: ``generate`` (a query), ``audit --index``, ``budget show`` and
``index info``. A query must be refused (exit 3, one error line, no traceback, no output folder) with nothing
charged to the ledger, and every file that existed before must be byte-identical afterwards (SQLite may add its
-wal/-shm side files). Same-size damage to a shard data file is caught by the sha256 in the shard manifest.
"""

from __future__ import annotations

import pytest
from drill_support import add_scope, assert_one_error_line, generate_args, run_cli_result, snapshot

from accountant import Ledger

MODES = ("truncate", "empty", "header")  # plus "middle" (same-size damage) below
TARGETS = ("ledger", "manifest", "shard-manifest", "index", "embeddings", "ids")
DATA = ("index", "embeddings", "ids")
SIDECARS = {"budget.sqlite-wal", "budget.sqlite-shm"}


def _path(index_dir, target):
    shard_dir = next((index_dir / "shards").iterdir())
    return {
        "ledger": index_dir / "budget.sqlite",
        "manifest": index_dir / "manifest.json",
        "shard-manifest": shard_dir / "manifest.json",
        "index": shard_dir / "index.faiss",
        "embeddings": shard_dir / "embeddings.npy",
        "ids": shard_dir / "ids.npy",
    }[target]


def _damage(path, mode):
    data = path.read_bytes()
    if mode == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif mode == "empty":
        path.write_bytes(b"")
    elif mode == "header":
        path.write_bytes(b"\xde\xad\xbe\xef" * 16 + data[64:])
    else:  # same size, valid header: 32 bytes in the middle set to 0x7f (float32 3.4e38)
        middle = len(data) // 2
        path.write_bytes(data[:middle] + b"\x7f" * 32 + data[middle + 32 :])


CASES = [(target, mode) for target in TARGETS for mode in MODES] + [(target, "middle") for target in DATA]


@pytest.mark.parametrize(("target", "mode"), CASES)
def test_damaged_file_is_refused_and_left_alone(target, mode, index_dir, decoder_dir, tmp_path, drill_counts):
    ledger_path = add_scope(index_dir, queries_fit=5)
    _damage(_path(index_dir, target), mode)
    before = snapshot(index_dir)
    out = tmp_path / "out"

    query = run_cli_result(generate_args(index_dir, out, decoder_dir))
    drill_counts["corruption cases tried"] += 1
    if query.exit_code == 0:
        drill_counts["corruption: damaged file not detected (query answered)"] += 1
    assert query.exit_code == 3, query.stderr
    same_size = target in DATA and mode in ("header", "middle")
    assert_one_error_line(query.stderr, "checksum mismatch" if same_size else "")
    assert query.stdout == "" and not out.exists(), "a refused query wrote output"
    audit = run_cli_result(["audit", "--index", str(index_dir), "--trials", "8"])
    assert audit.exit_code == 3, audit.stdout + audit.stderr
    assert_one_error_line(audit.stderr)
    show = run_cli_result(["budget", "show", "--index", str(index_dir)])
    info = run_cli_result(["index", "info", "--index", str(index_dir)])
    broken, intact = (show, info) if target == "ledger" else (info, show)
    assert broken.exit_code == 3 and intact.exit_code == 0, (broken.stderr, intact.stderr)
    assert_one_error_line(broken.stderr, "checksum mismatch" if same_size else "")

    after = snapshot(index_dir)
    assert {name: data for name, data in after.items() if name in before} == before, (
        "a damaged file was rewritten"
    )
    assert set(after) - set(before) <= SIDECARS
    if target != "ledger":
        with Ledger(ledger_path, create=False) as ledger:
            charged = ledger.status("default").queries_charged
        drill_counts["corruption: refused queries that still spent budget"] += charged
        assert charged == 0, "a refused query was charged"
    drill_counts["corruption cases (file x damage) refused"] += 1
