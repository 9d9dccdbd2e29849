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

from pipeline.attribution.cache import FeatureCache
from pipeline.attribution.conditions import embed_conditions
from pipeline.attribution.features import METHODS, Features, GaussianProjector, base_method, featurize
from pipeline.attribution.kernel import Attributor, kernel_scores
from pipeline.attribution.lds import LDSReport, LDSRow, evaluate_lds, ground_truth_losses, lds
from pipeline.attribution.model import AttributionModel, RecordSet
from pipeline.attribution.result import AttributionResult, RecordScore, attribute, save_strip
from pipeline.attribution.retrain import finetune, make_retrain

__all__ = [
    "METHODS",
    "AttributionModel",
    "AttributionResult",
    "Attributor",
    "FeatureCache",
    "Features",
    "GaussianProjector",
    "LDSReport",
    "LDSRow",
    "RecordScore",
    "RecordSet",
    "attribute",
    "base_method",
    "embed_conditions",
    "evaluate_lds",
    "featurize",
    "finetune",
    "ground_truth_losses",
    "kernel_scores",
    "lds",
    "make_retrain",
    "save_strip",
]
