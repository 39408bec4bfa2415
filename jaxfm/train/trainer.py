"""The one training loop of jaxfm: steps or epochs, evaluation and selection, checkpoints, logs.

:func:`fit` drives a jitted step (:func:`jaxfm.train.step.make_train_step`) over a resumable
batch source and owns everything around it, so that every trainer (FIMP, GraphFM pretraining,
MFT/NFT, the baselines, graph-level MFT, GraphMAE) gets the same behaviour:

- **Evaluation and model selection.** Every ``eval_every`` steps (default: each epoch) the
  ``evaluate(params)`` hook runs; :class:`Select` keeps the parameters of the best validation
  value. Ties keep the earlier evaluation (a later one must be strictly better). ``patience``
  stops a run after that many evaluations without improvement.
- **Checkpoints and resume** (orbax, :mod:`jaxfm.train.checkpoint`): the train state, the base
  RNG key, the selected parameters, the batch source's state and the selection's state. Each
  step's RNG is ``fold_in(rng, step)``, so a resumed run takes exactly the steps an uninterrupted
  one would.
- **Preemption.** SIGTERM and SIGINT both make the loop save after the current step and return
  with ``preempted=True``.
- **Logging.** JSON lines on ``log_stream`` (written through ``tqdm.write``, so a progress bar on
  the terminal stays intact) and in ``WORKDIR/metrics.jsonl``, which keeps the whole history of a
  run across resumes. Optionally the same scalars as TensorBoard events in
  ``WORKDIR/tensorboard`` (``tensorboard=True``; needs ``pip install 'jaxfm[tensorboard]'``).
- **Profiling.** ``profile_steps=(A, B)`` records a ``jax.profiler`` trace of steps A..B (1-based,
  inclusive) into ``WORKDIR/profile`` (open it with TensorBoard's profile plugin or Perfetto).
- **Feeding the device.** With ``prefetch=N`` (default 1) a daemon thread draws the next batches
  (``__next__`` and ``put``: packing and the host-to-device copy) up to N steps ahead, while the
  device runs the current step; each batch travels with the batch source's state after it, so a
  checkpoint records the batches the steps consumed, never the prefetched ones, and a resumed run
  is bit-identical. The loop does not wait for a step before queueing the next: it reads step
  ``t``'s loss once step ``t + 1`` is queued (so at most two steps are in flight), and the other
  metrics only for a logged or ``step_record`` step. The NaN/inf loss check thus runs on every
  step, one step late, and always before an evaluation or a checkpoint, which never see a
  non-finite step.

A batch source is any object with ``__next__`` (the next step's batch, leaves ``[A, D, ...]``),
``get_state() -> dict`` (JSON) and ``set_state(dict)``; :class:`EpochBatches` makes one from a
deterministic ``epoch -> micro-batches`` function.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from jaxfm.train.checkpoint import RunDirectory, _differences
from jaxfm.train.step import stack_batches

__all__ = [
    "EpochBatches",
    "FitResult",
    "Preemption",
    "RepeatBatches",
    "Select",
    "fit",
    "parse_profile_steps",
    "read_metrics",
    "run_splits",
]


@dataclasses.dataclass
class Select:
    """Model selection on one evaluation metric (the same rule for every trainer).

    Attributes:
      metric: key of the ``evaluate`` result (e.g. ``"accuracy"`` or ``"mse"``).
      mode: ``"max"`` or ``"min"``.
      patience: stop after this many evaluations without improvement (None: never).
    """

    metric: str
    mode: str = "max"
    patience: int | None = None
    best: float | None = None
    best_step: int = -1
    best_epoch: int = -1
    bad: int = 0

    def __post_init__(self):
        if self.mode not in ("max", "min"):
            raise ValueError(f"Select.mode must be 'max' or 'min', got {self.mode!r}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"Select.patience must be >= 1 or None, got {self.patience}")

    def better(self, value: float) -> bool:
        """Strictly better than the best so far (ties keep the earlier one; NaN never wins)."""
        if not math.isfinite(value):
            return False
        if self.best is None:
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def update(self, value: float, step: int, epoch: int) -> bool:
        """Records an evaluation; returns whether it is the new best."""
        if self.better(value):
            self.best, self.best_step, self.best_epoch, self.bad = float(value), step, epoch, 0
            return True
        self.bad += 1
        return False

    @property
    def stop(self) -> bool:
        return self.patience is not None and self.bad >= self.patience

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("best", "best_step", "best_epoch", "bad")}

    def load_state_dict(self, d: dict) -> None:
        for k, v in d.items():
            setattr(self, k, v)


class EpochBatches:
    """A resumable batch source over deterministic epochs of micro-batches.

    Args:
      make_epoch: ``epoch -> iterable of micro-batches`` (numpy pytrees); must give the same
        micro-batches for the same epoch every time (seeded by the epoch).
      micro_per_epoch: how many micro-batches ``make_epoch`` yields.
      accum: accumulation steps A; ``devices``: micro-batches per accumulation step D. A step
        takes ``A x D`` micro-batches; the last step of an epoch is completed with the epoch's
        first micro-batches (every step has the same shape).

    State: ``{"epoch", "index"}``, the next micro-batch; :meth:`set_state` regenerates that
    epoch and skips to it.
    """

    def __init__(
        self,
        make_epoch: Callable[[int], Iterable[Any]],
        micro_per_epoch: int,
        *,
        accum: int = 1,
        devices: int = 1,
    ):
        if micro_per_epoch < 1:
            raise ValueError("EpochBatches: the epoch has no batch (is the training split empty?)")
        self.make_epoch, self.accum, self.devices = make_epoch, accum, devices
        self.group = accum * devices
        self.micro_per_epoch = micro_per_epoch
        self.steps_per_epoch = -(-micro_per_epoch // self.group)
        self.epoch, self.index = 0, 0
        self._it: Iterator | None = None

    def _micro(self) -> Any:
        if self._it is None:
            self._it = iter(self.make_epoch(self.epoch))
            for _ in range(self.index):
                next(self._it)
        try:
            return next(self._it)
        except StopIteration:
            raise ValueError(
                f"EpochBatches: epoch {self.epoch} yielded fewer than the {self.micro_per_epoch} "
                "micro-batches it promised"
            ) from None

    def __iter__(self):
        return self

    def __next__(self):
        micro: list = []
        real = 0
        for _ in range(self.group):
            if self.index >= self.micro_per_epoch:  # complete the epoch's last step
                micro.append(micro[len(micro) % real])
                continue
            micro.append(self._micro())
            self.index += 1
            real += 1
        if self.index >= self.micro_per_epoch:
            self.epoch, self.index, self._it = self.epoch + 1, 0, None
        return stack_batches(micro, self.accum)

    def get_state(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def set_state(self, state: dict) -> None:
        self.epoch, self.index, self._it = int(state["epoch"]), int(state["index"]), None


class RepeatBatches:
    """The same batch every step (full-graph training), stacked ``[1, 1, ...]`` once.

    Pass device arrays (``jax.device_put``) so that nothing is copied per step; the graph's
    arrays then enter the step as arguments, not as constants folded into the program.
    """

    def __init__(self, batch):
        self.batch = jax.tree.map(lambda x: x[None, None], batch)

    def __iter__(self):
        return self

    def __next__(self):
        return self.batch

    def get_state(self) -> dict:
        return {}

    def set_state(self, state: dict) -> None:
        del state


def run_splits(
    workdir: str | Path | None,
    splits: Iterable[int],
    train_split: Callable[[int, Path | None], dict],
    *,
    resume: bool = False,
    identity: dict | None = None,
) -> list[dict]:
    """Runs ``train_split(i, split_workdir)`` for every split, one sub-workdir each.

    ``WORKDIR/split_<i>/result.json`` marks a finished split: with ``resume`` it is read back
    instead of trained again, and an unfinished split resumes from its own checkpoints.
    ``identity`` (the run's settings, JSON) is stored with each result; a resume whose settings
    differ from a finished split's is refused with what differs, never given the old result.

    Raises:
      ValueError: a finished split was made with other settings.
    """
    from jaxfm.model_dir import write_json_atomic

    identity = None if identity is None else json.loads(json.dumps(identity, default=str))
    results = []
    for i in splits:
        sub = None if workdir is None else Path(workdir) / f"split_{i}"
        done = None if sub is None else sub / "result.json"
        if resume and done is not None and done.exists():
            saved = json.loads(done.read_text())
            recorded = saved.pop("run", None) if identity is not None else None
            if recorded is not None and recorded != identity:
                diffs = _differences(recorded, identity)
                raise ValueError(
                    f"{done}: split {i} finished with other settings ({'; '.join(diffs[:8])}); "
                    "repeat the original flags to continue that run, or give another workdir"
                )
            results.append(saved)
            continue
        result = train_split(i, sub)
        if done is not None and not result.get("preempted"):
            stored = result if identity is None else {**result, "run": identity}
            write_json_atomic(done, stored)
        results.append(result)
        if result.get("preempted"):
            break
    return results


class Preemption:
    """SIGTERM (a scheduler's preemption notice) and SIGINT (Ctrl-C) -> a flag checked per step."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested: int | None = None
        self._previous: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        del frame
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.requested = signum

    def __exit__(self, *exc):
        for s, h in self._previous.items():
            signal.signal(s, h)

    def agreed(self) -> bool:
        """True on every process once any process got a signal (they save the same step)."""
        if jax.process_count() == 1:
            return self.requested is not None
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.int32(self.requested is not None))
        return bool(np.asarray(flags).any())


@dataclasses.dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
      state: the final train state.
      best_params: host copy of the selected parameters (the final ones without ``select``).
      history: the evaluation records of the whole run (also those before a resume).
      steps: the per-step records of this invocation.
      select: the selection state (best value, step, epoch).
      preempted: stopped early by SIGTERM / SIGINT (a checkpoint was saved).
      signal: the signal number that stopped the run, or None.
      start_step: the step this invocation started from (> 0 after a resume).
    """

    state: Any
    best_params: Any
    history: list[dict]
    steps: list[dict]
    select: Select | None
    preempted: bool = False
    signal: int | None = None
    start_step: int = 0


def _host(tree):
    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(x.addressable_data(0))
        return np.asarray(x)

    return jax.tree.map(get, tree)


def _scalars(metrics: dict) -> dict:
    return {k: float(v) for k, v in metrics.items() if np.ndim(v) == 0}


def parse_profile_steps(text: str | None) -> tuple[int, int] | None:
    """``"A:B"`` -> ``(A, B)``: the steps (1-based, inclusive) to trace; None passes through.

    Raises:
      ValueError: not ``A:B`` with ``1 <= A <= B`` (naming ``--profile-steps``).
    """
    if text is None:
        return None
    try:
        a, b = (int(x) for x in str(text).split(":"))
    except ValueError:
        raise ValueError(f"--profile-steps {text!r}: expected A:B, e.g. 10:20") from None
    if not 1 <= a <= b:
        raise ValueError(f"--profile-steps {text!r}: need 1 <= A <= B (steps count from 1)")
    return a, b


def _tensorboard_writer(workdir: Path | None):
    if workdir is None:
        raise ValueError("fit: tensorboard=True needs a workdir (the events go to WORKDIR/...)")
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        raise ValueError(
            "--tensorboard needs the tensorboardX package: pip install 'jaxfm[tensorboard]' "
            "(or pip install tensorboardX)"
        ) from None
    return SummaryWriter(logdir=str(Path(workdir) / "tensorboard"))


class _Log:
    def __init__(self, stream, path: Path | None, main: bool, writer=None):
        self.stream = stream if main else None
        self.path = path if main else None
        self.writer = writer if main else None

    def __call__(self, record: dict) -> None:
        line = json.dumps(record)
        if self.stream is not None:
            tqdm.write(line, file=self.stream)
            self.stream.flush()
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(line + "\n")
        if self.writer is not None and "step" in record:
            for k, v in record.items():
                if k != "step" and isinstance(v, int | float) and not isinstance(v, bool):
                    self.writer.add_scalar(k, v, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class _Profile:
    """Traces steps ``A..B`` (1-based) with ``jax.profiler`` into ``WORKDIR/profile``."""

    def __init__(self, steps: tuple[int, int] | None, workdir: Path | None, main: bool):
        if steps is not None and workdir is None:
            raise ValueError("fit: profile_steps needs a workdir (the trace goes to WORKDIR/...)")
        self.steps = steps if main else None
        self.dir = None if workdir is None else Path(workdir) / "profile"
        self.active = False

    def before(self, done: int) -> None:
        """Called before the step that will make ``done`` steps."""
        if self.steps is not None and not self.active and self.steps[0] <= done <= self.steps[1]:
            self.dir.mkdir(parents=True, exist_ok=True)
            jax.profiler.start_trace(str(self.dir))
            self.active = True

    def after(self, done: int, state) -> None:
        if self.active and done >= self.steps[1]:
            self.stop(state)

    def stop(self, state=None) -> None:
        if self.active:
            if state is not None:
                jax.block_until_ready(state)  # the traced steps' device work is in the trace
            jax.profiler.stop_trace()
            self.active = False


def read_metrics(workdir: str | Path) -> list[dict]:
    """The records of ``WORKDIR/metrics.jsonl`` (empty if there is none)."""
    path = Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _trim_metrics(path: Path, step: int) -> None:
    """Drops records past ``step`` (the steps a resumed run is about to redo)."""
    if not path.exists():
        return
    keep = [
        line
        for line in path.read_text().splitlines()
        if line.strip() and json.loads(line).get("step", 0) <= step
    ]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    tmp.replace(path)


class _Failure:
    """An exception of the prefetch thread, on its way to the training loop."""

    def __init__(self, error: BaseException):
        self.error = error


def _device_put(batch):
    """The default ``put`` of a prefetching loop: numpy leaves onto the default device ahead of
    the step (uncommitted, so a jitted step with other input shardings may still move them)."""
    return jax.tree.map(lambda x: jax.device_put(x) if isinstance(x, np.ndarray) else x, batch)


class _Feed:
    """The next ``count`` batches of ``data`` through ``put``, each with the source's state after.

    ``depth`` 0 draws each batch when it is asked for (in the loop's thread). ``depth`` N >= 1
    draws them in a daemon thread, at most N ahead (a bounded queue). An exception of the thread
    is raised by :meth:`next` in the loop's thread (the same exception object, so its traceback
    still shows where it was raised); :meth:`close` stops the thread at its next batch.
    """

    _POLL = 0.1  # seconds between checks that the other side is still there

    def __init__(self, data, put: Callable, count: int, depth: int):
        self.data, self.put = data, put
        self._thread: threading.Thread | None = None
        if depth > 0 and count > 0:
            self._queue: queue.Queue = queue.Queue(maxsize=depth)
            self._closed = threading.Event()
            self._thread = threading.Thread(
                target=self._produce, args=(count,), name="jaxfm-prefetch", daemon=True
            )
            self._thread.start()

    def _draw(self) -> tuple[Any, dict]:
        batch = next(self.data)
        return self.put(batch), copy.deepcopy(self.data.get_state())

    def _produce(self, count: int) -> None:
        try:
            for _ in range(count):
                if self._closed.is_set() or not self._offer(self._draw()):
                    return
        except BaseException as err:  # handed to the loop's thread, raised there
            self._offer(_Failure(err))

    def _offer(self, item) -> bool:
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=self._POLL)
                return True
            except queue.Full:
                continue
        return False

    def next(self) -> tuple[Any, dict]:
        """``(device batch, the batch source's state after it)``."""
        if self._thread is None:
            return self._draw()
        while True:
            try:
                item = self._queue.get(timeout=self._POLL)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise RuntimeError("fit: the prefetch thread stopped without a batch") from None
        if isinstance(item, _Failure):
            self.close()
            raise item.error
        return item

    def close(self) -> None:
        """Stops the thread and drops the batches it prepared (their device buffers too)."""
        if self._thread is None:
            return
        self._closed.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        # It exits at its next queue put or batch; a batch source stuck for longer than this
        # wait cannot hold the process (a daemon thread).
        self._thread.join(timeout=5.0)


def fit(
    state,
    train_step: Callable,
    data,
    *,
    total_steps: int,
    rng: jax.Array,
    steps_per_epoch: int | None = None,
    evaluate: Callable[[Any], dict] | None = None,
    eval_every: int | None = None,
    select: Select | None = None,
    workdir: str | Path | None = None,
    checkpoint_every: int | None = None,
    keep: int = 2,
    resume: bool = False,
    overwrite: bool = False,
    run_info: dict | None = None,
    log_every: int = 0,
    step_record: Callable[[int, dict, float], dict] | None = None,
    put: Callable[[Any], Any] | None = None,
    log_stream=sys.stdout,
    progress: bool = True,
    desc: str = "train",
    main: bool = True,
    tensorboard: bool = False,
    profile_steps: tuple[int, int] | None = None,
    prefetch: int = 1,
) -> FitResult:
    """Runs ``train_step`` for ``total_steps`` steps (resuming if asked); see the module.

    Args:
      state: the initial :class:`~jaxfm.train.step.TrainState` (donated to the first step).
      train_step: ``(state, batch, rng) -> (state, metrics)``.
      data: the batch source (``__next__``, ``get_state``, ``set_state``).
      total_steps: steps of the whole run.
      rng: base PRNG key; step ``s`` uses ``fold_in(rng, s)``.
      steps_per_epoch: makes records carry epochs; evaluation defaults to each epoch end.
      evaluate: ``params -> {metric: value}`` on the validation data.
      eval_every: evaluate every this many steps (default: ``steps_per_epoch``).
      select: model selection on one metric of ``evaluate`` (keeps the best parameters).
      workdir: checkpoints, ``metrics.jsonl`` and the lock go here (None: no checkpoints).
      checkpoint_every: save every N steps (default: at each evaluation); always at the end.
      keep: checkpoints kept.
      resume: continue from the newest good checkpoint in ``workdir`` (fresh if there is none).
      overwrite: a fresh run may replace the checkpoints of an earlier run in ``workdir``.
      run_info: JSON identity of the run (config, data); a resume checks it against the
        checkpoint's and names the fields that differ.
      log_every: also log a record every N steps (0: only evaluation records).
      step_record: ``(step, host metrics, step seconds) -> extra fields`` of a per-step record
        (called one step late, once the next step is queued; the seconds are the wall time
        between this step's end and the previous one's).
      put: host batch -> device batch (multi-process global arrays); default: numpy leaves
        ``jax.device_put`` when prefetching, else as given.
      log_stream: where JSON lines go (None: only ``metrics.jsonl``).
      progress: tqdm bar on stderr.
      desc: the bar's label.
      main: this process logs and writes ``metrics.jsonl`` (process 0 of a multi-host run).
      tensorboard: also write every logged record's scalars as TensorBoard events in
        ``WORKDIR/tensorboard`` (needs tensorboardX: ``pip install 'jaxfm[tensorboard]'``).
      profile_steps: ``(A, B)``: record a ``jax.profiler`` trace of steps A..B (1-based,
        inclusive) into ``WORKDIR/profile`` (:func:`parse_profile_steps` reads ``"A:B"``).
      prefetch: batches a background thread prepares ahead (``data``'s ``__next__`` and
        ``put``) while the device runs a step; 0: each batch is prepared in the loop's thread
        when the step needs it. The steps and checkpoints are the same either way.

    Raises:
      FloatingPointError: the training loss became NaN or infinite (noticed one step late, as
        the loop reads a step's loss once the next is queued; never after a checkpoint of it).
      Exception: whatever ``data`` or ``put`` raised, also from the prefetch thread.
      ValueError: a resume whose checkpoint belongs to another run, a workdir in use, or
        ``tensorboard`` without tensorboardX installed.
    """
    if total_steps < 1:
        raise ValueError(f"fit: total_steps must be >= 1, got {total_steps}")
    if prefetch < 0:
        raise ValueError(f"fit: prefetch must be >= 0, got {prefetch}")
    eval_every = eval_every or steps_per_epoch
    if evaluate is not None and not eval_every:
        raise ValueError("fit: evaluate needs eval_every or steps_per_epoch")
    if select is not None and evaluate is None:
        raise ValueError("fit: select needs an evaluate hook")
    checkpoint_every = checkpoint_every or eval_every or total_steps
    run_info = dict(run_info or {})
    put = put or (_device_put if prefetch else (lambda b: b))
    best_params = _host(state.params) if select is not None else None
    history: list[dict] = []
    epoch_loss = [0.0, 0]  # the current epoch's loss sum and step count
    start = 0

    profile = _Profile(profile_steps, None if workdir is None else Path(workdir), main)
    if tensorboard and workdir is None:
        raise ValueError("fit: tensorboard=True needs a workdir (the events go to WORKDIR/...)")
    run_dir = None
    if workdir is not None:
        run_dir = RunDirectory(workdir, keep=keep, main=main)
        run_dir.open(resume=resume, overwrite=overwrite)
    try:
        writer = _tensorboard_writer(workdir) if tensorboard and main else None
    except ValueError:
        if run_dir is not None:
            run_dir.close()
        raise
    log = _Log(log_stream, None if run_dir is None else run_dir.metrics_path, main, writer)
    feed = None

    def tree_of(state, best):
        tree = {"train": state, "rng": np.asarray(jax.random.key_data(rng))}
        if best is not None:
            tree["best"] = best
        return tree

    try:
        if run_dir is not None and resume:
            got = run_dir.restore_latest(tree_of(state, best_params), run_info)
            if got is not None:
                step0, tree, meta = got
                state, start = tree["train"], step0
                if select is not None:
                    best_params = _host(tree["best"])
                    select.load_state_dict(meta["select"])
                data.set_state(meta["data"])
                history = list(meta.get("history", []))
                epoch_loss = list(meta.get("epoch_loss", [0.0, 0]))
                _trim_metrics(run_dir.metrics_path, start)
                if progress and main:
                    print(f"{desc}: resumed from step {start}", file=sys.stderr)
            elif main:  # nothing to resume: a fresh start, without the dead run's records
                _trim_metrics(run_dir.metrics_path, 0)
        if start >= total_steps or (select is not None and select.stop):
            best = best_params if select is not None else _host(state.params)
            return FitResult(state, best, history, [], select, False, None, start)

        def save(step, data_state):
            if run_dir is None:
                return
            meta = {
                "step": step,
                "data": data_state,
                "select": None if select is None else select.state_dict(),
                "history": history,
                "epoch_loss": epoch_loss,
                "run": run_info,
            }
            run_dir.save(step, tree_of(state, best_params), meta)

        bar = tqdm(
            total=total_steps,
            initial=start,
            desc=desc,
            unit="step",
            disable=not (progress and main),
            file=sys.stderr,
            leave=False,
        )
        steps: list[dict] = []
        preempted, signum = False, None
        ran: list[tuple[int, Any]] = []  # (step, device metrics): queued, not yet read
        last_done = time.perf_counter()  # when the previous step was seen finished

        def settle(count: int) -> None:
            """The host side of the oldest ``count`` queued steps, in order: waits for each,
            checks its loss, adds it to the epoch's, and makes its record if one is due."""
            nonlocal last_done
            todo, ran[:] = ran[:count], ran[count:]
            for step, metrics in todo:
                loss = float(_host(metrics["loss"]))  # waits for the step
                now = time.perf_counter()
                seconds, last_done = now - last_done, now
                if not math.isfinite(loss):
                    raise FloatingPointError(f"{desc}: training loss became {loss} at step {step}")
                epoch_loss[0] += loss
                epoch_loss[1] += 1
                done = step + 1
                logged = bool(log_every) and done % log_every == 0
                if logged or step_record is not None:
                    host = _host(metrics)
                    record = {"step": done, **_scalars(host)}
                    if step_record is not None:
                        record.update(step_record(step, host, seconds))
                    record["step_seconds"] = round(seconds, 4)
                    steps.append(record)
                    if logged:
                        log(record)
                bar.set_postfix(loss=f"{loss:.4g}")
                bar.update(1)

        feed = _Feed(data, put, total_steps - start, prefetch)
        with Preemption() as preemption:
            for step in range(start, total_steps):
                if run_dir is not None:
                    run_dir.check_saves()
                batch, data_state = feed.next()  # data_state: the source after this batch
                profile.before(step + 1)
                state, metrics = train_step(state, batch, jax.random.fold_in(rng, step))
                del batch
                profile.after(step + 1, state)
                ran.append((step, metrics))
                done = step + 1
                last = done == total_steps
                evaluating = evaluate is not None and (done % eval_every == 0 or last)
                signalled = preemption.agreed() and not last
                if not (evaluating or signalled or done % checkpoint_every == 0 or last):
                    settle(len(ran) - 1)  # the previous step, while the device runs this one
                    continue
                settle(len(ran))  # evaluations and checkpoints see only finished, finite steps
                evaluated = False
                if evaluating:
                    rec = {"step": done}
                    if steps_per_epoch:
                        rec["epoch"] = -(-done // steps_per_epoch) - 1
                    rec["train_loss"] = epoch_loss[0] / max(epoch_loss[1], 1)
                    epoch_loss[:] = [0.0, 0]
                    val = evaluate(state.params)
                    rec.update({f"val_{k}": float(v) for k, v in val.items()})
                    if select is not None:
                        if select.update(float(val[select.metric]), done, rec.get("epoch", -1)):
                            best_params = _host(state.params)
                        rec["best"] = select.best_step == done
                    history.append(rec)
                    log(rec)
                    evaluated = True
                stop = select is not None and evaluated and select.stop
                preempted = signalled and not stop
                if preempted or stop or done % checkpoint_every == 0 or last:
                    save(done, data_state)
                last_done = time.perf_counter()  # the next step's time leaves these out
                if preempted:
                    signum = preemption.requested
                    if progress and main:
                        print(f"{desc}: signal {signum}: saved step {done}", file=sys.stderr)
                    break
                if stop:
                    break
        bar.close()
    finally:
        if feed is not None:
            feed.close()
        profile.stop()
        log.close()
        if run_dir is not None:
            run_dir.close()
    best = best_params if select is not None else _host(state.params)
    return FitResult(state, best, history, steps, select, preempted, signum, start)
