"""Typed, frozen configuration of FIMP models (tokenizers, message creator, model sizes).

Every config is a ``@dataclasses.dataclass(frozen=True, kw_only=True)`` validated in
``__post_init__``; size presets live in :data:`VARIANTS` and are derived with
:func:`dataclasses.replace` (see :func:`fimp_config`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from jaxfm.foundation.brainlm import BrainLMConfig
from jaxfm.foundation.scgpt import ScGPTConfig
from jaxfm.foundation.vit import ViTConfig
from jaxfm.nn.attention import AGGREGATIONS
from jaxfm.nn.mlp import ACTIVATIONS
from jaxfm.nn.transformer import NORM_POSITIONS

__all__ = [
    "DTYPES",
    "MESSAGE_KINDS",
    "PRETRAINED_FAMILIES",
    "VARIANTS",
    "FIMPConfig",
    "FMRITokenizerConfig",
    "GeneTokenizerConfig",
    "ImageTokenizerConfig",
    "MessageCreatorConfig",
    "PretrainedConfig",
    "TokenizerConfig",
    "fimp_config",
]

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
MESSAGE_KINDS = ("attention", "transformer", "foundation")
#: Pretrained FIMP variants (``--init``) -> the foundation config class of their checkpoint
#: (``None``: GenePT is a gene-embedding table, not a model).
PRETRAINED_FAMILIES: dict[str, type | None] = {
    "vit": ViTConfig,
    "scgpt": ScGPTConfig,
    "brainlm": BrainLMConfig,
    "genept": None,
}
TOKEN_COMBINES = ("concat", "sum")


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def _positive(name: str, value: int | None, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    _require(isinstance(value, int) and value > 0, f"{name} must be a positive int, got {value!r}")


def _choice(name: str, value: Any, choices) -> None:
    _require(value in choices, f"{name} must be one of {tuple(choices)}, got {value!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class GeneTokenizerConfig:
    """Gene tokens (eq. 5): value projection ⊕ gene embedding (scGPT / Geneformer style).

    Attributes:
      num_genes: gene vocabulary size of the ``gene_embedding`` table.
      dim: token width; ``None`` inherits :attr:`FIMPConfig.dim`.
      combine: ``"concat"`` (each half D/2, as in the paper) or ``"sum"`` (scGPT).
      value_hidden: hidden width of the value MLP; ``None`` = one Dense from the scalar.
      gene_embedding_dim: width of the embedding table if it differs from its share of the
        token (e.g. a pretrained GenePT table); a ``gene_projection`` Dense then maps it.
      embedding_norm: LayerNorm on the gene and value embeddings (scGPT's encoders).
    """

    num_genes: int
    dim: int | None = None
    combine: str = "concat"
    value_hidden: int | None = None
    gene_embedding_dim: int | None = None
    embedding_norm: bool = False

    def __post_init__(self):
        _positive("num_genes", self.num_genes)
        _positive("dim", self.dim, optional=True)
        _positive("value_hidden", self.value_hidden, optional=True)
        _positive("gene_embedding_dim", self.gene_embedding_dim, optional=True)
        _choice("combine", self.combine, TOKEN_COMBINES)
        _require(
            self.combine != "concat" or self.dim is None or self.dim % 2 == 0,
            f"GeneTokenizerConfig: combine='concat' needs an even dim, got {self.dim}",
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImageTokenizerConfig:
    """ViT patch tokens with a fixed 2-D sinusoidal encoding (eq. 5 for images).

    Attributes:
      image_size: ``(height, width)`` in pixels (an int means square).
      patch_size: p; both image sides must be multiples of p.
      channels: C.
      dim: token width; ``None`` inherits :attr:`FIMPConfig.dim`.
      combine: ``"concat"`` (paper) or ``"sum"`` (ViT-style, keeps a pretrained patch
        projection's full width).
      pe_dim: width of the concatenated encoding (``concat`` only; default ``dim // 2``).
    """

    image_size: int | tuple[int, int]
    patch_size: int
    channels: int = 3
    dim: int | None = None
    combine: str = "concat"
    pe_dim: int | None = None

    def __post_init__(self):
        size = self.image_size
        if isinstance(size, int):
            object.__setattr__(self, "image_size", (size, size))
        _require(
            len(self.image_size) == 2
            and all(isinstance(s, int) and s > 0 for s in self.image_size),
            f"image_size must be a positive int or (h, w), got {size!r}",
        )
        _positive("patch_size", self.patch_size)
        _positive("channels", self.channels)
        _positive("dim", self.dim, optional=True)
        _positive("pe_dim", self.pe_dim, optional=True)
        _choice("combine", self.combine, TOKEN_COMBINES)
        h, w = self.image_size
        _require(
            h % self.patch_size == 0 and w % self.patch_size == 0,
            f"image_size {self.image_size} must be divisible by patch_size {self.patch_size}",
        )
        _require(
            self.combine == "concat" or self.pe_dim is None,
            "pe_dim only applies to combine='concat'",
        )
        if self.dim is not None:
            pe = self.resolved_pe_dim(self.dim)
            _require(
                pe % 4 == 0, f"2-D sinusoidal encoding width must be a multiple of 4, got {pe}"
            )
            _require(
                pe < self.dim or self.combine == "sum", f"pe_dim {pe} must be < dim {self.dim}"
            )

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid ``(rows, cols)``."""
        return self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def resolved_pe_dim(self, dim: int) -> int:
        """Width of the position encoding for token width ``dim``."""
        if self.combine == "sum":
            return dim
        return self.pe_dim if self.pe_dim is not None else dim // 2


@dataclasses.dataclass(frozen=True, kw_only=True)
class FMRITokenizerConfig:
    """BrainLM patch tokens: time patches of a region's signal + XYZ and temporal encodings.

    Attributes:
      patch_size: timepoints per patch (20 in BrainLM / the paper).
      num_patches: patches per region; the signal length is ``patch_size * num_patches``.
      dim: token width; ``None`` inherits :attr:`FIMPConfig.dim` (must be even).
      xyz_scale: region coordinates are multiplied by this before ``xyz_projection``. The
        default suits MNI millimetres (the A424 atlas spans about +-70 mm): the spatial term
        then has the order of the patch projection. Raw millimetres (scale 1) swamp every token
        with a term ~50x larger than its signal and temporal parts, and FIMP-base then barely
        learns fMRI reconstruction. (FIMP-BrainLM's tokenizer takes raw coordinates, as BrainLM
        was trained.)
    """

    patch_size: int = 20
    num_patches: int
    dim: int | None = None
    xyz_scale: float = 0.02

    def __post_init__(self):
        _positive("patch_size", self.patch_size)
        _positive("num_patches", self.num_patches)
        _positive("dim", self.dim, optional=True)
        _require(
            self.dim is None or self.dim % 2 == 0, f"fMRI token dim must be even, got {self.dim}"
        )
        _require(
            isinstance(self.xyz_scale, int | float) and 0 < self.xyz_scale < float("inf"),
            f"FMRITokenizerConfig.xyz_scale must be a positive finite number, got "
            f"{self.xyz_scale!r}",
        )

    @property
    def num_timepoints(self) -> int:
        return self.patch_size * self.num_patches


TokenizerConfig = GeneTokenizerConfig | ImageTokenizerConfig | FMRITokenizerConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class MessageCreatorConfig:
    """The cross-node message creator (eqs. 6-7).

    Attributes:
      kind: ``"attention"`` (FIMP-base: one bare multi-head cross-attention),
        ``"transformer"`` (``num_layers`` transformer layers in cross-node form, the shape of a
        pretrained ViT / scGPT) or ``"foundation"`` (the first ``num_layers`` layers of the
        pretrained foundation model named by :attr:`FIMPConfig.pretrained`, e.g. BrainLM's
        Nystromformer layers; their hyper-parameters come from that model's config, so only
        ``num_layers`` and ``num_heads`` (validation) are read here).
      num_layers: transformer layers (must be 1 for ``"attention"``).
      num_heads: attention heads.
      head_dim: per-head width; ``None`` = ``dim // num_heads``.
      mlp_ratio: MLP hidden width / dim (transformer layers).
      norm: ``"pre"`` or ``"post"`` LayerNorm (transformer layers).
      activation: MLP activation.
      layer_norm_eps: LayerNorm epsilon.
    """

    kind: str = "attention"
    num_layers: int = 1
    num_heads: int = 4
    head_dim: int | None = None
    mlp_ratio: float = 4.0
    norm: str = "pre"
    activation: str = "gelu"
    layer_norm_eps: float = 1e-6

    def __post_init__(self):
        _choice("kind", self.kind, MESSAGE_KINDS)
        _positive("num_layers", self.num_layers)
        _positive("num_heads", self.num_heads)
        _positive("head_dim", self.head_dim, optional=True)
        _require(self.mlp_ratio > 0, f"mlp_ratio must be > 0, got {self.mlp_ratio}")
        _choice("norm", self.norm, NORM_POSITIONS)
        _choice("activation", self.activation, ACTIVATIONS)
        _require(self.layer_norm_eps > 0, f"layer_norm_eps must be > 0, got {self.layer_norm_eps}")
        _require(
            self.kind != "attention" or self.num_layers == 1,
            f"kind='attention' is a single cross-attention; got num_layers={self.num_layers}",
        )


def _foundation_width(foundation) -> int:
    if isinstance(foundation, ViTConfig):
        return foundation.hidden_size
    if isinstance(foundation, ScGPTConfig):
        return foundation.d_model
    return foundation.hidden_size  # BrainLMConfig


def _foundation_depth(foundation) -> int:
    if isinstance(foundation, ViTConfig):
        return foundation.num_layers
    if isinstance(foundation, ScGPTConfig):
        return foundation.nlayers
    return foundation.num_hidden_layers  # BrainLMConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class PretrainedConfig:
    """Which pretrained model a FIMP variant reuses (FIMP-ViT / -scGPT / -BrainLM / -GenePT).

    Attributes:
      family: a key of :data:`PRETRAINED_FAMILIES`.
      foundation: the converted model's architecture (``ViTConfig`` / ``ScGPTConfig`` /
        ``BrainLMConfig``; a dict as in its ``config.json`` is accepted); ``None`` for GenePT.
      gene_vocab_ids: scGPT only: dataset gene index -> checkpoint vocabulary id (genes the
        vocabulary lacks are dropped from the data before tokenization); ``None`` = the data's
        gene ids already are vocabulary ids.
      source: provenance (checkpoint / table path), informational.

    The model dim, the tokenizer and the message creator are derived from ``foundation`` (see
    :mod:`jaxfm.fimp.pretrained`); the weights are grafted in after ``init``.
    """

    family: str
    foundation: Any = None
    gene_vocab_ids: tuple[int, ...] | None = None
    source: str | None = None

    def __post_init__(self):
        _choice("family", self.family, PRETRAINED_FAMILIES)
        cls = PRETRAINED_FAMILIES[self.family]
        foundation = self.foundation
        if isinstance(foundation, dict) and cls is not None:
            foundation = cls.from_dict({k: v for k, v in foundation.items() if k != "family"})
            object.__setattr__(self, "foundation", foundation)
        if cls is None:
            _require(foundation is None, f"family {self.family!r} takes no foundation config")
        else:
            _require(
                isinstance(foundation, cls),
                f"family {self.family!r} needs a {cls.__name__} foundation config, got "
                f"{type(foundation).__name__}",
            )
        ids = self.gene_vocab_ids
        if ids is not None:
            _require(self.family == "scgpt", "gene_vocab_ids only applies to family 'scgpt'")
            ids = tuple(int(i) for i in ids)
            object.__setattr__(self, "gene_vocab_ids", ids)
            bad = [i for i in ids if not 0 <= i < foundation.ntoken]
            _require(
                not bad,
                f"gene_vocab_ids must lie in [0, {foundation.ntoken}) (the checkpoint "
                f"vocabulary), got {bad[:5]}",
            )

    @property
    def width(self) -> int | None:
        """The foundation model's token width (``None`` for GenePT)."""
        return None if self.foundation is None else _foundation_width(self.foundation)

    @property
    def depth(self) -> int | None:
        """The foundation model's encoder layers (``None`` for GenePT)."""
        return None if self.foundation is None else _foundation_depth(self.foundation)


@dataclasses.dataclass(frozen=True, kw_only=True)
class FIMPConfig:
    """A FIMP model: tokenizer, ``num_layers`` FIMP hops, final norm.

    Attributes:
      dim: token width D.
      num_layers: FIMP layers (message-passing hops).
      message: the message creator of every hop.
      tokenizer: modality tokenizer config (``None`` only in size presets; set it with
        :func:`fimp_config`).
      aggregation: ``"mean"`` or ``"sum"`` of incoming messages.
      separate_self: self loops get their own message creator (``self_message``), so COMBINE is
        ``H' = Norm(H + M_self + AGG_{u != v} m_{u->v})`` (GraphSAGE-style root path) instead of one
        aggregate in which a node's own message weighs 1/(degree + 1).
      combine_mlp: COMBINE adds ``H'' = Norm(H' + MLP(H'))`` after ``H' = Norm(H + M)``.
      combine_mlp_ratio: hidden width / dim of the COMBINE MLP.
      final_norm: LayerNorm on the output tokens.
      dropout: dropout rate (messages, MLPs).
      layer_norm_eps: epsilon of the COMBINE / final LayerNorms.
      edge_chunk_size: edges per attention chunk (bounded memory); ``None`` = op default.
      dtype: computation dtype name, ``"float32"`` or ``"bfloat16"`` (params stay float32).
      pretrained: the pretrained model this variant reuses (``None``: FIMP-base, scratch). With
        a foundation model, ``dim`` must be its width, the tokenizer is its embedding layer and
        the message creator its encoder layers (see :mod:`jaxfm.fimp.pretrained`).
    """

    dim: int
    num_layers: int = 1
    message: MessageCreatorConfig = dataclasses.field(default_factory=MessageCreatorConfig)
    tokenizer: TokenizerConfig | None = None
    aggregation: str = "mean"
    separate_self: bool = True
    combine_mlp: bool = True
    combine_mlp_ratio: float = 4.0
    final_norm: bool = True
    dropout: float = 0.0
    layer_norm_eps: float = 1e-6
    edge_chunk_size: int | None = None
    dtype: str = "float32"
    pretrained: PretrainedConfig | None = None

    def __post_init__(self):
        if isinstance(self.pretrained, dict):  # from config.json (serialization)
            object.__setattr__(self, "pretrained", PretrainedConfig(**self.pretrained))
        _positive("dim", self.dim)
        _positive("num_layers", self.num_layers)
        _require(
            self.pretrained is None or isinstance(self.pretrained, PretrainedConfig),
            f"pretrained must be a PretrainedConfig, got {type(self.pretrained).__name__}",
        )
        self._check_pretrained()
        _require(
            isinstance(self.message, MessageCreatorConfig),
            f"message must be a MessageCreatorConfig, got {type(self.message).__name__}",
        )
        _require(
            self.tokenizer is None
            or isinstance(
                self.tokenizer, GeneTokenizerConfig | ImageTokenizerConfig | FMRITokenizerConfig
            ),
            f"tokenizer must be a tokenizer config, got {type(self.tokenizer).__name__}",
        )
        _choice("aggregation", self.aggregation, AGGREGATIONS)
        _require(self.combine_mlp_ratio > 0, "combine_mlp_ratio must be > 0")
        _require(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")
        _require(self.layer_norm_eps > 0, "layer_norm_eps must be > 0")
        _positive("edge_chunk_size", self.edge_chunk_size, optional=True)
        _choice("dtype", self.dtype, DTYPES)
        if self.message.head_dim is None:
            _require(
                self.dim % self.message.num_heads == 0,
                f"dim {self.dim} must be divisible by message.num_heads {self.message.num_heads}",
            )
        tok = self.tokenizer
        if tok is not None and tok.dim is not None:
            _require(tok.dim == self.dim, f"tokenizer.dim {tok.dim} != dim {self.dim}")
        if isinstance(tok, GeneTokenizerConfig) and tok.combine == "concat":
            _require(self.dim % 2 == 0, f"gene concat tokens need an even dim, got {self.dim}")
        if isinstance(tok, FMRITokenizerConfig):
            _require(self.dim % 2 == 0, f"fMRI tokens need an even dim, got {self.dim}")
        if isinstance(tok, ImageTokenizerConfig) and self.pretrained is None:
            pe = tok.resolved_pe_dim(self.dim)
            _require(
                pe % 4 == 0, f"image position encoding width must be a multiple of 4, got {pe}"
            )
            _require(tok.combine == "sum" or pe < self.dim, f"pe_dim {pe} must be < dim {self.dim}")

    def _check_pretrained(self) -> None:
        pre = self.pretrained
        if self.message.kind == "foundation":
            _require(
                pre is not None and pre.foundation is not None,
                "message kind 'foundation' needs pretrained= a foundation model (vit, scgpt, "
                "brainlm)",
            )
        if pre is None or pre.foundation is None:
            return
        _require(
            self.dim == pre.width,
            f"dim {self.dim} must equal the pretrained {pre.family} width {pre.width}",
        )
        if self.message.kind != "attention":
            _require(
                self.message.num_layers <= pre.depth,
                f"message.num_layers {self.message.num_layers} exceeds the pretrained "
                f"{pre.family} depth {pre.depth}",
            )

    @property
    def compute_dtype(self):
        """The jnp dtype named by :attr:`dtype`."""
        return DTYPES[self.dtype]

    @property
    def message_mlp_dim(self) -> int:
        return max(1, round(self.message.mlp_ratio * self.dim))

    @property
    def combine_mlp_dim(self) -> int:
        return max(1, round(self.combine_mlp_ratio * self.dim))


_TINY = FIMPConfig(dim=32, num_layers=1, message=MessageCreatorConfig(num_heads=2))

#: FIMP-base (scratch, single cross-attention message) size presets; tokenizer left unset.
VARIANTS: dict[str, FIMPConfig] = {
    "tiny": _TINY,
    "small": dataclasses.replace(
        _TINY, dim=128, num_layers=2, message=MessageCreatorConfig(num_heads=4), dropout=0.1
    ),
    "base": dataclasses.replace(
        _TINY, dim=256, num_layers=2, message=MessageCreatorConfig(num_heads=8), dropout=0.1
    ),
}


def fimp_config(variant: str, *, tokenizer: TokenizerConfig, **overrides) -> FIMPConfig:
    """A preset from :data:`VARIANTS` with a tokenizer and field overrides.

    Example:
      >>> cfg = fimp_config("tiny", tokenizer=GeneTokenizerConfig(num_genes=100), num_layers=2)
      >>> cfg.dim, cfg.num_layers
      (32, 2)

    Raises:
      ValueError: for an unknown variant (or an invalid resulting config).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown FIMP variant {variant!r}; expected one of {sorted(VARIANTS)}")
    return dataclasses.replace(VARIANTS[variant], tokenizer=tokenizer, **overrides)
