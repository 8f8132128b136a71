"""Check stage: shapes, writers, acyclicity, depths and levels of every machine.

Shapes that spaces leave out are inferred first (:mod:`infer`), so that every later
stage sees a machine with every shape known.

The hypergraph is a bipartite directed graph: space → edge where the edge
reads the space, edge → space where it writes it. A machine is of finite
depth exactly when that graph is acyclic; a topological sort of it is the
order in which running each edge once computes the resolvent.
"""

from __future__ import annotations

from . import equilibrium, ir, sequences, symbols
from .diagnostics import Code, Note, Reporter
from .digraph import Graph
from .infer import infer_shapes
from .ops import OPS, Site, format_shape
from .shapes import edge_shapes
from .sizes import collect_relations


def check(program: ir.Program, reporter: Reporter) -> ir.CheckedProgram:
    """Check every machine; machines with errors are left out (the reporter has the errors)."""
    checked = []
    machines = {m.key: m for m in (*program.instances, *program.machines)}
    structures: dict[str, ir.Structure] = {}
    for machine in (*program.instances, *program.machines):  # what a machine uses comes first
        if any(e.machine is not None and e.machine not in structures for e in machine.edges):
            continue  # a machine it uses as an edge has errors, reported there
        if not symbols.check_symbols(machine, reporter):  # sizes bound at call time
            continue
        with collect_relations():  # a relation a writer needs is checked where it is read
            machine = infer_shapes(machine, reporter, machines)  # the shapes left out
        if machine is None:
            continue
        machines[machine.key] = machine
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
    symbolic = bool(symbols.bound(machine))
    relations: dict[tuple[str, str], ir.Relation] = {}
    extra: list = []  # sizes that must be at least 1 for the machines used as edges
    for edge in machine.edges:
        if not sequences.check_reads(machine, edge, machines or {}, reporter):
            shapes[edge.name] = None
            continue
        if symbolic:
            with collect_relations() as found:  # equal for some sizes only: checked per call
                shapes[edge.name] = edge_shapes(machine, edge, reporter, machines or {})
            for left, right in found:
                relation = ir.Relation(left=left, right=right, edge=edge.name, span=edge.span)
                relations.setdefault((str(left), str(right)), relation)
        else:  # no size is equal for some sizes only: nothing to collect
            shapes[edge.name] = edge_shapes(machine, edge, reporter, machines or {})
        sub = (structures or {}).get(edge.machine) if edge.machine is not None else None
        if sub is not None and sub.sizes:  # what the machine used as an edge needs of its sizes
            needed, least = symbols.sub_requirements(
                machine, edge, (machines or {})[edge.machine], sub, reporter
            )
            for relation in needed:
                relations.setdefault((relation.text(), ""), relation)
            extra += least
    _check_shared(machine, shapes, reporter)
    _check_written(machine, reporter)
    # NOTE: scale. A machine of finite depth (no cycle, no solve) builds no networkx graph:
    # its depths and unused spaces come from plain lists of successors, a few times cheaper
    # to make and to walk (docs/benchmarks.md, "Compile time at scale").
    successors = _successors(machine)
    order = _topological(successors)  # None: the hypergraph has a cycle
    cycles: tuple[ir.Cycle, ...] = ()
    if order is None or machine.solves:
        graph = hypergraph(machine)
        cycles = equilibrium.cycles(machine, graph, _node_key(graph), reporter, machines or {})
    if reporter.error_count > errors_before:
        return None
    # reads of earlier and later steps too (a machine not over time has none)
    space_time = None
    stages = None
    if machine.time is not None:
        space_time = hypergraph(machine, delayed=True)
        stages = sequences.stages(machine, space_time, reporter, machines or {}, structures or {})
        if stages is None:
            return None
    within = (_contracted(successors, cycles), None) if cycles else (successors, order)
    structure = _structure(machine, *within, space_time, shapes, stages, structures or {}, cycles)
    if symbolic:
        least, together = symbols.smallest(machine, shapes, extra)
        found = (*relations.values(), *together)
        example = symbols.example_sizes(least, found, reporter)
        if example is None:
            return None
        update = {"sizes": least, "example_sizes": example, "relations": found}
        structure = structure.model_copy(update=update)
    if machine.time is not None:  # reads of other steps count
        successors = _successors(machine, delayed=True)
        order = _topological(successors)
    _warn_unused(machine, successors, order, reporter)
    return structure


def _check_shared(machine: ir.Machine, shapes, reporter: Reporter) -> None:
    """An edge that reuses another's parameters needs layers of the same shapes."""
    by_name = {edge.name: edge for edge in machine.edges}
    for edge in machine.edges:
        if edge.shares is None or edge.machine is not None:
            continue
        mine, theirs = shapes.get(edge.name), shapes.get(edge.shares)
        if not mine or not theirs:
            continue  # their shapes failed: reported already
        original = by_name[edge.shares]
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


def hypergraph(machine: ir.Machine, delayed: bool = False) -> Graph:
    """Spaces and edges as nodes ``("space", name)`` and ``("edge", name)``.

    Reads of other steps (``h[t-1]``, ``h[t+1]``) are arcs only when ``delayed`` is
    true: within one step, the hypergraph is the one without them. Every arc says
    which steps it reads (:func:`sequences.steps_read`): ``now``, ``past``, ``future``
    and ``window``.
    """
    graph = Graph(("space", s.name) for s in machine.spaces)
    for e in machine.edges:
        graph.add_node(("edge", e.name))
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
    for (u, v), data in arcs.items():
        graph.add_arc(u, v, data)
    return graph


def _node_key(graph: Graph):
    """Spaces first, then edges, each in declaration order."""
    return lambda node: (node[0] != "space", graph.index[node])


Successors = dict[tuple[str, object], list[tuple[str, object]]]


def _successors(machine: ir.Machine, delayed: bool = False) -> Successors:
    """The arcs of :func:`hypergraph` as lists of successors (an arc read twice is listed
    twice): what :func:`_depths` and :func:`_warn_unused` walk."""
    successors: Successors = {("space", s.name): [] for s in machine.spaces}
    successors.update((("edge", e.name), []) for e in machine.edges)
    for edge in machine.edges:
        node = ("edge", edge.name)
        for port in edge.inputs:
            if port.position or (port.delay and not delayed):
                continue
            successors[("space", port.space)].append(node)
        successors[node] += [("space", port.space) for port in edge.outputs]
    return successors


def _topological(successors: Successors) -> list | None:
    """The nodes in an order where every arc runs forward (Kahn's), or None on a cycle."""
    missing = dict.fromkeys(successors, 0)
    for nodes in successors.values():
        for node in nodes:
            missing[node] += 1
    ready = [node for node, count in missing.items() if count == 0]
    order = []
    while ready:
        node = ready.pop()
        order.append(node)
        for after in successors[node]:
            missing[after] -= 1
            if missing[after] == 0:
                ready.append(after)
    return order if len(order) == len(missing) else None


def _depths(successors: Successors, order: list | None, cycles: tuple[ir.Cycle, ...]):
    """The depth of every space and the level of every edge, a solved cycle counting as one
    edge: its edges all have the level after everything they read, and its spaces that
    depth.

    A space's depth is the highest level of the edges that write it (0: none does); an
    edge's level is one more than the deepest of what it reads (an edge that reads only
    other steps depends on nothing in its own step; a cycle depends on what its edges read
    and on the edges that add to its spaces). Neither depends on the order the nodes are
    taken in, so any topological order does.

    ``successors`` has each solved cycle contracted (:func:`_contracted`); ``order`` is
    a topological order of it, if known.
    """
    order = order or _topological(successors)
    if order is None:  # cycles are reported before: a solved one is one node here
        raise RuntimeError("the hypergraph has a cycle that is not solved")
    reach = dict.fromkeys(successors, 0)  # the most that what a node reads has
    depth: dict[str, int] = {}
    level: dict[tuple[str, object], int] = {}
    for node in order:
        if node[0] == "space":
            value = depth[node[1]] = reach[node]
        else:
            value = level[node] = reach[node] + 1
        for after in successors[node]:
            if reach[after] < value:
                reach[after] = value
    edges = {name: k for (kind, name), k in level.items() if kind == "edge"}
    for i, cycle in enumerate(cycles):
        k = level[("cycle", i)]
        edges.update((e, k) for e in cycle.edges)
        depth.update((s, k) for s in cycle.spaces)
    return depth, edges


def _contracted(successors: Successors, cycles: tuple[ir.Cycle, ...]) -> Successors:
    """The hypergraph with each solved cycle made one node ``("cycle", i)``: acyclic."""
    member = {}
    for i, cycle in enumerate(cycles):
        member.update((("space", s), ("cycle", i)) for s in cycle.spaces)
        member.update((("edge", e), ("cycle", i)) for e in cycle.edges)
    contracted: Successors = {}
    for node, nodes in successors.items():
        node = member.get(node, node)
        after = contracted.setdefault(node, [])
        after += [n for n in (member.get(n, n) for n in nodes) if n != node]
    return contracted


def _structure(
    machine: ir.Machine,
    successors: Successors,
    topological: list | None,
    space_time: Graph | None,
    shapes,
    stages,
    structures,
    cycles: tuple[ir.Cycle, ...] = (),
) -> ir.Structure:
    depth, level = _depths(successors, topological, cycles)
    # by level, then declaration (a stable sort of the edges in declaration order)
    order = [edge.name for edge in machine.edges]
    if cycles:
        index = {e: i for i, e in enumerate(order)}
        group = dict(index)  # a solved cycle's edges run together, where its first one would
        for cycle in cycles:
            first = min(index[e] for e in cycle.edges)
            group.update((e, first) for e in cycle.edges)
        order = tuple(sorted(order, key=lambda e: (level[e], group[e])))
    else:
        order = tuple(sorted(order, key=level.__getitem__))
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


def _warn_unused(
    machine: ir.Machine, successors: Successors, order: list | None, reporter: Reporter
) -> None:
    """Inputs nothing reads, and spaces that reach no output; ``order`` is a topological
    order of ``successors`` if it has one."""
    # every node some output is reached from (the outputs too)
    useful = {("space", s.name) for s in machine.spaces if s.role is ir.Role.OUTPUT}
    if order is not None:  # what a node reaches comes after it
        for node in reversed(order):
            if node not in useful:
                for after in successors[node]:
                    if after in useful:
                        useful.add(node)
                        break
    else:
        readers: Successors = {node: [] for node in successors}
        for node, nodes in successors.items():
            for after in nodes:
                readers[after].append(node)
        stack = list(useful)
        while stack:
            for before in readers[stack.pop()]:
                if before not in useful:
                    useful.add(before)
                    stack.append(before)
    for space in machine.spaces:
        node = ("space", space.name)
        if space.role is ir.Role.INPUT and not successors[node]:
            reporter.warning(Code.UNREAD_INPUT, f"input {space.name!r} is never read", space.span)
        elif node not in useful:
            reporter.warning(
                Code.UNREACHED_OUTPUT,
                f"{space.role.value} {space.name!r} does not reach any output",
                space.span,
                hint="nothing it feeds is returned by forward",
            )
