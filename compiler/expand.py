"""A machine's body expanded when the machine is built: ``for`` loops repeated, ``if``s decided.

The result is the body's declarations, each with the scope (parameters and loop
variables) its expressions are evaluated in. The bodies of loops that run no
time are kept aside: the builder checks what it can of them without values.
The branches of an ``if`` that are not taken are not looked at.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from . import syntax as s
from .diagnostics import Code
from .expressions import MAX_EXPANSION, WORDS, Problem, Scope, condition, range_of


class Expansion:
    """Expands one machine's body; reports problems through ``problem(exc, scope)``."""

    def __init__(self, decl: s.MachineDecl, problem: Callable[[Problem, Scope | None], None]):
        self.decl = decl
        self.problem = problem
        self.iterations = 0  # of all loops together, bounded by MAX_EXPANSION
        self.runs = 0  # loops run so far (a loop inside a loop runs once per outer pass)
        self.unexpanded: list[tuple[s.Item, ...]] = []  # bodies of loops with no iteration

    def items(self, items, scope: Scope) -> Iterator[tuple[s.Item, Scope]]:
        """Every declaration of ``items`` with its scope; raises :class:`Problem` when the
        loops run more than :data:`MAX_EXPANSION` times in all."""
        for item in items:
            if isinstance(item, s.IfBlock):
                yield from self.items(self._branch(item, scope), scope)
            elif isinstance(item, s.ForLoop):
                yield from self._loop(item, scope)
            else:
                yield item, scope

    def _loop(self, loop: s.ForLoop, scope: Scope) -> Iterator[tuple[s.Item, Scope]]:
        try:
            self._check_variable(loop, scope)
            values = range_of(loop.range, scope.env)
        except Problem as exc:
            self.problem(exc, scope)
            return
        if not values:
            self.unexpanded.append(loop.body)
        self.runs += 1
        run = self.runs
        for value in values:
            self.iterations += 1
            if self.iterations > MAX_EXPANSION:
                raise Problem(
                    Code.EXPRESSION,
                    f"machine {self.decl.name} runs its loops more than "
                    f"{MAX_EXPANSION:,} times in all",
                    loop.var_span,
                    hint="a machine this large is surely a mistake; use fewer or shorter loops",
                )
            inner = Scope(
                env={**scope.env, loop.var: value},
                loops=(*scope.loops, loop.var),
                run=(run, loop.var, value) if isinstance(value, int) else None,
            )
            yield from self.items(loop.body, inner)

    def _check_variable(self, loop: s.ForLoop, scope: Scope) -> None:
        var = loop.var
        if var in WORDS:
            raise Problem(
                Code.DUPLICATE_NAME,
                f"loop variable {var!r} is a word of expressions; give it another name",
                loop.var_span,
            )
        if var in scope.env or var == self.decl.time:
            what = (
                "time index"
                if var == self.decl.time
                else "loop variable"
                if var in scope.loops
                else "parameter"
            )
            raise Problem(
                Code.DUPLICATE_NAME,
                f"loop variable {var!r} hides the {what} of that name",
                loop.var_span,
            )

    def _branch(self, block: s.IfBlock, scope: Scope) -> tuple[s.Item, ...]:
        """The items of the branch an ``if`` takes (none when no condition holds)."""
        for branch in block.branches:
            try:
                if branch.cond is None or condition(branch.cond, scope.env):
                    return branch.body
            except Problem as exc:
                self.problem(exc, scope)
                return ()  # no branch is taken after an error
        return ()


def flatten(bodies) -> Iterator[s.Item]:
    """Every declaration in some loop bodies, nested loops and every branch of ifs included."""
    for body in bodies:
        for item in body:
            if isinstance(item, s.ForLoop):
                yield from flatten([item.body])
            elif isinstance(item, s.IfBlock):
                yield from flatten([branch.body for branch in item.branches])
            else:
                yield item
