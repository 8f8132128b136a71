"""Size symbols of a machine: where they are bound, how a machine used as an edge binds
its own, the smallest sizes a machine takes, and sizes for example inputs.

A size symbol (``H`` of ``input img : [3, H, W]``) is bound by the inputs when the
machine is called: each symbol must be an axis of an input by itself, and spaces
inside the machine may use it in expressions (``space h : [c, H // 2]``). Sizes are
arithmetic on symbols (:mod:`sizes`); check records the relations between them that
hold for some sizes only, and generated code checks those with the sizes it gets.
"""

from __future__ import annotations

import keyword
import math

from . import ir
from .diagnostics import Code, Note, Reporter
from .expressions import did_you_mean
from .names import ADJOINT_LOCALS, METHOD_LOCALS, MODULE_NAMES, TIME_LOCALS
from .sizes import Size, minimum, relation, symbols_of, truth

EXAMPLE_SIZE = 32  # the size example inputs give a symbol (more where relations need it)
_RESERVED = METHOD_LOCALS | MODULE_NAMES | TIME_LOCALS | ADJOINT_LOCALS


def bound(machine: ir.Machine) -> dict[str, tuple[str, int]]:
    """Symbol -> (the input, the axis) that binds it, in the order inputs declare them."""
    found: dict[str, tuple[str, int]] = {}
    for space in machine.spaces:
        if space.role is not ir.Role.INPUT or space.shape is None:
            continue
        for axis, n in enumerate(space.shape):
            name = plain_symbol(n)
            if name is not None and name not in found:
                found[name] = (space.name, axis)
    return found


def plain_symbol(n: int | Size) -> str | None:
    """The symbol's name if ``n`` is one symbol by itself (``H``, not ``H // 2``)."""
    if isinstance(n, Size) and not n.const and len(n.terms) == 1 and n.terms[0][1] == 1:
        names = list(n.symbols())
        if len(names) == 1 and str(n) == names[0]:
            return names[0]
    return None


def check_symbols(machine: ir.Machine, reporter: Reporter) -> bool:
    """Every symbol bound by an input, named so generated code can use it, and used only
    where machc supports it; False after reporting a problem."""
    errors = reporter.error_count
    binding = bound(machine)
    for space in machine.spaces:
        used = symbols_of(space.shape or ())
        if not used:
            continue
        if machine.time is not None or machine.solves:
            what = "a machine over time" if machine.time is not None else "a machine with cycles"
            reporter.error(
                Code.SIZE,
                f"{space.name!r} has a size known only at call time "
                f"({', '.join(sorted(used))}), which {what} does not support yet",
                space.span,
                hint="declare its sizes as numbers (or parameters)",
            )
            return False
        if space.role is ir.Role.INPUT:
            for n in space.shape[1:]:
                if isinstance(n, Size) and plain_symbol(n) is None:
                    reporter.error(
                        Code.SIZE,
                        f"input {space.name!r} has an axis of size {n}: an input's axis is a "
                        "number or one size symbol by itself",
                        space.span,
                        hint="name the axis (input x : [3, H, W]) and write the relation in "
                        "the spaces that need it",
                    )
        for name in sorted(used):
            if name not in binding:
                known = [*machine.params, *binding]
                reporter.error(
                    Code.SIZE,
                    f"{space.name!r} uses the size {name!r}, which no input binds: it is no "
                    f"parameter of {machine.name}, and no input has an axis {name}, so it "
                    "would not be known when the machine is called",
                    space.span,
                    hint=did_you_mean(name, known)
                    or f"declare it on an input (input x : [3, {name}, ...]), or make it a "
                    "parameter",
                )
            elif (
                name in _RESERVED
                or name.startswith("__")
                or keyword.iskeyword(name)
                or keyword.issoftkeyword(name)
            ):
                reporter.error(
                    Code.SIZE,
                    f"the size symbol {name!r} is a Python keyword or a name generated code uses",
                    space.span,
                    hint="call it something else (H, W, L, ...)",
                )
    return reporter.error_count == errors


def sub_binding(outer: ir.Machine, edge: ir.Edge, sub: ir.Machine) -> dict[str, int | Size]:
    """The sizes a machine used as an edge gets for its symbols from the spaces it reads
    (the first input axis that binds a symbol decides; check compares the rest)."""
    binding: dict[str, int | Size] = {}
    inputs = [s for s in sub.spaces if s.role is ir.Role.INPUT]
    for port, space in zip(edge.inputs, inputs, strict=False):
        mine = outer.space(port.space).shape
        if mine is None or space.shape is None or len(mine) != len(space.shape):
            continue
        for n, theirs in zip(mine, space.shape, strict=True):
            name = plain_symbol(theirs)
            if name is not None and name not in binding:
                binding[name] = n
    return binding


def substitute(shape: ir.Shape, binding: dict[str, int | Size]) -> ir.Shape:
    return tuple(n.substitute(binding) if isinstance(n, Size) else n for n in shape)


def sub_requirements(
    outer: ir.Machine, edge: ir.Edge, sub: ir.Machine, structure: ir.Structure, reporter
) -> tuple[list[ir.Relation], list[int | Size]]:
    """What a machine used as an edge needs of its sizes, in the sizes it is given here:
    its relations (those that can hold for some sizes; an error for one that cannot) and
    its smallest sizes (as sizes that must be at least 1)."""
    binding = sub_binding(outer, edge, sub)
    found: list[ir.Relation] = []
    for r in structure.relations:
        left, right = substitute((r.left, r.right), binding)
        moved = ir.Relation(left=left, right=right, kind=r.kind, edge=edge.name, span=edge.span)
        kind = relation(left, right) if r.kind == "==" else truth(left - right, lambda d: d >= 0)
        if kind in ("always", True):
            continue
        if kind in ("never", False):
            reporter.error(
                Code.SIZE,
                f"edge {edge.name!r}: {ir.machine_call(sub.name, sub.params)} needs {r.text()} "
                f"(edge {r.edge!r}), which here is {moved.text()}: "
                + ("false" if symbols_of((left, right)) == set() else "it holds for no size"),
                edge.span,
                notes=(Note(message=f"{sub.name} needs it here", span=r.span),),
            )
            continue
        found.append(moved)
    least = []
    for name, size in structure.sizes.items():
        given = binding.get(name)
        if given is not None and size > 1:
            least.append(given - (size - 1))
            if isinstance(given, int) and given < size:
                reporter.error(
                    Code.SIZE,
                    f"edge {edge.name!r} gives {ir.machine_call(sub.name, sub.params)} "
                    f"{name} = {given}, but it needs {name} >= {size}",
                    edge.span,
                )
    return found, least


def smallest(
    machine: ir.Machine,
    shapes: dict[str, tuple[ir.Shape, ...] | None],
    extra: list[int | Size] = (),
) -> tuple[dict[str, int], list[ir.Relation]]:
    """Symbol -> the smallest size for which every space and every shape inside a pipeline
    keeps at least one position (and normalising over positions two values), each symbol
    alone; and what needs several symbols together (``H * W >= 2``), to check per call."""
    sizes = [n for space in machine.spaces for n in space.shape or ()] + list(extra)
    for edge_shapes in shapes.values():
        for shape in edge_shapes or ():
            sizes.extend(shape)
    together = []
    for edge in machine.edges:  # normalising over positions needs two values, not one
        for i, op in enumerate(edge.ops):
            before = (shapes.get(edge.name) or ())[i : i + 1]
            if not before or op.kind not in ("instancenorm", "groupnorm"):
                continue
            values = math.prod(before[0][1:])
            if op.kind == "groupnorm":
                values = before[0][0] // op.args["groups"] * values
            sizes.append(values - 1)
            if len(symbols_of((values,))) > 1:
                together.append(
                    ir.Relation(left=values, right=2, kind=">=", edge=edge.name, span=op.span)
                )
    least = {name: minimum(sizes, name) for name in bound(machine)}
    return least, together


def example_sizes(
    least: dict[str, int], relations: tuple[ir.Relation, ...], reporter: Reporter
) -> dict[str, int] | None:
    """Sizes for example inputs: :data:`EXAMPLE_SIZE` or more, the same for every symbol,
    where every relation holds. None (after reporting) when no size up to 2^16 does."""
    start = max([EXAMPLE_SIZE, *least.values()])
    for v in range(start, start + (1 << 16)):
        binding = dict.fromkeys(least, v)
        if all(r.holds(binding) for r in relations):
            return binding
    first = relations[0]
    reporter.error(
        Code.SIZE,
        f"edge {first.edge!r} needs {first.text()}, and no size from "
        f"{start} to {start + (1 << 16) - 1} makes every such relation hold",
        first.span,
        notes=tuple(Note(message=r.text(), span=r.span) for r in relations[1:]),
    )
    return None
