"""Per-side padding, pad, crop, permute, transpose and the axes of per-sample norms, against
PyTorch written by hand (weights copied: outputs and gradients agree), and a WaveNet-style
stack of causal dilated convolutions against a hand-written one.

The references pad by concatenating zeros (or copies) and crop by slicing, so that they
share no code path with the ``F.pad`` calls the compiler writes.
"""

from __future__ import annotations

import warnings

import machc
import pytest
import torch
import torch.nn.functional as F
from machc.diagnostics import CompileError
from torch import nn


def _lists_of_pairs() -> bool:
    """Whether expressions evaluate lists of lists (``[[4, 0]]``)."""
    try:
        machc.check_source(_source("[1, 4]", "[1, 5]", "pad([[1, 0]])"), "probe.mach")
    except CompileError:
        return False
    return True


def _source(ins: str, out: str, pipeline: str) -> str:
    lines = [f"    input x : {ins}", f"    output y : {out}", f"    e : x -> y = {pipeline}"]
    return "machine M {\n" + "\n".join(lines) + "\n}\n"


PAIRS = _lists_of_pairs()
needs_pairs = pytest.mark.skipif(
    not PAIRS, reason="expressions do not evaluate lists of pairs ([[4, 0]]) yet"
)


def compiled(ins: str, out: str, pipeline: str) -> tuple[type, str]:
    """The generated class of ``x -> y = pipeline``, and its code."""
    code = machc.compile_source(_source(ins, out, pipeline), "t.mach")
    namespace: dict = {}
    exec(compile(code, "<generated>", "exec"), namespace)  # noqa: S102 - our generated code
    return namespace["M"], code


def forward_code(code: str) -> str:
    return code.split("def forward", 1)[1].split("def f(", 1)[0]


def assert_same(ours: nn.Module, reference: nn.Module, x: torch.Tensor) -> None:
    """Equal outputs, and equal gradients of the input and of every parameter."""
    torch.manual_seed(1)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = ours(x1), reference(x2)
    torch.testing.assert_close(y1, y2)
    cotangent = torch.randn_like(y1)
    y1.backward(cotangent)
    y2.backward(cotangent)
    torch.testing.assert_close(x1.grad, x2.grad)
    theirs = dict(reference.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, theirs[name].grad, msg=name)


def check(ins: str, out: str, pipeline: str, reference: nn.Module, x: torch.Tensor) -> str:
    """The generated module against ``reference``, whose parameters it takes (same names and
    shapes: ``load_state_dict`` is strict); returns the generated code."""
    cls, code = compiled(ins, out, pipeline)
    torch.manual_seed(0)
    reference = reference.double()
    for p in reference.parameters():  # not the initial ones, which are often ones and zeros
        p.data.normal_()
    ours = cls().double()
    ours.load_state_dict(reference.state_dict())
    assert_same(ours, reference, x.double())
    return code


class Apply(nn.Module):
    """A reference: a function of the input and of the module ``e`` (the edge's layer)."""

    def __init__(self, function, e: nn.Module | None = None):
        super().__init__()
        self.function = function
        if e is not None:
            self.e = e

    def forward(self, x):
        return self.function(self, x)


def zeros(x: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    shape = list(x.shape)
    shape[dim] = n
    return x.new_zeros(shape)


def padded(x: torch.Tensor, pairs: list[tuple[int, int]], value: float = 0.0) -> torch.Tensor:
    """x with (before, after) positions of ``value`` on each spatial axis, first axis first."""
    for dim, (before, after) in enumerate(pairs, 2):
        x = torch.cat([zeros(x, before, dim) + value, x, zeros(x, after, dim) + value], dim=dim)
    return x


# --- convolutions ---------------------------------------------------------------------------


@needs_pairs
def test_causal_dilated_conv_is_padding_before_only() -> None:
    x = torch.randn(2, 3, 10)
    # the textbook formulation: pad both sides, keep the first L outputs
    reference = Apply(lambda m: None, nn.Conv1d(3, 5, 3, dilation=2, padding=4))
    reference.function = lambda m, x: m.e(x)[:, :, :10]
    code = check("[3, 10]", "[5, 10]", "conv(3, dilation=2, padding=[[4, 0]])", reference, x)
    assert "nn.Conv1d(3, 5, 3, dilation=2)" in code  # the layer pads nothing
    assert "F.pad(x, (4, 0))" in forward_code(code)


@needs_pairs
def test_causal_conv_output_depends_only_on_the_past() -> None:
    cls, _ = compiled("[2, 12]", "[2, 12]", "conv(2, dilation=3, padding=[[3, 0]])")
    model = cls()
    x = torch.randn(1, 2, 12, requires_grad=True)
    model(x)[0, :, 7].sum().backward()
    touched = (x.grad.abs().sum(dim=(0, 1)) > 0).nonzero().flatten().tolist()
    assert touched == [4, 7]


@needs_pairs
@pytest.mark.parametrize(
    ("padding", "pairs", "out"),
    [
        ("[[1, 0], 2]", [(1, 0), (2, 2)], "[4, 5, 9]"),
        ("[[0, 2], [3, 1]]", [(0, 2), (3, 1)], "[4, 6, 9]"),
        ("[[2, 0], [0, 0]]", [(2, 0), (0, 0)], "[4, 6, 5]"),
    ],
)
def test_per_side_conv_padding_on_images(padding, pairs, out) -> None:
    x = torch.randn(2, 3, 6, 7)
    reference = Apply(lambda m, x: m.e(padded(x, pairs)), nn.Conv2d(3, 4, 3))
    check("[3, 6, 7]", out, f"conv(3, padding={padding})", reference, x)


@needs_pairs
def test_symmetric_pairs_are_the_layers_own_padding() -> None:
    x = torch.randn(2, 3, 6, 7)
    reference = Apply(lambda m, x: m.e(x), nn.Conv2d(3, 4, 3, padding=(1, 2)))
    code = check("[3, 6, 7]", "[4, 6, 9]", "conv(3, padding=[[1, 1], [2, 2]])", reference, x)
    assert "nn.Conv2d(3, 4, 3, padding=(1, 2))" in code
    assert "F.pad" not in code
    code = compiled("[3, 8]", "[4, 8]", "conv(3, padding=[[1, 1]])")[1]
    assert "nn.Conv1d(3, 4, 3, padding=1)" in code


@needs_pairs
@pytest.mark.parametrize(
    ("mode", "before"),
    [
        ("reflect", lambda x: x[:, :, [2, 1]]),
        ("replicate", lambda x: x[:, :, [0, 0]]),
        ("circular", lambda x: x[:, :, -2:]),
    ],
)
def test_per_side_padding_modes(mode: str, before) -> None:
    x = torch.randn(2, 3, 6)
    reference = Apply(lambda m, x: m.e(torch.cat([before(x), x], dim=2)), nn.Conv1d(3, 4, 3))
    pipeline = f'conv(3, padding=[[2, 0]], padding_mode="{mode}")'
    code = check("[3, 6]", "[4, 6]", pipeline, reference, x)
    assert "nn.Conv1d(3, 4, 3)" in code  # the layer pads nothing: F.pad does, in this mode
    assert f'F.pad(x, (2, 0), mode="{mode}")' in code


# --- pooling --------------------------------------------------------------------------------


def _windows(x: torch.Tensor, before: int, after: int, kernel: int, stride: int) -> list:
    """The windows of a 1-d pooling over x [B, C, L] padded before/after: (start, end) of
    the input positions in each (clipped to the input)."""
    length = x.shape[2] + before + after
    starts = range(0, length - kernel + 1, stride)
    return [(max(s - before, 0), min(s - before + kernel, x.shape[2])) for s in starts]


@needs_pairs
@pytest.mark.parametrize(
    ("before", "after", "kernel", "stride"),
    [(2, 0, 3, 1), (1, 0, 2, 2), (0, 2, 3, 2), (2, 2, 3, 1)],
)
def test_per_side_pools_against_their_windows(before, after, kernel, stride) -> None:
    x = torch.randn(2, 3, 7) - 10  # all negative: a zero of padding would be the maximum
    windows = _windows(x, before, after, kernel, stride)
    out = f"[3, {len(windows)}]"
    pad = f"padding=[[{before}, {after}]], stride={stride}"
    maximum = torch.stack([x[:, :, a:b].amax(dim=2) for a, b in windows], dim=2)
    mean = torch.stack([x[:, :, a:b].sum(dim=2) / kernel for a, b in windows], dim=2)
    for op, expected in (("maxpool", maximum), ("avgpool", mean)):
        cls, code = compiled("[3, 7]", out, f"{op}({kernel}, {pad})")
        torch.testing.assert_close(cls()(x), expected, msg=f"{op} {before} {after}")


@pytest.mark.parametrize("op", ["maxpool", "avgpool"])
def test_symmetric_padding_beyond_pytorchs_limit_pads_first(op: str) -> None:
    x = torch.randn(2, 3, 6) - 10
    cls, code = compiled("[3, 6]", "[3, 8]", f"{op}(3, stride=1, padding=2)")
    windows = _windows(x, 2, 2, 3, 1)
    if op == "maxpool":
        expected = torch.stack([x[:, :, a:b].amax(dim=2) for a, b in windows], dim=2)
        assert 'value=float("-inf")' in code
    else:
        expected = torch.stack([x[:, :, a:b].sum(dim=2) / 3 for a, b in windows], dim=2)
    torch.testing.assert_close(cls()(x), expected)


@needs_pairs
def test_pools_take_padding_pytorch_accepts_themselves() -> None:
    x = torch.randn(2, 3, 7, 8)
    for op, function in (("maxpool", F.max_pool2d), ("avgpool", F.avg_pool2d)):
        cls, code = compiled("[3, 7, 8]", "[3, 4, 3]", f"{op}(3, stride=2, padding=[[1, 1], 0])")
        assert "F.pad" not in code and "padding=(1, 0)" in code, code
        torch.testing.assert_close(cls()(x), function(x, 3, stride=2, padding=(1, 0)))


# --- pad, crop, permute, transpose ------------------------------------------------------------


@needs_pairs
@pytest.mark.parametrize(
    ("ins", "out", "pipeline", "expected"),
    [
        ("[2, 5]", "[2, 9]", "pad([[4, 0]])", lambda x: torch.cat([zeros(x, 4, 2), x], dim=2)),
        ("[2, 3, 4]", "[2, 6, 7]", "pad([[1, 2], [0, 3]], value=0.5)",
         lambda x: padded(x, [(1, 2), (0, 3)], 0.5)),
        ("[2, 3, 4, 5]", "[2, 4, 4, 7]", "pad([[1, 0], 0, [0, 2]])",
         lambda x: padded(x, [(1, 0), (0, 0), (0, 2)])),
        ("[2, 5]", "[2, 8]", 'pad([[2, 1]], mode="reflect")',
         lambda x: torch.cat([x[:, :, [2, 1]], x, x[:, :, [3]]], dim=2)),
        ("[2, 5]", "[2, 1]", "crop([[0, 4]])", lambda x: x[:, :, :1]),
        ("[2, 5, 6]", "[2, 3, 4]", "crop([1, [0, 2]])", lambda x: x[:, :, 1:4, :4]),
        ("[2, 5]", "[2, 5]", "pad([[3, 1]]) | crop([[3, 1]])", lambda x: x),
        ("[2, 5, 6]", "[2, 4, 5]", "crop([[1, 0], [0, 1]])", lambda x: x[:, :, 1:, :5]),
    ],
)  # fmt: skip
def test_pad_and_crop_per_side(ins, out, pipeline, expected) -> None:
    cls, _ = compiled(ins, out, pipeline)
    x = torch.randn(2, *cls.SPACES["x"], dtype=torch.double, requires_grad=True)
    torch.testing.assert_close(cls()(x), expected(x))


def test_pad_crop_permute_transpose_against_torch() -> None:
    x = torch.randn(2, 2, 3, 4, 5)
    cases = [
        ("pad(1)", "[2, 5, 6, 7]", lambda x: F.pad(x, (1, 1, 1, 1, 1, 1))),
        ("pad([0, 1, 2], value=3)", "[2, 3, 6, 9]",
         lambda x: F.pad(x, (2, 2, 1, 1, 0, 0), value=3.0)),
        ("crop([1, 1, 2])", "[2, 1, 2, 1]", lambda x: x[:, :, 1:2, 1:3, 2:3]),
        ("permute([3, 1, 2])", "[2, 5, 3, 4]", lambda x: x.permute(0, 1, 4, 2, 3)),
        ("transpose(1, 3)", "[2, 5, 4, 3]", lambda x: x.transpose(2, 4)),
        ("transpose(2, 3) | permute([2, 3, 1])", "[2, 5, 4, 3]",
         lambda x: x.transpose(3, 4).permute(0, 1, 3, 4, 2)),
    ]  # fmt: skip
    for pipeline, out, expected in cases:
        cls, _ = compiled("[2, 3, 4, 5]", out, pipeline)
        torch.testing.assert_close(cls()(x), expected(x), msg=pipeline)


def test_conv_along_the_other_axis_after_transpose() -> None:
    x = torch.randn(2, 3, 5, 7)
    reference = Apply(
        lambda m, x: m.e(x.transpose(2, 3)).transpose(2, 3), nn.Conv2d(3, 4, (3, 1), padding=(1, 0))
    )
    pipeline = "transpose(1, 2) | conv([3, 1], padding=[1, 0]) | transpose(1, 2)"
    check("[3, 5, 7]", "[4, 5, 7]", pipeline, reference, x)


# --- what per-sample norms normalise over ---------------------------------------------------


def _channels_last(m, x):
    return m.e(x.movedim(1, -1)).movedim(-1, 1)


@pytest.mark.parametrize("shape", [[4, 7], [4, 3, 5], [4, 2, 3, 2]])
def test_layernorm_over_the_channels_at_each_position(shape) -> None:
    text = str(shape)
    x = torch.randn(2, *shape)
    code = check(
        text, text, 'layernorm(axes="channels")', Apply(_channels_last, nn.LayerNorm(4)), x
    )
    assert "nn.LayerNorm(4)" in code
    check(
        text,
        text,
        "layernorm(axes=[0], eps=0.1)",
        Apply(_channels_last, nn.LayerNorm(4, eps=0.1)),
        x,
    )
    # by the formula, with a scale and shift per channel
    cls, _ = compiled(text, text, 'layernorm(axes="channels")')
    model = cls()
    with torch.no_grad():
        model.e.weight.normal_()
        model.e.bias.normal_()
    mean = x.mean(dim=1, keepdim=True)
    var = x.var(dim=1, unbiased=False, keepdim=True)
    per_channel = (-1, *([1] * (len(shape) - 1)))
    expected = (x - mean) / torch.sqrt(var + 1e-5) * model.e.weight.view(per_channel)
    torch.testing.assert_close(model(x), expected + model.e.bias.view(per_channel))


def test_a_channel_norm_after_a_product_normalises_the_product() -> None:
    """``mul | layernorm(axes="channels")``: the axis moves on ``x * x``, not on its last
    factor (a miscompile the fuzzer found)."""
    text = """machine M {
    input  x : [3, 4, 5]
    output y : [3, 4, 5]
    e : x × x -> y = mul | layernorm(axes="channels")
}
"""
    namespace: dict = {}
    exec(compile(machc.compile_source(text, "t.mach"), "<generated>", "exec"), namespace)  # noqa: S102
    model = namespace["M"]()
    x = torch.randn(2, 3, 4, 5)
    torch.testing.assert_close(model(x), _channels_last(model, x * x))


def test_layernorm_and_rmsnorm_over_trailing_axes() -> None:
    x = torch.randn(2, 4, 3, 5)
    layer = Apply(lambda m, x: m.e(x), nn.LayerNorm([3, 5]))
    code = check("[4, 3, 5]", "[4, 3, 5]", "layernorm(axes=[1, 2])", layer, x)
    assert "nn.LayerNorm([3, 5])" in code
    check(
        "[4, 3, 5]",
        "[4, 3, 5]",
        "layernorm(axes=2)",
        Apply(lambda m, x: m.e(x), nn.LayerNorm(5)),
        x,
    )
    check(
        "[4, 3, 5]", "[4, 3, 5]", "rmsnorm(axes=[2])", Apply(lambda m, x: m.e(x), nn.RMSNorm(5)), x
    )
    check(
        "[4, 3, 5]",
        "[4, 3, 5]",
        'rmsnorm(axes="channels")',
        Apply(_channels_last, nn.RMSNorm(4)),
        x,
    )
    check("[4, 3, 5]", "[4, 3, 5]", 'layernorm(axes="all", affine=false)',
          Apply(lambda m, x: F.layer_norm(x, [4, 3, 5])), x)  # fmt: skip


def test_groupnorm_on_signals() -> None:
    x = torch.randn(3, 6, 11)
    check("[6, 11]", "[6, 11]", "groupnorm(3)", Apply(lambda m, x: m.e(x), nn.GroupNorm(3, 6)), x)


# --- a WaveNet-style stack ------------------------------------------------------------------

WAVENET = """
machine WaveLayer(c: int = 4, n: int = 20, d: int = 1) {
    input  x : [c, n]
    space  f : [c, n]
    space  g : [c, n]
    space  m : [c, n]
    output y : [c, n]
    output s : [c, n]

    filter : x -> f     = CAUSAL | tanh
    gate   : x -> g     = CAUSAL | sigmoid
    both   : f × g -> m = mul
    res    : m -> y     = linear
    keep   : x -> y     = identity
    skip   : m -> s     = linear
}

machine WaveNet(c: int = 4, n: int = 20) {
    input  x       : [1, n]
    space  h[0..4] : [c, n]
    space  s       : [c, n]
    output y       : [1, n]

    embed : x -> h[0]        = conv(2, padding=[[1, 0]])
    l1    : h[0] -> h[1] × s = WaveLayer(c=c, n=n, d=1)
    l2    : h[1] -> h[2] × s = WaveLayer(c=c, n=n, d=2)
    l3    : h[2] -> h[3] × s = WaveLayer(c=c, n=n, d=4)
    l4    : h[3] -> h[4] × s = WaveLayer(c=c, n=n, d=8)
    head  : h[4] × s -> y    = add | relu | linear(out=c) | relu | linear
}
"""
CAUSAL = {
    "padding": "conv(2, dilation=d, padding=[[d, 0]])",
    "pad": "pad([[d, 0]]) | conv(2, dilation=d)",
}


class WaveLayer(nn.Module):
    """A gated causal convolution with residual and skip outputs (van den Oord et al. 2016)."""

    def __init__(self, c: int, d: int):
        super().__init__()
        self.d = d
        self.filter = nn.Conv1d(c, c, 2, dilation=d)
        self.gate = nn.Conv1d(c, c, 2, dilation=d)
        self.res = nn.Conv1d(c, c, 1)
        self.skip = nn.Conv1d(c, c, 1)

    def forward(self, x):
        past = torch.cat([zeros(x, self.d, 2), x], dim=2)  # d zeros before, none after
        m = torch.tanh(self.filter(past)) * torch.sigmoid(self.gate(past))
        return x + self.res(m), self.skip(m)


class WaveNet(nn.Module):
    def __init__(self, c: int = 4):
        super().__init__()
        self.embed = nn.Conv1d(1, c, 2)
        self.l1, self.l2, self.l3, self.l4 = (WaveLayer(c, d) for d in (1, 2, 4, 8))
        self.head = nn.ModuleList([nn.Conv1d(c, c, 1), nn.Conv1d(c, 1, 1)])

    def forward(self, x):
        h = self.embed(torch.cat([zeros(x, 1, 2), x], dim=2))
        skips = 0
        for layer in (self.l1, self.l2, self.l3, self.l4):
            h, s = layer(h)
            skips = skips + s
        return self.head[1](torch.relu(self.head[0](torch.relu(h + skips))))


@needs_pairs
@pytest.mark.parametrize("causal", list(CAUSAL))
def test_wavenet_against_a_hand_written_one(causal: str) -> None:
    source = WAVENET.replace("CAUSAL", CAUSAL[causal])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no space left unused
        code = machc.compile_source(source, "wavenet.mach")
    namespace: dict = {}
    exec(compile(code, "<generated>", "exec"), namespace)  # noqa: S102 - our generated code
    torch.manual_seed(0)
    reference = WaveNet().double()
    ours = namespace["WaveNet"]().double()
    ours.load_state_dict(reference.state_dict())  # the same names and shapes
    x = torch.randn(3, 1, 20, dtype=torch.double)
    assert_same(ours, reference, x)
    # each output sees its own position and the 16 before it, nothing after
    x = x[:1].clone().requires_grad_()
    ours(x)[0, 0, 18].backward()
    seen = (x.grad[0, 0] != 0).nonzero().flatten().tolist()
    assert seen == list(range(2, 19))


# --- scripting, and odd arguments -------------------------------------------------------------


def test_the_new_ops_script(tmp_path) -> None:
    pipeline = (
        "pad([1, 0], value=-2) | maxpool(3, stride=1, padding=2) | crop([2, 1]) | "
        'transpose(1, 2) | permute([2, 1]) | conv(3, padding=1, out=4) | layernorm(axes="channels")'
    )
    path = tmp_path / "script.mach"
    path.write_text(_source("[3, 5, 6]", "[4, 5, 6]", pipeline), encoding="utf-8")
    model = machc.load(path).M().eval()  # TorchScript reads the source that load registers
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(model)
    x = torch.randn(2, 3, 5, 6)
    torch.testing.assert_close(scripted(x), model(x))


ODD = [
    "pad([[1]])",
    "pad([[]])",
    "pad([[1, 2], [3, 4], [5, 6]])",
    "pad([[true, 1], 1])",
    'crop([["a", 1], 0])',
    "crop([[0, 9], 0])",
    "crop([[-1, 0], 0])",
    "conv(3, padding=[[1, 2, 3], 0])",
    "conv(3, stride=[[1, 1], 1])",
    "conv([[3, 3], 3])",
    'conv(3, padding=[[1, 0], [0, 1]], padding_mode="reflect")',
    "conv_transpose(3, padding=[[1, 0], 0])",
    "maxpool(2, padding=[[1, 0], 0], ceil_mode=true)",
    "maxpool(2, padding=[[2, 0], 0])",
    "avgpool(3, padding=[[1, 0], [2, 2]])",
    "layernorm(axes=[[0]])",
    "permute([[1, 2]])",
    "transpose([1], 2)",
    "upsample([[2, 2], 1])",
    "reshape([[2, 2], 1])",
    'module("torch.nn.Identity", [[1, 2]])',
    "pad([[[1, 0]], 0])",
    "pad([[16777217, 0], 0])",
]


@pytest.mark.parametrize("pipeline", ODD)
def test_odd_arguments_are_diagnostics_never_tracebacks(pipeline: str) -> None:
    try:
        machc.compile_source(_source("[2, 4, 4]", "[2, 4, 4]", pipeline), "t.mach")
    except CompileError as exc:
        assert all(d.span.line == 4 for d in exc.diagnostics), exc


@needs_pairs
@pytest.mark.parametrize(
    ("ins", "pipeline", "code", "message", "span_text"),
    [
        ("[2, 8]", "pad([[1, -1]])", "E008", "argument 'amount' of pad must not be negative, "
         "got -1", "[[1, -1]]"),
        ("[2, 8]", "conv(3, padding=[[1, 2, 3]])", "E008", "argument 'padding' of conv must be "
         "an integer or a list of integers and [before, after] pairs or a string, got "
         "[[1, 2, 3]]", "padding=[[1, 2, 3]]"),
        ("[2, 8]", "conv([[3, 3]])", "E008", "argument 'kernel' of conv must be an integer or a "
         "list of integers, got [[3, 3]]", "[[3, 3]]"),
        ("[2, 8]", "conv_transpose(3, padding=[[1, 0]])", "E008", "argument 'padding' of "
         "conv_transpose must be an integer or a list of integers", "padding=[[1, 0]]"),
        ("[2, 8]", "crop([[0, 8]])", "E009", "crop([[0, 8]]) removes 8 positions from the "
         "input's axis 1 (8) of [2, 8], leaving none", "crop([[0, 8]])"),
        ("[2, 4, 4]", "crop([1, [3, 1]])", "E009", "removes 4 positions from the input's axis 2",
         "crop([1, [3, 1]])"),
        ("[2, 8]", "maxpool(3, padding=[[3, 0]])", "E009", "padding 3 is not smaller than the "
         "kernel 3", "maxpool(3, padding=[[3, 0]])"),
        ("[2, 8]", "avgpool(2, padding=[[1, 0]], ceil_mode=true)", "E009", "ceil_mode=true "
         "needs padding that PyTorch's pooling takes itself",
         "avgpool(2, padding=[[1, 0]], ceil_mode=true)"),
        ("[2, 4]", 'conv(3, padding=[[4, 0]], padding_mode="reflect")', "E009", 'padding 4 with '
         'padding_mode="reflect" must be smaller than the input\'s axis 1 (4) of [2, 4]',
         'conv(3, padding=[[4, 0]], padding_mode="reflect")'),
        ("[2, 8]", "pad([[1, 0], [1, 0]])", "E009", "amount=[[1, 0], [1, 0]] has 2 values, but "
         "the input [2, 8] has 1 spatial axes", "pad([[1, 0], [1, 0]])"),
        ("[2, 8]", "pad([[[1, 0]]])", "E005", "lists nest", "[[1, 0]]"),
    ],
)  # fmt: skip
def test_per_side_errors(ins, pipeline, code, message, span_text) -> None:
    text = _source(ins, ins, pipeline)
    with pytest.raises(CompileError) as caught:
        machc.check_source(text, "t.mach")
    (d,) = caught.value.errors
    assert (d.code, d.span.line) == (code, 4), d.message
    assert message in d.message, d.message
    line = text.splitlines()[3]
    assert line[d.span.column - 1 : d.span.end_column - 1] == span_text


def test_a_pair_for_a_signal_written_flat_gets_a_hint() -> None:
    with pytest.raises(CompileError) as caught:
        machc.check_source(_source("[2, 8]", "[2, 8]", "conv(3, padding=[4, 0])"), "t.mach")
    (d,) = caught.value.errors
    assert "padding=[4, 0] has 2 values" in d.message
    assert d.hint == "for [before, after] on the one axis of a signal, write padding=[[4, 0]]"


@needs_pairs
def test_in_a_machine_over_time_every_step_is_padded_alike() -> None:
    source = """
machine Steps over t {
    input  x : [2, 8]
    space  h : [3, 8]
    output y : [3, 8]

    cell : x × h[t-1] -> h = conv(3, padding=[[2, 0]]) | tanh
    read : h -> y = crop([[0, 2]]) | pad([[2, 0]]) | layernorm(axes="channels")
}
"""
    namespace: dict = {}
    exec(compile(machc.compile_source(source, "steps.mach"), "<generated>", "exec"), namespace)  # noqa: S102
    model = namespace["Steps"]()
    x = torch.randn(2, 5, 2, 8)
    h = torch.zeros(2, 3, 8)
    expected = []
    for t in range(5):
        h = torch.tanh(model.cell(padded(torch.cat([x[:, t], h], dim=1), [(2, 0)])))
        read = padded(h[:, :, :6], [(2, 0)])
        expected.append(model.read(read.transpose(1, 2)).transpose(1, 2))
    torch.testing.assert_close(model(x), torch.stack(expected, dim=1))
