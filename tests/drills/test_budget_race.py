"""Budget race: 4 processes run ``dprdm generate`` at once against a budget that fits m queries.

Exactly m succeed and write their images; the others exit 3, write nothing, and the ledger ends with exactly
m charges (the serial result). Real processes (forked from the drill fork server, started together on a
``multiprocessing.Barrier``), the real ledger file and the real ``generate`` command with a tiny decoder.
"""

from __future__ import annotations

import json

import pytest
from drill_support import add_scope, assert_one_error_line, generate_args, race_child

from accountant import Ledger

RACERS = 4


@pytest.mark.timeout(240)
@pytest.mark.parametrize("fits", [1, 2, 3])
def test_exactly_m_generations_succeed(fits, index_dir, decoder_dir, forkserver, tmp_path, drill_counts):
    ledger_path = add_scope(index_dir, queries_fit=fits)
    barrier = forkserver.Barrier(RACERS)
    racers = []
    for number in range(RACERS):
        out, result = tmp_path / f"out{number}", tmp_path / f"result{number}.json"
        args = generate_args(index_dir, out, decoder_dir, prompt=f"digit {number}")
        process = forkserver.Process(target=race_child, args=(barrier, args, result))
        racers.append((process, out, result))
    for process, _, _ in racers:
        process.start()
    for process, _, _ in racers:
        process.join(timeout=200)
        assert process.exitcode is not None, "a racer hung"

    codes = sorted(process.exitcode for process, _, _ in racers)
    assert codes == [0] * fits + [3] * (RACERS - fits)
    for process, out, result in racers:
        outcome = json.loads(result.read_text())
        pngs = sorted(out.glob("*.png")) if out.exists() else []
        if process.exitcode == 0:
            record = json.loads(outcome["stdout"])
            assert record["charged"] is True and len(record["images"]) == 1
            assert len(pngs) >= 1
        else:
            assert pngs == [] and not (out.exists() and any(out.iterdir())), "a refused racer wrote output"
            assert outcome["stdout"] == ""
            assert_one_error_line(outcome["stderr"], "exhausted")
    with Ledger(ledger_path, create=False) as ledger:
        status = ledger.status("default")
        assert status.queries_charged == fits and status.queries_remaining == 0
        assert ledger.verify().ok
        assert len(ledger.history("default")) == fits
    drill_counts["budget races run"] += 1
    drill_counts["budget race generate processes"] += RACERS
    drill_counts["budget race refusals (exit 3, nothing written)"] += RACERS - fits
