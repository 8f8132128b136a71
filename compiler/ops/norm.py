"""Normalisation ops: per channel over a batch, per group, per instance, per sample."""

from __future__ import annotations

from ..ir import Shape
from .spec import (
    BOOL,
    FLOAT,
    INT,
    REQUIRED,
    SPATIAL,
    ArgSpec,
    OpError,
    OpSpec,
    Site,
    format_shape,
    kwargs,
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


def _sample_shape(before: Shape) -> str:
    """The normalised shape of a per-sample norm: a vector's size, or the whole shape."""
    return str(before[0]) if len(before) == 1 else format_shape(before)


def _layernorm_layer(site: Site, before: Shape, after: Shape) -> str:
    args = site.args
    extra = "" if args["eps"] == 1e-5 else f", eps={args['eps']!r}"
    extra += "" if args["affine"] else ", elementwise_affine=False"
    return f"nn.LayerNorm({_sample_shape(before)}{extra})"


def _layernorm_params(args, before, after) -> int:
    return 2 * prod(before) if args["affine"] else 0


def _rmsnorm_layer(site: Site, before: Shape, after: Shape) -> str:
    args = site.args
    extra = "" if args.get("eps") is None else f", eps={args['eps']!r}"
    extra += "" if args["affine"] else ", elementwise_affine=False"
    return f"nn.RMSNorm({_sample_shape(before)}{extra})"


def _rmsnorm_params(args, before, after) -> int:
    return prod(before) if args["affine"] else 0


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
        doc="Layer normalisation of each sample over all its axes (nn.LayerNorm(shape)); a "
        "learned elementwise scale and shift unless affine=false.",
        rule="[C, *S] -> [C, *S]",
        call="{layer}({x})",
        args=(
            ArgSpec("eps", (FLOAT,), 1e-5, positive, "added to the variance"),
            ArgSpec("affine", (BOOL,), True, doc="learn a scale and a shift"),
        ),
        layer=_layernorm_layer,
        params=_layernorm_params,
    ),
)

RMSNORM = OpSpec(
    name="rmsnorm",
    doc="RMS normalisation of each sample over all its axes (nn.RMSNorm(shape)): divided by "
    "its root mean square, without centring; a learned elementwise scale unless affine=false.",
    rule="[C, *S] -> [C, *S]",
    call="{layer}({x})",
    args=(
        ArgSpec(
            "eps",
            (FLOAT,),
            None,
            positive,
            "added to the mean square (default: torch's, the dtype's epsilon)",
        ),
        ArgSpec("affine", (BOOL,), True, doc="learn a scale"),
    ),
    layer=_rmsnorm_layer,
    params=_rmsnorm_params,
)
