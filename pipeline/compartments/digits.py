"""CDM on the bundled digits: shards, sampling and a judge (slow test and benchmark helpers).

The shards are bundled PRIVATE MNIST digits (``pipeline.data.load_mnist_split``), written as PNG folders and
indexed; the compartments are adapters of the bundled tiny decoder (16×16, trained on
public MNIST) trained through :func:`pipeline.compartments.train_compartments`. Samples are drawn with one public
condition (:func:`public_condition`: the unit mean of the encoder's embeddings of the PUBLIC half, guidance 1) and
judged by :class:`DigitsJudge`, a small CNN trained on the PUBLIC half at the decoder's resolution (the judge
never trains on private digits: only the evaluation references are private).

Metrics (:meth:`DigitsJudge.report`): ``fd`` (Fréchet distance between encoder embeddings of the samples and of
the reference digits), ``in_classes`` (share of samples the CNN labels with one of ``classes``), ``ambiguous``
(share whose judged probability mass on ``classes`` is in (0.2, 0.8): hybrids between the two halves),
``low_confidence`` (max probability < 0.5).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = ["DigitsJudge", "downsample", "frechet", "public_condition", "sample_composed", "write_digit_shards"]


def downsample(images: np.ndarray, size: int) -> np.ndarray:
    """(n, 28, 28) uint8 -> (n, size, size) uint8 (antialiased bilinear, the decoder's training resize)."""
    import torch.nn.functional as F

    x = torch.from_numpy(images.astype(np.float32))[:, None]
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x[:, 0].round().clamp(0, 255).to(torch.uint8).numpy()


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to the rows of ``a`` and ``b``."""
    from scipy import linalg

    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean, _ = linalg.sqrtm(cov_a @ cov_b, disp=False)
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a + cov_b - 2 * np.real(covmean)))


def _judge_net(size: int) -> torch.nn.Module:
    """Two conv blocks and a two-layer head for ``size``×``size`` digits (the judge's architecture)."""
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(64 * (size // 4) ** 2, 128), nn.ReLU(), nn.Linear(128, 10))


def _pixels(images: np.ndarray) -> torch.Tensor:
    """(n, s, s) uint8 -> (n, 1, s, s) float in [-1, 1] (the decoder's pixel scale)."""
    return torch.from_numpy(images.astype(np.float32) / 127.5 - 1.0)[:, None]


class DigitsJudge:
    """Judge of generated digits: a small CNN for the classes, the bundled encoder for Fréchet distance.

    The CNN is trained on the PUBLIC half at the decoder's resolution (Adam, 15 epochs, ±1-pixel shifts; seeded)
    and labels 0.97 of the real private digits correctly. An earlier judge, a logistic regression on the
    encoder's embeddings, was biased on generated digits (it labelled most fuzzy {5–9} samples "3"); the encoder
    is kept only for ``fd``, the metric the issue names.

    Args:
        encoder: the bundled encoder (``index.load_encoder()``), or None to skip ``fd``.
        size: the decoder's image side.
        epochs, seed: the CNN's training.
    """

    def __init__(self, encoder, size: int, *, epochs: int = 15, seed: int = 0) -> None:
        from pipeline.data import load_mnist_split

        self.encoder, self.size = encoder, size
        split = load_mnist_split()
        x = _pixels(downsample(split.public_images, size))
        y = torch.from_numpy(split.public_labels.astype(np.int64))
        torch.manual_seed(seed)
        self.net = _judge_net(size)
        opt = torch.optim.Adam(self.net.parameters(), 1e-3)
        gen = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            perm = torch.randperm(len(x), generator=gen)
            for i in range(0, len(x), 64):
                idx = perm[i:i + 64]
                dx, dy = torch.randint(-1, 2, (2,), generator=gen).tolist()
                loss = torch.nn.functional.cross_entropy(self.net(torch.roll(x[idx], (dy, dx), (2, 3))), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        self.net.eval()

    @torch.no_grad()
    def probabilities(self, samples: np.ndarray) -> np.ndarray:
        """(n, s, s) uint8 -> (n, 10) class probabilities."""
        return self.net(_pixels(samples)).softmax(1).numpy()

    def embed(self, images: np.ndarray) -> np.ndarray:
        """(n, s, s) uint8 -> (n, d) unit encoder rows (for ``fd``)."""
        from PIL import Image

        return self.encoder.encode_images([Image.fromarray(np.ascontiguousarray(im), mode="L") for im in images])

    def report(self, samples: np.ndarray, reference: np.ndarray | None = None,
               classes: Iterable[int] = range(5)) -> dict[str, float]:
        """Judge (n, s, s) uint8 ``samples`` (``reference``: encoder rows of the real digits, for ``fd``)."""
        p = self.probabilities(samples)
        mass = p[:, list(classes)].sum(1)
        out = {"in_classes": float(np.isin(p.argmax(1), list(classes)).mean()),
               "ambiguous": float(((mass > 0.2) & (mass < 0.8)).mean()),
               "low_confidence": float((p.max(1) < 0.5).mean())}
        if reference is not None:
            out["fd"] = frechet(self.embed(samples), reference)
        return out

    def labels(self, samples: np.ndarray) -> np.ndarray:
        """The judge's class of each sample (for classifier-labelled downstream training)."""
        return self.probabilities(samples).argmax(1)


def public_condition(encoder) -> torch.Tensor:
    """(1, d) the unit mean of the encoder's embeddings of the PUBLIC half: a generic "a digit" condition."""
    from PIL import Image

    from pipeline.data import load_mnist_split

    split = load_mnist_split()
    rows = encoder.encode_images([Image.fromarray(im, mode="L") for im in split.public_images])
    mean = rows.mean(0)
    return torch.as_tensor(mean / np.linalg.norm(mean), dtype=torch.float32)[None]


def write_digit_shards(folder: Path, shard_of_row: dict[str, Sequence[int]]) -> dict[str, Path]:
    """Write the private digits of the given rows as PNG folders ``folder/<shard>/<label>/<row>.png``."""
    from pipeline.data import load_mnist_split, to_pil

    split = load_mnist_split()
    out = {}
    for shard, rows in shard_of_row.items():
        for row in rows:
            target = folder / shard / str(int(split.private_labels[row]))
            target.mkdir(parents=True, exist_ok=True)
            to_pil(split.private_images[row]).save(target / f"{int(row):04d}.png")
        out[shard] = folder / shard
    return out


def sample_composed(decoder, condition: torch.Tensor, count: int, *, steps: int = 20, seed: int = 0,
                    batch: int = 250) -> np.ndarray:
    """(count, s, s) uint8 samples of a (composed) decoder at ``condition`` with guidance 1 (seeded)."""
    out = []
    gen = torch.Generator().manual_seed(seed)
    for start in range(0, count, batch):
        n = min(batch, count - start)
        images = decoder.generate(condition, num_images_per_condition=n, steps=steps, guidance_scale=1.0,
                                  generator=gen)
        out += [np.asarray(im) for im in images]
    return np.stack(out)
