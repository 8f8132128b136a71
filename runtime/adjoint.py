"""The adjoint machine: the backward pass of a machine, run as a machine.

At a state ``x`` of a machine (a solution of ``x = f(x) + x0``), the cotangent
``x̄`` on every space solves ``x̄ = f'(x)ᵀ x̄ + ȳ``: the machine whose edges are
the vector-Jacobian products of the original edges, in the opposite direction.
For a machine of finite depth that is one sweep, each edge's product once, in
reverse dependency order; a solved cycle is solved again, on the cotangents,
with its own solver. Generated ``adjoint`` methods compute every edge once at
``x`` (on leaves: new tensors that record what reads them), then pull each
edge's cotangent back in reverse order, with their module's own ``_pull``
(so that machines with no cycle need no runtime), and a solved cycle with
:func:`pull_cycle` here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

Contribution = tuple[Tensor | tuple[Tensor, ...], Sequence[str], Sequence[str]]


def _cotangents(out, bar: dict[str, Tensor], outputs: Sequence[str]) -> tuple[Tensor, ...]:
    """The cotangent of an edge's result: one tensor per output, or the outputs joined along
    the channel axis when the edge computed them as one tensor (and split it)."""
    if isinstance(out, tuple):
        return tuple(bar[name] for name in outputs)
    if len(outputs) == 1:
        return (bar[outputs[0]],)
    return (torch.cat([bar[name] for name in outputs], dim=1),)


def _vjp(out, x, inputs, cotangents, retain: bool) -> dict[str, Tensor]:
    """The vector-Jacobian product of one edge: cotangents on ``inputs`` (each once)."""
    outs = out if isinstance(out, tuple) else (out,)
    names = [name for name in dict.fromkeys(inputs)]
    if not names or not any(o.requires_grad for o in outs):
        return {}
    grads = torch.autograd.grad(
        outs, [x[name] for name in names], cotangents, retain_graph=retain, allow_unused=True
    )
    return {name: g for name, g in zip(names, grads, strict=True) if g is not None}


def pull_cycle(
    bar: dict[str, Tensor],
    x: dict[str, Tensor],
    edges: Sequence[Contribution],
    spaces: Sequence[str],
    solve,
) -> None:
    """A solved cycle of the adjoint machine: the cotangent on the cycle's ``spaces`` solves
    ``c = J_ᵀ c + bar[spaces]`` (``J`` the cycle's map on its own spaces), by ``solve``'s
    solver; then the cycle's ``edges`` pass it on to the spaces they read outside it."""
    inside = set(spaces)
    constant = tuple(bar[name] for name in spaces)

    def step(*c: Tensor) -> tuple[Tensor, ...]:
        given = dict(zip(spaces, c, strict=True))
        total = dict(zip(spaces, constant, strict=True))
        for out, inputs, outputs in edges:
            reads = [name for name in inputs if name in inside]
            for name, g in _vjp(out, x, reads, _cotangents(out, given, outputs), True).items():
                total[name] = total[name] + g
        return tuple(total[name] for name in spaces)

    with torch.no_grad():
        solution = solve.fixed_point(step, constant)
    bar.update(zip(spaces, solution, strict=True))
    for out, inputs, outputs in edges:
        reads = [name for name in inputs if name not in inside]
        for name, g in _vjp(out, x, reads, _cotangents(out, bar, outputs), True).items():
            bar[name] = bar[name] + g
