"""How the IR prints: as ``.mach`` source (ops, ports, edges, pipelines), in the
comments that trace generated code to its source, and as Python literals.

Every stage that shows the IR to people uses these (``lower`` and its helpers,
``graph``, ``info``, the CLI), so the same edge reads the same everywhere.
"""

from __future__ import annotations

import functools
import json
import os

from . import ir
from .ir import machine_call
from .ops import OPS, REQUIRED


def source_label(path: str) -> str:
    """How comments name a source file: its base name (``std/blocks.mach`` for the library)."""
    if path.startswith("<std>/"):
        return "std/" + path[len("<std>/") :]
    return os.path.basename(path)


@functools.lru_cache(maxsize=64)
def file_label(path: str) -> str:
    """A file's name as comments show it (made once per file: every statement has one)."""
    return safe(source_label(path))


def py_str(text: str) -> str:
    """A Python string literal for ``text``: JSON's escapes are all valid Python escapes."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return f'"{text}"'  # what json.dumps gives for such text, without its overhead
    return json.dumps(text)


def dict_lines(prefix: str, items: list[str], indent: int) -> list[str]:
    """A dict display after ``prefix``: one line if it fits in 100 columns, else one item a line."""
    one_line = prefix + "{" + ", ".join(items) + "}"
    if indent + len(one_line) <= 100:
        return [one_line]
    return [prefix + "{", *(f"    {item}," for item in items), "}"]


def py_tuple(items) -> str:
    items = list(items)
    return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"


def safe(text: str) -> str:
    """Text for a comment or docstring: printable, one line, no quote that ends a docstring."""
    if text.isprintable() and "\\" not in text and '"' not in text:
        return text  # the usual case, checked at C speed
    return "".join(ch if ch.isprintable() and ch not in '\\"' else "?" for ch in text)


def op_text(op: ir.Op) -> str:
    """The op as .mach source: leading required arguments by position, others by name."""
    spec = OPS[op.kind]
    leading = 0
    while (
        leading < len(spec.args)
        and spec.args[leading].default is REQUIRED
        and not spec.args[leading].named
    ):
        leading += 1
    shown = [ir.format_value(op.args[a.name]) for a in spec.args[:leading]]
    shown += [ir.format_value(value) for value in op.extra]
    shown += [
        f"{a.name}={ir.format_value(op.args[a.name])}"
        for a in spec.args[leading:]
        if a.name in op.args and op.args[a.name] != a.default
    ]
    shown += [f"{name}={ir.format_value(value)}" for name, value in op.extra_kw.items()]
    return f"{op.kind}({', '.join(shown)})" if shown else op.kind


def port_text(port: ir.Port, time: str | None = "t") -> str:
    """A port as .mach source: ``h[2]``, ``h[2][t-1]``, ``h[t+1]``, ``k[0..t]``."""
    return port.text(time)


def edge_text(
    edge: ir.Edge,
    time: str | None = "t",
    machines: dict[str, ir.Machine] | None = None,
    pipeline: str | None = None,
) -> str:
    """The edge as .mach source, with arrays and loops expanded (``pipeline``: its
    :func:`pipeline_text`, if known)."""
    ins = " × ".join(port_text(p, time) for p in edge.inputs)
    outs = " × ".join(p.space for p in edge.outputs)
    return f"{edge.name} : {ins} -> {outs} = {pipeline or pipeline_text(edge, machines)}"


def pipeline_text(edge: ir.Edge, machines: dict | None = None) -> str:
    """What an edge applies, as .mach source: ``linear | relu``, ``ResBlock(w=32)``."""
    if edge.shares is not None:
        return f"shared({edge.shares})"
    if edge.machine is not None:
        if not machines:
            return edge.machine
        used = machines[edge.machine]
        return machine_call(used.name, used.params)
    return " | ".join(op_text(op) for op in edge.ops)


def element_key(family: str, index: str) -> str:
    """The name of an array element as a Python expression: ``f"h[{i - 1}]"``."""
    prefix = py_str(family)[1:-1].replace("{", "{{").replace("}", "}}")
    return f'f"{prefix}[{{{index}}}]"'
