"""Resolving a converter's SRC argument: a local file/directory or a Hugging Face hub id."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from converters.errors import ConversionError

__all__ = ["is_hub_id", "resolve_source"]

_HUB_ID = re.compile(r"(?:hf://|hf:)?[A-Za-z0-9][\w.-]*/[\w.-]+(?:@[\w./-]+)?")
_TRUE = ("1", "true", "yes", "on")


def is_hub_id(src: str) -> bool:
    """Whether ``src`` reads as ``owner/name`` (optionally ``hf://``-prefixed, ``@revision``)."""
    return bool(_HUB_ID.fullmatch(src))


def _offline() -> bool:
    return any(
        os.environ.get(v, "").strip().lower() in _TRUE
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _local_hint(src: str, filenames: Sequence[str]) -> str:
    files = ", ".join(filenames) if filenames else "the checkpoint files"
    return (
        f"download the model elsewhere (e.g. `hf download {src}`) and pass its "
        f"local directory (holding {files}) or checkpoint file as SRC instead of the hub id"
    )


def resolve_source(src: str | os.PathLike, *, filenames: Sequence[str] = ()) -> Path:
    """A local path for SRC: the path itself if it exists, else a hub snapshot.

    Args:
      src: local file or directory, or a hub id ``owner/name[@revision]`` (``hf://`` optional).
      filenames: glob patterns of the files a hub snapshot needs (``allow_patterns``).

    Returns:
      An existing local file or directory.

    Raises:
      ConversionError: SRC does not exist locally and is not a hub id, or the hub is offline /
        unreachable / lacks the repository (the message says how to pass a local path).
    """
    text = os.fspath(src)
    path = Path(text).expanduser()
    if path.exists():
        return path
    if not is_hub_id(text) or text.startswith(("/", ".", "~")):
        raise ConversionError(f"source {text!r} does not exist (no such file or directory)")
    repo = re.sub(r"^hf:(//)?", "", text)
    repo, _, revision = repo.partition("@")
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(
            repo_id=repo,
            revision=revision or None,
            allow_patterns=list(filenames) or None,
        )
    except Exception as e:  # offline, unknown repo, gated, network errors, ...
        if _offline():  # huggingface_hub serves cached snapshots offline; this one is not cached
            raise ConversionError(
                f"source {text!r} is not a local path, the Hugging Face hub is offline "
                f"(HF_HUB_OFFLINE is set) and no cached snapshot of it exists: "
                f"{_local_hint(repo, filenames)}"
            ) from e
        raise ConversionError(
            f"could not fetch {text!r} from the Hugging Face hub ({type(e).__name__}: {e}); "
            f"{_local_hint(repo, filenames)}"
        ) from e
    return Path(local)
