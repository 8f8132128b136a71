"""What generated code does for sizes known only at call time (``input img : [3, H, W]``).

A machine with size symbols binds them at the top of each method from the tensors
it is given (``runtime.bind_sizes``, which checks every axis it can), checks the
relations its edges need (``runtime.check_size``), and builds zero states from a
``shapes(H, W)`` method instead of the ``SPACES`` table, whose symbolic sizes are text.
A machine without symbols gets none of this: its code is as before.
"""

from __future__ import annotations

from . import ir, symbols
from .sizes import Size, symbols_of
from .source_text import dict_lines, py_str, py_tuple


def symbolic(structure: ir.Structure) -> bool:
    return bool(structure.sizes)


def space_items(machine: ir.Machine, structure: ir.Structure) -> tuple[str, list[str]]:
    """The annotation and the items of the ``SPACES`` table: sizes, or their text."""
    if not symbolic(structure):
        return "dict[str, tuple[int, ...]]", [
            f"{py_str(s.name)}: {tuple(s.shape)!r}" for s in machine.spaces
        ]
    items = []
    for space in machine.spaces:
        sizes = (py_str(str(n)) if isinstance(n, Size) else str(n) for n in space.shape)
        items.append(f"{py_str(space.name)}: {py_tuple(sizes)}")
    return "dict[str, tuple[int | str, ...]]", items


def complete_shapes(structure: ir.Structure) -> str:
    """What ``_complete`` takes the shapes of missing spaces from."""
    if not symbolic(structure):
        return "self.SPACES"
    return f"self.shapes({', '.join(structure.sizes)})"


def prologue(lowering, given: str) -> list[str]:
    """The lines that bind the sizes from ``given`` (a dict expression of tensors) and
    check the relations between them; none for a machine without size symbols."""
    structure = lowering.structure
    if not symbolic(structure):
        return []
    names = list(structure.sizes)
    bound = symbols.bound(lowering.machine)
    targets = ", ".join(names) + ("," if len(names) == 1 else "")
    smallest = ", ".join(f"{n}={v}" for n, v in structure.sizes.items())
    lines = [
        "# sizes known at call time: bound by the inputs, checked against what edges need",
        f"{targets} = runtime.bind_sizes(self, {given}, {smallest})",
    ]
    for relation in structure.relations:
        text = relation.text()
        used = sorted(symbols_of((relation.left, relation.right)))
        axes = ", ".join(f"{n} is axis {bound[n][1] + 1} of {bound[n][0]!r}" for n in used)
        needs = f"edge {relation.edge!r} ({lowering.where(relation.span)}) needs {text} ({axes})"
        values = ", ".join(f"{n}={n}" for n in used)
        lines.append(f"runtime.check_size({text}, self, {py_str(needs)}, {values})")
    return lines


def shapes_method(lowering):
    """``shapes(H, W)``: the shape of every space for these sizes (None: no symbols)."""
    from .lower import Method  # (it imports this module)

    structure = lowering.structure
    if not symbolic(structure):
        return None
    params = ", ".join(f"{n}: int = {structure.example_sizes[n]}" for n in structure.sizes)
    items = [
        f"{py_str(space.name)}: {py_tuple(str(n) for n in space.shape)}"
        for space in lowering.machine.spaces
    ]
    return Method(
        decorator="staticmethod",
        signature=f"shapes({params}) -> dict[str, tuple[int, ...]]",
        doc="The shape of every space (per sample) for inputs of these sizes (by default, "
        "those of example_inputs).",
        body=tuple(dict_lines("return ", items, indent=8)),
    )
