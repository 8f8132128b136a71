"""Normalisation ops: per channel over a batch, per group, per instance, per sample."""

from __future__ import annotations

from ..ir import Shape, format_value
from .spec import (
    BOOL,
    FLOAT,
    INT,
    INTS,
    REQUIRED,
    SPATIAL,
    STR,
    ArgSpec,
    ArgValues,
    OpError,
    OpSpec,
    Site,
    each,
    format_shape,
    is_atom,
    kwargs,
    non_negative,
    one_of,
    positive,
    probability,
    prod,
)

NORM_ARGS = (
    ArgSpec("eps", (FLOAT,), 1e-5, positive, "added to the variance"),
    ArgSpec("momentum", (FLOAT,), 0.1, probability, "weight of a new batch in running stats"),
    ArgSpec("affine", (BOOL,), True, doc="learn a per-channel scale and shift"),
)


def _batchnorm_layer(site: Site, before: Shape, after: Shape) -> str:
    args = site.args
    d = max(1, len(before) - 1)
    extra = kwargs(args, NORM_ARGS, ("eps", "momentum"))
    extra += [] if args["affine"] else ["affine=False"]
    return f"nn.BatchNorm{d}d({', '.join([str(before[0]), *extra])})"


def _affine_params(args, before, after) -> int:
    return 2 * before[0] if args["affine"] else 0


def _groupnorm_check(args, before, after) -> None:
    if before[0] % args["groups"]:
        raise OpError(f"groups={args['groups']} does not divide the {before[0]} channels")
    if before[0] // args["groups"] * prod(before[1:]) == 1:
        raise OpError(
            f"groupnorm(groups={args['groups']}) normalises each group of channels over its "
            f"values, but a group of {format_shape(before)} holds one value",
            hint="use fewer groups, or normalise before the spatial axes are pooled away",
        )


def _instancenorm_check(args, before, after) -> None:
    if prod(before[1:]) == 1:
        raise OpError(
            f"instancenorm normalises each channel over its positions, but {format_shape(before)} "
            "has one position",
            hint="use it before the spatial axes are pooled away, or use layernorm",
        )


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


# --- per-sample norms: over all axes, the trailing ones, or the channels at each position ---


def _axes(value) -> str | None:
    return (one_of("all", "channels") if isinstance(value, str) else each(non_negative))(value)


AXES_ARG = ArgSpec(
    "axes",
    (INTS, STR),
    "all",
    _axes,
    '"all", "channels" (at each position), or the axes: trailing ones ([1, 2] of [C, H, W]: '
    "each channel over its positions) or [0]",
)


def _norm_axes(args: ArgValues, before: Shape) -> int | None:
    """The first normalised axis (the rest of the shape follows it, as nn.LayerNorm does), or
    None for the channel axis alone at each position."""
    axes = args.get("axes", "all")
    if axes == "all":
        return 0
    if axes == "channels" or (len(before) > 1 and axes in (0, (0,))):
        return None
    axes = axes if isinstance(axes, tuple) else (axes,)
    start = axes[0] if axes else 0
    if axes != tuple(range(start, len(before))):
        last = len(before) - 1
        raise OpError(
            f"axes={format_value(args['axes'])} of {format_shape(before)} are neither its "
            f"trailing axes (a run ending at axis {last}, as nn.LayerNorm normalises) nor the "
            "channel axis 0 alone",
            hint=f'write axes="all", axes="channels" or, say, axes=[{last}]',
        )
    return start


def _norm_shape(args: ArgValues, before: Shape) -> str:
    """The normalised shape: the channel count, or the shape from the first normalised axis."""
    start = _norm_axes(args, before)
    shape = before[:1] if start is None else before[start:]
    return str(shape[0]) if len(shape) == 1 else format_shape(shape)


def _norm_size(args: ArgValues, before: Shape) -> int:
    start = _norm_axes(args, before)
    return before[0] if start is None else prod(before[start:])


def _sample_norm_shape(args, before, target):
    start = _norm_axes(args, before)
    if start is not None and not all(isinstance(n, int) for n in before[start:]):
        raise OpError(
            f"normalising over the axes {format_shape(before[start:])} needs their sizes when "
            "the layer is built, but they are known only at call time",
            hint='normalise over the channels (axes="channels"), or declare the input\'s sizes',
        )
    return before


def _sample_norm_call(site: Site, x: str, layer, before: Shape, after: Shape) -> str:
    """The layer; over the channels alone, with the channel axis moved last and back."""
    if len(before) == 1 or _norm_axes(site.args, before) is not None:
        return f"{layer}({x})"
    x = x if is_atom(x) else f"({x})"  # `a * b` then .movedim: the product's, not b's
    return f"{layer}({x}.movedim(1, -1)).movedim(-1, 1)"


def _layernorm_layer(site: Site, before: Shape, after: Shape) -> str:
    args = site.args
    extra = "" if args["eps"] == 1e-5 else f", eps={args['eps']!r}"
    extra += "" if args["affine"] else ", elementwise_affine=False"
    return f"nn.LayerNorm({_norm_shape(args, before)}{extra})"


def _layernorm_params(args, before, after) -> int:
    return 2 * _norm_size(args, before) if args["affine"] else 0


def _rmsnorm_layer(site: Site, before: Shape, after: Shape) -> str:
    args = site.args
    extra = "" if args.get("eps") is None else f", eps={args['eps']!r}"
    extra += "" if args["affine"] else ", elementwise_affine=False"
    return f"nn.RMSNorm({_norm_shape(args, before)}{extra})"


def _rmsnorm_params(args, before, after) -> int:
    return _norm_size(args, before) if args["affine"] else 0


NORMS = (
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
            ArgSpec("groups", (INT,), REQUIRED, positive, "number of channel groups"),
            ArgSpec("eps", (FLOAT,), 1e-5, positive, "added to the variance"),
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
            ArgSpec("eps", (FLOAT,), 1e-5, positive, "added to the variance"),
            ArgSpec("affine", (BOOL,), False, doc="learn a per-channel scale and shift"),
        ),
        ranks=SPATIAL,
        check=_instancenorm_check,
        layer=_instancenorm_layer,
        params=_affine_params,
    ),
    OpSpec(
        name="layernorm",
        doc="Layer normalisation of each sample over all its axes (nn.LayerNorm(shape)), over "
        'its trailing axes, or over the channels at each position (axes="channels": '
        "nn.LayerNorm(C) with the channel axis moved last); a learned elementwise scale and "
        "shift unless affine=false.",
        rule="[C, *S] -> [C, *S]",
        call=_sample_norm_call,
        args=(
            ArgSpec("eps", (FLOAT,), 1e-5, positive, "added to the variance"),
            ArgSpec("affine", (BOOL,), True, doc="learn a scale and a shift"),
            AXES_ARG,
        ),
        shape=_sample_norm_shape,
        layer=_layernorm_layer,
        params=_layernorm_params,
    ),
)

RMSNORM = OpSpec(
    name="rmsnorm",
    doc="RMS normalisation of each sample over all its axes (nn.RMSNorm(shape)), its "
    'trailing axes, or the channels at each position (axes="channels"): divided by its root '
    "mean square, without centring; a learned elementwise scale unless affine=false.",
    rule="[C, *S] -> [C, *S]",
    call=_sample_norm_call,
    args=(
        ArgSpec(
            "eps",
            (FLOAT,),
            None,
            positive,
            "added to the mean square (default: torch's, the dtype's epsilon)",
        ),
        ArgSpec("affine", (BOOL,), True, doc="learn a scale"),
        AXES_ARG,
    ),
    shape=_sample_norm_shape,
    layer=_rmsnorm_layer,
    params=_rmsnorm_params,
)
