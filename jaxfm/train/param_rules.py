"""Parameter paths as an API: one regex-over-path mechanism for freezing, lr groups and surgery.

A parameter's path is its keys joined by ``/`` (``encoder/layer_0/attention/query/kernel``).
Rules are ``(regex, value)`` pairs; the first regex that matches (``re.search``) a path decides
its value. MFT/NFT freezing, per-dataset learning-rate scaling and (issue 5) sharding are all
configured as such rules instead of code branches.

Example:
  >>> params = {"encoder": {"w": 1.0}, "heads": {"w": 2.0}}
  >>> label_params(params, [("^heads/", "train")], default="frozen")
  {'encoder': {'w': 'frozen'}, 'heads': {'w': 'train'}}
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = [
    "describe",
    "label_params",
    "masked_optimizer",
    "path_of",
    "paths",
    "scale_rows",
    "select",
]

Rules = Sequence[tuple[str, Any]]


def path_of(key_path) -> str:
    """``jax.tree_util`` key path -> ``"a/b/c"``."""
    parts = []
    for k in key_path:
        parts.append(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))))
    return "/".join(parts)


def paths(tree) -> list[str]:
    """All leaf paths of ``tree`` in tree order."""
    return [path_of(kp) for kp, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def label_params(tree, rules: Rules, *, default: Any = None, strict: bool = False):
    """A tree of the same structure whose leaves are the value of the first matching rule.

    Args:
      tree: parameter tree (nested dicts).
      rules: ``(regex, value)`` pairs, tried in order with ``re.search`` on the leaf path.
      default: value for leaves no rule matches.
      strict: raise if a rule matches no leaf (catches typos in configs).

    Raises:
      ValueError: a regex does not compile, or (strict) matches nothing.
    """
    compiled = []
    for pattern, value in rules:
        try:
            compiled.append((re.compile(pattern), value))
        except re.error as e:
            raise ValueError(f"parameter rule {pattern!r} is not a valid regex: {e}") from e
    used = [False] * len(compiled)

    def pick(kp, _):
        path = path_of(kp)
        for i, (rx, value) in enumerate(compiled):
            if rx.search(path):
                used[i] = True
                return value
        return default

    out = jax.tree_util.tree_map_with_path(pick, tree)
    if strict:
        unused = [rules[i][0] for i, u in enumerate(used) if not u]
        if unused:
            raise ValueError(
                f"parameter rules {unused} match no parameter; paths look like {paths(tree)[:5]}"
            )
    return out


def select(tree, patterns: Iterable[str]) -> list[str]:
    """Paths of ``tree`` matching any of ``patterns``."""
    rx = [re.compile(p) for p in patterns]
    return [p for p in paths(tree) if any(r.search(p) for r in rx)]


def masked_optimizer(
    optimizer: optax.GradientTransformation, params, trainable: Sequence[str]
) -> optax.GradientTransformation:
    """``optimizer`` on the parameters whose path matches a ``trainable`` regex; others frozen.

    Frozen parameters get zero updates and no optimizer state (``optax.set_to_zero``), so a
    frozen encoder costs no Adam moments.
    """
    labels = label_params(params, [(p, "train") for p in trainable], default="frozen")
    return optax.multi_transform({"train": optimizer, "frozen": optax.set_to_zero()}, labels)


class _ScaleRowsState(NamedTuple):
    pass


def scale_rows(
    row_scales: jax.Array | Callable[[], jax.Array], params, rules: Sequence[str]
) -> optax.GradientTransformation:
    """Multiplies updates of stacked per-dataset parameters row-wise by ``row_scales``.

    Per-dataset parameters are stacked with a leading dataset axis S (``[S, ...]``); this scales
    row ``s`` of the update of every parameter whose path matches one of ``rules`` by
    ``row_scales[s]`` (GraphFM appendix A.2: the per-dataset MLPs and heads of rarely-seen
    datasets take larger steps). Other parameters are untouched.

    Shapes:
      row_scales: ``[S]``.
    """
    labels = label_params(params, [(p, True) for p in rules], default=False)

    def update_fn(updates, state, params=None):
        del params
        scales = jnp.asarray(row_scales() if callable(row_scales) else row_scales)

        def scale(u, hit):
            if not hit:
                return u
            if u.shape[:1] != scales.shape:
                raise ValueError(
                    f"scale_rows: a matched parameter has leading dim {u.shape[:1]}, expected "
                    f"the dataset axis {scales.shape}"
                )
            return u * scales.reshape((-1,) + (1,) * (u.ndim - 1)).astype(u.dtype)

        return jax.tree.map(scale, updates, labels), state

    return optax.GradientTransformation(lambda _: _ScaleRowsState(), update_fn)


def describe(tree, rules: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """Parameter counts per named rule group (first match wins; rest under ``"other"``)."""
    flat = [(p, int(v.size)) for p, v in zip(paths(tree), jax.tree.leaves(tree), strict=True)]
    counts = {name: 0 for name in rules} | {"other": 0}
    compiled = {name: [re.compile(r) for r in rx] for name, rx in rules.items()}
    for path, size in flat:
        for name, rx in compiled.items():
            if any(r.search(path) for r in rx):
                counts[name] += size
                break
        else:
            counts["other"] += size
    return counts
