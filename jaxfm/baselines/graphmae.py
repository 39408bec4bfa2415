"""GraphMAE (Hou et al., 2022): masked feature reconstruction pretraining + a linear probe.

Pretraining (paper Sec. 3): a fraction ``mask_rate`` of the (valid) nodes has its input features
replaced by a learnable ``[MASK]`` token; a GAT encoder embeds the graph; the embeddings pass a
linear ``encoder_to_decoder`` map and the masked nodes' codes are **re-masked** (set to zero);
a one-layer GAT decoder reconstructs the features; the loss is the scaled cosine error on the
masked nodes (eq. 4)::

    L_SCE = mean_{v masked} (1 - x_v . z_v / (|x_v| |z_v|)) ** gamma,   gamma >= 1.

Evaluation: :func:`linear_probe` trains a logistic regression (optax AdamW) on the frozen encoder
embeddings, selecting the epoch by validation accuracy.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxfm.baselines.gat import GATLayer
from jaxfm.baselines.gcn import Linear, mask_nodes

__all__ = ["GraphMAE", "linear_probe", "pretrain_graphmae", "sample_node_mask", "sce_loss"]


def sce_loss(pred, target, mask, gamma: float = 2.0, eps: float = 1e-12):
    """Scaled cosine error, averaged over the nodes where ``mask`` is True (0 if none).

    Shapes:
      pred, target ``[N, F]``; mask ``[N]`` bool -> scalar.
    """

    def unit(a):  # max() before the root: a zero row gets a zero (not NaN) gradient
        return a * jax.lax.rsqrt(jnp.maximum(jnp.sum(a * a, axis=-1, keepdims=True), eps**2))

    pn, tn = unit(pred), unit(target)
    err = (1.0 - jnp.sum(pn * tn, axis=-1)) ** gamma  # [N]
    mask = jnp.asarray(mask, jnp.float32)
    return jnp.sum(err * mask) / jnp.maximum(mask.sum(), 1.0)


def sample_node_mask(key, num_nodes: int, rate: float, node_mask=None):
    """A uniformly random ``round(rate * #valid)`` subset (at least one) of the valid nodes.

    Shapes:
      node_mask ``[N]`` bool or None -> ``[N]`` bool.
    """
    valid = jnp.ones((num_nodes,), bool) if node_mask is None else jnp.asarray(node_mask, bool)
    scores = jnp.where(valid, jax.random.uniform(key, (num_nodes,)), 2.0)
    rank = jnp.argsort(jnp.argsort(scores))  # 0 = smallest score
    k = jnp.maximum(jnp.round(rate * valid.sum()), 1)
    return (rank < k) & valid


class GraphMAE(nn.Module):
    """GAT encoder / GAT decoder masked autoencoder on node features.

    Attributes:
      num_features: input feature width F (the reconstruction target width).
      hidden: encoder width (split over ``heads`` concatenated heads).
      heads: encoder attention heads.
      num_layers: encoder GAT layers (ELU after each, the last included).
      mask_rate: fraction of valid nodes masked per step.
      gamma: SCE exponent (>= 1).
      dropout: feature dropout before each encoder layer.
      attention_dropout: dropout on the encoder's attention coefficients.

    Methods:
      ``__call__(x, senders, receivers, *, edge_mask=None, node_mask=None,
      deterministic=True)`` -> ``(loss, masked [N] bool)``; needs rng stream ``"mask"`` (and
      ``"dropout"`` when not deterministic).
      ``encode(x, senders, receivers, *, edge_mask=None, node_mask=None)`` -> ``[N, hidden]``.

    Shapes:
      x ``[N, F]`` dense float; senders/receivers ``[E]`` int; masks ``[E]`` / ``[N]`` bool.
    """

    num_features: int
    hidden: int = 256
    heads: int = 4
    num_layers: int = 2
    mask_rate: float = 0.5
    gamma: float = 2.0
    dropout: float = 0.2
    attention_dropout: float = 0.1

    def __post_init__(self):
        if not 0.0 < self.mask_rate < 1.0:
            raise ValueError(f"GraphMAE.mask_rate must be in (0, 1), got {self.mask_rate}")
        if self.gamma < 1.0:
            raise ValueError(f"GraphMAE.gamma must be >= 1, got {self.gamma}")
        if self.hidden % self.heads:
            raise ValueError(
                f"GraphMAE: hidden ({self.hidden}) must be divisible by heads ({self.heads})"
            )
        if self.num_layers < 1 or self.num_features < 1:
            raise ValueError("GraphMAE: num_layers and num_features must be >= 1")
        super().__post_init__()

    def setup(self):
        self.mask_token = self.param("mask_token", nn.initializers.zeros, (self.num_features,))
        self.encoder = [
            GATLayer(
                self.hidden,
                heads=self.heads,
                attention_dropout=self.attention_dropout,
                name=f"encoder_{i}",
            )
            for i in range(self.num_layers)
        ]
        self.feature_dropout = nn.Dropout(self.dropout)
        self.encoder_to_decoder = Linear(self.hidden, use_bias=False)
        self.decoder = GATLayer(self.num_features, heads=1, concat=False)

    def encode(self, x, senders, receivers, *, edge_mask=None, node_mask=None, deterministic=True):
        h = x
        for layer in self.encoder:
            h = self.feature_dropout(h, deterministic=deterministic)
            h = nn.elu(
                layer(
                    h,
                    senders,
                    receivers,
                    edge_mask=edge_mask,
                    node_mask=node_mask,
                    deterministic=deterministic,
                )
            )
        return mask_nodes(h, node_mask)

    def __call__(
        self, x, senders, receivers, *, edge_mask=None, node_mask=None, deterministic=True
    ):
        if not isinstance(x, jax.Array | np.ndarray):
            raise ValueError(f"GraphMAE: x must be a dense array, got {type(x).__name__}")
        n = x.shape[0]
        masked = sample_node_mask(self.make_rng("mask"), n, self.mask_rate, node_mask)
        x_in = jnp.where(masked[:, None], self.mask_token, x)  # [N, F]
        kw = dict(edge_mask=edge_mask, node_mask=node_mask)
        h = self.encode(x_in, senders, receivers, deterministic=deterministic, **kw)
        code = self.encoder_to_decoder(h)
        code = jnp.where(masked[:, None], 0.0, code)  # re-mask
        recon = self.decoder(code, senders, receivers, deterministic=deterministic, **kw)
        return sce_loss(recon, x, masked, self.gamma), masked


def pretrain_graphmae(
    model: GraphMAE,
    x,
    senders,
    receivers,
    *,
    epochs: int = 200,
    learning_rate: float = 1e-3,
    weight_decay: float = 2e-4,
    seed: int = 0,
    edge_mask=None,
    node_mask=None,
):
    """Full-graph GraphMAE pretraining with AdamW; returns ``(params, losses [epochs])``.

    Shapes:
      x ``[N, F]`` dense; senders/receivers ``[E]`` int.
    """
    key = jax.random.key(seed)
    key, init_key, mkey = jax.random.split(key, 3)
    kw = dict(edge_mask=edge_mask, node_mask=node_mask)
    params = model.init({"params": init_key, "mask": mkey}, x, senders, receivers, **kw)
    tx = optax.adamw(learning_rate, weight_decay=weight_decay)
    opt_state = tx.init(params)
    graph = (x, senders, receivers)  # jit arguments, not folded constants

    def loss_fn(params, key, graph):
        x, s, r = graph
        mkey, dkey = jax.random.split(key)
        loss, _ = model.apply(
            params, x, s, r, deterministic=False, rngs={"mask": mkey, "dropout": dkey}, **kw
        )
        return loss

    @jax.jit
    def step(params, opt_state, key, graph):
        loss, g = jax.value_and_grad(loss_fn)(params, key, graph)
        updates, opt_state = tx.update(g, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for _ in range(epochs):
        key, k = jax.random.split(key)
        params, opt_state, loss = step(params, opt_state, k, graph)
        losses.append(loss)
    return params, np.asarray(jax.device_get(losses), np.float32)


def linear_probe(
    embeddings,
    labels,
    masks,
    num_classes: int,
    *,
    epochs: int = 300,
    learning_rate: float = 0.01,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> dict:
    """Logistic regression on frozen embeddings, best epoch by validation accuracy.

    Args:
      embeddings: ``[N, D]`` frozen node embeddings.
      labels: ``[N]`` int class ids.
      masks: ``[3, N]`` train / val / test indicators (float or bool).
      num_classes: C.
      epochs: full-batch AdamW steps.
      learning_rate: AdamW learning rate.
      weight_decay: AdamW weight decay.
      seed: initialisation seed.

    Returns:
      ``{"val_accuracy", "test_accuracy", "best_epoch"}`` at the first epoch with the highest
      validation accuracy.
    """
    emb = jax.lax.stop_gradient(jnp.asarray(embeddings, jnp.float32))
    y = jnp.asarray(labels, jnp.int32)
    masks = jnp.asarray(masks, jnp.float32)
    probe = nn.Dense(num_classes)
    params = probe.init(jax.random.key(seed), emb[:1])
    tx = optax.adamw(learning_rate, weight_decay=weight_decay)

    def loss_fn(params):
        ce = optax.softmax_cross_entropy_with_integer_labels(probe.apply(params, emb), y)
        return jnp.sum(ce * masks[0]) / jnp.maximum(masks[0].sum(), 1.0)

    def body(carry, _):
        params, opt_state = carry
        g = jax.grad(loss_fn)(params)
        updates, opt_state = tx.update(g, opt_state, params)
        params = optax.apply_updates(params, updates)
        hit = (probe.apply(params, emb).argmax(-1) == y).astype(jnp.float32)
        acc = (masks * hit).sum(-1) / jnp.maximum(masks.sum(-1), 1.0)  # [3]
        return (params, opt_state), acc

    @jax.jit
    def run(params):
        _, accs = jax.lax.scan(body, (params, tx.init(params)), None, length=epochs)
        return accs  # [epochs, 3]

    accs = np.asarray(run(params))
    best = int(np.argmax(accs[:, 1]))
    return {
        "val_accuracy": float(accs[best, 1]),
        "test_accuracy": float(accs[best, 2]),
        "best_epoch": best,
    }
