"""Pretrained FIMP variants: which parts of a foundation model become FIMP's tokenizer and message
creator, and the parameter surgery that moves the converted weights there.

One registry entry per family (:data:`FAMILY_SPECS`) says, as data:

* which node modality it tokenizes (``image``, ``genes``, ``fmri``) and with which module;
* how its encoder layers become the message creator: ViT / scGPT layers are
  :class:`jaxfm.nn.TransformerLayer` and load into the ``"transformer"`` kind by name (an equal
  :class:`~jaxfm.fimp.config.MessageCreatorConfig` is derived from the checkpoint); BrainLM's
  Nystromformer layers are hosted by the generic ``"foundation"`` kind (:func:`foundation_layers`);
* the parameter surgery as ``(foundation prefix, FIMP prefix)`` pairs (:func:`graft_pairs`), applied
  by the pure, strict :func:`graft`.

FIMP model code never branches on the family: it asks :func:`make_tokenizer` and
:func:`foundation_layers`. GenePT is a gene-embedding *table* (:mod:`jaxfm.fimp.genept`) grafted
into the ordinary :class:`~jaxfm.fimp.tokenizers.GeneTokenizer`.

Parameter paths (``/``-joined) of a FIMP task model with a pretrained family::

    fimp/tokenizer/vit/embeddings/...              <- embeddings/...                 (ViT)
    fimp/tokenizer/scgpt/{encoder,value_encoder}/  <- {encoder,value_encoder}/...    (scGPT)
    fimp/tokenizer/brainlm/vit/embeddings/...      <- vit/embeddings/...             (BrainLM)
    fimp/layers_{i}/{message,self_message}/layers_{j}/...  <- layer j of the encoder, every hop i
    fimp/tokenizer/gene_embedding/embedding        <- the matched GenePT table       (GenePT)

Everything else (COMBINE norms/MLPs, final norm, heads, mask tokens) keeps its fresh init.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import numpy as np

from jaxfm.fimp.config import (
    FIMPConfig,
    FMRITokenizerConfig,
    GeneTokenizerConfig,
    ImageTokenizerConfig,
    MessageCreatorConfig,
    PretrainedConfig,
    TokenizerConfig,
)
from jaxfm.fimp.tokenizers import BrainLMTokenizer, ScGPTTokenizer, ViTPatchTokenizer
from jaxfm.foundation.brainlm import BrainLMConfig
from jaxfm.foundation.nystrom import NystromformerLayer
from jaxfm.foundation.scgpt import ScGPTConfig
from jaxfm.foundation.vit import ViTConfig
from jaxfm.model_dir import list_extra_files, load_model_dir
from jaxfm.params import TransplantError, flatten, transplant

__all__ = [
    "FAMILY_SPECS",
    "INIT_CHOICES",
    "FamilySpec",
    "FoundationCheckpoint",
    "GraftReport",
    "PretrainedLoadError",
    "check_tokenizer",
    "foundation_layers",
    "graft",
    "graft_pairs",
    "load_foundation",
    "make_tokenizer",
    "pretrained_fimp_config",
    "pretrained_path_rules",
]

INIT_CHOICES = ("scratch", "vit", "scgpt", "genept", "brainlm")


class PretrainedLoadError(TransplantError):
    """Pretrained weights do not fit the FIMP parameter tree.

    Attributes:
      missing: FIMP paths under a grafted prefix that no pretrained tensor fills.
      unexpected: pretrained paths whose FIMP target does not exist.
      mismatched: ``(fimp path, pretrained shape, fimp shape)`` triples.
    """


# ----------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class FamilySpec:
    """How one pretrained family plugs into FIMP.

    Attributes:
      modality: ``"image"``, ``"genes"`` or ``"fmri"`` (the node inputs it tokenizes).
      tokenizer: ``(pretrained, name) -> module`` or ``None`` (GenePT: the plain GeneTokenizer).
      message: ``(foundation config, num_layers) -> MessageCreatorConfig``; ``None`` = FIMP's own
        message creator trained from scratch (GenePT).
      tokenizer_pairs: ``(foundation prefix, prefix inside the tokenizer)`` grafts.
      layer_prefix: foundation prefix of encoder layer ``j`` (``{j}`` placeholder).
      final_norm: foundation prefix of the encoder's final LayerNorm (zero-shot encoder only).
    """

    modality: str
    tokenizer: Callable[[PretrainedConfig, str], nn.Module] | None
    message: Callable[[Any, int], MessageCreatorConfig] | None
    tokenizer_pairs: tuple[tuple[str, str], ...] = ()
    layer_prefix: str | None = None
    final_norm: str | None = None

    def final_norm_eps(self, foundation) -> float | None:
        """The epsilon of the foundation's final LayerNorm (``None`` if it has none)."""
        if self.final_norm is None or foundation is None:
            return None
        if isinstance(foundation, ViTConfig) and not foundation.final_norm:
            return None
        return foundation.layer_norm_eps


def _vit_message(cfg: ViTConfig, n: int) -> MessageCreatorConfig:
    return MessageCreatorConfig(
        kind="transformer",
        num_layers=n,
        num_heads=cfg.num_heads,
        mlp_ratio=cfg.mlp_dim / cfg.hidden_size,
        norm="pre",
        activation=cfg.activation,
        layer_norm_eps=cfg.layer_norm_eps,
    )


def _scgpt_message(cfg: ScGPTConfig, n: int) -> MessageCreatorConfig:
    kw = cfg.layer_kwargs()
    return MessageCreatorConfig(
        kind="transformer",
        num_layers=n,
        num_heads=kw["num_heads"],
        mlp_ratio=kw["mlp_dim"] / cfg.d_model,
        norm=kw["norm"],
        activation=kw["activation"],
        layer_norm_eps=kw["layer_norm_eps"],
    )


def _brainlm_message(cfg: BrainLMConfig, n: int) -> MessageCreatorConfig:
    return MessageCreatorConfig(kind="foundation", num_layers=n, num_heads=cfg.num_attention_heads)


FAMILY_SPECS: dict[str, FamilySpec] = {
    "vit": FamilySpec(
        modality="image",
        tokenizer=lambda pre, name: ViTPatchTokenizer(pre.foundation, name=name),
        message=_vit_message,
        tokenizer_pairs=(("embeddings/", "vit/embeddings/"),),
        layer_prefix="encoder/layer_{j}/",
        final_norm="layernorm/",
    ),
    "scgpt": FamilySpec(
        modality="genes",
        tokenizer=lambda pre, name: ScGPTTokenizer(
            pre.foundation, gene_vocab_ids=pre.gene_vocab_ids, name=name
        ),
        message=_scgpt_message,
        tokenizer_pairs=(
            ("encoder/", "scgpt/encoder/"),
            ("value_encoder/", "scgpt/value_encoder/"),
        ),
        layer_prefix="transformer_encoder/layers_{j}/",
    ),
    "brainlm": FamilySpec(
        modality="fmri",
        tokenizer=lambda pre, name: BrainLMTokenizer(pre.foundation, name=name),
        message=_brainlm_message,
        tokenizer_pairs=(("vit/embeddings/", "brainlm/vit/embeddings/"),),
        layer_prefix="vit/encoder/layer_{j}/",
        final_norm="vit/layernorm/",
    ),
    "genept": FamilySpec(
        modality="genes",
        tokenizer=None,
        message=None,
        tokenizer_pairs=(("gene_embedding/", "gene_embedding/"),),
    ),
}

_MODALITY_TOKENIZER = {
    "image": ImageTokenizerConfig,
    "genes": GeneTokenizerConfig,
    "fmri": FMRITokenizerConfig,
}


def _spec(family: str) -> FamilySpec:
    if family not in FAMILY_SPECS:
        raise ValueError(
            f"unknown pretrained family {family!r}; expected one of {sorted(FAMILY_SPECS)}"
        )
    return FAMILY_SPECS[family]


def make_tokenizer(pretrained: PretrainedConfig | None, name: str = "tokenizer"):
    """The family's tokenizer module, or ``None`` when FIMP's own tokenizer is used."""
    if pretrained is None:
        return None
    build = _spec(pretrained.family).tokenizer
    return None if build is None else build(pretrained, name)


def foundation_layers(
    pretrained: PretrainedConfig, num_layers: int, *, dropout: float = 0.0, dtype: Any = None
) -> list[nn.Module]:
    """The encoder layers hosted by the ``"foundation"`` message-creator kind (unbound modules
    with a ``cross_node`` method of :meth:`jaxfm.nn.TransformerLayer.cross_node`'s signature).

    Raises:
      ValueError: a family without such layers, or a BrainLM config whose Nystrom (non-exact)
        attention path cannot take FIMP's token masks.
    """
    cfg = pretrained.foundation
    if not isinstance(cfg, BrainLMConfig):
        raise ValueError(
            f"message kind 'foundation' hosts BrainLM layers; family {pretrained.family!r} "
            "loads into kind 'transformer'"
        )
    if cfg.num_landmarks != cfg.segment_means_seq_len:
        raise ValueError(
            f"FIMP-BrainLM needs the exact-softmax Nystromformer path (num_landmarks == "
            f"segment_means_seq_len); the checkpoint has {cfg.num_landmarks} != "
            f"{cfg.segment_means_seq_len}"
        )
    return [
        NystromformerLayer(
            num_heads=cfg.num_attention_heads,
            intermediate_size=cfg.intermediate_size,
            hidden_act=cfg.hidden_act,
            layer_norm_eps=cfg.layer_norm_eps,
            num_landmarks=cfg.num_landmarks,
            segment_means_seq_len=cfg.segment_means_seq_len,
            conv_kernel_size=cfg.conv_kernel_size,
            inv_init_option=cfg.inv_init_option,
            hidden_dropout=dropout,
            dtype=dtype,
        )
        for _ in range(num_layers)
    ]


# ----------------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------------


def check_tokenizer(pretrained: PretrainedConfig, tokenizer: TokenizerConfig) -> TokenizerConfig:
    """Checks that the data's tokenizer config fits the checkpoint; returns the one to use.

    Raises:
      ValueError: wrong modality, image size / channels other than the ViT's, or fMRI patches
        other than BrainLM's patch length or beyond its PE length (all named).
    """
    spec = _spec(pretrained.family)
    want = _MODALITY_TOKENIZER[spec.modality]
    if not isinstance(tokenizer, want):
        raise ValueError(
            f"--init {pretrained.family} tokenizes {spec.modality} nodes; the task's data gives "
            f"{type(tokenizer).__name__}"
        )
    cfg = pretrained.foundation
    if isinstance(cfg, ViTConfig):
        have = (*tokenizer.image_size, tokenizer.channels)
        need = (*cfg.image_size, cfg.num_channels)
        if have != need:
            raise ValueError(
                f"the ViT checkpoint takes {need[0]}x{need[1]} images with {need[2]} channels "
                f"(image_size / num_channels of its config.json); the data has "
                f"{have[0]}x{have[1]}x{have[2]} (synthetic data: pass --image-size {need[0]}; "
                "files: resize the images)"
            )
        return ImageTokenizerConfig(
            image_size=cfg.image_size,
            patch_size=cfg.patch_size,
            channels=cfg.num_channels,
            combine="sum",
        )
    if isinstance(cfg, BrainLMConfig):
        p = cfg.timepoint_patching_size
        t = tokenizer.num_timepoints
        if tokenizer.patch_size != p or t % p:
            raise ValueError(
                f"the BrainLM checkpoint cuts signals into patches of {p} timepoints "
                f"(timepoint_patching_size); the data has {t} timepoints in patches of "
                f"{tokenizer.patch_size} (timepoints must be a multiple of {p})"
            )
        if t // p > cfg.pe_max_len:
            raise ValueError(
                f"{t // p} time patches exceed the BrainLM checkpoint's pe_max_len {cfg.pe_max_len}"
            )
        return tokenizer
    if isinstance(cfg, ScGPTConfig):
        return dataclasses.replace(tokenizer, dim=None, combine="sum")
    return tokenizer  # GenePT: set by jaxfm.fimp.genept


def pretrained_fimp_config(
    base: FIMPConfig, pretrained: PretrainedConfig, *, num_message_layers: int | None = None
) -> FIMPConfig:
    """``base`` turned into the pretrained variant: dim, tokenizer and message creator from the
    checkpoint (every encoder layer unless ``num_message_layers``).

    ``base.tokenizer`` must be the data's tokenizer config (checked by :func:`check_tokenizer`).
    GenePT keeps ``base``'s dim and message creator.
    """
    if base.tokenizer is None:
        raise ValueError("pretrained_fimp_config: base.tokenizer must be the data's tokenizer")
    spec = _spec(pretrained.family)
    tokenizer = check_tokenizer(pretrained, base.tokenizer)
    if spec.message is None:
        return dataclasses.replace(base, tokenizer=tokenizer, pretrained=pretrained)
    depth = pretrained.depth
    n = depth if num_message_layers is None else num_message_layers
    if not 1 <= n <= depth:
        raise ValueError(f"num_message_layers must be in [1, {depth}] for this checkpoint, got {n}")
    return dataclasses.replace(
        base,
        dim=pretrained.width,
        tokenizer=tokenizer,
        message=spec.message(pretrained.foundation, n),
        pretrained=pretrained,
    )


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class FoundationCheckpoint:
    """A converted model directory, read for grafting.

    Attributes:
      family: ``vit`` / ``scgpt`` / ``brainlm``.
      config: the architecture (foundation config dataclass).
      params: flat ``{path: numpy array}``.
      path: the directory.
      vocab: scGPT's ``vocab.json`` (gene symbol -> id) when the directory has one.
    """

    family: str
    config: Any
    params: dict[str, np.ndarray]
    path: str
    vocab: dict[str, int] | None = None


def load_foundation(path, *, family: str | None = None) -> FoundationCheckpoint:
    """Reads a ``jaxfm convert`` output directory.

    Args:
      path: the directory.
      family: the expected family (``--init``); a checkpoint of another family is refused.

    Raises:
      FileNotFoundError: no such directory (or its files).
      ValueError: not a foundation checkpoint, or of another family (named).
    """
    from jaxfm.loading import resolve_model_dir

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"--model-dir {path}: no such directory (expected the OUT of `jaxfm convert`)"
        )
    path = resolve_model_dir(path)
    params, config = load_model_dir(path)
    have = config.get("family")
    cls = {"vit": ViTConfig, "scgpt": ScGPTConfig, "brainlm": BrainLMConfig}.get(have)
    if cls is None:
        raise ValueError(
            f"--checkpoint {path}: config.json family is {have!r}, not a converted foundation "
            "model (vit, scgpt, brainlm)"
        )
    if family is not None and family != have:
        raise ValueError(f"--init {family} but --checkpoint {path} holds a {have!r} model")
    try:
        fcfg = cls.from_dict(config)
    except (TypeError, ValueError) as e:
        raise ValueError(f"--checkpoint {path}: invalid config.json: {e}") from e
    vocab = None
    if have == "scgpt" and "vocab.json" in list_extra_files(path):
        from jaxfm.foundation.scgpt import load_vocab

        vocab = load_vocab(path)
    return FoundationCheckpoint(
        family=have, config=fcfg, params=flatten(params), path=str(path), vocab=vocab
    )


# ----------------------------------------------------------------------------------------------
# Parameter surgery
# ----------------------------------------------------------------------------------------------


def graft_pairs(
    family: str,
    *,
    tokenizer: str | None = "tokenizer",
    creators: Sequence[str] = (),
    num_layers: int = 0,
    final_norm: str | None = None,
) -> list[tuple[str, str]]:
    """The ``(foundation prefix, FIMP prefix)`` pairs of one family's surgery.

    Args:
      family: registry key.
      tokenizer: FIMP path of the tokenizer module (``None``: do not graft it).
      creators: FIMP paths of message creators receiving the encoder layers (e.g.
        ``"fimp/layers_0/message"``); layer ``j`` goes to ``{creator}/layers_{j}/``.
      num_layers: encoder layers to graft into each creator.
      final_norm: FIMP path of a LayerNorm receiving the encoder's final norm.
    """
    spec = _spec(family)
    pairs = []
    if tokenizer is not None:
        pairs += [(src, f"{tokenizer}/{dst}") for src, dst in spec.tokenizer_pairs]
    if creators and num_layers:
        if spec.layer_prefix is None:
            raise ValueError(f"family {family!r} has no encoder layers to graft")
        for creator in creators:
            for j in range(num_layers):
                pairs.append((spec.layer_prefix.format(j=j), f"{creator}/layers_{j}/"))
    if final_norm is not None:
        if spec.final_norm is None:
            raise ValueError(f"family {family!r} has no final norm to graft")
        pairs.append((spec.final_norm, f"{final_norm}/"))
    return pairs


@dataclasses.dataclass(frozen=True, kw_only=True)
class GraftReport:
    """What :func:`graft` did.

    Attributes:
      loaded: FIMP paths that received pretrained values.
      unused: pretrained paths no pair consumed (decoders, poolers, heads).
      num_values: scalars loaded.
    """

    loaded: tuple[str, ...]
    unused: tuple[str, ...]
    num_values: int

    def summary(self) -> dict[str, Any]:
        return {
            "loaded_tensors": len(self.loaded),
            "loaded_values": self.num_values,
            "unused_pretrained_tensors": len(self.unused),
        }


def graft(
    params: Mapping, source: Mapping[str, Any], pairs: Sequence[tuple[str, str]]
) -> tuple[dict, GraftReport]:
    """Copies pretrained tensors into a parameter tree (pure; strict per pair).

    For each ``(src_prefix, dst_prefix)`` every ``source`` path starting with ``src_prefix`` is
    written to ``dst_prefix + rest`` (a source may feed several destinations: the same layer into
    every hop's creators). Strict: every ``params`` path under a ``dst_prefix`` must be filled
    (*missing*), every target must exist (*unexpected*), shapes must agree (*mismatched*). Values
    are cast to the target's dtype.

    Args:
      params: the initialised FIMP parameters (nested dicts).
      source: pretrained parameters, flat ``{path: array}`` or nested.
      pairs: see :func:`graft_pairs`.

    Returns:
      ``(new params (nested dicts, untouched leaves shared), report)``.

    Raises:
      PretrainedLoadError: listing every missing, unexpected and mis-shaped path by name.
    """
    src = source if all(not isinstance(v, Mapping) for v in source.values()) else None
    src = dict(src) if src is not None else flatten(source)
    renamed: dict[str, Any] = {}
    origin: dict[str, str] = {}
    used: set[str] = set()
    for s_pre, d_pre in pairs:
        for key in src:
            if key.startswith(s_pre):
                renamed[d_pre + key[len(s_pre) :]] = src[key]
                origin[d_pre + key[len(s_pre) :]] = key
                used.add(key)
    try:
        out, rep = transplant(
            params,
            renamed,
            into=["^" + re.escape(d_pre) for _, d_pre in pairs],
            unused_ok=False,
            what="pretrained weights",
        )
    except TransplantError as e:
        source_of = {d_pre: s_pre for s_pre, d_pre in pairs}

        def from_where(path):
            pre = max((d for d in source_of if path.startswith(d)), key=len, default="")
            return f"{path} (from {source_of.get(pre, '')}{path[len(pre) :]})"

        raise PretrainedLoadError(
            str(e).replace("the model", "the FIMP model"),
            missing=[from_where(p) for p in e.missing],
            unexpected=[f"{origin[p]} -> {p}" for p in e.unexpected],
            mismatched=e.mismatched,
        ) from None
    report = GraftReport(
        loaded=tuple(sorted(rep.loaded)),
        unused=tuple(sorted(set(src) - used)),
        num_values=rep.num_values,
    )
    return out, report


def pretrained_path_rules(pairs: Sequence[tuple[str, str]]) -> list[str]:
    """Regexes matching the grafted FIMP paths (for freezing with ``--freeze-pretrained``)."""
    return ["^" + re.escape(dst) for _, dst in pairs]
