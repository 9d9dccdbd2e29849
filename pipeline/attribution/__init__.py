"""Training-data attribution for dprdm's diffusion decoders: TRAK, D-TRAK and DAS, evaluated by LDS.

Which training records shaped a generation? Three linear-datamodel attributions, each as published and each with
its squared variant (``shared/notes/seeds-anchors.md`` §C):

* ``trak``: TRAK on the diffusion loss, φ(x) = Pᵀ (1/K) Σ_t ∇_θ (1/d)‖ε_θ(x_t, t) − ε_t‖²;
* ``dtrak``: D-TRAK (Zheng et al., ICLR 2024), φ(x) = Pᵀ (1/K) Σ_t ∇_θ (1/d)‖ε_θ(x_t, t)‖²;
* ``das``: DAS (Lin et al., ICLR 2025, arXiv 2410.18639), φ(x) = Pᵀ (1/K) Σ_t g_t/‖g_t‖ with
  g_t = ∇_θ (1/d) Σ_j ε_θ(x_t, t)_j, and the score multiplied by the record's normalised residual r_i;
* ``<method>-squared``: the score squared (DAS-squared is the KL/output-difference form, ``DAS1squ`` in the code).

Score: τ(z)_i = φ(z)ᵀ (ΦᵀΦ + λI)⁻¹ φ(x_i), computed in the dual form φ(z)Φᵀ(ΦΦᵀ + λI)⁻¹ when N < P.

Privacy: attribution names training records, so it is a data owner's tool over data they already hold. It never
runs through a DP query, charges no budget and gives no DP guarantee: its output (record ids, sources, scores,
the PNG strip of the records) discloses the training records themselves. Run it only where you have direct access
to the training records' files (a DP shard's records are named only to a caller who can read that shard), and
never publish its output as if it were a private release.
"""

from __future__ import annotations

import importlib
import sys
import types

# Names are imported on first use (PEP 562), so that ``pipeline.attribution.forget`` (called by ``index remove``)
# loads no torch.
_EXPORTS = {
    "METHODS": "features", "Features": "features", "GaussianProjector": "features", "base_method": "features",
    "featurize": "features",
    "FeatureCache": "cache",
    "embed_conditions": "conditions",
    "Attributor": "kernel", "kernel_scores": "kernel",
    "LDSReport": "lds", "LDSRow": "lds", "evaluate_lds": "lds", "ground_truth_losses": "lds", "lds": "lds",
    "AttributionModel": "model", "RecordSet": "model",
    "AttributionResult": "result", "RecordScore": "result", "attribute": "result", "save_strip": "result",
    "finetune": "retrain", "make_retrain": "retrain", "fixed_schedule": "retrain", "TrainingSchedule": "retrain",
    "drop_cached_records": "forget", "forget_hook": "forget",
    "folder_records": "records", "query_records": "records", "shard_records": "records",
    "load_attribution_model": "loading",
}  # fmt: skip

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pipeline.attribution' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"pipeline.attribution.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


class _Package(types.ModuleType):
    """Keeps an exported name bound to its object when a submodule of the same name loads (``lds``, the function,
    not ``pipeline.attribution.lds``, the module), as the eager ``from ... import`` of this package used to."""

    def __setattr__(self, name: str, value) -> None:
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
