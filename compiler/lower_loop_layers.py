"""The layers of loops kept as loops (:mod:`.lower_loops`): one ``nn.ModuleDict`` per
body statement, built by a comprehension whose constructor is one template, its numbers
affine in the loop variable (``nn.Linear(32 * i - 16, 32)``), and the check that the body
prints the same text on every pass (else the loop is written out).

:class:`LoopLayers` is the half of :class:`lower_loops.LoopPlanner` that makes them, before
any method is written.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from . import loops as L
from .lower_statements import _Plan
from .names import METHOD_LOCALS, Namespace, attribute_hint
from .ops import OPS

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


class LoopLayers:
    """A kept loop's layers (mixed into lower_loops.LoopPlanner)."""

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
        hint = attribute_hint(family)  # as edges are named
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
