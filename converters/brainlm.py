"""BrainLM converter: ``config.json`` + ``pytorch_model.bin`` -> Flax :class:`BrainLM`.

Handles ``BrainLMForPretraining.save_pretrained`` directories (github.com/vandijklab/BrainLM,
transformers 4.28; ``model_type`` ``brainlm_mae``), every size: the architecture comes from
``config.json`` and the strict merge checks it against the tensors. ``config.json`` is read
directly (``BrainLMForPretraining`` inherits ``ViTMAEConfig`` as its config class, so keys it
shares with ViT-MAE that are absent fall back to ViT-MAE's defaults, as ``from_pretrained``
does; BrainLM-only keys are required).

Layout transforms: q/k/v Linear -> ``[D, H, Dh]`` heads, ``attention.output.dense`` ->
``[H, Dh, D]``, the depthwise value ``conv`` OIHW ``(H, 1, k, 1)`` -> HWIO ``(k, 1, 1, H)``,
Linear weights transposed, LayerNorm ``weight`` -> ``scale``. The persistent sinusoidal buffers
``*.pos_embedding.pe (max_len, H)`` are checked against the recomputed encoding (the rows the
model can use) and dropped; ``decoder.decoder_pred`` (a ViT-MAE leftover the forward never calls)
is dropped.

The image-style "BrainLM" ViT-MAE weights on the Hugging Face hub (``vitmae_111M`` /
``vitmae_650M``, ``modeling_vit_mae_with_padding.py``) are a different architecture and are
refused with an explanation.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from converters.base import Converted
from converters.checkpoint import read_state_dict
from converters.errors import ConversionError
from converters.mapping import (
    Rule,
    apply_rules,
    conv2d_to_flax,
    layer_norm_rules,
    linear_rules,
    linear_to_heads,
    require_tensors,
    strict_merge,
)
from converters.verify import VerifyRow, compare
from jaxfm.foundation.brainlm import BrainLM, BrainLMConfig, temporal_encoding

__all__ = [
    "CHECKPOINT_FILES",
    "CONFIG_FILE",
    "HUB_FILES",
    "TOLERANCES",
    "build_rules",
    "config_from_hf",
    "convert",
    "tolerance",
    "verify",
]

CONFIG_FILE = "config.json"
CHECKPOINT_FILES = ("pytorch_model.bin", "model.safetensors")
HUB_FILES = (CONFIG_FILE, *CHECKPOINT_FILES)
_MODEL_TYPE = "brainlm_mae"

# Per-tensor (rtol, atol) of the brainlm_small fixture's ``tolerance_suggestion`` (fp32 port vs
# the original; atol = 10x the fp32-vs-fp64 excess of the reference itself, floor 1e-6).
TOLERANCES: dict[str, tuple[float, float]] = {
    "embeddings_before_masking": (1e-4, 1e-6),
    "hidden_states": (1e-4, 1e-6),
    "last_hidden_state": (1e-4, 1e-6),
    "layer0_query": (1e-4, 1e-6),
    "layer0_key": (1e-4, 1e-6),
    "layer0_value": (1e-4, 1e-6),
    "layer0_value_conv": (1e-4, 1e-6),
    "attentions_layer0": (1e-4, 1e-6),
    "attentions_layer1": (1e-4, 1e-6),
    "decoder_hidden_states": (1e-4, 1e-4),
    "decoder_attentions_layer0": (1e-4, 2e-4),
    "logits": (1e-4, 1e-4),
    "reconstruction": (1e-4, 1e-4),
    "loss": (1e-4, 1e-6),
}
# Other layers' tensors of the same kinds (deeper fixtures) take their kind's tolerance.
_KIND_TOLERANCES = (
    (re.compile(r"layer\d+_(query|key|value|value_conv)"), (1e-4, 1e-6)),
    (re.compile(r"attentions_layer\d+"), (1e-4, 1e-6)),
    (re.compile(r"decoder_attentions_layer\d+"), (1e-4, 2e-4)),
)
EXACT = ("mask", "ids_restore")
_INPUTS = ("signal_vectors", "xyz_vectors", "noise")

# ViTMAEConfig (transformers 4.28) defaults for the keys BrainLM shares with it.
_VITMAE_DEFAULTS: dict[str, Any] = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.0,
    "layer_norm_eps": 1e-12,
    "decoder_num_attention_heads": 16,
    "decoder_hidden_size": 512,
    "decoder_num_hidden_layers": 8,
    "decoder_intermediate_size": 2048,
    "mask_ratio": 0.75,
}
# Keys only BrainLM / Nystromformer read (the original crashes without them).
_REQUIRED = (
    "num_brain_voxels",
    "num_timepoints_per_voxel",
    "timepoint_patching_size",
    "use_tanh_decoder",
    "loss_fn",
    "segment_means_seq_len",
    "num_landmarks",
    "conv_kernel_size",
    "inv_coeff_init_option",
)
_PE_BUFFERS = r"(vit\.embeddings|decoder)\.pos_embedding\.pe"
_UNUSED = (r"decoder\.decoder_pred\.(weight|bias)",)
_PE_ATOL = 1e-5
# Keys of other families, for a helpful wrong-family error.
_OTHER_FAMILIES = (
    (re.compile(r"(^|\.)(transformer_encoder\.layers|encoder\.embedding)\."), "scGPT", "scgpt"),
    (re.compile(r"(^|\.)(patch_embed\.proj|embeddings\.patch_embeddings)\."), "ViT", "vit"),
)


def _fail(msg: str) -> None:
    raise ConversionError(msg)


def tolerance(name: str) -> tuple[float, float] | None:
    """The (rtol, atol) used for golden tensor ``name`` (``None``: not a compared output)."""
    if name in TOLERANCES:
        return TOLERANCES[name]
    return next((tol for pat, tol in _KIND_TOLERANCES if pat.fullmatch(name)), None)


# ----------------------------------------------------------------------------- rules


def _layer_rules(src: str, dst: str, num_heads: int) -> list[Rule]:
    """A transformers ``NystromformerLayer``; ``src`` has the layer index as group 1."""
    heads_in, heads_out = linear_to_heads(num_heads, "in"), linear_to_heads(num_heads, "out")
    return [
        Rule(
            src + r"attention\.self\.(query|key|value)\.weight",
            dst + r"attention/self/\2/kernel",
            heads_in,
        ),
        Rule(
            src + r"attention\.self\.(query|key|value)\.bias",
            dst + r"attention/self/\2/bias",
            heads_in,
        ),
        Rule(
            src + r"attention\.self\.conv\.weight",
            dst + "attention/self/conv/kernel",
            conv2d_to_flax,
        ),
        Rule(
            src + r"attention\.output\.dense\.weight",
            dst + "attention/output/dense/kernel",
            heads_out,
        ),
        Rule(src + r"attention\.output\.dense\.bias", dst + "attention/output/dense/bias"),
        *layer_norm_rules(
            src + r"attention\.output\.LayerNorm", dst + "attention/output/LayerNorm"
        ),
        *linear_rules(src + r"intermediate\.dense", dst + "intermediate/dense"),
        *linear_rules(src + r"output\.dense", dst + "output/dense"),
        *layer_norm_rules(src + r"output\.LayerNorm", dst + "output/LayerNorm"),
    ]


def build_rules(num_heads: int, decoder_num_heads: int) -> list[Rule]:
    """The declarative name map of ``BrainLMForPretraining`` state dicts.

    Args:
      num_heads: encoder attention heads (splits q/k/v and the output dense into heads).
      decoder_num_heads: decoder attention heads.
    """
    return [
        Rule(r"vit\.embeddings\.cls_token", "vit/embeddings/cls_token"),
        *linear_rules(
            r"vit\.embeddings\.signal_embedding_projection",
            "vit/embeddings/signal_embedding_projection",
        ),
        *linear_rules(
            r"vit\.embeddings\.xyz_embedding_projection", "vit/embeddings/xyz_embedding_projection"
        ),
        *_layer_rules(r"vit\.encoder\.layer\.(\d+)\.", r"vit/encoder/layer_\1/", num_heads),
        *layer_norm_rules(r"vit\.layernorm", "vit/layernorm"),
        Rule(r"decoder\.mask_token", "decoder/mask_token"),
        *linear_rules(r"decoder\.decoder_embed", "decoder/decoder_embed"),
        *_layer_rules(
            r"decoder\.decoder_layers\.(\d+)\.", r"decoder/decoder_layers_\1/", decoder_num_heads
        ),
        *layer_norm_rules(r"decoder\.decoder_norm", "decoder/decoder_norm"),
        *linear_rules(r"decoder\.decoder_xyz_projection", "decoder/decoder_xyz_projection"),
        *linear_rules(r"decoder\.decoder_pred1", "decoder/decoder_pred1"),
        *linear_rules(r"decoder\.decoder_pred2", "decoder/decoder_pred2"),
    ]


# ----------------------------------------------------------------------------- config


def config_from_hf(hf: Mapping[str, Any], *, pe_max_len: int = 5000) -> BrainLMConfig:
    """The :class:`BrainLMConfig` of a BrainLM ``config.json``.

    Raises:
      ConversionError: a wrong ``model_type``, a missing BrainLM key, or invalid values (named).
    """
    model_type = hf.get("model_type")
    if model_type == "vit_mae":
        _fail(
            "config.json has model_type 'vit_mae': this is the image-style ViT-MAE BrainLM "
            "(modeling_vit_mae_with_padding.py, e.g. the hub's vitmae_111M / vitmae_650M), a "
            "different architecture from BrainLMForPretraining (model_type 'brainlm_mae'); it is "
            "not supported by `convert brainlm`"
        )
    if model_type != _MODEL_TYPE:
        _fail(
            f"config.json has model_type {model_type!r}, not {_MODEL_TYPE!r}: not a BrainLM "
            "(BrainLMForPretraining) checkpoint"
        )
    missing = [k for k in _REQUIRED if k not in hf]
    if missing:
        _fail(f"BrainLM config.json lacks the key(s) {missing} (BrainLMForPretraining needs them)")
    values = {k: hf.get(k, default) for k, default in _VITMAE_DEFAULTS.items()}
    values.update({k: hf[k] for k in _REQUIRED})
    try:
        return BrainLMConfig(**values, pe_max_len=pe_max_len)
    except (TypeError, ValueError) as e:
        raise ConversionError(f"BrainLM config.json gives an invalid config: {e}") from e


def _read_json(path: Path) -> Any:
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConversionError(f"{path} is not valid JSON ({e})") from e
    if not isinstance(value, dict):
        _fail(f"{path} must be a JSON object")
    return value


# ----------------------------------------------------------------------------- files


def _find_checkpoint(src: Path) -> Path:
    """The checkpoint file of a model directory (or ``src`` itself if it is a file)."""
    if not src.exists():
        _fail(f"BrainLM source {src} does not exist")
    if src.is_file():
        return src
    ckpt = next((src / n for n in CHECKPOINT_FILES if (src / n).is_file()), None)
    if ckpt is None:
        _fail(f"BrainLM directory {src}: no checkpoint file (expected one of {CHECKPOINT_FILES})")
    return ckpt


def _check_family(keys) -> None:
    """Raises a wrong-family error unless the keys are a BrainLMForPretraining state dict."""
    keys = list(keys)
    if "vit.embeddings.signal_embedding_projection.weight" in keys:
        return
    for pattern, family, cmd in _OTHER_FAMILIES:
        hit = next((k for k in keys if pattern.search(k)), None)
        if hit is not None:
            _fail(
                f"this looks like a {family} checkpoint, not BrainLM (keys such as {hit!r}); "
                f"use `convert {cmd}`"
            )
    _fail(
        "not a BrainLM checkpoint: expected 'vit.embeddings.signal_embedding_projection.weight' "
        f"and 'vit.encoder.layer.N.attention.self.*' keys, got {sorted(keys)[:8]}"
        f"{' ...' if len(keys) > 8 else ''}"
    )


def _check_pe_buffers(state: Mapping[str, np.ndarray], config: BrainLMConfig) -> list[str]:
    """Checks the persistent PE buffers against the recomputed encoding; returns report lines."""
    lines = []
    n_patch = config.num_timepoints_per_voxel // config.timepoint_patching_size
    for key in sorted(k for k in state if re.fullmatch(_PE_BUFFERS, k)):
        pe = np.asarray(state[key])
        if pe.ndim != 2 or pe.shape[1] != config.hidden_size or pe.shape[0] < n_patch:
            _fail(
                f"checkpoint key {key!r}: expected a sinusoidal PE buffer [max_len >= {n_patch}, "
                f"{config.hidden_size}], got shape {pe.shape}"
            )
        rows = min(pe.shape[0], config.pe_max_len)
        ref = temporal_encoding(rows, config.hidden_size)
        err = float(np.max(np.abs(pe[:rows].astype(np.float64) - ref), initial=0.0))
        # large positions lose float32 accuracy in the angle; the first T/P rows must be exact
        head_err = float(np.max(np.abs(pe[:n_patch].astype(np.float64) - ref[:n_patch])))
        if head_err > _PE_ATOL or err > 1e-2:
            _fail(
                f"checkpoint key {key!r}: the PE buffer is not BrainLM's sinusoidal encoding "
                f"(max abs diff {head_err:.2e} over the first {n_patch} rows, {err:.2e} overall)"
            )
        lines.append(f"{key} {pe.shape}: recomputed (max abs diff {err:.1e}), dropped")
    return lines


def _expected_params(config: BrainLMConfig):
    # parameter shapes do not depend on the attention path; the exact one traces at any length
    exact = dataclasses.replace(config, num_landmarks=config.segment_means_seq_len)
    model = BrainLM(config=exact)
    p = config.timepoint_patching_size
    v = 1
    signal = jnp.zeros((1, v, p), jnp.float32)
    xyz = jnp.zeros((1, v, 3), jnp.float32)
    noise = jnp.zeros((1, v), jnp.float32)
    tree = jax.eval_shape(model.init, jax.random.key(0), signal, xyz, noise)
    return tree["params"]


# ----------------------------------------------------------------------------- API


def convert(src: Path) -> Converted:
    """Converts a BrainLM model directory (or its checkpoint file beside ``config.json``).

    Raises:
      ConversionError: missing/bad files, wrong family, bad config or PE buffer;
        KeyMismatchError (a subclass) for renamed, missing, unexpected or mis-shaped tensors,
        all named.
    """
    src = Path(src)
    ckpt = _find_checkpoint(src)
    state = read_state_dict(ckpt)
    _check_family(state.keys())
    config_path = ckpt.parent / CONFIG_FILE
    if not config_path.is_file():
        _fail(
            f"BrainLM directory {ckpt.parent}: missing {CONFIG_FILE} (a BrainLM model is "
            f"{CONFIG_FILE} + {CHECKPOINT_FILES[0]})"
        )
    hf = _read_json(config_path)
    pe_key = "vit.embeddings.pos_embedding.pe"
    require_tensors(state, {}, {pe_key: 2}, what=f"BrainLM checkpoint {ckpt.name}")
    pe_max_len = int(state[pe_key].shape[0]) if pe_key in state else 5000
    config = config_from_hf(hf, pe_max_len=pe_max_len)
    report = _check_pe_buffers(state, config)
    dropped = [k for k in state if any(re.fullmatch(p, k) for p in _UNUSED)]
    flat = apply_rules(
        state,
        build_rules(config.num_attention_heads, config.decoder_num_attention_heads),
        ignore=(_PE_BUFFERS, *_UNUSED),
        defer_unmatched=True,
    )
    params = strict_merge(_expected_params(config), flat)
    n_params = sum(int(np.prod(v.shape)) for v in flat.values())
    path = "exact softmax" if config.num_landmarks == config.segment_means_seq_len else "Nystrom"
    report = [
        f"BrainLM checkpoint {ckpt.name}: {len(state)} tensors, {len(flat)} converted "
        f"({n_params} parameters)",
        f"hidden={config.hidden_size} layers={config.num_hidden_layers} "
        f"heads={config.num_attention_heads} decoder={config.decoder_num_hidden_layers}x"
        f"{config.decoder_hidden_size} patch={config.timepoint_patching_size} "
        f"conv_kernel={config.conv_kernel_size} attention={path}",
        *report,
        *(f"{k} {tuple(state[k].shape)}: unused by the forward pass, dropped" for k in dropped),
    ]
    return Converted(params=params, config=config.to_dict(), report=report)


def verify(out_dir: Path, golden: Mapping[str, np.ndarray]) -> list[VerifyRow]:
    """Runs the converted model on the golden inputs and compares every tensor it produces.

    ``mask`` and ``ids_restore`` are compared exactly, the rest with :func:`tolerance`.
    Attention maps and per-layer intermediates are computed only if ``golden`` has them.

    Raises:
      ConversionError: if ``golden`` lacks an input (``signal_vectors``, ``xyz_vectors``,
        ``noise``).
    """
    from jaxfm.foundation import load_pretrained

    missing = [k for k in _INPUTS if k not in golden]
    if missing:
        _fail(f"BrainLM golden file lacks the input(s) {missing}")
    model, variables = load_pretrained(out_dir)
    names = set(golden)
    with jax.default_matmul_precision("highest"):
        outputs = model.apply(
            variables,
            np.asarray(golden["signal_vectors"], np.float32),
            np.asarray(golden["xyz_vectors"], np.float32),
            np.asarray(golden["noise"], np.float32),
            output_attentions=any("attentions_layer" in n for n in names),
            output_intermediates=any(re.fullmatch(r"layer\d+_\w+", n) for n in names),
        )
    outputs = {k: np.asarray(v) for k, v in outputs.items() if k in golden}
    tolerances = {k: tol for k in outputs if (tol := tolerance(k)) is not None}
    outputs = {k: v for k, v in outputs.items() if k in tolerances or k in EXACT}
    return compare(outputs, {k: golden[k] for k in outputs}, tolerances, exact=EXACT)
