"""The spaces an edge names, resolved into ports of the IR.

``h``, ``h[i]``, ``h[1..n]``; in a machine over time also ``h[t-1]``,
``h[t+1]``, ``h[1..n][t-1]``, windows of steps (``k[0..t]``, ``k[t-w..t]``,
``k[..]``) and the time index itself (``t``, the step number).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import ir
from . import syntax as s
from .diagnostics import Code
from .expressions import (
    MAX_ITERATIONS,
    MAX_PORTS,
    AlreadyReported,
    Problem,
    Scope,
    TooLarge,
    did_you_mean,
    integer,
    names_in,
    range_of,
)


@dataclass
class Spaces:
    """The declared spaces of a machine, by full name (``h[2]``) and by family (``h``)."""

    by_name: dict[str, ir.Space] = field(default_factory=dict)
    arrays: dict[str, list[int]] = field(default_factory=dict)  # family -> declared indices
    scalars: set[str] = field(default_factory=set)
    broken: set[str] = field(default_factory=set)  # families whose declaration had an error


class PortResolver:
    """Resolves the space references of one machine's edges."""

    def __init__(self, decl: s.MachineDecl, spaces: Spaces):
        self.decl = decl
        self.spaces = spaces
        self.ports = 0  # ports resolved so far, against MAX_PORTS
        self._made: dict[tuple, ir.Port] = {}
        self._unknown: set[int] = set()  # references to unknown spaces, already reported

    def _port(self, name: str, delay: int, window, span) -> ir.Port:
        """One port; the same read at the same place (in every pass of a loop) is one object,
        made once: ranges in loops name the same spaces again and again."""
        key = (name, delay, window is None or id(window), id(span))  # the span of one ref
        port = self._made.get(key)
        if port is None:
            port = ir.Port(space=name, delay=delay, window=window, span=span)
            self._made[key] = port
        return port

    def _spend(self, count: int, ref: s.SpaceRef) -> None:
        self.ports += count
        if self.ports > MAX_PORTS:
            raise TooLarge(
                Problem(
                    Code.INDEX,
                    f"the edges of machine {self.decl.name} name more than {MAX_PORTS:,} spaces "
                    "in all (ranges counted out)",
                    ref.span,
                    hint="a machine this large is surely a mistake",
                )
            )

    def resolve(self, ref: s.SpaceRef, scope: Scope, writing: bool = False) -> list[ir.Port]:
        """The spaces a reference names (several for ``h[a..b]``, possibly none)."""
        index, time = self._split_time(ref, scope)
        delay, window = 0, None
        if isinstance(time, s.Range | s.AllSteps):
            window = self._window(ref, time, scope)
        elif time is not None:
            delay = self._delay(ref, time, scope)
        if (delay or window) and writing:
            raise Problem(
                Code.TIME,
                f"an edge writes the present step of a space; "
                f"{ir.Port(space=ref.name, delay=delay, window=window, span=ref.span).text()} "
                "can only be read",
                ref.span,
            )
        spaces = self.spaces
        if ref.name == self.decl.time and index is None and ref.name not in spaces.scalars:
            if writing:
                raise Problem(
                    Code.SEQUENCE,
                    f"the time index {ref.name} is the step number; an edge can only read it",
                    ref.span,
                )
            return [ir.Port(space=ref.name, position=True, span=ref.span)]
        if ref.name in spaces.scalars:
            if index is not None:
                hint = None
                if self.decl.time is None and names_in(index) - set(scope.env):
                    hint = (
                        "to read an earlier step, make this a machine over time: "
                        f"machine {self.decl.name} over t {{ ... }}"
                    )
                raise Problem(
                    Code.INDEX, f"{ref.name!r} is a single space, not an array", ref.span, hint
                )
            self._spend(1, ref)
            return [ir.Port(space=ref.name, delay=delay, window=window, span=ref.span)]
        if ref.name not in spaces.arrays:
            if ref.name in spaces.broken or id(ref) in self._unknown:
                raise AlreadyReported(Code.UNKNOWN_NAME, "", ref.span)
            self._unknown.add(id(ref))  # reported once, not in every pass of a loop
            raise Problem(
                Code.UNKNOWN_NAME,
                f"unknown space {ref.name!r}",
                ref.span,
                hint=did_you_mean(ref.name, [*spaces.scalars, *spaces.arrays]),
            )
        declared = spaces.arrays[ref.name]
        if index is None:
            raise Problem(
                Code.INDEX,
                f"{ref.name!r} is an array of spaces; name one ({ref.name}[i]) or a range "
                f"({ref.name}[a..b])",
                ref.span,
            )
        if isinstance(index, s.Range):
            indices = range_of(index, scope.env)
        else:
            indices = [integer(index, scope.env, "an index")]
        self._spend(len(indices), ref)
        ports = []
        for index in indices:
            space = spaces.by_name.get(f"{ref.name}[{index}]")
            if space is None:
                raise Problem(
                    Code.INDEX,
                    f"index {index} is out of range: "
                    f"{ref.name} has {describe_indices(ref.name, declared)}",
                    ref.span,
                )
            # NOTE: scale. The space's own name, not an equal copy: one string in memory
            # for every port of the space, and later stages look them up by identity.
            ports.append(self._port(space.name, delay, window, ref.span))
        return ports

    def _split_time(self, ref: s.SpaceRef, scope: Scope):
        """(array index, time index) of a reference; the time index is the bracket using t."""
        time_var = self.decl.time
        if ref.time is not None:
            if time_var is None:
                raise Problem(
                    Code.TIME,
                    f"{ref.name!r} is read at an earlier step, but machine {self.decl.name} "
                    "is not a machine over time",
                    ref.span,
                    hint=f"declare it: machine {self.decl.name} over t {{ ... }}",
                )
            if isinstance(ref.index, s.AllSteps):
                raise Problem(
                    Code.INDEX,
                    f"{ref.name}[..] names no elements of an array; write {ref.name}[a..b]",
                    ref.index.span,
                )
            return ref.index, ref.time
        index = ref.index
        if isinstance(index, s.AllSteps):
            if time_var is None:
                raise Problem(
                    Code.TIME,
                    f"{ref.name}[..] reads every step, but machine {self.decl.name} is not a "
                    "machine over time",
                    index.span,
                    hint=f"declare it: machine {self.decl.name} over t {{ ... }}",
                )
            return None, index
        if time_var is not None and index is not None:
            uses_t = (
                time_var in names_in(index.lo) | names_in(index.hi)
                if isinstance(index, s.Range)
                else time_var in names_in(index)
            )
            if uses_t:
                return None, index
        return index, None

    def _delay(self, ref: s.SpaceRef, time: s.Expr, scope: Scope) -> int:
        """``k`` of a read ``h[t-k]``: a positive integer that does not depend on t."""
        t = self.decl.time
        match time:
            case s.Var(name=name) if name == t:
                raise Problem(
                    Code.TIME,
                    f"{ref.name}[{t}] is the present step: write {ref.name} "
                    "(a delay of zero is not written as a delay)",
                    time.span,
                )
            case s.BinOp(op="-" | "+" as sign, left=s.Var(name=name), right=k) if name == t and (
                t not in names_in(k)
            ):
                env = {key: v for key, v in scope.env.items() if key != t}
                delay = integer(k, env, "a delay")
                if delay == 0:
                    raise Problem(
                        Code.TIME,
                        f"{ref.name}[{t} {sign} k] with k = 0 is the present step: "
                        f"write {ref.name}",
                        k.span,
                    )
                if abs(delay) > MAX_ITERATIONS:
                    raise Problem(Code.TIME, f"a delay of more than {MAX_ITERATIONS} steps", k.span)
                # NOTE: h[t-k] with k < 0 reads the future, so that a parameter can turn a
                # recurrence around (std.recurrent's LSTM(dir=-1)).
                return delay if sign == "-" else -delay
        raise Problem(
            Code.TIME,
            f"a time index must be {t} - k or {t} + k, with k a positive integer that does "
            f"not use {t}",
            time.span,
        )

    def _window(self, ref: s.SpaceRef, window: s.Range | s.AllSteps, scope: Scope) -> ir.Window:
        """A window of steps: ``0..t`` (causal), ``t-w..t`` (sliding) or ``..`` (every step)."""
        t = self.decl.time
        if isinstance(window, s.AllSteps):
            return ir.Window(kind=ir.WindowKind.FULL)
        env = {key: v for key, v in scope.env.items() if key != t}
        form = (
            f"a window of steps is 0..{t} (up to {t}), {t}-w..{t} (the last w + 1 steps) "
            "or .. (every step)"
        )
        if not (isinstance(window.hi, s.Var) and window.hi.name == t):
            raise Problem(Code.TIME, form, window.span)
        match window.lo:
            case s.BinOp(op="-", left=s.Var(name=name), right=k) if name == t and (
                t not in names_in(k)
            ):
                size = integer(k, env, "a window size")
                if size <= 0 or size > MAX_ITERATIONS:
                    raise Problem(
                        Code.TIME,
                        f"a sliding window {t}-w..{t} needs 0 < w <= {MAX_ITERATIONS}, "
                        f"got w = {size}",
                        k.span,
                    )
                return ir.Window(kind=ir.WindowKind.SLIDING, size=size)
            case _ if t not in names_in(window.lo):
                if integer(window.lo, env, "a window's first step") == 0:
                    return ir.Window(kind=ir.WindowKind.CAUSAL)
        raise Problem(Code.TIME, form, window.span)


def describe_indices(name: str, indices: list[int]) -> str:
    if not indices:
        return "no elements"
    lo, hi = min(indices), max(indices)
    if len(indices) == hi - lo + 1:
        return f"{name}[{lo}]..{name}[{hi}]"
    return ", ".join(f"{name}[{i}]" for i in sorted(indices))
