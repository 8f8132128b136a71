"""Solved cycles (``solve z with anderson(...)``) end to end: compiled machines vs oracles.

The oracles: the closed form of a linear cycle (``torch.linalg.solve``, with autograd
through it), plain iteration of the generated ``f`` (``x <- f(x) + x0``, thousands of
steps) for outputs and resolvents, autograd through a hand-written unrolled loop and
through ``resolvent`` for gradients and the adjoint machine. Then the shapes of cycles
(two spaces, an edge from outside, two cycles, a chain of cycles, convolutions),
memory that does not grow with ``max_iter``, statistics and warnings, names that
collide with generated code, ``spectral_norm`` weights, diagnostics and dtypes.

Numbers are compared in float64, in eval mode (the power iteration of ``spectral_norm``
updates its vectors on every call in training mode, so the weight would move under
the oracle). Solves run to a relative residual of 1e-12 on cycles that contract
(weights scaled to norm 0.5-0.8 round each cycle, or spectral radius 0.8 for the linear
one), so states and gradients agree to about 1e-11; ``close`` compares at rtol 1e-9,
atol 1e-10 (the largest error seen is about 5% of that).
"""

from __future__ import annotations

import subprocess
import sys
import types
import warnings
from collections.abc import Callable
from pathlib import Path

import machc
import pytest
import torch
from machc.runtime import Solve
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.mach"))

DOUBLE = torch.float64
B = 3  # samples per batch


# --- helpers -------------------------------------------------------------------------


def machines(source: str, filename: str = "inline.mach") -> types.ModuleType:
    """The generated module of an inline source (warnings such as W103 are not checked)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", machc.MachcWarning)
        code = machc.compile_source(source, filename)
    module = types.ModuleType(filename.removesuffix(".mach"))
    exec(compile(code, f"<machc:{filename}>", "exec"), module.__dict__)  # noqa: S102
    return module


def build(source: str, cls: str, seed: int = 0, **norms: float) -> nn.Module:
    """``cls`` of ``source`` in float64 and eval mode, with seeded weights; each ``edge=norm``
    scales ``edge``'s weight to spectral norm ``norm``."""
    torch.manual_seed(seed)
    model = getattr(machines(source), cls)().to(DOUBLE).eval()
    for edge, norm in norms.items():
        set_norm(getattr(model, edge), norm)
    return model


def set_norm(layer: nn.Linear, norm: float, columns: slice | None = None) -> None:
    """Scales ``layer.weight[:, columns]`` (default: all) to spectral norm ``norm``."""
    columns = columns if columns is not None else slice(None)
    with torch.no_grad():
        block = layer.weight[:, columns]
        block.mul_(norm / torch.linalg.matrix_norm(block, 2))


def randn(*shape: int, seed: int) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DOUBLE)


def random_state(cls, seed: int, names=None) -> dict[str, Tensor]:
    """A random tensor ``[B, *shape]`` on each named space (default: every space)."""
    shapes = cls.shapes() if hasattr(cls, "shapes") else cls.SPACES  # sizes at call time
    names = cls.SPACES if names is None else names
    return {name: randn(B, *shapes[name], seed=seed + i) for i, name in enumerate(names)}


def iterate(model: nn.Module, x0: dict[str, Tensor], steps: int) -> dict[str, Tensor]:
    """Plain iteration of the machine equation with the generated ``f``: x <- f(x) + x0."""
    x = dict(x0)
    with torch.no_grad():
        for _ in range(steps):
            fx = model.f(x)
            x = {name: fx[name] + x0.get(name, 0) for name in fx}
    return x


def close(actual, expected, rtol: float = 1e-9, atol: float = 1e-10, msg: str = "") -> None:
    torch.testing.assert_close(
        actual, expected, rtol=rtol, atol=atol, msg=(lambda m: f"{msg}: {m}") if msg else None
    )


def outputs(model: nn.Module, *inputs: Tensor) -> tuple[Tensor, ...]:
    result = model(*inputs)
    return (result,) if len(type(model).OUTPUTS) == 1 else tuple(result)


def grads(loss: Tensor, tensors: list[Tensor]) -> list[Tensor]:
    return list(torch.autograd.grad(loss, tensors))


def solver_modules(model: nn.Module) -> list[Solve]:
    return [m for m in model.modules() if isinstance(m, Solve)]


# --- 1. a linear cycle against its closed form ------------------------------------------

LINEAR = """
machine Lin {
    input  x : 3
    space  z : 5
    output y : 2
    cell : z × x -> z = linear
    head : z -> y = linear
    solve z with SOLVER(tol=1e-12, max_iter=200)
}
"""


@pytest.mark.parametrize("solver", ["anderson", "fixed_point", "broyden"])
def test_linear_cycle_matches_the_closed_form_and_its_gradients(solver: str) -> None:
    model = build(LINEAR.replace("SOLVER", solver), "Lin")
    w = randn(5, 5, seed=1)
    with torch.no_grad():  # the z-block of the cell: spectral radius 0.8
        model.cell.weight[:, :5] = w * 0.8 / torch.linalg.eigvals(w).abs().max()
    x = randn(B, 3, seed=2).requires_grad_()
    weights = randn(B, 2, seed=3)  # loss = sum(y * weights)
    params = list(model.parameters())

    y = model(x)
    assert model.solve_z.converged
    got = grads((y * weights).sum(), [*params, x])

    cell = model.cell
    eye = torch.eye(5, dtype=DOUBLE)
    z = torch.linalg.solve(eye - cell.weight[:, :5], (x @ cell.weight[:, 5:].T + cell.bias).T).T
    expected_y = model.head(z)
    expected = grads((expected_y * weights).sum(), [*params, x])
    # residual 1e-12, (I - W)^-1 of norm ~10: outputs and gradients to ~1e-11
    close(y, expected_y, msg="output")
    names = [n for n, _ in model.named_parameters()] + ["x"]
    for name, g, e in zip(names, got, expected, strict=True):
        close(g, e, msg=f"gradient of {name}")


# --- 2. a nonlinear cycle against plain iteration and unrolled gradients --------------

NONLINEAR = """
machine Deq {
    input  u : 3
    space  z : 6
    output y : 2
    cell : z × u -> z = linear | tanh
    head : z -> y = linear
    solve z with SOLVER
}
"""


def test_nonlinear_cycle_matches_plain_iteration_and_unrolled_gradients() -> None:
    implicit = build(NONLINEAR.replace("SOLVER", "anderson(tol=1e-12, max_iter=200)"), "Deq")
    set_norm(implicit.cell, 0.8, slice(0, 6))  # tanh is 1-Lipschitz: a contraction by 0.8
    unrolled = build(
        NONLINEAR.replace("SOLVER", "fixed_point(tol=1e-13, max_iter=2000, backward=unrolled)"),
        "Deq",
    )
    unrolled.load_state_dict(implicit.state_dict())
    u = randn(B, 3, seed=1).requires_grad_()
    weights = randn(B, 2, seed=2)

    # outputs: 2,000 plain steps (0.8^2000 is far below float64's resolution)
    state = iterate(implicit, {"u": u.detach()}, 2000)
    y = implicit(u)
    assert implicit.solve_z.converged and 0 < implicit.solve_z.iterations < 200
    close(y, state["y"], msg="output vs plain iteration")  # residual 1e-12: ~1e-11

    names = [n for n, _ in implicit.named_parameters()] + ["u"]
    got = grads((y * weights).sum(), [*implicit.parameters(), u])
    # the same machine, autograd through its fixed point iterations
    y_unrolled = unrolled(u)
    assert unrolled.solve_z.converged
    via_unrolled = grads((y_unrolled * weights).sum(), [*unrolled.parameters(), u])
    # a hand-written unrolled loop, 2,000 steps, autograd through all of them
    w, b = implicit.cell.weight, implicit.cell.bias
    z = torch.zeros(B, 6, dtype=DOUBLE)
    for _ in range(2000):
        z = torch.tanh(z @ w[:, :6].T + u @ w[:, 6:].T + b)
    by_hand = grads((implicit.head(z) * weights).sum(), [*implicit.parameters(), u])
    for name, g, e1, e2 in zip(names, got, via_unrolled, by_hand, strict=True):
        # the adjoint solve stops at relative residual 1e-12: gradients to ~1e-11
        close(g, e1, msg=f"gradient of {name} vs backward=unrolled")
        close(g, e2, msg=f"gradient of {name} vs a hand-written loop")


# --- 3. shapes of cycles ------------------------------------------------------------------

TWO_SPACES = """
machine TwoSpaces {
    input  x : 3
    space  a : 4
    space  b : 5
    output y : 2
    f : x × b -> a = linear | tanh
    g : a -> b = linear | tanh
    h : b -> y = linear
    solve b with anderson(tol=1e-12, max_iter=300)
}
"""

FROM_OUTSIDE = """
machine FromOutside {
    input  x : 3
    space  z : 4
    output y : 2
    inject : x -> z = linear
    cell   : z -> z = linear | tanh
    head   : z -> y = linear
    solve z with broyden(tol=1e-12, max_iter=300)
}
"""

# the cycle of q reads p: declared first, solved second
TWO_CYCLES = """
machine TwoCycles {
    input  x : 3
    space  p : 4
    space  q : 5
    output y : 2
    second : q × p -> q = linear | tanh
    first  : p × x -> p = linear | tanh
    head   : q -> y = linear
    solve q with anderson(tol=1e-12, max_iter=300)
    solve p with fixed_point(tol=1e-12, max_iter=300)
}
"""

CONV = """
machine ConvCycle {
    input  x : [4, 6, 6]
    space  z : [4, 6, 6]
    output y : [2, 6, 6]
    inject : x -> z = conv(3, padding=1)
    cell   : z -> z = conv(3, padding=1, spectral_norm=true) | tanh
    head   : z -> y = linear
    solve z with anderson(tol=1e-12, max_iter=300)
}
"""


# a chain of cycles, one per element of a space array, each solved in a loop
CHAIN = """
machine Chain(n: int = 3) {
    input  x : 3
    space  z[1..n] : 4
    output y : 2
    c[1] : z[1] × x -> z[1] = linear | tanh
    for i in 2..n {
        c[i] : z[i] × z[i-1] -> z[i] = linear | tanh
    }
    h : z[n] -> y = linear
    for i in 1..n {
        solve z[i] with anderson(tol=1e-12, max_iter=300)
    }
}
"""


def two_spaces() -> nn.Module:
    model = build(TWO_SPACES, "TwoSpaces")
    set_norm(model.f_, 0.8, slice(3, 8))  # edge f (layer f_: f is the method); columns of b
    set_norm(model.g, 0.8)
    return model


def from_outside() -> nn.Module:
    return build(FROM_OUTSIDE, "FromOutside", cell=0.7)


def two_cycles() -> nn.Module:
    model = build(TWO_CYCLES, "TwoCycles")
    set_norm(model.second, 0.7, slice(0, 5))
    set_norm(model.first, 0.7, slice(0, 4))
    return model


def conv_cycle() -> nn.Module:
    return build(CONV, "ConvCycle")


def chain() -> nn.Module:
    model = build(CHAIN, "Chain")
    for i in (1, 2, 3):  # the edges c[i] (layers c_i): the columns of z[i]
        set_norm(getattr(model, f"c_{i}"), 0.7, slice(0, 4))
    return model


CYCLES: dict[str, Callable[[], nn.Module]] = {
    "two_spaces": two_spaces,
    "from_outside": from_outside,
    "two_cycles": two_cycles,
    "conv": conv_cycle,
    "chain": chain,
}


@pytest.mark.parametrize("make", CYCLES.values(), ids=CYCLES.keys())
def test_cycles_match_plain_iteration(make) -> None:
    model = make()
    cls = type(model)
    with torch.no_grad():
        inputs = random_state(cls, seed=10, names=cls.INPUTS)
        ys = outputs(model, *inputs.values())
        for solve in solver_modules(model):
            assert solve.converged and solve.residual <= 1e-12
        state = iterate(model, inputs, 2000)
        for name, y in zip(cls.OUTPUTS, ys, strict=True):
            close(y, state[name], msg=f"forward {name} vs plain iteration")
        # x0 on every space, cycle spaces included: the resolvent
        x0 = random_state(cls, seed=20)
        resolved = model.resolvent(x0)
        state = iterate(model, x0, 2000)
        for name in cls.SPACES:
            close(resolved[name], state[name], msg=f"resolvent {name} vs plain iteration")


def test_two_cycles_are_solved_in_dependency_order() -> None:
    model = two_cycles()
    order = []
    for name in ("solve_p", "solve_q"):
        getattr(model, name).register_forward_pre_hook(lambda m, a, name=name: order.append(name))
    with torch.no_grad():
        model(randn(B, 3, seed=1))
    assert order == ["solve_p", "solve_q"]


# --- 4. the adjoint machine equals autograd through the resolvent ----------------------


def adjoint_classes(module: types.ModuleType) -> list[type]:
    """The machines of a generated module that have an adjoint (not over time, no ids)."""
    found = [
        value
        for value in vars(module).values()
        if isinstance(value, type) and issubclass(value, nn.Module) and hasattr(value, "SPACES")
    ]
    return [cls for cls in found if hasattr(cls, "adjoint") and not getattr(cls, "IDS", None)]


def check_adjoint(model: nn.Module, seed: int = 0) -> None:
    """``adjoint(resolvent(x0), ybar)`` is the gradient of ``sum(resolvent(x0) * ybar)`` wrt
    ``x0`` on every space; with x0 on the inputs and ybar on the outputs, it is the
    gradient of ``forward`` wrt the inputs."""
    cls = type(model)
    x0 = {k: v.requires_grad_() for k, v in random_state(cls, seed).items()}
    ybar = random_state(cls, seed + 100)
    state = model.resolvent(x0)
    total = sum((state[name] * ybar[name]).sum() for name in cls.SPACES)
    expected = dict(zip(x0, grads(total, list(x0.values())), strict=True))
    bar = model.adjoint(state, ybar)
    assert set(bar) == set(cls.SPACES)
    for name in cls.SPACES:
        # solves to 1e-12 on both sides; exact (up to summation order) without cycles
        close(bar[name], expected[name], msg=f"{cls.__name__}: adjoint on {name}")

    inputs = {k: v.requires_grad_() for k, v in random_state(cls, seed + 200, cls.INPUTS).items()}
    ys = outputs(model, *inputs.values())
    ybar = random_state(cls, seed + 300, cls.OUTPUTS)
    total = sum((y * ybar[name]).sum() for name, y in zip(cls.OUTPUTS, ys, strict=True))
    expected = grads(total, list(inputs.values()))
    bar = model.adjoint(model.resolvent(inputs), ybar)
    for name, e in zip(inputs, expected, strict=True):
        close(bar[name], e, msg=f"{cls.__name__}: adjoint on input {name} vs forward")


def tighten(model: nn.Module) -> nn.Module:
    """Every solve of the model to relative residual 1e-12 (the examples stop at 1e-4)."""
    for solve in solver_modules(model):
        solve.tol, solve.max_iter = 1e-12, 500
    return model


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_adjoint_of_every_example_equals_autograd(path: Path) -> None:
    classes = adjoint_classes(machc.load(path))
    if not classes:
        pytest.skip("every machine here is over time (no adjoint)")
    for cls in classes:
        torch.manual_seed(0)
        check_adjoint(tighten(cls().to(DOUBLE).eval()))


@pytest.mark.parametrize("make", CYCLES.values(), ids=CYCLES.keys())
def test_adjoint_of_cycles_equals_autograd(make) -> None:
    check_adjoint(make())


def test_adjoint_of_the_nonlinear_and_linear_cycles_equals_autograd() -> None:
    model = build(NONLINEAR.replace("SOLVER", "broyden(tol=1e-12, max_iter=200)"), "Deq")
    set_norm(model.cell, 0.8, slice(0, 6))
    check_adjoint(model)
    model = build(LINEAR.replace("SOLVER", "anderson"), "Lin", cell=0.8)
    check_adjoint(model)


def test_adjoint_of_a_machine_with_an_output_no_input_reaches() -> None:
    # Block's y is solved from itself alone (it is 0 whatever x is), so in M the edge z
    # gives an output that needs no gradient beside one that does: the adjoint adds
    # nothing for the first (found by test_differential's random sub-machines)
    source = """
machine Block {
    input  x : 3
    output y : 3
    output h : 3
    u : y -> y = tanh | scale(0.05)
    z : x -> h = linear
    solve y with fixed_point(tol=1e-12, max_iter=300)
}
machine M {
    input  x : 3
    space  h : 3
    output u : 3
    z : x -> h × u = Block
    r : h -> u = linear
}
"""
    check_adjoint(build(source, "M"))


# --- 5. memory does not grow with max_iter in the implicit backward --------------------

MEMORY = """
machine Mem {
    input  x : 4
    space  z : 8
    output y : 2
    cell : z × x -> z = linear | tanh
    head : z -> y = linear
    solve z with fixed_point(tol=1e-30, max_iter=MAX_ITER, backward=BACKWARD)
}
"""


def saved_in_forward(max_iter: int, backward: str) -> int:
    """Tensors autograd saves for backward during one forward call."""
    source = MEMORY.replace("MAX_ITER", str(max_iter)).replace("BACKWARD", backward)
    torch.manual_seed(0)
    model = machines(source).Mem()  # float32: its residual never reaches 1e-30 (float64's may)
    x = torch.randn(B, 4, requires_grad=True)
    count = 0

    def pack(tensor: Tensor) -> Tensor:
        nonlocal count
        count += 1
        return tensor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # tol 1e-30 is never met
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            y = model(x)
        y.sum().backward()  # and the graph is usable
    assert model.solve_z.iterations == max_iter and not model.solve_z.converged
    assert x.grad is not None and torch.isfinite(x.grad).all()
    return count


def test_implicit_backward_saves_the_same_tensors_at_any_max_iter() -> None:
    implicit = saved_in_forward(10, "implicit")
    assert implicit > 0
    assert saved_in_forward(100, "implicit") == implicit
    unrolled = saved_in_forward(10, "unrolled")
    assert unrolled > implicit
    assert saved_in_forward(100, "unrolled") > 5 * unrolled


# --- 6. statistics and warnings -----------------------------------------------------

STATS = """
machine Stats {
    input  x : 4
    space  z : 8
    output y : 2
    cell : z × x -> z = linear(spectral_norm=true) | tanh
    head : z -> y = linear
    solve z with anderson(tol=1e-6, max_iter=MAX_ITER)
}
"""


def test_statistics_of_the_last_call() -> None:
    torch.manual_seed(0)
    model = machines(STATS.replace("MAX_ITER", "100")).Stats().to(DOUBLE)
    x = randn(B, 4, seed=1).requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # converging: no warning
        model(x).sum().backward()
    solve = model.solve_z
    assert solve.converged and 0 < solve.iterations <= 100 and solve.residual <= 1e-6
    assert solve.backward_converged and 0 < solve.backward_iterations <= 100
    assert solve.backward_residual <= 1e-6


def runtime_warnings(calls: Callable[[], None]) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # Python would hide repeats of one warning
        calls()
    return [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]


def test_not_converging_warns_once_per_module() -> None:
    torch.manual_seed(0)
    cls = machines(STATS.replace("MAX_ITER", "2")).Stats
    first, second = cls().to(DOUBLE), cls().to(DOUBLE)
    x = randn(B, 4, seed=1)

    def forward_twice(model):
        with torch.no_grad():
            model(x)
            model(x)

    messages = runtime_warnings(lambda: forward_twice(first))
    assert len(messages) == 1 and "did not converge" in messages[0]
    assert "max_iter=2" in messages[0]
    assert not first.solve_z.converged and first.solve_z.iterations == 2
    assert runtime_warnings(lambda: forward_twice(first)) == []  # still once for this module
    assert len(runtime_warnings(lambda: forward_twice(second))) == 1  # another module warns

    def backward_twice():
        for _ in range(2):
            first(x.clone().requires_grad_()).sum().backward()

    messages = runtime_warnings(backward_twice)  # the adjoint solve warns once, on its own
    assert len(messages) == 1 and "backward" in messages[0]


# --- 7. names from the source that generated code also uses ----------------------------

# spaces x, bar, cotangent (the adjoint's arguments and locals), z_in, z_next, cycle_z
# (the names generated for a cycle's outside terms, next values and function), an
# edge solve_z (the solve's attribute) and an edge inject writing the cycle from outside
NAMES = """
machine Names {
    input  x         : 3
    input  bar       : 3
    space  z_in      : 4
    space  z         : 4
    space  z_next    : 4
    space  cycle_z   : 4
    output cotangent : 2
    solve_z : x × bar -> z_in = linear | tanh
    inject  : x -> z = linear
    step    : z_next × z_in × cycle_z -> z = linear | tanh
    back    : z -> z_next = linear | tanh
    around  : z -> cycle_z = linear | tanh
    head    : z × cycle_z -> cotangent = linear
    solve z with anderson(tol=1e-12, max_iter=300)
}
"""

# edges named bar, cycle_z, cotangent, x and z_next
EDGE_NAMES = """
machine EdgeNames {
    input  u : 3
    space  z : 4
    output y : 2
    bar       : u -> z = linear
    cycle_z   : z × u -> z = linear | tanh
    cotangent : z -> y = linear
    x         : z -> y = linear | tanh
    z_next    : u -> y = linear
    solve z with broyden(tol=1e-12, max_iter=300)
}
"""


@pytest.mark.parametrize(
    ("source", "cls"), [(NAMES, "Names"), (EDGE_NAMES, "EdgeNames")], ids=["spaces", "edges"]
)
def test_names_that_generated_code_uses_still_work(source: str, cls: str) -> None:
    model = build(source, cls)
    for layer in model.modules():  # every weight of norm 0.5: the cycle contracts
        if isinstance(layer, nn.Linear):
            set_norm(layer, 0.5)
    machine = type(model)
    with torch.no_grad():
        x0 = random_state(machine, seed=1)
        resolved, state = model.resolvent(x0), iterate(model, x0, 500)
        for name in machine.SPACES:
            close(resolved[name], state[name], msg=f"resolvent {name}")
        inputs = random_state(machine, seed=2, names=machine.INPUTS)
        (y,) = outputs(model, *inputs.values())
        close(y, iterate(model, inputs, 500)[machine.OUTPUTS[0]], msg="forward")
    check_adjoint(model)


# --- 8. spectral_norm ---------------------------------------------------------------

NORMALISED = """
machine Normalised {
    input  x : 4
    space  z : 8
    output y : 2
    cell : z × x -> z = linear(spectral_norm=true)
    head : z -> y = linear
    solve z with anderson()
}
"""


def test_spectral_norm_weights_and_the_linear_cycle_warning() -> None:
    model = machines(NORMALISED).Normalised()
    assert set(model.state_dict()) == {
        "cell.parametrizations.weight.original",
        "cell.parametrizations.weight.0._u",
        "cell.parametrizations.weight.0._v",
        "cell.bias",
        "head.weight",
        "head.bias",
    }
    with torch.no_grad():  # the weight used is normalised (power iteration: ~1e-3 here)
        sigma = torch.linalg.matrix_norm(model.cell.weight, 2)
    assert abs(float(sigma) - 1) < 1e-2
    assert machc.check_source(NORMALISED).warnings == []
    plain = NORMALISED.replace("linear(spectral_norm=true)", "linear")
    (warning,) = machc.check_source(plain).warnings
    assert warning.code == "W103" and "spectral_norm=true" in warning.hint
    assert warning.span.line == 8  # the solve
    with pytest.warns(machc.MachcWarning, match="the cycle through z is linear"):
        machc.compile_source(plain)


SPECTRAL_DEQ = """
machine SpectralDeq {
    input  x : 4
    space  z : 8
    output y : 2
    cell : z × x -> z = linear(spectral_norm=true) | tanh
    head : z -> y = linear
    solve z with SOLVER
}
"""


def test_spectral_norm_weights_get_the_implicit_gradient() -> None:
    tight = "anderson(tol=1e-12, max_iter=300)"
    implicit = build(SPECTRAL_DEQ.replace("SOLVER", tight), "SpectralDeq")
    unrolled = build(
        SPECTRAL_DEQ.replace("SOLVER", "fixed_point(tol=1e-13, max_iter=2000, backward=unrolled)"),
        "SpectralDeq",
    )
    unrolled.load_state_dict(implicit.state_dict())
    x, weights = randn(B, 4, seed=1), randn(B, 2, seed=2)
    for model in (implicit, unrolled):  # eval mode: the same normalised weight in both
        (model(x) * weights).sum().backward()
    pairs = zip(implicit.named_parameters(), unrolled.parameters(), strict=True)
    for (name, mine), theirs in pairs:
        assert mine.grad is not None, f"no gradient for {name}"
        close(mine.grad, theirs.grad, msg=f"gradient of {name}")  # residuals 1e-12: ~1e-11


# --- 9. diagnostics -------------------------------------------------------------------

HEAD = """machine M {
    input  x : 4
    space  z : 4
    output y : 4
"""
HEAD_A = HEAD.replace("    space  z", "    space  a : 4\n    space  z")

BROKEN = {
    # name: (source, code, line, column, a part of the message)
    "cycle_without_solve": (
        HEAD + "    c : z × x -> z = linear | tanh\n    h : z -> y = linear\n}\n",
        "E013",
        5,
        5,
        "cycle: z -> c -> z",
    ),
    "solve_in_no_cycle": (
        HEAD + "    c : z × x -> z = linear | tanh\n    h : z -> y = linear\n"
        "    solve z with anderson()\n    solve y with anderson()\n}\n",
        "E020",
        8,
        5,
        "'y' is in no cycle",
    ),
    "two_solves_for_one_cycle": (
        HEAD_A + "    f : x × z -> a = linear | tanh\n    g : a -> z = linear | tanh\n"
        "    h : z -> y = linear\n    solve a with anderson()\n    solve z with broyden()\n}\n",
        "E020",
        10,
        5,
        "the cycle through a, z is solved 2 times",
    ),
    "cycle_through_a_machine": (
        "machine Cell {\n    input  x : 4\n    output y : 4\n    e : x -> y = linear | tanh\n}\n"
        + HEAD
        + "    f : x -> z = linear\n    c : z -> z = Cell()\n    h : z -> y = linear\n"
        "    solve z with anderson()\n}\n",
        "E020",
        11,
        5,
        "crosses edge 'c', a machine used as an edge",
    ),
    "cycle_edge_writes_outside": (
        HEAD + "    c : z × x -> z × y = linear | tanh\n    solve z with anderson()\n}\n",
        "E020",
        5,
        5,
        "edge 'c' of the cycle through z also writes 'y', outside the cycle",
    ),
    "solve_over_time": (
        HEAD.replace("machine M {", "machine M over t {")
        + "    c : z × x -> z = linear | tanh\n    h : z -> y = linear\n"
        "    solve z with anderson()\n}\n",
        "E020",
        7,
        5,
        "cycles within one step of a machine over t are not solved",
    ),
    "bad_solver_argument": (
        HEAD + "    c : z × x -> z = linear | tanh\n    h : z -> y = linear\n"
        "    solve z with anderson(damping=2)\n}\n",
        "E008",
        7,
        27,
        "argument 'damping' of anderson",
    ),
    "unknown_space": (
        HEAD + "    c : z × x -> z = linear | tanh\n    h : z -> y = linear\n"
        "    solve z with anderson()\n    solve w with anderson()\n}\n",
        "E002",
        8,
        11,
        "unknown space 'w'",
    ),
}


@pytest.mark.parametrize("name", BROKEN)
def test_diagnostics_of_solves(name: str) -> None:
    source, code, line, column, message = BROKEN[name]
    with pytest.raises(machc.CompileError) as caught:
        machc.check_source(source, "broken.mach")
    (error,) = caught.value.errors
    assert (error.code, error.span.line, error.span.column) == (code, line, column), error
    assert message in error.message
    if code == "E013":
        assert "solve z with anderson()" in error.hint


def test_the_command_line_reports_where(tmp_path: Path) -> None:
    for name in ("cycle_without_solve", "two_solves_for_one_cycle", "bad_solver_argument"):
        source, code, line, column, message = BROKEN[name]
        path = tmp_path / f"{name}.mach"
        path.write_text(source)
        result = subprocess.run(
            [sys.executable, "-m", "machc", "compile", str(path), "-o", str(tmp_path / "out.py")],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 1, result.stderr
        assert f"{path}:{line}:{column}: error: " in result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr
        assert not (tmp_path / "out.py").exists()


# --- 10. dtypes ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_a_deq_runs_in_float32_and_float64(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    model = machc.load(ROOT / "examples" / "deq.mach", params={"n": 8, "w": 16}).DEQ().to(dtype)
    seen = []
    model.solve_z.register_forward_hook(lambda m, args, out: seen.extend(out))
    x = torch.randn(B, 8, dtype=dtype, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # tol 1e-4 is met in both
        y = model(x)
        y.sum().backward()
    assert y.dtype == dtype and torch.isfinite(y).all()
    assert [t.dtype for t in seen] == [dtype]
    assert model.solve_z.converged and model.solve_z.backward_converged
    assert x.grad.dtype == dtype and torch.isfinite(x.grad).all()
    weight = model.cell.parametrizations.weight.original
    for grad in (
        model.inject.weight.grad,
        weight.grad,
        model.cell.bias.grad,
        model.head.weight.grad,
    ):
        assert grad.dtype == dtype and torch.isfinite(grad).all()


def test_the_compiler_and_the_runtime_agree_on_solver_defaults() -> None:
    # Generated code passes only tol, max_iter and the arguments not at their default, so
    # the compiler's table (machc.equilibrium) must give the runtime's defaults.
    import inspect

    from machc.equilibrium import SOLVERS as COMPILED
    from machc.runtime.equilibrium import SOLVERS as RUNTIME

    assert set(COMPILED) == set(RUNTIME)
    common = inspect.signature(Solve.__init__).parameters
    for name, spec in COMPILED.items():
        defaults = {a.name: a.default for a in spec.args}
        for arg in ("tol", "max_iter", "backward"):
            assert defaults.pop(arg) == common[arg].default, (name, arg)
        assert defaults == RUNTIME[name], name
