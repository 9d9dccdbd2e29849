"""Routes to a private domain, side by side at the same ε (issue 16, first part: routes 1–3 and the encoder's reach).

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
4.–7. TODO(#16): DP fine-tuned adapter, adapter + private retrieval, CDM composition, non-private paragon — built
   with the DP fine-tuning and compartments work; see ``PENDING_ROUTES``.

Metrics, against the held-out private test images: Fréchet distance of encoder embeddings (lower is better);
domain score = fraction of generations that a public-vs-private classifier trained on REAL images assigns to the
private domain; class accuracy = fraction of generations that a classifier trained on REAL private training images
assigns to the prompt's class; wall time per generation. Both classifiers are logistic regressions on pixels at the
decoder's resolution (real images are resized to it first, so resolution cannot give a generation away); their
accuracy on held-out real images is printed as the ceiling.

``--domains-only`` writes the encoder's reach (``routes_domains.md``): linear probe trained on the public MNIST
embeddings, text→image P@10 ("a handwritten digit N"), and a public-vs-domain classifier, for unframed UCI,
framed UCI, thick MNIST and the MNIST private half.

Run: ``nice -n 10 python benchmarks/bench_routes.py --quick`` (a few minutes on one thread);
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
QUICK_SWEEP = ((10, 0.1), (20, 0.2))
PUBLIC_K = 20
STEPS, GUIDANCE = 15, 2.0
REPEATS, QUICK_REPEATS = 20, 5
TEMPLATE = "a handwritten digit {label}"
SHARD = "default"
PENDING_ROUTES = {
    4: "DP fine-tuned adapter (DP-LDM: attention + conditioning), epsilon spent once at training",
    5: "adapter + private retrieval, epsilon split between them (one ledger scope, combined epsilon <= target)",
    6: "CDM composition of the public decoder and the private adapter",
    7: "non-private paragon (adapter fine-tuned without noise)",
}
ROUTE_NAMES = {1: "prompt only", 2: "public retrieval", 3: "DP-RDM private retrieval", **PENDING_ROUTES}


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

    def __init__(self, domain: Domain, work: Path, *, repeats: int, prompt: str, template: str) -> None:
        from pipeline.data import load_mnist_split

        self.domain, self.work, self.repeats = domain, work, repeats
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
        test_pixels = np.stack([self.pixels(x) for x in domain.test_images])
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
        if self.class_classifier is not None:
            row["class_accuracy"] = float(np.mean(self.class_classifier.predict(pixels) == np.array(labels)))
        return row

    def _queries(self):
        """(prompt, label, seed) of every generation of a setting: ``repeats`` per prompt."""
        for p, (prompt, label) in enumerate(zip(self.prompts, self.prompt_labels, strict=True)):
            for r in range(self.repeats):
                yield prompt, label, p * 1000 + r

    def _decode(self, condition: np.ndarray, seed: int) -> Image.Image:
        return self.decoder.generate(torch.from_numpy(np.asarray(condition, np.float32)[None, :]), steps=STEPS,
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
        rows = []
        for lambda_ in LAMBDAS:
            images, labels, started = [], [], time.perf_counter()
            for prompt, label, seed in self._queries():
                result = pipe(prompt, num_images=1, lambda_=lambda_, steps=STEPS, guidance_scale=GUIDANCE,
                              generator=torch.Generator().manual_seed(seed), caller="bench_routes route 3")
                images.append(result.images[0])
                labels.append(label)
            rows.append(dict(route=3, epsilon_target=epsilon, **{"lambda": lambda_}, k=k, q=q, sigma=sigma,
                             **self.score(images, labels, time.perf_counter() - started)))
        pipe.retriever.ledger.close()
        shown = _dprdm("budget", "show", "--index", str(index_dir))["scopes"][SHARD]  # what the user would read
        for row in rows:  # one ledger for both λ: the spent ε is the scope's after the whole setting
            row.update(epsilon_spent=shown["epsilon_spent"], epsilon_budget=shown["epsilon_budget"],
                       delta=shown["delta"], queries_charged=shown["queries_charged"], ledger=str(index_dir))
        return rows

    def _non_private_retrieval(self, k: int, q: float) -> list[dict]:
        """ε = ∞: the mechanism without noise on the index rows (no ledger: the ledger refuses σ = 0)."""
        from index import PrivateIndex
        from pipeline.mechanism import aggregate, poisson_subsample, secure_rng

        embeddings = np.asarray(PrivateIndex.open(self.base_index).shard(SHARD).embeddings, dtype=np.float32)
        rng, rows = secure_rng(), []
        for lambda_ in LAMBDAS:
            images, labels, started = [], [], time.perf_counter()
            for prompt, label, seed in self._queries():
                query = self.encoder.encode_text([prompt])[0].astype(np.float64)
                query = (query / np.linalg.norm(query)).astype(np.float32)
                kept = poisson_subsample(len(embeddings), q, rng)  # same subsample and top-k, no noise
                best = kept[np.argsort(-(embeddings[kept] @ query), kind="stable")[:k]]
                mean = aggregate(embeddings[best], k)
                images.append(self._decode(lambda_ * mean + (1.0 - lambda_) * query, seed))
                labels.append(label)
            rows.append(dict(route=3, epsilon_target=math.inf, epsilon_spent=math.inf, **{"lambda": lambda_}, k=k, q=q,
                             sigma=0.0, ledger=None, **self.score(images, labels, time.perf_counter() - started)))
        return rows

    # TODO(#16): route 4, DP fine-tuned adapter (DP-LDM): train with the finetune subpackage at ε (spent once), load
    #   with pipeline.finetune.load_adapter, generate with λ = 0; the ε in the table from the training's ledger scope.
    # TODO(#16): route 5, adapter + private retrieval: one ledger scope, ε split between training and queries, the
    #   combined ε <= target as `budget show` reports it.
    # TODO(#16): route 6, CDM composition of the public decoder and the private adapter (compartments work).
    # TODO(#16): route 7, non-private paragon: the adapter fine-tuned without noise (ε = ∞).
    def pending_route(self, route: int) -> list[dict]:
        """Routes 4–7 are not built yet (TODO(#16)): no rows, listed in the report as pending."""
        return []


# -- reporting ------------------------------------------------------------------------------------------------------------
def _fmt(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float) and math.isinf(value):
        return "∞"
    return f"{value:.{digits}f}"


def _spent(value: float) -> str:
    return _eps(value) if value == 0.0 or math.isinf(value) else f"{value:.3f}"


def _plain(value):
    """JSON without Infinity / NaN: inf -> "inf", nan -> None."""
    if isinstance(value, float):
        return "inf" if math.isinf(value) else (None if math.isnan(value) else value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def routes_markdown(bench: Bench, rows: list[dict], reach: list[dict], settings: dict) -> str:
    lines = [
        "# Routes to a private domain (issue 16, routes 1–3)",
        "",
        f"Private domain: {bench.domain.description}; {len(bench.domain.train_images):,} private retrieval images, "
        f"{len(bench.domain.test_images):,} held-out private test images. Public models: the bundled tiny encoder "
        f"and decoder (trained on the PUBLIC MNIST half only; the decoder draws {bench.size}×{bench.size}). "
        f"{settings['repeats']} generation(s) per prompt × {len(bench.prompts)} prompt(s) (\"{bench.prompts[0]}\" …) "
        f"per setting, one image per query, {STEPS} DDIM steps, guidance {GUIDANCE}. "
        f"δ = {DELTA:g}; the target ε is for {QUERIES:,} generations (σ calibrated by `dprdm budget init --queries "
        f"{QUERIES}`); **ε spent** is what `dprdm budget show` reports after the setting's "
        f"{2 * settings['repeats'] * len(bench.prompts)} charged queries (both λ on one ledger). "
        f"Run mode: {'--quick' if settings['quick'] else 'full'}.",
        "",
        "Metrics against the held-out private test images: FD = Fréchet distance of encoder embeddings (↓; real "
        f"private training images vs test: {_fmt(bench.real_fd, 3)}); domain score = share of generations a "
        "public-vs-private classifier trained on real images calls private (↑; its balanced accuracy on held-out "
        f"real images: {_fmt(bench.domain_check)}); class accuracy = share of generations a classifier trained on "
        f"real private training images assigns to the prompt's class (↑; on the real test images: "
        f"{_fmt(bench.class_check)}). Both classifiers: logistic regression on pixels at {bench.size}×{bench.size}.",
        "",
        "| route | ε target | ε spent (`budget show`) | λ | k | q | σ | FD ↓ | domain score ↑ | class accuracy ↑ | s / generation |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        sigma = r.get("sigma")
        lines.append(
            f"| {r['route']}. {ROUTE_NAMES[r['route']]} | {_eps(r['epsilon_target'])} | "
            f"{_spent(r['epsilon_spent'])} | "
            f"{r['lambda']:g} | {r['k'] if r['k'] is not None else '–'} | {_fmt(r['q'])} | "
            f"{'–' if sigma is None else f'{sigma:.4f}'} | {_fmt(r['fd'], 3)} | {_fmt(r['domain_score'])} | "
            f"{_fmt(r['class_accuracy'])} | {r['seconds_per_generation']:.3f} |"
        )
    lines += ["", "Not built yet (TODO(#16), they need the DP fine-tuning and compartments work):", ""]
    lines += [f"- route {n}: {text}" for n, text in PENDING_ROUTES.items()]
    lines += ["", "ε = 0 rows read no private record. ε = ∞ rows are the same retrieval without noise (non-private, no "
              "ledger: the ledger refuses σ = 0). Retrieval noise comes from the OS CSPRNG, so two runs differ within "
              "the spread of these small samples.", ""]
    if reach:
        lines += [reach_markdown(reach), ""]
    lines += [f"Index build of the private set (`dprdm index build`): {bench.build_seconds:.1f} s. "
              f"Total run time {settings['seconds']:.0f} s on one thread."]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, epsilons: list[float]) -> None:
    """FD, class accuracy and domain score against ε, one line per route / λ (routes 1–2 spend nothing: flat)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    positions = np.arange(len(epsilons))
    panels = [("fd", "FD to private test ↓"), ("class_accuracy", "class accuracy ↑"), ("domain_score", "domain score ↑")]
    panels = [(key, title) for key, title in panels if all(r[key] is not None for r in rows)]
    figure, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.4))
    for axis, (key, title) in zip(axes, panels, strict=True):
        for r in (r for r in rows if r["route"] in (1, 2)):
            axis.axhline(r[key], linestyle="--", color="grey" if r["route"] == 1 else "tab:green", linewidth=1,
                         label=f"{r['route']}. {ROUTE_NAMES[r['route']]} λ={r['lambda']:g}")
        private = [r for r in rows if r["route"] == 3]
        for k, q, lambda_ in sorted({(r["k"], r["q"], r["lambda"]) for r in private}):
            chosen = {r["epsilon_target"]: r[key] for r in private if (r["k"], r["q"], r["lambda"]) == (k, q, lambda_)}
            axis.plot(positions, [chosen.get(e, np.nan) for e in epsilons], marker="o",
                      label=f"3. DP-RDM k={k} q={q:g} λ={lambda_:g}")
        axis.set_xticks(positions, [_eps(e) for e in epsilons])
        axis.set_xlabel(f"ε target (δ = {DELTA:g}, {QUERIES:,} generations)")
        axis.set_title(title)
    axes[-1].legend(fontsize=6)
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
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_REPEATS} generations per prompt, sweep {QUICK_SWEEP}")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", metavar="DIR")
    parser.add_argument("--domains-only", action="store_true", help="only the encoder's reach -> routes_domains.md")
    parser.add_argument("--sweep", type=_parse_sweep, metavar="K:Q,...", help="(k, q) pairs of route 3")
    parser.add_argument("--repeats", type=int, metavar="N", help="generations per prompt and setting")
    parser.add_argument("--limit", type=int, metavar="N", help="at most N train and N test images per class")
    parser.add_argument("--template", default=TEMPLATE, help="prompt per class label (default %(default)r)")
    parser.add_argument("--prompt", default="a handwritten digit", help="the prompt of an unlabelled folder")
    parser.add_argument("--no-reach", action="store_true", help="leave the encoder-reach table out of routes.md")
    parser.add_argument("--work", type=Path, metavar="DIR", help="scratch folder (default: a temporary one, removed)")
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
        bench = Bench(domain, scratch, repeats=repeats, prompt=args.prompt, template=args.template)
        rows: list[dict] = []

        def run(label: str, produce) -> None:
            new = produce()
            for row in new:
                print(f"{label}: lambda={row['lambda']:g} eps_spent={row['epsilon_spent']} fd={row['fd']:.3f} "
                      f"domain={row['domain_score']:.2f} class={row['class_accuracy']}", file=sys.stderr, flush=True)
            rows.extend(new)

        run("route 1", bench.route_prompt_only)
        run("route 2", bench.route_public_retrieval)
        for epsilon in args.epsilons:
            for k, q in sweep:
                run(f"route 3 eps={_eps(epsilon)} k={k} q={q:g}",
                    lambda e=epsilon, k=k, q=q: bench.route_private_retrieval(e, k, q))
        for route in PENDING_ROUTES:
            run(f"route {route} (TODO #16)", lambda r=route: bench.pending_route(r))
        reach = [] if args.no_reach else encoder_reach(bench.encoder)
        settings = {"quick": args.quick, "repeats": repeats, "sweep": sweep, "epsilons": args.epsilons,
                    "seconds": time.perf_counter() - started}
        (out / f"{stem}.md").write_text(routes_markdown(bench, rows, reach, settings))
        payload = {"settings": settings, "domain": domain.description, "delta": DELTA, "queries": QUERIES,
                   "references": {"real_fd": bench.real_fd, "domain_classifier": bench.domain_check,
                                  "class_classifier": bench.class_check},
                   "pending_routes": {str(k): v for k, v in PENDING_ROUTES.items()}, "rows": rows, "reach": reach}
        (out / f"{stem}.json").write_text(json.dumps(_plain(payload), indent=1, default=str) + "\n")
        plot(rows, out / f"{stem}.png", args.epsilons)
        bench.pipe.retriever.ledger.close()
    finally:
        if args.work is None:
            shutil.rmtree(scratch, ignore_errors=True)
    print(f"wrote {out / (stem + '.md')} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
