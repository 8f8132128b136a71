"""Expressions of .mach sources: values, sizes, shapes and ranges, and their errors.

Everything here evaluates syntax (:mod:`syntax`) against the names visible at a
place (parameters and loop variables); a problem is a :class:`Problem` with its
span, which the builder turns into a diagnostic.
"""

from __future__ import annotations

import difflib
import math
import operator
import re
from collections.abc import Mapping
from dataclasses import dataclass

from . import ir
from . import syntax as s
from .diagnostics import Code, Span
from .sizes import Size, SymbolicSizeError

MAX_ITERATIONS = 100_000  # a loop or array longer than this is surely a mistake
MAX_RANK = 4  # channels and up to three spatial axes: a volume [C, D, H, W]
MAX_SIZE = 2**24  # the largest size of one axis (and the most ids of an ids space)
MAX_ELEMENTS = 2**31 - 1  # the most numbers one sample of a space holds
MAX_EXPANSION = 100_000  # loop iterations of one machine, all loops together: a 100,000-edge
# chain checks and compiles in under 10 s; its loop kept as a loop imports in a second, but
# written out edge by edge (a loop whose passes differ) its module needs 4.2 GB and 12 s to
# import (docs/benchmarks.md, "Compile time at scale")
MAX_EDGES = 120_000  # edges of one machine, loops expanded: a 100,000-edge chain checks and
# compiles in under 10 s; 200,000 edges in a loop of 100,000 passes took 23 s
MAX_PORTS = 2_500_000  # spaces named by one machine's edges, ranges counted out (a dense
# machine of 2,000 blocks names 2,003,002)
MAX_DIGITS = 100  # digits of an integer, written in a source or computed (Python prints at
# most 4300, and 2 ** 10 ** 9 would take minutes and gigabytes)
_TOO_LARGE = 10**MAX_DIGITS
FUNCTIONS = ("min", "max")  # the functions an expression may call
# Words that expressions give a meaning to: never the name of a parameter or loop variable.
WORDS = frozenset({"true", "false", "and", "or", "not", "if", "else"})


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
    # the innermost loop's pass: (which pass of a loop statement, its variable, its value)
    run: tuple[int, str, int] | None = None

    def context(self) -> str:
        if not self.loops:
            return ""
        return " (with " + ", ".join(f"{v} = {self.env[v]}" for v in self.loops) + ")"


def did_you_mean(name: str, candidates) -> str | None:
    close = difflib.get_close_matches(name, sorted(set(candidates)), n=1)
    return f"did you mean {close[0]!r}?" if close else None


def evaluate(expr: s.Expr, env: Mapping[str, ir.Value]) -> ir.Value:
    """The value of ``expr``; raises :class:`Problem` on an unknown name or a bad operation.

    Recursive: the parser refuses expressions nested more than ``MAX_NESTING`` deep.
    """
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
                # NOTE: one level, for per-side op arguments ([[4, 0], 1]); shapes, parameters
                # and the other op arguments refuse lists of lists where they check kinds
                if isinstance(value, tuple) and any(isinstance(v, tuple) for v in value):
                    raise Problem(
                        Code.EXPRESSION,
                        "lists nest one deep at most (a list of pairs: [[4, 0], [1, 1]])",
                        item.span,
                    )
                values.append(value)
            return tuple(values)
        case s.Neg(operand=operand):
            value = evaluate(operand, env)
            need_number(value, "-", operand.span)
            return -value
        case s.Not(operand=operand):
            return not _boolean(evaluate(operand, env), "not", operand.span)
        case s.BinOp(op="and" | "or" as op, left=left, right=right):
            first = _boolean(evaluate(left, env), op, left.span)
            if first == (op == "or"):  # decided by the left side, as in Python
                return first
            return _boolean(evaluate(right, env), op, right.span)
        case s.BinOp(op=op, left=left, right=right):
            return _arithmetic(op, evaluate(left, env), evaluate(right, env), expr)
        case s.Compare(operands=operands, ops=ops):
            a = evaluate(operands[0], env)
            for op, left, right in zip(ops, operands, operands[1:], strict=False):
                b = evaluate(right, env)
                if not _compare(op, a, b, left.span, right.span):
                    return False  # the rest of a chain is not evaluated, as in Python
                a = b
            return True
        case s.Call():
            return _call(expr, env)
    raise AssertionError(f"unknown expression {expr!r}")  # pragma: no cover


def condition(expr: s.Expr, env: Mapping[str, ir.Value]) -> bool:
    """The value of an ``if``'s condition: true or false."""
    value = evaluate(expr, env)
    if not isinstance(value, bool):
        raise Problem(
            Code.EXPRESSION,
            # NOTE: the type, not the value, so that a loop reports it once
            f"a condition must be true or false, not {_a_kind(value)}",
            expr.span,
            hint="compare it (n > 1, stride != 1) or combine comparisons with and, or, not",
        )
    return value


_ARITHMETIC = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
    "//": operator.floordiv,
    "%": operator.mod,
    "**": operator.pow,
}
_ORDER = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


def _arithmetic(op: str, a: ir.Value, b: ir.Value, expr: s.BinOp) -> ir.Value:
    need_number(a, op, expr.left.span)
    need_number(b, op, expr.right.span)
    if isinstance(a, Size) or isinstance(b, Size):
        return _size_arithmetic(op, a, b, expr)
    if op in ("//", "/", "%") and b == 0:
        raise Problem(
            Code.EXPRESSION, "modulo by zero" if op == "%" else "division by zero", expr.span
        )
    if op == "//" and not (isinstance(a, int) and isinstance(b, int)):
        raise Problem(
            Code.EXPRESSION,
            f"'//' needs integers, got {ir.format_value(a)} and {ir.format_value(b)}",
            expr.span,
        )
    if op == "**":
        _check_power(a, b, expr.span)
    try:
        result = _ARITHMETIC[op](a, b)
    except OverflowError:  # a float out of range, or an integer too large for a float
        raise Problem(Code.EXPRESSION, "the result is too large", expr.span) from None
    if isinstance(result, float) and not math.isfinite(result):
        raise Problem(Code.EXPRESSION, "the result is too large", expr.span)
    if isinstance(result, int) and abs(result) >= _TOO_LARGE:
        raise Problem(Code.EXPRESSION, _TOO_MANY_DIGITS, expr.span)
    return result


def _size_arithmetic(op: str, a, b, expr: s.BinOp) -> Size | int:
    """``a op b`` where one side is a size known only at call time (``H + 2``, ``H // 2``)."""
    try:
        if isinstance(a, float) or isinstance(b, float) or op in ("/", "**"):
            raise SymbolicSizeError(f"{op!r} of a size known only at call time")
        return _ARITHMETIC[op](a, b)
    except (SymbolicSizeError, ZeroDivisionError) as exc:
        raise Problem(
            Code.EXPRESSION,
            f"{exc}" if isinstance(exc, ZeroDivisionError) else f"{exc.args[0]}",
            expr.span,
            hint="a size symbol (a size of an input, bound at call time) can be added to, "
            "subtracted from and multiplied by integers, and divided by one with // or %",
        ) from None


_TOO_MANY_DIGITS = f"the result is too large (an integer has at most {MAX_DIGITS} digits)"


def _check_power(a: int | float, b: int | float, span: Span) -> None:
    """Refuse what Python's ``a ** b`` would fail on, make complex, or take too long for."""
    if a == 0 and b < 0:
        raise Problem(Code.EXPRESSION, "zero to a negative power (division by zero)", span)
    if a < 0 and isinstance(b, float) and not b.is_integer():
        raise Problem(
            Code.EXPRESSION,
            "a negative number to a fractional power has no real value "
            f"({ir.format_value(a)} to the power {ir.format_value(b)})",
            span,
        )
    # NOTE: estimated before computing, so that 10 ** 10 ** 9 is refused at once
    # (|a| >= 2 gives at least b / 4 digits, and a huge b would not convert to a float).
    if (
        isinstance(a, int)
        and isinstance(b, int)
        and abs(a) > 1
        and (b > 4 * MAX_DIGITS or b * math.log10(abs(a)) > MAX_DIGITS + 1)
    ):
        raise Problem(Code.EXPRESSION, _TOO_MANY_DIGITS, span)


def _a_kind(value: ir.Value) -> str:
    if isinstance(value, int):
        return "an integer"
    return {float: "a number", str: "a string"}.get(type(value), "a list")


def _kind(value: ir.Value) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return "string" if isinstance(value, str) else "list"


def _no_size(value: ir.Value, what: str, span: Span) -> None:
    if isinstance(value, Size):
        raise Problem(
            Code.EXPRESSION,
            f"{what!r} needs numbers known when the machine is compiled; {value} is a size "
            "known only at call time",
            span,
        )


def _compare(op: str, a: ir.Value, b: ir.Value, left: Span, right: Span) -> bool:
    _no_size(a, op, left)
    _no_size(b, op, right)
    if op in _ORDER:
        need_number(a, op, left)
        need_number(b, op, right)
        return _ORDER[op](a, b)
    if _kind(a) != _kind(b) or _kind(a) == "list":
        raise Problem(
            Code.EXPRESSION,
            f"{op!r} compares two numbers, two booleans or two strings, "
            f"got {ir.format_value(a)} and {ir.format_value(b)}",
            _join(left, right),
        )
    return (a == b) == (op == "==")


def _join(first: Span, last: Span) -> Span:
    return first.model_copy(update={"end_line": last.end_line, "end_column": last.end_column})


def _call(call: s.Call, env: Mapping[str, ir.Value]) -> ir.Value:
    if call.name not in FUNCTIONS:
        hint = did_you_mean(call.name, FUNCTIONS) or "the functions are min and max"
        if call.name == "ids":
            hint = "ids(n) is a kind of space: the whole shape of an input, input tok : ids(n)"
        raise Problem(Code.UNKNOWN_NAME, f"unknown function {call.name!r}", call.name_span, hint)
    if len(call.args) < 2:
        raise Problem(
            Code.EXPRESSION,
            f"{call.name} takes two or more numbers, got {len(call.args)}",
            call.span,
        )
    values = []
    for arg in call.args:
        values.append(evaluate(arg, env))
        need_number(values[-1], call.name, arg.span)
        _no_size(values[-1], call.name, arg.span)
    return min(values) if call.name == "min" else max(values)


def need_number(value: ir.Value, op: str, span: Span) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float | Size):
        raise Problem(Code.EXPRESSION, f"{op!r} needs numbers, got {ir.format_value(value)}", span)


def _boolean(value: ir.Value, op: str, span: Span) -> bool:
    if not isinstance(value, bool):
        raise Problem(
            Code.EXPRESSION, f"{op!r} needs true or false, got {ir.format_value(value)}", span
        )
    return value


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
    sizes = _SizeScope(env)
    for axis, item in enumerate(items):
        # NOTE: a name that is no parameter is a size symbol on a spatial axis ([3, H, W]),
        # bound when the machine is called; channels are always known
        value = evaluate(item, sizes if axis else env)
        if isinstance(value, Size):
            shape.append(value)
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            what = "a size" if len(items) == 1 else "each size of a shape"
            message = f"{what} must be an integer, got {ir.format_value(value)}"
            raise Problem(Code.EXPRESSION, message, item.span)
        if value <= 0:
            raise Problem(Code.SHAPE, f"a size must be positive, got {value}", item.span)
        if value > MAX_SIZE:
            raise Problem(Code.SHAPE, f"a size is at most {MAX_SIZE:,}, got {value:,}", item.span)
        shape.append(value)
    known = math.prod(n for n in shape if isinstance(n, int))
    if known > MAX_ELEMENTS:
        raise Problem(
            Code.SHAPE,
            f"a space holds at most {MAX_ELEMENTS:,} numbers per sample, got {known:,}",
            expr.span,
        )
    return tuple(shape)


class _SizeScope(Mapping):
    """The names of a place, and every other name as a size symbol."""

    def __init__(self, env: Mapping[str, ir.Value]):
        self.env = env

    def __getitem__(self, name: str) -> ir.Value | Size:
        return self.env[name] if name in self.env else Size.symbol(name)

    def __contains__(self, name: object) -> bool:
        return True

    def __iter__(self):
        return iter(self.env)

    def __len__(self) -> int:
        return len(self.env)


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
    names: set[str] = set()
    stack = [expr]
    while stack:
        match stack.pop():
            case s.Var(name=name):
                names.add(name)
            case s.BinOp(left=left, right=right):
                stack += [left, right]
            case s.Neg(operand=operand) | s.Not(operand=operand):
                stack.append(operand)
            case s.Compare(operands=items) | s.Call(args=items) | s.ListExpr(items=items):
                stack.extend(items)
    return names


def as_param(value: object, type_: type) -> ir.Value | None:
    if value is None or isinstance(value, bool) != (type_ is bool):
        return None
    if type_ is int and not isinstance(value, int) and hasattr(value, "__index__"):
        value = value.__index__()  # numpy integers and the like
    if type_ is float and isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    return value if isinstance(value, type_) else None
