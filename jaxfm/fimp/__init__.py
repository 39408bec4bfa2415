"""FIMP: foundation-informed message passing (tokenizers, cross-node messages, model, tasks)."""

from jaxfm.fimp.config import (
    VARIANTS,
    FIMPConfig,
    FMRITokenizerConfig,
    GeneTokenizerConfig,
    ImageTokenizerConfig,
    MessageCreatorConfig,
    PretrainedConfig,
    TokenizerConfig,
    fimp_config,
)
from jaxfm.fimp.heads import (
    ClassificationHead,
    MaskedValueHead,
    NodeEmbeddingHead,
    PatchReconstructionHead,
)
from jaxfm.fimp.message import MessageCreator
from jaxfm.fimp.model import FIMP, FIMPLayer, ZeroShotEncoder, masked_mean_pool
from jaxfm.fimp.tasks import TASKS, FIMPTaskModel, TaskSpec, loss_and_metrics
from jaxfm.fimp.tokenizers import (
    BrainLMTokenizer,
    FMRITokenizer,
    GeneTokenizer,
    ImageTokenizer,
    ScGPTTokenizer,
    ViTPatchTokenizer,
    patchify_image,
    patchify_signal,
)

__all__ = [
    "FIMP",
    "TASKS",
    "VARIANTS",
    "BrainLMTokenizer",
    "ClassificationHead",
    "FIMPConfig",
    "FIMPLayer",
    "FIMPTaskModel",
    "FMRITokenizer",
    "FMRITokenizerConfig",
    "GeneTokenizer",
    "GeneTokenizerConfig",
    "ImageTokenizer",
    "ImageTokenizerConfig",
    "MaskedValueHead",
    "MessageCreator",
    "MessageCreatorConfig",
    "NodeEmbeddingHead",
    "PatchReconstructionHead",
    "PretrainedConfig",
    "ScGPTTokenizer",
    "TaskSpec",
    "TokenizerConfig",
    "ViTPatchTokenizer",
    "ZeroShotEncoder",
    "fimp_config",
    "loss_and_metrics",
    "masked_mean_pool",
    "patchify_image",
    "patchify_signal",
]
