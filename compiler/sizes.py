"""Symbolic sizes: the axes of a shape that are known only when a machine is called.

``input img : [3, H, W]`` declares two *size symbols*, ``H`` and ``W``, bound to the
input's sizes at call time. Every shape the compiler computes from them is a
:class:`Size`: an integer linear form over atoms (a symbol, ``X // d`` for a form
``X`` and a positive integer ``d``, or a product of atoms), kept in a canonical form
so that equal computations compare equal. Arithmetic that comes back to a constant
gives a plain ``int``, so a machine without symbols never sees a :class:`Size`.

Comparing two sizes decides a *relation*. ``a == b`` is

- **always** true when the canonical forms agree, or when ``a - b`` is periodic in
  every symbol (no slope) and zero over a whole period;
- **never** true when ``a - b`` has a slope in some symbol (it then vanishes for a
  few small sizes at most: ``(H - 1) // 2 + 1 == H`` only for ``H = 1``), or is
  periodic and zero nowhere in a period;
- true **sometimes** otherwise (``(H // 2) * 2 == H``: for even ``H``). Inside
  :func:`collect_relations` such a comparison is taken as true and recorded: the
  generated ``forward`` checks it against the sizes it is called with. Elsewhere
  it is false.

Orderings (``<``, ``>=``) are decided at :data:`REFERENCE`, a typical large size:
they are the checks ops make that an input is not too small, and the generated
code checks the smallest sizes that keep every shape non-empty instead
(:func:`minimum`).
"""

from __future__ import annotations

import ast
import contextlib
import contextvars
import itertools
import math
import operator
from collections.abc import Iterable, Iterator, Mapping
from fractions import Fraction

from pydantic_core import core_schema

REFERENCE = 1024  # every symbol's value where an ordering is decided
MAX_PERIOD_POINTS = 65_536  # sizes tried to decide a periodic relation
MAX_MINIMUM = 1 << 16  # the largest smallest size searched for


class SymbolicSizeError(TypeError):
    """An operation that needs a number got a size known only at call time."""


class _Atom:
    """A non-linear building block of a :class:`Size`; compared and hashed by ``key``."""

    __slots__ = ("key",)
    key: str

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Atom) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)


class _Symbol(_Atom):
    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name
        self.key = name

    def value(self, binding: Mapping[str, int]) -> int:
        return binding[self.name]

    def substitute(self, binding: Mapping[str, int | Size]) -> int | Size:
        return binding.get(self.name, Size._of(self))

    def symbols(self) -> Iterator[str]:
        yield self.name

    def slope(self) -> dict[str, Fraction] | None:
        return {self.name: Fraction(1)}

    def period(self, name: str) -> int:
        return 1


class _Div(_Atom):
    """``num // d``: ``num`` a canonical form with no constant factor ``d`` can take out."""

    __slots__ = ("num", "d")

    def __init__(self, num: Size, d: int):
        self.num, self.d = num, d
        simple = len(num.terms) == 1 and num.terms[0][1] == 1 and not num.const
        self.key = (
            f"{num} // {d}"
            if simple and isinstance(num.terms[0][0], _Symbol)
            else (f"({num}) // {d}")
        )

    def value(self, binding: Mapping[str, int]) -> int:
        return self.num.value(binding) // self.d

    def substitute(self, binding: Mapping[str, int | Size]) -> int | Size:
        return self.num.substitute(binding) // self.d

    def symbols(self) -> Iterator[str]:
        return self.num.symbols()

    def slope(self) -> dict[str, Fraction] | None:
        inner = self.num.slope()
        return None if inner is None else {k: v / self.d for k, v in inner.items()}

    def period(self, name: str) -> int:
        return self.d * self.num.period(name)


class _Product(_Atom):
    __slots__ = ("factors",)

    def __init__(self, factors: tuple[_Atom, ...]):
        self.factors = factors
        self.key = " * ".join(_factor_text(f) for f in factors)

    def value(self, binding: Mapping[str, int]) -> int:
        return math.prod(f.value(binding) for f in self.factors)

    def substitute(self, binding: Mapping[str, int | Size]) -> int | Size:
        result: int | Size = 1
        for factor in self.factors:
            result = result * factor.substitute(binding)
        return result

    def symbols(self) -> Iterator[str]:
        for factor in self.factors:
            yield from factor.symbols()

    def slope(self) -> dict[str, Fraction] | None:
        return None  # not linear

    def period(self, name: str) -> int:
        return 1


def _factor_text(atom: _Atom) -> str:
    return f"({atom.key})" if isinstance(atom, _Div) else atom.key


class Size:
    """An integer size written in terms of size symbols: ``sum(c * atom) + const``.

    Immutable and canonical: build one with :meth:`symbol` and Python arithmetic
    (``+``, ``-``, ``*``, ``//``, ``%``); any result without symbols is an ``int``.
    """

    __slots__ = ("terms", "const", "_hash")

    def __init__(self, terms: tuple[tuple[_Atom, int], ...], const: int):
        self.terms, self.const = terms, const
        self._hash = hash((terms, const))

    # --- construction -------------------------------------------------------------

    @staticmethod
    def symbol(name: str) -> Size:
        return Size(((_Symbol(name), 1),), 0)

    @staticmethod
    def _of(atom: _Atom) -> Size:
        return Size(((atom, 1),), 0)

    @staticmethod
    def _make(coefficients: Mapping[_Atom, int], const: int) -> int | Size:
        terms = tuple(sorted(((a, c) for a, c in coefficients.items() if c), key=_term_key))
        return Size(terms, const) if terms else const

    # --- arithmetic ---------------------------------------------------------------

    def __add__(self, other: object) -> int | Size:
        if isinstance(other, bool) or not isinstance(other, int | Size):
            return NotImplemented
        coefficients = dict(self.terms)
        const = self.const
        if isinstance(other, int):
            const += other
        else:
            for atom, c in other.terms:
                coefficients[atom] = coefficients.get(atom, 0) + c
            const += other.const
        return Size._make(coefficients, const)

    __radd__ = __add__

    def __neg__(self) -> Size:
        return Size(tuple((a, -c) for a, c in self.terms), -self.const)

    def __pos__(self) -> Size:
        return self

    def __sub__(self, other: object) -> int | Size:
        if isinstance(other, bool) or not isinstance(other, int | Size):
            return NotImplemented
        return self + (-other)

    def __rsub__(self, other: object) -> int | Size:
        if isinstance(other, bool) or not isinstance(other, int):
            return NotImplemented
        return (-self) + other

    def __mul__(self, other: object) -> int | Size:
        if isinstance(other, bool) or not isinstance(other, int | Size):
            return NotImplemented
        if isinstance(other, int):
            return Size._make({a: c * other for a, c in self.terms}, self.const * other)
        result: int | Size = other * self.const
        for atom, c in self.terms:
            for other_atom, d in other.terms:
                result = result + Size._of(_product(atom, other_atom)) * (c * d)
            result = result + Size._of(atom) * (c * other.const)
        return result

    __rmul__ = __mul__

    def __floordiv__(self, other: object) -> int | Size:
        if isinstance(other, bool) or not isinstance(other, int):
            if isinstance(other, Size):
                raise SymbolicSizeError(f"a division by a size known only at call time ({other})")
            return NotImplemented
        if other == 0:
            raise ZeroDivisionError("integer division by zero")
        if other < 0:
            return (-self) // (-other)
        if other == 1:
            return self
        # take out what divides exactly: (d·Q + R) // d == Q + R // d
        out: dict[_Atom, int] = {}
        rest: dict[_Atom, int] = {}
        for atom, c in self.terms:
            q, r = divmod(c, other)
            if q:
                out[atom] = q
            if r:
                rest[atom] = r
        q, r = divmod(self.const, other)
        quotient = Size._make(out, q)
        if not rest:
            return quotient
        remainder = Size._make(rest, r)
        assert isinstance(remainder, Size)
        # (X // a + c) // b == (X + c·a) // (a·b)
        if len(remainder.terms) == 1 and remainder.terms[0][1] == 1:
            atom = remainder.terms[0][0]
            if isinstance(atom, _Div):
                return quotient + (atom.num + remainder.const * atom.d) // (atom.d * other)
        return quotient + Size._of(_Div(remainder, other))

    def __rfloordiv__(self, other: object) -> int | Size:
        raise SymbolicSizeError(f"a division by a size known only at call time ({self})")

    def __mod__(self, other: object) -> int | Size:
        if isinstance(other, bool) or not isinstance(other, int):
            raise SymbolicSizeError(f"a remainder by a size known only at call time ({other})")
        return self - (self // other) * other

    def __rmod__(self, other: object) -> int | Size:
        raise SymbolicSizeError(f"a remainder by a size known only at call time ({self})")

    def _refuse(self, *_: object) -> None:
        raise SymbolicSizeError(
            f"{self} is a size known only at call time: it can be added, subtracted, "
            "multiplied, and divided by a number with //"
        )

    __truediv__ = __rtruediv__ = __pow__ = __rpow__ = _refuse

    def __index__(self) -> int:
        raise SymbolicSizeError(f"{self} is a size known only at call time, not a number")

    __int__ = __float__ = __index__

    def __bool__(self) -> bool:
        return True  # a size is positive

    # --- comparison ---------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if isinstance(other, bool) or not isinstance(other, int | Size):
            return False
        if isinstance(other, Size) and self._hash == other._hash and self._same(other):
            return True
        kind = relation(self, other)
        if kind == "sometimes":
            found = _RELATIONS.get()
            if found is not None:
                found.append((self, other))
                return True
        return kind == "always"

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return self._hash

    def _same(self, other: Size) -> bool:
        return self.const == other.const and self.terms == other.terms

    def _order(self, other: object) -> int | None:
        if isinstance(other, bool) or not isinstance(other, int | Size):
            return None
        difference = self - other
        if isinstance(difference, int):
            return difference
        return difference.value(dict.fromkeys(difference.symbols(), REFERENCE))

    def __lt__(self, other: object) -> bool:
        d = self._order(other)
        return NotImplemented if d is None else d < 0

    def __le__(self, other: object) -> bool:
        d = self._order(other)
        return NotImplemented if d is None else d <= 0

    def __gt__(self, other: object) -> bool:
        d = self._order(other)
        return NotImplemented if d is None else d > 0

    def __ge__(self, other: object) -> bool:
        d = self._order(other)
        return NotImplemented if d is None else d >= 0

    # --- values -------------------------------------------------------------------

    def value(self, binding: Mapping[str, int]) -> int:
        """The size for these values of its symbols."""
        return self.const + sum(c * atom.value(binding) for atom, c in self.terms)

    def substitute(self, binding: Mapping[str, int | Size]) -> int | Size:
        """This size with some symbols replaced (by numbers or other sizes)."""
        result: int | Size = self.const
        for atom, c in self.terms:
            result = result + atom.substitute(binding) * c
        return result

    def symbols(self) -> Iterator[str]:
        for atom, _ in self.terms:
            yield from atom.symbols()

    def slope(self) -> dict[str, Fraction] | None:
        """How fast the size grows with each symbol (None: not linear, a product)."""
        total: dict[str, Fraction] = {}
        for atom, c in self.terms:
            inner = atom.slope()
            if inner is None:
                return None
            for name, s in inner.items():
                total[name] = total.get(name, Fraction(0)) + c * s
        return total

    def period(self, name: str) -> int:
        """A period in ``name`` of the size less its slope."""
        return math.lcm(1, *(atom.period(name) for atom, _ in self.terms))

    # --- text ---------------------------------------------------------------------

    def __str__(self) -> str:
        parts = []
        for atom, c in self.terms:
            text = atom.key
            if c not in (1, -1):
                text = f"{abs(c)} * {_factor_text(atom)}"
            parts.append(("- " if c < 0 else "+ ") + text)
        if self.const:
            parts.append(("- " if self.const < 0 else "+ ") + str(abs(self.const)))
        text = " ".join(parts)
        return text[2:] if text.startswith("+ ") else "-" + text[2:]

    def __repr__(self) -> str:
        return f"Size({self})"

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)

    @staticmethod
    def parse(text: str) -> int | Size:
        """The size ``str`` wrote (JSON of the IR): integers, symbols, ``+ - * //``."""
        operators = {
            ast.Add: operator.add,
            ast.Sub: operator.sub,
            ast.Mult: operator.mul,
            ast.FloorDiv: operator.floordiv,
        }

        def value(node: ast.AST) -> int | Size:
            match node:
                case ast.Constant(value=int() as n) if not isinstance(n, bool):
                    return n
                case ast.Name(id=name):
                    return Size.symbol(name)
                case ast.UnaryOp(op=ast.USub(), operand=operand):
                    return -value(operand)
                case ast.BinOp(op=op, left=left, right=right) if type(op) in operators:
                    return operators[type(op)](value(left), value(right))
            raise ValueError(f"not a size: {text!r}")

        return value(ast.parse(text, mode="eval").body)

    @classmethod
    def __get_pydantic_core_schema__(cls, source, handler) -> core_schema.CoreSchema:
        from_text = core_schema.chain_schema(
            [
                core_schema.str_schema(),
                core_schema.no_info_plain_validator_function(cls.parse),
            ]
        )
        return core_schema.json_or_python_schema(
            json_schema=from_text,
            python_schema=core_schema.is_instance_schema(cls),
            serialization=core_schema.plain_serializer_function_ser_schema(str),
        )


def _term_key(term: tuple[_Atom, int]) -> tuple[int, str]:
    atom = term[0]
    return (0 if isinstance(atom, _Symbol) else 1 if isinstance(atom, _Div) else 2, atom.key)


def _product(a: _Atom, b: _Atom) -> _Product:
    factors = [*(a.factors if isinstance(a, _Product) else (a,))]
    factors += b.factors if isinstance(b, _Product) else (b,)
    return _Product(tuple(sorted(factors, key=lambda f: _term_key((f, 1)))))


# --- relations ------------------------------------------------------------------------


def relation(a: int | Size, b: int | Size) -> str:
    """Whether ``a == b`` holds ``"always"``, ``"never"`` or ``"sometimes"`` (see above)."""
    difference = a - b
    # NOTE: cached by text (canonical, so unique): keys that are sizes would be compared
    # with Size.__eq__, which asks this function
    key = str(difference)
    if key not in _DECIDED:
        if len(_DECIDED) > 4096:
            _DECIDED.clear()
        _DECIDED[key] = _decide(difference)
    return _DECIDED[key]


_DECIDED: dict[str, str] = {}


def _decide(difference: int | Size) -> str:
    if isinstance(difference, int):
        return "always" if difference == 0 else "never"
    values = _over_a_period(difference)
    if values == "grows":  # with a symbol: zero for a few sizes at most
        return "never"
    if values == "too long":
        return "sometimes"  # too many sizes to try: the call checks it
    zeros = [value == 0 for value in values]
    return "always" if all(zeros) else "sometimes" if any(zeros) else "never"


def truth(size: int | Size, test) -> bool | None:
    """``test`` of every value a size takes, when that is one answer: a number's, or a
    periodic size's over a whole period; None when the answer varies with the sizes (or
    the size grows with a symbol, so only some sizes were tried)."""
    if isinstance(size, int):
        return bool(test(size))
    values = _over_a_period(size)
    if isinstance(values, str):  # it grows with a symbol, or its period is too long
        return None
    answers = {bool(test(value)) for value in values}
    return answers.pop() if len(answers) == 1 else None


def _over_a_period(size: Size) -> Iterator[int] | str:
    """The values of a size without slope over one whole period of every symbol (sizes
    1 to the period; the values repeat beyond it); ``"grows"`` for a size with a slope,
    ``"too long"`` when the periods hold more than :data:`MAX_PERIOD_POINTS` sizes."""
    slope = size.slope()
    if slope is None or any(slope.values()):
        return "grows"
    names = sorted(set(size.symbols()))
    periods = [size.period(name) for name in names]
    if math.prod(periods) > MAX_PERIOD_POINTS:
        return "too long"
    return (
        size.value(dict(zip(names, values, strict=True)))
        for values in itertools.product(*(range(1, p + 1) for p in periods))
    )


_RELATIONS: contextvars.ContextVar[list | None] = contextvars.ContextVar("relations", default=None)


@contextlib.contextmanager
def collect_relations() -> Iterator[list[tuple[int | Size, int | Size]]]:
    """While active, a comparison that holds for some sizes only is true and is recorded."""
    found: list[tuple[int | Size, int | Size]] = []
    token = _RELATIONS.set(found)
    try:
        yield found
    finally:
        _RELATIONS.reset(token)


def symbols_of(values: Iterable[object]) -> set[str]:
    """The size symbols the sizes among ``values`` use."""
    names: set[str] = set()
    for value in values:
        if isinstance(value, Size):
            names.update(value.symbols())
    return names


def evaluate(value: int | Size, binding: Mapping[str, int]) -> int:
    return value.value(binding) if isinstance(value, Size) else value


def minimum(sizes: Iterable[int | Size], name: str) -> int:
    """The smallest value of the symbol ``name`` for which every size is at least 1 (the
    other symbols at :data:`REFERENCE`); sizes grow with their symbols."""
    relevant = [s for s in sizes if isinstance(s, Size) and name in set(s.symbols())]
    if not relevant:
        return 1
    others = set().union(*(set(s.symbols()) for s in relevant)) - {name}
    base = dict.fromkeys(others, REFERENCE)

    def fits(v: int) -> bool:
        binding = {**base, name: v}
        return all(s.value(binding) >= 1 for s in relevant)

    lo, hi = 1, MAX_MINIMUM
    if fits(lo) or not fits(hi):
        return lo
    while hi - lo > 1:  # fits(hi) and not fits(lo)
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    return hi
