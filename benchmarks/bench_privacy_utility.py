"""Privacy–utility of private generation on the bundled digits: ε ∈ {1, 3, 10, ∞} × λ ∈ {0.5, 1}, plus λ = 0.

Setting: the bundled private half (N = 2,500) is the retrieval set, embedded with the bundled tiny encoder; the
queries are the ten prompts "a handwritten digit 0" … "9" (text tower), each asked ``REPEATS`` times (fresh
Poisson subsample and noise per query) and decoded into ``IMAGES`` images by the bundled tiny decoder. For ε < ∞,
σ is calibrated with ``accountant.calibrate_sigma`` so that 1,000 queries spend exactly ε at δ = 1e-6 (Poisson-
subsampled Gaussian, sensitivity 2/k, add/remove-one, dp-accounting RDP); ε = ∞ is the same retrieval without
noise (non-private), and λ = 0 conditions on the prompt alone (text only, ε = 0).

Metrics: class accuracy (share of images that a logistic-regression classifier trained on the PUBLIC half assigns
to the prompt's digit) and the Fréchet distance between encoder embeddings of the generations and of the private
images (lower is better; "public half" row = real images). A second table sweeps (k, q) at ε = 10, λ = 1 to pick
the demo's mechanism. Writes a section of ``benchmarks/results/pipeline.md`` and ``docs/privacy_utility.png``.
Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_privacy_utility.py [DECODER_DIR]`` (a few minutes on one thread).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import index._torchvision_compat  # noqa: E402,F401,I001  (torchvision shim before diffusers/open_clip)

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from scipy import linalg  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402

from accountant import calibrate_sigma  # noqa: E402
from benchmarks._pipeline_report import write_section  # noqa: E402
from index import MemoryShard, load_encoder  # noqa: E402
from pipeline.data import load_mnist_split, to_pil  # noqa: E402
from pipeline.decoders import TinyDecoder  # noqa: E402
from pipeline.mechanism import aggregate, privatize, subsample_topk  # noqa: E402

DELTA, QUERIES = 1e-6, 1000
K, Q = 40, 0.2  # the demo's mechanism
EPSILONS = (1.0, 3.0, 10.0, float("inf"))
LAMBDAS = (0.5, 1.0)
SWEEP = ((10, 0.05), (20, 0.1), (20, 0.2), (40, 0.2), (60, 0.3), (100, 0.5))
REPEATS, IMAGES, STEPS, GUIDANCE = 5, 2, 15, 2.0
PROMPTS = tuple(f"a handwritten digit {digit}" for digit in range(10))
PLOT = ROOT / "docs" / "privacy_utility.png"


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to the rows of ``a`` and ``b``."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(cov_a @ cov_b).real
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a + cov_b - 2 * covmean))


class Bench:
    """Loaded once: data, encoder, decoder, the private flat index and the public-half classifier."""

    def __init__(self, decoder_dir: str | None = None) -> None:
        torch.set_num_threads(1)
        faiss.omp_set_num_threads(1)
        split = load_mnist_split()
        self.encoder = load_encoder(num_threads=1)
        self.decoder = TinyDecoder.from_pretrained(decoder_dir)
        self.size = self.decoder.image_size
        private = [to_pil(image) for image in split.private_images]
        self.private_embeddings = self.encoder.encode_images(private)
        self.public_embeddings = self.encoder.encode_images([to_pil(image) for image in split.public_images])
        self.index = MemoryShard(self.private_embeddings, np.arange(len(private), dtype=np.int64))
        self.queries = self.encoder.encode_text(list(PROMPTS))
        pixels = np.stack([self._pixels(to_pil(image)) for image in split.public_images])
        self.classifier = LogisticRegression(max_iter=2000).fit(pixels, split.public_labels)
        self.labels = np.repeat(np.arange(10), REPEATS * IMAGES)
        centroids = np.stack([self.public_embeddings[split.public_labels == c].mean(0) for c in range(10)])
        self.centroids = centroids / np.linalg.norm(centroids, axis=1, keepdims=True)

    def _pixels(self, image: Image.Image) -> np.ndarray:
        image = image.convert("L")
        if image.size != (self.size, self.size):
            image = image.resize((self.size, self.size), Image.Resampling.BILINEAR)
        return np.asarray(image, dtype=np.float32).reshape(-1) / 255.0

    def conditions(self, k: int, q: float, sigma: float, lambda_: float, rng: np.random.Generator) -> np.ndarray:
        """One condition per (prompt, repeat): λ·(mean of k subsampled neighbours + noise) + (1−λ)·query."""
        rows = []
        for query in self.queries:
            for _ in range(REPEATS):
                if lambda_ == 0.0:
                    rows.append(query)
                    continue
                ids = subsample_topk(self.index, query, k, q, rng)
                noisy = privatize(aggregate(self.private_embeddings[ids], k), sigma, _rng=rng)
                rows.append(lambda_ * noisy + (1.0 - lambda_) * query)
        return np.stack(rows).astype(np.float32)

    def condition_accuracy(self, conditions: np.ndarray) -> float:
        """Share of conditions nearest (cosine) to their prompt's public class centroid: decoder-free utility."""
        return float(np.mean(np.argmax(conditions @ self.centroids.T, axis=1) == np.repeat(np.arange(10), REPEATS)))

    def score(self, conditions: np.ndarray, seed: int) -> tuple[float, float]:
        """(class accuracy, Fréchet distance to the private images) of the decoded conditions."""
        images = self.decoder.generate(torch.from_numpy(conditions), num_images_per_condition=IMAGES, steps=STEPS,
                                       guidance_scale=GUIDANCE, generator=torch.Generator().manual_seed(seed))
        predicted = self.classifier.predict(np.stack([self._pixels(image) for image in images]))
        accuracy = float(np.mean(predicted == self.labels))
        return accuracy, frechet_distance(self.encoder.encode_images(images), self.private_embeddings)


def _eps(epsilon: float) -> str:
    return "∞" if not np.isfinite(epsilon) else f"{epsilon:g}"


def run(decoder_dir: str | None = None) -> tuple[str, list[dict]]:
    """All settings; returns the markdown section and the rows."""
    started = time.perf_counter()
    bench = Bench(decoder_dir)
    rng = np.random.default_rng(0)  # a benchmark may be reproducible; production draws from secure_rng()
    rows = []

    def measure(label: str, k: int, q: float, epsilon: float, lambda_: float) -> None:
        sigma = 0.0 if not np.isfinite(epsilon) or lambda_ == 0 else calibrate_sigma(
            k=k, q=q, queries=QUERIES, epsilon=epsilon, delta=DELTA)
        conditions = bench.conditions(k, q, sigma, lambda_, rng)
        accuracy, fd = bench.score(conditions, seed=len(rows))
        rows.append({"setting": label, "epsilon": epsilon, "lambda": lambda_, "k": k, "q": q, "sigma": sigma,
                     "accuracy": accuracy, "fd": fd, "condition": bench.condition_accuracy(conditions)})
        print(f"{label:<22} eps={_eps(epsilon):>3} lambda={lambda_:<3} k={k:<3} q={q:<4} sigma={sigma:.4f} "
              f"cond={rows[-1]['condition']:.2f} acc={accuracy:.2f} fd={fd:.3f}", file=sys.stderr, flush=True)

    measure("text only", K, Q, 0.0, 0.0)
    for lambda_ in LAMBDAS:
        for epsilon in EPSILONS:
            measure("non-private retrieval" if not np.isfinite(epsilon) else "private retrieval", K, Q, epsilon, lambda_)
    sweep_start = len(rows)
    for k, q in SWEEP:
        measure("sweep", k, q, 10.0, 1.0)
    real_fd = frechet_distance(bench.public_embeddings, bench.private_embeddings)

    lines = [
        "## Privacy–utility of private generation (bundled digits)",
        "",
        f"N = 2,500 private digits, ten prompts × {REPEATS} queries × {IMAGES} images, {STEPS} DDIM steps, guidance "
        f"{GUIDANCE}; ε at δ = {DELTA:g} over {QUERIES:,} queries (σ calibrated with dp-accounting RDP; Poisson-"
        "subsampled Gaussian, sensitivity 2/k, add/remove-one). Accuracy: classifier trained on the public half; "
        f"FD: Fréchet distance of encoder embeddings to the private images (public half vs private: {real_fd:.3f}). "
        "Condition accuracy (decoder-free): share of conditioning vectors nearest to their prompt's class centroid "
        "of public-half embeddings.",
        "",
        f"### ε × λ at the demo's mechanism (k = {K}, q = {Q})",
        "",
        "| setting | ε | λ | σ | condition accuracy | class accuracy of images | FD ↓ |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows[:sweep_start]:
        epsilon = "0" if row["lambda"] == 0 else _eps(row["epsilon"])
        lines.append(f"| {row['setting']} | {epsilon} | {row['lambda']:g} | {row['sigma']:.4f} | "
                     f"{row['condition']:.2f} | {row['accuracy']:.2f} | {row['fd']:.3f} |")
    lines += ["", "### (k, q) at ε = 10, λ = 1", "",
              "| k | q | k / (q·N/10) | σ | condition accuracy | class accuracy of images | FD ↓ |",
              "|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows[sweep_start:]:
        lines.append(f"| {row['k']} | {row['q']:g} | {row['k'] / (row['q'] * 250):.2f} | {row['sigma']:.4f} | "
                     f"{row['condition']:.2f} | {row['accuracy']:.2f} | {row['fd']:.3f} |")
    lines += ["", f"The k = {K}, q = {Q} row of the sweep repeats the ε = 10, λ = 1 row above with fresh draws: the "
              "difference between the two is the run-to-run spread of these small samples.",
              "", f"Total run time {time.perf_counter() - started:.0f} s on one thread."]
    return "\n".join(lines), rows


def plot(rows: list[dict]) -> Path:
    """Accuracy and FD against ε for each λ, with the text-only and real-image references."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    positions = np.arange(len(EPSILONS))
    text_only = rows[0]
    for lambda_, marker in zip(LAMBDAS, ("o", "s"), strict=True):
        chosen = [r for r in rows[1:] if r["setting"] != "sweep" and r["lambda"] == lambda_]
        for axis, key in zip(axes, ("accuracy", "fd"), strict=True):
            axis.plot(positions, [r[key] for r in chosen], marker=marker, label=f"λ = {lambda_:g}")
    for axis, key, title in zip(axes, ("accuracy", "fd"), ("class accuracy ↑", "Fréchet distance ↓"), strict=True):
        axis.axhline(text_only[key], color="grey", linestyle="--", label="text only (ε = 0)")
        axis.set_xticks(positions, [_eps(e) for e in EPSILONS])
        axis.set_xlabel(f"ε at δ = {DELTA:g} over {QUERIES:,} queries")
        axis.set_title(title)
    axes[0].legend(fontsize=8)
    figure.suptitle(f"DP retrieval on the bundled digits (k = {K}, q = {Q}; ∞ = non-private retrieval)", fontsize=10)
    figure.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(PLOT, dpi=120)
    return PLOT


if __name__ == "__main__":
    table, measured = run(sys.argv[1] if len(sys.argv) > 1 else None)  # optional decoder folder
    print(table)
    write_section("bench_privacy_utility", table)
    print(f"plot: {plot(measured)}")
