"""FIMPConfig <-> JSON-able dict (saved next to parameters in model directories)."""

from __future__ import annotations

import dataclasses

from jaxfm.fimp.config import (
    FIMPConfig,
    FMRITokenizerConfig,
    GeneTokenizerConfig,
    ImageTokenizerConfig,
    MessageCreatorConfig,
)

__all__ = ["config_from_dict", "config_to_dict"]

_TOKENIZERS = {
    "genes": GeneTokenizerConfig,
    "image": ImageTokenizerConfig,
    "fmri": FMRITokenizerConfig,
}
_KIND = {cls: kind for kind, cls in _TOKENIZERS.items()}


def config_to_dict(cfg: FIMPConfig) -> dict:
    """A JSON-able dict; the tokenizer carries its ``kind``."""
    d = dataclasses.asdict(cfg)
    if cfg.tokenizer is not None:
        d["tokenizer"] = {"kind": _KIND[type(cfg.tokenizer)], **dataclasses.asdict(cfg.tokenizer)}
    return d


def config_from_dict(d: dict) -> FIMPConfig:
    """Inverse of :func:`config_to_dict`; unknown fields raise (a config from another version)."""
    d = dict(d)
    try:
        message = MessageCreatorConfig(**d.pop("message"))
        tok = d.pop("tokenizer")
        if tok is not None:
            tok = dict(tok)
            kind = tok.pop("kind")
            if kind not in _TOKENIZERS:
                raise ValueError(f"unknown tokenizer kind {kind!r}")
            tok = _TOKENIZERS[kind](
                **{k: tuple(v) if isinstance(v, list) else v for k, v in tok.items()}
            )
        return FIMPConfig(message=message, tokenizer=tok, **d)
    except (TypeError, KeyError) as e:
        raise ValueError(f"invalid FIMP config dict: {e}") from e
