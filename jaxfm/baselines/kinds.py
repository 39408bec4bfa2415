"""The one registry of GNN kinds: a kind's name -> its layer under the shared layer contract.

Every model that stacks layers by kind name looks the layer class up here:
:class:`jaxfm.baselines.gnn.GNN` (full-graph node classification, every kind),
:class:`jaxfm.baselines.node_gnn.NodeGNN` (the FIMP tasks, the message-passing kinds) and the
graph classifiers. The contract: a ``features`` attribute and
``__call__(h, senders, receivers, *, edge_mask=None, node_mask=None, deterministic=True)``.

``mlp`` is the no-graph control in the same stacks: its layer is a linear map of each node's own
features, so a ``GNN("mlp")`` has the widths, dropout and activations of the graph models and
differs from them only by ignoring the edges.
"""

from __future__ import annotations

import flax.linen as nn

from jaxfm.baselines.gat import GATLayer
from jaxfm.baselines.gcn import GCNLayer, Linear, mask_nodes
from jaxfm.baselines.gin import GINLayer
from jaxfm.baselines.gps import GPSLayer
from jaxfm.baselines.sage import SAGELayer

__all__ = ["KINDS", "LAYERS", "MESSAGE_PASSING_KINDS", "NoGraphLayer", "layer_class"]


class NoGraphLayer(nn.Module):
    """The ``mlp`` kind's layer: ``h W + b`` per node, edges ignored.

    Attributes:
      features: output width.
      use_bias: add ``bias``.

    Parameters: ``linear/kernel [F, features]``, ``linear/bias [features]``.

    Shapes:
      h ``[N, F]`` (array or BCOO) -> ``[N, features]`` (padded nodes zeroed).
    """

    features: int
    use_bias: bool = True

    @nn.compact
    def __call__(
        self, h, senders=None, receivers=None, *, edge_mask=None, node_mask=None, deterministic=True
    ):
        del senders, receivers, edge_mask, deterministic
        return mask_nodes(
            Linear(self.features, use_bias=self.use_bias, name="linear")(h), node_mask
        )


#: kind -> layer class (the contract above).
LAYERS: dict[str, type[nn.Module]] = {
    "gcn": GCNLayer,
    "sage": SAGELayer,
    "gat": GATLayer,
    "gin": GINLayer,
    "gps": GPSLayer,
    "mlp": NoGraphLayer,
}
#: Every kind, in table order.
KINDS = tuple(LAYERS)
#: The kinds that pass messages along edges (all but ``mlp``).
MESSAGE_PASSING_KINDS = tuple(k for k in KINDS if k != "mlp")


def layer_class(kind: str, allowed: tuple[str, ...] = KINDS) -> type[nn.Module]:
    """The layer class of ``kind``.

    Raises:
      ValueError: ``kind`` is not one of ``allowed``.
    """
    if kind not in allowed or kind not in LAYERS:
        raise ValueError(f"kind must be one of {allowed}, got {kind!r}")
    return LAYERS[kind]
