"""scGPT converter: ``best_model.pt`` + ``args.json`` + ``vocab.json`` -> Flax :class:`ScGPT`.

Handles both key layouts users have on disk:

* ``torch``: ``nn.TransformerEncoderLayer`` names, ``self_attn.in_proj_{weight,bias}``;
* ``flash``: the flash-attention layout of the released whole-human checkpoint,
  ``self_attn.Wqkv.{weight,bias}`` (also ``self_attn._impl.Wqkv.*`` as saved by the current
  flash wrapper). The tensors are identical; only the names differ.

The architecture is read from the checkpoint itself (vocabulary size, width, depth, feed-forward
width, value-encoder style, which heads exist); only the head count, padding token/value,
dropout and cell-embedding style come from ``args.json``. ``vocab.json`` is carried into OUT.
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
    layer_norm_rules,
    linear_rules,
    linear_to_heads,
    require_tensors,
    split_fused_qkv,
    strict_merge,
    transpose,
)
from converters.verify import VerifyRow, compare
from jaxfm.foundation.scgpt import VOCAB_FILE, ScGPT, ScGPTConfig

__all__ = [
    "CHECKPOINT_FILES",
    "HUB_FILES",
    "TOLERANCES",
    "build_rules",
    "convert",
    "detect_layout",
    "verify",
]

CHECKPOINT_FILES = ("best_model.pt", "model.pt", "best_model.safetensors")
ARGS_FILE = "args.json"
#: files fetched for a hub id (scGPT model repos ship these three).
HUB_FILES = ("*.pt", "*.safetensors", "args.json", "vocab.json")

# Per-tensor (rtol, atol) of the scGPT fixtures' ``tolerance_suggestion`` (fp32 vs the original).
TOLERANCES: dict[str, tuple[float, float]] = {
    "layer0_q": (1e-4, 2e-6),
    "layer0_k": (1e-4, 2e-6),
    "layer0_v": (1e-4, 5e-6),
    "attentions_layer0": (1e-4, 1e-6),
    "gene_embeddings": (1e-4, 1e-6),
    "value_embeddings": (1e-4, 1e-6),
    "hidden_states": (1e-4, 5e-6),
    "encoder_output": (1e-4, 5e-6),
    "cell_emb": (1e-4, 1e-6),
    "cell_emb_l2norm": (1e-4, 1e-6),
    "mlm_output": (1e-4, 1e-6),
    "mvc_output": (1e-4, 1e-6),
    "cls_output": (1e-4, 1e-6),
}
_DEFAULT_TOLERANCE = (1e-4, 5e-6)
_INPUTS = ("gene_ids", "values", "src_key_padding_mask")

_LAYER = r"transformer_encoder\.layers\.(\d+)\."
_QKV = {
    "torch": r"self_attn\.in_proj_(weight|bias)",
    "flash": r"self_attn\.(?:_impl\.)?Wqkv\.(weight|bias)",
}
# Modules of TransformerModel this port does not implement, by state-dict prefix.
_UNSUPPORTED = {
    "batch_encoder.": "use_batch_labels (batch-label encoder)",
    "dsbn.": "domain-specific batch norm",
    "bn.": "batch norm on the input embeddings",
    "grad_reverse_discriminator.": "do_dab (adversarial discriminator)",
    "transformer_encoder.fast_transformer_encoder.": "the linear-attention fast transformer",
    "mvc_decoder.fc1.": "mvc_decoder_style 'concat query' / 'sum query'",
}
# Keys of other families, for a helpful wrong-family error.
_OTHER_FAMILIES = (
    (re.compile(r"(xyz|signal)_embedding"), "BrainLM", "brainlm"),
    (re.compile(r"(^|\.)(patch_embed\.proj|embeddings\.patch_embeddings)\."), "ViT", "vit"),
)


def _fail(msg: str) -> None:
    raise ConversionError(msg)


def build_rules(layout: str, num_heads: int) -> list[Rule]:
    """The declarative name map of one key layout (``"torch"`` or ``"flash"``).

    Args:
      layout: key layout from :func:`detect_layout`.
      num_heads: attention heads (splits the fused q/k/v projection into DenseGeneral heads).
    """
    layer = "transformer_encoder/layers_\\1"
    rules = [
        Rule(r"encoder\.embedding\.weight", "encoder/embedding/embedding"),
        *layer_norm_rules(r"encoder\.enc_norm", "encoder/enc_norm"),
        *linear_rules(r"value_encoder\.linear(\d)", "value_encoder/linear\\1"),
        *layer_norm_rules(r"value_encoder\.norm", "value_encoder/norm"),
        Rule(r"value_encoder\.embedding\.weight", "value_encoder/embedding/embedding"),
        *layer_norm_rules(r"value_encoder\.enc_norm", "value_encoder/enc_norm"),
        # Fused [3D, D] q/k/v rows (head-major within each) -> query/key/value [D, H, Dh].
        Rule(_LAYER + _QKV[layout], f"{layer}/attention", split_fused_qkv(num_heads)),
        Rule(
            _LAYER + r"self_attn\.out_proj\.weight",
            f"{layer}/attention/out/kernel",
            linear_to_heads(num_heads, kind="out"),
        ),
        Rule(_LAYER + r"self_attn\.out_proj\.bias", f"{layer}/attention/out/bias"),
        *linear_rules(_LAYER + r"linear1", f"{layer}/mlp/fc1"),
        *linear_rules(_LAYER + r"linear2", f"{layer}/mlp/fc2"),
        *layer_norm_rules(_LAYER + r"norm(\d)", f"{layer}/norm\\2"),
        *linear_rules(r"decoder\.fc\.(\d)", "decoder/fc_\\1"),
        *linear_rules(r"decoder\.zero_logit\.(\d)", "decoder/zero_logit_\\1"),
        Rule(r"cls_decoder\._decoder\.(\d+)\.weight", "cls_decoder/_decoder_\\1", _cls_weight),
        Rule(r"cls_decoder\._decoder\.(\d+)\.bias", "cls_decoder/_decoder_\\1/bias"),
        *linear_rules(r"cls_decoder\.out_layer", "cls_decoder/out_layer"),
        *linear_rules(r"mvc_decoder\.gene2query", "mvc_decoder/gene2query"),
        Rule(r"mvc_decoder\.W\.weight", "mvc_decoder/W/kernel", transpose),
        *linear_rules(r"mvc_decoder\.W_zero_logit", "mvc_decoder/W_zero_logit"),
    ]
    return rules


def _cls_weight(w: np.ndarray) -> dict[str, np.ndarray]:
    """``_decoder.k.weight``: a Linear ([out, in]) or a LayerNorm ([D]) by its rank."""
    if w.ndim == 2:
        return {"kernel": np.ascontiguousarray(w.T)}
    return {"scale": w}


def detect_layout(keys) -> str:
    """``"torch"`` (``in_proj_weight``) or ``"flash"`` (``Wqkv``) from the state-dict keys.

    Raises:
      ConversionError: when the keys are not an scGPT encoder (names the family if recognised)
        or mix both layouts.
    """
    keys = list(keys)
    found = {name for name, pat in _QKV.items() for k in keys if re.fullmatch(_LAYER + pat, k)}
    if "encoder.embedding.weight" not in keys or not found:
        for pattern, family, cmd in _OTHER_FAMILIES:
            if any(pattern.search(k) for k in keys):
                _fail(
                    f"this looks like a {family} checkpoint, not scGPT (keys such as "
                    f"{next(k for k in keys if pattern.search(k))!r}); use `convert {cmd}`"
                )
        _fail(
            "not an scGPT checkpoint: expected 'encoder.embedding.weight' and "
            "'transformer_encoder.layers.N.self_attn.{in_proj_weight|Wqkv.weight}' keys, got "
            f"{sorted(keys)[:8]}{' ...' if len(keys) > 8 else ''}"
        )
    if len(found) > 1:
        _fail("scGPT checkpoint mixes the torch (in_proj_*) and flash (Wqkv.*) attention layouts")
    return found.pop()


def _find_checkpoint(src: Path) -> Path:
    """The checkpoint file of a model directory (or ``src`` itself if it is a file)."""
    if not src.exists():
        _fail(f"scGPT source {src} does not exist")
    if src.is_file():
        return src
    ckpt = next((src / n for n in CHECKPOINT_FILES if (src / n).is_file()), None)
    if ckpt is None:
        _wrong_family_dir(src)
        _fail(f"scGPT directory {src}: no checkpoint file (expected one of {CHECKPOINT_FILES})")
    return ckpt


def _sidecar(ckpt: Path, name: str) -> Path:
    path = ckpt.parent / name
    if not path.is_file():
        _fail(
            f"scGPT directory {ckpt.parent}: missing {name} (an scGPT model is {ckpt.name} + "
            f"{ARGS_FILE} + {VOCAB_FILE})"
        )
    return path


def _wrong_family_dir(src: Path) -> None:
    """Raises a wrong-family error when ``src`` holds another family's checkpoint."""
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (src / name).is_file():
            try:
                keys = read_state_dict(src / name).keys()
            except ConversionError:
                keys = ()
            detect_layout(keys)  # raises, naming the family when recognised


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConversionError(f"{path} is not valid JSON ({e})") from e


def _layer_count(keys, pattern: str) -> int:
    idx = {int(m.group(1)) for k in keys if (m := re.fullmatch(pattern, k))}
    return max(idx) + 1 if idx else 0


def infer_config(
    state: Mapping[str, np.ndarray], args: Mapping[str, Any], vocab: Mapping[str, int]
) -> ScGPTConfig:
    """The :class:`ScGPTConfig` of a checkpoint: shapes and present heads from the tensors,
    head count / padding / styles from ``args.json``.

    Raises:
      ConversionError: naming the offending key or argument.
    """
    keys = set(state)
    for prefix, what in _UNSUPPORTED.items():
        if any(k.startswith(prefix) for k in keys):
            _fail(
                f"scGPT checkpoint uses {what} (keys '{prefix}*'), which this port does not support"
            )
    if args.get("pre_norm", False):
        _fail("scGPT args.json: pre_norm=true (flash pre-norm layers) is not supported")
    optional = {
        "value_encoder.embedding.weight": 2,
        "cls_decoder.out_layer.weight": 2,
        "transformer_encoder.layers.0.linear1.weight": 2,
    }
    require_tensors(state, {"encoder.embedding.weight": 2}, optional, what="scGPT checkpoint")
    ntoken, d_model = state["encoder.embedding.weight"].shape
    nhead = args.get("nheads", args.get("nhead"))
    if not isinstance(nhead, int):
        _fail("scGPT args.json: 'nheads' (attention heads) is missing or not an integer")
    nlayers = _layer_count(keys, r"transformer_encoder\.layers\.(\d+)\.linear1\.weight")
    if nlayers == 0:
        _fail("scGPT checkpoint: no 'transformer_encoder.layers.N.linear1.weight' keys")
    require_tensors(
        state, {"transformer_encoder.layers.0.linear1.weight": 2}, what="scGPT checkpoint"
    )
    d_hid = state["transformer_encoder.layers.0.linear1.weight"].shape[0]
    if "value_encoder.linear1.weight" in keys:
        style, n_bins = "continuous", None
    elif "value_encoder.embedding.weight" in keys:
        style, n_bins = "category", int(state["value_encoder.embedding.weight"].shape[0])
    else:
        style, n_bins = "scaling", None
    if args.get("input_emb_style", style) != style:
        _fail(
            f"scGPT args.json says input_emb_style={args['input_emb_style']!r} but the checkpoint "
            f"holds a {style!r} value encoder"
        )
    n_cls, nlayers_cls = 0, 1
    if "cls_decoder.out_layer.weight" in keys:
        n_cls = int(state["cls_decoder.out_layer.weight"].shape[0])
        nlayers_cls = _layer_count(keys, r"cls_decoder\._decoder\.(\d+)\.weight")
        nlayers_cls = (nlayers_cls + 2) // 3 + 1  # indices 0, 2 | 3, 5 | ... per hidden block
    pad_token = args.get("pad_token", "<pad>")
    if pad_token not in vocab:
        _fail(f"scGPT vocab.json has no pad token {pad_token!r} (args.json pad_token)")
    if len(vocab) > ntoken or max(vocab.values()) >= ntoken:
        _fail(
            f"scGPT vocab.json ({len(vocab)} entries, max id {max(vocab.values())}) does not fit "
            f"the checkpoint's embedding table of {ntoken} rows"
        )
    try:
        return ScGPTConfig(
            ntoken=int(ntoken),
            d_model=int(d_model),
            nhead=nhead,
            d_hid=int(d_hid),
            nlayers=nlayers,
            nlayers_cls=nlayers_cls,
            n_cls=n_cls,
            dropout=float(args.get("dropout", 0.0)),
            pad_token_id=int(vocab[pad_token]),
            pad_value=float(args.get("pad_value", 0.0)),
            input_emb_style=style,
            n_input_bins=n_bins,
            cell_emb_style=args.get("cell_emb_style", "cls"),
            do_mvc="mvc_decoder.W.weight" in keys,
            mvc_decoder_style=args.get("mvc_decoder_style", "inner product"),
            explicit_zero_prob="decoder.zero_logit.0.weight" in keys,
        )
    except ValueError as e:
        raise ConversionError(f"scGPT checkpoint/args.json give an invalid config: {e}") from e


def _expected_shapes(config: ScGPTConfig):
    model = ScGPT(config=config)
    ids = jnp.zeros((1, 2), jnp.int32)
    tree = jax.eval_shape(model.init, jax.random.key(0), ids, jnp.zeros((1, 2)))
    return tree["params"]


def convert(src: Path) -> Converted:
    """Converts an scGPT model directory (or its ``best_model.pt``) to Flax parameters.

    Raises:
      ConversionError: missing/bad files, wrong family, unsupported modules; KeyMismatchError
        (a subclass) for renamed, missing, unexpected or mis-shaped tensors, all named.
    """
    src = Path(src)
    ckpt = _find_checkpoint(src)
    state = read_state_dict(ckpt)
    layout = detect_layout(state.keys())
    args_path, vocab_path = _sidecar(ckpt, ARGS_FILE), _sidecar(ckpt, VOCAB_FILE)
    args = _read_json(args_path)
    vocab = _read_json(vocab_path)
    if not isinstance(vocab, dict) or not all(isinstance(v, int) for v in vocab.values()):
        _fail(f"{vocab_path} must be a JSON object of gene symbol -> int id")
    if not isinstance(args, dict):
        _fail(f"{args_path} must be a JSON object")
    config = infer_config(state, args, vocab)
    flat = apply_rules(state, build_rules(layout, config.nhead), defer_unmatched=True)
    params = strict_merge(_expected_shapes(config), flat)
    n_params = sum(int(np.prod(v.shape)) for v in state.values())
    report = [
        f"scGPT checkpoint {ckpt.name}: {layout} attention layout ({len(state)} tensors, "
        f"{n_params} parameters)",
        f"d_model={config.d_model} nhead={config.nhead} nlayers={config.nlayers} "
        f"d_hid={config.d_hid} vocab={config.ntoken} value encoder={config.input_emb_style} "
        f"mvc={config.do_mvc} cls={config.n_cls}",
        f"vocab.json: {len(vocab)} tokens, <pad> id {config.pad_token_id}",
    ]
    return Converted(
        params=params,
        config=config.to_dict(),
        extra_files={VOCAB_FILE: vocab_path.read_text()},
        report=report,
    )


def verify(out_dir: Path, golden: Mapping[str, np.ndarray]) -> list[VerifyRow]:
    """Runs the converted model on the golden inputs and compares every tensor it produces.

    Per-token tensors are compared on non-padded positions only (padded outputs are
    implementation-defined); tolerances are :data:`TOLERANCES`.

    Raises:
      ConversionError: if ``golden`` lacks an input (``gene_ids``, ``values``,
        ``src_key_padding_mask``).
    """
    from jaxfm.foundation import load_pretrained

    missing = [k for k in _INPUTS if k not in golden]
    if missing:
        _fail(f"scGPT golden file lacks the input(s) {missing}")
    model, variables = load_pretrained(out_dir)
    pad = np.asarray(golden["src_key_padding_mask"], bool)
    with jax.default_matmul_precision("highest"):
        outputs = model.apply(
            variables,
            np.asarray(golden["gene_ids"]),
            np.asarray(golden["values"], np.float32),
            pad,
            output_intermediates=True,
        )
    outputs = {k: np.asarray(v) for k, v in outputs.items() if k in golden}
    ref = {k: np.asarray(golden[k]) for k in outputs}
    masks = {k: token_mask(k, ref[k].shape, ~pad) for k in ref}
    masks = {k: m for k, m in masks.items() if m is not None}
    tolerances = {k: TOLERANCES.get(k, _DEFAULT_TOLERANCE) for k in ref}
    return compare(outputs, ref, tolerances, masks=masks)


def token_mask(name: str, shape: tuple[int, ...], valid: np.ndarray) -> np.ndarray | None:
    """Boolean mask (full ``shape``) selecting non-padded positions of a per-token tensor.

    ``hidden_states`` ``[L+1, B, S, D]``, attention maps ``[..., B, H, S(query), S]`` and
    ``[B, S, ...]`` tensors are per token; others (``cell_emb``, ``cls_output``) get ``None``.

    Shapes:
      valid ``[B, S]`` bool (True = real token).
    """
    b, s = valid.shape
    if name == "hidden_states":
        m = valid[None, :, :, None]
    elif name.startswith("attentions"):
        m = valid[:, None, :, None]  # query rows
    elif len(shape) >= 2 and tuple(shape[:2]) == (b, s):
        m = valid.reshape(b, s, *([1] * (len(shape) - 2)))
    else:
        return None
    return np.broadcast_to(m, shape)
