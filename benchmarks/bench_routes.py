"""Routes to a private domain, side by side at the same ε (issue 16: routes 1–7 and the encoder's reach).

Private domain (default): the bundled UCI optical digits framed as MNIST (``dprdm data export uci-digits``: the
recorded train split is the private retrieval set, the recorded test split the held-out private test set; ``--domain mnist-thick`` for the near-shift domain), or any
ImageFolder with ``--private-source DIR`` (subfolder = label; one third of every class held out by a seeded split;
without subfolders the label-based metric is skipped). The public models are the bundled tiny encoder and decoder,
trained on the PUBLIC MNIST half only.

Routes (δ = 1e-5; ε counted for 1,000 generations, one query = one generation = one image):

1. prompt only: ``c = query`` (λ = 0), no private data, ε = 0;
2. retrieval from the PUBLIC datastore (the DP-RDM paper's baseline): exact top-k mean of the bundled public MNIST
   embeddings, ``c = λ·mean + (1−λ)·query``, ε = 0 (it reads no private record);
3. DP-RDM private retrieval, λ ∈ {0.5, 1}, (k, q) from a small sweep, through the real path: ``dprdm index build``
   of the private folder, ``dprdm budget init --epsilon ε --delta 1e-5 --queries 1000 --k K --q Q`` (one index and
   ledger per (ε, k, q): copies of the one built index), ``DPRDMPipeline.from_index_dir`` charging the real ledger
   (retrieval noise from the OS CSPRNG), and the ε in the table is what ``dprdm budget show --json`` reports after
   the run (next to the target). ε = ∞ is the same retrieval without noise (non-private; the ledger refuses σ = 0,
   so it runs the mechanism's functions on the index rows directly and has no ledger).
4. DP fine-tuned adapter (DP-LDM, ``--trainable attention+conditioning``): ``dprdm finetune --sigma z`` on the
   private training records, on a fresh index copy whose scope has budget ε (``budget init --alpha`` = the order
   where that training is tightest); z is the smallest noise whose event the scope's filter admits. ε is spent
   once, at training; generations are prompt only (λ = 0: post-processing of the adapter, not charged).
5. adapter + DP private retrieval in ONE scope of budget ε: σ planned so that 1,000 queries alone cost ε/2
   (``dprdm budget plan``), the training takes what the filter leaves at α* with those 1,000 queries reserved
   (checked: ``queries_remaining`` ≥ 1,000 after the training); generations decode DP retrieval conditions
   (k = 20, q = 0.2, λ = 0.5) with the adapter, each query charged to the same scope.
6. CDM (``pipeline.compartments.ComposedDecoder``) over two compartments: the untouched public base decoder and the
   private DP adapter, posterior weights from a ``ShardPosterior`` trained by DP-SGD on the pooled public MNIST +
   private images. One scope of budget ε: half its RDP at α* to the adapter, the rest to the classifier, each charged
   before its first step (``dprdm finetune``; ``charge_posterior``). ``ComposedDecoder.from_index`` only loads
   adapters stored in an index's compartments, so the benchmark builds the ``ComposedDecoder`` directly (its public
   constructor takes any decoder per compartment).
7. the non-private paragon: the same adapter fine-tuned without noise (``DPFineTuner`` with z = 0; ε = ∞, no ledger;
   a benchmark reference, never written or released). Routes 5 and 6 at ε = ∞ use it too (noiseless retrieval,
   noiseless classifier); route 4 at ε = ∞ is route 7.

Metrics, against the held-out private test images: Fréchet distance of encoder embeddings (lower is better);
domain score = fraction of generations that a public-vs-private classifier trained on REAL images assigns to the
private domain; class accuracy = fraction of generations that a classifier trained on REAL private training images
assigns to the prompt's class; downstream accuracy = accuracy on the real private test images of a classifier trained
ONLY on the generations (prompt class as label, DP-LDM's protocol); wall time per generation and of each training.
All classifiers are logistic regressions on pixels at the decoder's resolution (real images are resized to it first,
so resolution cannot give a generation away); their accuracy on held-out real images is printed as the ceiling.

``--domains-only`` writes the encoder's reach (``routes_domains.md``): linear probe trained on the public MNIST
embeddings, text→image P@10 ("a handwritten digit N"), and a public-vs-domain classifier, for unframed UCI,
framed UCI, thick MNIST and the MNIST private half.

Run: ``nice -n 10 python benchmarks/bench_routes.py --quick`` (about 5 min of CPU on one thread, every route);
``--out DIR`` (default ``benchmarks/results``) receives ``routes.md``, ``routes.json`` and ``routes.png``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import index._torchvision_compat  # noqa: E402,F401,I001  (torchvision shim before diffusers/open_clip)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from scipy import linalg  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import StratifiedKFold, cross_val_predict  # noqa: E402
from sklearn.metrics import balanced_accuracy_score  # noqa: E402

DELTA, QUERIES = 1e-5, 1000
LAMBDAS = (0.5, 1.0)
SWEEP = ((10, 0.1), (20, 0.2), (40, 0.5))
QUICK_SWEEP = ((20, 0.2),)
PUBLIC_K = 20
STEPS, GUIDANCE = 15, 2.0
REPEATS, QUICK_REPEATS = 20, 3
TEMPLATE = "a handwritten digit {label}"
SHARD = "default"
ROUTE_NAMES = {
    1: "prompt only",
    2: "public retrieval",
    3: "DP-RDM private retrieval",
    4: "DP fine-tuned adapter",
    5: "adapter + private retrieval",
    6: "CDM public decoder + private adapter",
    7: "non-private paragon",
}
# the DP fine-tuning of routes 4-7 (DP-LDM's choice, the finetune path's defaults otherwise)
TRAINABLE, FT_BATCH, FT_CLIP, FT_LR = "attention+conditioning", 64, 1e-2, 1e-3
FT_EPOCHS, QUICK_FT_EPOCHS = 3, 1
# the retrieval mechanism of route 5 (and the sigma of the training scopes' conditioning noise): route 3's middle pair
COMBO_K, COMBO_Q, COMBO_LAMBDA = 20, 0.2, 0.5
# route 6's shard classifier (pipeline.compartments.ShardPosterior; the compartments defaults)
CLASSIFIER_STEPS, QUICK_CLASSIFIER_STEPS = 300, 100
CLASSIFIER_BATCH, CLASSIFIER_CLIP, CLASSIFIER_LR, CLASSIFIER_HIDDEN = 64, 1.0, 2e-3, 128
PUBLIC_COMPARTMENT = "public"


# -- small helpers ----------------------------------------------------------------------------------------------------
def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to the rows of ``a`` and ``b`` (nan below two rows)."""
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():  # fewer rows than dimensions: a singular covariance, still a defined distance
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(cov_a @ cov_b).real
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a + cov_b - 2 * covmean))


def _pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(np.asarray(image, dtype=np.uint8), mode="L")


def _eps(value: float) -> str:
    return "∞" if math.isinf(value) else f"{value:g}"


def _dprdm(*args: str) -> dict:
    """Run ``dprdm ARGS --json`` in this process (the real typer app, the real ledger); its JSON, or exit."""
    from typer.testing import CliRunner

    from pipeline.cli import app

    result = CliRunner().invoke(app, [*args, "--json"])
    if result.exit_code != 0:
        raise SystemExit(f"dprdm {' '.join(args)} failed (exit {result.exit_code}): {result.output.strip()}")
    return json.loads(result.stdout)


def _digit_prompts(template: str, labels: list[str]) -> list[str]:
    return [template.format(label=label) for label in labels]


# -- the encoder's reach (--domains-only) ------------------------------------------------------------------------------
def precision_at_10(encoder, embeddings: np.ndarray, labels: np.ndarray) -> float:
    """Mean over digits N of the share of class N among the 10 images nearest to the text "a handwritten digit N"."""
    texts = encoder.encode_text(_digit_prompts(TEMPLATE, [str(d) for d in range(10)]))
    hits = [np.mean(labels[np.argsort(-(embeddings @ text), kind="stable")[:10]] == digit)
            for digit, text in enumerate(texts)]  # fmt: skip
    return float(np.mean(hits))


def domain_separability(public: np.ndarray, other: np.ndarray) -> float:
    """Balanced accuracy (5-fold CV) of a logistic regression telling public MNIST embeddings from ``other`` (0.5 = chance)."""
    x = np.concatenate([public, other])
    y = np.concatenate([np.zeros(len(public), np.int64), np.ones(len(other), np.int64)])
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)
    predicted = cross_val_predict(LogisticRegression(max_iter=2000), x, y, cv=folds)
    return float(balanced_accuracy_score(y, predicted))


def encoder_reach(encoder) -> list[dict]:
    """The encoder-reach figures of every bundled domain (all rows of each; nothing here trains on a domain)."""
    from pipeline.data import load_mnist_split
    from pipeline.private_domain import load_domain

    split = load_mnist_split()
    public = encoder.encode_images([_pil(x) for x in split.public_images])
    probe = LogisticRegression(max_iter=3000).fit(public, split.public_labels)
    uci, thick = load_domain("uci-digits"), load_domain("mnist-thick")
    uci_labels = np.concatenate([uci.train_labels, uci.test_labels])
    domains = [
        ("UCI digits, unframed (8x8 as is)", np.concatenate([uci.raw_train_images, uci.raw_test_images]), uci_labels),
        ("UCI digits, framed as MNIST (20x20 in 28x28)", np.concatenate([uci.train_images, uci.test_images]), uci_labels),
        ("MNIST private half, thick strokes (3x3 dilation)", np.concatenate([thick.train_images, thick.test_images]),
         np.concatenate([thick.train_labels, thick.test_labels])),
        ("MNIST private half (same style as public)", split.private_images, split.private_labels),
    ]  # fmt: skip
    rows = []
    for name, images, labels in domains:
        embeddings = encoder.encode_images([_pil(x) for x in images])
        rows.append({
            "domain": name, "images": int(len(images)),
            "probe_accuracy": float(np.mean(probe.predict(embeddings) == labels)),
            "p_at_10": precision_at_10(encoder, embeddings, labels),
            "domain_classifier": domain_separability(public, embeddings),
        })  # fmt: skip
        print(f"{name}: {rows[-1]}", file=sys.stderr, flush=True)
    return rows


def reach_markdown(rows: list[dict]) -> str:
    lines = [
        "## The encoder's reach (bundled tiny encoder, 16-d)",
        "",
        "Linear probe: logistic regression trained on the embeddings of the 2,500 PUBLIC MNIST digits, tested on every "
        "image of the domain (10 classes, chance 0.10). P@10: text→image retrieval, the query \"a handwritten digit "
        "N\" against the domain's images, share of class N among the 10 nearest, mean over N. Domain classifier: "
        "logistic regression on embeddings, public MNIST half vs the domain, balanced accuracy by 5-fold "
        "cross-validation (0.50 = indistinguishable).",
        "",
        "| domain | images | linear-probe accuracy | text→image P@10 | public-vs-domain classifier |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [f"| {r['domain']} | {r['images']:,} | {r['probe_accuracy']:.2f} | {r['p_at_10']:.2f} | "
              f"{r['domain_classifier']:.2f} |" for r in rows]  # fmt: skip
    return "\n".join(lines)


# -- the private domain ---------------------------------------------------------------------------------------------
@dataclass
class Domain:
    """Train folder (indexed), held-out test images, labels (None when the folder has none)."""

    train_dir: Path
    train_images: list[Image.Image]
    train_labels: list[str] | None
    test_images: list[Image.Image]
    test_labels: list[str] | None
    description: str
    classes: list[str] = field(default_factory=list)


def _folder_records(folder: Path) -> list[tuple[Path, str | None]]:
    from index.sources import IMAGE_SUFFIXES

    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))  # fmt: skip
    labelled = all(p.parent != folder for p in files)
    return [(p, p.relative_to(folder).parts[0] if labelled else None) for p in files]


def _limit(records: list[tuple[Path, str | None]], limit: int | None) -> list[tuple[Path, str | None]]:
    if limit is None:
        return records
    taken: dict[str | None, int] = {}
    kept = []
    for path, label in records:
        if taken.get(label, 0) < limit:
            taken[label] = taken.get(label, 0) + 1
            kept.append((path, label))
    return kept


def _load(records: list[tuple[Path, str | None]]) -> list[Image.Image]:
    images = []
    for path, _ in records:
        with Image.open(path) as image:
            images.append(image.convert("L"))
    return images


DOMAIN_TEXT = {
    "uci-digits": "UCI optical digits framed as MNIST (dprdm data export uci-digits: recorded train / test split)",
    "mnist-thick": "MNIST private half with thick strokes (dprdm data export mnist-thick: recorded train / test split)",
}


def prepare_domain(work: Path, source: Path | None, limit: int | None, name: str = "uci-digits") -> Domain:
    """Export (or split) the private domain under ``work``; the train part is a folder ``dprdm index build`` reads."""
    from index.fs import atomic_write_bytes, make_private_dir

    if source is None:
        _dprdm("data", "export", name, str(work / "export-train"), "--split", "train")
        _dprdm("data", "export", name, str(work / "export-test"), "--split", "test")
        train, test = _folder_records(work / "export-train"), _folder_records(work / "export-test")
        description = DOMAIN_TEXT[name]
    else:
        records = _folder_records(source)
        if not records:
            raise SystemExit(f"--private-source {source}: no images found")
        rng = np.random.default_rng(16)
        by_label: dict[str | None, list[int]] = {}
        for position, (_, label) in enumerate(records):
            by_label.setdefault(label, []).append(position)
        held = {p for positions in by_label.values() for p in rng.permutation(positions)[: max(1, len(positions) // 3)]}
        train = [r for i, r in enumerate(records) if i not in held]
        test = [r for i, r in enumerate(records) if i in held]
        description = f"{source} (a seeded third of every class held out)"
    train, test = _limit(train, limit), _limit(test, limit)
    train_dir = work / "export-train"
    if source is not None or limit is not None:  # index exactly the chosen training files, owner-only
        train_dir = make_private_dir(work / "private-train")
        for path, label in train:
            folder = make_private_dir(train_dir / label) if label is not None else train_dir
            atomic_write_bytes(folder / path.name, path.read_bytes())
    labels_known = all(label is not None for _, label in train + test)
    train_labels = [label for _, label in train] if labels_known else None
    test_labels = [label for _, label in test] if labels_known else None
    classes = sorted(set(train_labels), key=lambda s: (len(s), s)) if train_labels else []
    return Domain(train_dir, _load(train), train_labels, _load(test), test_labels, description, classes)


# -- the benchmark ------------------------------------------------------------------------------------------------------
class Bench:
    """Everything loaded once: the private index (built by the CLI), the pipeline's models, the metric classifiers."""

    def __init__(self, domain: Domain, work: Path, *, repeats: int, prompt: str, template: str,
                 ft_epochs: int = FT_EPOCHS, classifier_steps: int = CLASSIFIER_STEPS) -> None:
        from pipeline.data import load_mnist_split

        self.domain, self.work, self.repeats = domain, work, repeats
        self.ft_epochs, self.classifier_steps, self._paragon = ft_epochs, classifier_steps, None
        self.base_index = work / "index-base"
        started = time.perf_counter()
        _dprdm("index", "build", str(domain.train_dir), "--index", str(self.base_index), "--threads", "1")
        self.build_seconds = time.perf_counter() - started
        # one throwaway ledger so the pipeline (encoder, decoder) can be opened once for routes 1 and 2
        self.open_dir = self._copy_index("models")
        self._init_budget(self.open_dir, 10.0, *QUICK_SWEEP[0])
        from pipeline.generate import DPRDMPipeline

        self.pipe = DPRDMPipeline.from_index_dir(self.open_dir, threads=1)
        self.encoder, self.decoder = self.pipe.encoder, self.pipe.decoder
        self.size = int(getattr(self.decoder, "image_size", 16))
        # the fine-tuning's shape on the private shard (finetune's rule: q = B / N, steps = epochs * floor(N / B))
        from index import PrivateIndex

        self.records = int(PrivateIndex.open(self.base_index).shard(SHARD).num_records)
        self.ft_batch = min(FT_BATCH, self.records // 2)
        tuner = self._tuner()
        self.ft_q, self.ft_steps = tuner.sample_rate(self.records), tuner.num_steps(self.records)
        # prompts: one per class (label-aware) or the one prompt
        if domain.train_labels is not None:
            self.prompts = _digit_prompts(template, domain.classes)
            self.prompt_labels = list(domain.classes)
        else:
            self.prompts, self.prompt_labels = [prompt], [None]
        # metric references on REAL images
        self.test_embeddings = self.encoder.encode_images(domain.test_images)
        public = load_mnist_split().public_images
        public_pixels = np.stack([self.pixels(_pil(x)) for x in public])
        private_pixels = np.stack([self.pixels(x) for x in domain.train_images])
        held = np.random.default_rng(0).permutation(len(public_pixels))
        cut = len(public_pixels) * 4 // 5
        x = np.concatenate([public_pixels[held[:cut]], private_pixels])
        y = np.concatenate([np.zeros(cut, np.int64), np.ones(len(private_pixels), np.int64)])
        self.domain_classifier = LogisticRegression(max_iter=3000).fit(x, y)
        test_pixels = self.test_pixels = np.stack([self.pixels(x) for x in domain.test_images])
        self.domain_check = float(balanced_accuracy_score(
            np.r_[np.zeros(len(held) - cut), np.ones(len(test_pixels))],
            self.domain_classifier.predict(np.concatenate([public_pixels[held[cut:]], test_pixels]))))
        self.class_classifier = None
        self.class_check = float("nan")
        if domain.train_labels is not None and len(set(domain.train_labels)) > 1:
            self.class_classifier = LogisticRegression(max_iter=3000).fit(private_pixels, domain.train_labels)
            self.class_check = float(np.mean(self.class_classifier.predict(test_pixels) == np.array(domain.test_labels)))
        self.real_fd = frechet_distance(self.encoder.encode_images(domain.train_images), self.test_embeddings)
        public_meta = json.loads((ROOT / "pipeline" / "data" / "public_embeddings.json").read_text())
        if public_meta["encoder_sha256"] != self.encoder.sha256:
            raise SystemExit("the bundled public embeddings were made with another encoder; route 2 needs the bundled one")
        self.public_embeddings = np.load(ROOT / "pipeline" / "data" / "public_embeddings.npy").astype(np.float32)

    # -- plumbing
    def pixels(self, image: Image.Image) -> np.ndarray:
        image = image.convert("L")
        if image.size != (self.size, self.size):
            image = image.resize((self.size, self.size), Image.Resampling.BILINEAR)
        return np.asarray(image, dtype=np.float32).reshape(-1) / 255.0

    def _copy_index(self, name: str) -> Path:
        target = self.work / f"index-{name}"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(self.base_index, target)  # an unbound copy: its ledger is created by budget init
        return target

    def _init_budget(self, index_dir: Path, epsilon: float, k: int, q: float) -> dict:
        return _dprdm("budget", "init", "--index", str(index_dir), "--epsilon", repr(epsilon), "--delta", repr(DELTA),
                      "--queries", str(QUERIES), "--k", str(k), "--q", repr(q))  # fmt: skip

    def score(self, images: list[Image.Image], labels: list[str | None], seconds: float) -> dict:
        """The metrics of one setting's generations."""
        pixels = np.stack([self.pixels(image) for image in images])
        row = {
            "generations": len(images),
            "fd": frechet_distance(self.encoder.encode_images(images), self.test_embeddings),
            "domain_score": float(np.mean(self.domain_classifier.predict(pixels) == 1)),
            "class_accuracy": None,
            "seconds_per_generation": seconds / max(1, len(images)),
        }
        row["downstream_accuracy"] = None
        if self.class_classifier is not None:
            row["class_accuracy"] = float(np.mean(self.class_classifier.predict(pixels) == np.array(labels)))
            row["downstream_accuracy"] = self.downstream_accuracy(pixels, labels)
        return row

    def downstream_accuracy(self, pixels: np.ndarray, labels: list[str | None]) -> float | None:
        """Accuracy on the REAL private test images of a classifier trained ONLY on the generations (prompt class
        as label; DP-LDM's protocol); None with fewer than two classes generated."""
        if len(set(labels)) < 2:
            return None
        classifier = LogisticRegression(max_iter=3000).fit(pixels, labels)
        return float(np.mean(classifier.predict(self.test_pixels) == np.array(self.domain.test_labels)))

    def _queries(self):
        """(prompt, label, seed) of every generation of a setting: ``repeats`` per prompt."""
        for p, (prompt, label) in enumerate(zip(self.prompts, self.prompt_labels, strict=True)):
            for r in range(self.repeats):
                yield prompt, label, p * 1000 + r

    def _decode(self, condition: np.ndarray, seed: int, decoder=None) -> Image.Image:
        return (decoder or self.decoder).generate(torch.from_numpy(np.asarray(condition, np.float32)[None, :]), steps=STEPS,
                                     guidance_scale=GUIDANCE, generator=torch.Generator().manual_seed(seed))[0]

    # -- routes
    def route_prompt_only(self) -> list[dict]:
        """Route 1: λ = 0 through the pipeline (reads no private record, charges nothing)."""
        images, labels, started = [], [], time.perf_counter()
        for prompt, label, seed in self._queries():
            result = self.pipe(prompt, num_images=1, lambda_=0.0, steps=STEPS, guidance_scale=GUIDANCE,
                               generator=torch.Generator().manual_seed(seed), caller="bench_routes route 1")
            assert not result.charged  # noqa: S101
            images.append(result.images[0])
            labels.append(label)
        row = self.score(images, labels, time.perf_counter() - started)
        return [dict(route=1, epsilon_target=0.0, epsilon_spent=0.0, **{"lambda": 0.0}, k=None, q=None, **row)]

    def route_public_retrieval(self) -> list[dict]:
        """Route 2: exact top-k mean of the PUBLIC MNIST embeddings (no private record read, no noise, ε = 0)."""
        rows = []
        for lambda_ in LAMBDAS:
            images, labels, started = [], [], time.perf_counter()
            for prompt, label, seed in self._queries():
                query = self.encoder.encode_text([prompt])[0].astype(np.float64)
                query /= np.linalg.norm(query)
                nearest = np.argsort(-(self.public_embeddings @ query), kind="stable")[:PUBLIC_K]
                mean = self.public_embeddings[nearest].mean(0)
                images.append(self._decode(lambda_ * mean + (1.0 - lambda_) * query, seed))
                labels.append(label)
            row = self.score(images, labels, time.perf_counter() - started)
            rows.append(dict(route=2, epsilon_target=0.0, epsilon_spent=0.0, **{"lambda": lambda_}, k=PUBLIC_K, q=1.0,
                             **row))
        return rows

    def route_private_retrieval(self, epsilon: float, k: int, q: float) -> list[dict]:
        """Route 3 at one (ε, k, q): a fresh copy of the index, its own ledger, both λ charged to it."""
        if math.isinf(epsilon):
            return self._non_private_retrieval(k, q)
        from pipeline.generate import DPRDMPipeline

        index_dir = self._copy_index(f"eps{epsilon:g}-k{k}-q{q:g}")
        sigma = self._init_budget(index_dir, epsilon, k, q)["scopes"][SHARD]["sigma"]
        pipe = DPRDMPipeline.from_index_dir(index_dir, threads=1)  # the real path: index, its ledger, the models
        rows = [dict(route=3, epsilon_target=epsilon, **{"lambda": lambda_}, k=k, q=q, sigma=sigma,
                     **self._generate(pipe, lambda_, "bench_routes route 3")) for lambda_ in LAMBDAS]
        pipe.retriever.ledger.close()
        shown = _dprdm("budget", "show", "--index", str(index_dir))["scopes"][SHARD]  # what the user would read
        for row in rows:  # one ledger for both λ: the spent ε is the scope's after the whole setting
            row.update(epsilon_spent=shown["epsilon_spent"], epsilon_budget=shown["epsilon_budget"],
                       delta=shown["delta"], queries_charged=shown["queries_charged"], ledger=str(index_dir))
        return rows

    def _non_private_retrieval(self, k: int, q: float, *, decoder=None, lambdas=LAMBDAS) -> list[dict]:
        """ε = ∞: the mechanism without noise on the index rows (no ledger: the ledger refuses σ = 0)."""
        from index import PrivateIndex
        from pipeline.mechanism import aggregate, poisson_subsample, secure_rng

        embeddings = np.asarray(PrivateIndex.open(self.base_index).shard(SHARD).embeddings, dtype=np.float32)
        rng, rows = secure_rng(), []
        for lambda_ in lambdas:
            images, labels, started = [], [], time.perf_counter()
            for prompt, label, seed in self._queries():
                query = self.encoder.encode_text([prompt])[0].astype(np.float64)
                query = (query / np.linalg.norm(query)).astype(np.float32)
                kept = poisson_subsample(len(embeddings), q, rng)  # same subsample and top-k, no noise
                best = kept[np.argsort(-(embeddings[kept] @ query), kind="stable")[:k]]
                mean = aggregate(embeddings[best], k)
                images.append(self._decode(lambda_ * mean + (1.0 - lambda_) * query, seed, decoder))
                labels.append(label)
            rows.append(dict(route=3, epsilon_target=math.inf, epsilon_spent=math.inf, **{"lambda": lambda_}, k=k, q=q,
                             sigma=0.0, ledger=None, **self.score(images, labels, time.perf_counter() - started)))
        return rows

    # -- routes 4-7: a DP fine-tuned adapter of the bundled decoder, and what is built on it
    def _pipeline(self, index_dir: Path, **kwargs):
        from pipeline.generate import DPRDMPipeline

        return DPRDMPipeline.from_index_dir(index_dir, threads=1, **kwargs)  # the real path: index, ledger, models

    def _ledger(self, index_dir: Path):
        from index import PrivateIndex
        from pipeline.ledgers import index_ledger

        return index_ledger(PrivateIndex.open(index_dir))

    def _show(self, index_dir: Path) -> dict:
        return _dprdm("budget", "show", "--index", str(index_dir))["scopes"][SHARD]  # what the user would read

    def _ledger_fields(self, index_dir: Path) -> dict:
        shown = self._show(index_dir)
        return {"epsilon_spent": shown["epsilon_spent"], "epsilon_budget": shown["epsilon_budget"],
                "delta": shown["delta"], "queries_charged": shown["queries_charged"],
                "queries_remaining": shown["queries_remaining"], "events_charged": shown["events_charged"],
                "filter_order": shown["filter_order"], "ledger": str(index_dir)}

    def _tuner(self):
        from pipeline.finetune import DPFineTuner

        return DPFineTuner(self.decoder, trainable=TRAINABLE, max_grad_norm=FT_CLIP, lr=FT_LR,
                           batch_size=self.ft_batch, epochs=self.ft_epochs)

    def _training_order(self, epsilon: float) -> float:
        """The RDP order at which the fine-tuning calibrated to ε alone is tightest: the scope's ``--alpha``."""
        from dp_accounting import rdp

        from accountant import ADJACENCY, DEFAULT_ORDERS
        from pipeline.finetune import calibrate_training_noise, training_event

        z = calibrate_training_noise(sample_rate=self.ft_q, steps=self.ft_steps, epsilon=epsilon, delta=DELTA)
        event = training_event(sample_rate=self.ft_q, noise_multiplier=z, steps=self.ft_steps)
        return float(rdp.RdpAccountant(list(DEFAULT_ORDERS), ADJACENCY).compose(event).get_epsilon_and_optimal_order(
            DELTA)[1])

    @staticmethod
    def _noise_for(ledger, sample_rate: float, steps: int, room: float) -> float:
        """The smallest noise multiplier z whose DP-SGD event costs at most ``room`` RDP at the scope's filter order
        α* (bisection on the ledger's own RDP of the event), checked with the ledger's dry run."""
        from accountant import event_rdp
        from pipeline.finetune import training_event

        alpha = ledger.status(SHARD).filter_order

        def event(z: float):
            return training_event(sample_rate=sample_rate, noise_multiplier=z, steps=steps)

        def cost(z: float) -> float:
            return float(event_rdp(event(z), (alpha,))[0])

        low, high = 1e-2, 1e3
        if room <= 0 or cost(high) > room:
            raise SystemExit(f"no DP-SGD run of {steps} steps at q={sample_rate:.4g} fits {room:.4g} RDP at order "
                             f"{alpha:g}; raise the epsilons or lower --ft-epochs")
        for _ in range(60):
            mid = math.sqrt(low * high)
            low, high = (low, mid) if cost(mid) <= room else (mid, high)
        z = high * (1 + 1e-9)
        while not ledger.fits(SHARD, event=event(z)):  # the ledger's filter has the last word
            z *= 1.001
        return z

    def _finetune(self, index_dir: Path, z: float) -> tuple[Path, dict]:
        """``dprdm finetune --sigma z``: charged to the scope once, before the first step; returns the adapter."""
        out = index_dir.parent / f"{index_dir.name}-adapter"
        shutil.rmtree(out, ignore_errors=True)
        result = _dprdm("finetune", "--index", str(index_dir), "--shard", SHARD, "--out", str(out), "--sigma", repr(z),
                        "--trainable", TRAINABLE, "--epochs", str(self.ft_epochs), "--batch-size", str(self.ft_batch),
                        "--max-grad-norm", repr(FT_CLIP), "--lr", repr(FT_LR), "--threads", "1")  # fmt: skip
        return out, result

    def _generate(self, pipe, lambda_: float, caller: str) -> dict:
        """One setting through ``pipe`` (charged when λ > 0); CDM decoders also report the private share of w."""
        images, labels, weights, started = [], [], [], time.perf_counter()
        for prompt, label, seed in self._queries():
            result = pipe(prompt, num_images=1, lambda_=lambda_, steps=STEPS, guidance_scale=GUIDANCE,
                          generator=torch.Generator().manual_seed(seed), caller=caller)
            images.append(result.images[0])
            labels.append(label)
            if getattr(pipe.decoder, "shard_weights", None):
                weights.append(pipe.decoder.shard_weights.get("private", float("nan")))
        row = self.score(images, labels, time.perf_counter() - started)
        if weights:
            row["private_weight"] = float(np.mean(weights))
        return row

    def _scope(self, name: str, epsilon: float, *, alpha: float | None = None, sigma: float | None = None) -> Path:
        """A fresh index copy whose scope has budget ε (σ planned for 1,000 queries at ε unless given)."""
        index_dir = self._copy_index(name)
        extra = ["--sigma", repr(sigma)] if sigma is not None else ["--queries", str(QUERIES)]
        extra += ["--alpha", repr(alpha)] if alpha is not None else []
        _dprdm("budget", "init", "--index", str(index_dir), "--epsilon", repr(epsilon), "--delta", repr(DELTA),
               *extra, "--k", str(COMBO_K), "--q", repr(COMBO_Q))  # fmt: skip
        return index_dir

    def _train_row(self, route: int, epsilon: float, training: dict | None, lambda_: float = 0.0, **extra) -> dict:
        row = dict(route=route, epsilon_target=epsilon, **{"lambda": lambda_}, k=None, q=None, sigma=None, ledger=None,
                   noise_multiplier=None, train_seconds=None, training_epsilon=None)
        if training is not None:
            row.update(noise_multiplier=training["noise_multiplier"], train_seconds=training["seconds"],
                       training_epsilon=training["epsilon"])
        row.update(extra)
        return row

    def paragon_decoder(self):
        """Route 7's decoder: the same adapter trained WITHOUT noise (and without conditioning noise) on the same
        records. Non-private: a benchmark reference, never written or released."""
        if self._paragon is None:
            from index import PrivateIndex
            from pipeline.finetune import images_to_tensor, read_shard_records

            records = read_shard_records(PrivateIndex.open(self.base_index), SHARD)
            started = time.perf_counter()
            outcome = self._tuner().fit(images_to_tensor(records.images, self.size), records.embeddings,
                                        noise_multiplier=0.0, condition_sigma=0.0, delta=DELTA)
            self._paragon = (outcome.decoder, {"noise_multiplier": 0.0, "epsilon": math.inf,
                                               "seconds": round(time.perf_counter() - started, 2)})
        return self._paragon

    def route_paragon(self) -> list[dict]:
        """Route 7 (ε = ∞): the noiseless adapter, prompt only (λ = 0)."""
        decoder, training = self.paragon_decoder()
        pipe = self._pipeline(self.open_dir, decoder=decoder)
        row = self._generate(pipe, 0.0, "bench_routes route 7")
        pipe.retriever.ledger.close()
        return [self._train_row(7, math.inf, training, epsilon_spent=math.inf, **row)]

    def route_adapter(self, epsilon: float) -> list[dict]:
        """Route 4: ``dprdm finetune`` at ε on a fresh scope (all of its budget, spent once), then prompt-only
        generations (λ = 0: post-processing of the adapter, free). ε = ∞ is route 7."""
        if math.isinf(epsilon):
            return []
        index_dir = self._scope(f"adapter-eps{epsilon:g}", epsilon, alpha=self._training_order(epsilon))
        ledger = self._ledger(index_dir)
        status = ledger.status(SHARD)
        z = self._noise_for(ledger, self.ft_q, self.ft_steps, status.rdp_budget - status.rdp_spent)
        ledger.close()
        adapter, training = self._finetune(index_dir, z)
        pipe = self._pipeline(index_dir, adapter=adapter)
        row = self._generate(pipe, 0.0, "bench_routes route 4")
        pipe.retriever.ledger.close()
        return [self._train_row(4, epsilon, training, sigma=self._show(index_dir)["sigma"],
                                **row, **self._ledger_fields(index_dir))]

    def route_adapter_retrieval(self, epsilon: float) -> list[dict]:
        """Route 5: one scope of budget ε; the retrieval σ is planned so that 1,000 queries alone would cost ε/2
        (``dprdm budget plan``), the fine-tuning takes all the RDP left at α* once those 1,000 queries are reserved;
        then the adapter decodes DP retrieval conditions (λ = COMBO_LAMBDA) charged to the same scope."""
        if math.isinf(epsilon):
            decoder, training = self.paragon_decoder()
            row = self._non_private_retrieval(COMBO_K, COMBO_Q, decoder=decoder, lambdas=(COMBO_LAMBDA,))[0]
            row.update(self._train_row(5, math.inf, training, **{"lambda": COMBO_LAMBDA}, k=COMBO_K, q=COMBO_Q,
                                       sigma=0.0))
            return [row]
        from accountant import Mechanism, event_rdp

        sigma = _dprdm("budget", "plan", "--epsilon", repr(epsilon / 2), "--delta", repr(DELTA), "--queries",
                       str(QUERIES), "--k", str(COMBO_K), "--q", repr(COMBO_Q))["sigma"]  # fmt: skip
        index_dir = self._scope(f"adapter-retrieval-eps{epsilon:g}", epsilon, sigma=sigma)
        ledger = self._ledger(index_dir)
        status = ledger.status(SHARD)
        per_query = float(event_rdp(Mechanism(COMBO_K, COMBO_Q, status.sigma).dp_event(), (status.filter_order,))[0])
        z = self._noise_for(ledger, self.ft_q, self.ft_steps, status.rdp_budget - status.rdp_spent - QUERIES * per_query)
        ledger.close()
        adapter, training = self._finetune(index_dir, z)
        after_training = self._show(index_dir)
        if after_training["queries_remaining"] < QUERIES:
            raise SystemExit(f"route 5 at epsilon {epsilon:g}: only {after_training['queries_remaining']} of the "
                             f"planned {QUERIES} queries fit after the training")
        pipe = self._pipeline(index_dir, adapter=adapter)
        row = self._generate(pipe, COMBO_LAMBDA, "bench_routes route 5")
        pipe.retriever.ledger.close()
        return [self._train_row(5, epsilon, training, COMBO_LAMBDA, k=COMBO_K, q=COMBO_Q, sigma=status.sigma,
                                epsilon_after_training=after_training["epsilon_spent"],
                                queries_remaining_after_training=after_training["queries_remaining"],
                                **row, **self._ledger_fields(index_dir))]

    def _classifier_data(self, index_dir: Path) -> tuple[torch.Tensor, torch.Tensor, dict[str, int], int]:
        """Route 6's classifier data: the public compartment's images (the public MNIST half the base decoder was
        trained on) and the private shard's current records, pooled with their compartment labels."""
        from index import PrivateIndex
        from pipeline.data import load_mnist_split
        from pipeline.finetune import images_to_tensor, read_shard_records

        public = images_to_tensor([_pil(x) for x in load_mnist_split().public_images], self.size)
        records = read_shard_records(PrivateIndex.open(index_dir), SHARD)
        private = images_to_tensor(records.images, self.size)
        labels = torch.cat([torch.zeros(len(public), dtype=torch.long), torch.ones(len(private), dtype=torch.long)])
        sizes = {PUBLIC_COMPARTMENT: len(public), "private": len(private)}
        return torch.cat([public, private]), labels, sizes, records.shard_records

    def route_cdm(self, epsilon: float) -> list[dict]:
        """Route 6: CDM over two compartments, the untouched public base decoder and the private DP adapter,
        composed with posterior weights w(x_t, t) from a ``ShardPosterior`` trained by DP-SGD on the pooled public +
        private images. One scope of budget ε: the adapter gets half of the RDP at α*, the classifier the rest,
        each charged before its first step (``dprdm finetune``; ``charge_posterior``)."""
        from pipeline.compartments import (
            ComposedDecoder,
            ShardPosterior,
            charge_posterior,
            decoder_alphas_cumprod,
            posterior_event,
        )

        index_dir = self.open_dir
        if math.isinf(epsilon):
            adapted, training = self.paragon_decoder()
            z_classifier, extra = 0.0, {"epsilon_spent": math.inf}
        else:
            index_dir = self._scope(f"cdm-eps{epsilon:g}", epsilon, alpha=self._training_order(epsilon / 2))
            ledger = self._ledger(index_dir)
            status = ledger.status(SHARD)
            z = self._noise_for(ledger, self.ft_q, self.ft_steps, (status.rdp_budget - status.rdp_spent) / 2)
            ledger.close()
            adapter, training = self._finetune(index_dir, z)
            from pipeline.finetune import load_adapter

            adapted = load_adapter(self.decoder, adapter)
        data, labels, sizes, shard_records = self._classifier_data(index_dir)
        batch = min(CLASSIFIER_BATCH, len(data) // 2)
        posterior = ShardPosterior(list(sizes), sizes, tuple(data.shape[1:]), hidden=CLASSIFIER_HIDDEN,
                                   num_timesteps=int(self.decoder.scheduler.config.num_train_timesteps))
        if not math.isinf(epsilon):
            ledger = self._ledger(index_dir)
            status = ledger.status(SHARD)
            z_classifier = self._noise_for(ledger, batch / len(data), self.classifier_steps,
                                           status.rdp_budget - status.rdp_spent)
            event = posterior_event(sample_rate=batch / len(data), noise_multiplier=z_classifier,
                                    steps=self.classifier_steps)
            charge_posterior(ledger, {SHARD: shard_records}, event, caller="bench_routes route 6")  # before training
            ledger.close()
        started = time.perf_counter()
        posterior.fit(data, labels, decoder_alphas_cumprod(self.decoder), noise_multiplier=z_classifier, max_grad_norm=CLASSIFIER_CLIP,
                      batch_size=batch, steps=self.classifier_steps, lr=CLASSIFIER_LR)
        classifier_seconds = time.perf_counter() - started
        composed = ComposedDecoder(self.decoder, {PUBLIC_COMPARTMENT: self.decoder, "private": adapted}, sizes,
                                   posterior=posterior, weights="posterior")
        pipe = self._pipeline(index_dir, decoder=composed)
        row = self._generate(pipe, 0.0, "bench_routes route 6")
        pipe.retriever.ledger.close()
        if not math.isinf(epsilon):
            extra = self._ledger_fields(index_dir)
        return [self._train_row(6, epsilon, training, classifier_noise_multiplier=z_classifier,
                                classifier_seconds=round(classifier_seconds, 2), **row, **extra)]


# -- reporting ------------------------------------------------------------------------------------------------------------
def _fmt(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float) and math.isinf(value):
        return "∞"
    return f"{value:.{digits}f}"


def _spent(value: float) -> str:
    return _eps(value) if value == 0.0 or math.isinf(value) else f"{value:.3f}"


def _unplain(value):
    """The inverse of :func:`_plain` for a routes JSON: "inf" -> inf."""
    if value == "inf":
        return math.inf
    if isinstance(value, dict):
        return {k: _unplain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unplain(v) for v in value]
    return value


def _plain(value):
    """JSON without Infinity / NaN: inf -> "inf", nan -> None."""
    if isinstance(value, float):
        return "inf" if math.isinf(value) else (None if math.isnan(value) else value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _cell(value, digits: int = 2) -> str:
    return "–" if value is None else _fmt(value, digits)


ROUTE_NOTES = {
    1: "ε = 0: reads no private record",
    2: "ε = 0: top-k mean of the PUBLIC MNIST embeddings",
    3: "ε per query (1,000 planned); ε spent after this setting's charged queries",
    4: "ε once, at training (all of the scope's budget); generations free (λ = 0)",
    5: "one scope: σ planned for 1,000 queries at ε/2, training takes the RDP left with 1,000 queries reserved",
    6: "one scope: half the RDP at α* to the adapter, the rest to the shard classifier; generations free",
    7: "no noise, no ledger: a benchmark reference, never released",
}


def routes_markdown(bench: Bench, rows: list[dict], reach: list[dict], settings: dict) -> str:
    lines = [
        "# Routes to a private domain (issue 16: routes 1–7)",
        "",
        f"Private domain: {bench.domain.description}; {len(bench.domain.train_images):,} private retrieval/training "
        f"images, {len(bench.domain.test_images):,} held-out private test images. Public models: the bundled tiny "
        f"encoder and decoder (trained on the PUBLIC MNIST half only; the decoder draws {bench.size}×{bench.size}). "
        f"{settings['repeats']} generation(s) per prompt × {len(bench.prompts)} prompt(s) (\"{bench.prompts[0]}\" …) "
        f"per setting, one image per query, {STEPS} DDIM steps, guidance {GUIDANCE}. δ = {DELTA:g}; the target ε is "
        f"for {QUERIES:,} generations. **ε spent** is what `dprdm budget show` reports after the setting "
        f"(route 3: after its {2 * settings['repeats'] * len(bench.prompts)} charged queries, both λ on one ledger; "
        f"route 5: training + {settings['repeats'] * len(bench.prompts)} queries). Run mode: "
        f"{'--quick' if settings['quick'] else 'full'}{settings.get('scale_note', '')}.",
        "",
        f"Fine-tuning (routes 4–7): `dprdm finetune --trainable {TRAINABLE} --epochs {bench.ft_epochs} --batch-size "
        f"{bench.ft_batch} --max-grad-norm {FT_CLIP:g} --lr {FT_LR:g} --sigma z` on the {bench.records:,} private "
        f"training records (q = {bench.ft_q:.4f}, {bench.ft_steps} DP-SGD steps); z is the smallest noise whose event "
        f"fits the scope's share at its filter order α* (the ledger's dry run has the last word). Route 6: "
        f"`ComposedDecoder` over two compartments, the untouched public base decoder (prior ∝ 2,500 public MNIST "
        f"images) and the private adapter (prior ∝ its records), posterior weights from a `ShardPosterior` trained "
        f"by DP-SGD on the pooled images ({bench.classifier_steps} steps, B = {CLASSIFIER_BATCH}, C = "
        f"{CLASSIFIER_CLIP:g}) and charged to the private scope with `charge_posterior` before its first step. "
        f"Route 5: retrieval k = {COMBO_K}, q = {COMBO_Q:g}, λ = {COMBO_LAMBDA:g}.",
        "",
        "Metrics against the held-out private test images: FD = Fréchet distance of encoder embeddings (↓; real "
        f"private training images vs test: {_fmt(bench.real_fd, 3)}); domain score = share of generations a "
        "public-vs-private classifier trained on real images calls private (↑; its balanced accuracy on held-out "
        f"real images: {_fmt(bench.domain_check)}); class accuracy = share of generations a classifier trained on "
        f"real private training images assigns to the prompt's class (↑; on the real test images: "
        f"{_fmt(bench.class_check)}); downstream accuracy = accuracy on the real private test images of a classifier "
        "trained ONLY on the generations, labelled with their prompt's class (↑; DP-LDM's protocol; the same "
        f"classifier trained on the real private training images: {_fmt(bench.class_check)}). All classifiers: "
        f"logistic regression on pixels at {bench.size}×{bench.size}.",
        "",
        "| route | ε target | ε spent (`budget show`) | λ | k | q | σ | z (training) | FD ↓ | domain score ↑ | "
        "class accuracy ↑ | downstream accuracy ↑ | train s | s / generation |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        sigma, z = r.get("sigma"), r.get("noise_multiplier")
        train = r.get("train_seconds")
        if train is not None and r.get("classifier_seconds") is not None:
            train = f"{train:.0f} + {r['classifier_seconds']:.0f}"
        elif train is not None:
            train = f"{train:.0f}"
        lines.append(
            f"| {r['route']}. {ROUTE_NAMES[r['route']]} | {_eps(r['epsilon_target'])} | "
            f"{_spent(r['epsilon_spent'])} | "
            f"{r['lambda']:g} | {r['k'] if r['k'] is not None else '–'} | {_cell(r['q'])} | "
            f"{'–' if sigma is None else f'{sigma:.4f}'} | {'–' if z is None else f'{z:.3f}'} | {_fmt(r['fd'], 3)} | "
            f"{_fmt(r['domain_score'])} | {_cell(r['class_accuracy'])} | {_cell(r.get('downstream_accuracy'))} | "
            f"{train or '–'} | {r['seconds_per_generation']:.3f} |"
        )
    lines += ["", "How each route spends ε:", ""]
    lines += [f"- {n}. {ROUTE_NAMES[n]}: {text}" for n, text in ROUTE_NOTES.items()]
    combined = [r for r in rows if r["route"] == 5 and r.get("queries_remaining_after_training") is not None]
    if combined:
        lines += ["", "Route 5's scope after the training alone (`budget show`): " + "; ".join(
            f"ε = {_eps(r['epsilon_target'])}: {r['epsilon_after_training']:.3f} spent, "
            f"{r['queries_remaining_after_training']:,} queries left" for r in combined) + "."]
    cdm = [r for r in rows if r.get("private_weight") is not None]
    if cdm:
        lines += ["", "Route 6, mean posterior weight of the private compartment over the sampling trajectory: " +
                  "; ".join(f"ε = {_eps(r['epsilon_target'])}: {r['private_weight']:.2f}" for r in cdm) + "."]
    lines += ["", "ε = 0 rows read no private record. ε = ∞ rows are the same mechanisms without noise (non-private, no "
              "ledger: the ledger refuses σ = 0 and z = 0); route 4 at ε = ∞ is route 7. Retrieval noise and DP-SGD "
              "noise come from the OS CSPRNG, so two runs differ within the spread of these small samples.", ""]
    if reach:
        lines += [reach_markdown(reach), ""]
    included = "".join(f" + {part['seconds']:.0f} s in the run of route(s) {', '.join(map(str, part['routes']))}"
                       for part in settings.get("included", []) if part["routes"])  # fmt: skip
    lines += [f"Index build of the private set (`dprdm index build`): {bench.build_seconds:.1f} s. "
              f"Total run time {settings['seconds']:.0f} s{included}, one thread per process."]
    if settings.get("failures"):
        lines += ["", "Settings that failed (no row):", ""] + [f"- {text}" for text in settings["failures"]]
    return "\n".join(lines) + "\n"


def _line(rows: list[dict], epsilons: list[float], key: str) -> list[float]:
    chosen = {r["epsilon_target"]: r[key] for r in rows}
    return [np.nan if chosen.get(e) is None else chosen[e] for e in epsilons]


def plot(rows: list[dict], path: Path, epsilons: list[float]) -> None:
    """Utility against ε, one line per route (routes 1–2 spend nothing: flat; route 3 at k = COMBO_K, q = COMBO_Q,
    λ = COMBO_LAMBDA, route 5's retrieval; route 4's ε = ∞ point is route 7, the non-private paragon)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    positions = np.arange(len(epsilons))
    panels = [("downstream_accuracy", "downstream accuracy ↑"), ("class_accuracy", "class accuracy ↑"),
              ("fd", "FD to private test ↓"), ("domain_score", "domain score ↑")]
    panels = [(key, title) for key, title in panels if all(r.get(key) is not None for r in rows)]
    retrieval = [r for r in rows if r["route"] == 3]
    setting = next(((r["k"], r["q"]) for r in retrieval if (r["k"], r["q"]) == (COMBO_K, COMBO_Q)),
                   (retrieval[0]["k"], retrieval[0]["q"]) if retrieval else None)
    paragon = [r for r in rows if r["route"] == 7]
    lines = {
        3: [r for r in retrieval if (r["k"], r["q"]) == setting and r["lambda"] == COMBO_LAMBDA],
        4: [r for r in rows if r["route"] == 4] + paragon,
        5: [r for r in rows if r["route"] == 5],
        6: [r for r in rows if r["route"] == 6],
    }
    figure, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.6), squeeze=False)
    for axis, (key, title) in zip(axes[0], panels, strict=True):
        for r in (r for r in rows if r["route"] in (1, 2) and r["lambda"] in (0.0, COMBO_LAMBDA)):
            axis.axhline(r[key], linestyle="--", color="grey" if r["route"] == 1 else "tab:brown", linewidth=1,
                         label=f"{r['route']}. {ROUTE_NAMES[r['route']]}" + (f" λ={r['lambda']:g}" if r["route"] == 2 else ""))
        for r in paragon:
            axis.axhline(r[key], linestyle=":", color="black", linewidth=1, label=f"7. {ROUTE_NAMES[7]} (ε = ∞)")
        for route, chosen in lines.items():
            if chosen:
                label = f"{route}. {ROUTE_NAMES[route]}" + (f" k={setting[0]} q={setting[1]:g} λ={COMBO_LAMBDA:g}"
                                                            if route == 3 else "")
                axis.plot(positions, _line(chosen, epsilons, key), marker="o", label=label)
        axis.set_xticks(positions, [_eps(e) for e in epsilons])
        axis.set_xlabel(f"ε target (δ = {DELTA:g}, {QUERIES:,} generations)")
        axis.set_title(title)
    axes[0][-1].legend(fontsize=6)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


# -- entry point -------------------------------------------------------------------------------------------------------
def _parse_epsilons(text: str) -> list[float]:
    values = []
    for part in text.split(","):
        part = part.strip().lower()
        value = math.inf if part in ("inf", "∞") else float(part)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"epsilon must be > 0 or inf; found {part!r}")
        values.append(value)
    return values


def _parse_sweep(text: str) -> list[tuple[int, float]]:
    return [(int(k), float(q)) for k, q in (pair.split(":") for pair in text.split(","))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--private-source", type=Path, metavar="IMAGE_FOLDER",
                        help="any ImageFolder (subfolder = label); default: the bundled UCI digits export")
    parser.add_argument("--domain", choices=sorted(DOMAIN_TEXT), default="uci-digits",
                        help="bundled private domain when there is no --private-source (outputs of mnist-thick are "
                        "named routes_mnist-thick.*)")
    parser.add_argument("--epsilons", type=_parse_epsilons, default=[1.0, 3.0, 10.0, math.inf], metavar="LIST",
                        help="target epsilons for 1,000 generations, e.g. 1,3,10,inf")
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_REPEATS} generations per prompt, sweep {QUICK_SWEEP}, {QUICK_FT_EPOCHS} "
                        f"fine-tuning epoch(s), {QUICK_CLASSIFIER_STEPS} classifier steps")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", metavar="DIR")
    parser.add_argument("--domains-only", action="store_true", help="only the encoder's reach -> routes_domains.md")
    parser.add_argument("--sweep", type=_parse_sweep, metavar="K:Q,...", help="(k, q) pairs of route 3")
    parser.add_argument("--repeats", type=int, metavar="N", help="generations per prompt and setting")
    parser.add_argument("--limit", type=int, metavar="N", help="at most N train and N test images per class")
    parser.add_argument("--template", default=TEMPLATE, help="prompt per class label (default %(default)r)")
    parser.add_argument("--prompt", default="a handwritten digit", help="the prompt of an unlabelled folder")
    parser.add_argument("--no-reach", action="store_true", help="leave the encoder-reach table out of routes.md")
    parser.add_argument("--work", type=Path, metavar="DIR", help="scratch folder (default: a temporary one, removed)")
    parser.add_argument("--ft-epochs", type=int, metavar="N",
                        help=f"fine-tuning epochs of routes 4-7 (default {FT_EPOCHS}; --quick {QUICK_FT_EPOCHS})")
    parser.add_argument("--classifier-steps", type=int, metavar="N",
                        help=f"DP-SGD steps of route 6's shard classifier (default {CLASSIFIER_STEPS}; --quick "
                        f"{QUICK_CLASSIFIER_STEPS})")
    parser.add_argument("--routes", default="1,2,3,4,5,6,7", metavar="LIST",
                        help="routes to run (default all; 'none' with --include only re-renders)")
    parser.add_argument("--include", type=Path, action="append", default=[], metavar="JSON",
                        help="add the rows of another run's routes JSON with the same settings (e.g. a parallel "
                        "'--routes 3' run) to this table; repeatable")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if args.domains_only:
        from index import load_encoder

        reach = encoder_reach(load_encoder(num_threads=1))
        text = reach_markdown(reach) + f"\n\nRun time {time.perf_counter() - started:.0f} s on one thread " \
            "(`python benchmarks/bench_routes.py --domains-only`).\n"
        (out / "routes_domains.md").write_text(text)
        (out / "routes_domains.json").write_text(json.dumps(_plain(reach), indent=1) + "\n")
        print(text)
        return 0

    repeats = args.repeats or (QUICK_REPEATS if args.quick else REPEATS)
    sweep = args.sweep or list(QUICK_SWEEP if args.quick else SWEEP)
    scratch = args.work or Path(tempfile.mkdtemp(prefix="dprdm-routes-"))
    try:
        domain = prepare_domain(scratch, args.private_source, args.limit, args.domain)
        stem = "routes" if args.private_source is not None or args.domain == "uci-digits" else f"routes_{args.domain}"
        ft_epochs = args.ft_epochs or (QUICK_FT_EPOCHS if args.quick else FT_EPOCHS)
        classifier_steps = args.classifier_steps or (QUICK_CLASSIFIER_STEPS if args.quick else CLASSIFIER_STEPS)
        bench = Bench(domain, scratch, repeats=repeats, prompt=args.prompt, template=args.template,
                      ft_epochs=ft_epochs, classifier_steps=classifier_steps)
        routes = set() if args.routes == "none" else {int(r) for r in args.routes.split(",")}
        rows: list[dict] = []
        failures: list[str] = []
        reach = [] if args.no_reach else encoder_reach(bench.encoder)
        settings = {"quick": args.quick, "repeats": repeats, "sweep": sweep, "epsilons": args.epsilons,
                    "ft_epochs": ft_epochs, "ft_batch": bench.ft_batch, "ft_steps": bench.ft_steps,
                    "ft_sample_rate": bench.ft_q, "classifier_steps": bench.classifier_steps,
                    "limit": args.limit, "routes": sorted(routes), "included": []}
        if not args.quick and (repeats, [tuple(p) for p in sweep]) != (REPEATS, list(SWEEP)):
            settings["scale_note"] = (f" (reduced: {repeats} generations per prompt instead of {REPEATS}, route 3 "
                                      f"sweep {', '.join(f'({k}, {q:g})' for k, q in sweep)})")
        for path in args.include:
            other = _unplain(json.loads(path.read_text()))
            for key in ("repeats", "limit"):
                if other["settings"][key] != settings[key]:
                    raise SystemExit(f"--include {path}: {key} {other['settings'][key]} differs from this run's "
                                     f"{settings[key]}; include runs made with the same settings")
            rows.extend(other["rows"])
            reach = reach or other.get("reach") or []
            failures.extend(other["settings"].get("failures", []))
            settings["included"].append({"file": str(path), "routes": sorted({r["route"] for r in other["rows"]}),
                                         "seconds": other["settings"]["seconds"]})

        def write() -> None:
            """The table, JSON and plot of every row so far (rewritten after each setting: a long run that is
            stopped early still leaves its finished rows)."""
            ordered = sorted(rows, key=lambda r: (r["route"], r["epsilon_target"], r["k"] or 0, r["q"] or 0,
                                                  r["lambda"]))
            settings["seconds"] = time.perf_counter() - started
            settings["failures"] = failures
            (out / f"{stem}.md").write_text(routes_markdown(bench, ordered, reach, settings))
            payload = {"settings": settings, "domain": domain.description, "delta": DELTA, "queries": QUERIES,
                       "references": {"real_fd": bench.real_fd, "domain_classifier": bench.domain_check,
                                      "class_classifier": bench.class_check},
                       "rows": ordered, "reach": reach}
            (out / f"{stem}.json").write_text(json.dumps(_plain(payload), indent=1, default=str) + "\n")
            if ordered:
                plot(ordered, out / f"{stem}.png", args.epsilons)

        def run(label: str, produce) -> None:
            try:
                new = produce()
            except (Exception, SystemExit) as err:  # one failed setting must not lose a long run's other rows
                failures.append(f"{label}: {type(err).__name__}: {' '.join(str(err).split())[:300]}")
                print(f"{label}: FAILED {failures[-1]}", file=sys.stderr, flush=True)
                new = []
            for row in new:
                print(f"{label}: lambda={row['lambda']:g} eps_spent={row['epsilon_spent']} fd={row['fd']:.3f} "
                      f"domain={row['domain_score']:.2f} class={row['class_accuracy']} "
                      f"downstream={row.get('downstream_accuracy')} train_s={row.get('train_seconds')} "
                      f"({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
            rows.extend(new)
            write()

        # the routes that spend nothing first, then the fine-tuning routes, then the retrieval sweep
        if 1 in routes:
            run("route 1", bench.route_prompt_only)
        if 2 in routes:
            run("route 2", bench.route_public_retrieval)
        if 7 in routes:
            run("route 7", bench.route_paragon)
        for route, method in ((4, bench.route_adapter), (5, bench.route_adapter_retrieval), (6, bench.route_cdm)):
            for epsilon in args.epsilons if route in routes else []:
                run(f"route {route} eps={_eps(epsilon)}", lambda e=epsilon, m=method: m(e))
        for epsilon in args.epsilons if 3 in routes else []:
            for k, q in sweep:
                run(f"route 3 eps={_eps(epsilon)} k={k} q={q:g}",
                    lambda e=epsilon, k=k, q=q: bench.route_private_retrieval(e, k, q))
        write()
        bench.pipe.retriever.ledger.close()
    finally:
        if args.work is None:
            shutil.rmtree(scratch, ignore_errors=True)
    print(f"wrote {out / (stem + '.md')} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
