"""DP fine-tuning of the bundled decoder on a private domain it never saw (issue 11; DP-LDM's protocol, tiny scale).

Private domain: the UCI optical digits (``sklearn.datasets.load_digits``, 1,797 8×8 images, a different acquisition
and writer population from the MNIST the bundled encoder and decoder were trained on), brought to MNIST's
convention: 0-16 → 0-255, bilinear resize to 20×20, centred in a 28×28 frame. Fixed split (seed 11, stratified):
30 test images per class (300) held out, the other 1,497 train.

Routes per (ε, trainable): DP-SGD with Opacus through :class:`pipeline.finetune.DPFineTuner` on the 1,497 training
images, each conditioned on its own unit tiny-CLIP embedding + N(0, s² I), s ~ U[0, 0.3] (the library's rule);
Poisson rate q = 64/1,497, C = 0.01, AdamW lr 1e-3; z calibrated so the training alone has ε at δ = 1e-5
(dp-accounting RDP, the ledger's accountant); ε = ∞ is the non-private paragon (same clipping, no noise). The
"public" row is the bundled decoder untouched.

Generation (post-processing, free): for each digit class the condition is the public text embedding of its captions
(the mean over ``pipeline.data.CAPTION_TEMPLATES``), DDIM with guidance 2. Metrics against the 300 held-out
private test images, all at the decoder's 16×16 resolution:

* FD: Fréchet distance between tiny-CLIP image embeddings of the samples and of the test images;
* downstream acc.: a logistic regression trained ONLY on the generated labelled samples, tested on the real
  test images (DP-LDM's MNIST protocol);
* class acc.: the fraction of samples a logistic regression trained on the real private training images assigns
  to the prompted class.

Writes ``benchmarks/results/finetune.md`` (+ ``.json``, and ``docs/finetune_eps.png``); ``--quick`` runs a reduced
grid (ε ∈ {3, ∞}, attention+conditioning and all, 1 epoch, 10 samples per class) into ``finetune_quick.*``.
Run: ``OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bench_finetune.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from scipy import linalg  # noqa: E402

import index._torchvision_compat  # noqa: E402,F401  (before open_clip/diffusers import torchvision)
from pipeline.data import captions_for  # noqa: E402
from pipeline.decoders import TinyDecoder  # noqa: E402
from pipeline.finetune import DPFineTuner, calibrate_training_noise, training_epsilon, training_event  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DELTA, SPLIT_SEED, TEST_PER_CLASS = 1e-5, 11, 30
BATCH, PHYSICAL, C, LR, COND_SIGMA, GUIDANCE = 64, 64, 1e-2, 1e-3, 0.3, 2.0


def uci_digits_framed() -> tuple[np.ndarray, np.ndarray]:
    """(1797, 28, 28) uint8 UCI digits framed like MNIST (20×20 centre of a 28×28 frame) and their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32) * (255.0 / 16.0))[:, None]
    x = F.interpolate(x, size=(20, 20), mode="bilinear", align_corners=False).clamp(0, 255)
    framed = torch.zeros(len(x), 1, 28, 28)
    framed[:, :, 4:24, 4:24] = x
    return framed[:, 0].round().to(torch.uint8).numpy(), digits.target.astype(np.int64)


def split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(SPLIT_SEED)
    test = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:TEST_PER_CLASS] for c in range(10)])
    train = np.setdiff1d(np.arange(len(labels)), test)
    return np.sort(train), np.sort(test)


def to_unit(images: np.ndarray, size: int) -> torch.Tensor:
    x = torch.from_numpy(images.astype(np.float32)).div(127.5).sub(1)[:, None]
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    return ((x[:, 0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a + cov_b - 2 * linalg.sqrtm(cov_a @ cov_b).real))


def embed(encoder, images: np.ndarray) -> np.ndarray:
    from PIL import Image

    return encoder.encode_images([Image.fromarray(im, mode="L") for im in images])


def generate(decoder: TinyDecoder, prompts: np.ndarray, per_class: int, steps: int, seed: int) -> np.ndarray:
    """(10 * per_class, 16, 16) uint8 samples, class-major."""
    out = []
    for label, cond in enumerate(prompts):
        images = decoder.generate(torch.as_tensor(cond)[None], num_images_per_condition=per_class, steps=steps,
                                  guidance_scale=GUIDANCE, generator=torch.Generator().manual_seed(seed + label))
        out += [np.asarray(im) for im in images]
    return np.stack(out)


def main(argv: list[str] | None = None) -> None:
    from sklearn.linear_model import LogisticRegression

    from index import load_encoder

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="reduced grid (a few minutes on one thread)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    logging.getLogger("absl").setLevel(logging.ERROR)  # dp-accounting's per-order convergence notes
    quick = args.quick
    epsilons = (3.0, math.inf) if quick else (1.0, 3.0, 10.0, math.inf)
    modes = ("attention+conditioning", "all") if quick else ("all", "attention", "attention+conditioning", "lora")
    epochs = args.epochs or (1 if quick else 10)
    per_class, sample_steps = (10, 15) if quick else (50, 25)

    # 1. the private domain and its encodings
    images, labels = uci_digits_framed()
    train, test = split(labels)
    decoder = TinyDecoder.from_pretrained()
    size = decoder.image_size
    encoder = load_encoder(num_threads=1)
    train_emb = embed(encoder, images[train])
    test_small = to_uint8(to_unit(images[test], size))
    test_emb = embed(encoder, test_small)
    prompts = np.stack([encoder.encode_text(captions_for(c)).mean(0) for c in range(10)])
    prompts /= np.linalg.norm(prompts, axis=1, keepdims=True)
    x_train = to_unit(images[train], size)
    real_clf = LogisticRegression(max_iter=2000, C=0.1).fit(
        to_uint8(x_train).reshape(len(train), -1) / 255.0, labels[train])
    gen_labels = np.repeat(np.arange(10), per_class)

    def evaluate(dec: TinyDecoder) -> dict:
        samples = generate(dec, prompts, per_class, sample_steps, seed=1234)
        flat = samples.reshape(len(samples), -1) / 255.0
        down = LogisticRegression(max_iter=2000, C=0.1).fit(flat, gen_labels)
        return {
            "fd": frechet(embed(encoder, samples), test_emb),
            "downstream_acc": float(down.score(test_small.reshape(len(test), -1) / 255.0, labels[test])),
            "class_acc": float(real_clf.score(flat, gen_labels)),
        }

    rows = [{"trainable": "public (no fine-tuning)", "epsilon": None, "percent": 0.0, "seconds": 0.0,
             **evaluate(decoder)}]
    print(json.dumps(rows[-1]), file=sys.stderr)
    n = len(train)
    q = BATCH / n
    steps = max(1, epochs * (n // BATCH))
    for mode in modes:
        for eps in epsilons:
            z = 0.0 if math.isinf(eps) else calibrate_training_noise(sample_rate=q, steps=steps, epsilon=eps, delta=DELTA)
            tuner = DPFineTuner(decoder, trainable=mode, max_grad_norm=C, lr=LR, batch_size=BATCH,
                                physical_batch_size=PHYSICAL, steps=steps)
            start = time.perf_counter()
            out = tuner.fit(x_train, torch.from_numpy(train_emb), noise_multiplier=z, condition_sigma=COND_SIGMA,
                            delta=DELTA)
            seconds = time.perf_counter() - start
            spent = (None if math.isinf(eps)
                     else training_epsilon(training_event(sample_rate=q, noise_multiplier=z, steps=steps), DELTA))
            rows.append({"trainable": mode, "epsilon": None if math.isinf(eps) else eps, "epsilon_spent": spent,
                         "noise_multiplier": z, "steps": steps, "percent": out.selection.percent,
                         "trainable_parameters": out.selection.trainable, "seconds": round(seconds, 1),
                         **evaluate(out.decoder)})
            print(json.dumps(rows[-1]), file=sys.stderr)
    write(args.out, rows, quick=quick, n=n, q=q, steps=steps, epochs=epochs, per_class=per_class,
          sample_steps=sample_steps)


def write(out: Path, rows: list[dict], *, quick: bool, n: int, q: float, steps: int, epochs: int, per_class: int,
          sample_steps: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    name = "finetune_quick" if quick else "finetune"
    (out / f"{name}.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = [
        f"# DP fine-tuning of the bundled decoder on UCI digits ({'quick' if quick else 'full'} grid)",
        "",
        f"Private train {n} / test 300 UCI digits framed as MNIST; q = {q:.4f} (B = {BATCH}), {steps} steps "
        f"({epochs} epoch{'s' if epochs > 1 else ''}), C = {C}, AdamW lr {LR}, delta = {DELTA:g}; "
        f"{per_class} samples per class from public caption prompts, DDIM {sample_steps} steps, guidance {GUIDANCE}; "
        f"torch threads {torch.get_num_threads()}.",
        "",
        "| trainable | ε (target) | z | % params | train s | FD ↓ | downstream acc ↑ | class acc ↑ |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        eps = "—" if r["trainable"].startswith("public") else ("∞" if r["epsilon"] is None else f"{r['epsilon']:g}")
        z = f"{r['noise_multiplier']:.3f}" if "noise_multiplier" in r else "—"
        lines.append(f"| {r['trainable']} | {eps} | {z} | {r['percent']:.1f} | {r['seconds']} | {r['fd']:.3f} | "
                     f"{r['downstream_acc']:.3f} | {r['class_acc']:.3f} |")
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    if not quick:
        _plot(rows, ROOT / "docs" / "finetune_eps.png")
    print("\n".join(lines))


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    labels = {"1.0": 1, "3.0": 2, "10.0": 3, "None": 4}
    for mode in ("all", "attention", "attention+conditioning", "lora"):
        pts = [(labels[str(r["epsilon"])], r["downstream_acc"]) for r in rows if r["trainable"] == mode]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=mode)
    public = next(r for r in rows if r["trainable"].startswith("public"))
    ax.axhline(public["downstream_acc"], color="grey", ls="--", label="public decoder")
    ax.set_xticks([1, 2, 3, 4], ["1", "3", "10", "∞"])
    ax.set_xlabel("ε (training, δ = 1e-5)")
    ax.set_ylabel("downstream accuracy")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
