"""Flax scGPT: the ``TransformerModel`` of github.com/bowang-lab/scGPT (Cui et al., 2024).

A cell is a sequence of genes. Token i carries a gene id and an expression value; its input
embedding is ``GeneEncoder(gene_i) + ValueEncoder(value_i)`` (no positional encoding: gene order
is arbitrary). A stack of post-norm ReLU encoder layers (PyTorch ``nn.TransformerEncoderLayer``
semantics, LayerNorm eps 1e-5, padded *keys* masked) gives per-gene states; heads read them:

* ``mlm_output``: the expression decoder (gene expression prediction, GEP) per token;
* ``cell_emb``: the ``<cls>`` state (or average / value-weighted pooling);
* ``mvc_output``: masked value prediction from the cell embedding (GEPC), an inner product of the
  cell embedding with a query made from each gene's embedding;
* ``cls_output``: the cell-type classifier on the cell embedding.

Every encoder layer is a :class:`jaxfm.nn.TransformerLayer` (``norm="post"``,
``activation="relu"``), so the same parameters also run in FIMP cross-node form
(:meth:`ScGPT.cross_node`): queries from a cell's genes, keys/values from a neighbouring cell's
genes. The gene table (``encoder``) and value encoder (``value_encoder``) are submodules with
stable names; :meth:`ScGPT.embed` returns the summed input embedding a FIMP tokenizer needs.

Parameter tree (names follow the PyTorch state dict):
``encoder/{embedding/embedding, enc_norm}``, ``value_encoder/{linear1, linear2, norm}`` (or
``value_encoder/{embedding, enc_norm}`` for binned categories), ``transformer_encoder/layers_i/
{attention/{query,key,value,out}, norm1, norm2, mlp/{fc1, fc2}}``, ``decoder/fc_{0,2,4}``
(+ ``decoder/zero_logit_{0,2,4}``), ``cls_decoder/{_decoder_{k}, out_layer}``,
``mvc_decoder/{gene2query, W}`` (+ ``W_zero_logit``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxfm.foundation.family_config import checked_fields
from jaxfm.nn import TransformerLayer

__all__ = [
    "CELL_EMB_STYLES",
    "INPUT_EMB_STYLES",
    "MVC_DECODER_STYLES",
    "VOCAB_FILE",
    "ClsDecoder",
    "ContinuousValueEncoder",
    "ExprDecoder",
    "GeneEncoder",
    "MVCDecoder",
    "ScGPT",
    "ScGPTConfig",
    "genes_to_ids",
    "load_vocab",
    "model_from_config",
]

FAMILY = "scgpt"
VOCAB_FILE = "vocab.json"
INPUT_EMB_STYLES = ("continuous", "category", "scaling")
CELL_EMB_STYLES = ("cls", "avg-pool", "w-pool")
MVC_DECODER_STYLES = ("inner product", "inner product, detach")
_TORCH_LN_EPS = 1e-5  # PyTorch nn.LayerNorm default, used by every scGPT LayerNorm


@dataclasses.dataclass(frozen=True, kw_only=True)
class ScGPTConfig:
    """Hyper-parameters of an scGPT ``TransformerModel`` (names follow its constructor).

    Attributes:
      ntoken: vocabulary size (genes + special tokens).
      d_model: model width D (``embsize`` in args.json).
      nhead: attention heads H (``nheads``).
      d_hid: width of the feed-forward layer.
      nlayers: encoder layers.
      nlayers_cls: layers of the classification decoder (``nlayers_cls - 1`` hidden blocks).
      n_cls: classes of the classification decoder; 0 = the checkpoint has none.
      dropout: dropout rate (inactive with ``deterministic=True``).
      pad_token_id: vocabulary id of ``<pad>`` (not 0 in released vocabularies).
      pad_value: expression value carried by ``<cls>`` / ``<pad>`` tokens.
      input_emb_style: ``"continuous"`` (MLP value encoder), ``"category"`` (binned values
        looked up in a table of ``n_input_bins``) or ``"scaling"`` (gene embedding * value).
      n_input_bins: number of value bins (``"category"`` only).
      max_value: clip of the continuous value encoder's input.
      cell_emb_style: ``"cls"`` (state at position 0), ``"avg-pool"`` (mean over all positions,
        padding included, as scGPT) or ``"w-pool"`` (value-weighted sum, L2-normalised).
      do_mvc: whether the model has the MVC (GEPC) decoder.
      mvc_decoder_style: MVC decoder architecture (inner-product styles are supported).
      explicit_zero_prob: expression and MVC decoders also predict zero probabilities.
      layer_norm_eps: epsilon of every LayerNorm (PyTorch default 1e-5).
    """

    ntoken: int
    d_model: int
    nhead: int
    d_hid: int
    nlayers: int
    nlayers_cls: int = 3
    n_cls: int = 1
    dropout: float = 0.0
    pad_token_id: int
    pad_value: float = 0.0
    input_emb_style: str = "continuous"
    n_input_bins: int | None = None
    max_value: float = 512.0
    cell_emb_style: str = "cls"
    do_mvc: bool = False
    mvc_decoder_style: str = "inner product"
    explicit_zero_prob: bool = False
    layer_norm_eps: float = _TORCH_LN_EPS

    def __post_init__(self):
        for name in ("ntoken", "d_model", "nhead", "d_hid", "nlayers"):
            if getattr(self, name) < 1:
                raise ValueError(f"ScGPTConfig: {name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.nhead:
            raise ValueError(
                f"ScGPTConfig: d_model={self.d_model} must be divisible by nhead={self.nhead}"
            )
        if self.n_cls < 0 or (self.n_cls > 0 and self.nlayers_cls < 1):
            raise ValueError(
                f"ScGPTConfig: need n_cls >= 0 and nlayers_cls >= 1 with a classifier, got "
                f"n_cls={self.n_cls}, nlayers_cls={self.nlayers_cls}"
            )
        if not 0 <= self.pad_token_id < self.ntoken:
            raise ValueError(
                f"ScGPTConfig: pad_token_id={self.pad_token_id} is outside "
                f"[0, ntoken={self.ntoken})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ScGPTConfig: dropout must be in [0, 1), got {self.dropout}")
        _check_choice("input_emb_style", self.input_emb_style, INPUT_EMB_STYLES)
        _check_choice("cell_emb_style", self.cell_emb_style, CELL_EMB_STYLES)
        _check_choice("mvc_decoder_style", self.mvc_decoder_style, MVC_DECODER_STYLES)
        if self.input_emb_style == "category" and not (self.n_input_bins or 0) > 0:
            raise ValueError(
                "ScGPTConfig: input_emb_style='category' needs n_input_bins > 0, got "
                f"{self.n_input_bins}"
            )
        if self.layer_norm_eps <= 0:
            raise ValueError(f"ScGPTConfig: layer_norm_eps must be > 0, got {self.layer_norm_eps}")

    @property
    def head_dim(self) -> int:
        """Per-head width Dh = D / H."""
        return self.d_model // self.nhead

    def layer_kwargs(self) -> dict[str, Any]:
        """Arguments of :class:`jaxfm.nn.TransformerLayer` that reproduce one encoder layer."""
        return dict(
            num_heads=self.nhead,
            mlp_dim=self.d_hid,
            norm="post",
            activation="relu",
            layer_norm_eps=self.layer_norm_eps,
            dropout=self.dropout,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict including ``"family": "scgpt"`` (the ``config.json`` of a model dir)."""
        return {"family": FAMILY, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> ScGPTConfig:
        """Inverse of :meth:`to_dict`.

        Raises:
          ValueError: for another family or a key that is not a config field (named).
        """
        return cls(**checked_fields(cls, config, FAMILY))


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"ScGPTConfig: {name} must be one of {list(choices)}, got {value!r}")


def _layer_norm(eps: float, name: str | None = None) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=eps, name=name)


class GeneEncoder(nn.Module):
    """``LayerNorm(Embedding(gene_ids))``: the gene table FIMP-scGPT reuses.

    Shapes:
      gene_ids ``[B, S]`` int -> ``[B, S, D]``.
    """

    num_embeddings: int
    features: int
    eps: float = _TORCH_LN_EPS

    @nn.compact
    def __call__(self, gene_ids: jax.Array) -> jax.Array:
        x = nn.Embed(self.num_embeddings, self.features, name="embedding")(gene_ids)
        return _layer_norm(self.eps, "enc_norm")(x)


class ContinuousValueEncoder(nn.Module):
    """``dropout(LayerNorm(linear2(relu(linear1(min(x, max_value))))))`` per token.

    Shapes:
      values ``[B, S]`` float -> ``[B, S, D]``.
    """

    features: int
    max_value: float = 512.0
    dropout: float = 0.0
    eps: float = _TORCH_LN_EPS

    @nn.compact
    def __call__(self, values: jax.Array, *, deterministic: bool = True) -> jax.Array:
        x = jnp.minimum(jnp.asarray(values, jnp.float32)[..., None], self.max_value)  # [B, S, 1]
        x = jax.nn.relu(nn.Dense(self.features, name="linear1")(x))
        x = nn.Dense(self.features, name="linear2")(x)
        x = _layer_norm(self.eps, "norm")(x)
        return nn.Dropout(self.dropout)(x, deterministic=deterministic)


class ExprDecoder(nn.Module):
    """Expression decoder: ``Linear-LeakyReLU-Linear-LeakyReLU-Linear(->1)`` per token.

    Returns ``{"pred": [B, S]}`` plus ``"zero_probs"`` with ``explicit_zero_prob``.
    """

    features: int
    explicit_zero_prob: bool = False

    def _mlp(self, x: jax.Array, prefix: str) -> jax.Array:
        h = nn.leaky_relu(nn.Dense(self.features, name=f"{prefix}_0")(x), 0.01)
        h = nn.leaky_relu(nn.Dense(self.features, name=f"{prefix}_2")(h), 0.01)
        return nn.Dense(1, name=f"{prefix}_4")(h)[..., 0]  # [B, S]

    @nn.compact
    def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
        out = {"pred": self._mlp(x, "fc")}
        if self.explicit_zero_prob:
            out["zero_probs"] = jax.nn.sigmoid(self._mlp(x, "zero_logit"))
        return out


class ClsDecoder(nn.Module):
    """``[Linear, ReLU, LayerNorm] x (nlayers - 1)`` then ``out_layer`` (PyTorch indices kept).

    Shapes:
      cell_emb ``[B, D]`` -> ``[B, n_cls]``.
    """

    features: int
    n_cls: int
    nlayers: int
    eps: float = _TORCH_LN_EPS

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(self.nlayers - 1):
            x = jax.nn.relu(nn.Dense(self.features, name=f"_decoder_{3 * i}")(x))
            x = _layer_norm(self.eps, f"_decoder_{3 * i + 2}")(x)
        return nn.Dense(self.n_cls, name="out_layer")(x)


class MVCDecoder(nn.Module):
    """MVC ("inner product") decoder: ``pred[b, s] = W(sigmoid(gene2query(g[b, s]))) . c[b]``.

    Shapes:
      cell_emb ``[B, D]``, gene_embs ``[B, S, D]`` -> ``{"pred": [B, S]}`` (+ ``zero_probs``).
    """

    features: int
    explicit_zero_prob: bool = False

    @nn.compact
    def __call__(self, cell_emb: jax.Array, gene_embs: jax.Array) -> dict[str, jax.Array]:
        query = jax.nn.sigmoid(nn.Dense(self.features, name="gene2query")(gene_embs))
        w = nn.Dense(self.features, use_bias=False, name="W")(query)  # [B, S, D]
        out = {"pred": jnp.einsum("bsd,bd->bs", w, cell_emb)}
        if self.explicit_zero_prob:
            wz = nn.Dense(self.features, name="W_zero_logit")(query)
            out["zero_probs"] = jax.nn.sigmoid(jnp.einsum("bsd,bd->bs", wz, cell_emb))
        return out


class _CategoryValueEncoder(nn.Module):
    """``LayerNorm(Embedding(int(values)))`` for binned values (``input_emb_style="category"``)."""

    num_embeddings: int
    features: int
    eps: float = _TORCH_LN_EPS

    @nn.compact
    def __call__(self, values: jax.Array, *, deterministic: bool = True) -> jax.Array:
        del deterministic
        x = nn.Embed(self.num_embeddings, self.features, name="embedding")(
            jnp.asarray(values).astype(jnp.int32)  # truncation toward zero, like Tensor.long()
        )
        return _layer_norm(self.eps, "enc_norm")(x)


class _Encoder(nn.Module):
    """The encoder-layer stack (``transformer_encoder`` in PyTorch), layers ``layers_i``."""

    config: ScGPTConfig

    def setup(self):
        self.layers = [
            TransformerLayer(**self.config.layer_kwargs()) for _ in range(self.config.nlayers)
        ]

    def __call__(self, x, kv_mask, deterministic):
        states = [x]
        for layer in self.layers:
            x = layer(x, kv_mask=kv_mask, deterministic=deterministic)
            states.append(x)
        return states


class ScGPT(nn.Module):
    """scGPT ``TransformerModel`` (inference forward of all heads the checkpoint has).

    Attributes:
      config: the model's :class:`ScGPTConfig`.

    Submodules (stable names for reuse): ``encoder`` (:class:`GeneEncoder`), ``value_encoder``,
    ``transformer_encoder`` (``.layers[i]`` are :class:`jaxfm.nn.TransformerLayer`), ``decoder``,
    ``cls_decoder``, ``mvc_decoder``.
    """

    config: ScGPTConfig

    def setup(self):
        cfg = self.config
        eps = cfg.layer_norm_eps
        self.encoder = GeneEncoder(cfg.ntoken, cfg.d_model, eps)
        if cfg.input_emb_style == "continuous":
            self.value_encoder = ContinuousValueEncoder(
                cfg.d_model, max_value=cfg.max_value, dropout=cfg.dropout, eps=eps
            )
        elif cfg.input_emb_style == "category":
            self.value_encoder = _CategoryValueEncoder(cfg.n_input_bins, cfg.d_model, eps)
        self.transformer_encoder = _Encoder(cfg)
        self.decoder = ExprDecoder(cfg.d_model, cfg.explicit_zero_prob)
        if cfg.n_cls > 0:
            self.cls_decoder = ClsDecoder(cfg.d_model, cfg.n_cls, cfg.nlayers_cls, eps)
        if cfg.do_mvc:
            self.mvc_decoder = MVCDecoder(cfg.d_model, cfg.explicit_zero_prob)

    def embed(
        self, gene_ids: jax.Array, values: jax.Array, *, deterministic: bool = True
    ) -> dict[str, jax.Array]:
        """Input embeddings (what FIMP-scGPT tokenizes a cell with).

        Returns:
          ``{"gene_embeddings", "value_embeddings" (not for "scaling"), "input_embeddings"}``;
          ``input_embeddings`` is ``gene + value`` (or ``gene * value`` for ``"scaling"``).

        Shapes:
          gene_ids ``[B, S]`` int, values ``[B, S]`` -> each ``[B, S, D]``.
        """
        genes = self.encoder(jnp.asarray(gene_ids))
        out = {"gene_embeddings": genes}
        if self.config.input_emb_style == "scaling":
            out["input_embeddings"] = genes * jnp.asarray(values, genes.dtype)[..., None]
        else:
            vals = self.value_encoder(values, deterministic=deterministic)
            out["value_embeddings"] = vals
            out["input_embeddings"] = genes + vals
        return out

    def __call__(
        self,
        gene_ids: jax.Array,
        values: jax.Array,
        padding_mask: jax.Array | None = None,
        *,
        deterministic: bool = True,
        output_intermediates: bool = False,
    ) -> dict[str, jax.Array]:
        """Forward pass (``TransformerModel.forward`` with CLS and MVC outputs on).

        Args:
          gene_ids: vocabulary ids; ``<cls>`` at position 0 for ``cell_emb_style="cls"``.
          values: expression values (``pad_value`` at ``<cls>`` / ``<pad>``).
          padding_mask: True = padding (scGPT's ``src_key_padding_mask``); padded positions
            are never attended to as keys. Their own outputs are implementation-defined.
          deterministic: disables dropout when True.
          output_intermediates: also return ``attentions`` ``[L, B, H, S, S]``,
            ``attentions_layer0`` and the layer-0 projections ``layer0_{q,k,v}`` ``[B, S, D]``
            (heads flattened head-major, as PyTorch's ``in_proj``). Static.

        Returns:
          dict with ``gene_embeddings``, ``value_embeddings`` (not for "scaling"),
          ``hidden_states`` ``[L+1, B, S, D]`` (input embeddings, then each layer),
          ``encoder_output`` ``[B, S, D]``, ``cell_emb`` / ``cell_emb_l2norm`` ``[B, D]``,
          ``mlm_output`` ``[B, S]``, and as the model has them ``mlm_zero_probs``,
          ``mvc_output`` / ``mvc_zero_probs`` ``[B, S]``, ``cls_output`` ``[B, n_cls]``.

        Shapes:
          gene_ids, values, padding_mask ``[B, S]``.
        """
        gene_ids = jnp.asarray(gene_ids)
        if gene_ids.ndim != 2:
            raise ValueError(f"ScGPT: gene_ids must be [B, S], got shape {gene_ids.shape}")
        if jnp.shape(values) != gene_ids.shape:
            raise ValueError(
                f"ScGPT: values must have the shape of gene_ids {gene_ids.shape}, got "
                f"{jnp.shape(values)}"
            )
        if padding_mask is None:
            padding_mask = jnp.zeros(gene_ids.shape, bool)
        padding_mask = jnp.asarray(padding_mask, bool)
        if padding_mask.shape != gene_ids.shape:
            raise ValueError(
                f"ScGPT: padding_mask must have shape {gene_ids.shape}, got {padding_mask.shape}"
            )
        kv_mask = ~padding_mask  # True = valid key
        out = self.embed(gene_ids, values, deterministic=deterministic)
        x = out.pop("input_embeddings")
        states = self.transformer_encoder(x, kv_mask, deterministic)
        enc = states[-1]
        out["hidden_states"] = jnp.stack(states)  # [L+1, B, S, D]
        out["encoder_output"] = enc

        if output_intermediates:
            layers = self.transformer_encoder.layers
            q, k, v = layers[0].attention.project_qkv(x)  # [B, S, H, Dh]
            for name, t in (("layer0_q", q), ("layer0_k", k), ("layer0_v", v)):
                out[name] = t.reshape(*t.shape[:2], -1)  # [B, S, H*Dh]
            maps = [
                layer.attention_map(s, kv_mask=kv_mask)
                for layer, s in zip(layers, states[:-1], strict=True)
            ]
            out["attentions"] = jnp.stack(maps)  # [L, B, H, S, S]
            out["attentions_layer0"] = maps[0]

        mlm = self.decoder(enc)
        out["mlm_output"] = mlm["pred"]
        if "zero_probs" in mlm:
            out["mlm_zero_probs"] = mlm["zero_probs"]

        cell_emb = self._cell_emb(enc, jnp.asarray(values, enc.dtype))
        out["cell_emb"] = cell_emb
        out["cell_emb_l2norm"] = _l2_normalize(cell_emb)
        if self.config.n_cls > 0:
            out["cls_output"] = self.cls_decoder(cell_emb)
        if self.config.do_mvc:
            mvc = self.mvc_decoder(cell_emb, out["gene_embeddings"])
            out["mvc_output"] = mvc["pred"]
            if "zero_probs" in mvc:
                out["mvc_zero_probs"] = mvc["zero_probs"]
        return out

    def _cell_emb(self, enc: jax.Array, values: jax.Array) -> jax.Array:
        """``TransformerModel._get_cell_emb_from_layer``: ``[B, S, D] -> [B, D]``."""
        style = self.config.cell_emb_style
        if style == "cls":
            return enc[:, 0]
        if style == "avg-pool":
            return jnp.mean(enc, axis=1)  # padding included, as in scGPT
        return _l2_normalize(jnp.einsum("bsd,bs->bd", enc, values))  # "w-pool"

    def cross_node(
        self,
        x: jax.Array,
        senders: jax.Array,
        receivers: jax.Array,
        *,
        kv_mask: jax.Array | None = None,
        edge_mask: jax.Array | None = None,
        aggregation: str = "mean",
        edge_chunk_size: int | None = None,
        deterministic: bool = True,
    ) -> jax.Array:
        """Runs every encoder layer in FIMP cross-node form (same parameters).

        Each layer's attention takes queries from a node's own stream and keys/values from its
        in-neighbours' streams (aggregated over edges); residuals, norms and the MLP are per node.
        With only self-loops this equals the encoder's output.

        Args:
          x: node token streams, e.g. ``embed(...)["input_embeddings"]`` of each cell.
          senders: source node per edge.
          receivers: destination node per edge.
          kv_mask: True for valid (non-padding) tokens.
          edge_mask: True for real edges.
          aggregation: ``"mean"`` or ``"sum"``. Static.
          edge_chunk_size: edge chunk of the attention op. Static.
          deterministic: disables dropout when True.

        Shapes:
          x ``[N, L, D]``; senders, receivers ``[E]``; kv_mask ``[N, L]``; edge_mask ``[E]``
          -> ``[N, L, D]``.
        """
        for layer in self.transformer_encoder.layers:
            x = layer.cross_node(
                x,
                senders,
                receivers,
                kv_mask=kv_mask,
                edge_mask=edge_mask,
                aggregation=aggregation,
                edge_chunk_size=edge_chunk_size,
                deterministic=deterministic,
            )
        return x


def _l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """``x / max(||x||_2, eps)`` over the last axis (``torch.nn.functional.normalize``)."""
    norm = jnp.linalg.norm(x, axis=-1, keepdims=True)
    return x / jnp.maximum(norm, eps)


def model_from_config(config: Mapping[str, Any]) -> ScGPT:
    """Builds :class:`ScGPT` from a ``config.json`` dict (``ScGPTConfig.to_dict`` form)."""
    return ScGPT(config=ScGPTConfig.from_dict(config))


def load_vocab(path: str | os.PathLike) -> dict[str, int]:
    """Reads scGPT's ``vocab.json`` (gene symbol -> id) from a file or a model directory.

    Raises:
      FileNotFoundError: if the file is absent.
      ValueError: if it is not a JSON object of ``str -> int`` (names the file).
    """
    path = Path(path)
    if path.is_dir():
        path = path / VOCAB_FILE
    if not path.is_file():
        raise FileNotFoundError(f"scGPT vocabulary {path} does not exist")
    try:
        vocab = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"scGPT vocabulary {path} is not valid JSON ({e})") from e
    if not isinstance(vocab, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
        for k, v in vocab.items()
    ):
        raise ValueError(f"scGPT vocabulary {path} must be a JSON object of gene symbol -> int id")
    return vocab


def genes_to_ids(
    vocab: Mapping[str, int], genes: Sequence[str], *, missing_id: int = -1
) -> tuple[np.ndarray, np.ndarray]:
    """Maps a dataset's gene symbols to vocabulary ids.

    Returns:
      ``(ids, found)``: int64 ids (``missing_id`` where a symbol is not in ``vocab``) and a
      bool mask of the mapped genes (``(~found).sum()`` is the unmapped count to report).

    Shapes:
      genes ``[G]`` -> ids ``[G]``, found ``[G]``.

    Example:
      >>> ids, found = genes_to_ids({"CD4": 3, "<pad>": 9}, ["CD4", "XYZ"])
      >>> ids.tolist(), found.tolist()
      ([3, -1], [True, False])
    """
    ids = np.array([vocab.get(g, missing_id) for g in genes], dtype=np.int64)
    found = np.array([g in vocab for g in genes], dtype=bool)
    return ids, found
