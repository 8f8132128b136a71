"""Lower stage: checked IR → a plain view model of the Python module to emit.

Everything the templates print is decided here: identifiers (from
:class:`Namespace`), layer constructors and statements (from the op table),
and the comments that trace each statement to its ``.mach`` line. The
templates only loop over the result.

Three methods are written from one routine, ``_statements``
(:mod:`.lower_statements`, the half of the lowering that writes statements), which
runs each edge once in dependency order and adds contributions per space:

- ``forward``: inputs are arguments, hidden and output spaces start at zero;
- ``resolvent``: every space starts at its ``x0`` value;
- ``f``: every edge reads the given state (no order needed), no starting values.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from . import __version__, ir, lower_regroup, lower_sizes
from .equilibrium import solver_args
from .ir import format_params
from .loops import Loop, element, expanded, find_loops, loop_order
from .lower_statements import Statements, _Plan
from .names import (
    METHOD_LOCALS,
    MODULE_ATTRIBUTES,
    MODULE_NAMES,
    Namespace,
    attribute_hint,
    sanitize,
)
from .ops import OPS, Site
from .ops.spec import format_shape, py_literal
from .source_text import (
    dict_lines,
    edge_text,
    element_key,
    file_label,
    pipeline_text,
    py_str,
    py_tuple,
    safe,
)


@dataclass(frozen=True)
class Layer:
    attr: str
    constructor: str
    comment: str


@dataclass(frozen=True)
class Method:
    signature: str
    doc: str
    body: tuple[str, ...]
    decorator: str = ""  # "staticmethod": a method that needs no instance


@dataclass(frozen=True)
class OutputTuple:
    name: str
    fields: tuple[str, ...]


@dataclass(frozen=True)
class MachineClass:
    name: str
    doc: tuple[str, ...]
    spaces: tuple[str, ...]  # lines of the SPACES class attribute
    inputs: str
    outputs: str
    layers: tuple[Layer, ...]
    methods: tuple[Method, ...]
    init: tuple[str, ...] = ()  # statements of __init__ after the layers


@dataclass(frozen=True)
class ModuleView:
    header: tuple[str, ...]
    doc: str
    imports: tuple[str, ...]
    output_tuples: tuple[OutputTuple, ...]
    classes: tuple[MachineClass, ...]
    adjoint: bool = False  # some class has adjoint(): the module defines _leaves and _pull


def lower(
    program: ir.CheckedProgram,
    expand_loops: bool = False,
    sources: dict[str, str] | None = None,
) -> ModuleView:
    """The view model of one generated module holding a class per machine (``expand_loops``:
    every loop of the source written out edge by edge, none kept as a loop).

    Raises :class:`CompileError` (rendered with ``sources``) for a machine that would be
    written out with more than :data:`lower_loops.MAX_WRITTEN_OUT` edges one by one."""
    from .lower_time import TimeLowering  # it extends _MachineLowering, defined here

    source_name = os.path.basename(program.file)
    module_names = Namespace(MODULE_NAMES)
    for checked in program.machines:
        module_names.name(checked.machine.key)  # class names: machine names (checked), or keys
    tuples: dict[str, OutputTuple] = {}
    for checked in program.machines:
        machine = checked.machine
        outputs = [s for s in machine.spaces if s.role is ir.Role.OUTPUT]
        if len(outputs) > 1:
            fields = Namespace(frozenset({"count", "index"}))
            # NamedTuple fields cannot start with "_" (nor, once sanitized, with a digit);
            # plain names claim theirs first.
            for s in sorted(outputs, key=lambda s: s.name.startswith("_")):
                hint = s.name.lstrip("_")
                fields.name(s.name, hint if hint[:1].isalpha() else f"out_{hint}".rstrip("_"))
            tuples[machine.key] = OutputTuple(
                name=module_names.name(f"{machine.key}.Output", f"{machine.key}Output"),
                fields=tuple(fields.name(s.name) for s in outputs),
            )
    module_level = MODULE_NAMES | {c.machine.key for c in program.machines}
    module_level |= {t.name for t in tuples.values()}
    by_key = {c.machine.key: c.machine for c in program.machines}
    structures = {c.machine.key: c.structure for c in program.machines}
    classes = tuple(
        (TimeLowering if c.machine.time is not None else _MachineLowering)(
            c, module_level, tuples.get(c.machine.key), by_key, structures, expand_loops, sources
        ).lower()
        for c in program.machines
    )
    code = [layer.constructor for c in classes for layer in c.layers]
    code += [line for c in classes for line in c.init]
    code += [
        line for c in classes for m in c.methods for line in m.body if line.lstrip()[:1] != "#"
    ]
    imports = ["import torch"]
    # NOTE: scale. The substring test first: a regular expression on each of a million lines
    # took a second.
    if any("F." in line and re.search(r"\bF\.", line) for line in code):
        imports.append("import torch.nn.functional as F")
    imports.append("from torch import Tensor, nn")
    if any("runtime." in line and re.search(r"\bruntime\.", line) for line in code):
        imports.append("\nfrom machc import runtime")
    if tuples:
        imports.insert(0, "from typing import NamedTuple\n")
    params = "; ".join(
        f"{c.machine.key}({format_params(c.machine.params)})"
        for c in program.machines
        if c.machine.params
    )
    header = [f"# Generated by machc {__version__} from {safe(source_name)}. Do not edit:"]
    header.append("# change the .mach file and run `machc compile` again.")
    if params:
        header.append(f"# Parameters: {params}.")
    names = ", ".join(c.name for c in classes)
    return ModuleView(
        header=tuple(header),
        doc=f"Machines compiled from {safe(source_name)}: {names}.",
        imports=tuple(imports),
        output_tuples=tuple(tuples.values()),
        classes=classes,
        adjoint=any(m.signature.startswith("adjoint(") for c in classes for m in c.methods),
    )


class _MachineLowering(Statements):
    def __init__(
        self,
        checked: ir.CheckedMachine,
        module_level,
        output_tuple,
        machines: dict[str, ir.Machine] | None = None,
        structures: dict[str, ir.Structure] | None = None,
        expand_loops: bool = False,
        sources: dict[str, str] | None = None,
    ):
        self.machines = machines or {}
        self.structures = structures or {}
        self.machine = checked.machine
        self.structure = checked.structure
        self.module_level = frozenset(module_level)
        self.output_tuple = output_tuple
        self.edges = {edge.name: edge for edge in self.machine.edges}
        self.writers: dict[str, list[str]] = {s.name: [] for s in self.machine.spaces}
        for edge in self.machine.edges:  # declaration order: the order contributions are summed in
            for port in edge.outputs:
                self.writers[port.space].append(edge.name)
        self.level_of = {e: k for k, level in enumerate(self.structure.levels, 1) for e in level}
        self.attrs = Namespace(MODULE_ATTRIBUTES)
        self.layer_exprs: dict[tuple[str, int], str] = {}
        self.solvers: dict[str, str] = {}  # solved space -> its runtime.Solve attribute
        # NOTE: scale. Every method writes every edge: what does not depend on the method
        # is made once per edge (a 100,000-edge chain: docs/benchmarks.md).
        self._comments: dict[str, str] = {}  # edge -> the comment above its statements
        self._pipelines: dict[tuple[int, ...], str] = {}  # ids of ops -> their text
        self._wheres: dict[int, tuple] = {}  # id(span) -> (span, "file:line")
        self._sites: dict[tuple[str, int], Site] = {}  # (edge, id(op)) -> its site
        self._leveled: dict[str, tuple[tuple[str, ...], str]] = {}  # edge -> (reads, expr)
        # loops of the source kept as loops (compiler/loops.py): the order edges run in,
        # each kept loop one item; the structure's order (level by level) when none is kept
        from .lower_loops import LoopPlanner

        self.loop_planner = LoopPlanner(self, expand_loops)
        self.expand_loops = expand_loops
        self.sources = sources
        self.order: list = list(self.structure.order)
        if self.loop_planner.loops:
            self.order, self.loop_planner.loops = loop_order(
                self.machine, self.structure, self.loop_planner.loops
            )

    def where(self, span) -> str:
        """``file:line`` of a span (the edges a loop makes share theirs: made once each)."""
        known = self._wheres.get(id(span))
        if known is None:  # the span is kept with its text, so that its id stays its own
            known = self._wheres[id(span)] = (span, f"{file_label(span.file)}:{span.line}")
        return known[1]

    def edge_comment(self, edge: ir.Edge) -> str:
        """``# file:line  e : h -> y = linear``, the comment above an edge's statements."""
        comment = self._comments.get(edge.name)
        if comment is None:
            pipeline = None
            if edge.shares is None and edge.machine is None:
                # the edges a loop makes share their ops (build): their text is made once
                ops = tuple(map(id, edge.ops))  # the IR holds the ops: their ids stay theirs
                pipeline = self._pipelines.get(ops)
                if pipeline is None:
                    pipeline = self._pipelines[ops] = pipeline_text(edge)
            text = edge_text(edge, self.machine.time, self.machines, pipeline)
            if self.loop_planner.loops and len(edge.inputs) >= 3:  # h[1..32], not 32 names
                ins = self.loop_planner.compact_text(edge.inputs, self.machine.time)
                text = f"{edge.name} : {ins} -> {text.split(' -> ', 1)[1]}"
            comment = self._comments[edge.name] = f"# {self.where(edge.span)}  {safe(text)}"
        return comment

    def lower(self) -> MachineClass:
        machine = self.machine
        layers = self._layers()
        self.loop_planner.check_written_out(self.sources)
        inputs = [s for s in machine.spaces if s.role is ir.Role.INPUT]
        outputs = [s for s in machine.spaces if s.role is ir.Role.OUTPUT]
        signature = lambda spaces: ", ".join(f"{s.name} {format_shape(s.shape)}" for s in spaces)  # noqa: E731
        over = f" over {machine.time}" if machine.time else ""
        doc = [f"The machine {machine.name}{over} from {self.where(machine.span)}."]
        if machine.params:
            doc.append(f"Parameters: {format_params(machine.params)}.")
        doc.append(f"forward({signature(inputs)}) -> {signature(outputs)}")
        doc += self._doc_notes()
        annotation, items = lower_sizes.space_items(machine, self.structure)
        if self.loop_planner.loops:  # no size symbols: SPACES has sizes
            kept = {f: f for f in self.loop_planner.families()}
            items = self.loop_planner.items(lambda s: repr(tuple(s.shape)), kept)
        spaces = dict_lines(f"SPACES: {annotation} = ", items, indent=4)
        spaces += self._class_attributes()
        return MachineClass(
            name=machine.key or machine.name,
            doc=tuple(safe(line) for line in doc),
            spaces=spaces,
            inputs=py_tuple(py_str(s.name) for s in inputs),
            outputs=py_tuple(py_str(s.name) for s in outputs),
            layers=tuple(layers),
            methods=self._methods(inputs, outputs),
            init=self._loop_checkpoints(),
        )

    def _loop_checkpoints(self) -> tuple[str, ...]:
        """``__init__``'s hook that loads checkpoints of the other layout of the loops'
        layers (kept as a ModuleDict, ``g.3.weight``, or written out, ``g_3.weight``)."""
        planner = self.loop_planner
        kept = bool(planner.loops)
        if kept:
            looped = planner.loops
            attrs = {f: a for (f, i), a in planner.attrs.items() if i is None}
        elif self.expand_loops:  # (written out on request: the loops that would be kept)
            looped, attrs = find_loops(self.machine, self.structure), {}
        else:
            return ()
        loops: dict[str, str] = {}  # ModuleDict attribute -> prefix of the written-out ones
        first = None  # (attribute, prefix, index) of the first, for the comment
        for statement in (st for loop in looped for st in loop.statements):
            edge = self.edges[statement.edges[0]]  # (the statement's edges are alike)
            family, index = element(edge.name)
            written = sanitize(attribute_hint(family))
            attr = attrs.get(family) if kept else written
            layers = edge.machine is not None or any(OPS[op.kind].layer for op in edge.ops)
            if attr is None or not layers or edge.shares is not None:
                continue
            loops[attr] = written
            first = first or (attr, written, index)
        if first is None:
            return ()
        attr, written, index = first
        other = sanitize(f"{written}[{index}]") if kept else f"{attr}.{index}"
        layout = "written out" if kept else "kept as loops"
        table = ", ".join(f"{py_str(a)}: {py_str(w)}" for a, w in sorted(loops.items()))
        return (
            f"# machc: a checkpoint with the loops' layers {layout} ({other}.*) loads too",
            f"self.register_load_state_dict_pre_hook(runtime.LoopCheckpoints({kept}, {{{table}}}))",
        )

    def _methods(self, inputs, outputs) -> tuple[Method, ...]:
        from .lower_methods import adjoint_method, tool_methods  # they use what is defined here

        shapes = lower_sizes.shapes_method(self)
        return (
            self._forward(inputs, outputs),
            self._f(),
            self._resolvent(),
            adjoint_method(self),
            *tool_methods(self, inputs),
            *([shapes] if shapes is not None else []),
        )

    def _doc_notes(self) -> list[str]:
        notes = []
        for cycle in self.structure.cycles:
            solve = cycle.solve
            notes.append(
                f"Cycle {', '.join(cycle.spaces)}: solved by {solve.solver}; the last call's "
                f"iterations and residual are on {self.solvers[solve.space]}."
            )
        return notes

    def _class_attributes(self) -> list[str]:
        return []

    def _method_locals(self) -> Namespace:
        # the size symbols are locals too (H, W), bound at the top of each method
        return Namespace(self.module_level | METHOD_LOCALS | set(self.structure.sizes))

    # --- layers ---

    def _edge_layers(self, edge: ir.Edge) -> list[tuple[int, str]]:
        """(op index, constructor) of each layer of an edge."""
        if edge.machine is not None:
            return [(0, f"{edge.machine}()")]
        shapes = self.structure.shapes[edge.name]
        return [
            (i, OPS[op.kind].layer(self._site(edge, op), shapes[i], shapes[i + 1]))
            for i, op in enumerate(edge.ops)
            if OPS[op.kind].layer is not None
        ]

    def _edge_modules(self, edge: ir.Edge) -> list[tuple[int, str, str]]:
        """(op index, op kind, constructor) of each module of its own an edge's ops make."""
        shapes = self.structure.shapes[edge.name]
        return [
            (i, op.kind, OPS[op.kind].module(self._site(edge, op), shapes[i], shapes[i + 1]))
            for i, op in enumerate(edge.ops)
            if OPS[op.kind].module is not None
        ]

    def _layers(self) -> list[Layer]:
        layers = []
        planner = self.loop_planner
        planner.plan_layers(self._edge_layers, self._edge_modules)
        kept = {name for loop in planner.loops for name in loop.edges}
        if len(planner.loops) < sum(isinstance(item, Loop) for item in self.order):
            self.order = [  # the loops whose body is not alike on every pass: written out
                each
                for item in self.order
                for each in (
                    expanded([item])
                    if isinstance(item, Loop) and item not in planner.loops
                    else [item]
                )
            ]
        for edge in self.machine.edges:
            if edge.shares is not None:
                continue  # it calls the layers of the edge it shares them with
            if edge.name in kept:
                for attr, constructor, comment in planner.name_layers(edge.name, modules=False):
                    layers.append(Layer(attr=attr, constructor=constructor, comment=safe(comment)))
                continue
            built = self._edge_layers(edge)
            if not built:
                continue
            hint = attribute_hint(edge.name)
            attr = self.attrs.name(edge.name, hint)
            comment = f"{self.where(edge.span)}  {edge.name}"
            if len(built) == 1:
                ((i, constructor),) = built
                self.layer_exprs[(edge.name, i)] = f"self.{attr}"
            else:
                for k, (i, _) in enumerate(built):
                    self.layer_exprs[(edge.name, i)] = f"self.{attr}[{k}]"
                constructor = "nn.ModuleList([" + ", ".join(c for _, c in built) + "])"
            layers.append(Layer(attr=attr, constructor=constructor, comment=safe(comment)))
        # NOTE: named after every edge's layers, so that no parameter's name depends on them
        for edge in self.machine.edges:
            if edge.shares is not None:
                continue
            if edge.name in kept:
                for attr, constructor, comment in planner.name_layers(edge.name, modules=True):
                    layers.append(Layer(attr=attr, constructor=constructor, comment=safe(comment)))
                continue
            for i, kind, constructor in self._edge_modules(edge):
                hint = attribute_hint(edge.name)
                attr = self.attrs.name(f"{edge.name}/{i}", f"{hint}_{kind}")
                self.layer_exprs[(edge.name, i)] = f"self.{attr}"
                comment = safe(f"{self.where(edge.ops[i].span)}  {edge.name}")
                layers.append(Layer(attr=attr, constructor=constructor, comment=comment))
        planner.set_exprs()
        for cycle in self.structure.cycles:
            solve = cycle.solve
            attr = self.attrs.name(f"solve/{solve.space}", f"solve_{solve.space}")
            self.solvers[solve.space] = f"self.{attr}"
            args = [py_literal(solve.solver)]
            args += [f"{k}={py_literal(v)}" for k, v in solver_args(solve).items()]
            constructor = f"runtime.Solve({', '.join(args)})"
            comment = f"{self.where(solve.span)}  solve {solve.space}"
            layers.append(Layer(attr=attr, constructor=constructor, comment=safe(comment)))
        for edge in self.machine.edges:
            if edge.shares is not None:
                for i in range(max(1, len(edge.ops))):
                    if (edge.shares, i) in self.layer_exprs:
                        self.layer_exprs[(edge.name, i)] = self.layer_exprs[(edge.shares, i)]
        return layers

    def _site(self, edge: ir.Edge, op: ir.Op) -> Site:
        key = (edge.name, id(op))  # the edge holds the op: its id stays its own meanwhile
        site = self._sites.get(key)
        if site is None:
            site = self._sites[key] = Site(op=op, edge=edge.name, where=self.where(op.span))
        return site

    # --- methods ---

    def _forward(self, inputs, outputs) -> Method:
        names = self._method_locals()
        args = [names.name(s.name) for s in inputs]
        args_by_space = {s.name: a for s, a in zip(inputs, args, strict=True)}
        # NOTE: the lambdas hold var, not the plan: a plan that held itself would wait for
        # the garbage collector, which is paused while machc runs (driver.collector_paused)
        var = dict(args_by_space)
        plan = _Plan(
            read=lambda port: var[port.space],
            base=lambda space: var[space] if space in args_by_space else None,
            leveled=True,
            locals=names,
            var=var,
            like=args[0] if args else "",
            regroup=bool(self.structure.regrouped),
        )
        given = "{" + ", ".join(f"{py_str(s)}: {a}" for s, a in args_by_space.items()) + "}"
        body = lower_sizes.prologue(self, given)
        if self.structure.regroup_columns:
            plan.columns = names.name("<regroup columns>", "columns")
            body += lower_regroup.columns(plan.columns)
        body += self.loop_planner.declare(plan)
        families = plan.families  # (held by the lambda, not the plan: see above)
        plan.element = lambda family, index: f"{families[family]}[{index}]"
        body += self._statements(plan, self.order)
        if self.output_tuple is None:
            returns, result = "Tensor", plan.var[outputs[0].name]
        else:
            fields = ", ".join(
                f"{fld}={plan.var[s.name]}"
                for fld, s in zip(self.output_tuple.fields, outputs, strict=True)
            )
            returns, result = self.output_tuple.name, f"{self.output_tuple.name}({fields})"
        body.append(f"return {result}")
        params = ", ".join(f"{a}: Tensor" for a in args)
        return Method(
            signature=f"forward(self, {params}) -> {returns}",
            doc="Every space in dependency order, each edge once; returns the output spaces.",
            body=tuple(body),
        )

    def _resolvent(self) -> Method:
        names = self._method_locals()
        var: dict[str, str] = {}  # held by the lambdas, not the plan (see _forward)
        plan = _Plan(
            read=lambda port: var[port.space],
            base=lambda space: f"x0[{py_str(space)}]",
            leveled=True,
            locals=names,
            var=var,
            like=f"x0[{py_str(self.machine.spaces[0].name)}]",
        )
        body = lower_sizes.prologue(self, "x0")
        body.append(f"x0 = _complete({lower_sizes.complete_shapes(self.structure)}, x0)")
        body += self.loop_planner.declare(plan)
        families = plan.families
        plan.element = lambda family, index: f"{families[family]}[{index}]"
        plan.element_base = lambda family, index: f"x0[{element_key(family, index)}]"
        for space in self.machine.spaces:
            if not self.writers[space.name]:
                plan.var[space.name] = names.name(space.name)
                body.append(f"{plan.var[space.name]} = x0[{py_str(space.name)}]")
        body += self._statements(plan, self.order)
        self._leveled.clear()  # forward's expressions, taken
        body += self._state_dict_return(plan)
        return Method(
            signature="resolvent(self, x0: dict[str, Tensor]) -> dict[str, Tensor]",
            doc="The solution x of x = f(x) + x0, for x0 given on any spaces (the rest are zero).",
            body=tuple(body),
        )

    def _f(self) -> Method:
        names = self._method_locals()
        plan = _Plan(
            read=lambda port: f"state[{py_str(port.space)}]",
            base=lambda space: None,
            leveled=False,
            locals=names,
        )
        body = lower_sizes.prologue(self, "state")
        body.append(f"state = _complete({lower_sizes.complete_shapes(self.structure)}, state)")
        body += self.loop_planner.declare(plan)
        plan.element = lambda family, index: f"state[{element_key(family, index)}]"
        order = self.order if self.loop_planner.loops else [e.name for e in self.machine.edges]
        body += self._statements(plan, order)
        for space in self.machine.spaces:
            if not self.writers[space.name]:
                plan.var[space.name] = f"torch.zeros_like(state[{py_str(space.name)}])"
        body += self._state_dict_return(plan)
        return Method(
            signature="f(self, state: dict[str, Tensor]) -> dict[str, Tensor]",
            doc="The global endofunction: the sum of all edges applied to state (missing: zero).",
            body=tuple(body),
        )

    def _state_dict_return(self, plan: _Plan) -> list[str]:
        items = self.loop_planner.items(lambda s: plan.var[s.name], plan.families, dicts=True)
        return dict_lines("return ", items, indent=8)


def _sanitize_key(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name.replace("]", ""))
