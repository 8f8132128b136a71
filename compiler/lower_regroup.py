"""Code for the rewrite ``regroup`` (compiler/regroup.py): an edge whose concatenated
inputs ``forward`` does not keep for the backward calls ``runtime.regroup``::

    # machc: regroup: the backward keeps these spaces, not their concatenation (...)
    h[i] = torch.relu(runtime.regroup(self.g[str(i)], [x, *[h[j] for j in range(1, i)]]))

``runtime.regroup(layer, parts, prefix)`` is ``layer(prefix(torch.cat(parts, dim=1)))``:
the ops before the layer are given as the callables their code calls. An edge that starts
with a ``linear`` on vectors is given the ``runtime.Columns`` that ``forward`` made at its
start, where such edges append their spaces to concatenations they share, and ``width``,
the widest of the edges like it (structure ``regroup_columns``).
"""

from __future__ import annotations

from . import ir
from .ops import CHANNEL_DIM, OPS
from .source_text import py_tuple

_HOLE = "<x>"  # (no identifier) where an op's call puts its input: one call on it, or not


def columns(local: str) -> list[str]:
    """The statements at the start of ``forward`` that make ``local``: the concatenations
    its regrouped linear edges share."""
    return [
        "# machc: regroup: linear edges on vectors append their spaces to concatenations",
        "# they share: each space is copied once, not once per edge (--no-regroup)",
        f"{local} = runtime.Columns()",
    ]


def regrouped(lowering, edge: ir.Edge, product: str, shared: str) -> tuple[str, str] | None:
    """(comment, expression) of the edge's ``product`` through its ops up to its layer,
    for ``forward`` (``shared``: the local holding the concatenations the linear edges of
    vectors share); None where the product is no concatenation (an edge of a loop's first
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
    width = lowering.structure.regroup_columns.get(edge.name)
    if width is not None:
        comment = f"# machc: regroup: appends to a concatenation {shared} holds ({width} wide)"
        return comment, f"runtime.regroup({layer}, {parts}, shared={shared}, width={width})"
    again = ", ".join(op.kind for op in edge.ops[:layer_at])
    comment = (
        "# machc: regroup: the backward keeps these spaces, not their concatenation"
        + (f", and runs {again} again" if again else "")
        + " (--no-regroup keeps it)"
    )
    if not prefix:
        return comment, f"runtime.regroup({layer}, {parts})"
    return comment, f"runtime.regroup({layer}, {parts}, {py_tuple(prefix)})"
