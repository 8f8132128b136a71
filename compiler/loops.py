"""Loops of the source kept as loops in generated code.

``build`` expands every ``for`` loop into edges and marks each with the pass of the
loop that made it (:class:`ir.LoopSite`). This module finds, in a checked machine,
the loops whose passes are alike: every pass makes the same edges (one per body
statement), each reading and writing array elements at indices that are *affine* in
the loop variable (``h[i-1]``, ``h[1..i-1]``, ``h[2*i]``). Such a loop is emitted as
one Python ``for`` over an ``nn.ModuleDict`` of its edges' layers (``lower_loops``),
so the generated file grows with the source, not with its expansion.

The affine forms are fitted to the values the expansion produced and then verified
on every pass, so what a kept loop computes is exactly what the expanded edges
compute, whatever expressions the source used. A loop that does not fit (another
shape of statement in some pass, an index that is not affine, a space written both
inside and outside the loop) stays expanded, as before.

The machine's edges are then ordered so that each kept loop's edges run together,
pass by pass: a topological order of the machine with each loop contracted to one
node (:func:`loop_order`).
"""

from __future__ import annotations

import functools
import heapq
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from . import ir
from .ops import OPS

MIN_PASSES = 3  # a loop of fewer passes reads better expanded
_ELEMENT = re.compile(r"(.+)\[(-?\d+)\]\Z")


@dataclass(frozen=True)
class Affine:
    """``a * i + b`` for the loop variable ``i``."""

    a: int
    b: int

    def at(self, value: int) -> int:
        return self.a * value + self.b

    def text(self, var: str, tight: bool = False) -> str:
        """Python source: ``i``, ``i - 1``, ``2 * i + 1``, ``3``; ``tight``, as an index
        of .mach source is usually written: ``i-1``, ``2*i+1``."""
        if self.a == 0:
            return str(self.b)
        times = "*" if tight else " * "
        head = var if self.a == 1 else f"-{var}" if self.a == -1 else f"{self.a}{times}{var}"
        if self.b == 0:
            return head
        sign = ("+" if self.b > 0 else "-") if tight else (" + " if self.b > 0 else " - ")
        return f"{head}{sign}{abs(self.b)}"

    @staticmethod
    def fit(points: list[tuple[int, int]]) -> Affine | None:
        """The affine form through every ``(value, result)`` point, if there is one."""
        if not points:
            return None
        (v0, r0) = points[0]
        other = next(((v, r) for v, r in points if v != v0), None)
        if other is None:
            return Affine(0, r0)
        v1, r1 = other
        if (r1 - r0) % (v1 - v0):
            return None
        a = (r1 - r0) // (v1 - v0)
        form = Affine(a, r0 - a * v0)
        return form if all(form.at(v) == r for v, r in points) else None


@dataclass(frozen=True)
class Term:
    """One space reference of a loop statement.

    ``space`` names a plain space (or one array element, the same on every pass);
    otherwise ``family[index]`` is one element per pass, or ``family[lo..hi]`` a range.
    """

    space: str | None = None
    family: str | None = None
    index: Affine | None = None
    lo: Affine | None = None
    hi: Affine | None = None

    def text(self, var: str) -> str:
        """The reference as .mach source: ``x``, ``h[i - 1]``, ``h[1..i - 1]``."""
        if self.space is not None:
            return self.space
        if self.index is not None:
            return f"{self.family}[{self.index.text(var, tight=True)}]"
        return f"{self.family}[{self.lo.text(var, tight=True)}..{self.hi.text(var, tight=True)}]"


@dataclass(frozen=True)
class Statement:
    """One edge statement of a loop body: ``family[index]``, one edge per pass."""

    family: str
    index: Affine
    edges: tuple[str, ...]  # the edge each pass made, in pass order
    inputs: tuple[Term, ...]
    outputs: tuple[Term, ...]


@dataclass(eq=False)
class Loop:
    """A ``for`` loop kept as a loop: passes ``first..last`` of the variable ``var``."""

    run: int
    var: str
    first: int
    last: int
    statements: tuple[Statement, ...]
    # spaces every pass adds to (``y`` of ``e[i] : x -> y``): summed over the passes
    summed: tuple[str, ...] = ()
    edges: frozenset[str] = field(default_factory=frozenset)

    @property
    def values(self) -> range:
        return range(self.first, self.last + 1)

    def families(self) -> set[str]:
        """The arrays of spaces the body names by index."""
        return {
            t.family
            for st in self.statements
            for t in (*st.inputs, *st.outputs)
            if t.family is not None
        }


@functools.lru_cache(maxsize=1 << 18)
def element(space: str) -> tuple[str, int] | None:
    """``("h", 3)`` for the array element ``h[3]``; None for a plain space."""
    if not space.endswith("]"):
        return None
    found = _ELEMENT.match(space)
    return (found.group(1), int(found.group(2))) if found else None


def find_loops(machine: ir.Machine, structure: ir.Structure) -> list[Loop]:
    """The loops of a checked machine that generated code can keep as loops, in source
    order. Machines over time, with size symbols or with solved cycles keep none (yet)."""
    if machine.time is not None or structure.sizes or structure.cycles:
        return []
    runs: dict[int, list[ir.Edge]] = {}
    for edge in machine.edges:
        if edge.loop is not None:
            runs.setdefault(edge.loop.run, []).append(edge)
    if not runs:
        return []
    shared = {edge.shares for edge in machine.edges if edge.shares is not None}
    families: dict[str, int] = {}  # edge family -> how many edges it has
    for edge in machine.edges:
        found = element(edge.name)
        family = found[0] if found else edge.name
        families[family] = families.get(family, 0) + 1
    writers: dict[str, list[str]] = {}
    for edge in machine.edges:
        for port in edge.outputs:
            writers.setdefault(port.space, []).append(edge.name)
    loops = []
    for run, edges in runs.items():
        if len(edges) < MIN_PASSES:
            continue
        if any(e.shares is not None or e.name in shared or _module_ops(e) for e in edges):
            continue
        loop = _fit(run, edges, families)
        if loop is not None and _writes_fit(loop, machine, writers):
            loops.append(loop)
    return loops


def _module_ops(edge: ir.Edge) -> bool:
    """Ops whose weight is parametrized (reset apart by reset_parameters): expanded."""
    return any(op.args.get("spectral_norm") for op in edge.ops)


def _fit(run: int, edges: list[ir.Edge], families: dict[str, int]) -> Loop | None:
    """The loop whose passes made ``edges``, if every pass is alike and indices are affine."""
    passes: dict[int, list[ir.Edge]] = {}
    for edge in edges:
        passes.setdefault(edge.loop.value, []).append(edge)
    values = list(passes)
    if len(values) < MIN_PASSES or values != list(range(values[0], values[0] + len(values))):
        return None
    first = passes[values[0]]
    if any(len(p) != len(first) for p in passes.values()):
        return None
    statements = []
    for j in range(len(first)):
        column = [passes[v][j] for v in values]
        statement = _statement(column, values, families)
        if statement is None:
            return None
        statements.append(statement)
    loop = Loop(
        run=run,
        var=edges[0].loop.var,
        first=values[0],
        last=values[-1],
        statements=tuple(statements),
        edges=frozenset(e.name for e in edges),
    )
    return loop


def _statement(column: list[ir.Edge], values: list[int], families) -> Statement | None:
    """The statement whose passes made ``column`` (one edge per value), if they fit."""
    model = column[0]
    named = element(model.name)
    if named is None:
        return None
    family = named[0]
    if families.get(family) != len(column):
        return None  # the family has members outside this loop: it cannot be one ModuleDict
    kinds = tuple(op.kind for op in model.ops)
    ranges = any(n is not None for n in model.loop.terms)
    if ranges and (model.machine is not None or OPS[kinds[0]].combine):
        return None  # a range read by a sub-machine or summed by a first add: expanded
    pattern = tuple(n is None for n in model.loop.terms)
    outputs = len(model.outputs)
    for edge in column:  # (machines over time keep no loops: no delays to compare)
        if (
            (edge.ops is not model.ops and tuple(op.kind for op in edge.ops) != kinds)
            or edge.machine != model.machine
            or len(edge.outputs) != outputs
            or tuple(n is None for n in edge.loop.terms) != pattern
        ):
            return None
    named = _names_fit([e.name for e in column], values)  # the edges: family[a * i + b]
    if named is None or named.index is None or named.index.a == 0:
        return None
    index = named.index
    inputs = []
    for k in range(len(model.loop.terms)):
        term = _input_term(column, values, k)
        if term is None:
            return None
        inputs.append(term)
    outputs = []
    for k in range(len(model.outputs)):
        term = _names_fit([e.outputs[k].space for e in column], values)
        if term is None:
            return None
        outputs.append(term)
    return Statement(
        family=family,
        index=index,
        edges=tuple(e.name for e in column),
        inputs=tuple(inputs),
        outputs=tuple(outputs),
    )


def _input_term(column: list[ir.Edge], values: list[int], k: int) -> Term | None:
    """The ``k``-th input reference of a statement, fitted over its passes.

    NOTE: scale. The forms are fitted on two passes, then every pass's names are compared
    with the names the forms give, a list comparison (a 100,000-edge chain)."""
    terms = column[0].loop.terms
    if all(n is None for n in terms):  # one space per reference: the k-th port
        return _names_fit([e.inputs[k].space for e in column], values)
    per_pass = []  # the names of the spaces the reference gave, per pass
    for edge in column:
        start = sum(1 if n is None else n for n in edge.loop.terms[:k])
        n = edge.loop.terms[k]
        per_pass.append([p.space for p in edge.inputs[start : start + (1 if n is None else n)]])
    if terms[k] is None:
        return _names_fit([names[0] for names in per_pass], values)
    filled = [(v, names) for v, names in zip(values, per_pass, strict=True) if names]
    if len(filled) < 2:
        return None
    ends = []
    for v, names in filled[:2]:
        low, high = element(names[0]), element(names[-1])
        if low is None or high is None or low[0] != high[0]:
            return None
        ends.append((v, low, high))
    family = ends[0][1][0]
    lo = Affine.fit([(v, low[1]) for v, low, _ in ends])
    hi = Affine.fit([(v, high[1]) for v, _, high in ends])
    if lo is None or hi is None or ends[1][1][0] != family:
        return None
    for v, names in zip(values, per_pass, strict=True):  # the passes whose range is empty too
        if names != [f"{family}[{j}]" for j in range(lo.at(v), hi.at(v) + 1)]:
            return None
    return Term(family=family, lo=lo, hi=hi)


def _names_fit(names: list[str], values: list[int]) -> Term | None:
    """One space per pass (``values`` are consecutive): the same space on every pass, or
    ``family[affine]``."""
    if names.count(names[0]) == len(names):
        return Term(space=names[0])
    first, second = element(names[0]), element(names[1])
    if first is None or second is None or first[0] != second[0]:
        return None
    a = second[1] - first[1]
    form = Affine(a, first[1] - a * values[0])
    family = first[0]
    if [f"{family}[{form.at(v)}]" for v in values] != names:
        return None
    return Term(family=family, index=form)


def _writes_fit(loop: Loop, machine: ir.Machine, writers: dict[str, list[str]]) -> bool:
    """Whether every space the loop writes is either one pass's own (all its writers in
    that pass) or added to on every pass by one statement and read by nothing in the
    loop; and whether each pass reads only what earlier passes or statements wrote."""
    count = len(loop.statements)
    position = {}  # edge -> its place in the loop's order: pass * count + statement
    for s, statement in enumerate(loop.statements):
        for p, name in enumerate(statement.edges):
            position[name] = p * count + s
    summed = set()
    for s, statement in enumerate(loop.statements):
        for term in statement.outputs:
            if term.space is not None:
                if any(w not in position for w in writers[term.space]):
                    return False
                if {position[w] % count for w in writers[term.space]} != {s}:
                    return False
                summed.add(term.space)
    forms: dict[str, tuple] = {}  # element -> the one form of index that writes it
    for statement in loop.statements:
        for term in statement.outputs:
            if term.space is not None:
                continue
            for p in range(len(statement.edges)):
                space = f"{term.family}[{term.index.at(loop.first + p)}]"
                if any(position.get(w, -1) // count != p for w in writers[space]):
                    return False
                # two forms that meet on one pass (h[i+3], h[5-i]) are not one sum in the body
                if forms.setdefault(space, (term.family, term.index)) != (term.family, term.index):
                    return False
    edges = {e.name: e for e in machine.edges}
    for name, here in position.items():
        for port in edges[name].inputs:
            space = port.space
            if space in summed:
                return False
            for w in writers.get(space, ()):
                if position.get(w, -1) >= here:
                    return False
    families = loop.families()
    for space in machine.spaces:  # arrays the body names are kept in dicts: no input in them
        found = element(space.name)
        if (
            found
            and found[0] in families
            and (space.role is ir.Role.INPUT or not writers.get(space.name))
        ):
            return False
    loop.summed = tuple(sorted(summed))
    return True


def loop_order(
    machine: ir.Machine, structure: ir.Structure, loops: list[Loop]
) -> tuple[list[str | Loop], list[Loop]]:
    """The machine's edges in a dependency order where each loop runs as one block, and
    the loops that fit such an order (a loop both before and after some other edge
    does not: it stays expanded). The machine has no cycles (:func:`find_loops`)."""
    while loops:
        order = _contracted_order(machine, structure, loops)
        if order is not None:
            return order, loops
        loops = loops[:-1]  # rare: give up the last loop and try again
    return list(structure.order), []


def _contracted_order(machine, structure, loops: list[Loop]) -> list[str | Loop] | None:
    """A topological order of the machine with each loop one node (None: none exists)."""
    nodes: list[str | Loop] = []
    node_of: dict[str, int] = {}
    for loop in loops:
        for name in loop.edges:
            node_of[name] = len(nodes)
        nodes.append(loop)
    for edge in machine.edges:
        if edge.name not in node_of:
            node_of[edge.name] = len(nodes)
            nodes.append(edge.name)
    first = [len(structure.order)] * len(nodes)  # a node's first place in the level order
    for k, name in enumerate(structure.order):
        node = node_of[name]
        if k < first[node]:
            first[node] = k
    writer_nodes: dict[str, set[int]] = {}
    for edge in machine.edges:
        node = node_of[edge.name]
        for port in edge.outputs:
            writer_nodes.setdefault(port.space, set()).add(node)
    after: list[set[int]] = [set() for _ in nodes]
    for edge in machine.edges:
        node = node_of[edge.name]
        for port in edge.inputs:
            for w in writer_nodes.get(port.space, ()):
                if w != node:
                    after[w].add(node)
    need = [0] * len(nodes)
    for successors in after:
        for node in successors:
            need[node] += 1
    ready = [(first[n], n) for n in range(len(nodes)) if need[n] == 0]
    heapq.heapify(ready)
    order: list[str | Loop] = []
    while ready:
        _, node = heapq.heappop(ready)
        order.append(nodes[node])
        for nxt in after[node]:
            need[nxt] -= 1
            if need[nxt] == 0:
                heapq.heappush(ready, (first[nxt], nxt))
    return order if len(order) == len(nodes) else None


def expanded(order: Iterable[str | Loop]) -> list[str]:
    """The edge names of an order, loops written out pass by pass."""
    names: list[str] = []
    for item in order:
        if isinstance(item, Loop):
            for p in range(len(item.values)):
                names += [st.edges[p] for st in item.statements]
        else:
            names.append(item)
    return names
