"""The rewrite ``regroup``: edges whose concatenated inputs autograd would keep.

An edge that reads several spaces concatenates them, and the first op with parameters
(``linear``, ``conv``) keeps that concatenation for the backward. In a machine where
blocks read all earlier blocks (the dense and convolutional machines, DenseNets) the
concatenations grow with the depth, and together they hold memory quadratic in it,
while the spaces they are made of are kept anyway. For each edge this pass chooses, the
generated ``forward`` calls ``runtime.regroup``: the backward keeps the concatenated
spaces themselves and concatenates them again when it needs them (and runs again the
cheap ops between the concatenation and the layer, ``batchnorm | relu | conv``). An edge
that starts with a ``linear`` on vectors does better: the edges of one call append their
spaces to concatenations they share (``runtime.Columns``), each space copied once, and
the backward reads those (:func:`_columns` records how wide they are made). Outputs
and gradients are bitwise those of the plain form; parameters do not change.

The cost model (docs/performance.md, "regroup"): an edge is chosen when

- it reads two spaces or more, concatenated (not combined by a first ``add`` or ``mul``),
  in a machine not over time, outside solved cycles;
- its first ``linear`` or ``conv`` (that pads in the layer, with zeros) comes after
  nothing but elementwise activations and normalisations
  (:data:`RECOMPUTED`: no dropout, whose masks are random);
- the concatenation holds at least :data:`MIN_NUMBERS` numbers per sample. Below that,
  what it saves is small and what it costs is not: a Python hook per saved tensor and
  one concatenation more in the backward (the dense machine at width 128: depth 8, 912
  numbers, was 1.2x slower with it in a prototype), or for a linear on vectors a call of
  an autograd Function per edge (depth 32: 0.92x the time of the plain form).

The edges one statement of a ``for`` loop made are chosen together (if one of them is),
so that a loop kept as a loop stays one loop.
"""

from __future__ import annotations

import math

from . import ir
from .loops import element
from .ops.conv import _layer_padding

MIN_NUMBERS = 1024  # numbers per sample of a concatenation worth not keeping
LAYERS = frozenset({"linear", "conv"})
# ops run again in the backward: deterministic, the channels and shape unchanged, one
# call of a module or a function on the tensor (runtime.regroup takes them as callables)
RECOMPUTED = frozenset(
    {
        "relu",
        "relu6",
        "silu",
        "mish",
        "hardswish",
        "tanh",
        "sigmoid",
        "softplus",
        "batchnorm",
        "groupnorm",
        "instancenorm",
    }
)


def regroup(program: ir.CheckedProgram) -> ir.CheckedProgram:
    """``program`` with the edges whose concatenation forward does not keep recorded."""
    machines = []
    for checked in program.machines:
        chosen = _choose(checked.machine, checked.structure)
        if chosen:
            columns = _columns(checked.machine, checked.structure, chosen)
            structure = checked.structure.model_copy(
                update={"regrouped": chosen, "regroup_columns": columns}
            )
            checked = checked.model_copy(update={"structure": structure})
        machines.append(checked)
    return program.model_copy(update={"machines": tuple(machines)})


def _choose(machine: ir.Machine, structure: ir.Structure) -> dict[str, int]:
    if machine.time is not None or structure.sizes:
        return {}
    in_cycles = {e for cycle in structure.cycles for e in cycle.edges}
    chosen: dict[str, int] = {}
    loops: set[tuple] = set()  # (loop run, statement) of the edges worth it
    for edge in machine.edges:  # (one pass, cheap for edges of one input: a chain)
        if len(edge.inputs) < 2 or edge.name in in_cycles:
            continue
        shapes = structure.shapes[edge.name]
        at = _layer_index(edge, shapes)
        if at is None or math.prod(shapes[0]) < MIN_NUMBERS:
            continue
        chosen[edge.name] = at
        key = _statement(edge)
        if key is not None:
            loops.add(key)
    if loops:  # the other edges of those statements too (a first pass may read one space)
        for edge in machine.edges:
            if edge.name not in chosen and edge.name not in in_cycles:
                if _statement(edge) in loops:
                    at = _layer_index(edge, structure.shapes[edge.name])
                    if at is not None:
                        chosen[edge.name] = at
    return chosen


def _columns(machine: ir.Machine, structure: ir.Structure, chosen: dict[str, int]):
    """Edge -> the columns of the concatenation it shares, for chosen edges that start
    with a ``linear`` on vectors. In forward (runtime.regroup) such edges append their spaces
    to one buffer, which is made as wide as the widest concatenation of the edges that
    may share it: those of one loop statement, or else those that start from one space
    (a statement's edges all print the same number, so that its loop stays a loop)."""
    groups: dict[str, tuple] = {}
    for edge in machine.edges:
        if chosen.get(edge.name) != 0 or edge.ops[0].kind != "linear":
            continue
        shape = structure.shapes[edge.name][0]
        if len(shape) == 1 and isinstance(shape[0], int):
            groups[edge.name] = _statement(edge) or ("space", edge.inputs[0].space)
    widest: dict[tuple, int] = {}
    for name, group in groups.items():
        widest[group] = max(widest.get(group, 0), structure.shapes[name][0][0])
    return {name: widest[group] for name, group in groups.items()}


def _statement(edge: ir.Edge) -> tuple | None:
    """The loop statement that made the edge: (its loop's run, the edge family)."""
    named = element(edge.name) if edge.loop is not None else None
    return (edge.loop.run, named[0]) if named else None


def _layer_index(edge: ir.Edge, shapes) -> int | None:
    """The index of the edge's first linear or conv, if the edge can be regrouped."""
    if edge.machine is not None:
        return None
    if any(port.delay or port.window for port in edge.inputs):
        return None
    for i, op in enumerate(edge.ops):
        if op.kind in LAYERS:
            if op.kind == "conv" and not _pads_in_layer(op, shapes[i]):
                return None
            return i
        if op.kind not in RECOMPUTED:
            return None
    return None


def _pads_in_layer(op: ir.Op, before: ir.Shape) -> bool:
    """A convolution whose layer pads (with zeros) the tensor it is given, so that the
    tensor it keeps is the one it is given."""
    if op.args.get("padding_mode", "zeros") != "zeros":
        return False
    padding = _layer_padding(op.args, before)
    return padding is not None and not isinstance(padding, str)
