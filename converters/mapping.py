"""Declarative checkpoint-key -> Flax-path mapping, layout transforms and the strict merge.

A converter is a list of :class:`Rule` objects (a regex over checkpoint keys, a target path
template and a transform), applied by :func:`apply_rules`, followed by :func:`strict_merge`
against the target model's abstract parameter tree (from ``jax.eval_shape(model.init, ...)``).

Example:
  >>> import numpy as np
  >>> rules = [Rule(r"blocks\\.(\\d+)\\.fc\\.weight", r"layer_\\1/fc/kernel", transpose)]
  >>> flat = apply_rules({"blocks.0.fc.weight": np.zeros((3, 2))}, rules)
  >>> {k: v.shape for k, v in flat.items()}
  {'layer_0/fc/kernel': (2, 3)}
  >>> strict_merge({"layer_0/fc/kernel": (2, 3)}, flat)["layer_0"]["fc"]["kernel"].shape
  (2, 3)
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from converters.errors import ConversionError, KeyMismatchError
from jaxfm.params import flatten, unflatten

__all__ = [
    "MappedParams",
    "Rule",
    "apply_rules",
    "compose",
    "conv2d_to_flax",
    "conv_to_dense",
    "identity",
    "layer_norm_rules",
    "linear_rules",
    "linear_to_heads",
    "require_tensors",
    "reshape",
    "split_fused_qkv",
    "squeeze",
    "strict_merge",
    "transpose",
]

Transform = Callable[[np.ndarray], "np.ndarray | dict[str, np.ndarray]"]

_MAX_LISTED = 40  # names listed per category in a KeyMismatchError message


# --------------------------------------------------------------------------------------------
# transforms
# --------------------------------------------------------------------------------------------


def identity(w: np.ndarray) -> np.ndarray:
    """Returns ``w`` unchanged (LayerNorm weights, biases, embeddings)."""
    return w


def transpose(w: np.ndarray) -> np.ndarray:
    """PyTorch ``Linear.weight [out, in]`` -> Flax ``Dense.kernel [in, out]``.

    Shapes:
      w ``[out, in]`` -> ``[in, out]``.
    """
    _expect_ndim(w, 2, "transpose")
    return w.T


def squeeze(w: np.ndarray) -> np.ndarray:
    """Drops all unit axes (e.g. a ``[1, 1, D]`` token -> ``[D]``)."""
    return np.squeeze(w)


def reshape(shape: Sequence[int]) -> Transform:
    """Returns a transform reshaping to ``shape`` (``-1`` allowed)."""
    shape = tuple(shape)

    def _reshape(w: np.ndarray) -> np.ndarray:
        return w.reshape(shape)

    return _reshape


def conv2d_to_flax(w: np.ndarray) -> np.ndarray:
    """PyTorch ``Conv2d.weight`` OIHW -> Flax ``Conv.kernel`` HWIO.

    Shapes:
      w ``[O, I, kh, kw]`` -> ``[kh, kw, I, O]``.
    """
    _expect_ndim(w, 4, "conv2d_to_flax")
    return w.transpose(2, 3, 1, 0)


def conv_to_dense(w: np.ndarray) -> np.ndarray:
    """A stride=kernel ``Conv2d.weight`` as a ``Dense`` kernel on row-major flattened patches.

    Patches flattened in ``(kh, kw, C)`` order (NHWC images) meet a kernel with rows in the same
    order.

    Shapes:
      w ``[O, I, kh, kw]`` -> ``[kh * kw * I, O]``.
    """
    _expect_ndim(w, 4, "conv_to_dense")
    return w.transpose(2, 3, 1, 0).reshape(-1, w.shape[0])  # [kh*kw*I, O]


def linear_to_heads(num_heads: int, kind: str = "in") -> Transform:
    """PyTorch Linear weight/bias -> ``DenseGeneral`` per-head layout.

    ``kind="in"`` (query/key/value projections): weight ``[H*Dh, D]`` -> kernel ``[D, H, Dh]``,
    bias ``[H*Dh]`` -> ``[H, Dh]``. ``kind="out"`` (output projection): weight ``[D, H*Dh]`` ->
    kernel ``[H, Dh, D]``; the bias ``[D]`` is unchanged. Heads are the leading split of the
    ``H*Dh`` axis (head-major), as in PyTorch/HF attention.
    """
    if kind not in ("in", "out"):
        raise ValueError(f"linear_to_heads: kind must be 'in' or 'out', got {kind!r}")

    def _to_heads(w: np.ndarray) -> np.ndarray:
        if w.ndim == 1:
            if kind == "out":
                return w
            return w.reshape(num_heads, _head_dim(w.shape[0], num_heads))  # [H, Dh]
        _expect_ndim(w, 2, "linear_to_heads")
        if kind == "in":
            d_out, d_in = w.shape
            return w.T.reshape(d_in, num_heads, _head_dim(d_out, num_heads))  # [D, H, Dh]
        d_out, d_in = w.shape
        return w.T.reshape(num_heads, _head_dim(d_in, num_heads), d_out)  # [H, Dh, D]

    return _to_heads


def split_fused_qkv(num_heads: int, names: Sequence[str] = ("query", "key", "value")) -> Transform:
    """Fused ``[q; k; v]`` projection -> per-head ``DenseGeneral`` kernels or biases.

    Rows are ``[q; k; v]``, each head-major (timm ``attn.qkv``, PyTorch ``in_proj_weight``,
    flash-attn ``Wqkv``). Returns ``{"query/kernel": [D, H, Dh], ...}`` for a weight
    ``[3*H*Dh, D]`` and ``{"query/bias": [H, Dh], ...}`` for a bias ``[3*H*Dh]``.
    """
    names = tuple(names)

    def _split(w: np.ndarray) -> dict[str, np.ndarray]:
        n = len(names)
        if w.ndim not in (1, 2) or w.shape[0] % n:
            raise ConversionError(
                f"split_fused_qkv: expected a [{n}*H*Dh, D] weight or [{n}*H*Dh] bias, "
                f"got shape {w.shape}"
            )
        dh = _head_dim(w.shape[0] // n, num_heads)
        if w.ndim == 1:
            parts = w.reshape(n, num_heads, dh)  # [3, H, Dh]
            return {f"{name}/bias": parts[i] for i, name in enumerate(names)}
        parts = w.reshape(n, num_heads, dh, w.shape[1])  # [3, H, Dh, D]
        return {f"{name}/kernel": parts[i].transpose(2, 0, 1) for i, name in enumerate(names)}

    return _split


def compose(*fs: Transform) -> Transform:
    """``compose(f, g)(w) == g(f(w))`` (applied left to right)."""

    def _composed(w):
        for f in fs:
            w = f(w)
        return w

    return _composed


def _expect_ndim(w: np.ndarray, ndim: int, what: str) -> None:
    if w.ndim != ndim:
        raise ConversionError(f"{what}: expected a {ndim}-D tensor, got shape {w.shape}")


def _head_dim(width: int, num_heads: int) -> int:
    if width % num_heads:
        raise ConversionError(f"width {width} is not divisible by num_heads={num_heads}")
    return width // num_heads


# --------------------------------------------------------------------------------------------
# rules
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Rule:
    """Maps checkpoint keys matching ``source`` to the Flax path ``target``.

    Attributes:
      source: regex that must fullmatch a checkpoint key.
      target: flat Flax path template with ``/`` separators; ``\\1`` / ``\\g<name>`` insert
        groups of ``source``.
      transform: array -> array, or -> ``{suffix: array}`` written to ``target + "/" + suffix``.
    """

    source: str
    target: str
    transform: Transform = identity

    def __post_init__(self):
        try:
            object.__setattr__(self, "_regex", re.compile(self.source))
        except re.error as e:
            raise ValueError(f"Rule: source {self.source!r} is not a valid regex ({e})") from e

    def match(self, key: str) -> re.Match | None:
        return self._regex.fullmatch(key)


class MappedParams(dict):
    """``{flat_path: array}`` that remembers each path's checkpoint key (``origin``) and the
    checkpoint keys no rule matched (``unmatched``, reported by :func:`strict_merge`)."""

    def __init__(self, *args, origin: Mapping[str, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.origin: dict[str, str] = dict(origin or {})
        self.unmatched: list[str] = []


def apply_rules(
    state: Mapping[str, np.ndarray],
    rules: Sequence[Rule],
    *,
    ignore: Sequence[str] = (),
    defer_unmatched: bool = False,
) -> MappedParams:
    """Renames and transforms a checkpoint's tensors into flat Flax paths.

    The first rule whose ``source`` fullmatches a key wins.

    Args:
      state: checkpoint tensors by key.
      rules: the name map.
      ignore: regexes of keys deliberately dropped (buffers such as ``position_ids``).
      defer_unmatched: keep keys matched by no rule in the result's ``unmatched`` instead of
        raising, so :func:`strict_merge` reports them together with the missing and mis-shaped
        parameters (a renamed key is then shown with the parameter it should have filled).

    Returns:
      ``{flat_path: array}`` (:class:`MappedParams`, whose ``origin`` maps paths to keys).

    Raises:
      KeyMismatchError: keys matched by no rule and no ``ignore`` pattern (all listed; unless
        ``defer_unmatched``).
      ConversionError: two keys map to one path, or a transform fails (names the key).
    """
    ignored = [re.compile(p) for p in ignore]
    out = MappedParams()
    unexpected = []
    for key, value in state.items():
        rule, m = next(((r, m) for r in rules if (m := r.match(key))), (None, None))
        if rule is None:
            if not any(p.fullmatch(key) for p in ignored):
                unexpected.append(key)
            continue
        target = m.expand(rule.target)
        try:
            result = rule.transform(np.asarray(value))
        except ConversionError as e:
            raise ConversionError(f"checkpoint key {key!r} -> {target!r}: {e}") from e
        except Exception as e:
            raise ConversionError(
                f"checkpoint key {key!r} (shape {tuple(np.shape(value))}) -> {target!r}: the "
                f"layout transform failed ({type(e).__name__}: {e})"
            ) from e
        items = (
            {f"{target}/{suffix}": v for suffix, v in result.items()}
            if isinstance(result, Mapping)
            else {target: result}
        )
        for path, v in items.items():
            if path in out:
                raise ConversionError(
                    f"checkpoint keys {out.origin[path]!r} and {key!r} both map to {path!r}"
                )
            out[path] = v
            out.origin[path] = key
    if unexpected and not defer_unmatched:
        raise KeyMismatchError(
            f"{len(unexpected)} checkpoint key(s) match no conversion rule (renamed or from "
            f"another model?): {_listing(unexpected)}",
            unexpected=unexpected,
        )
    out.unmatched = unexpected
    return out


# --------------------------------------------------------------------------------------------
# strict merge
# --------------------------------------------------------------------------------------------


def _expected_leaf(leaf: Any) -> tuple[tuple[int, ...], Any]:
    """``(shape, dtype or None)`` of an abstract leaf (ShapeDtypeStruct, array or shape tuple)."""
    if isinstance(leaf, tuple | list):
        return tuple(int(s) for s in leaf), None
    return tuple(leaf.shape), getattr(leaf, "dtype", None)


def strict_merge(expected: Mapping[str, Any], converted: Mapping[str, np.ndarray]) -> dict:
    """Checks converted tensors against the target tree and nests them.

    Args:
      expected: the target tree, nested (leaves ``jax.ShapeDtypeStruct``/arrays, e.g. the
        ``params`` of ``jax.eval_shape(model.init, ...)``) or flat ``{path: shape}``.
      converted: ``{flat_path: array}`` from :func:`apply_rules`.

    Returns:
      The nested parameter dict; arrays are cast to the expected dtype when one is known.

    Raises:
      KeyMismatchError: listing every missing, unexpected and mis-shaped (with both shapes)
        path; paths are annotated with their checkpoint key when known.
    """
    flat_expected = {k: _expected_leaf(v) for k, v in _flat(expected).items()}
    origin = getattr(converted, "origin", {})
    named = lambda p: f"{p} (from checkpoint key {origin[p]!r})" if p in origin else p
    missing = sorted(set(flat_expected) - set(converted))
    unexpected = sorted(set(converted) - set(flat_expected))
    mismatched = [
        (p, tuple(np.shape(converted[p])), flat_expected[p][0])
        for p in sorted(set(converted) & set(flat_expected))
        if tuple(np.shape(converted[p])) != flat_expected[p][0]
    ]
    unmatched = list(getattr(converted, "unmatched", ()))
    if missing or unexpected or mismatched or unmatched:
        parts = []
        if unmatched:
            parts.append(
                f"checkpoint keys matching no conversion rule ({len(unmatched)}, renamed or from "
                f"another model?): {_listing(unmatched)}"
            )
        if missing:
            parts.append(
                f"missing ({len(missing)}, no checkpoint tensor provides them): {_listing(missing)}"
            )
        if unexpected:
            parts.append(
                f"unexpected ({len(unexpected)}, not in the model): "
                f"{_listing([named(p) for p in unexpected])}"
            )
        if mismatched:
            parts.append(
                f"shape mismatch ({len(mismatched)}): "
                + _listing([f"{named(p)}: got {g}, expected {e}" for p, g, e in mismatched])
            )
        raise KeyMismatchError(
            "checkpoint does not match the model parameters; " + "; ".join(parts),
            missing=missing,
            unexpected=unmatched + [origin.get(p, p) for p in unexpected],
            mismatched=mismatched,
        )
    out = {}
    for path, value in converted.items():
        dtype = flat_expected[path][1]
        value = np.asarray(value)
        out[path] = value.astype(dtype) if dtype is not None and value.dtype != dtype else value
    return unflatten(out)


def _flat(tree: Mapping[str, Any]) -> dict[str, Any]:
    """A nested target tree, or an already flat ``{path: shape}`` one, as ``{path: leaf}``."""
    if all(not isinstance(v, Mapping) for v in tree.values()):
        return dict(tree)
    return flatten(tree)


def require_tensors(
    state: Mapping[str, Any],
    required: Mapping[str, int],
    optional: Mapping[str, int] | None = None,
    *,
    what: str,
) -> None:
    """Checks the tensors a converter reads to infer its config, all at once.

    Args:
      state: checkpoint tensors by key.
      required: ``{key: ndim}`` that must be present with that rank.
      optional: ``{key: ndim}`` checked only when present.
      what: the checkpoint, for the message (e.g. ``"ViT checkpoint model.safetensors"``).

    Raises:
      KeyMismatchError: listing every missing key and every present key of the wrong rank
        (with its shape), so one run shows all the problems.
    """
    missing = [k for k in required if k not in state]
    wanted = {**(optional or {}), **required}
    mismatched = [
        (k, tuple(np.shape(state[k])), n)
        for k, n in wanted.items()
        if k in state and np.ndim(state[k]) != n
    ]
    if not missing and not mismatched:
        return
    parts = []
    if missing:
        parts.append(f"missing ({len(missing)}): {_listing(missing)}")
    if mismatched:
        parts.append(
            f"wrong rank ({len(mismatched)}): "
            + _listing([f"{k}: shape {g}, expected a {n}-D tensor" for k, g, n in mismatched])
        )
    raise KeyMismatchError(
        f"{what}: the tensors that define the model are not as expected; " + "; ".join(parts),
        missing=missing,
        mismatched=[(k, g, (-1,) * n) for k, g, n in mismatched],
    )


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(repr(n) if "(" not in n and ":" not in n else n for n in names[:_MAX_LISTED])
    more = len(names) - _MAX_LISTED
    return shown + (f", ... and {more} more" if more > 0 else "")


def layer_norm_rules(src: str, dst: str) -> list[Rule]:
    """PyTorch LayerNorm ``{src}.weight``/``.bias`` -> Flax ``{dst}/scale``/``{dst}/bias``.

    ``src`` is a regex prefix (escape dots), ``dst`` a Flax path template.
    """
    return [Rule(rf"{src}\.weight", f"{dst}/scale"), Rule(rf"{src}\.bias", f"{dst}/bias")]


def linear_rules(src: str, dst: str) -> list[Rule]:
    """PyTorch Linear ``weight [out, in]``/``bias`` -> Flax Dense ``kernel [in, out]``/``bias``."""
    return [
        Rule(rf"{src}\.weight", f"{dst}/kernel", transpose),
        Rule(rf"{src}\.bias", f"{dst}/bias"),
    ]
