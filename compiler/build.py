"""Build stage: syntax tree → hypergraph IR.

Binds machine parameters (defaults, ``--set`` / ``params=`` values), expands
``for`` loops and decides ``if``s (:mod:`expand`), expands space arrays,
evaluates every expression, resolves space names, and binds op arguments
against the op table (an edge's pipeline: :mod:`.build_pipelines`). Every problem
becomes a diagnostic; all of a file's problems are reported together.
"""

from __future__ import annotations

from collections.abc import Mapping

from . import ir
from . import syntax as s
from .build_pipelines import Pipelines
from .composition import Composition, machine_identity, rename_refs
from .diagnostics import Code, Note, Reporter, Span
from .equilibrium import build_solve
from .expand import Expansion, flatten
from .expressions import (
    MAX_EDGES,
    MAX_SIZE,
    Problem,
    Scope,
    TooLarge,
    did_you_mean,
    integer,
    range_of,
    shape_of,
)
from .imports import Library
from .names import class_name_problem
from .ops import OPS
from .params import bind_params, check_param_keys, missing_params, warn_unchecked
from .ports import PortResolver, Spaces


def build(
    source: s.SourceFile,
    params: Mapping[str, object],
    reporter: Reporter,
    library: Library | None = None,
    asked: str | None = None,
) -> ir.Program:
    """Bind, expand and resolve every machine of ``source``.

    ``params`` maps ``name`` (every machine with that parameter) or
    ``Machine.name`` to a value: a Python value or its text (as from ``--set``).
    ``library`` holds the imported files; machines used as edges become instances.

    A machine with a parameter that has neither a default nor a value is built where it
    is used as an edge, with the values of each use; one used nowhere gets a warning,
    unless it is ``asked`` for (by default the file's last machine): then its missing
    values are errors.
    """
    composition = Composition(library, _build_machine)
    composition.keys.reserve(*(decl.name for decl in source.machines))  # roots keep their names
    if asked is None and source.machines:
        asked = source.machines[-1].name
    machines = []
    unbound: list[s.MachineDecl] = []  # checked where they are used
    seen: dict[str, Span] = {}
    for decl in source.machines:
        if decl.name in seen:
            reporter.error(
                Code.DUPLICATE_NAME,
                f"machine {decl.name!r} is defined twice",
                decl.name_span,
                notes=(_note("first defined here", seen[decl.name]),),
            )
            continue
        seen[decl.name] = decl.name_span
        if missing_params(decl, params):
            unbound.append(decl)
            continue
        machine = _MachineBuilder(decl, reporter, composition, source.path).build(params)
        if machine is not None:
            machines.append(machine.model_copy(update={"key": machine.name}))
    for decl in unbound:
        if (source.path, decl.name) in composition.used:
            continue
        if decl.name == asked:  # its missing values are errors, as they always were
            _MachineBuilder(decl, reporter, composition, source.path).build(params)
        else:
            _MachineBuilder(decl, reporter, composition, source.path)._check_name()
            warn_unchecked(decl, params, reporter)
    check_param_keys(source, params, reporter)
    if not source.machines:
        start = Span(file=source.path, line=1, column=1, end_line=1, end_column=1)
        reporter.error(Code.MACHINE, "the file defines no machine", start)
    # A machine of this file used as an edge with its own parameters is that machine.
    own = {machine_identity(m): m.key for m in machines}
    alias = {m.key: own[i] for i, m in composition.instances.items() if i in own}
    instances = [m for i, m in composition.instances.items() if i not in own]
    return ir.Program(
        file=source.path,
        machines=tuple(rename_refs(m, alias) for m in machines),
        instances=tuple(rename_refs(m, alias) for m in instances),
    )


def _loop_site(decl: s.EdgeDecl, scope: Scope, counts: list[int]) -> ir.LoopSite | None:
    """Where a loop made the edge (None outside loops)."""
    if scope.run is None:
        return None
    run, var, value = scope.run
    terms = tuple(
        n if isinstance(ref.index, s.Range) else None
        for ref, n in zip(decl.inputs, counts, strict=True)
    )
    return ir.LoopSite(run=run, var=var, value=value, terms=terms)


def _note(message: str, span: Span) -> Note:
    return Note(message=message, span=span)


# --- machines -------------------------------------------------------------------


def _build_machine(decl, reporter, composition, file, params) -> ir.Machine | None:
    return _MachineBuilder(decl, reporter, composition, file).build(params)


class _MachineBuilder(Pipelines):
    def __init__(
        self,
        decl: s.MachineDecl,
        reporter: Reporter,
        composition: Composition | None = None,
        file: str = "",
    ):
        self.decl = decl
        self.reporter = reporter
        self.composition = composition or Composition(None, _build_machine)
        self.file = file
        self.shares: dict[str, tuple[str, Span, Scope]] = {}  # edge -> (shared edge, where)
        self.spaces = Spaces()
        self.port_resolver = PortResolver(decl, self.spaces)
        self.edges: dict[str, ir.Edge] = {}
        self.edge_families: dict[str, Span] = {}
        # NOTE: scale. An op call with the same argument values in every pass of a loop is
        # one Op, made once: a 100,000-edge chain held 100,000 equal copies (120 MB).
        self.ops: dict[tuple, ir.Op] = {}  # (id of the call, its argument values) -> the op

    def error(self, code: Code, message: str, span: Span, scope: Scope | None = None, **extra):
        context = scope.context() if scope else ""
        self.reporter.error(code, message + context, span, **extra)

    def problem(self, exc: Problem, scope: Scope | None = None) -> None:
        if exc.silent:
            return
        self.error(exc.code, exc.message, exc.span, scope, hint=exc.hint)

    def build(self, params: Mapping[str, object]) -> ir.Machine | None:
        """The machine, or None if it has errors (then the reporter has them)."""
        errors_before = self.reporter.error_count
        self._check_name()
        env = bind_params(self.decl, params, self.reporter)
        if env is None:
            return None
        expansion = Expansion(self.decl, self.problem)
        try:
            items = list(expansion.items(self.decl.body, Scope(env=dict(env))))
        except Problem as exc:  # too many iterations in all: expanding stops there
            self.problem(exc)
            return None
        for item, scope in items:
            if isinstance(item, s.SpaceDecl):
                self._declare_space(item, scope)
        for decl in flatten(expansion.unexpanded):
            if isinstance(decl, s.SpaceDecl) and decl.array is not None:
                self.spaces.arrays.setdefault(decl.name, [])  # an array with no elements
        try:
            for item, scope in items:
                if isinstance(item, s.EdgeDecl):
                    self._declare_edge(item, scope)
        except TooLarge as exc:
            self.problem(exc.problem, scope)
            return None
        solves = []
        for item, scope in items:
            if isinstance(item, s.SolveDecl):
                solve = self._solve(item, scope)
                if solve is not None:
                    solves.append(solve)
        for decl in flatten(expansion.unexpanded):
            if isinstance(decl, s.EdgeDecl):
                self._check_unexpanded_edge(decl)
        self._resolve_shares()
        self._check_name_clashes()
        if self.reporter.error_count > errors_before:
            return None
        return ir.Machine(
            name=self.decl.name,
            params=env,
            time=self.decl.time,
            spaces=tuple(self.spaces.by_name.values()),
            edges=tuple(self.edges.values()),
            solves=tuple(solves),
            span=self.decl.name_span,
        )

    def _check_name(self) -> None:
        name = self.decl.name
        problem = class_name_problem(name)
        if problem is None and (name in OPS or name == "shared"):
            problem = "is the name of an op, so it could not be used as an edge"
        if problem is not None:
            self.error(Code.MACHINE, f"machine name {name!r} {problem}", self.decl.name_span)

    # --- spaces ---

    def _declare_space(self, decl: s.SpaceDecl, scope: Scope) -> None:
        try:
            ids = self._ids(decl, scope) if isinstance(decl.shape, s.SpaceKind) else None
            shape = self._shape(decl, scope) if ids is None else ()
            indices = list(range_of(decl.array, scope.env)) if decl.array else None
            if decl.name == self.decl.time:
                raise Problem(
                    Code.DUPLICATE_NAME,
                    f"space {decl.name!r} has the name of the time index; in a machine over "
                    f"{decl.name}, {decl.name} is the step number",
                    decl.name_span,
                )
        except Problem as exc:
            self.problem(exc, scope)
            self.spaces.broken.add(decl.name)
            return
        spaces = self.spaces
        family_kind = (
            "array"
            if decl.name in spaces.arrays
            else "space"
            if decl.name in spaces.scalars
            else None
        )
        if family_kind and (indices is None) != (family_kind == "space"):
            self.error(
                Code.DUPLICATE_NAME,
                f"{decl.name!r} is declared both as a single space and as an array",
                decl.name_span,
                scope,
            )
            return
        names = [decl.name] if indices is None else [f"{decl.name}[{i}]" for i in indices]
        if indices is None:
            spaces.scalars.add(decl.name)
        else:
            spaces.arrays.setdefault(decl.name, [])
        role = ir.Role(decl.role)
        for index, name in zip(indices or [None], names, strict=False):
            if name in spaces.by_name:
                self.error(
                    Code.DUPLICATE_NAME,
                    f"space {name!r} is declared twice",
                    decl.name_span,
                    scope,
                    notes=(_note("first declared here", spaces.by_name[name].span),),
                )
                continue
            if index is not None:
                spaces.arrays[decl.name].append(index)
            spaces.by_name[name] = ir.Space(
                name=name, shape=shape, role=role, ids=ids, span=decl.name_span
            )

    def _shape(self, decl: s.SpaceDecl, scope: Scope) -> ir.Shape | None:
        """The declared shape, or None for one left out (check infers it from the writers)."""
        if decl.shape is not None:
            return shape_of(decl.shape, scope.env)
        if decl.role == ir.Role.INPUT:
            raise Problem(
                Code.INFERENCE,
                f"input {decl.name!r} needs a shape: the shapes of inputs are given, never "
                "inferred",
                decl.name_span,
                hint=f"declare it: input {decl.name} : N (a size), or [C, H, W]",
            )
        return None

    def _ids(self, decl: s.SpaceDecl, scope: Scope) -> int:
        """``n`` of a space declared ``ids(n)``: an input of a machine over time."""
        kind = decl.shape
        if kind.kind != "ids":
            raise Problem(
                Code.SHAPE,
                f"unknown kind of space {kind.kind!r}; a shape is a size, a list of sizes, "
                "or ids(n)",
                kind.kind_span,
                hint=did_you_mean(kind.kind, ["ids"]),
            )
        if self.decl.time is None:
            raise Problem(
                Code.SEQUENCE,
                f"{decl.name!r} holds one id per step, but machine {self.decl.name} is not a "
                "machine over time",
                kind.span,
                hint=f"declare it: machine {self.decl.name} over t {{ ... }}",
            )
        if decl.role != ir.Role.INPUT:
            raise Problem(
                Code.SEQUENCE,
                f"only an input can hold ids; no op writes ids, so {decl.role} "
                f"{decl.name!r} would always be empty",
                kind.span,
            )
        count = integer(kind.size, scope.env, "the number of ids")
        if not 0 < count <= MAX_SIZE:
            raise Problem(
                Code.SHAPE,
                f"the number of ids must be from 1 to {MAX_SIZE:,}, got {count:,}",
                kind.size.span,
            )
        return count

    # --- edges ---

    def _declare_edge(self, decl: s.EdgeDecl, scope: Scope) -> None:
        if len(self.edges) >= MAX_EDGES:
            raise TooLarge(
                Problem(
                    Code.EXPRESSION,
                    f"machine {self.decl.name} has more than {MAX_EDGES:,} edges (loops expanded)",
                    decl.name_span,
                    hint="a machine this large is surely a mistake; use fewer or shorter loops",
                )
            )
        try:
            name = decl.name
            if decl.index is not None:
                name = f"{decl.name}[{integer(decl.index, scope.env, 'an index')}]"
        except Problem as exc:
            self.problem(exc, scope)
            return
        if name in self.edges:
            self.error(
                Code.DUPLICATE_NAME,
                f"edge {name!r} is declared twice",
                decl.name_span,
                scope,
                notes=(_note("first declared here", self.edges[name].span),),
            )
            return
        self.edge_families.setdefault(decl.name, decl.name_span)
        counts: list[int] = []
        inputs = self._ports(decl.inputs, scope, counts=counts)
        outputs = self._ports(decl.outputs, scope, writing=True)
        pipeline = self._pipeline(decl, name, scope)
        if inputs is None or outputs is None or pipeline is None:
            return
        ops, machine_key = pipeline
        if not inputs:
            self.error(Code.NO_INPUTS, f"edge {name!r} reads no space", decl.name_span, scope)
            return
        if not outputs:
            self.error(Code.NO_OUTPUTS, f"edge {name!r} writes no space", decl.name_span, scope)
            return
        written: dict[str, ir.Port] = {}
        for port in outputs:
            if port.space in written:
                self.error(
                    Code.DUPLICATE_NAME,
                    f"edge {name!r} writes {port.space!r} twice",
                    port.span,
                    scope,
                )
                return
            written[port.space] = port
        self.edges[name] = ir.Edge(
            name=name,
            inputs=tuple(inputs),
            outputs=tuple(outputs),
            ops=tuple(ops),
            machine=machine_key,
            loop=_loop_site(decl, scope, counts),
            span=decl.name_span,
        )

    def _solve(self, decl: s.SolveDecl, scope: Scope) -> ir.Solve | None:
        def known(name: str) -> bool:
            return name in self.spaces.by_name or decl.space in self.spaces.broken

        def error(code, message, span, hint=None):
            self.error(code, message, span, scope, hint=hint)

        try:
            return build_solve(decl, scope, known, error)
        except Problem as exc:
            self.problem(exc, scope)
            return None

    def _ports(
        self, refs, scope: Scope, writing: bool = False, counts: list[int] | None = None
    ) -> list[ir.Port] | None:
        """The ports some references name; ``counts`` gets how many each gave."""
        ports: list[ir.Port] = []
        ok = True
        for ref in refs:
            try:
                named = self.port_resolver.resolve(ref, scope, writing)
                ports.extend(named)
                if counts is not None:
                    counts.append(len(named))
            except Problem as exc:
                self.problem(exc, scope)
                ok = False
        return ports if ok else None

    def _check_unexpanded_edge(self, decl: s.EdgeDecl) -> None:
        """What can be checked of an edge in a loop that runs no time: its ops and space names."""
        for ref in (*decl.inputs, *decl.outputs):
            known = ref.name in self.spaces.scalars or ref.name in self.spaces.arrays
            if not known and ref.name not in self.spaces.broken:
                self.error(
                    Code.UNKNOWN_NAME,
                    f"unknown space {ref.name!r}",
                    ref.span,
                    hint=did_you_mean(ref.name, [*self.spaces.scalars, *self.spaces.arrays]),
                )
        machines = self.composition.scope(self.file)
        for call in decl.ops:
            if call.name not in OPS and call.name != "shared" and call.name not in machines:
                self._unknown_op(call, None)

    def _check_name_clashes(self) -> None:
        families = {
            **{n: None for n in self.spaces.scalars},
            **{n: None for n in self.spaces.arrays},
        }
        for family, span in self.edge_families.items():
            if family in families:
                self.error(
                    Code.DUPLICATE_NAME,
                    f"{family!r} names both a space and an edge; give them different names",
                    span,
                )
