"""Device meshes and parameter sharding by logical axis names (FSDP over ``data`` x ``fsdp``).

A mesh has three named axes: ``data`` (pure data parallelism: full copies of the state),
``fsdp`` (data parallelism whose devices also split the parameters and optimizer state) and
``model`` (splits parameter storage further; this version replicates compute across it). Mesh
shapes are written ``"data=4,fsdp=2"``; ``-1`` takes the remaining devices; the default puts all
devices on ``fsdp`` (pure FSDP).

Every parameter gets *logical* axis names from path rules (:data:`LOGICAL_RULES`, first regex
match on the ``/`` path, as :mod:`jaxfm.params`); :data:`AXIS_RULES` maps logical
names to mesh axes. A dimension that a mesh axis does not divide stays replicated. The same rules
apply to optimizer state, whose leaves repeat the parameter paths (``.../mu/encoder/...``).

Example:
  >>> tuple(spec_for("encoder/layer_0/mlp/fc1/kernel", (256, 2048), {"fsdp": 8, "model": 2}))
  ('fsdp', 'model')
  >>> tuple(spec_for("encoder/norm/scale", (256,), {"fsdp": 8}))
  (None,)
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxfm.params import path_of

__all__ = [
    "AXIS_RULES",
    "BATCH_AXES",
    "LOGICAL_RULES",
    "MESH_AXES",
    "bytes_per_device",
    "data_parallel_size",
    "logical_axes",
    "make_mesh",
    "parse_mesh",
    "shardings_for",
    "spec_for",
    "specs_for",
]

MESH_AXES = ("data", "fsdp", "model")
BATCH_AXES = ("data", "fsdp")  # the packed buckets of a step are split over these

# (path regex, logical names of the dims). Parameters matching none are replicated; the rank of
# the names must equal the leaf's rank (else the rule is skipped).
LOGICAL_RULES: tuple[tuple[str, tuple[str | None, ...]], ...] = (
    (r"attention/(query|key|value)/kernel$", ("embed", "heads", "head_dim")),
    (r"attention/(query|key|value)/bias$", ("heads", "head_dim")),
    (r"attention/out/kernel$", ("heads", "head_dim", "embed")),
    (r"mlp/fc1/kernel$", ("embed", "mlp")),
    (r"mlp/fc1/bias$", ("mlp",)),
    (r"mlp/fc2/kernel$", ("mlp", "embed")),
    (r"encoder/latents$", ("latents", "embed")),
    (r"type_embedding$", (None, "embed")),
    (r"feature_mlp/kernel_\d+$", ("datasets", "feature_in", "feature_out")),
    (r"heads/kernel$", ("datasets", "embed", "classes")),
    (r"heads/reg_kernel$", ("datasets", "embed")),
    (r"graph_heads/kernel$", ("datasets", "embed", "classes")),
)

# logical name -> mesh axis (absent / None: replicated).
AXIS_RULES: Mapping[str, str | None] = {
    "embed": "fsdp",
    "feature_in": "fsdp",
    "mlp": "model",
    "heads": "model",
}


def parse_mesh(spec: str | Mapping[str, int] | None, num_devices: int) -> dict[str, int]:
    """``"data=4,fsdp=2"`` -> ``{"data": 4, "fsdp": 2, "model": 1}`` for ``num_devices``.

    Axes left out have size 1, except that with no axis given at all every device goes on
    ``fsdp``. One axis may be ``-1`` (the devices the others leave).

    Raises:
      ValueError: unknown axis, malformed entry, or sizes whose product is not ``num_devices``.
    """
    if spec is None or spec == "" or spec == {}:
        return {"data": 1, "fsdp": num_devices, "model": 1}
    if isinstance(spec, str):
        sizes: dict[str, int] = {}
        for part in spec.split(","):
            name, sep, value = part.strip().partition("=")
            try:
                sizes[name.strip()] = int(value)
            except ValueError:
                sep = ""
            if not sep:
                raise ValueError(
                    f"--mesh {spec!r}: entries must look like data=4 (axes {MESH_AXES}, -1 = rest)"
                ) from None
    else:
        sizes = {str(k): int(v) for k, v in spec.items()}
    unknown = sorted(set(sizes) - set(MESH_AXES))
    if unknown:
        raise ValueError(f"--mesh {spec!r}: unknown axis {unknown}; the axes are {MESH_AXES}")
    rest = [k for k, v in sizes.items() if v == -1]
    if len(rest) > 1 or any(v == 0 or v < -1 for v in sizes.values()):
        raise ValueError(f"--mesh {spec!r}: sizes must be >= 1, with at most one -1")
    shape = {a: sizes.get(a, 1) for a in MESH_AXES}
    known = math.prod(v for v in shape.values() if v != -1)
    if rest:
        if num_devices % known:
            raise ValueError(
                f"--mesh {spec!r}: {num_devices} devices are not divisible by the fixed axes "
                f"(product {known})"
            )
        shape[rest[0]] = num_devices // known
    if math.prod(shape.values()) != num_devices:
        raise ValueError(
            f"--mesh {spec!r}: the axis sizes multiply to {math.prod(shape.values())}, but there "
            f"are {num_devices} devices (jax.devices()); use -1 for the remaining axis"
        )
    return shape


def make_mesh(spec: str | Mapping[str, int] | None = None, devices=None) -> Mesh:
    """A ``Mesh`` with axes ``(data, fsdp, model)`` over ``devices`` (default: all)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = parse_mesh(spec, len(devices))
    if len(devices) == len(jax.devices()) and jax.process_count() == 1:
        grid = jax.make_mesh(
            tuple(shape[a] for a in MESH_AXES),
            MESH_AXES,
            axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES),
            devices=devices,
        ).devices
    else:  # a subset, or several processes: process-major device order keeps batches local
        devices = sorted(devices, key=lambda d: (d.process_index, d.id))
        grid = np.asarray(devices, dtype=object).reshape(tuple(shape[a] for a in MESH_AXES))
    return Mesh(grid, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def data_parallel_size(mesh_shape: Mapping[str, int]) -> int:
    """Devices that each get their own buckets: ``data x fsdp``."""
    return int(math.prod(mesh_shape.get(a, 1) for a in BATCH_AXES))


def _logical(path: str, rank: int, rules) -> tuple[str | None, ...]:
    for pattern, names in rules:
        if len(names) == rank and re.search(pattern, path):
            return tuple(names)
    return (None,) * rank


def spec_for(
    path: str,
    shape: Sequence[int],
    mesh_shape: Mapping[str, int],
    *,
    logical_rules=LOGICAL_RULES,
    axis_rules: Mapping[str, str | None] = AXIS_RULES,
) -> P:
    """PartitionSpec of one leaf: logical names -> mesh axes, dropped where they do not divide."""
    used: set[str] = set()
    out: list[str | None] = []
    for dim, name in zip(shape, _logical(path, len(shape), logical_rules), strict=True):
        axis = axis_rules.get(name) if name is not None else None
        size = mesh_shape.get(axis, 1) if axis else 1
        if axis is None or size == 1 or axis in used or dim % size:
            out.append(None)
        else:
            out.append(axis)
            used.add(axis)
    return P(*out)


def _leaves_with_paths(tree) -> tuple[list[tuple[str, Any]], Any]:
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    return [(path_of(kp), leaf) for kp, leaf in flat], treedef


def specs_for(tree, mesh_shape: Mapping[str, int], **rules) -> Any:
    """PartitionSpec tree for any tree of arrays / ShapeDtypeStructs (params, optimizer state)."""
    flat, treedef = _leaves_with_paths(tree)
    specs = [spec_for(p, np.shape(x), mesh_shape, **rules) for p, x in flat]
    return jax.tree_util.tree_unflatten(treedef, specs)


def shardings_for(tree, mesh: Mesh, **rules) -> Any:
    """``NamedSharding`` tree of :func:`specs_for` on ``mesh``."""
    shape = dict(mesh.shape)
    return jax.tree.map(
        lambda s: NamedSharding(mesh, s),
        specs_for(tree, shape, **rules),
        is_leaf=lambda x: isinstance(x, P),
    )


def logical_axes(tree, *, logical_rules=LOGICAL_RULES) -> Any:
    """Tree of logical axis-name tuples (``None`` entries are replicated dims)."""
    flat, treedef = _leaves_with_paths(tree)
    names = [_logical(p, np.ndim(x), logical_rules) for p, x in flat]
    return jax.tree_util.tree_unflatten(treedef, names)


def bytes_per_device(tree, mesh_shape: Mapping[str, int], **rules) -> tuple[int, int]:
    """``(total bytes, bytes held by one device)`` of ``tree`` sharded by the rules."""
    flat, _ = _leaves_with_paths(tree)
    total = per_device = 0
    for path, x in flat:
        shape, itemsize = np.shape(x), np.dtype(x.dtype).itemsize
        spec = spec_for(path, shape, mesh_shape, **rules)
        local = [d // (mesh_shape[a] if a else 1) for d, a in zip(shape, spec, strict=True)]
        total += math.prod(shape) * itemsize
        per_device += math.prod(local) * itemsize
    return total, per_device
