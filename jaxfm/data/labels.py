"""Class labels: the one convention every loader follows.

* A class label is an integer in ``[0, C)``, ``C`` the number of classes.
* **Any negative value means "unlabelled"** and is stored as :data:`UNLABELLED` (``-1``). An
  unlabelled item is never a class (it does not count towards ``C``), never appears in a
  train / validation / test split, and so never enters a loss or a metric.
* The one exception is a format that defines negative values as categories: TU graph labels
  (``-1`` / ``1`` are two classes) and TU node labels (category codes used as features) are
  read with ``encode_labels(..., categorical=True)``.
* When a file declares ``C`` (e.g. a ``class_names`` array), a label ``>= C`` is an error that
  names the file - never silently a NaN loss or an out-of-range gather.
"""

from __future__ import annotations

import numpy as np

from jaxfm.data.graph_validate import DatasetFormatError

__all__ = ["UNLABELLED", "class_labels"]

#: The stored value of an unlabelled item (every negative input value becomes this).
UNLABELLED = -1


def class_labels(values, where: str, num_classes: int | None = None) -> tuple[np.ndarray, int]:
    """Integer class labels ``int32 [N]`` (negatives -> :data:`UNLABELLED`) and ``C``.

    Args:
      values: integer (or integral float) labels.
      where: the file, named in errors.
      num_classes: ``C`` declared by the file; ``None``: ``C`` is the largest label + 1.

    Raises:
      DatasetFormatError: non-integer or non-finite labels, a label ``>= num_classes``, or no
        labelled item at all.
    """
    v = np.asarray(values).ravel()
    if v.dtype.kind == "b":
        v = v.astype(np.int64)
    if v.dtype.kind == "f":
        if not np.isfinite(v).all() or not np.array_equal(v, np.round(v)):
            raise DatasetFormatError(f"{where}: class labels must be integers")
        v = v.astype(np.int64)
    if v.dtype.kind not in "iu":
        raise DatasetFormatError(f"{where}: class labels must be integers, got {v.dtype}")
    labelled = v >= 0
    if not labelled.any():
        raise DatasetFormatError(f"{where}: no labelled item (all {v.size} labels are negative)")
    top = int(v[labelled].max())
    if num_classes is not None and top >= num_classes:
        raise DatasetFormatError(
            f"{where}: labels out of range: label {top} for {num_classes} declared classes "
            f"(labels must lie in [0, {num_classes}); negative values mean unlabelled)"
        )
    y = np.where(labelled, v, UNLABELLED).astype(np.int32)
    return y, int(num_classes if num_classes is not None else top + 1)
