"""Keras layers of the S&R Multi-Domain Foundation model (Gong et al., CIKM 2023,
https://arxiv.org/abs/2309.08939).

Levels (docs/MODEL.md, "Architecture"): L0 aspect encoders (:mod:`.encoders`), L1 Aspect Gating Fusion
(:mod:`.fusion`) and the Domain Adaptive layer with its alignment losses (:mod:`.adaptive`,
:mod:`.alignment`), L2 explicit feature interactions (:mod:`.interactions`: dot products, FM, DCN-v2
cross network) and multi-task expert blocks and towers (:mod:`.experts`); the two-tower retrieval
towers (:mod:`.retrieval`).

`ENTITIES` and `ASPECTS` (owned by :mod:`tfsr.contract`) fix the order of `gate_weights`.

Every layer computes in its `compute_dtype` and hands its sublayers its dtype policy (so a
`mixed_float16` policy works; softmax masks use :func:`~tfsr.layers.domain.large_negative`, finite in
float16) and merges its `get_config` with `Layer.get_config`. Per-domain and shared weight containers
(:class:`DomainWeights`, :class:`WeightBank`) get their variables from their parent layer's `build`.
"""

from tfsr.contract import ASPECTS, ENTITIES
from tfsr.layers.adaptive import DomainAdaptiveLayer
from tfsr.layers.alignment import ALIGNMENTS, js_divergence_alignment, mmd_alignment
from tfsr.layers.calibration import DomainCalibration, fit_platt
from tfsr.layers.domain import DomainWeights, WeightBank, grouped_dense, select_domain
from tfsr.layers.encoders import AspectEncoder, IdEncoder, MissingEntityVector, SparseEncoder, TextEncoder
from tfsr.layers.experts import MLP, PLE, STAR, DomainTowers, ExpertBank, MMoE, SharedTower
from tfsr.layers.fusion import GATING_STRATEGIES, AspectGatingFusion
from tfsr.layers.interactions import (
    INTERACTIONS,
    CrossNetwork,
    FactorizationMachine,
    FeatureInteractions,
    PairwiseDot,
)
from tfsr.layers.retrieval import RetrievalTower

__all__ = [
    "ALIGNMENTS",
    "ASPECTS",
    "ENTITIES",
    "GATING_STRATEGIES",
    "INTERACTIONS",
    "MLP",
    "PLE",
    "STAR",
    "AspectEncoder",
    "AspectGatingFusion",
    "CrossNetwork",
    "DomainAdaptiveLayer",
    "DomainCalibration",
    "DomainTowers",
    "DomainWeights",
    "ExpertBank",
    "FactorizationMachine",
    "FeatureInteractions",
    "IdEncoder",
    "MMoE",
    "MissingEntityVector",
    "PairwiseDot",
    "RetrievalTower",
    "SharedTower",
    "SparseEncoder",
    "TextEncoder",
    "WeightBank",
    "fit_platt",
    "grouped_dense",
    "js_divergence_alignment",
    "mmd_alignment",
    "select_domain",
]
