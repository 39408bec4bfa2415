"""The result of a family converter and the atomic writer of a converted model directory."""

from __future__ import annotations

import dataclasses
import gc
import importlib
import json
import mmap
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from converters.errors import ConversionError

__all__ = ["FAMILIES", "Converted", "check_output_dir", "load_family", "write_model_dir"]

#: family name -> converter module (imported lazily by :func:`load_family`).
FAMILIES = {"vit": "converters.vit", "scgpt": "converters.scgpt", "brainlm": "converters.brainlm"}


@dataclasses.dataclass
class Converted:
    """A converted checkpoint, ready to be written as a jaxfm model directory.

    Attributes:
      params: nested Flax parameter dict (already strict-merged).
      config: JSON-able config; contains ``"family"`` and the family's config fields.
      extra_files: files written beside the parameters (``{name: text or bytes}``).
      report: human-readable lines (detected layout, tensor counts, ...).
    """

    params: dict
    config: dict
    extra_files: dict[str, str | bytes] = dataclasses.field(default_factory=dict)
    report: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self):
        if not isinstance(self.config.get("family"), str):
            raise ValueError("Converted.config must contain the model family under 'family'")


def load_family(family: str) -> ModuleType:
    """Imports the converter module of ``family`` (see :data:`converters.FAMILIES`).

    Raises:
      ConversionError: an unknown family (lists the known ones).
    """
    if family not in FAMILIES:
        raise ConversionError(
            f"unknown model family {family!r}; expected one of {sorted(FAMILIES)}"
        )
    return importlib.import_module(FAMILIES[family])


def _model_dir_family(path: Path) -> str | None:
    """The family of an earlier jaxfm model directory at ``path`` (None if it is not one)."""
    from jaxfm.model_dir import CONFIG_FILE, PARAMS_FILE

    if not (path / PARAMS_FILE).is_file() or not (path / CONFIG_FILE).is_file():
        return None
    try:
        family = json.loads((path / CONFIG_FILE).read_text()).get("family")
    except (OSError, ValueError, AttributeError):
        return None
    return family if family in FAMILIES else None


def check_output_dir(
    out: str | os.PathLike, *, src: str | os.PathLike | None = None, overwrite: bool = False
) -> None:
    """Refuses an output directory whose replacement would destroy anything but a model.

    OUT may be absent, an empty directory, or - with ``overwrite`` - an earlier jaxfm model
    directory (``params.safetensors`` and a ``config.json`` naming a known family). It may not
    be SRC, lie inside SRC, or contain SRC.

    Raises:
      ConversionError: naming OUT and what it holds.
    """
    out = Path(out)
    if src is not None:
        o, s = out.resolve(), Path(src).resolve()
        if o == s or s in o.parents or o in s.parents:
            how = "is" if o == s else "is inside" if s in o.parents else "contains"
            raise ConversionError(
                f"output {out} {how} the source {src}; writing it would replace the source "
                "checkpoint - choose an output directory outside the source"
            )
    if out.is_symlink() and not out.exists():
        raise ConversionError(f"output {out} is a dangling symbolic link")
    if not out.exists():
        return
    if not out.is_dir():
        raise ConversionError(f"output {out} exists and is not a directory")
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return
    family = _model_dir_family(out)
    if family is None:
        shown = ", ".join(entries[:5]) + (
            f", ... ({len(entries)} entries)" if len(entries) > 5 else ""
        )
        raise ConversionError(
            f"output {out} is not empty and is not a jaxfm model directory (it holds {shown}); "
            "converting would delete these files - choose a new or empty directory"
        )
    if not overwrite:
        raise ConversionError(
            f"output {out} already holds a converted {family} model; pass --overwrite to replace it"
        )


def _contiguous_in_place(tree: dict) -> None:
    """Replaces every strided leaf by a C-contiguous copy, one at a time, so a view's source
    array can be freed as soon as its last view is replaced (instead of all at once); the
    memory-mapped pages a copied view read are handed back to the kernel as it goes."""
    for key, value in tree.items():
        if isinstance(value, dict):
            _contiguous_in_place(value)
        else:
            arr = np.asarray(value)
            if not arr.flags.c_contiguous:
                tree[key] = arr.copy(order="C")
                _release_mapped_pages(arr)


def _release_mapped_pages(view: np.ndarray) -> None:
    """``madvise(MADV_DONTNEED)`` on the pages of a read-only memory map under ``view``.

    The mapping stays valid (a later read faults the pages in again from the file); only the
    resident copy goes, so a torch zip checkpoint's pages do not stay in RSS beside the
    contiguous copies the safetensors writer needs.
    """
    base = view
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    mapped = base.obj if isinstance(base, memoryview) else base
    if not isinstance(mapped, mmap.mmap) or not hasattr(mmap, "MADV_DONTNEED"):
        return
    try:
        start = np.frombuffer(mapped, np.uint8, count=1).ctypes.data
        span = [(n - 1) * st for n, st in zip(view.shape, view.strides, strict=True)]
        low = view.ctypes.data + sum(min(0, d) for d in span)
        high = view.ctypes.data + sum(max(0, d) for d in span) + view.itemsize
        page = mmap.PAGESIZE
        first = (low - start) // page * page
        mapped.madvise(mmap.MADV_DONTNEED, first, min(high - start, len(mapped)) - first)
    except (ValueError, OSError):  # a closed map or an unsupported platform: just keep pages
        pass


def write_model_dir(
    converted: Converted,
    out: str | os.PathLike,
    *,
    check: Callable[[Path], Any] | None = None,
    release_params: bool = False,
    src: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> Any:
    """Writes ``converted`` to ``out`` atomically, optionally checking it before it lands.

    The directory is first written to a staging directory beside ``out``; ``check(staging)``
    (e.g. a golden verification) runs on it; only then is ``out`` replaced in one rename. On any
    error - or when ``check`` raises - ``out`` is left exactly as it was and nothing is left
    behind.

    Args:
      converted: the converted model.
      out: target model directory.
      check: called with the staging directory; its return value is returned. To reject the
        result without an exception, raise from ``check``.
      release_params: the caller gives ``converted.params`` up: strided leaves are made
        contiguous in place (one at a time, so the writer copies nothing) and the tree is
        emptied once written, before ``check`` runs, so the arrays can be freed while the check
        loads the model again (halves peak memory of ``convert --verify``).
      src: the source checkpoint; OUT may not be, contain or lie inside it.
      overwrite: allow replacing an earlier jaxfm model directory (see
        :func:`check_output_dir`; anything else non-empty is always refused).

    Returns:
      ``check``'s return value (``None`` without ``check``).

    Raises:
      ConversionError: OUT is refused by :func:`check_output_dir`.
      OutputWriteError: writing failed (disk full, ...); OUT is unchanged, nothing is left.
    """
    from jaxfm.model_dir import OutputWriteError, save_model_dir

    out = Path(out)
    check_output_dir(out, src=src, overwrite=overwrite)
    if release_params:
        _contiguous_in_place(converted.params)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        stage_root = Path(tempfile.mkdtemp(prefix=f".{out.name}.stage-", dir=out.parent))
    except OSError as e:
        raise OutputWriteError(e.errno, f"could not write {out}: {e.strerror or e}") from e
    try:
        staged = save_model_dir(
            stage_root / out.name,
            converted.params,
            converted.config,
            extra_files=converted.extra_files,
            source=None if src is None else str(src),
        )
        if release_params:
            converted.params = {}
            gc.collect()
        result = check(staged) if check is not None else None
        check_output_dir(out, src=src, overwrite=overwrite)  # unchanged while we converted?
        if out.exists():
            old = stage_root / ".old"
            out.rename(old)
            try:
                staged.rename(out)
            except BaseException:
                old.rename(out)
                raise
        else:
            staged.rename(out)
        return result
    except OSError as e:  # name OUT, not the staging directory
        reason = getattr(e, "reason", None) or e.strerror or str(e)
        raise OutputWriteError(e.errno, f"could not write {out}: {reason}") from e
    finally:
        shutil.rmtree(stage_root, ignore_errors=True)
