"""dprdm pipeline: query → DP retrieval (charged first) → decoder → images, and the ``dprdm`` CLI.

Mechanism (DP-RDM): Poisson subsample at rate q, exact top-k by inner product, mean of the k unit neighbours
(zero-padded), plus N(0, σ² I). L2 sensitivity 2/k under add/remove-one adjacency; accountant: dp-accounting RDP
on ``PoissonSampledDpEvent(q, GaussianDpEvent(kσ/2))``, one event per query and targeted shard.

Public API (what the README's Python API uses): :class:`DPRDMPipeline` (``from_index_dir`` or built from a
``PrivateRetriever``, an encoder and a decoder), :class:`GenerationResult`, :class:`QueryKind`,
:class:`PrivateRetriever`, :class:`PrivateRelease`, :func:`save_generation`, :class:`SavedGeneration` and the
errors. The mechanism's pure functions live in :mod:`pipeline.mechanism`, decoders in :mod:`pipeline.decoders`,
the audit in :mod:`pipeline.audit`.

The names are imported on first use (PEP 562), so ``import pipeline.cli`` (``dprdm --help``, ``budget show``)
does not load torch, faiss or diffusers. The torchvision shim (:mod:`index._torchvision_compat`) runs where
diffusers and open_clip are imported (:mod:`pipeline.decoders.base`, :mod:`index.encoder`), not here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pipeline.errors import PipelineError, PipelineInputError, PrivacyRefusal

if TYPE_CHECKING:
    from pipeline.generate import DPRDMPipeline, GenerationResult, QueryKind
    from pipeline.outputs import SavedGeneration, save_generation
    from pipeline.retrieve import PrivateRelease, PrivateRetriever

__all__ = [
    "DPRDMPipeline",
    "GenerationResult",
    "PipelineError",
    "PipelineInputError",
    "PrivacyRefusal",
    "PrivateRelease",
    "PrivateRetriever",
    "QueryKind",
    "SavedGeneration",
    "save_generation",
]

_LAZY = {
    "DPRDMPipeline": "pipeline.generate",
    "GenerationResult": "pipeline.generate",
    "QueryKind": "pipeline.generate",
    "PrivateRelease": "pipeline.retrieve",
    "PrivateRetriever": "pipeline.retrieve",
    "SavedGeneration": "pipeline.outputs",
    "save_generation": "pipeline.outputs",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
