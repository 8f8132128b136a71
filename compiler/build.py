"""Build stage: syntax tree → hypergraph IR.

Binds machine parameters (defaults, ``--set`` / ``params=`` values), expands
``for`` loops and space arrays, evaluates every expression, resolves space
names, and binds op arguments against the op table. Every problem becomes a
diagnostic; all of a file's problems are reported together.
"""

from __future__ import annotations

import difflib
import keyword
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from . import ir
from . import syntax as s
from .diagnostics import Code, Note, Reporter, Span
from .imports import Library, Visible
from .names import CLASS_NAME_CLASHES, Namespace
from .ops import OPS, bind_args

PARAM_TYPES: dict[str, type] = {"int": int, "float": float, "bool": bool}
MAX_ITERATIONS = 100_000  # a loop or array longer than this is surely a mistake


class _Problem(Exception):
    """An error found while evaluating; carries its place."""

    silent = False

    def __init__(self, code: Code, message: str, span: Span, hint: str | None = None):
        super().__init__(message)
        self.code, self.message, self.span, self.hint = code, message, span, hint


class _AlreadyReported(_Problem):
    """A consequence of an error reported elsewhere (a space whose declaration failed)."""

    silent = True


class _Composition:
    """The machines used as edges in one program: one instance per machine and parameters."""

    def __init__(self, library: Library | None):
        self.library = library
        self.instances: dict[tuple, ir.Machine] = {}  # _identity(machine) -> instance
        self.building: list[tuple[str, str]] = []  # (file, machine) being built, outermost first
        self.keys = Namespace(CLASS_NAME_CLASHES)

    def scope(self, file: str) -> dict[str, Visible]:
        if self.library is None:
            return {}
        return self.library.scopes.get(file, {})

    def instantiate(
        self, visible: Visible, values: dict[str, ir.Value], used_at: Span, reporter: Reporter
    ) -> ir.Machine | None:
        """The instance of a machine with these parameter values (built once)."""
        call = ir.machine_call(visible.decl.name, values)
        note = Note(message=f"in {call}, used as an edge here", span=used_at)
        self.building.append((visible.file, visible.decl.name))
        try:
            noting = _NotingReporter(reporter, note)
            machine = _MachineBuilder(visible.decl, noting, self, visible.file).build(values)
        finally:
            self.building.pop()
        if machine is None:
            return None
        identity = _identity(machine)
        if identity not in self.instances:
            self.instances[identity] = machine.model_copy(update={"key": self.key(machine)})
        return self.instances[identity]

    def key(self, machine: ir.Machine) -> str:
        """The class name of a machine: its name, or with its parameters when that is taken."""
        identity = repr(_identity(machine))
        hint = machine.name
        if not self.keys.has(identity) and self.keys.taken(machine.name):
            values = "_".join(f"{k}{ir.format_value(v)}" for k, v in machine.params.items())
            hint = f"{machine.name}_{values}" if values else machine.name
        return self.keys.name(identity, hint)


def _identity(machine: ir.Machine) -> tuple:
    """What makes two machines one class: the defining file, the name, the parameter values."""
    return (machine.span.file, machine.name, tuple(sorted(machine.params.items())))


class _NotingReporter(Reporter):
    """Reports into another reporter, adding a note to every diagnostic (where it was used)."""

    def __init__(self, inner: Reporter, note: Note):
        super().__init__()
        self.inner = inner
        self.note = note

    def _add(self, diagnostic) -> None:
        self.inner.add(diagnostic.model_copy(update={"notes": (*diagnostic.notes, self.note)}))

    @property
    def error_count(self) -> int:
        return self.inner.error_count


def build(
    source: s.SourceFile,
    params: Mapping[str, object],
    reporter: Reporter,
    library: Library | None = None,
) -> ir.Program:
    """Bind, expand and resolve every machine of ``source``.

    ``params`` maps ``name`` (every machine with that parameter) or
    ``Machine.name`` to a value: a Python value or its text (as from ``--set``).
    ``library`` holds the imported files; machines used as edges become instances.
    """
    composition = _Composition(library)
    composition.keys.reserve(*(decl.name for decl in source.machines))  # roots keep their names
    machines = []
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
        machine = _MachineBuilder(decl, reporter, composition, source.path).build(params)
        if machine is not None:
            machines.append(machine.model_copy(update={"key": machine.name}))
    _check_param_keys(source, params, reporter)
    if not source.machines:
        start = Span(file=source.path, line=1, column=1, end_line=1, end_column=1)
        reporter.error(Code.MACHINE, "the file defines no machine", start)
    # A machine of this file used as an edge with its own parameters is that machine.
    own = {_identity(m): m.key for m in machines}
    alias = {m.key: own[i] for i, m in composition.instances.items() if i in own}
    instances = [m for i, m in composition.instances.items() if i not in own]
    return ir.Program(
        file=source.path,
        machines=tuple(_rename_refs(m, alias) for m in machines),
        instances=tuple(_rename_refs(m, alias) for m in instances),
    )


def _rename_refs(machine: ir.Machine, alias: dict[str, str]) -> ir.Machine:
    if not any(edge.machine in alias for edge in machine.edges):
        return machine
    edges = tuple(
        e.model_copy(update={"machine": alias[e.machine]}) if e.machine in alias else e
        for e in machine.edges
    )
    return machine.model_copy(update={"edges": edges})


def _check_param_keys(source: s.SourceFile, params: Mapping[str, object], reporter: Reporter):
    """Every value given must bind some machine's parameter (reported at the machine names)."""
    top = Span(file=source.path, line=1, column=1, end_line=1, end_column=1)
    for key in params:
        machine_name, _, name = key.rpartition(".")
        decls = [m for m in source.machines if not machine_name or m.name == machine_name]
        if machine_name and not decls:
            known = ", ".join(m.name for m in source.machines) or "none"
            reporter.error(
                Code.PARAMETER,
                f"a value is set for {key!r}, but this file has no machine {machine_name!r}",
                source.machines[0].name_span if source.machines else top,
                hint=f"the machines are: {known}",
            )
        elif decls and not any(p.name == name for m in decls for p in m.params):
            where = f"machine {machine_name!r} has no" if machine_name else "no machine here has a"
            known = sorted({p.name for m in decls for p in m.params})
            reporter.error(
                Code.PARAMETER,
                f"a value is set for {key!r}, but {where} parameter {name!r}",
                decls[0].name_span,
                hint=_did_you_mean(name, known)
                or ("parameters: " + ", ".join(known) if known else "there are no parameters"),
            )


def _note(message: str, span: Span) -> Note:
    return Note(message=message, span=span)


def _did_you_mean(name: str, candidates) -> str | None:
    close = difflib.get_close_matches(name, sorted(set(candidates)), n=1)
    return f"did you mean {close[0]!r}?" if close else None


# --- expressions ------------------------------------------------------------------


def evaluate(expr: s.Expr, env: Mapping[str, ir.Value]) -> ir.Value:
    """The value of ``expr``; raises :class:`_Problem` on an unknown name or a bad operation."""
    match expr:
        case s.Literal(value=value):
            if isinstance(value, float) and not math.isfinite(value):
                raise _Problem(Code.EXPRESSION, "this number is too large", expr.span)
            return value
        case s.Var(name=name):
            if name not in env:
                raise _Problem(
                    Code.UNKNOWN_NAME,
                    f"unknown name {name!r} (not a parameter or loop variable here)",
                    expr.span,
                    hint=_did_you_mean(name, env),
                )
            return env[name]
        case s.ListExpr(items=items):
            values = []
            for item in items:
                value = evaluate(item, env)
                if isinstance(value, tuple):
                    raise _Problem(Code.EXPRESSION, "lists cannot be nested", item.span)
                values.append(value)
            return tuple(values)
        case s.Neg(operand=operand):
            value = evaluate(operand, env)
            _need_number(value, "-", operand.span)
            return -value
        case s.BinOp(op=op, left=left, right=right):
            a, b = evaluate(left, env), evaluate(right, env)
            _need_number(a, op, left.span)
            _need_number(b, op, right.span)
            if op in ("//", "/") and b == 0:
                raise _Problem(Code.EXPRESSION, "division by zero", expr.span)
            if op == "//":
                if not (isinstance(a, int) and isinstance(b, int)):
                    raise _Problem(
                        Code.EXPRESSION,
                        f"'//' needs integers, got {ir.format_value(a)} and {ir.format_value(b)}",
                        expr.span,
                    )
                return a // b
            result = {"+": a + b, "-": a - b, "*": a * b}.get(op) if op != "/" else a / b
            if isinstance(result, float) and not math.isfinite(result):
                raise _Problem(Code.EXPRESSION, "the result is too large", expr.span)
            return result
    raise AssertionError(f"unknown expression {expr!r}")  # pragma: no cover


def _need_number(value: ir.Value, op: str, span: Span) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Problem(Code.EXPRESSION, f"{op!r} needs numbers, got {ir.format_value(value)}", span)


def _integer(expr: s.Expr, env: Mapping[str, ir.Value], what: str) -> int:
    value = evaluate(expr, env)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Problem(
            Code.EXPRESSION, f"{what} must be an integer, got {ir.format_value(value)}", expr.span
        )
    return value


MAX_RANK = 4  # channels and up to three spatial axes: a volume [C, D, H, W]


def _shape(expr: s.Expr, env: Mapping[str, ir.Value]) -> ir.Shape:
    """A space's shape: a size (``16``) or a list of sizes (``[3, 32, 32]``), all positive."""
    items = expr.items if isinstance(expr, s.ListExpr) else (expr,)
    if not items:
        raise _Problem(Code.SHAPE, "a shape needs at least the channel axis", expr.span)
    if len(items) > MAX_RANK:
        raise _Problem(
            Code.SHAPE,
            f"a shape has at most {MAX_RANK} axes (channels and three spatial axes), "
            f"got {len(items)}",
            expr.span,
        )
    shape = []
    for item in items:
        value = evaluate(item, env)
        if isinstance(value, bool) or not isinstance(value, int):
            what = "a size" if len(items) == 1 else "each size of a shape"
            message = f"{what} must be an integer, got {ir.format_value(value)}"
            raise _Problem(Code.EXPRESSION, message, item.span)
        if value <= 0:
            raise _Problem(Code.SHAPE, f"a size must be positive, got {value}", item.span)
        shape.append(value)
    return tuple(shape)


def _range(rng: s.Range, env: Mapping[str, ir.Value]) -> range:
    lo = _integer(rng.lo, env, "a range bound")
    hi = _integer(rng.hi, env, "a range bound")
    if hi - lo + 1 > MAX_ITERATIONS:
        raise _Problem(
            Code.EXPRESSION, f"range {lo}..{hi} has more than {MAX_ITERATIONS} elements", rng.span
        )
    return range(lo, hi + 1)


def parse_param_text(text: str, type_: type) -> ir.Value | None:
    """A ``--set`` value as a parameter of ``type_``, or None if it is not one."""
    text = text.strip()
    if type_ is bool:
        return {"true": True, "false": False}.get(text.lower())
    try:
        value = int(text) if type_ is int else float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


# --- machines -------------------------------------------------------------------


@dataclass
class _Scope:
    """The names visible while expanding: parameters and loop variables."""

    env: dict[str, ir.Value]
    loops: tuple[str, ...] = ()  # loop variables, outermost first

    def context(self) -> str:
        if not self.loops:
            return ""
        return " (with " + ", ".join(f"{v} = {self.env[v]}" for v in self.loops) + ")"


@dataclass
class _Spaces:
    """The declared spaces of a machine, by full name (``h[2]``) and by family (``h``)."""

    by_name: dict[str, ir.Space] = field(default_factory=dict)
    arrays: dict[str, list[int]] = field(default_factory=dict)  # family -> declared indices
    scalars: set[str] = field(default_factory=set)
    broken: set[str] = field(default_factory=set)  # families whose declaration had an error


class _MachineBuilder:
    def __init__(
        self,
        decl: s.MachineDecl,
        reporter: Reporter,
        composition: _Composition | None = None,
        file: str = "",
    ):
        self.decl = decl
        self.reporter = reporter
        self.composition = composition or _Composition(None)
        self.file = file
        self.shares: dict[str, tuple[str, Span, _Scope]] = {}  # edge -> (shared edge, where)
        self.spaces = _Spaces()
        self.edges: dict[str, ir.Edge] = {}
        self.edge_families: dict[str, Span] = {}
        self.unexpanded: list[tuple[s.Item, ...]] = []  # bodies of loops with no iteration

    def error(self, code: Code, message: str, span: Span, scope: _Scope | None = None, **extra):
        context = scope.context() if scope else ""
        self.reporter.error(code, message + context, span, **extra)

    def problem(self, exc: _Problem, scope: _Scope | None = None) -> None:
        if exc.silent:
            return
        self.error(exc.code, exc.message, exc.span, scope, hint=exc.hint)

    def build(self, params: Mapping[str, object]) -> ir.Machine | None:
        """The machine, or None if it has errors (then the reporter has them)."""
        errors_before = self.reporter.error_count
        self._check_name()
        env = self._bind_params(params)
        if env is None:
            return None
        items = list(self._expand(self.decl.body, _Scope(env=dict(env))))
        for item, scope in items:
            if isinstance(item, s.SpaceDecl):
                self._declare_space(item, scope)
        for decl in _flatten(self.unexpanded):
            if isinstance(decl, s.SpaceDecl) and decl.array is not None:
                self.spaces.arrays.setdefault(decl.name, [])  # an array with no elements
        for item, scope in items:
            if isinstance(item, s.EdgeDecl):
                self._declare_edge(item, scope)
        for decl in _flatten(self.unexpanded):
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
            span=self.decl.name_span,
        )

    def _check_name(self) -> None:
        name = self.decl.name
        if keyword.iskeyword(name) or keyword.issoftkeyword(name):
            self.error(
                Code.MACHINE,
                f"machine name {name!r} is a Python keyword; the generated class needs another",
                self.decl.name_span,
            )
        elif name in CLASS_NAME_CLASHES:
            self.error(
                Code.MACHINE,
                f"machine name {name!r} would hide a name the generated module uses",
                self.decl.name_span,
            )
        elif name in OPS or name == "shared":
            self.error(
                Code.MACHINE,
                f"machine name {name!r} is the name of an op, so it could not be used as an edge",
                self.decl.name_span,
            )

    # --- parameters ---

    def _bind_params(self, given: Mapping[str, object]) -> dict[str, ir.Value] | None:
        env: dict[str, ir.Value] = {}
        declared: set[str] = set()
        failed: set[str] = set()
        for param in self.decl.params:
            if param.name == self.decl.time:
                self.error(
                    Code.DUPLICATE_NAME,
                    f"parameter {param.name!r} has the name of the machine's time index",
                    param.span,
                )
                failed.add(param.name)
                continue
            if param.name in ("true", "false"):
                self.error(
                    Code.PARAMETER, f"{param.name!r} is a literal, not a parameter name", param.span
                )
                failed.add(param.name)
                continue
            if param.name in declared:
                self.error(
                    Code.DUPLICATE_NAME, f"parameter {param.name!r} declared twice", param.span
                )
                failed.add(param.name)
                continue
            declared.add(param.name)
            type_ = PARAM_TYPES.get(param.type)
            if type_ is None:
                self.error(
                    Code.PARAMETER,
                    f"unknown parameter type {param.type!r} (use int, float or bool)",
                    param.type_span,
                )
                failed.add(param.name)
                continue
            value = self._param_value(param, type_, given, env, failed)
            if value is None:
                failed.add(param.name)
            else:
                env[param.name] = value
        return None if failed else env

    def _param_value(self, param, type_, given, env, failed: set[str]) -> ir.Value | None:
        qualified = f"{self.decl.name}.{param.name}"
        key = qualified if qualified in given else param.name if param.name in given else None
        if key is not None:
            raw = given[key]
            value = parse_param_text(raw, type_) if isinstance(raw, str) else raw
            converted = _as_param(value, type_)
            if converted is None:
                self.error(
                    Code.PARAMETER,
                    f"parameter {param.name!r} of {self.decl.name} is {param.type}, "
                    f"but {key}={raw!r} was given",
                    param.span,
                )
            return converted
        if param.default is None:
            self.error(
                Code.PARAMETER,
                f"parameter {param.name!r} of {self.decl.name} has no default and no value",
                param.span,
                hint=f"give one: machc compile --set {param.name}=VALUE, or params={{...}}",
            )
            return None
        if _names_in(param.default) & failed:
            return None  # a consequence of the error reported for that parameter
        try:
            value = evaluate(param.default, env)
        except _Problem as exc:
            self.problem(exc)
            return None
        converted = _as_param(value, type_)
        if converted is None:
            self.error(
                Code.PARAMETER,
                f"default of parameter {param.name!r} must be {param.type}, "
                f"got {ir.format_value(value)}",
                param.default.span,
            )
        return converted

    # --- loops ---

    def _expand(self, items, scope: _Scope) -> Iterator[tuple[s.Item, _Scope]]:
        for item in items:
            if not isinstance(item, s.ForLoop):
                yield item, scope
                continue
            if item.var in scope.env or item.var == self.decl.time:
                what = (
                    "time index"
                    if item.var == self.decl.time
                    else "loop variable"
                    if item.var in scope.loops
                    else "parameter"
                )
                self.error(
                    Code.DUPLICATE_NAME,
                    f"loop variable {item.var!r} hides the {what} of that name",
                    item.var_span,
                    scope,
                )
                continue
            try:
                values = _range(item.range, scope.env)
            except _Problem as exc:
                self.problem(exc, scope)
                continue
            if not values:
                self.unexpanded.append(item.body)
            for value in values:
                inner = _Scope(env={**scope.env, item.var: value}, loops=(*scope.loops, item.var))
                yield from self._expand(item.body, inner)

    # --- spaces ---

    def _declare_space(self, decl: s.SpaceDecl, scope: _Scope) -> None:
        try:
            ids = self._ids(decl, scope) if isinstance(decl.shape, s.SpaceKind) else None
            shape = () if ids is not None else _shape(decl.shape, scope.env)
            indices = list(_range(decl.array, scope.env)) if decl.array else None
            if decl.name == self.decl.time:
                raise _Problem(
                    Code.DUPLICATE_NAME,
                    f"space {decl.name!r} has the name of the time index; in a machine over "
                    f"{decl.name}, {decl.name} is the step number",
                    decl.name_span,
                )
        except _Problem as exc:
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
                name=name, shape=shape, role=ir.Role(decl.role), ids=ids, span=decl.name_span
            )

    def _ids(self, decl: s.SpaceDecl, scope: _Scope) -> int:
        """``n`` of a space declared ``ids(n)``: an input of a machine over time."""
        kind = decl.shape
        if kind.kind != "ids":
            raise _Problem(
                Code.SHAPE,
                f"unknown kind of space {kind.kind!r}; a shape is a size, a list of sizes, "
                "or ids(n)",
                kind.kind_span,
                hint=_did_you_mean(kind.kind, ["ids"]),
            )
        if self.decl.time is None:
            raise _Problem(
                Code.SEQUENCE,
                f"{decl.name!r} holds one id per step, but machine {self.decl.name} is not a "
                "machine over time",
                kind.span,
                hint=f"declare it: machine {self.decl.name} over t {{ ... }}",
            )
        if decl.role != ir.Role.INPUT:
            raise _Problem(
                Code.SEQUENCE,
                f"only an input can hold ids; no op writes ids, so {decl.role} "
                f"{decl.name!r} would always be empty",
                kind.span,
            )
        count = _integer(kind.size, scope.env, "the number of ids")
        if count <= 0:
            raise _Problem(
                Code.SHAPE, f"the number of ids must be positive, got {count}", kind.size.span
            )
        return count

    def _resolve(self, ref: s.SpaceRef, scope: _Scope, writing: bool = False) -> list[ir.Port]:
        """The spaces a reference names (several for ``h[a..b]``, possibly none)."""
        index, time = self._split_time(ref, scope)
        delay, window = 0, None
        if isinstance(time, s.Range | s.AllSteps):
            window = self._window(ref, time, scope)
        elif time is not None:
            delay = self._delay(ref, time, scope)
        if (delay or window) and writing:
            raise _Problem(
                Code.TIME,
                f"an edge writes the present step of a space; "
                f"{ir.Port(space=ref.name, delay=delay, window=window, span=ref.span).text()} "
                "can only be read",
                ref.span,
            )
        spaces = self.spaces
        if ref.name == self.decl.time and index is None and ref.name not in spaces.scalars:
            if writing:
                raise _Problem(
                    Code.SEQUENCE,
                    f"the time index {ref.name} is the step number; an edge can only read it",
                    ref.span,
                )
            return [ir.Port(space=ref.name, position=True, span=ref.span)]
        if ref.name in spaces.scalars:
            if index is not None:
                hint = None
                if self.decl.time is None and _names_in(index) - set(scope.env):
                    hint = (
                        "to read an earlier step, make this a machine over time: "
                        f"machine {self.decl.name} over t {{ ... }}"
                    )
                raise _Problem(
                    Code.INDEX, f"{ref.name!r} is a single space, not an array", ref.span, hint
                )
            return [ir.Port(space=ref.name, delay=delay, window=window, span=ref.span)]
        if ref.name not in spaces.arrays:
            if ref.name in spaces.broken:
                raise _AlreadyReported(Code.UNKNOWN_NAME, "", ref.span)
            raise _Problem(
                Code.UNKNOWN_NAME,
                f"unknown space {ref.name!r}",
                ref.span,
                hint=_did_you_mean(ref.name, [*spaces.scalars, *spaces.arrays]),
            )
        declared = spaces.arrays[ref.name]
        if index is None:
            raise _Problem(
                Code.INDEX,
                f"{ref.name!r} is an array of spaces; name one ({ref.name}[i]) or a range "
                f"({ref.name}[a..b])",
                ref.span,
            )
        if isinstance(index, s.Range):
            indices = list(_range(index, scope.env))
        else:
            indices = [_integer(index, scope.env, "an index")]
        ports = []
        for index in indices:
            name = f"{ref.name}[{index}]"
            if name not in spaces.by_name:
                raise _Problem(
                    Code.INDEX,
                    f"index {index} is out of range: "
                    f"{ref.name} has {_describe_indices(ref.name, declared)}",
                    ref.span,
                )
            ports.append(ir.Port(space=name, delay=delay, window=window, span=ref.span))
        return ports

    def _split_time(self, ref: s.SpaceRef, scope: _Scope):
        """(array index, time index) of a reference; the time index is the bracket using t."""
        time_var = self.decl.time
        if ref.time is not None:
            if time_var is None:
                raise _Problem(
                    Code.TIME,
                    f"{ref.name!r} is read at an earlier step, but machine {self.decl.name} "
                    "is not a machine over time",
                    ref.span,
                    hint=f"declare it: machine {self.decl.name} over t {{ ... }}",
                )
            if isinstance(ref.index, s.AllSteps):
                raise _Problem(
                    Code.INDEX,
                    f"{ref.name}[..] names no elements of an array; write {ref.name}[a..b]",
                    ref.index.span,
                )
            return ref.index, ref.time
        index = ref.index
        if isinstance(index, s.AllSteps):
            if time_var is None:
                raise _Problem(
                    Code.TIME,
                    f"{ref.name}[..] reads every step, but machine {self.decl.name} is not a "
                    "machine over time",
                    index.span,
                    hint=f"declare it: machine {self.decl.name} over t {{ ... }}",
                )
            return None, index
        if time_var is not None and index is not None:
            uses_t = (
                time_var in _names_in(index.lo) | _names_in(index.hi)
                if isinstance(index, s.Range)
                else time_var in _names_in(index)
            )
            if uses_t:
                return None, index
        return index, None

    def _delay(self, ref: s.SpaceRef, time: s.Expr, scope: _Scope) -> int:
        """``k`` of a read ``h[t-k]``: a positive integer that does not depend on t."""
        t = self.decl.time
        match time:
            case s.Var(name=name) if name == t:
                raise _Problem(
                    Code.TIME,
                    f"{ref.name}[{t}] is the present step: write {ref.name} "
                    "(a delay of zero is not written as a delay)",
                    time.span,
                )
            case s.BinOp(op="-" | "+" as sign, left=s.Var(name=name), right=k) if name == t and (
                t not in _names_in(k)
            ):
                env = {key: v for key, v in scope.env.items() if key != t}
                delay = _integer(k, env, "a delay")
                if delay == 0:
                    raise _Problem(
                        Code.TIME,
                        f"{ref.name}[{t} {sign} k] with k = 0 is the present step: "
                        f"write {ref.name}",
                        k.span,
                    )
                if abs(delay) > MAX_ITERATIONS:
                    raise _Problem(
                        Code.TIME, f"a delay of more than {MAX_ITERATIONS} steps", k.span
                    )
                # NOTE: h[t-k] with k < 0 reads the future, so that a parameter can turn a
                # recurrence around (std.recurrent's LSTM(dir=-1)).
                return delay if sign == "-" else -delay
        raise _Problem(
            Code.TIME,
            f"a time index must be {t} - k or {t} + k, with k a positive integer that does "
            f"not use {t}",
            time.span,
        )

    def _window(self, ref: s.SpaceRef, window: s.Range | s.AllSteps, scope: _Scope) -> ir.Window:
        """A window of steps: ``0..t`` (causal), ``t-w..t`` (sliding) or ``..`` (every step)."""
        t = self.decl.time
        if isinstance(window, s.AllSteps):
            return ir.Window(kind=ir.WindowKind.FULL)
        env = {key: v for key, v in scope.env.items() if key != t}
        form = (
            f"a window of steps is 0..{t} (up to {t}), {t}-w..{t} (the last w + 1 steps) "
            "or .. (every step)"
        )
        if not (isinstance(window.hi, s.Var) and window.hi.name == t):
            raise _Problem(Code.TIME, form, window.span)
        match window.lo:
            case s.BinOp(op="-", left=s.Var(name=name), right=k) if name == t and (
                t not in _names_in(k)
            ):
                size = _integer(k, env, "a window size")
                if size <= 0 or size > MAX_ITERATIONS:
                    raise _Problem(
                        Code.TIME,
                        f"a sliding window {t}-w..{t} needs 0 < w <= {MAX_ITERATIONS}, "
                        f"got w = {size}",
                        k.span,
                    )
                return ir.Window(kind=ir.WindowKind.SLIDING, size=size)
            case _ if t not in _names_in(window.lo):
                if _integer(window.lo, env, "a window's first step") == 0:
                    return ir.Window(kind=ir.WindowKind.CAUSAL)
        raise _Problem(Code.TIME, form, window.span)

    # --- edges ---

    def _declare_edge(self, decl: s.EdgeDecl, scope: _Scope) -> None:
        try:
            name = decl.name
            if decl.index is not None:
                name = f"{decl.name}[{_integer(decl.index, scope.env, 'an index')}]"
        except _Problem as exc:
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
        inputs = self._ports(decl.inputs, scope)
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
            span=decl.name_span,
        )

    # --- machines as edges, shared parameters ---

    def _pipeline(self, decl: s.EdgeDecl, name: str, scope: _Scope):
        """(ops, sub-machine key) of an edge, or None after reporting a problem."""
        machines = self.composition.scope(self.file)
        special = [
            c for c in decl.ops if c.name not in OPS and (c.name == "shared" or c.name in machines)
        ]
        if not special:
            ops = [self._op(call, scope) for call in decl.ops]
            return None if None in ops else (tuple(ops), None)
        call = special[0]
        if len(decl.ops) > 1:
            what = (
                "shared(...) reuses another edge as a whole"
                if call.name == "shared"
                else f"the machine {call.name} maps the edge's inputs to its outputs one by one"
            )
            self.error(
                Code.SUBMACHINE,
                f"{call.name} must be the only op of its edge: {what}",
                call.name_span,
                scope,
                hint="give it an edge of its own, with spaces between it and the other ops",
            )
            return None
        if call.name == "shared":
            return self._shared(call, name, scope)
        return self._submachine(call, machines[call.name], scope)

    def _shared(self, call: s.OpCall, name: str, scope: _Scope):
        target = None
        if len(call.args) == 1 and call.args[0].name is None:
            value = call.args[0].value
            if isinstance(value, s.Var):
                target = value.name
            elif isinstance(value, s.Literal) and isinstance(value.value, str):
                target = value.value  # an indexed edge: shared("g[2]")
        if target is None:
            self.error(
                Code.OP_ARGUMENT,
                "shared takes the name of the edge whose parameters it reuses: shared(edge), "
                'or shared("g[2]") for an indexed edge',
                call.span,
                scope,
            )
            return None
        self.shares[name] = (target, call.span, scope)
        return (), None

    def _submachine(self, call: s.OpCall, visible: Visible, scope: _Scope):
        decl = visible.decl
        values: dict[str, ir.Value] = {}
        ok = True
        known = {p.name for p in decl.params}
        for arg in call.args:
            if arg.name is None:
                self.error(
                    Code.OP_ARGUMENT,
                    f"the parameters of machine {decl.name} are passed by name",
                    arg.span,
                    scope,
                    hint=f"write {decl.name}({'=..., '.join(sorted(known)) or 'name'}=...)",
                )
                ok = False
                continue
            if arg.name not in known:
                self.error(
                    Code.OP_ARGUMENT,
                    f"machine {decl.name} has no parameter {arg.name!r}",
                    arg.span,
                    scope,
                    hint=_did_you_mean(arg.name, known)
                    or ("its parameters: " + ", ".join(sorted(known)) if known else "it has none"),
                )
                ok = False
                continue
            if arg.name in values:
                self.error(Code.OP_ARGUMENT, f"parameter {arg.name!r} given twice", arg.span, scope)
                ok = False
                continue
            try:
                values[arg.name] = evaluate(arg.value, scope.env)
            except _Problem as exc:
                self.problem(exc, scope)
                ok = False
        if decl.time is not None and self.decl.time is None:
            self.error(
                Code.SUBMACHINE,
                f"{decl.name} is a machine over time; it can be an edge only in a machine over "
                f"time, and {self.decl.name} is not one",
                call.name_span,
                scope,
                hint=f"declare {self.decl.name} over t, or use a machine that is not over time",
            )
            ok = False
        uses = [*self.composition.building, (self.file, self.decl.name)]
        if (visible.file, decl.name) in uses:
            path = " -> ".join([m for _, m in uses[uses.index((visible.file, decl.name)) :]])
            self.error(
                Code.SUBMACHINE,
                f"machine {decl.name} uses itself: {path} -> {decl.name}",
                call.name_span,
                scope,
                hint="a machine cannot contain itself, directly or through others",
            )
            ok = False
        if not ok:
            return None
        instance = self.composition.instantiate(visible, values, call.span, self.reporter)
        return None if instance is None else ((), instance.key)

    def _resolve_shares(self) -> None:
        """Each shared(edge) takes the ops (or machine) of the edge whose parameters it reuses."""
        for name, (target, span, scope) in self.shares.items():
            seen = [name]
            while target in self.shares and target not in seen:
                seen.append(target)
                target = self.shares[target][0]
            if target in seen:
                self.error(
                    Code.SUBMACHINE,
                    f"shared edges reuse each other in a circle: {' -> '.join([*seen, target])}",
                    span,
                    scope,
                )
                continue
            original = self.edges.get(target)
            if original is None:
                self.error(
                    Code.UNKNOWN_NAME,
                    f"shared({target}): no edge {target!r} in machine {self.decl.name}",
                    span,
                    scope,
                    hint=_did_you_mean(target, self.edges),
                )
                continue
            if name in self.edges:
                self.edges[name] = self.edges[name].model_copy(
                    update={"ops": original.ops, "machine": original.machine, "shares": target}
                )

    def _ports(self, refs, scope: _Scope, writing: bool = False) -> list[ir.Port] | None:
        ports: list[ir.Port] = []
        ok = True
        for ref in refs:
            try:
                ports.extend(self._resolve(ref, scope, writing))
            except _Problem as exc:
                self.problem(exc, scope)
                ok = False
        return ports if ok else None

    def _unknown_op(self, call: s.OpCall, scope: _Scope | None) -> None:
        self.error(
            Code.UNKNOWN_OP,
            f"unknown op {call.name!r}",
            call.name_span,
            scope,
            hint=_did_you_mean(call.name, [*OPS, *self.composition.scope(self.file)])
            or "the ops are listed in docs/language.md; a machine used as an edge must be "
            "defined in this file or imported",
        )

    def _op(self, call: s.OpCall, scope: _Scope) -> ir.Op | None:
        spec = OPS.get(call.name)
        if spec is None:
            self._unknown_op(call, scope)
            return None
        positional, keyword_args, spans = [], [], []
        ok = True
        for arg in call.args:
            try:
                value = evaluate(arg.value, scope.env)
            except _Problem as exc:
                self.problem(exc, scope)
                ok = False
                continue
            if arg.name is None:
                if keyword_args:
                    self.error(
                        Code.OP_ARGUMENT,
                        "a positional argument cannot follow a keyword argument",
                        arg.span,
                        scope,
                    )
                    ok = False
                    continue
                positional.append(value)
            else:
                keyword_args.append((arg.name, value))
            spans.append(arg.span)
        if not ok:
            return None
        bound = bind_args(spec, positional, keyword_args)
        for index, message in bound.problems:
            span = spans[index] if index is not None else call.span
            self.error(Code.OP_ARGUMENT, message, span, scope)
        if bound.problems:
            return None
        return ir.Op(
            kind=spec.name,
            args=bound.values,
            extra=tuple(bound.extra),
            extra_kw=bound.extra_kw,
            span=call.span,
        )

    def _check_unexpanded_edge(self, decl: s.EdgeDecl) -> None:
        """What can be checked of an edge in a loop that runs no time: its ops and space names."""
        for ref in (*decl.inputs, *decl.outputs):
            known = ref.name in self.spaces.scalars or ref.name in self.spaces.arrays
            if not known and ref.name not in self.spaces.broken:
                self.error(
                    Code.UNKNOWN_NAME,
                    f"unknown space {ref.name!r}",
                    ref.span,
                    hint=_did_you_mean(ref.name, [*self.spaces.scalars, *self.spaces.arrays]),
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


def _flatten(bodies) -> Iterator[s.Item]:
    """Every declaration in some loop bodies, nested loops included."""
    for body in bodies:
        for item in body:
            if isinstance(item, s.ForLoop):
                yield from _flatten([item.body])
            else:
                yield item


def _names_in(expr: s.Expr) -> set[str]:
    """The parameter and loop-variable names an expression uses."""
    match expr:
        case s.Var(name=name):
            return {name}
        case s.BinOp(left=left, right=right):
            return _names_in(left) | _names_in(right)
        case s.Neg(operand=operand):
            return _names_in(operand)
    return set()


def _as_param(value: object, type_: type) -> ir.Value | None:
    if value is None or isinstance(value, bool) != (type_ is bool):
        return None
    if type_ is int and not isinstance(value, int) and hasattr(value, "__index__"):
        value = value.__index__()  # numpy integers and the like
    if type_ is float and isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    return value if isinstance(value, type_) else None


def _describe_indices(name: str, indices: list[int]) -> str:
    if not indices:
        return "no elements"
    lo, hi = min(indices), max(indices)
    if len(indices) == hi - lo + 1:
        return f"{name}[{lo}]..{name}[{hi}]"
    return ", ".join(f"{name}[{i}]" for i in sorted(indices))
