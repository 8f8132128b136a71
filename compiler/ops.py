"""The op table: every op an edge's pipeline may use, one :class:`OpSpec` entry each.

An entry says which arguments the op takes, how it maps shapes, and the
Python source that constructs its layer (if it has parameters) and applies
it. Adding an op is adding one entry to :data:`OPS`; the stages look ops up
here and nowhere else. Code here is torch-free: it only writes source text.

Shapes are per sample, channel (feature) axis first. An op that *changes
channels* (``linear``) takes its output channel count from ``out=``, or, if
it is the last such op of its pipeline, from the edge's declared outputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .ir import Op, Shape, Value, format_value

ArgValues = Mapping[str, Value]

REQUIRED = object()  # default of an argument that must be given


@dataclass(frozen=True)
class ArgSpec:
    """One argument of an op. ``default=None`` means optional with no value."""

    name: str
    type: type
    default: object = REQUIRED
    check: Callable[[Value], str | None] | None = None  # returns a complaint, or None
    doc: str = ""


@dataclass(frozen=True)
class OpSpec:
    """How one op is checked and written out."""

    name: str
    doc: str
    call: str  # str.format template: {x} input expression, {layer}, {dim}, and the args
    args: tuple[ArgSpec, ...] = ()
    changes_channels: bool = False
    layer: Callable[[ArgValues, Shape, Shape], str] | None = None  # layer constructor source

    def arg(self, name: str) -> ArgSpec | None:
        return next((a for a in self.args if a.name == name), None)

    def infer(self, args: ArgValues, shape: Shape, channels: int | None) -> Shape:
        """The shape this op produces from ``shape``; ``channels`` for channel-changing ops."""
        if self.changes_channels:
            assert channels is not None
            return (channels, *shape[1:])
        return shape

    def source(self, args: ArgValues, x: str, layer: str | None, dim: int) -> str:
        """The expression that applies this op to the expression ``x``."""
        reprs = {name: _ValueRepr(value) for name, value in args.items()}
        return self.call.format(x=x, layer=layer, dim=dim, **reprs)


class _ValueRepr:
    """Formats an argument value only through ``repr``: nothing from a source reaches code raw."""

    def __init__(self, value: Value):
        self.value = value

    def __format__(self, spec: str) -> str:
        return repr(self.value)


class OpError(Exception):
    """A pipeline whose shapes do not work out; ``index`` is the op at fault (None: whole edge)."""

    def __init__(self, message: str, index: int | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.index = index
        self.hint = hint


# --- argument checks -------------------------------------------------------------


def _positive(value: Value) -> str | None:
    return None if value > 0 else f"must be positive, got {format_value(value)}"


def _probability(value: Value) -> str | None:
    return None if 0 <= value < 1 else f"must be at least 0 and below 1, got {format_value(value)}"


def _finite(value: Value) -> str | None:
    return None if math.isfinite(value) else f"must be finite, got {format_value(value)}"


# --- layers ----------------------------------------------------------------------


def _linear_layer(args: ArgValues, before: Shape, after: Shape) -> str:
    bias = "" if args["bias"] else ", bias=False"
    return f"nn.Linear({before[0]}, {after[0]}{bias})"


def _layernorm_layer(args: ArgValues, before: Shape, after: Shape) -> str:
    extra = "" if args["eps"] == 1e-5 else f", eps={args['eps']!r}"
    extra += "" if args["affine"] else ", elementwise_affine=False"
    return f"nn.LayerNorm({before[0]}{extra})"


def _activation(name: str, call: str, doc: str, *args: ArgSpec) -> OpSpec:
    return OpSpec(name=name, doc=doc, call=call, args=args)


_OP_LIST = (
    OpSpec(
        name="linear",
        doc="An affine map on the feature axis; sizes are inferred.",
        call="{layer}({x})",
        args=(
            ArgSpec(
                "out", int, None, _positive, "output features, needed when a later op changes size"
            ),
            ArgSpec("bias", bool, True, doc="learn an additive bias"),
        ),
        changes_channels=True,
        layer=_linear_layer,
    ),
    OpSpec(
        name="identity", doc="Passes its input through; in and out sizes must agree.", call="{x}"
    ),
    _activation("relu", "torch.relu({x})", "max(x, 0)"),
    _activation("gelu", "F.gelu({x})", "Gaussian error linear unit"),
    _activation("silu", "F.silu({x})", "x * sigmoid(x)"),
    _activation("tanh", "torch.tanh({x})", "hyperbolic tangent"),
    _activation("sigmoid", "torch.sigmoid({x})", "logistic function"),
    _activation("softplus", "F.softplus({x})", "log(1 + exp(x))"),
    _activation(
        "elu",
        "F.elu({x}, alpha={alpha})",
        "exponential linear unit",
        ArgSpec("alpha", float, 1.0, _positive, "scale of the negative part"),
    ),
    _activation(
        "leaky_relu",
        "F.leaky_relu({x}, negative_slope={slope})",
        "max(x, 0) + slope * min(x, 0)",
        ArgSpec("slope", float, 0.01, _finite, "slope of the negative part"),
    ),
    _activation("softmax", "torch.softmax({x}, dim={dim})", "softmax over the feature axis"),
    OpSpec(
        name="layernorm",
        doc="Layer normalisation over the feature axis; a learned scale and shift unless "
        "affine=false.",
        call="{layer}({x})",
        args=(
            ArgSpec("eps", float, 1e-5, _positive, "added to the variance"),
            ArgSpec("affine", bool, True, doc="learn a scale and a shift"),
        ),
        layer=_layernorm_layer,
    ),
    OpSpec(
        name="dropout",
        doc="Zeroes features with probability p while training; identity in eval mode.",
        call="F.dropout({x}, p={p}, training=self.training)",
        args=(ArgSpec("p", float, 0.5, _probability, "probability of zeroing a feature"),),
    ),
)

OPS: dict[str, OpSpec] = {spec.name: spec for spec in _OP_LIST}


# --- binding arguments -------------------------------------------------------------


@dataclass
class Bound:
    """The result of binding an op call's arguments: values, or problems (with arg index)."""

    values: dict[str, Value] = field(default_factory=dict)
    problems: list[tuple[int | None, str]] = field(default_factory=list)


def bind_args(spec: OpSpec, positional: list[Value], keyword: list[tuple[str, Value]]) -> Bound:
    """Match call arguments to ``spec.args``; defaults fill the rest. Problems name the arg."""
    bound = Bound()
    given: dict[str, tuple[int, Value]] = {}
    for i, value in enumerate(positional):
        if i >= len(spec.args):
            bound.problems.append((i, f"{spec.name} takes {_count(len(spec.args))}"))
            continue
        given[spec.args[i].name] = (i, value)
    for j, (name, value) in enumerate(keyword):
        i = len(positional) + j
        if spec.arg(name) is None:
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
        converted = _convert(value, arg.type)
        if converted is None:
            bound.problems.append(
                (
                    i,
                    f"argument {arg.name!r} of {spec.name} must be {_TYPE_WORDS[arg.type]}, "
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


_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _count(n: int) -> str:
    return "no arguments" if n == 0 else f"at most {n} argument{'s' if n > 1 else ''}"


def _convert(value: Value, wanted: type) -> Value | None:
    """``value`` as ``wanted``, or None. Integers are numbers; booleans are not integers."""
    if isinstance(value, bool):
        return value if wanted is bool else None
    if wanted is float and isinstance(value, int | float):
        return float(value)
    return value if isinstance(value, wanted) else None


# --- shapes through a pipeline ---------------------------------------------------------


def format_shape(shape: Shape) -> str:
    return "[" + ", ".join(str(n) for n in shape) + "]"


def infer_pipeline(ops: tuple[Op, ...], entering: Shape, declared: Shape) -> tuple[Shape, ...]:
    """Shapes entering each op and leaving the last; raises :class:`OpError`."""
    changers = [i for i, op in enumerate(ops) if OPS[op.kind].changes_channels]
    last_changer = changers[-1] if changers else None
    shapes = [entering]
    for i, op in enumerate(ops):
        spec = OPS[op.kind]
        channels = None
        if spec.changes_channels:
            channels = op.args.get("out")
            if channels is None:
                if i != last_changer:
                    raise OpError(
                        f"{op.kind} needs out= here: only the last size-changing op of a "
                        "pipeline takes its size from the edge's outputs",
                        index=i,
                        hint=f"write {op.kind}(out=N)",
                    )
                channels = declared[0]
        shapes.append(spec.infer(op.args, shapes[-1], channels))
    if shapes[-1] != declared:
        steps = " -> ".join(
            [format_shape(entering)]
            + [
                f"{op.kind} {format_shape(shape)}"
                for op, shape in zip(ops, shapes[1:], strict=True)
            ]
        )
        hint = None
        if last_changer is None:
            hint = "no op of this pipeline changes the size; add a linear to map between them"
        raise OpError(
            f"the pipeline produces {format_shape(shapes[-1])}, but the outputs need "
            f"{format_shape(declared)} ({steps})",
            index=None,
            hint=hint,
        )
    return tuple(shapes)
