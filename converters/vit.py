"""ViT converter: HF ``ViTModel`` / ``ViTForImageClassification`` and timm ``VisionTransformer``.

Both layouts map onto the one parameter tree of :class:`jaxfm.foundation.vit.ViT`:

====================================================  ========================================
HF key (optionally under ``vit.``)                    timm key
====================================================  ========================================
``embeddings.cls_token``                              ``cls_token``
``embeddings.position_embeddings``                    ``pos_embed``
``embeddings.patch_embeddings.projection.*``          ``patch_embed.proj.*`` (OIHW -> HWIO)
``encoder.layer.N.attention.attention.{q,k,v}.*``     ``blocks.N.attn.qkv.*`` (fused, split)
``encoder.layer.N.attention.output.dense.*``          ``blocks.N.attn.proj.*``
``encoder.layer.N.layernorm_{before,after}.*``        ``blocks.N.norm{1,2}.*``
``encoder.layer.N.{intermediate,output}.dense.*``     ``blocks.N.mlp.fc{1,2}.*``
``layernorm.*`` / ``pooler.dense.*`` / ``classifier``  ``norm.*`` / ``fc_norm.*`` / ``head.*``
====================================================  ========================================

Sizes (width, depth, MLP, patch, channels, classes) come from the tensor shapes; the head count,
epsilon, activation and image size from ``config.json`` (HF) or the timm hub ``config.json``.
"""

from __future__ import annotations

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
    split_fused_qkv,
    strict_merge,
)
from converters.verify import VerifyRow, compare
from jaxfm.foundation.vit import ViT, ViTConfig

__all__ = [
    "HUB_FILES",
    "TOLERANCES",
    "build_rules",
    "convert",
    "detect_layout",
    "infer_config",
    "run_model",
    "verify",
]

HUB_FILES = ("config.json", "model.safetensors", "model.safetensors.index.json", "*.bin")
CHECKPOINT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
CONFIG_FILE = "config.json"

#: ``{golden name: (rtol, atol)}`` from the fixtures' ``tolerance_suggestion`` (fp32).
TOLERANCES: dict[str, tuple[float, float]] = {
    "last_hidden_state": (1e-4, 2e-6),
    "hidden_states": (1e-4, 1e-6),
    "pooler_output": (1e-4, 1e-6),
    "pre_logits": (1e-4, 1e-6),
    "logits": (1e-4, 1e-6),
    "patch_embeddings": (1e-4, 1e-6),
    "layer0_query": (1e-4, 1e-6),
    "layer0_key": (1e-4, 1e-6),
    "layer0_value": (1e-4, 1e-6),
    "layer0_qkv": (1e-4, 1e-6),
}
_ATTENTION_TOLERANCE = (1e-4, 1e-6)

_HF_PREFIX = r"(?:vit\.)?"
_HF_LAYER = _HF_PREFIX + r"encoder\.layer\.(\d+)\."
_TIMM_LAYER = r"blocks\.(\d+)\."
_LAYER = r"encoder/layer_\1/"

# Keys that reveal another family (for a helpful wrong-family error).
_OTHER_FAMILIES = (
    (re.compile(r"(^|\.)(xyz_embedding|signal_embedding)|decoder\.decoder_"), "BrainLM", "brainlm"),
    (
        re.compile(r"(^|\.)(transformer_encoder\.layers|value_encoder)\.|^encoder\.embedding\."),
        "scGPT",
        "scgpt",
    ),
)
# timm features this port does not implement, by key pattern.
_TIMM_UNSUPPORTED = {
    r"reg_token": "register tokens",
    r".*\.ls[12]\.(gamma|weight)": "LayerScale (ls1/ls2)",
    r".*\.attn\.[qk]_norm\..*": "q/k normalisation",
    r"norm_pre\..*": "norm_pre",
    r"attn_pool\..*": "attention pooling (global_pool='map')",
    r"patch_embed\.norm\..*": "a patch-embedding norm",
    r".*\.attn\.norm\..*": "attention output norm (scale_attn_norm)",
}
_HF_ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}
_TIMM_HEADS = {"tiny": 3, "small": 6, "medium": 8, "base": 12, "large": 16, "huge": 16}


def _fail(msg: str) -> None:
    raise ConversionError(msg)


# --------------------------------------------------------------------------------------------
# detection and config
# --------------------------------------------------------------------------------------------


def _wrong_family(keys) -> None:
    for pattern, name, family in _OTHER_FAMILIES:
        if any(pattern.search(k) for k in keys):
            _fail(
                f"this looks like a {name} checkpoint, not ViT; convert it with "
                f"`convert {family} SRC OUT`"
            )


def detect_layout(keys) -> str:
    """``"hf"`` or ``"timm"`` from the checkpoint keys.

    Raises:
      ConversionError: another family's checkpoint, or no ViT patch embedding.
    """
    keys = list(keys)
    _wrong_family(keys)
    if any(
        re.fullmatch(_HF_PREFIX + r"embeddings\.patch_embeddings\.projection\.weight", k)
        for k in keys
    ):
        return "hf"
    if "patch_embed.proj.weight" in keys:
        return "timm"
    shown = ", ".join(sorted(keys)[:8])
    _fail(
        "not a ViT checkpoint: no 'embeddings.patch_embeddings.projection.weight' (HF) or "
        f"'patch_embed.proj.weight' (timm) key (first keys: {shown})"
    )


def _layers(keys, pattern: str) -> int:
    idx = {int(m.group(1)) for k in keys if (m := re.fullmatch(pattern, k))}
    if idx and idx != set(range(max(idx) + 1)):
        _fail(f"ViT checkpoint: layer indices {sorted(idx)} are not contiguous from 0")
    return max(idx) + 1 if idx else 0


def _image_size(value: Any, patch: int, n_patches: int) -> tuple[int, int]:
    if value is None:
        side = round(n_patches**0.5)
        if side * side != n_patches:
            _fail(f"ViT: cannot infer the image size from {n_patches} position embeddings")
        return side * patch, side * patch
    if isinstance(value, int):
        return value, value
    value = list(value)
    return int(value[-2]), int(value[-1])


def infer_config(state: Mapping[str, np.ndarray], layout: str, cfg: Mapping[str, Any]) -> ViTConfig:
    """The :class:`ViTConfig` of a checkpoint: sizes from shapes, the rest from ``config.json``.

    Raises:
      ConversionError: missing head count, unsupported features, inconsistent shapes.
    """
    keys = set(state)
    strip = lambda k: re.sub(r"^vit\.", "", k)
    s = {strip(k): v for k, v in state.items()} if layout == "hf" else dict(state)
    if layout == "hf":
        require_tensors(
            s,
            {
                "embeddings.patch_embeddings.projection.weight": 4,
                "encoder.layer.0.intermediate.dense.weight": 2,
            },
            {
                "embeddings.position_embeddings": 3,
                "pooler.dense.weight": 2,
                "classifier.weight": 2,
            },
            what="ViT (HF) checkpoint",
        )
        patch_w = s["embeddings.patch_embeddings.projection.weight"]
        pos = s.get("embeddings.position_embeddings")
        depth = _layers(s, r"encoder\.layer\.(\d+)\.attention\.attention\.query\.weight")
        mlp_key = "encoder.layer.0.intermediate.dense.weight"
        heads = cfg.get("num_attention_heads")
        eps = float(cfg.get("layer_norm_eps", 1e-12))
        act_name = cfg.get("hidden_act", "gelu")
        if act_name not in _HF_ACTIVATIONS:
            _fail(f"ViT config.json: hidden_act={act_name!r} is not supported")
        activation = _HF_ACTIVATIONS[act_name]
        if depth and "encoder.layer.0.attention.attention.query.bias" not in s:
            _fail("ViT checkpoint without q/k/v biases (qkv_bias=False) is not supported")
        if "pooler.dense.weight" in s and cfg.get("pooler_act", "tanh") != "tanh":
            _fail(f"ViT config.json: pooler_act={cfg['pooler_act']!r} is not supported")
        image = cfg.get("image_size")
        has_cls, no_embed_class = "embeddings.cls_token" in s, False
        pooler = "pooler.dense.weight" in s
        pooler_size = int(s["pooler.dense.weight"].shape[0]) if pooler else None
        head_key, final_norm, fc_norm, global_pool = "classifier.weight", True, False, "token"
    else:
        for pattern, what in _TIMM_UNSUPPORTED.items():
            if what and any(re.fullmatch(pattern, k) for k in keys):
                _fail(f"timm ViT checkpoint uses {what}, which this port does not support")
        args = dict(cfg.get("model_args", {}))
        require_tensors(
            s,
            {"patch_embed.proj.weight": 4, "blocks.0.mlp.fc1.weight": 2},
            {"pos_embed": 3, "head.weight": 2},
            what="ViT (timm) checkpoint",
        )
        patch_w = s["patch_embed.proj.weight"]
        pos = s.get("pos_embed")
        depth = _layers(s, _TIMM_LAYER + r"attn\.qkv\.weight")
        mlp_key = "blocks.0.mlp.fc1.weight"
        heads = args.get("num_heads", cfg.get("num_heads"))
        if heads is None:
            m = re.match(r"vit_(\w+?)_patch", str(cfg.get("architecture", "")))
            heads = _TIMM_HEADS.get(m.group(1)) if m else None
        eps = 1e-6
        act = args.get("act_layer")
        if act not in (None, "gelu", "nn.GELU", "GELU"):
            _fail(f"timm config.json: act_layer={act!r} is not supported (exact GELU only)")
        if depth and "blocks.0.attn.qkv.bias" not in s:
            _fail("timm ViT checkpoint without qkv biases (qkv_bias=False) is not supported")
        activation = "gelu"
        image = args.get("img_size", cfg.get("pretrained_cfg", {}).get("input_size"))
        has_cls = "cls_token" in s
        no_embed_class = bool(args.get("no_embed_class", False))
        global_pool = args.get("global_pool", cfg.get("global_pool", "token")) or "token"
        if global_pool not in ("token", "avg"):
            _fail(f"timm config: global_pool={global_pool!r} is not supported (token, avg)")
        pooler, pooler_size = False, None
        head_key, final_norm, fc_norm = "head.weight", "norm.weight" in s, "fc_norm.weight" in s
    if not isinstance(heads, int) or heads <= 0:
        _fail(
            "ViT: the attention head count is not in config.json ('num_attention_heads' for HF, "
            "'model_args.num_heads' for timm); put the model's config.json beside the checkpoint"
        )
    if depth == 0:
        _fail("ViT checkpoint has no encoder layers")
    if pos is None:
        _fail("ViT checkpoint has no position embeddings")
    d, c, p, _ = patch_w.shape
    n_patches = pos.shape[1] - int(has_cls and not no_embed_class)
    try:
        config = ViTConfig(
            layout=layout,
            image_size=_image_size(image, p, n_patches),
            patch_size=int(p),
            num_channels=int(c),
            hidden_size=int(d),
            num_layers=depth,
            num_heads=heads,
            mlp_dim=int(s[mlp_key].shape[0]),
            layer_norm_eps=eps,
            activation=activation,
            class_token=has_cls,
            no_embed_class=no_embed_class,
            final_norm=final_norm,
            pooler=pooler,
            pooler_output_size=pooler_size,
            global_pool=global_pool,
            fc_norm=fc_norm,
            num_classes=int(s[head_key].shape[0]) if head_key in s else 0,
        )
    except ValueError as e:
        raise ConversionError(f"ViT checkpoint/config.json give an invalid config: {e}") from e
    if config.num_patches != n_patches:
        _fail(
            f"ViT: image size {config.image_size} with patch {p} gives {config.num_patches} "
            f"patches but the position embeddings cover {n_patches}"
        )
    return config


# --------------------------------------------------------------------------------------------
# rules
# --------------------------------------------------------------------------------------------


def build_rules(layout: str, num_heads: int) -> list[Rule]:
    """The declarative name map of one layout (``"hf"`` or ``"timm"``)."""
    to_heads, out_heads = linear_to_heads(num_heads, "in"), linear_to_heads(num_heads, "out")
    emb = "embeddings/"
    proj = emb + "patch_embeddings/projection"
    if layout == "hf":
        p, lay = _HF_PREFIX, _HF_LAYER
        return [
            Rule(p + r"embeddings\.cls_token", emb + "cls_token"),
            Rule(p + r"embeddings\.position_embeddings", emb + "position_embeddings"),
            Rule(
                p + r"embeddings\.patch_embeddings\.projection\.weight",
                proj + "/kernel",
                conv2d_to_flax,
            ),
            Rule(p + r"embeddings\.patch_embeddings\.projection\.bias", proj + "/bias"),
            Rule(
                lay + r"attention\.attention\.(query|key|value)\.weight",
                _LAYER + r"attention/\2/kernel",
                to_heads,
            ),
            Rule(
                lay + r"attention\.attention\.(query|key|value)\.bias",
                _LAYER + r"attention/\2/bias",
                to_heads,
            ),
            Rule(
                lay + r"attention\.output\.dense\.weight",
                _LAYER + "attention/out/kernel",
                out_heads,
            ),
            Rule(lay + r"attention\.output\.dense\.bias", _LAYER + "attention/out/bias"),
            *layer_norm_rules(lay + r"layernorm_before", _LAYER + "norm1"),
            *layer_norm_rules(lay + r"layernorm_after", _LAYER + "norm2"),
            *linear_rules(lay + r"intermediate\.dense", _LAYER + "mlp/fc1"),
            *linear_rules(lay + r"output\.dense", _LAYER + "mlp/fc2"),
            *layer_norm_rules(p + r"layernorm", "layernorm"),
            *linear_rules(r"pooler\.dense", "pooler/dense"),
            *linear_rules(r"classifier", "head"),
        ]
    if layout != "timm":
        raise ValueError(f"build_rules: layout must be 'hf' or 'timm', got {layout!r}")
    lay = _TIMM_LAYER
    return [
        Rule(r"cls_token", emb + "cls_token"),
        Rule(r"pos_embed", emb + "position_embeddings"),
        Rule(r"patch_embed\.proj\.weight", proj + "/kernel", conv2d_to_flax),
        Rule(r"patch_embed\.proj\.bias", proj + "/bias"),
        # Fused [3D, D] rows [q; k; v], each head-major -> query/key/value [D, H, Dh].
        Rule(lay + r"attn\.qkv\.(?:weight|bias)", _LAYER + "attention", split_fused_qkv(num_heads)),
        Rule(lay + r"attn\.proj\.weight", _LAYER + "attention/out/kernel", out_heads),
        Rule(lay + r"attn\.proj\.bias", _LAYER + "attention/out/bias"),
        *layer_norm_rules(lay + r"norm1", _LAYER + "norm1"),
        *layer_norm_rules(lay + r"norm2", _LAYER + "norm2"),
        *linear_rules(lay + r"mlp\.fc1", _LAYER + "mlp/fc1"),
        *linear_rules(lay + r"mlp\.fc2", _LAYER + "mlp/fc2"),
        *layer_norm_rules(r"norm", "layernorm"),
        *layer_norm_rules(r"fc_norm", "fc_norm"),
        *linear_rules(r"head", "head"),
    ]


# HF buffers / heads that are not part of the encoder forward.
_HF_IGNORE = (_HF_PREFIX + r"embeddings\.mask_token", r".*position_ids")


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConversionError(f"{path} is not valid JSON ({e})") from e
    if not isinstance(value, dict):
        _fail(f"{path} must be a JSON object")
    return value


def _shard_files(src: Path, index: Path, weight_map) -> list[Path]:
    """The shard files a sharded index names, each confined to the directory ``src``."""
    if not isinstance(weight_map, dict) or not weight_map:
        _fail(f"{index} has no weight_map (a JSON object of tensor name -> shard file)")
    if not all(isinstance(v, str) for v in weight_map.values()):
        _fail(f"{index}: weight_map values must be shard file names")
    root = src.resolve()
    shards = []
    for name in sorted(set(weight_map.values())):
        path = (src / name).resolve()
        if Path(name).is_absolute() or root not in path.parents:
            _fail(
                f"{index}: weight_map names the shard {name!r}, which is outside {src}; shards "
                "must be files inside the model directory"
            )
        if not path.is_file():
            _fail(f"{index}: the shard {name!r} does not exist in {src}")
        shards.append(path)
    return shards


def _read_checkpoint(src: Path) -> tuple[dict[str, np.ndarray], Path, Path | None]:
    """``(state, checkpoint path, config.json or None)`` for a file or model directory."""
    if src.is_file():
        cfg = src.parent / CONFIG_FILE
        return read_state_dict(src), src, cfg if cfg.is_file() else None
    if not src.is_dir():
        _fail(f"ViT source {src} does not exist")
    cfg = src / CONFIG_FILE if (src / CONFIG_FILE).is_file() else None
    for name in CHECKPOINT_FILES:
        if (src / name).is_file():
            return read_state_dict(src / name), src / name, cfg
    for name in INDEX_FILES:
        if (src / name).is_file():
            index = _read_json(src / name)
            state: dict[str, np.ndarray] = {}
            for shard in _shard_files(src, src / name, index.get("weight_map")):
                part = read_state_dict(shard)
                if twice := sorted(set(part) & set(state))[:5]:
                    _fail(f"{src / name}: shard {shard.name} repeats tensors {twice}")
                state.update(part)
            return state, src / name, cfg
    others = sorted(p for ext in ("*.safetensors", "*.bin", "*.pt", "*.pth") for p in src.glob(ext))
    if len(others) == 1:  # e.g. an scGPT best_model.pt: read it to name its family
        return read_state_dict(others[0]), others[0], cfg
    _fail(
        f"ViT directory {src}: no checkpoint file (expected one of {CHECKPOINT_FILES} or a "
        f"sharded {INDEX_FILES[0]}), found {[p.name for p in others]}"
    )


def _expected_params(config: ViTConfig):
    model = ViT(config=config)
    h, w = config.image_size
    x = jnp.zeros((1, h, w, config.num_channels))
    return jax.eval_shape(model.init, jax.random.key(0), x)["params"]


def convert(src: Path) -> Converted:
    """Converts a HF or timm ViT checkpoint (file or directory) to Flax parameters.

    Raises:
      ConversionError: bad/missing files, wrong family, unsupported features;
        KeyMismatchError (a subclass) naming renamed, missing, unexpected or mis-shaped keys.
    """
    src = Path(src)
    state, ckpt, cfg_path = _read_checkpoint(src)
    layout = detect_layout(state.keys())
    cfg = _read_json(cfg_path) if cfg_path is not None else {}
    config = infer_config(state, layout, cfg)
    ignore = _HF_IGNORE if layout == "hf" else ()
    rules = build_rules(layout, config.num_heads)
    flat = apply_rules(state, rules, ignore=ignore, defer_unmatched=True)
    params = strict_merge(_expected_params(config), flat)
    n_params = sum(int(np.prod(v.shape)) for v in flat.values())
    extras = [
        name
        for name, on in (
            ("pooler", config.pooler),
            (f"head ({config.num_classes} classes)", config.num_classes),
            ("fc_norm", config.fc_norm),
        )
        if on
    ]
    report = [
        f"ViT checkpoint {ckpt.name}: {layout} layout, {len(state)} tensors, {n_params} parameters",
        f"D={config.hidden_size} layers={config.num_layers} heads={config.num_heads} "
        f"mlp={config.mlp_dim} patch={config.patch_size} image={config.image_size} "
        f"eps={config.layer_norm_eps:g} act={config.activation} "
        f"pool={config.global_pool} {' '.join(extras)}".rstrip(),
    ]
    if cfg_path is None:
        report.append("no config.json: head count / epsilon from defaults")
    return Converted(params=params, config=config.to_dict(), report=report)


# --------------------------------------------------------------------------------------------
# verification
# --------------------------------------------------------------------------------------------


def _nhwc(pixel_values: np.ndarray, channels: int) -> np.ndarray:
    x = np.asarray(pixel_values, np.float32)
    if x.ndim == 4 and x.shape[1] == channels and x.shape[-1] != channels:
        x = x.transpose(0, 2, 3, 1)  # NCHW (PyTorch) -> NHWC
    return x


def run_model(out_dir: Path, pixel_values: np.ndarray) -> dict[str, np.ndarray]:
    """All outputs (incl. intermediates) of a converted ViT on NCHW or NHWC images."""
    from jaxfm.foundation import load_pretrained

    model, variables = load_pretrained(out_dir)
    x = _nhwc(pixel_values, model.config.num_channels)
    with jax.default_matmul_precision("highest"):
        outputs = model.apply(variables, x, return_intermediates=True)
    return {k: np.asarray(v) for k, v in outputs.items()}


def verify(out_dir: Path, golden: Mapping[str, np.ndarray]) -> list[VerifyRow]:
    """Runs the converted model on ``golden["pixel_values"]`` (NCHW, as PyTorch) and compares
    every golden tensor the model produces, with :data:`TOLERANCES`.

    Raises:
      ConversionError: the golden file has no ``pixel_values``.
    """
    if "pixel_values" not in golden:
        _fail("ViT golden file lacks the input 'pixel_values'")
    outputs = run_model(Path(out_dir), golden["pixel_values"])
    names = [k for k in golden if k in outputs]
    tolerances = {
        k: TOLERANCES.get(k, _ATTENTION_TOLERANCE if k.startswith("attentions_") else None)
        for k in names
    }
    tolerances = {k: v for k, v in tolerances.items() if v is not None}
    return compare({k: outputs[k] for k in tolerances}, golden, tolerances)
