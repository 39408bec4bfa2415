"""fMRI recordings as graphs of brain regions (FIMP-BrainLM): atlas coordinates, patches.

Each of the 424 regions of the A424 atlas is a node; its tokens are patches of 20 timepoints of its
signal (BrainLM's patching), and its spatial position encoding is a projection of the region's XYZ
centroid, which BrainLM reads unnormalised from ``A424_Coordinates.dat``.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

__all__ = ["A424_NUM_REGIONS", "FMRIDataset", "fmri_patches", "read_a424_coordinates"]

A424_NUM_REGIONS = 424


def read_a424_coordinates(
    path: str | os.PathLike, *, num_regions: int | None = A424_NUM_REGIONS
) -> np.ndarray:
    """Reads BrainLM's ``A424_Coordinates.dat``: rows ``index X Y Z`` (mm), whitespace-separated.

    Args:
        path: the ``.dat`` file (CRLF or LF line ends; blank lines are ignored).
        num_regions: the number of rows required (``None`` accepts any number).

    Returns:
        ``[num_regions, 3]`` float32 XYZ, row r for region index r + 1.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: a row without exactly 4 numeric fields (named by line number), region indices
            other than 1..R in order, or the wrong number of rows.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    rows = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, start=1):
            fields = line.split()
            if not fields:
                continue
            try:
                values = [float(x) for x in fields]
            except ValueError:
                raise ValueError(
                    f"{path}:{lineno}: non-numeric field in {line.strip()!r}"
                ) from None
            if len(values) != 4:
                raise ValueError(
                    f"{path}:{lineno}: expected 4 columns (index X Y Z), got {len(values)}"
                )
            rows.append(values)
    table = np.asarray(rows, np.float64).reshape(-1, 4)
    if num_regions is not None and len(table) != num_regions:
        raise ValueError(f"{path}: {len(table)} regions, expected {num_regions}")
    if not np.array_equal(table[:, 0], np.arange(1, len(table) + 1)):
        first = int(np.argmax(table[:, 0] != np.arange(1, len(table) + 1)))
        raise ValueError(
            f"{path}: region indices must run 1..{len(table)} in order; row {first + 1} has index "
            f"{table[first, 0]:g}"
        )
    if not np.isfinite(table).all():
        raise ValueError(f"{path}: non-finite coordinates")
    return table[:, 1:].astype(np.float32)


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class FMRIDataset:
    """Recordings over a fixed parcellation.

    Shapes:
        signals: ``[R, V, T]`` float32 (recordings, regions, timepoints).
        coords: ``[V, 3]`` float32 region centroids.
        region_groups: ``[V]`` int32 in ``[0, len(group_names))`` (e.g. 7 functional networks), or
            ``None``.

    Raises:
        ValueError: from ``__post_init__`` when shapes disagree.
    """

    signals: np.ndarray
    coords: np.ndarray
    region_groups: np.ndarray | None = None
    group_names: tuple[str, ...] | None = None
    name: str = "fmri"

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)
        set_("signals", np.asarray(self.signals, np.float32))
        set_("coords", np.asarray(self.coords, np.float32))
        if self.signals.ndim != 3:
            raise ValueError(f"{self.name}: signals must be [R, V, T], got {self.signals.shape}")
        v = self.signals.shape[1]
        if self.coords.shape != (v, 3):
            raise ValueError(f"{self.name}: coords {self.coords.shape} != [{v}, 3]")
        if (self.region_groups is None) != (self.group_names is None):
            raise ValueError(f"{self.name}: region_groups and group_names go together")
        if self.region_groups is not None:
            set_("region_groups", np.asarray(self.region_groups, np.int32))
            set_("group_names", tuple(str(g) for g in self.group_names))
            groups = self.region_groups
            if groups.shape != (v,) or (
                v and (groups.min() < 0 or groups.max() >= len(self.group_names))
            ):
                raise ValueError(
                    f"{self.name}: region_groups must be [{v}] ints in [0, {len(self.group_names)})"
                )

    @property
    def num_recordings(self) -> int:
        return self.signals.shape[0]

    @property
    def num_regions(self) -> int:
        return self.signals.shape[1]

    @property
    def num_timepoints(self) -> int:
        return self.signals.shape[2]

    def patches(self, patch_size: int = 20) -> np.ndarray:
        """``fmri_patches(self.signals, patch_size)``."""
        return fmri_patches(self.signals, patch_size)


def fmri_patches(signals, patch_size: int = 20):
    """Cuts each region's signal into consecutive patches (BrainLM / FIMP: 20 timepoints).

    Works on numpy and JAX arrays (a reshape; ``patch_size`` is static under ``jit``).

    Shapes:
        signals: ``[..., T]`` (usually ``[R, V, T]``). returns: ``[..., T // P, P]``.

    Raises:
        ValueError: ``patch_size < 1`` or T not a multiple of ``patch_size``.
    """
    t = signals.shape[-1]
    if patch_size < 1 or t % patch_size:
        raise ValueError(
            f"number of timepoints {t} must be a positive multiple of patch_size {patch_size}; "
            f"crop to {t - t % patch_size} timepoints first"
        )
    return signals.reshape(*signals.shape[:-1], t // patch_size, patch_size)
