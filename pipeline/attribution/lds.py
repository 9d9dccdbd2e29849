"""Linear datamodeling score (LDS), exactly D-TRAK's protocol (``shared/notes/seeds-anchors.md`` §C.2).

1. S random subsets of the training set of size α·N (α = 0.5), stratified by label when labels exist,
   ``train_test_split(train_size=α, stratify=labels, random_state=42 + s)``.
2. Each subset retrained with every seed in ``seeds`` (the caller's ``retrain(records, seed)``, same recipe as the
   full model).
3. Ground truth: each query's diffusion loss under each retrained model, averaged over a uniform grid of many
   timesteps and several fixed noise seeds (a noise stream separate from the features'), then over the training
   seeds: margins[s, j].
4. Prediction: preds[s, j] = Σ_{i∈S_s} −τ(z_j)_i (``lds_mask_array @ (-scores).T``).
5. LDS = mean over queries j of Spearman ρ(preds[:, j], margins[:, j]).

λ is swept; the report gives the best λ on all subsets (the repositories' optimistic choice) and the held-out λ
(chosen on the even subsets, LDS measured on the odd ones).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.stats import rankdata

from pipeline.attribution.features import METHODS, base_method, featurize, noise_for
from pipeline.attribution.kernel import finish_scores, kernel_scores
from pipeline.attribution.model import AttributionModel, RecordSet
from pipeline.errors import PipelineInputError

GT_STREAM = "lds-ground-truth"  # never used by featurize: the ground-truth noise is decoupled from the features'


@torch.no_grad()
def ground_truth_losses(model: AttributionModel, queries: RecordSet, *, timesteps: int = 100,
                        noise_seeds: Sequence[int] = (0, 1, 2), batch_size: int = 512) -> np.ndarray:
    """Each query's diffusion loss (1/d)‖ε_θ(x_t, t) − ε‖², averaged over ``timesteps`` uniform t × noise seeds.

    Returns:
        (Q,) float64.
    """
    grid = model.timestep_grid(timesteps)
    shape = tuple(queries.images.shape[1:])
    total = np.zeros(len(queries))
    for seed in noise_seeds:
        for t in grid:
            noise = noise_for(queries.ids, int(t), shape, stream=GT_STREAM, seed=seed)
            for lo in range(0, len(queries), batch_size):
                x, e = queries.images[lo:lo + batch_size], noise[lo:lo + batch_size]
                tt = torch.full((len(x),), int(t), dtype=torch.long)
                out = model.eps(model.add_noise(x, e, tt), tt, queries.conditions[lo:lo + batch_size])
                total[lo:lo + len(x)] += (out - e).pow(2).flatten(1).mean(1).double().numpy()
    return total / (len(grid) * len(noise_seeds))


def _spearman_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman ρ between a[..., :, j] and b[:, j] along the subset axis, for every query j (NaN if constant)."""
    ra = rankdata(a, axis=-2)
    rb = rankdata(b, axis=0)
    ra = ra - ra.mean(axis=-2, keepdims=True)
    rb = rb - rb.mean(axis=0, keepdims=True)
    num = (ra * rb).sum(axis=-2)
    den = np.sqrt((ra**2).sum(axis=-2) * (rb**2).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def lds(scores: np.ndarray, masks: np.ndarray, margins: np.ndarray) -> np.ndarray | float:
    """LDS of attribution scores.

    Args:
        scores: (Q, N) or (L, Q, N) attribution scores (after the method's post-processing).
        masks: (S, N) bool, subset membership.
        margins: (S, Q) ground-truth query losses of the models retrained on each subset.

    Returns:
        The mean over queries of the per-query Spearman ρ; an (L,) array for stacked scores.
    """
    sc = np.asarray(scores, dtype=np.float64)
    preds = np.einsum("sn,...qn->...sq", masks.astype(np.float64), -sc)  # (…, S, Q)
    rho = _spearman_columns(preds, np.asarray(margins, dtype=np.float64))
    out = np.nanmean(rho, axis=-1)
    return float(out) if np.ndim(out) == 0 else out


def lds_subsets(n: int, *, subsets: int, alpha: float = 0.5, labels: np.ndarray | None = None,
                seed: int = 42) -> np.ndarray:
    """(S, N) bool masks: ``train_test_split(train_size=alpha, stratify=labels, random_state=seed + s)``.

    Stratified when labels are given and every class has at least 2 records; otherwise plain random subsets.
    """
    from sklearn.model_selection import train_test_split

    if labels is not None and np.unique(labels, return_counts=True)[1].min() < 2:
        labels = None
    masks = np.zeros((subsets, n), dtype=bool)
    for s in range(subsets):
        chosen, _ = train_test_split(np.arange(n), train_size=alpha, stratify=labels, random_state=seed + s)
        masks[s, chosen] = True
    return masks


def default_lambdas(phi: np.ndarray) -> np.ndarray:
    """λ grid: 10^{−4 … 3} (half decades) × the mean squared row norm of Φ (absolute values are reported)."""
    scale = float(np.mean(np.sum(np.asarray(phi, dtype=np.float64) ** 2, axis=1)))
    return scale * 10.0 ** np.arange(-4.0, 3.01, 0.5)


@dataclass(frozen=True)
class LDSRow:
    """LDS of one method at one K on one query set."""

    method: str
    timesteps: int
    queries: str
    lds_best: float
    lambda_best: float
    lds_heldout: float
    lambda_heldout: float
    seconds_per_record: float
    seconds_per_query: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class LDSReport:
    """Every row, the settings, the random-score baseline per query set, and the retraining data for reuse."""

    rows: list[LDSRow]
    settings: dict
    random_lds: dict[str, float]
    masks: np.ndarray = field(repr=False)
    margins: dict[str, np.ndarray] = field(repr=False)
    retrain_seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"settings": self.settings, "random_lds": self.random_lds, "retrain_seconds": self.retrain_seconds,
                "rows": [r.to_dict() for r in self.rows]}

    def get(self, method: str, timesteps: int, queries: str) -> LDSRow:
        for r in self.rows:
            if (r.method, r.timesteps, r.queries) == (method, timesteps, queries):
                return r
        raise KeyError((method, timesteps, queries))

    def to_markdown(self) -> str:
        """A table: method × K columns per query set, each cell ``best-λ / held-out-λ``."""
        names = list(dict.fromkeys(r.queries for r in self.rows))
        ks = sorted({r.timesteps for r in self.rows})
        methods = list(dict.fromkeys(r.method for r in self.rows))
        head = "| method | " + " | ".join(f"{q} K={k}" for k in ks for q in names) + " |"
        lines = [head, "|" + "---|" * (1 + len(ks) * len(names))]
        for m in methods:
            cells = []
            for k in ks:
                for q in names:
                    r = self.get(m, k, q)
                    cells.append(f"{r.lds_best:.3f} / {r.lds_heldout:.3f}")
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        rand = ", ".join(f"{q}: {v:.3f}" for q, v in self.random_lds.items())
        lines.append(f"\nrandom scores: {rand}")
        return "\n".join(lines)


def evaluate_lds(train_set: RecordSet, queries: RecordSet | Mapping[str, RecordSet], *,
                 model: AttributionModel,
                 retrain: Callable[[RecordSet, int], AttributionModel],
                 subsets: int = 64, seeds: int | Sequence[int] = 2, alpha: float = 0.5,
                 methods: Sequence[str] = METHODS, timesteps: Sequence[int] = (10, 100),
                 projection_dim: int = 2048, lambdas: Sequence[float] | None = None,
                 gt_timesteps: int = 1000, gt_noise_seeds: Sequence[int] = (0, 1, 2),
                 feature_seed: int = 0, subset_seed: int = 42, cache=None,
                 progress: Callable[[str], None] | None = None) -> LDSReport:
    """LDS of each method × K × query set, by D-TRAK's protocol (module docstring).

    Args:
        train_set: the N training records of ``model``.
        queries: a query set, or several by name (e.g. ``{"val": ..., "gen": ...}``).
        model: the model trained on all of ``train_set`` (features are taken on it).
        retrain: ``retrain(records, seed) -> AttributionModel``, the full model's recipe on a subset.
        subsets: S.
        seeds: training seeds per subset (a count, or the seeds themselves).
        alpha: subset fraction.
        methods: any of :data:`METHODS`.
        timesteps: the K values.
        projection_dim: P.
        lambdas: the λ grid; None = :func:`default_lambdas` per feature set.
        gt_timesteps: timesteps (uniform grid) of the ground-truth loss; D-TRAK uses all 1000.
        gt_noise_seeds: noise seeds of the ground-truth loss.
        feature_seed: seed of the feature noise and projection.
        subset_seed: subsets use ``random_state = subset_seed + s``.
        cache: a ``FeatureCache`` for the training features, or None.
        progress: called with a short status line.

    Returns:
        An :class:`LDSReport`.
    """
    if subsets < 4:
        raise PipelineInputError(f"subsets must be >= 4 (held-out λ needs even and odd subsets); found {subsets}")
    say = progress or (lambda _msg: None)
    qsets = dict(queries) if isinstance(queries, Mapping) else {"val": queries}
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    masks = lds_subsets(len(train_set), subsets=subsets, alpha=alpha, labels=train_set.labels, seed=subset_seed)
    margins = {name: np.zeros((subsets, len(q))) for name, q in qsets.items()}
    start = time.perf_counter()
    for s in range(subsets):
        for seed in seed_list:
            sub_model = retrain(train_set.subset(np.flatnonzero(masks[s])), seed)
            for name, q in qsets.items():
                margins[name][s] += ground_truth_losses(sub_model, q, timesteps=gt_timesteps,
                                                        noise_seeds=gt_noise_seeds) / len(seed_list)
        say(f"retrained subset {s + 1}/{subsets}")
    retrain_seconds = time.perf_counter() - start
    rows: list[LDSRow] = []
    rng = np.random.default_rng(0)
    random_lds = {name: lds(rng.standard_normal((len(q), len(train_set))), masks, margins[name])
                  for name, q in qsets.items()}
    even, odd = np.arange(0, subsets, 2), np.arange(1, subsets, 2)
    for k in timesteps:
        for base in dict.fromkeys(base_method(m) for m in methods):
            train_f = featurize(model, train_set, method=base, timesteps=k, projection_dim=projection_dim,
                                seed=feature_seed, cache=cache)
            per_record = train_f.seconds / max(1, len(train_set))
            lam = np.asarray(lambdas if lambdas is not None else default_lambdas(train_f.phi), dtype=np.float64)
            for name, q in qsets.items():
                query_f = featurize(model, q, method=base, timesteps=k, projection_dim=projection_dim,
                                    seed=feature_seed, role="query")
                raw = kernel_scores(train_f.phi, query_f.phi, lam)
                per_query = query_f.seconds / max(1, len(q))
                for method in methods:
                    if base_method(method) != base:
                        continue
                    sc = finish_scores(raw, method, train_f.residual)
                    all_l = lds(sc, masks, margins[name])
                    ev = lds(sc, masks[even], margins[name][even])
                    pick = int(np.nanargmax(ev))
                    od = lds(sc[pick], masks[odd], margins[name][odd])
                    best = int(np.nanargmax(all_l))
                    rows.append(LDSRow(method=method, timesteps=k, queries=name, lds_best=float(all_l[best]),
                                       lambda_best=float(lam[best]), lds_heldout=float(od),
                                       lambda_heldout=float(lam[pick]), seconds_per_record=per_record,
                                       seconds_per_query=per_query))
            say(f"features {base} K={k} done")
    order = {m: i for i, m in enumerate(methods)}
    rows.sort(key=lambda r: (order[r.method], r.timesteps, r.queries))
    settings = {"n_train": len(train_set), "n_queries": {n: len(q) for n, q in qsets.items()}, "subsets": subsets,
                "seeds": seed_list, "alpha": alpha, "projection_dim": projection_dim, "timesteps": list(timesteps),
                "gt_timesteps": gt_timesteps, "gt_noise_seeds": list(gt_noise_seeds), "feature_seed": feature_seed,
                "subset_seed": subset_seed, "model_hash": model.model_hash,
                "heldout": "lambda picked on even subsets, LDS on odd subsets"}
    return LDSReport(rows=rows, settings=settings, random_lds=random_lds, masks=masks, margins=margins,
                     retrain_seconds=retrain_seconds)
