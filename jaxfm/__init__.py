"""jaxfm: graph foundation models (FIMP, GraphFM) in JAX/Flax.

``jaxfm.load_model(dir_or_hub_id) -> (model, config, params)`` loads any jaxfm model directory.
"""

__version__ = "0.2.0"

__all__ = ["__version__", "load_model"]


def load_model(path_or_id, *, as_jax: bool = True):
    """:func:`jaxfm.loading.load_model`, imported on first use (``import jaxfm`` stays light)."""
    from jaxfm.loading import load_model as _load

    return _load(path_or_id, as_jax=as_jax)
