"""The shapes of an edge: what its pipeline reads, the shape after each op, and how a
machine used as an edge fits its spaces. Used by check, and by the inference of the
shapes that spaces leave out (:mod:`infer`)."""

from __future__ import annotations

import math

from . import ir, sequences, symbols
from .diagnostics import Code, Note, Reporter
from .expressions import MAX_ELEMENTS, MAX_SIZE
from .ops import OPS, NeedsOutputs, OpError, combined_shape, format_shape, infer_pipeline


def edge_shapes(machine: ir.Machine, edge: ir.Edge, reporter: Reporter, machines):
    """The shape entering each op of an edge and the shape it produces, checked against the
    edge's spaces (``()`` for a machine used as an edge); None after reporting a problem."""
    if edge.machine is not None:
        check_boundary(machine, edge, machines[edge.machine], reporter)
        return ()
    entering = entering_shape(machine, edge, reporter)
    leaving = product_shape(machine, edge.outputs, reporter, edge, "writes")
    if entering is None or leaving is None:
        return None
    return pipeline_shapes(edge, entering, leaving, reporter)


def entering_shape(machine: ir.Machine, edge: ir.Edge, reporter: Reporter) -> ir.Shape | None:
    """The shape an edge's pipeline reads: its inputs concatenated on the channel axis,
    combined elementwise (``add``, ``mul``), the values of ``attention``, or ids one-hot."""
    spec = OPS[edge.ops[0].kind]
    if spec.combine:
        return _combined_shape(machine, edge, reporter)
    if spec.windows:
        return sequences.attention_shape(machine, edge, reporter)
    if spec.ids:
        return sequences.ids_shape(machine, edge, reporter)
    return product_shape(machine, edge.inputs, reporter, edge, "reads")


def pipeline_shapes(
    edge: ir.Edge, entering: ir.Shape, leaving: ir.Shape | None, reporter: Reporter
) -> tuple[ir.Shape, ...] | None:
    """The shapes through an edge's pipeline from ``entering`` to ``leaving`` (None: not
    known, being inferred; then :class:`NeedsOutputs` passes through unreported)."""
    try:
        return _inferred(edge.ops, entering, leaving)
    except NeedsOutputs:
        raise
    except OpError as exc:
        if exc.index is not None:
            span = edge.ops[exc.index].span
        else:  # the whole pipeline
            first, last = edge.ops[0].span, edge.ops[-1].span
            span = first.model_copy(
                update={"end_line": last.end_line, "end_column": last.end_column}
            )
        reporter.error(Code.SHAPE, f"edge {edge.name!r}: {exc.message}", span, hint=exc.hint)
        return None


# (ops, entering, leaving) -> the shapes through the pipeline, for pipelines that passed:
# the passes of a loop repeat a few pipelines on a few shapes (a 100,000-edge chain: one)
_INFERRED: dict[tuple, tuple[ir.Shape, ...]] = {}
_INFERRED_MAX = 10_000


def _inferred(ops: tuple[ir.Op, ...], entering, leaving) -> tuple[ir.Shape, ...]:
    """:func:`infer_pipeline` and :func:`_check_sizes` (raising what they raise), the
    result of an equal pipeline on equal shapes remembered: both depend on nothing else."""
    key, shapes = None, None
    # (sizes known at call time compare as relations, not as values: not remembered)
    if all(type(n) is int for n in (*entering, *(leaving or ()))):
        try:
            key = (  # (with the values' types: 1, 1.0 and True are equal keys)
                tuple(
                    (op.kind, *op.args.items(), *map(type, op.args.values()), op.extra)
                    + tuple(op.extra_kw.items())
                    for op in ops
                ),
                entering,
                leaving,
            )
            shapes = _INFERRED.get(key)
        except TypeError:  # an unhashable argument: not remembered
            key = None
    if shapes is None:
        shapes = infer_pipeline(ops, entering, leaving)
        _check_sizes(ops, shapes)
        if key is not None:
            if len(_INFERRED) >= _INFERRED_MAX:
                _INFERRED.clear()
            _INFERRED[key] = shapes
    return shapes


def _check_sizes(ops: tuple[ir.Op, ...], shapes: tuple[ir.Shape, ...]) -> None:
    """Every shape inside a pipeline within the limits on spaces (an op's ``out=`` or
    ``upsample(scale)`` can make one no tensor could hold)."""
    for i, shape in enumerate(shapes[1:]):
        known = [n for n in shape if isinstance(n, int)]  # a size known at call time: unbounded
        if max(known, default=1) > MAX_SIZE or math.prod(known) > MAX_ELEMENTS:
            raise OpError(
                f"{ops[i].kind} makes a shape {format_shape(shape)}, beyond the limits "
                f"(a size at most {MAX_SIZE:,}, at most {MAX_ELEMENTS:,} numbers per sample)",
                i,
            )


def check_boundary(
    machine: ir.Machine,
    edge: ir.Edge,
    sub: ir.Machine,
    reporter: Reporter,
    sides: tuple[str, ...] = ("inputs", "outputs"),
) -> None:
    """A sub-machine edge's spaces map one by one onto the sub-machine's inputs and outputs."""
    used = ir.machine_call(sub.name, sub.params)
    binding = symbols.sub_binding(machine, edge, sub)  # its size symbols, as sizes here
    for side, ports, role in (
        ("inputs", edge.inputs, ir.Role.INPUT),
        ("outputs", edge.outputs, ir.Role.OUTPUT),
    ):
        if side not in sides:
            continue
        spaces = [s for s in sub.spaces if s.role is role]
        if len(ports) != len(spaces):
            mine = " × ".join(p.space for p in ports)
            theirs = ", ".join(f"{s.name} {format_shape(s.shape)}" for s in spaces)
            reporter.error(
                Code.SUBMACHINE,
                f"edge {edge.name!r} has {len(ports)} {side if len(ports) != 1 else side[:-1]} "
                f"({mine}), but {used} has {len(spaces)}: {theirs}",
                edge.span,
                notes=(Note(message=f"{sub.name} is defined here", span=sub.span),),
                hint=f"the edge's {side} map one by one, in order, onto the machine's",
            )
            continue
        for port, space in zip(ports, spaces, strict=True):
            mine = machine.space(port.space)
            shape = mine.shape
            theirs = symbols.substitute(space.shape, binding)
            if mine.ids != space.ids:
                reporter.error(
                    Code.SUBMACHINE,
                    f"edge {edge.name!r} maps {port.space} ({sequences.kind_text(mine)}) onto "
                    f"the {side[:-1]} {space.name} ({sequences.kind_text(space)}) of {used}",
                    port.span,
                    notes=(Note(message=f"{space.name} is declared here", span=space.span),),
                )
            elif shape != theirs:
                given = format_shape(space.shape)
                if theirs != space.shape:
                    given += f", here {format_shape(theirs)}"
                reporter.error(
                    Code.SUBMACHINE,
                    f"edge {edge.name!r} maps {port.space} {format_shape(shape)} onto the "
                    f"{side[:-1]} {space.name} {given} of {used}",
                    port.span,
                    notes=(Note(message=f"{space.name} is declared here", span=space.span),),
                )


def _combined_shape(machine: ir.Machine, edge: ir.Edge, reporter: Reporter) -> ir.Shape | None:
    """The shape of inputs that ``add`` / ``mul`` combine elementwise."""
    shapes = [machine.space(port.space).shape for port in edge.inputs]
    full = combined_shape(shapes)
    if full is not None:
        return full
    widest = max(range(len(shapes)), key=lambda i: len(shapes[i]))
    first = edge.inputs[widest]
    for port, shape in zip(edge.inputs, shapes, strict=True):
        if shape != shapes[widest] and shape != shapes[widest][:1]:
            verb = {"+": "adds", "*": "multiplies"}[OPS[edge.ops[0].kind].combine]
            reporter.error(
                Code.SHAPE,
                f"edge {edge.name!r} {verb} spaces of different shapes: "
                f"{first.space} {format_shape(shapes[widest])} and "
                f"{port.space} {format_shape(shape)}",
                port.span,
                hint=f"{edge.ops[0].kind} needs inputs of one shape (or [C] vectors, "
                "broadcast over the spatial axes)",
            )
            break
    return None


def product_shape(machine, ports, reporter, edge, verb) -> ir.Shape | None:
    """The shape of a product of spaces: channels add up, other axes must agree."""
    shapes = [machine.space(port.space).shape for port in ports]
    first = shapes[0]
    for port, shape in zip(ports, shapes, strict=True):
        if shape[1:] != first[1:]:
            reporter.error(
                Code.SHAPE,
                f"edge {edge.name!r} {verb} spaces whose shapes differ beyond the channel axis: "
                f"{ports[0].space} {format_shape(first)} and {port.space} {format_shape(shape)}",
                port.span,
                hint="a product of spaces joins them along the channel axis; the other axes "
                "must agree",
            )
            return None
    return (sum(shape[0] for shape in shapes), *first[1:])
