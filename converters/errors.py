"""Errors raised by the checkpoint converters.

Every error is a :class:`ConversionError` (a ``ValueError``), so callers can catch one type; the
subclasses say what went wrong and their messages name the file, pickle global or parameter key.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["CheckpointFormatError", "ConversionError", "KeyMismatchError", "UnsafePickleError"]


class ConversionError(ValueError):
    """A checkpoint could not be converted (wrong family, missing file, bad config, ...)."""


class CheckpointFormatError(ConversionError):
    """A checkpoint file is unreadable: missing, truncated, corrupt or of an unknown format.

    The message always names the file.
    """


class UnsafePickleError(CheckpointFormatError):
    """A pickled checkpoint references a global that is not a tensor/storage/container.

    Raised before the pickle's objects are built, so nothing it references is ever called.

    Attributes:
      global_name: the refused ``module.name``.
    """

    def __init__(self, message: str, global_name: str = ""):
        super().__init__(message)
        self.global_name = global_name


class KeyMismatchError(ConversionError):
    """Checkpoint tensors do not match the target parameter tree (strict merge).

    Attributes:
      missing: target parameters no checkpoint tensor provides.
      unexpected: checkpoint keys / converted paths the target does not have.
      mismatched: ``(path, got_shape, expected_shape)`` for mis-shaped tensors.
    """

    def __init__(
        self,
        message: str,
        *,
        missing: Sequence[str] = (),
        unexpected: Sequence[str] = (),
        mismatched: Sequence[tuple[str, tuple[int, ...], tuple[int, ...]]] = (),
    ):
        super().__init__(message)
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mismatched = list(mismatched)
