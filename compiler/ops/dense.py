"""Ops that map a sample without looking at its positions: linear maps, elementwise ops,
the combining ops, dropout and reshaping.
"""

from __future__ import annotations

from ..ir import Shape
from .spec import (
    BOOL,
    FLOAT,
    INTS,
    OUT_ARG,
    REQUIRED,
    SPATIAL,
    SPECTRAL_NORM_ARG,
    STR,
    ArgSpec,
    CallFn,
    OpError,
    OpSpec,
    Site,
    channels,
    each,
    finite,
    format_shape,
    is_atom,
    one_of,
    positive,
    probability,
    prod,
    py_literal,
    spectral,
)

# --- linear ---------------------------------------------------------------------------------


def _linear_shape(args, before, target):
    return (channels(args, target), *before[1:])


def _linear_layer(site: Site, before: Shape, after: Shape) -> str:
    bias = "" if site.args["bias"] else ", bias=False"
    if len(before) == 1:
        return spectral(site.args, f"nn.Linear({before[0]}, {after[0]}{bias})")
    return spectral(site.args, f"nn.Conv{len(before) - 1}d({before[0]}, {after[0]}, 1{bias})")


def _linear_params(args, before, after) -> int:
    return before[0] * after[0] + (after[0] if args["bias"] else 0)


def _linear_macs(args, before, after) -> int:
    return before[0] * after[0] * prod(after[1:])


LINEAR = OpSpec(
    name="linear",
    doc="An affine map on the channel axis (a 1×1 convolution on signals, images and "
    "volumes); channel counts are inferred.",
    rule="[C, *S] -> [out, *S]",
    call="{layer}({x})",
    args=(OUT_ARG, ArgSpec("bias", (BOOL,), True, doc="learn an additive bias"), SPECTRAL_NORM_ARG),
    ranks=(1, 4),
    changes_channels=True,
    shape=_linear_shape,
    layer=_linear_layer,
    params=_linear_params,
    macs=_linear_macs,
)

# --- passing through and combining ----------------------------------------------------------


def _scale_call(site: Site, x: str, layer, before: Shape, after: Shape) -> str:
    x = x if is_atom(x) else f"({x})"
    return f"{x} * {py_literal(site.args['factor'])}"


PASSING = (
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
        args=(ArgSpec("factor", (FLOAT,), REQUIRED, finite, "the constant"),),
    ),
)

# --- activations ----------------------------------------------------------------------------


def _activation(name: str, call: str | CallFn, doc: str, *args: ArgSpec) -> OpSpec:
    return OpSpec(name=name, doc=doc, rule="[C, *S] -> [C, *S]", call=call, args=args)


def _gelu_call(site: Site, x: str, layer, before: Shape, after: Shape) -> str:
    approximate = site.args.get("approximate", "none")
    if approximate == "none":  # torch's default: existing code stays as it was
        return f"F.gelu({x})"
    return f"F.gelu({x}, approximate={py_literal(approximate)})"


ACTIVATIONS = (
    _activation("relu", "torch.relu({x})", "max(x, 0)"),
    _activation("relu6", "F.relu6({x})", "min(max(x, 0), 6)"),
    _activation(
        "gelu",
        _gelu_call,
        "Gaussian error linear unit",
        ArgSpec(
            "approximate",
            (STR,),
            "none",
            one_of("none", "tanh"),
            'the exact form ("none") or the tanh approximation ("tanh")',
        ),
    ),
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
        ArgSpec("alpha", (FLOAT,), 1.0, positive, "scale of the negative part"),
    ),
    _activation(
        "leaky_relu",
        "F.leaky_relu({x}, negative_slope={slope})",
        "max(x, 0) + slope · min(x, 0)",
        ArgSpec("slope", (FLOAT,), 0.01, finite, "slope of the negative part"),
    ),
    _activation("softmax", "torch.softmax({x}, dim={dim})", "softmax over the channel axis"),
    _activation(
        "log_softmax", "torch.log_softmax({x}, dim={dim})", "log of softmax over the channel axis"
    ),
)

# --- dropout --------------------------------------------------------------------------------


def _dropout_module(site: Site, before: Shape, after: Shape) -> str:
    return f"nn.Dropout(p={py_literal(site.args['p'])})"


def _channel_dropout_module(site: Site, before: Shape, after: Shape) -> str:
    return f"nn.Dropout{len(before) - 1}d(p={py_literal(site.args['p'])})"


DROPOUTS = (
    OpSpec(
        name="dropout",
        doc="Zeroes elements with probability p while training (scaling the rest); identity "
        "in eval mode. An nn.Dropout of its own (edge_dropout), so no parameter name moves.",
        rule="[C, *S] -> [C, *S]",
        call="{layer}({x})",
        args=(ArgSpec("p", (FLOAT,), 0.5, probability, "probability of zeroing an element"),),
        module=_dropout_module,
    ),
    OpSpec(
        name="channel_dropout",
        doc="Zeroes whole channels with probability p while training; an nn.Dropout1d/2d/3d "
        "of its own (edge_channel_dropout).",
        rule="[C, *S] -> [C, *S]",
        call="{layer}({x})",
        args=(ArgSpec("p", (FLOAT,), 0.5, probability, "probability of zeroing a channel"),),
        module=_channel_dropout_module,
        ranks=SPATIAL,
    ),
)

# --- reshaping ------------------------------------------------------------------------------


def _flatten_shape(args, before, target):
    return (prod(before),)


def _reshape_shape(args, before, target):
    shape = args["shape"]
    shape = shape if isinstance(shape, tuple) else (shape,)
    if prod(shape) != prod(before):
        raise OpError(
            f"reshape to {format_shape(shape)} needs {prod(shape)} elements, "
            f"but {format_shape(before)} has {prod(before)}"
        )
    return tuple(shape)


def _reshape_call(site: Site, x: str, layer, before: Shape, after: Shape) -> str:
    x = x if is_atom(x) else f"({x})"
    flat = x if len(before) == 1 else f"{x}.flatten(1)"
    return f"{flat}.unflatten(1, {py_literal(after)})"


RESHAPING = (
    OpSpec(
        name="flatten",
        doc="All axes into one channel axis, channels outermost (x.flatten(1)).",
        rule="[C, *S] -> [C·prod(S)]",
        call="{x}.flatten(1)",
        ranks=SPATIAL,
        shape=_flatten_shape,
    ),
    OpSpec(
        name="reshape",
        doc="The same elements in a new shape (channels outermost), e.g. a vector into an image.",
        rule="[*S] -> shape, same number of elements",
        call=_reshape_call,
        args=(ArgSpec("shape", (INTS,), REQUIRED, each(positive), "the new shape"),),
        shape=_reshape_shape,
    ),
)
