"""Training checkpoints (orbax): state + JSON metadata per step, keep-N, resume from the newest.

A checkpoint directory ``WORKDIR/checkpoints/<step>/`` holds two items written together:
``state`` (the array pytree: params, optimizer state, step, RNG key data) and ``meta`` (JSON:
data-iterator state, config, metrics). Orbax writes each step into a temporary directory that is
renamed only once complete, so a run killed mid-save leaves no half checkpoint behind. On
restore, a checkpoint that fails to read is skipped with a warning naming it, and the next older
one is tried: a corrupt checkpoint is never silently used.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

__all__ = ["Checkpointer", "CorruptCheckpointWarning", "abstract_like"]

log = logging.getLogger(__name__)


class CorruptCheckpointWarning(UserWarning):
    """A checkpoint step could not be restored and was skipped."""


class Checkpointer:
    """Saves and restores ``(state pytree, meta dict)`` pairs by step.

    Args:
      directory: where step directories go (created if missing).
      keep: number of newest checkpoints kept (older ones are deleted after a save).
      async_save: save in a background thread; the train loop only waits for the device-to-host
        copy. Call :meth:`wait` (or :meth:`close`) before exiting.
    """

    def __init__(self, directory: str | os.PathLike, *, keep: int = 3, async_save: bool = True):
        if keep < 1:
            raise ValueError(f"Checkpointer: keep must be >= 1, got {keep}")
        self.directory = Path(directory).absolute()
        self.directory.mkdir(parents=True, exist_ok=True)
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, enable_async_checkpointing=async_save, create=True
            ),
        )

    def steps(self) -> list[int]:
        """Complete checkpoint steps, oldest first."""
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, meta: dict, *, force: bool = False) -> bool:
        """Starts saving ``state`` and ``meta`` as ``step``; returns whether a save was started."""
        return self._manager.save(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
            force=force,
        )

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk."""
        self._manager.wait_until_finished()

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """Restores ``step`` into the structure/shardings of ``abstract_state``."""
        out = self._manager.restore(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
            ),
        )
        return out["state"], dict(out["meta"])

    def restore_meta(self, step: int) -> dict:
        """Only the JSON metadata of ``step`` (cheap: no arrays are read)."""
        out = self._manager.restore(int(step), args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(out["meta"])

    def restore_latest(
        self, abstract_state: Any, *, check_meta: Callable[[dict], None] | None = None
    ) -> tuple[int, Any, dict] | None:
        """Newest restorable checkpoint as ``(step, state, meta)``, or None if there is none.

        Args:
          abstract_state: structure/shapes/shardings to restore into.
          check_meta: called with a checkpoint's metadata before its arrays are read; an
            exception it raises (e.g. "made with another config") propagates: such a
            checkpoint is not corrupt, it is the wrong one.

        Checkpoints that fail to restore (corrupt or truncated files) are skipped with a
        :class:`CorruptCheckpointWarning` naming the directory.
        """
        for step in reversed(self.steps()):
            if check_meta is not None:
                try:
                    meta = self.restore_meta(step)
                except Exception as e:
                    warnings.warn(
                        f"skipping checkpoint {self.directory / str(step)}: its metadata could "
                        f"not be read ({type(e).__name__}: {str(e)[:300]})",
                        CorruptCheckpointWarning,
                        stacklevel=2,
                    )
                    continue
                check_meta(meta)
            try:
                state, meta = self.restore(step, abstract_state)
            except Exception as e:
                warnings.warn(
                    f"skipping checkpoint {self.directory / str(step)}: it could not be restored "
                    f"({type(e).__name__}: {str(e)[:300]})",
                    CorruptCheckpointWarning,
                    stacklevel=2,
                )
                continue
            return step, state, meta
        return None

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def abstract_like(tree: Any) -> Any:
    """``jax.ShapeDtypeStruct`` tree (with shardings when the leaves have them) for restore."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
