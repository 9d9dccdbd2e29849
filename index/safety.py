"""Index-type policy: which FAISS indexes keep the DP retrieval guarantee, and refusal of the rest.

The DP retrieval mechanism (notes/dp-rdm.md §1.3) adds Gaussian noise calibrated to L2 sensitivity 2/k of
the mean of the k retrieved unit embeddings, under add/remove-one adjacency, accounted with dp-accounting's
RDP accountant (Poisson-subsampled Gaussian). The bound holds only if *whether a record is retrieved depends
on the query and that record alone*. Adding or removing one record must not move any other record's score
or reachability. Therefore:

* ``flat``: exact ``IndexIDMap2(IndexFlatIP)``. No training, so it is always allowed (the default).
* ``ivf-flat``: ``IndexIVFFlat`` whose coarse quantiser was trained on **public** embeddings. The probed
  lists then depend only on the query and public data, and scores inside them are exact. It is allowed
  only with ``public_train``.
* Refused: HNSW/NSG (the graph is built from the private records, so one record changes which others are
  reachable), PQ/OPQ/SQ/RQ/LSQ (codebooks, rotations or ranges trained on private data leak through
  every score), and IVF trained on the private corpus (its centroids are un-noised private aggregates).
"""

from __future__ import annotations

import enum
import re
from typing import TYPE_CHECKING

from index.errors import IndexInputError, UnsafeIndexError

if TYPE_CHECKING:
    import faiss

SENSITIVITY_NOTE = (
    "the DP noise is calibrated to sensitivity 2/k, which holds only when each record's score depends on the "
    "query and that record alone"
)
SAFE_FIX = (
    "use the default exact 'flat' index, or 'ivf-flat' with --public-train FILE.npy (public embeddings)"
)

_REFUSED = (
    (re.compile(r"hnsw|nsg"), "its neighbour graph is built from the private records"),
    (re.compile(r"opq"), "its rotation and codebooks are trained on the private corpus"),
    (re.compile(r"pq"), "its product-quantiser codebooks are trained on the private corpus"),
    (re.compile(r"sq\d|sqfp|scalar"), "its scalar-quantiser ranges are trained on the private corpus"),
    (
        re.compile(r"rq|lsq|prq|plsq|rabitq|itq|pca"),
        "its codebooks or transform are trained on the private corpus",
    ),
)


class IndexKind(enum.Enum):
    """The two DP-safe index kinds dprdm builds."""

    FLAT = "flat"
    IVF_FLAT = "ivf-flat"


def is_dp_safe(index_type: str, *, public_train: bool = False) -> bool:
    """True if :func:`resolve_index_type` accepts ``index_type`` (never raises)."""
    try:
        resolve_index_type(index_type, public_train=public_train)
    except (UnsafeIndexError, IndexInputError):
        return False
    return True


def resolve_index_type(index_type: str, *, public_train: bool) -> IndexKind:
    """Map a user index type (``flat``, ``ivf-flat`` or a faiss factory string) to a safe kind, or refuse.

    Raises:
        UnsafeIndexError: the type needs a graph, codebook or quantiser built from the private corpus.
        IndexInputError: the type is unknown.
    """
    key = re.sub(r"[\s_()]", "", index_type.lower())
    if key in {
        "flat",
        "exact",
        "flatip",
        "idmap2,flat",
        "idmap,flat",
        "indexidmap2indexflatip",
        "indexflatip",
    }:
        return IndexKind.FLAT
    for pattern, why in _REFUSED:
        if pattern.search(key):
            raise UnsafeIndexError(
                f"index type '{index_type}' is refused: {why}, but {SENSITIVITY_NOTE}; {SAFE_FIX}"
            )
    if key in {"ivf-flat", "ivfflat", "ivf"} or re.fullmatch(r"(idmap2?,)?ivf\d+,flat", key):
        if not public_train:
            raise UnsafeIndexError(
                f"index type '{index_type}' needs --public-train FILE.npy: an IVF coarse quantiser trained on the "
                f"private corpus holds un-noised private centroids and {SENSITIVITY_NOTE}; {SAFE_FIX}"
            )
        return IndexKind.IVF_FLAT
    raise IndexInputError(f"unknown index type '{index_type}'; {SAFE_FIX}")


def check_faiss_index(index: faiss.Index, kind: IndexKind, *, where: str) -> None:
    """Refuse a stored faiss index whose structure is not the DP-safe kind recorded in the manifest.

    Raises:
        UnsafeIndexError: the file holds another index structure (e.g. HNSW or PQ swapped in).
    """
    import faiss

    outer = faiss.downcast_index(index)
    if kind is IndexKind.FLAT:
        inner = faiss.downcast_index(outer.index) if isinstance(outer, faiss.IndexIDMap2) else None
        safe = type(inner) is faiss.IndexFlatIP
    else:
        safe = type(outer) is faiss.IndexIVFFlat and outer.metric_type == faiss.METRIC_INNER_PRODUCT
    if not safe:
        raise UnsafeIndexError(
            f"index file '{where}' holds a {type(outer).__name__} where the manifest says '{kind.value}'; "
            f"{SENSITIVITY_NOTE}; rebuild the shard with 'dprdm index build'"
        )
