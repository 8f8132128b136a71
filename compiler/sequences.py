"""Sequence machines in the check stage: windows, reads of the future, ids and stages.

A machine over time is a machine over space-time: every space has a copy at
every step. An edge may read a space at another step (``h[t-1]``,
``h[t+1]``), at a window of steps (``k[0..t]``, ``k[t-w..t]``, ``k[..]``:
attention), an ids space (token ids), or the step number itself (``t``:
positions). The space-time hypergraph must stay acyclic; its strongly connected
parts are the recurrences, each of which runs step by step in one direction of
time, and everything else runs on every step at once. :func:`stages` cuts the
machine into that sequence of stages.
"""

from __future__ import annotations

import bisect
import heapq
from dataclasses import dataclass

from . import ir
from .diagnostics import Code, Note, Reporter
from .digraph import Graph, strongly_connected
from .ops import OPS, format_shape

# Which steps an arc of the space-time graph reads: its own (now), earlier ones (past),
# later ones (future), through a window of steps (window).
NO_STEPS = {"now": False, "past": False, "future": False, "window": False}
NOW = {**NO_STEPS, "now": True}


def steps_read(port: ir.Port) -> dict[str, bool]:
    """The steps a read covers, relative to the step that reads."""
    window = port.window
    if window is not None:
        full = window.kind is ir.WindowKind.FULL
        return {"now": True, "past": True, "future": full, "window": True}
    return {**NO_STEPS, "now": port.delay == 0, "past": port.delay > 0, "future": port.delay < 0}


def kind_text(space: ir.Space) -> str:
    """``ids(256)`` or ``[16]``: what a space holds, for messages."""
    return f"ids({space.ids})" if space.ids is not None else format_shape(space.shape)


def _first_op(edge: ir.Edge):
    return OPS[edge.ops[0].kind] if edge.ops else None


def check_reads(
    machine: ir.Machine, edge: ir.Edge, machines: dict[str, ir.Machine], reporter: Reporter
) -> bool:
    """Windows only into attention, ids and the step number only into embedding."""
    ok = True
    for port in edge.outputs:
        if machine.space(port.space).ids is not None:
            reporter.error(
                Code.SEQUENCE,
                f"edge {edge.name!r} writes the ids space {port.space!r}; no op writes ids",
                port.span,
            )
            ok = False
    first = _first_op(edge)
    # NOTE: scale. What the edge applies, as messages name it: made where one needs it
    what = (
        f"the machine {ir.machine_call(machines[edge.machine].name, machines[edge.machine].params)}"
        if edge.machine is not None
        and edge.machine in machines
        and any(p.window is not None or p.position for p in edge.inputs)
        else edge.machine
        if edge.machine is not None
        else edge.ops[0].kind
        if edge.ops
        else "this edge"
    )
    for port in edge.inputs:
        if port.window is not None and not (first and first.windows):
            reporter.error(
                Code.SEQUENCE,
                f"edge {edge.name!r} reads a window of steps {port.text(machine.time)}, but "
                f"{what} reads one step at a time",
                port.span,
                hint="windows are read by attention: q × k[0..t] × v[0..t] -> u = "
                "attention(heads=h)",
            )
            ok = False
        ids = port.position or machine.space(port.space).ids is not None
        if ids and (port.delay or port.window is not None):
            # NOTE: outside the sequence a one-hot space is the zero vector, which no id
            # stands for; an embedding read at another step has that zero.
            reporter.error(
                Code.SEQUENCE,
                f"edge {edge.name!r} reads ids {port.text(machine.time)} at another step; ids "
                "are read at their own step",
                port.span,
                hint="embed them, and read the embedding at another step",
            )
            ok = False
        elif ids and edge.machine is None and not (first and first.ids):
            name = f"the time index {port.space!r}" if port.position else f"ids {port.space!r}"
            reporter.error(
                Code.SEQUENCE,
                f"edge {edge.name!r} reads {name} with {what}; ids are read by embedding",
                port.span,
                hint=f"{edge.name} : {port.space} -> "
                + " × ".join(p.space for p in edge.outputs)
                + " = embedding"
                + ("(n)" if port.position else ""),
            )
            ok = False
        elif port.position and edge.machine is not None:
            reporter.error(
                Code.SEQUENCE,
                f"edge {edge.name!r} passes the time index {port.space!r} to {what}; "
                "the step number is read by embedding",
                port.span,
            )
            ok = False
    if not ok or first is None:
        return ok
    for op in edge.ops[1:]:
        spec = OPS[op.kind]
        if spec.windows or spec.ids:
            reporter.error(
                Code.SEQUENCE,
                f"edge {edge.name!r}: {op.kind} reads the edge's spaces, so it must be the "
                "first op of the pipeline",
                op.span,
            )
            return False
    if first.ids and (len(edge.inputs) != 1 or not _reads_ids(machine, edge.inputs[0])):
        reporter.error(
            Code.SEQUENCE,
            f"edge {edge.name!r}: embedding reads one ids space (ids(n)) or the time index "
            f"{machine.time or 't'}, got {' × '.join(p.text(machine.time) for p in edge.inputs)}",
            edge.ops[0].span,
            hint="embed a vector space with linear",
        )
        return False
    return True


def _reads_ids(machine: ir.Machine, port: ir.Port) -> bool:
    return port.position or machine.space(port.space).ids is not None


def ids_shape(machine: ir.Machine, edge: ir.Edge, reporter: Reporter) -> ir.Shape | None:
    """The one-hot view ``[n]`` of the ids an embedding reads."""
    port, op = edge.inputs[0], edge.ops[0]
    given = op.args.get("num")
    if port.position:
        if given is None:
            reporter.error(
                Code.SEQUENCE,
                f"edge {edge.name!r}: embedding of the time index {port.space!r} needs the "
                "number of positions",
                op.span,
                hint=f"{edge.name} : {port.space} -> ... = embedding(ctx), with ctx the "
                "longest sequence",
            )
            return None
        return (given,)
    count = machine.space(port.space).ids
    if given is not None and given != count:
        reporter.error(
            Code.SHAPE,
            f"edge {edge.name!r}: embedding({given}) reads {port.space!r}, which holds "
            f"ids({count})",
            op.span,
            hint="leave the number out: embedding takes it from the ids space",
        )
        return None
    return (count,)


def attention_shape(machine: ir.Machine, edge: ir.Edge, reporter: Reporter) -> ir.Shape | None:
    """The values' shape, after checking ``q × k[window] × v[window]``."""
    ports = edge.inputs
    if len(ports) != 3:
        reporter.error(
            Code.SHAPE,
            f"edge {edge.name!r}: attention reads queries × keys × values, "
            f"got {len(ports)} space{'s' if len(ports) != 1 else ''}",
            edge.ops[0].span,
            hint="q × k[0..t] × v[0..t] -> u = attention(heads=h)",
        )
        return None
    q, k, v = ports
    problems = []
    if q.window is not None or q.delay:
        problems.append((q, f"the queries {q.text(machine.time)} are read at their own step"))
    for port, role in ((k, "keys"), (v, "values")):
        if port.window is None:
            problems.append(
                (
                    port,
                    f"the {role} {port.text(machine.time)} are read through a window of steps: "
                    f"{port.space}[0..{machine.time}], {port.space}[{machine.time}-w.."
                    f"{machine.time}] or {port.space}[..]",
                )
            )
    if not problems and k.window != v.window:
        problems.append((v, "keys and values are read through the same window"))
    for port, message in problems[:1]:
        reporter.error(Code.SEQUENCE, f"edge {edge.name!r}: {message}", port.span)
        return None
    shapes = [machine.space(port.space).shape for port in ports]
    for port, shape in zip(ports, shapes, strict=True):
        if len(shape) != 1:
            reporter.error(
                Code.SHAPE,
                f"edge {edge.name!r}: attention reads vectors, but {port.space} is "
                f"{format_shape(shape)}",
                port.span,
            )
            return None
    if shapes[0] != shapes[1]:
        reporter.error(
            Code.SHAPE,
            f"edge {edge.name!r}: queries {q.space} {format_shape(shapes[0])} and keys "
            f"{k.space} {format_shape(shapes[1])} must have one size",
            k.span,
        )
        return None
    heads = edge.ops[0].args.get("heads")
    if isinstance(heads, int) and heads > 0 and shapes[0][0] % heads:
        reporter.error(
            Code.SHAPE,
            f"edge {edge.name!r}: heads={heads} does not divide the size {shapes[0][0]} of "
            f"the queries and keys",
            edge.ops[0].span,
            hint="heads are contiguous blocks of features, as in nn.MultiheadAttention",
        )
        return None
    return shapes[2]


# --- stages -------------------------------------------------------------------------


@dataclass
class _Unit:
    """A recurrence (a strongly connected part with reads of other steps), or one edge."""

    kind: ir.StageKind
    edges: list[str]
    first: int  # declaration index of its first edge: the tie-break


def _recurrences(machine: ir.Machine, graph: Graph, reporter: Reporter):
    """The units of the machine; reports recurrences that cannot run in one direction."""
    index = {edge.name: i for i, edge in enumerate(machine.edges)}
    by_name = {edge.name: edge for edge in machine.edges}
    units: list[_Unit] = []
    unit_of: dict[str, int] = {}
    ok = True
    for component in strongly_connected(graph):
        edges = sorted((n for k, n in component if k == "edge"), key=index.get)
        if len(component) == 1:
            continue
        arcs = [data for _, _, data in graph.arcs(component)]
        past = any(a["past"] for a in arcs)
        future = any(a["future"] for a in arcs)
        windowed = [
            (by_name[name], port)
            for name in edges  # in declaration order
            for port in by_name[name].inputs
            if port.window is not None
        ]
        if windowed:
            edge, port = windowed[0]
            reporter.error(
                Code.SEQUENCE,
                f"edge {edge.name!r} reads the window {port.text(machine.time)} but is part of "
                "a recurrence; attention runs on every step at once, outside recurrences",
                port.span,
                notes=_cycle_notes(machine, graph, component, lambda a: a["past"] or a["future"]),
            )
            ok = False
            continue
        if past and future:
            path, notes = _cycle(machine, graph, component, lambda a: a["past"])
            other, more = _cycle(machine, graph, component, lambda a: a["future"])
            if any(note not in notes for note in more):  # a cycle through both is enough
                path += f", and {other}"
                notes += [note for note in more if note not in notes]
            reporter.error(
                Code.CYCLE,
                f"cycle through both earlier and later steps: {path}",
                notes[0].span,
                notes=tuple(notes),
                hint="a recurrence runs one way in time: read only earlier steps (h[t-1]) "
                "or only later ones (h[t+1]) around a cycle",
            )
            ok = False
            continue
        unit = _Unit(
            kind=ir.StageKind.FORWARD if past else ir.StageKind.BACKWARD,
            edges=edges,
            first=index[edges[0]],
        )
        for name in edges:
            unit_of[name] = len(units)
        units.append(unit)
    for edge in machine.edges:
        if edge.name not in unit_of:
            unit_of[edge.name] = len(units)
            units.append(_Unit(kind=ir.StageKind.ALL, edges=[edge.name], first=index[edge.name]))
    return (units, unit_of) if ok else None


def _cycle_notes(machine, graph: Graph, component, through) -> tuple[Note, ...]:
    """The edges of one cycle of ``component`` that passes an arc ``through`` accepts."""
    return tuple(_cycle(machine, graph, component, through)[1])


def _cycle(machine, graph: Graph, component, through) -> tuple[str, list[Note]]:
    """One cycle of ``component`` through an arc ``through`` accepts: as a path
    (``g[t-1] -> fwd -> h[t+1] -> back -> g``) and as a note per edge."""
    import networkx as nx  # lazily: only this message needs it

    arcs = graph.arcs(component)
    arcs = sorted((u, v) for u, v, data in arcs if u[0] == "space" and through(data))
    if not arcs:
        return "", []
    u, v = arcs[0]
    # back from the edge to the space it reads
    path = nx.shortest_path(graph.to_networkx(component), v, u)
    edges = {edge.name: edge for edge in machine.edges}
    notes, parts = [], []
    cycle = [u, *path[:-1]]
    for i, (kind, name) in enumerate(cycle):
        if kind != "edge":
            continue
        read = cycle[i - 1][1]
        wrote = cycle[(i + 1) % len(cycle)][1]
        port = next(
            (p for p in edges[name].inputs if p.space == read and through(steps_read(p))),
            next((p for p in edges[name].inputs if p.space == read), None),
        )
        shown = port.text(machine.time) if port is not None else read
        parts += [shown, name]
        notes.append(
            Note(message=f"edge {name!r} reads {shown} and writes {wrote!r}", span=edges[name].span)
        )
    return " -> ".join([*parts, cycle[0][1]]), notes


def _check_loop_machines(machine, units, machines, structures, reporter) -> bool:
    """A sub-machine over time runs one step per call inside a loop: it must be causal,
    and its own steps go forward, so a backward loop cannot hold one that keeps state."""
    ok = True
    by_name = {edge.name: edge for edge in machine.edges}
    for unit in units:
        if unit.kind is ir.StageKind.ALL:
            continue
        for name in unit.edges:
            edge = by_name[name]
            if edge.machine is None or machines[edge.machine].time is None:
                continue
            sub, structure = machines[edge.machine], structures[edge.machine]
            used = ir.machine_call(sub.name, sub.params)
            if not structure.causal:
                problem = f"{used} reads later steps, so it cannot run one step at a time"
            elif unit.kind is ir.StageKind.BACKWARD and (
                structure.delays or structure.windows or _reads_positions(sub)
            ):
                problem = (
                    f"{used} keeps state from one step to the next, forward in time, but this "
                    "recurrence runs backward"
                )
            else:
                continue
            reporter.error(
                Code.SEQUENCE,
                f"edge {edge.name!r} is part of a recurrence, which runs step by step; {problem}",
                edge.span,
                hint="run the machine outside the recurrence, on every step at once",
            )
            ok = False
    return ok


def _reads_positions(machine: ir.Machine) -> bool:
    return any(port.position for edge in machine.edges for port in edge.inputs)


def stages(
    machine: ir.Machine,
    graph: Graph,
    reporter: Reporter,
    machines: dict[str, ir.Machine],
    structures: dict[str, ir.Structure],
) -> tuple[ir.Stage, ...] | None:
    """The stages of a machine over time, in the order they run (edges unordered yet).

    Every recurrence is a loop over the steps, forward (it reads earlier steps) or
    backward (later ones); every other edge runs on every step at once. Units are
    taken in dependency order, greedily joining the stage being built when it is of
    their kind: a loop may take another recurrence of its direction unless that one
    reads the loop's spaces against its direction.
    """
    found = _recurrences(machine, graph, reporter)
    if found is None:
        return None
    units, unit_of = found
    if not _check_loop_machines(machine, units, machines, structures, reporter):
        return None
    deps: dict[int, dict[int, dict[str, bool]]] = {i: {} for i in range(len(units))}
    for space, edge, data in graph.arcs():
        if space[0] != "space":
            continue
        reader = unit_of[edge[1]]
        for writer_node in graph.predecessors(space):
            writer = unit_of[writer_node[1]]
            if writer != reader:
                merged = deps[reader].setdefault(writer, dict(NO_STEPS))
                for key, value in data.items():
                    merged[key] = merged[key] or value
    # NOTE: scale. The units whose writers are all taken, kept in order as they become
    # ready: finding them again among all units at every step made this quadratic (a chain
    # of 16,000 edges over time took 9 s).
    waiting = {i: len(d) for i, d in deps.items()}  # writers not taken yet
    readers: dict[int, list[int]] = {i: [] for i in deps}
    for reader, writers in deps.items():
        for writer in writers:
            readers[writer].append(reader)
    first = lambda i: (units[i].first, i)  # noqa: E731
    ready = sorted((i for i, count in waiting.items() if count == 0), key=first)
    result: list[tuple[ir.StageKind, list[int]]] = []
    while ready:
        current = result[-1] if result else None
        chosen = None
        if current:
            chosen = next((i for i in ready if _joins(units[i], deps[i], *current)), None)
        if chosen is not None:
            current[1].append(chosen)
        else:
            for kind in ir.StageKind:  # every step at once first, then forward, then backward
                chosen = next((i for i in ready if units[i].kind is kind), None)
                if chosen is not None:
                    result.append((kind, [chosen]))
                    break
        ready.remove(chosen)
        for reader in readers[chosen]:
            waiting[reader] -= 1
            if waiting[reader] == 0:
                bisect.insort(ready, reader, key=first)
    if any(waiting.values()):  # the units depend on each other in a circle: never here
        raise RuntimeError("the stages of a machine over time depend on each other")
    found = tuple(
        ir.Stage(kind=kind, edges=tuple(e for i in members for e in units[i].edges))
        for kind, members in result
    )
    by_name = {edge.name: edge for edge in machine.edges}
    fits = [_carried_fits(machine, by_name, stage, reporter) for stage in found]
    return found if all(fits) else None


MAX_CARRIED = 1_000  # earlier (later) steps of its spaces one step loop carries, all together


def _carried_fits(
    machine: ir.Machine, by_name: dict[str, ir.Edge], stage: ir.Stage, reporter: Reporter
) -> bool:
    """Whether a step loop carries at most :data:`MAX_CARRIED` steps: each of its spaces
    it reads at another step goes from step to step as one tensor per step it reaches
    back (forward) to, so ``h[t-100000]`` inside a recurrence would be 100,000 tensors
    and a generated module of megabytes per space."""
    if stage.kind is ir.StageKind.ALL:
        return True
    edges = [by_name[name] for name in stage.edges]
    written = {port.space for edge in edges for port in edge.outputs}
    reach: dict[str, tuple[ir.Edge, ir.Port]] = {}  # the read of a space reaching furthest
    for edge in edges:
        for port in edge.inputs:
            if port.delay and port.space in written:
                if port.space not in reach or abs(port.delay) > abs(reach[port.space][1].delay):
                    reach[port.space] = (edge, port)
    total = sum(abs(port.delay) for _, port in reach.values())
    if total <= MAX_CARRIED:
        return True
    edge, port = max(reach.values(), key=lambda read: abs(read[1].delay))
    reporter.error(
        Code.TIME,
        f"edge {edge.name!r} reads {port.text(machine.time)} inside a recurrence: a step loop "
        f"carries the values of its spaces at most {MAX_CARRIED:,} steps back or ahead, all "
        f"of them together, and this one would carry {total:,}",
        port.span,
        hint="read it outside the recurrence (an edge that runs on every step at once), "
        "or through a window of steps (attention)",
    )
    return False


def _joins(unit: _Unit, deps: dict[int, dict[str, bool]], kind, members: list[int]) -> bool:
    """Whether ``unit`` can run in the stage being built (of ``kind``, holding ``members``)."""
    if unit.kind is not kind:
        return False
    if kind is ir.StageKind.ALL:
        return True  # every step at once: reads of any step are shifts
    against = "future" if kind is ir.StageKind.FORWARD else "past"
    return not any(deps[w][against] for w in deps if w in members)


def stage_orders(
    machine: ir.Machine, stages: tuple[ir.Stage, ...], order, space_time: Graph, key
) -> tuple[ir.Stage, ...]:
    """Each stage's edges in the order they run.

    In a loop, the order of one step (``order``, from the within-step graph); on every
    step at once, an order in which an edge also comes after the writers of the
    spaces it reads at other steps.
    """
    # NOTE: scale. Each stage is ordered on its own edges and the spaces they read and
    # write, not on every edge and space of the machine: that was quadratic in the number
    # of stages (a stack of 1,000 recurrences took 20 s).
    position = {e: k for k, e in enumerate(order)}
    result = []
    for stage in stages:
        edges = tuple(sorted(stage.edges, key=position.__getitem__))
        if stage.kind is ir.StageKind.ALL:
            nodes = {("edge", e) for e in edges}
            for node in list(nodes):
                nodes.update(space_time.predecessors(node))
                nodes.update(space_time.successors(node))
            # spaces no edge of the stage reads or writes would be nodes without arcs here:
            # they change nothing in the order of the edges
            sorted_nodes = _lexicographic(space_time, nodes, key)
            edges = tuple(n for k, n in sorted_nodes if k == "edge")
        result.append(ir.Stage(kind=stage.kind, edges=edges))
    return tuple(result)


def _lexicographic(graph: Graph, nodes: set, key) -> list:
    """What networkx's ``lexicographical_topological_sort`` makes of the part of ``graph``
    on ``nodes``, in time of those nodes and their arcs."""

    missing = {node: sum(1 for n in graph.predecessors(node) if n in nodes) for node in nodes}
    ready = [(key(node), node) for node, count in missing.items() if count == 0]
    heapq.heapify(ready)
    found = []
    while ready:
        _, node = heapq.heappop(ready)
        found.append(node)
        for after in graph.successors(node):
            if after in missing:
                missing[after] -= 1
                if missing[after] == 0:
                    heapq.heappush(ready, (key(after), after))
    if len(found) < len(nodes):
        raise RuntimeError("a stage of a machine over time has a cycle: never here")
    return found
