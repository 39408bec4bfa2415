"""Optimizers and learning-rate schedules (optax)."""

from __future__ import annotations

import dataclasses

import optax

__all__ = ["OptimizerConfig", "make_optimizer", "make_schedule"]

_OPTIMIZERS = ("adam", "adamw", "lamb")
_SCHEDULES = ("constant", "warmup_cosine")


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimizerConfig:
    """Optimizer settings.

    Attributes:
      name: ``adam``, ``adamw`` or ``lamb``.
      learning_rate: peak learning rate.
      weight_decay: decoupled weight decay (adamw / lamb).
      schedule: ``constant`` or ``warmup_cosine`` (linear warmup then cosine decay to
        ``end_lr_fraction * learning_rate``).
      warmup_steps: linear warmup length (``warmup_cosine`` only).
      total_steps: schedule length (``warmup_cosine`` only).
      clip_norm: global gradient-norm clipping, or None.
    """

    name: str = "adam"
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup_steps: int = 0
    total_steps: int = 1
    end_lr_fraction: float = 0.0
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
        if self.schedule == "warmup_cosine" and self.total_steps <= self.warmup_steps:
            raise ValueError(
                "OptimizerConfig.total_steps must exceed warmup_steps, got "
                f"{self.total_steps} <= {self.warmup_steps}"
            )


def make_schedule(cfg: OptimizerConfig) -> optax.Schedule:
    """The learning-rate schedule of ``cfg`` as an optax schedule."""
    if cfg.schedule == "constant":
        return optax.constant_schedule(cfg.learning_rate)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=cfg.learning_rate,
        warmup_steps=cfg.warmup_steps,
        decay_steps=cfg.total_steps,
        end_value=cfg.learning_rate * cfg.end_lr_fraction,
    )


def make_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformation:
    """Builds the optax optimizer (with optional gradient clipping) for ``cfg``."""
    lr = make_schedule(cfg)
    if cfg.name == "adam":
        opt = optax.adam(lr)
    elif cfg.name == "adamw":
        opt = optax.adamw(lr, weight_decay=cfg.weight_decay)
    else:
        opt = optax.lamb(lr, weight_decay=cfg.weight_decay)
    if cfg.clip_norm is not None:
        opt = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), opt)
    return opt
