"""Per-dataset heads: one linear classifier / regressor per dataset, stacked over S.

Each target uses its own dataset's head; logits past that dataset's number of classes are set to
a large negative value, so every dataset keeps its own label space inside one ``[Q, C_max]``
array and one softmax.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

__all__ = ["NEG_INF", "DatasetHeads"]

NEG_INF = -1e9


class DatasetHeads(nn.Module):
    """Per-dataset linear classifiers and regressors (float32), selected per row.

    ``logits[q] = h[q] @ kernel[s] + bias[s]`` with ``s = dataset[q]``, entries ``c >=
    num_classes[s]`` set to :data:`NEG_INF`; ``prediction[q] = h[q] . reg_kernel[s] +
    reg_bias[s]`` (used for regression datasets, ignored for the others).

    Attributes:
      num_classes: classes of each of the S datasets (C = max, at least 1).

    Parameters (dataset-specific, leading axis S): ``kernel [S, D, C]``, ``bias [S, C]``,
    ``reg_kernel [S, D]``, ``reg_bias [S]``.

    Shapes:
      h ``[Q, D]``, dataset ``[Q]`` -> logits ``[Q, C]``, prediction ``[Q]``.
    """

    num_classes: tuple[int, ...]

    @nn.compact
    def __call__(self, h, dataset):
        s, c = len(self.num_classes), max(max(self.num_classes, default=1), 1)
        d = h.shape[-1]
        init = nn.initializers.lecun_normal(batch_axis=(0,))
        kernel = self.param("kernel", init, (s, d, c))
        bias = self.param("bias", nn.initializers.zeros, (s, c))
        reg_kernel = self.param("reg_kernel", nn.initializers.normal(d**-0.5), (s, d))
        reg_bias = self.param("reg_bias", nn.initializers.zeros, (s,))
        h = h.astype(jnp.float32)
        logits = jnp.einsum("qd,qdc->qc", h, kernel[dataset]) + bias[dataset]
        valid = jnp.arange(c)[None, :] < jnp.asarray(np.array(self.num_classes))[dataset][:, None]
        logits = jnp.where(valid, logits, NEG_INF)
        prediction = jnp.einsum("qd,qd->q", h, reg_kernel[dataset]) + reg_bias[dataset]
        return logits, prediction
