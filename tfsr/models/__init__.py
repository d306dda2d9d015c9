"""Multi-domain CTR models: the S&R Foundation model (Gong et al., CIKM 2023) and baselines.

Example:
  >>> from tfsr.models import ModelConfig, build_model, save_model, load_model
  >>> model = build_model(ModelConfig("srfoundation"), spec, vocabularies)
  >>> model.compile(); model.fit(dataset)
  >>> outputs = model(features)   # {"ctr": [B], "logit": [B], "gate_weights": [B, 3, 3]}
"""

from tfsr.models.base import LEVELS, OUTPUT_KEYS, MultiDomainModel
from tfsr.models.config import ModelConfig, warm_registry
from tfsr.models.io import build_model, load_model, save_model
from tfsr.models.registry import MODEL_TYPES, register_model
from tfsr.models.retrieval import CANDIDATE_PROBABILITY, IdTwoTowerModel, RetrievalModel
from tfsr.models.zoo import (
    MMoEModel,
    PLEModel,
    SharedBottomModel,
    SingleDomainModel,
    SRFoundationModel,
    STARModel,
)

__all__ = [
    "CANDIDATE_PROBABILITY",
    "LEVELS",
    "MODEL_TYPES",
    "OUTPUT_KEYS",
    "IdTwoTowerModel",
    "MMoEModel",
    "ModelConfig",
    "MultiDomainModel",
    "PLEModel",
    "RetrievalModel",
    "SRFoundationModel",
    "STARModel",
    "SharedBottomModel",
    "SingleDomainModel",
    "build_model",
    "load_model",
    "register_model",
    "save_model",
    "warm_registry",
]
