"""Quality of the bundled decoder under the DP retrieval mechanism (issue 5).

Setting: the demo's mechanism, k = 40 neighbours, Poisson rate q = 0.2, δ = 1e-6, 1,000 queries. 100 private
test images (10 per class, held out of the retrieval set) each act as one query: the query is the image's unit
embedding, the retrieval set is the other 2,400 private images. For each query the condition is

- "unconditional": the zero vector (the decoder's CFG null branch), a floor;
- "ε = ∞": the mechanism's exact (un-noised) mean of the k subsampled nearest neighbours;
- "ε = 10 / 3 / 1": the same + N(0, σ² I) with σ calibrated by ``accountant.calibrate_sigma`` (dp-accounting RDP,
  Poisson-subsampled Gaussian, sensitivity 2/k, add/remove-one) so 1,000 queries spend exactly ε.

Metrics: (1) class accuracy of the samples — the fraction a logistic-regression classifier trained on the PUBLIC
half (pixels at the decoder's resolution) assigns to the query image's class; (2) Fréchet distance between the
tiny-CLIP image embeddings of the samples and of all private images (both at the decoder's resolution), with the
public half's distance as the "real images" floor. Writes ``benchmarks/results/quality.md`` and
``docs/samples_grid.png``. Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_quality.py`` (≈ 3–5 min on one thread).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy import linalg  # noqa: E402

import index._torchvision_compat  # noqa: E402,F401  (before open_clip/diffusers import torchvision)
from accountant import calibrate_sigma  # noqa: E402
from index import MemoryShard  # noqa: E402
from pipeline.data import load_mnist_split  # noqa: E402
from pipeline.decoders import TinyDecoder  # noqa: E402
from pipeline.mechanism import aggregate, privatize, subsample_topk  # noqa: E402
from pipeline.train.decoder import images_to_unit_range  # noqa: E402
from pipeline.train.encoder import default_encoder_dir, encode_image_array  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
K, Q, DELTA, QUERIES = 40, 0.2, 1e-6, 1000
EPSILONS = (10.0, 3.0, 1.0)
PER_CLASS, SAMPLES_PER_QUERY, STEPS, GUIDANCE = 10, 2, 25, 2.0


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to the rows of ``a`` and ``b``."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(cov_a @ cov_b).real
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a + cov_b - 2 * covmean))


def downsample(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 images at the decoder's resolution (the same resize the decoder was trained on)."""
    x = images_to_unit_range(images, size)[:, 0].numpy()
    return np.clip((x + 1) * 127.5, 0, 255).round().astype(np.uint8)


def main(argv: list[str] | None = None) -> None:
    import argparse

    import open_clip
    from sklearn.linear_model import LogisticRegression

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decoder", type=Path, default=None, help="TinyDecoder folder (default: bundled)")
    parser.add_argument("--per-class", type=int, default=PER_CLASS, help="test queries per class")
    parser.add_argument("--guidance", type=float, default=GUIDANCE, help="classifier-free guidance scale")
    parser.add_argument("--out", type=Path, default=ROOT, help="root for benchmarks/results and docs/")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    logging.getLogger("absl").setLevel(logging.ERROR)  # dp-accounting's order-convergence chatter
    start = time.perf_counter()
    rng = np.random.default_rng(0)  # benchmark only: subsampling/noise of a demo split, nothing is released
    split = load_mnist_split()
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{default_encoder_dir()}")
    decoder = TinyDecoder.from_pretrained(args.decoder)
    per_class = args.per_class
    size = decoder.image_size

    # queries: 10 private images per class, held out of the retrieval set
    labels = split.private_labels
    test = np.concatenate([rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in range(10)])
    corpus = np.setdiff1d(np.arange(len(labels)), test)
    emb = encode_image_array(model, split.private_images, preprocess)
    index = MemoryShard(emb[corpus], corpus.astype(np.int64))
    exact = np.stack([aggregate(emb[subsample_topk(index, emb[i], K, Q, rng)], K) for i in test])
    sigmas = {eps: calibrate_sigma(k=K, q=Q, queries=QUERIES, epsilon=eps, delta=DELTA) for eps in EPSILONS}
    rows = [("unconditional", None, np.zeros_like(exact)), ("ε = ∞ (no noise)", 0.0, exact)]
    rows += [(f"ε = {eps:g}", sigmas[eps], np.stack([privatize(a, sigmas[eps], _rng=rng) for a in exact]))
             for eps in EPSILONS]

    # reference: classifier on the PUBLIC half, FD of real public images vs private images
    def flat(images: np.ndarray) -> np.ndarray:
        return downsample(images, size).reshape(len(images), -1) / 255.0

    clf = LogisticRegression(max_iter=2000, C=0.1).fit(flat(split.public_images), split.public_labels)
    clf_acc = float(np.mean(clf.predict(flat(split.private_images)) == labels))

    def embed_small(images: np.ndarray) -> np.ndarray:  # images already at the decoder's resolution
        return encode_image_array(model, images, preprocess)

    ref = embed_small(downsample(split.private_images, size))
    fd_public = frechet_distance(embed_small(downsample(split.public_images, size)), ref)

    results, grids = [], []
    query_labels = np.repeat(labels[test], SAMPLES_PER_QUERY)
    gen = torch.Generator().manual_seed(0)
    for name, sigma, cond in rows:
        t0 = time.perf_counter()
        images = decoder.generate(torch.from_numpy(cond), num_images_per_condition=SAMPLES_PER_QUERY, steps=STEPS,
                                  guidance_scale=args.guidance, generator=gen)
        pixels = np.stack([np.asarray(im) for im in images])
        acc = float(np.mean(clf.predict(pixels.reshape(len(pixels), -1) / 255.0) == query_labels))
        fd = frechet_distance(embed_small(pixels), ref)
        noise_norm = None if sigma is None else sigma * np.sqrt(emb.shape[1])
        results.append((name, sigma, noise_norm, acc, fd, time.perf_counter() - t0))
        grids.append(pixels[:: per_class * SAMPLES_PER_QUERY])  # first sample of the first query of each class
        print(f"{name}: acc {acc:.3f} FD {fd:.3f}", file=sys.stderr)
    total = time.perf_counter() - start
    write_grid(args.out, downsample(split.private_images[test[::per_class]], size), grids, [r[0] for r in results])
    write_table(args.out, results, clf_acc, fd_public, emb.shape[1], total, size, len(test), args.guidance)


def write_grid(root: Path, queries: np.ndarray, grids: list[np.ndarray], names: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("private query image", queries)] + list(zip(names, grids, strict=True))
    fig, axes = plt.subplots(len(rows), 10, figsize=(10, 1.1 * len(rows)))
    for r, (name, images) in enumerate(rows):
        for c in range(10):
            ax = axes[r, c]
            ax.imshow(images[c], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(f"bundled tiny decoder, k={K}, q={Q}, δ={DELTA:g}, {QUERIES} queries", fontsize=9)
    fig.tight_layout()
    out = root / "docs" / "samples_grid.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=80)
    os.replace(tmp, out)


def write_table(root: Path, results, clf_acc, fd_public, dim, total, size, n_queries, guidance) -> None:
    lines = [
        "# Quality of the bundled decoder under DP retrieval",
        "",
        f"`OMP_NUM_THREADS=1 python benchmarks/bench_quality.py` — k = {K}, q = {Q}, δ = {DELTA:g}, "
        f"{QUERIES:,} queries; {n_queries} private test queries (one class each, held out of the retrieval set) × "
        f"{SAMPLES_PER_QUERY} samples, "
        f"DDIM {STEPS} steps, guidance {guidance:g}; embedding d = {dim}, images {size}×{size}. "
        "σ from `accountant.calibrate_sigma` (dp-accounting RDP, Poisson-subsampled Gaussian, sensitivity 2/k, "
        "add/remove-one).",
        "",
        "| condition | σ | noise norm σ√d | class accuracy | Fréchet distance (tiny-CLIP) | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for name, sigma, noise_norm, acc, fd, secs in results:
        s = "–" if sigma is None else f"{sigma:.3f}"
        n = "–" if noise_norm is None else f"{noise_norm:.2f}"
        lines.append(f"| {name} | {s} | {n} | {acc:.3f} | {fd:.4f} | {secs:.1f} |")
    lines += [
        f"| reference: real private images | – | – | {clf_acc:.3f} | {fd_public:.4f} (public vs private) | – |",
        "",
        "Class accuracy: a logistic regression on the PUBLIC half's pixels (at the decoder's resolution) labels each "
        "sample; a sample counts as correct when it gets the query image's class (chance 0.10). Fréchet distance: "
        "Gaussians fitted to the tiny-CLIP unit embeddings of the samples vs all 2,500 private images; lower is "
        "better, the reference row is real public images. The ε = ∞ row is the non-private mean of the subsampled "
        "neighbours (no noise), never released by dprdm.",
        "",
        f"Total run time: {total:.0f} s on one thread. Sample grid: `docs/samples_grid.png`.",
        "",
    ]
    out = root / "benchmarks" / "results" / "quality.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines))
    os.replace(tmp, out)


if __name__ == "__main__":
    main()
