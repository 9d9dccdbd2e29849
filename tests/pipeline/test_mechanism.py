"""The pure DP-RDM mechanism: Poisson subsample → exact top-k of the sample → zero-padded mean → Gaussian noise."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from index import MemoryShard
from pipeline.errors import PipelineInputError
from pipeline.mechanism import aggregate, poisson_subsample, privatize, secure_rng, subsample_topk

D = 8


def _unit_rows(rng: np.random.Generator, n: int, d: int = D) -> np.ndarray:
    rows = rng.standard_normal((n, d)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _flat_ip(rows: np.ndarray, ids: np.ndarray) -> MemoryShard:
    return MemoryShard(rows, ids.astype(np.int64))


def _public_quantizer(lists: int, d: int = D) -> faiss.Index:
    """A coarse quantizer whose centroids are public (drawn independently of the records)."""
    quantizer = faiss.IndexFlatIP(d)
    quantizer.add(_unit_rows(np.random.default_rng(1234), lists, d))
    return quantizer


def _ivf_all_lists(rows: np.ndarray, ids: np.ndarray) -> MemoryShard:
    """ivf-flat probing every list: the restriction keeps everything, so the mechanism must equal flat."""
    return MemoryShard(rows, ids.astype(np.int64), quantizer=_public_quantizer(3), nprobe=3)


BUILDERS = pytest.mark.parametrize("build", [_flat_ip, _ivf_all_lists], ids=["flat", "ivf-all-lists"])


# ----------------------------------------------------------------------------------------- Poisson subsample


@pytest.mark.parametrize("q", [0.05, 0.5], ids=["geometric-gaps", "bernoulli-mask"])
def test_poisson_subsample_keeps_each_position_independently_with_probability_q(q: float) -> None:
    n, trials = 40, 6000
    rng = np.random.default_rng(11)
    counts = np.zeros(n)
    pair = 0  # positions 3 and 4 kept together: independence means probability q²
    for _ in range(trials):
        kept = poisson_subsample(n, q, rng)
        assert np.all(np.diff(kept) > 0) and (kept.size == 0 or (kept[0] >= 0 and kept[-1] < n))
        counts[kept] += 1
        pair += (3 in kept) and (4 in kept)
    # Each position: Binomial(trials, q); joint chi-square over all positions.
    expected = trials * q
    chi2 = float((((counts - expected) ** 2) / (expected * (1 - q))).sum())
    assert stats.chi2.sf(chi2, df=n) > 1e-3
    assert stats.binomtest(pair, trials, q * q).pvalue > 1e-3


def test_poisson_subsample_long_run_spans_several_batches() -> None:
    rng = np.random.default_rng(3)
    sizes = [poisson_subsample(200_000, 0.001, rng).size for _ in range(50)]
    # Mean of 50 Binomial(200000, 0.001) within 5 standard errors.
    assert abs(np.mean(sizes) - 200) < 5 * np.sqrt(200 / 50)


@pytest.mark.parametrize("q", [1e-4, 0.01, 0.2], ids=["q=1e-4", "q=0.01", "q=0.2"])
def test_poisson_subsample_gaps_are_exactly_numpys_geometric_draws(q: float) -> None:
    """The vectorised gaps are the very draws of ``rng.geometric(q)``: same positions, same generator state after."""
    n = 300_000
    ours, theirs = np.random.default_rng(21), np.random.default_rng(21)
    kept = poisson_subsample(n, q, ours)
    batch = int(n * q + 8.0 * np.sqrt(n * q) + 32)
    positions, last = [], -1
    while not positions or positions[-1][-1] < n:
        chunk = last + np.cumsum(theirs.geometric(q, size=batch))
        positions.append(chunk)
        last = int(chunk[-1])
    expected = np.concatenate(positions)
    np.testing.assert_array_equal(kept, expected[expected < n])
    assert kept.dtype == np.int64 and ours.random() == theirs.random()


class _ZeroExponentials(np.random.Generator):
    """A degenerate generator whose exponential draws are all exactly 0.0 (forces the smallest possible gap)."""

    def __init__(self) -> None:
        super().__init__(np.random.PCG64(0))

    def standard_exponential(self, size=None, *args, **kwargs):  # noqa: ANN001 (numpy's signature)
        return np.zeros(size, dtype=np.float64)


@pytest.mark.parametrize("q", [1e-4, 0.05, 0.2], ids=["q=1e-4", "q=0.05", "q=0.2"])
def test_a_generator_returning_zero_never_repeats_a_position(q: float) -> None:
    """Issue 9: gaps are floor(E/scale) + 1, so E = 0 gives a gap of 1 (ceil gave 0: a repeated position)."""
    kept = poisson_subsample(50, q, _ZeroExponentials())
    assert kept.dtype == np.int64 and kept.size > 0
    assert kept[0] >= 0 and np.all(np.diff(kept) > 0) and kept[-1] < 50
    np.testing.assert_array_equal(kept, np.arange(50))  # every gap is exactly 1


# ----------------------------------------------------------------------------------------- exact top-k


@BUILDERS
@pytest.mark.parametrize("q", [0.15, 0.5], ids=["q=0.15", "q=0.5"])
def test_subsample_topk_is_exactly_topk_of_a_poisson_subsample(build, q: float) -> None:
    """Record of rank j (1 = best) is returned at rank r with probability q·C(j-1, r-1)·q^(r-1)·(1-q)^(j-r)."""
    n, k, trials = 8, 3, 8000
    rng = np.random.default_rng(5)
    rows = _unit_rows(rng, n)
    query = rows[0]
    ids = np.arange(100, 100 + n)
    rank_of = {int(i): r for r, i in enumerate(ids[np.argsort(-(rows @ query))])}
    index = build(rows, ids)
    observed = np.zeros((n, k + 1))  # column k = "not returned"
    draws = np.random.default_rng(17)
    for _ in range(trials):
        returned = subsample_topk(index, query, k, q, draws)
        assert len(returned) <= k
        seen = set()
        for r, record in enumerate(returned):
            observed[rank_of[int(record)], r] += 1
            seen.add(rank_of[int(record)])
        for j in set(range(n)) - seen:
            observed[j, k] += 1
    expected = np.zeros_like(observed)
    for j in range(n):
        for r in range(k):
            expected[j, r] = q * stats.binom.pmf(r, j, q)
        expected[j, k] = 1 - expected[j, :k].sum()
    expected *= trials
    mask = expected > 0
    assert np.all(observed[~mask] == 0), "a record was returned at a rank it cannot reach"
    chi2 = float((((observed - expected) ** 2)[mask] / expected[mask]).sum())
    dof = int(mask.sum()) - n  # each row sums to `trials`
    assert stats.chi2.sf(chi2, df=dof) > 1e-3
    # The marginal of the brief: P(returned) = q·P(Binomial(j-1, q) ≤ k-1).
    marginal = q * stats.binom.cdf(k - 1, np.arange(n), q)
    np.testing.assert_allclose(observed[:, :k].sum(axis=1) / trials, marginal, atol=5 * np.sqrt(0.25 / trials))


@BUILDERS
def test_ties_are_broken_by_the_smaller_id(build) -> None:
    rng = np.random.default_rng(0)
    best, tied = _unit_rows(rng, 2)
    rows = np.stack([tied, best, tied, tied, tied])
    ids = np.array([9, 50, 3, 7, 4])
    query = best
    returned = subsample_topk(build(rows, ids), query, 3, 1.0, rng)
    assert returned[0] == 50
    assert sorted(returned[1:]) == list(returned[1:])


def test_ties_at_the_cut_keep_the_smallest_ids_on_the_flat_path() -> None:
    eye = np.eye(D, dtype=np.float32)
    best, worst = eye[0], eye[1]
    tied = (eye[0] + eye[1]) / np.linalg.norm(eye[0] + eye[1])
    rows = np.stack([tied, worst, tied, best, tied, tied])
    ids = np.array([8, 1, 2, 40, 5, 6])
    returned = subsample_topk(_flat_ip(rows, ids), best, 3, 1.0, np.random.default_rng(0))
    assert list(returned) == [40, 2, 5]


@BUILDERS
def test_a_sample_smaller_than_k_returns_fewer_ids_and_never_the_full_set(build) -> None:
    rng = np.random.default_rng(1)
    rows = _unit_rows(rng, 5)
    index = build(rows, np.arange(5))
    assert len(subsample_topk(index, rows[0], 10, 1.0, rng)) == 5
    sizes = [len(subsample_topk(index, rows[0], 4, 0.01, rng)) for _ in range(200)]
    assert max(sizes) <= 2 and np.mean(sizes) < 0.2


def test_rows_without_ids_use_positions_as_ids() -> None:
    rng = np.random.default_rng(2)
    rows = _unit_rows(rng, 6)
    shard = MemoryShard(rows)
    np.testing.assert_array_equal(subsample_topk(shard, rows[4], 6, 1.0, rng), np.argsort(-(rows @ rows[4]), kind="stable"))


@BUILDERS
def test_empty_index_returns_no_ids(build) -> None:
    shard = build(np.empty((0, D), np.float32), np.empty(0, np.int64))
    query = np.eye(D, dtype=np.float32)[0]
    assert subsample_topk(shard, query, 3, 0.5, np.random.default_rng(0)).size == 0


# ----------------------------------------------------------------------------------------- ivf-flat


def _ivf_two_lists() -> tuple[faiss.Index, np.ndarray]:
    """A public quantizer with two orthogonal centroids e0 and e1."""
    quantizer = faiss.IndexFlatIP(D)
    eye = np.eye(D, dtype=np.float32)
    quantizer.add(eye[:2])
    return quantizer, eye


def test_ivf_restrict_keeps_only_rows_of_the_probed_public_lists() -> None:
    quantizer, eye = _ivf_two_lists()
    near0 = (eye[0] + 0.1 * eye[2]) / np.linalg.norm(eye[0] + 0.1 * eye[2])
    near1 = (eye[1] + 0.1 * eye[3]) / np.linalg.norm(eye[1] + 0.1 * eye[3])
    rows = np.stack([near0, near1, near0, near1, eye[0], eye[1]])
    shard = MemoryShard(rows, np.arange(10, 16), quantizer=quantizer, nprobe=1)
    everything = np.arange(6, dtype=np.int64)
    np.testing.assert_array_equal(shard.restrict(eye[0], everything), [0, 2, 4])
    np.testing.assert_array_equal(shard.restrict(eye[1], everything[[1, 2, 5]]), [1, 5])
    # The mechanism never returns a record outside the probed lists, even the best-scoring one.
    query = (eye[0] + 0.01 * eye[1]) / np.linalg.norm(eye[0] + 0.01 * eye[1])
    assert set(subsample_topk(shard, query, 6, 1.0, np.random.default_rng(0)).tolist()) == {10, 12, 14}
    both = MemoryShard(rows, np.arange(10, 16), quantizer=quantizer, nprobe=2)
    np.testing.assert_array_equal(both.restrict(eye[0], everything), everything)


def test_ivf_ties_at_the_kth_score_are_broken_by_id_exactly_as_on_flat() -> None:
    """Issue 9: crafted tied vectors in one probed list; IVF returns the same ids as flat, smallest ids first."""
    quantizer, eye = _ivf_two_lists()
    best = eye[0]
    tied = (eye[0] + eye[2]) / np.linalg.norm(eye[0] + eye[2])
    other = eye[1]  # in the unprobed list
    rows = np.stack([tied, other, tied, best, tied, tied, tied])
    ids = np.array([8, 1, 2, 40, 5, 6, 3])
    ivf = MemoryShard(rows, ids, quantizer=quantizer, nprobe=1)
    flat = MemoryShard(rows[ids != 1], ids[ids != 1])
    for k in (2, 3, 4):
        got = subsample_topk(ivf, best, k, 1.0, np.random.default_rng(0))
        np.testing.assert_array_equal(got, subsample_topk(flat, best, k, 1.0, np.random.default_rng(0)))
    assert list(subsample_topk(ivf, best, 3, 1.0, np.random.default_rng(0))) == [40, 2, 3]


def test_memory_shard_refuses_rows_that_are_not_unit_vectors() -> None:
    from index import IndexInputError

    with pytest.raises(IndexInputError, match="unit-norm"):
        MemoryShard(np.full((2, D), 2.0, np.float32))
    bad = _unit_rows(np.random.default_rng(0), 2)
    bad[1, 0] = np.nan
    with pytest.raises(IndexInputError, match="finite"):
        MemoryShard(bad)


# ----------------------------------------------------------------------------------------- aggregate


def test_aggregate_pads_missing_neighbours_with_zero_vectors() -> None:
    rows = _unit_rows(np.random.default_rng(4), 2)
    np.testing.assert_allclose(aggregate(rows, 5), rows.sum(axis=0) / 5, atol=1e-6)
    np.testing.assert_array_equal(aggregate(np.empty((0, D), np.float32), 3), np.zeros(D, np.float32))
    assert aggregate(rows, 2).dtype == np.float32


unit_vectors = st.lists(st.floats(-1, 1, allow_nan=False, width=32), min_size=D, max_size=D).filter(
    lambda v: np.linalg.norm(v) > 1e-3
)


@given(
    rows=st.lists(unit_vectors, min_size=1, max_size=12),
    kept=st.lists(st.booleans(), min_size=12, max_size=12),
    k=st.integers(1, 5),
    query=unit_vectors,
    extra=unit_vectors,
    removed=st.integers(0, 11),
)
def test_adding_or_removing_one_record_moves_the_aggregate_by_at_most_2_over_k(rows, kept, k, query, extra, removed) -> None:
    """Sensitivity 2/k (L2, add/remove-one) with the subsample mask held fixed."""
    rows = np.asarray(rows, np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    query = np.asarray(query, np.float32) / np.linalg.norm(query)
    extra = np.asarray(extra, np.float32) / np.linalg.norm(extra)
    mask = np.asarray(kept[: len(rows)])
    ids = np.arange(len(rows))

    def mechanism_mean(sample_rows: np.ndarray, sample_ids: np.ndarray) -> np.ndarray:
        # q = 1 on the kept records = top-k of the fixed sample.
        chosen = subsample_topk(_flat_ip(sample_rows, sample_ids), query, k, 1.0, np.random.default_rng(0))
        lookup = dict(zip(sample_ids.tolist(), sample_rows, strict=True))
        return aggregate(np.array([lookup[i] for i in chosen.tolist()], np.float32).reshape(-1, D), k).astype(np.float64)

    base = mechanism_mean(rows[mask], ids[mask])
    added = mechanism_mean(np.vstack([rows[mask], extra[None]]), np.append(ids[mask], 10_000))
    assert np.linalg.norm(added - base) <= 2 / k + 1e-6
    drop = removed % len(rows)
    if mask[drop]:
        keep = mask.copy()
        keep[drop] = False
        assert np.linalg.norm(mechanism_mean(rows[keep], ids[keep]) - base) <= 2 / k + 1e-6


def test_aggregate_projects_round_off_onto_the_unit_ball() -> None:
    rows = np.full((1, D), 1.0005 / np.sqrt(D), np.float32)
    assert np.linalg.norm(aggregate(rows, 1)) <= 1.0 + 1e-6


@pytest.mark.parametrize(
    "row",
    [np.full(D, 2.0 / np.sqrt(D)), np.full(D, 1e6), np.full(D, np.nan), np.r_[np.inf, np.zeros(D - 1)]],
    ids=["norm-2", "huge", "nan", "inf"],
)
def test_aggregate_clips_any_row_instead_of_raising_after_the_charge(row) -> None:
    """A value-dependent error after the charge would leak (issue 9): rows are clipped to norm <= 1, never refused."""
    unit = np.eye(D, dtype=np.float32)[1]
    mean = aggregate(np.stack([unit, row.astype(np.float32)]), 2)
    assert np.isfinite(mean).all() and np.linalg.norm(mean) <= 1.0 + 1e-6
    # the bad row contributes at most a unit vector: |mean - unit/2| <= 1/2 (sensitivity 2/k still holds)
    assert np.linalg.norm(mean - unit / 2) <= 0.5 + 1e-6


# ----------------------------------------------------------------------------------------- privatize


def test_privatize_adds_gaussian_noise_of_std_sigma() -> None:
    base = np.linspace(-0.1, 0.1, 40_000).astype(np.float32)
    noisy = privatize(base, 0.3, _rng=np.random.default_rng(9))
    noise = noisy.astype(np.float64) - base
    assert noisy.dtype == np.float32 and noisy.shape == base.shape
    assert abs(noise.std() - 0.3) < 0.01 and abs(noise.mean()) < 0.01
    assert stats.normaltest(noise).pvalue > 1e-3
    np.testing.assert_array_equal(privatize(base, 0.0, _rng=np.random.default_rng(0)), base)


def test_secure_rng_is_fresh_each_call() -> None:
    first, second = secure_rng(), secure_rng()
    assert isinstance(first.bit_generator, np.random.PCG64)
    assert not np.array_equal(first.random(4), second.random(4))


# ----------------------------------------------------------------------------------------- input validation

_INDEX = _flat_ip(_unit_rows(np.random.default_rng(0), 4), np.arange(4))
_QUERY = np.eye(D, dtype=np.float32)[0]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"k": 0}, "k must be an integer ≥ 1"),
        ({"k": 2.5}, "k must be an integer"),
        ({"k": True}, "k must be an integer"),
        ({"q": 0.0}, r"q must be a probability in \(0, 1\]"),
        ({"q": 1.5}, r"q must be a probability"),
        ({"q": float("nan")}, r"q must be a probability"),
        ({"query": np.ones(D + 1, np.float32) / np.sqrt(D + 1)}, "dimension 8"),
        ({"query": np.ones(D, np.float32)}, "unit L2 norm"),
        ({"query": np.full(D, np.nan, np.float32)}, "finite"),
        ({"rng": 42}, "numpy Generator"),
    ],
    ids=["k-zero", "k-float", "k-bool", "q-zero", "q-above-one", "q-nan", "query-dim", "query-norm", "query-nan", "rng-int"],
)
def test_subsample_topk_rejects_bad_input(kwargs: dict, match: str) -> None:
    args = {"shard": _INDEX, "query": _QUERY, "k": 2, "q": 0.5, "rng": np.random.default_rng(0)} | kwargs
    with pytest.raises(PipelineInputError, match=match):
        subsample_topk(**args)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: aggregate(np.ones((3, D), np.float32) / np.sqrt(D), 2), "at most k=2 rows"),
        (lambda: aggregate(np.ones(D, np.float32), 2), "2-D"),
        (lambda: privatize(np.zeros(D), -0.1, _rng=np.random.default_rng(0)), "sigma must be a finite number ≥ 0"),
        (lambda: privatize(np.zeros(D), float("inf"), _rng=np.random.default_rng(0)), "sigma must be"),
        (lambda: privatize(np.full(D, np.nan), 0.1, _rng=np.random.default_rng(0)), "finite 1-D"),
        (lambda: poisson_subsample(-1, 0.5, np.random.default_rng(0)), "non-negative"),
    ],
    ids=["agg-too-many", "agg-1d", "sigma-negative", "sigma-inf", "privatize-nan", "n-negative"],
)
def test_aggregate_and_privatize_reject_bad_input(call, match: str) -> None:
    with pytest.raises(PipelineInputError, match=match):
        call()
