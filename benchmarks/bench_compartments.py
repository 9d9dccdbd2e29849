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

``--encoder``: the product path at tiny scale. Shards of the bundled PRIVATE MNIST digits (200 per class after 50
per class are held out for testing) in a real index; per shard an ``attention+conditioning`` adapter of the bundled
tiny decoder trained by :func:`pipeline.compartments.train_compartments` (non-private: the shards are marked
public for this measurement; ``--dp-epsilon E`` adds a DP class split at ε = E per training), the shard classifier,
:class:`ComposedDecoder` sampling (DDIM, guidance 1, condition: the unit mean of the encoder embeddings of the
public half). Models: the paragon (one adapter on all the training digits), class split {0–4} | {5–9} (posterior,
naive, access set {s0}) and iid n ∈ ``--n``. Metrics (:class:`pipeline.compartments.digits.DigitsJudge`):
encoder-FD to the held-out test digits; in {0–4}, ambiguous and low-confidence shares by a small CNN trained on the
PUBLIC half; downstream acc. =
a logistic regression on the samples' pixels with the judge's labels, tested on the real held-out digits. Forgetting:
the wall time of the real ``forget`` of one record vs the ``train_compartments`` run that trained everything.
Writes ``benchmarks/results/compartments_encoder.md`` / ``.json`` (rewritten after each model).
Run: ``OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bench_compartments.py --encoder [--n 2 4 8] [--dp-epsilon 10]``.
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
from pipeline.compartments.train import PUBLIC_ADAPTER_DEFAULTS  # noqa: E402

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
    enc = parser.add_argument_group("--encoder: bundled-decoder adapters on the bundled private digits")
    enc.add_argument("--encoder", action="store_true", help="run the encoder-space benchmark instead")
    enc.add_argument("--n", type=int, nargs="*", default=[2, 4, 8], help="iid shard counts (none: no iid runs)")
    enc.add_argument("--epochs", type=int, default=PUBLIC_ADAPTER_DEFAULTS["epochs"],
                     help="adapter epochs over each shard (the --non-private default)")
    enc.add_argument("--trainable", default="all", help="adapter parameters (non-private rows)")
    enc.add_argument("--eta", type=float, default=1.0, help="DDIM eta of the composed sampler")
    enc.add_argument("--base-guidance", type=float, default=1.5, help="g of the extra class-split rows")
    enc.add_argument("--lr", type=float, default=1e-3, help="adapter learning rate")
    enc.add_argument("--samples", type=int, default=500, help="samples per model")
    enc.add_argument("--sample-steps", type=int, default=50, help="DDIM steps")
    enc.add_argument("--classifier-steps", type=int, default=300, help="shard classifier steps")
    enc.add_argument("--per-class", type=int, default=None, help="private training digits per class (default all)")
    enc.add_argument("--out-name", default="compartments_encoder", help="results file stem")
    enc.add_argument("--dp-epsilon", type=float, default=None, help="also a DP class split at this epsilon")
    enc.add_argument("--figures", action="store_true",
                     help="only the README's sample grid and w(t) plot of real adapters (class split, all digits)")
    args = parser.parse_args(argv)
    if args.figures:
        return figures_main(args)
    if args.encoder:
        return encoder_main(args)
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


# -- --encoder: adapters of the bundled decoder on the bundled private digits, judged in the encoder's space -----
ENC_TEST_PER_CLASS = 50


def _enc_split(seed: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, test rows) of the private half: 50 test digits per class held out (never in a shard)."""
    from pipeline.data import load_mnist_split

    labels = load_mnist_split().private_labels
    rng = np.random.default_rng(seed)
    test = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:ENC_TEST_PER_CLASS] for c in range(10)])
    return np.setdiff1d(np.arange(len(labels)), test), np.sort(test)


def _enc_index(root: Path, shards: dict[str, np.ndarray], ledger_epsilon: float | None = None):
    """Build an index with one shard per entry; mark every shard public (non-private run) or create DP scopes."""
    from accountant import Ledger
    from index import PrivateIndex, build_index
    from pipeline.compartments import digits, mark_public

    folders = digits.write_digit_shards(root / "png", shards)
    names = list(shards)
    build_index(folders[names[0]], root / "index", shard=names[0], progress=False, num_threads=1)
    index = PrivateIndex.open(root / "index")
    for name in names[1:]:
        index.add(folders[name], shard=name, num_threads=1)
    if ledger_epsilon is None:
        for name in names:
            mark_public(root / "index", name, note="benchmark: non-private measurement of the adapter path")
        return root / "index", None
    book = Ledger(root / "index" / "budget.sqlite")
    for name in names:
        book.create_scope(name, epsilon=ledger_epsilon, delta=1e-5, k=10, q=0.5, sigma=0.3,
                          records=len(shards[name]))
    return root / "index", book


def _enc_floor(judge, images: np.ndarray, train_rows: np.ndarray, count: int, size: int, reference) -> dict:
    """The judge on ``count`` random real TRAINING digits against the test reference (the FD floor)."""
    from pipeline.compartments import digits

    rows = np.random.default_rng(3).permutation(train_rows)[:count]
    return judge.report(digits.downsample(images[rows], size), reference, range(5))


def _downstream(samples: np.ndarray, labels: np.ndarray, test_small: np.ndarray, test_labels: np.ndarray) -> float:
    """Logistic regression on the samples' pixels with the judge's labels, accuracy on the real test digits."""
    from sklearn.linear_model import LogisticRegression

    if len(np.unique(labels)) < 2:
        return 0.0
    clf = LogisticRegression(max_iter=2000, C=0.1).fit(samples.reshape(len(samples), -1) / 255.0, labels)
    return float(clf.score(test_small.reshape(len(test_small), -1) / 255.0, test_labels))


def encoder_main(args) -> int:
    """The encoder-space benchmark (see ``--encoder`` in the module doc)."""
    import logging
    import shutil
    import tempfile

    from index import load_encoder
    from pipeline.compartments import ComposedDecoder, digits, forget, train_compartments
    from pipeline.data import load_mnist_split
    from pipeline.decoders import TinyDecoder

    logging.getLogger("absl").setLevel(logging.ERROR)  # dp-accounting's per-order convergence notes
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    split = load_mnist_split()
    labels = split.private_labels
    train_rows, test_rows = _enc_split()
    if args.per_class:
        train_rows = np.sort(np.concatenate([train_rows[labels[train_rows] == c][:args.per_class] for c in range(10)]))
    decoder = TinyDecoder.from_pretrained()
    size = decoder.image_size
    encoder = load_encoder(num_threads=1)
    judge = digits.DigitsJudge(encoder, size)
    condition = digits.public_condition(encoder)
    test_small = digits.downsample(split.private_images[test_rows], size)
    reference = judge.embed(test_small)
    adapter = {"epochs": args.epochs, "batch_size": 64, "physical_batch_size": 64, "lr": args.lr,
               "trainable": args.trainable, "ema_decay": PUBLIC_ADAPTER_DEFAULTS["ema_decay"]}
    classifier = {"steps": args.classifier_steps}
    out_dir = ROOT / "benchmarks" / "results"
    results = {"settings": {"train_digits": len(train_rows), "test_digits": len(test_rows), "samples": args.samples,
                            "sample_steps": args.sample_steps, "adapter": adapter, "classifier": classifier,
                            "condition": "unit mean of the encoder embeddings of the public half, guidance 1",
                            "sampler": {"eta": args.eta, "base_guidance_extra_rows": args.base_guidance},
                            "judge": "CNN trained on the public half (16x16); FD on encoder embeddings",
                            "adapters": "non-private (shards marked public for this measurement)", "seed": 0},
               "runs": []}
    results["real_train_floor"] = _enc_floor(judge, split.private_images, train_rows, args.samples, size, reference)
    as_compartment = ComposedDecoder(decoder, {"base": decoder}, {"base": 1}, weights="naive", eta=args.eta)
    results["base_decoder"] = _enc_eval(judge, as_compartment, condition, args, reference, test_small,
                                        labels[test_rows], seed=1)
    _enc_write(out_dir, results, t_start, args.out_name)
    tmp = Path(tempfile.mkdtemp(prefix="cdm-enc-"))
    try:
        configs = [("paragon (one adapter, all shards)", {"all": train_rows}, None)]
        configs.append(("class split {0-4}|{5-9}", {"s0": train_rows[labels[train_rows] < 5],
                                                     "s1": train_rows[labels[train_rows] >= 5]}, [0, 1, 2, 3, 4]))
        rng = np.random.default_rng(0)
        for n in args.n:
            part = rng.permutation(len(train_rows)) % n
            configs.append((f"iid n={n}", {f"s{i}": np.sort(train_rows[part == i]) for i in range(n)}, None))
        for k, (label, shards, classes_a) in enumerate(configs):
            root = tmp / f"run{k}"
            index_dir, _ = _enc_index(root, shards)
            start = time.perf_counter()
            trained = train_compartments(index_dir, None, non_private=True, decoder=decoder, adapter=adapter,
                                         classifier=classifier, _seed=k)
            run = {"label": label, "n": len(shards), "train_seconds": round(time.perf_counter() - start, 1),
                   "adapter_seconds": {t["shard"]: t["seconds"] for t in trained["trained"]},
                   "classifier_seconds": trained["classifier"]["seconds"], "rows": {}}
            modes = ("naive",) if len(shards) == 1 else ("posterior", "naive")
            guidances = (1.0,) if classes_a is None else (1.0, args.base_guidance)
            for g in guidances:
                tag = "" if g == 1.0 else f", g = {g:g}"
                for mode in modes:
                    composed = ComposedDecoder.from_index(index_dir, decoder=decoder, weights=mode, eta=args.eta,
                                                          base_guidance=g)
                    run["rows"][(f"CDM {mode}" if len(shards) > 1 else "paragon") + tag] = _enc_eval(
                        judge, composed, condition, args, reference, test_small, labels[test_rows], seed=1,
                        classes=classes_a)
                    if mode == "posterior" and g == 1.0:
                        run["shard_weights"] = composed.shard_weights
                        run["weight_trajectory"] = composed.weight_trajectory
                if classes_a is None:
                    continue
                for shard, classes in (("s0", classes_a), ("s1", [c for c in range(10) if c not in classes_a])):
                    only = ComposedDecoder.from_index(index_dir, decoder=decoder, allowed=[shard], eta=args.eta,
                                                      base_guidance=g)
                    run["rows"][f"access set {{{shard}}}{tag}"] = _enc_eval(
                        judge, only, condition, args, reference, test_small, labels[test_rows], seed=2,
                        classes=classes)
            if len(shards) > 1:
                from index import PrivateIndex

                rid = next(PrivateIndex.open(index_dir).records("s0"))[1]
                got = forget(index_dir, "s0", None, ids=[rid], decoder=decoder, _seed=k)
                run["forget_seconds"] = got["seconds"]
                run["forget_unchanged"] = got["unchanged"]
                run["forget_speedup"] = round(run["train_seconds"] / got["seconds"], 2)
            results["runs"].append(run)
            print(json.dumps(run), file=sys.stderr, flush=True)
            _enc_write(out_dir, results, t_start, args.out_name)
            shutil.rmtree(root, ignore_errors=True)
        if args.dp_epsilon:
            results["dp_class_split"] = _enc_dp(tmp, args, decoder, judge, condition, reference, test_small,
                                                labels, train_rows, test_rows, adapter, classifier)
            _enc_write(out_dir, results, t_start, args.out_name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def figures_main(args) -> int:
    """``--figures``: docs/compartments_adapters_grid.png and docs/compartments_adapters_weights.png.

    Two shards {0-4} | {5-9} of all 2,500 bundled private digits, ``--non-private`` default compartments through the
    product path, 16 samples per row (DDIM ``--sample-steps``, η = ``--eta``, the public condition, guidance 1):
    bundled decoder, {a} at g = 1 and ``--base-guidance``, {b} likewise, both shards posterior and naive. The w(t)
    plot: the posterior's mean weight of the shard each of 128 samples ends in (judged by the CNN), along t.
    """
    import shutil
    import tempfile

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from index import load_encoder
    from pipeline.compartments import ComposedDecoder, digits, train_compartments
    from pipeline.data import load_mnist_split
    from pipeline.decoders import TinyDecoder

    torch.set_num_threads(1)
    labels = load_mnist_split().private_labels
    decoder = TinyDecoder.from_pretrained()
    condition = digits.public_condition(load_encoder(num_threads=1))
    tmp = Path(tempfile.mkdtemp(prefix="cdm-fig-"))
    try:
        index_dir, _ = _enc_index(tmp, {"a": np.flatnonzero(labels < 5), "b": np.flatnonzero(labels >= 5)})
        train_compartments(index_dir, None, non_private=True, decoder=decoder, classifier={"steps": 300}, _seed=0)
        g = args.base_guidance
        models = [("bundled decoder", ComposedDecoder(decoder, {"base": decoder}, {"base": 1}, weights="naive",
                                                      eta=args.eta))]
        for name in ("a", "b"):
            for gg in (1.0, g):
                models.append((f"{{{name}}} g={gg:g}", ComposedDecoder.from_index(
                    index_dir, decoder=decoder, allowed=[name], eta=args.eta, base_guidance=gg)))
        for mode in ("posterior", "naive"):
            models.append((f"{{a,b}} {mode}", ComposedDecoder.from_index(index_dir, decoder=decoder, weights=mode,
                                                                         eta=args.eta)))
        rows = [np.concatenate(list(digits.sample_composed(m, condition, 16, steps=args.sample_steps, seed=5)), 1)
                for _, m in models]
        fig, axes = plt.subplots(len(rows), 1, figsize=(8, 0.62 * len(rows)))
        for ax, (label, _), row in zip(axes, models, rows, strict=True):
            ax.imshow(row, cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
        fig.tight_layout()
        fig.savefig(ROOT / "docs" / "compartments_adapters_grid.png", dpi=110)
        posterior = ComposedDecoder.from_index(index_dir, decoder=decoder, eta=args.eta)
        curves, own_weights = [], posterior.weights

        def recorded(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            """The posterior's per-sample weights (``weight_trajectory`` keeps only batch means)."""
            curves.append((int(t[0]), own_weights(x, t)))
            return curves[-1][1]

        posterior.weights = recorded
        half_a = digits.DigitsJudge(None, decoder.image_size).labels(
            digits.sample_composed(posterior, condition, 128, steps=args.sample_steps, seed=9)) < 5
        mask = torch.from_numpy(half_a)
        fig, ax = plt.subplots(figsize=(6, 3.4))
        ts = [t for t, _ in curves]
        ax.plot(ts, [w[mask, 0].mean().item() for _, w in curves], label="samples judged {0-4}: mean w_a")
        ax.plot(ts, [w[~mask, 1].mean().item() for _, w in curves], label="samples judged {5-9}: mean w_b")
        ax.invert_xaxis()
        ax.set_xlabel("timestep t (sampling runs right to left)")
        ax.set_ylabel("weight of the sample's own shard")
        ax.legend(fontsize=8)
        ax.set_title("CDM posterior weights, real adapters {0-4} | {5-9}", fontsize=9)
        fig.tight_layout()
        fig.savefig(ROOT / "docs" / "compartments_adapters_weights.png", dpi=110)
        print(json.dumps({"rows": [label for label, _ in models], "judged_a": int(half_a.sum()),
                          "final_own_weight": [curves[-1][1][mask, 0].mean().item(),
                                               curves[-1][1][~mask, 1].mean().item()]}))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _enc_dp(tmp, args, decoder, judge, condition, reference, test_small, labels, train_rows, test_rows, adapter,
            classifier) -> dict:
    """Class split with DP adapters + DP classifier at epsilon = --dp-epsilon per training (own index ledger)."""
    from pipeline.compartments import ComposedDecoder, train_compartments

    shards = {"s0": train_rows[labels[train_rows] < 5], "s1": train_rows[labels[train_rows] >= 5]}
    index_dir, book = _enc_index(tmp / "dp", shards, ledger_epsilon=4 * args.dp_epsilon)
    start = time.perf_counter()
    dp_adapter = {k: adapter[k] for k in ("batch_size", "physical_batch_size", "lr")}  # DP defaults otherwise
    trained = train_compartments(index_dir, book, epsilon=args.dp_epsilon, decoder=decoder, adapter=dp_adapter,
                                 classifier=classifier, _seed=7)
    out = {"epsilon_per_training": args.dp_epsilon, "train_seconds": round(time.perf_counter() - start, 1),
           "info": trained["info"], "rows": {}}
    for mode in ("posterior", "naive"):
        composed = ComposedDecoder.from_index(index_dir, decoder=decoder, weights=mode, eta=args.eta)
        out["rows"][f"CDM {mode}"] = _enc_eval(judge, composed, condition, args, reference, test_small,
                                               labels[test_rows], seed=1, classes=[0, 1, 2, 3, 4])
    for shard, classes in (("s0", [0, 1, 2, 3, 4]), ("s1", [5, 6, 7, 8, 9])):
        only = ComposedDecoder.from_index(index_dir, decoder=decoder, allowed=[shard], eta=args.eta)
        out["rows"][f"access set {{{shard}}}"] = _enc_eval(judge, only, condition, args, reference, test_small,
                                                           labels[test_rows], seed=2, classes=classes)
    out["epsilon_spent"] = {n: book.status(n).epsilon_spent for n in shards}
    print(json.dumps(out, default=str), file=sys.stderr, flush=True)
    return out


def _enc_eval(judge, decoder, condition, args, reference, test_small, test_labels, *, seed: int,
              classes=None) -> dict:
    from pipeline.compartments import digits

    start = time.perf_counter()
    samples = digits.sample_composed(decoder, condition, args.samples, steps=args.sample_steps, seed=seed)
    row = judge.report(samples, reference, range(5) if classes is None else classes)
    row["downstream_acc"] = _downstream(samples, judge.labels(samples), test_small, test_labels)
    row["sample_seconds"] = round(time.perf_counter() - start, 1)
    return row


def _enc_write(out_dir: Path, results: dict, t_start: float | None, name: str) -> None:
    """Write ``name``.json and ``name``.md (``t_start`` None: keep the recorded total time)."""
    if t_start is not None:
        results["total_seconds"] = round(time.perf_counter() - t_start, 1)
    out_dir.mkdir(exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(results, indent=2, default=str))
    s = results["settings"]
    lines = ["# CDM with adapters of the bundled decoder on the bundled private digits (encoder space)", "",
             f"{s['train_digits']} private training digits in the shards, {s['test_digits']} held-out test digits; "
             f"adapters: {s['adapters']}, {s['adapter']}; classifier {s['classifier']}; "
             f"{s['samples']} samples per model, DDIM {s['sample_steps']} steps, sampler {s.get('sampler')}, "
             f"condition: {s['condition']}; "
             f"judge: {s['judge']}; one torch thread on a shared 2-core machine; total "
             f"{results['total_seconds']:.0f} s.", "",
             "In-classes = the share of samples the judge puts in {0–4}, or in {5–9} for access set {s1}; "
             "ambiguous = judged mass on those classes in (0.2, 0.8).", "",
             "| split | model | encoder-FD ↓ | downstream acc ↑ | in-classes | ambiguous ↓ | low confidence ↓ |",
             "|---|---|---|---|---|---|---|"]

    def row(split: str, model: str, r: dict) -> str:
        split = split.replace("|", "\\|")
        return (f"| {split} | {model} | {r['fd']:.4f} | {r['downstream_acc']:.3f} | {r['in_classes']:.3f} | "
                f"{r['ambiguous']:.3f} | {r['low_confidence']:.3f} |")

    if "real_train_floor" in results:
        lines.append(row("—", f"{s['samples']} real training digits (floor)",
                         dict(results["real_train_floor"], downstream_acc=float("nan"))))
    lines.append(row("—", "bundled decoder (no adapter)", results["base_decoder"]))
    for run in results["runs"]:
        for model, r in run["rows"].items():
            lines.append(row(run["label"], model, r))
    if "dp_class_split" in results:
        dp = results["dp_class_split"]
        for model, r in dp["rows"].items():
            lines.append(row(f"class split, DP ε = {dp['epsilon_per_training']:g} per training", model, r))
    lines += ["", "| split | retrain everything (s) | forget 1 record (s) | speed-up | unchanged adapters |",
              "|---|---|---|---|---|"]
    for run in results["runs"]:
        if "forget_seconds" in run:
            label = run["label"].replace("|", "\\|")
            lines.append(f"| {label} | {run['train_seconds']:.1f} | {run['forget_seconds']:.1f} | "
                         f"{run['forget_speedup']:.2f}× | {len(run['forget_unchanged'])} of {run['n']} |")
    (out_dir / f"{name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
