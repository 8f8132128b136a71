"""Code for the rewrite ``regroup`` (compiler/regroup.py): an edge whose concatenated
inputs ``forward`` does not keep for the backward calls ``runtime.regroup``::

    # machc: regroup: the backward keeps these spaces, not their concatenation (...)
    h[i] = torch.relu(runtime.regroup(self.g[str(i)], [x, *[h[j] for j in range(1, i)]]))

``runtime.regroup(layer, parts, prefix)`` is ``layer(prefix(torch.cat(parts, dim=1)))``:
the ops before the layer are given as the callables their code calls.
"""

from __future__ import annotations

from . import ir
from .ops import CHANNEL_DIM, OPS
from .source_text import py_tuple

_HOLE = "<x>"  # (no identifier) where an op's call puts its input: one call on it, or not


def regrouped(lowering, edge: ir.Edge, product: str) -> tuple[str, str] | None:
    """(comment, expression) of the edge's ``product`` through its ops up to its layer,
    for ``forward``; None where the product is no concatenation (an edge of a loop's first
    pass may read one space) or an op does not print as one call on its input."""
    layer_at = lowering.structure.regrouped[edge.name]
    head, tail = "torch.cat(", f", dim={CHANNEL_DIM})"
    if not (product.startswith(head) and product.endswith(tail)):
        return None
    parts = product[len(head) : -len(tail)]
    shapes = lowering.structure.shapes[edge.name]
    calls = []
    for i in range(layer_at + 1):
        op = edge.ops[i]
        layer = lowering.layer_exprs.get((edge.name, i))
        site = lowering._site(edge, op)
        text = OPS[op.kind].source(site, _HOLE, layer, shapes[i], shapes[i + 1])
        if not text.endswith(f"({_HOLE})") or text.count(_HOLE) != 1:
            return None
        calls.append(text[: -len(_HOLE) - 2])
    *prefix, layer = calls
    again = ", ".join(op.kind for op in edge.ops[:layer_at])
    comment = (
        "# machc: regroup: the backward keeps these spaces, not their concatenation"
        + (f", and runs {again} again" if again else "")
        + " (--no-regroup keeps it)"
    )
    if not prefix:
        return comment, f"runtime.regroup({layer}, {parts})"
    return comment, f"runtime.regroup({layer}, {parts}, {py_tuple(prefix)})"
