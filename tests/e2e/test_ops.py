"""Shape inference of every op in the op table, checked against torch, and every op error.

Each valid case compiles a one-edge machine ``a [× b ...] -> y = PIPELINE``, runs a
random batch through the generated module and compares the output with the shape the
compiler inferred; each error case asserts the code, the message and the exact span.
"""

from __future__ import annotations

import ast
import io
import textwrap
import tokenize
from dataclasses import dataclass

import machc
import pytest
import torch
from machc.diagnostics import CompileError, Diagnostic, Span
from machc.emit import emit
from machc.ir import Op
from machc.lower import lower
from machc.ops import OPS, OpError, Site, bind_args, infer_pipeline
from machc.runtime import MachineShapeError

BATCH = 2
INPUT_NAMES = ["a", "b", "c", "d"]
RANK_SHAPES = {1: "[6]", 2: "[4, 7]", 3: "[4, 5, 6]", 4: "[2, 3, 4, 5]"}
# Ops that read ids or windows of steps, so only in machines over time: here only what the
# table says of them (tested in tests/e2e/test_sequences.py).
SEQUENCE_OPS = {"embedding", "attention"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The tensors here are tiny: intra-op threads only add overhead."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def source(ins: list[str], out: str, pipeline: str) -> str:
    """A machine with inputs ``a, b, ...`` of shapes ``ins``, output ``y`` and one edge."""
    names = INPUT_NAMES[: len(ins)]
    lines = ["machine M {"]
    lines += [f"    input {name} : {shape}" for name, shape in zip(names, ins, strict=True)]
    lines += [f"    output y : {out}", f"    e : {' × '.join(names)} -> y = {pipeline}", "}"]
    return "\n".join(lines) + "\n"


def edge_line(text: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if line.startswith("    e :"))


def build(text: str):
    """The generated class M and the edge's inferred shapes (entering each op, and leaving)."""
    checked = machc.check_source(text, "t.mach")
    assert not checked.warnings
    (machine,) = checked.program.machines
    code = emit(lower(checked.program))  # what compile_source returns, checking only once
    namespace: dict = {}
    exec(compile(code, "<generated>", "exec"), namespace)  # noqa: S102 - our generated code
    return namespace["M"], machine, code


def errors(text: str) -> list[Diagnostic]:
    with pytest.raises(CompileError) as info:
        machc.check_source(text, "t.mach")
    return info.value.errors


def assert_error(
    text: str, code: str, message: str, span_text: str, *, hint: str | None = None
) -> Diagnostic:
    """The source's only error: its code, a part of its message, and the exact text it points at."""
    found = errors(text)
    assert len(found) == 1, [d.message for d in found]
    (d,) = found
    assert d.code == code, d.message
    assert message in d.message, d.message
    lines = text.splitlines()
    assert d.span.line == d.span.end_line, d.span
    assert lines[d.span.line - 1][d.span.column - 1 : d.span.end_column - 1] == span_text, (
        d.span,
        d.message,
    )
    if hint is not None:
        assert d.hint is not None and hint in d.hint, d.hint
    return d


def op_error(
    ins: str | list[str],
    out: str,
    pipeline: str,
    code: str,
    message: str,
    span_text: str,
    hint: str | None = None,
) -> Diagnostic:
    ins = [ins] if isinstance(ins, str) else ins
    text = source(ins, out, pipeline)
    d = assert_error(text, code, message, span_text, hint=hint)
    if span_text not in (*INPUT_NAMES, "y1", "y2"):
        assert d.span.line == edge_line(text)
    return d


# --- valid uses, against torch ------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    ins: tuple[str, ...]
    out: str
    pipeline: str

    @property
    def kinds(self) -> list[str]:
        return [op.strip().split("(")[0] for op in self.pipeline.split("|")]

    def __str__(self) -> str:
        return f"{' × '.join(self.ins)} -> {self.out} = {self.pipeline}"


def case(ins: str | tuple[str, ...], out: str, pipeline: str) -> Case:
    return Case((ins,) if isinstance(ins, str) else ins, out, pipeline)


# Ops that keep the shape, with non-default arguments, tried on every rank they accept.
SAME_SHAPE = [
    "identity",
    "relu",
    "relu6",
    "gelu",
    'gelu(approximate="tanh")',
    "silu",
    "mish",
    "hardswish",
    "tanh",
    "sigmoid",
    "softplus",
    "elu(alpha=0.5)",
    "leaky_relu(slope=0.2)",
    "softmax",
    "log_softmax",
    "scale(-0.5)",
    "dropout(p=0.25)",
    "channel_dropout(0.3)",
    "batchnorm(eps=0.001, momentum=0.2, affine=false)",
    "batchnorm",
    "groupnorm(2, eps=0.001)",
    "groupnorm(1, affine=false)",
    "instancenorm(eps=0.001, affine=true)",
    "instancenorm",
    "layernorm(eps=0.001)",
    "layernorm(affine=false)",
    "rmsnorm",
    "rmsnorm(eps=0.001)",
    "rmsnorm(affine=false)",
    'layernorm(axes="channels")',
    "layernorm(axes=[0], affine=false)",
    'rmsnorm(axes="channels", eps=0.001)',
    "pad(0)",
    "crop(0)",
]


def _same_shape_cases() -> list[Case]:
    cases = []
    for text in SAME_SHAPE:
        lo, hi = OPS[text.split("(")[0]].ranks
        cases += [case(RANK_SHAPES[r], RANK_SHAPES[r], text) for r in range(lo, min(hi, 4) + 1)]
    return cases


CASES = [
    *_same_shape_cases(),
    # linear: a matrix on vectors, a 1×1 convolution on the channels of the others
    case("8", "5", "linear"),
    case("[8]", "[5]", "linear(bias=false)"),
    case("[3, 10]", "[5, 10]", "linear"),
    case("[3, 6, 7]", "[4, 6, 7]", "linear(bias=false)"),
    case("[2, 3, 4, 5]", "[6, 3, 4, 5]", "linear"),
    case("8", "6", "linear(out=4) | relu | linear"),
    # conv
    case("[3, 10]", "[4, 4]", "conv(3, stride=2)"),
    case("[2, 11]", "[3, 11]", 'conv(5, padding="same", dilation=2, padding_mode="circular")'),
    case("[4, 12]", "[6, 8]", "conv(5, groups=2)"),
    case("[3, 9, 10]", "[8, 9, 10]", "conv([3, 5], padding=[1, 2])"),
    case("[3, 9, 9]", "[4, 4, 4]", "conv(3, stride=2, padding=1, dilation=2)"),
    case("[3, 9, 9]", "[4, 5, 2]", "conv(3, stride=[2, 3], dilation=[1, 2], padding=[1, 0])"),
    case(
        "[4, 8, 8]",
        "[6, 8, 8]",
        'conv(3, padding="same", groups=2, bias=false, padding_mode="reflect")',
    ),
    case("[3, 8, 8]", "[5, 6, 4]", 'conv([3, 5], padding="valid")'),
    case("[2, 9, 9]", "[3, 9, 9]", 'conv(4, padding="same", dilation=2)'),
    case("[2, 8, 8]", "[3, 10, 10]", 'conv(3, padding=2, padding_mode="replicate")'),
    case("[2, 4]", "[3, 8]", 'conv(3, padding=3, padding_mode="reflect")'),
    case("[2, 4]", "[3, 12]", 'conv(1, padding=4, padding_mode="circular")'),
    case("[2, 3, 2]", "[3, 3, 2]", 'conv([3, 3], padding="same", padding_mode="circular")'),
    case("[2, 5, 6, 7]", "[3, 3, 4, 5]", "conv(3)"),
    case("[2, 6, 6, 6]", "[4, 3, 3, 3]", "conv([3, 3, 1], stride=[2, 2, 2], padding=[1, 1, 0])"),
    # conv_transpose
    case("[4, 5]", "[2, 10]", "conv_transpose(4, stride=2, padding=1)"),
    case("[4, 7, 7]", "[2, 14, 14]", "conv_transpose(3, stride=2, padding=1, output_padding=1)"),
    case("[4, 5, 6]", "[6, 11, 15]", "conv_transpose([3, 5], stride=[2, 2], groups=2, bias=false)"),
    case("[2, 5, 5]", "[3, 10, 10]", "conv_transpose(3, dilation=2, output_padding=1)"),
    case("[2, 4, 4]", "[3, 14, 10]", "conv_transpose(3, stride=[3, 2], output_padding=[2, 1])"),
    case("[4, 3, 4, 5]", "[2, 5, 6, 7]", "conv_transpose(3)"),
    # add and mul: one shape, or [C] vectors broadcast over the others' spatial axes
    case(("[3]", "[3]", "[3]"), "[3]", "add"),
    case(("[2, 6]", "[2]"), "[2, 6]", "add | relu"),
    case(("[4, 5, 5]", "[4, 5, 5]"), "[4, 5, 5]", "add"),
    case(("[4]", "[4, 5, 5]"), "[2, 5, 5]", "add | linear | relu"),
    case(("[2, 3, 4, 5]", "[2, 3, 4, 5]"), "[2, 3, 4, 5]", "add"),
    case(("[5]", "[5]"), "[5]", "mul"),
    case(("[2, 6]", "[2, 6]"), "[2, 6]", "mul"),
    case(("[4, 5, 5]", "[4]"), "[4, 5, 5]", "mul | sigmoid"),
    case(("[2, 3, 4, 5]", "[2]", "[2, 3, 4, 5]"), "[2, 3, 4, 5]", "mul"),
    # pooling
    case("[2, 9]", "[2, 4]", "maxpool(3, stride=2)"),
    case("[2, 10]", "[2, 5]", "maxpool(3, stride=2, ceil_mode=true)"),
    case("[1, 5]", "[1, 3]", "maxpool(2, padding=1, ceil_mode=true)"),
    case("[1, 2]", "[1, 1]", "maxpool(3, stride=2, ceil_mode=true)"),
    case(
        "[1, 4, 1]", "[1, 2, 1]", "avgpool([4, 3], stride=[2, 3], padding=[1, 0], ceil_mode=true)"
    ),
    case("[3, 8, 8]", "[3, 4, 4]", "maxpool(2)"),
    case("[3, 7, 9]", "[3, 4, 4]", "maxpool([3, 2], stride=[2, 2], padding=[1, 0])"),
    case("[2, 4, 6, 8]", "[2, 2, 3, 4]", "maxpool(2)"),
    case("[2, 4, 6, 7]", "[2, 2, 3, 4]", "maxpool(2, ceil_mode=true)"),
    case("[2, 9]", "[2, 3]", "avgpool(3)"),
    case("[2, 10]", "[2, 6]", "avgpool(3, stride=2, padding=1, ceil_mode=true)"),
    case("[3, 7, 9]", "[3, 4, 4]", "avgpool([3, 2], stride=2, padding=[1, 0])"),
    case("[3, 8, 8]", "[3, 8, 8]", "avgpool(3, stride=1, padding=1)"),
    case("[2, 4, 6, 8]", "[2, 2, 3, 4]", "avgpool(2)"),
    case("[3, 10]", "[3, 4]", "adaptive_avg_pool(4)"),
    case("[3, 7, 9]", "[3, 2, 3]", "adaptive_avg_pool([2, 3])"),
    case("[2, 4, 5, 6]", "[2, 1, 2, 3]", "adaptive_avg_pool([1, 2, 3])"),
    case("[3, 10]", "[3, 12]", "adaptive_max_pool(12)"),
    case("[3, 7, 9]", "[3, 1, 1]", "adaptive_max_pool(1)"),
    case("[2, 4, 5, 6]", "[2, 2, 2, 2]", "adaptive_max_pool([2, 2, 2])"),
    case("[3, 10]", "3", "global_avg_pool"),
    case("[3, 7, 9]", "[3]", "global_avg_pool"),
    case("[2, 4, 5, 6]", "2", "global_avg_pool"),
    case("[3, 10]", "3", "global_max_pool"),
    case("[3, 7, 9]", "[3]", "global_max_pool"),
    case("[2, 4, 5, 6]", "2", "global_max_pool"),
    # padding PyTorch's pools do not take themselves: F.pad first (-inf for the maximum)
    case("[2, 6]", "[2, 8]", "maxpool(3, stride=1, padding=2)"),
    case("[2, 6]", "[2, 4]", "avgpool(3, stride=2, padding=2)"),
    case("[3, 7, 9]", "[3, 4, 3]", "avgpool([2, 4], padding=[1, 3])"),
    case("[2, 3, 4, 5]", "[2, 5, 6, 7]", "maxpool(3, stride=1, padding=[2, 2, 2])"),
    # pad, crop, permute and transpose
    case("[2, 6]", "[2, 10]", "pad(2)"),
    case("[2, 6]", "[2, 10]", 'pad(2, mode="reflect")'),
    case("[2, 5, 6]", "[2, 7, 10]", "pad([1, 2], value=-1.5)"),
    case("[2, 5, 6]", "[2, 9, 8]", 'pad([2, 1], mode="circular")'),
    case("[2, 3, 4, 5]", "[2, 5, 6, 7]", 'pad(1, mode="replicate")'),
    case("[2, 7]", "[2, 3]", "crop(2)"),
    case("[2, 5, 6]", "[2, 5, 2]", "crop([0, 2])"),
    case("[2, 3, 4, 5]", "[2, 1, 2, 3]", "crop(1)"),
    case("[2, 5]", "[2, 5]", "permute(1)"),
    case("[2, 3, 4]", "[2, 4, 3]", "permute([2, 1])"),
    case("[2, 3, 4, 5]", "[2, 5, 3, 4]", "permute([3, 1, 2])"),
    case("[2, 5]", "[2, 5]", "transpose(1, 1)"),
    case("[2, 3, 4]", "[2, 4, 3]", "transpose(1, 2)"),
    case("[2, 3, 4, 5]", "[2, 5, 4, 3]", "transpose(3, 1)"),
    case("[2, 3, 4]", "[5, 4, 3]", "transpose(1, 2) | conv([3, 1], padding=[1, 0])"),
    # layernorm and rmsnorm over the trailing axes, or the channels at each position
    case("[4, 5, 6]", "[4, 5, 6]", "layernorm(axes=[1, 2])"),
    case("[4, 5, 6]", "[4, 5, 6]", "layernorm(axes=2, eps=0.01)"),
    case("[4, 5, 6]", "[4, 5, 6]", "layernorm(axes=[0, 1, 2])"),
    case("[2, 3, 4, 5]", "[2, 3, 4, 5]", "rmsnorm(axes=[2, 3])"),
    case("[4, 7]", "[3, 7]", 'conv(3, padding=1, out=5) | layernorm(axes="channels") | linear'),
    # upsample
    case("[2, 5]", "[2, 10]", 'upsample(2, mode="linear", align_corners=true)'),
    case("[2, 5]", "[2, 7]", "upsample(1.5)"),
    case("[3, 4, 5]", "[3, 8, 15]", 'upsample([2, 3], mode="bilinear")'),
    case("[3, 4, 4]", "[3, 6, 6]", 'upsample(1.5, mode="bicubic", align_corners=false)'),
    case("[3, 6, 6]", "[3, 3, 3]", "upsample(0.5)"),
    case("[2, 2, 3, 4]", "[2, 4, 6, 8]", 'upsample(2, mode="trilinear")'),
    case("[2, 2, 3, 4]", "[2, 2, 6, 2]", "upsample([1, 2, 0.5])"),
    # flatten and reshape
    case("[3, 4]", "12", "flatten"),
    case("[2, 3, 4]", "[24]", "flatten"),
    case("[2, 2, 2, 2]", "16", "flatten"),
    case("[12]", "[3, 4]", "reshape([3, 4])"),
    case("[2, 3, 4]", "[6, 4]", "reshape([6, 4])"),
    case("[2, 3, 4]", "24", "reshape(24)"),
    case("[24]", "[2, 3, 4]", "reshape([2, 3, 4])"),
    case("[2, 2, 3, 4]", "[4, 12]", "reshape([4, 12])"),
    case("[4, 12]", "[2, 2, 3, 4]", "reshape([2, 2, 3, 4])"),
    # module: any nn.Module class by its dotted path
    case("8", "8", 'module("torch.nn.Identity")'),
    case("[3, 4]", "[3, 4]", 'module("torch.nn.ReLU")'),
    case("[3, 4]", "12", 'module("torch.nn.Flatten")'),
    case("[3, 6, 6]", "[8, 6, 6]", 'module("torch.nn.Conv2d", 3, 8, 3, padding=1)'),
    case("[3, 6, 6]", "[8, 4, 4]", 'module("torch.nn.Conv2d", 3, 8, 3, shape=[8, 4, 4]) | relu'),
    case("[2, 3, 4, 5]", "[2, 3, 4, 5]", 'module(path="torch.nn.Identity")'),
    # pipelines mixing them
    case("[3, 8, 8]", "10", "conv(3, out=6) | maxpool(2) | flatten | linear"),
    case("[3, 8, 8]", "[5, 8, 8]", "conv(3, stride=2, padding=1) | upsample(2) | relu"),
]


def _case_id(c: Case) -> str:
    return str(c)


def _ranks(shape_text: str) -> int:
    return shape_text.count(",") + 1 if shape_text.startswith("[") else 1


def test_every_op_has_a_case_for_every_rank_it_accepts() -> None:
    """A new op (or a new accepted rank) fails here until the table has a case for it."""
    missing = []
    for name, spec in OPS.items():
        if name in SEQUENCE_OPS:
            continue  # (tested in tests/e2e/test_sequences.py)
        lo, hi = spec.ranks
        tried = {_ranks(c.ins[0]) for c in CASES if c.kinds[0] == name}
        missing += [(name, r) for r in range(lo, min(hi, 4) + 1) if r not in tried]
    assert not missing


def assert_close(got: torch.Tensor, expected: torch.Tensor, what: str = "") -> None:
    """Like torch.testing.assert_close, without its slow first call."""
    assert got.shape == expected.shape, (what, got.shape, expected.shape)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6), (what, got, expected)


def _random_input(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(BATCH, *shape)


@pytest.mark.parametrize("c", CASES, ids=_case_id)
def test_shapes_agree_with_torch(c: Case) -> None:
    text = source(list(c.ins), c.out, c.pipeline)
    cls, machine, _ = build(text)
    shapes = machine.structure.shapes["e"]
    assert shapes[-1] == cls.SPACES["y"]
    assert len(shapes) == len(c.kinds) + 1
    torch.manual_seed(0)
    model = cls()
    inputs = [_random_input(cls.SPACES[INPUT_NAMES[i]]) for i in range(len(c.ins))]
    for mode in (True, False):
        model.train(mode)
        with torch.no_grad():
            y = model(*inputs)
        assert tuple(y.shape) == (BATCH, *shapes[-1]), (tuple(y.shape), shapes)
        assert torch.isfinite(y).all()
    if "module" not in c.kinds:  # a user module's parameters are its own business
        ops = machine.machine.edges[0].ops
        expected = sum(
            OPS[op.kind].params(op.args, shapes[i], shapes[i + 1]) for i, op in enumerate(ops)
        )
        assert expected == sum(p.numel() for p in model.parameters())
    for i, op in enumerate(machine.machine.edges[0].ops):
        macs = OPS[op.kind].macs(op.args, shapes[i], shapes[i + 1])
        if OPS[op.kind].layer is None:
            assert macs == 0
        elif op.kind in ("linear", "conv", "conv_transpose"):
            weights = OPS[op.kind].params(op.args, shapes[i], shapes[i + 1])
            weights -= shapes[i + 1][0] if op.args["bias"] else 0
            positions = shapes[i + 1 if op.kind != "conv_transpose" else i][1:]
            assert macs == weights * _prod(positions)


def _prod(values) -> int:
    out = 1
    for v in values:
        out *= v
    return out


@pytest.mark.parametrize(
    ("ins", "out", "pipeline", "params", "macs"),
    [
        ("8", "5", "linear", 8 * 5 + 5, 8 * 5),
        ("8", "5", "linear(bias=false)", 8 * 5, 8 * 5),
        ("[3, 6, 7]", "[4, 6, 7]", "linear", 3 * 4 + 4, 3 * 4 * 6 * 7),
        ("[3, 8, 8]", "[6, 8, 8]", "conv(3, padding=1)", 6 * 3 * 9 + 6, 6 * 3 * 9 * 64),
        (
            "[4, 8, 8]",
            "[6, 4, 4]",
            "conv([3, 5], stride=2, padding=[1, 2], groups=2, bias=false)",
            6 * 2 * 15,
            6 * 2 * 15 * 16,
        ),
        ("[2, 6, 6, 6]", "[4, 4, 4, 4]", "conv(3)", 4 * 2 * 27 + 4, 4 * 2 * 27 * 64),
        (
            "[4, 5]",
            "[2, 10]",
            "conv_transpose(4, stride=2, padding=1)",
            4 * 2 * 4 + 2,
            4 * 2 * 4 * 5,
        ),
        (
            "[4, 5, 6]",
            "[6, 11, 15]",
            "conv_transpose([3, 5], stride=2, groups=2, bias=false)",
            4 * 3 * 15,
            4 * 3 * 15 * 30,
        ),
        ("[4, 5]", "[4, 5]", "rmsnorm", 4 * 5, 0),
        ("[2, 3, 4]", "[2, 3, 4]", "rmsnorm(affine=false)", 0, 0),
    ],
)
def test_params_and_macs_by_formula(ins, out, pipeline, params, macs) -> None:
    cls, machine, _ = build(source([ins], out, pipeline))
    (op,) = machine.machine.edges[0].ops
    before, after = machine.structure.shapes["e"]
    assert OPS[op.kind].params(op.args, before, after) == params
    assert sum(p.numel() for p in cls().parameters()) == params
    assert OPS[op.kind].macs(op.args, before, after) == macs


def test_add_broadcasts_vectors_like_torch() -> None:
    cls, _, _ = build(source(["[3, 4, 5]", "[3]", "[3, 4, 5]"], "[3, 4, 5]", "add"))
    a, b, c = torch.randn(2, 3, 4, 5), torch.randn(2, 3), torch.randn(2, 3, 4, 5)
    assert_close(cls()(a, b, c), a + b[:, :, None, None] + c)
    cls, _, _ = build(source(["[3]", "[3, 4, 5]"], "[3, 4, 5]", "mul"))
    assert_close(cls()(b, a), b[:, :, None, None] * a)
    cls, _, _ = build(source(["[3, 4]", "[3, 4]"], "[3, 4]", "mul"))
    a, b = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    assert_close(cls()(a, b), a * b)


def test_ops_compute_what_torch_computes() -> None:
    """A few numeric spot checks, beyond shapes: the generated calls are the right ones."""
    x = torch.randn(2, 3, 6, 6)
    cases = [
        ("maxpool(3, stride=2, padding=1)", "[3, 3, 3]",
         lambda x: torch.nn.functional.max_pool2d(x, 3, stride=2, padding=1)),
        ("avgpool(2)", "[3, 3, 3]", lambda x: torch.nn.functional.avg_pool2d(x, 2)),
        ("global_max_pool", "3", lambda x: x.amax(dim=(2, 3))),
        ("global_avg_pool", "3", lambda x: x.mean(dim=(2, 3))),
        ('upsample(2, mode="bilinear")', "[3, 12, 12]",
         lambda x: torch.nn.functional.interpolate(x, scale_factor=2, mode="bilinear")),
        ("softmax", "[3, 6, 6]", lambda x: torch.softmax(x, dim=1)),
        ("flatten | reshape([3, 6, 6])", "[3, 6, 6]", lambda x: x),
        ("reshape([6, 18])", "[6, 18]", lambda x: x.reshape(2, 6, 18)),
        ("leaky_relu(slope=0.2)", "[3, 6, 6]", lambda x: torch.where(x > 0, x, 0.2 * x)),
        ("gelu", "[3, 6, 6]", torch.nn.functional.gelu),
        ('gelu(approximate="tanh")', "[3, 6, 6]",
         lambda x: torch.nn.functional.gelu(x, approximate="tanh")),
    ]  # fmt: skip
    for pipeline, out, expected in cases:
        cls, _, _ = build(source(["[3, 6, 6]"], out, pipeline))
        assert_close(cls()(x), expected(x), pipeline)


@pytest.mark.parametrize("rank", [1, 2, 3, 4])
@pytest.mark.parametrize("args", ["", "(eps=0.5)", "(affine=false)", "(eps=0.5, affine=false)"])
def test_rmsnorm_computes_what_torch_computes(rank: int, args: str) -> None:
    shape = RANK_SHAPES[rank]
    cls, _, _ = build(source([shape], shape, f"rmsnorm{args}"))
    torch.manual_seed(0)
    model = cls()
    affine = "affine=false" not in args
    eps = 0.5 if "eps" in args else None
    expected = torch.nn.RMSNorm(list(cls.SPACES["a"]), eps=eps, elementwise_affine=affine)
    if affine:  # a learned scale other than ones, the same in both
        with torch.no_grad():
            model.e.weight.normal_()
            expected.weight.copy_(model.e.weight)
    x = _random_input(cls.SPACES["a"])
    with torch.no_grad():
        assert_close(model(x), expected(x), args)


def test_dropout_only_while_training() -> None:
    x = torch.ones(4, 8, 5, 5)
    for pipeline in ("dropout(0.5)", "channel_dropout(0.5)"):
        model = build(source(["[8, 5, 5]"], "[8, 5, 5]", pipeline))[0]()
        torch.manual_seed(0)
        y = model.train()(x)
        assert (y == 0).any() and (y == 2).any(), pipeline  # dropped, and the rest scaled
        if pipeline.startswith("channel"):  # whole channels at a time
            assert (y.amax(dim=(2, 3)) == y.amin(dim=(2, 3))).all()
        assert torch.equal(model.eval()(x), x), pipeline


# --- inference of channel counts ------------------------------------------------------------


def shapes_of(ins: str, out: str, pipeline: str) -> tuple:
    (machine,) = machc.check_source(source([ins], out, pipeline), "t.mach").program.machines
    return machine.structure.shapes["e"]


def test_the_last_channel_changer_takes_the_outputs_channels() -> None:
    assert shapes_of("[3, 8, 8]", "[5, 8, 8]", "conv(3, padding=1) | relu") == (
        (3, 8, 8),
        (5, 8, 8),
        (5, 8, 8),
    )
    assert shapes_of("8", "6", "linear | relu") == ((8,), (6,), (6,))
    assert shapes_of("[3, 8, 8]", "[4, 4, 4]", "conv(out=8, kernel=3) | relu | conv(3)") == (
        (3, 8, 8),
        (8, 6, 6),
        (8, 6, 6),
        (4, 4, 4),
    )
    assert shapes_of("[3, 4, 4]", "5", "linear | global_avg_pool") == ((3, 4, 4), (5, 4, 4), (5,))
    assert shapes_of("[3, 4, 4]", "5", 'module("torch.nn.Flatten", shape=[48]) | linear') == (
        (3, 4, 4),
        (48,),
        (5,),
    )


def test_channels_are_inferred_through_flatten() -> None:
    assert shapes_of("[3, 6, 6]", "80", "conv(3) | flatten") == ((3, 6, 6), (5, 4, 4), (80,))
    assert shapes_of("[3, 6, 6]", "32", "conv(3, stride=2) | relu | flatten") == (
        (3, 6, 6),
        (8, 2, 2),
        (8, 2, 2),
        (32,),
    )
    cls, _, _ = build(source(["[3, 6, 6]"], "80", "conv(3) | flatten"))
    assert cls()(torch.randn(2, 3, 6, 6)).shape == (2, 80)
    op_error(
        "[3, 6, 6]",
        "81",
        "conv(3) | flatten",
        "E009",
        "conv cannot produce the 81 channels the outputs need: the ops after it multiply "
        "its channels by 16",
        "conv(3)",
        hint="give conv(out=N)",
    )


def test_reshape_after_the_last_changer_needs_out() -> None:
    op_error(
        "8",
        "[2, 4, 4]",
        "linear | reshape([2, 4, 4])",
        "E009",
        "reshape to [2, 4, 4] needs 32 elements, but [2] has 2",
        "reshape([2, 4, 4])",
        hint="give linear(out=N)",
    )
    assert shapes_of("8", "[2, 4, 4]", "linear(out=32) | reshape([2, 4, 4])")[1] == (32,)


def test_earlier_changers_need_out() -> None:
    op_error(
        "[3, 8, 8]",
        "[4, 8, 8]",
        "conv(3, padding=1) | relu | conv(3, padding=1)",
        "E009",
        "conv needs out= here: only the last channel-changing op of a pipeline takes its size "
        "from the edge's outputs",
        "conv(3, padding=1)",
        hint="write conv(out=N)",
    )
    op_error(
        "8",
        "4",
        "linear | linear",
        "E009",
        "linear needs out= here",
        "linear",
        hint="write linear(out=N)",
    )
    op_error(
        "8",
        "4",
        'module("torch.nn.Identity") | linear',
        "E009",
        "module needs shape= here",
        'module("torch.nn.Identity")',
        hint="write module(shape=[...])",
    )


def test_module_without_shape_when_later_ops_change_the_shape() -> None:
    op_error(
        "[3, 8, 8]",
        "192",
        'module("torch.nn.Identity") | flatten',
        "E009",
        "flatten needs a signal [C, L], an image [C, H, W] or a volume [C, D, H, W], got [192]",
        "flatten",
        hint="give module(..., shape=[...])",
    )
    op_error(
        "[3, 8, 8]",
        "3",
        'module("torch.nn.Identity") | global_avg_pool',
        "E009",
        "global_avg_pool needs",
        "global_avg_pool",
        hint="give module(..., shape=[...])",
    )
    assert shapes_of("[3, 8, 8]", "192", 'module("torch.nn.Identity", shape=[3, 8, 8]) | flatten')


# --- shape errors ---------------------------------------------------------------------------

# One valid use of each op that rejects some ranks: tried on every rank it rejects.
RANK_RESTRICTED = {
    "conv": "conv(1)",
    "conv_transpose": "conv_transpose(1)",
    "channel_dropout": "channel_dropout",
    "instancenorm": "instancenorm",
    "maxpool": "maxpool(1)",
    "avgpool": "avgpool(1)",
    "adaptive_avg_pool": "adaptive_avg_pool(1)",
    "adaptive_max_pool": "adaptive_max_pool(1)",
    "global_avg_pool": "global_avg_pool",
    "global_max_pool": "global_max_pool",
    "upsample": "upsample(2)",
    "flatten": "flatten",
    "pad": "pad(1)",
    "crop": "crop(0)",
    "permute": "permute(1)",
    "transpose": "transpose(1, 1)",
}


def _rejected() -> list[tuple[str, int]]:
    return [
        (name, rank)
        for name, spec in OPS.items()
        for rank in range(1, 5)
        if not spec.ranks[0] <= rank <= spec.ranks[1]
        and name not in SEQUENCE_OPS  # (tested in tests/e2e/test_sequences.py)
    ]


def test_rank_restricted_ops_all_have_a_rejection_case() -> None:
    assert {name for name, _ in _rejected()} == set(RANK_RESTRICTED)


@pytest.mark.parametrize(("name", "rank"), _rejected())
def test_wrong_rank_is_an_error_at_the_op(name: str, rank: int) -> None:
    shape = RANK_SHAPES[rank]
    d = op_error(
        shape, shape, RANK_RESTRICTED[name], "E009", f"{name} needs ", RANK_RESTRICTED[name]
    )
    assert d.message.endswith(f"got {shape}")
    assert d.hint is None  # out= could not help: the rank is wrong
    lo, hi = OPS[name].ranks
    if (lo, hi) == (2, 4):
        assert "a signal [C, L], an image [C, H, W] or a volume [C, D, H, W]" in d.message


def test_wrong_rank_after_other_ops() -> None:
    d = op_error(
        "8",
        "16",
        "linear | flatten",
        "E009",
        "flatten needs a signal [C, L], an image [C, H, W] or a volume [C, D, H, W], got [16]",
        "flatten",
    )
    assert d.hint is None  # linear(out=N) cannot fix a rank
    op_error(
        "[32]",
        "4",
        "reshape([2, 2, 2, 2, 2]) | linear",
        "E009",
        "linear needs a vector, signal, image or volume, got [2, 2, 2, 2, 2]",
        "linear",
    )
    op_error(
        "[4, 3, 3]",
        "4",
        "global_avg_pool | maxpool(2)",
        "E009",
        "maxpool needs a signal [C, L], an image [C, H, W] or a volume [C, D, H, W], got [4]",
        "maxpool(2)",
    )


@pytest.mark.parametrize(
    ("ins", "out", "pipeline", "message", "span_text"),
    [
        ("[3, 4, 4]", "[3, 1, 1]", "conv(5)", "kernel 5 is larger than the input's axis 1 (4) of "
         "[3, 4, 4]", "conv(5)"),
        ("[3, 4, 8]", "[3, 1, 1]", "conv([3, 9])", "kernel 9 is larger than the input's axis 2 "
         "(8) of [3, 4, 8]", "conv([3, 9])"),
        ("[3, 4, 4]", "[3, 1, 1]", "conv(3, dilation=2)", "kernel 3 (spanning 5 with dilation 2) "
         "is larger than the input's axis 1 (4) of [3, 4, 4]", "conv(3, dilation=2)"),
        ("[3, 2]", "[3, 1]", "conv(5, padding=1)", "kernel 5 is larger than the input's axis 1 "
         "(2 padded to 4) of [3, 2]", "conv(5, padding=1)"),
        ("[3, 3, 3]", "[3, 1, 1]", "maxpool(4)", "kernel 4 is larger than the input's axis 1 (3)",
         "maxpool(4)"),
        ("[3, 2]", "[3, 1]", "maxpool(3, stride=1, ceil_mode=true)", "kernel 3 is larger than "
         "the input's axis 1 (2)", "maxpool(3, stride=1, ceil_mode=true)"),
        ("[2, 4]", "[2, 4]", 'conv(3, padding=4, padding_mode="reflect")', 'padding 4 with '
         'padding_mode="reflect" must be smaller than the input\'s axis 1 (4) of [2, 4]',
         'conv(3, padding=4, padding_mode="reflect")'),
        ("[2, 3, 2]", "[2, 3, 2]", 'conv(5, padding="same", padding_mode="reflect")', "padding 2 "
         'with padding_mode="reflect" must be smaller than the input\'s axis 2 (2) of [2, 3, 2]',
         'conv(5, padding="same", padding_mode="reflect")'),
        ("[2, 4, 4]", "[2, 4, 4]", 'conv(3, padding=[1, 5], padding_mode="circular")', "padding 5 "
         'with padding_mode="circular" must be at most the input\'s axis 2 (4) of [2, 4, 4]',
         'conv(3, padding=[1, 5], padding_mode="circular")'),
        ("[3, 3, 3, 3]", "[3, 1, 1, 1]", "avgpool([2, 2, 5])", "kernel 5 is larger than the "
         "input's axis 3 (3)", "avgpool([2, 2, 5])"),
        ("[3, 8, 8]", "[3, 8, 8]", "conv([3, 3, 3])", "kernel=[3, 3, 3] has 3 values, but the "
         "input [3, 8, 8] has 2 spatial axes", "conv([3, 3, 3])"),
        ("[3, 8, 8]", "[3, 8, 8]", "conv(3, stride=[1])", "stride=[1] has 1 values, but the input "
         "[3, 8, 8] has 2 spatial axes", "conv(3, stride=[1])"),
        ("[3, 8, 8]", "[3, 8, 8]", "conv(3, padding=[1, 1, 1])", "padding=[1, 1, 1] has 3 values",
         "conv(3, padding=[1, 1, 1])"),
        ("[3, 8]", "[3, 8]", "conv(3, dilation=[1, 1])", "dilation=[1, 1] has 2 values, but the "
         "input [3, 8] has 1 spatial axes", "conv(3, dilation=[1, 1])"),
        ("[3, 8, 8]", "[3, 4, 4]", "maxpool(2, stride=[2, 2, 2])", "stride=[2, 2, 2] has 3 values",
         "maxpool(2, stride=[2, 2, 2])"),
        ("[3, 8, 8]", "[3, 4, 4]", "conv_transpose([2, 2, 2])", "kernel=[2, 2, 2] has 3 values",
         "conv_transpose([2, 2, 2])"),
        ("[3, 8, 8]", "[3, 4, 4]", "conv_transpose(2, output_padding=[0])",
         "output_padding=[0] has 1 values", "conv_transpose(2, output_padding=[0])"),
        ("[3, 8, 8]", "[3, 4, 4]", "adaptive_avg_pool([4])", "size=[4] has 1 values",
         "adaptive_avg_pool([4])"),
        ("[3, 8, 8]", "[3, 4, 4]", "adaptive_max_pool([4, 4, 4])", "size=[4, 4, 4] has 3 values",
         "adaptive_max_pool([4, 4, 4])"),
        ("[3, 8, 8]", "[3, 16, 16]", "upsample([2, 2, 2])", "scale=[2, 2, 2] has 3 values",
         "upsample([2, 2, 2])"),
        ("[3, 8, 8]", "[3, 4, 4]", 'conv(3, stride=2, padding="same")', 'padding="same" needs '
         "stride 1", 'conv(3, stride=2, padding="same")'),
        ("[3, 8, 8]", "[3, 4, 4]", 'conv(3, stride=[1, 2], padding="same")', 'padding="same" '
         "needs stride 1", 'conv(3, stride=[1, 2], padding="same")'),
        ("[3, 8, 8]", "[3, 4, 4]", "maxpool(3, padding=3)", "padding 3 is not smaller than the "
         "kernel 3: some windows would hold padding only", "maxpool(3, padding=3)"),
        ("[3, 8, 8]", "[3, 4, 4]", "avgpool([2, 4], padding=[1, 4])", "padding 4 is not smaller "
         "than the kernel 4", "avgpool([2, 4], padding=[1, 4])"),
        ("[3, 8, 8]", "[3, 4, 4]", "maxpool(3, padding=2, ceil_mode=true)", "ceil_mode=true needs "
         "padding that PyTorch's pooling takes itself", "maxpool(3, padding=2, ceil_mode=true)"),
        ("[2, 4]", "[2, 8]", 'pad(4, mode="reflect")', 'padding 4 with mode="reflect" must be '
         "smaller than the input's axis 1 (4) of [2, 4]", 'pad(4, mode="reflect")'),
        ("[2, 4, 3]", "[2, 6, 11]", 'pad([1, 4], mode="circular")', 'padding 4 with '
         'mode="circular" must be at most the input\'s axis 2 (3) of [2, 4, 3]',
         'pad([1, 4], mode="circular")'),
        ("[2, 4]", "[2, 6]", 'pad(1, value=2, mode="reflect")', 'value= is the fill of '
         'mode="constant", not of mode="reflect"', 'pad(1, value=2, mode="reflect")'),
        ("[2, 4]", "[2, 4]", "pad([1, 1])", "amount=[1, 1] has 2 values, but the input [2, 4] "
         "has 1 spatial axes", "pad([1, 1])"),
        ("[2, 4]", "[2, 1]", "crop(2)", "crop(2) removes 4 positions from the input's axis 1 (4) "
         "of [2, 4], leaving none", "crop(2)"),
        ("[2, 4, 9]", "[2, 4, 1]", "crop([0, 5])", "crop([0, 5]) removes 10 positions from the "
         "input's axis 2 (9) of [2, 4, 9], leaving none", "crop([0, 5])"),
        ("[2, 4, 5]", "[2, 5, 4]", "permute([2, 0])", "permute([2, 0]) reorders the spatial axes "
         "(1 to 2 of [2, 4, 5]); the channel axis 0 stays first", "permute([2, 0])"),
        ("[2, 4, 5]", "[2, 5, 4]", "permute([2, 2])", "permute([2, 2]) must name each spatial "
         "axis of [2, 4, 5] once: a reordering of [1, 2]", "permute([2, 2])"),
        ("[2, 4, 5]", "[2, 5, 4]", "permute([2, 3, 1])", "permute([2, 3, 1]) names axis 3, but "
         "the spatial axes of [2, 4, 5] are 1 to 2", "permute([2, 3, 1])"),
        ("[2, 4, 5]", "[2, 5, 4]", "permute(2)", "permute(2) must name each spatial axis of "
         "[2, 4, 5] once", "permute(2)"),
        ("[2, 4]", "[2, 4]", "transpose(1, 2)", "transpose(1, 2) names axis 2, but the spatial "
         "axes of [2, 4] are 1", "transpose(1, 2)"),
        ("[2, 4, 5]", "[4, 2, 5]", "transpose(0, 1)", "transpose(0, 1) reorders the spatial axes "
         "(1 to 2 of [2, 4, 5]); the channel axis 0 stays first", "transpose(0, 1)"),
        ("[2, 4, 5]", "[2, 5, 4]", "transpose(-1, 1)", "transpose(-1, 1) names axis -1",
         "transpose(-1, 1)"),
        ("[2, 4, 5]", "[2, 4, 5]", "layernorm(axes=[0, 2])", "axes=[0, 2] of [2, 4, 5] are "
         "neither its trailing axes (a run ending at axis 2, as nn.LayerNorm normalises) nor the "
         "channel axis 0 alone", "layernorm(axes=[0, 2])"),
        ("[2, 4, 5]", "[2, 4, 5]", "layernorm(axes=[2, 1])", "axes=[2, 1] of [2, 4, 5] are "
         "neither", "layernorm(axes=[2, 1])"),
        ("[2, 4]", "[2, 4]", "rmsnorm(axes=2)", "axes=2 of [2, 4] are neither",
         "rmsnorm(axes=2)"),
        ("[4, 8, 8]", "[4, 8, 8]", "conv(3, padding=1, groups=3)", "groups=3 does not divide the "
         "4 input channels", "conv(3, padding=1, groups=3)"),
        ("[6, 8, 8]", "[4, 8, 8]", "conv(3, padding=1, groups=3)", "groups=3 does not divide the "
         "4 output channels", "conv(3, padding=1, groups=3)"),
        ("[4, 8]", "[6, 10]", "conv_transpose(3, groups=4)", "groups=4 does not divide the 6 "
         "output channels", "conv_transpose(3, groups=4)"),
        ("[3, 8]", "[6, 10]", "conv_transpose(3, groups=2)", "groups=2 does not divide the 3 "
         "input channels", "conv_transpose(3, groups=2)"),
        ("[6, 8, 8]", "[6, 8, 8]", "groupnorm(4)", "groups=4 does not divide the 6 channels",
         "groupnorm(4)"),
        ("[6]", "[6]", "groupnorm(5)", "groups=5 does not divide the 6 channels", "groupnorm(5)"),
        ("[4, 1, 1]", "[4, 1, 1]", "groupnorm(4)", "a group of [4, 1, 1] holds one value",
         "groupnorm(4)"),
        ("[4, 7, 7]", "[2, 15, 15]", "conv_transpose(3, stride=2, output_padding=2)",
         "output_padding 2 must be smaller than the stride 2 or the dilation 1",
         "conv_transpose(3, stride=2, output_padding=2)"),
        ("[4, 7, 7]", "[2, 15, 15]", "conv_transpose(3, output_padding=[0, 1])",
         "output_padding 1 must be smaller than the stride 1 or the dilation 1",
         "conv_transpose(3, output_padding=[0, 1])"),
        ("[4, 1, 1]", "[2, 1, 1]", "conv_transpose(1, padding=1)", "padding 1 removes the whole "
         "output of [4, 1, 1]", "conv_transpose(1, padding=1)"),
        ("[4, 2]", "[2, 1]", "conv_transpose(3, stride=2, padding=[3])", "padding 3 removes the "
         "whole output of [4, 2]", "conv_transpose(3, stride=2, padding=[3])"),
        ("[3, 5]", "[3, 10]", 'upsample(2, mode="bilinear")', 'mode "bilinear" is for images, but '
         "the input [3, 5] has 1 spatial axes", 'upsample(2, mode="bilinear")'),
        ("[3, 5, 5]", "[3, 10, 10]", 'upsample(2, mode="linear")', 'mode "linear" is for signals',
         'upsample(2, mode="linear")'),
        ("[3, 5, 5, 5]", "[3, 10, 10, 10]", 'upsample(2, mode="bicubic")', 'mode "bicubic" is for '
         "images, but the input [3, 5, 5, 5] has 3 spatial axes", 'upsample(2, mode="bicubic")'),
        ("[3, 5, 5]", "[3, 10, 10]", 'upsample(2, mode="trilinear")', 'mode "trilinear" is for '
         "volumes", 'upsample(2, mode="trilinear")'),
        ("[3, 5, 5]", "[3, 10, 10]", "upsample(2, align_corners=true)", "align_corners applies to "
         'the interpolating modes, not "nearest"', "upsample(2, align_corners=true)"),
        ("[3, 5, 5]", "[3, 10, 10]", "upsample([2, 0.1])", "scale [2, 0.1] shrinks [3, 5, 5] to 0",
         "upsample([2, 0.1])"),
        ("[3, 5, 5]", "[3, 10, 10]", "reshape([3, 10, 10])", "reshape to [3, 10, 10] needs 300 "
         "elements, but [3, 5, 5] has 75", "reshape([3, 10, 10])"),
        ("[12]", "[5]", "reshape(5)", "reshape to [5] needs 5 elements, but [12] has 12",
         "reshape(5)"),
        ("8", "8", "relu | add", "add combines the edge's inputs, so it must be the first op of "
         "the pipeline", "add"),
        ("8", "8", "linear | mul", "mul combines the edge's inputs, so it must be the first op",
         "mul"),
    ],
)  # fmt: skip
def test_shape_errors(ins, out, pipeline, message, span_text) -> None:
    op_error(ins, out, pipeline, "E009", message, span_text)


def test_upsample_mode_hint_names_the_right_mode() -> None:
    for shape, mode, right in (
        ("[3, 5]", "bicubic", "linear"),
        ("[3, 5, 5]", "linear", "bilinear"),
        ("[3, 2, 2, 2]", "bilinear", "trilinear"),
    ):
        op = f'upsample(1, mode="{mode}")'
        op_error(shape, shape, op, "E009", f'mode "{mode}" is for', op, hint=f'use mode="{right}"')


def test_add_and_mul_of_different_shapes() -> None:
    op_error(
        ["[4, 5, 5]", "[4, 5, 4]"],
        "[4, 5, 5]",
        "add",
        "E009",
        "edge 'e' adds spaces of different shapes: a [4, 5, 5] and b [4, 5, 4]",
        "b",
        hint="add needs inputs of one shape (or [C] vectors, broadcast over the spatial axes)",
    )
    op_error(
        ["[3]", "[4, 5, 5]"],
        "[4, 5, 5]",
        "mul",
        "E009",
        "edge 'e' multiplies spaces of different shapes: b [4, 5, 5] and a [3]",
        "a",
        hint="mul needs inputs of one shape",
    )
    op_error(
        ["[4, 5]", "[4, 5, 5]"],
        "[4, 5, 5]",
        "add",
        "E009",
        "adds spaces of different shapes: b [4, 5, 5] and a [4, 5]",
        "a",
    )
    op_error(["4", "5"], "4", "add | relu", "E009", "a [4] and b [5]", "b")


def test_products_of_spaces_with_different_spatial_shapes() -> None:
    op_error(
        ["[2, 8, 8]", "[3, 4, 4]"],
        "[5, 8, 8]",
        "conv(3, padding=1)",
        "E009",
        "edge 'e' reads spaces whose shapes differ beyond the channel axis: a [2, 8, 8] and "
        "b [3, 4, 4]",
        "b",
        hint="a product of spaces joins them along the channel axis",
    )
    op_error(["[2, 8]", "2"], "4", "flatten", "E009", "a [2, 8] and b [2]", "b")
    text = textwrap.dedent(
        """\
        machine M {
            input x : [3, 8, 8]
            output y1 : [4, 8, 8]
            output y2 : [4, 4, 4]
            e : x -> y1 × y2 = conv(3, padding=1)
        }
        """
    )
    d = assert_error(
        text,
        "E009",
        "edge 'e' writes spaces whose shapes differ beyond the channel axis: y1 [4, 8, 8] and "
        "y2 [4, 4, 4]",
        "y2",
    )
    assert d.span.line == 5


def test_products_split_channels() -> None:
    text = textwrap.dedent(
        """\
        machine M {
            input a : [2, 6, 6]
            input b : [3, 6, 6]
            output y1 : [4, 3, 3]
            output y2 : [1, 3, 3]
            e : a × b -> y1 × y2 = conv(3, stride=2, padding=1)
        }
        """
    )
    cls, machine, _ = build(text)
    assert machine.structure.shapes["e"] == ((5, 6, 6), (5, 3, 3))
    y1, y2 = cls()(torch.randn(2, 2, 6, 6), torch.randn(2, 3, 6, 6))
    assert y1.shape == (2, 4, 3, 3) and y2.shape == (2, 1, 3, 3)


def test_final_shape_mismatch_lists_every_step() -> None:
    text = source(["[3, 8, 8]"], "[4, 4, 4]", "conv(3, out=4) | maxpool(2) | relu")
    d = assert_error(
        text,
        "E009",
        "edge 'e': the pipeline produces [4, 3, 3], but the outputs need [4, 4, 4] "
        "([3, 8, 8] -> conv [4, 6, 6] -> maxpool [4, 3, 3] -> relu [4, 3, 3])",
        "conv(3, out=4) | maxpool(2) | relu",
    )
    assert d.hint is None
    op_error(
        "3",
        "4",
        "relu",
        "E009",
        "the pipeline produces [3], but the outputs need [4] ([3] -> relu [3])",
        "relu",
        hint="no op of this pipeline changes the channels; add a linear to map between them",
    )
    op_error(
        ["[3, 4, 4]", "[1, 4, 4]"],
        "[5, 4, 4]",
        "identity | tanh",
        "E009",
        "produces [4, 4, 4], but the outputs need [5, 4, 4] ([4, 4, 4] -> identity [4, 4, 4] -> "
        "tanh [4, 4, 4])",
        "identity | tanh",
        hint="add a linear",
    )
    op_error(
        "[3, 8, 8]", "[3, 8, 8]", "maxpool(2)", "E009", "produces [3, 4, 4], but the", "maxpool(2)"
    )


# --- argument errors (E008 and E005) ------------------------------------------------------


@pytest.mark.parametrize(
    ("ins", "pipeline", "message", "span_text"),
    [
        ("[3, 8, 8]", "conv(kernel=true)", "argument 'kernel' of conv must be an integer or a "
         "list of integers, got true", "kernel=true"),
        ("[3, 8, 8]", "conv(3.5)", "argument 'kernel' of conv must be an integer or a list of "
         "integers, got 3.5", "3.5"),
        ("[3, 8, 8]", 'conv(3, padding="full")', "argument 'padding' of conv must be one of "
         '"same", "valid", got "full"', 'padding="full"'),
        ("[3, 8, 8]", "conv(3, padding=-1)", "argument 'padding' of conv must not be negative, "
         "got -1", "padding=-1"),
        ("[3, 8, 8]", "conv(3, padding=true)", "argument 'padding' of conv must be an integer or "
         "a list of integers and [before, after] pairs or a string, got true", "padding=true"),
        ("[3, 8]", "pad(-1)", "argument 'amount' of pad must not be negative, got -1", "-1"),
        ("[3, 8, 8]", "crop([1, -2])", "argument 'amount' of crop must not be negative, got -2",
         "[1, -2]"),
        ("[3, 8, 8]", "crop(1.5)", "argument 'amount' of crop must be an integer or a list of "
         "integers and [before, after] pairs, got 1.5", "1.5"),
        ("[3, 8, 8]", "crop([])", "argument 'amount' of crop must be an integer or a list of "
         "integers and [before, after] pairs, got []", "[]"),
        ("[3, 8]", "pad", "pad needs the argument 'amount'", "pad"),
        ("[3, 8]", "pad(1, value=true)", "argument 'value' of pad must be a number", "value=true"),
        ("[3, 8]", 'pad(1, mode="zeros")', "argument 'mode' of pad must be one of \"constant\", "
         '"reflect", "replicate", "circular", got "zeros"', 'mode="zeros"'),
        ("[3, 8, 8]", "permute([1.5, 2])", "argument 'order' of permute must be an integer or a "
         "list of integers", "[1.5, 2]"),
        ("[3, 8, 8]", "transpose(1)", "transpose needs the argument 'b'", "transpose(1)"),
        ("[3, 8, 8]", 'layernorm(axes="positions")', "argument 'axes' of layernorm must be one "
         'of "all", "channels", got "positions"', 'axes="positions"'),
        ("[3, 8, 8]", "layernorm(axes=[-1])", "argument 'axes' of layernorm must not be "
         "negative, got -1", "axes=[-1]"),
        ("[3, 8, 8]", "conv([3, 0])", "argument 'kernel' of conv must be positive, got 0",
         "[3, 0]"),
        ("[3, 8, 8]", "conv([])", "argument 'kernel' of conv must be an integer or a list of "
         "integers, got []", "[]"),
        ("[3, 8, 8]", "conv([3, true])", "argument 'kernel' of conv must be an integer or a "
         "list of integers", "[3, true]"),
        ("[3, 8, 8]", "conv(3, stride=0)", "argument 'stride' of conv must be positive, got 0",
         "stride=0"),
        ("[3, 8, 8]", "conv(3, groups=[1, 2])", "argument 'groups' of conv must be an integer, "
         "got [1, 2]", "groups=[1, 2]"),
        ("[3, 8, 8]", "conv(3, bias=1)", "argument 'bias' of conv must be true or false, got 1",
         "bias=1"),
        ("[3, 8, 8]", "conv(3, out=0)", "argument 'out' of conv must be positive, got 0",
         "out=0"),
        ("[3, 8, 8]", 'conv(3, padding_mode="mirror")', "argument 'padding_mode' of conv must be "
         'one of "zeros", "reflect", "replicate", "circular", got "mirror"',
         'padding_mode="mirror"'),
        ("[3, 8, 8]", "conv_transpose(3, output_padding=-1)", "argument 'output_padding' of "
         "conv_transpose must not be negative", "output_padding=-1"),
        ("[3, 8, 8]", 'conv_transpose(3, padding="same")', "argument 'padding' of conv_transpose "
         'must be an integer or a list of integers, got "same"', 'padding="same"'),
        ("[3, 8, 8]", 'maxpool(2, padding="same")', "argument 'padding' of maxpool must be an "
         "integer or a list of integers", 'padding="same"'),
        ("[3, 8, 8]", "maxpool(2, ceil_mode=1)", "argument 'ceil_mode' of maxpool must be true "
         "or false", "ceil_mode=1"),
        ("[3, 8, 8]", "avgpool(2, stride=[2, -1])", "argument 'stride' of avgpool must be "
         "positive, got -1", "stride=[2, -1]"),
        ("[3, 8, 8]", "upsample(0)", "argument 'scale' of upsample must be positive, got 0", "0"),
        ("[3, 8, 8]", 'upsample("2")', "argument 'scale' of upsample must be a number or a list "
         'of numbers, got "2"', '"2"'),
        ("[3, 8, 8]", 'upsample(2, mode="area")', "argument 'mode' of upsample must be one of "
         '"nearest", "linear", "bilinear", "bicubic", "trilinear", got "area"', 'mode="area"'),
        ("[3, 8, 8]", "upsample(2, align_corners=0)", "argument 'align_corners' of upsample must "
         "be true or false", "align_corners=0"),
        ("[3, 8, 8]", "adaptive_avg_pool(0)", "argument 'size' of adaptive_avg_pool must be "
         "positive", "0"),
        ("[3, 8, 8]", "reshape([3, 0, 8])", "argument 'shape' of reshape must be positive, got 0",
         "[3, 0, 8]"),
        ("[3, 8, 8]", "reshape(2.5)", "argument 'shape' of reshape must be an integer or a list "
         "of integers", "2.5"),
        ("8", "dropout(1)", "argument 'p' of dropout must be at least 0 and below 1, got 1",
         "1"),
        ("8", "dropout(p=-0.5)", "argument 'p' of dropout must be at least 0 and below 1, got "
         "-0.5", "p=-0.5"),
        ("[3, 8, 8]", "channel_dropout(true)", "argument 'p' of channel_dropout must be a number, "
         "got true", "true"),
        ("8", "batchnorm(momentum=1.5)", "argument 'momentum' of batchnorm must be at least 0 "
         "and below 1", "momentum=1.5"),
        ("8", "batchnorm(eps=0)", "argument 'eps' of batchnorm must be positive, got 0", "eps=0"),
        ("8", "layernorm(eps=-1.0)", "argument 'eps' of layernorm must be positive", "eps=-1.0"),
        ("8", "layernorm(affine=\"yes\")", "argument 'affine' of layernorm must be true or false",
         'affine="yes"'),
        ("8", "rmsnorm(eps=0)", "argument 'eps' of rmsnorm must be positive, got 0", "eps=0"),
        ("8", "rmsnorm(affine=1)", "argument 'affine' of rmsnorm must be true or false, got 1",
         "affine=1"),
        ("8", 'gelu(approximate="fast")', "argument 'approximate' of gelu must be one of "
         '"none", "tanh", got "fast"', 'approximate="fast"'),
        ("8", "gelu(approximate=true)", "argument 'approximate' of gelu must be a string, got "
         "true", "approximate=true"),
        ("[4, 8]", "groupnorm(0)", "argument 'groups' of groupnorm must be positive, got 0", "0"),
        ("[3, 8, 8]", "instancenorm(eps=0.0)", "argument 'eps' of instancenorm must be positive",
         "eps=0.0"),
        ("8", "elu(alpha=0)", "argument 'alpha' of elu must be positive, got 0", "alpha=0"),
        ("8", 'leaky_relu(slope="x")', "argument 'slope' of leaky_relu must be a number",
         'slope="x"'),
        ("8", "linear(out=1.5)", "argument 'out' of linear must be an integer, got 1.5",
         "out=1.5"),
        ("8", "linear(bias=[true])", "argument 'bias' of linear must be true or false",
         "bias=[true]"),
        ("8", "relu(1)", "relu takes no arguments", "1"),
        ("8", "dropout(0.1, 0.2)", "dropout takes at most 1 argument", "0.2"),
        ("8", "linear(4, true, false, 1)", "linear takes at most 3 arguments", "1"),
        (
            "8",
            "linear(size=4)",
            "linear has no argument 'size' (it takes out, bias, spectral_norm)",
            "size=4",
        ),
        ("8", "relu(inplace=true)", "relu has no argument 'inplace' (it takes no arguments)",
         "inplace=true"),
        ("[3, 8, 8]", "conv(3, kernel=3)", "argument 'kernel' of conv given twice", "kernel=3"),
        ("[3, 8, 8]", "conv(3, stride=1, stride=2)", "argument 'stride' of conv given twice",
         "stride=2"),
        ("[3, 8, 8]", "conv(padding=1)", "conv needs the argument 'kernel'", "conv(padding=1)"),
        ("[3, 8, 8]", "maxpool", "maxpool needs the argument 'kernel'", "maxpool"),
        ("[3, 8, 8]", "upsample()", "upsample needs the argument 'scale'", "upsample()"),
        ("[3, 8, 8]", "groupnorm", "groupnorm needs the argument 'groups'", "groupnorm"),
        ("[3, 8, 8]", "reshape", "reshape needs the argument 'shape'", "reshape"),
        ("[3, 8, 8]", "adaptive_max_pool()", "adaptive_max_pool needs the argument 'size'",
         "adaptive_max_pool()"),
        ("8", "module", "module needs the argument 'path'", "module"),
        ("8", 'module("not a path")', "argument 'path' of module must be a dotted path to a "
         'class, such as "mypackage.blocks.MyBlock", got "not a path"', '"not a path"'),
        ("8", 'module("Identity")', "argument 'path' of module must be a dotted path",
         '"Identity"'),
        ("8", 'module("torch.nn.")', "argument 'path' of module must be a dotted path",
         '"torch.nn."'),
        ("8", 'module("my.class.Block")', "argument 'path' of module must be a dotted path to a "
         'class, such as "mypackage.blocks.MyBlock", got "my.class.Block"', '"my.class.Block"'),
        ("8", 'module("a.None")', "argument 'path' of module must be a dotted path", '"a.None"'),
        ("8", "module(3)", "argument 'path' of module must be a string, got 3", "3"),
        ("8", 'module("torch.nn.Identity", edge=1)', "argument 'edge' of module is reserved",
         "edge=1"),
        ("8", 'module("torch.nn.Identity", where="x")', "argument 'where' of module is "
         "reserved", 'where="x"'),
        ("8", 'module("torch.nn.Identity", a=1, a=2)', "argument 'a' of module given twice",
         "a=2"),
        ("8", 'module("torch.nn.Identity", shape=[8, 0])', "argument 'shape' of module must be "
         "positive, got 0", "shape=[8, 0]"),
        ("8", 'module("torch.nn.Identity", class=1)', "argument 'class' of module is a Python "
         "keyword", "class=1"),
        ("8", 'module("torch.nn.Identity", None=1)', "argument 'None' of module is a Python "
         "keyword", "None=1"),
        ("8", "linear(out=2, 3)", "a positional argument cannot follow a keyword argument", "3"),
    ],
)  # fmt: skip
def test_argument_errors(ins, pipeline, message, span_text) -> None:
    op_error(ins, ins, pipeline, "E008", message, span_text)


def test_argument_expression_errors() -> None:
    try:
        machc.check_source(source(["[3, 8]"], "[3, 9]", "pad([[1, 0]])"), "t.mach")
    except CompileError:  # lists of lists are not expressions yet
        op_error(
            "[3, 8, 8]", "[3, 8, 8]", "conv([[3, 3]])", "E005", "lists cannot be nested", "[3, 3]"
        )
    # else: lists of pairs, for per-side arguments; tests/e2e/test_layout_ops.py has their errors
    # The only way to a non-finite number; so leaky_relu's finite-slope check never sees one.
    op_error("8", "8", "leaky_relu(slope=1e400)", "E005", "this number is too large", "1e400")
    op_error("8", "8", "leaky_relu(slope=1e300 * 1e300)", "E005", "the result is too large",
             "1e300 * 1e300")  # fmt: skip


def test_every_argument_problem_of_an_op_is_reported() -> None:
    found = errors(source(["[3, 8, 8]"], "[3, 8, 8]", 'conv(stride=0, padding="x", foo=1)'))
    messages = [d.message for d in found]
    assert len(messages) == 4, messages
    assert all(d.code == "E008" for d in found)
    assert any("needs the argument 'kernel'" in m for m in messages)
    assert any("no argument 'foo'" in m for m in messages)


# --- module(...) with a user's own class ------------------------------------------------------

BLOCKS = '''
import torch
from torch import nn


class Scale(nn.Module):
    """Multiplies by a learned per-channel weight; records how it was constructed."""

    def __init__(self, channels, factor=1.0, *, tag="none", sizes=()):
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), float(factor)))
        self.made_with = (channels, factor, tag, sizes)

    def forward(self, x):
        return x * self.weight.view(1, -1, *([1] * (x.dim() - 2)))


class Shrink(nn.Module):
    def forward(self, x):
        return x[:, :1]


class NotATensor(nn.Module):
    def forward(self, x):
        return (x,)


class Fails(nn.Module):
    def __init__(self):
        super().__init__()
        raise ValueError("no")


NOT_A_CLASS = 3
'''


@pytest.fixture
def user_package(tmp_path, monkeypatch):
    package = tmp_path / "lib" / "userblocks"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "blocks.py").write_text(BLOCKS)
    monkeypatch.syspath_prepend(str(tmp_path / "lib"))
    return tmp_path


def load_machine(directory, ins: str, out: str, pipeline: str, name: str = "m.mach"):
    path = directory / name
    path.write_text(source([ins], out, pipeline))
    return machc.load(path).M


def test_module_is_constructed_with_the_given_arguments(user_package) -> None:
    pipeline = 'module("userblocks.blocks.Scale", 4, 2.5, tag="hi", sizes=[1, 2]) | relu'
    cls = load_machine(user_package, "[4, 3, 3]", "[4, 3, 3]", pipeline)
    model = cls()
    block = model.e
    assert block.made_with == (4, 2.5, "hi", (1, 2))
    assert list(model.state_dict()) == ["e.weight"]
    x = torch.randn(2, 4, 3, 3)
    assert_close(model(x), torch.relu(2.5 * x))
    two = load_machine(user_package, "4", "4", 'module("userblocks.blocks.Scale", channels=4)')()
    assert two.e.made_with == (4, 1.0, "none", ())


def test_module_inside_a_pipeline_with_other_layers(user_package) -> None:
    pipeline = 'linear(out=4) | module("userblocks.blocks.Scale", 4, shape=4) | linear'
    model = load_machine(user_package, "3", "2", pipeline)()
    keys = ["e.0.weight", "e.0.bias", "e.1.weight", "e.2.weight", "e.2.bias"]
    assert list(model.state_dict()) == keys
    assert model(torch.randn(5, 3)).shape == (5, 2)


def test_module_returning_the_wrong_shape_names_the_edge_and_line(user_package) -> None:
    model = load_machine(user_package, "[4, 3]", "[4, 3]", 'module("userblocks.blocks.Shrink")')()
    with pytest.raises(MachineShapeError) as info:
        model(torch.randn(2, 4, 3))
    message = str(info.value)
    assert "edge 'e' (m.mach:4)" in message
    assert "returned a tensor of shape [2, 1, 3], but the edge needs [batch, 4, 3]" in message
    model = load_machine(user_package, "4", "4", 'module("userblocks.blocks.NotATensor")')()
    with pytest.raises(MachineShapeError, match=r"edge 'e' \(m.mach:4\).*returned tuple"):
        model(torch.randn(2, 4))


@pytest.mark.parametrize(
    ("path", "error", "message"),
    [
        ("userblocks.missing.Block", ImportError, "cannot import 'userblocks.missing'"),
        (
            "userblocks.blocks.Missing",
            ImportError,
            "'userblocks.blocks' has no attribute 'Missing'",
        ),
        ("userblocks.blocks.NOT_A_CLASS", TypeError, "is not an nn.Module class"),
        ("userblocks.blocks.Fails", TypeError, "constructing Fails failed: no"),
    ],
)
def test_module_import_errors_name_the_edge(user_package, path, error, message) -> None:
    cls = load_machine(user_package, "4", "4", f'module("{path}")', name="broken.mach")
    with pytest.raises(error) as info:
        cls()
    assert f"edge 'e' (broken.mach:4): module('{path}')" in str(info.value)
    assert message in str(info.value)


# --- embedding and attention, in the table -------------------------------------------------------
# The check stage gives embedding the one-hot view [V] of the ids it reads, and attention
# the values' shape; edges that use them are tested in tests/e2e/test_sequences.py.

SPAN = Span(file="t.mach", line=4, column=18, end_line=4, end_column=27)


def op(kind: str, positional: list, keyword: list | None = None) -> Op:
    bound = bind_args(OPS[kind], positional, keyword or [])
    assert not bound.problems, bound.problems
    return Op(kind=kind, args=bound.values, span=SPAN)


def test_embedding_and_attention_read_the_edge_first() -> None:
    embedding, attention = OPS["embedding"], OPS["attention"]
    assert embedding.ids and not embedding.windows and embedding.changes_channels
    assert attention.windows and not attention.ids and not attention.changes_channels
    assert not any(
        spec.ids or spec.windows for spec in OPS.values() if spec.name not in SEQUENCE_OPS
    )


@pytest.mark.parametrize(
    ("kind", "positional", "keyword", "values"),
    [
        ("embedding", [], [], {}),
        ("embedding", [64], [], {"num": 64}),  # embedding(ctx): the number of positions
        ("embedding", [64, 32], [], {"num": 64, "out": 32}),
        ("embedding", [], [("out", 32)], {"out": 32}),
        ("attention", [4], [], {"heads": 4, "dropout": 0.0}),
        ("attention", [], [("heads", 2), ("dropout", 0.1)], {"heads": 2, "dropout": 0.1}),
        ("attention", [1, 0], [], {"heads": 1, "dropout": 0.0}),
    ],
)
def test_sequence_op_arguments_bind(kind, positional, keyword, values) -> None:
    bound = bind_args(OPS[kind], positional, keyword)
    assert not bound.problems
    assert bound.values == values


@pytest.mark.parametrize(
    ("kind", "positional", "keyword", "problem"),
    [
        ("embedding", [0], [], (0, "argument 'num' of embedding must be positive, got 0")),
        ("embedding", [2.5], [], (0, "argument 'num' of embedding must be an integer, got 2.5")),
        ("embedding", [], [("out", -1)], (0, "argument 'out' of embedding must be positive, "
                                             "got -1")),
        ("embedding", [1, 2, 3], [], (2, "embedding takes at most 2 arguments")),
        ("attention", [], [], (None, "attention needs the argument 'heads'")),
        ("attention", [0], [], (0, "argument 'heads' of attention must be positive, got 0")),
        ("attention", [2, 1], [], (1, "argument 'dropout' of attention must be at least 0 and "
                                      "below 1, got 1.0")),
        ("attention", [2], [("causal", True)], (1, "attention has no argument 'causal' (it takes "
                                                   "heads, dropout)")),
    ],
)  # fmt: skip
def test_sequence_op_argument_problems(kind, positional, keyword, problem) -> None:
    assert bind_args(OPS[kind], positional, keyword).problems == [problem]


def test_embedding_is_a_linear_map_of_one_hot_ids() -> None:
    spec = OPS["embedding"]
    site = Site(op=op("embedding", []), edge="embed", where="t.mach:4")
    # out inferred from the edge's outputs, or given, exactly as for linear
    assert infer_pipeline((site.op,), (256,), (64,)) == ((256,), (64,))
    assert infer_pipeline((op("embedding", [], [("out", 16)]), op("linear", [])), (10,), (4,)) == (
        (10,),
        (16,),
        (4,),
    )
    assert spec.layer(site, (256,), (64,)) == "nn.Embedding(256, 64)"
    assert spec.source(site, "tok", "self.embed", (256,), (64,)) == "self.embed(tok)"
    assert spec.params(site.args, (256,), (64,)) == 256 * 64
    assert spec.macs(site.args, (256,), (64,)) == 0
    torch.manual_seed(0)
    layer = torch.nn.Embedding(256, 64)
    assert sum(p.numel() for p in layer.parameters()) == 256 * 64
    ids = torch.randint(0, 256, (3, 5))
    one_hot = torch.nn.functional.one_hot(ids, 256).float()
    assert_close(layer(ids), one_hot @ layer.weight)


def test_attention_keeps_the_values_shape_and_has_no_layer() -> None:
    spec = OPS["attention"]
    site = Site(op=op("attention", [4]), edge="attn", where="t.mach:4")
    assert infer_pipeline((site.op, op("linear", [])), (64,), (32,)) == ((64,), (64,), (32,))
    assert spec.layer is None
    assert spec.params(site.args, (64,), (64,)) == 0
    assert spec.source(site, "u", None, (64,), (64,)) == "u"  # lower writes the real call
    with pytest.raises(OpError) as info:
        infer_pipeline((site.op,), (64, 3), (64, 3))
    assert info.value.message == "attention needs a vector [C], got [64, 3]"


@pytest.mark.parametrize(("heads", "size", "fits"), [(3, 64, 2), (5, 12, 4), (7, 6, 6)])
def test_attention_heads_divide_the_values(heads: int, size: int, fits: int) -> None:
    spec = OPS["attention"]
    spec.check({"heads": fits, "dropout": 0.0}, (size,), (size,))
    with pytest.raises(OpError) as info:
        spec.check({"heads": heads, "dropout": 0.0}, (size,), (size,))
    assert info.value.message == f"heads={heads} does not divide the size {size} of the values"
    assert info.value.hint is not None and f"heads={fits} divides it" in info.value.hint
    with pytest.raises(OpError) as info:  # through the pipeline, at the op
        infer_pipeline((op("attention", [heads]),), (size,), (size,))
    assert info.value.index == 0


# --- generated code ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ins", "out", "pipeline", "line"),
    [
        ("[3, 8, 8]", "[16, 8, 8]", "conv(3, padding=1)",
         "self.e = nn.Conv2d(3, 16, 3, padding=1)"),
        ("[3, 8]", "[16, 8]", 'conv([5], padding="same", bias=false, padding_mode="reflect")',
         'nn.Conv1d(3, 16, (5,), padding="same", bias=False, padding_mode="reflect")'),
        ("[2, 4, 4, 4]", "[4, 4, 4, 4]", "conv([3, 3, 1], padding=[1, 1, 0], groups=2)",
         "nn.Conv3d(2, 4, (3, 3, 1), padding=(1, 1, 0), groups=2)"),
        ("[4, 7, 7]", "[2, 14, 14]", "conv_transpose(3, stride=2, padding=1, output_padding=1)",
         "nn.ConvTranspose2d(4, 2, 3, stride=2, padding=1, output_padding=1)"),
        ("8", "4", "linear(bias=false)", "self.e = nn.Linear(8, 4, bias=False)"),
        ("[8, 5, 5]", "[4, 5, 5]", "linear", "self.e = nn.Conv2d(8, 4, 1)"),
        ("[3, 8, 8]", "[3, 4, 4]", "maxpool(2)", "y = F.max_pool2d(a, 2)"),
        ("[3, 8, 8]", "[3, 4, 4]", "maxpool(2, stride=2)", "y = F.max_pool2d(a, 2)"),
        ("[3, 9]", "[3, 5]", "avgpool(3, stride=2, padding=1, ceil_mode=true)",
         "F.avg_pool1d(a, 3, stride=2, padding=1, ceil_mode=True)"),
        ("[3, 8, 8]", "3", "global_avg_pool", "y = a.mean(dim=(2, 3))"),
        ("[3, 8]", "3", "global_max_pool", "y = a.amax(dim=(2,))"),
        ("[3, 8, 8]", "[3, 16, 16]", "upsample(2)", "y = F.interpolate(a, scale_factor=2.0)"),
        ("[3, 4, 4]", "[3, 8, 6]", 'upsample([2, 1.5], mode="bilinear", align_corners=true)',
         'F.interpolate(a, scale_factor=(2.0, 1.5), mode="bilinear", align_corners=True)'),
        ("[3, 8, 8]", "[3, 2, 4]", "adaptive_avg_pool([2, 4])",
         "y = F.adaptive_avg_pool2d(a, (2, 4))"),
        ("[3, 8]", "24", "flatten", "y = a.flatten(1)"),
        ("[32]", "[2, 4, 4]", "reshape([2, 4, 4])", "y = a.unflatten(1, (2, 4, 4))"),
        ("[2, 4, 4]", "[8, 4]", "reshape([8, 4])", "y = a.flatten(1).unflatten(1, (8, 4))"),
        ("[3, 8, 8]", "[3, 8, 8]", "channel_dropout(0.2)",
         "self.e_channel_dropout = nn.Dropout2d(p=0.2)"),
        ("[3, 8, 8]", "[3, 8, 8]", "channel_dropout(0.2)", "y = self.e_channel_dropout(a)"),
        ("8", "8", "dropout(0.25)", "self.e_dropout = nn.Dropout(p=0.25)"),
        ("[3, 8, 8]", "[3, 8, 8]", "batchnorm(momentum=0.3, affine=false)",
         "self.e = nn.BatchNorm2d(3, momentum=0.3, affine=False)"),
        ("[4, 8, 8]", "[4, 8, 8]", "groupnorm(2)", "self.e = nn.GroupNorm(2, 4)"),
        ("[4, 8, 8]", "[4, 8, 8]", "layernorm", "self.e = nn.LayerNorm([4, 8, 8])"),
        ("[4, 8]", "[4, 8]", "instancenorm(affine=true)",
         "self.e = nn.InstanceNorm1d(4, affine=True)"),
        ("8", "8", "leaky_relu(slope=0.2)", "y = F.leaky_relu(a, negative_slope=0.2)"),
        ("8", "8", "gelu", "y = F.gelu(a)"),
        ("8", "8", 'gelu("tanh")', 'y = F.gelu(a, approximate="tanh")'),
        ("8", "8", "rmsnorm", "self.e = nn.RMSNorm(8)"),
        ("[4, 8]", "[4, 8]", "rmsnorm(eps=0.5, affine=false)",
         "self.e = nn.RMSNorm([4, 8], eps=0.5, elementwise_affine=False)"),
        ("8", "8", "softmax", "y = torch.softmax(a, dim=1)"),
        ("8", "8", 'module("torch.nn.Identity")',
         'self.e = runtime.external("torch.nn.Identity", edge="e", where="t.mach:4")'),
    ],
)  # fmt: skip
def test_generated_lines(ins, out, pipeline, line) -> None:
    _, _, code = build(source([ins], out, pipeline))
    stripped = [text.strip() for text in code.splitlines()]
    assert any(line in text for text in stripped), "\n".join(stripped)


def test_strings_cannot_inject_code() -> None:
    attacks = ['"same\\") + print(1) + (\\""', '"x\\"; import os; \\""', "\"'''\""]
    for attack in attacks:
        for pipeline in (f"conv(3, padding={attack})", f"upsample(2, mode={attack})"):
            (d,) = errors(source(["[3, 8, 8]"], "[3, 8, 8]", pipeline))
            assert d.code == "E008" and "must be one of" in d.message
        (d,) = errors(source(["8"], "8", f"module({attack})"))
        assert d.code == "E008" and "dotted path" in d.message
    # Strings passed on to a user's class are written as escaped literals.
    payload = "a\"b'c\\d\n'''\"\"\" ; __import__('os')"
    literal = payload.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    text = source(["[2, 3]"], "[2, 3]", f'module("torch.nn.Flatten", 1, "{literal}", shape=[6])')
    text = text.replace("output y : [2, 3]", "output y : 6")
    code = machc.compile_source(text, "t.mach")
    tree = ast.parse(code)
    calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "external"
    ]
    (call,) = calls
    assert [ast.literal_eval(arg) for arg in call.args] == ["torch.nn.Flatten", 1, payload]
    tokens = tokenize.generate_tokens(io.StringIO(code).readline)
    names = {t.string for t in tokens if t.type == tokenize.NAME}
    assert "__import__" not in names  # only inside a string literal or a comment
