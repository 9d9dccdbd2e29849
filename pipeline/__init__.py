"""dprdm pipeline: query → DP retrieval (charged first) → decoder → images, and the ``dprdm`` CLI.

Mechanism (DP-RDM): Poisson subsample at rate q, exact top-k by inner product, mean of the k unit neighbours
(zero-padded), plus N(0, σ² I). L2 sensitivity 2/k under add/remove-one adjacency; accountant: dp-accounting RDP
on ``PoissonSampledDpEvent(q, GaussianDpEvent(kσ/2))``, one event per query and targeted shard.
"""

import index  # noqa: F401,I001  (first: its torchvision shim must run before diffusers / open_clip are imported)

from pipeline.errors import PipelineError, PipelineInputError, PrivacyRefusal
from pipeline.generate import GenerationResult, Generator, QueryKind
from pipeline.mechanism import aggregate, poisson_subsample, privatize, secure_rng, subsample_topk
from pipeline.outputs import SavedGeneration, make_grid, save_generation
from pipeline.retrieve import PrivateRelease, PrivateRetriever

__all__ = [
    "GenerationResult",
    "Generator",
    "PipelineError",
    "PipelineInputError",
    "PrivacyRefusal",
    "PrivateRelease",
    "PrivateRetriever",
    "QueryKind",
    "SavedGeneration",
    "aggregate",
    "make_grid",
    "poisson_subsample",
    "privatize",
    "save_generation",
    "secure_rng",
    "subsample_topk",
]
