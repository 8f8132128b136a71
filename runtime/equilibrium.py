"""Equilibrium machines: fixed points ``z = fn(z)`` and training through them.

A cycle of a machine's hypergraph has no order to run in: its spaces ``z`` are
whatever the cycle maps back to itself. Generated code hands the cycle to
:class:`Solve` as a function ``fn(*z) -> z`` and gets the fixed point.

The pieces:

* **Flat vectors.** Dimension 0 of every tensor is the batch. A solver sees each
  sample's tensors as one vector (``[batch, N]``) and works per sample: one
  sample's history, least squares or Broyden update never mixes with another's.
* **Residual.** Per sample ``||fn(z) - z|| / (||fn(z)|| + 1e-9)`` (2-norm over all
  the sample's numbers). A solve stops when the largest per-sample residual is at
  most ``tol``. Every solver returns, per sample, the iterate with the lowest
  residual it saw (Anderson and Broyden can wander).
* **Solvers** (:data:`SOLVERS` lists their options and defaults): ``fixed_point``
  (``z <- (1 - damping) z + damping fn(z)``), ``anderson`` (Anderson acceleration,
  type II, on a history of ``m`` steps) and ``broyden`` (limited-memory "good"
  Broyden on ``g(z) = fn(z) - z``, no line search; the memory restarts when full).
  Each is a *proposer*: given ``z`` and ``fn(z)`` it proposes the next ``z``; one
  loop (:func:`_iterate`) evaluates ``fn``, tracks the best iterates and stops.
* **Implicit backward** (the default): the solve runs without autograd; the output
  is one more application ``fn(z*)`` with autograd, passed through
  :class:`_Adjoint`, an identity whose backward turns the incoming gradient ``g``
  into the solution of ``y = J^T y + g`` (``J = dfn/dz`` at ``z*``), solved by the
  same solver from vector-Jacobian products of one application of ``fn`` recomputed
  there. Parameters then get ``y^T dfn/dtheta`` through ``fn(z*)``. Memory does not
  grow with the iterations: the forward keeps one application of ``fn`` and ``z*``.
  If ``fn`` is random (dropout) or changes state (batch norm's running statistics),
  the recomputation in backward draws or updates anew. Double backward through the
  implicit mode is not supported.
* **Unrolled backward**: the solver runs under autograd; the output is
  ``fn(z)`` of the returned iterate with its whole history (for tests and
  comparisons; memory grows with the iterations).
"""

from __future__ import annotations

import math
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.nn.utils import parametrize

__all__ = ["BACKWARDS", "SOLVERS", "Solve"]

#: Options of each solver with their defaults. Broyden's ``m`` default ``None``
#: means ``max_iter`` (a memory that never restarts).
SOLVERS: dict[str, dict[str, object]] = {
    "fixed_point": {"damping": 1.0},
    "anderson": {"m": 5, "damping": 1.0, "lam": 1e-4},
    "broyden": {"m": None},
}

#: The backward modes.
BACKWARDS = ("implicit", "unrolled")

EPS = 1e-9  # in the residual's denominator


# --- validation ----------------------------------------------------------------------


def _is_real(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check_option(solver: str, name: str, value: object) -> None:
    if name == "m":
        ok, need = _is_count(value) or (solver == "broyden" and value is None), "an integer >= 1"
    elif name == "damping":
        ok, need = _is_real(value) and 0 < value <= 1, "a number in (0, 1]"
    else:  # lam
        ok, need = _is_real(value) and value >= 0, "a number >= 0"
    if not ok:
        raise ValueError(f"solver {solver!r}: option {name!r} must be {need}, got {value!r}")


def _check(solver: str, tol: object, max_iter: object, backward: object, options: dict) -> None:
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    for name, value in options.items():
        if name not in SOLVERS[solver]:
            valid = ", ".join(SOLVERS[solver])
            raise ValueError(f"unknown option {name!r} for solver {solver!r}; its options: {valid}")
        _check_option(solver, name, value)
    if not (_is_real(tol) and tol > 0):
        raise ValueError(f"tol must be a number > 0, got {tol!r}")
    if not _is_count(max_iter):
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    if backward not in BACKWARDS:
        raise ValueError(f"unknown backward {backward!r}; choose one of {', '.join(BACKWARDS)}")


# --- flat vectors --------------------------------------------------------------------


def _as_tuple(z: Tensor | tuple | list) -> tuple[Tensor, ...]:
    return (z,) if isinstance(z, Tensor) else tuple(z)


def _flat(tensors: tuple[Tensor, ...]) -> Tensor:
    """``[batch, N]``: each sample's tensors as one vector."""
    return torch.cat([t.reshape(t.shape[0], -1) for t in tensors], 1)


def _unflat(x: Tensor, like: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    sizes = [math.prod(t.shape[1:]) for t in like]
    parts = torch.split(x, sizes, 1)
    return tuple(p.reshape(t.shape).to(t.dtype) for p, t in zip(parts, like, strict=True))


def _flat_fn(fn: Callable, like: tuple[Tensor, ...]) -> Callable[[Tensor], Tensor]:
    """``fn`` on flat vectors, checking that it returns tensors shaped like ``like``."""

    def f(x: Tensor) -> Tensor:
        out = _as_tuple(fn(*_unflat(x, like)))
        got = [tuple(t.shape) for t in out]
        if got != [tuple(t.shape) for t in like]:
            want = [tuple(t.shape) for t in like]
            raise ValueError(f"Solve: fn must return tensors of shapes {want}, got {got}")
        return _flat(out)

    return f


def _zeros_for_none(values, like: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return tuple(torch.zeros_like(t) if v is None else v for v, t in zip(values, like, strict=True))


def _residual(x: Tensor, fx: Tensor) -> Tensor:
    """Per sample ``||fn(z) - z|| / (||fn(z)|| + 1e-9)``."""
    return torch.linalg.vector_norm(fx - x, dim=1) / (torch.linalg.vector_norm(fx, dim=1) + EPS)


# --- solvers: each proposes the next iterate from z and fn(z) ----------------------


class _History:
    """Columns ``[batch, N, k]``: the last ``size`` vectors ``[batch, N]`` (``ring``), or
    the vectors since the last restart (every ``size`` vectors, when not ``ring``).

    Without autograd the columns are written in place into one buffer, in any order
    (stacking the whole history on every step made Broyden's steps ever slower);
    vectors that record a graph (``backward="unrolled"``) are joined by ``cat``.
    """

    def __init__(self, size: int, ring: bool):
        self.size, self.ring = size, ring
        self.buffer: Tensor | None = None
        self.count = 0  # vectors appended since the last restart
        self.tracking = False  # the vectors record a graph

    def append(self, column: Tensor) -> None:
        if self.count == self.size and not self.ring:  # a restart
            self.count = 0
            if self.tracking:
                self.buffer = None
        if column.requires_grad or self.tracking:
            self.tracking = True
            kept = self.buffer if self.count else None
            if kept is not None and self.count == self.size:  # full: drop the oldest
                kept = kept[..., 1:]
            new = column[..., None]
            self.buffer = new if kept is None else torch.cat([kept, new], 2)
            self.count = min(self.count + 1, self.size)
            return
        if self.buffer is None:
            self.buffer = column.new_empty((*column.shape, self.size))
        self.buffer[..., self.count % self.size] = column
        self.count += 1

    def columns(self) -> Tensor:
        return self.buffer if self.tracking else self.buffer[..., : len(self)]

    def __len__(self) -> int:
        return min(self.count, self.size)


class _FixedPoint:
    def __init__(self, damping: float):
        self.damping = damping

    def __call__(self, x: Tensor, fx: Tensor) -> Tensor:
        return x + self.damping * (fx - x)


class _Anderson:
    """Type II: ``z + d g - (dZ + d dG) gamma``, ``gamma`` the regularised least
    squares fit of the residual ``g`` by the last ``m`` residual differences ``dG``.

    ``lam`` scales with the history (``lam * mean(diag(dG^T dG))``), so it regularises
    alike at every size of residual.
    """

    def __init__(self, m: int, damping: float, lam: float):
        self.damping, self.lam = damping, lam
        self.dx, self.dg = _History(m, ring=True), _History(m, ring=True)
        self.last: tuple[Tensor, Tensor] | None = None

    def __call__(self, x: Tensor, fx: Tensor) -> Tensor:
        g, d = fx - x, self.damping
        if self.last is not None:
            self.dx.append(x - self.last[0])
            self.dg.append(g - self.last[1])
        self.last = (x, g)
        step = x + d * g
        if not len(self.dx):
            return step
        dx, dg = self.dx.columns(), self.dg.columns()  # [batch, N, k]
        gram = dg.transpose(1, 2) @ dg
        scale = gram.diagonal(dim1=1, dim2=2).mean(1)
        finfo = torch.finfo(gram.dtype)
        reg = (self.lam + finfo.eps) * scale + finfo.tiny
        eye = torch.eye(gram.shape[1], dtype=gram.dtype, device=gram.device)
        gram = gram + reg[:, None, None] * eye
        gamma = torch.linalg.solve(gram, dg.transpose(1, 2) @ g[..., None])
        return step - ((dx + d * dg) @ gamma)[..., 0]


class _Broyden:
    """Good Broyden on ``g(z) = fn(z) - z``: ``H ~ (dg/dz)^-1``, from ``H = -I``, kept as
    ``-I + U V^T`` (``m`` updates, then a restart); the step is ``z - H g``."""

    def __init__(self, m: int):
        self.u, self.v = _History(m, ring=False), _History(m, ring=False)
        self.last: tuple[Tensor, Tensor] | None = None

    def _h(self, y: Tensor, transpose: bool = False) -> Tensor:
        """``H y`` (or ``H^T y``) per sample."""
        if not len(self.u):
            return -y
        u, v = self.u.columns(), self.v.columns()
        if transpose:
            u, v = v, u
        return -y + (u @ (v.transpose(1, 2) @ y[..., None]))[..., 0]

    def __call__(self, x: Tensor, fx: Tensor) -> Tensor:
        g = fx - x
        if self.last is not None:
            s, y = x - self.last[0], g - self.last[1]
            hy, hts = self._h(y), self._h(s, transpose=True)
            den = (s * hy).sum(1)
            finfo = torch.finfo(den.dtype)
            scale = torch.linalg.vector_norm(s, dim=1) * torch.linalg.vector_norm(hy, dim=1)
            ok = den.abs() > finfo.eps * scale + finfo.tiny  # else no update for that sample
            u = (s - hy) / torch.where(ok, den, torch.ones_like(den))[:, None] * ok[:, None]
            self.u.append(u)
            self.v.append(hts)
        self.last = (x, g)
        return x - self._h(g)


def _proposer(solver: str, options: dict, max_iter: int):
    if solver == "fixed_point":
        return _FixedPoint(options["damping"])
    if solver == "anderson":
        return _Anderson(options["m"], options["damping"], options["lam"])
    m = options["m"]
    return _Broyden(max_iter if m is None else m)


@dataclass
class _Result:
    x: Tensor  # per sample, the iterate with the lowest residual
    fx: Tensor  # fn of it
    iterations: int
    residual: float  # the largest per-sample residual of x
    converged: bool


def _iterate(f: Callable, x: Tensor, propose: Callable, tol: float, max_iter: int) -> _Result:
    """Evaluate ``f``, keep each sample's best iterate, stop at ``tol`` or ``max_iter``."""
    best_x = best_fx = best = None
    for k in range(1, max_iter + 1):
        fx = f(x)
        with torch.no_grad():  # it only picks iterates: no graph (backward="unrolled")
            res = _residual(x, fx)
        if best is None:
            best_x, best_fx, best = x, fx, res
        else:
            better = (res < best) | (best.isnan() & ~res.isnan())  # a NaN is never better
            best = torch.where(better, res, best)
            better = better[:, None]
            best_x, best_fx = torch.where(better, x, best_x), torch.where(better, fx, best_fx)
        worst = float(best.detach().max()) if best.numel() else 0.0
        if worst <= tol:
            return _Result(best_x, best_fx, k, worst, True)
        if k < max_iter:
            x = propose(x, fx)
    return _Result(best_x, best_fx, max_iter, worst, False)


# --- the module ----------------------------------------------------------------------


class Solve(nn.Module):
    """The fixed point ``z = fn(*z)`` of a cycle, with implicit or unrolled backward.

    ``Solve(solver="anderson", tol=1e-5, max_iter=50, backward="implicit", **options)``;
    see :data:`SOLVERS` for each solver's options. The statistics of the last call are
    plain attributes: ``iterations``, ``residual``, ``converged`` (the forward solve)
    and ``backward_iterations``, ``backward_residual``, ``backward_converged`` (the
    last implicit backward solve). Not converging warns (``RuntimeWarning``) once per
    instance for the forward and once for the backward. The module has no parameters
    or buffers. Double backward through ``backward="implicit"`` is not supported.
    """

    def __init__(
        self,
        solver: str = "anderson",
        *,
        tol: float = 1e-5,
        max_iter: int = 50,
        backward: str = "implicit",
        **options,
    ):
        super().__init__()
        _check(solver, tol, max_iter, backward, options)
        self.solver, self.tol, self.max_iter, self.backward = solver, tol, max_iter, backward
        self.options = {**SOLVERS[solver], **options}
        self.iterations, self.residual, self.converged = 0, math.nan, False
        self.backward_iterations, self.backward_residual = 0, math.nan
        self.backward_converged = False
        self._warned = self._warned_backward = False

    def extra_repr(self) -> str:
        options = "".join(f", {k}={v!r}" for k, v in self.options.items())
        return (
            f"solver={self.solver!r}, tol={self.tol!r}, max_iter={self.max_iter!r}, "
            f"backward={self.backward!r}{options}"
        )

    def forward(self, fn: Callable, init: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """The fixed point ``z = fn(*z)`` from ``init``. ``fn`` takes the tensors of ``z``
        as positional arguments and returns a tuple of tensors of the same shapes.

        Parametrized weights (``spectral_norm``) are computed once per solve, not once
        per iteration; the application of ``fn`` that autograd records computes them
        again, with their graph (a weight cached without autograd would get no gradient).
        """
        init = _as_tuple(init)
        if not init or len({t.shape[0] if t.dim() else None for t in init}) != 1:
            raise ValueError("Solve: init must be tensors that share dimension 0 (the batch)")
        f = _flat_fn(fn, init)
        if self.backward == "unrolled":
            with parametrize.cached():
                return _unflat(self._solve(f, _flat(init)).fx, init)
        with torch.no_grad(), parametrize.cached():
            result = self._solve(f, _flat(init))
        z_star = _unflat(result.x, init)
        if not torch.is_grad_enabled():
            return _unflat(result.fx, init)
        z_out = _as_tuple(fn(*z_star))
        if not any(t.requires_grad for t in z_out):
            return z_out
        return _Adjoint.apply(self, fn, z_star, *z_out)

    def fixed_point(self, fn: Callable, init: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """The fixed point of ``fn`` from ``init`` by this solver, with no autograd machinery
        (``adjoint()`` solves the adjoint of a cycle so); its statistics are the backward's."""
        init = _as_tuple(init)
        return _unflat(self._solve(_flat_fn(fn, init), _flat(init), backward=True).fx, init)

    def _solve(self, f: Callable, x0: Tensor, backward: bool = False) -> _Result:
        propose = _proposer(self.solver, self.options, self.max_iter)
        result = _iterate(f, x0, propose, self.tol, self.max_iter)
        prefix = "backward_" if backward else ""
        setattr(self, prefix + "iterations", result.iterations)
        setattr(self, prefix + "residual", result.residual)
        setattr(self, prefix + "converged", result.converged)
        flag = "_warned_backward" if backward else "_warned"
        if not result.converged and not getattr(self, flag):
            setattr(self, flag, True)
            what = "the implicit backward (adjoint) solve" if backward else "the fixed point solve"
            warnings.warn(
                f"Solve: {what} with solver {self.solver!r} did not converge: residual "
                f"{result.residual:.3g} > tol {self.tol:g} after max_iter={self.max_iter} "
                "iterations (warned once per Solve)",
                RuntimeWarning,
                stacklevel=2,
            )
        return result


class _Adjoint(torch.autograd.Function):
    """Identity on ``fn(z*)``; backward solves ``y = J^T y + g`` for the gradient ``g``."""

    @staticmethod
    def forward(ctx, solve: Solve, fn: Callable, z_star: tuple[Tensor, ...], *z_out: Tensor):
        ctx.solve, ctx.fn = solve, fn
        ctx.save_for_backward(*z_star)
        return tuple(t.clone() for t in z_out)  # not views: callers may change them in place

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads: Tensor | None):
        z_star = ctx.saved_tensors
        g = _flat(_zeros_for_none(grads, z_star))
        with torch.enable_grad():
            z = tuple(t.detach().requires_grad_() for t in z_star)
            out = _as_tuple(ctx.fn(*z))
        used = [i for i, t in enumerate(out) if t.requires_grad]

        def adjoint(y: Tensor) -> Tensor:  # J^T y + g
            if not used:
                return g
            ys = _unflat(y, z_star)
            vjps = torch.autograd.grad(
                [out[i] for i in used],
                z,
                [ys[i] for i in used],
                retain_graph=True,
                allow_unused=True,
            )
            return _flat(_zeros_for_none(vjps, z)) + g

        result = ctx.solve._solve(adjoint, g, backward=True)
        return (None, None, None, *_unflat(result.fx, z_star))


def reset_spectral_norm(layer: nn.Module) -> None:
    """A layer whose weight ``spectral_norm`` parametrizes, initialised afresh: its weight
    and bias as the layer's own ``reset_parameters`` makes them, then the power
    iteration's vectors as ``spectral_norm`` makes them (random, then 15 iterations).

    ``layer.reset_parameters()`` alone would initialise a computed copy of the weight and
    leave the parameter as it was (after ``to_empty()``: uninitialised memory).
    """
    original = layer.parametrizations.weight.original
    norm = layer.parametrizations.weight[0]
    with torch.no_grad():
        # the layer's reset_parameters, reading the original weight where it reads .weight
        type(layer).reset_parameters(types.SimpleNamespace(weight=original, bias=layer.bias))
        if original.ndim > 1:
            for vector in (norm._u, norm._v):
                vector.normal_(0, 1)
                vector.copy_(F.normalize(vector, dim=0, eps=norm.eps))
            norm._power_method(norm._reshape_weight_to_matrix(original), 15)
