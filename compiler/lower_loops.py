"""Loops of the source as loops of generated code (the loops ``compiler/loops.py`` keeps).

A kept loop's edges are one ``nn.ModuleDict`` per body statement, keyed by the
edge's index (``g[3]`` of the source is ``self.g["3"]``, ``g.3.weight`` in the
``state_dict``), built by a comprehension whose sizes are affine in the loop
variable (``nn.Linear(32 * i - 16, 32)``). Each method runs the loop as a Python
``for``; the arrays of spaces the body names by index are dicts keyed by index
(``h[i - 1]`` reads as in the source).

A loop is kept only if its body prints the same text on every pass and every layer
constructor is one template whose numbers are affine in the loop variable;
otherwise its edges are written out one by one, as before.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable

from . import loops as L
from .lower_statements import _Plan, _target, combined
from .names import ADJOINT_LOCALS, METHOD_LOCALS, TIME_LOCALS, Namespace, sanitize
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
# a whole-number argument: after "(", "[", "," or "=", with or without one space
_NUMBER = re.compile(r"(?:(?<=[(\[=,])|(?<=[(\[=,] ))-?\d+(?=[,)\]])")


def template(points: list[tuple[int, str]], var: str) -> str | None:
    """One text for every ``(value, text)``: equal texts but for whole numbers that are
    affine in ``value`` (those are written in ``var``); None if there is no such text."""
    if all(text == points[0][1] for _, text in points):
        return points[0][1]  # the same on every pass
    skeleton = _NUMBER.split(points[0][1])
    columns: list[list[tuple[int, int]]] = [[] for _ in range(len(skeleton) - 1)]
    seen: dict[str, list[str]] = {}
    for value, text in points:
        numbers = seen.get(text)
        if numbers is None:
            if _NUMBER.split(text) != skeleton:
                return None
            numbers = seen[text] = _NUMBER.findall(text)
        for column, number in zip(columns, numbers, strict=True):
            column.append((value, int(number)))
    out = [skeleton[0]]
    for column, part in zip(columns, skeleton[1:], strict=True):
        form = L.Affine.fit(column)
        if form is None:
            return None
        out += [form.text(var), part]
    return "".join(out)


class LoopPlanner:
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

    # --- layers (made before any method) ---

    def plan_layers(self, edge_layers: Callable, edge_modules: Callable) -> None:
        """Keeps the loops whose layers and bodies fit. ``edge_layers(edge)`` gives an
        edge's ``[(op index, constructor)]`` as the expanded form makes them, and
        ``edge_modules(edge)`` its modules of their own (dropout) the same way."""
        kept = []
        for loop in self.loops:
            made = self._loop_layers(loop, edge_layers, edge_modules)
            if made is None:
                continue
            if self._uniform(loop, made):
                self.layers.update(made)
                kept.append(loop)
        self.loops = kept
        for cached in ("_families", "_items", "_loop_of", "_families_list"):
            self.__dict__.pop(cached, None)

    def _exprs(self, loop: L.Loop, made: dict, attr_of: Callable, p: int) -> dict:
        """(edge, op index) -> its layer, for the edges of pass ``p`` of a loop (the body is
        printed from one pass); ``attr_of(family, None)`` names a statement's ModuleDict of
        layers, ``attr_of(family, i)`` that of op i's modules."""
        exprs = {}
        var = self.vars[loop.run]
        for statement in loop.statements:
            family = statement.family
            key = f"str({statement.index.text(var)})"
            layer, modules = made[family]
            for name in (statement.edges[p],):
                if layer is not None:
                    indices = layer[0]
                    at = f"self.{attr_of(family, None)}[{key}]"
                    for k, i in enumerate(indices):
                        exprs[(name, i)] = at if len(indices) == 1 else f"{at}[{k}]"
                for i, _, _ in modules:
                    exprs[(name, i)] = f"self.{attr_of(family, i)}[{key}]"
        return exprs

    def name_layers(self, edge_name: str, modules: bool) -> list[tuple[str, str, str]]:
        """At a kept loop's first edge of a statement: (attribute, constructor, comment) of
        its ModuleDict of layers (``modules``: of its modules of their own), named now."""
        low = self.lowering
        loop = self.loop_of.get(edge_name)
        if loop is None:
            return []
        statement = next(st for st in loop.statements if st.edges[0] == edge_name)
        family = statement.family
        layer, own = self.layers[family]
        hint = family if not family.startswith("_") else "edge" + family  # as edges are named
        index = statement.index.text(loop.var, tight=True)
        where = f"{low.where(low.edges[edge_name].span)}  {family}[{index}]"
        made = []
        if not modules and layer is not None:
            attr = self.attrs[(family, None)] = low.attrs.name(f"loop/{family}", hint)
            made.append((attr, layer[1], where))
        if modules:
            for i, kind, constructor in own:
                attr = low.attrs.name(f"loop/{family}/{i}", f"{hint}_{kind}")
                self.attrs[(family, i)] = attr
                made.append((attr, constructor, where))
        return made

    def set_exprs(self) -> None:
        """Every kept loop's edges call their layers through the named ModuleDicts."""
        for loop in self.loops:
            made = {st.family: self.layers[st.family] for st in loop.statements}
            self.lowering.layer_exprs.update(
                self._exprs(loop, made, lambda family, i: self.attrs[(family, i)], 0)
            )

    @property
    def loop_of(self) -> dict[str, L.Loop]:
        """First edge of a statement of a kept loop -> the loop."""
        found = self.__dict__.get("_loop_of")
        if found is None:
            found = self.__dict__["_loop_of"] = {
                st.edges[0]: loop for loop in self.loops for st in loop.statements
            }
        return found

    def _loop_layers(self, loop: L.Loop, edge_layers, edge_modules) -> dict | None:
        """statement family -> (its layers: (op indices, the ModuleDict constructor) or None,
        [(op index, kind, ModuleDict constructor)] of its modules of their own)."""
        low = self.lowering
        var = self.vars[loop.run]
        values = f"range({loop.first}, {loop.last + 1})"
        made = {}
        for statement in loop.statements:
            key = statement.index.text(var)
            cache: dict[tuple, tuple] = {}
            points: list[tuple[int, str]] = []
            module_points: dict[tuple[int, str], list[tuple[int, str]]] = {}
            indices = None
            for p, name in enumerate(statement.edges):
                edge = low.edges[name]
                sig = _signature(low, edge)
                built = cache.get(sig) if p >= 2 else None  # the first two always: their names
                if built is None:
                    built = cache[sig] = (edge_layers(edge), edge_modules(edge))
                layers, modules = built
                if indices is None:
                    indices = [i for i, _ in layers]
                    module_points = {(i, kind): [] for i, kind, _ in modules}
                if [i for i, _ in layers] != indices or len(modules) != len(module_points):
                    return None
                if layers:
                    text = (
                        layers[0][1]
                        if len(layers) == 1
                        else ("nn.ModuleList([" + ", ".join(c for _, c in layers) + "])")
                    )
                    points.append((loop.first + p, text))
                for i, kind, constructor in modules:
                    if (i, kind) not in module_points:
                        return None
                    module_points[(i, kind)].append((loop.first + p, constructor))
            layer = None
            if indices:
                constructor = template(points, var)
                if constructor is None:
                    return None
                layer = (
                    indices,
                    f"nn.ModuleDict({{str({key}): {constructor} for {var} in {values}}})",
                )
            own = []
            for (i, kind), each in module_points.items():
                constructor = template(each, var)
                if constructor is None:
                    return None
                own.append(
                    (i, kind, f"nn.ModuleDict({{str({key}): {constructor} for {var} in {values}}})")
                )
            made[statement.family] = (layer, own)
        return made

    def _uniform(self, loop: L.Loop, made: dict) -> bool:
        """Whether the body prints the same text on every pass (forward's text; the other
        methods print from the same parts): the first two passes (their names differ) and
        one of every other kind (ops, shapes)."""
        low = self.lowering
        texts = set()
        seen = set()
        # the attributes are named in turn with every other layer (lower._layers), so that
        # no other name depends on a loop: the text is checked with these
        attr_of = lambda family, i: family + ("" if i is None else f"_{i}")  # noqa: E731
        for p in range(len(loop.values)):
            sig = tuple(_signature(low, low.edges[st.edges[p]]) for st in loop.statements)
            if p >= 2 and sig in seen:
                continue
            seen.add(sig)
            exprs = self._exprs(loop, made, attr_of, p)
            low.layer_exprs.update(exprs)
            plan = _Plan(
                read=lambda port: port.space,
                base=lambda space: None,
                leveled=False,
                locals=Namespace(low.module_level | METHOD_LOCALS),
                element=lambda family, index: f"{family}[{index}]",
            )
            plan.families = {f: f for f in loop.families()}
            texts.add("\n".join(self.body(plan, loop, p)))
            for key in exprs:
                del low.layer_exprs[key]
            if len(texts) > 1:
                return False
        return True

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


def _signature(low, edge) -> tuple:
    """What a pass's text depends on besides its indices: ops, shapes, sub-machine."""
    known = low.loop_planner._signatures.get(edge.name)
    if known is None:
        outs = None  # one output: its shape is the pipeline's last
        if len(edge.outputs) > 1:
            outs = tuple(low.machine.space(p.space).shape for p in edge.outputs)
        ranks = None  # the inputs' ranks: a first add or mul broadcasts the lower ones
        if edge.ops and OPS[edge.ops[0].kind].combine:
            ranks = tuple(len(low.machine.space(p.space).shape) for p in edge.inputs)
        shapes = low.structure.shapes[edge.name]
        known = (tuple(map(id, edge.ops)), shapes, outs, ranks, edge.machine)
        low.loop_planner._signatures[edge.name] = known
    return known
