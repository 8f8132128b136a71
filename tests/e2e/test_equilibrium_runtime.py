"""machc.runtime.equilibrium: fixed points z = fn(z) and implicit differentiation.

Oracles: the closed form of a linear fixed point (torch.linalg.solve, with autograd
through it), plain iteration for thousands of steps (outputs) and autograd through
those unrolled steps (gradients). Then memory (tensors saved for backward must not
grow with max_iter in the implicit mode), warnings and statistics, option
validation, dtypes and the module's plumbing (state_dict, pickle, deepcopy).

Numbers are compared in float64 at the tolerances stated by each test: solves run
to tol 1e-10 (relative residual), so outputs and gradients agree to about 1e-8.
"""

from __future__ import annotations

import copy
import math
import pickle
import warnings

import pytest
import torch
from machc.runtime.equilibrium import SOLVERS, Solve

DOUBLE = torch.float64
B = 3

# (solver, options): every solver, with default and non-default options.
CONFIGS = [
    ("fixed_point", {}),
    ("fixed_point", {"damping": 0.7}),
    ("anderson", {}),
    ("anderson", {"m": 2, "damping": 0.8, "lam": 1e-6}),
    ("broyden", {}),
    ("broyden", {"m": 4}),
]
IDS = [f"{s}-{'-'.join(f'{k}={v}' for k, v in o.items()) or 'default'}" for s, o in CONFIGS]
TIGHT = {"tol": 1e-10, "max_iter": 500}


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def with_radius(n: int, rho: float, seed: int, dtype=DOUBLE) -> torch.Tensor:
    """A random n x n matrix of spectral radius rho."""
    w = torch.randn(n, n, generator=_generator(seed), dtype=DOUBLE)
    return (w * rho / torch.linalg.eigvals(w).abs().max()).to(dtype)


def with_norm(rows: int, cols: int, norm: float, seed: int) -> torch.Tensor:
    """A random matrix of spectral norm ``norm`` (so z -> tanh(z W^T + ...) contracts)."""
    w = torch.randn(rows, cols, generator=_generator(seed), dtype=DOUBLE)
    return w * norm / torch.linalg.matrix_norm(w, 2)


def rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=_generator(seed), dtype=DOUBLE)


def iterate(fn, z: tuple[torch.Tensor, ...], steps: int) -> tuple[torch.Tensor, ...]:
    """Plain iteration z <- fn(*z), under autograd if enabled (the unrolled reference)."""
    for _ in range(steps):
        z = fn(*z)
    return z


def close(a, b, rtol: float = 1e-7, atol: float = 1e-8) -> None:
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


# --- linear oracle -------------------------------------------------------------------


@pytest.fixture(scope="module")
def linear():
    """fn(z) = z W^T + b, spectral radius 0.8: z* = (I - W)^-1 b per sample."""
    n = 5
    w = with_radius(n, 0.8, seed=1).requires_grad_()
    b = rand(B, n, seed=2).requires_grad_()
    weights = rand(B, n, seed=3)  # loss = sum(z * weights)
    z = torch.linalg.solve(torch.eye(n, dtype=DOUBLE) - w, b.T).T
    grads = torch.autograd.grad((z * weights).sum(), (w, b))
    return {"w": w, "b": b, "weights": weights, "z": z.detach(), "grads": grads}


def _linear_fn(data):
    return lambda z: (z @ data["w"].T + data["b"],)


@pytest.mark.parametrize(("solver", "options"), CONFIGS, ids=IDS)
def test_linear_outputs_equal_the_closed_form(linear, solver, options):
    solve = Solve(solver, **TIGHT, **options)
    with torch.no_grad():
        (z,) = solve(_linear_fn(linear), (torch.zeros(B, 5, dtype=DOUBLE),))
    assert solve.converged and solve.residual <= 1e-10 and 1 <= solve.iterations <= 500
    close(z, linear["z"])


@pytest.mark.parametrize(("solver", "options"), CONFIGS, ids=IDS)
def test_linear_implicit_gradients_equal_the_closed_form(linear, solver, options):
    solve = Solve(solver, **TIGHT, **options)
    assert solve.backward_iterations == 0
    (z,) = solve(_linear_fn(linear), (torch.zeros(B, 5, dtype=DOUBLE),))
    close(z, linear["z"])
    grads = torch.autograd.grad((z * linear["weights"]).sum(), (linear["w"], linear["b"]))
    assert solve.backward_converged and solve.backward_residual <= 1e-10
    assert solve.backward_iterations >= 1
    for got, want in zip(grads, linear["grads"], strict=True):
        close(got, want)


def test_linear_unrolled_gradients_equal_implicit(linear):
    init = (torch.zeros(B, 5, dtype=DOUBLE),)
    got = {}
    for backward in ("implicit", "unrolled"):
        solve = Solve("fixed_point", tol=1e-13, max_iter=1000, backward=backward)
        (z,) = solve(_linear_fn(linear), init)
        got[backward] = torch.autograd.grad(
            (z * linear["weights"]).sum(), (linear["w"], linear["b"])
        )
        assert solve.converged
    for a, b, want in zip(got["implicit"], got["unrolled"], linear["grads"], strict=True):
        close(a, b)
        close(b, want)


# --- nonlinear: tanh(z W^T + x U^T + c) ------------------------------------------


@pytest.fixture(scope="module")
def tanh_cell():
    """Contractive (||W|| = 0.6); the reference is 2,000 unrolled plain iterations."""
    n, k = 6, 4
    p = {
        "w": with_norm(n, n, 0.6, seed=10).requires_grad_(),
        "u": rand(n, k, seed=11).requires_grad_(),
        "c": rand(n, seed=12).requires_grad_(),
        "x": rand(B, k, seed=13).requires_grad_(),
    }
    weights = rand(B, n, seed=14)

    def fn(z):
        return (torch.tanh(z @ p["w"].T + p["x"] @ p["u"].T + p["c"]),)

    init = (torch.zeros(B, n, dtype=DOUBLE),)
    (z,) = iterate(fn, init, 2000)
    grads = torch.autograd.grad((z * weights).sum(), tuple(p.values()))
    return {
        "fn": fn,
        "init": init,
        "params": p,
        "weights": weights,
        "z": z.detach(),
        "grads": grads,
    }


@pytest.mark.parametrize(("solver", "options"), CONFIGS, ids=IDS)
def test_nonlinear_outputs_and_gradients_equal_unrolled_iteration(tanh_cell, solver, options):
    """Outputs and the gradients wrt W, U, c and the input x: rtol 1e-7, atol 1e-8."""
    solve = Solve(solver, **TIGHT, **options)
    (z,) = solve(tanh_cell["fn"], tanh_cell["init"])
    assert solve.converged
    close(z, tanh_cell["z"])
    params = tuple(tanh_cell["params"].values())
    grads = torch.autograd.grad((z * tanh_cell["weights"]).sum(), params)
    assert solve.backward_converged
    for got, want in zip(grads, tanh_cell["grads"], strict=True):
        close(got, want)


# --- several tensors, unused tensors -----------------------------------------------


@pytest.mark.parametrize("solver", list(SOLVERS))
def test_several_tensors_of_different_shapes(solver):
    """z = (a [B, 3], h [B, 2, 4]), coupled both ways; init non-zero."""
    ma = with_norm(3, 3 + 8, 0.5, seed=20).requires_grad_()
    mh = with_norm(8, 3 + 8, 0.5, seed=21).requires_grad_()
    bias = rand(B, 2, 4, seed=22).requires_grad_()

    def fn(a, h):
        both = torch.cat([a, h.flatten(1)], 1)
        return torch.tanh(both @ ma.T), torch.tanh(both @ mh.T).reshape(B, 2, 4) + bias

    init = (rand(B, 3, seed=23), rand(B, 2, 4, seed=24))
    wa, wh = rand(B, 3, seed=25), rand(B, 2, 4, seed=26)
    ref = iterate(fn, init, 300)
    ref_grads = torch.autograd.grad((ref[0] * wa).sum() + (ref[1] * wh).sum(), (ma, mh, bias))
    a, h = Solve(solver, **TIGHT)(fn, init)
    assert a.shape == (B, 3) and h.shape == (B, 2, 4)
    close(a, ref[0])
    close(h, ref[1])
    grads = torch.autograd.grad((a * wa).sum() + (h * wh).sum(), (ma, mh, bias))
    for got, want in zip(grads, ref_grads, strict=True):
        close(got, want)


def test_unused_tensor_and_missing_gradient():
    """fn ignores its second tensor (its output is a parameter d), and the loss reads only
    the first output: the adjoint gets no gradient for one output and no VJP for one input."""
    w = with_norm(4, 4, 0.5, seed=30).requires_grad_()
    c = rand(4, seed=31).requires_grad_()
    d = rand(B, 2, seed=32).requires_grad_()

    def fn(a, unused):
        return torch.tanh(a @ w.T + c), d * 1.0

    init = (torch.zeros(B, 4, dtype=DOUBLE), torch.zeros(B, 2, dtype=DOUBLE))
    ref = iterate(fn, init, 300)
    ref_grads = torch.autograd.grad(ref[0].sum(), (w, c))
    a, e = Solve("anderson", **TIGHT)(fn, init)
    close(e, d.detach())
    grads = torch.autograd.grad(a.sum(), (w, c, d), allow_unused=True)
    close(grads[0], ref_grads[0])
    close(grads[1], ref_grads[1])
    assert grads[2] is None or torch.all(grads[2] == 0)
    # Both outputs in the loss: d gets its gradient straight through the last application.
    a, e = Solve("broyden", **TIGHT)(fn, init)
    (grad_d,) = torch.autograd.grad(a.sum() + 2 * e.sum(), (d,))
    close(grad_d, torch.full_like(d, 2.0))


def test_fn_must_return_the_shapes_of_z():
    with pytest.raises(ValueError, match="shapes"):
        Solve()(lambda z: (z[:, :2],), (torch.zeros(B, 3),))


# --- memory --------------------------------------------------------------------------


def _count_saved(run, *args) -> int:
    """How many tensors autograd saves for backward while ``run(*args)`` runs."""
    count = 0

    def pack(t):
        nonlocal count
        count += 1
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = run(*args)
    sum(t.sum() for t in out).backward()  # the saved graph still works
    return count


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # tol 1e-300 never converges
@pytest.mark.parametrize("solver", list(SOLVERS))
def test_saved_tensors_do_not_grow_with_max_iter(solver):
    w = with_norm(6, 6, 0.97, seed=40).requires_grad_()  # slow: never exact in 100 steps
    x = rand(B, 6, seed=41)

    def fn(z):
        return (torch.tanh(z @ w.T + x),)

    init = (torch.zeros(B, 6, dtype=DOUBLE),)
    one = _count_saved(fn, *init)  # one application of fn
    saved = {
        (backward, m): _count_saved(
            Solve(solver, tol=1e-300, max_iter=m, backward=backward), fn, init
        )
        for backward in ("implicit", "unrolled")
        for m in (10, 100)
    }
    assert saved["implicit", 10] == saved["implicit", 100] == one + 1  # fn(z*), and z*
    assert saved["unrolled", 100] > saved["unrolled", 10] > saved["implicit", 10]


def test_outputs_can_change_in_place(tanh_cell):
    (z,) = Solve(**TIGHT)(tanh_cell["fn"], tanh_cell["init"])
    z.mul_(2.0)
    grads = torch.autograd.grad(
        (z * tanh_cell["weights"]).sum(), tuple(tanh_cell["params"].values())
    )
    for got, want in zip(grads, tanh_cell["grads"], strict=True):
        close(got, 2 * want)


# --- warnings and statistics ---------------------------------------------------------


def test_not_converging_warns_once_per_instance(recwarn, linear):
    warnings.simplefilter("always")  # count the instance's warnings, not Python's filter
    solve = Solve("fixed_point", tol=1e-12, max_iter=3)
    init = (torch.zeros(B, 5, dtype=DOUBLE),)
    with torch.no_grad():
        for _ in range(2):
            solve(_linear_fn(linear), init)
            assert not solve.converged and solve.iterations == 3 and solve.residual > 1e-12
    warned = [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
    assert len(warned) == 1
    message = str(warned[0].message)
    assert "fixed_point" in message and "max_iter=3" in message and "1e-12" in message
    with torch.no_grad():  # another instance warns again
        Solve("fixed_point", tol=1e-12, max_iter=3)(_linear_fn(linear), init)
    assert len([w for w in recwarn if issubclass(w.category, RuntimeWarning)]) == 2


def test_backward_not_converging_warns_once_too(recwarn, linear):
    warnings.simplefilter("always")
    solve = Solve("fixed_point", tol=1e-12, max_iter=3)
    for _ in range(2):
        (z,) = solve(_linear_fn(linear), (torch.zeros(B, 5, dtype=DOUBLE),))
        z.sum().backward()
        assert not solve.backward_converged and solve.backward_iterations == 3
        assert solve.backward_residual > 1e-12
    messages = [str(w.message) for w in recwarn if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 2 and sum("backward" in m for m in messages) == 1


def test_anderson_and_broyden_need_fewer_iterations_than_fixed_point():
    """Spectral radius 0.97: plain iteration takes hundreds of steps."""
    n = 8
    w = with_radius(n, 0.97, seed=50)
    b = rand(B, n, seed=51)
    fn, init = (lambda z: (z @ w.T + b,)), (torch.zeros(B, n, dtype=DOUBLE),)
    iterations = {}
    for solver in SOLVERS:
        solve = Solve(solver, tol=1e-8, max_iter=5000)
        solve(fn, init)
        assert solve.converged
        iterations[solver] = solve.iterations
    assert iterations["anderson"] * 3 < iterations["fixed_point"]
    assert iterations["broyden"] * 3 < iterations["fixed_point"]


def test_grad_disabled_gives_the_same_output(tanh_cell):
    solve = Solve(**TIGHT)
    (train,) = solve(tanh_cell["fn"], tanh_cell["init"])
    with torch.no_grad():
        (evaluated,) = solve(tanh_cell["fn"], tanh_cell["init"])
    assert train.requires_grad and not evaluated.requires_grad
    assert torch.equal(train.detach(), evaluated)


# --- validation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (("newton",), {}, "unknown solver 'newton'; choose one of fixed_point, anderson, broyden"),
        (("fixed_point",), {"m": 3}, "unknown option 'm' for solver 'fixed_point'.*damping"),
        (("broyden",), {"lam": 1e-3}, "unknown option 'lam' for solver 'broyden'.*m"),
        (("anderson",), {"m": 0}, "'m' must be an integer >= 1"),
        (("anderson",), {"m": 2.5}, "'m' must be an integer >= 1"),
        (("anderson",), {"m": True}, "'m' must be an integer >= 1"),
        (("anderson",), {"m": None}, "'m' must be an integer >= 1"),
        (("anderson",), {"damping": 0}, r"'damping' must be a number in \(0, 1\]"),
        (("fixed_point",), {"damping": 1.5}, r"'damping' must be a number in \(0, 1\]"),
        (("fixed_point",), {"damping": "0.5"}, r"'damping' must be a number in \(0, 1\]"),
        (("anderson",), {"lam": -1e-3}, "'lam' must be a number >= 0"),
        (("anderson",), {"lam": math.inf}, "'lam' must be a number >= 0"),
        ((), {"tol": 0}, "tol must be a number > 0"),
        ((), {"tol": math.nan}, "tol must be a number > 0"),
        ((), {"max_iter": 0}, "max_iter must be an integer >= 1"),
        ((), {"max_iter": 10.0}, "max_iter must be an integer >= 1"),
        (
            (),
            {"backward": "adjoint"},
            "unknown backward 'adjoint'; choose one of implicit, unrolled",
        ),
    ],
)
def test_invalid_configurations(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        Solve(*args, **kwargs)


def test_solvers_table_is_plain_data_and_the_defaults():
    assert SOLVERS == {
        "fixed_point": {"damping": 1.0},
        "anderson": {"m": 5, "damping": 1.0, "lam": 1e-4},
        "broyden": {"m": None},
    }
    for solver, options in SOLVERS.items():
        assert Solve(solver).options == options
    assert Solve("broyden", m=7).options == {"m": 7}
    assert Solve().solver == "anderson" and Solve().backward == "implicit"


def test_extra_repr():
    text = repr(Solve("anderson", tol=1e-6, max_iter=20, m=3))
    assert text == (
        "Solve(solver='anderson', tol=1e-06, max_iter=20, backward='implicit', "
        "m=3, damping=1.0, lam=0.0001)"
    )


# --- dtypes and plumbing -------------------------------------------------------------


@pytest.mark.parametrize("solver", list(SOLVERS))
def test_float32(solver):
    n = 5
    w = with_radius(n, 0.7, seed=60, dtype=torch.float32).requires_grad_()
    b = rand(B, n, seed=61).float().requires_grad_()
    (z,) = Solve(solver, tol=1e-6, max_iter=200)(lambda z: (z @ w.T + b,), (torch.zeros(B, n),))
    assert z.dtype == torch.float32
    grads = torch.autograd.grad(z.sum(), (w, b))
    assert all(g.dtype == torch.float32 for g in grads)
    w64, b64 = w.detach().double().requires_grad_(), b.detach().double().requires_grad_()
    ref = torch.linalg.solve(torch.eye(n, dtype=DOUBLE) - w64, b64.T).T
    ref_grads = torch.autograd.grad(ref.sum(), (w64, b64))
    close(z.double(), ref.detach(), rtol=1e-4, atol=1e-4)
    for got, want in zip(grads, ref_grads, strict=True):
        close(got.double(), want, rtol=1e-4, atol=1e-4)


def test_state_dict_is_empty_and_pickle_and_deepcopy_work(linear):
    solve = Solve("anderson", tol=1e-9, max_iter=40, m=3)
    assert solve.state_dict() == {} and not list(solve.parameters()) and not list(solve.buffers())
    assert math.isnan(solve.residual) and solve.iterations == 0 and not solve.converged
    init = (torch.zeros(B, 5, dtype=DOUBLE),)
    with torch.no_grad():
        (z,) = solve(_linear_fn(linear), init)
    for other in (pickle.loads(pickle.dumps(solve)), copy.deepcopy(solve)):
        assert repr(other) == repr(solve) and other.state_dict() == {}
        assert (other.iterations, other.residual) == (solve.iterations, solve.residual)
        with torch.no_grad():
            (again,) = other(_linear_fn(linear), init)
        assert torch.equal(again, z)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("solver", list(SOLVERS))
def test_cuda(solver):
    w = with_norm(5, 5, 0.5, seed=70).cuda().requires_grad_()
    x = rand(B, 5, seed=71).cuda()
    fn = lambda z: (torch.tanh(z @ w.T + x),)  # noqa: E731
    (z,) = Solve(solver, **TIGHT)(fn, (torch.zeros(B, 5, dtype=DOUBLE, device="cuda"),))
    (grad,) = torch.autograd.grad(z.sum(), (w,))
    assert z.is_cuda and grad.is_cuda
    (ref,) = iterate(fn, (torch.zeros_like(z),), 300)
    close(z, ref)
    close(grad, torch.autograd.grad(ref.sum(), (w,))[0])
