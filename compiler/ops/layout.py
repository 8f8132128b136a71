"""Ops that move values along the spatial axes without learning anything: padding,
cropping and reordering the axes; and the per-side padding that the windows of
``conv.py`` share with them.

Padding and cropping take one item per spatial axis: an integer (the same on both
sides) or a ``[before, after]`` pair, ``[[4, 0]]`` being four positions before the
start of a signal and none after its end. Axes are numbered as in the shape
``[C, *S]``: the channel axis is 0, the spatial axes 1 to d.
"""

from __future__ import annotations

from ..ir import Shape, format_value
from .spec import (
    FLOAT,
    INT,
    INTS,
    PAIRS,
    REQUIRED,
    SPATIAL,
    STR,
    ArgSpec,
    ArgValues,
    OpError,
    OpSpec,
    Site,
    each,
    finite,
    format_shape,
    is_atom,
    non_negative,
    one_of,
    per_axis,
    py_literal,
)

Sides = tuple[tuple[int, int], ...]  # (before, after) per spatial axis


# --- per-side amounts -------------------------------------------------------------------------


def sides(args: ArgValues, name: str, before: Shape) -> Sides:
    """The (before, after) amounts of a per-side argument on each spatial axis."""
    hint = None
    value = args.get(name, 0)
    if len(before) == 2 and isinstance(value, tuple) and len(value) == 2 and not has_pairs(value):
        pair = format_value(value)
        hint = f"for [before, after] on the one axis of a signal, write {name}=[{pair}]"
    items = per_axis(args, name, before, 0, hint=hint)
    return tuple(item if isinstance(item, tuple) else (item, item) for item in items)


def symmetric(pairs: Sides) -> bool:
    return all(lo == hi for lo, hi in pairs)


def has_pairs(value) -> bool:
    """Whether an argument was written with [before, after] pairs."""
    return isinstance(value, tuple) and any(isinstance(item, tuple) for item in value)


def pad_widths(pairs: Sides) -> str:
    """F.pad's tuple: (before, after) of the last axis first, then of the one before it."""
    widths = [n for lo, hi in reversed(pairs) for n in (lo, hi)]
    return py_literal(tuple(widths))


def pad_call(x: str, pairs: Sides, mode: str = "constant", value: float = 0.0) -> str:
    """``F.pad`` of ``x`` by ``pairs``, with a fill value or a mode other than zeros."""
    parts = [x, pad_widths(pairs)]
    if mode not in ("constant", "zeros"):
        parts.append(f"mode={py_literal(mode)}")
    elif value != 0:
        parts.append(f"value={_float_text(value)}")
    return f"F.pad({', '.join(parts)})"


def _float_text(value: float) -> str:
    """A float literal; infinities as float("-inf"), which TorchScript also reads."""
    if value in (float("inf"), float("-inf")):
        return f'float("{value}")'
    return py_literal(float(value))


def check_pad_mode(mode: str, pairs: Sides, before: Shape, what: str) -> None:
    """PyTorch pads by reflection only by less than the axis, circularly by at most the axis."""
    if mode not in ("reflect", "circular"):
        return
    for axis, (n, pair) in enumerate(zip(before[1:], pairs, strict=True), 1):
        for p in pair:
            if p > n or (mode == "reflect" and p == n):
                limit = "smaller than" if mode == "reflect" else "at most"
                raise OpError(
                    f'padding {p} with {what}="{mode}" must be {limit} the input\'s axis '
                    f"{axis} ({n}) of {format_shape(before)}"
                )


# --- pad and crop -----------------------------------------------------------------------------

_MODES = ("constant", "reflect", "replicate", "circular")


def _pad_shape(args, before, target):
    pairs = sides(args, "amount", before)
    mode = args.get("mode", "constant")
    if mode != "constant" and args.get("value", 0.0) != 0:
        raise OpError(f'value= is the fill of mode="constant", not of mode="{mode}"')
    check_pad_mode(mode, pairs, before, "mode")
    return (before[0], *(n + lo + hi for n, (lo, hi) in zip(before[1:], pairs, strict=True)))


def _pad_call(site: Site, x: str, layer, before: Shape, after: Shape) -> str:
    args = site.args
    return pad_call(x, sides(args, "amount", before), args["mode"], args["value"])


def _crop_shape(args, before, target):
    pairs = sides(args, "amount", before)
    sizes = []
    for axis, (n, (lo, hi)) in enumerate(zip(before[1:], pairs, strict=True), 1):
        if lo + hi >= n:
            raise OpError(
                f"crop({format_value(args['amount'])}) removes {lo + hi} positions from the "
                f"input's axis {axis} ({n}) of {format_shape(before)}, leaving none",
                hint="at least one position of every axis must remain",
            )
        sizes.append(n - lo - hi)
    return (before[0], *sizes)


def _crop_call(site: Site, x: str, layer, before: Shape, after: Shape) -> str:
    pairs = sides(site.args, "amount", before)
    slices = [
        f"{lo or ''}:{n - hi if hi else ''}" for n, (lo, hi) in zip(before[1:], pairs, strict=True)
    ]
    while slices and slices[-1] == ":":
        slices.pop()  # trailing axes kept whole
    if not slices:
        return x
    x = x if is_atom(x) else f"({x})"
    return f"{x}[:, :, {', '.join(slices)}]"


# --- reordering the spatial axes --------------------------------------------------------------


def _spatial_axis(axis: int, before: Shape, what: str) -> None:
    d = len(before) - 1
    if 1 <= axis <= d:
        return
    axes = "1" if d == 1 else f"1 to {d}"
    if axis == 0:
        raise OpError(
            f"{what} reorders the spatial axes ({axes} of {format_shape(before)}); the channel "
            "axis 0 stays first",
            hint="to mix channels use linear; to move values between channels and positions, "
            "use reshape",
        )
    raise OpError(
        f"{what} names axis {axis}, but the spatial axes of {format_shape(before)} are {axes}"
    )


def _permute_order(args: ArgValues, before: Shape) -> tuple[int, ...]:
    order = args["order"]
    order = order if isinstance(order, tuple) else (order,)
    d = len(before) - 1
    for axis in order:
        _spatial_axis(axis, before, f"permute({format_value(args['order'])})")
    if sorted(order) != list(range(1, d + 1)):
        raise OpError(
            f"permute({format_value(args['order'])}) must name each spatial axis of "
            f"{format_shape(before)} once: a reordering of {format_value(tuple(range(1, d + 1)))}"
        )
    return order


def _permute_shape(args, before, target):
    return (before[0], *(before[axis] for axis in _permute_order(args, before)))


def _permute_call(site: Site, x: str, layer, before: Shape, after: Shape) -> str:
    order = _permute_order(site.args, before)
    x = x if is_atom(x) else f"({x})"
    return f"{x}.permute({', '.join(str(n) for n in (0, 1, *(a + 1 for a in order)))})"


def _transpose_shape(args, before, target):
    a, b = args["a"], args["b"]
    for axis in (a, b):
        _spatial_axis(axis, before, f"transpose({a}, {b})")
    shape = list(before)
    shape[a], shape[b] = shape[b], shape[a]
    return tuple(shape)


def _transpose_call(site: Site, x: str, layer, before: Shape, after: Shape) -> str:
    x = x if is_atom(x) else f"({x})"
    return f"{x}.transpose({site.args['a'] + 1}, {site.args['b'] + 1})"


_AMOUNT_DOC = "per spatial axis: an integer for both sides, or [before, after]"

LAYOUT = (
    OpSpec(
        name="pad",
        doc="Adds positions on each side of the spatial axes (F.pad), filled with value "
        '(zeros), or by mode "reflect", "replicate" or "circular"; pad([[4, 0]]) before a '
        "convolution makes it causal.",
        rule="[C, *S] -> [C, *(S + before + after)]",
        call=_pad_call,
        args=(
            ArgSpec("amount", (PAIRS,), REQUIRED, each(non_negative), _AMOUNT_DOC),
            ArgSpec("value", (FLOAT,), 0.0, finite, 'the fill of mode="constant"'),
            ArgSpec("mode", (STR,), "constant", one_of(*_MODES), "how new positions are filled"),
        ),
        ranks=SPATIAL,
        shape=_pad_shape,
    ),
    OpSpec(
        name="crop",
        doc="Removes positions from each side of the spatial axes (slicing); at least one "
        "position of every axis must remain.",
        rule="[C, *S] -> [C, *(S - before - after)]",
        call=_crop_call,
        args=(ArgSpec("amount", (PAIRS,), REQUIRED, each(non_negative), _AMOUNT_DOC),),
        ranks=SPATIAL,
        shape=_crop_shape,
    ),
    OpSpec(
        name="permute",
        doc="Reorders the spatial axes (numbered 1 to d after the channel axis 0, which stays "
        "first): permute([2, 1]) swaps height and width.",
        rule="[C, *S] -> [C, S[order[0]], S[order[1]], ...]",
        call=_permute_call,
        args=(ArgSpec("order", (INTS,), REQUIRED, doc="the spatial axes in their new order"),),
        ranks=SPATIAL,
        shape=_permute_shape,
    ),
    OpSpec(
        name="transpose",
        doc="Swaps two spatial axes (numbered 1 to d after the channel axis 0).",
        rule="[C, *S] -> [C, *S] with axes a and b swapped",
        call=_transpose_call,
        args=(
            ArgSpec("a", (INT,), REQUIRED, doc="a spatial axis"),
            ArgSpec("b", (INT,), REQUIRED, doc="another spatial axis"),
        ),
        ranks=SPATIAL,
        shape=_transpose_shape,
    ),
)
