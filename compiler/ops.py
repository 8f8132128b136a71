"""The op table: every op an edge's pipeline may use, one :class:`OpSpec` entry each.

An entry says which arguments the op takes, which input ranks it accepts, how
it maps shapes, which channel counts it needs, how many parameters it has, and
the Python source that constructs its layer (if it has one) and applies it.
Adding an op is adding one entry to :data:`OPS`; the stages look ops up here
and nowhere else. Code here is torch-free: it only writes source text.

Shapes are per sample, channel (feature) axis first: ``[C]`` a vector,
``[C, L]`` a signal, ``[C, H, W]`` an image, ``[C, D, H, W]`` a volume. An op
that *changes channels* (``linear``, ``conv``, ``module``) takes its output
channel count from ``out=``, or, if it is the last such op of its pipeline,
from the edge's declared outputs (through whatever the later ops do to the
channel count, such as ``flatten``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .ir import Op, Shape, Value, format_value

ArgValues = Mapping[str, Value]

REQUIRED = object()  # default of an argument that must be given

# Argument kinds: what values an argument accepts (ArgSpec.kinds is a tuple of these).
INT, FLOAT, BOOL, STR = "int", "float", "bool", "str"
INTS = "ints"  # an integer, or a list of integers with one per spatial axis
NUMS = "nums"  # a number, or a list of numbers with one per spatial axis

_KIND_WORDS = {
    INT: "an integer",
    FLOAT: "a number",
    BOOL: "true or false",
    STR: "a string",
    INTS: "an integer or a list of integers",
    NUMS: "a number or a list of numbers",
}

CHANNEL_DIM = 1  # tensors at run time are [batch, channels, *spatial]
_SPATIAL_NAMES = {2: "a signal [C, L]", 3: "an image [C, H, W]", 4: "a volume [C, D, H, W]"}


@dataclass(frozen=True)
class ArgSpec:
    """One argument of an op. ``default=None`` means optional with no value."""

    name: str
    kinds: tuple[str, ...]
    default: object = REQUIRED
    check: Callable[[Value], str | None] | None = None  # returns a complaint, or None
    doc: str = ""

    def describe_kinds(self) -> str:
        return " or ".join(_KIND_WORDS[kind] for kind in self.kinds)


@dataclass(frozen=True)
class Site:
    """An op where it is used: the op, the edge it belongs to and the ``file:line`` of that edge."""

    op: Op
    edge: str
    where: str

    @property
    def args(self) -> ArgValues:
        return self.op.args


ShapeFn = Callable[[ArgValues, Shape, "int | Shape | None"], Shape]
CheckFn = Callable[[ArgValues, Shape, Shape], None]
CountFn = Callable[[ArgValues, Shape, Shape], int]
LayerFn = Callable[[Site, Shape, Shape], str]
CallFn = Callable[[Site, str, "str | None", Shape, Shape], str]


def _same(args: ArgValues, before: Shape, target) -> Shape:
    return before


def _no_check(args: ArgValues, before: Shape, after: Shape) -> None:
    return None


def _zero(args: ArgValues, before: Shape, after: Shape) -> int:
    return 0


@dataclass(frozen=True)
class OpSpec:
    """How one op is checked and written out.

    ``call`` is a ``str.format`` template (fields ``x``, ``layer``, ``dim``,
    ``d`` the number of spatial axes, ``dims`` the spatial axes, and the
    arguments, each formatted as a Python literal) or a function of the
    :class:`Site`, the input expression, the layer expression and the shapes.
    """

    name: str
    doc: str
    rule: str  # the shape rule, for the docs: "[C, *S] -> [C, *S]"
    call: str | CallFn
    args: tuple[ArgSpec, ...] = ()
    ranks: tuple[int, int] = (1, 99)  # accepted ranks of the input shape, channel axis included
    changes_channels: bool = False  # takes out= (or the edge's outputs) as its channel count
    combine: str | None = None  # "+" or "*": reads the edge's inputs separately, first op only
    extra_args: bool = False  # passes unknown arguments on to a constructor (module)
    shape: ShapeFn = _same
    check: CheckFn = _no_check  # channel conditions, checked once the shapes are known
    layer: LayerFn | None = None  # layer constructor source
    params: CountFn = _zero  # learned parameters
    macs: CountFn = _zero  # multiply-accumulates per sample

    def arg(self, name: str) -> ArgSpec | None:
        return next((a for a in self.args if a.name == name), None)

    def source(self, site: Site, x: str, layer: str | None, before: Shape, after: Shape) -> str:
        """The expression that applies this op to the expression ``x``."""
        if callable(self.call):
            return self.call(site, x, layer, before, after)
        if "{x}." in self.call and not _is_atom(x):
            x = f"({x})"
        fields = {name: _Literal(value) for name, value in site.args.items()}
        d = len(before) - 1
        return self.call.format(x=x, layer=layer, dim=CHANNEL_DIM, d=d, dims=_dims(d), **fields)


def py_literal(value: Value) -> str:
    """A Python literal for an argument value: strings JSON-escaped, lists as tuples."""
    if isinstance(value, tuple):
        items = [py_literal(item) for item in value]
        return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


class _Literal:
    """Formats a value only as a Python literal: nothing from a source reaches code raw."""

    def __init__(self, value: Value):
        self.value = value

    def __format__(self, spec: str) -> str:
        return py_literal(self.value)


def _is_atom(expr: str) -> bool:
    """Whether ``expr`` needs no parentheses before ``.method()``: no operator at top level."""
    depth = 0
    for ch in expr:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth == 0 and ch in " +-*/":
            return False
    return True


def _dims(d: int) -> str:
    return py_literal(tuple(range(2, 2 + d)))


class OpError(Exception):
    """A pipeline whose shapes do not work out; ``index`` is the op at fault (None: whole edge)."""

    def __init__(self, message: str, index: int | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.index = index
        self.hint = hint


def format_shape(shape: Shape) -> str:
    return "[" + ", ".join(str(n) for n in shape) + "]"


# --- argument checks -------------------------------------------------------------


def _each(check: Callable[[Value], str | None]) -> Callable[[Value], str | None]:
    """A check applied to a value, or to every item of a list."""

    def checked(value: Value) -> str | None:
        items = value if isinstance(value, tuple) else (value,)
        for item in items:
            complaint = check(item)
            if complaint:
                return complaint
        return None

    return checked


def _positive(value: Value) -> str | None:
    return None if value > 0 else f"must be positive, got {format_value(value)}"


def _non_negative(value: Value) -> str | None:
    return None if value >= 0 else f"must not be negative, got {format_value(value)}"


def _probability(value: Value) -> str | None:
    return None if 0 <= value < 1 else f"must be at least 0 and below 1, got {format_value(value)}"


def _finite(value: Value) -> str | None:
    return None if math.isfinite(value) else f"must be finite, got {format_value(value)}"


def _one_of(*choices: str) -> Callable[[Value], str | None]:
    def check(value: Value) -> str | None:
        if value in choices:
            return None
        return (
            f"must be one of {', '.join(json.dumps(c) for c in choices)}, got {json.dumps(value)}"
        )

    return check


def _padding(value: Value) -> str | None:
    if isinstance(value, str):
        return _one_of("same", "valid")(value)
    return _each(_non_negative)(value)


_MODULE_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")


def _module_path(value: Value) -> str | None:
    if _MODULE_PATH.fullmatch(value) and not any(part in _PY_KEYWORDS for part in value.split(".")):
        return None
    return (
        f'must be a dotted path to a class, such as "mypackage.blocks.MyBlock", '
        f"got {json.dumps(value)}"
    )


_PY_KEYWORDS = frozenset(
    "False None True and as assert async await break class continue def del elif else except "
    "finally for from global if import in is lambda nonlocal not or pass raise return try "
    "while with yield".split()
)


# --- shape helpers ---------------------------------------------------------------------


def _per_axis(args: ArgValues, name: str, before: Shape, default=None) -> tuple:
    """An argument with one value per spatial axis: a single value applies to every axis."""
    value = args.get(name, default)
    d = len(before) - 1
    if isinstance(value, tuple):
        if len(value) != d:
            raise OpError(
                f"{name}={format_value(value)} has {len(value)} values, but the input "
                f"{format_shape(before)} has {d} spatial axes"
            )
        return value
    return (value,) * d


def _window(before: Shape, args: ArgValues, *, pooling: bool) -> Shape:
    """Spatial sizes after a sliding window (convolution or pooling), PyTorch's formula."""
    kernel = _per_axis(args, "kernel", before)
    stride = _per_axis(args, "stride", before, 1) if not pooling else _pool_stride(args, before)
    dilation = _per_axis(args, "dilation", before, 1)
    padding = args.get("padding", 0)
    ceil_mode = args.get("ceil_mode", False)
    if padding == "same":
        if any(s != 1 for s in stride):
            raise OpError('padding="same" needs stride 1 (PyTorch has no "same" for strides)')
        return before
    pads = (0,) * len(kernel) if padding == "valid" else _per_axis(args, "padding", before, 0)
    sizes = []
    for axis, (n, k, s, p, dl) in enumerate(
        zip(before[1:], kernel, stride, pads, dilation, strict=True), 1
    ):
        if pooling and p > k // 2:
            raise OpError(f"padding {p} is more than half the kernel {k} (PyTorch's limit)")
        span = dl * (k - 1) + 1
        room = n + 2 * p - span
        out = (-(-room // s) if ceil_mode else room // s) + 1
        if ceil_mode and (out - 1) * s >= n + p:
            out -= 1  # PyTorch: the last window must start inside the input or left padding
        if out < 1:  # with ceil_mode, PyTorch lets one window hang over the end
            what = f"kernel {k}" + (f" (spanning {span} with dilation {dl})" if dl != 1 else "")
            raise OpError(
                f"{what} is larger than the input's axis {axis} "
                f"({n}{f' padded to {n + 2 * p}' if p else ''}) of {format_shape(before)}"
            )
        sizes.append(out)
    return (before[0], *sizes)


def _pool_stride(args: ArgValues, before: Shape) -> tuple:
    if args.get("stride") is None:
        return _per_axis(args, "kernel", before)
    return _per_axis(args, "stride", before)


def _groups_divide(args: ArgValues, before: Shape, after: Shape) -> None:
    groups = args.get("groups", 1)
    for what, n in (("input", before[0]), ("output", after[0])):
        if n % groups:
            raise OpError(f"groups={groups} does not divide the {n} {what} channels")


def _kwargs(args: ArgValues, spec_args: tuple[ArgSpec, ...], names: tuple[str, ...]) -> list[str]:
    """``name=value`` for each of ``names`` whose value is not its default."""
    out = []
    for name in names:
        spec = next(a for a in spec_args if a.name == name)
        value = args.get(name)
        if value is not None and value != spec.default:
            out.append(f"{name}={py_literal(value)}")
    return out


def _prod(values) -> int:
    return math.prod(values)


# --- linear and convolutions ---------------------------------------------------------------


def _channels(args: ArgValues, target) -> int:
    """The output channels of a channel-changing op: ``out=``, else the inferred target."""
    if args.get("out") is not None:
        return args["out"]
    return target if isinstance(target, int) else target[0]


def _linear_shape(args, before, target):
    return (_channels(args, target), *before[1:])


def _linear_layer(site: Site, before: Shape, after: Shape) -> str:
    bias = "" if site.args["bias"] else ", bias=False"
    if len(before) == 1:
        return f"nn.Linear({before[0]}, {after[0]}{bias})"
    return f"nn.Conv{len(before) - 1}d({before[0]}, {after[0]}, 1{bias})"


def _linear_params(args, before, after) -> int:
    return before[0] * after[0] + (after[0] if args["bias"] else 0)


def _linear_macs(args, before, after) -> int:
    return before[0] * after[0] * _prod(after[1:])


CONV_ARGS = (
    ArgSpec("kernel", (INTS,), REQUIRED, _each(_positive), "kernel size"),
    ArgSpec("stride", (INTS,), 1, _each(_positive), "step between windows"),
    ArgSpec("padding", (INTS, STR), 0, _padding, 'zeros added on each side, or "same" / "valid"'),
    ArgSpec("dilation", (INTS,), 1, _each(_positive), "spacing of kernel taps"),
    ArgSpec("groups", (INT,), 1, _positive, "blocked connections; divides in and out channels"),
    ArgSpec("bias", (BOOL,), True, doc="learn an additive bias"),
    ArgSpec("out", (INT,), None, _positive, "output channels, needed when a later op changes them"),
    ArgSpec(
        "padding_mode",
        (STR,),
        "zeros",
        _one_of("zeros", "reflect", "replicate", "circular"),
        "how padding is filled",
    ),
)


def _conv_shape(args, before, target):
    _check_padding_mode(args, before)
    return (_channels(args, target), *_window(before, args, pooling=False)[1:])


def _check_padding_mode(args: ArgValues, before: Shape) -> None:
    """PyTorch pads by reflection only by less than the axis, circularly by at most the axis."""
    mode = args.get("padding_mode", "zeros")
    if mode not in ("reflect", "circular"):
        return
    padding = args.get("padding", 0)
    if padding == "valid":
        return
    if padding == "same":  # the larger side of dilation·(kernel-1), split in two
        kernel = _per_axis(args, "kernel", before)
        dilation = _per_axis(args, "dilation", before, 1)
        spans = [dl * (k - 1) for k, dl in zip(kernel, dilation, strict=True)]
        pads = tuple(span - span // 2 for span in spans)
    else:
        pads = _per_axis(args, "padding", before, 0)
    for axis, (n, p) in enumerate(zip(before[1:], pads, strict=True), 1):
        if p > n or (mode == "reflect" and p == n):
            limit = "smaller than" if mode == "reflect" else "at most"
            raise OpError(
                f'padding {p} with padding_mode="{mode}" must be {limit} the input\'s axis '
                f"{axis} ({n}) of {format_shape(before)}"
            )


def _conv_layer(site: Site, before: Shape, after: Shape) -> str:
    args = site.args
    names = ("stride", "padding", "dilation", "groups", "bias", "padding_mode")
    positional = [str(before[0]), str(after[0]), py_literal(args["kernel"])]
    extra = _kwargs(args, CONV_ARGS, names)
    return f"nn.Conv{len(before) - 1}d({', '.join(positional + extra)})"


def _conv_params(args, before, after) -> int:
    """Weights [out, in / groups, *kernel] (transposed: [in, out / groups, *kernel]), bias."""
    kernel = _per_axis(args, "kernel", before)
    weight = after[0] * (before[0] // args["groups"]) * _prod(kernel)
    return weight + (after[0] if args["bias"] else 0)


def _conv_macs(args, before, after) -> int:
    kernel = _per_axis(args, "kernel", before)
    return after[0] * (before[0] // args["groups"]) * _prod(kernel) * _prod(after[1:])


TRANSPOSE_ARGS = (
    ArgSpec("kernel", (INTS,), REQUIRED, _each(_positive), "kernel size"),
    ArgSpec("stride", (INTS,), 1, _each(_positive), "upsampling factor"),
    ArgSpec("padding", (INTS,), 0, _each(_non_negative), "removed from each side of the output"),
    ArgSpec("output_padding", (INTS,), 0, _each(_non_negative), "added to one side of the output"),
    ArgSpec("dilation", (INTS,), 1, _each(_positive), "spacing of kernel taps"),
    ArgSpec("groups", (INT,), 1, _positive, "blocked connections; divides in and out channels"),
    ArgSpec("bias", (BOOL,), True, doc="learn an additive bias"),
    ArgSpec("out", (INT,), None, _positive, "output channels, needed when a later op changes them"),
)


def _transpose_shape(args, before, target):
    kernel = _per_axis(args, "kernel", before)
    stride = _per_axis(args, "stride", before, 1)
    padding = _per_axis(args, "padding", before, 0)
    output_padding = _per_axis(args, "output_padding", before, 0)
    dilation = _per_axis(args, "dilation", before, 1)
    sizes = []
    for n, k, s, p, op, dl in zip(
        before[1:], kernel, stride, padding, output_padding, dilation, strict=True
    ):
        if op >= max(s, dl):
            raise OpError(
                f"output_padding {op} must be smaller than the stride {s} or the dilation {dl}"
            )
        out = (n - 1) * s - 2 * p + dl * (k - 1) + op + 1
        if out < 1:
            raise OpError(f"padding {p} removes the whole output of {format_shape(before)}")
        sizes.append(out)
    return (_channels(args, target), *sizes)


def _transpose_layer(site: Site, before: Shape, after: Shape) -> str:
    args = site.args
    names = ("stride", "padding", "output_padding", "groups", "bias", "dilation")
    extra = _kwargs(args, TRANSPOSE_ARGS, names)
    positional = [str(before[0]), str(after[0]), py_literal(args["kernel"])]
    return f"nn.ConvTranspose{len(before) - 1}d({', '.join(positional + extra)})"


def _transpose_macs(args, before, after) -> int:
    kernel = _per_axis(args, "kernel", before)
    return before[0] * (after[0] // args["groups"]) * _prod(kernel) * _prod(before[1:])


# --- pooling, resampling, reshaping ------------------------------------------------------

POOL_ARGS = (
    ArgSpec("kernel", (INTS,), REQUIRED, _each(_positive), "window size"),
    ArgSpec("stride", (INTS,), None, _each(_positive), "step between windows (default: kernel)"),
    ArgSpec("padding", (INTS,), 0, _each(_non_negative), "padding on each side"),
    ArgSpec("ceil_mode", (BOOL,), False, doc="round output sizes up instead of down"),
)


def _pool_shape(args, before, target):
    return _window(before, args, pooling=True)


def _pool_call(function: str) -> CallFn:
    def call(site: Site, x: str, layer, before: Shape, after: Shape) -> str:
        args = site.args
        parts = [x, py_literal(args["kernel"])]
        if args.get("stride") is not None and args["stride"] != args["kernel"]:
            parts.append(f"stride={py_literal(args['stride'])}")
        parts += _kwargs(args, POOL_ARGS, ("padding", "ceil_mode"))
        return f"F.{function}{len(before) - 1}d({', '.join(parts)})"

    return call


def _global_shape(args, before, target):
    return (before[0],)


def _adaptive_shape(args, before, target):
    return (before[0], *_per_axis(args, "size", before))


def _upsample_shape(args, before, target):
    scale = _per_axis(args, "scale", before)
    mode = args["mode"]
    d = len(before) - 1
    allowed = {"linear": 1, "bilinear": 2, "bicubic": 2, "trilinear": 3}.get(mode)
    if allowed is not None and allowed != d:
        rank_word = {1: "signals", 2: "images", 3: "volumes"}[allowed]
        right = {1: "linear", 2: "bilinear", 3: "trilinear"}[d]
        raise OpError(
            f'mode "{mode}" is for {rank_word}, but the input {format_shape(before)} has '
            f"{d} spatial axes",
            hint=f'use mode="{right}" or "nearest"',
        )
    if args.get("align_corners") is not None and allowed is None:
        raise OpError(f'align_corners applies to the interpolating modes, not "{mode}"')
    sizes = [math.floor(n * s) for n, s in zip(before[1:], scale, strict=True)]
    if min(sizes) < 1:
        raise OpError(f"scale {format_value(args['scale'])} shrinks {format_shape(before)} to 0")
    return (before[0], *sizes)


def _upsample_call(site: Site, x: str, layer, before: Shape, after: Shape) -> str:
    args = site.args
    parts = [x, f"scale_factor={py_literal(args['scale'])}"]
    if args["mode"] != "nearest":
        parts.append(f"mode={py_literal(args['mode'])}")
    if args.get("align_corners") is not None:
        parts.append(f"align_corners={py_literal(args['align_corners'])}")
    return f"F.interpolate({', '.join(parts)})"


def _flatten_shape(args, before, target):
    return (_prod(before),)


def _reshape_shape(args, before, target):
    shape = args["shape"]
    shape = shape if isinstance(shape, tuple) else (shape,)
    if _prod(shape) != _prod(before):
        raise OpError(
            f"reshape to {format_shape(shape)} needs {_prod(shape)} elements, "
            f"but {format_shape(before)} has {_prod(before)}"
        )
    return tuple(shape)


def _reshape_call(site: Site, x: str, layer, before: Shape, after: Shape) -> str:
    x = x if _is_atom(x) else f"({x})"
    flat = x if len(before) == 1 else f"{x}.flatten(1)"
    return f"{flat}.unflatten(1, {py_literal(after)})"


# --- normalisation ----------------------------------------------------------------------


def _batchnorm_layer(site: Site, before: Shape, after: Shape) -> str:
    args = site.args
    d = max(1, len(before) - 1)
    extra = _kwargs(args, NORM_ARGS, ("eps", "momentum"))
    extra += [] if args["affine"] else ["affine=False"]
    return f"nn.BatchNorm{d}d({', '.join([str(before[0]), *extra])})"


def _affine_params(args, before, after) -> int:
    return 2 * before[0] if args["affine"] else 0


NORM_ARGS = (
    ArgSpec("eps", (FLOAT,), 1e-5, _positive, "added to the variance"),
    ArgSpec("momentum", (FLOAT,), 0.1, _probability, "weight of a new batch in running stats"),
    ArgSpec("affine", (BOOL,), True, doc="learn a per-channel scale and shift"),
)


def _groupnorm_check(args, before, after) -> None:
    if before[0] % args["groups"]:
        raise OpError(f"groups={args['groups']} does not divide the {before[0]} channels")


def _groupnorm_layer(site: Site, before: Shape, after: Shape) -> str:
    args = site.args
    extra = [] if args["eps"] == 1e-5 else [f"eps={args['eps']!r}"]
    extra += [] if args["affine"] else ["affine=False"]
    return f"nn.GroupNorm({', '.join([str(args['groups']), str(before[0]), *extra])})"


def _instancenorm_layer(site: Site, before: Shape, after: Shape) -> str:
    args = site.args
    extra = [] if args["eps"] == 1e-5 else [f"eps={args['eps']!r}"]
    extra += ["affine=True"] if args["affine"] else []
    return f"nn.InstanceNorm{len(before) - 1}d({', '.join([str(before[0]), *extra])})"


def _layernorm_layer(site: Site, before: Shape, after: Shape) -> str:
    args = site.args
    shape = str(before[0]) if len(before) == 1 else format_shape(before)
    extra = "" if args["eps"] == 1e-5 else f", eps={args['eps']!r}"
    extra += "" if args["affine"] else ", elementwise_affine=False"
    return f"nn.LayerNorm({shape}{extra})"


def _layernorm_params(args, before, after) -> int:
    return 2 * _prod(before) if args["affine"] else 0


# --- external modules --------------------------------------------------------------------


def _module_shape(args, before, target):
    shape = args.get("shape")
    if shape is not None:
        return shape if isinstance(shape, tuple) else (shape,)
    return target if isinstance(target, tuple) else (target, *before[1:])


def _module_layer(site: Site, before: Shape, after: Shape) -> str:
    parts = [py_literal(site.args["path"])]
    parts += [py_literal(value) for value in site.op.extra]
    parts += [f"{name}={py_literal(value)}" for name, value in site.op.extra_kw.items()]
    parts += [f"edge={json.dumps(site.edge)}", f"where={json.dumps(site.where)}"]
    return f"runtime.external({', '.join(parts)})"


def _module_call(site: Site, x: str, layer, before: Shape, after: Shape) -> str:
    where = f"{json.dumps(site.edge)}, {json.dumps(site.where)}"
    return f"runtime.check_shape({layer}({x}), {py_literal(after)}, {where})"


# --- the table ------------------------------------------------------------------------------


def _activation(name: str, call: str, doc: str, *args: ArgSpec) -> OpSpec:
    return OpSpec(name=name, doc=doc, rule="[C, *S] -> [C, *S]", call=call, args=args)


def _scale_call(site: Site, x: str, layer, before: Shape, after: Shape) -> str:
    x = x if _is_atom(x) else f"({x})"
    return f"{x} * {py_literal(site.args['factor'])}"


def _dropout_call(site: Site, x: str, layer, before: Shape, after: Shape) -> str:
    p = py_literal(site.args["p"])
    return f"F.dropout{len(before) - 1}d({x}, p={p}, training=self.training)"


_SPATIAL = (2, 4)  # signals, images and volumes
_SIZE_ARG = ArgSpec("size", (INTS,), REQUIRED, _each(_positive), "output spatial size")
_OUT_ARG = ArgSpec(
    "out", (INT,), None, _positive, "output channels, needed when a later op changes them"
)

_OP_LIST = (
    OpSpec(
        name="linear",
        doc="An affine map on the channel axis (a 1×1 convolution on signals, images and "
        "volumes); channel counts are inferred.",
        rule="[C, *S] -> [out, *S]",
        call="{layer}({x})",
        args=(_OUT_ARG, ArgSpec("bias", (BOOL,), True, doc="learn an additive bias")),
        ranks=(1, 4),
        changes_channels=True,
        shape=_linear_shape,
        layer=_linear_layer,
        params=_linear_params,
        macs=_linear_macs,
    ),
    OpSpec(
        name="conv",
        doc="A convolution, 1-, 2- or 3-d after the input's spatial axes; like nn.Conv2d.",
        rule="[C, *S] -> [out, *S'], S' by PyTorch's formula",
        call="{layer}({x})",
        args=CONV_ARGS,
        ranks=_SPATIAL,
        changes_channels=True,
        shape=_conv_shape,
        check=_groups_divide,
        layer=_conv_layer,
        params=_conv_params,
        macs=_conv_macs,
    ),
    OpSpec(
        name="conv_transpose",
        doc="A transposed convolution (learned upsampling); like nn.ConvTranspose2d.",
        rule="[C, *S] -> [out, *S'], S' = (S-1)·stride - 2·padding + dilation·(kernel-1) "
        "+ output_padding + 1",
        call="{layer}({x})",
        args=TRANSPOSE_ARGS,
        ranks=_SPATIAL,
        changes_channels=True,
        shape=_transpose_shape,
        check=_groups_divide,
        layer=_transpose_layer,
        params=_conv_params,
        macs=_transpose_macs,
    ),
    OpSpec(
        name="identity",
        doc="Passes its input through; in and out shapes must agree.",
        rule="[C, *S] -> [C, *S]",
        call="{x}",
    ),
    OpSpec(
        name="add",
        doc="The sum of the edge's inputs (all of one shape, or [C] vectors broadcast over "
        "the others' spatial axes) instead of their concatenation; first op only.",
        rule="[C, *S] + [C, *S] -> [C, *S]",
        call="{x}",
        combine="+",
    ),
    OpSpec(
        name="mul",
        doc="The elementwise product of the edge's inputs (gating); shapes as for add; "
        "first op only.",
        rule="[C, *S] · [C, *S] -> [C, *S]",
        call="{x}",
        combine="*",
    ),
    OpSpec(
        name="scale",
        doc="Multiplies by a constant (scale(-1) negates: (1 - z) · c is c - z · c).",
        rule="[C, *S] -> [C, *S]",
        call=_scale_call,
        args=(ArgSpec("factor", (FLOAT,), REQUIRED, _finite, "the constant"),),
    ),
    _activation("relu", "torch.relu({x})", "max(x, 0)"),
    _activation("relu6", "F.relu6({x})", "min(max(x, 0), 6)"),
    _activation("gelu", "F.gelu({x})", "Gaussian error linear unit"),
    _activation("silu", "F.silu({x})", "x · sigmoid(x) (swish)"),
    _activation("mish", "F.mish({x})", "x · tanh(softplus(x))"),
    _activation("hardswish", "F.hardswish({x})", "piecewise-linear swish (MobileNetV3)"),
    _activation("tanh", "torch.tanh({x})", "hyperbolic tangent"),
    _activation("sigmoid", "torch.sigmoid({x})", "logistic function"),
    _activation("softplus", "F.softplus({x})", "log(1 + exp(x))"),
    _activation(
        "elu",
        "F.elu({x}, alpha={alpha})",
        "exponential linear unit",
        ArgSpec("alpha", (FLOAT,), 1.0, _positive, "scale of the negative part"),
    ),
    _activation(
        "leaky_relu",
        "F.leaky_relu({x}, negative_slope={slope})",
        "max(x, 0) + slope · min(x, 0)",
        ArgSpec("slope", (FLOAT,), 0.01, _finite, "slope of the negative part"),
    ),
    _activation("softmax", "torch.softmax({x}, dim={dim})", "softmax over the channel axis"),
    _activation(
        "log_softmax", "torch.log_softmax({x}, dim={dim})", "log of softmax over the channel axis"
    ),
    OpSpec(
        name="dropout",
        doc="Zeroes elements with probability p while training (scaling the rest); identity "
        "in eval mode.",
        rule="[C, *S] -> [C, *S]",
        call="F.dropout({x}, p={p}, training=self.training)",
        args=(ArgSpec("p", (FLOAT,), 0.5, _probability, "probability of zeroing an element"),),
    ),
    OpSpec(
        name="channel_dropout",
        doc="Zeroes whole channels with probability p while training (nn.Dropout1d/2d/3d).",
        rule="[C, *S] -> [C, *S]",
        call=_dropout_call,
        args=(ArgSpec("p", (FLOAT,), 0.5, _probability, "probability of zeroing a channel"),),
        ranks=_SPATIAL,
    ),
    OpSpec(
        name="batchnorm",
        doc="Batch normalisation per channel (nn.BatchNorm1d/2d/3d); running statistics in "
        "eval mode.",
        rule="[C, *S] -> [C, *S]",
        call="{layer}({x})",
        args=NORM_ARGS,
        ranks=(1, 4),
        layer=_batchnorm_layer,
        params=_affine_params,
    ),
    OpSpec(
        name="groupnorm",
        doc="Group normalisation: channels in `groups` groups, each normalised over its "
        "channels and all positions.",
        rule="[C, *S] -> [C, *S], groups divides C",
        call="{layer}({x})",
        args=(
            ArgSpec("groups", (INT,), REQUIRED, _positive, "number of channel groups"),
            ArgSpec("eps", (FLOAT,), 1e-5, _positive, "added to the variance"),
            ArgSpec("affine", (BOOL,), True, doc="learn a per-channel scale and shift"),
        ),
        check=_groupnorm_check,
        layer=_groupnorm_layer,
        params=_affine_params,
    ),
    OpSpec(
        name="instancenorm",
        doc="Instance normalisation: each channel of each sample over its positions.",
        rule="[C, *S] -> [C, *S]",
        call="{layer}({x})",
        args=(
            ArgSpec("eps", (FLOAT,), 1e-5, _positive, "added to the variance"),
            ArgSpec("affine", (BOOL,), False, doc="learn a per-channel scale and shift"),
        ),
        ranks=_SPATIAL,
        layer=_instancenorm_layer,
        params=_affine_params,
    ),
    OpSpec(
        name="layernorm",
        doc="Layer normalisation of each sample over all its axes (nn.LayerNorm(shape)); a "
        "learned elementwise scale and shift unless affine=false.",
        rule="[C, *S] -> [C, *S]",
        call="{layer}({x})",
        args=(
            ArgSpec("eps", (FLOAT,), 1e-5, _positive, "added to the variance"),
            ArgSpec("affine", (BOOL,), True, doc="learn a scale and a shift"),
        ),
        layer=_layernorm_layer,
        params=_layernorm_params,
    ),
    OpSpec(
        name="maxpool",
        doc="Maximum over sliding windows (F.max_pool1d/2d/3d).",
        rule="[C, *S] -> [C, *S'], S' by PyTorch's formula",
        call=_pool_call("max_pool"),
        args=POOL_ARGS,
        ranks=_SPATIAL,
        shape=_pool_shape,
    ),
    OpSpec(
        name="avgpool",
        doc="Mean over sliding windows (F.avg_pool1d/2d/3d; padding counts as zeros).",
        rule="[C, *S] -> [C, *S'], S' by PyTorch's formula",
        call=_pool_call("avg_pool"),
        args=POOL_ARGS,
        ranks=_SPATIAL,
        shape=_pool_shape,
    ),
    OpSpec(
        name="adaptive_avg_pool",
        doc="Mean over windows chosen so that the output has the given spatial size.",
        rule="[C, *S] -> [C, *size]",
        call="F.adaptive_avg_pool{d}d({x}, {size})",
        args=(_SIZE_ARG,),
        ranks=_SPATIAL,
        shape=_adaptive_shape,
    ),
    OpSpec(
        name="adaptive_max_pool",
        doc="Maximum over windows chosen so that the output has the given spatial size.",
        rule="[C, *S] -> [C, *size]",
        call="F.adaptive_max_pool{d}d({x}, {size})",
        args=(_SIZE_ARG,),
        ranks=_SPATIAL,
        shape=_adaptive_shape,
    ),
    OpSpec(
        name="global_avg_pool",
        doc="The mean of each channel over all positions.",
        rule="[C, *S] -> [C]",
        call="{x}.mean(dim={dims})",
        ranks=_SPATIAL,
        shape=_global_shape,
    ),
    OpSpec(
        name="global_max_pool",
        doc="The maximum of each channel over all positions.",
        rule="[C, *S] -> [C]",
        call="{x}.amax(dim={dims})",
        ranks=_SPATIAL,
        shape=_global_shape,
    ),
    OpSpec(
        name="upsample",
        doc="Resampling by a scale factor (F.interpolate); mode nearest, linear (signals), "
        "bilinear or bicubic (images), trilinear (volumes).",
        rule="[C, *S] -> [C, *floor(S·scale)]",
        call=_upsample_call,
        args=(
            ArgSpec("scale", (NUMS,), REQUIRED, _each(_positive), "factor per spatial axis"),
            ArgSpec(
                "mode",
                (STR,),
                "nearest",
                _one_of("nearest", "linear", "bilinear", "bicubic", "trilinear"),
                "interpolation",
            ),
            ArgSpec("align_corners", (BOOL,), None, doc="for the interpolating modes"),
        ),
        ranks=_SPATIAL,
        shape=_upsample_shape,
    ),
    OpSpec(
        name="flatten",
        doc="All axes into one channel axis, channels outermost (x.flatten(1)).",
        rule="[C, *S] -> [C·prod(S)]",
        call="{x}.flatten(1)",
        ranks=_SPATIAL,
        shape=_flatten_shape,
    ),
    OpSpec(
        name="reshape",
        doc="The same elements in a new shape (channels outermost), e.g. a vector into an image.",
        rule="[*S] -> shape, same number of elements",
        call=_reshape_call,
        args=(ArgSpec("shape", (INTS,), REQUIRED, _each(_positive), "the new shape"),),
        shape=_reshape_shape,
    ),
    OpSpec(
        name="module",
        doc='Your own nn.Module: module("package.module.Class", args..., shape=[...]) '
        "constructs Class(args...); its output shape is shape= or the edge's outputs, and "
        "is checked on every call.",
        rule="[*S] -> shape (or the edge's outputs)",
        call=_module_call,
        args=(
            ArgSpec("path", (STR,), REQUIRED, _module_path, "dotted path of the class"),
            ArgSpec("shape", (INTS,), None, _each(_positive), "output shape, if not the edge's"),
        ),
        changes_channels=True,
        extra_args=True,
        shape=_module_shape,
        layer=_module_layer,
    ),
)

OPS: dict[str, OpSpec] = {spec.name: spec for spec in _OP_LIST}


# --- binding arguments -------------------------------------------------------------


@dataclass
class Bound:
    """The result of binding an op call's arguments: values, or problems (with arg index)."""

    values: dict[str, Value] = field(default_factory=dict)
    extra: list[Value] = field(default_factory=list)
    extra_kw: dict[str, Value] = field(default_factory=dict)
    problems: list[tuple[int | None, str]] = field(default_factory=list)


def bind_args(spec: OpSpec, positional: list[Value], keyword: list[tuple[str, Value]]) -> Bound:
    """Match call arguments to ``spec.args``; defaults fill the rest. Problems name the arg."""
    bound = Bound()
    given: dict[str, tuple[int, Value]] = {}
    for i, value in enumerate(positional):
        if i >= len(spec.args) or (spec.extra_args and i >= 1):
            if spec.extra_args:
                bound.extra.append(value)
                continue
            bound.problems.append((i, f"{spec.name} takes {_count(len(spec.args))}"))
            continue
        given[spec.args[i].name] = (i, value)
    for j, (name, value) in enumerate(keyword):
        i = len(positional) + j
        if spec.arg(name) is None:
            if spec.extra_args:
                if name in bound.extra_kw or name in ("edge", "where"):
                    why = "given twice" if name in bound.extra_kw else "is reserved by machc"
                    bound.problems.append((i, f"argument {name!r} of {spec.name} {why}"))
                elif name in _PY_KEYWORDS or name == "__debug__":
                    why = "is a Python keyword, so it cannot be passed on by name"
                    bound.problems.append((i, f"argument {name!r} of {spec.name} {why}"))
                bound.extra_kw[name] = value
                continue
            known = ", ".join(a.name for a in spec.args) or "no arguments"
            bound.problems.append((i, f"{spec.name} has no argument {name!r} (it takes {known})"))
        elif name in given:
            bound.problems.append((i, f"argument {name!r} of {spec.name} given twice"))
        else:
            given[name] = (i, value)
    for arg in spec.args:
        if arg.name not in given:
            if arg.default is REQUIRED:
                bound.problems.append((None, f"{spec.name} needs the argument {arg.name!r}"))
            elif arg.default is not None:
                bound.values[arg.name] = arg.default
            continue
        i, value = given[arg.name]
        converted = _convert(value, arg.kinds)
        if converted is None:
            bound.problems.append(
                (
                    i,
                    f"argument {arg.name!r} of {spec.name} must be {arg.describe_kinds()}, "
                    f"got {format_value(value)}",
                )
            )
            continue
        complaint = arg.check(converted) if arg.check else None
        if complaint:
            bound.problems.append((i, f"argument {arg.name!r} of {spec.name} {complaint}"))
            continue
        bound.values[arg.name] = converted
    return bound


def _count(n: int) -> str:
    return "no arguments" if n == 0 else f"at most {n} argument{'s' if n > 1 else ''}"


def _convert(value: Value, kinds: tuple[str, ...]) -> Value | None:
    """``value`` as the first of ``kinds`` it can be, or None. Booleans are not numbers."""
    for kind in kinds:
        converted = _convert_one(value, kind)
        if converted is not None:
            return converted
    return None


def _convert_one(value: Value, kind: str) -> Value | None:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    integer = isinstance(value, int) and not isinstance(value, bool)
    if kind == BOOL:
        return value if isinstance(value, bool) else None
    if kind == INT:
        return value if integer else None
    if kind == FLOAT:
        return float(value) if number else None
    if kind == STR:
        return value if isinstance(value, str) else None
    if isinstance(value, tuple):
        items = [_convert_one(item, INT if kind == INTS else NUMS) for item in value]
        return tuple(items) if items and None not in items else None
    if kind == INTS:
        return value if integer else None
    return value if number else None  # NUMS


# --- shapes through a pipeline ---------------------------------------------------------


def combined_shape(shapes: list[Shape]) -> Shape | None:
    """The shape of inputs combined by ``add`` / ``mul``, or None if they do not fit.

    All inputs have one shape, except that ``[C]`` vectors broadcast over the spatial
    axes of the others (a per-channel gate or bias).
    """
    full = max(shapes, key=len)
    for shape in shapes:
        if shape != full and shape != full[:1]:
            return None
    return full


def _describe_rank(spec: OpSpec) -> str:
    lo, hi = spec.ranks
    words = [_SPATIAL_NAMES.get(r, f"rank {r}") for r in range(lo, min(hi, 4) + 1)]
    if lo == 1:
        return "a vector, signal, image or volume"
    return ", ".join(words[:-1]) + " or " + words[-1] if len(words) > 1 else words[0]


def _apply(op: Op, before: Shape, target, *, checked: bool) -> Shape:
    spec = OPS[op.kind]
    lo, hi = spec.ranks
    if not lo <= len(before) <= hi:
        raise OpError(f"{op.kind} needs {_describe_rank(spec)}, got {format_shape(before)}")
    after = spec.shape(op.args, before, target)
    if checked:
        spec.check(op.args, before, after)
    return after


def _needs_target(op: Op) -> bool:
    spec = OPS[op.kind]
    if not spec.changes_channels:
        return False
    return op.args.get("shape" if spec.extra_args else "out") is None


def infer_pipeline(ops: tuple[Op, ...], entering: Shape, declared: Shape) -> tuple[Shape, ...]:
    """Shapes entering each op and leaving the last; raises :class:`OpError`."""
    for i, op in enumerate(ops):
        if OPS[op.kind].combine and i > 0:
            raise OpError(
                f"{op.kind} combines the edge's inputs, so it must be the first op of the pipeline",
                index=i,
            )
    changers = [i for i, op in enumerate(ops) if OPS[op.kind].changes_channels]
    last_changer = changers[-1] if changers else None
    shapes = [entering]
    hint = None
    for i, op in enumerate(ops):
        target = None
        if _needs_target(op):
            if i != last_changer:
                what = "shape=[...]" if OPS[op.kind].extra_args else "out=N"
                raise OpError(
                    f"{op.kind} needs {what.split('=')[0]}= here: only the last channel-changing "
                    "op of a pipeline takes its size from the edge's outputs",
                    index=i,
                    hint=f"write {op.kind}({what})",
                )
            target, hint = _solve_target(ops, i, shapes[-1], declared)
        try:
            shapes.append(_apply(op, shapes[-1], target, checked=True))
        except OpError as exc:
            later = hint if _hint_applies(ops, last_changer, i, shapes[-1]) else None
            raise OpError(exc.message, index=i, hint=exc.hint or later) from None
    if shapes[-1] != declared:
        steps = " -> ".join(
            [format_shape(entering)]
            + [
                f"{op.kind} {format_shape(shape)}"
                for op, shape in zip(ops, shapes[1:], strict=True)
            ]
        )
        if hint is None and last_changer is None and shapes[-1][1:] == declared[1:]:
            hint = "no op of this pipeline changes the channels; add a linear to map between them"
        raise OpError(
            f"the pipeline produces {format_shape(shapes[-1])}, but the outputs need "
            f"{format_shape(declared)} ({steps})",
            index=None,
            hint=hint,
        )
    return tuple(shapes)


def _hint_applies(ops, changer: int | None, i: int, before: Shape) -> bool:
    """Whether the solver's hint (give out= / shape=) can fix op ``i`` failing on ``before``.

    Only for ops after the last channel-changing op; ``out=`` fixes a channel count, not a
    rank, while a module's ``shape=`` fixes both.
    """
    if changer is None or i <= changer:
        return False
    lo, hi = OPS[ops[i].kind].ranks
    return OPS[ops[changer].kind].extra_args or lo <= len(before) <= hi


def _solve_target(ops, i: int, before: Shape, declared: Shape):
    """What the last channel-changing op must produce so that the pipeline ends at ``declared``.

    The ops after it map channel counts c -> c (most ops) or c -> c·k (``flatten``); the
    count is found by running them for two trial values. Returns (target, hint).
    """
    op = ops[i]
    rest = ops[i + 1 :]
    if OPS[op.kind].extra_args:  # module: its output is the shape the later ops keep
        hint = f"give {op.kind}(..., shape=[...]): the ops after it change the shape"
        return declared, (None if _run(rest, declared) == declared else hint)
    finals = [_run(rest, _apply_free(op, before, c)) for c in (1, 2)]
    hint = f"give {op.kind}(out=N): the channel count could not be inferred from the outputs"
    if None in finals or finals[1][0] != 2 * finals[0][0]:
        return declared[0], hint
    per_channel = finals[0][0]
    if declared[0] % per_channel:
        raise OpError(
            f"{op.kind} cannot produce the {declared[0]} channels the outputs need: the ops "
            f"after it multiply its channels by {per_channel}",
            index=i,
            hint=f"give {op.kind}(out=N), or change the outputs' shape",
        )
    return declared[0] // per_channel, None


def _apply_free(op: Op, before: Shape, target) -> Shape | None:
    try:
        return _apply(op, before, target, checked=False)
    except OpError:
        return None


def _run(ops, shape: Shape | None) -> Shape | None:
    """The shape after ``ops`` without channel checks, or None where an op fails."""
    for op in ops:
        if shape is None:
            return None
        shape = _apply_free(op, shape, None)
    return shape
