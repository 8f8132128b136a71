"""Rewrites for speed: passes over the checked IR, run between ``check`` and ``lower``.

Each pass takes a checked program and returns one that computes the same thing, with
what it decided recorded in the machines' structures; ``lower`` prints what the
structures say and names the rewrite in a comment of the generated code. Passes run in
the order of :data:`REWRITES`; ``machc compile --no-NAME`` (``rewrites=`` in the API)
leaves one out. State dict keys never change. docs/performance.md describes each:

- ``cells`` (:mod:`.cells`): a step loop that is exactly PyTorch's RNN, LSTM or GRU
  cell runs, in ``forward``, as PyTorch's fused kernel over the whole sequence.
- ``regroup`` (:mod:`.regroup`): in ``forward``, an edge whose concatenated inputs
  autograd would keep for the backward keeps the spaces instead, and concatenates them
  again in the backward (memory linear in the depth of a dense machine).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable

from . import ir

Pass = Callable[[ir.CheckedProgram], ir.CheckedProgram]

# rewrite -> its module, whose function of the same name is the pass: imported when it
# runs (the command line lists the rewrites for --no-NAME in every command, check too)
PASSES: dict[str, str] = {"cells": ".cells", "regroup": ".regroup"}
REWRITES = tuple(PASSES)  # every rewrite, in the order they run


def _pass(name: str) -> Pass:
    return getattr(importlib.import_module(PASSES[name], __package__), name)


def rewrite(program: ir.CheckedProgram, rewrites: Iterable[str] | None = None) -> ir.CheckedProgram:
    """``program`` with the named rewrites applied (None: every one; ``()``: none)."""
    chosen = set(REWRITES if rewrites is None else rewrites)
    unknown = chosen - set(REWRITES)
    if unknown:
        raise ValueError(f"no such rewrites: {sorted(unknown)}; machc has {list(REWRITES)}")
    for name in REWRITES:
        if name in chosen:
            program = _pass(name)(program)
    return program
