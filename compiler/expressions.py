"""Expressions of .mach sources: values, sizes, shapes and ranges, and their errors.

Everything here evaluates syntax (:mod:`syntax`) against the names visible at a
place (parameters and loop variables); a problem is a :class:`Problem` with its
span, which the builder turns into a diagnostic.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from . import ir
from . import syntax as s
from .diagnostics import Code, Span

MAX_ITERATIONS = 100_000  # a loop or array longer than this is surely a mistake
MAX_RANK = 4  # channels and up to three spatial axes: a volume [C, D, H, W]
MAX_SIZE = 2**24  # the largest size of one axis (and the most ids of an ids space)
MAX_ELEMENTS = 2**31 - 1  # the most numbers one sample of a space holds
MAX_EXPANSION = 50_000  # loop iterations of one machine, all loops together (a module of 50,000
# edges takes about 1.2 GB and 20 s to import: beyond that generated code would not load)
MAX_PORTS = 1_000_000  # spaces named by one machine's edges, ranges counted out


class Problem(Exception):
    """An error found while evaluating; carries its place."""

    silent = False

    def __init__(self, code: Code, message: str, span: Span, hint: str | None = None):
        super().__init__(message)
        self.code, self.message, self.span, self.hint = code, message, span, hint


class AlreadyReported(Problem):
    """A consequence of an error reported elsewhere (a space whose declaration failed)."""

    silent = True


class TooLarge(Exception):
    """A limit on a machine's size was passed: building it stops with this problem."""

    def __init__(self, problem: Problem):
        super().__init__(problem.message)
        self.problem = problem


@dataclass
class Scope:
    """The names visible while expanding: parameters and loop variables."""

    env: dict[str, ir.Value]
    loops: tuple[str, ...] = ()  # loop variables, outermost first

    def context(self) -> str:
        if not self.loops:
            return ""
        return " (with " + ", ".join(f"{v} = {self.env[v]}" for v in self.loops) + ")"


def did_you_mean(name: str, candidates) -> str | None:
    close = difflib.get_close_matches(name, sorted(set(candidates)), n=1)
    return f"did you mean {close[0]!r}?" if close else None


def evaluate(expr: s.Expr, env: Mapping[str, ir.Value]) -> ir.Value:
    """The value of ``expr``; raises :class:`Problem` on an unknown name or a bad operation."""
    match expr:
        case s.Literal(value=value):
            if isinstance(value, float) and not math.isfinite(value):
                raise Problem(Code.EXPRESSION, "this number is too large", expr.span)
            return value
        case s.Var(name=name):
            if name not in env:
                raise Problem(
                    Code.UNKNOWN_NAME,
                    f"unknown name {name!r} (not a parameter or loop variable here)",
                    expr.span,
                    hint=did_you_mean(name, env),
                )
            return env[name]
        case s.ListExpr(items=items):
            values = []
            for item in items:
                value = evaluate(item, env)
                if isinstance(value, tuple):
                    raise Problem(Code.EXPRESSION, "lists cannot be nested", item.span)
                values.append(value)
            return tuple(values)
        case s.Neg(operand=operand):
            value = evaluate(operand, env)
            need_number(value, "-", operand.span)
            return -value
        case s.BinOp(op=op, left=left, right=right):
            a, b = evaluate(left, env), evaluate(right, env)
            need_number(a, op, left.span)
            need_number(b, op, right.span)
            if op in ("//", "/") and b == 0:
                raise Problem(Code.EXPRESSION, "division by zero", expr.span)
            if op == "//":
                if not (isinstance(a, int) and isinstance(b, int)):
                    raise Problem(
                        Code.EXPRESSION,
                        f"'//' needs integers, got {ir.format_value(a)} and {ir.format_value(b)}",
                        expr.span,
                    )
                return a // b
            result = {"+": a + b, "-": a - b, "*": a * b}.get(op) if op != "/" else a / b
            if isinstance(result, float) and not math.isfinite(result):
                raise Problem(Code.EXPRESSION, "the result is too large", expr.span)
            return result
    raise AssertionError(f"unknown expression {expr!r}")  # pragma: no cover


def need_number(value: ir.Value, op: str, span: Span) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Problem(Code.EXPRESSION, f"{op!r} needs numbers, got {ir.format_value(value)}", span)


def integer(expr: s.Expr, env: Mapping[str, ir.Value], what: str) -> int:
    value = evaluate(expr, env)
    if isinstance(value, bool) or not isinstance(value, int):
        raise Problem(
            Code.EXPRESSION, f"{what} must be an integer, got {ir.format_value(value)}", expr.span
        )
    return value


def shape_of(expr: s.Expr, env: Mapping[str, ir.Value]) -> ir.Shape:
    """A space's shape: a size (``16``) or a list of sizes (``[3, 32, 32]``), all positive."""
    items = expr.items if isinstance(expr, s.ListExpr) else (expr,)
    if not items:
        raise Problem(Code.SHAPE, "a shape needs at least the channel axis", expr.span)
    if len(items) > MAX_RANK:
        raise Problem(
            Code.SHAPE,
            f"a shape has at most {MAX_RANK} axes (channels and three spatial axes), "
            f"got {len(items)}",
            expr.span,
        )
    shape = []
    for item in items:
        value = evaluate(item, env)
        if isinstance(value, bool) or not isinstance(value, int):
            what = "a size" if len(items) == 1 else "each size of a shape"
            message = f"{what} must be an integer, got {ir.format_value(value)}"
            raise Problem(Code.EXPRESSION, message, item.span)
        if value <= 0:
            raise Problem(Code.SHAPE, f"a size must be positive, got {value}", item.span)
        if value > MAX_SIZE:
            raise Problem(Code.SHAPE, f"a size is at most {MAX_SIZE:,}, got {value:,}", item.span)
        shape.append(value)
    if math.prod(shape) > MAX_ELEMENTS:
        raise Problem(
            Code.SHAPE,
            f"a space holds at most {MAX_ELEMENTS:,} numbers per sample, got {math.prod(shape):,}",
            expr.span,
        )
    return tuple(shape)


def range_of(rng: s.Range, env: Mapping[str, ir.Value]) -> range:
    lo = integer(rng.lo, env, "a range bound")
    hi = integer(rng.hi, env, "a range bound")
    if hi - lo + 1 > MAX_ITERATIONS:
        raise Problem(
            Code.EXPRESSION, f"range {lo}..{hi} has more than {MAX_ITERATIONS} elements", rng.span
        )
    return range(lo, hi + 1)


_INT_TEXT = re.compile(r"[+-]?[0-9]{1,18}")  # ASCII digits only; within 64 bits
_FLOAT_TEXT = re.compile(r"[+-]?([0-9]{1,30}(\.[0-9]{0,30})?|\.[0-9]{1,30})([eE][+-]?[0-9]{1,3})?")


def parse_param_text(text: str, type_: type) -> ir.Value | None:
    """A ``--set`` value as a parameter of ``type_``, or None if it is not one.

    Numbers are written as in .mach files: ASCII digits, no ``_`` separators, at most
    18 digits for an integer.
    """
    text = text.strip()
    if type_ is bool:
        return {"true": True, "false": False}.get(text.lower())
    pattern = _INT_TEXT if type_ is int else _FLOAT_TEXT
    if not pattern.fullmatch(text):
        return None
    value = int(text) if type_ is int else float(text)
    return value if math.isfinite(value) else None


def names_in(expr: s.Expr) -> set[str]:
    """The parameter and loop-variable names an expression uses."""
    match expr:
        case s.Var(name=name):
            return {name}
        case s.BinOp(left=left, right=right):
            return names_in(left) | names_in(right)
        case s.Neg(operand=operand):
            return names_in(operand)
    return set()


def as_param(value: object, type_: type) -> ir.Value | None:
    if value is None or isinstance(value, bool) != (type_ is bool):
        return None
    if type_ is int and not isinstance(value, int) and hasattr(value, "__index__"):
        value = value.__index__()  # numpy integers and the like
    if type_ is float and isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    return value if isinstance(value, type_) else None
