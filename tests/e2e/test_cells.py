"""The rewrite ``cells``: step loops that are exactly PyTorch's RNN, LSTM or GRU cell.

Where a machine's step loop is recognised, the generated ``forward`` calls PyTorch's
fused kernel (``runtime.cell``). Each machine here is compiled with every rewrite and
with none (``rewrites=()``, the step loop), given the same weights, and compared in
float64: outputs, the state at the end, gradients of the input and of every parameter
(with and without ``lengths``, from a given state). Then against ``torch.nn.RNN``,
``LSTM`` and ``GRU`` with the weights copied. Machines that differ from a cell in
anything are not recognised: their generated code keeps the loop.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from unittest import mock

import machc
import pytest
import torch
from machc.runtime import loops
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
TOL = {"rtol": 1e-10, "atol": 1e-10}

USER = {
    # the hidden state first in the product, relu, written by a user
    "elman_relu": """
machine Cell(n: int = 3, m: int = 5, dir: int = 1) over t {
    input  u : n
    output s : m
    step : s[t-dir] × u -> s = linear | relu
}
""",
    "elman_tanh": """
machine Cell(n: int = 3, m: int = 5, dir: int = 1) over t {
    input  u : n
    space  s : m
    output y : 2
    step : u × s[t-dir] -> s = linear | tanh
    out  : s -> y = linear
}
""",
    # one edge per gate, in another order, factors of mul swapped, two input spaces
    "lstm": """
machine Cell(n: int = 3, m: int = 5, dir: int = 1) over t {
    input  a  : n
    input  b  : 2
    space  og : m
    space  ig : m
    space  cg : m
    space  fg : m
    space  mem : m
    space  sq : m
    output hid : m
    o : a × b × hid[t-dir] -> og = linear | sigmoid
    g : a × b × hid[t-dir] -> cg = linear(bias=false) | tanh
    f : a × b × hid[t-dir] -> fg = linear | sigmoid
    i : a × b × hid[t-dir] -> ig = linear | sigmoid
    forget : mem[t-dir] × fg -> mem = mul
    write  : cg × ig -> mem = mul
    squash : mem -> sq = tanh
    emit   : sq × og -> hid = mul
}
""",
    "gru": """
machine Cell(n: int = 3, m: int = 5, dir: int = 1) over t {
    input  x  : n
    space  zz : m
    space  rr : m
    space  uu : m
    space  aa : m
    space  cc : m
    output h  : m
    gz     : x × h[t-dir] -> zz = linear | sigmoid
    gr     : x × h[t-dir] -> rr = linear | sigmoid
    recall : h[t-dir] -> uu = linear(bias=false)
    read   : x -> aa = linear
    reset  : uu × rr -> aa = mul
    cand   : aa -> cc = tanh
    keep   : h[t-dir] × zz -> h = mul
    forget : cc × zz -> h = mul | scale(-1)
    new    : cc -> h = identity
}
""",
}
STD = {"elman_tanh": "Elman", "lstm": "LSTM", "gru": "GRU"}
KERNELS = {"elman_relu": "rnn_relu", "elman_tanh": "rnn_tanh", "lstm": "lstm", "gru": "gru"}


def _load(tmp_path: Path, source: str | None, params: dict, rewrites=None):
    if source is None:
        return machc.load(ROOT / "compiler/std/recurrent.mach", params, rewrites=rewrites)
    path = tmp_path / "cell.mach"
    path.write_text(source, encoding="utf-8")
    return machc.load(path, params, rewrites=rewrites)


def _pair(tmp_path: Path, kind: str, origin: str, direction: int):
    """(with the kernel, with the loop): the same weights, float64."""
    if origin == "std":
        name = STD[kind]
        params = {f"{name}.n": 3, f"{name}.m": 5, f"{name}.dir": direction}
        source = None
    else:
        name, params, source = "Cell", {"dir": direction}, USER[kind]
    torch.manual_seed(0)
    fast = getattr(_load(tmp_path, source, params), name)().double()
    slow = getattr(_load(tmp_path, source, params, rewrites=()), name)().double()
    assert fast.state_dict().keys() == slow.state_dict().keys()
    slow.load_state_dict(fast.state_dict())
    return fast, slow


def _code(tmp_path: Path, source: str, rewrites=None) -> str:
    path = tmp_path / "cell.mach"
    path.write_text(source, encoding="utf-8")
    return machc.compile_file(path, rewrites=rewrites)


def _first(y):
    return y if isinstance(y, torch.Tensor) else y[0]


def _compare(fast, slow, kwargs: dict) -> None:
    """Outputs, input and parameter gradients, and the state at the end agree."""
    inputs = [x.requires_grad_(True) for x in fast.example_inputs(batch=4, steps=9)]
    y_fast, y_slow = fast(*inputs, **kwargs), slow(*inputs, **kwargs)
    state_fast = state_slow = None
    if kwargs.get("return_state"):
        (y_fast, state_fast), (y_slow, state_slow) = y_fast, y_slow
    y_fast, y_slow = _first(y_fast), _first(y_slow)
    torch.testing.assert_close(y_fast, y_slow, **TOL)
    cotangent = torch.randn_like(y_fast)
    wrt = [*inputs, *fast.parameters()]
    got = torch.autograd.grad((y_fast * cotangent).sum(), wrt, allow_unused=True)
    want = torch.autograd.grad(
        (y_slow * cotangent).sum(), [*inputs, *slow.parameters()], allow_unused=True
    )
    for a, b in zip(got, want, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, **TOL)
    if state_slow is not None:
        assert state_fast.keys() == state_slow.keys()
        for key, value in state_slow.items():
            torch.testing.assert_close(state_fast[key], value, **TOL)


@pytest.mark.parametrize("direction", [1, -1])
@pytest.mark.parametrize(
    ("kind", "origin"),
    [
        ("elman_tanh", "std"),
        ("elman_tanh", "user"),
        ("elman_relu", "user"),
        ("lstm", "std"),
        ("lstm", "user"),
        ("gru", "std"),
        ("gru", "user"),
    ],
)
def test_the_kernel_computes_what_the_loop_computes(tmp_path, kind, origin, direction) -> None:
    fast, slow = _pair(tmp_path, kind, origin, direction)
    code = (
        _code(tmp_path, USER[kind])
        if origin == "user"
        else machc.compile_file(ROOT / "compiler/std/recurrent.mach")
    )
    assert f'runtime.cell("{KERNELS[kind]}"' in code
    lengths = torch.tensor([9, 4, 1, 7])
    _compare(fast, slow, {})
    _compare(fast, slow, {"lengths": lengths})
    _compare(fast, slow, {"steps": 12})
    if direction == 1:  # a causal machine: state in and out
        _compare(fast, slow, {"return_state": True})
        _compare(fast, slow, {"return_state": True, "lengths": lengths})
        with torch.no_grad():
            _, state = slow(*slow.example_inputs(batch=4, steps=3), return_state=True)
        _compare(fast, slow, {"state": state, "return_state": True})
    with mock.patch.object(loops, "_tracing", lambda: True):  # as torch.compile traces it
        _compare(fast, slow, {"lengths": lengths} if direction < 0 else {})
        if direction == 1:
            _compare(fast, slow, {"return_state": True, "lengths": lengths})
    # f and resolvent keep the loop: the same code in both
    state = fast.resolvent({fast.INPUTS[0]: fast.example_inputs(batch=2, steps=5)[0]})
    again = slow.resolvent({slow.INPUTS[0]: state[slow.INPUTS[0]]})
    for key, value in again.items():
        torch.testing.assert_close(state[key], value, **TOL)


# --- against torch.nn, weights copied ---


def _torch_weights(kind: str, fast: nn.Module, m: int) -> dict[str, torch.Tensor]:
    """The std machine's parameters as torch.nn's layer 0 (zero second biases)."""
    p = dict(fast.named_parameters())
    if kind.startswith("elman"):
        w, b = p["cell.weight"], p["cell.bias"]
        return {
            "weight_ih_l0": w[:, :3],
            "weight_hh_l0": w[:, 3:],
            "bias_ih_l0": b,
            "bias_hh_l0": torch.zeros_like(b),
        }
    if kind == "lstm":
        w = torch.cat([p["gates.weight"][: 2 * m], p["cand.weight"], p["gates.weight"][2 * m :]])
        b = torch.cat([p["gates.bias"][: 2 * m], p["cand.bias"], p["gates.bias"][2 * m :]])
        return {
            "weight_ih_l0": w[:, :3],
            "weight_hh_l0": w[:, 3:],
            "bias_ih_l0": b,
            "bias_hh_l0": torch.zeros_like(b),
        }
    gates = p["gates.weight"]
    return {
        "weight_ih_l0": torch.cat([gates[:, :3], p["read.weight"]]),
        "weight_hh_l0": torch.cat([gates[:, 3:], p["recall.weight"]]),
        "bias_ih_l0": torch.cat([p["gates.bias"], p["read.bias"]]),
        "bias_hh_l0": torch.cat([torch.zeros(2 * m, dtype=gates.dtype), p["recall.bias"]]),
    }


@pytest.mark.parametrize("direction", [1, -1])
@pytest.mark.parametrize("kind", ["elman_tanh", "elman_relu", "lstm", "gru"])
def test_the_kernel_computes_what_torch_nn_computes(tmp_path, kind, direction) -> None:
    m = 5
    if kind == "elman_relu":  # std has no relu Elman: the std one with relu
        source = USER["elman_tanh"].replace("tanh", "relu").replace("output y : 2", "")
        source = source.replace("space  s", "output s").replace("    out  : s -> y = linear\n", "")
        fast = _load(tmp_path, source, {"dir": direction}).Cell().double()
        p = dict(fast.named_parameters())
        weights = {
            "weight_ih_l0": p["step.weight"][:, :3],
            "weight_hh_l0": p["step.weight"][:, 3:],
            "bias_ih_l0": p["step.bias"],
            "bias_hh_l0": torch.zeros_like(p["step.bias"]),
        }
        reference = nn.RNN(3, m, nonlinearity="relu", batch_first=True).double()
    else:
        fast, _ = _pair(tmp_path, kind, "std", direction)
        weights = _torch_weights(kind, fast, m)
        module = {"elman_tanh": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[kind]
        reference = module(3, m, batch_first=True).double()
    with torch.no_grad():
        for key, value in weights.items():
            getattr(reference, key).copy_(value)
    x = torch.randn(4, 9, 3, dtype=torch.float64, requires_grad=True)
    y = fast(x)
    flip = (lambda s: s.flip(1)) if direction < 0 else (lambda s: s)
    want = flip(reference(flip(x))[0])
    if kind == "elman_tanh":  # the std Elman reads its hidden state out through a linear
        p = dict(fast.named_parameters())
        want = torch.nn.functional.linear(want, p["read.weight"], p["read.bias"])
    torch.testing.assert_close(y, want, **TOL)
    cotangent = torch.randn_like(y)
    names = [k for k in weights]
    got = torch.autograd.grad((y * cotangent).sum(), [x, *fast.parameters()])
    ref_params = [getattr(reference, k) for k in names]
    expected = torch.autograd.grad((want * cotangent).sum(), [x, *ref_params], allow_unused=True)
    torch.testing.assert_close(got[0], expected[0], **TOL)  # the input's gradient
    # parameters: the gradient of each torch weight is that of the rows it was copied from
    mine = dict(zip([k for k, _ in fast.named_parameters()], got[1:], strict=True))
    mapped = (
        _torch_weights(kind, _Grads(mine), m)
        if kind != "elman_relu"
        else {
            "weight_ih_l0": mine["step.weight"][:, :3],
            "weight_hh_l0": mine["step.weight"][:, 3:],
            "bias_ih_l0": mine["step.bias"],
        }
    )
    for key, grad in zip(names, expected[1:], strict=True):
        if key == "bias_hh_l0" and kind != "gru":
            continue  # torch's second bias, zero here: its gradient is the first's
        if key == "bias_hh_l0":
            grad, mapped[key] = grad[2 * m :], mapped[key][2 * m :]
        torch.testing.assert_close(mapped[key], grad, **TOL)


class _Grads:
    """Gradients named as parameters, for :func:`_torch_weights`."""

    def __init__(self, grads: dict[str, torch.Tensor]) -> None:
        self.grads = grads

    def named_parameters(self):
        return self.grads.items()


# --- machines that use cells as edges ---


GRU2 = """
import std.recurrent
machine GRU2(n: int = 3, m: int = 5) over t {
    input  x  : n
    space  h1 : m
    output h2 : m
    lower : x -> h1  = GRU(n=n, m=m)
    upper : h1 -> h2 = GRU(n=m, m=m)
}
"""


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("examples/bilstm.mach", "BiLSTM"),
        ("examples/std_tour.mach", "SequenceNet"),
        ("gru2", "GRU2"),
    ],
)
def test_machines_using_cells_as_edges(tmp_path: Path, path: str, name: str) -> None:
    if path == "gru2":
        (tmp_path / "gru2.mach").write_text(GRU2, encoding="utf-8")
        path = tmp_path / "gru2.mach"
    else:
        path = ROOT / path
    assert "runtime.cell(" in machc.compile_file(path)
    torch.manual_seed(0)
    fast = getattr(machc.load(path), name)().double()
    slow = getattr(machc.load(path, rewrites=()), name)().double()
    slow.load_state_dict(fast.state_dict())
    _compare(fast, slow, {})
    _compare(fast, slow, {"lengths": torch.tensor([9, 2, 5, 1])})
    if fast.CAUSAL:
        _compare(fast, slow, {"return_state": True, "lengths": torch.tensor([9, 2, 5, 1])})


def test_two_chained_grus_are_torch_nn_gru_with_two_layers(tmp_path: Path) -> None:
    (tmp_path / "gru2.mach").write_text(GRU2, encoding="utf-8")
    torch.manual_seed(0)
    fast = machc.load(tmp_path / "gru2.mach").GRU2().double()
    reference = nn.GRU(3, 5, num_layers=2, batch_first=True).double()
    p = dict(fast.named_parameters())
    with torch.no_grad():
        for layer, edge in enumerate(("lower", "upper")):
            n = 3 if layer == 0 else 5
            getattr(reference, f"weight_ih_l{layer}").copy_(
                torch.cat([p[f"{edge}.gates.weight"][:, :n], p[f"{edge}.read.weight"]])
            )
            getattr(reference, f"weight_hh_l{layer}").copy_(
                torch.cat([p[f"{edge}.gates.weight"][:, n:], p[f"{edge}.recall.weight"]])
            )
            getattr(reference, f"bias_ih_l{layer}").copy_(
                torch.cat([p[f"{edge}.gates.bias"], p[f"{edge}.read.bias"]])
            )
            getattr(reference, f"bias_hh_l{layer}").copy_(
                torch.cat([torch.zeros(10, dtype=torch.float64), p[f"{edge}.recall.bias"]])
            )
    x = torch.randn(4, 9, 3, dtype=torch.float64, requires_grad=True)
    y, want = fast(x), reference(x)[0]
    torch.testing.assert_close(y, want, **TOL)
    (got,) = torch.autograd.grad(y.square().sum(), [x])
    (expected,) = torch.autograd.grad(want.square().sum(), [x])
    torch.testing.assert_close(got, expected, **TOL)


# --- what is not a cell ---

NEAR_MISSES = {
    "sigmoid": USER["elman_tanh"].replace("linear | tanh", "linear | sigmoid"),
    "delay 2": USER["elman_tanh"].replace("s[t-dir]", "s[t-2]"),
    "spectral norm": USER["elman_tanh"].replace(
        "linear | tanh", "linear(spectral_norm=true) | tanh"
    ),
    "two writers": USER["elman_tanh"].replace(
        "    out  :", "    skip : u -> s = linear\n    out  :"
    ),
    "extra op": USER["elman_tanh"].replace("linear | tanh", "linear | tanh | scale(2)"),
    "memory is an output": USER["lstm"].replace("space  mem", "output mem"),
    "squash by sigmoid": USER["lstm"].replace("mem -> sq = tanh", "mem -> sq = sigmoid"),
    "forget gate by tanh": USER["lstm"].replace(
        "-> fg = linear | sigmoid", "-> fg = linear | tanh"
    ),
    "memory two steps back": USER["lstm"].replace("mem[t-dir]", "mem[t-2]"),
    "peephole": USER["lstm"].replace(
        "    forget :", "    peep : mem[t-dir] -> ig = linear\n    forget :"
    ),
    "a gate read outside": USER["lstm"]
    .replace("output hid : m", "output hid : m\n    output q : m")
    .replace("    emit   :", "    look : og -> q = identity\n    emit   :"),
    "a gate from another input": USER["lstm"].replace(
        "i : a × b × hid[t-dir]", "i : b × a × hid[t-dir]"
    ),
    "half forget": USER["gru"].replace("scale(-1)", "scale(-0.5)"),
    "gru without reset": USER["gru"]
    .replace("    reset  : uu × rr -> aa = mul\n", "")
    .replace("    gr     : x × h[t-dir] -> rr = linear | sigmoid\n", "")
    .replace("space  rr : m\n", "")
    .replace("    recall : h[t-dir] -> uu = linear(bias=false)\n", "")
    .replace("space  uu : m\n", ""),
}


@pytest.mark.parametrize("case", sorted(NEAR_MISSES))
def test_near_misses_keep_the_loop(tmp_path: Path, case: str) -> None:
    code = _code(tmp_path, NEAR_MISSES[case])
    assert "runtime.cell(" not in code
    assert code == _code(tmp_path, NEAR_MISSES[case], rewrites=())


def test_the_generated_code_says_where_it_calls_the_kernel(tmp_path: Path) -> None:
    path = ROOT / "examples" / "lstm.mach"
    fast = machc.compile_file(path)
    plain = machc.compile_file(path, rewrites=())
    assert "is exactly torch.nn.LSTM's cell (gates i, f, g, o: i, fg, g, o)" in fast
    assert "machc compile --no-cells keeps the step loop" in fast
    assert "runtime.cell(" not in plain and "runtime.recur(" in plain
    out = tmp_path / "plain.py"
    run = subprocess.run(
        [sys.executable, "-m", "machc", "compile", path, "--no-cells", "-o", out],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert out.read_text(encoding="utf-8") == plain
    with pytest.raises(ValueError, match=r"no such rewrites: \['fuse'\]"):
        machc.compile_file(path, rewrites=("fuse",))
