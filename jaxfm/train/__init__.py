"""Training: the one spine (step, loop, optimizer, checkpoints, mesh) and the trainers on it.

- :mod:`jaxfm.train.step`: ``make_train_step`` / ``make_eval_step`` / ``create_state`` (any mesh).
- :mod:`jaxfm.train.trainer`: ``fit`` (steps or epochs, selection, resume, preemption, logs).
- :mod:`jaxfm.train.optim`: ``OptimizerConfig`` and ``make_optimizer`` (path rules).
- :mod:`jaxfm.train.checkpoint`: verified orbax checkpoints and the run directory.
- :mod:`jaxfm.train.sharding`: meshes and parameter shardings by logical axes.
- trainers: :func:`train_fimp`, :func:`pretrain`, :func:`finetune`, :func:`train_node_baseline`,
  and :mod:`jaxfm.train.graph_classification`.
"""

from jaxfm.train.fimp import RunConfig, train_fimp
from jaxfm.train.graphfm_finetune import FinetuneConfig, finetune
from jaxfm.train.graphfm_pretrain import PretrainConfig, pretrain
from jaxfm.train.node_baselines import BaselineConfig, train_node_baseline
from jaxfm.train.optim import OptimizerConfig, make_optimizer
from jaxfm.train.step import TrainState, create_state, make_eval_step, make_train_step
from jaxfm.train.trainer import EpochBatches, RepeatBatches, Select, fit, run_splits

__all__ = [
    "BaselineConfig",
    "EpochBatches",
    "FinetuneConfig",
    "OptimizerConfig",
    "PretrainConfig",
    "RepeatBatches",
    "RunConfig",
    "Select",
    "TrainState",
    "create_state",
    "finetune",
    "fit",
    "make_eval_step",
    "make_optimizer",
    "make_train_step",
    "pretrain",
    "run_splits",
    "train_fimp",
    "train_node_baseline",
]
