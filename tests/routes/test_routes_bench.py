"""``benchmarks/bench_routes.py --quick`` on a tiny subset, end to end, and the ledgers it leaves behind."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from benchmarks import bench_routes
from pipeline.cli import app

EPSILON = 10.0


@pytest.mark.slow  # every route end to end: ~1 min of CPU on one thread (two small fine-tunings and a CDM)
def test_quick_routes_run_end_to_end_within_their_targets(tmp_path: Path) -> None:
    out, work = tmp_path / "out", tmp_path / "work"
    code = bench_routes.main(["--quick", "--limit", "6", "--repeats", "1", "--epsilons", f"{EPSILON:g},inf",
                              "--sweep", "5:0.5", "--ft-epochs", "1", "--classifier-steps", "10", "--no-reach",
                              "--out", str(out), "--work", str(work)])  # fmt: skip
    assert code == 0
    report = json.loads((out / "routes.json").read_text())
    assert report["settings"]["failures"] == []
    rows = report["rows"]
    assert {row["route"] for row in rows} == {1, 2, 3, 4, 5, 6, 7}
    for row in rows:
        assert row["generations"] == 10  # ten prompts x one repeat
        assert math.isfinite(row["fd"]) and 0.0 <= row["domain_score"] <= 1.0 and 0.0 <= row["class_accuracy"] <= 1.0
        assert 0.0 <= row["downstream_accuracy"] <= 1.0  # a classifier trained on the generations, tested on real
        assert row["seconds_per_generation"] > 0
    assert all(row["epsilon_spent"] == 0.0 for row in rows if row["route"] in (1, 2))
    private = [row for row in rows if row["route"] in (3, 4, 5, 6) and row["epsilon_target"] == EPSILON]
    assert sorted(row["route"] for row in private) == [3, 3, 4, 5, 6]
    assert sorted(row["lambda"] for row in private if row["route"] == 3) == [0.5, 1.0]
    ledgers = {row["ledger"] for row in private}
    assert len(ledgers) == 4  # one index + ledger per route (route 3: per (epsilon, k, q), shared by both lambdas)
    for index_dir in ledgers:
        shown = CliRunner().invoke(app, ["budget", "show", "--index", index_dir, "--json"])
        assert shown.exit_code == 0, shown.output
        scope = json.loads(shown.stdout)["scopes"]["default"]
        assert scope["epsilon_budget"] == EPSILON and scope["delta"] == bench_routes.DELTA
        assert 0.0 < scope["epsilon_spent"] <= EPSILON  # every private route's ledger stays within its target
        routes = {row["route"] for row in private if row["ledger"] == index_dir}
        assert all(row["epsilon_spent"] == scope["epsilon_spent"] for row in private if row["ledger"] == index_dir)
        charges = CliRunner().invoke(app, ["budget", "history", "--index", index_dir, "--json"])
        purposes = [c["purpose"] for c in json.loads(charges.stdout)["charges"]]
        if routes == {3}:
            assert scope["queries_charged"] == 20 and scope["events_charged"] == 0  # 2 lambdas x 10 prompts
        elif routes == {4}:  # the fine-tuning alone, charged once; prompt-only generations are free
            assert scope["queries_charged"] == 0 and scope["events_charged"] == 1
            assert purposes == ["finetune attention+conditioning x2 steps"]
        elif routes == {5}:  # the fine-tuning, then 10 charged queries, and the planned 1,000 still fit
            assert scope["queries_charged"] == 10 and scope["events_charged"] == 1
            assert scope["queries_charged"] + scope["queries_remaining"] >= bench_routes.QUERIES
        else:  # route 6: the adapter and the shard classifier, each charged once before training
            assert routes == {6} and scope["queries_charged"] == 0 and scope["events_charged"] == 2
            assert "compartments shard classifier" in purposes
        verified = CliRunner().invoke(app, ["budget", "verify", "--index", index_dir])
        assert verified.exit_code == 0, verified.output
    non_private = [row for row in rows if row["epsilon_target"] == "inf"]  # JSON writes infinity as "inf"
    assert sorted(row["route"] for row in non_private) == [3, 3, 5, 6, 7]  # route 4 at infinity is route 7
    assert all(row["ledger"] is None and row["epsilon_spent"] == "inf" for row in non_private)
    table = (out / "routes.md").read_text()
    for route in range(1, 8):
        assert f"| {route}. {bench_routes.ROUTE_NAMES[route]} |" in table
    assert "TODO(#16)" not in table
    assert (out / "routes.png").stat().st_size > 0


def test_any_image_folder_without_labels_skips_the_label_metrics(tmp_path: Path) -> None:
    """--private-source with no class subfolders: the label-based metric is skipped (None), the rest runs."""
    from PIL import Image

    from pipeline.private_domain import load_domain

    folder = tmp_path / "mine"
    folder.mkdir()
    for image, row in zip(*load_domain("mnist-thick").part("test")[::2], strict=True):
        if row % 20 == 0:
            Image.fromarray(image).save(folder / f"{row}.png")
    out, work = tmp_path / "out", tmp_path / "work"
    assert bench_routes.main(["--private-source", str(folder), "--repeats", "2", "--epsilons", "3", "--sweep", "3:0.5",
                              "--routes", "1,3,4", "--ft-epochs", "1", "--no-reach", "--out", str(out),
                              "--work", str(work)]) == 0  # fmt: skip
    rows = json.loads((out / "routes.json").read_text())["rows"]
    assert {row["route"] for row in rows} == {1, 3, 4}
    assert all(row["class_accuracy"] is None and row["downstream_accuracy"] is None and row["generations"] == 2
               for row in rows)  # fmt: skip
