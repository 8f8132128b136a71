"""Build stage, an edge's pipeline: its ops bound against the op table, a machine used
as an edge (instantiated with its arguments), and ``shared(edge)``, resolved once every
edge is built.

:class:`Pipelines` is the half of :class:`build._MachineBuilder` that builds them (the
builder's state: ``composition``, ``file``, ``edges``, ``shares``, ``ops``, ``error``).
"""

from __future__ import annotations

from . import ir
from . import syntax as s
from .diagnostics import Code
from .expressions import Problem, Scope, did_you_mean, evaluate
from .imports import Visible
from .ops import OPS, bind_args


class Pipelines:
    """An edge's ops, sub-machine or shared edge (mixed into build._MachineBuilder)."""

    # --- machines as edges, shared parameters ---

    def _pipeline(self, decl: s.EdgeDecl, name: str, scope: Scope):
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

    def _shared(self, call: s.OpCall, name: str, scope: Scope):
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

    def _submachine(self, call: s.OpCall, visible: Visible, scope: Scope):
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
                    hint=did_you_mean(arg.name, known)
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
            except Problem as exc:
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
                    hint=did_you_mean(target, self.edges),
                )
                continue
            if name in self.edges:
                self.edges[name] = self.edges[name].model_copy(
                    update={"ops": original.ops, "machine": original.machine, "shares": target}
                )

    def _unknown_op(self, call: s.OpCall, scope: Scope | None) -> None:
        self.error(
            Code.UNKNOWN_OP,
            f"unknown op {call.name!r}",
            call.name_span,
            scope,
            hint=did_you_mean(call.name, [*OPS, *self.composition.scope(self.file)])
            or "the ops are listed in docs/language.md; a machine used as an edge must be "
            "defined in this file or imported",
        )

    def _op(self, call: s.OpCall, scope: Scope) -> ir.Op | None:
        spec = OPS.get(call.name)
        if spec is None:
            self._unknown_op(call, scope)
            return None
        positional, keyword_args, spans = [], [], []
        ok = True
        for arg in call.args:
            try:
                value = evaluate(arg.value, scope.env)
            except Problem as exc:
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
        # repr tells values apart that compare equal (1, 1.0 and true)
        key = (id(call), repr(positional), repr(keyword_args))
        op = self.ops.get(key)
        if op is not None:
            return op
        bound = bind_args(spec, positional, keyword_args)
        for index, message in bound.problems:
            span = spans[index] if index is not None else call.span
            self.error(Code.OP_ARGUMENT, message, span, scope)
        if bound.problems:
            return None
        op = self.ops[key] = ir.Op(
            kind=spec.name,
            args=bound.values,
            extra=tuple(bound.extra),
            extra_kw=bound.extra_kw,
            span=call.span,
        )
        return op
