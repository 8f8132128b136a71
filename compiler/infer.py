"""Inferred shapes: a space or output declared without a shape takes the shape its writers
produce.

Every edge that writes such a space computes a shape from its inputs and its ops, as check
computes it to compare with a declared shape; a machine used as an edge gives its
outputs' shapes. Shapes are settled in dependency order, so chains, arrays and loops
infer through (``a`` from ``b`` from ``c``). A space is settled when all its writers can
tell their shape, and they must agree; when none can wait any longer (a writer reads a
space that waits on it, as in a recurrence), a space that some writer can already tell
is settled from those writers, and check then holds the others to that shape. What is
left has no shape to take: it depends on itself, or no writer tells one (an op that takes
its size from the outputs, several outputs without a shape), or it has no writer at all.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import ir, sequences, symbols
from .diagnostics import Code, Note, Reporter, Span
from .ops import OPS, NeedsOutputs, format_shape
from .shapes import check_boundary, entering_shape, pipeline_shapes

if TYPE_CHECKING:  # imported where used: most machines never need networkx
    import networkx as nx


def infer_shapes(
    machine: ir.Machine, reporter: Reporter, machines: dict[str, ir.Machine]
) -> ir.Machine | None:
    """``machine`` with every shape known, or None after reporting why one cannot be.

    ``machines``: the machines used as edges, with their own shapes inferred already.
    """
    if all(space.shape is not None for space in machine.spaces):
        return machine
    inference = _Inference(machine, reporter, machines)
    if not inference.run():
        return None
    spaces = tuple(inference.space(space.name) for space in machine.spaces)
    return machine.model_copy(update={"spaces": spaces})


@dataclass(frozen=True)
class _Told:
    """What one writer tells of a space: a shape, or why it cannot (``shape`` None)."""

    shape: ir.Shape | None
    reason: str = ""
    span: Span | None = None
    fix: str | None = None  # a hint: how to make the writer tell it
    failed: bool = False  # its shapes had an error, reported already
    waits: bool = False  # it may tell once another of its outputs has a shape


class _Inference:
    def __init__(self, machine: ir.Machine, reporter: Reporter, machines: dict[str, ir.Machine]):
        self.machine = machine
        self.name = machine.name  # what the shape helpers read of a machine
        self.time = machine.time
        self.reporter = reporter
        self.machines = machines
        self.table = {space.name: space for space in machine.spaces}
        self.pending = [s.name for s in machine.spaces if s.shape is None]
        self.waiting = set(self.pending)  # neither settled nor failed yet
        self.writers: dict[str, list[ir.Edge]] = {name: [] for name in self.pending}
        self.missing: dict[str, set[str]] = {}  # edge -> the spaces without shape it reads
        self.readers: dict[str, list[ir.Edge]] = {name: [] for name in self.pending}
        self.leaving: dict[str, ir.Shape | _Told] = {}  # edge -> what its pipeline produces
        for edge in machine.edges:
            for port in edge.outputs:
                if port.space in self.writers:
                    self.writers[port.space].append(edge)
            # NOTE: what a machine used as an edge writes does not depend on what it reads,
            # unless it has sizes known at call time: those come from the spaces it reads
            free = edge.machine is not None and not symbols.bound(machines[edge.machine])
            reads = set() if free else self._reads(edge)
            self.missing[edge.name] = reads
            for name in reads:
                self.readers[name].append(edge)
        self.blocked = {  # space -> how many of its writers wait on another space
            name: sum(1 for w in self.writers[name] if self.missing[w.name])
            for name in self.pending
        }
        self.index = {name: i for i, name in enumerate(self.pending)}
        # spaces (by index) some of whose writers, not all, are ready: settled from those
        # when nothing else can be, first declared first
        self.candidates = [
            self.index[name]
            for name in self.pending
            if 0 < self.blocked[name] < len(self.writers[name])
        ]

    def space(self, name: str) -> ir.Space:
        return self.table[name]

    def _reads(self, edge: ir.Edge) -> set[str]:
        return {p.space for p in edge.inputs if not p.position and p.space in self.waiting}

    # --- settling -----------------------------------------------------------------------

    def run(self) -> bool:
        """Settle every shape; False after reporting the ones that cannot be."""
        errors_before = self.reporter.error_count
        queue = deque(name for name in self.pending if self.blocked[name] == 0)
        deferred: list[str] = []  # its writers wait on the shapes of their other outputs
        while True:
            while queue:
                name = queue.popleft()
                if name in self.waiting and not self._settle(name, self.writers[name], queue):
                    deferred.append(name)
            deferred = [n for n in dict.fromkeys(deferred) if n in self.waiting]
            if any(self._settle(name, self.writers[name], queue) for name in deferred):
                continue
            if not self._settle_told(queue):
                break
        for name in deferred:  # what they waited on never came
            if name in self.waiting:
                self._settle(name, self.writers[name], queue, final=True)
        if self.waiting:
            self._report_cycles()
        return self.reporter.error_count == errors_before and not self.waiting

    def _settle_told(self, queue: deque) -> bool:
        """When nothing is ready: settle the first space that some writer can already tell,
        from those writers (check holds the others to it)."""
        later = []  # its ready writers may tell once their other outputs have shapes
        settled = False
        while self.candidates and not settled:
            index = heapq.heappop(self.candidates)
            name = self.pending[index]
            if name not in self.waiting:
                continue
            ready = [w for w in self.writers[name] if not self.missing[w.name]]
            told = [self._tell(w, name) for w in ready]
            if any(t.shape is not None for t in told):
                settled = self._settle(name, ready, queue)
            elif any(t.waits for t in told):
                later.append(index)
        for index in later:
            heapq.heappush(self.candidates, index)
        return settled

    def _settle(self, name: str, writers: list[ir.Edge], queue: deque, final=False) -> bool:
        """Give ``name`` the shape its writers tell, or report why they cannot. False when
        they may tell it later (a writer waits on the shape of another of its outputs)."""
        told = [(w, self._tell(w, name)) for w in writers]
        shapes = [(w, t.shape) for w, t in told if t.shape is not None]
        if not shapes and not final and any(t.waits for _, t in told):
            return False
        self.waiting.discard(name)
        if any(shape != shapes[0][1] for _, shape in shapes[1:]):  # == decides relations
            self._disagree(name, shapes)
            return True
        if not shapes:
            if not any(t.failed for _, t in told):
                self._untold(name, told)
            return True
        shape = shapes[0][1]
        if len(shapes) > 1:  # the simplest of equal shapes (H rather than 2 * (H // 2))
            shape = min((shape for _, shape in shapes), key=lambda shape: len(format_shape(shape)))
        self.table[name] = self.table[name].model_copy(update={"shape": shape})
        for reader in self.readers[name]:
            missing = self.missing[reader.name]
            missing.discard(name)
            if missing:
                continue
            for port in reader.outputs:
                if port.space in self.waiting:
                    self.blocked[port.space] -= 1
                    if self.blocked[port.space] == 0:
                        queue.append(port.space)
                    else:  # one writer is ready: it may tell the shape when nothing else can
                        heapq.heappush(self.candidates, self.index[port.space])
        return True

    def _tell(self, edge: ir.Edge, name: str) -> _Told:
        """What ``edge`` (whose inputs all have shapes) tells of the shape of ``name``."""
        if edge.machine is not None:
            return self._tell_machine(edge, name)
        leaving = self.leaving.get(edge.name)
        if leaving is None:
            leaving = self.leaving[edge.name] = self._leaving(edge)
        if isinstance(leaving, _Told):
            return leaving
        others = [p.space for p in edge.outputs if p.space != name]
        if any(self.table[o].shape is None for o in others):
            untold = [p.space for p in edge.outputs if self.table[p.space].shape is None]
            return _Told(
                None,
                f"edge {edge.name!r} writes several spaces without a shape: {', '.join(untold)}",
                edge.span,
                waits=any(o in self.waiting for o in others),
            )
        taken = sum(self.table[o].shape[0] for o in others if self.table[o].shape)
        if not leaving or leaving[0] <= taken:
            self.reporter.error(
                Code.SHAPE,
                f"edge {edge.name!r}: the pipeline produces {format_shape(leaving)}, and its "
                f"other outputs take {taken} channels of it, which leaves none for {name!r}",
                edge.span,
            )
            return _Told(None, failed=True)
        return _Told((leaving[0] - taken, *leaving[1:]))

    def _leaving(self, edge: ir.Edge) -> ir.Shape | _Told:
        """The shape an edge's pipeline produces from its inputs, or why it cannot tell."""
        reporter = self.reporter
        if not sequences.check_reads(self, edge, self.machines, reporter):
            return _Told(None, failed=True)
        entering = entering_shape(self, edge, reporter)
        if entering is None:
            return _Told(None, failed=True)
        try:
            shapes = pipeline_shapes(edge, entering, None, reporter)
        except NeedsOutputs as exc:
            op = edge.ops[exc.index]
            what = "shape=[...]" if OPS[op.kind].extra_args else "out=N"
            return _Told(None, f"edge {edge.name!r}: {exc.message}", op.span, f"{op.kind}({what})")
        return _Told(None, failed=True) if shapes is None else shapes[-1]

    def _tell_machine(self, edge: ir.Edge, name: str) -> _Told:
        sub = self.machines[edge.machine]
        outputs = [s for s in sub.spaces if s.role is ir.Role.OUTPUT]
        if len(outputs) != len(edge.outputs):
            check_boundary(self, edge, sub, self.reporter, sides=("outputs",))
            return _Told(None, failed=True)
        index = next(i for i, p in enumerate(edge.outputs) if p.space == name)
        binding = symbols.sub_binding(self, edge, sub)  # its size symbols, as sizes here
        return _Told(symbols.substitute(outputs[index].shape, binding))

    # --- what cannot be settled ---------------------------------------------------------

    def _what(self, name: str) -> str:
        return f"{self.table[name].role.value} {name!r}"

    def _disagree(self, name: str, shapes: list[tuple[ir.Edge, ir.Shape]]) -> None:
        listed = ", ".join(f"{w.name!r} {format_shape(shape)}" for w, shape in shapes)
        self.reporter.error(
            Code.INFERENCE,
            f"{self._what(name)} has no shape, and the edges that write it produce different "
            f"ones: {listed}",
            self.table[name].span,
            notes=tuple(
                Note(message=f"edge {w.name!r} produces {format_shape(shape)}", span=w.span)
                for w, shape in shapes
            ),
            hint="contributions add up, so every edge that writes a space must produce its "
            "shape; declare the one you mean, and check names the edges that do not produce it",
        )

    def _untold(self, name: str, told: list[tuple[ir.Edge, _Told]]) -> None:
        space = self.table[name]
        if not told:
            self.reporter.error(
                Code.INFERENCE,
                f"{self._what(name)} has no shape and no edge writes it, so its shape cannot "
                "be inferred",
                space.span,
                hint="declare its shape and write it with an edge, or make it an input",
            )
            return
        fixes = sorted({t.fix for _, t in told if t.fix})
        self.reporter.error(
            Code.INFERENCE,
            f"{self._what(name)} has no shape, and no edge that writes it tells one",
            space.span,
            notes=tuple(Note(message=t.reason, span=t.span) for _, t in told),
            hint="declare its shape"
            + (f", or give the op its size: {', '.join(fixes)}" if fixes else ""),
        )

    def _report_cycles(self) -> None:
        """The spaces left wait on each other: report each group that waits on nothing else
        (a space that waits on one whose error is reported already is not reported)."""
        import networkx as nx  # lazily: most machines never need it

        graph = nx.DiGraph()
        graph.add_nodes_from(self.waiting)
        for name in self.waiting:
            for writer in self.writers[name]:
                for read in self.missing[writer.name]:
                    graph.add_edge(name, read, edge=writer)
        condensed = nx.condensation(graph)
        index = self.index
        for component in condensed.nodes:
            members = condensed.nodes[component]["members"]
            if condensed.out_degree(component) or not members <= self.waiting:
                continue  # waits on another group, or is a space whose error is reported
            self._depends_on_itself(min(members, key=index.__getitem__), graph, members)

    def _depends_on_itself(self, name: str, graph: nx.DiGraph, members: set[str]) -> None:
        import networkx as nx  # lazily: most machines never need it

        if graph.has_edge(name, name):
            path = [name, name]
        else:  # the shortest way back: name waits on ... which waits on name
            back = next(p for p in graph.predecessors(name) if p in members)
            path = [*nx.shortest_path(graph, name, back), name]
        flow = [name]  # as data flows: a space, the edge that reads it and writes the next
        notes = []
        for space, read in reversed(list(zip(path, path[1:], strict=False))):
            edge = graph.edges[space, read]["edge"]
            port = next(p for p in edge.inputs if p.space == read)
            flow += [edge.name, space]
            notes.append(
                Note(
                    message=f"edge {edge.name!r} reads {port.text(self.time)} and writes {space}",
                    span=edge.span,
                )
            )
        self.reporter.error(
            Code.INFERENCE,
            f"{self._what(name)} has no shape, and its shape depends on itself "
            f"({' -> '.join(flow)}), so it cannot be inferred",
            self.table[name].span,
            notes=tuple(notes),
            hint="declare its shape: a cycle or a recurrence needs a declared shape on it",
        )
