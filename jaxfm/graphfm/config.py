"""GraphFM configuration: model sizes (paper Table A1) and the per-dataset table.

``VARIANTS`` holds the three sizes of the paper (small 389K / medium 18M / large 75M); every
other field has one default. The dataset table (``datasets``) fixes the stacked per-dataset
feature MLPs and heads: it is part of the config so a checkpoint is self-describing.
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["VARIANTS", "DatasetSpec", "GraphFMConfig", "graphfm_config"]

_TASKS = ("classification", "regression")
_DTYPES = ("float32", "bfloat16")
_ATTENTION = ("auto", "segment", "xla", "cudnn")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DatasetSpec:
    """One dataset of the table: input width, label space and task."""

    name: str
    num_features: int
    num_classes: int
    task: str = "classification"

    def __post_init__(self):
        if not self.name:
            raise ValueError("DatasetSpec.name must be non-empty")
        if self.num_features < 1:
            raise ValueError(f"DatasetSpec {self.name}: num_features must be >= 1")
        if self.task not in _TASKS:
            raise ValueError(f"DatasetSpec {self.name}: task must be one of {_TASKS}")
        if self.task == "classification" and self.num_classes < 1:
            raise ValueError(f"DatasetSpec {self.name}: a classification set needs classes >= 1")


@dataclasses.dataclass(frozen=True, kw_only=True)
class GraphFMConfig:
    """GraphFM model configuration.

    Attributes:
      dim: latent / token width D.
      num_latents: K learned latents shared by all graphs.
      encoder_depth: latent self-attention blocks after the cross attention.
      decoder_depth: node-decoder transformer blocks.
      cross_heads, self_heads, decoder_heads: attention heads.
      mlp_ratio: FFN hidden width / D (the FFNs are GEGLU, as in the Perceiver/POYO code base
        GraphFM builds on).
      pe_dim: k Laplacian eigenvectors per node.
      pe_width: channels of the SignNet output concatenated to the feature part (the feature MLP
        produces ``dim - pe_width``).
      signnet_hidden: hidden width of SignNet's phi and rho.
      feature_dim: F, width of the packed feature rows (wider datasets are SVD-reduced to it).
      feature_hidden: hidden width of the per-dataset feature MLPs (default D).
      num_neighbors: m sampled neighbours in the node decoder sequence.
      dropout: dropout rate in attention outputs and FFNs.
      dtype: compute dtype (parameters stay float32).
      layer_norm_eps: LayerNorm epsilon.
      graph_decoder: add the graph-level decoder (query token x latents) and graph heads.
      attention: ``jaxfm.ops.attention`` implementation for the packed cross attention.
      datasets: the per-dataset table (S entries).
    """

    dim: int = 32
    num_latents: int = 32
    encoder_depth: int = 4
    decoder_depth: int = 2
    cross_heads: int = 4
    self_heads: int = 4
    decoder_heads: int = 4
    mlp_ratio: int = 4
    pe_dim: int = 8
    pe_width: int | None = None
    signnet_hidden: int = 16
    feature_dim: int = 128
    feature_hidden: int | None = None
    num_neighbors: int = 8
    dropout: float = 0.0
    dtype: str = "float32"
    layer_norm_eps: float = 1e-5
    graph_decoder: bool = False
    attention: str = "auto"
    datasets: tuple[DatasetSpec, ...] = ()

    def __post_init__(self):
        for name in ("dim", "num_latents", "encoder_depth", "decoder_depth", "mlp_ratio"):
            if getattr(self, name) < 1:
                raise ValueError(f"GraphFMConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("cross_heads", "self_heads", "decoder_heads"):
            h = getattr(self, name)
            if h < 1 or self.dim % h:
                raise ValueError(f"GraphFMConfig.{name}={h} must divide dim={self.dim}")
        if self.pe_dim < 0 or self.num_neighbors < 0 or self.feature_dim < 1:
            raise ValueError("GraphFMConfig: pe_dim, num_neighbors >= 0 and feature_dim >= 1")
        if not 0 < self.pe_channels < self.dim:
            raise ValueError(f"GraphFMConfig.pe_width must be in (0, dim), got {self.pe_channels}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"GraphFMConfig.dtype must be one of {_DTYPES}, got {self.dtype!r}")
        if self.attention not in _ATTENTION:
            raise ValueError(f"GraphFMConfig.attention must be one of {_ATTENTION}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"GraphFMConfig.dropout must be in [0, 1), got {self.dropout}")
        names = [d.name for d in self.datasets]
        if len(set(names)) != len(names):
            raise ValueError(f"GraphFMConfig.datasets: duplicate names in {names}")
        for d in self.datasets:
            if d.num_features > self.feature_dim:
                raise ValueError(
                    f"GraphFMConfig: dataset {d.name} has {d.num_features} features > "
                    f"feature_dim={self.feature_dim} (reduce them when building the corpus)"
                )

    @property
    def pe_channels(self) -> int:
        return self.pe_width if self.pe_width is not None else max(self.dim // 4, 1)

    @property
    def hidden_features(self) -> int:
        return self.feature_hidden if self.feature_hidden is not None else self.dim

    @property
    def num_classes_max(self) -> int:
        return max([d.num_classes for d in self.datasets] + [1])

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["datasets"] = [dataclasses.asdict(s) for s in self.datasets]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GraphFMConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"GraphFMConfig: unknown keys {sorted(unknown)}")
        d = dict(d)
        d["datasets"] = tuple(DatasetSpec(**s) for s in d.get("datasets", ()))
        return cls(**d)


# Paper Table A1. Cross-attention heads are 4 in every size; FFN hidden = 4 D.
VARIANTS: dict[str, dict[str, Any]] = {
    "small": dict(dim=32, num_latents=32, encoder_depth=4, decoder_depth=2, self_heads=4,
                  decoder_heads=4),
    "medium": dict(dim=256, num_latents=256, encoder_depth=10, decoder_depth=4, self_heads=4,
                   decoder_heads=4),
    "large": dict(dim=512, num_latents=512, encoder_depth=12, decoder_depth=4, self_heads=8,
                  decoder_heads=8),
}  # fmt: skip


def graphfm_config(name: str = "small", **overrides) -> GraphFMConfig:
    """The ``name`` preset with ``overrides`` applied.

    >>> graphfm_config("medium").num_latents
    256
    """
    if name not in VARIANTS:
        raise ValueError(f"unknown GraphFM config {name!r}; choose one of {sorted(VARIANTS)}")
    return GraphFMConfig(**{**VARIANTS[name], **overrides})
