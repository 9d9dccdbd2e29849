"""CDM (compartmentalised diffusion) at tiny scale: paragon vs CDM posterior vs CDM naive, forgetting cost, w_i(t).

Protocol (seeds-anchors §A.5; CPU, minutes): sklearn's 8×8 digits (1,797 images, scaled to [-1, 1]) split into n
shards — iid for n ∈ {2, 4} (8 without ``--quick``) and class-split {0–4} | {5–9} for n = 2. Per shard a small
ε-MLP (``pipeline.compartments.toy``), the paragon = one ε-MLP on all the data, the shard classifier =
:class:`ShardPosterior` trained on the pooled shards with the forward process (DP-SGD through Opacus at the given
``--classifier-sigma``; 0 = non-private). Sampling: DDPM, T = 100, x̂_0 clipped, 1,000 samples per model.

Metrics against the real digits:

* digit-FD: Fréchet distance in the penultimate (64-unit) feature space of an MLP classifier trained on the real
  digits (Inception/CLIP features are meaningless at 8×8; this is NOT the index encoder);
* hybrid rate: fraction of samples the real-data kNN classifier (k = 5) labels with confidence < 0.6;
* for the class split: the share of samples of the access set {A} = {0–4} classified into A's classes.

Forgetting: the wall time of retraining one shard's model plus the classifier versus retraining every shard model
plus the classifier (and versus the paragon), and the digit-FD after forgetting 10 records of shard 0.

Writes ``benchmarks/results/compartments[_quick].md`` / ``.json`` and ``docs/compartments_weights.png`` (w_i(t)).
Run: ``OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bench_compartments.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.compartments.compose import ComposedEps, ddpm_sample, linear_alphas_cumprod  # noqa: E402
from pipeline.compartments.posterior import ShardPosterior  # noqa: E402
from pipeline.compartments.toy import load_digits_shards, train_eps  # noqa: E402

T = 100
ABAR = linear_alphas_cumprod(T)


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    from scipy import linalg

    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean, _ = linalg.sqrtm(s1 @ s2, disp=False)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * np.real(covmean)))


class Judge:
    """Real-data feature extractor (MLP penultimate layer) and kNN classifier."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        from sklearn.neighbors import KNeighborsClassifier
        from sklearn.neural_network import MLPClassifier

        self.mlp = MLPClassifier((64,), max_iter=600, random_state=0).fit(x, y)
        self.knn = KNeighborsClassifier(5).fit(x, y)
        self.real = self.features(x)

    def features(self, x: np.ndarray) -> np.ndarray:
        return np.maximum(0, x @ self.mlp.coefs_[0] + self.mlp.intercepts_[0])

    def report(self, samples: np.ndarray, classes=None) -> dict[str, float]:
        p = self.knn.predict_proba(samples)
        out = {"fd": frechet(self.features(samples), self.real), "hybrid_rate": float((p.max(1) < 0.6).mean())}
        if classes is not None:
            out["in_access_set"] = float(np.isin(p.argmax(1), classes).mean())
        return out


def sample(eps_fn, count: int, seed: int) -> np.ndarray:
    s = ddpm_sample(eps_fn, (count, 64), ABAR, generator=torch.Generator().manual_seed(seed), clip=1.0)
    return s.float().numpy()


def as_fn(model):
    return lambda x, t: model(x, t).double()


def fit_classifier(x, labels, names, sizes, args, seed=0) -> tuple[ShardPosterior, float]:
    start = time.perf_counter()
    post = ShardPosterior(names, sizes, (64,), num_timesteps=T, hidden=128)
    post.fit(x, labels, ABAR, noise_multiplier=args.classifier_sigma, max_grad_norm=1.0, batch_size=128,
             steps=args.classifier_steps, lr=3e-3, _seed=seed)
    return post, time.perf_counter() - start


def _weight_curves(trajectory) -> list[tuple[int, float, float]]:
    """Per t: mean weight of the shard each sample ends in (argmax at t = 0), and of the others (n - 1 of them)."""
    final = trajectory[-1].argmax(1)
    rows = torch.arange(len(final))
    out = []
    for t, w in zip(range(T - 1, -1, -1), trajectory, strict=True):
        own = float(w[rows, final].mean())
        out.append((t, own, (1.0 - own) / max(1, w.shape[1] - 1)))
    return out


def run_split(x, y, shard_of: np.ndarray, n: int, judge: Judge, args, label: str, classes_a=None) -> dict:
    names = [f"s{i}" for i in range(n)]
    sizes = {names[i]: int((shard_of == i).sum()) for i in range(n)}
    models, seconds = {}, {}
    for i, name in enumerate(names):
        start = time.perf_counter()
        models[name] = train_eps(x[shard_of == i], ABAR, steps=args.steps, hidden=args.hidden, lr=1e-3,
                                 batch_size=256, seed=i)
        seconds[name] = time.perf_counter() - start
    post, clf_seconds = fit_classifier(x, torch.as_tensor(shard_of, dtype=torch.long), names, sizes, args)
    fns = {n_: as_fn(m) for n_, m in models.items()}
    rows = {}
    posterior = ComposedEps(fns, sizes, weight_fn=post.weights)
    rows["CDM posterior"] = judge.report(sample(posterior, args.samples, 1))
    rows["CDM naive"] = judge.report(sample(ComposedEps(fns, sizes, mode="naive"), args.samples, 1))
    out = {"label": label, "n": n, "rows": rows, "shard_seconds": seconds, "classifier_seconds": clf_seconds,
           "weights_t": _weight_curves(posterior.trajectory)}
    if classes_a is not None:
        only_a = ComposedEps(fns, sizes, weight_fn=post.weights, allowed=["s0"])
        out["access_set_A"] = judge.report(sample(only_a, args.samples, 2), classes=classes_a)
        for key in ("CDM posterior", "CDM naive"):
            rows[key]["in_access_set"] = None
    # forgetting 10 records of shard 0: retrain s0 and the classifier only
    keep = np.ones(len(x), dtype=bool)
    keep[np.flatnonzero(shard_of == 0)[:10]] = False
    start = time.perf_counter()
    models["s0"] = train_eps(x[keep & (shard_of == 0)], ABAR, steps=args.steps, hidden=args.hidden, lr=1e-3,
                             batch_size=256, seed=0)
    post2, _ = fit_classifier(x[keep], torch.as_tensor(shard_of[keep], dtype=torch.long), names,
                              dict(sizes, s0=sizes["s0"] - 10), args)
    forget_s = time.perf_counter() - start
    fns["s0"] = as_fn(models["s0"])
    rows["CDM posterior after forgetting 10"] = judge.report(
        sample(ComposedEps(fns, dict(sizes, s0=sizes["s0"] - 10), weight_fn=post2.weights), args.samples, 1))
    out["forget_seconds"] = forget_s
    out["full_retrain_seconds"] = sum(seconds.values()) + clf_seconds
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--classifier-sigma", type=float, default=0.0)
    args = parser.parse_args(argv)
    args.steps = 1500 if args.quick else 3000
    args.hidden = 256 if args.quick else 512
    args.samples = 500 if args.quick else 1000
    args.classifier_steps = 300 if args.quick else 600
    torch.set_num_threads(1)
    x, y = load_digits_shards()
    judge = Judge(x.numpy(), y.numpy())
    rng = np.random.default_rng(0)
    results = {"settings": {k: v for k, v in vars(args).items()}, "runs": []}
    start = time.perf_counter()
    paragon = train_eps(x, ABAR, steps=args.steps, hidden=args.hidden, lr=1e-3, batch_size=256, seed=99)
    results["paragon_seconds"] = time.perf_counter() - start
    results["paragon"] = judge.report(sample(as_fn(paragon), args.samples, 1))
    results["real_holdout_floor"] = judge.report(x.numpy()[rng.permutation(len(x))[: args.samples]])
    split = (y.numpy() >= 5).astype(int)
    results["runs"].append(run_split(x, y, split, 2, judge, args, "class split {0-4}|{5-9}", classes_a=[0, 1, 2, 3, 4]))
    for n in (2, 4) if args.quick else (2, 4, 8):
        results["runs"].append(run_split(x, y, rng.permutation(len(x)) % n, n, judge, args, f"iid n={n}"))
    name = "compartments_quick" if args.quick else "compartments"
    out_dir = ROOT / "benchmarks" / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(results, indent=2))
    lines = [f"# CDM tiny-scale benchmark ({'quick' if args.quick else 'full'})", "",
             f"paragon: digit-FD {results['paragon']['fd']:.2f}, hybrid {results['paragon']['hybrid_rate']:.3f}, "
             f"train {results['paragon_seconds']:.1f} s; real-data floor FD {results['real_holdout_floor']['fd']:.2f}",
             "", "| split | model | digit-FD ↓ | hybrid rate ↓ |", "|---|---|---|---|"]
    for run in results["runs"]:
        for key, row in run["rows"].items():
            lines.append(f"| {run['label']} | {key} | {row['fd']:.2f} | {row['hybrid_rate']:.3f} |")
    lines += ["", "| split | forget 10 records (s) | retrain everything (s) | ratio |", "|---|---|---|---|"]
    for run in results["runs"]:
        lines.append(f"| {run['label']} | {run['forget_seconds']:.1f} | {run['full_retrain_seconds']:.1f} | "
                     f"{run['full_retrain_seconds'] / run['forget_seconds']:.2f}x |")
    acc = results["runs"][0]["access_set_A"]
    lines += ["", f"class split, access set {{A}} = {{0-4}}: {acc['in_access_set']:.3f} of samples in A's classes, "
              f"hybrid {acc['hybrid_rate']:.3f}, digit-FD {acc['fd']:.2f}"]
    (out_dir / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3))
        for run, style in zip(results["runs"], ("-", "--", ":", "-."), strict=False):
            traj = run["weights_t"]
            ax.plot([t for t, _, _ in traj], [own for _, own, _ in traj], style, label=f"{run['label']}: own shard")
        ax.axhline(0.5, color="grey", lw=0.5)
        ax.set_xlabel("t (T = 100 → 0: noise → data)")
        ax.set_ylabel("mean w of the sample's final shard")
        ax.invert_xaxis()
        ax.legend(fontsize=6)
        fig.tight_layout()
        (ROOT / "docs").mkdir(exist_ok=True)
        fig.savefig(ROOT / "docs" / "compartments_weights.png", dpi=120)
    except ImportError:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
