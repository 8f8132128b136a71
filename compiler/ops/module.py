"""The ``module`` op: the user's own nn.Module class, constructed with the arguments given."""

from __future__ import annotations

import json
import re

from ..ir import Shape, Value
from .spec import (
    INTS,
    PY_KEYWORDS,
    REQUIRED,
    STR,
    ArgSpec,
    OpSpec,
    Site,
    each,
    positive,
    py_literal,
)

_MODULE_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")


MAX_PATH_PARTS = 32  # Python imports each package of a dotted path, one inside another


def _module_path(value: Value) -> str | None:
    parts = value.split(".")
    if len(parts) > MAX_PATH_PARTS:
        return f"must have at most {MAX_PATH_PARTS} dotted parts, got {len(parts)}"
    if _MODULE_PATH.fullmatch(value) and not any(part in PY_KEYWORDS for part in parts):
        return None
    return (
        f'must be a dotted path to a class, such as "mypackage.blocks.MyBlock", '
        f"got {json.dumps(value)}"
    )


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


MODULE = OpSpec(
    name="module",
    doc='Your own nn.Module: module("package.module.Class", args..., shape=[...]) '
    "constructs Class(args...); its output shape is shape= or the edge's outputs, and "
    "is checked on every call.",
    rule="[*S] -> shape (or the edge's outputs)",
    call=_module_call,
    args=(
        ArgSpec("path", (STR,), REQUIRED, _module_path, "dotted path of the class"),
        ArgSpec("shape", (INTS,), None, each(positive), "output shape, if not the edge's"),
    ),
    changes_channels=True,
    extra_args=True,
    shape=_module_shape,
    layer=_module_layer,
)
