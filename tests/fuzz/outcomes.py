"""What can become of one input, and how failures are told apart.

Every input ends in one of six outcomes. Two are fine (the compiler answered
with a proper diagnostic, or with a module that works); four are bugs:

- ``internal error``: an exception other than :class:`machc.CompileError`
  escaped from checking or compiling (``machc`` would exit with status 3),
  or a ``CompileError`` whose diagnostics are not proper (no error in it, an
  error without a place, a place outside the file, or a source line shown
  under the caret that is not the line the place names);
- ``hang``: checking and compiling took longer than the time limit
  (:data:`HANG_SECONDS` of CPU for an input under 10 kB: machc expands at most
  100,000 loop iterations, at 50 to 100 µs a declaration to check and compile,
  so the largest machine it accepts takes about 10 s);
- ``miscompile``: it compiled, but the generated module does not work: it
  does not import, a class does not construct, ``forward`` or ``resolvent``
  raise on random inputs of the declared shapes, the outputs have other
  shapes than ``SPACES`` says, or ``forward``'s outputs disagree with
  ``resolvent``'s (in eval mode, float64);
- ``blow-up``: checking and compiling (or importing and running the module
  it wrote) ran out of the memory bound, wrote a module over the size bound,
  or accepted a space or layer too large for any tensor (a size of 2^31 or
  more).

Failures are the same when their :attr:`Result.key` is: the outcome, the
exception type (for a miscompile, with the start of its message, numbers
and names blanked) and the innermost frame in machc's own code.
"""

from __future__ import annotations

import enum
import re
from dataclasses import asdict, dataclass

HANG_SECONDS = 30.0  # CPU seconds for an input under 10 kB (longer inputs: in proportion)


class Outcome(enum.StrEnum):
    OK_DIAGNOSTIC = "ok-diagnostic"
    OK_MODULE = "ok-module"
    INTERNAL_ERROR = "internal error"
    HANG = "hang"
    MISCOMPILE = "miscompile"
    BLOW_UP = "blow-up"

    @property
    def failure(self) -> bool:
        return self not in (Outcome.OK_DIAGNOSTIC, Outcome.OK_MODULE)

    @property
    def slug(self) -> str:
        """For file names: ``internal-error``, ``hang``, ..."""
        return self.value.replace(" ", "-")


@dataclass(frozen=True)
class Result:
    """The outcome of one input, with enough to tell failures apart and to explain them."""

    outcome: Outcome
    kind: str = ""  # the exception type, or what went wrong
    frame: str = ""  # the innermost frame in machc's code: "compiler/build.py:expand"
    detail: str = ""  # a traceback or an explanation
    seconds: float = 0.0  # checking and compiling
    ran: bool = False  # ok-module: the module was imported and run (not too large, ...)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.outcome.value, self.kind, self.frame)

    def same_failure(self, other: Result) -> bool:
        """Whether ``other`` is the failure this one is, for minimising: hangs and blow-ups
        are the same whatever the frame (where an input is interrupted varies)."""
        if self.outcome != other.outcome:
            return False
        if self.outcome in (Outcome.HANG, Outcome.BLOW_UP):
            return self.kind == other.kind or self.outcome is Outcome.HANG
        return self.key == other.key

    def to_json(self) -> dict:
        data = asdict(self)
        data["outcome"] = self.outcome.value
        return data

    @classmethod
    def from_json(cls, data: dict) -> Result:
        return cls(**{**data, "outcome": Outcome(data["outcome"])})


def blank(message: str, width: int = 60) -> str:
    """A message with numbers and quoted names blanked, cut to ``width``: for keys."""
    text = message.strip().split("\n")[0]
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "'_'", text)
    text = re.sub(r"\d+", "N", text)
    return text[:width]
