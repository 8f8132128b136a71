"""Drawing machines: the hypergraph as Graphviz DOT text, rendered by the ``dot`` program.

Spaces are nodes (name and shape, ``ids(256)`` for an ids space), hyperedges
are boxes (name and op pipeline), arrows run from the spaces an edge reads to
its box and from the box to the spaces it writes. In a machine over time, a
read of an earlier step (``h[t-1]``) is dashed and violet, one of a later step
(``h[t+1]``) dashed and orange, a read of a window of steps (``k[0..t]``,
``k[t-8..t]``, ``k[..]``) bold and blue, each labelled with its steps; an edge
that reads the step number itself (positions: ``t -> h = embedding(ctx)``)
reads it from a small dashed node ``t (step)``; the title's second line says
which of these marks the drawing holds.
A machine used as an edge is one green box with a double border labelled
with the machine call (``ResBlock(w=32)``), or with ``expand`` a cluster
holding that instance's own spaces and edges (recursively), fed one by one
from the edge's input spaces and feeding its output spaces. An edge that
reuses another's parameters (``shared(blk2)``) has a dashed border and a
dotted link from the edge it shares.

Ranks follow the dependency order: each node sits in the column of its
longest path of arrows from the inputs (reads of earlier time steps left
out), so with ``rankdir=LR`` the machine reads left to right; without
``expand`` that is column ``2d`` for a space of depth ``d`` and ``2k - 1``
for an edge of level ``k``. Every name reaches the DOT text only through
:func:`_html` (labels) or :func:`_quoted`, and node ids are generated from
positions (``m0_e1_s0``: the first space inside the second edge of the first
machine), so nothing from a source can break the syntax and ids stay unique
across nested clusters.

This module only writes text; :func:`render` runs Graphviz on it.
"""

from __future__ import annotations

import html
import shutil
import subprocess
from collections.abc import Sequence

from . import ir
from .ir import format_params, machine_call
from .sequences import kind_text
from .source_text import edge_text, op_text, pipeline_text

FORMATS = ("svg", "png", "pdf", "dot")  # what `machc graph -o` writes, by file extension
PIPELINE_WIDTH = 24  # a pipeline wider than this (in characters) wraps inside its box

FONT = "Helvetica"
STYLE = {  # (shape, fill colour, border colour, extra attributes) per role
    ir.Role.INPUT: ("ellipse", "#dbeafe", "#1d4ed8", 'penwidth="1.5"'),
    ir.Role.HIDDEN: ("ellipse", "#ffffff", "#6b7280", ""),
    ir.Role.OUTPUT: ("ellipse", "#fde68a", "#b45309", 'penwidth="1.5" peripheries="2"'),
}
EDGE_BOX = ("rounded,filled", 'fillcolor="#f3f4f6" color="#9ca3af"')  # (style, other attributes)
MACHINE_GREEN = "#15803d"
MACHINE_BOX = ("filled", f'fillcolor="#dcfce7" color="{MACHINE_GREEN}" peripheries="2"')
CLUSTER_FILLS = ("#f0fdf4", "#dcfce7", "#bbf7d0")  # sub-machine clusters, by nesting depth
SHARE_LINK = (
    f'style="dotted" color="{MACHINE_GREEN}" fontcolor="{MACHINE_GREEN}" arrowhead="none" '
    'fontsize="9" constraint="false"'
)
ROLE_WORDS = {ir.Role.INPUT: "input", ir.Role.HIDDEN: "hidden", ir.Role.OUTPUT: "output"}
CLOCK_NODE = (  # the step number of a machine over time, read by a position embedding
    'shape="ellipse" style="filled,dashed" fillcolor="#dbeafe" color="#1d4ed8" fontsize="10" '
    'height="0.3"'
)
# Arrows of reads of other steps, and what the legend says of them, by kind of read.
PAST, FUTURE, WINDOW, CLOCK = "past", "future", "window", "clock"
SOLVED = "solved"
READ_COLOURS = {
    PAST: "#7c3aed",
    FUTURE: "#c2410c",
    WINDOW: "#0369a1",
    CLOCK: "#1d4ed8",
    SOLVED: "#b91c1c",
}
LEGEND = {
    SOLVED: "dashed solve: closes a cycle, solved to its fixed point",
    PAST: "dashed {t}-k: reads an earlier step",
    FUTURE: "dashed {t}+k: reads a later step",
    WINDOW: "bold: reads a window of steps",
    CLOCK: "{t} (step): the step number",
}


class GraphError(Exception):
    """Graphviz could not render a drawing (missing, or failed); the message says what to do."""


def own_machines(program: ir.CheckedProgram) -> list[ir.CheckedMachine]:
    """The machines defined in the program's file itself, not the instances of sub-machines.

    A machine of the file keeps its name as its key; an instance of it with other
    parameter values, or a machine of an imported file, does not come from here.
    """
    own = [
        c
        for c in program.machines
        if c.machine.span.file == program.file and c.machine.key in ("", c.machine.name)
    ]
    return own or list(program.machines)


def select(program: ir.CheckedProgram, name: str | None = None) -> list[ir.CheckedMachine]:
    """What ``machc graph --machine NAME`` draws (default: the file's own machines).

    ``NAME`` is a machine of the file, else every instance of a machine of that
    name (one per set of parameter values), else the instance with that key
    (``ResBlock_w64``); nothing when it is none of them.
    """
    own = own_machines(program)
    if name is None:
        return own
    by_own = [c for c in own if c.machine.name == name]
    by_name = [c for c in program.machines if c.machine.name == name]
    by_key = [c for c in program.machines if c.machine.key == name]
    return by_own or by_name or by_key


def to_dot(
    program: ir.CheckedProgram, machines: Sequence[str] | None = None, expand: bool = False
) -> str:
    """The DOT text drawing the machines of ``program`` with these keys (default: its own).

    One machine is drawn on its own, with its name as the title; several are
    drawn side by side, one cluster each. With ``expand``, every machine used
    as an edge is drawn as a cluster of its own spaces and edges.
    """
    if machines is None:
        chosen = own_machines(program)
    else:
        keys = set(machines)
        chosen = [c for c in program.machines if (c.machine.key or c.machine.name) in keys]
    drawer = _Drawer(program, expand)
    lines = []
    if len(chosen) == 1:
        body = drawer.top(chosen[0], "m0", indent="  ")
        lines.append(f"  label={_title(chosen[0].machine, drawer.reads)};")
        lines += body
    else:
        # NOTE: with rankdir=LR, dot stacks the clusters of unconnected machines bottom to top
        # in the order they come; written last to first, the first machine comes out on top.
        for i, checked in reversed(list(enumerate(chosen))):
            body = drawer.top(checked, f"m{i}", indent="    ")
            lines.append(f"  subgraph cluster_m{i} {{")
            lines.append(f"    label={_title(checked.machine, drawer.reads)};")
            lines.append('    style="rounded" color="#d1d5db" fontsize="14";')
            lines += body
            lines.append("  }")
    compound = ' compound="true"' if drawer.clipped else ""  # arrows ending at a cluster
    lines[:0] = [
        "digraph machines {",
        f'  graph [rankdir="LR" newrank="true" fontname="{FONT}" nodesep="0.25" '
        f'ranksep="0.45" labelloc="t" fontsize="16" bgcolor="white"{compound}];',
        f'  node [fontname="{FONT}" fontsize="12" margin="0.08,0.04"];',
        f'  edge [fontname="{FONT}" color="#4b5563" arrowsize="0.7"];',
    ]
    lines.append("}")
    return "\n".join(lines) + "\n"


class _Drawer:
    """Writes the DOT lines of machines, and keeps the arrows that order their columns."""

    def __init__(self, program: ir.CheckedProgram, expand: bool):
        self.machines = {(c.machine.key or c.machine.name): c for c in program.machines}
        self.calls = {key: c.machine for key, c in self.machines.items()}
        self.expand = expand
        self.nodes: list[str] = []
        self.arrows: list[tuple[str, str]] = []  # the arrows that constrain the columns
        self.clipped = False  # some arrow is clipped at a cluster's border (needs compound)
        self.clocks: set[str] = set()  # the step-number nodes: inputs, like input spaces
        self.reads: set[str] = set()  # kinds of reads of other steps drawn (PAST, ...)

    def top(self, checked: ir.CheckedMachine, prefix: str, indent: str) -> list[str]:
        """One machine drawn at the top, then its columns (one rank per column)."""
        self.nodes, self.arrows, self.reads = [], [], set()
        spaces = {s.name: f"{prefix}_s{i}" for i, s in enumerate(checked.machine.spaces)}
        lines = self._body(checked.machine, prefix, spaces, indent, nesting=0, path="")
        self._anchor(checked.machine, spaces, 0)
        # NOTE: one rank per column keeps the columns aligned with the dependency order
        # (dot alone would pull an input that is read late towards its reader).
        for column in _columns(self.nodes, self.arrows):
            lines.append(f"{indent}{{ rank=same; {' '.join(column)} }}")
        return lines

    def _body(
        self,
        machine: ir.Machine,
        prefix: str,
        spaces: dict[str, str],
        indent: str,
        nesting: int,
        path: str,
    ) -> list[str]:
        """The spaces and edges of ``machine``; ``spaces`` maps its space names to node ids."""
        lines = []
        for space in machine.spaces:
            lines.append(f"{indent}{spaces[space.name]} [{_space_attrs(space, path)}];")
            self.nodes.append(spaces[space.name])
        ids = {e.name: f"{prefix}_e{i}" for i, e in enumerate(machine.edges)}
        opened = {e.name for e in machine.edges if self.expand and e.machine is not None}
        clock = f"{prefix}_t"  # the step number, drawn where some edge reads it
        if any(port.position for edge in machine.edges for port in edge.inputs):
            lines.append(f"{indent}{clock} [{_clock_attrs(machine, path)}];")
            self.nodes.append(clock)
            self.clocks.add(clock)
        arrows = []
        checked = self.machines.get(machine.key or machine.name)
        solved = {  # (edge, space) of the reads that close a solved cycle
            (e, s)
            for cycle in (checked.structure.cycles if checked else ())
            for e in cycle.edges
            for s in cycle.spaces
        }
        for edge in machine.edges:
            node = ids[edge.name]
            if edge.name in opened:
                lines += self._cluster(machine, edge, node, spaces, indent, nesting, path)
                continue
            lines.append(f"{indent}{node} [{self._edge_attrs(machine, edge)}];")
            self.nodes.append(node)
            for port in edge.inputs:
                tail = clock if port.position else spaces[port.space]
                if (edge.name, port.space) in solved:
                    self.reads.add(SOLVED)
                    attrs = _solved_attrs()
                else:
                    attrs = self._read_attrs(port, machine)
                arrows.append(self._arrow(tail, node, attrs))
            for port in edge.outputs:
                arrows.append(self._arrow(node, spaces[port.space], ""))
        lines += [f"{indent}{arrow}" for arrow in arrows]
        for edge in machine.edges:  # shared(edge): a dotted link from the edge it shares
            if edge.shares is None or edge.shares not in ids:
                continue
            source, target, clip = ids[edge.shares], ids[edge.name], ""
            if edge.shares in opened:  # from a node inside the cluster, clipped at its border
                source, clip = f"{source}_s0", f' ltail="cluster_{source}"'
            if edge.name in opened:
                target, clip = f"{target}_s0", f'{clip} lhead="cluster_{target}"'
            self.clipped = self.clipped or bool(clip)
            label = _quoted(f"shares {edge.shares}")
            lines.append(f"{indent}{source} -> {target} [{SHARE_LINK} label={label}{clip}];")
        return lines

    def _cluster(
        self,
        parent: ir.Machine,
        edge: ir.Edge,
        node: str,
        spaces: dict[str, str],
        indent: str,
        nesting: int,
        path: str,
    ) -> list[str]:
        """A sub-machine edge opened up: its instance's spaces and edges inside a cluster."""
        instance = self.calls[edge.machine]
        inner = {s.name: f"{node}_s{i}" for i, s in enumerate(instance.spaces)}
        fill = CLUSTER_FILLS[min(nesting, len(CLUSTER_FILLS) - 1)]
        style = "rounded,filled,dashed" if edge.shares else "rounded,filled"
        lines = [
            f"{indent}subgraph cluster_{node} {{",
            f"{indent}  label={_cluster_label(edge, instance)};",
            f'{indent}  style="{style}" fillcolor="{fill}" color="{MACHINE_GREEN}" '
            'fontsize="12" labeljust="l";',
            f"{indent}  tooltip={_quoted(edge_text(edge, parent.time or 't', self.calls))};",
        ]
        first = len(self.nodes)
        lines += self._body(
            instance, node, inner, indent + "  ", nesting + 1, f"{path}{edge.name}."
        )
        lines.append(f"{indent}}}")
        self._anchor(instance, inner, first)
        # The edge's spaces map one by one onto the instance's inputs and outputs.
        ins = [s for s in instance.spaces if s.role is ir.Role.INPUT]
        outs = [s for s in instance.spaces if s.role is ir.Role.OUTPUT]
        link = f'color="{MACHINE_GREEN}"'
        for port, space in zip(edge.inputs, ins, strict=False):
            attrs = self._read_attrs(port, parent) or f" [{link}]"
            lines.append(indent + self._arrow(spaces[port.space], inner[space.name], attrs))
        for port, space in zip(edge.outputs, outs, strict=False):
            lines.append(indent + self._arrow(inner[space.name], spaces[port.space], f" [{link}]"))
        return lines

    def _anchor(self, machine: ir.Machine, spaces: dict[str, str], first: int) -> None:
        """Keep the nodes drawn since ``first`` right of the inputs of ``machine``.

        An edge that only reads earlier steps has no arrow that orders it; it goes one
        column right of the machine's first input (``check`` puts it in level 1), not in
        the first column of the whole drawing.
        """
        entry = [spaces[s.name] for s in machine.spaces if s.role is ir.Role.INPUT]
        entry += [n for n in self.nodes[first:] if n in self.clocks]  # the step number too
        heads = {head for _, head in self.arrows}
        loose = [n for n in self.nodes[first:] if n not in heads and n not in entry]
        self.arrows += [(entry[0], n) for n in loose]

    def _read_attrs(self, port: ir.Port, machine: ir.Machine) -> str:
        """Attributes of the arrow from a space an edge reads (see :func:`_read_attrs`)."""
        kind = _read_kind(port)
        if kind is not None:
            self.reads.add(kind)
        return _read_attrs(port, machine)

    def _arrow(self, tail: str, head: str, attrs: str) -> str:
        if 'constraint="false"' not in attrs:
            self.arrows.append((tail, head))
        return f"{tail} -> {head}{attrs};"

    def _edge_attrs(self, machine: ir.Machine, edge: ir.Edge) -> str:
        if edge.machine is not None:
            parts = [machine_call(self.calls[edge.machine].name, self.calls[edge.machine].params)]
            style, rest = MACHINE_BOX
        else:
            parts = [op_text(op) for op in edge.ops]
            style, rest = EDGE_BOX
        if edge.shares is not None:
            parts = [pipeline_text(edge), *(parts if edge.machine is not None else [])]
            style += ",dashed"
        rows = _wrap(parts) if edge.machine is None and edge.shares is None else parts
        pipeline = "<br/>".join(_html(row) for row in rows)
        label = f'<<b>{_html(edge.name)}</b><br/><font point-size="10">{pipeline}</font>>'
        tooltip = _quoted(edge_text(edge, machine.time or "t", self.calls))
        return f'label={label} shape="box" style="{style}" {rest} tooltip={tooltip}'


def _columns(nodes: list[str], arrows: list[tuple[str, str]]) -> list[list[str]]:
    """Node ids column by column: each node's column is its longest path of arrows.

    The arrows (reads of other steps and reads that close solved cycles left out) form
    an acyclic graph.
    """
    after: dict[str, list[str]] = {node: [] for node in nodes}
    waiting = dict.fromkeys(nodes, 0)
    for tail, head in arrows:
        after[tail].append(head)
        waiting[head] += 1
    column = dict.fromkeys(nodes, 0)
    ready = [node for node in nodes if not waiting[node]]
    while ready:
        node = ready.pop()
        for head in after[node]:
            column[head] = max(column[head], column[node] + 1)
            waiting[head] -= 1
            if not waiting[head]:
                ready.append(head)
    columns: dict[int, list[str]] = {}
    for node in nodes:
        columns.setdefault(column[node], []).append(node)
    return [columns[c] for c in sorted(columns) if len(columns[c]) > 1]


def _space_attrs(space: ir.Space, path: str = "") -> str:
    shape, fill, border, extra = STYLE[space.role]
    kind = kind_text(space)  # [16], or ids(256)
    label = f"<<b>{_html(space.name)}</b><br/>{_html(kind)}>"
    role = ROLE_WORDS[space.role]
    tooltip = _quoted(f"{role} space {path}{space.name} {kind}")
    attrs = f'label={label} shape="{shape}" style="filled" fillcolor="{fill}" color="{border}"'
    return f"{attrs} tooltip={tooltip}" + (f" {extra}" if extra else "")


def _clock_attrs(machine: ir.Machine, path: str = "") -> str:
    """The node of the step number, which position embeddings read: ``t (step)``."""
    t = machine.time or "t"
    readers = ", ".join(
        f"{path}{edge.name}" for edge in machine.edges if any(p.position for p in edge.inputs)
    )
    label = f"<<b>{_html(t)}</b> (step)>"
    tooltip = _quoted(f"the time index {t}: the step number, read by {readers}")
    return f"label={label} {CLOCK_NODE} tooltip={tooltip}"


def _cluster_label(edge: ir.Edge, instance: ir.Machine) -> str:
    """``blk1 = ResBlock(w=32)``, or ``tied = shared(blk2): ResBlock(w=32)``, in bold name."""
    call = machine_call(instance.name, instance.params)
    call += f" over {instance.time}" if instance.time else ""
    what = f"shared({edge.shares}): {call}" if edge.shares else call
    return f"<<b>{_html(edge.name)}</b> = {_html(what)}>"


def _wrap(ops: list[str]) -> list[str]:
    """``a | b | c`` in lines of at most PIPELINE_WIDTH characters; later lines start with ``|``."""
    rows = [ops[0]]
    for op in ops[1:]:
        if len(rows[-1]) + 3 + len(op) <= PIPELINE_WIDTH:
            rows[-1] += f" | {op}"
        else:
            rows.append(f"| {op}")
    return rows


def _read_kind(port: ir.Port) -> str | None:
    """Which mark the arrow of a read gets: PAST, FUTURE, WINDOW, CLOCK, or None (plain)."""
    if port.position:
        return CLOCK
    if port.window is not None:
        return WINDOW
    if port.delay:
        return PAST if port.delay > 0 else FUTURE
    return None


def _read_attrs(port: ir.Port, machine: ir.Machine) -> str:
    """Attributes of the arrow from a space an edge reads.

    A read of an earlier step (``h[t-1]``) or a later one (``h[t+1]``) is dashed and
    labelled; it points across time, so it does not constrain the left-to-right order
    (``constraint=false``). A read of a window of steps (``k[0..t]``) is bold and
    labelled with the window; it reads the present step too, so it keeps its place in
    the order. A read of the step number is a plain arrow from its own node.
    """
    kind = _read_kind(port)
    if kind is None or kind == CLOCK:
        return ""
    colour = READ_COLOURS[kind]
    t = machine.time or "t"
    if kind == WINDOW:
        label = _quoted(port.window.text(t))
        return f' [style="bold" color="{colour}" fontcolor="{colour}" label={label} fontsize="10"]'
    label = _quoted(f"{t}-{port.delay}" if port.delay > 0 else f"{t}+{-port.delay}")
    return (
        f' [style="dashed" color="{colour}" fontcolor="{colour}" label={label} fontsize="10" '
        'constraint="false"]'
    )


def _solved_attrs() -> str:
    """A read that closes a solved cycle: dashed, labelled, and not ordering the columns
    (the cycle's edges read its spaces at the fixed point)."""
    colour = READ_COLOURS[SOLVED]
    return (
        f' [style="dashed" color="{colour}" fontcolor="{colour}" label="solve" fontsize="10" '
        'constraint="false"]'
    )


def _title(machine: ir.Machine, reads: set[str] = frozenset()) -> str:
    """The machine's title; under it, in colour, what the marks of the drawing mean."""
    params = format_params(machine.params)
    over = f" over {machine.time}" if machine.time else ""
    title = f"machine {machine.name}" + (f"({params})" if params else "") + over
    if not reads:
        return _quoted(title)
    t = machine.time or "t"
    legend = "; ".join(
        f'<font color="{READ_COLOURS[kind]}">{_html(LEGEND[kind].format(t=t))}</font>'
        for kind in LEGEND
        if kind in reads
    )
    return f'<{_html(title)}<br/><font point-size="10">{legend}</font>>'


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
