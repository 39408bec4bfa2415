"""The ``config.json`` of a converted foundation model: a config dataclass plus its family."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

__all__ = ["checked_fields"]


def checked_fields(cls: type, config: Mapping[str, Any], family: str) -> dict[str, Any]:
    """``config`` without its ``"family"`` key, checked against ``family`` and ``cls``'s fields.

    Raises:
      ValueError: the config names another family, or has a key that is not a field (named).
    """
    config = dict(config)
    got = config.pop("family", family)
    if got != family:
        raise ValueError(f"{cls.__name__}.from_dict: config is for family {got!r}, not {family}")
    unknown = sorted(set(config) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"{cls.__name__}.from_dict: unknown keys {unknown}")
    return config
