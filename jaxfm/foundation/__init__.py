"""Flax versions of pretrained foundation encoders (ViT, scGPT, BrainLM).

Converted checkpoints (``jaxfm convert``) load with :func:`load_pretrained`; each family module
(``jaxfm.foundation.vit`` / ``.scgpt`` / ``.brainlm``) is imported only when needed.
"""

from jaxfm.foundation.registry import FAMILY_MODULES, load_pretrained, model_from_config

__all__ = ["FAMILY_MODULES", "load_pretrained", "model_from_config"]
