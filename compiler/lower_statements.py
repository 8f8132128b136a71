"""How a method's body is made from edges: each edge once, in the order given, its
product through its pipeline, the contributions to a space summed after its last
writer, and a solved cycle as a function a solver iterates.

:class:`Statements` is the half of :class:`lower._MachineLowering` that writes
statements (``forward``, ``f``, the resolvent and the methods of machines over time
are all made by :meth:`Statements._statements`); :class:`_Plan` says how one method
obtains and names the spaces.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from . import ir, lower_regroup
from .equilibrium import solver_text
from .loops import Loop, expanded
from .names import Namespace
from .ops import CHANNEL_DIM, OPS
from .source_text import py_tuple, safe

PIPELINE_WIDTH = 48  # a pipeline expression longer than this continues in a new statement


@dataclass
class _Plan:
    """How one method obtains spaces: their starting value and how edges read them."""

    read: Callable[[ir.Port], str]
    base: Callable[[str], str | None]
    leveled: bool
    locals: Namespace
    var: dict[str, str] = field(default_factory=dict)
    # the step loop of a machine over time: statements to run before the loop, and a
    # port's folded sequence (every step at once)
    prep: list[str] | None = None
    folded: Callable[[ir.Port], str] | None = None
    # a tensor that gives the batch size, dtype and device (where solves start from zeros)
    like: str = ""
    # arrays of spaces kept in dicts (loops kept as loops, lower_loops): array -> its dict,
    # the spaces whose variable is an item of one, and how a loop body reads an item
    # (array, index expression) and what it starts from (the resolvent's x0)
    families: dict[str, str] = field(default_factory=dict)
    elements: set[str] = field(default_factory=set)
    element: Callable[[str, str], str] | None = None
    element_base: Callable[[str, str], str | None] | None = None
    # forward: the edges rewrite 'regroup' chose call runtime.regroup (compiler/regroup.py),
    # those with a linear on vectors given the local that holds the concatenations they share
    regroup: bool = False
    columns: str = ""


class Statements:
    """Statements of a method from edges (mixed into lower._MachineLowering)."""

    def _statements(self, plan: _Plan, order) -> list[str]:
        """Each edge of ``order`` once; a space's contributions are summed after its last writer."""
        lines: list[str] = []
        pending: dict[str, dict[str, str]] = {}  # space -> {writer: contribution variable}
        last_writer = None  # space -> its last writer in order, made when a sum needs it
        writers = self.writers
        if not self.loop_planner.loops:  # (a machine over time keeps no loops)
            # a machine over time runs its edges in phases: writers of this one
            running = set(order)
            if len(running) < len(self.edges):
                writers = _RunningWriters(writers, running)
        level_of = self.level_of
        # forward and the resolvent solve each cycle where its first edge would run; f (and
        # the function a solver iterates) apply its edges once
        cycle_of = {}
        if plan.leveled:
            cycle_of = {e: cycle for cycle in self.structure.cycles for e in cycle.edges}
        current_level = None
        edges, leveled = self.edges, plan.leveled
        expression = self._leveled_expr if leveled else self._edge_expr
        # the levels are the order's sections, unless a kept loop runs edges of many levels
        sections = leveled and not self.loop_planner.loops
        for name in order:
            if isinstance(name, Loop):
                lines += self.loop_planner.statements(plan, name)
                continue
            edge = edges[name]
            if sections and level_of[name] != current_level:
                current_level = level_of[name]
                lines.append(f"# level {current_level}")
            if name in cycle_of:
                cycle = cycle_of[name]
                if name == cycle.edges[0]:
                    lines += self._solve(plan, cycle, pending, writers)
                continue
            lines.append(self.edge_comment(edge))
            expr = expression(edge, plan, lines)
            outputs = edge.outputs
            if len(outputs) == 1 and _only(writers[outputs[0].space], name):
                space = outputs[0].space
                target = _target(plan, space)
                base = plan.base(space)
                lines.append(f"{target} = {base} + {expr}" if base else f"{target} = {expr}")
                continue
            targets = []
            for port in edge.outputs:
                space = port.space
                sole = writers[space] == [name]
                if sole and plan.base(space) is None:
                    targets.append(_target(plan, space))
                else:
                    temp = plan.locals.name(f"{space}/writer/{name}", f"{space}_{name}")
                    targets.append(temp)
                    pending.setdefault(space, {})[name] = temp
            lines.append(self.assignment(edge, targets, expr))
            for port in edge.outputs:
                space = port.space
                if space not in pending:
                    continue
                if last_writer is None:
                    last_writer = {
                        p.space: e for e in expanded(order) for p in self.edges[e].outputs
                    }
                if last_writer[space] == name:
                    base = plan.base(space)
                    # NOTE: summed in declaration order in every method, so that they agree bitwise.
                    contributions = pending.pop(space)
                    terms = [contributions[w] for w in writers[space]]
                    terms = ([base] if base is not None else []) + terms
                    lines += _sum_lines(_target(plan, space), terms)
        return lines

    def assignment(self, edge: ir.Edge, targets: list[str], expr: str) -> str:
        """``targets = expr``: an edge's result split along the channel axis into its
        outputs (a sub-machine returns a tuple)."""
        if len(targets) == 1 or edge.machine is not None:
            return f"{', '.join(targets)} = {expr}"
        sizes = [self.machine.space(p.space).shape[0] for p in edge.outputs]
        # NOTE: equal parts by their size, not a list of sizes: torch 2.13's inductor
        # overwrites a saved tensor that list-split views of it still need, in the
        # backward of a loop (wrong LSTM gradients; docs/integration.md)
        size = sizes[0] if len(set(sizes)) == 1 else sizes
        return f"{', '.join(targets)} = torch.split({expr}, {size}, dim={CHANNEL_DIM})"

    def _solve(self, plan: _Plan, cycle: ir.Cycle, pending, writers) -> list[str]:
        """A solved cycle: the function of its spaces a solver iterates, and the solve.

        What edges outside the cycle add to its spaces (and ``x0`` in the resolvent) is
        computed before and added on every iteration.
        """
        solve = cycle.solve
        edges = ", ".join(cycle.edges)
        text = f"solve {solve.space} with {solver_text(solve)}"
        lines = [f"# {self.where(solve.span)}  {safe(text)}: the cycle of {safe(edges)}"]
        names = {s: _target(plan, s) for s in cycle.spaces}  # also the function's parameters
        bases = {}
        for s in cycle.spaces:
            added = pending.pop(s, {})
            terms = [plan.base(s)] if plan.base(s) is not None else []
            terms += [added[w] for w in writers[s] if w in added]
            # NOTE: an input on the cycle is its own base, under the name the function's
            # parameter takes; it gets a name of its own
            if len(terms) > 1 or (terms and terms[0] in names.values()):
                bases[s] = plan.locals.name(f"{s}/outside", f"{s}_in")
                lines += _sum_lines(bases[s], terms)
            elif terms:
                bases[s] = terms[0]
        function = plan.locals.name(f"{solve.space}/cycle", f"cycle_{solve.space}")
        inner = _Plan(
            read=lambda port: names[port.space] if port.space in names else plan.read(port),
            base=bases.get,
            leveled=False,
            locals=plan.locals,
            var={s: plan.locals.name(f"{s}/next", f"{s}_next") for s in cycle.spaces},
        )
        body = self._statements(inner, cycle.edges)
        body.append("return " + py_tuple(inner.var[s] for s in cycle.spaces))
        params = ", ".join(f"{names[s]}: Tensor" for s in cycle.spaces)
        lines.append(f"def {function}({params}) -> tuple[Tensor, ...]:")
        lines += ["    " + line for line in body]
        like = plan.like
        starts = []
        for s in cycle.spaces:
            shape = ", ".join(str(n) for n in self.machine.space(s).shape)
            starts.append(f"{like}.new_zeros(({like}.shape[0], {shape}))")
        targets = py_tuple(names[s] for s in cycle.spaces)
        lines.append(f"{targets} = {self.solvers[solve.space]}({function}, {py_tuple(starts)})")
        return lines

    def _edge_expr(self, edge: ir.Edge, plan: _Plan, lines: list[str]) -> str:
        """The expression of the edge's product through its pipeline (or its sub-machine).

        A pipeline of three or more ops is cut into statements on a variable named
        after the edge wherever the nested calls grow long; one or two ops stay on one
        line, so that similar edges read alike.
        """
        if edge.machine is not None:
            reads = [plan.read(port) for port in edge.inputs]
            return f"{self.layer_exprs[(edge.name, 0)]}({', '.join(reads)})"
        return self._apply_ops(edge, plan, lines, self._product_expr(edge, plan), 0)

    def _leveled_expr(self, edge: ir.Edge, plan: _Plan, lines: list[str]) -> str:
        """:meth:`_edge_expr` in forward and the resolvent, whose statements read the same
        variables: the second takes the expression the first made of the same reads, if it
        made it without statements of its own (a pipeline cut in two)."""
        reads = tuple(plan.read(port) for port in edge.inputs)
        made = self._leveled.get(edge.name)
        if made is not None and made[0] == reads and not plan.regroup:
            return made[1]
        before = len(lines)
        expr = self._edge_expr(edge, plan, lines)
        if len(lines) == before:
            self._leveled[edge.name] = (reads, expr)
        return expr

    def _product_expr(self, edge: ir.Edge, plan: _Plan) -> str:
        """The edge's inputs, concatenated (or combined by a first add / mul)."""
        combine = OPS[edge.ops[0].kind].combine
        if self.loop_planner.loops and plan.element and not combine and len(edge.inputs) >= 3:
            reads = self.loop_planner.compact_reads(plan, edge.inputs, plan.read)
            if len(reads) == 1 and reads[0].startswith("*"):  # *[h[k] for k in ...] alone
                return f"torch.cat({reads[0][1:]}, dim={CHANNEL_DIM})"
            if len(reads) > 1 or reads[0].startswith("*"):
                return f"torch.cat([{', '.join(reads)}], dim={CHANNEL_DIM})"
        reads = [plan.read(port) for port in edge.inputs]
        if combine:
            expr = combined(self, edge, reads, combine)
        elif len(reads) == 1:
            expr = reads[0]
        else:
            expr = f"torch.cat([{', '.join(reads)}], dim={CHANNEL_DIM})"
        return expr

    def _apply_ops(
        self,
        edge: ir.Edge,
        plan: _Plan,
        lines: list[str],
        expr: str,
        first: int,
        hint: str | None = None,
    ):
        """``expr`` through the ops of the edge's pipeline from index ``first`` on (a
        pipeline cut in statements names its variable ``hint``, or after the edge)."""
        shapes = self.structure.shapes[edge.name]
        if first == 0 and plan.regroup and edge.name in self.structure.regrouped:
            regrouped = lower_regroup.regrouped(self, edge, expr, plan.columns)
            if regrouped is not None:
                comment, expr = regrouped
                lines.append(comment)
                first = self.structure.regrouped[edge.name] + 1
        for i, op in enumerate(edge.ops):
            spec = OPS[op.kind]
            if i < first or spec.combine:
                continue
            if i > first and len(edge.ops) > 2 and len(expr) > PIPELINE_WIDTH:
                hint = hint or edge.name
                temp = plan.locals.name(f"{hint}/pipeline", hint)
                lines.append(f"{temp} = {expr}")
                expr = temp
            layer = self.layer_exprs.get((edge.name, i))
            expr = spec.source(self._site(edge, op), expr, layer, shapes[i], shapes[i + 1])
        return expr


SUM_TERMS = 100  # terms of one sum statement: CPython's compiler nests a + b + ... deeply


def _sum_lines(target: str, terms: list[str]) -> list[str]:
    """``target = a + b + ...``, continued in statements of at most :data:`SUM_TERMS` terms
    (adding left to right, as one long sum would)."""
    lines = [f"{target} = {' + '.join(terms[:SUM_TERMS])}"]
    for start in range(SUM_TERMS, len(terms), SUM_TERMS - 1):
        lines.append(f"{target} = {' + '.join([target, *terms[start : start + SUM_TERMS - 1]])}")
    return lines


class _RunningWriters(dict):
    """space -> its writers among ``running``, made for the spaces asked for.

    NOTE: scale. Not for every space at once: a machine over time runs each of its stages
    this way, which was quadratic in the number of stages.
    """

    def __init__(self, writers: dict[str, list[str]], running: set[str]):
        super().__init__()
        self.writers, self.running = writers, running

    def __missing__(self, space: str) -> list[str]:
        found = self[space] = [w for w in self.writers[space] if w in self.running]
        return found


def _only(writers: list[str], name: str) -> bool:
    """Whether ``name`` is the one writer (``writers == [name]``, without making a list)."""
    return len(writers) == 1 and writers[0] == name


def _target(plan: _Plan, space: str) -> str:
    """The local variable a space's value is assigned to (never an expression like x0["h"])."""
    var = plan.var.get(space)
    if var is None or not (var.isidentifier() or space in plan.elements):
        var = plan.var[space] = plan.locals.name(space)
    return var


def combined(lowering, edge: ir.Edge, reads: list[str], combine: str) -> str:
    """The edge's ``reads`` combined by its first op (``+`` or ``*``), each of a lower
    rank than the product broadcast to it."""
    rank = len(lowering.structure.shapes[edge.name][0])
    ranks = [len(lowering.machine.space(port.space).shape) for port in edge.inputs]
    reads = [
        read if r == rank else _broadcast(read, rank) for read, r in zip(reads, ranks, strict=True)
    ]
    return f" {combine} ".join(reads)


def _broadcast(expr: str, rank: int) -> str:
    """A [batch, C] tensor viewed as [batch, C, 1, ...] to broadcast over ``rank - 1`` axes."""
    return f"{expr}[:, :{', None' * (rank - 1)}]"
