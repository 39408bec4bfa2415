"""The result of a family converter and the atomic writer of a converted model directory."""

from __future__ import annotations

import dataclasses
import gc
import importlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from converters.errors import ConversionError

__all__ = ["FAMILIES", "Converted", "load_family", "write_model_dir"]

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


def write_model_dir(
    converted: Converted,
    out: str | os.PathLike,
    *,
    check: Callable[[Path], Any] | None = None,
    release_params: bool = False,
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
      release_params: empty ``converted.params`` once written, before ``check`` runs, so the
        arrays (and a memory-mapped source checkpoint behind them) can be freed while the
        check loads the model again (halves peak memory of ``convert --verify``).

    Returns:
      ``check``'s return value (``None`` without ``check``).
    """
    from jaxfm.model_dir import save_model_dir

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConversionError(f"output {out} exists and is not a directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    stage_root = Path(tempfile.mkdtemp(prefix=f".{out.name}.stage-", dir=out.parent))
    try:
        staged = save_model_dir(
            stage_root / out.name,
            converted.params,
            converted.config,
            extra_files=converted.extra_files,
        )
        if release_params:
            converted.params = {}
            gc.collect()
        result = check(staged) if check is not None else None
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
    finally:
        shutil.rmtree(stage_root, ignore_errors=True)
