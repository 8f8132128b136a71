"""Loops of the source kept as loops in generated code (``compiler/loops.py``,
``compiler/lower_loops.py``).

A kept loop must compute exactly what its expanded edges compute: every machine
here is compiled both ways (``expand_loops=True`` is the form the differential
test holds to the machine's definition), the weights are copied from one to the
other (``g.3.weight`` is ``g_3.weight``), and ``forward``, every gradient, ``f``,
the resolvent and the adjoint must agree bitwise in float64. The resolvent must
also equal the naive iteration of ``x <- f(x) + x0``. Loops that do not fit (a
read of a later pass, an ``if`` that changes the body, sizes that are not affine)
must stay expanded, and still be right.
"""

from __future__ import annotations

import re
import subprocess
import sys
import warnings

import machc
import pytest
import torch
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from machc.runtime import loading
from torch import nn

KEPT = {
    "chain": """
machine Chain(n: int = 9) {
    input x : 4
    space h[1..n] : 4
    output y : 3
    first : x -> h[1] = linear
    for i in 2..n {
        e[i] : h[i-1] -> h[i] = linear | tanh
    }
    last : h[n] -> y = linear
}
""",
    "dense": """
machine Dense(depth: int = 10, width: int = 6) {
    input x : 5
    space h[1..depth] : width
    output y : 3
    for i in 1..depth {
        g[i] : x × h[1..i-1] -> h[i] = linear | relu
    }
    head : h[1..depth] -> y = linear
}
""",
    "wide": """
machine Wide(n: int = 7) {
    input x : 4
    space h[1..n] : 3
    output y : 3
    for i in 1..n {
        e[i] : x -> y = linear | tanh
        s[i] : x -> h[i] = linear
    }
}
""",
    # two statements a pass, a space of the pass read by the next statement, a space two
    # statements write (summed in the pass), a read two passes back, and dropout
    "two_statements": """
machine Two(n: int = 6) {
    input x : 4
    space h[0..n] : 5
    space u[2..n] : 5
    output y : 2
    start : x -> h[0] = linear
    one : x -> h[1] = linear
    for i in 2..n {
        a[i] : h[i-1] × h[i-2] -> u[i] = linear | relu | dropout(0.5)
        b[i] : u[i] -> h[i] = linear
        c[i] : h[i-1] × x -> h[i] = linear | tanh
    }
    head : h[n] × u[n] -> y = linear
}
""",
    # every other space, a pipeline cut in statements, convolutions whose channels grow
    "strided_conv": """
machine Strided(n: int = 4) {
    input img : [2, 6, 6]
    space h[0..2*n] : [3, 6, 6]
    output y : 2
    stem : img -> h[0] = conv(3, padding=1)
    for k in 1..n {
        blk[2*k] : h[2*k-2] × img -> h[2*k] =
            conv(3, out=3 + k, padding=1) | batchnorm | relu | conv(1) | tanh
    }
    for k in 0..n-1 {
        odd[2*k+1] : h[2*k] -> h[2*k+1] = scale(0.5)
    }
    head : h[2*n] × h[2*n-1] -> y = global_avg_pool | linear
}
""",
    # a machine used as an edge on every pass
    "blocks": """
machine Block(c: int = 4) {
    input a : c
    output b : c
    f : a -> b = linear | relu
    skip : a -> b = identity
}
machine Stack(n: int = 5) {
    input x : 4
    space h[0..n] : 4
    output y : 4
    first : x -> h[0] = identity
    for i in 1..n {
        blk[i] : h[i-1] -> h[i] = Block(c=4)
    }
    last : h[n] -> y = linear
}
""",
    # one edge writes two items of one array a pass (the resolvent's sums too)
    "two_outputs": """
machine M {
    input x : 3
    space h[0..7] : 3
    output y : 3
    h0 : x -> h[0] = linear
    h1 : x -> h[1] = linear
    for i in 1..3 {
        e[i] : h[2*i-2] × h[2*i-1] -> h[2*i] × h[2*i+1] = linear | tanh
    }
    out : h[7] × h[6] -> y = linear
}
""",
    # two statements write the same two items a pass: summed
    "two_writers_of_two_outputs": """
machine M {
    input x : 3
    space h[2..7] : 3
    output y : 3
    for i in 1..3 {
        a[i] : x -> h[2*i] × h[2*i+1] = linear
        b[i] : x -> h[2*i] × h[2*i+1] = linear | tanh
    }
    out : h[7] × h[6] -> y = linear
}
""",
    # an array named like the variables of comprehensions (more than 8 items)
    "an_array_named_k": """
machine M {
    input x : 3
    space k[0..10] : 3
    output y : 3
    first : x -> k[0] = linear
    for i in 1..10 {
        e[i] : k[i-1] -> k[i] = linear
    }
    out : k[10] -> y = linear
}
""",
    # a statement named like a private attribute of nn.Module
    "private_name": """
machine M {
    input x : 3
    space h[0..3] : 3
    output y : 3
    first : x -> h[0] = linear
    for i in 1..3 {
        _modules[i] : h[i-1] -> h[i] = linear
    }
    out : h[3] -> y = linear
}
""",
}

# loops that must stay expanded (and still be right)
EXPANDED = {
    # a first add whose inputs' ranks differ on some passes
    "broadcast_on_some_passes": """
machine M {
    input x : [3, 4, 4]
    space b[1..2] : [3, 4, 4]
    space b[3..4] : 3
    space h[0..4] : [3, 4, 4]
    output y : [3, 4, 4]
    first : x -> h[0] = identity
    b1 : x -> b[1] = identity
    b2 : x -> b[2] = relu
    b3 : x -> b[3] = global_avg_pool
    b4 : x -> b[4] = global_max_pool
    for i in 1..4 {
        e[i] : h[i-1] × b[i] -> h[i] = add | tanh
    }
    out : h[4] -> y = identity
}
""",
    # two statements write one item on one pass with indices of different forms
    "forms_that_meet": """
machine M {
    input x : 3
    space h[2..6] : 3
    output y : 3
    for i in 1..3 {
        a[i] : x -> h[i+3] = linear
        b[i] : x -> h[5-i] = linear
    }
    out : h[2..6] -> y = linear
}
""",
    # a space the loop adds to on every pass that an edge outside the loop writes too
    "wide_and_bias": """
machine Wide(n: int = 7) {
    input x : 4
    output y : 3
    for i in 1..n {
        e[i] : x -> y = linear | tanh
    }
    bias : x -> y = linear
}
""",
    # a pass reads what a later pass writes
    "backward": """
machine Back(n: int = 5) {
    input x : 3
    space h[1..n+1] : 3
    output y : 3
    top : x -> h[n+1] = linear
    for i in 1..n {
        e[i] : h[i+1] -> h[i] = linear
    }
    out : h[1] -> y = linear
}
""",
    # an if that makes the passes unlike
    "alternating": """
machine Alt(n: int = 6) {
    input x : 3
    space h[0..n] : 3
    output y : 3
    first : x -> h[0] = identity
    for i in 1..n {
        if i % 2 == 0 {
            e[i] : h[i-1] -> h[i] = linear | relu
        } else {
            e[i] : h[i-1] -> h[i] = linear | tanh
        }
    }
    out : h[n] -> y = linear
}
""",
    # sizes that are not affine in the loop variable
    "squares": """
machine Sq(n: int = 4) {
    input x : 2
    output y : 2
    space h[1..n] : 3
    for i in 1..n {
        e[i] : x -> h[i] = linear(out=i*i) | relu | linear
    }
    r : h[1..n] -> y = linear
}
""",
    # too few passes to read better as a loop
    "short": """
machine Short {
    input x : 3
    space h[1..2] : 3
    output y : 3
    for i in 1..2 {
        e[i] : x -> h[i] = linear
    }
    out : h[1] × h[2] -> y = linear
}
""",
}


def load(source: str, name: str, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", machc.MachcWarning)
        code = machc.compile_source(source, f"{name}.mach", **options)
    module = loading.module_from_source(loading.module_name(name, code), f"{name}.py", code)
    return code, module


def expanded_key(kept: nn.Module, key: str) -> str:
    """The expanded form's name of a kept form's parameter: ``g.3.weight`` is
    ``g_3.weight``, ``a_dropout.3`` is ``a_3_dropout``."""
    first, _, rest = key.partition(".")
    if isinstance(getattr(kept, first, None), nn.ModuleDict):
        index, _, tail = rest.partition(".")
        match = re.fullmatch(r"(.+)_(dropout|channel_dropout)", first)
        if match:
            return f"{match.group(1)}_{index}_{match.group(2)}" + (f".{tail}" if tail else "")
        return f"{first}_{index}" + (f".{tail}" if tail else "")
    return key


def pair(source: str, name: str):
    """(kept code, kept model, expanded model) of the file's last machine, same weights."""
    kept_code, kept_module = load(source, name)
    _, expanded_module = load(source, name + "_expanded", expand_loops=True)
    cls = re.findall(r"^class (\w+)\(nn\.Module\)", kept_code, re.M)[-1]
    torch.manual_seed(0)
    kept = getattr(kept_module, cls)().double()
    expanded = getattr(expanded_module, cls)().double()
    state = kept.state_dict()
    mapped = {expanded_key(kept, k): v for k, v in state.items()}
    assert set(mapped) == set(expanded.state_dict()), (
        sorted(mapped),
        sorted(expanded.state_dict()),
    )
    for key, value in mapped.items():  # random values: running statistics too
        if key.endswith("running_var"):
            value.copy_(torch.rand_like(value) + 0.5)
        elif value.is_floating_point():
            value.copy_(torch.randn_like(value))
    expanded.load_state_dict(mapped)
    kept.load_state_dict({k: mapped[expanded_key(kept, k)] for k in state})
    return kept_code, kept, expanded


def random_state(model: nn.Module, batch: int = 3) -> dict[str, torch.Tensor]:
    return {
        name: torch.randn(batch, *shape, dtype=torch.float64)
        for name, shape in model.SPACES.items()
    }


def naive_resolvent(model: nn.Module, x0: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """x <- f(x) + x0 until it stops changing (a machine without cycles: after its depth)."""
    x = dict(x0)
    for _ in range(len(model.SPACES) + 2):
        fx = model.f(x)
        x = {k: fx[k] + x0[k] for k in x0}
    return x


def agree(kept: nn.Module, expanded: nn.Module, train: bool) -> None:
    kept.train(train)
    expanded.train(train)
    inputs = [torch.randn(3, *kept.SPACES[n], dtype=torch.float64) for n in kept.INPUTS]
    torch.manual_seed(1)  # dropout draws the same masks in the same order
    out_k = kept(*[t.clone().requires_grad_() for t in inputs])
    torch.manual_seed(1)
    out_e = expanded(*[t.clone().requires_grad_() for t in inputs])
    assert torch.equal(out_k, out_e)
    out_k.square().sum().backward()
    out_e.square().sum().backward()
    grads_e = dict(expanded.named_parameters())
    for key, param in kept.named_parameters():
        other = grads_e[expanded_key(kept, key)].grad
        assert (param.grad is None and other is None) or torch.equal(param.grad, other), key
    if train:
        return
    state = random_state(kept)
    with torch.no_grad():
        for method in ("f", "resolvent"):
            a, b = getattr(kept, method)(state), getattr(expanded, method)(state)
            assert list(a) == list(b) == list(kept.SPACES)
            for k in a:
                assert torch.equal(a[k], b[k]), (method, k)
        resolved = kept.resolvent(state)
        for k, v in naive_resolvent(kept, state).items():
            torch.testing.assert_close(resolved[k], v, rtol=1e-12, atol=1e-12)
    cotangent = random_state(kept)
    a, b = kept.adjoint(state, cotangent), expanded.adjoint(state, cotangent)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("name", sorted(KEPT))
def test_kept_loop_computes_what_its_edges_compute(name: str) -> None:
    code, kept, expanded = pair(KEPT[name], name)
    assert re.search(r"^        for \w+ in range\(", code, re.M), code  # forward has a loop
    assert "nn.ModuleDict(" in code
    for train in (False, True):
        agree(kept, expanded, train)


@pytest.mark.parametrize("name", sorted(KEPT))
def test_checkpoints_load_across_the_two_layouts(name: str) -> None:
    # a checkpoint of the written-out layout (g_3.weight: --expand-loops, or machc before
    # loops were kept) loads into the kept one (g.3.weight), and the other way round
    _, kept, expanded = pair(KEPT[name], name)
    fresh_kept = type(kept)().double()
    fresh_expanded = type(expanded)().double()
    fresh_kept.load_state_dict(expanded.state_dict())
    fresh_expanded.load_state_dict(kept.state_dict())
    for model, reference in ((fresh_kept, kept), (fresh_expanded, expanded)):
        for (key, value), (_, expected) in zip(
            model.state_dict().items(), reference.state_dict().items(), strict=True
        ):
            assert torch.equal(value, expected), key


def test_checkpoints_across_layouts_of_a_machine_used_as_an_edge() -> None:
    import io

    source = (
        KEPT["dense"]
        + """
machine Outer {
    input  x : 5
    output y : 3
    inner : x -> y = Dense
}
"""
    )
    _, kept_module = load(source, "outer")
    _, expanded_module = load(source, "outer_expanded", expand_loops=True)
    torch.manual_seed(0)
    kept, expanded = kept_module.Outer(), expanded_module.Outer()
    assert any(k.startswith("inner.g.") for k in kept.state_dict())
    kept.load_state_dict(expanded.state_dict())  # inner.g_2.weight -> inner.g.2.weight
    x = torch.randn(4, 5)
    assert torch.equal(kept(x), expanded(x))
    # the hook goes with the module: pickled and loaded again, it still renames
    buffer = io.BytesIO()
    torch.save(kept, buffer)
    buffer.seek(0)
    again = torch.load(buffer, weights_only=False)
    again.load_state_dict(expanded.state_dict())
    # a key of neither layout is still an error
    state = expanded.state_dict()
    state["inner.g_99.weight"] = state.pop("inner.g_2.weight")
    with pytest.raises(RuntimeError, match="inner.g_99.weight"):
        kept.load_state_dict(state)


@pytest.mark.parametrize("name", sorted(EXPANDED))
def test_loop_that_does_not_fit_stays_expanded(name: str) -> None:
    code, kept, expanded = pair(EXPANDED[name], name)
    assert "nn.ModuleDict(" not in code
    assert not re.search(r"^        for \w+ in range\(", code, re.M)
    agree(kept, expanded, train=False)


def test_generated_file_grows_with_the_source_not_its_expansion() -> None:
    """A 2,000-pass chain and a 300-block dense machine are a few lines each."""
    chain = KEPT["chain"].replace("n: int = 9", "n: int = 2000")
    dense = KEPT["dense"].replace("depth: int = 10", "depth: int = 300")
    for source, name in ((chain, "chain"), (dense, "dense")):
        code = machc.compile_source(source, f"{name}.mach")
        assert len(code) < 12_000, (name, len(code))
    code, module = load(chain, "chain_long")
    model = module.Chain()
    assert model(torch.randn(2, 4)).shape == (2, 3)
    assert "e.2000.weight" in model.state_dict()


def test_loop_reads_as_the_source() -> None:
    code = machc.compile_source(KEPT["dense"], "dense.mach")
    assert "self.g = nn.ModuleDict({str(i): nn.Linear(6 * i - 1, 6) for i in range(1, 11)})" in code
    assert "# dense.mach:7  g[i] : x × h[1..i-1] -> h[i] = linear | relu" in code
    assert (
        "h[i] = torch.relu(self.g[str(i)](torch.cat([x, *[h[j] for j in range(1, i)]], dim=1)))"
        in code
    )
    assert '**{f"h[{k}]": (6,) for k in range(1, 11)},' in code
    assert "# dense.mach:9  head : h[1..10] -> y = linear" in code
    assert "y = self.head(torch.cat([h[k] for k in range(1, 11)], dim=1))" in code


def test_loop_variable_never_hides_a_space() -> None:
    """A space named like the loop variable (an LSTM's ``i``) keeps its name."""
    source = """
machine M(n: int = 4) {
    input i : 3
    space j[0..n] : 3
    output k : 3
    first : i -> j[0] = identity
    for i2 in 1..n {
        e[i2] : j[i2-1] × i -> j[i2] = linear
    }
    out : j[n] -> k = linear
}
"""
    _, kept, expanded = pair(source.replace("i2", "j2"), "names")
    agree(kept, expanded, train=False)


def test_loop_variable_named_like_an_item_of_an_array() -> None:
    """A loop variable ``h_2`` beside an array ``h``: h_2, h_21, ... all name items of h
    (the fuzzer, seed 31: naming the variable never ended)."""
    source = """
machine M(n: int = 4) {
    input x : 3
    space h[0..n] : 3
    output y : 3
    first : x -> h[0] = identity
    for h_2 in 1..n {
        e[h_2] : h[h_2-1] -> h[h_2] = linear
    }
    out : h[n] -> y = linear
}
"""
    code, kept, expanded = pair(source, "item_names")
    assert "for h_2_v in range(1, 5):" in code
    agree(kept, expanded, train=False)


def test_cli_expand_loops(tmp_path) -> None:
    source = tmp_path / "dense.mach"
    source.write_text(KEPT["dense"])
    for flag, expected in (([], "self.g = nn.ModuleDict("), (["--expand-loops"], "self.g_1 = ")):
        done = subprocess.run(
            [sys.executable, "-m", "machc", "compile", str(source), "-o", "-", *flag],
            capture_output=True,
            text=True,
            check=True,
        )
        assert expected in done.stdout


@st.composite
def loop_machines(draw) -> str:
    """A random machine with one loop that is kept: one to three statements a pass, each
    reading the input, earlier passes (``h[i-1]``, ``h[i-2]``, a range ``h[a..i-1]``)
    or what an earlier statement of the pass wrote (``u1[i]``), and writing the pass's
    ``h[i]`` (several statements: summed), an array of its own, or a space every pass
    adds to."""
    lo = draw(st.integers(1, 2))
    n = draw(st.integers(3, 5))
    hi = lo + n - 1
    w = draw(st.integers(2, 4))
    lines = ["machine R {", "    input x : 3", f"    space h[0..{hi}] : {w}"]
    edges = [f"    pre[{k}] : x -> h[{k}] = linear" for k in range(lo)]
    body, heads = [], [f"h[{hi}]"]
    written: list[str] = []  # arrays of the pass statements before this one wrote
    for s in range(draw(st.integers(1, 3))):
        reads = {"x"} if draw(st.booleans()) else set()
        reads.add(draw(st.sampled_from(["h[i-1]", f"h[{lo - 1}..i-1]", "h[i-1]"])))
        if lo >= 2 and draw(st.booleans()):
            reads.add("h[i-2]")
        if written and draw(st.booleans()):
            reads.add(f"{draw(st.sampled_from(written))}[i]")
        target = "h" if s == 0 else draw(st.sampled_from(["h", "u", "acc"]))
        if target == "u":
            target = f"u{s}"
            lines.append(f"    space {target}[{lo}..{hi}] : {w + 1}")
            written.append(target)
            heads.append(f"{target}[{hi}]")
            out = f"{target}[i]"
        elif target == "acc":
            target = f"acc{s}"
            lines.append(f"    space {target} : {w}")
            heads.append(target)
            out = target
        else:
            out = "h[i]"
        ops = draw(st.sampled_from(["linear", "linear | relu", "linear | tanh | dropout(0.3)"]))
        body.append(f"        e{s}[i] : {' × '.join(sorted(reads))} -> {out} = {ops}")
    lines.append("    output y : 2")
    lines += edges
    lines += [f"    for i in {lo}..{hi} {{", *body, "    }"]
    lines.append(f"    head : {' × '.join(heads)} -> y = linear")
    return "\n".join([*lines, "}"]) + "\n"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(loop_machines())
def test_random_kept_loops_compute_what_their_edges_compute(source: str) -> None:
    note(source)
    code, kept, expanded = pair(source, "random")
    assert "nn.ModuleDict(" in code, code
    for train in (False, True):
        agree(kept, expanded, train)


def test_a_loop_too_long_to_write_out_is_refused(tmp_path) -> None:
    """60,000 passes that are not alike would be written out edge by edge: compile refuses
    it with a diagnostic at the loop (check, which writes no module, accepts it)."""
    source = tmp_path / "big.mach"
    source.write_text(
        "machine M { input x : 4\n output y : 4\n for i in 1..60000 {\n"
        " if i % 2 == 0 { e[i] : x -> y = linear } else { e[i] : x -> y = linear | relu } } }\n"
    )
    out = tmp_path / "big.py"
    out.write_text("old")
    done = subprocess.run(
        [sys.executable, "-m", "machc", "compile", str(source), "-o", str(out)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1, done.stderr
    assert "big.mach:4:50: error: machine M would be written out with 60,000 edges" in done.stderr
    assert "^~~~" in done.stderr and "Traceback" not in done.stderr
    assert out.read_text() == "old"
    with pytest.raises(machc.CompileError, match="written out with 60,000 edges"):
        machc.compile_file(source)


def test_private_statement_names_are_prefixed() -> None:
    code = machc.compile_source(KEPT["private_name"], "private.mach")
    assert "self.edge_modules = nn.ModuleDict(" in code and "self._modules" not in code


def test_loop_checkpoints_rename_negative_indices_both_ways() -> None:
    from machc.runtime import LoopCheckpoints

    kept = nn.Module()
    kept.g = nn.ModuleDict({str(i): nn.Linear(2, 2) for i in (-1, 0, 1)})
    kept.register_load_state_dict_pre_hook(LoopCheckpoints(True, {"g": "g"}))
    written = nn.Module()
    for name in ("g_m1", "g_0", "g_1"):
        setattr(written, name, nn.Linear(2, 2))
    written.register_load_state_dict_pre_hook(LoopCheckpoints(False, {"g": "g"}))
    kept.load_state_dict(written.state_dict())
    assert torch.equal(kept.g["-1"].weight, written.g_m1.weight)
    written.load_state_dict({k: v + 1 for k, v in kept.state_dict().items()})
    assert torch.equal(written.g_m1.bias, kept.g["-1"].bias + 1)
    # an index machc does not write (g_03) is not renamed: load_state_dict reports it
    state = written.state_dict()
    state["g_03.weight"] = state.pop("g_1.weight")
    with pytest.raises(RuntimeError, match="g_03.weight"):
        kept.load_state_dict(state)
