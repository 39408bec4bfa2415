"""Per-tensor comparison of a converted model's outputs with golden outputs.

Example:
  >>> import numpy as np
  >>> rows = compare({"y": np.ones(3)}, {"y": np.ones(3) + 1e-7}, {"y": (1e-4, 1e-6)})
  >>> rows[0].ok
  True
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "VerifyRow",
    "all_ok",
    "compare",
    "format_table",
    "load_golden",
    "tolerances_from_fixture",
]


@dataclasses.dataclass(frozen=True)
class VerifyRow:
    """One compared tensor.

    Attributes:
      name: golden tensor name.
      shape: golden shape.
      max_abs_err: ``max |out - golden|`` over the compared positions (``inf`` on a shape
        mismatch or a NaN).
      rtol: relative tolerance used (0 for exact comparisons).
      atol: absolute tolerance used.
      ok: every compared element satisfies ``|out - golden| <= atol + rtol * |golden|``.
      note: extra information (``"exact"``, ``"masked: 12/40"``, a shape mismatch).
    """

    name: str
    shape: tuple[int, ...]
    max_abs_err: float
    rtol: float
    atol: float
    ok: bool
    note: str = ""


def _broadcast_mask(mask: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    mask = np.asarray(mask, bool)
    if mask.ndim < len(shape):  # a per-token mask for a per-feature tensor
        mask = mask.reshape(mask.shape + (1,) * (len(shape) - mask.ndim))
    try:
        return np.broadcast_to(mask, shape)
    except ValueError as e:
        raise ValueError(
            f"compare: mask of {name!r} has shape {mask.shape}, not broadcastable to {shape}"
        ) from e


def compare(
    outputs: Mapping[str, np.ndarray],
    golden: Mapping[str, np.ndarray],
    tolerances: Mapping[str, tuple[float, float]],
    *,
    masks: Mapping[str, np.ndarray] | None = None,
    exact: Sequence[str] = (),
) -> list[VerifyRow]:
    """Compares every output that has a golden tensor.

    Args:
      outputs: the converted model's tensors by golden name.
      golden: reference tensors.
      tolerances: ``{name: (rtol, atol)}``; required for every compared name not in ``exact``.
      masks: ``{name: bool array}``, True where compared (e.g. non-padded tokens); broadcast
        from the leading axes.
      exact: names compared for equality (integer indices, boolean masks).

    Returns:
      One :class:`VerifyRow` per compared name, in ``golden`` order.

    Raises:
      ValueError: a compared name has no tolerance, or a mask does not fit.
    """
    masks = masks or {}
    names = [n for n in golden if n in outputs]
    lacking = [n for n in names if n not in exact and n not in tolerances]
    if lacking:
        raise ValueError(f"compare: no tolerance given for {lacking}")
    rows = []
    for name in names:
        ref = np.asarray(golden[name])
        out = np.asarray(outputs[name])
        rtol, atol = (0.0, 0.0) if name in exact else tuple(map(float, tolerances[name]))
        note = "exact" if name in exact else ""
        if out.shape != ref.shape:
            rows.append(
                VerifyRow(name, ref.shape, math.inf, rtol, atol, False, f"shape {out.shape}")
            )
            continue
        sel = np.ones(ref.shape, bool)
        if name in masks:
            sel = _broadcast_mask(masks[name], ref.shape, name)
            note = (note + " " if note else "") + f"masked: {int(sel.sum())}/{sel.size}"
        if name in exact:
            diff = (out != ref) & sel
            err = float(np.max(np.abs(out.astype(np.float64) - ref), where=sel, initial=0.0))
            rows.append(VerifyRow(name, ref.shape, err, rtol, atol, not diff.any(), note))
            continue
        out64, ref64 = out.astype(np.float64), ref.astype(np.float64)
        abs_err = np.abs(out64 - ref64)
        bad = ~(abs_err <= atol + rtol * np.abs(ref64))  # NaN counts as bad
        bad &= sel
        finite_err = np.where(np.isnan(abs_err), np.inf, abs_err)
        err = float(np.max(finite_err, where=sel, initial=0.0))
        rows.append(VerifyRow(name, ref.shape, err, rtol, atol, not bad.any(), note))
    return rows


def all_ok(rows: Sequence[VerifyRow]) -> bool:
    """True when there is at least one row and every row passed."""
    return bool(rows) and all(r.ok for r in rows)


def format_table(rows: Sequence[VerifyRow]) -> str:
    """A Markdown table: tensor, shape, max abs err, rtol, atol, status."""
    lines = [
        "| tensor | shape | max abs err | rtol | atol | ok |",
        "|---|---|---:|---:|---:|---|",
    ]
    for r in rows:
        status = "ok" if r.ok else "MISMATCH"
        note = f" ({r.note})" if r.note else ""
        shape = "x".join(map(str, r.shape)) or "scalar"
        lines.append(
            f"| {r.name} | {shape} | {r.max_abs_err:.3e} | {r.rtol:g} | {r.atol:g} | "
            f"{status}{note} |"
        )
    return "\n".join(lines)


def load_golden(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a golden ``.npz`` (no pickles) into a dict.

    Raises:
      ValueError: the file is missing or not a readable ``.npz`` (names it).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"golden file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:
        raise ValueError(f"golden file {path} is not a readable .npz ({e})") from e


def tolerances_from_fixture(path: str | os.PathLike) -> dict[str, tuple[float, float]]:
    """``{name: (rtol, atol)}`` from a fixture.json's ``tolerance_suggestion.per_tensor``."""
    spec = json.loads(Path(path).read_text()).get("tolerance_suggestion", {})
    return {
        name: (float(t["rtol"]), float(t["atol"])) for name, t in spec.get("per_tensor", {}).items()
    }
