"""Ops over the spatial axes: convolutions, pooling and resampling.

They slide windows over (or resample) the axes after the channel axis, and pick
their 1-, 2- or 3-d PyTorch version from the number of those axes.
"""

from __future__ import annotations

import math

from ..ir import Shape, format_value
from ..sizes import SymbolicSizeError, truth
from .layout import Sides, check_pad_mode, has_pairs, pad_call, sides, symmetric
from .spec import (
    BOOL,
    INT,
    INTS,
    NUMS,
    PAIRS,
    REQUIRED,
    SPATIAL,
    SPECTRAL_NORM_ARG,
    STR,
    ArgSpec,
    ArgValues,
    CallFn,
    OpError,
    OpSpec,
    Site,
    channels,
    each,
    format_shape,
    kwargs,
    non_negative,
    one_of,
    per_axis,
    positive,
    prod,
    py_literal,
    spectral,
)

# --- shape helpers ---------------------------------------------------------------------


def _padding(value) -> str | None:
    if isinstance(value, str):
        return one_of("same", "valid")(value)
    return each(non_negative)(value)


def _window(before: Shape, args: ArgValues, *, pooling: bool) -> Shape:
    """Spatial sizes after a sliding window (convolution or pooling), PyTorch's formula."""
    kernel = per_axis(args, "kernel", before)
    stride = per_axis(args, "stride", before, 1) if not pooling else _pool_stride(args, before)
    dilation = per_axis(args, "dilation", before, 1)
    padding = args.get("padding", 0)
    ceil_mode = args.get("ceil_mode", False)
    if padding == "same":
        if any(s != 1 for s in stride):
            raise OpError('padding="same" needs stride 1 (PyTorch has no "same" for strides)')
        return before
    pads = tuple((0, 0) for _ in kernel) if padding == "valid" else sides(args, "padding", before)
    padded_first = pooling and _pool_pads_first(args, before)
    if padded_first and ceil_mode:
        raise OpError(
            "ceil_mode=true needs padding that PyTorch's pooling takes itself: the same on both "
            "sides of an axis and at most half the kernel",
            hint="pad the input so that the windows fit instead",
        )
    sizes = []
    for axis, (n, k, s, (lo, hi), dl) in enumerate(
        zip(before[1:], kernel, stride, pads, dilation, strict=True), 1
    ):
        if pooling and max(lo, hi) >= k:
            raise OpError(
                f"padding {max(lo, hi)} is not smaller than the kernel {k}: some windows would "
                "hold padding only",
                hint="pad by less than the kernel on each side",
            )
        span = dl * (k - 1) + 1
        room = n + lo + hi - span
        out = ((room + s - 1) // s if ceil_mode else room // s) + 1  # ceil: one atom
        hangs = ceil_mode and truth((out - 1) * s - (n + lo), lambda over: over >= 0)
        if hangs is None:
            raise OpError(
                f"with ceil_mode=true, whether the last window of {format_shape(before)} "
                "starts in the input depends on its sizes, known only at call time",
                hint="use ceil_mode=false or padding less than the stride, or declare the sizes",
            )
        if hangs:
            out -= 1  # PyTorch: the last window must start inside the input or left padding
        if out < 1:  # with ceil_mode, PyTorch lets one window hang over the end
            what = f"kernel {k}" + (f" (spanning {span} with dilation {dl})" if dl != 1 else "")
            raise OpError(
                f"{what} is larger than the input's axis {axis} "
                f"({n}{f' padded to {n + lo + hi}' if lo or hi else ''}) of "
                f"{format_shape(before)}"
            )
        sizes.append(out)
    return (before[0], *sizes)


def _layer_padding(args: ArgValues, before: Shape) -> object:
    """The padding a convolution or pooling layer takes itself: the argument, symmetric pairs
    as single sizes, or None when the pairs differ (``F.pad`` pads first, the layer not)."""
    padding = args.get("padding", 0)
    if isinstance(padding, str) or not has_pairs(padding):
        return padding
    pairs = sides(args, "padding", before)
    if not symmetric(pairs):
        return None
    sizes = tuple(lo for lo, _ in pairs)
    return sizes[0] if len(set(sizes)) == 1 else sizes


def _pool_pads_first(args: ArgValues, before: Shape) -> bool:
    """Whether a pooling pads with ``F.pad`` first: PyTorch pools pad the same on both sides
    of an axis, by at most half the kernel."""
    padding = _layer_padding(args, before)
    if padding is None:
        return True
    kernel = per_axis(args, "kernel", before)
    pads = padding if isinstance(padding, tuple) else (padding,) * len(kernel)
    return any(p > k // 2 for p, k in zip(pads, kernel, strict=True))


def _pool_stride(args: ArgValues, before: Shape) -> tuple:
    if args.get("stride") is None:
        return per_axis(args, "kernel", before)
    return per_axis(args, "stride", before)


def _groups_divide(args: ArgValues, before: Shape, after: Shape) -> None:
    groups = args.get("groups", 1)
    for what, n in (("input", before[0]), ("output", after[0])):
        if n % groups:
            raise OpError(f"groups={groups} does not divide the {n} {what} channels")


# --- convolutions ----------------------------------------------------------------------------

CONV_ARGS = (
    ArgSpec("kernel", (INTS,), REQUIRED, each(positive), "kernel size"),
    ArgSpec("stride", (INTS,), 1, each(positive), "step between windows"),
    ArgSpec(
        "padding",
        (PAIRS, STR),
        0,
        _padding,
        "added on each side (padding_mode): one size, one per axis, or [before, after] per "
        'axis; or "same" / "valid"',
    ),
    ArgSpec("dilation", (INTS,), 1, each(positive), "spacing of kernel taps"),
    ArgSpec("groups", (INT,), 1, positive, "blocked connections; divides in and out channels"),
    ArgSpec("bias", (BOOL,), True, doc="learn an additive bias"),
    ArgSpec("out", (INT,), None, positive, "output channels, needed when a later op changes them"),
    ArgSpec(
        "padding_mode",
        (STR,),
        "zeros",
        one_of("zeros", "reflect", "replicate", "circular"),
        "how padding is filled",
    ),
    SPECTRAL_NORM_ARG,
)


def _conv_shape(args, before, target):
    _check_padding_mode(args, before)
    return (channels(args, target), *_window(before, args, pooling=False)[1:])


def _check_padding_mode(args: ArgValues, before: Shape) -> None:
    """PyTorch pads by reflection only by less than the axis, circularly by at most the axis."""
    mode = args.get("padding_mode", "zeros")
    padding = args.get("padding", 0)
    if mode not in ("reflect", "circular") or padding == "valid":
        return
    if padding == "same":  # the larger side of dilation·(kernel-1), split in two
        kernel = per_axis(args, "kernel", before)
        dilation = per_axis(args, "dilation", before, 1)
        spans = [dl * (k - 1) for k, dl in zip(kernel, dilation, strict=True)]
        pairs: Sides = tuple((span - span // 2,) * 2 for span in spans)
    else:
        pairs = sides(args, "padding", before)
    check_pad_mode(mode, pairs, before, "padding_mode")


def _conv_call(site: Site, x: str, layer, before: Shape, after: Shape) -> str:
    """The layer on its input; with [before, after] pairs that differ, on the padded input
    (the layer itself pads nothing, so its parameters are those of any other padding)."""
    if _layer_padding(site.args, before) is not None:
        return f"{layer}({x})"
    mode = site.args.get("padding_mode", "zeros")
    return f"{layer}({pad_call(x, sides(site.args, 'padding', before), mode)})"


def _conv_layer(site: Site, before: Shape, after: Shape) -> str:
    args = site.args
    names = ("stride", "padding", "dilation", "groups", "bias", "padding_mode")
    padding = _layer_padding(args, before)
    if padding is None:  # F.pad pads first (_conv_call)
        args = {**args, "padding": 0, "padding_mode": "zeros"}
    else:
        args = {**args, "padding": padding}
    positional = [str(before[0]), str(after[0]), py_literal(args["kernel"])]
    extra = kwargs(args, CONV_ARGS, names)
    return spectral(args, f"nn.Conv{len(before) - 1}d({', '.join(positional + extra)})")


def _conv_params(args, before, after) -> int:
    """Weights [out, in / groups, *kernel] (transposed: [in, out / groups, *kernel]), bias."""
    kernel = per_axis(args, "kernel", before)
    weight = after[0] * (before[0] // args["groups"]) * prod(kernel)
    return weight + (after[0] if args["bias"] else 0)


def _conv_macs(args, before, after) -> int:
    kernel = per_axis(args, "kernel", before)
    return after[0] * (before[0] // args["groups"]) * prod(kernel) * prod(after[1:])


TRANSPOSE_ARGS = (
    ArgSpec("kernel", (INTS,), REQUIRED, each(positive), "kernel size"),
    ArgSpec("stride", (INTS,), 1, each(positive), "upsampling factor"),
    ArgSpec("padding", (INTS,), 0, each(non_negative), "removed from each side of the output"),
    ArgSpec("output_padding", (INTS,), 0, each(non_negative), "added to one side of the output"),
    ArgSpec("dilation", (INTS,), 1, each(positive), "spacing of kernel taps"),
    ArgSpec("groups", (INT,), 1, positive, "blocked connections; divides in and out channels"),
    ArgSpec("bias", (BOOL,), True, doc="learn an additive bias"),
    ArgSpec("out", (INT,), None, positive, "output channels, needed when a later op changes them"),
)


def _transpose_shape(args, before, target):
    kernel = per_axis(args, "kernel", before)
    stride = per_axis(args, "stride", before, 1)
    padding = per_axis(args, "padding", before, 0)
    output_padding = per_axis(args, "output_padding", before, 0)
    dilation = per_axis(args, "dilation", before, 1)
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
    return (channels(args, target), *sizes)


def _transpose_layer(site: Site, before: Shape, after: Shape) -> str:
    args = site.args
    names = ("stride", "padding", "output_padding", "groups", "bias", "dilation")
    extra = kwargs(args, TRANSPOSE_ARGS, names)
    positional = [str(before[0]), str(after[0]), py_literal(args["kernel"])]
    return f"nn.ConvTranspose{len(before) - 1}d({', '.join(positional + extra)})"


def _transpose_macs(args, before, after) -> int:
    kernel = per_axis(args, "kernel", before)
    return before[0] * (after[0] // args["groups"]) * prod(kernel) * prod(before[1:])


# --- pooling and resampling ------------------------------------------------------------------

POOL_ARGS = (
    ArgSpec("kernel", (INTS,), REQUIRED, each(positive), "window size"),
    ArgSpec("stride", (INTS,), None, each(positive), "step between windows (default: kernel)"),
    ArgSpec(
        "padding",
        (PAIRS,),
        0,
        each(non_negative),
        "added on each side (-inf for maxpool, zeros for avgpool): one size, one per axis, "
        "or [before, after] per axis; smaller than the kernel",
    ),
    ArgSpec("ceil_mode", (BOOL,), False, doc="round output sizes up instead of down"),
)


def _pool_shape(args, before, target):
    return _window(before, args, pooling=True)


def _pool_call(function: str, fill: float) -> CallFn:
    """The pooling function; padding it does not take itself is ``F.pad`` with ``fill`` first
    (-inf for the maximum: as PyTorch's own padding, never chosen; zeros for the mean,
    counted as PyTorch's own padding is)."""

    def call(site: Site, x: str, layer, before: Shape, after: Shape) -> str:
        args = site.args
        if _pool_pads_first(args, before):
            x = pad_call(x, sides(args, "padding", before), value=fill)
            args = {**args, "padding": 0}
        else:
            args = {**args, "padding": _layer_padding(args, before)}
        parts = [x, py_literal(args["kernel"])]
        if args.get("stride") is not None and args["stride"] != args["kernel"]:
            parts.append(f"stride={py_literal(args['stride'])}")
        parts += kwargs(args, POOL_ARGS, ("padding", "ceil_mode"))
        return f"F.{function}{len(before) - 1}d({', '.join(parts)})"

    return call


def _global_shape(args, before, target):
    return (before[0],)


def _adaptive_shape(args, before, target):
    return (before[0], *per_axis(args, "size", before))


def _upsample_shape(args, before, target):
    scale = per_axis(args, "scale", before)
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
    # NOTE: a whole scale multiplies, so that a size known only at call time stays exact
    sizes = [
        n * int(s) if float(s).is_integer() else math.floor(_known(n, "a fractional scale") * s)
        for n, s in zip(before[1:], scale, strict=True)
    ]
    if min(sizes) < 1:
        raise OpError(f"scale {format_value(args['scale'])} shrinks {format_shape(before)} to 0")
    return (before[0], *sizes)


def _known(n, what: str) -> int:
    """``n``, a number: a size known only at call time raises (the op's error says so)."""
    if not isinstance(n, int):
        raise SymbolicSizeError(f"{what} of the size {n}")
    return n


def _upsample_call(site: Site, x: str, layer, before: Shape, after: Shape) -> str:
    args = site.args
    # floats, as F.interpolate declares them (TorchScript refuses an int)
    scale = args["scale"]
    scale = tuple(float(s) for s in scale) if isinstance(scale, tuple) else float(scale)
    parts = [x, f"scale_factor={py_literal(scale)}"]
    if args["mode"] != "nearest":
        parts.append(f"mode={py_literal(args['mode'])}")
    if args.get("align_corners") is not None:
        parts.append(f"align_corners={py_literal(args['align_corners'])}")
    return f"F.interpolate({', '.join(parts)})"


_SIZE_ARG = ArgSpec("size", (INTS,), REQUIRED, each(positive), "output spatial size")

# --- the entries ----------------------------------------------------------------------------

CONVOLUTIONS = (
    OpSpec(
        name="conv",
        doc="A convolution, 1-, 2- or 3-d after the input's spatial axes; like nn.Conv2d.",
        rule="[C, *S] -> [out, *S'], S' by PyTorch's formula",
        call=_conv_call,
        args=CONV_ARGS,
        ranks=SPATIAL,
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
        ranks=SPATIAL,
        changes_channels=True,
        shape=_transpose_shape,
        check=_groups_divide,
        layer=_transpose_layer,
        params=_conv_params,
        macs=_transpose_macs,
    ),
)

POOLING = (
    OpSpec(
        name="maxpool",
        doc="Maximum over sliding windows (F.max_pool1d/2d/3d; padding is -inf, never the "
        "maximum).",
        rule="[C, *S] -> [C, *S'], S' by PyTorch's formula",
        call=_pool_call("max_pool", float("-inf")),
        args=POOL_ARGS,
        ranks=SPATIAL,
        shape=_pool_shape,
    ),
    OpSpec(
        name="avgpool",
        doc="Mean over sliding windows (F.avg_pool1d/2d/3d; padding counts as zeros).",
        rule="[C, *S] -> [C, *S'], S' by PyTorch's formula",
        call=_pool_call("avg_pool", 0.0),
        args=POOL_ARGS,
        ranks=SPATIAL,
        shape=_pool_shape,
    ),
    OpSpec(
        name="adaptive_avg_pool",
        doc="Mean over windows chosen so that the output has the given spatial size.",
        rule="[C, *S] -> [C, *size]",
        call="F.adaptive_avg_pool{d}d({x}, {size})",
        args=(_SIZE_ARG,),
        ranks=SPATIAL,
        shape=_adaptive_shape,
    ),
    OpSpec(
        name="adaptive_max_pool",
        doc="Maximum over windows chosen so that the output has the given spatial size.",
        rule="[C, *S] -> [C, *size]",
        call="F.adaptive_max_pool{d}d({x}, {size})",
        args=(_SIZE_ARG,),
        ranks=SPATIAL,
        shape=_adaptive_shape,
    ),
    OpSpec(
        name="global_avg_pool",
        doc="The mean of each channel over all positions.",
        rule="[C, *S] -> [C]",
        call="{x}.mean(dim={dims})",
        ranks=SPATIAL,
        shape=_global_shape,
    ),
    OpSpec(
        name="global_max_pool",
        doc="The maximum of each channel over all positions.",
        rule="[C, *S] -> [C]",
        call="{x}.amax(dim={dims})",
        ranks=SPATIAL,
        shape=_global_shape,
    ),
    OpSpec(
        name="upsample",
        doc="Resampling by a scale factor (F.interpolate); mode nearest, linear (signals), "
        "bilinear or bicubic (images), trilinear (volumes).",
        rule="[C, *S] -> [C, *floor(S·scale)]",
        call=_upsample_call,
        args=(
            ArgSpec("scale", (NUMS,), REQUIRED, each(positive), "factor per spatial axis"),
            ArgSpec(
                "mode",
                (STR,),
                "nearest",
                one_of("nearest", "linear", "bilinear", "bicubic", "trilinear"),
                "interpolation",
            ),
            ArgSpec("align_corners", (BOOL,), None, doc="for the interpolating modes"),
        ),
        ranks=SPATIAL,
        shape=_upsample_shape,
    ),
)
