"""GPS graph-transformer layer (Rampasek et al., 2022, eqs. 6-11).

``h_M = LN(h + Dropout(MPNN(h)))``, ``h_T = LN(h + Dropout(MHA(h)))``,
``h' = LN((h_M + h_T) + Dropout(FFN(h_M + h_T)))``. The local MPNN is a :class:`GINLayer`; the
global part is full multi-head self-attention over the valid nodes through
:func:`jaxfm.ops.attention` (``node_mask`` is its key mask), so it costs ``O(N^2)`` memory and
time: callers bound N (see ``BaselineConfig.gps_max_nodes``). Positional/structural encodings are
not part of the layer.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from jaxfm.baselines.gcn import Linear, mask_nodes
from jaxfm.baselines.gin import GINLayer
from jaxfm.ops import attention

__all__ = ["GPSLayer"]


class GPSLayer(nn.Module):
    """One GPS layer (GIN local + global attention + FFN) under the shared contract.

    Attributes:
      features: model width D (also the output width); inputs of another width are first
        mapped by a ``input`` linear layer.
      heads: attention heads H (must divide ``features``).
      dropout: dropout after the MPNN, the attention and inside/after the FFN (rng ``"dropout"``).
      ffn_ratio: FFN hidden width is ``ffn_ratio * features``.
      implementation: forwarded to :func:`jaxfm.ops.attention` (``None`` = auto). Static.

    Parameters: ``local`` (GIN), ``query|key|value|out/{kernel,bias}``, ``ffn_in``, ``ffn_out``,
    ``norm_local``, ``norm_attn``, ``norm_ffn`` (LayerNorm), and ``input`` if widths differ.

    Shapes:
      h ``[N, F]``; senders/receivers ``[E]`` int; edge_mask ``[E]`` bool; node_mask ``[N]`` bool;
      segment_ids ``[N]`` int (the graph of each node, for a batch of several graphs: global
      attention stays inside a graph; ``None`` = one graph) -> ``[N, features]`` (padded nodes
      zeroed; they never reach valid nodes).

    Raises:
      ValueError: if ``heads`` does not divide ``features``.
    """

    features: int
    heads: int = 4
    dropout: float = 0.0
    ffn_ratio: int = 2
    implementation: str | None = None

    @nn.compact
    def __call__(
        self,
        h,
        senders,
        receivers,
        *,
        edge_mask=None,
        node_mask=None,
        deterministic=True,
        segment_ids=None,
    ):
        if self.features % self.heads:
            raise ValueError(
                f"GPSLayer: features ({self.features}) must be divisible by heads ({self.heads})"
            )
        n = h.shape[0]
        d, nh = self.features, self.heads
        if h.shape[-1] != d:
            h = Linear(d, name="input")(h)
        h = mask_nodes(h, node_mask)  # padded rows are zero values for the attention too

        def drop(x):
            return nn.Dropout(self.dropout)(x, deterministic=deterministic)

        local = GINLayer(d, name="local")(
            h, senders, receivers, edge_mask=edge_mask, node_mask=node_mask
        )
        h_local = nn.LayerNorm(name="norm_local")(h + drop(local))

        q = Linear(d, name="query")(h).reshape(1, n, nh, d // nh)  # [1, N, H, Dh]
        k = Linear(d, name="key")(h).reshape(1, n, nh, d // nh)
        v = Linear(d, name="value")(h).reshape(1, n, nh, d // nh)
        kv_mask = None if node_mask is None else jnp.asarray(node_mask, bool)[None]  # [1, N]
        seg = None  # jaxfm.ops.attention reserves segment id 0 for padding: graphs are 1, 2, ...
        if segment_ids is not None:
            seg = jnp.asarray(segment_ids, jnp.int32)[None] + 1  # [1, N]
        att = attention(
            q,
            k,
            v,
            q_segment_ids=seg,
            kv_segment_ids=seg,
            kv_mask=kv_mask,
            implementation=self.implementation,
        )
        att = Linear(d, name="out")(att.reshape(n, d))  # [N, D]
        h_attn = nn.LayerNorm(name="norm_attn")(h + drop(att))

        y = h_local + h_attn
        ffn = Linear(self.ffn_ratio * d, name="ffn_in")(y)
        ffn = Linear(d, name="ffn_out")(drop(nn.relu(ffn)))
        out = nn.LayerNorm(name="norm_ffn")(y + drop(ffn))
        return mask_nodes(out, node_mask)
