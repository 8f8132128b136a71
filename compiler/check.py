"""Check stage: shapes, writers, acyclicity, depths and levels of every machine.

The hypergraph is a bipartite directed graph: space → edge where the edge
reads the space, edge → space where it writes it. A machine is of finite
depth exactly when that graph is acyclic; a topological sort of it is the
order in which running each edge once computes the resolvent.
"""

from __future__ import annotations

import math

import networkx as nx

from . import equilibrium, ir, sequences
from .diagnostics import Code, Note, Reporter
from .expressions import MAX_ELEMENTS, MAX_SIZE
from .ops import OPS, OpError, Site, combined_shape, format_shape, infer_pipeline


def check(program: ir.Program, reporter: Reporter) -> ir.CheckedProgram:
    """Check every machine; machines with errors are left out (the reporter has the errors)."""
    checked = []
    machines = {m.key: m for m in (*program.instances, *program.machines)}
    structures: dict[str, ir.Structure] = {}
    for machine in (*program.instances, *program.machines):  # what a machine uses comes first
        if any(e.machine is not None and e.machine not in structures for e in machine.edges):
            continue  # a machine it uses as an edge has errors, reported there
        structure = _check_machine(machine, reporter, machines, structures)
        if structure is not None:
            structures[machine.key] = structure
            checked.append(ir.CheckedMachine(machine=machine, structure=structure))
    return ir.CheckedProgram(file=program.file, machines=tuple(checked))


def _check_machine(
    machine: ir.Machine,
    reporter: Reporter,
    machines: dict[str, ir.Machine] | None = None,
    structures: dict[str, ir.Structure] | None = None,
) -> ir.Structure | None:
    errors_before = reporter.error_count
    roles = {space.role for space in machine.spaces}
    if ir.Role.INPUT not in roles:
        reporter.error(Code.MACHINE, f"machine {machine.name!r} has no input space", machine.span)
    if ir.Role.OUTPUT not in roles:
        reporter.error(Code.MACHINE, f"machine {machine.name!r} has no output space", machine.span)
    shapes = {}
    for edge in machine.edges:
        if sequences.check_reads(machine, edge, machines or {}, reporter):
            shapes[edge.name] = _edge_shapes(machine, edge, reporter, machines or {})
        else:
            shapes[edge.name] = None
    _check_shared(machine, shapes, reporter)
    _check_written(machine, reporter)
    graph = hypergraph(machine)
    cycles = equilibrium.cycles(machine, graph, _node_key(graph), reporter, machines or {})
    if reporter.error_count > errors_before:
        return None
    # reads of earlier and later steps too (a machine not over time has none)
    space_time = hypergraph(machine, delayed=True) if machine.time is not None else graph
    stages = None
    if machine.time is not None:
        stages = sequences.stages(machine, space_time, reporter, machines or {}, structures or {})
        if stages is None:
            return None
    structure = _structure(machine, graph, space_time, shapes, stages, structures or {}, cycles)
    _warn_unused(machine, space_time, reporter)
    return structure


def _edge_shapes(machine: ir.Machine, edge: ir.Edge, reporter: Reporter, machines):
    if edge.machine is not None:
        _check_boundary(machine, edge, machines[edge.machine], reporter)
        return ()
    spec = OPS[edge.ops[0].kind]
    if spec.combine:
        entering = _combined_shape(machine, edge, reporter)
    elif spec.windows:
        entering = sequences.attention_shape(machine, edge, reporter)
    elif spec.ids:
        entering = sequences.ids_shape(machine, edge, reporter)
    else:
        entering = _product_shape(machine, edge.inputs, reporter, edge, "reads")
    leaving = _product_shape(machine, edge.outputs, reporter, edge, "writes")
    if entering is None or leaving is None:
        return None
    try:
        shapes = infer_pipeline(edge.ops, entering, leaving)
        _check_sizes(edge, shapes)
        return shapes
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


def _check_sizes(edge: ir.Edge, shapes: tuple[ir.Shape, ...]) -> None:
    """Every shape inside a pipeline within the limits on spaces (an op's ``out=`` or
    ``upsample(scale)`` can make one no tensor could hold)."""
    for i, shape in enumerate(shapes[1:]):
        if max(shape, default=1) > MAX_SIZE or math.prod(shape) > MAX_ELEMENTS:
            raise OpError(
                f"{edge.ops[i].kind} makes a shape {format_shape(shape)}, beyond the limits "
                f"(a size at most {MAX_SIZE:,}, at most {MAX_ELEMENTS:,} numbers per sample)",
                i,
            )


def _check_boundary(machine: ir.Machine, edge: ir.Edge, sub: ir.Machine, reporter) -> None:
    """A sub-machine edge's spaces map one by one onto the sub-machine's inputs and outputs."""
    used = ir.machine_call(sub.name, sub.params)
    for side, ports, role in (
        ("inputs", edge.inputs, ir.Role.INPUT),
        ("outputs", edge.outputs, ir.Role.OUTPUT),
    ):
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
            if mine.ids != space.ids:
                reporter.error(
                    Code.SUBMACHINE,
                    f"edge {edge.name!r} maps {port.space} ({sequences.kind_text(mine)}) onto "
                    f"the {side[:-1]} {space.name} ({sequences.kind_text(space)}) of {used}",
                    port.span,
                    notes=(Note(message=f"{space.name} is declared here", span=space.span),),
                )
            elif shape != space.shape:
                reporter.error(
                    Code.SUBMACHINE,
                    f"edge {edge.name!r} maps {port.space} {format_shape(shape)} onto the "
                    f"{side[:-1]} {space.name} {format_shape(space.shape)} of {used}",
                    port.span,
                    notes=(Note(message=f"{space.name} is declared here", span=space.span),),
                )


def _check_shared(machine: ir.Machine, shapes, reporter: Reporter) -> None:
    """An edge that reuses another's parameters needs layers of the same shapes."""
    for edge in machine.edges:
        if edge.shares is None or edge.machine is not None:
            continue
        mine, theirs = shapes.get(edge.name), shapes.get(edge.shares)
        if not mine or not theirs:
            continue  # their shapes failed: reported already
        original = next(e for e in machine.edges if e.name == edge.shares)
        for i, op in enumerate(edge.ops):
            spec = OPS[op.kind]
            if spec.layer is None:
                continue
            site = Site(op=op, edge="", where="")
            if spec.layer(site, mine[i], mine[i + 1]) != spec.layer(site, theirs[i], theirs[i + 1]):
                reporter.error(
                    Code.SUBMACHINE,
                    f"edge {edge.name!r} shares the parameters of {edge.shares!r}, whose "
                    f"{op.kind} maps {format_shape(theirs[i])} to {format_shape(theirs[i + 1])}, "
                    f"but here it would map {format_shape(mine[i])} to "
                    f"{format_shape(mine[i + 1])}",
                    edge.span,
                    notes=(Note(message=f"{edge.shares!r} is declared here", span=original.span),),
                    hint="shared parameters need spaces of the same shapes",
                )
                break


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


def _product_shape(machine, ports, reporter, edge, verb) -> ir.Shape | None:
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


def _check_written(machine: ir.Machine, reporter: Reporter) -> None:
    written = {port.space for edge in machine.edges for port in edge.outputs}
    for space in machine.spaces:
        if space.role is not ir.Role.INPUT and space.name not in written:
            reporter.error(
                Code.NEVER_WRITTEN,
                f"{space.role.value} {space.name!r} is never written, so it is always zero",
                space.span,
                hint="write it with an edge, or declare it as an input",
            )


def hypergraph(machine: ir.Machine, delayed: bool = False) -> nx.DiGraph:
    """Spaces and edges as nodes ``("space", name)`` and ``("edge", name)``.

    Reads of other steps (``h[t-1]``, ``h[t+1]``) are arcs only when ``delayed`` is
    true: within one step, the hypergraph is the one without them. Every arc says
    which steps it reads (:func:`sequences.steps_read`): ``now``, ``past``, ``future``
    and ``window``.
    """
    graph = nx.DiGraph()
    graph.add_nodes_from((("space", s.name), {"index": i}) for i, s in enumerate(machine.spaces))
    graph.add_nodes_from((("edge", e.name), {"index": i}) for i, e in enumerate(machine.edges))
    arcs: dict[tuple, dict[str, bool]] = {}
    for edge in machine.edges:
        node = ("edge", edge.name)
        for port in edge.inputs:
            if port.position:
                continue  # the step number is no space
            if port.delay and not delayed:
                continue
            read = sequences.steps_read(port)
            data = arcs.get((("space", port.space), node))
            if data is None:
                arcs[("space", port.space), node] = read
            else:  # the edge reads the space at several steps
                arcs[("space", port.space), node] = {k: data[k] or read[k] for k in data}
        for port in edge.outputs:
            arcs[node, ("space", port.space)] = sequences.NOW
    graph.add_edges_from((u, v, data) for (u, v), data in arcs.items())
    return graph


def _node_key(graph: nx.DiGraph):
    return lambda node: (node[0] != "space", graph.nodes[node]["index"])


def _depths(machine: ir.Machine, graph: nx.DiGraph, cycles: tuple[ir.Cycle, ...]):
    """The depth of every space and the level of every edge, a solved cycle counting as one
    edge: its edges all have the level after everything they read, and its spaces that
    depth."""
    if cycles:
        graph = _contracted(machine, graph, cycles)
    depth: dict[str, int] = {}
    level: dict[tuple[str, object], int] = {}
    for node in nx.lexicographical_topological_sort(graph, key=_node_key(graph)):
        kind, name = node
        if kind == "space":
            depth[name] = max((level[writer] for writer in graph.predecessors(node)), default=0)
        else:
            # an edge that reads only other steps depends on nothing in its own step; a
            # cycle depends on what its edges read and on the edges that add to its spaces
            preds = graph.predecessors(node)
            before = [depth[p[1]] if p[0] == "space" else level[p] for p in preds]
            level[node] = 1 + max(before, default=0)
    edges = {name: k for (kind, name), k in level.items() if kind == "edge"}
    for i, cycle in enumerate(cycles):
        k = level[("cycle", i)]
        edges.update((e, k) for e in cycle.edges)
        depth.update((s, k) for s in cycle.spaces)
    return depth, edges


def _contracted(machine: ir.Machine, graph: nx.DiGraph, cycles: tuple[ir.Cycle, ...]):
    """The hypergraph with each solved cycle made one node ``("cycle", i)``: acyclic."""
    member = {}
    for i, cycle in enumerate(cycles):
        member.update((("space", s), ("cycle", i)) for s in cycle.spaces)
        member.update((("edge", e), ("cycle", i)) for e in cycle.edges)
    contracted = nx.DiGraph()
    contracted.add_nodes_from((n, d) for n, d in graph.nodes(data=True) if n not in member)
    for i, cycle in enumerate(cycles):
        first = min(graph.nodes[("edge", e)]["index"] for e in cycle.edges)
        contracted.add_node(("cycle", i), index=first)
    for u, v in graph.edges():
        u, v = member.get(u, u), member.get(v, v)
        if u != v:
            contracted.add_edge(u, v)
    return contracted


def _structure(
    machine: ir.Machine,
    graph: nx.DiGraph,
    space_time: nx.DiGraph,
    shapes,
    stages,
    structures,
    cycles: tuple[ir.Cycle, ...] = (),
) -> ir.Structure:
    depth, level = _depths(machine, graph, cycles)
    index = {edge.name: i for i, edge in enumerate(machine.edges)}
    group = dict(index)  # the edges of a solved cycle run together, where its first one would
    for cycle in cycles:
        first = min(index[e] for e in cycle.edges)
        group.update((e, first) for e in cycle.edges)
    order = tuple(sorted(level, key=lambda e: (level[e], group[e], index[e])))
    by_level: list[list[str]] = [[] for _ in range(max(level.values(), default=0))]
    for e in order:
        by_level[level[e] - 1].append(e)
    levels = tuple(tuple(edges) for edges in by_level)
    if machine.time is None:
        return ir.Structure(
            order=order,
            depth={space.name: depth[space.name] for space in machine.spaces},
            levels=levels,
            shapes={edge.name: shapes[edge.name] for edge in machine.edges},
            cycles=cycles,
        )
    stages = sequences.stage_orders(machine, stages, order, space_time, _node_key(space_time))
    delays: dict[str, int] = {}
    windows: dict[str, int | None] = {}
    causal = True
    for edge in machine.edges:
        if edge.machine is not None and not structures[edge.machine].causal:
            causal = False
        for port in edge.inputs:
            if port.delay > 0:
                delays[port.space] = max(delays.get(port.space, 0), port.delay)
            elif port.delay < 0:
                causal = False
            window = port.window
            if window is None:
                continue
            if window.kind is ir.WindowKind.FULL:
                causal = False
            elif window.kind is ir.WindowKind.CAUSAL or windows.get(port.space, 0) is None:
                windows[port.space] = None
            else:
                windows[port.space] = max(windows.get(port.space, 0), window.size)
    return ir.Structure(
        order=tuple(e for stage in stages for e in stage.edges),
        depth={space.name: depth[space.name] for space in machine.spaces},
        levels=levels,
        shapes={edge.name: shapes[edge.name] for edge in machine.edges},
        delays={s.name: delays[s.name] for s in machine.spaces if s.name in delays},
        windows={s.name: windows[s.name] for s in machine.spaces if s.name in windows},
        stages=stages,
        causal=causal,
    )


def _warn_unused(machine: ir.Machine, graph: nx.DiGraph, reporter: Reporter) -> None:
    useful: set = set()
    for space in machine.spaces:
        if space.role is ir.Role.OUTPUT:
            node = ("space", space.name)
            useful |= nx.ancestors(graph, node) | {node}
    for space in machine.spaces:
        node = ("space", space.name)
        if space.role is ir.Role.INPUT and graph.out_degree(node) == 0:
            reporter.warning(Code.UNREAD_INPUT, f"input {space.name!r} is never read", space.span)
        elif node not in useful:
            reporter.warning(
                Code.UNREACHED_OUTPUT,
                f"{space.role.value} {space.name!r} does not reach any output",
                space.span,
                hint="nothing it feeds is returned by forward",
            )
