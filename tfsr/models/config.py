"""`ModelConfig`: every hyper-parameter of a tfsr model, saved with it as JSON."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from tfsr.contract import check_positive_int
from tfsr.features import Domain, DomainRegistry
from tfsr.layers.alignment import ALIGNMENTS
from tfsr.layers.fusion import (
    DEFAULT_GATE_INIT_STDDEV,
    DEFAULT_GATE_SCALE,
    DEFAULT_LEARN_GATE_SCALE,
    GATING_STRATEGIES,
)
from tfsr.layers.interactions import INTERACTIONS

ALIGNMENT_CHOICES = (*ALIGNMENTS, "none")
_TUPLE_FIELDS = ("expert_units", "tower_units")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Configuration of a multi-domain model (docs/MODEL.md, "API"; the paper's names follow
    Gong et al., CIKM 2023, https://arxiv.org/abs/2309.08939).

    Args:
      model_type: a registered model type: "srfoundation", "single_domain", "shared_bottom", "mmoe",
        "ple", "star", "deepfm", "dcn_v2" or a team's own (see `tfsr.models.register_model`).
      embedding_dim: H, the width of every aspect vector.
      gating: aspect fusion, "domain" | "cls" | "mean"; None = the model type's default ("domain" for
        srfoundation, "mean" for the baselines).
      gate_scale: `s` of the gate logits `E_D[d] . E_a * s` (see `AspectGatingFusion`); None = `1/sqrt(H)`.
        The default 1.0 is the paper's formula as written (no temperature).
      learn_gate_scale: multiply `s` by a learned per-domain `exp(t_d)` (`t_d` starts at 0), so a gate
        that finds a useful direction can sharpen quickly.
      gate_init_stddev: standard deviation of the gate vectors' normal initialisation; 0 (the default)
        starts every gate, and every added domain's, as exact mean pooling.
      use_text: encode the text aspect (False: the "no text" ablation).
      alignment: "js" | "mmd" | "none"; None = the model type's default ("js" for srfoundation,
        "none" for the baselines).
      alignment_weight: lambda, weight of L_reg.
      temperature: tau of the JS estimator's softmax.
      mmd_bandwidth: sigma of the MMD Gaussian kernel.
      adaptive_units: width of the Domain Adaptive layer's output x_hat.
      num_experts: MMoE experts.
      expert_units: widths of each expert's layers (MMoE, PLE), of the shared bottom
        (SharedBottom, single-domain) and of the STAR network.
      num_shared_experts, num_specific_experts, num_levels: PLE.
      tower_units: hidden widths of each domain's tower.
      interactions: the L2 explicit interactions (`tfsr.layers.FeatureInteractions` kinds, a subset of
        "dot", "fields", "cross", "fm"; empty = none), fed to the experts beside the representation;
        None = the model type's default (("dot", "cross") for srfoundation over the fused user, query
        and item vectors; ("fields", "fm") for deepfm and ("cross",) for dcn_v2 over the L0 aspect
        fields; none for the other baselines).
      num_cross_layers: layers of the DCN-v2 cross network ("cross").
      cross_projection_dim: rank of the cross layers' weight matrix; None = full rank.
      retrieval_temperature: the softmax temperature of a retrieval model's normalised dot products
        (`RetrievalModel`; 0.05: cosines in [-1, 1] become logits in [-20, 20]).
      sampling_bias_correction: a retrieval model subtracts `log q(item)` (its share of the training
        clicks) from the in-batch logits (Yi et al., RecSys 2019), so popular items are not over-penalised
        as negatives.
      catalogue_negatives: mixed negative sampling (Yang et al., WWW 2020) for a retrieval model: this many
        items drawn uniformly from the whole catalogue join every batch's in-batch candidates as negatives,
        so items that are rarely clicked (or never, in a new domain's slice) are still pushed away; 0 = in-batch
        negatives only.
      domain_loss_weights: alpha_d by domain name; missing domains weigh 1.
      learning_rate: Adam's learning rate used by `model.compile()` without an optimizer.
      num_hash_bins: hash buckets of an id/sparse feature that has no vocabulary.
      num_oov_buckets: OOV rows of a feature that has a vocabulary.
      domains: the model's domain registry as JSON (`DomainRegistry.to_json()`); None = the feature
        spec's. `add_domain` extends it.
      extra: free-form options of a team's subclass (JSON-serialisable).

    Example:
      >>> config = ModelConfig(model_type="srfoundation", embedding_dim=32, alignment="mmd")
      >>> ModelConfig.from_json(config.to_json()) == config
      True
    """

    model_type: str = "srfoundation"
    embedding_dim: int = 32
    gating: str | None = None
    gate_scale: float | None = DEFAULT_GATE_SCALE
    learn_gate_scale: bool = DEFAULT_LEARN_GATE_SCALE
    gate_init_stddev: float = DEFAULT_GATE_INIT_STDDEV
    use_text: bool = True
    alignment: str | None = None
    alignment_weight: float = 0.1
    temperature: float = 1.0
    mmd_bandwidth: float = 1.0
    adaptive_units: int = 64
    num_experts: int = 4
    expert_units: tuple[int, ...] = (64,)
    num_shared_experts: int = 2
    num_specific_experts: int = 1
    num_levels: int = 2
    tower_units: tuple[int, ...] = (32,)
    interactions: tuple[str, ...] | None = None
    num_cross_layers: int = 2
    cross_projection_dim: int | None = None
    retrieval_temperature: float = 0.05
    sampling_bias_correction: bool = True
    catalogue_negatives: int = 256
    domain_loss_weights: dict[str, float] = dataclasses.field(default_factory=dict)
    learning_rate: float = 1e-3
    num_hash_bins: int = 100_000
    num_oov_buckets: int = 1
    domains: list[dict] | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        for name in _TUPLE_FIELDS:
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.interactions is not None:
            if isinstance(self.interactions, str):
                raise ValueError(
                    f"interactions must be a list of kinds, got the string {self.interactions!r}"
                )
            object.__setattr__(self, "interactions", tuple(self.interactions))
            unknown = [k for k in self.interactions if k not in INTERACTIONS]
            if unknown or len(set(self.interactions)) != len(self.interactions):
                raise ValueError(
                    f"interactions must be distinct kinds of {INTERACTIONS} or None, got {self.interactions!r}"
                )
        if not isinstance(self.model_type, str) or not self.model_type:
            raise ValueError(f"model_type must be a non-empty string, got {self.model_type!r}")
        if self.gating is not None and self.gating not in GATING_STRATEGIES:
            raise ValueError(f"gating must be one of {GATING_STRATEGIES} or None, got {self.gating!r}")
        if self.alignment is not None and self.alignment not in ALIGNMENT_CHOICES:
            raise ValueError(f"alignment must be one of {ALIGNMENT_CHOICES} or None, got {self.alignment!r}")
        for name in (
            "embedding_dim",
            "adaptive_units",
            "num_experts",
            "num_shared_experts",
            "num_specific_experts",
            "num_levels",
            "num_hash_bins",
            "num_oov_buckets",
            "num_cross_layers",
        ):
            check_positive_int(name, getattr(self, name))
        for name in _TUPLE_FIELDS:
            units = getattr(self, name)
            if not units or any(not isinstance(u, int) or u <= 0 for u in units):
                raise ValueError(f"{name} must be a non-empty list of positive ints, got {units!r}")
        for name in ("temperature", "mmd_bandwidth", "learning_rate", "retrieval_temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if not isinstance(self.catalogue_negatives, int) or self.catalogue_negatives < 0:
            raise ValueError(f"catalogue_negatives must be an integer >= 0, got {self.catalogue_negatives!r}")
        if self.cross_projection_dim is not None and (
            not isinstance(self.cross_projection_dim, int)
            or isinstance(self.cross_projection_dim, bool)
            or self.cross_projection_dim <= 0
        ):
            raise ValueError(
                f"cross_projection_dim must be a positive int or None, got {self.cross_projection_dim!r}"
            )
        if self.gate_scale is not None and not self.gate_scale > 0:
            raise ValueError(f"gate_scale must be positive or None, got {self.gate_scale!r}")
        if not self.gate_init_stddev >= 0:
            raise ValueError(f"gate_init_stddev must be >= 0, got {self.gate_init_stddev!r}")
        if not self.alignment_weight >= 0:
            raise ValueError(f"alignment_weight must be >= 0, got {self.alignment_weight!r}")
        bad = {k: v for k, v in self.domain_loss_weights.items() if not v >= 0}
        if bad:
            raise ValueError(f"domain_loss_weights must be >= 0, got {bad!r}")
        if self.domains is not None:
            registry = DomainRegistry.from_json(self.domains)  # validates
            unknown = set(self.domain_loss_weights) - set(registry.names)
            if unknown:
                raise ValueError(
                    f"domain_loss_weights names unknown domains {sorted(unknown)}; known: {registry.names}"
                )

    @property
    def registry(self) -> DomainRegistry:
        """The domain registry (requires `domains` to be set, as it is in a built model's config)."""
        if self.domains is None:
            raise ValueError(
                "this config has no domains yet; build_model() fills them in from the feature spec"
            )
        return DomainRegistry.from_json(self.domains)

    def loss_weight(self, domain: str) -> float:
        """alpha_d of a domain."""
        return float(self.domain_loss_weights.get(domain, 1.0))

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def with_registry(self, registry: DomainRegistry) -> ModelConfig:
        return self.replace(domains=registry.to_json())

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        for name in _TUPLE_FIELDS:
            data[name] = list(data[name])
        if self.interactions is not None:
            data["interactions"] = list(self.interactions)
        return data

    @classmethod
    def from_json(cls, data: str | Mapping[str, Any]) -> ModelConfig:
        """From `to_json()`'s dict or its JSON text. Unknown keys are an error."""
        if isinstance(data, str):
            data = json.loads(data)
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - fields
        if unknown:
            raise ValueError(f"unknown ModelConfig fields {sorted(unknown)}")
        return cls(**data)

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=True)

    @classmethod
    def loads(cls, text: str) -> ModelConfig:
        return cls.from_json(text)


def warm_registry(registry: DomainRegistry) -> DomainRegistry:
    """The registry's warm (pretraining) domains, re-numbered 0..K-1, for a model to pretrain on.

    Cold-start domains are added later with `model.add_domain(domain)`.
    """
    return DomainRegistry([Domain(d.name, d.kind, i, d.cold_start) for i, d in enumerate(registry.warm())])
