"""``dprdm data export``: deterministic, owner-only, recorded split, refuses a foreign non-empty folder."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.private_domain import EXPORT_MARKER, SPLIT_PATHS, images_sha256, load_domain

RUNNER = CliRunner()


def _export(*args: str):
    return RUNNER.invoke(app, ["data", "export", *args])


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("dataset", ["uci-digits", "mnist-thick"])
def test_recorded_split_is_stratified_disjoint_and_pinned(dataset: str) -> None:
    domain = load_domain(dataset)
    record = json.loads(SPLIT_PATHS[dataset].read_text())
    assert not set(domain.train_rows) & set(domain.test_rows)
    assert list(domain.test_rows) == record["test_rows"]
    assert (len(domain.train_rows), len(domain.test_rows)) == (record["train"], record["test"])
    for digit in range(10):  # a third of every class held out
        n = int((domain.train_labels == digit).sum() + (domain.test_labels == digit).sum())
        assert int((domain.test_labels == digit).sum()) == n // 3
    images, _, _ = domain.part("all")
    assert images.shape[1:] == (28, 28) and images.dtype == np.uint8
    assert images_sha256(images) == record["images_sha256"]  # the rendering (framing / dilation) is pinned


def test_uci_framing_follows_mnist() -> None:
    """Ink box with longer side 20 (aspect kept) in a 28×28 frame, centre of mass at the centre (as MNIST)."""
    images = load_domain("uci-digits").train_images
    grid = np.arange(28)
    near_centre = 0
    for image in images:
        rows, cols = np.nonzero(image.any(axis=1))[0], np.nonzero(image.any(axis=0))[0]
        assert max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 <= 20
        mass = image.astype(np.float64)
        centre = np.array([mass.sum(1) @ grid, mass.sum(0) @ grid]) / mass.sum()
        near_centre += bool(np.all(np.abs(centre - 13.5) <= 1.0))
    assert near_centre / len(images) > 0.95


def test_export_is_deterministic_owner_only_and_an_index_source(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    result = _export("uci-digits", str(first), "--split", "test", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["files"] == 596 and sorted(report["classes"]) == [str(d) for d in range(10)]
    assert _export("uci-digits", str(second), "--split", "test").exit_code == 0
    files = _files(first)
    assert files == _files(second)  # same names, same bytes
    pngs = [name for name in files if name.endswith(".png")]
    assert len(pngs) == 596
    rows = sorted(int(Path(name).stem) for name in pngs)
    assert rows == sorted(int(r) for r in load_domain("uci-digits").test_rows)  # exactly the recorded test rows
    for path in [first, *first.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))
    assert not list(first.rglob("*.tmp"))
    # re-exporting into a previous export of the same thing is fine and changes nothing
    assert _export("uci-digits", str(first), "--split", "test").exit_code == 0
    assert _files(first) == files


def test_export_refuses_a_foreign_non_empty_folder(tmp_path: Path) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    result = _export("uci-digits", str(foreign), "--split", "test")
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: OUT_DIR")
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]  # nothing written

    exported = tmp_path / "export"
    assert _export("uci-digits", str(exported), "--split", "test").exit_code == 0
    other = _export("uci-digits", str(exported), "--split", "train")  # a different split is not "the same thing"
    assert other.exit_code == 2 and "not a previous export of uci-digits --split train" in other.stderr
    (exported / "0" / "stray.png").write_bytes(b"x")  # a previous export plus a stranger's file
    stray = _export("uci-digits", str(exported), "--split", "test")
    assert stray.exit_code == 2 and "stray.png" in stray.stderr
    assert (exported / EXPORT_MARKER).is_file()


def test_export_bad_input_is_one_line(tmp_path: Path) -> None:
    for args in (["nope", str(tmp_path / "x")], ["uci-digits", str(tmp_path / "x"), "--split", "val"]):
        result = _export(*args)
        assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    assert not (tmp_path / "x").exists()


def test_an_interrupted_export_is_completed_by_the_same_command(tmp_path: Path) -> None:
    full, partial = tmp_path / "full", tmp_path / "partial"
    assert _export("mnist-thick", str(full), "--split", "test").exit_code == 0
    assert _export("mnist-thick", str(partial), "--split", "test").exit_code == 0
    for png in sorted(partial.rglob("*.png"))[::2]:  # as if killed half way (the marker is written first)
        png.unlink()
    (partial / "3" / ".0007.png.abc.tmp").write_bytes(b"half")  # a temp file a killed writer left behind
    result = _export("mnist-thick", str(partial), "--split", "test")
    assert result.exit_code == 0, result.output
    visible = {name: data for name, data in _files(partial).items() if not name.endswith(".tmp")}
    assert visible == _files(full)
