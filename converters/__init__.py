"""PyTorch -> Flax checkpoint converters (ViT, scGPT, BrainLM) with verification.

``python -m converters convert {vit,scgpt,brainlm} SRC OUT [--verify GOLDEN.npz]`` (also
``jaxfm convert``) reads ``.safetensors`` and PyTorch zip ``.bin/.pt/.pth`` checkpoints without
PyTorch, maps them declaratively to the Flax models of :mod:`jaxfm.foundation`, strict-merges
and writes a jaxfm model directory atomically.
"""

from converters.base import FAMILIES, Converted, load_family, write_model_dir
from converters.checkpoint import read_pickle_tree, read_state_dict
from converters.errors import (
    CheckpointFormatError,
    ConversionError,
    KeyMismatchError,
    UnsafePickleError,
)

__all__ = [
    "FAMILIES",
    "CheckpointFormatError",
    "ConversionError",
    "Converted",
    "KeyMismatchError",
    "UnsafePickleError",
    "load_family",
    "read_pickle_tree",
    "read_state_dict",
    "write_model_dir",
]
