"""Methods every generated class has beside its machine's evaluation.

``adjoint`` (the backward pass as a machine: each edge's vector-Jacobian product
once, in reverse dependency order; a solved cycle solved again) and what tools ask
for: ``example_inputs`` and ``reset_parameters``. Each is
written from a :class:`lower._MachineLowering` whose layers are made.
"""

from __future__ import annotations

from . import lower_sizes
from .loops import Loop
from .lower import Method, _MachineLowering
from .lower_statements import _Plan
from .sizes import evaluate
from .source_text import element_key, py_str, py_tuple, safe


def adjoint_method(lowering: _MachineLowering) -> Method:
    """Each edge computed once at the state, on leaves, then each edge's vector-Jacobian
    product once in reverse dependency order (a solved cycle: solved again)."""
    names = lowering._method_locals()
    names.reserve("x", "bar", "cotangent")  # its arguments and the cotangents
    plan = _Plan(
        read=lambda port: f"x[{py_str(port.space)}]",
        base=lambda space: None,
        leveled=False,
        locals=names,
    )
    computed = []
    results: dict[str, str] = {}
    planner = lowering.loop_planner
    pulls: dict[int, list[str]] = {}  # a kept loop's vector-Jacobian products, by loop
    if planner.loops:
        planner.declare(plan, assign=False)
        plan.element = lambda family, index: f"x[{element_key(family, index)}]"
    for name in lowering.order:
        if isinstance(name, Loop):
            lines, pulls[name.run] = planner.adjoint(plan, name)
            computed += lines
            continue
        edge = lowering.edges[name]
        computed.append(lowering.edge_comment(edge))
        expr = lowering._edge_expr(edge, plan, computed)
        results[name] = names.name(f"{name}/result", name)
        computed.append(f"{results[name]} = {expr}")
    shapes = lower_sizes.complete_shapes(lowering.structure)
    body = lower_sizes.prologue(lowering, "x")
    body += [f"x = _leaves(_complete({shapes}, x))", "with torch.enable_grad():"]
    body += ["    " + line for line in computed]
    body.append(f"bar = _complete({shapes}, cotangent)")
    body.append("# the adjoint machine: the edges in reverse dependency order")
    cycle_of = {e: cycle for cycle in lowering.structure.cycles for e in cycle.edges}

    def ports(edge_ports) -> str:
        if planner.loops and len(edge_ports) >= 3:
            return py_tuple(planner.compact_names(edge_ports))
        return py_tuple(py_str(p.space) for p in edge_ports if not p.position)

    for name in reversed(lowering.order):
        if isinstance(name, Loop):
            body += pulls[name.run]
            continue
        edge = lowering.edges[name]
        cycle = cycle_of.get(name)
        if cycle is None:
            args = f"bar, x, {results[name]}, {ports(edge.inputs)}, {ports(edge.outputs)}"
            body.append(f"_pull({args})  # {lowering.where(edge.span)}  {safe(name)}")
        elif name == cycle.edges[-1]:
            members = [lowering.edges[e] for e in cycle.edges]
            edges = py_tuple(
                f"({results[e.name]}, {ports(e.inputs)}, {ports(e.outputs)})" for e in members
            )
            spaces = py_tuple(py_str(s) for s in cycle.spaces)
            solver = lowering.solvers[cycle.solve.space]
            where = f"{lowering.where(cycle.solve.span)}  solve {cycle.solve.space}"
            body.append(f"runtime.pull_cycle(bar, x, {edges}, {spaces}, {solver})  # {where}")
    body.append("return bar")
    return Method(
        signature="adjoint(self, x: dict[str, Tensor], cotangent: dict[str, Tensor]) "
        "-> dict[str, Tensor]",
        doc="The adjoint machine: the cotangent on every space, bar = f'(x)^T bar + "
        "cotangent at x.",
        body=tuple(body),
    )


def _spectral_layers(lowering: _MachineLowering) -> list[tuple[str, int]]:
    """The layers whose weight spectral_norm parametrizes (theirs is reset apart)."""
    return [
        (edge.name, i)
        for edge in lowering.machine.edges
        if edge.shares is None
        for i, op in enumerate(edge.ops)
        if op.args.get("spectral_norm")
    ]


def tool_methods(lowering: _MachineLowering, inputs) -> tuple[Method, ...]:
    """What tools ask a module for: example inputs, and fresh parameters."""
    over_time = lowering.machine.time is not None
    steps = ", steps: int = 8" if over_time else ""
    lead = "batch, steps" if over_time else "batch"
    made = []
    for space in inputs:
        if space.ids is not None:
            made.append(f"torch.randint(0, {space.ids}, ({lead}), device=like.device)")
        else:
            shape = ", ".join(
                str(evaluate(n, lowering.structure.example_sizes)) for n in space.shape
            )
            made.append(f"torch.randn({lead}, {shape}, dtype=like.dtype, device=like.device)")
    examples = Method(
        signature=f"example_inputs(self, batch: int = 2{steps}) -> tuple[Tensor, ...]",
        doc="Random inputs for forward as INPUTS say, where the parameters are (for "
        "summaries, tracing, export).",
        body=("like = _like(self)", f"return {py_tuple(made)}"),
    )
    reset = Method(
        signature="reset_parameters(self) -> None",
        doc="Every layer initialised afresh, as when constructed (after to_empty(), for one).",
        body=(
            "for module in self.modules():",
            "    # machines used as edges are modules of this one: their layers are here",
            '    if not hasattr(module, "SPACES") and hasattr(module, "reset_parameters"):',
            "        module.reset_parameters()",
            *(
                f"runtime.reset_spectral_norm({lowering.layer_exprs[key]})"
                for key in _spectral_layers(lowering)
            ),
        ),
    )
    return (examples, reset)
