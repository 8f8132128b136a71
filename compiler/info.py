"""What ``machc info`` reports: each machine's spaces, edges with their cost, levels and totals.

Parameter and multiply-accumulate counts come from the op table
(:attr:`machc.ops.OpSpec.params` and ``macs``) applied to the shapes that
``check`` inferred through every pipeline, so they need no torch. An op whose
layer machc does not build itself (``module``) has counts that cannot be
known here: such an edge shows ``?`` and the totals say that they are a
lower bound.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from . import ir
from .equilibrium import cycle_text
from .ir import format_params
from .ops import OPS, format_shape
from .sizes import evaluate
from .source_text import pipeline_text, port_text, source_label

# Cells longer than these wrap onto continuation lines, at a `×` or `|`.
PIPELINE_WIDTH = 48
PORTS_WIDTH = 24


@dataclass(frozen=True)
class SpaceInfo:
    name: str
    role: str
    shape: list[int]  # [] for an ids space
    depth: int
    ids: int | None = None  # an ids space (ids(n)): n, the number of ids


@dataclass(frozen=True)
class EdgeInfo:
    name: str
    level: int
    inputs: list[str]
    outputs: list[str]
    pipeline: str
    params: int | None  # None: not known (an op such as `module`)
    macs: int | None


@dataclass(frozen=True)
class MachineInfo:
    name: str
    key: str  # the generated class
    time: str | None  # the time index of a machine over time
    params: dict[str, ir.Value]
    file: str
    line: int
    spaces: list[SpaceInfo]
    edges: list[EdgeInfo]
    levels: list[list[str]]
    cycles: list[str]  # each solved cycle: "z (cell) by anderson(tol=1e-05, max_iter=50)"
    total_params: int
    total_macs: int
    exact: bool  # False when some edge's counts are not known
    depth: int
    # sizes known at call time (input img : [3, H, W]): the sizes MACs are counted at
    sizes: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


def machine_info(
    checked: ir.CheckedMachine, file: str, used: dict[str, MachineInfo] | None = None
) -> MachineInfo:
    """The report of one checked machine; ``used``: the reports of the machines it uses."""
    machine, structure = checked.machine, checked.structure
    level_of = {name: k for k, level in enumerate(structure.levels, 1) for name in level}
    edges = [
        _edge_info(
            machine,
            edge,
            structure.shapes[edge.name],
            level_of[edge.name],
            used or {},
            structure.example_sizes,
        )
        for edge in machine.edges
    ]
    return MachineInfo(
        name=machine.name,
        key=machine.key or machine.name,
        time=machine.time,
        params=dict(machine.params),
        file=source_label(machine.span.file),
        line=machine.span.line,
        spaces=[
            SpaceInfo(
                s.name,
                s.role.value,
                [n if isinstance(n, int) else str(n) for n in s.shape],
                structure.depth[s.name],
                s.ids,
            )
            for s in machine.spaces
        ],
        edges=edges,
        levels=[list(level) for level in structure.levels],
        cycles=[cycle_text(cycle) for cycle in structure.cycles],
        total_params=sum(e.params or 0 for e in edges),
        total_macs=sum(e.macs or 0 for e in edges),
        exact=all(e.params is not None for e in edges),
        depth=max(structure.depth.values(), default=0),
        sizes=dict(structure.example_sizes),
    )


def _edge_info(
    machine: ir.Machine,
    edge: ir.Edge,
    shapes,
    level: int,
    used: dict[str, MachineInfo],
    sizes: dict[str, int],
) -> EdgeInfo:
    params: int | None = 0
    macs: int | None = 0
    if edge.machine is not None:  # the sub-machine's totals (its parameters once, if shared)
        sub = used[edge.machine]
        params = sub.total_params if sub.exact else None
        macs = sub.total_macs if sub.exact else None
    for i, op in enumerate(edge.ops):
        spec = OPS[op.kind]
        if spec.extra_args:  # a constructor machc does not know
            params = macs = None
        if params is not None and macs is not None:
            params += spec.params(op.args, shapes[i], shapes[i + 1])
            macs += evaluate(spec.macs(op.args, shapes[i], shapes[i + 1]), sizes)
    if edge.shares is not None and params is not None:
        params = 0  # the parameters are counted at the edge they belong to
    return EdgeInfo(
        name=edge.name,
        level=level,
        inputs=[port_text(port, machine.time) for port in edge.inputs],
        outputs=[port.space for port in edge.outputs],
        pipeline=pipeline_text(edge, used),
        params=params,
        macs=macs,
    )


def program_info(program: ir.CheckedProgram) -> list[MachineInfo]:
    """The reports of every machine, the machines used as edges first."""
    reports: dict[str, MachineInfo] = {}
    for checked in program.machines:
        reports[checked.machine.key] = machine_info(checked, program.file, reports)
    return list(reports.values())


# --- text ----------------------------------------------------------------------


def describe(program: ir.CheckedProgram) -> str:
    """The text report: one block of tables per machine, machines separated by a blank line."""
    return "\n\n".join(_describe_machine(info) for info in program_info(program))


def _number(n: int | None) -> str:
    return "?" if n is None else f"{n:,}"


def _describe_machine(info: MachineInfo) -> str:
    params = format_params(info.params)
    title = f"machine {info.name}" + (f"({params})" if params else "")
    title += f" over {info.time}" if info.time else ""
    lines = [f"{title}  {info.file}:{info.line}", ""]
    lines.append("  spaces")
    lines += _table(
        ["name", "role", "shape", "depth"],
        [[[s.name], [s.role], [_shape_text(s)], [str(s.depth)]] for s in info.spaces],
        right={3},
    )
    lines += ["", "  edges"]
    lines += _table(
        ["name", "level", "reads", "writes", "params", "MACs", "pipeline"],
        [
            [
                [e.name],
                [str(e.level)],
                _wrap(e.inputs, " × ", PORTS_WIDTH),
                _wrap(e.outputs, " × ", PORTS_WIDTH),
                [_number(e.params)],
                [_number(e.macs)],
                _wrap(e.pipeline.split(" | "), " | ", PIPELINE_WIDTH),
            ]
            for e in info.edges
        ],
        right={1, 4, 5},
    )
    lines += ["", "  levels of independent edges"]
    for k, level in enumerate(info.levels, 1):
        lines.append(f"    {k}: {', '.join(level)}")
    if info.cycles:
        lines += ["", "  solved cycles (their edges' MACs count once per iteration)"]
        lines += [f"    {text}" for text in info.cycles]
    bound = "" if info.exact else "at least "
    if info.sizes:
        at = ", ".join(f"{k} = {v}" for k, v in info.sizes.items())
        lines += ["", f"  sizes known at call time: MACs are counted at {at}"]
    lines += [
        "",
        f"  total: {bound}{_number(info.total_params)} parameters, "
        f"{bound}{_number(info.total_macs)} MACs per sample, "
        f"{_plural(len(info.spaces), 'space')}, {_plural(len(info.edges), 'edge')}, "
        f"depth {info.depth}",
    ]
    return "\n".join(lines)


def _shape_text(space: SpaceInfo) -> str:
    """``[16]``, or ``ids(256)`` for an ids space."""
    return f"ids({space.ids})" if space.ids is not None else format_shape(tuple(space.shape))


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _wrap(parts: list[str], separator: str, width: int) -> list[str]:
    """Parts joined by ``separator``, in lines of at most ``width`` where the parts allow.

    A continuation line starts with the separator's symbol (``× h[3]``, ``| relu``).
    """
    lines: list[str] = []
    for part in parts:
        if not lines:
            lines.append(part)
        elif len(lines[-1]) + len(separator) + len(part) <= width:
            lines[-1] += separator + part
        else:
            lines.append(separator.lstrip() + part)
    return lines


def _table(header: list[str], rows: list[list[list[str]]], right: set[int]) -> list[str]:
    """Aligned columns; a cell is a list of lines, so a row may take several lines."""
    widths = [
        max([len(title)] + [len(line) for row in rows for line in row[i]])
        for i, title in enumerate(header)
    ]

    def line(cells: list[str]) -> str:
        padded = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(cells)
        ]
        return ("    " + "  ".join(padded)).rstrip()

    out = [line(header)]
    for row in rows:
        height = max(len(cell) for cell in row)
        for k in range(height):
            out.append(line([cell[k] if k < len(cell) else "" for cell in row]))
    return out
