"""Loops of the source as loops of generated code (the loops ``compiler/loops.py`` keeps).

A kept loop's edges are one ``nn.ModuleDict`` per body statement, keyed by the
edge's index (``g[3]`` of the source is ``self.g["3"]``, ``g.3.weight`` in the
``state_dict``), built by a comprehension whose sizes are affine in the loop
variable (``nn.Linear(32 * i - 16, 32)``). Each method runs the loop as a Python
``for``; the arrays of spaces the body names by index are dicts keyed by index
(``h[i - 1]`` reads as in the source).

A loop is kept only if its body prints the same text on every pass and every layer
constructor is one template whose numbers are affine in the loop variable
(:mod:`.lower_loop_layers`); otherwise its edges are written out one by one, as before.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable

from . import loops as L
from .lower_loop_layers import LoopLayers, template
from .lower_statements import _target, combined
from .names import ADJOINT_LOCALS, METHOD_LOCALS, TIME_LOCALS, sanitize
from .ops import CHANNEL_DIM, OPS
from .source_text import element_key, pipeline_text, py_str, safe

# edges of one machine written out one by one (not in a loop kept as a loop): the module of
# a 50,000-edge chain written out needs 2.2 GB and 5.5 s to import (docs/benchmarks.md)
MAX_WRITTEN_OUT = 50_000
# and the spaces those edges name (each is written in every method): ~100 bytes of module each
MAX_WRITTEN_OUT_PORTS = 400_000
# items of a kept array listed one by one up to this many in a row (SPACES, the dicts f
# and the resolvent return, what an edge outside loops reads); more are one comprehension
LISTED = 8


class LoopPlanner(LoopLayers):
    """Which loops a lowering keeps, their layers, and their statements in each method."""

    def __init__(self, lowering, expand_loops: bool = False):
        # NOTE: scale. A proxy: the lowering holds this planner, and a cycle would keep the
        # IR alive for the garbage collector, which is paused while machc runs
        self.lowering = weakref.proxy(lowering)
        self.loops: list[L.Loop] = (
            [] if expand_loops else L.find_loops(lowering.machine, lowering.structure)
        )
        # (statement family, None) -> its ModuleDict of layers; (family, op index) -> that
        # of op i's modules of their own (dropout)
        self.attrs: dict[tuple[str, int | None], str] = {}
        self.layers: dict[str, tuple] = {}  # statement family -> what _loop_layers made
        self._signatures: dict[str, tuple] = {}
        self.vars: dict[int, str] = {}  # loop -> its variable in every method
        self.inner: dict[int, str] = {}  # loop -> the variable of its ranges' comprehensions
        self.outer = ""  # the variable of comprehensions outside loops
        if self.loops:  # (machines without loops pay nothing for names)
            self._name_variables(lowering)

    def _name_variables(self, lowering) -> None:
        """One name per loop variable (and per range's inner variable) for every method:
        none of the names a method can give a space, an edge or a dict (the arrays' items
        are not listed: h[3] can only be the local h_3)."""
        taken = set(lowering.module_level) | METHOD_LOCALS | TIME_LOCALS | ADJOINT_LOCALS
        arrays, plain = set(), set()
        for name in (
            *(s.name for s in lowering.machine.spaces),
            *(e.name for e in lowering.machine.edges),
        ):
            found = L.element(name)
            if found:
                arrays.add(found[0])
            else:
                plain.add(name)
        arrays = {sanitize(name) for name in arrays}
        taken |= arrays | {sanitize(name) for name in plain}
        self.vars = {loop.run: _pick(loop.var, taken, arrays) for loop in self.loops}
        self.inner = {loop.run: _pick("j", taken, arrays) for loop in self.loops}
        self.outer = _pick("k", taken, arrays)

    def check_written_out(self, sources: dict[str, str] | None) -> None:
        """Raises :class:`CompileError` if more than :data:`MAX_WRITTEN_OUT` edges would be
        written out one by one, at the loop that writes out the most of them."""
        machine = self.lowering.machine
        kept = sum(len(loop.edges) for loop in self.loops)
        count = len(machine.edges) - kept
        in_kept = {name for loop in self.loops for name in loop.edges}
        if count <= MAX_WRITTEN_OUT:
            ports = sum(
                len(e.inputs) + len(e.outputs) for e in machine.edges if e.name not in in_kept
            )
            if ports <= MAX_WRITTEN_OUT_PORTS:
                return
            what = f"{count:,} edges naming {ports:,} spaces, more than {MAX_WRITTEN_OUT_PORTS:,}"
        else:
            what = f"{count:,} edges one by one, more than {MAX_WRITTEN_OUT:,}"
        from .diagnostics import Code, CompileError, Diagnostic, Severity

        runs: dict[int, list] = {}
        for edge in machine.edges:
            if edge.loop is not None and edge.name not in in_kept:
                runs.setdefault(edge.loop.run, []).append(edge)
        largest = max(  # the loop that writes out the most
            runs.values(),
            key=lambda edges: sum(len(e.inputs) + len(e.outputs) for e in edges),
            default=[machine.edges[0]],
        )
        passes = len({e.loop.value for e in largest if e.loop is not None})
        where = f"; the loop here ({passes:,} passes) is not kept as a loop" if passes else ""
        diagnostic = Diagnostic(
            severity=Severity.ERROR,
            code=Code.EXPRESSION,
            message=f"machine {machine.name} would be written out with {what}{where}",
            span=largest[0].span,
            hint="a loop is kept as a loop when its passes are alike, in a machine not over "
            "time (docs/language.md, 'Loops in generated code'): an if or sizes that differ "
            "from pass to pass keep it from being one",
        )
        raise CompileError([diagnostic], sources)

    # --- methods ---

    def families(self) -> list[str]:
        """The arrays of spaces kept in dicts, in the order the machine declares them."""
        found = self.__dict__.get("_families_list")
        if found is not None:
            return found
        named = set().union(*(loop.families() for loop in self.loops)) if self.loops else set()
        out: dict[str, None] = {}
        for space in self.lowering.machine.spaces:
            item = L.element(space.name)
            if item and item[0] in named:
                out[item[0]] = None
        self.__dict__["_families_list"] = list(out)
        return self.__dict__["_families_list"]

    def declare(self, plan, assign: bool = True) -> list[str]:
        """Names the dicts of the kept arrays in ``plan`` (and its element variables);
        the lines that make them empty."""
        plan.families = {}
        if self.loops:
            plan.locals.reserve(*self.vars.values(), *self.inner.values(), self.outer)
        lines = []
        for family in self.families():
            name = plan.locals.name(f"family/{family}", family)
            plan.families[family] = name
            if assign:
                lines.append(f"{name}: dict[int, Tensor] = {{}}  # the spaces {safe(family)}[k]")
        var, families = plan.var, plan.families
        for name, family, index in self.items_of_arrays():
            var[name] = f"{families[family]}[{index}]"
        plan.elements = self._item_names
        return lines

    def items_of_arrays(self) -> list[tuple[str, str, int]]:
        """(space, array, index) of every item of a kept array (made once)."""
        found = self.__dict__.get("_items")
        if found is None:
            kept = self._families_set
            found = []
            for space in self.lowering.machine.spaces:
                named = L.element(space.name)
                if named and named[0] in kept:
                    found.append((space.name, *named))
            self.__dict__["_items"] = found
            self._item_names = frozenset(name for name, _, _ in found)
        return found

    def runs(self, ports) -> list:
        """Ports with each run of more than :data:`LISTED` consecutive items of a kept array as one
        ``(array, first, last)``: what edges outside loops read of them (``h[1..n]``)."""
        families = self._families_set
        out: list = []
        n = 0
        while n < len(ports):
            found = L.element(ports[n].space)
            end = n + 1
            if found and found[0] in families and not ports[n].delay and not ports[n].window:
                while end < len(ports) and L.element(ports[end].space) == (
                    found[0],
                    found[1] + end - n,
                ):
                    end += 1
            if end - n > LISTED:
                out.append((found[0], found[1], found[1] + end - n - 1))
            else:
                out += ports[n:end]
            n = end
        return out

    @property
    def _families_set(self) -> set[str]:
        found = self.__dict__.get("_families")
        if found is None:
            found = self.__dict__["_families"] = set(self.families())
        return found

    def compact_reads(self, plan, ports, read: Callable) -> list[str]:
        """What an edge outside loops reads: ``read(port)``, and a run of a kept array as
        ``*[h[k] for k in range(1, 33)]``."""
        return self._compact(ports, read, plan.element)

    def compact_names(self, ports) -> list[str]:
        """The names of the spaces of some ports, as items of a tuple display (a run of a
        kept array: ``*[f"h[{k}]" for k in range(1, 33)]``)."""
        return self._compact(ports, lambda port: py_str(port.space), element_key)

    def _compact(self, ports, one: Callable, item: Callable) -> list[str]:
        """``one(port)`` per port, a run of a kept array as ``*[item(array, k) for k in
        range(...)]``."""
        out = []
        k = self.outer
        for run in self.runs(ports):
            if isinstance(run, tuple):
                family, first, last = run
                out.append(f"*[{item(family, k)} for {k} in range({first}, {last + 1})]")
            else:
                out.append(one(run))
        return out

    def compact_text(self, ports, time) -> str:
        """Ports as .mach source, a run of a kept array as ``h[1..32]``."""
        return " × ".join(
            f"{item[0]}[{item[1]}..{item[2]}]" if isinstance(item, tuple) else item.text(time)
            for item in self.runs(ports)
        )

    def items(self, value_of: Callable, families: dict[str, str], dicts: bool = False) -> list[str]:
        """Dict display items ``"name": value`` for every space, in declaration order; the
        spaces of a kept array run by run: ``**{f"h[{k}]": h[k] for k in range(1, 33)}``
        (``dicts``: the values of the kept arrays' items are items of the method's dicts,
        ``h[3]``, as :meth:`declare` made them)."""
        items: list[str] = []
        key = self.outer  # no array's name (an array k would be hidden)
        spaces = self.lowering.machine.spaces
        for n, end, family, start in self._space_runs(tuple(families)):
            if end - n > LISTED:
                if dicts:
                    value = f"{families[family]}[{key}]"
                else:
                    points = [(start + m - n, value_of(spaces[m])) for m in range(n, end)]
                    value = template(points, key)
                if value is not None:
                    name = element_key(family, key)
                    last = start + end - n
                    items.append(f"**{{{name}: {value} for {key} in range({start}, {last})}}")
                    continue
            for m in range(n, end):
                items.append(f"{py_str(spaces[m].name)}: {value_of(spaces[m])}")
        return items

    def _space_runs(self, families: tuple[str, ...]) -> list[tuple[int, int, str, int]]:
        """(first, end, array, its first index) of each run of the machine's spaces: the
        items of a kept array with consecutive indices, or one other space (made once)."""
        cache = self.__dict__.setdefault("_runs", {})
        found = cache.get(families)
        if found is not None:
            return found
        kept = set(families)
        spaces = self.lowering.machine.spaces
        found = []
        n = 0
        while n < len(spaces):
            item = L.element(spaces[n].name)
            end = n + 1
            family, start = item if item and item[0] in kept else ("", 0)
            if family:
                while end < len(spaces) and L.element(spaces[end].name) == (
                    family,
                    start + end - n,
                ):
                    end += 1
            found.append((n, end, family, start))
            n = end
        cache[families] = found
        return found

    def statements(self, plan, loop: L.Loop) -> list[str]:
        """The loop in a method: ``for i in range(...):`` and its body (forward, the
        resolvent, f)."""
        lines = []
        for space in loop.summed:
            base = plan.base(space)
            lines.append(f"{_target(plan, space)} = {base if base is not None else 'None'}")
        lines.append(f"for {self.vars[loop.run]} in range({loop.first}, {loop.last + 1}):")
        body = self.body(plan, loop, 0, comments=True)
        return lines + ["    " + line for line in body]

    def body(self, plan, loop: L.Loop, p: int, comments=False) -> list[str]:
        """The statements of pass ``p`` with every index written in the loop variable."""
        low = self.lowering
        var = self.vars[loop.run]
        lines: list[str] = []
        writers: dict[tuple, list[int]] = {}  # (family, index) -> statements writing it
        for s, statement in enumerate(loop.statements):
            for term in statement.outputs:
                if term.space is None:
                    writers.setdefault((term.family, term.index), []).append(s)
        pending: dict[tuple, list[str]] = {}
        for s, statement in enumerate(loop.statements):
            edge = low.edges[statement.edges[p]]
            if comments:
                lines.append(self.comment(loop, statement))
            expr = self.expression(plan, loop, statement, p, lines)
            targets = []
            for term in statement.outputs:
                if term.space is not None:  # added to on every pass
                    temp = plan.locals.name(
                        f"{term.space}/writer/{statement.family}",
                        f"{term.space}_{statement.family}",  # (the namespace sanitizes it)
                    )
                    targets.append(temp)
                    continue
                key = (term.family, term.index)
                target = f"{plan.families[term.family]}[{term.index.text(var)}]"
                if writers[key] == [s]:
                    base = (
                        plan.element_base(term.family, term.index.text(var))
                        if plan.element_base
                        else None
                    )
                    if base is not None and len(statement.outputs) == 1 and edge.machine is None:
                        expr = f"{base} + {expr}"
                        targets.append(target)
                        continue
                    if base is None:
                        targets.append(target)
                        continue
                temp = plan.locals.name(  # (one per element: an edge may write two)
                    f"{term.family}/{term.index}/writer/{statement.family}",
                    f"{term.family}_{statement.family}",
                )
                targets.append(temp)
                pending.setdefault(key, []).append(temp)
            lines.append(low.assignment(edge, targets, expr))
            for term, target in zip(statement.outputs, targets, strict=True):
                if term.space is not None:
                    total = _target(plan, term.space)
                    if plan.base(term.space) is None:
                        lines.append(
                            f"{total} = {target} if {total} is None else {total} + {target}"
                        )
                    else:
                        lines.append(f"{total} = {total} + {target}")
                    continue
                key = (term.family, term.index)
                if key in pending and writers[key][-1] == s:
                    terms = pending.pop(key)
                    base = (
                        plan.element_base(term.family, term.index.text(var))
                        if plan.element_base
                        else None
                    )
                    total = f"{plan.families[term.family]}[{term.index.text(var)}]"
                    lines.append(f"{total} = {' + '.join(([base] if base else []) + terms)}")
        return lines

    def expression(self, plan, loop: L.Loop, statement: L.Statement, p: int, lines) -> str:
        """What a statement's edge computes on pass ``p``, written in the loop variable."""
        low = self.lowering
        edge = low.edges[statement.edges[p]]
        reads = [self.read(plan, loop, term) for term in statement.inputs]
        if edge.machine is not None:
            return f"{low.layer_exprs[(edge.name, 0)]}({', '.join(reads)})"
        product = self.product(edge, statement, reads, p)
        return low._apply_ops(edge, plan, lines, product, 0, hint=statement.family)

    def adjoint(self, plan, loop: L.Loop) -> tuple[list[str], list[str]]:
        """The loop in ``adjoint``: what each edge computes at the leaves (kept per pass in
        a dict named after its statement), and its vector-Jacobian products, last pass
        first."""
        var = self.vars[loop.run]
        results = {
            st.family: plan.locals.name(f"{st.family}/result", st.family) for st in loop.statements
        }
        computed = [f"{r}: dict[int, Tensor] = {{}}" for r in results.values()]
        computed.append(f"for {var} in range({loop.first}, {loop.last + 1}):")
        for statement in loop.statements:
            body = [self.comment(loop, statement)]
            expr = self.expression(plan, loop, statement, 0, body)
            body.append(f"{results[statement.family]}[{var}] = {expr}")
            computed += ["    " + line for line in body]
        pulls = [f"for {var} in reversed(range({loop.first}, {loop.last + 1})):"]
        for statement in reversed(loop.statements):
            ins = self.names_of(loop, statement.inputs)
            outs = self.names_of(loop, statement.outputs)
            where = self.lowering.where(self.lowering.edges[statement.edges[0]].span)
            name = f"{statement.family}[{statement.index.text(loop.var, tight=True)}]"
            args = f"bar, x, {results[statement.family]}[{var}], {ins}, {outs}"
            pulls.append(f"    _pull({args})  # {where}  {safe(name)}")
        return computed, pulls

    def names_of(self, loop: L.Loop, terms) -> str:
        """A tuple display of the names of the spaces some references name."""
        var, inner = self.vars[loop.run], self.inner[loop.run]
        items = []
        for term in terms:
            if term.space is not None:
                items.append(py_str(term.space))
            elif term.index is not None:
                items.append(element_key(term.family, term.index.text(var)))
            else:
                hi = L.Affine(term.hi.a, term.hi.b + 1).text(var)
                each = element_key(term.family, inner)
                items.append(f"*[{each} for {inner} in range({term.lo.text(var)}, {hi})]")
        return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"

    def read(self, plan, loop: L.Loop, term: L.Term) -> str:
        """What a reference of the body reads: a tensor, or ``*[...]`` for a range."""
        var = self.vars[loop.run]
        if term.space is not None:
            return plan.read(_Port(term.space))
        if term.index is not None:
            return plan.element(term.family, term.index.text(var))
        inner = self.inner[loop.run]
        hi = L.Affine(term.hi.a, term.hi.b + 1).text(var)
        each = plan.element(term.family, inner)
        return f"*[{each} for {inner} in range({term.lo.text(var)}, {hi})]"

    def product(self, edge, statement: L.Statement, reads: list[str], p: int) -> str:
        """The edge's inputs concatenated, or combined by a first add or mul (no ranges:
        ``loops`` keeps no such loop)."""
        low = self.lowering
        combine = OPS[edge.ops[0].kind].combine
        if combine:
            return combined(low, edge, reads, combine)
        if len(reads) == 1 and not reads[0].startswith("*"):
            return reads[0]
        return f"torch.cat([{', '.join(reads)}], dim={CHANNEL_DIM})"

    def comment(self, loop: L.Loop, statement: L.Statement) -> str:
        low = self.lowering
        edge = low.edges[statement.edges[0]]
        ins = " × ".join(t.text(loop.var) for t in statement.inputs)
        outs = " × ".join(t.text(loop.var) for t in statement.outputs)
        name = f"{statement.family}[{statement.index.text(loop.var, tight=True)}]"
        text = f"{name} : {ins} -> {outs} = {pipeline_text(edge, low.machines)}"
        return f"# {low.where(edge.span)}  {safe(text)}"


class _Port:
    """A plain space read in a loop body (what ``_Plan.read`` takes)."""

    __slots__ = ("space",)
    delay = 0
    window = None
    position = False

    def __init__(self, space: str):
        self.space = space


def _pick(hint: str, taken: set[str], arrays: set[str]) -> str:
    """A name from ``hint`` that is none of ``taken`` and no array item's (``h_3``); it
    is taken from then on."""
    base = sanitize(hint)
    found = re.fullmatch(r"(.+)_m?\d*", base)
    if found and found.group(1) in arrays:
        # (a loop variable h_2 beside an array h: h_2, h_21, h_22, ... all name items)
        base = f"{base}_v"
    for n in range(len(taken) + 2):  # (one of these is free)
        candidate = base if n == 0 else f"{base}{n}"
        found = re.fullmatch(r"(.+)_m?\d+", candidate)
        if candidate not in taken and not (found and found.group(1) in arrays):
            taken.add(candidate)
            return candidate
    raise AssertionError(f"no name for {hint!r}")
