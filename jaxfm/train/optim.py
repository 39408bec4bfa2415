"""The one optimizer builder of jaxfm: optax from `OptimizerConfig` plus parameter-path rules.

Every trainer builds its optimizer here. What differs between them is configuration, expressed as
regexes over parameter paths (:mod:`jaxfm.params`):

- ``trainable``: only these train; everything else gets zero updates and no optimizer state
  (MFT's frozen trunk, FIMP's frozen pretrained layers).
- ``unfreeze``: ``(regex, step)`` pairs: these parameters start training at ``step`` (NFT's
  bottom-up gradual unfreezing). Until then they get zero updates; from then on they have an
  optimizer state of their own that starts fresh, as if that group's optimizer were created at
  the unfreeze step, while the learning-rate schedule keeps the global step.
- ``lr_scales``: ``(regex, factor)`` pairs multiplying the updates of a parameter group.
- ``row_scales``: ``(regexes, [S] scales)``: per-dataset rows of stacked per-dataset
  parameters take larger steps (GraphFM appendix A.2).
- Weight decay never touches biases or norm scales (any leaf whose path ends in ``bias`` or
  ``scale``, and 1-D leaves).

Example:
  >>> import jax.numpy as jnp
  >>> params = {"trunk": {"kernel": jnp.ones((2, 2))}, "head": {"kernel": jnp.ones((2, 2))}}
  >>> tx = make_optimizer(OptimizerConfig(name="adamw"), params, trainable=["^head/"])
  >>> grads = jax.tree.map(jnp.ones_like, params)
  >>> updates, _ = tx.update(grads, tx.init(params), params)
  >>> float(abs(updates["trunk"]["kernel"]).sum()), bool((updates["head"]["kernel"] != 0).all())
  (0.0, True)
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxfm import params as P

__all__ = ["OptimizerConfig", "decays_weight", "make_optimizer", "make_schedule", "scale_rows"]

_OPTIMIZERS = ("adam", "adamw", "lamb", "sgd")
_SCHEDULES = ("constant", "warmup_cosine", "step_decay")


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimizerConfig:
    """Optimizer settings.

    Attributes:
      name: ``adam``, ``adamw``, ``lamb`` or ``sgd``.
      learning_rate: peak learning rate.
      weight_decay: decoupled weight decay (adamw / lamb); never on biases and norm scales.
      schedule: ``constant``; ``warmup_cosine`` (linear warmup then cosine decay to
        ``end_lr_fraction * learning_rate`` at ``total_steps``); or ``step_decay`` (the rate is
        divided by ``decay_factor`` at each boundary step the trainer passes, e.g. NFT's
        unfreeze steps).
      warmup_steps: linear warmup length (``warmup_cosine``).
      total_steps: schedule length (``warmup_cosine``); 0: the trainer sets it to the run's
        number of steps.
      end_lr_fraction: final fraction of the peak rate (``warmup_cosine``).
      decay_factor: divisor of the rate at each boundary (``step_decay``).
      clip_norm: global gradient-norm clipping, or None.
    """

    name: str = "adamw"
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup_steps: int = 0
    total_steps: int = 0
    end_lr_fraction: float = 0.0
    decay_factor: float = 1.5
    clip_norm: float | None = 1.0

    def __post_init__(self):
        if self.name not in _OPTIMIZERS:
            raise ValueError(
                f"OptimizerConfig.name must be one of {_OPTIMIZERS}, got {self.name!r}"
            )
        if self.schedule not in _SCHEDULES:
            raise ValueError(
                f"OptimizerConfig.schedule must be one of {_SCHEDULES}, got {self.schedule!r}"
            )
        if not self.learning_rate > 0:
            raise ValueError(f"OptimizerConfig.learning_rate must be > 0, got {self.learning_rate}")
        if self.weight_decay < 0:
            raise ValueError(f"OptimizerConfig.weight_decay must be >= 0, got {self.weight_decay}")
        if self.warmup_steps < 0 or self.total_steps < 0:
            raise ValueError("OptimizerConfig: warmup_steps and total_steps must be >= 0")
        if self.decay_factor < 1:
            raise ValueError(f"OptimizerConfig.decay_factor must be >= 1, got {self.decay_factor}")
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise ValueError(f"OptimizerConfig.clip_norm must be > 0 or None, got {self.clip_norm}")

    def for_run(self, total_steps: int) -> OptimizerConfig:
        """This config with ``total_steps`` filled in (if 0) and the warmup fitted to the run.

        A warmup as long as the run would never reach the peak rate; it is shortened to a tenth
        of the run (a 1-step run has no warmup).
        """
        total = self.total_steps or total_steps
        warmup = self.warmup_steps
        if self.schedule == "warmup_cosine" and warmup >= total:
            warmup = total // 10
        return dataclasses.replace(self, total_steps=max(total, 1), warmup_steps=warmup)


def make_schedule(cfg: OptimizerConfig, boundaries: Sequence[int] = ()) -> optax.Schedule:
    """The learning-rate schedule of ``cfg`` (``boundaries``: ``step_decay``'s steps)."""
    if cfg.schedule == "constant":
        return optax.constant_schedule(cfg.learning_rate)
    if cfg.schedule == "step_decay":
        return optax.piecewise_constant_schedule(
            cfg.learning_rate, {int(b): 1.0 / cfg.decay_factor for b in boundaries}
        )
    total = max(cfg.total_steps, 1)
    if cfg.warmup_steps >= total:
        raise ValueError(
            f"OptimizerConfig: warmup_steps={cfg.warmup_steps} must be below total_steps={total} "
            "(use OptimizerConfig.for_run)"
        )
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=cfg.learning_rate,
        warmup_steps=cfg.warmup_steps,
        decay_steps=total,
        end_value=cfg.learning_rate * cfg.end_lr_fraction,
    )


def decays_weight(path: str, leaf) -> bool:
    """Whether weight decay applies to a parameter: not to biases, norm scales or 1-D leaves."""
    name = path.rsplit("/", 1)[-1]
    return jnp.ndim(leaf) >= 2 and not re.search(r"(bias|scale)(_\d+)?$", name)


def _decay_mask(params):
    return jax.tree_util.tree_map_with_path(lambda kp, x: decays_weight(P.path_of(kp), x), params)


def _base(cfg: OptimizerConfig, schedule) -> optax.GradientTransformation:
    mask = _decay_mask  # a callable: under multi_transform it sees only its group's leaves
    if cfg.name == "adam":
        return optax.adam(schedule)
    if cfg.name == "sgd":
        return optax.sgd(schedule)
    if cfg.name == "adamw":
        return optax.adamw(schedule, weight_decay=cfg.weight_decay, mask=mask)
    return optax.lamb(schedule, weight_decay=cfg.weight_decay, mask=mask)


class _StartAtState(NamedTuple):
    count: jax.Array
    inner: Any


def _start_at(step: int, inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """``inner`` from global ``step`` on (its state starts there); zero updates before."""

    def init(params):
        return _StartAtState(jnp.zeros((), jnp.int32), inner.init(params))

    def update(updates, state, params=None):
        def run(_):
            return inner.update(updates, state.inner, params)

        def hold(_):
            return jax.tree.map(jnp.zeros_like, updates), state.inner

        new, inner_state = jax.lax.cond(state.count >= step, run, hold, None)
        return new, _StartAtState(state.count + 1, inner_state)

    return optax.GradientTransformation(init, update)


def _scale_by_path(params, rules: Sequence[tuple[str, float]]) -> optax.GradientTransformation:
    factors = P.label_params(params, list(rules), default=1.0, strict=True)
    return optax.GradientTransformation(
        lambda _: optax.EmptyState(),
        lambda u, s, p=None: (jax.tree.map(lambda x, f: x * f, u, factors), s),
    )


def make_optimizer(
    cfg: OptimizerConfig,
    params,
    *,
    trainable: Sequence[str] | None = None,
    frozen: Sequence[str] = (),
    unfreeze: Sequence[tuple[str, int]] = (),
    lr_scales: Sequence[tuple[str, float]] = (),
    row_scales: tuple[Sequence[str], Any] | None = None,
    boundaries: Sequence[int] = (),
) -> optax.GradientTransformation:
    """The optax optimizer of ``cfg`` for ``params`` (a tree or its ``eval_shape``).

    Args:
      cfg: optimizer settings (``total_steps`` already set, see :meth:`OptimizerConfig.for_run`).
      params: the parameter tree the optimizer will see (for path rules and the decay mask).
      trainable: regexes of the parameters that train from step 0 (None: all of them).
      frozen: regexes of parameters that never train (they win over ``trainable``).
      unfreeze: ``(regex, step)``: parameters that start training at ``step``.
      lr_scales: ``(regex, factor)``: update multipliers per parameter group.
      row_scales: ``(regexes, scales [S])``: per-dataset row multipliers (appendix A.2).
      boundaries: the steps at which ``step_decay`` divides the rate.

    Raises:
      ValueError: no parameter would train, or a schedule setting is inconsistent.
    """
    schedule = make_schedule(cfg, boundaries)
    chain = []
    if cfg.clip_norm is not None:
        chain.append(optax.clip_by_global_norm(cfg.clip_norm))
    if trainable is None and not unfreeze and not frozen:
        chain.append(_base(cfg, schedule))
    else:
        rules: list[tuple[str, str]] = [(rx, "frozen") for rx in frozen]
        transforms: dict[str, optax.GradientTransformation] = {}
        for i, (rx, start) in enumerate(unfreeze):
            label = f"unfreeze_{i}"
            shifted = lambda count, s=int(start): schedule(count + s)
            transforms[label] = _start_at(int(start), _base(cfg, shifted))
            rules.append((rx, label))
        rules += [(rx, "train") for rx in (trainable if trainable is not None else [".*"])]
        labels = P.label_params(params, rules, default="frozen")
        if all(v == "frozen" for v in jax.tree.leaves(labels)):
            raise ValueError(
                f"make_optimizer: no parameter is trainable (rules {[r for r, _ in rules]}; "
                f"paths look like {P.paths(params)[:4]})"
            )
        transforms["train"] = _base(cfg, schedule)
        transforms["frozen"] = optax.set_to_zero()
        chain.append(optax.multi_transform(transforms, labels))
    if lr_scales:
        chain.append(_scale_by_path(params, lr_scales))
    if row_scales is not None:
        chain.append(scale_rows(jnp.asarray(row_scales[1]), params, row_scales[0]))
    return optax.chain(*chain)


class _ScaleRowsState(NamedTuple):
    pass


def scale_rows(row_scales: jax.Array, params, rules: Sequence[str]) -> optax.GradientTransformation:
    """Multiplies updates of stacked per-dataset parameters row-wise by ``row_scales``.

    Per-dataset parameters are stacked with a leading dataset axis S (``[S, ...]``); this scales
    row ``s`` of the update of every parameter whose path matches one of ``rules`` by
    ``row_scales[s]`` (GraphFM appendix A.2: the per-dataset MLPs and heads of rarely-seen
    datasets take larger steps). Other parameters are untouched.

    Shapes:
      row_scales: ``[S]``.
    """
    labels = P.label_params(params, [(p, True) for p in rules], default=False)

    def update_fn(updates, state, params=None):
        del params
        scales = jnp.asarray(row_scales)

        def scale(u, hit):
            if not hit:
                return u
            if u.shape[:1] != scales.shape:
                raise ValueError(
                    f"scale_rows: a matched parameter has leading dim {u.shape[:1]}, expected "
                    f"the dataset axis {scales.shape}"
                )
            return u * scales.reshape((-1,) + (1,) * (u.ndim - 1)).astype(u.dtype)

        return jax.tree.map(scale, updates, labels), state

    return optax.GradientTransformation(lambda _: _ScaleRowsState(), update_fn)
