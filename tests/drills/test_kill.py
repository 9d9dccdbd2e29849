"""kill -9 drills: SIGKILL a long-running ``dprdm generate`` / ``dprdm index build`` loop at random moments.

Each round forks a fresh child (from the warm fork server) that runs the real command in a loop, sleeps a
random delay, sends SIGKILL and then checks the invariants:

* generate: the ledger verifies (recomputed from its log), and no released image lacks a committed charge:
  output folders holding any PNG ≤ charges, and every JSON record's charge number is distinct and ≤ charges;
* index build: the index opens and holds exactly one complete version (A or B), the ledger beside it is
  byte-identical, and a final unkilled build still succeeds (no stale lock, no debris in the way).
"""

from __future__ import annotations

import json
import random
import signal
import time

import numpy as np
import pytest
from drill_support import add_scope, build_forever, generate_args, generate_forever

from accountant import Ledger
from index import PrivateIndex

KILLS = 20


def _kill_after(process, delay: float) -> bool:
    """Sleep, SIGKILL the child; True when it was still running (a real kill, not a crash before it)."""
    time.sleep(delay)
    alive = process.is_alive()
    process.kill()
    process.join(timeout=60)
    assert process.exitcode is not None
    assert process.exitcode == -signal.SIGKILL or not alive, f"child died on its own: exit {process.exitcode}"
    return alive


def _released(out_root):
    """(folders with at least one final PNG, charge numbers in the JSON records)."""
    folders, numbers = 0, []
    for folder in sorted(p for p in out_root.iterdir() if p.is_dir()):
        if any(not png.name.startswith(".") for png in folder.glob("*.png")):
            folders += 1
        for record in folder.glob("*.json"):
            numbers.append(json.loads(record.read_text())["scopes"]["default"]["queries_charged"])
    return folders, numbers


@pytest.mark.timeout(300)
def test_kill_generate_never_releases_uncharged_output(
    index_dir, decoder_dir, forkserver, tmp_path, drill_counts
):
    ledger_path = add_scope(index_dir, queries_fit=100_000, q=0.5, sigma=2.0)
    out_root = tmp_path / "outs"
    out_root.mkdir()
    rng = random.Random(1234)  # kill timing only
    args = generate_args(index_dir, out_root / "placeholder", decoder_dir)
    survived = 0
    for round_number in range(KILLS):
        child = forkserver.Process(target=generate_forever, args=(args, out_root, round_number * 1000))
        child.start()
        last = round_number == KILLS - 1  # a long last round: at least one full generation on slow machines
        survived += _kill_after(child, 6.0 if last else rng.uniform(0.05, 2.0))
        with Ledger(ledger_path, create=False) as ledger:
            assert ledger.verify().ok
            charges = ledger.status("default").queries_charged
        folders, numbers = _released(out_root)
        assert folders <= charges, f"{folders} outputs for {charges} charges"
        assert len(set(numbers)) == len(numbers) and all(1 <= n <= charges for n in numbers)
    assert charges > 0 and folders > 0, "the loop never got as far as a release; lengthen the delays"
    drill_counts["kill -9 of generate: kills"] += KILLS
    drill_counts["kill -9 of generate: kills of a running child"] += survived
    drill_counts["kill -9 of generate: charges committed"] += charges
    drill_counts["kill -9 of generate: generations released"] += folders


def _content(index_dir):
    """(records, rows sorted) of the default shard: compares versions independent of id assignment."""
    shard = PrivateIndex.open(index_dir).shard("default")
    rows = np.asarray(shard.embeddings, dtype=np.float64)
    order = np.lexsort(rows.T[::-1])
    assert shard.faiss_index.ntotal == shard.num_records == len(shard.ids)
    return shard.num_records, rows[order]


@pytest.mark.timeout(300)
def test_kill_index_build_leaves_one_complete_version(
    index_dir, corpus, other_corpus, forkserver, tmp_path, drill_counts
):
    from index import build_index

    reference = tmp_path / "reference_b"
    build_index(other_corpus, reference, progress=False, num_threads=1)
    versions = [_content(index_dir), _content(reference)]
    assert versions[0][0] != versions[1][0]
    ledger_path = add_scope(index_dir, queries_fit=10)
    with Ledger(ledger_path, create=False) as ledger:
        charges_before = ledger.history()
    rng = random.Random(4321)
    survived, seen = 0, set()
    for _ in range(KILLS):
        child = forkserver.Process(target=build_forever, args=([str(other_corpus), str(corpus)], index_dir))
        child.start()
        survived += _kill_after(child, rng.uniform(0.05, 3.0))
        records, rows = _content(index_dir)  # opens: manifests, sizes and row counts agree
        match = [
            i for i, (n, ref) in enumerate(versions) if n == records and np.allclose(rows, ref, atol=1e-6)
        ]
        assert match, f"index holds {records} records matching neither version"
        seen.add(match[0])
        # a rebuild that drops records tombstones them first (issue 9), but never charges: the log is unchanged
        with Ledger(ledger_path, create=False) as ledger:
            assert ledger.history() == charges_before, "index build charged the ledger"
            assert ledger.verify().ok
    build_index(other_corpus, index_dir, progress=False, num_threads=1)  # no stale lock or debris in the way
    assert _content(index_dir)[0] == versions[1][0]
    with Ledger(ledger_path, create=False) as ledger:
        assert ledger.verify().ok
    drill_counts["kill -9 of index build: kills"] += KILLS
    drill_counts["kill -9 of index build: kills of a running child"] += survived
    drill_counts["kill -9 of index build: versions observed after kills"] += len(seen)
