"""Rewrite ``cells``: step loops that are exactly one of PyTorch's recurrent cells.

A step loop of a machine over time whose edges compute, structurally, the equations
of ``torch.nn.RNN`` (tanh or relu), ``torch.nn.LSTM`` or ``torch.nn.GRU`` is recorded
as an :class:`ir.Cell`; ``forward`` then runs the whole sequence in PyTorch's fused
kernel (``torch.rnn_tanh``, ``torch.rnn_relu``, ``torch.lstm``, ``torch.gru``), with
weights assembled on each call from the edges' own linears, so parameters and their
gradients stay where they are. ``f`` and ``resolvent`` keep the loop: the kernel
computes only the forward, from zero on the internal spaces.

Recognition is by structure, never by name: which op pipeline each edge runs, which
spaces it reads (at which step) and writes, that every space of the cell is written by
exactly the edges of the pattern and nothing outside the cell reads one (the kernel
gives the hidden state over time and the last states, nothing else). The patterns,
with ``P = X × h[t-d]`` the product every gate reads (``X``: spaces of this step, read
the same way by every gate; ``d``: 1 forward, -1 backward):

- Elman: ``P -> h = linear | tanh`` (or ``relu``), the loop's only edge;
- LSTM: ``P -> i, f, o = linear | sigmoid``; ``P -> g = linear | tanh`` (gates split
  among any edges), ``f × c[t-d] -> c = mul``, ``i × g -> c = mul``,
  ``c -> tc = tanh``, ``o × tc -> h = mul``;
- GRU: ``P -> r, z = linear | sigmoid``; ``h[t-d] -> u = linear``; ``X -> a =
  linear``; ``r × u -> a = mul``; ``a -> c = tanh``; ``c -> h = identity``;
  ``z × c -> h = mul | scale(-1)``; ``z × h[t-d] -> h = mul``.

The factors of ``mul`` may come in either order; anything else (another activation,
an extra edge or reader, a delay of 2, a space of the cell that is an output, spectral
norm, sizes known only at call time) leaves the loop as it is.
"""

from __future__ import annotations

import collections
import itertools

from . import ir

_GATE_ACTIVATIONS = {"sigmoid", "tanh", "relu"}


class _Loop:
    """What recognition needs of one step loop of one machine."""

    def __init__(self, checked: ir.CheckedMachine, index: int) -> None:
        machine, structure = checked.machine, checked.structure
        self.machine = machine
        self.index = index
        self.stage = structure.stages[index]
        self.d = 1 if self.stage.kind is ir.StageKind.FORWARD else -1
        self.edges = {e.name: e for e in machine.edges}
        self.writers: dict[str, list[str]] = collections.defaultdict(list)
        self.readers: dict[str, list[str]] = collections.defaultdict(list)
        for edge in machine.edges:
            for port in edge.outputs:
                self.writers[port.space].append(edge.name)
            for port in edge.inputs:
                self.readers[port.space].append(edge.name)
        self.stages = structure.stages
        self.stage_of = {e: i for i, s in enumerate(structure.stages) for e in s.edges}
        self.in_cycles = {e for cycle in structure.cycles for e in cycle.edges}

    # --- edges of one form ---

    def only_writer(self, space: str) -> ir.Edge | None:
        writers = self.writers.get(space, [])
        return self.edges[writers[0]] if len(writers) == 1 else None

    def ops(self, edge: ir.Edge | None) -> tuple[tuple[str, dict], ...] | None:
        """The edge's pipeline as (kind, args), if it is a plain pipeline (no sub-machine,
        no windows or positions read, nothing passed on unchecked)."""
        if edge is None or edge.machine is not None or edge.name in self.in_cycles:
            return None
        if any(port.window is not None or port.position for port in edge.inputs):
            return None
        if any(op.extra or op.extra_kw for op in edge.ops):
            return None
        return tuple((op.kind, dict(op.args)) for op in edge.ops)

    def linear(self, kind_args: tuple[str, dict]) -> bool:
        kind, args = kind_args
        return (
            kind == "linear"
            and not args.get("spectral_norm")
            and set(args)
            <= {
                "bias",
                "spectral_norm",
            }
        )

    def unary(self, edge: ir.Edge | None, kind: str, source: str) -> bool:
        """``source -> ... = kind`` (an op without arguments), read at the same step."""
        ops = self.ops(edge)
        return (
            ops == ((kind, {}),)
            and [(p.space, p.delay) for p in edge.inputs] == [(source, 0)]
            and len(edge.outputs) == 1
        )

    def product(self, edge: ir.Edge | None, ops, factors) -> bool:
        """``a × b -> ... = ops`` with the factors ``{(space, delay), ...}`` in any order."""
        if self.ops(edge) != ops or len(edge.outputs) != 1 or len(edge.inputs) != 2:
            return False
        return sorted((p.space, p.delay) for p in edge.inputs) == sorted(factors)

    def gate(self, space: str, activation: str, hidden: str):
        """``(edge, rows, reads)`` when ``space`` is written only by a ``P -> ... = linear |
        activation`` edge, ``P`` (``reads``: (space, delay) of each factor) holding
        ``hidden`` at the loop's delay once and otherwise spaces of this step from
        outside the loop; None if not."""
        edge = self.only_writer(space)
        ops = self.ops(edge)
        if ops is None or len(ops) != 2 or not self.linear(ops[0]) or ops[1] != (activation, {}):
            return None
        reads = tuple((p.space, p.delay) for p in edge.inputs)
        if reads.count((hidden, self.d)) != 1:
            return None
        xs = tuple(r for r in reads if r != (hidden, self.d))
        loop_spaces = self.loop_spaces()
        if any(delay or space in loop_spaces for space, delay in xs):
            return None
        start = 0
        for port in edge.outputs:
            width = self.width(port.space)
            if width is None:
                return None
            if port.space == space:
                return edge, (start, start + width), reads
            start += width
        return None

    # --- spaces ---

    def loop_spaces(self) -> set[str]:
        return {p.space for e in self.stage.edges for p in self.edges[e].outputs}

    def width(self, space: str) -> int | None:
        """The size of a vector space of floats with a size known at compile time."""
        s = self.machine.space(space)
        if s.ids is not None or len(s.shape) != 1 or not isinstance(s.shape[0], int):
            return None
        return s.shape[0]

    def closed(self, pattern: set[str], hidden: str, spaces: set[str]) -> bool:
        """Whether the pattern is the whole loop (and edges of all steps at once), writes
        its spaces alone, and nothing but the hidden state is seen from outside it."""
        stage = set(self.stage.edges)
        if not stage <= pattern:
            return False
        for name in pattern - stage:  # a GRU's linear on X runs on every step at once
            if self.stages[self.stage_of[name]].kind is not ir.StageKind.ALL:
                return False
        for space in spaces:
            role = self.machine.space(space).role
            if role is ir.Role.INPUT or set(self.writers[space]) - pattern:
                return False
            if space != hidden and (role is ir.Role.OUTPUT or set(self.readers[space]) - pattern):
                return False
        return True


def cells(program: ir.CheckedProgram) -> ir.CheckedProgram:
    """``program`` with every step loop that is one of PyTorch's cells recorded."""
    machines = []
    for checked in program.machines:
        found = []
        if checked.machine.time is not None:
            for index, stage in enumerate(checked.structure.stages):
                if stage.kind is ir.StageKind.ALL:
                    continue
                loop = _Loop(checked, index)
                cell = _elman(loop) or _lstm(loop) or _gru(loop)
                if cell is not None:
                    found.append(cell)
        if found:
            structure = checked.structure.model_copy(update={"cells": tuple(found)})
            checked = checked.model_copy(update={"structure": structure})
        machines.append(checked)
    return program.model_copy(update={"machines": tuple(machines)})


def _delayed_reads(loop: _Loop) -> set[tuple[str, int]]:
    return {(p.space, p.delay) for e in loop.stage.edges for p in loop.edges[e].inputs if p.delay}


def _rows(edge: ir.Edge, rows: tuple[int, int], bias: bool) -> ir.CellRows:
    has_bias = bool(edge.ops[0].args.get("bias"))
    return ir.CellRows(edge=edge.name, start=rows[0], stop=rows[1], bias=bias and has_bias)


def _cell(loop: _Loop, kind, pattern, xs, hidden, ih, hh, memory=None, gates=()) -> ir.Cell:
    order = [e.name for e in loop.machine.edges if e.name in pattern]  # declaration order
    return ir.Cell(
        kind=kind,
        stage=loop.index,
        edges=tuple(order),
        inputs=tuple(space for space, _ in xs),
        hidden=hidden,
        memory=memory,
        gates=tuple(gates),
        reverse=loop.d < 0,
        ih=tuple(ih),
        hh=tuple(hh),
    )


def _elman(loop: _Loop) -> ir.Cell | None:
    if len(loop.stage.edges) != 1:
        return None
    edge = loop.edges[loop.stage.edges[0]]
    if len(edge.outputs) != 1:
        return None
    hidden = edge.outputs[0].space
    for activation, kind in (("tanh", ir.CellKind.RNN_TANH), ("relu", ir.CellKind.RNN_RELU)):
        found = loop.gate(hidden, activation, hidden)
        if found is None:
            continue
        _, rows, reads = found
        xs = tuple(r for r in reads if r != (hidden, loop.d))
        if not xs or not loop.closed({edge.name}, hidden, {hidden}):
            return None
        return _cell(
            loop,
            kind,
            {edge.name},
            xs,
            hidden,
            [_rows(edge, rows, True)],
            [_rows(edge, rows, False)],
        )
    return None


def _gates(loop: _Loop, wanted: dict[str, str], hidden: str):
    """``(edges, rows, xs)`` for gate spaces ``{space: activation}`` that one product feeds."""
    found = {space: loop.gate(space, act, hidden) for space, act in wanted.items()}
    if any(g is None for g in found.values()):
        return None
    products = {reads for _, _, reads in found.values()}
    if len(products) != 1:
        return None
    (reads,) = products
    xs = tuple(r for r in reads if r != (hidden, loop.d))
    edges = {edge.name: edge for edge, _, _ in found.values()}
    # every output of a gate edge is one of the gates
    if any(p.space not in wanted for edge in edges.values() for p in edge.outputs):
        return None
    return edges, {space: (edge, rows) for space, (edge, rows, _) in found.items()}, xs


def _lstm(loop: _Loop) -> ir.Cell | None:
    delayed = _delayed_reads(loop)
    if len(delayed) != 2 or {d for _, d in delayed} != {loop.d}:
        return None
    for hidden, memory in itertools.permutations(sorted(s for s, _ in delayed)):
        emit = loop.only_writer(hidden)
        if emit is None or len(emit.inputs) != 2:
            continue
        for o, tc in itertools.permutations([p.space for p in emit.inputs]):
            squash = loop.only_writer(tc)
            if not loop.product(emit, (("mul", {}),), [(o, 0), (tc, 0)]):
                continue
            if not loop.unary(squash, "tanh", memory):
                continue
            writers = [loop.edges[name] for name in loop.writers[memory]]
            if len(writers) != 2:
                continue
            for keep, write in itertools.permutations(writers):
                f = next((p.space for p in keep.inputs if p.space != memory), None)
                if f is None or not loop.product(keep, (("mul", {}),), [(f, 0), (memory, loop.d)]):
                    continue
                if not loop.product(write, (("mul", {}),), [(p.space, 0) for p in write.inputs]):
                    continue
                for i, g in itertools.permutations([p.space for p in write.inputs]):
                    cell = _lstm_gates(
                        loop,
                        hidden,
                        memory,
                        i,
                        f,
                        g,
                        o,
                        tc,
                        {emit.name, squash.name, keep.name, write.name},
                    )
                    if cell is not None:
                        return cell
    return None


def _lstm_gates(loop, hidden, memory, i, f, g, o, tc, others) -> ir.Cell | None:
    if len({hidden, memory, i, f, g, o, tc}) != 7:
        return None
    acts = {i: "sigmoid", f: "sigmoid", g: "tanh", o: "sigmoid"}
    found = _gates(loop, acts, hidden)
    if found is None:
        return None
    edges, rows, xs = found
    spaces = {hidden, memory, i, f, g, o, tc}
    widths = {loop.width(s) for s in spaces}
    pattern = others | set(edges)
    if not xs or len(widths) != 1 or None in widths:
        return None
    if not loop.closed(pattern, hidden, spaces):
        return None
    order = [rows[s] for s in (i, f, g, o)]  # PyTorch's gate order
    return _cell(
        loop,
        ir.CellKind.LSTM,
        pattern,
        xs,
        hidden,
        [_rows(e, r, True) for e, r in order],
        [_rows(e, r, False) for e, r in order],
        memory=memory,
        gates=(i, f, g, o),
    )


def _gru(loop: _Loop) -> ir.Cell | None:
    delayed = _delayed_reads(loop)
    if len(delayed) != 1 or {d for _, d in delayed} != {loop.d}:
        return None
    ((hidden, _),) = delayed
    writers = [loop.edges[name] for name in loop.writers[hidden]]
    if len(writers) != 3:
        return None
    mul = (("mul", {}),)
    negated = (("mul", {}), ("scale", {"factor": -1.0}))
    for new, forget, keep in itertools.permutations(writers):
        if len(new.inputs) != 1 or len(keep.inputs) != 2:
            continue
        c = new.inputs[0].space
        z = next((p.space for p in keep.inputs if p.space != hidden), None)
        if z is None or not loop.unary(new, "identity", c):
            continue
        if not loop.product(keep, mul, [(z, 0), (hidden, loop.d)]):
            continue
        if not loop.product(forget, negated, [(z, 0), (c, 0)]):
            continue
        cand = loop.only_writer(c)
        if cand is None or len(cand.inputs) != 1:
            continue
        a = cand.inputs[0].space
        if not loop.unary(cand, "tanh", a):
            continue
        cell = _gru_gates(loop, hidden, z, c, a, {new.name, forget.name, keep.name, cand.name})
        if cell is not None:
            return cell
    return None


def _gru_gates(loop, hidden, z, c, a, others) -> ir.Cell | None:
    writers = [loop.edges[name] for name in loop.writers[a]]
    if len(writers) != 2:
        return None
    for read, reset in itertools.permutations(writers):
        if len(reset.inputs) != 2 or len(reset.outputs) != 1:
            continue
        for r, u in itertools.permutations([p.space for p in reset.inputs]):
            if not loop.product(reset, (("mul", {}),), [(r, 0), (u, 0)]):
                continue
            recall = loop.only_writer(u)
            ops = loop.ops(recall)
            if ops is None or len(ops) != 1 or not loop.linear(ops[0]):
                continue
            if [(p.space, p.delay) for p in recall.inputs] != [(hidden, loop.d)]:
                continue
            if len(recall.outputs) != 1 or len(read.outputs) != 1:
                continue
            found = _gates(loop, {r: "sigmoid", z: "sigmoid"}, hidden)
            ops = loop.ops(read)
            if found is None or ops is None or len(ops) != 1 or not loop.linear(ops[0]):
                continue
            edges, rows, xs = found
            if tuple((p.space, p.delay) for p in read.inputs) != xs or not xs:
                continue
            spaces = {hidden, z, c, a, r, u}
            widths = {loop.width(s) for s in spaces}
            if len(spaces) != 6 or len(widths) != 1 or None in widths:
                continue
            pattern = others | set(edges) | {read.name, reset.name, recall.name}
            if not loop.closed(pattern, hidden, spaces):
                continue
            (m,) = widths
            ih = [_rows(*rows[r], True), _rows(*rows[z], True), _rows(read, (0, m), True)]
            hh = [_rows(*rows[r], False), _rows(*rows[z], False), _rows(recall, (0, m), True)]
            return _cell(loop, ir.CellKind.GRU, pattern, xs, hidden, ih, hh, gates=(r, z, c))
    return None
