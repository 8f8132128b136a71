"""Drawing machines: the hypergraph as Graphviz DOT text, rendered by the ``dot`` program.

Spaces are nodes (name and shape), hyperedges are boxes (name and op
pipeline), arrows run from the spaces an edge reads to its box and from the
box to the spaces it writes; a read of an earlier time step is dashed.
Ranks follow the dependency order: a space of depth ``d`` sits in column
``2d``, an edge of level ``k`` in column ``2k - 1``, so with
``rankdir=LR`` the machine reads left to right. Every
name reaches the DOT text only through :func:`_html` (labels) or as part of
a generated identifier, so nothing from a source can break the syntax.

This module only writes text; :func:`render` runs Graphviz on it.
"""

from __future__ import annotations

import html
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from . import ir
from .lower import edge_text, format_params, op_text, pipeline_text
from .ops import format_shape

FORMATS = ("svg", "png", "pdf", "dot")  # what `machc graph -o` writes, by file extension
PIPELINE_WIDTH = 24  # a pipeline wider than this (in characters) wraps inside its box

FONT = "Helvetica"
STYLE = {  # (shape, fill colour, border colour, extra attributes) per role
    ir.Role.INPUT: ("ellipse", "#dbeafe", "#1d4ed8", 'penwidth="1.5"'),
    ir.Role.HIDDEN: ("ellipse", "#ffffff", "#6b7280", ""),
    ir.Role.OUTPUT: ("ellipse", "#fde68a", "#b45309", 'penwidth="1.5" peripheries="2"'),
}
EDGE_BOX = 'shape="box" style="rounded,filled" fillcolor="#f3f4f6" color="#9ca3af"'
ROLE_WORDS = {ir.Role.INPUT: "input", ir.Role.HIDDEN: "hidden", ir.Role.OUTPUT: "output"}


class GraphError(Exception):
    """Graphviz could not render a drawing (missing, or failed); the message says what to do."""


def to_dot(program: ir.CheckedProgram, machines: Sequence[str] | None = None) -> str:
    """The DOT text drawing the named machines of ``program`` (default: all of them).

    One machine is drawn on its own, with its name as the title; several are
    drawn side by side, one cluster each.
    """
    chosen = [c for c in program.machines if machines is None or c.machine.name in set(machines)]
    lines = [
        "digraph machines {",
        f'  graph [rankdir="LR" newrank="true" fontname="{FONT}" nodesep="0.25" '
        'ranksep="0.45" labelloc="t" fontsize="16" bgcolor="white"];',
        f'  node [fontname="{FONT}" fontsize="12" margin="0.08,0.04"];',
        f'  edge [fontname="{FONT}" color="#4b5563" arrowsize="0.7"];',
    ]
    if len(chosen) == 1:
        lines.append(f"  label={_title(chosen[0].machine)};")
        lines += _machine_lines(chosen[0], "m0", indent="  ")
    else:
        for i, checked in enumerate(chosen):
            lines.append(f"  subgraph cluster_m{i} {{")
            lines.append(f"    label={_title(checked.machine)};")
            lines.append('    style="rounded" color="#d1d5db" fontsize="14";')
            lines += _machine_lines(checked, f"m{i}", indent="    ")
            lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class _Ids:
    """DOT identifiers of one machine's nodes: generated, never taken from the source."""

    prefix: str
    spaces: dict[str, str]
    edges: dict[str, str]

    @classmethod
    def of(cls, machine: ir.Machine, prefix: str) -> _Ids:
        return cls(
            prefix=prefix,
            spaces={s.name: f"{prefix}_s{i}" for i, s in enumerate(machine.spaces)},
            edges={e.name: f"{prefix}_e{i}" for i, e in enumerate(machine.edges)},
        )


def _machine_lines(checked: ir.CheckedMachine, prefix: str, indent: str) -> list[str]:
    machine, structure = checked.machine, checked.structure
    ids = _Ids.of(machine, prefix)
    lines = []
    for space in machine.spaces:
        lines.append(f"{indent}{ids.spaces[space.name]} [{_space_attrs(space)}];")
    for edge in machine.edges:
        lines.append(f"{indent}{ids.edges[edge.name]} [{_edge_attrs(edge)}];")
    for edge in machine.edges:
        box = ids.edges[edge.name]
        for port in edge.inputs:
            attrs = _read_attrs(port, machine.time)
            lines.append(f"{indent}{ids.spaces[port.space]} -> {box}{attrs};")
        for port in edge.outputs:
            lines.append(f"{indent}{box} -> {ids.spaces[port.space]}{_write_attrs(port)};")
    # NOTE: one rank per depth and per level keeps columns aligned with the dependency order
    # (dot alone would pull an input that is read late towards its reader).
    for column in _columns(machine, structure, ids):
        lines.append(f"{indent}{{ rank=same; {' '.join(column)} }}")
    return lines


def _columns(machine: ir.Machine, structure: ir.Structure, ids: _Ids) -> list[list[str]]:
    """Node ids column by column: spaces of depth d in column 2d, edges of level k in 2k - 1."""
    columns: dict[int, list[str]] = {}
    for space in machine.spaces:
        columns.setdefault(2 * structure.depth[space.name], []).append(ids.spaces[space.name])
    for k, level in enumerate(structure.levels, 1):
        columns.setdefault(2 * k - 1, []).extend(ids.edges[name] for name in level)
    return [columns[c] for c in sorted(columns) if len(columns[c]) > 1]


def _space_attrs(space: ir.Space) -> str:
    shape, fill, border, extra = STYLE[space.role]
    label = f"<<b>{_html(space.name)}</b><br/>{_html(format_shape(space.shape))}>"
    tooltip = _quoted(f"{ROLE_WORDS[space.role]} space {space.name} {format_shape(space.shape)}")
    attrs = f'label={label} shape="{shape}" style="filled" fillcolor="{fill}" color="{border}"'
    return f"{attrs} tooltip={tooltip}" + (f" {extra}" if extra else "")


def _edge_attrs(edge: ir.Edge) -> str:
    parts = [op_text(op) for op in edge.ops] if edge.ops and not edge.shares else []
    parts = parts or [pipeline_text(edge)]  # a machine used as an edge, or shared(edge)
    pipeline = "<br/>".join(_html(row) for row in _wrap(parts))
    label = f'<<b>{_html(edge.name)}</b><br/><font point-size="10">{pipeline}</font>>'
    return f"label={label} {EDGE_BOX} tooltip={_quoted(edge_text(edge))}"


def _wrap(ops: list[str]) -> list[str]:
    """``a | b | c`` in lines of at most PIPELINE_WIDTH characters; later lines start with ``|``."""
    rows = [ops[0]]
    for op in ops[1:]:
        if len(rows[-1]) + 3 + len(op) <= PIPELINE_WIDTH:
            rows[-1] += f" | {op}"
        else:
            rows.append(f"| {op}")
    return rows


def _read_attrs(port: ir.Port, time: str | None) -> str:
    """Attributes of the arrow from a space an edge reads.

    A delayed read (``h[t-1]``) is dashed and labelled; it points back in time, so
    it does not constrain the left-to-right order (``constraint=false``).
    """
    if not port.delay:
        return ""
    label = _quoted(f"{time or 't'}-{port.delay}")
    return (
        f' [style="dashed" color="#7c3aed" fontcolor="#7c3aed" label={label} fontsize="10" '
        'constraint="false"]'
    )


def _write_attrs(port: ir.Port) -> str:
    """Attributes of the arrow into a space an edge writes."""
    return ""


def _title(machine: ir.Machine) -> str:
    params = format_params(machine.params)
    over = f" over {machine.time}" if machine.time else ""
    return _quoted(f"machine {machine.name}" + (f"({params})" if params else "") + over)


def _html(text: str) -> str:
    """Text for a Graphviz HTML-like label: markup characters escaped, nothing else special."""
    escaped = html.escape(text, quote=True)
    # Graphviz reads HTML entities, but not every character is printable in a label.
    return "".join(ch if ch.isprintable() else f"&#{ord(ch)};" for ch in escaped)


def _quoted(text: str) -> str:
    """A DOT double-quoted string: backslashes and quotes escaped, one printable line."""
    safe = "".join(ch if ch.isprintable() else "?" for ch in text)
    return '"' + safe.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(dot_text: str, fmt: str) -> bytes:
    """``dot_text`` drawn as ``fmt`` (svg, png, pdf) by Graphviz's ``dot`` program."""
    program = shutil.which("dot")
    if program is None:
        raise GraphError(
            "the Graphviz program 'dot' is not installed (or not on PATH); install Graphviz "
            "(Debian/Ubuntu: apt-get install graphviz, macOS: brew install graphviz, "
            "others: https://graphviz.org/download/), or write a .dot file instead"
        )
    try:
        result = subprocess.run(
            [program, f"-T{fmt}"], input=dot_text.encode("utf-8"), capture_output=True, timeout=120
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise GraphError(f"could not run {program}: {exc}") from None
    if result.returncode != 0 or not result.stdout:
        message = result.stderr.decode("utf-8", "replace").strip() or f"exit {result.returncode}"
        raise GraphError(f"{program} -T{fmt} failed: {message}")
    return result.stdout
