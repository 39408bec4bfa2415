"""jaxfm: graph foundation models (FIMP, GraphFM) in JAX/Flax."""

__version__ = "0.1.0"

__all__ = ["__version__"]
