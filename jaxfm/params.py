"""Parameter paths as an API: flatten, unflatten, select, label by rules, and one strict transplant.

A parameter's path is its keys joined by ``/`` (``encoder/layer_0/attention/query/kernel``).
Everything that addresses parameters by name goes through this module: freezing and learning-rate
groups (:mod:`jaxfm.train.optim`), sharding rules (:mod:`jaxfm.train.sharding`), checkpoint
digests, model directories (:mod:`jaxfm.model_dir`), FIMP's pretrained grafting, GraphFM
finetuning, converters and the parameter summary. Rules are ``(regex, value)`` pairs; the first
regex that matches (``re.search``) a path decides.

Example:
  >>> params = {"encoder": {"w": 1.0}, "heads": {"w": 2.0}}
  >>> label_params(params, [("^heads/", "train")], default="frozen")
  {'encoder': {'w': 'frozen'}, 'heads': {'w': 'train'}}
  >>> flatten(params)
  {'encoder/w': 1.0, 'heads/w': 2.0}
  >>> unflatten({"a/b": 1})
  {'a': {'b': 1}}
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

__all__ = [
    "TransplantError",
    "TransplantReport",
    "describe",
    "flatten",
    "label_params",
    "path_of",
    "paths",
    "select",
    "transplant",
    "unflatten",
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


def flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    """Nested dicts (or ``FrozenDict``) -> ``{"a/b/c": leaf}`` (leaves unchanged).

    Raises:
      ValueError: a key contains ``/`` (it would make paths ambiguous).
    """
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if "/" in str(key):
            raise ValueError(f"parameter name {key!r} must not contain '/'")
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, path + "/"))
        else:
            flat[path] = value
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict:
    """``{"a/b/c": leaf}`` -> nested dicts (inverse of :func:`flatten`)."""
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


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


def describe(tree, rules: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """Parameter counts per named rule group (first match wins; rest under ``"other"``)."""
    flat = [(p, int(np.size(v))) for p, v in zip(paths(tree), jax.tree.leaves(tree), strict=True)]
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


class TransplantError(ValueError):
    """Source tensors do not fit the target tree; every problem is listed by path."""

    def __init__(self, message: str, *, missing=(), unexpected=(), mismatched=()):
        super().__init__(message)
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mismatched = list(mismatched)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TransplantReport:
    """What :func:`transplant` did.

    Attributes:
      loaded: target paths that received source values.
      kept: target paths left as they were (not covered by ``into``).
      unused: source paths that went nowhere.
      num_values: scalars loaded.
    """

    loaded: tuple[str, ...]
    kept: tuple[str, ...]
    unused: tuple[str, ...]
    num_values: int


def _shape(x) -> tuple[int, ...]:
    return tuple(np.shape(x))


def transplant(
    target: Mapping,
    source: Mapping[str, Any],
    *,
    into: Sequence[str] | None = None,
    keep: Sequence[str] = (),
    unused_ok: bool = True,
    what: str = "the source",
) -> tuple[dict, TransplantReport]:
    """Copies ``source`` tensors into ``target`` by path, strictly (the one tree surgery).

    Every target path that ``into`` covers (default: all) and ``keep`` does not must receive a
    source value (else *missing*); every source value must land on a target path
    (else *unexpected*, unless ``unused_ok``); shapes must agree (*mis-shaped*). All problems are
    collected and raised together. Values are cast to the target leaf's dtype.

    Args:
      target: the target tree (nested dicts or flat ``{path: leaf}``; leaves with shapes).
      source: flat ``{target path: value}`` (rename source paths before calling).
      into: regexes of the target paths to fill (None: every path).
      keep: regexes of target paths that keep their own value even if ``source`` has one.
      unused_ok: allow source values no target path takes (decoders, poolers, heads).
      what: names the source in the error message.

    Returns:
      ``(new tree (nested dicts), report)``.

    Raises:
      TransplantError: listing every missing, unexpected and mis-shaped path.
    """
    flat_target = (
        flatten(target) if any(isinstance(v, Mapping) for v in target.values()) else dict(target)
    )
    into_rx = [re.compile(r) for r in (into if into is not None else [".*"])]
    keep_rx = [re.compile(r) for r in keep]
    wanted = [
        p
        for p in flat_target
        if any(r.search(p) for r in into_rx) and not any(r.search(p) for r in keep_rx)
    ]
    out = dict(flat_target)
    missing = [p for p in wanted if p not in source]
    mismatched = [
        (p, _shape(source[p]), _shape(flat_target[p]))
        for p in wanted
        if p in source and _shape(source[p]) != _shape(flat_target[p])
    ]
    wanted_set = set(wanted)
    unexpected = [] if unused_ok else [p for p in source if p not in wanted_set]
    if missing or unexpected or mismatched:
        lines = []
        if missing:
            lines.append(f"missing {len(missing)}: " + ", ".join(missing[:8]))
        if unexpected:
            lines.append(f"unexpected {len(unexpected)}: " + ", ".join(unexpected[:8]))
        if mismatched:
            lines.append(
                f"mis-shaped {len(mismatched)}: "
                + ", ".join(f"{p} got {g} expected {e}" for p, g, e in mismatched[:8])
            )
        raise TransplantError(
            f"{what} does not fit the model: " + "; ".join(lines),
            missing=missing,
            unexpected=unexpected,
            mismatched=mismatched,
        )
    for p in wanted:
        want = flat_target[p]
        dtype = getattr(want, "dtype", None)
        value = source[p]
        out[p] = np.asarray(value).astype(dtype) if dtype is not None else value
    loaded = tuple(wanted)
    report = TransplantReport(
        loaded=loaded,
        kept=tuple(p for p in flat_target if p not in wanted_set),
        unused=tuple(p for p in source if p not in wanted_set),
        num_values=int(sum(int(np.size(out[p])) for p in loaded)),
    )
    return unflatten(out), report
