"""What an op table entry is: :class:`OpSpec`, its arguments, and the helpers entries share.

Shapes are per sample, channel (feature) axis first: ``[C]`` a vector,
``[C, L]`` a signal, ``[C, H, W]`` an image, ``[C, D, H, W]`` a volume.
Everything here writes source text; nothing imports torch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ..ir import Op, Shape, Value, format_value
from ..sizes import Size

ArgValues = Mapping[str, Value]

REQUIRED = object()  # default of an argument that must be given

# Argument kinds: what values an argument accepts (ArgSpec.kinds is a tuple of these).
INT, FLOAT, BOOL, STR = "int", "float", "bool", "str"
INTS = "ints"  # an integer, or a list of integers with one per spatial axis
NUMS = "nums"  # a number, or a list of numbers with one per spatial axis
# an integer, or a list with one item per spatial axis: an integer (both sides) or a
# [before, after] pair of integers (per-side padding and cropping)
PAIRS = "pairs"

_KIND_WORDS = {
    INT: "an integer",
    FLOAT: "a number",
    BOOL: "true or false",
    STR: "a string",
    INTS: "an integer or a list of integers",
    NUMS: "a number or a list of numbers",
    PAIRS: "an integer or a list of integers and [before, after] pairs",
}

CHANNEL_DIM = 1  # tensors at run time are [batch, channels, *spatial]
SPATIAL = (2, 4)  # the ranks of signals, images and volumes


@dataclass(frozen=True)
class ArgSpec:
    """One argument of an op. ``default=None`` means optional with no value."""

    name: str
    kinds: tuple[str, ...]
    default: object = REQUIRED
    check: Callable[[Value], str | None] | None = None  # returns a complaint, or None
    doc: str = ""
    named: bool = False  # shown as name=value even when required (attention(heads=4))

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
    # reads the edge's inputs separately (queries, keys, values; keys and values may be
    # windows of steps); first op only; lower writes its call
    windows: bool = False
    # reads an ids space (token ids, or the time index) as one-hot vectors; first op only
    ids: bool = False
    extra_args: bool = False  # passes unknown arguments on to a constructor (module)
    shape: ShapeFn = _same
    check: CheckFn = _no_check  # channel conditions, checked once the shapes are known
    layer: LayerFn | None = None  # layer constructor source
    # a module with no parameters or buffers that the op calls (nn.Dropout): an attribute of
    # its own, beside the edge's layers, so that tools find it by type and no state_dict
    # key moves; ``call`` applies it as ``{layer}``
    module: LayerFn | None = None
    params: CountFn = _zero  # learned parameters
    macs: CountFn = _zero  # multiply-accumulates per sample

    def arg(self, name: str) -> ArgSpec | None:
        return next((a for a in self.args if a.name == name), None)

    def source(self, site: Site, x: str, layer: str | None, before: Shape, after: Shape) -> str:
        """The expression that applies this op to the expression ``x``."""
        if callable(self.call):
            return self.call(site, x, layer, before, after)
        if "{x}." in self.call and not is_atom(x):
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
    if isinstance(value, Size):  # an expression of the size symbols bound in the method
        return f"({value})" if value.terms[1:] or value.const else str(value)
    return repr(value)


class _Literal:
    """Formats a value only as a Python literal: nothing from a source reaches code raw."""

    def __init__(self, value: Value):
        self.value = value

    def __format__(self, spec: str) -> str:
        return py_literal(self.value)


def is_atom(expr: str) -> bool:
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


def scalars(value: Value) -> tuple:
    """The numbers (or strings) of a value: itself, the items of a list, of a list of pairs."""
    if not isinstance(value, tuple):
        return (value,)
    return tuple(x for item in value for x in (item if isinstance(item, tuple) else (item,)))


def each(check: Callable[[Value], str | None]) -> Callable[[Value], str | None]:
    """A check applied to a value, or to every item of a list (and of its pairs)."""

    def checked(value: Value) -> str | None:
        for item in scalars(value):
            complaint = check(item)
            if complaint:
                return complaint
        return None

    return checked


def positive(value: Value) -> str | None:
    return None if value > 0 else f"must be positive, got {format_value(value)}"


def non_negative(value: Value) -> str | None:
    return None if value >= 0 else f"must not be negative, got {format_value(value)}"


def probability(value: Value) -> str | None:
    return None if 0 <= value < 1 else f"must be at least 0 and below 1, got {format_value(value)}"


def finite(value: Value) -> str | None:
    return None if math.isfinite(value) else f"must be finite, got {format_value(value)}"


def one_of(*choices: str) -> Callable[[Value], str | None]:
    def check(value: Value) -> str | None:
        if value in choices:
            return None
        return (
            f"must be one of {', '.join(json.dumps(c) for c in choices)}, got {json.dumps(value)}"
        )

    return check


PY_KEYWORDS = frozenset(
    "False None True and as assert async await break class continue def del elif else except "
    "finally for from global if import in is lambda nonlocal not or pass raise return try "
    "while with yield".split()
)


# --- helpers of several families ------------------------------------------------------------

OUT_ARG = ArgSpec(
    "out", (INT,), None, positive, "output channels, needed when a later op changes them"
)


SPECTRAL_NORM_ARG = ArgSpec(
    "spectral_norm",
    (BOOL,),
    False,
    doc="divide the weight by its largest singular value (keeps a solved cycle contractive)",
)


def spectral(args: ArgValues, constructor: str) -> str:
    """A layer constructor, with its weight spectrally normalised when the op asks."""
    if args.get("spectral_norm"):
        return f"nn.utils.parametrizations.spectral_norm({constructor})"
    return constructor


def channels(args: ArgValues, target) -> int:
    """The output channels of a channel-changing op: ``out=``, else the inferred target."""
    if args.get("out") is not None:
        return args["out"]
    return target if isinstance(target, int) else target[0]


def kwargs(args: ArgValues, spec_args: tuple[ArgSpec, ...], names: tuple[str, ...]) -> list[str]:
    """``name=value`` for each of ``names`` whose value is not its default."""
    out = []
    for name in names:
        spec = next(a for a in spec_args if a.name == name)
        value = args.get(name)
        if value is not None and value != spec.default:
            out.append(f"{name}={py_literal(value)}")
    return out


def prod(values) -> int:
    return math.prod(values)


def per_axis(args: ArgValues, name: str, before: Shape, default=None, hint=None) -> tuple:
    """An argument with one value per spatial axis: a single value applies to every axis."""
    value = args.get(name, default)
    d = len(before) - 1
    if isinstance(value, tuple):
        if len(value) != d:
            raise OpError(
                f"{name}={format_value(value)} has {len(value)} values, but the input "
                f"{format_shape(before)} has {d} spatial axes",
                hint=hint,
            )
        return value
    return (value,) * d
