"""Training checkpoints (orbax) you can trust, and the run directory that holds them.

A checkpoint ``WORKDIR/checkpoints/<step>/`` holds two items written together: ``state`` (the
array pytree: params, optimizer state, step, RNG key data) and ``meta`` (JSON: data-iterator
state, selection state, run identity, and a digest of every array). Orbax writes each step into
a temporary directory renamed only once complete, so a run killed mid-save leaves no half
checkpoint behind.

On restore, every array is checked against its digest. A checkpoint that fails to read or to
verify is moved aside to ``checkpoints/corrupt/<step>`` with a warning that names the step and
the reason, and the next older one is tried: a damaged checkpoint is never used, and the resumed
run can save that step again.

:class:`RunDirectory` adds what a run needs around its checkpoints: a lock (a second process on
the same workdir fails at once, naming the holder), a refusal to start a fresh run over an
earlier run's checkpoints (unless ``resume`` or ``overwrite``), a resume check that names the
config fields that differ, and async-save errors raised at the next step (as
:class:`CheckpointSaveError`, naming the step and the directory).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import socket
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jaxfm.model_dir import OutputWriteError, write_json_atomic
from jaxfm.params import path_of

__all__ = [
    "CheckpointSaveError",
    "Checkpointer",
    "CorruptCheckpointWarning",
    "RunDirectory",
    "WorkdirError",
    "abstract_like",
    "tree_digest",
]

log = logging.getLogger(__name__)


class CorruptCheckpointWarning(UserWarning):
    """A checkpoint step could not be restored or verified; it was moved aside."""


class WorkdirError(ValueError):
    """The workdir is locked by another process, or holds another run."""


class CheckpointSaveError(OutputWriteError):
    """Saving a checkpoint failed (a full disk, say); the message names the step, the directory
    and the cause.

    An ``OSError`` (with the cause's ``errno``) that is also a ``ValueError``, so the command line
    reports it with exit status 2 rather than a traceback. The failed step is not a checkpoint
    (orbax renames a step's directory into place only once it is complete): ``--resume``
    continues from the newest complete one.
    """


_UINT = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}


@jax.jit
def _digest_leaves(leaves):
    out = []
    for x in leaves:
        x = jnp.asarray(x)
        if x.dtype == jnp.bool_:
            x = x.astype(jnp.uint8)
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        size = x.dtype.itemsize
        bits = jax.lax.bitcast_convert_type(x, _UINT[size]) if size < 8 else x
        if size == 8:  # 64-bit leaves: split into two uint32 words
            bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
        bits = bits.reshape(-1).astype(jnp.uint32)
        pos = (jnp.arange(bits.shape[0], dtype=jnp.uint32) % jnp.uint32(65521)) + jnp.uint32(1)
        out.append(jnp.stack([bits.sum(dtype=jnp.uint32), (bits * pos).sum(dtype=jnp.uint32)]))
    return out


def tree_digest(tree: Any) -> dict[str, list[int]]:
    """``{path: [sum, position-weighted sum]}`` of every leaf's bits (uint32, computed on device).

    Any flipped bit changes the plain sum; swapped or shifted regions change the weighted one.
    """
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    if not flat:
        return {}
    sums = _digest_leaves([x for _, x in flat])
    return {
        path_of(kp): [int(a) for a in np.asarray(s)] for (kp, _), s in zip(flat, sums, strict=True)
    }


class Checkpointer:
    """Saves and restores ``(state pytree, meta dict)`` pairs by step, verified by digests.

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
        self._saving: int | None = None  # the step of the newest save started (maybe in flight)
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

    def save(self, step: int, state: Any, meta: dict, *, force: bool = True) -> bool:
        """Starts saving ``state`` and ``meta`` (plus the state's digests) as ``step``.

        Raises:
          CheckpointSaveError: the previous asynchronous save failed (named by its own step).
        """
        step = int(step)
        if force or self._manager.should_save(step):
            # the manager waits for the previous save before it starts this one anyway; waiting
            # here first reports that save's failure under its own step
            self._raise_failed_save(wait=True)
        meta = {**meta, "digests": tree_digest(state)}
        saved = self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
            force=force,
        )
        if saved:
            self._saving = step
        return saved

    def check(self) -> None:
        """Raises the error of a failed asynchronous save (a full disk) as a
        :class:`CheckpointSaveError` naming the step and the directory; does not block."""
        self._raise_failed_save(wait=False)

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk.

        Raises:
          CheckpointSaveError: a save failed.
        """
        self._raise_failed_save(wait=True)

    def _raise_failed_save(self, *, wait: bool) -> None:
        try:
            # A background save's error reaches the manager's finalize thread, and from there
            # only its wait_until_finished (orbax 0.12: check_for_errors comes back empty). Once
            # the save is over (or when asked to wait) that call returns at once or re-raises it.
            if wait or not self._manager.is_saving_in_progress():
                self._manager.wait_until_finished()
            self._manager.check_for_errors()
        except Exception as e:
            step = "?" if self._saving is None else self._saving
            failed = CheckpointSaveError(
                f"saving the checkpoint of step {step} in {self.directory} failed "
                f"({type(e).__name__}: {str(e)[:300]}); free space or fix the directory, then "
                "rerun with --resume to continue from the newest complete checkpoint"
            )
            failed.errno = getattr(e, "errno", None)
            failed.reason = str(e)[:300]
            raise failed from e

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """Restores and verifies ``step`` into the structure/shardings of ``abstract_state``.

        Raises:
          ValueError: an array does not match its saved digest.
        """
        out = self._manager.restore(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
            ),
        )
        state, meta = out["state"], dict(out["meta"])
        saved = meta.pop("digests", None)
        if saved is not None:
            got = tree_digest(state)
            bad = sorted(p for p in set(saved) | set(got) if saved.get(p) != got.get(p))
            if bad:
                raise ValueError(f"array digests differ for {bad[:5]} (damaged files)")
        return state, meta

    def restore_meta(self, step: int) -> dict:
        """Only the JSON metadata of ``step`` (cheap: no arrays are read)."""
        out = self._manager.restore(int(step), args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        meta = dict(out["meta"])
        meta.pop("digests", None)
        return meta

    def quarantine(self, step: int, reason: str) -> Path:
        """Moves step ``step`` to ``corrupt/`` (never deleted: a user may want to inspect it)."""
        src = self.directory / str(step)
        dest_dir = self.directory / "corrupt"
        dest_dir.mkdir(exist_ok=True)
        dest = dest_dir / str(step)
        n = 1
        while dest.exists():
            dest, n = dest_dir / f"{step}.{n}", n + 1
        if src.exists():
            shutil.move(str(src), str(dest))
        warnings.warn(
            f"checkpoint step {step} in {self.directory} is damaged ({reason}); moved to {dest}",
            CorruptCheckpointWarning,
            stacklevel=3,
        )
        self._manager.reload()
        return dest

    def restore_latest(
        self, abstract_state: Any, *, check_meta: Callable[[dict], None] | None = None
    ) -> tuple[int, Any, dict] | None:
        """Newest good checkpoint as ``(step, state, meta)``, or None if there is none.

        Args:
          abstract_state: structure/shapes/shardings to restore into.
          check_meta: called with a checkpoint's metadata before its arrays are read; an
            exception it raises (e.g. "made with another config") propagates: such a
            checkpoint is not damaged, it is the wrong one.

        Checkpoints that fail to read or verify are moved to ``corrupt/`` with a
        :class:`CorruptCheckpointWarning` naming the step and the reason.
        """
        for step in reversed(self.steps()):
            try:
                meta = self.restore_meta(step)
            except Exception as e:
                self.quarantine(step, f"metadata unreadable: {type(e).__name__}: {str(e)[:200]}")
                continue
            if check_meta is not None:
                check_meta(meta)
            try:
                state, meta = self.restore(step, abstract_state)
            except Exception as e:
                self.quarantine(step, f"{type(e).__name__}: {str(e)[:200]}")
                continue
            return step, state, meta
        return None

    def close(self) -> None:
        """Waits for pending saves, then closes.

        Raises:
          CheckpointSaveError: the last save failed. When another exception is already on its
            way up (this is called from a ``finally``), the failure is logged instead, so that
            it does not hide that exception.
        """
        propagating = sys.exc_info()[1]
        failed = None
        try:
            self.wait()
        except CheckpointSaveError as e:
            failed = e
        self._manager.close()
        if failed is not None:
            if propagating is None:
                raise failed
            log.error("%s", failed)


def abstract_like(tree: Any) -> Any:
    """``jax.ShapeDtypeStruct`` tree (with shardings when the leaves have them) for restore.

    numpy leaves stay numpy arrays (orbax restores them as numpy).
    """
    return jax.tree.map(
        lambda x: x if isinstance(x, np.ndarray) else ocp.utils.to_shape_dtype_struct(x), tree
    )


def _differences(saved: Any, now: Any, prefix: str = "") -> list[str]:
    """Human-readable differences between two JSON values (dict keys recursed)."""
    if isinstance(saved, dict) and isinstance(now, dict):
        out = []
        for k in sorted(set(saved) | set(now)):
            key = f"{prefix}{k}"
            if k not in saved:
                out.append(f"{key}: not in the checkpoint's run, now {now[k]!r}"[:200])
            elif k not in now:
                out.append(f"{key}: {saved[k]!r} in the checkpoint's run, now absent"[:200])
            else:
                out += _differences(saved[k], now[k], key + ".")
        return out
    if isinstance(saved, list) and isinstance(now, list) and saved != now:
        gone = [x for x in saved if x not in now]
        new = [x for x in now if x not in saved]
        if gone or new:
            return [f"{prefix.rstrip('.')}: removed {gone[:10]}, added {new[:10]}"]
    if saved != now:
        return [f"{prefix.rstrip('.')}: {saved!r} in the checkpoint's run, now {now!r}"[:200]]
    return []


class RunDirectory:
    """A run's workdir: checkpoints, ``metrics.jsonl``, ``run.json`` and a lock.

    Args:
      workdir: the directory (created).
      keep: checkpoints kept.
      main: this process writes the shared files (process 0 of a multi-host run).
    """

    def __init__(self, workdir: str | os.PathLike, *, keep: int = 2, main: bool = True):
        self.workdir = Path(workdir)
        self.keep, self.main = keep, main
        self.metrics_path = self.workdir / "metrics.jsonl"
        self.checkpointer: Checkpointer | None = None
        self._lock_fd: int | None = None

    def _lock(self) -> None:
        path = self.workdir / ".lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise WorkdirError(
                f"--workdir {self.workdir} is in use by another run ({holder}); wait for it to "
                "finish or use another --workdir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on host {socket.gethostname()}".encode())
        self._lock_fd = fd

    def open(self, *, resume: bool, overwrite: bool) -> None:
        """Locks the workdir and applies the fresh/resume/overwrite policy."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        if jax.process_count() == 1:  # multi-host runs share the directory on purpose
            self._lock()
        ckdir = self.workdir / "checkpoints"
        has = ckdir.exists() and any(p.name.isdigit() for p in ckdir.iterdir())
        if has and not resume:
            if not overwrite:
                self.close()
                raise WorkdirError(
                    f"--workdir {self.workdir} already holds checkpoints of an earlier run; "
                    "continue it with --resume, or replace it with --overwrite"
                )
            if self.main:
                for p in ckdir.iterdir():
                    if p.name.isdigit():
                        shutil.rmtree(p)
        if self.main and not resume and self.metrics_path.exists():
            self.metrics_path.unlink()
        self.checkpointer = Checkpointer(ckdir, keep=self.keep)

    def restore_latest(self, abstract: Any, run_info: dict) -> tuple[int, Any, dict] | None:
        """The newest good checkpoint, after checking it belongs to this run."""

        def same_run(meta):
            diffs = _differences(meta.get("run", {}), run_info)
            if diffs:
                raise WorkdirError(
                    f"--resume: the checkpoints in {self.workdir} belong to a run with other "
                    "settings:\n  " + "\n  ".join(diffs[:20]) + "\nrepeat the original run's "
                    "flags (they are in run.json there) to continue it"
                )

        return self.checkpointer.restore_latest(abstract_like(abstract), check_meta=same_run)

    def save(self, step: int, tree: Any, meta: dict) -> None:
        self.checkpointer.save(step, tree, meta)

    def check_saves(self) -> None:
        self.checkpointer.check()

    def close(self) -> None:
        """Closes the checkpointer (raising a failed last save) and releases the lock."""
        checkpointer, self.checkpointer = self.checkpointer, None
        try:
            if checkpointer is not None:
                checkpointer.close()
        finally:
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None


def write_run_json(workdir: str | os.PathLike, info: dict) -> None:
    """Writes ``WORKDIR/run.json`` (what ran, for a resume that repeats it)."""
    write_json_atomic(Path(workdir) / "run.json", json.loads(json.dumps(info, default=str)))
