"""GraphFM configuration: model sizes (paper Table A1) and the per-dataset table.

:data:`VARIANTS` holds the three sizes of the paper (small 389K / medium 18M / large 75M
parameters); every other field has one default. The dataset table (``datasets``) fixes the
stacked per-dataset feature MLPs and heads, so it is part of the config and a checkpoint's
``config.json`` is self-describing.

Table A1 (latents K / dim D / encoder depth / decoder depth / heads cross, self, decoder / FFN):

=======  ===  ===  =========  =========  =========  ====
size     K    D    enc depth  dec depth  heads      FFN
=======  ===  ===  =========  =========  =========  ====
small    32   32   4          2          4, 4, 4    128
medium   256  256  10         4          4, 4, 4    1024
large    512  512  12         4          4, 8, 8    2048
=======  ===  ===  =========  =========  =========  ====

FFN hidden = ``mlp_ratio * dim`` (4 D in every size).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxfm.graph.packed import TASKS, DatasetSpec, _is_int, _require

__all__ = [
    "ATTENTION_PATHS",
    "FEATURE_MLP_PATHS",
    "TASKS",
    "VARIANTS",
    "DatasetSpec",
    "GraphFMConfig",
    "graphfm_config",
]

_DTYPES = ("float32", "bfloat16")
#: Packed cross-attention layouts: ``segment`` (one concatenated sequence + segment ids; XLA path,
#: CPU/TPU), ``bucketed`` (graphs scattered into ``[G, S]`` with key lengths; cuDNN flash path on
#: GPU), ``auto`` (bucketed on GPU, segment elsewhere).
ATTENTION_PATHS = ("auto", "segment", "bucketed")
#: Per-dataset feature MLP implementations: ``ragged`` (``jax.lax.ragged_dot``, the default) and
#: ``gather`` (each row gathers its dataset's weights; same numbers, for tests and benchmarks).
FEATURE_MLP_PATHS = ("ragged", "gather")


@dataclasses.dataclass(frozen=True, kw_only=True)
class GraphFMConfig:
    """GraphFM model configuration (the defaults are the ``small`` size).

    Attributes:
      dim: token / latent width D.
      num_latents: K learned latents shared by all graphs.
      encoder_depth: latent self-attention blocks after the cross attention.
      decoder_depth: node-decoder transformer blocks.
      cross_heads: heads of the encoder cross attention (and of the graph decoder).
      self_heads: heads of the latent self-attention blocks.
      decoder_heads: heads of the node-decoder blocks.
      mlp_ratio: FFN hidden width / D. The FFNs are GEGLU (``W2 (a * gelu(g))``,
        ``[a, g] = W1 x``), the feed-forward of the Perceiver/POYO code base GraphFM builds on.
      pe_dim: k, Laplacian eigenvectors per node (8: enough to separate the coarse structure of
        graphs of a few hundred nodes, cheap to compute with ``eigsh`` for large ones).
      pe_width: channels of the SignNet part of a token; the feature MLP produces
        ``dim - pe_width``. ``None``: ``max(dim // 4, 1)``.
      signnet_hidden: hidden width of SignNet's phi and rho.
      feature_dim: F, width of the packed feature rows (wider datasets are reduced to it when the
        corpus is built).
      feature_hidden: hidden width of the per-dataset feature MLPs (``None``: D).
      num_neighbors: m sampled neighbours in the node-decoder sequence.
      dropout: dropout rate on attention outputs and inside the FFNs.
      dtype: compute dtype, ``"float32"`` or ``"bfloat16"`` (parameters stay float32).
      layer_norm_eps: LayerNorm epsilon.
      graph_decoder: add the graph-level decoder (query token x latents) and graph heads.
      attention: layout of the packed cross attention, one of :data:`ATTENTION_PATHS`.
      bucket_nodes: S, per-graph key length of the ``bucketed`` layout; every graph of a batch
        must have at most S rows (``None``: T, always safe, G x T keys).
      feature_mlp: per-dataset MLP implementation, one of :data:`FEATURE_MLP_PATHS`.
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
    bucket_nodes: int | None = None
    feature_mlp: str = "ragged"
    datasets: tuple[DatasetSpec, ...] = ()

    def __post_init__(self):
        positive = ("dim", "num_latents", "encoder_depth", "decoder_depth", "mlp_ratio")
        for name in (*positive, "signnet_hidden", "feature_dim", "pe_dim"):
            v = getattr(self, name)
            _require(_is_int(v) and v >= 1, f"GraphFMConfig.{name} must be an int >= 1, got {v!r}")
        for name in ("cross_heads", "self_heads", "decoder_heads"):
            h = getattr(self, name)
            _require(
                _is_int(h) and h >= 1 and self.dim % h == 0,
                f"GraphFMConfig.{name}={h!r} must be a positive divisor of dim={self.dim}",
            )
        _require(
            _is_int(self.num_neighbors) and self.num_neighbors >= 0,
            f"GraphFMConfig.num_neighbors must be an int >= 0, got {self.num_neighbors!r}",
        )
        _require(
            0 < self.pe_channels < self.dim,
            f"GraphFMConfig.pe_width must be in (0, dim={self.dim}), got {self.pe_channels}",
        )
        _require(
            self.feature_hidden is None
            or (_is_int(self.feature_hidden) and self.feature_hidden > 0),
            "GraphFMConfig.feature_hidden must be None or an int >= 1, got "
            f"{self.feature_hidden!r}",
        )
        _require(
            self.bucket_nodes is None or (_is_int(self.bucket_nodes) and self.bucket_nodes > 0),
            f"GraphFMConfig.bucket_nodes must be None or an int >= 1, got {self.bucket_nodes!r}",
        )
        _require(
            self.dtype in _DTYPES,
            f"GraphFMConfig.dtype must be one of {_DTYPES}, got {self.dtype!r}",
        )
        _require(
            self.attention in ATTENTION_PATHS,
            f"GraphFMConfig.attention must be one of {ATTENTION_PATHS}, got {self.attention!r}",
        )
        _require(
            self.feature_mlp in FEATURE_MLP_PATHS,
            f"GraphFMConfig.feature_mlp must be one of {FEATURE_MLP_PATHS}, got "
            f"{self.feature_mlp!r}",
        )
        _require(
            0 <= self.dropout < 1, f"GraphFMConfig.dropout must be in [0, 1), got {self.dropout}"
        )
        _require(self.layer_norm_eps > 0, "GraphFMConfig.layer_norm_eps must be > 0")
        if isinstance(self.datasets, list):
            object.__setattr__(self, "datasets", tuple(self.datasets))
        _require(
            isinstance(self.datasets, tuple)
            and all(isinstance(d, DatasetSpec) for d in self.datasets),
            "GraphFMConfig.datasets must be a tuple of DatasetSpec (use from_dict for dicts)",
        )
        names = [d.name for d in self.datasets]
        _require(len(set(names)) == len(names), f"GraphFMConfig.datasets: duplicate names {names}")
        for d in self.datasets:
            _require(
                d.num_features <= self.feature_dim,
                f"GraphFMConfig: dataset {d.name!r} has {d.num_features} features > "
                f"feature_dim={self.feature_dim} (reduce them when building the corpus)",
            )

    @property
    def pe_channels(self) -> int:
        """Width of the SignNet part of a token."""
        return self.pe_width if self.pe_width is not None else max(self.dim // 4, 1)

    @property
    def hidden_features(self) -> int:
        """Hidden width of the per-dataset feature MLPs."""
        return self.feature_hidden if self.feature_hidden is not None else self.dim

    @property
    def ffn_hidden(self) -> int:
        """FFN hidden width (Table A1: 128 / 1024 / 2048)."""
        return self.mlp_ratio * self.dim

    @property
    def num_classes_max(self) -> int:
        """C_max, the width of the stacked heads' logits."""
        return max([d.num_classes for d in self.datasets] + [1])

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (``from_dict`` inverts it)."""
        d = dataclasses.asdict(self)
        d["datasets"] = [dataclasses.asdict(s) for s in self.datasets]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GraphFMConfig:
        """Inverse of :meth:`to_dict`.

        Raises:
          ValueError: unknown keys (e.g. a config written by another version).
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        _require(not unknown, f"GraphFMConfig.from_dict: unknown keys {sorted(unknown)}")
        d = dict(d)
        d["datasets"] = tuple(
            s if isinstance(s, DatasetSpec) else DatasetSpec(**s) for s in d.get("datasets", ())
        )
        return cls(**d)


# Paper Table A1. ``small`` is the dataclass default; the others override what differs.
VARIANTS: dict[str, dict[str, Any]] = {
    "small": dict(dim=32, num_latents=32, encoder_depth=4, decoder_depth=2, cross_heads=4,
                  self_heads=4, decoder_heads=4, mlp_ratio=4),
    "medium": dict(dim=256, num_latents=256, encoder_depth=10, decoder_depth=4, cross_heads=4,
                   self_heads=4, decoder_heads=4, mlp_ratio=4),
    "large": dict(dim=512, num_latents=512, encoder_depth=12, decoder_depth=4, cross_heads=4,
                  self_heads=8, decoder_heads=8, mlp_ratio=4),
}  # fmt: skip


def graphfm_config(name: str = "small", **overrides) -> GraphFMConfig:
    """The ``name`` preset of :data:`VARIANTS` with ``overrides`` applied.

    Raises:
      ValueError: unknown preset or field, or an invalid combination.

    >>> graphfm_config("medium").num_latents
    256
    >>> graphfm_config("large", dim=256).ffn_hidden
    1024
    """
    _require(name in VARIANTS, f"unknown GraphFM config {name!r}; choose one of {sorted(VARIANTS)}")
    known = {f.name for f in dataclasses.fields(GraphFMConfig)}
    unknown = set(overrides) - known
    _require(not unknown, f"graphfm_config({name!r}): unknown fields {sorted(unknown)}")
    return GraphFMConfig(**{**VARIANTS[name], **overrides})
