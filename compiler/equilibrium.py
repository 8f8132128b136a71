"""Solved cycles: ``solve z with anderson(tol=1e-5)``.

A machine whose hypergraph has a cycle is not of finite depth; it is still a
machine when ``x = f(x) + x0`` has a unique solution, found by iterating. A
``solve`` item names one space of a cycle; the whole strongly connected part
of the graph that holds it is solved together, by a solver of
``machc.runtime`` (whose table of options :data:`SOLVERS` mirrors). Here the
``solve`` items are built (their solver and arguments bound) and every cycle
is matched with its ``solve``; everything else about a machine with solved
cycles is as for finite depth, the cycle taking the place of one edge.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from . import ir
from . import syntax as s
from .diagnostics import Code, Note, Reporter
from .expressions import Problem, Scope, did_you_mean, evaluate, integer
from .ops import bind_args
from .ops.spec import FLOAT, INT, STR, ArgSpec, OpSpec, format_value, one_of, positive

if TYPE_CHECKING:
    from .digraph import Graph

MAX_ITERATIONS = 1_000_000

BACKWARDS = ("implicit", "unrolled")


def _at_most(limit: float) -> Callable[[ir.Value], str | None]:
    def check(value: ir.Value) -> str | None:
        if 0 < value <= limit:
            return None
        return f"must be above 0 and at most {format_value(limit)}, got {format_value(value)}"

    return check


def _iterations(value: ir.Value) -> str | None:
    if 1 <= value <= MAX_ITERATIONS:
        return None
    return f"must be from 1 to {MAX_ITERATIONS:,}, got {format_value(value)}"


def _non_negative(value: ir.Value) -> str | None:
    return None if value >= 0 else f"must not be negative, got {format_value(value)}"


_COMMON = (
    ArgSpec("tol", (FLOAT,), 1e-5, positive, "stop when every sample's relative residual is below"),
    ArgSpec("max_iter", (INT,), 50, _iterations, "stop after this many iterations"),
    ArgSpec(
        "backward",
        (STR,),
        "implicit",
        one_of(*BACKWARDS),
        "implicit: solve the adjoint equation; unrolled: autograd through the iterations",
    ),
)
_DAMPING = ArgSpec("damping", (FLOAT,), 1.0, _at_most(1.0), "take this part of each step")


def _solver(name: str, doc: str, *args: ArgSpec) -> OpSpec:
    # a solver's arguments are bound like an op's (bind_args); it has no shapes or layers
    return OpSpec(name=name, doc=doc, rule="", call="", args=(*_COMMON, *args))


SOLVERS: dict[str, OpSpec] = {
    spec.name: spec
    for spec in (
        _solver(
            "fixed_point",
            "Plain iteration of the machine equation, z <- f(z) + x0 (damped: a part of each "
            "step).",
            _DAMPING,
        ),
        _solver(
            "anderson",
            "Anderson acceleration: the next iterate mixes the last m so that their residuals "
            "cancel best.",
            ArgSpec("m", (INT,), 5, _iterations, "iterates remembered"),
            _DAMPING,
            ArgSpec("lam", (FLOAT,), 1e-4, _non_negative, "regularisation of the mixing"),
        ),
        _solver(
            "broyden",
            "Broyden's method: Newton steps on f(z) + x0 - z with a Jacobian learned from the "
            "steps taken (limited memory).",
            ArgSpec("m", (INT,), None, _iterations, "updates remembered (default: max_iter)"),
        ),
    )
}

# ops through which a cycle stays linear (a linear cycle has a solution only when the
# spectral radius of its map is below one, which nothing ensures without normalisation)
LINEAR_OPS = frozenset({"linear", "conv", "conv_transpose", "identity", "add", "scale"})
LINEAR_OPS |= {"avgpool", "global_avg_pool", "adaptive_avg_pool", "flatten", "reshape", "upsample"}
LINEAR_OPS |= {"dropout", "channel_dropout", "pad", "crop", "permute", "transpose"}


# --- building -------------------------------------------------------------------------------


def build_solve(
    decl: s.SolveDecl, scope: Scope, known: Callable[[str], bool], error: Callable[..., None]
) -> ir.Solve | None:
    """The ``solve`` item bound: its space's name, its solver and every argument.

    ``known(name)`` says whether a space of that name is declared; ``error(code,
    message, span, hint=...)`` reports a problem.
    """
    name = decl.space
    if decl.index is not None:
        name = f"{decl.space}[{integer(decl.index, scope.env, 'an index')}]"
    ok = True
    if not known(name):
        error(Code.UNKNOWN_NAME, f"solve names an unknown space {name!r}", decl.space_span)
        ok = False
    call = decl.solver
    spec = SOLVERS.get(call.name)
    if spec is None:
        error(
            Code.SOLVE,
            f"unknown solver {call.name!r}",
            call.name_span,
            hint=did_you_mean(call.name, SOLVERS) or "the solvers are " + ", ".join(SOLVERS),
        )
        return None
    positional, keyword, spans = [], [], []
    for arg in call.args:
        word = arg.name == "backward" and isinstance(arg.value, s.Var)
        try:
            if word and arg.value.name not in scope.env:
                value = arg.value.name  # backward=implicit: a word, not a parameter
            else:
                value = evaluate(arg.value, scope.env)
        except Problem as exc:
            if not exc.silent:
                error(exc.code, exc.message, exc.span, hint=exc.hint)
            ok = False
            continue
        if arg.name is None:
            positional.append(value)
        else:
            keyword.append((arg.name, value))
        spans.append(arg.span)
    if not ok:
        return None
    bound = bind_args(spec, positional, keyword)
    for index, message in bound.problems:
        error(Code.OP_ARGUMENT, message, spans[index] if index is not None else call.span)
    if bound.problems:
        return None
    return ir.Solve(space=name, solver=spec.name, args=bound.values, span=decl.span)


ALWAYS_SHOWN = ("tol", "max_iter")


def solver_args(solve: ir.Solve) -> dict[str, ir.Value]:
    """The solver's arguments worth showing: ``tol``, ``max_iter`` and those not at their
    default (the runtime has the same defaults)."""
    spec = SOLVERS[solve.solver]
    return {
        a.name: solve.args[a.name]
        for a in spec.args
        if a.name in solve.args and (a.name in ALWAYS_SHOWN or solve.args[a.name] != a.default)
    }


def solver_text(solve: ir.Solve) -> str:
    """The solver as .mach source: ``anderson(tol=1e-05, max_iter=50, backward=unrolled)``."""
    shown = [
        f"{name}={value if name == 'backward' else format_value(value)}"
        for name, value in solver_args(solve).items()
    ]
    return f"{solve.solver}({', '.join(shown)})"


def cycle_text(cycle: ir.Cycle) -> str:
    """A solved cycle for reports: ``z (cell) by anderson(tol=1e-05, max_iter=50)``."""
    return f"{', '.join(cycle.spaces)} ({', '.join(cycle.edges)}) by {solver_text(cycle.solve)}"


# --- checking -------------------------------------------------------------------------------


def cycles(
    machine: ir.Machine,
    graph: Graph,
    key: Callable,
    reporter: Reporter,
    machines: dict[str, ir.Machine],
) -> tuple[ir.Cycle, ...]:
    """Every cycle of the machine matched with its ``solve``; problems are reported.

    One diagnostic per strongly connected component that holds a cycle and has no
    ``solve``, or more than one; one per ``solve`` of a space in no cycle.
    """
    from .digraph import strongly_connected

    components = [c for c in strongly_connected(graph) if len(c) > 1]
    components.sort(key=lambda c: min(map(key, c)))
    solves: dict[str, list[ir.Solve]] = {}
    for solve in machine.solves:
        solves.setdefault(solve.space, []).append(solve)
    found: list[ir.Cycle] = []
    in_cycles: set[str] = set()
    edges = {edge.name: edge for edge in machine.edges}
    for component in components:
        spaces = sorted((n for n in component if n[0] == "space"), key=key)
        in_cycles.update(name for _, name in spaces)
        mine = [solve for _, name in spaces for solve in solves.get(name, ())]
        if not mine:
            _unsolved(machine, graph, component, spaces[0], key, reporter)
            continue
        if machine.time is not None:
            for solve in mine:
                reporter.error(
                    Code.SOLVE,
                    f"solve {solve.space}: cycles within one step of a machine over "
                    f"{machine.time} are not solved",
                    solve.span,
                    hint=f"read an earlier step ({solve.space}[{machine.time}-1]) to make the "
                    "cycle a recurrence",
                )
            continue
        if len(mine) > 1:
            reporter.error(
                Code.SOLVE,
                f"the cycle through {', '.join(s.space for s in mine)} is solved {len(mine)} times",
                mine[1].span,
                notes=tuple(Note(message="also solved here", span=s.span) for s in mine[:1]),
                hint="one solve per cycle: it solves every space of the cycle together",
            )
            continue
        cycle = _cycle(machine, edges, component, spaces, mine[0], key, reporter, machines)
        if cycle is not None:
            found.append(cycle)
    for solve in machine.solves:
        if solve.space not in in_cycles:
            reporter.error(
                Code.SOLVE,
                f"solve {solve.space}: {solve.space!r} is in no cycle",
                solve.span,
                hint="a space of a machine of finite depth is computed once, in dependency "
                "order; remove the solve",
            )
    return tuple(found)


def _cycle(machine, edges, component, spaces, solve, key, reporter, machines) -> ir.Cycle | None:
    names = {name for _, name in spaces}
    members = sorted((n for n in component if n[0] == "edge"), key=key)
    ok = True
    for _, name in members:
        edge = edges[name]
        if edge.machine is not None:
            used = machines[edge.machine]
            reporter.error(
                Code.SOLVE,
                f"the cycle through {solve.space} crosses edge {name!r}, a machine used as an "
                f"edge ({ir.machine_call(used.name, used.params)})",
                edge.span,
                notes=(Note(message="the cycle is solved here", span=solve.span),),
                hint=f"write the cycle's edges in {machine.name}, or solve a cycle inside "
                f"{used.name}",
            )
            ok = False
        outside = [p.space for p in edge.outputs if p.space not in names]
        if outside:
            reporter.error(
                Code.SOLVE,
                f"edge {name!r} of the cycle through {solve.space} also writes {outside[0]!r}, "
                "outside the cycle",
                edge.span,
                hint="give that output an edge of its own, reading the cycle's spaces",
            )
            ok = False
    if not ok:
        return None
    cycle = ir.Cycle(
        spaces=tuple(n for _, n in spaces), edges=tuple(n for _, n in members), solve=solve
    )
    _warn_linear(cycle, edges, reporter)
    return cycle


def _warn_linear(cycle: ir.Cycle, edges: dict[str, ir.Edge], reporter: Reporter) -> None:
    ops = [op for name in cycle.edges for op in edges[name].ops]
    if all(op.kind in LINEAR_OPS for op in ops) and not any(
        op.args.get("spectral_norm") for op in ops
    ):
        reporter.warning(
            Code.LINEAR_CYCLE,
            f"the cycle through {', '.join(cycle.spaces)} is linear: it has a solution only "
            "when its map shrinks every vector (spectral radius below 1), which nothing here "
            "ensures",
            cycle.solve.span,
            hint="normalise a weight of the cycle: linear(spectral_norm=true)",
        )


def _unsolved(machine, graph: Graph, component, start, key, reporter: Reporter) -> None:
    """The cycle error: one cycle through the component, spelled out edge by edge."""
    import networkx as nx  # lazily: only this message needs it

    cycle = [u for u, _ in nx.find_cycle(graph.to_networkx(component), source=start)]
    path = " -> ".join(name for _, name in [*cycle, cycle[0]])
    edges = {edge.name: edge for edge in machine.edges}
    notes = []
    for i, (kind, name) in enumerate(cycle):
        if kind == "edge":
            read, wrote = cycle[i - 1][1], cycle[(i + 1) % len(cycle)][1]
            message = f"edge {name!r} reads {read!r} and writes {wrote!r}"
            notes.append(Note(message=message, span=edges[name].span))
    space = cycle[0][1]
    if machine.time is None:
        hint = (
            "a machine of finite depth has no cycles: break one of these edges, or solve the "
            f"cycle to its fixed point: solve {space} with anderson()"
        )
    else:
        hint = (
            f"within one step a machine has no cycles; read an earlier step "
            f"({space}[{machine.time}-1]) to make this a recurrence"
        )
    reporter.error(Code.CYCLE, f"cycle: {path}", notes[0].span, notes=tuple(notes[1:]), hint=hint)
