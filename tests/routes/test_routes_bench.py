"""``benchmarks/bench_routes.py --quick`` on a tiny subset, end to end, and the ledgers it leaves behind."""

from __future__ import annotations

import json
import math
from pathlib import Path

from typer.testing import CliRunner

from benchmarks import bench_routes
from pipeline.cli import app

EPSILON = 10.0


def test_quick_routes_run_end_to_end_within_their_targets(tmp_path: Path) -> None:
    out, work = tmp_path / "out", tmp_path / "work"
    code = bench_routes.main(["--quick", "--limit", "6", "--repeats", "1", "--epsilons", f"{EPSILON:g}",
                              "--sweep", "5:0.5", "--no-reach", "--out", str(out), "--work", str(work)])  # fmt: skip
    assert code == 0
    report = json.loads((out / "routes.json").read_text())
    rows = report["rows"]
    assert {row["route"] for row in rows} == {1, 2, 3}  # routes 4-7 are TODO(#16): no rows yet
    assert set(report["pending_routes"]) == {"4", "5", "6", "7"}
    for row in rows:
        assert row["generations"] == 10  # ten prompts x one repeat
        assert math.isfinite(row["fd"]) and 0.0 <= row["domain_score"] <= 1.0 and 0.0 <= row["class_accuracy"] <= 1.0
        assert row["seconds_per_generation"] > 0
    assert all(row["epsilon_spent"] == 0.0 for row in rows if row["route"] in (1, 2))
    private = [row for row in rows if row["route"] == 3]
    assert sorted(row["lambda"] for row in private) == [0.5, 1.0]
    ledgers = {row["ledger"] for row in private}
    assert len(ledgers) == 1  # one index + ledger per (epsilon, k, q), shared by both lambdas
    for index_dir in ledgers:
        shown = CliRunner().invoke(app, ["budget", "show", "--index", index_dir, "--json"])
        assert shown.exit_code == 0, shown.output
        scope = json.loads(shown.stdout)["scopes"]["default"]
        assert scope["epsilon_budget"] == EPSILON and scope["delta"] == bench_routes.DELTA
        assert scope["queries_charged"] == 20  # 2 lambdas x 10 prompts, each one charged query
        assert 0.0 < scope["epsilon_spent"] <= EPSILON  # every private route's ledger stays within its target
        assert all(row["epsilon_spent"] == scope["epsilon_spent"] for row in private)  # the table shows budget show
        verified = CliRunner().invoke(app, ["budget", "verify", "--index", index_dir])
        assert verified.exit_code == 0, verified.output
    table = (out / "routes.md").read_text()
    assert "| 3. DP-RDM private retrieval | 10 |" in table and "TODO(#16)" in table
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
                              "--no-reach", "--out", str(out), "--work", str(work)]) == 0  # fmt: skip
    rows = json.loads((out / "routes.json").read_text())["rows"]
    assert rows and all(row["class_accuracy"] is None and row["generations"] == 2 for row in rows)
