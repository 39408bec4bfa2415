"""Which attention implementation a compiled program really uses, per :func:`attention` call.

:func:`explain_attention` lowers and compiles a function while recording every
:func:`jaxfm.ops.attention` call traced (each runs under a ``jax.named_scope`` named
``jaxfm_attention_<i>_<impl>``), then reads the compiled HLO: an instruction belongs to a call when
its ``op_name`` metadata contains the call's scope, forward or backward (``transpose(...)`` in the
name). For each call it lists the custom calls found (``__cudnn$fmha...`` for cuDNN flash
attention, ``tpu_custom_call`` for the Pallas splash kernel on TPU) and says which path ran. Pallas
interpret mode (splash off TPU) compiles to ordinary HLO loops, so it shows no kernel.
"""

from __future__ import annotations

import re

import jax

from jaxfm.ops.attention import record_attention_calls

__all__ = ["attribute_calls", "explain_attention", "format_explanation"]

_TARGET = re.compile(r'custom_call_target="([^"]+)"')
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_KERNEL_NAME = re.compile(r"(splash_m[hq]a_\w+)")

_EXPECTED = {
    "cudnn": "__cudnn$fmha",
    "cudnn_packed": "__cudnn$fmha",
    "splash": "tpu_custom_call",
}


def _module_path(op_name: str, tag: str) -> str:
    """The Flax/named-scope path in front of the call's scope, without ``jit(...)``/``jvp(...)``."""
    parts = []
    for part in op_name.split(tag)[0].split("/"):
        if not part or re.match(r"^p?jit\(", part):
            continue
        while m := re.match(r"^(?:jvp|transpose|checkpoint|remat|vmap)\((.*)\)$", part):
            part = m.group(1)
        parts.append(part)
    return "/".join(parts)


def _scan(hlo_text: str, tags: list[str]) -> dict[str, dict]:
    found = {t: dict(fwd=set(), bwd=set(), ops=0, bwd_ops=0, path="") for t in tags}
    # longest first: ``jaxfm_attention_1_`` is a prefix of ``jaxfm_attention_12_``
    ordered = sorted(tags, key=len, reverse=True)
    for line in hlo_text.splitlines():
        m = _OP_NAME.search(line)
        if not m:
            continue
        op_name = m.group(1)
        tag = next((t for t in ordered if t in op_name), None)
        if tag is None:
            continue
        rec = found[tag]
        rec["ops"] += 1
        rec["bwd_ops"] += "transpose(" in op_name
        if not rec["path"]:
            rec["path"] = _module_path(op_name, tag)
        target = _TARGET.search(line)
        if target:
            name = target.group(1)
            kernel = _KERNEL_NAME.search(line)
            if name == "tpu_custom_call" and kernel:
                name = f"{name}:{kernel.group(1)}"
            rec["bwd" if "transpose(" in op_name else "fwd"].add(name)
    return found


def _verdict(impl: str, rec: dict, backend: str) -> str:
    kernels = rec["fwd"] | rec["bwd"]
    if rec["ops"] == 0:
        return "not in the compiled program (dead code or folded)"
    want = _EXPECTED.get(impl)
    if want and any(k.startswith(want) for k in kernels):
        return "flash kernel" if impl != "splash" else "splash kernel (TPU)"
    if impl == "splash" and backend != "tpu":
        return "splash in Pallas interpret mode (HLO loops; not a TPU kernel)"
    if want:
        return f"EXPECTED {want}, none found: fell back to XLA"
    if any(k.startswith("__cudnn$fmha") for k in kernels):
        return "XLA rewrote it to cuDNN"
    return "XLA (dot/softmax fusions, no kernel)" if impl == "xla" else impl


def explain_attention(fn, *args, **kwargs) -> list[dict]:
    """Compiles ``jax.jit(fn)(*args, **kwargs)`` and reports each attention call's path.

    Args:
      fn: the function to lower (e.g. the gradient of a training loss).
      *args: its arguments (arrays or ``jax.ShapeDtypeStruct``; nothing is executed).
      **kwargs: keyword arguments of ``fn``.

    Returns:
      One dict per recorded call, in trace order: ``call``, ``path`` (module path from the HLO
      metadata), ``implementation`` (what :func:`~jaxfm.ops.attention` chose), ``requested``,
      ``q``, ``k``, ``dtype``, ``masking``, ``fwd_kernels`` / ``bwd_kernels`` (custom-call
      targets in the compiled HLO), ``hlo_ops`` / ``hlo_bwd_ops`` (instructions of the call:
      all / backward) and ``verdict``.
    """
    with record_attention_calls() as calls:
        lowered = jax.jit(fn).lower(*args, **kwargs)
    return attribute_calls(calls, lowered.compile().as_text())


def attribute_calls(calls: list[dict], hlo_text: str) -> list[dict]:
    """The rows of :func:`explain_attention` from recorded calls and a compiled HLO text.

    Args:
      calls: the records of :func:`~jaxfm.ops.attention.record_attention_calls` taken while
        the program was traced.
      hlo_text: ``compiled.as_text()`` of that program.
    """
    found = _scan(hlo_text, [c["tag"] for c in calls])
    backend = jax.default_backend()
    rows = []
    for i, c in enumerate(calls):
        rec = found[c["tag"]]
        rows.append(
            dict(
                call=i,
                path=rec["path"],
                implementation=c["implementation"],
                requested=c["requested"],
                q=c["q"],
                k=c["k"],
                dtype=c["dtype"],
                masking=c["masking"],
                fwd_kernels=sorted(rec["fwd"]),
                bwd_kernels=sorted(rec["bwd"]),
                hlo_ops=rec["ops"],
                hlo_bwd_ops=rec["bwd_ops"],
                verdict=_verdict(c["implementation"], rec, backend),
            )
        )
    return rows


def format_explanation(rows: list[dict]) -> str:
    """A Markdown table of :func:`explain_attention` rows."""
    lines = [
        f"attention calls in the compiled program (backend: {jax.default_backend()})",
        "",
        "| # | module | q -> k | dtype | masking | impl | fwd kernels | bwd kernels | HLO ops "
        "(bwd) | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        shape = lambda s: "x".join(map(str, s))
        lines.append(
            f"| {r['call']} | {r['path'] or '-'} | {shape(r['q'])} -> {shape(r['k'])} | "
            f"{r['dtype']} | {','.join(r['masking']) or '-'} | {r['implementation']} | "
            f"{', '.join(r['fwd_kernels']) or '-'} | {', '.join(r['bwd_kernels']) or '-'} | "
            f"{r['hlo_ops']} ({r['hlo_bwd_ops']}) | {r['verdict']} |"
        )
    return "\n".join(lines)
