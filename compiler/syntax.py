"""The syntax tree of a .mach file, as written: parameters unbound, loops unexpanded.

Every node carries the :class:`Span` it was parsed from, so that every later
diagnostic can point at the text that caused it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .diagnostics import Span

# --- expressions ---------------------------------------------------------------


@dataclass(frozen=True)
class Literal:
    """A number, boolean or string written in the source."""

    value: int | float | bool | str
    span: Span


@dataclass(frozen=True)
class Var:
    """A parameter or loop variable used in an expression."""

    name: str
    span: Span


@dataclass(frozen=True)
class BinOp:
    """A binary operation: arithmetic (``+ - * / // % **``) or logic (``and``, ``or``)."""

    op: str
    left: Expr
    right: Expr
    span: Span


@dataclass(frozen=True)
class Neg:
    """Unary minus."""

    operand: Expr
    span: Span


@dataclass(frozen=True)
class Not:
    """``not a``."""

    operand: Expr
    span: Span


@dataclass(frozen=True)
class Compare:
    """A comparison or a chain of them, as in Python: ``a < b <= c`` is ``a < b and b <= c``.

    ``ops[i]`` compares ``operands[i]`` with ``operands[i + 1]``.
    """

    operands: tuple[Expr, ...]
    ops: tuple[str, ...]
    span: Span


@dataclass(frozen=True)
class Call:
    """A call of a function of expressions: ``min(a, b)``, ``max(a, b, c)``."""

    name: str
    args: tuple[Expr, ...]
    span: Span
    name_span: Span


@dataclass(frozen=True)
class ListExpr:
    """A list ``[a, b, c]``: a shape, or a per-axis op argument such as a kernel size."""

    items: tuple[Expr, ...]
    span: Span


Expr = Literal | Var | BinOp | Neg | Not | Compare | Call | ListExpr


@dataclass(frozen=True)
class Range:
    """An inclusive integer range ``lo..hi``; empty when ``hi < lo``."""

    lo: Expr
    hi: Expr
    span: Span


@dataclass(frozen=True)
class AllSteps:
    """The window ``..`` of a machine over time: every step of the sequence (``k[..]``)."""

    span: Span


@dataclass(frozen=True)
class SpaceKind:
    """A kind of space with its size, as a space's shape: ``ids(vocab)``."""

    kind: str
    size: Expr
    span: Span
    kind_span: Span


# --- declarations --------------------------------------------------------------


@dataclass(frozen=True)
class SpaceRef:
    """A space named in an edge: ``x``, ``h[i]``, ``h[1..i-1]``, ``h[t-1]``, ``h[1..n][t-1]``,
    ``k[0..t]``, ``k[t-w..t]``, ``k[..]``.

    ``index`` is the first bracket and ``time`` the second; which of them is a
    time index (``t - k``, ``t + k``) or a window of steps is decided when names
    are resolved.
    """

    name: str
    index: Expr | Range | AllSteps | None
    time: Expr | Range | AllSteps | None
    span: Span


@dataclass(frozen=True)
class Arg:
    """An op argument, positional (``name`` is None) or keyword."""

    name: str | None
    value: Expr
    span: Span


@dataclass(frozen=True)
class OpCall:
    """One stage of an edge's pipeline: ``linear(bias=false)``."""

    name: str
    args: tuple[Arg, ...]
    span: Span
    name_span: Span


@dataclass(frozen=True)
class SpaceDecl:
    """``input x : 16``, ``space h[1..n] : [w, 8, 8]``, ``output y : 10``, ``space h``."""

    role: str
    name: str
    array: Range | None
    # a size, a list of sizes (channels first), ids(n), or None: inferred from the writers
    shape: Expr | SpaceKind | None
    span: Span
    name_span: Span


@dataclass(frozen=True)
class EdgeDecl:
    """``name : A × B -> C = op | op``."""

    name: str
    index: Expr | None
    inputs: tuple[SpaceRef, ...]
    outputs: tuple[SpaceRef, ...]
    ops: tuple[OpCall, ...]
    span: Span
    name_span: Span


@dataclass(frozen=True)
class ForLoop:
    """``for i in a..b { ... }``."""

    var: str
    range: Range
    body: tuple[Item, ...]
    span: Span
    var_span: Span


@dataclass(frozen=True)
class Branch:
    """One branch of an ``if``: its condition (None for the final ``else``) and its items.

    ``span`` runs from the opening brace to the closing one.
    """

    cond: Expr | None
    body: tuple[Item, ...]
    span: Span


@dataclass(frozen=True)
class IfBlock:
    """``if c { ... } else if d { ... } else { ... }``: the items of the first branch whose
    condition is true, decided when the machine is built (as loops are expanded)."""

    branches: tuple[Branch, ...]
    span: Span


@dataclass(frozen=True)
class SolveDecl:
    """``solve z with anderson(tol=1e-5)``: the cycle through ``z`` solved to its fixed point."""

    space: str
    index: Expr | None
    solver: OpCall
    span: Span
    space_span: Span


Item = SpaceDecl | EdgeDecl | ForLoop | IfBlock | SolveDecl


@dataclass(frozen=True)
class ParamDecl:
    """``name: int = 3``; ``default`` is None for a parameter that must be set."""

    name: str
    type: str
    default: Expr | None
    span: Span
    type_span: Span


@dataclass(frozen=True)
class MachineDecl:
    """``machine Name(params) { items }``."""

    name: str
    params: tuple[ParamDecl, ...]
    time: str | None  # the time index of a machine ``over t``
    body: tuple[Item, ...]
    span: Span
    name_span: Span


@dataclass(frozen=True)
class ImportDecl:
    """``import "path.mach"`` (``path`` set) or ``import std.blocks`` (``module`` set)."""

    path: str | None
    module: str | None
    span: Span


@dataclass(frozen=True)
class SourceFile:
    """A whole .mach file."""

    path: str
    machines: tuple[MachineDecl, ...]
    imports: tuple[ImportDecl, ...] = ()
