"""The rewrite ``regroup``: forward keeps the spaces an edge concatenates, not the
concatenation (compiler/regroup.py, runtime/regroup.py).

Each machine is compiled with every rewrite and without ``regroup``, given the same
weights, and run forward and backward in float64 in training mode: outputs, the
gradients of the inputs and of every parameter, and the buffers (batchnorm's running
statistics, which the backward's recomputation must not move) must agree bitwise. The
memory forward leaves allocated (what autograd keeps, measured by PyTorch's profiler)
must shrink as the cost model says; the edges it leaves alone must print as before.
"""

from __future__ import annotations

import re
import sys
import warnings

import machc
import pytest
import torch
from machc.runtime import loading
from torch import nn

DENSE = """
machine Dense(depth: int = 6, width: int = 256) {
    input  x : 16
    space  h[1..depth] : width
    output y : 10
    for i in 1..depth {
        g[i] : x × h[1..i-1] -> h[i] = linear | relu
    }
    head : h[depth] -> y = linear
}
"""

CONV = """
machine Conv(blocks: int = 5, c: int = 6) {
    input  img : [3, 12, 12]
    space  h[1..blocks] : [c, 12, 12]
    output y : 10
    for i in 1..blocks {
        g[i] : img × h[1..i-1] -> h[i] = conv(3, padding=1) | relu
    }
    head : h[blocks] -> y = global_avg_pool | linear
}
"""

# DenseNet-BC: batchnorm and relu on the concatenation, then a bottleneck 1x1 conv
BC_BLOCK = "batchnorm | relu | conv(1, out=24) | batchnorm | relu | conv(3, padding=1)"
BC = """
machine BC(layers: int = 5, k: int = 6) {
    input  x : [8, 10, 10]
    space  h[1..layers] : [k, 10, 10]
    output y : 10
    for i in 1..layers {
        g[i] : x × h[1..i-1] -> h[i] = BLOCK
    }
    head : h[layers] -> y = global_avg_pool | linear
}
""".replace("BLOCK", BC_BLOCK)

# written without a loop: two readers of one pair, an input read twice, silu and groupnorm
SHAPES = """
machine Shapes {
    input  a : [4, 16, 16]
    input  b : [2, 16, 16]
    space  p : [5, 16, 16]
    space  q : [5, 16, 16]
    output y : [3, 16, 16]
    one : a × b -> p = groupnorm(groups=2) | silu | conv(3, padding=1, stride=1)
    two : a × b × a -> q = linear | tanh
    out : p × q × b -> y = conv([3, 1], padding=[1, 0])
}
"""

MACHINES = {"dense": DENSE, "conv": CONV, "bc": BC, "shapes": SHAPES}


def load(source: str, name: str, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", machc.MachcWarning)
        code = machc.compile_source(source, f"{name}.mach", **options)
    module = loading.module_from_source(loading.module_name(name, code), f"{name}.py", code)
    cls = re.findall(r"^class (\w+)\(nn\.Module\)", code, re.M)[-1]
    return code, getattr(module, cls)


def pair(name: str, **options):
    """(code with regroup, model with regroup, model without), the same weights."""
    source = MACHINES[name]
    code, with_cls = load(source, name, **options)
    _, without_cls = load(source, name + "_plain", rewrites=("cells",), **options)
    torch.manual_seed(0)
    regrouped = with_cls().double()
    plain = without_cls().double()
    plain.load_state_dict(regrouped.state_dict())
    return code, regrouped, plain


def run(model: nn.Module, inputs):
    inputs = [x.detach().clone().requires_grad_() for x in inputs]
    out = model(*inputs)
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    return out, [x.grad for x in inputs]


def same_step(regrouped: nn.Module, plain: nn.Module, inputs) -> None:
    """A training step of each gives bitwise the same outputs, gradients (of the inputs
    and the parameters; None alike for a frozen one) and buffers."""
    out_r, grads_r = run(regrouped.train(), inputs)
    out_p, grads_p = run(plain.train(), inputs)
    assert torch.equal(out_r, out_p)
    for a, b in zip(grads_r, grads_p, strict=True):
        assert torch.equal(a, b)
    for (key, p), q in zip(regrouped.named_parameters(), plain.parameters(), strict=True):
        assert (p.grad is None and q.grad is None) or torch.equal(p.grad, q.grad), key
    for (key, p), q in zip(regrouped.named_buffers(), plain.buffers(), strict=True):
        assert torch.equal(p, q), key


@pytest.mark.parametrize("expand", [False, True], ids=["kept", "expanded"])
@pytest.mark.parametrize("name", sorted(MACHINES))
def test_regroup_computes_what_the_plain_form_computes(name: str, expand: bool) -> None:
    code, regrouped, plain = pair(name, expand_loops=expand)
    assert "runtime.regroup(" in code and "# machc: regroup:" in code
    torch.manual_seed(1)
    inputs = [x.double() for x in regrouped.example_inputs(batch=3)]
    for _ in range(2):  # twice: the running statistics after one step feed the next
        same_step(regrouped, plain, inputs)
        regrouped.zero_grad()
        plain.zero_grad()
    with torch.no_grad():  # eval: no gradients, the plain form itself
        assert torch.equal(regrouped.eval()(*inputs), plain.eval()(*inputs))


def test_regroup_only_changes_forward() -> None:
    code = machc.compile_source(DENSE, "dense.mach")
    forward, rest = code.split("    def f(", 1)
    assert forward.count("runtime.regroup(") == 1  # one statement in the loop
    assert "runtime.regroup(" not in rest  # f, the resolvent and the adjoint as before
    plain_code = machc.compile_source(DENSE, "dense.mach", rewrites=("cells",))
    # the linear edges of a dense block share one concatenation, as wide as the widest
    widest = 16 + 5 * 256
    assert plain_code == code.replace(
        "        # machc: regroup: linear edges on vectors append their spaces to concatenations\n"
        "        # they share: each space is copied once, not once per edge (--no-regroup)\n"
        "        columns = runtime.Columns()\n",
        "",
    ).replace(
        f"            # machc: regroup: appends to a concatenation columns holds ({widest} wide)\n",
        "",
    ).replace(
        "runtime.regroup(self.g[str(i)], [x, *[h[j] for j in range(1, i)]], shared=columns, "
        f"width={widest})",
        "self.g[str(i)](torch.cat([x, *[h[j] for j in range(1, i)]], dim=1))",
    )


def test_double_backward_reaches_the_spaces() -> None:
    # a gradient penalty differentiates the gradient: the recomputed concatenation
    # carries its graph then
    _, regrouped, plain = pair("bc")
    torch.manual_seed(2)
    (x,) = [x.double() for x in regrouped.example_inputs(batch=2)]
    penalties = []
    for model in (regrouped, plain):
        xx = x.clone().requires_grad_()
        (g,) = torch.autograd.grad(model.train()(xx).pow(2).sum(), xx, create_graph=True)
        grads = torch.autograd.grad(g.pow(2).sum(), [xx, *model.parameters()])
        penalties.append(grads)
    for a, b in zip(*penalties, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def kept_bytes(model: nn.Module, inputs) -> int:
    """What forward leaves allocated: what autograd keeps for the backward, and the
    output (PyTorch's profiler counts every allocation and free of the CPU)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = model(*inputs)
    del out
    return sum(e.self_cpu_memory_usage for e in prof.events())


def test_regroup_keeps_memory_linear_in_depth() -> None:
    kept = {}
    for depth in (8, 16):
        source = DENSE.replace("depth: int = 6", f"depth: int = {depth}")
        _, with_cls = load(source, f"dense_{depth}")
        _, without_cls = load(source, f"dense_{depth}_plain", rewrites=())
        x = torch.randn(64, 16)
        for key, cls in (("regroup", with_cls), ("plain", without_cls)):
            torch.manual_seed(0)
            kept[key, depth] = kept_bytes(cls().train(), [x])
    # plain: the concatenations grow as depth squared (4x from 8 to 16)
    assert kept["plain", 16] > 3.5 * kept["plain", 8]
    # regrouped: the spaces, twice as many (plus the parts of the layers' own outputs)
    assert kept["regroup", 16] < 2.5 * kept["regroup", 8]
    assert kept["regroup", 16] < 0.3 * kept["plain", 16]


def test_regroup_steps_aside_for_users_hooks_and_tracers() -> None:
    from torch.utils.checkpoint import checkpoint

    _, regrouped, plain = pair("conv")
    torch.manual_seed(3)
    (x,) = [x.double() for x in regrouped.example_inputs(batch=2)]
    # inside torch.utils.checkpoint (saved-tensor hooks of its own): the plain form
    for model in (regrouped, plain):
        out = checkpoint(model.train(), x.clone().requires_grad_(), use_reentrant=False)
        out.sum().backward()
    for p, q in zip(regrouped.parameters(), plain.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad)
    # torch.func: its transforms turn saved-tensor hooks off; the plain form runs
    g_r = torch.func.grad(lambda t: regrouped(t).sum())(x)
    g_p = torch.func.grad(lambda t: plain(t).sum())(x)
    assert torch.equal(g_r, g_p)


def test_small_or_unsuited_edges_are_left_alone() -> None:
    def regroups(source: str) -> bool:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", machc.MachcWarning)
            return "runtime.regroup(" in machc.compile_source(source, "m.mach")

    # below MIN_NUMBERS numbers per sample: 16 + 3 * 32 < 1024
    assert not regroups(DENSE.replace("width: int = 256", "width: int = 32"))
    # dropout on the concatenation draws random masks: not run again
    assert not regroups(
        CONV.replace("conv(3, padding=1) | relu", "dropout(0.1) | conv(3, padding=1)")
    )
    # combined by add, not concatenated
    assert not regroups(
        """
machine Add {
    input a : [64, 8, 8]
    input b : [64, 8, 8]
    output y : [4, 8, 8]
    e : a × b -> y = add | conv(3, padding=1)
}
"""
    )
    # padding the layer does not do itself (F.pad first), or not with zeros
    assert not regroups(CONV.replace("conv(3, padding=1)", "conv(3, padding=[[1, 1], [0, 2]])"))
    assert not regroups(
        CONV.replace("conv(3, padding=1)", 'conv(3, padding=1, padding_mode="reflect")')
    )


def test_cli_no_regroup(tmp_path) -> None:
    from machc.cli import main

    source = tmp_path / "conv.mach"
    source.write_text(CONV)
    assert main(["compile", str(source), "-o", str(tmp_path / "a.py")]) == 0
    assert main(["compile", str(source), "--no-regroup", "-o", str(tmp_path / "b.py")]) == 0
    assert "runtime.regroup(" in (tmp_path / "a.py").read_text()
    assert "runtime.regroup(" not in (tmp_path / "b.py").read_text()


# one edge, batchnorm and relu on two inputs (from a review of the rewrite)
PAIR = """
machine Pair {
    input  a : [16, 8, 8]
    input  b : [16, 8, 8]
    output y : [8, 8, 8]
    e : a × b -> y = batchnorm | relu | conv(3, padding=1)
}
"""
MACHINES["pair"] = PAIR


def grads_after(model: nn.Module, between, inputs) -> list[torch.Tensor]:
    """Input and parameter gradients of a train-mode forward, ``between(model)`` run
    after it and before its backward."""
    model.train().zero_grad()
    a, b = (x.detach().clone().requires_grad_() for x in inputs)
    out = model(a, b)
    between(model)
    out.sum().backward()
    return [a.grad, b.grad, *(p.grad for p in model.parameters())]


def test_the_backward_reruns_the_prefix_as_the_forward_ran_it() -> None:
    _, regrouped, plain = pair("pair")
    torch.manual_seed(4)
    inputs = [x.double() for x in regrouped.example_inputs(batch=3)]
    # eval() between forward and backward: batchnorm runs again in training mode
    for a, b in zip(
        grads_after(regrouped, nn.Module.eval, inputs),
        grads_after(plain, nn.Module.eval, inputs),
        strict=True,
    ):
        assert torch.equal(a, b)
    for p, q in zip(regrouped.buffers(), plain.buffers(), strict=True):
        assert torch.equal(p, q)


# -- batchnorm's output made again from the forward's batch statistics --

REGROUP_RUNTIME = sys.modules["machc.runtime.regroup"]


def refuse_to_run_modules_again(monkeypatch) -> None:
    def refused(module, training, x):
        raise AssertionError(f"{type(module).__name__} ran again in the backward")

    monkeypatch.setattr(REGROUP_RUNTIME, "_as_it_ran", refused)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_the_backward_does_not_compute_batch_statistics_again(monkeypatch, dtype) -> None:
    # DenseNet-BC: batchnorm | relu | conv on the concatenation; the backward makes the
    # batchnorm's output again from the mean and invstd the forward computed (the module
    # itself never runs again), bitwise what it made then; relu then runs in place on it
    _, regrouped, plain = pair("bc")
    regrouped.to(dtype)
    plain.to(dtype)
    refuse_to_run_modules_again(monkeypatch)
    in_place = []

    def relu_(x):
        in_place.append(x.shape)
        return torch.relu_(x)

    monkeypatch.setattr(REGROUP_RUNTIME, "_IN_PLACE", {torch.relu: relu_})
    torch.manual_seed(7)
    inputs = [x.to(dtype) for x in regrouped.example_inputs(batch=3)]
    for _ in range(2):
        same_step(regrouped, plain, inputs)
        regrouped.zero_grad()
        plain.zero_grad()
    assert len(in_place) == 2 * 5  # each layer's relu, in each backward


def test_a_hooked_or_double_differentiated_batchnorm_runs_again(monkeypatch) -> None:
    # a forward hook on the batchnorm fires again in the backward, as documented; a
    # backward with create_graph=True differentiates through the statistics: the module
    # runs again in both cases
    _, regrouped, _ = pair("pair")
    torch.manual_seed(8)
    a, b = (x.double().requires_grad_() for x in regrouped.example_inputs(batch=2))
    seen = []
    handle = regrouped.e[0].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    regrouped.train()(a, b).sum().backward()
    handle.remove()
    assert len(seen) == 2  # the forward, and the backward's making it again
    refuse_to_run_modules_again(monkeypatch)
    out = regrouped(a, b).sum()
    with pytest.raises(AssertionError, match="BatchNorm2d ran again"):
        torch.autograd.grad(out, [a], create_graph=True)


@pytest.mark.parametrize(
    "shape, layout, affine, eps",
    [
        ((4, 6), torch.contiguous_format, True, 1e-5),
        ((3, 5, 7), torch.contiguous_format, False, 1e-3),
        ((2, 9, 5, 4), torch.contiguous_format, True, 1e-5),
        ((2, 9, 5, 4), torch.channels_last, True, 0.1),
        ((2, 3, 4, 3, 2), torch.channels_last_3d, False, 1e-8),
    ],
)
def test_normalized_is_what_training_mode_made(shape, layout, affine, eps) -> None:
    kind = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}
    torch.manual_seed(9)
    for dtype in (torch.float32, torch.float64):
        norm = kind[len(shape)](shape[1], eps=eps, affine=affine).to(dtype)
        if affine:
            with torch.no_grad():
                norm.weight.normal_()
                norm.bias.normal_()
        scales = torch.logspace(-4, 4, shape[1], dtype=dtype).view(-1, *[1] * (len(shape) - 2))
        x = (torch.randn(shape, dtype=dtype) * scales + 3).contiguous(memory_format=layout)
        x[:, 0] = 2.5  # a channel without variance
        made = norm(x)
        _, mean, invstd, *_ = torch.ops.aten.native_batch_norm(
            x, norm.weight, norm.bias, None, None, True, 0.1, eps
        )
        with torch.no_grad():
            again = REGROUP_RUNTIME._normalized(norm, x, mean, invstd, eps)
        assert torch.equal(again, made), (dtype, layout)


def test_a_space_changed_in_place_before_the_backward_is_refused() -> None:
    # autograd keeps no concatenation any more: a part changed in place would change the
    # gradients silently; it is refused as autograd refuses a changed saved tensor
    _, regrouped, _ = pair("pair")
    torch.manual_seed(5)
    inputs = [x.double() for x in regrouped.example_inputs(batch=2)]

    a, b = (x.detach().clone().requires_grad_() for x in inputs)
    b_leaf = b.detach().clone()
    out = regrouped.train()(a, b_leaf)
    b_leaf.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation.*--no-regroup"):
        out.sum().backward()
    # a parameter changed in place (an optimizer step before the backward): refused as
    # the plain form refuses it
    out = regrouped.train()(a, b)
    with torch.no_grad():
        regrouped.e[1].weight.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


@pytest.mark.parametrize("transform", ["vmap", "jvp", "forward_ad", "fx", "autocast"])
def test_regroup_under_transforms_is_the_plain_form(transform: str) -> None:
    import torch.autograd.forward_ad as fwAD

    _, regrouped, plain = pair("pair")
    regrouped.float()
    plain.float()
    torch.manual_seed(6)
    a, b = regrouped.example_inputs(batch=3)

    def apply(model):
        model.eval()
        if transform == "vmap":
            return torch.func.vmap(lambda p, q: model(p[None], q[None])[0])(a, b)
        if transform == "jvp":
            return torch.func.jvp(lambda p: model(p, b), (a,), (torch.ones_like(a),))[1]
        if transform == "forward_ad":
            with fwAD.dual_level():
                out = model(fwAD.make_dual(a.clone().requires_grad_(), torch.ones_like(a)), b)
                return fwAD.unpack_dual(out).tangent
        if transform == "fx":
            return torch.fx.symbolic_trace(model)(a, b)
        model.train()  # autocast: the backward reruns the prefix under it too
        aa = a.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(aa, b)
        out.float().sum().backward()
        return aa.grad

    assert torch.equal(apply(regrouped), apply(plain))


# linear edges on vectors: the edges of a forward append to one shared concatenation.
# Written out: an edge without bias, one whose spaces extend another's (appends), one that
# starts from another space (a buffer of its own), one that reads a space twice; a space
# named as forward's local for the concatenations.
VECTORS = """
machine Vectors {
    input  a : 1000
    input  b : 24
    space  p : 32
    space  q : 32
    space  columns : 16
    output y : 8
    one   : a × b -> p = linear(bias=false) | relu
    two   : a × b × p -> q = linear | tanh
    three : q × a -> columns = linear | relu
    four  : a × b × a × columns -> y = linear
}
"""
MACHINES["vectors"] = VECTORS


def test_linear_edges_of_vectors_share_one_concatenation() -> None:
    code, regrouped, plain = pair("vectors")
    # the widest concatenation of the edges that start from a (four: 2,040 columns)
    assert code.count("width=2040)") == 3 and code.count("width=1032)") == 1
    torch.manual_seed(7)
    inputs = [x.double() for x in regrouped.example_inputs(batch=5)]
    for model in (regrouped, plain):
        model.one.weight.requires_grad_(False)  # a frozen layer
    same_step(regrouped, plain, inputs)


def dense_grads(model: nn.Module, xs, between=None) -> list[torch.Tensor]:
    """Input and parameter gradients of forwards on each of ``xs`` (all run before any
    backward), ``between()`` run after the forwards."""
    model.train().zero_grad()
    leaves = [x.detach().clone().requires_grad_() for x in xs]
    outs = [model(x) for x in leaves]
    if between is not None:
        between(leaves)
    for out in reversed(outs):  # the last forward's backward first
        out.sum().backward()
    return [*(x.grad for x in leaves), *(p.grad for p in model.parameters())]


def test_shared_concatenations_of_interleaved_forwards_stay_apart() -> None:
    _, regrouped, plain = pair("dense")
    torch.manual_seed(8)
    xs = [torch.randn(4, 16, dtype=torch.float64) for _ in range(3)]
    for a, b in zip(dense_grads(regrouped, xs), dense_grads(plain, xs), strict=True):
        assert torch.equal(a, b)
    # the same input twice: the second forward may share the first one's buffer
    for a, b in zip(
        dense_grads(regrouped, [xs[0], xs[0]]), dense_grads(plain, [xs[0], xs[0]]), strict=True
    ):
        assert torch.equal(a, b)


def test_an_input_changed_in_place_after_the_forward_is_as_in_the_plain_form() -> None:
    # the shared concatenation is a copy, as the plain form's concatenation is: changing
    # the input after the forward changes no gradient (the layers' inputs were copied)
    _, regrouped, plain = pair("dense")
    torch.manual_seed(9)
    xs = [torch.randn(4, 16, dtype=torch.float64)]

    def double(leaves):
        with torch.no_grad():
            leaves[0].mul_(2)

    for a, b in zip(
        dense_grads(regrouped, xs, double), dense_grads(plain, xs, double), strict=True
    ):
        assert torch.equal(a, b)


def test_double_backward_through_a_shared_concatenation() -> None:
    _, regrouped, plain = pair("dense")
    torch.manual_seed(10)
    x = torch.randn(3, 16, dtype=torch.float64)
    penalties = []
    for model in (regrouped, plain):
        xx = x.clone().requires_grad_()
        (g,) = torch.autograd.grad(model.train()(xx).pow(2).sum(), xx, create_graph=True)
        penalties.append(torch.autograd.grad(g.pow(2).sum(), [xx, *model.parameters()]))
    for a, b in zip(*penalties, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("transform", ["vmap", "forward_ad", "autocast", "hook", "fx", "export"])
def test_shared_concatenation_steps_aside(transform: str) -> None:
    import torch.autograd.forward_ad as fwAD

    _, regrouped, plain = pair("dense")
    regrouped.float()
    plain.float()
    torch.manual_seed(11)
    x = torch.randn(3, 16)

    def apply(model):
        if transform == "vmap":
            return torch.func.vmap(lambda p: model(p[None])[0])(x)
        if transform == "forward_ad":
            with fwAD.dual_level():
                out = model(fwAD.make_dual(x.clone().requires_grad_(), torch.ones_like(x)))
                return fwAD.unpack_dual(out).tangent
        if transform == "fx":
            return torch.fx.symbolic_trace(model)(x)
        if transform == "export":
            return torch.export.export(model, (x,)).module()(x)
        xx = x.clone().requires_grad_()
        if transform == "autocast":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(xx)
        else:  # a forward hook on a layer: called, so the hook runs
            seen = []
            handle = model.g["3"].register_forward_hook(lambda m, i, o: seen.append(o.shape))
            out = model(xx)
            handle.remove()
            assert seen == [torch.Size([3, 256])]
        out.float().sum().backward()
        return xx.grad

    assert torch.equal(apply(regrouped), apply(plain))


def test_a_machine_with_a_sub_machine_edge_shares_concatenations() -> None:
    # (fuzzer, seed 59: the pass read the shapes of every edge, and a sub-machine edge
    # has none)
    source = """
machine Unit {
    input  x : 24
    output y : 16
    e : x -> y = linear | relu
}
machine Outer {
    input  a : 1000
    input  b : 24
    space  u : 16
    output y : 8
    sub : b -> u = Unit
    one : a × b × u -> y = linear
}
"""
    code, cls = load(source, "outer")
    assert "shared=columns, width=1040)" in code
    _, plain_cls = load(source, "outer_plain", rewrites=())
    torch.manual_seed(12)
    model, plain = cls().double(), plain_cls().double()
    plain.load_state_dict(model.state_dict())
    same_step(model, plain, [x.double() for x in model.example_inputs(batch=2)])
