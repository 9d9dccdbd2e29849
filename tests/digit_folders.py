"""Bundled private MNIST digits written as an ImageFolder, for tests anywhere under ``tests/``.

``tests/`` is on ``sys.path`` (the root conftest lives there), so any test can
``from digit_folders import write_digit_classes``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from pipeline.data import load_mnist_split, to_pil


def write_digit_classes(folder: Path, labels: Iterable[int] = range(10), per_class: int = 10) -> Path:
    """The first ``per_class`` private digits of each label as ``folder/<label>/<row>.png``; returns ``folder``."""
    split = load_mnist_split()
    for label in labels:
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        for row in np.flatnonzero(split.private_labels == label)[:per_class]:
            to_pil(split.private_images[row]).save(folder / str(label) / f"{row:04d}.png")
    return folder
